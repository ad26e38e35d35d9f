//! Slow readers: a sandbox that stops reading a response must not hold the
//! proxy's resources (its task, the upstream connection or pooled HTTP/2
//! stream, buffers) for ever. Two watches, both bounded by
//! `Limits::write_stall_timeout` and counted in [`StallWatch`]:
//!
//! - [`StallGuard`] wraps the sandbox's byte stream: a write or flush that
//!   makes no progress for the limit fails with `TimedOut`, which ends the
//!   connection (HTTP/1.1 and HTTP/2 alike).
//! - [`WatchedBody`] wraps HTTP/2 response bodies: a client that never sends
//!   WINDOW_UPDATE stalls a stream inside h2 while the socket stays writable,
//!   so hyper simply stops asking for the next frame. The sweeper notices a
//!   frame handed over and not followed by a new request for the limit, and
//!   drops the upstream side of that body (the pooled connection or stream is
//!   freed). The sandbox-side stream itself cannot be reset from here: hyper
//!   polls the body again only once the client grants window (then it gets
//!   an error and resets the stream); until then the stream is one of
//!   `max_h2_streams`.

use std::{
    collections::HashMap,
    future::Future,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::watch,
    time::{Instant, Sleep},
};

use super::{BoxError, ProxyBody};

/// What hyper gets from a body whose upstream side was dropped for a stall.
const STALLED_MSG: &str = "sandbox stopped reading the response";

/// `owed_since` value while hyper is not owed a visit (it waits on us, or
/// the body ended).
const NOT_OWED: u64 = u64::MAX;

/// One per proxy instance: the limit, the stall counter and the HTTP/2
/// response bodies in flight.
pub(crate) struct StallWatch {
    limit: Duration,
    stalls: AtomicU64,
    epoch: Instant,
    next_id: AtomicU64,
    /// Invariant: holds exactly the live `WatchedBody`s not yet cut.
    bodies: Mutex<HashMap<u64, Arc<Watched>>>,
}

impl StallWatch {
    pub(crate) fn new(limit: Duration) -> Arc<Self> {
        Arc::new(Self {
            limit,
            stalls: AtomicU64::new(0),
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            bodies: Mutex::new(HashMap::new()),
        })
    }

    /// Exchanges ended because the sandbox stopped reading.
    pub(crate) fn stalls(&self) -> u64 {
        self.stalls.load(Ordering::Relaxed)
    }

    fn stalled(&self, conn: u64, what: &'static str) {
        self.stalls.fetch_add(1, Ordering::Relaxed);
        ratelog::debug!(
            conn,
            limit_ms = u64::try_from(self.limit.as_millis()).unwrap_or(u64::MAX),
            what,
            "sandbox stopped reading"
        );
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(NOT_OWED - 1)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Watched>>> {
        self.bodies.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watch an HTTP/2 response body of connection `conn`.
    pub(crate) fn watch(self: &Arc<Self>, conn: u64, body: ProxyBody) -> WatchedBody {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Owed from the start: hyper asks for the first frame right after
        // sending the head, which needs no flow-control window.
        let state = Arc::new(Watched {
            conn,
            owed_since: AtomicU64::new(self.now_ms()),
            inner: Mutex::new(Some(body)),
        });
        self.lock().insert(id, state.clone());
        WatchedBody {
            state,
            id,
            watch: self.clone(),
        }
    }

    /// Cut the upstream side of every body hyper has owed a visit for the
    /// limit. Returns how many were cut.
    fn sweep(&self) -> usize {
        let limit = u64::try_from(self.limit.as_millis()).unwrap_or(u64::MAX);
        let now = self.now_ms();
        let mut cut = Vec::new();
        {
            let mut bodies = self.lock();
            bodies.retain(|_, w| {
                let since = w.owed_since.load(Ordering::Acquire);
                if since == NOT_OWED || now.saturating_sub(since) < limit {
                    return true;
                }
                // Locked means hyper is polling it right now: not stalled.
                let Ok(mut inner) = w.inner.try_lock() else {
                    return true;
                };
                cut.push((w.conn, inner.take()));
                false
            });
        }
        // Dropped outside the lock: this reports the exchange and closes or
        // gives back the upstream connection.
        let n = cut.len();
        for (conn, body) in cut {
            drop(body);
            self.stalled(conn, "h2 stream window");
        }
        n
    }
}

/// Every quarter of the limit, cut stalled HTTP/2 response bodies; ends when
/// the proxy stops.
pub(crate) async fn sweep_stalled(stalls: Arc<StallWatch>, mut stop: watch::Receiver<bool>) {
    let period = (stalls.limit / 4).max(Duration::from_millis(10));
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep(period) => { stalls.sweep(); }
        }
    }
}

struct Watched {
    conn: u64,
    /// Milliseconds since the watch's epoch at which hyper was handed a
    /// frame (or the head) and has not asked for the next one since;
    /// `NOT_OWED` while the last poll was Pending or the body ended.
    owed_since: AtomicU64,
    /// None once cut by the sweeper.
    inner: Mutex<Option<ProxyBody>>,
}

/// An HTTP/2 response body under the stall watch (see the module doc).
pub(crate) struct WatchedBody {
    state: Arc<Watched>,
    id: u64,
    watch: Arc<StallWatch>,
}

impl Body for WatchedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut inner = this.state.inner.lock().unwrap_or_else(|p| p.into_inner());
        // A cut body fails: the sandbox never sees it end as if complete.
        let Some(body) = inner.as_mut() else {
            return Poll::Ready(Some(Err(STALLED_MSG.into())));
        };
        let polled = Pin::new(&mut *body).poll_frame(cx);
        let owed = match &polled {
            Poll::Ready(Some(Ok(_))) if !body.is_end_stream() => this.watch.now_ms(),
            _ => NOT_OWED,
        };
        this.state.owed_since.store(owed, Ordering::Release);
        polled
    }

    fn is_end_stream(&self) -> bool {
        let inner = self.state.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.as_ref().is_some_and(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.state.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .as_ref()
            .map_or_else(SizeHint::default, |b| b.size_hint())
    }
}

impl Drop for WatchedBody {
    fn drop(&mut self) {
        self.watch.lock().remove(&self.id);
    }
}

/// Unsent bytes a sandbox socket may hold before it stops being writable.
/// Without it the kernel reports a blocked socket writable again only once
/// a third of its (autotuned, megabytes on loopback) send buffer has
/// drained, so a slow but steady reader would look stalled for long
/// stretches; with it, every window the reader opens is seen as progress
/// within about `SEND_LOW_WATERMARK / 2` bytes. Also keeps what a slow reader
/// pins in kernel memory small.
const SEND_LOW_WATERMARK: u32 = 128 * 1024;

/// Prepare an accepted sandbox socket for [`StallGuard`]. Best effort: a
/// socket without the option still has its writes bounded, more coarsely.
pub(crate) fn set_send_low_watermark(tcp: &tokio::net::TcpStream) {
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_notsent_lowat(SEND_LOW_WATERMARK) {
        tracing::debug!(error = %e, "TCP_NOTSENT_LOWAT not set");
    }
}

/// The sandbox's byte stream (after TLS, or plain TCP): writes and flushes
/// that make no progress for the limit fail with `TimedOut`, and every
/// write after that fails too. Reads pass through.
pub(crate) struct StallGuard<T> {
    inner: T,
    watch: Arc<StallWatch>,
    conn: u64,
    /// Created at the first write that blocks, then only reset: a
    /// connection whose writes never block allocates no timer.
    timer: Option<Pin<Box<Sleep>>>,
    /// Invariant: true iff the timer runs for the current blocked write.
    armed: bool,
    stalled: bool,
}

impl<T> StallGuard<T> {
    pub(crate) fn new(inner: T, watch: Arc<StallWatch>, conn: u64) -> Self {
        Self {
            inner,
            watch,
            conn,
            timer: None,
            armed: false,
            stalled: false,
        }
    }

    fn timed_out() -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, STALLED_MSG)
    }

    /// Progress disarms; a Pending arms the timer once and fails the write
    /// when it fires.
    fn track<R>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if r.is_ready() {
            self.armed = false;
            return r;
        }
        if !self.armed {
            // A limit too large to add never fires.
            let Some(deadline) = Instant::now().checked_add(self.watch.limit) else {
                return Poll::Pending;
            };
            match self.timer.as_mut() {
                Some(t) => t.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
        }
        let fired = self
            .timer
            .as_mut()
            .is_some_and(|t| t.as_mut().poll(cx).is_ready());
        if fired {
            self.stalled = true;
            self.watch.stalled(self.conn, "socket");
            return Poll::Ready(Err(Self::timed_out()));
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallGuard<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallGuard<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.stalled {
            return Poll::Ready(Err(Self::timed_out()));
        }
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.track(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.stalled {
            return Poll::Ready(Err(Self::timed_out()));
        }
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.track(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.stalled {
            return Poll::Ready(Err(Self::timed_out()));
        }
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.track(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.stalled {
            // Nothing more can be written; closing is all that is left.
            return Poll::Ready(Ok(()));
        }
        let r = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.track(cx, r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // Paused time (in-memory pipes and bodies only): exact, instant waits.
    #[tokio::test(start_paused = true)]
    async fn blocked_writes_fail_after_the_limit_and_progress_disarms() {
        let watch = StallWatch::new(Duration::from_secs(1));
        // 8 bytes of pipe: the ninth byte blocks until the reader reads.
        let (a, mut b) = tokio::io::duplex(8);
        let mut g = StallGuard::new(a, watch.clone(), 7);
        g.write_all(b"12345678").await.expect("fits");
        assert!(g.timer.is_none(), "no timer while writes complete");
        // Progress every 200 ms keeps a writer going past the 1 s limit.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                b.read_exact(&mut buf).await.expect("read");
            }
            b // then it stops reading
        });
        for _ in 0..3 {
            g.write_all(b"abcdefgh")
                .await
                .expect("reader makes progress");
        }
        let start = Instant::now();
        let err = g.write_all(b"x").await.expect_err("reader stopped");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() >= Duration::from_secs(1));
        assert!(
            start.elapsed() <= Duration::from_millis(1001),
            "fails at the limit"
        );
        assert_eq!(watch.stalls(), 1);
        // Sticky: nothing more is written.
        let again = g.write(b"y").await.expect_err("still failing");
        assert_eq!(again.kind(), io::ErrorKind::TimedOut);
        assert_eq!(watch.stalls(), 1, "counted once");
        drop(reader.await.expect("reader"));
    }

    /// Counts its own drop (moved into a body's frame mapper, it is
    /// dropped with the body).
    struct DropCount(Arc<AtomicU64>);
    impl Drop for DropCount {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_not_asked_for_its_next_frame_is_cut() {
        let watch = StallWatch::new(Duration::from_secs(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let counter = DropCount(dropped.clone());
        let chan = test_support::ChannelBody(rx).map_frame(move |frame| {
            let _ = &counter;
            frame
        });
        let mut body = watch.watch(3, chan.boxed_unsync());
        tx.send(Bytes::from_static(b"a")).await.expect("send");
        assert!(body.frame().await.is_some());
        // Waiting on upstream (Pending) is never a stall.
        let pending = tokio::time::timeout(Duration::from_millis(1500), body.frame()).await;
        assert!(pending.is_err());
        assert_eq!(watch.sweep(), 0);
        // A frame handed over, then hyper does not come back: cut.
        tx.send(Bytes::from_static(b"b")).await.expect("send");
        assert!(body.frame().await.is_some());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(watch.sweep(), 0, "not yet");
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(watch.sweep(), 1);
        assert_eq!(dropped.load(Ordering::SeqCst), 1, "upstream side dropped");
        assert_eq!(watch.stalls(), 1);
        assert!(!body.is_end_stream());
        assert!(body.frame().await.expect("a frame").is_err());
        drop(body);
        assert!(watch.lock().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn ended_and_dropped_bodies_leave_the_watch() {
        let watch = StallWatch::new(Duration::from_secs(1));
        let mut body = watch.watch(
            1,
            http_body_util::Full::new(Bytes::from_static(b"done"))
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        assert!(body.frame().await.is_some());
        // The last frame owes nothing: hyper will not come back for more.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(watch.sweep(), 0);
        drop(body);
        assert!(watch.lock().is_empty());
    }
}
