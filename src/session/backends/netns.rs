//! The netns backend's part of a session: the command in a namespace
//! sandbox (fresh user, mount, pid and net namespaces inside the session
//! network, a cgroup, the session CA, the credential placeholders and a copy
//! of `--workdir` as `/work`, a file system capped at `--work-max`), its
//! output through the console, and its end: the command's exit status,
//! Ctrl-C/SIGTERM or a timeout; then `/work`'s results into the bundle.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sandbox::{Sandbox, SandboxSpec, SandboxStdio, WorkVolume};

use super::BackendContext;
use crate::bundle;
use crate::session::config::{shutdown_signal, RunEnd};
use crate::session::monitor::Monitor;

/// The sandbox's uid/gid: `nobody`, owning nothing on the host.
const SANDBOX_UID: u32 = 65534;
/// How often a capped `/work` is looked at for having filled up.
const WORK_WATCH_PERIOD: Duration = Duration::from_millis(250);

/// The sandbox's `/work`.
enum Work {
    /// `--work-max 0`: the bundle's `work/`, bound as it is.
    Dir(PathBuf),
    /// A capped volume; its contents go to the bundle's `work/` at the end.
    Volume(Arc<WorkVolume>),
}

/// Runs the command in the sandbox to its end; returns how it ended.
pub async fn supervise(context: BackendContext<'_>) -> Result<RunEnd> {
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
    let work = prepare_work(dir, config.workdir.as_deref(), config.bounds.work_max_bytes)?;
    let (program, args) = config
        .command
        .split_first()
        .context("no command given after --")?;
    let mut spec = SandboxSpec::new(network, program, args, ca_pem.as_bytes().to_vec());
    spec.resolver = network.proxy_addr();
    match &work {
        Work::Dir(path) => spec.workdir = Some(path.clone()),
        Work::Volume(volume) => spec.work_volume = Some(volume.clone()),
    }
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
    let work_full = Arc::new(AtomicBool::new(false));
    let watcher = match &work {
        Work::Volume(volume) => Some(tokio::spawn(watch_work(
            volume.clone(),
            work_full.clone(),
            out.clone(),
        ))),
        Work::Dir(_) => None,
    };

    let killer = child.killer();
    let mut wait = tokio::task::spawn_blocking(move || child.wait());
    let end = tokio::select! {
        status = &mut wait => RunEnd::Exited(exit_code(status??)),
        _ = sleep_for(config.timeout) => {
            out.note(&format!(
                "timed out after {}: stopping the sandbox",
                humantime::format_duration(config.timeout.unwrap_or_default())
            ));
            if let Err(err) = killer.kill() {
                tracing::warn!("stopping the sandbox: {err}");
            }
            let _ = wait.await;
            RunEnd::TimedOut
        }
        _ = shutdown_signal() => {
            out.note("interrupted: stopping the sandbox, denying pending approvals");
            // SIGKILL to the sandbox's init takes its whole pid namespace.
            if let Err(err) = killer.kill() {
                tracing::warn!("stopping the sandbox: {err}");
            }
            let _ = wait.await;
            RunEnd::Interrupted
        }
    };
    pumps.await;
    console.record(&mut info.bounds);
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    if let Work::Volume(volume) = work {
        let bounds = &mut info.bounds;
        let target = dir.join("work");
        let copied = tokio::task::spawn_blocking(move || finish_work(&volume, &target)).await?;
        let mut full = work_full.load(Ordering::Relaxed);
        match copied {
            Ok(usage) => {
                bounds.work_used_bytes = Some(usage.used_bytes);
                full |= usage.is_full();
            }
            Err(err) => out.note(&format!("copying /work's results into the bundle: {err:#}")),
        }
        if full {
            bounds.work_full = true;
            bounds.hit.push(format!(
                "/work filled its {} (--work-max): writes there failed with ENOSPC",
                human_size(bounds.work_max_bytes)
            ));
        }
    }
    Ok(end)
}

/// Looks at a capped `/work` until aborted; says so once it is full.
async fn watch_work(volume: Arc<WorkVolume>, full: Arc<AtomicBool>, out: Monitor) {
    loop {
        tokio::time::sleep(WORK_WATCH_PERIOD).await;
        if volume.usage().is_ok_and(|u| u.is_full()) && !full.swap(true, Ordering::Relaxed) {
            out.note(&format!(
                "/work is full ({}, --work-max): the command's writes there fail with ENOSPC",
                human_size(volume.cap_bytes())
            ));
        }
    }
}

/// `1 GiB`, `64 MiB`, `512 KiB`.
fn human_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 => format!("{} MiB", b >> 20),
        b => format!("{} KiB", b >> 10),
    }
}

/// After the sandbox ended: how full `/work` is, and its contents copied
/// into the bundle's `work/` (the volume goes when its last handle does).
fn finish_work(volume: &WorkVolume, target: &Path) -> Result<sandbox::WorkUsage> {
    let usage = volume.usage()?;
    std::fs::create_dir_all(target).with_context(|| format!("creating {}", target.display()))?;
    copy_results(&volume.path(), target, volume.cap_bytes())?;
    Ok(usage)
}

/// Copies what the command left in `/work` into the bundle. The volume
/// holds at most `max_bytes`, but a sparse file (`truncate -s 1T`, free in
/// the volume) or one file linked many times costs the volume little and a
/// plain copy its full size per name. So, as for the kvm backend's `/work`,
/// the sizes are summed first (every name, holes included, symlinks not
/// followed) and more than the volume's cap is refused before anything is
/// written.
fn copy_results(from: &Path, to: &Path, max_bytes: u64) -> Result<()> {
    let (bytes, _) = guest_image::ext4::tree_usage(from)
        .with_context(|| format!("measuring {}", from.display()))?;
    if bytes > max_bytes {
        bail!(
            "refusing to copy /work into the bundle: its files would take {bytes} bytes, \
             more than the {max_bytes} of the volume (sparse files or many links to one file)"
        );
    }
    copy_tree(from, to)
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

/// The sandbox's `/work` with a copy of the user's directory (or empty),
/// owned by the sandbox uid: a volume of `max_bytes` whose blocks live on
/// the bundle's disk, or with no cap the bundle's `work/` itself.
fn prepare_work(dir: &Path, source: Option<&Path>, max_bytes: u64) -> Result<Work> {
    let (work, kind) = if max_bytes == 0 {
        let work = dir.join("work");
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        (work.clone(), Work::Dir(work))
    } else {
        let volume =
            WorkVolume::create(&dir.join(".work.img"), max_bytes, SANDBOX_UID, SANDBOX_UID)
                .context("making the size-capped /work (--work-max; 0 runs without a cap)")?;
        (volume.path(), Work::Volume(Arc::new(volume)))
    };
    if let Some(source) = source {
        copy_tree(source, &work)
            .with_context(|| format!("copying {} into the sandbox", source.display()))?;
    }
    chown_tree(&work, SANDBOX_UID)?;
    Ok(kind)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Bytes of disk the files under `dir` really occupy.
    fn allocated(dir: &Path) -> u64 {
        let mut total = 0;
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let meta = path.symlink_metadata().expect("meta");
            total += if meta.is_dir() {
                allocated(&path)
            } else {
                meta.blocks() * 512
            };
        }
        total
    }

    /// Anyone in the sandbox can `truncate -s 1T /work/f`: the capped
    /// volume holds it for nothing, and a plain copy writes every zero of
    /// it to the host's disk. (512 MiB here, so the old copy stays cheap.)
    #[test]
    fn a_sparse_file_past_the_cap_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (from, to) = (dir.path().join("work"), dir.path().join("bundle-work"));
        std::fs::create_dir_all(&from).expect("mkdir");
        std::fs::create_dir_all(&to).expect("mkdir");
        std::fs::write(from.join("result.txt"), b"done").expect("write");
        std::fs::File::create(from.join("sparse"))
            .and_then(|f| f.set_len(512 << 20))
            .expect("sparse");
        let result = copy_results(&from, &to, 64 << 20);
        let written = allocated(&to);
        assert!(
            written < 64 << 20,
            "{written} bytes written for a 64 MiB /work"
        );
        let err = result.expect_err("refused");
        assert!(format!("{err:#}").contains("more than"), "{err:#}");
    }

    /// A file linked many times is one file's blocks in the volume and a
    /// full copy per name in the bundle.
    #[test]
    fn many_links_to_one_file_past_the_cap_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (from, to) = (dir.path().join("work"), dir.path().join("bundle-work"));
        std::fs::create_dir_all(&from).expect("mkdir");
        std::fs::create_dir_all(&to).expect("mkdir");
        std::fs::write(from.join("big"), vec![7u8; 1 << 20]).expect("write");
        for i in 0..16 {
            std::fs::hard_link(from.join("big"), from.join(format!("link{i}"))).expect("link");
        }
        let result = copy_results(&from, &to, 8 << 20);
        let written = allocated(&to);
        assert!(
            written < 8 << 20,
            "{written} bytes written for an 8 MiB /work"
        );
        assert!(result.is_err());
    }

    #[test]
    fn results_within_the_cap_are_copied() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (from, to) = (dir.path().join("work"), dir.path().join("bundle-work"));
        std::fs::create_dir_all(from.join("sub")).expect("mkdir");
        std::fs::create_dir_all(&to).expect("mkdir");
        std::fs::write(from.join("sub/result.txt"), b"done").expect("write");
        std::os::unix::fs::symlink("sub/result.txt", from.join("link")).expect("symlink");
        copy_results(&from, &to, 1 << 20).expect("copied");
        assert_eq!(
            std::fs::read(to.join("sub/result.txt")).expect("read"),
            b"done"
        );
        assert_eq!(
            std::fs::read_link(to.join("link")).expect("link"),
            Path::new("sub/result.txt")
        );
    }
}
