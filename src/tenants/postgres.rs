//! The PostgreSQL [`Store`] (`--database postgres://…`): tenants and token
//! hashes in a database several hosts share, and the audit log's lines
//! ([`AuditTable`]). One connection per handle, owned by a thread of its
//! own; the schema is created or migrated at open.
//!
//! Why a thread owns the connection: the `postgres` client is synchronous
//! (the `Store` trait is, and the daemon calls it from blocking threads) but
//! runs a small tokio runtime inside, which must be neither started nor
//! dropped on an async thread. Its own thread makes any caller safe, drops
//! the client where that is allowed, and serializes the handle's queries as
//! the SQLite store's `Mutex<Connection>` does: store calls are single short
//! statements, so one connection per process is not what limits the daemon.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use postgres::config::Host;
use postgres::error::SqlState;
use postgres::{Client, Config, NoTls};

use super::name::TenantName;
use super::quota::Quotas;
use super::store::{DeleteBegun, Store, TenantRecord, TenantStoreError};
use super::token::TokenHash;
use crate::audit::{AuditRecord, AuditTable};

/// The schema version this openclaw reads (`openclaw_schema.version`); a
/// database at a newer version is refused.
const SCHEMA_VERSION: i32 = 9;

/// `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`, in the
/// transaction that holds the migration lock. A change is a new entry, never
/// an edit of one that shipped. Names are `COLLATE "C"`: compared and
/// ordered byte-wise whatever the database's locale.
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [
    "
CREATE TABLE tenants (
    name TEXT COLLATE \"C\" PRIMARY KEY NOT NULL,
    token_sha256 BYTEA NOT NULL CHECK (octet_length(token_sha256) = 32),
    created_at TEXT NOT NULL,
    token_issued_at TEXT NOT NULL
);
CREATE TABLE admin_token (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    token_sha256 BYTEA NOT NULL CHECK (octet_length(token_sha256) = 32),
    issued_at TEXT NOT NULL
);
",
    // The audit log's lines from every host, as written to audit.jsonl
    // (`line`); `time` and `tenant` copied out for queries.
    "
CREATE TABLE audit (
    id BIGSERIAL PRIMARY KEY,
    time TEXT NOT NULL,
    tenant TEXT COLLATE \"C\",
    line TEXT NOT NULL
);
",
    // A tenant's quotas (NULL: no limit), gone with the tenant.
    "
CREATE TABLE quotas (
    tenant TEXT COLLATE \"C\" PRIMARY KEY NOT NULL REFERENCES tenants (name) ON DELETE CASCADE,
    sessions BIGINT CHECK (sessions >= 0),
    requests_per_minute BIGINT CHECK (requests_per_minute >= 0),
    llm_tokens_per_day BIGINT CHECK (llm_tokens_per_day >= 0),
    micro_usd_per_day BIGINT CHECK (micro_usd_per_day >= 0),
    updated_at TEXT NOT NULL
);
",
    // The proxy's day quotas (tenants/pg_day_quota.rs), as in control.db:
    // each tenant's settled LLM spend per UTC day (its row is also the lock
    // a reservation takes) and the worst cases of the calls in flight.
    "
CREATE TABLE day_spend (
    tenant TEXT COLLATE \"C\" NOT NULL,
    day TEXT NOT NULL,
    micro_usd BIGINT NOT NULL CHECK (micro_usd >= 0),
    tokens BIGINT NOT NULL CHECK (tokens >= 0),
    PRIMARY KEY (tenant, day)
);
CREATE TABLE quota_holds (
    id BIGSERIAL PRIMARY KEY,
    tenant TEXT COLLATE \"C\" NOT NULL,
    day TEXT NOT NULL,
    micro_usd BIGINT NOT NULL CHECK (micro_usd >= 0),
    session TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX quota_holds_by_day ON quota_holds (tenant, day);
CREATE INDEX quota_holds_by_session ON quota_holds (session);
",
    // The usage ledger (src/usage/pg_ledger.rs): ledger.db's `usage` rows,
    // column for column (`estimated` as 0 or 1, as SQLite keeps it).
    "
CREATE TABLE usage (
    session TEXT COLLATE \"C\" NOT NULL,
    seq BIGINT NOT NULL,
    ts TEXT NOT NULL,
    day TEXT COLLATE \"C\" NOT NULL,
    tenant TEXT COLLATE \"C\" NOT NULL,
    \"user\" TEXT COLLATE \"C\" NOT NULL,
    provider TEXT NOT NULL,
    api TEXT NOT NULL,
    model TEXT COLLATE \"C\" NOT NULL,
    response_id TEXT,
    tokens_input BIGINT NOT NULL,
    tokens_cached_input BIGINT NOT NULL,
    tokens_cache_write_5m BIGINT NOT NULL,
    tokens_cache_write_1h BIGINT NOT NULL,
    tokens_output BIGINT NOT NULL,
    tokens_reasoning BIGINT NOT NULL,
    cost_micro_usd BIGINT NOT NULL,
    reserved_micro_usd BIGINT NOT NULL,
    card_sha256 TEXT NOT NULL,
    estimated BIGINT NOT NULL CHECK (estimated IN (0, 1)),
    decision_seq BIGINT NOT NULL,
    PRIMARY KEY (session, seq)
);
CREATE INDEX usage_day ON usage (day, tenant);
",
    // The API's requests-per-minute window, shared by every daemon on the
    // database: when each admitted request of a tenant came (Unix ms, the
    // admitting daemon's clock).
    "
CREATE TABLE request_window (
    tenant TEXT COLLATE \"C\" NOT NULL,
    at_ms BIGINT NOT NULL
);
CREATE INDEX request_window_by_tenant ON request_window (tenant, at_ms);
",
    // A hold's worst-case tokens, so the tokens/day quota counts calls in
    // flight as the USD one does; holds from before count 0.
    "
ALTER TABLE quota_holds ADD COLUMN tokens BIGINT NOT NULL DEFAULT 0 CHECK (tokens >= 0);
",
    // The concurrent-sessions quota across daemons (pg_session_leases.rs):
    // one row per session starting or running, renewed by the daemon that
    // runs it until it ends; a row past `expires_at_ms` (the database's
    // clock, Unix ms) is a dead daemon's and no longer counts.
    "
CREATE TABLE session_leases (
    id TEXT COLLATE \"C\" PRIMARY KEY NOT NULL,
    tenant TEXT COLLATE \"C\" NOT NULL,
    session TEXT COLLATE \"C\",
    daemon TEXT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
CREATE INDEX session_leases_by_tenant ON session_leases (tenant, expires_at_ms);
",
    // A deletion in progress (store.rs: resumable deletes): the archive
    // label it started under; NULL for a tenant not being deleted.
    "
ALTER TABLE tenants ADD COLUMN deleting TEXT;
",
];

/// The advisory lock two daemons opening one fresh database take, so one
/// creates the schema and the other then finds it (`pg_advisory_xact_lock`).
const MIGRATION_LOCK: i64 = 0x6f70_656e_636c_6177; // "openclaw"

/// The first key of the per-tenant advisory locks that serialize one
/// tenant's request-window checks (the second is the name's hash).
const WINDOW_LOCK: i32 = 0x6f63_7277; // "ocrw"

/// The first key of the per-tenant advisory locks that make a session
/// lease's count-then-insert one step (the second is the name's hash).
pub(crate) const LEASE_LOCK: i32 = 0x6f63_736c; // "ocsl"

/// Takes the advisory lock (`class`, hash of `tenant`) until the
/// transaction ends: one tenant's checks of that kind run one at a time,
/// across connections and hosts.
pub(crate) fn lock_tenant(
    tx: &mut postgres::Transaction<'_>,
    class: i32,
    tenant: &str,
) -> Result<(), TenantStoreError> {
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&class, &tenant],
    )
    .map(drop)
    .map_err(db)
}

/// How long one database call (connecting included) may take before it
/// fails, unless `--database-timeout` or `OPENCLAW_DATABASE_TIMEOUT` says
/// otherwise. A server that
/// accepts connections but never answers would otherwise hang its caller
/// for good: the server's own `statement_timeout` cannot end a wait for an
/// answer that is never sent, and TCP keepalives are answered by whatever
/// holds the socket open.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The environment variable that sets [`CALL_TIMEOUT`] (`500ms`, `5s`) where
/// no `--database-timeout` does: read by the daemon, the CLI and the
/// sessions they run alike.
pub const CALL_TIMEOUT_ENV: &str = "OPENCLAW_DATABASE_TIMEOUT";

/// `--database-timeout` (and [`CALL_TIMEOUT_ENV`]): a positive duration.
pub fn parse_call_timeout(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(
            "a database call cannot be given no time: use a positive duration \
                      (500ms, 5s, 1m)"
                .into(),
        ),
        Err(e) => Err(format!(
            "not a duration ({e}): use a positive duration such as 500ms, 5s or 1m"
        )),
    }
}

/// The bound on each database call where the URL carries none:
/// [`CALL_TIMEOUT_ENV`] or the default. A value that does not parse fails
/// the opening, saying why, rather than bound the calls by a guess.
fn call_timeout() -> Result<Duration, TenantStoreError> {
    match std::env::var(CALL_TIMEOUT_ENV) {
        Err(_) => Ok(CALL_TIMEOUT),
        Ok(text) => parse_call_timeout(&text)
            .map_err(|why| backend(format!("{CALL_TIMEOUT_ENV}={text:?}: {why}"))),
    }
}

/// The most connection threads a process keeps abandoned after their calls
/// timed out. Each holds a thread and a socket until the server answers or
/// the socket errors, which a hung server may never make happen; past this
/// many, a call that would start another connection fails at once.
pub const MAX_ABANDONED_CONNECTIONS: usize = 8;

/// Connection threads abandoned and still alive, and how many may be.
pub(crate) struct Abandoned {
    alive: AtomicUsize,
    max: usize,
}

impl Abandoned {
    pub(crate) const fn new(max: usize) -> Abandoned {
        Abandoned {
            alive: AtomicUsize::new(0),
            max,
        }
    }
}

/// This process's: every store shares the one cap.
static ABANDONED: Abandoned = Abandoned::new(MAX_ABANDONED_CONNECTIONS);

/// A connection thread's state, so that exactly one of "abandoned" and
/// "ended" counts it in [`ABANDONED`] and the other uncounts it.
const RUNNING: u8 = 0;
const GIVEN_UP: u8 = 1;
const ENDED: u8 = 2;

/// A `postgres://` (or `postgresql://`) URL as given to `--database` or
/// `OPENCLAW_DATABASE`, with the bound on each call to it
/// (`--database-timeout`) when one was given. It may hold a password: its
/// `Debug` and `Display` never show it, and nothing else prints it.
#[derive(Clone)]
pub struct DatabaseUrl {
    text: String,
    timeout: Option<Duration>,
}

impl DatabaseUrl {
    /// For clap: takes any text (checked at open, where an error can be
    /// worded without echoing the URL; clap's own would print it whole).
    pub fn from_arg(text: &str) -> Result<DatabaseUrl, std::convert::Infallible> {
        Ok(DatabaseUrl {
            text: text.to_owned(),
            timeout: None,
        })
    }

    /// The URL with each call bounded by `timeout` when given
    /// (`--database-timeout`); without one, by [`CALL_TIMEOUT_ENV`] or 5 s.
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> DatabaseUrl {
        if timeout.is_some() {
            self.timeout = timeout;
        }
        self
    }

    /// The bound given with the URL, if any.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Whether `text` is spelled as a PostgreSQL URL (`postgres://` or
    /// `postgresql://`): how `--quota-db` and `--ledger-db` tell a URL from
    /// a file path, and what `--database` requires.
    pub fn is_url(text: &str) -> bool {
        text.starts_with("postgres://") || text.starts_with("postgresql://")
    }

    /// The URL itself, password and all: only for handing it to a child
    /// process through its environment (never argv, never a message).
    pub(crate) fn expose_secret(&self) -> &str {
        &self.text
    }

    fn config(&self) -> Result<Config, TenantStoreError> {
        if !Self::is_url(&self.text) {
            return Err(backend(
                "--database takes a postgres:// or postgresql:// URL (OPENCLAW_DATABASE too)",
            ));
        }
        // The parser's messages name the option, never the URL's text.
        Config::from_str(&self.text)
            .map_err(|e| backend(format!("--database: not a usable PostgreSQL URL: {e}")))
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.config() {
            Ok(config) => write!(f, "DatabaseUrl({})", describe(&config)),
            Err(_) => f.write_str("DatabaseUrl(<not a PostgreSQL URL>)"),
        }
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.config() {
            Ok(config) => f.write_str(&describe(&config)),
            Err(_) => f.write_str("<not a PostgreSQL URL>"),
        }
    }
}

/// `postgresql database D on H:P as U`: what a message may say of a URL.
fn describe(config: &Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            Host::Unix(dir) => dir.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    format!(
        "postgresql database {} on {}:{} as {}",
        config.get_dbname().unwrap_or("(default)"),
        hosts.join(","),
        if ports.is_empty() {
            "5432".to_owned()
        } else {
            ports.join(",")
        },
        config.get_user().unwrap_or("(default)")
    )
}

fn backend(e: impl std::fmt::Display) -> TenantStoreError {
    TenantStoreError::Backend(e.to_string())
}

pub(crate) fn db(e: postgres::Error) -> TenantStoreError {
    backend(format!("postgresql: {}", describe_error(&e)))
}

/// The error and its causes: the client's own `Display` stops at "db
/// error", and the server's message (the cause) is what an operator needs.
fn describe_error(e: &postgres::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// The connection, as its thread holds it: made again after it broke.
struct Connection {
    config: Config,
    client: Option<Client>,
    target: String,
}

impl Connection {
    fn client(&mut self) -> Result<&mut Client, TenantStoreError> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        if self.client.is_none() {
            let client = self.config.connect(NoTls).map_err(|e| {
                backend(format!(
                    "connecting to the {}: {}",
                    self.target,
                    describe_error(&e)
                ))
            })?;
            self.client = Some(client);
        }
        self.client
            .as_mut()
            .ok_or_else(|| backend("no database connection"))
    }

    /// Runs one operation. No retry: a statement that failed with the
    /// connection may have committed. A broken connection is dropped, so the
    /// next operation connects again (after a server restart, say).
    fn run<T>(
        &mut self,
        op: impl FnOnce(&mut Client) -> Result<T, TenantStoreError>,
    ) -> Result<T, TenantStoreError> {
        let client = self.client()?;
        let result = op(client);
        if result.is_err() && client.is_closed() {
            self.client = None;
        }
        result
    }
}

/// A handle on the PostgreSQL store: one connection, its own thread.
///
/// Every call is bounded (`--database-timeout`, [`CALL_TIMEOUT_ENV`], 5 s).
/// A call that overruns fails, and its thread (stuck in a read the server
/// never answers) is abandoned with its connection: later calls go to a new
/// thread and connection, so they never queue behind the stuck one. The
/// abandoned thread ends once its socket errors out or the server answers.
/// A process keeps at most [`MAX_ABANDONED_CONNECTIONS`] of them: past
/// that, a call that needs a new connection fails at once.
pub struct PgStore {
    config: Config,
    target: String,
    timeout: Duration,
    worker: Mutex<Worker>,
    abandoned: &'static Abandoned,
}

/// The thread that owns the connection (none after one was abandoned when
/// no other could be started), and which one it is (so only the first
/// caller to see it stuck replaces it).
struct Worker {
    thread: Option<WorkerThread>,
    generation: u64,
}

struct WorkerThread {
    jobs: mpsc::Sender<Job>,
    /// [`RUNNING`], [`GIVEN_UP`] or [`ENDED`].
    state: Arc<AtomicU8>,
}

impl WorkerThread {
    /// Gives the thread up (counted in `abandoned` until it ends).
    fn abandon(self, abandoned: &Abandoned) {
        if self
            .state
            .compare_exchange(RUNNING, GIVEN_UP, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            abandoned.alive.fetch_add(1, Ordering::SeqCst);
        }
        // Dropping the sender ends the thread once its stuck call returns.
    }
}

/// A new connection thread, unless as many as `abandoned` allows are stuck
/// already: then the error, at once.
fn spawn_worker(
    config: Config,
    target: String,
    abandoned: &'static Abandoned,
) -> Result<WorkerThread, TenantStoreError> {
    let stuck = abandoned.alive.load(Ordering::SeqCst);
    if stuck >= abandoned.max {
        return Err(backend(format!(
            "{stuck} connections to the {target} are stuck on calls that did not answer in \
             time (at most {} are kept waiting); this call fails at once rather than open \
             another until one of them ends: the database is hung or out of reach",
            abandoned.max
        )));
    }
    let (jobs, queue) = mpsc::channel::<Job>();
    let state = Arc::new(AtomicU8::new(RUNNING));
    let ended = state.clone();
    std::thread::Builder::new()
        .name("openclaw-postgres".into())
        .spawn(move || {
            let mut conn = Connection {
                config,
                client: None,
                target,
            };
            // Ends when the handle (the sender) is dropped.
            for job in queue {
                job(&mut conn);
            }
            drop(conn);
            if ended.swap(ENDED, Ordering::SeqCst) == GIVEN_UP {
                abandoned.alive.fetch_sub(1, Ordering::SeqCst);
            }
        })
        .map_err(|e| backend(format!("starting the database thread: {e}")))?;
    Ok(WorkerThread { jobs, state })
}

impl PgStore {
    /// Connects, then creates or migrates the schema. The URL's password is
    /// in no error.
    pub fn open(url: &DatabaseUrl) -> Result<PgStore, TenantStoreError> {
        Self::open_capped(url, &ABANDONED)
    }

    /// [`open`](Self::open), its stuck connections counted in `abandoned`.
    fn open_capped(
        url: &DatabaseUrl,
        abandoned: &'static Abandoned,
    ) -> Result<PgStore, TenantStoreError> {
        let timeout = match url.timeout {
            Some(timeout) => timeout,
            None => call_timeout()?,
        };
        let mut config = url.config()?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(timeout);
        }
        // A peer that vanished (packets dropped) is noticed by the kernel:
        // unacknowledged writes and unanswered keepalives close the socket.
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(timeout);
        }
        // The kernel counts keepalive times in whole seconds (0 is
        // refused: EINVAL on connect), so a sub-second bound keeps 1 s.
        let keepalive = timeout.max(Duration::from_secs(1));
        config
            .keepalives(true)
            .keepalives_idle(keepalive)
            .keepalives_interval(Duration::from_secs(1))
            .keepalives_retries(3);
        // A statement the server runs too long (waiting on a lock, say) is
        // ended by the server itself, just before the caller gives up.
        if config.get_options().is_none() {
            config.options(&format!(
                "-c statement_timeout={}",
                timeout.as_millis().max(1)
            ));
        }
        config.application_name("openclaw");
        let target = describe(&config);
        let thread = spawn_worker(config.clone(), target.clone(), abandoned)?;
        let store = PgStore {
            config,
            target,
            timeout,
            worker: Mutex::new(Worker {
                thread: Some(thread),
                generation: 0,
            }),
            abandoned,
        };
        store.call(migrate)?;
        Ok(store)
    }

    /// Runs `op` on the connection's thread and waits for its answer, at
    /// most the call timeout: past it the call fails (fail closed, as for
    /// any database error) and the thread is abandoned (see [`PgStore`]).
    pub(crate) fn call<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut Client) -> Result<T, TenantStoreError> + Send + 'static,
    ) -> Result<T, TenantStoreError> {
        let (answer, result) = mpsc::channel();
        // Set once this call gave up: a call queued behind a stuck one is
        // then never run late, after its caller was told it failed.
        let given_up = Arc::new(AtomicBool::new(false));
        let skip = given_up.clone();
        let generation = {
            let mut worker = self.worker.lock().unwrap_or_else(|e| e.into_inner());
            // The last thread was given up with none in its place: another,
            // unless too many are stuck (then this call fails at once).
            let thread = match &mut worker.thread {
                Some(thread) => thread,
                empty => empty.insert(spawn_worker(
                    self.config.clone(),
                    self.target.clone(),
                    self.abandoned,
                )?),
            };
            thread
                .jobs
                .send(Box::new(move |conn: &mut Connection| {
                    if !skip.load(Ordering::SeqCst) {
                        let _ = answer.send(conn.run(op));
                    }
                }))
                .map_err(|_| backend("the database thread stopped"))?;
            worker.generation
        };
        match result.recv_timeout(self.timeout) {
            Ok(answer) => answer,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(backend("the database thread stopped"))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                given_up.store(true, Ordering::SeqCst);
                self.abandon(generation);
                Err(backend(format!(
                    "the {} did not answer within {:?} (hung, or out of reach); the call \
                     failed and its connection was dropped",
                    self.target, self.timeout
                )))
            }
        }
    }

    /// Gives up the stuck thread `generation` and puts a new one in its
    /// place (a new connection on its first call), unless too many are
    /// stuck: then the next call tries again. The calls queued behind the
    /// stuck one time out themselves and are then skipped.
    fn abandon(&self, generation: u64) {
        let mut worker = self.worker.lock().unwrap_or_else(|e| e.into_inner());
        if worker.generation != generation {
            return;
        }
        if let Some(stuck) = worker.thread.take() {
            stuck.abandon(self.abandoned);
        }
        worker.generation += 1;
        match spawn_worker(self.config.clone(), self.target.clone(), self.abandoned) {
            Ok(thread) => worker.thread = Some(thread),
            Err(e) => tracing::error!("replacing a stuck database connection: {e}"),
        }
    }
}

/// Creates or migrates the schema under the migration lock.
fn migrate(client: &mut Client) -> Result<(), TenantStoreError> {
    let mut tx = client.transaction().map_err(db)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(db)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS openclaw_schema (
             id INTEGER PRIMARY KEY CHECK (id = 1),
             version INTEGER NOT NULL
         )",
    )
    .map_err(db)?;
    let version: i32 = tx
        .query_opt("SELECT version FROM openclaw_schema WHERE id = 1", &[])
        .map_err(db)?
        .map_or(0, |row| row.get(0));
    let from = usize::try_from(version)
        .ok()
        .filter(|v| *v <= MIGRATIONS.len())
        .ok_or_else(|| {
            backend(format!(
                "the database has schema version {version}; this openclaw reads {SCHEMA_VERSION}"
            ))
        })?;
    for migration in &MIGRATIONS[from..] {
        tx.batch_execute(migration).map_err(db)?;
    }
    tx.execute(
        "INSERT INTO openclaw_schema (id, version) VALUES (1, $1)
         ON CONFLICT (id) DO UPDATE SET version = excluded.version",
        &[&SCHEMA_VERSION],
    )
    .map_err(db)?;
    tx.commit().map_err(db)
}

fn hash_from(blob: Vec<u8>) -> Result<TokenHash, TenantStoreError> {
    let bytes: [u8; 32] = blob
        .try_into()
        .map_err(|_| backend("a stored token hash is not 32 bytes"))?;
    Ok(TokenHash(bytes))
}

impl Store for PgStore {
    fn ping(&self) -> Result<(), TenantStoreError> {
        self.call(|c| {
            c.query_one("SELECT count(*) FROM tenants", &[])
                .map(drop)
                .map_err(db)
        })
    }

    fn insert_tenant(
        &self,
        name: &TenantName,
        token: &TokenHash,
        at: &str,
    ) -> Result<(), TenantStoreError> {
        let (name, hash, at) = (name.clone(), token.0.to_vec(), at.to_owned());
        self.call(move |c| {
            match c.execute(
                "INSERT INTO tenants (name, token_sha256, created_at, token_issued_at)
                 VALUES ($1, $2, $3, $3)",
                &[&name.as_str(), &hash, &at],
            ) {
                Ok(_) => Ok(()),
                // The primary key decides between concurrent creators.
                Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                    Err(TenantStoreError::TenantExists(name))
                }
                Err(e) => Err(db(e)),
            }
        })
    }

    fn tenants(&self) -> Result<Vec<TenantRecord>, TenantStoreError> {
        let rows = self.call(|c| {
            c.query(
                "SELECT name, created_at, token_issued_at FROM tenants WHERE deleting IS NULL
                 ORDER BY name",
                &[],
            )
            .map_err(db)
        })?;
        rows.into_iter()
            .map(|row| {
                let name: String = row.get(0);
                // Whatever wrote the row, a name that is not valid is never
                // handed on to be joined onto a path.
                let name = TenantName::parse(&name)
                    .map_err(|e| backend(format!("stored tenant name {name:?}: {e}")))?;
                Ok(TenantRecord {
                    name,
                    created_at: row.get(1),
                    token_issued_at: row.get(2),
                })
            })
            .collect()
    }

    fn tenant_token(&self, name: &TenantName) -> Result<Option<TokenHash>, TenantStoreError> {
        let name = name.clone();
        let blob: Option<Vec<u8>> = self.call(move |c| {
            c.query_opt(
                "SELECT token_sha256 FROM tenants WHERE name = $1 AND deleting IS NULL",
                &[&name.as_str()],
            )
            .map(|row| row.map(|r| r.get(0)))
            .map_err(db)
        })?;
        blob.map(hash_from).transpose()
    }

    fn replace_tenant_token(
        &self,
        name: &TenantName,
        token: &TokenHash,
        at: &str,
    ) -> Result<(), TenantStoreError> {
        let (owned, hash, at) = (name.clone(), token.0.to_vec(), at.to_owned());
        let changed = self.call(move |c| {
            c.execute(
                "UPDATE tenants SET token_sha256 = $2, token_issued_at = $3
                 WHERE name = $1 AND deleting IS NULL",
                &[&owned.as_str(), &hash, &at],
            )
            .map_err(db)
        })?;
        if changed == 0 {
            return Err(TenantStoreError::NoSuchTenant(name.clone()));
        }
        Ok(())
    }

    fn delete_tenant(&self, name: &TenantName) -> Result<(), TenantStoreError> {
        let owned = name.clone();
        let changed = self.call(move |c| {
            c.execute("DELETE FROM tenants WHERE name = $1", &[&owned.as_str()])
                .map_err(db)
        })?;
        if changed == 0 {
            return Err(TenantStoreError::NoSuchTenant(name.clone()));
        }
        Ok(())
    }

    fn begin_delete(
        &self,
        name: &TenantName,
        archive: &str,
    ) -> Result<DeleteBegun, TenantStoreError> {
        let (owned, label) = (name.clone(), archive.to_owned());
        let mark: Option<Option<String>> = self.call(move |c| {
            let mut tx = c.transaction().map_err(db)?;
            // The row lock makes the read and the mark one step.
            let row = tx
                .query_opt(
                    "SELECT deleting FROM tenants WHERE name = $1 FOR UPDATE",
                    &[&owned.as_str()],
                )
                .map_err(db)?;
            let mark: Option<Option<String>> = row.map(|r| r.get(0));
            if mark == Some(None) {
                tx.execute(
                    "UPDATE tenants SET deleting = $2 WHERE name = $1",
                    &[&owned.as_str(), &label],
                )
                .map_err(db)?;
            }
            tx.commit().map_err(db)?;
            Ok(mark)
        })?;
        match mark {
            None => Err(TenantStoreError::NoSuchTenant(name.clone())),
            Some(Some(recorded)) => Ok(DeleteBegun {
                archive: recorded,
                resumed: true,
            }),
            Some(None) => Ok(DeleteBegun {
                archive: archive.to_owned(),
                resumed: false,
            }),
        }
    }

    fn finish_delete(&self, name: &TenantName, archive: &str) -> Result<(), TenantStoreError> {
        let (owned, label) = (name.clone(), archive.to_owned());
        // Its quotas go by the foreign key's cascade.
        self.call(move |c| {
            c.execute(
                "DELETE FROM tenants WHERE name = $1 AND deleting = $2",
                &[&owned.as_str(), &label],
            )
            .map(drop)
            .map_err(db)
        })
    }

    fn interrupted_deletes(&self) -> Result<Vec<(TenantName, String)>, TenantStoreError> {
        let rows = self.call(|c| {
            c.query(
                "SELECT name, deleting FROM tenants WHERE deleting IS NOT NULL ORDER BY name",
                &[],
            )
            .map_err(db)
        })?;
        rows.into_iter()
            .map(|row| {
                let name: String = row.get(0);
                let name = TenantName::parse(&name)
                    .map_err(|e| backend(format!("stored tenant name {name:?}: {e}")))?;
                Ok((name, row.get(1)))
            })
            .collect()
    }

    fn archive_usage(&self, name: &TenantName, archive: &str) -> Result<(), TenantStoreError> {
        let (owned, archive) = (name.to_string(), archive.to_owned());
        // The ledger is in this database: everything in one transaction.
        // The name's request window goes too (it is no one's spend).
        self.call(move |c| {
            let mut tx = c.transaction().map_err(db)?;
            for table in ["usage", "day_spend", "quota_holds"] {
                tx.execute(
                    &format!("UPDATE {table} SET tenant = $2 WHERE tenant = $1"),
                    &[&owned, &archive],
                )
                .map_err(db)?;
            }
            tx.execute("DELETE FROM request_window WHERE tenant = $1", &[&owned])
                .map_err(db)?;
            tx.commit().map_err(db)
        })
    }

    fn quotas(&self, name: &TenantName) -> Result<Option<Quotas>, TenantStoreError> {
        let owned = name.clone();
        let row = self.call(move |c| {
            c.query_opt(
                "SELECT q.sessions, q.requests_per_minute, q.llm_tokens_per_day, q.micro_usd_per_day
                 FROM tenants t LEFT JOIN quotas q ON q.tenant = t.name
                 WHERE t.name = $1 AND t.deleting IS NULL",
                &[&owned.as_str()],
            )
            .map_err(db)
        })?;
        let Some(row) = row else {
            return Ok(None);
        };
        let unsigned = |i: usize| {
            row.get::<_, Option<i64>>(i)
                .map(u64::try_from)
                .transpose()
                .map_err(|_| backend("a stored quota is negative"))
        };
        Ok(Some(Quotas {
            sessions: unsigned(0)?,
            requests_per_minute: unsigned(1)?,
            llm_tokens_per_day: unsigned(2)?,
            micro_usd_per_day: unsigned(3)?,
        }))
    }

    fn set_quotas(
        &self,
        name: &TenantName,
        quotas: &Quotas,
        at: &str,
    ) -> Result<(), TenantStoreError> {
        let signed = |v: Option<u64>| {
            v.map(i64::try_from)
                .transpose()
                .map_err(|_| backend("a quota over 2^63"))
        };
        let values = [
            signed(quotas.sessions)?,
            signed(quotas.requests_per_minute)?,
            signed(quotas.llm_tokens_per_day)?,
            signed(quotas.micro_usd_per_day)?,
        ];
        let (owned, at) = (name.clone(), at.to_owned());
        // One statement: the row is written only while the tenant exists.
        let changed = self.call(move |c| {
            c.execute(
                "INSERT INTO quotas (tenant, sessions, requests_per_minute, llm_tokens_per_day,
                     micro_usd_per_day, updated_at)
                 SELECT name, $2, $3, $4, $5, $6 FROM tenants
                 WHERE name = $1 AND deleting IS NULL
                 ON CONFLICT (tenant) DO UPDATE SET sessions = excluded.sessions,
                     requests_per_minute = excluded.requests_per_minute,
                     llm_tokens_per_day = excluded.llm_tokens_per_day,
                     micro_usd_per_day = excluded.micro_usd_per_day,
                     updated_at = excluded.updated_at",
                &[
                    &owned.as_str(),
                    &values[0],
                    &values[1],
                    &values[2],
                    &values[3],
                    &at,
                ],
            )
            .map_err(db)
        })?;
        if changed == 0 {
            return Err(TenantStoreError::NoSuchTenant(name.clone()));
        }
        Ok(())
    }

    fn admin_token(&self) -> Result<Option<TokenHash>, TenantStoreError> {
        let blob: Option<Vec<u8>> = self.call(|c| {
            c.query_opt("SELECT token_sha256 FROM admin_token WHERE id = 1", &[])
                .map(|row| row.map(|r| r.get(0)))
                .map_err(db)
        })?;
        blob.map(hash_from).transpose()
    }

    fn set_admin_token(&self, token: &TokenHash, at: &str) -> Result<(), TenantStoreError> {
        let (hash, at) = (token.0.to_vec(), at.to_owned());
        self.call(move |c| {
            c.execute(
                "INSERT INTO admin_token (id, token_sha256, issued_at) VALUES (1, $1, $2)
                 ON CONFLICT (id) DO UPDATE SET token_sha256 = excluded.token_sha256,
                     issued_at = excluded.issued_at",
                &[&hash, &at],
            )
            .map(drop)
            .map_err(db)
        })
    }
}

impl PgStore {
    /// Admits one request of `tenant` at `now_ms` (Unix ms) under `limit`
    /// requests per `window_ms`, counted over every daemon on the
    /// database: `Ok(Err(ms))` until a slot frees. The tenant's advisory
    /// lock makes count-then-insert one step across hosts; the daemons'
    /// clocks are assumed to agree (NTP) to well under the window.
    pub fn admit_request(
        &self,
        tenant: &TenantName,
        limit: u64,
        window_ms: i64,
        now_ms: i64,
    ) -> Result<Result<(), i64>, TenantStoreError> {
        let tenant = tenant.to_string();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call(move |c| {
            let mut tx = c.transaction().map_err(db)?;
            lock_tenant(&mut tx, WINDOW_LOCK, &tenant)?;
            tx.execute(
                "DELETE FROM request_window WHERE tenant = $1 AND at_ms <= $2",
                &[&tenant, &(now_ms - window_ms)],
            )
            .map_err(db)?;
            let count: i64 = tx
                .query_one(
                    "SELECT count(*) FROM request_window WHERE tenant = $1",
                    &[&tenant],
                )
                .map_err(db)?
                .get(0);
            let answer = if count < limit {
                tx.execute(
                    "INSERT INTO request_window (tenant, at_ms) VALUES ($1, $2)",
                    &[&tenant, &now_ms],
                )
                .map_err(db)?;
                Ok(())
            } else {
                // Full: the next slot frees when the oldest (or, when the
                // limit was lowered, the one at the limit's place) leaves.
                let at: i64 = tx
                    .query_one(
                        "SELECT at_ms FROM request_window WHERE tenant = $1
                         ORDER BY at_ms OFFSET $2 LIMIT 1",
                        &[&tenant, &(count - limit)],
                    )
                    .map_err(db)?
                    .get(0);
                Err((at + window_ms - now_ms).max(1))
            };
            tx.commit().map_err(db)?;
            Ok(answer)
        })
    }
}

impl AuditTable for PgStore {
    fn append_line(&self, record: &AuditRecord, line: &str) -> anyhow::Result<()> {
        let (time, tenant, line) = (record.time.clone(), record.tenant.clone(), line.to_owned());
        self.call(move |c| {
            c.execute(
                "INSERT INTO audit (time, tenant, line) VALUES ($1, $2, $3)",
                &[&time, &tenant, &line],
            )
            .map(drop)
            .map_err(db)
        })?;
        Ok(())
    }

    fn lines(&self) -> anyhow::Result<Vec<String>> {
        let rows = self.call(|c| {
            c.query("SELECT line FROM audit ORDER BY id", &[])
                .map_err(db)
        })?;
        Ok(rows.into_iter().map(|row| row.get(0)).collect())
    }
}

/// The database's audit table for a process that writes a line or two
/// (a session's `openclaw run`): connected to when first used, so a run
/// that audits nothing opens no connection. A connection that fails is
/// tried again at the next line.
pub struct PgAuditTable {
    url: DatabaseUrl,
    store: Mutex<Option<Arc<PgStore>>>,
}

impl PgAuditTable {
    pub fn new(url: DatabaseUrl) -> PgAuditTable {
        PgAuditTable {
            url,
            store: Mutex::new(None),
        }
    }

    fn store(&self) -> anyhow::Result<Arc<PgStore>> {
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(open) = store.as_ref() {
            return Ok(open.clone());
        }
        let open = Arc::new(PgStore::open(&self.url)?);
        *store = Some(open.clone());
        Ok(open)
    }
}

impl AuditTable for PgAuditTable {
    fn append_line(&self, record: &AuditRecord, line: &str) -> anyhow::Result<()> {
        self.store()?.append_line(record, line)
    }

    fn lines(&self) -> anyhow::Result<Vec<String>> {
        self.store()?.lines()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenants::store::conformance;
    use test_requirements::{require, Requirement};
    use test_support::PostgresServer;

    fn url(text: &str) -> DatabaseUrl {
        DatabaseUrl::from_arg(text).expect("infallible")
    }

    /// Each open of the store against a hung server (a socket that accepts
    /// connections, as the kernel's backlog does, and never answers) times
    /// out, its connection thread left stuck in a read nobody answers. At
    /// most `max` are kept: past that an open fails at once, saying why,
    /// instead of starting another thread. Once the server is gone (the
    /// stuck reads are reset), the threads end and opens connect again.
    /// Its own count, so the tests beside it keep the process's cap.
    #[test]
    fn connections_stuck_on_a_hung_database_are_capped_and_further_calls_fail_at_once() {
        static STUCK: Abandoned = Abandoned::new(3);
        let hung = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = hung.local_addr().expect("addr").port();
        let url = url(&format!("postgres://openclaw@127.0.0.1:{port}/hung"))
            .with_timeout(Some(Duration::from_millis(300)));
        let open_error = || match PgStore::open_capped(&url, &STUCK) {
            Ok(_) => panic!("a server that never answers opened"),
            Err(e) => e.to_string(),
        };
        let (mut timed_out, mut capped) = (0, Vec::new());
        for _ in 0..9 {
            let err = open_error();
            if err.contains("did not answer within 300ms") {
                timed_out += 1;
            } else if err.contains("stuck on calls that did not answer in time") {
                capped.push(err);
            } else {
                panic!("{err}");
            }
            assert!(STUCK.alive.load(Ordering::SeqCst) <= 3);
        }
        assert_eq!((timed_out, capped.len()), (3, 6));
        assert!(
            capped[0].contains("3 connections to the postgresql database hung")
                && capped[0].contains("at most 3 are kept waiting")
                && capped[0].contains("the database is hung or out of reach"),
            "{}",
            capped[0]
        );
        // The server goes away: the connections it held are reset and the
        // stuck threads end; an open tries the network again (refused).
        drop(hung);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while STUCK.alive.load(Ordering::SeqCst) > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the stuck threads never ended"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let err = open_error();
        assert!(
            err.contains("connecting to the postgresql database hung"),
            "{err}"
        );
    }

    #[test]
    #[cfg_attr(
        not(openclaw_has_postgres),
        ignore = "PostgreSQL's binaries are missing (scripts/bootstrap installs them)"
    )]
    fn the_postgres_store_keeps_the_store_contract_over_two_connections() {
        require(
            &[Requirement::Postgres],
            "tenants::postgres::the_postgres_store_keeps_the_store_contract_over_two_connections",
        );
        let server = PostgresServer::start();
        let db = url(&server.create_database("contract"));
        // Two daemons (or a daemon and the CLI) on two hosts: two connections.
        let one = PgStore::open(&db).expect("open");
        let two = PgStore::open(&db).expect("open again");
        conformance::check(&one, &two);
        drop((one, two));
        let again = PgStore::open(&db).expect("reopen");
        assert_eq!(again.tenants().expect("list").len(), 2, "rows are durable");
        // Names order byte-wise whatever the locale: '-' (0x2d) before digits.
        let h = TokenHash::of("x");
        for n in ["a1", "a-b", "a0"] {
            again
                .insert_tenant(&TenantName::parse(n).expect("name"), &h, "t")
                .expect("insert");
        }
        let names: Vec<String> = again
            .tenants()
            .expect("list")
            .into_iter()
            .map(|t| t.name.to_string())
            .collect();
        assert_eq!(names, ["a", "a-b", "a0", "a1", "c"]);
    }

    #[test]
    #[cfg_attr(
        not(openclaw_has_postgres),
        ignore = "PostgreSQL's binaries are missing (scripts/bootstrap installs them)"
    )]
    fn a_restarted_server_is_reconnected_and_a_stopped_one_is_a_clear_error() {
        require(
            &[Requirement::Postgres],
            "tenants::postgres::a_restarted_server_is_reconnected_and_a_stopped_one_is_a_clear_error",
        );
        let server = PostgresServer::start();
        let db = url(&server.create_database("restart"));
        let store = PgStore::open(&db).expect("open");
        let acme = TenantName::parse("acme").expect("name");
        store
            .insert_tenant(&acme, &TokenHash::of("t"), "t1")
            .expect("insert");
        server.stop();
        let err = store.ping().expect_err("the server is down");
        let text = err.to_string();
        assert!(text.contains("postgresql"), "{text}");
        assert!(!text.contains(server.password()), "{text}");
        server.restart();
        // The broken connection was dropped with the failure; the next call
        // connects again and finds the data.
        store.ping().expect("reconnected");
        assert!(store
            .tenant_token(&acme)
            .expect("get")
            .expect("some")
            .matches(&TokenHash::of("t")));
    }

    #[test]
    #[cfg_attr(
        not(openclaw_has_postgres),
        ignore = "PostgreSQL's binaries are missing (scripts/bootstrap installs them)"
    )]
    fn a_newer_schema_a_wrong_password_and_a_bad_url_are_refused_without_the_password() {
        require(
            &[Requirement::Postgres],
            "tenants::postgres::a_newer_schema_a_wrong_password_and_a_bad_url_are_refused_without_the_password",
        );
        let server = PostgresServer::start();
        let good = server.create_database("schema");
        let store = PgStore::open(&url(&good)).expect("open");
        store
            .call(|c| {
                c.execute("UPDATE openclaw_schema SET version = 99", &[])
                    .map_err(db)
            })
            .expect("bump");
        let err = PgStore::open(&url(&good))
            .err()
            .expect("a newer schema is refused")
            .to_string();
        assert!(err.contains("schema version 99"), "{err}");
        // A database at version 1 (no audit or quotas table yet) is
        // migrated at open.
        store
            .call(|c| {
                c.batch_execute(
                    "UPDATE openclaw_schema SET version = 1; DROP TABLE audit; DROP TABLE quotas;
                     DROP TABLE day_spend; DROP TABLE quota_holds; DROP TABLE usage;
                     DROP TABLE request_window; DROP TABLE session_leases;
                     ALTER TABLE tenants DROP COLUMN deleting",
                )
                .map_err(db)
            })
            .expect("back to version 1");
        let migrated = PgStore::open(&url(&good)).expect("migrated");
        assert!(migrated.lines().expect("the audit table").is_empty());
        assert_eq!(
            migrated
                .quotas(&TenantName::parse("nobody").expect("name"))
                .expect("the quotas table"),
            None
        );
        let version: i32 = migrated
            .call(|c| {
                c.query_one("SELECT version FROM openclaw_schema", &[])
                    .map(|r| r.get(0))
                    .map_err(db)
            })
            .expect("version");
        assert_eq!(version, SCHEMA_VERSION);
        let wrong = good.replace(server.password(), "not-the-password");
        let err = PgStore::open(&url(&wrong))
            .err()
            .expect("a wrong password is refused")
            .to_string();
        assert!(err.contains("password authentication failed"), "{err}");
        assert!(!err.contains("not-the-password"), "{err}");
        let bad = format!("{good}?port=notaport");
        let err = PgStore::open(&url(&bad))
            .err()
            .expect("a bad URL is refused")
            .to_string();
        assert!(!err.contains(server.password()), "{err}");
        for shown in [format!("{:?}", url(&good)), url(&good).to_string()] {
            assert!(!shown.contains(server.password()), "{shown}");
            assert!(shown.contains("schema"), "{shown}");
        }
        let err = PgStore::open(&url("mysql://u:pw@h/db"))
            .err()
            .expect("not postgres")
            .to_string();
        assert!(err.contains("postgres://") && !err.contains("pw@"), "{err}");
    }
}
