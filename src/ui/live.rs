//! A running session's page, live: one server-sent-events stream per open
//! page. It subscribes to the session's control socket and, whenever an
//! event or the pending list arrives (and every few seconds for the clock),
//! brings the stream's report up to date from what the bundle appended
//! ([`ReportFollower`]: only the new bytes are read and verified) and sends
//! `{"report", "pending", "ended"}`. The receipts on disk stay the single
//! source of truth; the socket only says when to look and what is waiting
//! for a human.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::sessions::Sessions;
use super::{Body, ChannelBody, View};
use crate::bundle;
use crate::control::{self, PendingWire};
use crate::report::{Report, ReportFollower};

/// Events arriving close together are sent as one update.
const DEBOUNCE: Duration = Duration::from_millis(120);
/// The page's clock and the bundle's late writes (bytes, status) are picked
/// up at least this often.
const REFRESH: Duration = Duration::from_secs(2);
/// After the socket closes, how long to wait for the supervisor's final
/// `session.json`.
const END_GRACE: Duration = Duration::from_secs(15);

pub fn events(view: &View, id: &str, dir: PathBuf) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    // The stream task outlives the request: it gets its own handles.
    let id = id.to_owned();
    let sessions = StateRef {
        sessions: view.sessions.clone(),
        still_allowed: view.still_allowed.clone(),
    };
    tokio::spawn(async move {
        if let Err(err) = follow(&sessions, &id, &dir, &tx).await {
            tracing::debug!("live stream of {id}: {err:#}");
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-store")
        .body(ChannelBody { rx }.boxed())
        .expect("static response parts are valid")
}

/// The part of the view a stream needs, shareable with its task.
#[derive(Clone)]
struct StateRef {
    sessions: Arc<Sessions>,
    /// The daemon's re-check of the login (rotation, deletion, logout).
    still_allowed: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
}

impl StateRef {
    /// Whether the viewer may still watch; asked at every refresh.
    async fn allowed(&self) -> bool {
        let Some(check) = self.still_allowed.clone() else {
            return true;
        };
        tokio::task::spawn_blocking(move || check())
            .await
            .unwrap_or(false)
    }
}

async fn follow(
    state: &StateRef,
    id: &str,
    dir: &Path,
    tx: &mpsc::Sender<Bytes>,
) -> anyhow::Result<()> {
    let mut last_sent = String::new();
    let watched = Watched::default();
    let subscribed = tokio::time::timeout(super::CONTROL_TIMEOUT, control::subscribe_to(dir)).await;
    let mut sub = match subscribed {
        Ok(Ok(sub)) => Some(sub),
        Ok(Err(err)) => {
            tracing::debug!("subscribing to {id}: {err}");
            None
        }
        Err(_) => {
            // Busy, not gone: show what the bundle says and end this stream;
            // the browser's EventSource reconnects by itself.
            tracing::warn!("subscribing to {id}: its control socket did not answer in time");
            return send(state, &watched, dir, &[], false, tx, &mut last_sent).await;
        }
    };
    let mut pending: Vec<PendingWire> = Vec::new();
    let mut due = Some(Instant::now());
    let mut tick = tokio::time::interval(REFRESH);
    while let Some(s) = sub.as_mut() {
        tokio::select! {
            msg = s.next() => match msg {
                Ok(Some(msg)) => {
                    if let Some(list) = msg.get("pending") {
                        pending = serde_json::from_value(list.clone()).unwrap_or_default();
                        // The pending list matters to a human: show it now.
                        due = Some(Instant::now());
                    } else if due.is_none() {
                        due = Some(Instant::now() + DEBOUNCE);
                    }
                }
                // Stream ended: the session is shutting down.
                Ok(None) | Err(_) => sub = None,
            },
            _ = sleep_until(due) => {
                due = None;
                send(state, &watched, dir, &pending, false, tx, &mut last_sent).await?;
            }
            _ = tick.tick() => {
                // A login that no longer holds (token rotated, tenant
                // deleted, logged out) stops seeing the session here.
                if !state.allowed().await {
                    return Ok(());
                }
                send(state, &watched, dir, &pending, false, tx, &mut last_sent).await?;
            }
            _ = tx.closed() => return Ok(()),
        }
    }
    // Wait for the supervisor to write its final status (report, receipts).
    let deadline = Instant::now() + END_GRACE;
    while Instant::now() < deadline {
        let done = bundle::read_info(dir)
            .map(|i| i.status != "running")
            .unwrap_or(true);
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    send(state, &watched, dir, &[], true, tx, &mut last_sent).await
}

/// The stream's report of its session, followed from update to update
/// (made at the first, with the key `session.json` names).
type Watched = Arc<Mutex<Option<ReportFollower>>>;

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn send(
    state: &StateRef,
    watched: &Watched,
    dir: &Path,
    pending: &[PendingWire],
    ended: bool,
    tx: &mpsc::Sender<Bytes>,
    last_sent: &mut String,
) -> anyhow::Result<()> {
    let sessions = state.sessions.clone();
    let (watched, dir, pending) = (watched.clone(), dir.to_path_buf(), pending.to_vec());
    // Reading and verifying what the chain appended is blocking work.
    let message = tokio::task::spawn_blocking(move || {
        let mut watched = watched.lock().ok()?;
        let follower = match &mut *watched {
            Some(follower) => follower,
            None => {
                let info = bundle::read_info(&dir).ok()?;
                let key = sessions.key_for(&info.receipt_key_id);
                watched.insert(ReportFollower::new(&dir, key))
            }
        };
        let report = follower
            .update()
            .map_err(|err| tracing::warn!("report of {}: {err:#}", dir.display()))
            .ok()?;
        Some(
            serde_json::json!({
                // Bounded as the page is: a huge session is not resent whole.
                "report": crate::report::page_data(report),
                "pending": enrich(&pending, report),
                "ended": ended,
            })
            .to_string(),
        )
    })
    .await?;
    let Some(message) = message else {
        return Ok(());
    };
    // Unchanged state (the clock aside, which the page runs itself) is not resent.
    if message == *last_sent && !ended {
        return Ok(());
    }
    *last_sent = message.clone();
    tx.send(Bytes::from(format!("data: {message}\n\n")))
        .await
        .map_err(|_| anyhow::anyhow!("page went away"))
}

/// Pending approvals as the page shows them: with the grant named by their
/// decision receipt.
fn enrich(pending: &[PendingWire], report: &Report) -> Vec<Value> {
    pending
        .iter()
        .map(|p| {
            let mut v = serde_json::to_value(p).unwrap_or(Value::Null);
            let grant = report
                .timeline
                .iter()
                .find(|e| e.seq == p.decision_seq)
                .and_then(|e| e.grant.clone());
            if let Some(obj) = v.as_object_mut() {
                obj.insert("grant".into(), grant.map_or(Value::Null, Value::String));
            }
            // Its texts and lists bounded as the timeline's are.
            crate::report::bound_for_page(&mut v);
            v
        })
        .collect()
}
