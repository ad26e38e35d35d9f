//! `GET /v1/sessions/{id}/events`: a running session's events as
//! server-sent events, read from its control socket (the subscription
//! `openclaw ui` uses): `action` (one per event, in the order the session
//! emitted them), `pending` (the approvals waiting), `lagged` (this reader
//! fell behind and missed that many), and a last `end` when the session's
//! stream closes. Each message carries an increasing `id:`. The token the
//! stream was opened with is checked again every few seconds: once it is
//! rotated or its tenant deleted, the stream closes (without `end`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::sync::mpsc;

use super::error::ApiBody;
use crate::control;
use crate::ui::ChannelBody;

/// How long the session's control socket may take to accept the subscription.
const SUBSCRIBE_LIMIT: Duration = Duration::from_secs(5);
/// How often the stream's token is checked again (as the UI's refresh).
const RECHECK: Duration = Duration::from_secs(2);

/// Whether the stream's token still authenticates (a blocking store read).
pub type StillAllowed = Arc<dyn Fn() -> bool + Send + Sync>;

/// The stream's response; a task follows the session until its stream
/// ends or the client goes away. Called on a blocking thread of the runtime.
pub fn stream(dir: PathBuf, still_allowed: StillAllowed) -> Response<ApiBody> {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::runtime::Handle::current().spawn(async move {
        if let Err(err) = follow(&dir, &tx, still_allowed).await {
            tracing::debug!("events of {}: {err:#}", dir.display());
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(ChannelBody::new(rx).boxed())
        .expect("static response parts are valid")
}

async fn follow(
    dir: &std::path::Path,
    tx: &mpsc::Sender<Bytes>,
    still_allowed: StillAllowed,
) -> anyhow::Result<()> {
    let mut seq: u64 = 0;
    let mut emit = |kind: &str, data: &Value| {
        seq += 1;
        Bytes::from(format!("id: {seq}\nevent: {kind}\ndata: {data}\n\n"))
    };
    let mut sub = tokio::time::timeout(SUBSCRIBE_LIMIT, control::subscribe_to(dir)).await??;
    let mut recheck = tokio::time::interval(RECHECK);
    loop {
        let message = tokio::select! {
            msg = sub.next() => msg,
            _ = recheck.tick() => {
                // Revocation reaches an open stream: a rotated token or a
                // deleted tenant stops seeing the session's events.
                let check = still_allowed.clone();
                let allowed = tokio::task::spawn_blocking(move || check())
                    .await
                    .unwrap_or(false);
                if !allowed {
                    return Ok(());
                }
                continue;
            }
            _ = tx.closed() => return Ok(()),
        };
        let chunk = match message {
            Ok(Some(msg)) => {
                if let Some(event) = msg.get("event") {
                    emit("action", event)
                } else if let Some(pending) = msg.get("pending") {
                    emit("pending", pending)
                } else if let Some(n) = msg.get("lagged") {
                    emit("lagged", n)
                } else {
                    continue;
                }
            }
            // The session closed its stream: it is ending.
            Ok(None) | Err(_) => {
                let _ = tx.send(emit("end", &Value::Null)).await;
                return Ok(());
            }
        };
        if tx.send(chunk).await.is_err() {
            return Ok(());
        }
    }
}
