//! The supervisor's side of the control socket: serves `<dir>/control.sock`
//! for a running session, lists pending approvals, takes answers, and
//! streams the session's events and pending list to subscribers (the web
//! UI, `openclaw approve`/`deny`).
//!
//! The socket is the only way into a running supervisor from outside, so it
//! is owner-only (0600 inside the 0700 bundle), bounded (line length,
//! connections) and it names every answer's approver in the receipt.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use enforce::{ApprovalError, ApprovalHandle, Event, EventBus};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, watch, Semaphore};

use super::latency::RequestLatency;
use super::wire::{ControlRequest, PendingWire, CONTROL_SOCK};

/// Longest request line accepted; requests are tiny.
const MAX_LINE: usize = 16 * 1024;
/// Clients served at once (browser tabs plus terminals); more wait.
const MAX_CONNECTIONS: usize = 64;
/// Longest approver name taken from a client.
const MAX_APPROVER: usize = 64;

/// Where the control server gets the session's event stream from: an
/// [`EventBus`], or any function that subscribes to one (the session's
/// enforcement point).
pub trait Subscribe: Send + Sync + 'static {
    fn subscribe(&self) -> broadcast::Receiver<Event>;
}

impl Subscribe for EventBus {
    fn subscribe(&self) -> broadcast::Receiver<Event> {
        EventBus::subscribe(self)
    }
}

impl<F> Subscribe for F
where
    F: Fn() -> broadcast::Receiver<Event> + Send + Sync + 'static,
{
    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self()
    }
}

struct Shared {
    session: String,
    events: Box<dyn Subscribe>,
    approvals: ApprovalHandle,
    stop: watch::Receiver<bool>,
    latency: RequestLatency,
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
        latency: RequestLatency::default(),
    });
    tokio::spawn(time_requests(shared.clone()));
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

/// Feeds the session's events to its latency histogram until the session
/// ends (its stream closes) or the server stops.
async fn time_requests(shared: Arc<Shared>) {
    let mut events = shared.events.subscribe();
    let mut stop = shared.stop.clone();
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(event) => shared.latency.observe(&event, std::time::Instant::now()),
                Err(broadcast::error::RecvError::Lagged(_)) => shared.latency.lost_events(),
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = stop.changed() => return,
        }
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
                    // Marked so a client can tell "someone else decided"
                    // (409 in the API) from "no such question".
                    Err(err) => match err.downcast_ref::<ApprovalError>() {
                        Some(ApprovalError::NotTaken { .. }) => serde_json::json!(
                            {"ok": false, "error": err.to_string(), "not_taken": true}
                        ),
                        _ => error(&err.to_string()),
                    },
                };
                send(&mut write, &reply).await?;
            }
            ControlRequest::Latency => {
                let reply = serde_json::json!({"ok": true, "latency": shared.latency.snapshot()});
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

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::fs::FileTypeExt;

    use capabilities::{Action, ActionType};
    use enforce::{
        ApiBroker, ApprovalBroker, ApprovalOutcome, ApprovalRequest, Decision, EventKind,
    };

    use super::*;
    use crate::control::client::{call, subscribe_to, ControlClientError, Subscription};

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
            query: None,
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
        let (decision, answerer) = Decision::new();
        broker.ask(question(7, Duration::from_secs(60)), answerer);

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
        let ApprovalOutcome::Answered(answer) = decision.wait(Duration::from_secs(5)).await else {
            panic!("the gate got no answer")
        };
        assert!(answer.approved);
        assert_eq!(answer.approver, "terminal:approve-cmd");
        // Answered: a second answer is not taken, and told whose was.
        let deny = ControlRequest::Answer {
            id: 7,
            approve: false,
            approver: Some("ui".into()),
        };
        match call(dir.path(), &deny).await {
            Err(ControlClientError::NotTaken(text)) => {
                assert!(text.contains("approved by terminal:approve-cmd"), "{text}")
            }
            other => panic!("{other:?}"),
        }
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

        let (decision, answerer) = Decision::new();
        broker.ask(question(3, Duration::from_secs(30)), answerer);
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
        assert!(matches!(
            decision.wait(Duration::from_secs(5)).await,
            ApprovalOutcome::Answered(a) if !a.approved
        ));
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
}
