//! The session lifecycle behind `openclaw run` (and `openclaw demo`): backend
//! choice, bundle, session network, receipt log, enforcing proxy, control
//! socket, the backend (`backends/netns.rs` or `backends/kvm.rs`), live
//! monitor, teardown and report, in that order, undone in reverse.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use ::netns::SessionNetwork;
use anyhow::{bail, Context, Result};
use capabilities::{Capability, UnverifiedToken};
use proxy::{
    Gate, Limits, ListenAddrs, Listeners, Proxy, ProxyConfig, ProxyHandle, UpstreamConfig,
};
use receipts::{ReceiptLog, SessionStart};
use sha2::{Digest, Sha256};
use tracing::Instrument;

use super::backends::choice::{self, Backend};
use super::backends::{kvm, netns, BackendContext};
use super::config::{RunConfig, RunEnd, EXIT_SETUP};
use super::console::Console;
use super::enforcement;
use super::monitor::Monitor;
use super::recovery;
use crate::bundle::{self, CapabilitySummary, SessionBounds, SessionInfo};
use crate::control;
use crate::report::{self, Report};
use crate::usage;

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
    // Whatever dead supervisors left (sandboxes, namespaces, open chains)
    // is recovered before anything new is made.
    let (sessions_dir, heads, ledger, key) = (
        config.sessions_dir.clone(),
        crate::home::chain_heads_path(&config.home),
        config.ledger(),
        config.receipt_key.clone(),
    );
    let audit_log = Arc::new(audit_log(&config));
    let via = audit_via(&config);
    let recovery_audit = audit_log.clone();
    match tokio::task::spawn_blocking(move || {
        let audit = recovery::Audited {
            log: &recovery_audit,
            via,
        };
        recovery::recover_into(&sessions_dir, &heads, &ledger, audit, Some(&key))
    })
    .await?
    {
        Ok(done) => {
            for session in &done.sessions {
                if matches!(session.chain, recovery::ChainOutcome::Refused(_)) {
                    eprintln!("openclaw: warning: {session}");
                    continue;
                }
                eprintln!("openclaw: recovered session {session}");
                // Its calls in flight when it died hold no quota any more.
                if let Some(db) = &config.quota_db {
                    db.release_session(&session.id);
                }
            }
        }
        Err(err) => tracing::warn!("recovering after earlier sessions: {err:#}"),
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
    // The secrets file is read here as well as by the enforcement: a bad
    // file, or a reference that does not resolve, stops the session before
    // any sandbox exists, and session.json lists the names.
    let secret_names: Vec<String> = match &config.secrets {
        Some(path) => enforce::SecretStore::load(path)
            .with_context(|| format!("loading the secrets file {}", path.display()))?
            .names()
            .into_iter()
            .map(str::to_owned)
            .collect(),
        None => Vec::new(),
    };
    let choice = config.backend;
    let (image, program) = (config.image.clone(), config.command.first().cloned());
    let home = config.home.clone();
    let chosen = tokio::task::spawn_blocking(move || {
        choice::choose(choice, image.as_deref(), program.as_deref(), &home)
    })
    .await??;
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
            llm_budget_micro_usd: capability.llm_budget_micro_usd(),
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
        bounds: SessionBounds {
            work_max_bytes: config.bounds.work_max_bytes,
            console_max_bytes: config.bounds.console_max_bytes,
            dns_refusal_receipts: config.bounds.dns_refusal_receipts,
            ..SessionBounds::default()
        },
        tenant: Some(config.labels.tenant.clone()),
        user: Some(config.labels.user.clone()),
        secrets: secret_names,
        ..SessionInfo::default()
    };
    info.set_supervisor_to_self();
    bundle::write_info(&dir, &info)?;

    let span = tracing::error_span!("session", session = %id);
    let result = run_in_bundle(&config, &backend, capability, &dir, &mut info, started)
        .instrument(span)
        .await;
    let exit_code = match &result {
        Ok(end) => end.code(),
        Err(_) => -1,
    };
    info.ended_at = Some(receipts::format_time(SystemTime::now()));
    info.supervisor_pid = None;
    info.supervisor_start = None;
    info.supervisor_boot_id = None;
    info.exit_code = (exit_code >= 0).then_some(exit_code);
    // From what the supervisor saw, not from the code: a command can exit
    // 130 or 124 by itself.
    info.status = match &result {
        Err(_) => "failed".into(),
        Ok(RunEnd::Interrupted) => "interrupted".into(),
        Ok(RunEnd::TimedOut) => "timed_out".into(),
        // The command failed after /work filled up: say what most likely
        // made it fail (`bounds` has the detail either way).
        Ok(RunEnd::Exited(code)) if *code != 0 && info.bounds.work_full => "work_full".into(),
        Ok(RunEnd::Exited(0)) => "completed".into(),
        Ok(RunEnd::Exited(_)) => "failed".into(),
    };
    bundle::write_info(&dir, &info)?;
    let report = report::build(&dir, Some(&config.receipt_key.verifying_key()))
        .and_then(|report| report::write(&dir, &report).map(|()| report));
    if report.is_ok() {
        // The ledger is an index of the chains: a failure here loses
        // nothing (`openclaw usage rebuild` recreates it), so it warns and
        // goes on.
        let ledger = config.ledger();
        let (ledger_dir, key) = (dir.clone(), config.receipt_key.verifying_key());
        match tokio::task::spawn_blocking(move || {
            usage::record_session(&ledger, &ledger_dir, &key)
        })
        .await?
        {
            Ok(_) => {}
            Err(err) => eprintln!(
                "openclaw: warning: the usage ledger was not updated ({err:#}); `openclaw usage rebuild` recreates it from the receipts"
            ),
        }
    }
    // Last: the end is audited once everything else about it is written,
    // also when the report could not be.
    let end = session_end_record(&config, &info, report.as_ref().ok());
    // Blocking: with a database, its table is written too (each call bounded).
    let appended = tokio::task::spawn_blocking(move || audit_log.append(&end)).await?;
    if let Err(err) = appended {
        eprintln!("openclaw: warning: the session's end was not audited: {err:#}");
    }
    let report = report?;
    let exit_code = result?.code();
    Ok(SessionOutcome {
        dir,
        exit_code,
        report,
    })
}

/// How this run's audit lines came: `api` when `openclaw serve` started
/// it (its tenant's request), `cli` when the operator ran it.
fn audit_via(config: &RunConfig) -> crate::audit::Via {
    if config.daemon_started {
        crate::audit::Via::Api
    } else {
        crate::audit::Via::Cli
    }
}

/// Where this run's audit lines go: the home's audit.jsonl and, with a
/// PostgreSQL quota store (the database `openclaw serve --database` passes
/// its sessions), that database's audit table too, where the daemon's own
/// lines go. The table is connected to when a line is first written.
fn audit_log(config: &RunConfig) -> crate::audit::AuditLog {
    let log = crate::audit::AuditLog::at_home(&config.home);
    match &config.quota_db {
        Some(crate::tenants::QuotaDb::Postgres(url)) => {
            log.also_into(Arc::new(crate::tenants::PgAuditTable::new(url.clone())))
        }
        _ => log,
    }
}

/// The session's end line, beside the start `openclaw serve` recorded (or
/// none, for a run from the terminal). A failure to append it is said, not
/// fatal: the session is over, and its bundle and chain record it.
fn session_end_record(
    config: &RunConfig,
    info: &SessionInfo,
    report: Option<&Report>,
) -> crate::audit::AuditRecord {
    let end = crate::audit::SessionEnd {
        id: &info.id,
        tenant: &config.labels.tenant,
        via: audit_via(config),
        status: &info.status,
        receipts: report.map(|r| r.receipts.count),
        chain_head: report.and_then(|r| r.receipts.last_hash.as_deref()),
    };
    end.record()
}

/// The part of the session that owns live resources.
async fn run_in_bundle(
    config: &RunConfig,
    backend: &Backend,
    capability: Capability,
    dir: &Path,
    info: &mut SessionInfo,
    started: Instant,
) -> Result<RunEnd> {
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
            tenant: Some(config.labels.tenant.clone()),
            user: Some(config.labels.user.clone()),
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
    // The chain head, kept outside the bundle: a chain cut and closed
    // again by recovery no longer ends there (`openclaw verify --heads`),
    // and recovery refuses to close a session recorded here.
    let head = crate::home::ChainHead::new(&info.id, end.seq, end.hash, SystemTime::now());
    if let Err(err) = crate::home::record_chain_head(&config.home, &head) {
        eprintln!(
            "warning: the chain head of {} was not recorded outside the bundle: {err:#}",
            info.id
        );
    }
    out.summary_line(events_done, end.seq + 1, &head.head);
    // The terminal gets the rest, unless it takes nothing for a while (a
    // paused terminal, a pipe nobody reads): the session is over either way.
    let screen = out.screen().clone();
    let _ = tokio::task::spawn_blocking(move || screen.drain()).await;
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
) -> Result<RunEnd> {
    let proxy_ip = network.proxy_addr();
    let enforcement = enforcement::build(
        config,
        &info.id,
        capability,
        receipt_log.clone(),
        out.screen(),
    )?;
    out.attach(enforcement.events.subscribe(), dir)?;
    // Each LLM call's ledger row as its usage receipt lands, so spend is
    // readable while the session runs (the end fill completes it).
    let live_ledger = usage::live::LiveLedger::start(
        enforcement.events.subscribe(),
        config.ledger(),
        dir.join(bundle::RECEIPTS),
        usage::live::Labels {
            tenant: config.labels.tenant.clone(),
            user: config.labels.user.clone(),
        },
    );

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
    let events = enforcement.events.clone();
    let server = bundle::write_info(dir, info).and_then(|()| {
        control::serve(
            dir,
            move || events.subscribe(),
            enforcement.approvals.clone(),
        )
    });
    let result = match &server {
        // `stopped?` below returns the server's error.
        Err(_) => Ok(RunEnd::Exited(-1)),
        // The backend's command writes its output here from its first byte.
        Ok(_) => match Console::create(
            &dir.join(bundle::CONSOLE_LOG),
            config.bounds.console_max_bytes,
            out.screen().clone(),
        ) {
            Err(err) => Err(err),
            Ok(console) => {
                let context = BackendContext {
                    config,
                    dir,
                    info,
                    network,
                    ca_pem: &ca_pem,
                    enforcement: &enforcement,
                    console,
                    monitor: out,
                    started,
                };
                match backend {
                    Backend::Netns => netns::supervise(context).await,
                    Backend::Kvm(image) => kvm::supervise(context, image).await,
                }
            }
        },
    };

    // Teardown in reverse: no new decisions, then (in the caller) the chain's end.
    let stopped = match server {
        Ok(server) => {
            server.stop().await;
            Ok(())
        }
        Err(err) => Err(err),
    };
    enforcement.shutdown();
    proxy.shutdown().await;
    live_ledger.finish().await;
    stopped?;
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
        ::netns::run_in(&netns_path, move || Listeners::bind(&addrs))
    })
    .await???;
    Ok(Proxy::start_with_listeners(config, listeners, gate).await?)
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
