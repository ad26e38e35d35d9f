//! `BodyDeadline`: bounds how long a sandbox may take to send a request body.
//! Only time the proxy spends waiting on the sandbox counts (not an approval
//! hold, not upstream back-pressure): each wait for the next piece may last
//! at most `body_timeout`, and all waits together at most `body_timeout`
//! plus one second per `body_min_rate` bytes received, so neither a stalled
//! nor a trickling body holds a connection (and its request) for long.
//! Once expired, every further read fails: a cut body is never passed on as
//! if it had ended.

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use std::future::Future;

use super::{BoxError, ProxyBody};

pub(crate) struct BodyDeadline {
    inner: ProxyBody,
    idle: Duration,
    min_rate: u64,
    received: u64,
    /// Time spent waiting on the sandbox in earlier waits.
    waited: Duration,
    /// Start of the current wait, if one is under way.
    waiting_since: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
    /// Set when the deadline passed; read by the request handler.
    expired: Arc<AtomicBool>,
}

/// What the sandbox is told, and what `handle` looks for.
pub(crate) const BODY_TIMEOUT_MSG: &str = "request body not received in time";

impl BodyDeadline {
    pub(crate) fn new(
        inner: ProxyBody,
        idle: Duration,
        min_rate: u64,
        expired: Arc<AtomicBool>,
    ) -> Self {
        Self {
            inner,
            idle,
            min_rate: min_rate.max(1),
            received: 0,
            waited: Duration::ZERO,
            waiting_since: None,
            timer: None,
            expired,
        }
    }

    fn allowance(&self) -> Duration {
        let earned = Duration::from_secs_f64(self.received as f64 / self.min_rate as f64);
        let left = (self.idle + earned).saturating_sub(self.waited);
        self.idle.min(left)
    }
}

impl Body for BodyDeadline {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.expired.load(Ordering::Relaxed) {
            return Poll::Ready(Some(Err(BODY_TIMEOUT_MSG.into())));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(since) = this.waiting_since.take() {
                    this.waited += since.elapsed();
                }
                if let Some(Ok(d)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
                    this.received += d.map_or(0, |d| d.len() as u64);
                }
                Poll::Ready(frame)
            }
            Poll::Pending => {
                let now = Instant::now();
                let since = *this.waiting_since.get_or_insert(now);
                let deadline = since + this.allowance();
                match this.timer.as_mut() {
                    Some(t) if t.deadline() == deadline => {}
                    Some(t) => t.as_mut().reset(deadline),
                    None => this.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                }
                let fired = this
                    .timer
                    .as_mut()
                    .is_some_and(|t| t.as_mut().poll(cx).is_ready());
                if fired {
                    this.expired.store(true, Ordering::Relaxed);
                    return Poll::Ready(Some(Err(BODY_TIMEOUT_MSG.into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        !self.expired.load(Ordering::Relaxed) && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::sync::mpsc;

    fn body(idle_ms: u64, rate: u64) -> (mpsc::Sender<Bytes>, BodyDeadline, Arc<AtomicBool>) {
        let (tx, rx) = mpsc::channel(4);
        let expired = Arc::new(AtomicBool::new(false));
        let b = BodyDeadline::new(
            test_support::ChannelBody(rx).boxed_unsync(),
            Duration::from_millis(idle_ms),
            rate,
            expired.clone(),
        );
        (tx, b, expired)
    }

    // Paused time: the clock moves only when every task waits, straight to
    // the next timer, so the waits below are exact and take no real time.
    #[tokio::test(start_paused = true)]
    async fn stalled_body_expires_and_stays_failed() {
        let (tx, mut b, expired) = body(300, 1024);
        tx.send(Bytes::from_static(b"abc")).await.expect("send");
        let f = b.frame().await.expect("frame").expect("data");
        assert_eq!(f.into_data().expect("data"), "abc");
        let start = Instant::now();
        assert!(b.frame().await.expect("frame").is_err());
        assert!(start.elapsed() >= Duration::from_millis(300));
        // Not later than the deadline either (tokio's timers tick in ms).
        assert!(start.elapsed() <= Duration::from_millis(301));
        assert!(expired.load(Ordering::Relaxed));
        drop(tx);
        assert!(b.frame().await.expect("still failing").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn trickle_runs_out_of_allowance() {
        // 1 s per wait, 1000 B/s: a byte every 600 ms never stalls for 1 s,
        // but earns only 1 ms per byte, so the second wait runs out first.
        let (tx, mut b, expired) = body(1000, 1000);
        let feeder = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(600)).await;
                if tx.send(Bytes::from_static(b"x")).await.is_err() {
                    return;
                }
            }
        });
        let start = Instant::now();
        let mut got = 0;
        while let Some(f) = b.frame().await {
            if f.is_err() {
                break;
            }
            got += 1;
        }
        assert!(expired.load(Ordering::Relaxed));
        assert_eq!(got, 1, "second wait exceeds what is left of the allowance");
        // Byte at 600 ms; the second wait has 1000 + 1 - 600 = 401 ms left.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(1000) && took <= Duration::from_millis(1002),
            "{took:?}"
        );
        feeder.abort();
    }
}
