//! Sessions the daemon starts and stops: each one an `openclaw run` child
//! of the daemon's own executable, in the tenant's layout (its sessions
//! directory, root and receipt keys, `--tenant <name>`) with the daemon's
//! home (`--home`: rates, ledger, images), so a session that crashes never
//! takes the daemon with it. The child is found by its session.json
//! (`supervisor_pid`), its output kept in the bundle (`run.log`), stopped
//! with SIGTERM (the runner closes its chain), reaped by one thread, and
//! all of them stopped by the daemon's drain.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::leases::Lease;
use super::workdir::{self, StagedWorkdir};
use crate::audit::AuditLog;
use crate::broker::{self, TenantSecrets};
use crate::bundle;
use crate::control::CONTROL_SOCK;
use crate::keys;
use crate::session::backends::image;
use crate::session::recovery;
use crate::tenants::settings::{self, Settings};
use crate::tenants::{QuotaDb, TenantName, TenantRoot, QUOTA_DB_ENV};
use crate::usage::LedgerDb;

/// How `openclaw run` may be told its ledger (`run --ledger-db`).
const LEDGER_DB_ENV: &str = "OPENCLAW_LEDGER_DB";

/// The environment variable through which a session's `openclaw run` learns
/// the pid of the daemon that started it, to end with it ([`end_with_daemon`]).
const DAEMON_PID_ENV: &str = "OPENCLAW_SESSION_DAEMON";

/// Called first by an `openclaw run` that a daemon started (it finds
/// [`DAEMON_PID_ENV`]): asks the kernel for SIGTERM when the daemon dies
/// (the parent death signal), so a daemon that is SIGKILLed or crashes
/// takes its sessions with it within moments — each stopped as a stop
/// request stops it, chain closed as interrupted — instead of leaving them
/// to run, uncounted once their leases expire, until the next daemon
/// starts. A daemon already gone (the child's parent is no longer it) is
/// an error: nothing is started. Returns whether a daemon started it.
pub fn end_with_daemon() -> Result<bool> {
    let Some(text) = std::env::var_os(DAEMON_PID_ENV) else {
        return Ok(false);
    };
    let daemon: i32 = text
        .to_str()
        .and_then(|t| t.parse().ok())
        .with_context(|| format!("{DAEMON_PID_ENV} is not a pid"))?;
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
        .context("asking for SIGTERM when the daemon dies")?;
    // Checked after the request: a daemon that died before it is seen here.
    if nix::unistd::getppid().as_raw() != daemon {
        bail!("the daemon that started this session ({daemon}) has exited");
    }
    Ok(true)
}

/// How often a start looks for its session's ready bundle.
const START_POLL: Duration = Duration::from_millis(10);

/// Longest wait for a started session's sandbox (a KVM session may build
/// its guest image first).
const START_LIMIT: Duration = Duration::from_secs(300);

/// `POST /v1/sessions`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// The .cap file's text: a token minted under this tenant's root key.
    #[serde(default)]
    pub capabilities: Option<String>,
    /// Or a policy (TOML, `openclaw cap mint`'s input), minted by the daemon
    /// under the tenant's root key. Exactly one of the two.
    #[serde(default)]
    pub policy: Option<String>,
    /// argv of the agent.
    pub command: Vec<String>,
    #[serde(default)]
    pub backend: Option<String>,
    /// A name of the home's image store (`openclaw image list`): kvm only.
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub approve: Option<String>,
    /// Seconds a held request waits for its answer before it is denied.
    #[serde(default)]
    pub approval_timeout: Option<u64>,
    #[serde(default)]
    pub task: Option<String>,
    /// Names of the tenant's secrets the session may use (`openclaw secrets`).
    #[serde(default)]
    pub secrets: Vec<String>,
    /// The session's starting `/work`: a base64 `.tar.gz` (`workdir.rs`).
    #[serde(default)]
    pub workdir: Option<String>,
}

/// A create request once checked: every field valid for `openclaw run`.
pub struct Checked {
    token: String,
    command: Vec<String>,
    backend: &'static str,
    /// `--image`: the stored image's directory (a path, so the child cannot
    /// read the name as something else).
    image: Option<PathBuf>,
    approve: &'static str,
    /// `--approval-timeout`, seconds; None: run's default.
    approval_timeout: Option<u64>,
    task: Option<String>,
    /// `--user`: the name a trusted proxy gave (`identity`); None: run's
    /// default.
    pub user: Option<String>,
    secrets: Vec<String>,
    /// Where [`Launcher::start`] wrote them for the child, if any.
    secrets_file: Option<PathBuf>,
    /// `--workdir`: the archive unpacked, removed when this is dropped
    /// (after the sandbox is ready, or when the request is refused).
    workdir: Option<StagedWorkdir>,
    /// With `--database`: the session's place in its tenant's `sessions`
    /// quota across daemons, kept with the child once it runs (released
    /// when it is reaped) or released with this when the start fails.
    pub lease: Option<Lease>,
}

/// The `openclaw run` default a held request waits (its `--approval-timeout`).
const RUN_APPROVAL_TIMEOUT_SECS: u64 = 120;

/// Checks the body against the tenant and its settings (the tenant's
/// defaults fill what the body leaves out; the admin's bounds hold for
/// both); `Err((field, why))` names the field at fault. The workdir
/// archive is unpacked last, so a refusal of another field writes nothing.
pub fn check(
    root: &TenantRoot,
    home: &Path,
    settings: &Settings,
    body: CreateSession,
) -> Result<Checked, (&'static str, String)> {
    let token = match (body.capabilities, body.policy) {
        (Some(cap), None) => cap.trim().to_owned(),
        (None, Some(_)) if settings.admin.allow_policy == Some(false) => {
            return Err((
                "policy",
                "this tenant's sessions need a capability token the operator minted".into(),
            ))
        }
        (None, Some(policy)) => mint_policy(root, &policy)?,
        (Some(_), Some(_)) => {
            return Err(("policy", "give capabilities or policy, not both".into()))
        }
        (None, None) => {
            return Err((
                "capabilities",
                "give capabilities (a minted token) or policy".into(),
            ))
        }
    };
    let root_pub = keys::read_verifying_key(&root.keys_dir().join(keys::ROOT_PUB))
        .map_err(|_| ("capabilities", "the tenant has no root key".to_owned()))?;
    let capability = capabilities::UnverifiedToken::from_base64(&token)
        .and_then(|t| t.verify(root_pub.as_bytes()))
        .map_err(|_| {
            (
                "capabilities",
                "not a capability token minted under this tenant's root key".to_owned(),
            )
        })?;
    if capability
        .expires_at()
        .is_some_and(|t| t <= SystemTime::now())
    {
        return Err(("capabilities", "the capability token has expired".into()));
    }
    if body.command.is_empty() || body.command[0].is_empty() {
        return Err(("command", "expected a non-empty argv array".into()));
    }
    if body.command.iter().any(|a| a.contains('\0')) {
        return Err(("command", "arguments may not contain NUL".into()));
    }
    let (own, bounds) = (&settings.tenant, &settings.admin);
    let backend = match body
        .backend
        .as_deref()
        .or(own.backend.as_deref())
        .unwrap_or("netns")
    {
        "netns" => "netns",
        "kvm" if Path::new("/dev/kvm").exists() => "kvm",
        "kvm" => return Err(("backend", "kvm is not usable on this host".into())),
        _ => return Err(("backend", "expected netns or kvm".into())),
    };
    settings::backend_allowed(bounds, backend).map_err(|why| ("backend", why))?;
    let image = match (&body.image, backend) {
        (Some(_), "netns") => {
            return Err(("image", "an image is for the kvm backend".into()));
        }
        (Some(name), _) => Some(stored_image(home, bounds, name)?),
        // The tenant's default image applies to its kvm sessions only.
        (None, "kvm") => match &own.image {
            Some(name) => Some(stored_image(home, bounds, name)?),
            None if bounds.allowed_images.is_some() => {
                return Err((
                    "image",
                    "name an image: this tenant's kvm sessions boot one of its allowed images"
                        .into(),
                ))
            }
            None => None,
        },
        (None, _) => None,
    };
    // `api`: held until answered over the API (run's `prompt` with no
    // terminal waits for the control socket), denied at the timeout.
    let asked = body
        .approve
        .as_deref()
        .or(own.approve.as_deref())
        .unwrap_or("deny");
    let approve = match asked {
        "deny" => "deny",
        "auto" => "auto",
        "api" => "prompt",
        _ => return Err(("approve", "expected deny, auto or api".into())),
    };
    settings::approve_allowed(bounds, asked).map_err(|why| ("approve", why))?;
    let approval_timeout = match body.approval_timeout.or(own.approval_timeout) {
        Some(secs) if !(1..=settings::MAX_APPROVAL_TIMEOUT_SECS).contains(&secs) => {
            return Err((
                "approval_timeout",
                format!(
                    "expected whole seconds from 1 to {}",
                    settings::MAX_APPROVAL_TIMEOUT_SECS
                ),
            ))
        }
        Some(secs) => {
            settings::timeout_allowed(bounds, secs).map_err(|why| ("approval_timeout", why))?;
            Some(secs)
        }
        // run's default, held to the admin's bound.
        None => bounds
            .max_approval_timeout
            .filter(|max| *max < RUN_APPROVAL_TIMEOUT_SECS),
    };
    if body.task.as_deref().is_some_and(|t| t.contains('\0')) {
        return Err(("task", "the task may not contain NUL".into()));
    }
    let mut secrets = body.secrets;
    // The name is not echoed: it may be anything the client sent.
    if secrets.iter().any(|n| !broker::has_secret(root, n)) {
        return Err(("secrets", "names a secret this tenant does not have".into()));
    }
    let count = secrets.len();
    secrets.sort();
    secrets.dedup();
    if secrets.len() != count {
        return Err(("secrets", "names a secret twice".into()));
    }
    let workdir = match &body.workdir {
        Some(archive) => {
            let spawn_dir = spawn_dir(root).map_err(|e| {
                tracing::warn!("{e:#}");
                (
                    "workdir",
                    "the archive could not be unpacked on this host".to_owned(),
                )
            })?;
            let dest = spawn_dir.join(format!("{}.work", crate::audit::new_request_id()));
            Some(workdir::unpack(archive, dest).map_err(|why| ("workdir", why))?)
        }
        None => None,
    };
    Ok(Checked {
        token,
        command: body.command,
        backend,
        image,
        approve,
        approval_timeout,
        task: body.task,
        user: None,
        secrets,
        secrets_file: None,
        workdir,
        lease: None,
    })
}

/// The policy text minted under the tenant's root key (`openclaw cap
/// mint`), the token's base64 text.
fn mint_policy(root: &TenantRoot, text: &str) -> Result<String, (&'static str, String)> {
    let policy = capabilities::Policy::from_toml_str(text)
        .map_err(|e| ("policy", format!("not a valid policy: {e}")))?;
    let key = keys::read_signing_key(&root.keys_dir().join(keys::ROOT_KEY)).map_err(|_| {
        (
            "policy",
            "the tenant has no root key to mint with".to_owned(),
        )
    })?;
    capabilities::mint(&policy, &key.to_bytes(), SystemTime::now())
        .map_err(|e| ("policy", format!("cannot be minted: {e}")))
}

/// The directory of the home's image store named exactly `name` (never a
/// path or an id prefix), within the admin's allowed images.
pub fn stored_image(
    home: &Path,
    bounds: &settings::AdminKeys,
    name: &str,
) -> Result<PathBuf, (&'static str, String)> {
    if name == image::INITRAMFS_ONLY {
        return Err(("image", "name an image of the store".into()));
    }
    if !settings::valid_image_name(name) {
        return Err((
            "image",
            "an image name: 1 to 64 of A-Z a-z 0-9 . _ - (no paths)".into(),
        ));
    }
    settings::image_allowed(bounds, name).map_err(|why| ("image", why))?;
    let images = guest_image::store::list(home).map_err(|e| {
        tracing::warn!("reading the image store: {e}");
        ("image", "the image store cannot be read".to_owned())
    })?;
    images
        .into_iter()
        .find(|i| i.manifest.name == name)
        .map(|i| i.dir)
        .ok_or_else(|| {
            (
                "image",
                "no image of that name (`openclaw image list`)".into(),
            )
        })
}

/// `<tenant root>/spawn/` (0700): what a starting session reads once.
fn spawn_dir(root: &TenantRoot) -> Result<PathBuf> {
    let dir = root.path().join("spawn");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .context("creating the tenant's spawn directory")?;
    Ok(dir)
}

/// What a stop request found.
pub enum Stopped {
    /// SIGTERM sent; the session is ending.
    Signalled,
    /// No session of this daemon runs under that id.
    NotRunning,
}

/// The child's output (what `openclaw run` prints), kept in its bundle.
pub const RUN_LOG: &str = "run.log";

/// What the operator sets for every session of the daemon (`openclaw serve`
/// flags), never a tenant: where a host's traffic goes and which extra CAs
/// upstream TLS trusts (a staging provider, a test upstream).
#[derive(Debug, Clone, Default)]
pub struct SessionDefaults {
    pub resolve: Vec<(String, std::net::SocketAddr)>,
    pub upstream_ca: Vec<PathBuf>,
    /// The store whose day quotas each session's proxy holds LLM calls
    /// against (`run --quota-db`): the home's control.db, or the
    /// `--database` PostgreSQL database. None: sessions hold none (a
    /// tenant with day quotas is then refused a session, fail closed).
    pub quota_db: Option<QuotaDb>,
    /// Where sessions write their usage rows (`run --ledger-db`); None:
    /// the home's ledger.db.
    pub ledger_db: Option<LedgerDb>,
}

impl Launcher {
    /// The home's chain-heads.jsonl: its sessions' recovery never closes
    /// again a session recorded there as ended.
    fn heads(&self) -> PathBuf {
        crate::home::chain_heads_path(&self.home)
    }

    /// Where the ends of its sessions that recovery closes are audited:
    /// the daemon's audit log (with `--database`, its table too).
    fn audited(&self) -> recovery::Audited<'_> {
        recovery::Audited {
            log: &self.audit,
            via: crate::audit::Via::Api,
        }
    }

    /// The ledger its sessions' usage rows go to.
    fn ledger(&self) -> LedgerDb {
        self.defaults
            .ledger_db
            .clone()
            .unwrap_or_else(|| LedgerDb::Sqlite(crate::usage::ledger_path(&self.home)))
    }

    /// Whether sessions hold LLM calls against the tenant's day quotas.
    pub fn holds_day_quotas(&self) -> bool {
        self.defaults.quota_db.is_some()
    }
}

/// The daemon's running children, by (tenant, session id).
pub struct Launcher {
    exe: PathBuf,
    home: PathBuf,
    defaults: SessionDefaults,
    audit: AuditLog,
    running: Mutex<HashMap<(String, String), Running>>,
    /// Set once by [`Launcher::drain`]: no session starts after it.
    draining: AtomicBool,
    /// Starts in flight (their child not yet in `running`). With
    /// `draining`, SeqCst: a start either sees the drain and refuses, or is
    /// counted here and waited for by it.
    starting: AtomicUsize,
    /// Hands each session's command to the spawner thread.
    spawner: Mutex<std::sync::mpsc::Sender<SpawnRequest>>,
}

/// A command for the spawner thread, and where its child goes.
type SpawnRequest = (Command, std::sync::mpsc::Sender<std::io::Result<Child>>);

/// A start refused because the daemon is draining (503 `unavailable`).
#[derive(Debug)]
pub struct Draining;

impl std::fmt::Display for Draining {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the daemon is shutting down: no new sessions")
    }
}

impl std::error::Error for Draining {}

/// What [`Launcher::drain`] did.
#[derive(Debug, Default)]
pub struct Drained {
    /// Sessions that were signalled and ended by themselves.
    pub stopped: usize,
    /// Sessions still running at the limit: SIGKILLed, then recovered.
    pub killed: usize,
}

/// A session process of this daemon.
struct Running {
    process: Child,
    /// SIGTERM sent by the drain.
    drained: bool,
    /// SIGTERM sent by a stop request or a tenant's deletion (whoever sent
    /// it accounts for it; another deletion check does not again).
    stopping: bool,
    /// Its lease (`--database`), released when the child is reaped.
    lease: Option<Lease>,
    /// The tenant's sessions directory and receipt key, for recovery.
    sessions: PathBuf,
    receipt_key: PathBuf,
}

impl Launcher {
    /// The launcher, and its reaper thread.
    pub fn new(home: &Path, defaults: SessionDefaults, audit: AuditLog) -> Result<Arc<Launcher>> {
        // Sessions are forked by one thread that lives as long as the
        // daemon: the kernel sends a child its parent death signal when the
        // thread that forked it ends, and the request threads (tokio's
        // blocking pool) end when idle.
        let (spawner, requests) = std::sync::mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("serve-spawner".into())
            .spawn(move || {
                for (mut cmd, answer) in requests {
                    let _ = answer.send(cmd.spawn());
                }
            })
            .context("starting the spawner thread")?;
        let launcher = Arc::new(Launcher {
            exe: std::env::current_exe().context("finding the daemon's executable")?,
            home: home.to_path_buf(),
            defaults,
            audit,
            running: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            starting: AtomicUsize::new(0),
            spawner: Mutex::new(spawner),
        });
        let reaper = launcher.clone();
        std::thread::Builder::new()
            .name("serve-reaper".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(250));
                reaper.reap();
            })
            .context("starting the reaper thread")?;
        Ok(launcher)
    }

    /// Forgets ended children. One that left its session marked running
    /// (killed before its runner watched for SIGTERM, or crashed) has its
    /// session recovered: sandbox removed, chain closed as interrupted.
    fn reap(&self) {
        let mut ended = Vec::new();
        {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            running.retain(|(tenant, id), child| match child.process.try_wait() {
                Ok(None) => true,
                Ok(Some(status)) => {
                    tracing::info!(tenant, session = id, "session process ended: {status}");
                    ended.push((
                        id.clone(),
                        child.sessions.clone(),
                        child.receipt_key.clone(),
                        child.lease.take(),
                    ));
                    false
                }
                // Its lease goes with it (dropped here, under the lock).
                Err(_) => false,
            });
        }
        // Each lease is released (dropped) once its session is settled.
        for (id, sessions, receipt_key, _lease) in ended {
            let still_running = bundle::read_info(&sessions.join(&id))
                .map(|info| info.status == "running")
                .unwrap_or(false);
            if still_running {
                let key = keys::read_signing_key(&receipt_key);
                match key.and_then(|key| {
                    recovery::recover_into(
                        &sessions,
                        &self.heads(),
                        &self.ledger(),
                        self.audited(),
                        Some(&key),
                    )
                }) {
                    Ok(done) => {
                        tracing::info!(session = id, "recovered: {:?}", done.sessions);
                        // Its LLM calls in flight when it died hold no quota any more.
                        if let Some(db) = &self.defaults.quota_db {
                            for session in &done.sessions {
                                db.release_session(&session.id);
                            }
                        }
                    }
                    Err(e) => tracing::warn!(session = id, "recovering the session: {e:#}"),
                }
            }
        }
    }

    /// Starts the session; its id once its sandbox is ready. While the
    /// daemon drains: [`Draining`].
    pub fn start(&self, tenant: &TenantName, root: &TenantRoot, req: Checked) -> Result<String> {
        self.starting.fetch_add(1, Ordering::SeqCst);
        let result = if self.draining.load(Ordering::SeqCst) {
            Err(anyhow::Error::new(Draining))
        } else {
            self.start_counted(tenant, root, req)
        };
        self.starting.fetch_sub(1, Ordering::SeqCst);
        result
    }

    fn start_counted(
        &self,
        tenant: &TenantName,
        root: &TenantRoot,
        mut req: Checked,
    ) -> Result<String> {
        let sessions = root.sessions_dir();
        let spawn_dir = spawn_dir(root)?;
        let nonce = crate::audit::new_request_id();
        let cap_path = spawn_dir.join(format!("{nonce}.cap"));
        let log_path = spawn_dir.join(format!("{nonce}.log"));
        let before = dir_names(&sessions);
        // The named secrets, decrypted (before any file is written, so a
        // failure leaves nothing behind).
        let secrets_text = if req.secrets.is_empty() {
            None
        } else {
            let text = TenantSecrets::open(&self.home, tenant)?
                .resolve(&req.secrets)
                .context("resolving the session's secrets")?;
            Some(text)
        };
        {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&cap_path)
                .context("writing the capability token")?;
            f.write_all(req.token.as_bytes())?;
        }
        // The secrets file the child reads before its sandbox is ready;
        // removed with the token below.
        let secrets_path = spawn_dir.join(format!("{nonce}.secrets.toml"));
        if let Some(text) = secrets_text {
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&secrets_path)
                .and_then(|mut f| f.write_all(text.as_bytes()));
            if let Err(e) = written {
                let _ = std::fs::remove_file(&cap_path);
                let _ = std::fs::remove_file(&secrets_path);
                return Err(e).context("writing the session's secrets");
            }
            req.secrets_file = Some(secrets_path.clone());
        }
        let result = self.spawn_and_find(tenant, root, req, &cap_path, &log_path, &before);
        // The runner copied the token into the bundle (or never will), and
        // read its secrets before its sandbox was ready.
        let _ = std::fs::remove_file(&cap_path);
        let _ = std::fs::remove_file(&secrets_path);
        match &result {
            // Into the bundle at once (the child keeps writing through its
            // descriptor): it is archived, downloaded and deleted with the
            // session instead of piling up in spawn/.
            Ok(id) => {
                let kept = sessions.join(id).join(RUN_LOG);
                if let Err(e) = std::fs::rename(&log_path, &kept) {
                    tracing::warn!(
                        session = id,
                        "keeping the session's output in {}: {e}",
                        log_path.display()
                    );
                }
            }
            Err(e) => tracing::warn!(
                "session start failed: {e:#}; its output is in {}",
                log_path.display()
            ),
        }
        result
    }

    fn spawn_and_find(
        &self,
        tenant: &TenantName,
        root: &TenantRoot,
        mut req: Checked,
        cap_path: &Path,
        log_path: &Path,
        before: &HashSet<String>,
    ) -> Result<String> {
        let keys_dir = root.keys_dir();
        let sessions = root.sessions_dir();
        let mut cmd = Command::new(&self.exe);
        cmd.arg("run")
            .arg("--capabilities")
            .arg(cap_path)
            .arg("--pubkey")
            .arg(keys_dir.join(keys::ROOT_PUB))
            .arg("--receipt-key")
            .arg(keys_dir.join(keys::RECEIPT_KEY))
            .arg("--sessions-dir")
            .arg(&sessions)
            .arg("--home")
            .arg(&self.home)
            .args(["--backend", req.backend, "--approve", req.approve])
            .args(["--tenant", tenant.as_str()]);
        if let Some(user) = &req.user {
            cmd.arg("--user").arg(user);
        }
        for (host, addr) in &self.defaults.resolve {
            cmd.arg("--resolve").arg(format!("{host}={addr}"));
        }
        for ca in &self.defaults.upstream_ca {
            cmd.arg("--upstream-ca").arg(ca);
        }
        // The tenant's LLM quotas, held at the proxy on each call. A
        // database URL goes through the environment, never argv (which
        // every user of the host reads); no other value is inherited.
        cmd.env_remove(QUOTA_DB_ENV);
        match &self.defaults.quota_db {
            Some(QuotaDb::Sqlite(path)) => {
                cmd.arg("--quota-db").arg(path);
            }
            Some(QuotaDb::Postgres(url)) => {
                cmd.env(QUOTA_DB_ENV, url.expose_secret());
                // The daemon's bound on each call is its sessions' too.
                if let Some(timeout) = url.timeout() {
                    cmd.arg("--database-timeout")
                        .arg(humantime::format_duration(timeout).to_string());
                }
            }
            None => {}
        }
        cmd.env_remove(LEDGER_DB_ENV);
        match &self.defaults.ledger_db {
            Some(LedgerDb::Sqlite(path)) => {
                cmd.arg("--ledger-db").arg(path);
            }
            Some(LedgerDb::Postgres(url)) => {
                cmd.env(LEDGER_DB_ENV, url.expose_secret());
            }
            None => {}
        }
        if let Some(task) = &req.task {
            cmd.arg("--agent").arg(task);
        }
        if let Some(path) = &req.secrets_file {
            cmd.arg("--secrets").arg(path);
        }
        if let Some(dir) = &req.image {
            cmd.arg("--image").arg(dir);
        }
        if let Some(secs) = req.approval_timeout {
            cmd.arg("--approval-timeout").arg(format!("{secs}s"));
        }
        if let Some(staged) = &req.workdir {
            cmd.arg("--workdir").arg(staged.path());
        }
        cmd.arg("--").args(&req.command);
        let log = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(log_path)
            .context("creating the session's output log")?;
        // The session needs no tenant store: OPENCLAW_DATABASE is not passed
        // on (the day quotas' URL, above, is all it gets).
        cmd.env("OPENCLAW_HOME", &self.home)
            .env_remove("OPENCLAW_DATABASE")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        cmd.env(DAEMON_PID_ENV, std::process::id().to_string());
        let mut child = self.spawn(cmd).context("starting openclaw run")?;
        let pid = child.id();
        let deadline = Instant::now() + START_LIMIT;
        let mut signalled = false;
        loop {
            if let Some(id) = find(&sessions, before, pid, false) {
                let key = (tenant.to_string(), id.clone());
                let lease = req.lease.take();
                if let Some(lease) = &lease {
                    lease.started(&id);
                }
                let running = Running {
                    process: child,
                    drained: false,
                    stopping: false,
                    lease,
                    sessions: sessions.clone(),
                    receipt_key: keys_dir.join(keys::RECEIPT_KEY),
                };
                self.running
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, running);
                return Ok(id);
            }
            if let Some(status) = child.try_wait()? {
                // It may have written session.json and ended at once.
                if let Some(id) = find(&sessions, before, pid, true) {
                    return Ok(id);
                }
                // A bundle it left marked running is closed now, not at the
                // tenant's next session.
                let key = keys::read_signing_key(&keys_dir.join(keys::RECEIPT_KEY));
                let recovered = key.and_then(|key| {
                    recovery::recover_into(
                        &sessions,
                        &self.heads(),
                        &self.ledger(),
                        self.audited(),
                        Some(&key),
                    )
                });
                if let Err(e) = recovered {
                    tracing::warn!("recovering after a failed start: {e:#}");
                }
                if self.draining.load(Ordering::SeqCst) {
                    return Err(anyhow::Error::new(Draining));
                }
                bail!("openclaw run ended before its session started ({status})");
            }
            // A start the drain overtook: stopped like the running ones (it
            // ends here, or becomes ready and is signalled again by the drain).
            if self.draining.load(Ordering::SeqCst) && !signalled {
                signal(&child, nix::sys::signal::Signal::SIGTERM);
                signalled = true;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("openclaw run did not start a session in {START_LIMIT:?}");
            }
            // Short: the wait is the create's answer time (one readdir and
            // a small file read per look).
            std::thread::sleep(START_POLL);
        }
    }

    /// `cmd` spawned by the spawner thread.
    fn spawn(&self, cmd: Command) -> Result<Child> {
        let (answer, child) = std::sync::mpsc::channel();
        self.spawner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send((cmd, answer))
            .map_err(|_| anyhow::anyhow!("the spawner thread has ended"))?;
        Ok(child
            .recv()
            .map_err(|_| anyhow::anyhow!("the spawner thread has ended"))??)
    }

    /// SIGTERM to the session's process, if this daemon runs it. Under the
    /// lock, so the child cannot be reaped (and its pid reused) meanwhile.
    pub fn stop(&self, tenant: &TenantName, id: &str) -> Result<Stopped> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let key = (tenant.to_string(), id.to_owned());
        let Some(child) = running.get_mut(&key) else {
            return Ok(Stopped::NotRunning);
        };
        // An ended child is left to the reaper (which recovers its session
        // if it needs it; `try_wait` keeps the status for it).
        if child.process.try_wait()?.is_some() {
            return Ok(Stopped::NotRunning);
        }
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.process.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
            .context("signalling the session")?;
        child.stopping = true;
        Ok(Stopped::Signalled)
    }

    /// Stops every session of `tenant` this daemon runs (its tenant is being
    /// deleted): SIGTERM, as a stop request, waited for up to `limit`; what
    /// still runs then is SIGKILLed and recovered, as in the drain. Starts
    /// in flight are waited for within `limit` too (the tenant's token is
    /// already refused, so no new one follows). Blocking; the ids of the
    /// sessions this call signalled (one already stopping is waited for,
    /// not signalled again: who stopped it accounts for it).
    pub fn stop_tenant(&self, tenant: &TenantName, limit: Duration) -> Vec<String> {
        self.stop_where(|t, _| t == tenant.as_str(), true, limit, |_, _| {})
            .into_iter()
            .map(|(_, id)| id)
            .collect()
    }

    /// Stops every session this daemon runs whose lease is one of
    /// `leases` (given up: it could not be renewed), as [`Launcher::stop_tenant`]
    /// does, without waiting for starts in flight (a session started on a
    /// lease given up is stopped by the next call). `signalled` is told
    /// each session's tenant and id once it was sent SIGTERM, before the
    /// wait: reaping may wait on the database that could not be reached
    /// (the release of the lease), and the stop is said at once however
    /// long that takes.
    pub fn stop_leased(
        &self,
        leases: &[String],
        limit: Duration,
        signalled: impl FnMut(&str, &str),
    ) {
        self.stop_where(
            |_, lease| lease.is_some_and(|l| leases.iter().any(|id| id == l.id())),
            false,
            limit,
            signalled,
        );
    }

    /// SIGTERM to every running session `chosen` (by tenant and lease)
    /// picks, each then told to `on_signal` (tenant, id), waited for up to
    /// `limit` (and, with `wait_for_starts`, the starts in flight too); what
    /// still runs then is SIGKILLed and recovered. The (tenant, id) of
    /// those this call signalled.
    fn stop_where(
        &self,
        chosen: impl Fn(&str, Option<&Lease>) -> bool,
        wait_for_starts: bool,
        limit: Duration,
        mut on_signal: impl FnMut(&str, &str),
    ) -> Vec<(String, String)> {
        let deadline = Instant::now() + limit;
        let mut signalled: Vec<(String, String)> = Vec::new();
        loop {
            let told = signalled.len();
            let idle = {
                let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
                let late = Instant::now() > deadline;
                let mut own = 0;
                for ((t, id), child) in running.iter_mut() {
                    if !chosen(t, child.lease.as_ref())
                        || !matches!(child.process.try_wait(), Ok(None))
                    {
                        continue;
                    }
                    own += 1;
                    if late {
                        let _ = child.process.kill();
                        let _ = child.process.wait();
                    } else if !child.stopping {
                        child.stopping = true;
                        signalled.push((t.clone(), id.clone()));
                        signal(&child.process, nix::sys::signal::Signal::SIGTERM);
                    }
                }
                (own == 0 || late)
                    && (!wait_for_starts || self.starting.load(Ordering::SeqCst) == 0)
            };
            for (tenant, id) in &signalled[told..] {
                on_signal(tenant, id);
            }
            // Forgets the ended ones, recovering any left marked running.
            self.reap();
            if idle || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        signalled
    }

    /// The tenants of the sessions this daemon runs (each once).
    pub fn running_tenants(&self) -> Vec<String> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let mut tenants: Vec<String> = running.keys().map(|(t, _)| t.clone()).collect();
        tenants.sort_unstable();
        tenants.dedup();
        tenants
    }

    /// From now on every start is refused with [`Draining`].
    pub fn refuse_starts(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// The drain's part in sessions: no new ones start; every running one
    /// gets SIGTERM (its runner stops the sandbox and closes the chain with
    /// `session_end`, as for a stop request) and is waited for, up to
    /// `limit`; what still runs then is SIGKILLed and recovered (chain
    /// closed as interrupted by the daemon). Blocking.
    pub fn drain(&self, limit: Duration) -> Drained {
        self.refuse_starts();
        let deadline = Instant::now() + limit;
        let mut done = Drained::default();
        loop {
            let idle = {
                let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
                for child in running.values_mut().filter(|c| !c.drained) {
                    if matches!(child.process.try_wait(), Ok(None)) {
                        signal(&child.process, nix::sys::signal::Signal::SIGTERM);
                        done.stopped += 1;
                    }
                    child.drained = true;
                }
                if Instant::now() > deadline {
                    for child in running.values_mut() {
                        if matches!(child.process.try_wait(), Ok(None)) {
                            let _ = child.process.kill();
                            let _ = child.process.wait();
                            done.killed += 1;
                            done.stopped = done.stopped.saturating_sub(1);
                        }
                    }
                }
                running.is_empty() && self.starting.load(Ordering::SeqCst) == 0
            };
            // Forgets the ended ones, recovering any left marked running.
            self.reap();
            if idle || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        done
    }
}

/// Sends `sig` to a child not yet waited for (its pid cannot be reused).
fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

fn dir_names(dir: &Path) -> HashSet<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The new session directory whose session.json names `pid` as its
/// supervisor and whose sandbox is ready (`sandbox_ready_ms` recorded, the
/// control socket bound: the runner watches for SIGTERM from then on), or
/// with `ended` (the child has exited), a new one that
/// names no supervisor any more: a session that ran to its end before it
/// was looked at.
fn find(sessions: &Path, before: &HashSet<String>, pid: u32, ended: bool) -> Option<String> {
    let mut done = None;
    for name in dir_names(sessions).difference(before) {
        let Ok(info) = bundle::read_info(&sessions.join(name)) else {
            continue;
        };
        if info.id != *name {
            continue;
        }
        match info.supervisor_pid {
            Some(p)
                if p == pid
                    && info.sandbox_ready_ms.is_some()
                    && sessions.join(name).join(CONTROL_SOCK).exists() =>
            {
                return Some(info.id)
            }
            None if ended => done = Some(info.id),
            _ => {}
        }
    }
    done
}
