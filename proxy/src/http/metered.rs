//! `Metered`: the response body on its way to the sandbox. Streams frame by
//! frame (never buffers a whole body), applies the gate's response filter,
//! counts bytes and reports the exchange to the gate exactly once.

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http::StatusCode;
use hyper::body::{Body, Frame, SizeHint};

use super::{pool::Lease, BoxError, ProxyBody};
use crate::decide::{ConnInfo, Exchange, ExchangeOutcome, Gate, RequestSummary, ResponseFilter};

/// Everything needed to report the exchange when the body ends.
pub(crate) struct Report {
    pub gate: Arc<dyn Gate>,
    pub conn: ConnInfo,
    pub request: RequestSummary,
    pub status: Option<StatusCode>,
    pub bytes_up: Arc<AtomicU64>,
    pub started: Instant,
}

impl Report {
    pub(crate) fn send(self, bytes_down: u64, outcome: ExchangeOutcome) {
        self.gate.completed(Exchange {
            conn: self.conn,
            request: self.request,
            status: self.status,
            bytes_up: self.bytes_up.load(Ordering::Relaxed),
            bytes_down,
            duration: self.started.elapsed(),
            outcome,
        });
    }
}

pub(crate) struct Metered {
    inner: ProxyBody,
    filter: Option<Box<dyn ResponseFilter>>,
    bytes_down: u64,
    /// Invariant: Some until the exchange has been reported.
    report: Option<Report>,
    /// The pooled upstream connection this body comes from: given back to
    /// the pool only when the body was delivered completely.
    lease: Option<Lease>,
}

impl Metered {
    pub(crate) fn new(
        inner: ProxyBody,
        filter: Option<Box<dyn ResponseFilter>>,
        report: Report,
        lease: Option<Lease>,
    ) -> Self {
        Self {
            inner,
            filter,
            bytes_down: 0,
            report: Some(report),
            lease,
        }
    }

    fn finish(&mut self, outcome: ExchangeOutcome) {
        if let Some(mut lease) = self.lease.take() {
            if outcome == ExchangeOutcome::Completed {
                lease.reusable();
            }
        }
        if let Some(r) = self.report.take() {
            r.send(self.bytes_down, outcome);
        }
    }
}

impl Body for Metered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.report.is_none() {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match (frame.into_data(), this.filter.as_mut()) {
                    (Ok(data), Some(f)) => Frame::data(f.data(data)),
                    (Ok(data), None) => Frame::data(data),
                    (Err(other), _) => other,
                };
                if let Some(d) = frame.data_ref() {
                    this.bytes_down += d.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish(ExchangeOutcome::Failed(e.to_string()));
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                let tail = this
                    .filter
                    .as_mut()
                    .map(|f| f.finish())
                    .filter(|t| !t.is_empty());
                if let Some(t) = &tail {
                    this.bytes_down += t.len() as u64;
                }
                this.finish(ExchangeOutcome::Completed);
                Poll::Ready(tail.map(|t| Ok(Frame::data(t))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.report.is_none() || (self.filter.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.filter.is_some() {
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        let outcome = if self.filter.is_none() && self.inner.is_end_stream() {
            ExchangeOutcome::Completed
        } else {
            ExchangeOutcome::ClientGone
        };
        self.finish(outcome);
    }
}
