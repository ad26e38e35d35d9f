//! The control endpoint of a running session: `<dir>/control.sock`, a Unix
//! socket only its owner can open, speaking NDJSON. It lists pending
//! approvals, takes answers, and streams the session's events and pending
//! list to subscribers (the web UI, `openclaw approve`/`deny`). Protocol:
//! `docs/ui.md`.
//!
//! The socket is the only way into a running supervisor from outside, so it
//! is owner-only (0600 inside the 0700 bundle), bounded (line length,
//! connections) and it names every answer's approver in the receipt.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use enforce::{ApprovalHandle, Event, EventBus, PendingApproval};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, watch, Semaphore};

/// The socket's file name inside the session directory.
pub const CONTROL_SOCK: &str = "control.sock";

/// Longest request line accepted; requests are tiny.
const MAX_LINE: usize = 16 * 1024;
/// Clients served at once (browser tabs plus terminals); more wait.
const MAX_CONNECTIONS: usize = 64;
/// Longest approver name taken from a client.
const MAX_APPROVER: usize = 64;

/// One request line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlRequest {
    /// → `{"ok":true,"session":…,"pid":…}`
    Info,
    /// → `{"ok":true,"pending":[PendingWire…]}`
    Pending,
    /// → `{"ok":true}` or `{"ok":false,"error":…}`
    Answer {
        id: u64,
        approve: bool,
        /// Named in the approval receipt; `control` when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        approver: Option<String>,
    },
    /// → `{"ok":true}`, then `{"pending":[…]}` now and on every change,
    /// `{"event":Event}` per event, `{"lagged":N}` when this reader fell
    /// behind; the stream ends when the session does.
    Subscribe,
}

/// A pending approval on the wire: the broker's question plus the time left
/// as the supervisor sees it (the page counts down from its own clock).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingWire {
    pub id: u64,
    /// The action as the catalog classified it (type, method, host, path,
    /// amount_cents, currency, merchant, recipients…).
    pub action: Value,
    pub reason: String,
    /// Seq of the decision receipt (its grant is in the report's timeline).
    pub decision_seq: u64,
    pub asked_at: String,
    /// Seconds the gate waits in total.
    pub timeout: u64,
    /// Milliseconds left before the timeout denies it.
    pub remaining_ms: u64,
}

impl PendingWire {
    fn from_pending(p: &PendingApproval, now: SystemTime) -> Self {
        let r = &p.request;
        let deadline = humantime::parse_rfc3339(&r.asked_at)
            .map(|t| t + r.timeout)
            .unwrap_or(now);
        PendingWire {
            id: r.id,
            action: serde_json::to_value(&r.action).unwrap_or(Value::Null),
            reason: r.reason.clone(),
            decision_seq: r.decision_seq,
            asked_at: r.asked_at.clone(),
            timeout: r.timeout.as_secs(),
            remaining_ms: deadline
                .duration_since(now)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }
}

/// Where the control server gets the session's event stream from.
pub trait Subscribe: Send + Sync + 'static {
    fn subscribe(&self) -> broadcast::Receiver<Event>;
}

impl Subscribe for EventBus {
    fn subscribe(&self) -> broadcast::Receiver<Event> {
        EventBus::subscribe(self)
    }
}

impl Subscribe for super::enforcement::EventSource {
    fn subscribe(&self) -> broadcast::Receiver<Event> {
        super::enforcement::EventSource::subscribe(self)
    }
}

struct Shared {
    session: String,
    events: Box<dyn Subscribe>,
    approvals: ApprovalHandle,
    stop: watch::Receiver<bool>,
}

/// A running control server; [`stop`](Self::stop) it in the teardown.
/// Dropping it also removes the socket file.
pub struct ControlServer {
    path: PathBuf,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Starts serving `<dir>/control.sock` for the session in `dir`. Must be
/// called inside a tokio runtime. A stale socket from a crashed supervisor is
/// replaced.
pub fn serve(
    dir: &Path,
    events: impl Subscribe,
    approvals: ApprovalHandle,
) -> Result<ControlServer> {
    let path = dir.join(CONTROL_SOCK);
    // Bind under a temporary name, restrict it, then rename: the socket is
    // never reachable under its real name with wider permissions.
    let tmp = dir.join(".control.sock.tmp");
    for p in [&tmp, &path] {
        match std::fs::remove_file(p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", p.display())),
        }
    }
    let listener =
        UnixListener::bind(&tmp).with_context(|| format!("binding {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("placing {}", path.display()))?;

    let session = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        session,
        events: Box::new(events),
        approvals,
        stop: stop_rx,
    });
    let task = tokio::spawn(accept_loop(listener, shared));
    Ok(ControlServer {
        path,
        stop: stop_tx,
        task: Some(task),
    })
}

impl ControlServer {
    /// Ends every connection (subscribers see their stream end), stops
    /// accepting and removes the socket.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        let _ = std::fs::remove_file(&self.path);
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn accept_loop(listener: UnixListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut stop = shared.stop.clone();
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stop.changed() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!("control socket accept: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let shared = shared.clone();
        connections.spawn(async move {
            if let Err(err) = connection(stream, &shared).await {
                tracing::debug!("control connection: {err:#}");
            }
            drop(permit);
        });
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
    }
    // Subscribers end on the same stop signal; give them a moment.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
}

async fn connection(stream: UnixStream, shared: &Shared) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(read);
    let mut stop = shared.stop.clone();
    loop {
        let mut line = Vec::new();
        let mut bounded = (&mut lines).take(MAX_LINE as u64 + 1);
        let n = tokio::select! {
            n = bounded.read_until(b'\n', &mut line) => n?,
            _ = stop.changed() => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        if line.len() > MAX_LINE {
            send(&mut write, &error("request line too long")).await?;
            return Ok(());
        }
        let request = match serde_json::from_slice::<ControlRequest>(&line) {
            Ok(r) => r,
            Err(err) => {
                send(&mut write, &error(&format!("bad request: {err}"))).await?;
                continue;
            }
        };
        match request {
            ControlRequest::Info => {
                let reply = serde_json::json!({
                    "ok": true, "session": shared.session, "pid": std::process::id(),
                });
                send(&mut write, &reply).await?;
            }
            ControlRequest::Pending => {
                let reply = serde_json::json!({"ok": true, "pending": pending(shared)});
                send(&mut write, &reply).await?;
            }
            ControlRequest::Answer {
                id,
                approve,
                approver,
            } => {
                let reply = match answer(shared, id, approve, approver.as_deref()) {
                    Ok(()) => serde_json::json!({"ok": true}),
                    Err(err) => error(&err.to_string()),
                };
                send(&mut write, &reply).await?;
            }
            ControlRequest::Subscribe => {
                // The rest of the connection is the stream.
                return subscribe(lines, write, shared).await;
            }
        }
    }
}

fn pending(shared: &Shared) -> Vec<PendingWire> {
    let now = SystemTime::now();
    shared
        .approvals
        .pending()
        .iter()
        .map(|p| PendingWire::from_pending(p, now))
        .collect()
}

fn answer(shared: &Shared, id: u64, approve: bool, approver: Option<&str>) -> Result<()> {
    let approver = approver.unwrap_or("control");
    let fine = |c: char| c.is_ascii_alphanumeric() || ":-_.@ ".contains(c);
    if approver.is_empty() || approver.len() > MAX_APPROVER || !approver.chars().all(fine) {
        bail!("approver must be 1-{MAX_APPROVER} characters of [A-Za-z0-9:-_.@ ]");
    }
    shared.approvals.answer(id, approve, approver)?;
    tracing::info!(
        id,
        approve,
        approver,
        "approval answered through the control socket"
    );
    Ok(())
}

async fn subscribe(
    mut lines: tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
    mut write: tokio::net::unix::OwnedWriteHalf,
    shared: &Shared,
) -> Result<()> {
    // Subscribe before the snapshot so nothing falls between the two.
    let mut events = shared.events.subscribe();
    let mut changes = shared.approvals.changes();
    let mut stop = shared.stop.clone();
    send(&mut write, &serde_json::json!({"ok": true})).await?;
    send(&mut write, &serde_json::json!({"pending": pending(shared)})).await?;
    let mut sink = Vec::new();
    loop {
        let message = tokio::select! {
            event = events.recv() => match event {
                Ok(event) => serde_json::json!({"event": event}),
                Err(broadcast::error::RecvError::Lagged(n)) => serde_json::json!({"lagged": n}),
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            changed = changes.changed() => match changed {
                Ok(()) => serde_json::json!({"pending": pending(shared)}),
                Err(_) => return Ok(()),
            },
            // The client hung up (or sent something: a subscriber only reads).
            n = lines.read_until(b'\n', &mut sink) => {
                if n? == 0 { return Ok(()); }
                sink.clear();
                continue;
            }
            _ = stop.changed() => return Ok(()),
        };
        send(&mut write, &message).await?;
    }
}

fn error(text: &str) -> Value {
    serde_json::json!({"ok": false, "error": text})
}

async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, value: &Value) -> Result<()> {
    let mut line = serde_json::to_vec(value)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Clients

/// Why a client could not talk to a session.
#[derive(Debug, thiserror::Error)]
pub enum ControlClientError {
    #[error("session is not running (no control socket at {0})")]
    NotRunning(PathBuf),
    #[error("session's control socket {path} does not answer: {source}")]
    Unreachable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Refused(String),
    #[error("control socket protocol: {0}")]
    Protocol(String),
}

/// One request, one reply, blocking (for `openclaw approve`/`deny`).
pub fn call_blocking(
    dir: &Path,
    request: &ControlRequest,
) -> std::result::Result<Value, ControlClientError> {
    let path = dir.join(CONTROL_SOCK);
    let stream = std::os::unix::net::UnixStream::connect(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ControlClientError::NotRunning(path.clone())
        }
        _ => ControlClientError::Unreachable {
            path: path.clone(),
            source: e,
        },
    })?;
    let unreachable = |e| ControlClientError::Unreachable {
        path: path.clone(),
        source: e,
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(unreachable)?;
    let mut line = serde_json::to_vec(request).map_err(|e| protocol(&e))?;
    line.push(b'\n');
    (&stream).write_all(&line).map_err(unreachable)?;
    let mut reply = String::new();
    BufReader::new(&stream)
        .read_line(&mut reply)
        .map_err(unreachable)?;
    parse_reply(&reply)
}

/// One request, one reply, async (for the web UI).
pub async fn call(
    dir: &Path,
    request: &ControlRequest,
) -> std::result::Result<Value, ControlClientError> {
    let (mut lines, mut write) = connect(dir).await?;
    write_request(&mut write, dir, request).await?;
    let reply = read_line(&mut lines, dir).await?;
    parse_reply(&reply)
}

/// A subscription: the first line (`{"ok":true}`) is checked here; read the
/// stream with [`Subscription::next`].
pub struct Subscription {
    lines: tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
    // Kept open: dropping it would end the subscription.
    _write: tokio::net::unix::OwnedWriteHalf,
    dir: PathBuf,
}

impl Subscription {
    /// The next message, or `None` when the session ended the stream.
    pub async fn next(&mut self) -> std::result::Result<Option<Value>, ControlClientError> {
        let line = read_line(&mut self.lines, &self.dir).await?;
        if line.is_empty() {
            return Ok(None);
        }
        serde_json::from_str(&line)
            .map(Some)
            .map_err(|e| protocol(&e))
    }
}

pub async fn subscribe_to(dir: &Path) -> std::result::Result<Subscription, ControlClientError> {
    let (mut lines, mut write) = connect(dir).await?;
    write_request(&mut write, dir, &ControlRequest::Subscribe).await?;
    let first = read_line(&mut lines, dir).await?;
    parse_reply(&first)?;
    Ok(Subscription {
        lines,
        _write: write,
        dir: dir.to_path_buf(),
    })
}

type Halves = (
    tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
    tokio::net::unix::OwnedWriteHalf,
);

async fn connect(dir: &Path) -> std::result::Result<Halves, ControlClientError> {
    let path = dir.join(CONTROL_SOCK);
    let stream = UnixStream::connect(&path)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                ControlClientError::NotRunning(path.clone())
            }
            _ => ControlClientError::Unreachable {
                path: path.clone(),
                source: e,
            },
        })?;
    let (read, write) = stream.into_split();
    Ok((tokio::io::BufReader::new(read), write))
}

async fn write_request(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    dir: &Path,
    request: &ControlRequest,
) -> std::result::Result<(), ControlClientError> {
    let mut line = serde_json::to_vec(request).map_err(|e| protocol(&e))?;
    line.push(b'\n');
    write
        .write_all(&line)
        .await
        .map_err(|e| ControlClientError::Unreachable {
            path: dir.join(CONTROL_SOCK),
            source: e,
        })
}

async fn read_line(
    lines: &mut tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
    dir: &Path,
) -> std::result::Result<String, ControlClientError> {
    let mut line = String::new();
    lines
        .read_line(&mut line)
        .await
        .map_err(|e| ControlClientError::Unreachable {
            path: dir.join(CONTROL_SOCK),
            source: e,
        })?;
    Ok(line)
}

fn parse_reply(line: &str) -> std::result::Result<Value, ControlClientError> {
    if line.is_empty() {
        return Err(ControlClientError::Protocol(
            "connection closed without a reply".into(),
        ));
    }
    let value: Value = serde_json::from_str(line).map_err(|e| protocol(&e))?;
    match value.get("ok").and_then(Value::as_bool) {
        Some(true) => Ok(value),
        Some(false) => Err(ControlClientError::Refused(
            value
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("refused")
                .to_owned(),
        )),
        None => Err(ControlClientError::Protocol(format!(
            "reply without \"ok\": {}",
            line.trim()
        ))),
    }
}

fn protocol(e: &dyn std::fmt::Display) -> ControlClientError {
    ControlClientError::Protocol(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use capabilities::{Action, ActionType};
    use enforce::{ApiBroker, ApprovalBroker, ApprovalRequest, EventKind};
    use std::os::unix::fs::FileTypeExt;

    fn purchase() -> Action {
        Action {
            kind: ActionType::Payment,
            method: "POST".into(),
            host: "united.com".into(),
            path: "/api/booking/purchase".into(),
            amount_cents: Some(48_700),
            currency: Some("USD".into()),
            merchant: Some("united.com".into()),
            recipients: Vec::new(),
            subject: None,
            credential: None,
            cost_micro_usd: None,
        }
    }

    fn question(id: u64, timeout: Duration) -> ApprovalRequest {
        ApprovalRequest {
            id,
            action: purchase(),
            reason: "payments above $400.00 need approval".into(),
            decision_seq: 5,
            asked_at: receipts::format_time(SystemTime::now()),
            timeout,
        }
    }

    async fn next_matching(sub: &mut Subscription, key: &str) -> Value {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(5), sub.next())
                .await
                .expect("a message in time")
                .expect("readable")
                .expect("stream open");
            if msg.get(key).is_some() {
                return msg;
            }
        }
    }

    #[tokio::test]
    async fn socket_is_owner_only_and_removed_at_stop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_broker, handle) = ApiBroker::new();
        let server = serve(dir.path(), EventBus::new(), handle).expect("serve");
        let meta = std::fs::metadata(dir.path().join(CONTROL_SOCK)).expect("socket exists");
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert!(!dir.path().join(".control.sock.tmp").exists());
        let info = call(dir.path(), &ControlRequest::Info).await.expect("info");
        assert_eq!(info["pid"], std::process::id());
        server.stop().await;
        assert!(!dir.path().join(CONTROL_SOCK).exists());
        assert!(matches!(
            call(dir.path(), &ControlRequest::Pending).await,
            Err(ControlClientError::NotRunning(_))
        ));
    }

    #[tokio::test]
    async fn lists_and_answers_pending_approvals() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (broker, handle) = ApiBroker::new();
        let server = serve(dir.path(), EventBus::new(), handle).expect("serve");
        let answer_rx = broker.ask(question(7, Duration::from_secs(60)));

        let reply = call(dir.path(), &ControlRequest::Pending)
            .await
            .expect("pending");
        let pending: Vec<PendingWire> =
            serde_json::from_value(reply["pending"].clone()).expect("wire");
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].id, 7);
        assert_eq!(pending[0].action["amount_cents"], 48_700);
        assert_eq!(pending[0].action["merchant"], "united.com");
        assert_eq!(pending[0].decision_seq, 5);
        assert!(pending[0].remaining_ms > 55_000 && pending[0].remaining_ms <= 60_000);

        // Unknown id: refused, the real question still waits.
        let wrong = ControlRequest::Answer {
            id: 8,
            approve: true,
            approver: Some("ui".into()),
        };
        match call(dir.path(), &wrong).await {
            Err(ControlClientError::Refused(text)) => assert!(text.contains("8"), "{text}"),
            other => panic!("{other:?}"),
        }
        // An approver name that could forge receipt text is refused.
        let forged = ControlRequest::Answer {
            id: 7,
            approve: true,
            approver: Some("ui\"}\n{".into()),
        };
        assert!(matches!(
            call(dir.path(), &forged).await,
            Err(ControlClientError::Refused(_))
        ));
        // Garbage is answered with an error, not a hang.
        let path = dir.path().to_path_buf();
        let garbage = tokio::task::spawn_blocking(move || {
            let stream =
                std::os::unix::net::UnixStream::connect(path.join(CONTROL_SOCK)).expect("connect");
            (&stream).write_all(b"{\"op\":\"nope\"}\n").expect("write");
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).expect("read");
            line
        })
        .await
        .expect("join");
        assert!(garbage.contains("\"ok\":false"), "{garbage}");

        let approve = ControlRequest::Answer {
            id: 7,
            approve: true,
            approver: Some("terminal:approve-cmd".into()),
        };
        call(dir.path(), &approve).await.expect("answered");
        let answer = answer_rx.await.expect("the gate got the answer");
        assert!(answer.approved);
        assert_eq!(answer.approver, "terminal:approve-cmd");
        // Answered: no longer pending, a second answer is refused.
        assert!(matches!(
            call(dir.path(), &approve).await,
            Err(ControlClientError::Refused(_))
        ));
        server.stop().await;
    }

    #[tokio::test]
    async fn subscribers_see_events_and_pending_changes_until_the_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (broker, handle) = ApiBroker::new();
        let bus = EventBus::new();
        let server = serve(dir.path(), bus.clone(), handle).expect("serve");
        let mut sub = subscribe_to(dir.path()).await.expect("subscribe");
        let first = next_matching(&mut sub, "pending").await;
        assert_eq!(first["pending"], serde_json::json!([]));

        let rx = broker.ask(question(3, Duration::from_secs(30)));
        let listed = next_matching(&mut sub, "pending").await;
        assert_eq!(listed["pending"][0]["id"], 3);

        let mut event = Event::about(EventKind::Pending, 3, 1, &purchase());
        event.reason = Some("payments above $400.00 need approval".into());
        bus.send(event);
        let got = next_matching(&mut sub, "event").await;
        assert_eq!(got["event"]["kind"], "pending");
        assert_eq!(got["event"]["amount_cents"], 48_700);

        // A denial through another connection shows up as an empty list.
        let deny = ControlRequest::Answer {
            id: 3,
            approve: false,
            approver: Some("ui".into()),
        };
        call(dir.path(), &deny).await.expect("denied");
        assert!(!rx.await.expect("answer").approved);
        let cleared = next_matching(&mut sub, "pending").await;
        assert_eq!(cleared["pending"], serde_json::json!([]));

        // Stopping the server ends the stream.
        server.stop().await;
        let end = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match sub.next().await {
                    Ok(Some(_)) => continue,
                    other => return other,
                }
            }
        })
        .await
        .expect("stream ends");
        assert!(matches!(end, Ok(None)), "{end:?}");
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_drop_cleans_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A socket file left by a crashed supervisor: nobody listens.
        drop(std::os::unix::net::UnixListener::bind(dir.path().join(CONTROL_SOCK)).expect("bind"));
        assert!(matches!(
            call(dir.path(), &ControlRequest::Info).await,
            Err(ControlClientError::NotRunning(_))
        ));
        let (_broker, handle) = ApiBroker::new();
        let server = serve(dir.path(), EventBus::new(), handle).expect("serve over stale");
        call(dir.path(), &ControlRequest::Info).await.expect("info");
        drop(server);
        assert!(!dir.path().join(CONTROL_SOCK).exists());
    }

    #[test]
    fn requests_parse_as_documented() {
        let parse = |s: &str| serde_json::from_str::<ControlRequest>(s);
        assert_eq!(
            parse(r#"{"op":"pending"}"#).expect("ok"),
            ControlRequest::Pending
        );
        assert_eq!(
            parse(r#"{"op":"answer","id":4,"approve":false}"#).expect("ok"),
            ControlRequest::Answer {
                id: 4,
                approve: false,
                approver: None
            }
        );
        assert!(parse(r#"{"op":"answer","id":4}"#).is_err());
        assert!(parse(r#"{"op":"shutdown"}"#).is_err());
    }
}
