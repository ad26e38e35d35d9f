//! The session lifecycle behind `openclaw run` (and `openclaw demo`): backend
//! choice, bundle, session network, receipt log, enforcing proxy, sandbox
//! (a namespace sandbox here, or a microVM in `kvm.rs`), live monitor,
//! teardown and report, in that order, undone in reverse.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use capabilities::{Capability, UnverifiedToken};
use ed25519_dalek::{SigningKey, VerifyingKey};
use netns::SessionNetwork;
use proxy::{
    Gate, Limits, ListenAddrs, Listeners, Proxy, ProxyConfig, ProxyHandle, UpstreamConfig,
};
use receipts::{ReceiptLog, SessionStart};
use sandbox::{Sandbox, SandboxSpec, SandboxStdio};
use sha2::{Digest, Sha256};

use super::backend::{self, Backend};
use super::bundle::{self, CapabilitySummary, SessionInfo};
use super::console::Console;
use super::enforcement::{self, SessionEnforcement};
use super::monitor::Monitor;
use crate::report::{self, Report};

/// openclaw could not set up or run the session (the command's own exit
/// codes pass through unchanged).
pub const EXIT_SETUP: u8 = 125;
/// The session was interrupted (Ctrl-C / SIGTERM).
pub const EXIT_INTERRUPTED: i32 = 130;
/// The session's `--timeout` passed (as timeout(1) reports it).
pub const EXIT_TIMEOUT: i32 = 124;

/// The sandbox's uid/gid: `nobody`, owning nothing on the host.
const SANDBOX_UID: u32 = 65534;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    Auto,
    Kvm,
    Netns,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApproveMode {
    /// Ask on the terminal; without one, deny.
    Prompt,
    Deny,
    /// Approve everything (unattended demos).
    Auto,
}

/// Everything one session needs, already read from files and flags.
pub struct RunConfig {
    pub token_text: String,
    pub root_public_key: VerifyingKey,
    pub receipt_key: SigningKey,
    pub secrets: Option<PathBuf>,
    pub catalog: Option<PathBuf>,
    pub backend: BackendChoice,
    pub approve: ApproveMode,
    pub approval_timeout: Duration,
    pub workdir: Option<PathBuf>,
    pub resolve: Vec<(String, SocketAddr)>,
    pub upstream_ca: Vec<PathBuf>,
    pub json_events: bool,
    pub task: Option<String>,
    pub memory_bytes: u64,
    pub pids_max: u64,
    pub command: Vec<String>,
    pub sessions_dir: PathBuf,
    /// Stop the command (and its sandbox or VM) after this long.
    pub timeout: Option<Duration>,
}

/// How a session ended.
pub struct SessionOutcome {
    pub dir: PathBuf,
    /// The command's exit code (128+N for a signal).
    pub exit_code: i32,
    pub report: Report,
}

/// Runs one session to its end on a fresh runtime; maps the result to the
/// process exit code.
pub fn run(config: RunConfig) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match runtime.block_on(run_session(config)) {
        Ok(outcome) => Ok(ExitCode::from(outcome.exit_code.clamp(0, 255) as u8)),
        Err(err) => {
            eprintln!("error: {err:#}");
            Ok(ExitCode::from(EXIT_SETUP))
        }
    }
}

/// The whole lifecycle. Everything created here is torn down before it
/// returns, also on error: the network namespace by drop, the proxy and the
/// receipt log explicitly.
pub async fn run_session(config: RunConfig) -> Result<SessionOutcome> {
    let started = Instant::now();
    let started_at = SystemTime::now();
    if let Err(err) = tokio::task::spawn_blocking(sandbox::cleanup_stale).await? {
        tracing::warn!("cleaning up after earlier sessions: {err}");
    }

    let capability = UnverifiedToken::from_base64(config.token_text.trim())
        .and_then(|t| t.verify(config.root_public_key.as_bytes()))
        .context("the capability token does not verify against the root public key")?;
    if let Some(expiry) = capability.expires_at() {
        if expiry <= started_at {
            bail!(
                "the capability token expired at {}",
                receipts::format_time(expiry)
            );
        }
    }
    let choice = config.backend;
    let home = backend::home_of(&config.sessions_dir);
    let chosen = tokio::task::spawn_blocking(move || backend::choose(choice, &home)).await??;
    let backend = chosen.backend;

    let id = new_session_id(started_at);
    let dir = config.sessions_dir.join(&id);
    create_private_dir(&config.sessions_dir)?;
    create_private_dir(&dir)?;
    std::fs::write(dir.join(bundle::CAPABILITIES), config.token_text.trim())
        .context("writing capabilities.cap")?;

    let summary = capability.summary();
    let mut info = SessionInfo {
        id: id.clone(),
        status: "running".into(),
        backend: backend.name().into(),
        backend_reason: chosen.reason,
        started_at: receipts::format_time(started_at),
        command: config.command.clone(),
        task: config.task.clone(),
        capabilities: CapabilitySummary {
            summary: headline(&summary),
            grants: summary
                .grant_lines
                .iter()
                .chain(&summary.constraint_lines)
                .cloned()
                .collect(),
            revocation_ids: capability.revocation_ids(),
            expires_at: capability.expires_at().map(receipts::format_time),
        },
        receipt_key_id: receipts::key_id(&config.receipt_key.verifying_key()),
        resolve: config
            .resolve
            .iter()
            .map(|(h, a)| format!("{h}={a}"))
            .collect(),
        upstream_ca: config
            .upstream_ca
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        supervisor_pid: Some(std::process::id()),
        ..SessionInfo::default()
    };
    bundle::write_info(&dir, &info)?;

    let result = run_in_bundle(&config, &backend, capability, &dir, &mut info, started).await;
    let exit_code = match &result {
        Ok(code) => *code,
        Err(_) => -1,
    };
    info.ended_at = Some(receipts::format_time(SystemTime::now()));
    info.supervisor_pid = None;
    info.exit_code = (exit_code >= 0).then_some(exit_code);
    info.status = match (&result, exit_code) {
        (Err(_), _) => "failed".into(),
        (Ok(_), EXIT_INTERRUPTED) => "interrupted".into(),
        (Ok(_), EXIT_TIMEOUT) if config.timeout.is_some() => "timed_out".into(),
        (Ok(_), 0) => "completed".into(),
        (Ok(_), _) => "failed".into(),
    };
    bundle::write_info(&dir, &info)?;
    let report = report::build(&dir, Some(&config.receipt_key.verifying_key()))?;
    report::write(&dir, &report)?;
    let exit_code = result?;
    Ok(SessionOutcome {
        dir,
        exit_code,
        report,
    })
}

/// The part of the session that owns live resources.
async fn run_in_bundle(
    config: &RunConfig,
    backend: &Backend,
    capability: Capability,
    dir: &Path,
    info: &mut SessionInfo,
    started: Instant,
) -> Result<i32> {
    let out = Monitor::new(config.json_events);
    let session_id = info.id.clone();
    let network = tokio::task::spawn_blocking(move || SessionNetwork::create(&session_id))
        .await?
        .context("creating the session network")?;

    let capability_sha256 = hex::encode(Sha256::digest(config.token_text.trim().as_bytes()));
    let receipt_log = ReceiptLog::create(
        &dir.join(bundle::RECEIPTS),
        config.receipt_key.clone(),
        SessionStart {
            session_id: info.id.clone(),
            revocation_ids: capability.revocation_ids(),
            sandbox: info.backend.clone(),
            capability_sha256: Some(capability_sha256),
        },
    )
    .context("creating the receipt log")?;

    // Whatever fails from here, the chain gets its session_end receipt.
    let result = serve_and_supervise(
        config,
        backend,
        capability,
        dir,
        info,
        started,
        &network,
        &receipt_log,
        &out,
    )
    .await;
    let events_done = out.finish().await;
    let end = tokio::task::spawn_blocking(move || receipt_log.finish()).await?;
    drop(network);
    let code = result?;
    let end = end.context("writing the session_end receipt")?;
    out.summary_line(events_done, end.seq + 1);
    Ok(code)
}

/// Enforcement, proxy and control socket around the backend's supervisor;
/// each is stopped again before this returns, also on error.
#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename these
async fn serve_and_supervise(
    config: &RunConfig,
    backend: &Backend,
    capability: Capability,
    dir: &Path,
    info: &mut SessionInfo,
    started: Instant,
    network: &SessionNetwork,
    receipt_log: &ReceiptLog,
    out: &Monitor,
) -> Result<i32> {
    let proxy_ip = network.proxy_addr();
    let enforcement = enforcement::build(config, capability, receipt_log.clone())?;
    out.attach(enforcement.events.subscribe(), dir)?;

    let proxy = start_proxy(
        network,
        ProxyConfig {
            session: info.id.clone(),
            listen: ListenAddrs {
                https: Some(SocketAddr::from((proxy_ip, 443))),
                http: Some(SocketAddr::from((proxy_ip, 80))),
                dns: Some(SocketAddr::from((proxy_ip, 53))),
            },
            advertise: proxy_ip,
            upstream: UpstreamConfig {
                platform_roots: true,
                extra_ca_files: config.upstream_ca.clone(),
                overrides: config.resolve.iter().cloned().collect(),
                ..UpstreamConfig::default()
            },
            limits: Limits::default(),
        },
        enforcement.gate.clone(),
    )
    .await
    .context("starting the proxy in the session network");
    let proxy = match proxy {
        Ok(proxy) => proxy,
        Err(err) => {
            enforcement.shutdown();
            return Err(err);
        }
    };
    let ca_pem = proxy.ca_pem().to_owned();
    info.ca_fingerprint = hex::encode(Sha256::digest(proxy.ca().cert_der()));
    // The control socket: `openclaw approve`/`deny` and the web UI.
    let control = bundle::write_info(dir, info).and_then(|()| {
        super::control::serve(
            dir,
            enforcement.events.clone(),
            enforcement.approvals.clone(),
        )
    });
    let result = match &control {
        Err(_) => Ok(-1),
        Ok(_) => match backend {
            Backend::Netns => {
                supervise(
                    config,
                    dir,
                    info,
                    network,
                    proxy_ip,
                    &ca_pem,
                    &enforcement,
                    out,
                    started,
                )
                .await
            }
            Backend::Kvm(image) => {
                super::kvm::supervise(
                    config,
                    dir,
                    info,
                    network,
                    proxy_ip,
                    &ca_pem,
                    &enforcement,
                    out,
                    started,
                    image,
                )
                .await
            }
        },
    };

    // Teardown in reverse: no new decisions, then (in the caller) the chain's end.
    let control = match control {
        Ok(control) => {
            control.stop().await;
            Ok(())
        }
        Err(err) => Err(err),
    };
    enforcement.shutdown();
    proxy.shutdown().await;
    control?;
    result
}

/// Starts the proxy on listeners bound inside the session network (the
/// proxy itself never enters a namespace).
async fn start_proxy(
    network: &SessionNetwork,
    config: ProxyConfig,
    gate: Arc<dyn Gate>,
) -> Result<ProxyHandle> {
    let (netns_path, addrs) = (network.path().to_path_buf(), config.listen.clone());
    let listeners = tokio::task::spawn_blocking(move || {
        netns::run_in(&netns_path, move || Listeners::bind(&addrs))
    })
    .await???;
    Ok(Proxy::start_with_listeners(config, listeners, gate).await?)
}

#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename these
async fn supervise(
    config: &RunConfig,
    dir: &Path,
    info: &mut SessionInfo,
    network: &SessionNetwork,
    proxy_ip: Ipv4Addr,
    ca_pem: &str,
    enforcement: &SessionEnforcement,
    out: &Monitor,
    started: Instant,
) -> Result<i32> {
    let workdir = prepare_workdir(dir, config.workdir.as_deref())?;
    let (program, args) = config
        .command
        .split_first()
        .context("no command given after --")?;
    let mut spec = SandboxSpec::new(network, program, args, ca_pem.as_bytes().to_vec());
    spec.resolver = proxy_ip;
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

    let console = Console::create(&dir.join(bundle::CONSOLE_LOG))?;
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

/// Ctrl-C or SIGTERM.
pub(super) async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
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

/// "4 grants, 2 constraints"
pub fn headline(summary: &capabilities::Summary) -> String {
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    format!(
        "{}, {}",
        plural(summary.grants, "grant"),
        plural(summary.constraints, "constraint")
    )
}

/// `20261122-101500-3f9a1c`: sortable by start time, unique by its random tail.
fn new_session_id(at: SystemTime) -> String {
    let stamp = receipts::format_time(at); // 2026-11-22T10:15:00.123456Z
    let digits: String = stamp
        .chars()
        .filter(char::is_ascii_digit)
        .take(14)
        .collect();
    let random: [u8; 3] = rand::random();
    format!("{}-{}-{}", &digits[..8], &digits[8..], hex::encode(random))
}

fn create_private_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("creating {}", path.display()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_sort_by_time_and_fit_namespace_names() {
        let id = new_session_id(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000));
        assert_eq!(id.len(), 22, "{id}");
        assert!(id.starts_with("20261118-"), "{id}");
        assert!(id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        assert_ne!(
            id,
            new_session_id(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000))
        );
    }
}
