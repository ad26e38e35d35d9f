//! The client side of the control socket: one request and its reply
//! (blocking for `openclaw approve`/`deny`, async for the web UI), or a
//! subscription to a running session's stream.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::wire::{ControlRequest, CONTROL_SOCK};

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
    /// An answer not taken: the question was already answered (by whom,
    /// in the text), timed out or withdrawn.
    #[error("{0}")]
    NotTaken(String),
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
        Some(false) => {
            let text = value
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("refused")
                .to_owned();
            if value.get("not_taken").and_then(Value::as_bool) == Some(true) {
                Err(ControlClientError::NotTaken(text))
            } else {
                Err(ControlClientError::Refused(text))
            }
        }
        None => Err(ControlClientError::Protocol(format!(
            "reply without \"ok\": {}",
            line.trim()
        ))),
    }
}

fn protocol(e: &dyn std::fmt::Display) -> ControlClientError {
    ControlClientError::Protocol(e.to_string())
}
