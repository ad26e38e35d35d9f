//! The netns backend's part of a session: the command in a namespace
//! sandbox (fresh user, mount, pid and net namespaces inside the session
//! network, a cgroup, the session CA, the credential placeholders and a copy
//! of `--workdir` as `/work`), its output through the console, and its end:
//! the command's exit status, Ctrl-C/SIGTERM or a timeout.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use sandbox::{Sandbox, SandboxSpec, SandboxStdio};

use super::BackendContext;
use crate::bundle;
use crate::session::config::{shutdown_signal, EXIT_INTERRUPTED, EXIT_TIMEOUT};

/// The sandbox's uid/gid: `nobody`, owning nothing on the host.
const SANDBOX_UID: u32 = 65534;

/// Runs the command in the sandbox to its end; returns its exit code.
pub async fn supervise(context: BackendContext<'_>) -> Result<i32> {
    let BackendContext {
        config,
        dir,
        info,
        network,
        ca_pem,
        enforcement,
        console,
        monitor: out,
        started,
    } = context;
    let workdir = prepare_workdir(dir, config.workdir.as_deref())?;
    let (program, args) = config
        .command
        .split_first()
        .context("no command given after --")?;
    let mut spec = SandboxSpec::new(network, program, args, ca_pem.as_bytes().to_vec());
    spec.resolver = network.proxy_addr();
    spec.workdir = Some(workdir);
    spec.uid = SANDBOX_UID;
    spec.gid = SANDBOX_UID;
    spec.memory_bytes = config.memory_bytes;
    spec.pids_max = config.pids_max;
    spec.stdin = SandboxStdio::Null;
    spec.stdout = SandboxStdio::Pipe;
    spec.stderr = SandboxStdio::Pipe;
    for (name, placeholder) in &enforcement.sandbox_env {
        spec = spec.env(name, placeholder);
    }
    if let Some(task) = &config.task {
        spec = spec.env("OPENCLAW_TASK", task);
    }
    spec = spec.env("OPENCLAW_SESSION", &info.id);

    let mut child = tokio::task::spawn_blocking(move || Sandbox::spawn(spec))
        .await?
        .context("starting the sandbox")?;
    let ready_ms = started.elapsed().as_millis() as u64;
    info.sandbox_ready_ms = Some(ready_ms);
    bundle::write_info(dir, info)?;
    out.startup(info, ready_ms);

    let pumps = console.pump(child.take_stdout(), child.take_stderr());

    let killer = child.killer();
    let mut wait = tokio::task::spawn_blocking(move || child.wait());
    let code = tokio::select! {
        status = &mut wait => exit_code(status??),
        _ = sleep_for(config.timeout) => {
            out.note(&format!(
                "timed out after {}: stopping the sandbox",
                humantime::format_duration(config.timeout.unwrap_or_default())
            ));
            if let Err(err) = killer.kill() {
                tracing::warn!("stopping the sandbox: {err}");
            }
            let _ = wait.await;
            EXIT_TIMEOUT
        }
        _ = shutdown_signal() => {
            out.note("interrupted: stopping the sandbox, denying pending approvals");
            // SIGKILL to the sandbox's init takes its whole pid namespace.
            if let Err(err) = killer.kill() {
                tracing::warn!("stopping the sandbox: {err}");
            }
            let _ = wait.await;
            EXIT_INTERRUPTED
        }
    };
    pumps.await;
    Ok(code)
}

/// Sleeps for `timeout`, or forever without one.
async fn sleep_for(timeout: Option<Duration>) {
    match timeout {
        Some(t) => tokio::time::sleep(t).await,
        None => std::future::pending().await,
    }
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    }
}

/// The sandbox's `/work`: a copy of the user's directory (or an empty one)
/// inside the bundle, owned by the sandbox uid. Results stay there.
fn prepare_workdir(dir: &Path, source: Option<&Path>) -> Result<PathBuf> {
    let work = dir.join("work");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    if let Some(source) = source {
        copy_tree(source, &work)
            .with_context(|| format!("copying {} into the sandbox", source.display()))?;
    }
    chown_tree(&work, SANDBOX_UID)?;
    Ok(work)
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            std::fs::create_dir_all(&target)?;
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

fn chown_tree(path: &Path, uid: u32) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid))
        .with_context(|| format!("chown {}", path.display()))?;
    if path.is_dir() && !path.is_symlink() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid)?;
        }
    }
    Ok(())
}
