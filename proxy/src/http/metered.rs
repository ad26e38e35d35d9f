//! `Metered`: the response body on its way to the sandbox. Streams frame by
//! frame (never buffers a whole body), applies the gate's response filter
//! (body and trailers), counts bytes and reports the exchange to the gate
//! exactly once.

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use hyper::body::{Body, Frame, SizeHint};

use super::{pool::Lease, BoxError, ProxyBody};
use crate::decide::{
    ConnInfo, Exchange, ExchangeOutcome, FilterError, Gate, RequestSummary, ResponseFilter,
};

/// Everything needed to report the exchange when the body ends. Reported
/// exactly once: a `Report` dropped unsent (the client went away while
/// the request was still with the upstream, so the future holding it was
/// dropped) reports `ClientGone`, so a call that went upstream is always
/// settled.
pub(crate) struct Report {
    pub gate: Arc<dyn Gate>,
    pub conn: ConnInfo,
    pub request: RequestSummary,
    pub status: Option<StatusCode>,
    pub bytes_up: Arc<AtomicU64>,
    pub started: Instant,
    sent: bool,
    /// The request body going upstream, if any: the report waits for its end.
    upload: Option<Arc<Upload>>,
}

/// A request body on its way upstream. Upstream may answer before it has
/// read all of it and go on reading after its response has ended; an
/// exchange reported at the response's end would leave the rest of the
/// body (its bytes, that it went up at all) out of the receipt. So the
/// report of an exchange whose body is still going is parked here and sent
/// when the body ends, fails or is dropped, with every byte that went up.
#[derive(Default)]
pub(crate) struct Upload(Mutex<UploadState>);

#[derive(Default)]
struct UploadState {
    ended: bool,
    parked: Option<(Report, u64, ExchangeOutcome)>,
}

impl Upload {
    /// The body has ended (or failed, or was dropped): send a parked report.
    pub(crate) fn end(&self) {
        let parked = {
            let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
            state.ended = true;
            state.parked.take()
        };
        if let Some((mut report, bytes_down, outcome)) = parked {
            report.emit(bytes_down, outcome);
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        let state = self.0.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some((mut report, bytes_down, outcome)) = state.parked.take() {
            report.emit(bytes_down, outcome);
        }
    }
}

impl Report {
    pub(crate) fn new(
        gate: Arc<dyn Gate>,
        conn: ConnInfo,
        request: RequestSummary,
        bytes_up: Arc<AtomicU64>,
        started: Instant,
    ) -> Self {
        Report {
            gate,
            conn,
            request,
            status: None,
            bytes_up,
            started,
            sent: false,
            upload: None,
        }
    }

    /// Report only once `upload` (this exchange's request body) has ended.
    pub(crate) fn after_upload(&mut self, upload: Arc<Upload>) {
        self.upload = Some(upload);
    }

    pub(crate) fn send(mut self, bytes_down: u64, outcome: ExchangeOutcome) {
        if let Some(upload) = self.upload.take() {
            let mut state = upload.0.lock().unwrap_or_else(|p| p.into_inner());
            if !state.ended {
                state.parked = Some((self, bytes_down, outcome));
                return;
            }
        }
        self.emit(bytes_down, outcome);
    }

    fn emit(&mut self, bytes_down: u64, outcome: ExchangeOutcome) {
        if std::mem::replace(&mut self.sent, true) {
            return;
        }
        self.gate.completed(Exchange {
            conn: self.conn.clone(),
            request: self.request.clone(),
            status: self.status,
            bytes_up: self.bytes_up.load(Ordering::Relaxed),
            bytes_down,
            duration: self.started.elapsed(),
            outcome,
        });
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        self.emit(0, ExchangeOutcome::ClientGone);
    }
}

/// A filtered body's first data frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FirstFrame {
    NotYet,
    /// Given to the connection, which may hold it in its write buffer until
    /// the body has nothing more.
    GivenOut,
    /// The connection had its chance to flush it.
    Flushed,
}

pub(crate) struct Metered {
    inner: ProxyBody,
    filter: Option<Box<dyn ResponseFilter>>,
    /// With a filter: upstream's body has ended (the filter was told), so
    /// what is left is its output, then these trailers.
    input_done: bool,
    trailers: Option<HeaderMap>,
    /// With a filter: where the first data frame is (see `poll_frame`).
    first_frame: FirstFrame,
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
            input_done: false,
            trailers: None,
            first_frame: FirstFrame::NotYet,
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

    /// The filter failed: the body is cut there (the sandbox never gets it
    /// as complete) and the exchange reported as failed.
    fn filter_failed(&mut self, e: FilterError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        tracing::debug!(error = %e, "response filter cut the body");
        self.finish(ExchangeOutcome::Failed(e.to_string()));
        Poll::Ready(Some(Err(Box::new(e))))
    }

    /// A filtered body: give out the filter's output, feed it the next
    /// upstream chunk only when it has none, then the trailers.
    fn poll_filtered(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let Some(filter) = self.filter.as_mut() else {
                return Poll::Ready(None);
            };
            match filter.pull() {
                Err(e) => return self.filter_failed(e),
                Ok(Some(out)) if out.is_empty() => continue,
                Ok(Some(out)) => {
                    if self.first_frame == FirstFrame::NotYet {
                        self.first_frame = FirstFrame::GivenOut;
                    }
                    self.bytes_down += out.len() as u64;
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
                Ok(None) => {}
            }
            if self.input_done {
                let trailers = self.trailers.take();
                self.finish(ExchangeOutcome::Completed);
                return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        if let Err(e) = filter.push(data) {
                            return self.filter_failed(e);
                        }
                    }
                    Err(frame) => {
                        if let Ok(mut t) = frame.into_trailers() {
                            // Trailers end the body: drain the filter, then send them.
                            filter.trailers(&mut t);
                            self.trailers = Some(t);
                            self.input_done = true;
                            if let Err(e) = filter.finish() {
                                return self.filter_failed(e);
                            }
                        }
                    }
                },
                Poll::Ready(Some(Err(e))) => {
                    self.finish(ExchangeOutcome::Failed(e.to_string()));
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    self.input_done = true;
                    if let Err(e) = filter.finish() {
                        return self.filter_failed(e);
                    }
                }
            }
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
        if this.filter.is_some() {
            if this.first_frame == FirstFrame::GivenOut {
                // Once, after the first frame: let the connection flush it
                // before the filter does the work it put off (the metering
                // reads each chunk after giving it out), so that work never
                // delays the first byte. Woken at once: nothing is awaited.
                this.first_frame = FirstFrame::Flushed;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            return this.poll_filtered(cx);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => {
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
                this.finish(ExchangeOutcome::Completed);
                Poll::Ready(None)
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::atomic::AtomicUsize;
    use std::task::{Wake, Waker};

    use http_body_util::{BodyExt, Full};

    use super::*;
    use crate::decide::{AllowAll, Listener};

    /// A filter that passes chunks on as they come.
    #[derive(Default)]
    struct Through(VecDeque<Bytes>);

    impl ResponseFilter for Through {
        fn push(&mut self, chunk: Bytes) -> Result<(), FilterError> {
            self.0.push_back(chunk);
            Ok(())
        }
        fn pull(&mut self) -> Result<Option<Bytes>, FilterError> {
            Ok(self.0.pop_front())
        }
        fn finish(&mut self) -> Result<(), FilterError> {
            Ok(())
        }
    }

    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn body(filter: Option<Box<dyn ResponseFilter>>) -> Metered {
        let inner: ProxyBody = Full::new(Bytes::from_static(b"data: x\n\n"))
            .map_err(|never| match never {})
            .boxed_unsync();
        let mut report = Report::new(
            Arc::new(AllowAll),
            ConnInfo {
                id: 1,
                peer: "127.0.0.1:1".parse().expect("addr"),
                listener: Listener::Https,
                sni: None,
                alpn: None,
            },
            RequestSummary {
                method: "POST".into(),
                scheme: "https",
                host: "api.test".parse().expect("host"),
                path: "/".into(),
                tag: None,
            },
            Arc::default(),
            Instant::now(),
        );
        report.status = Some(StatusCode::OK);
        Metered::new(inner, filter, report, None)
    }

    #[test]
    fn a_filtered_body_lets_the_connection_flush_its_first_frame() {
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut m = body(Some(Box::<Through>::default()));
        let mut poll = |m: &mut Metered| match Pin::new(m).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(f.into_data().expect("data"))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => panic!("{e}"),
            Poll::Pending => Poll::Pending,
        };
        assert_eq!(
            poll(&mut m),
            Poll::Ready(Some(Bytes::from_static(b"data: x\n\n")))
        );
        // Once: pending, woken at once, so the connection flushes first.
        assert_eq!(poll(&mut m), Poll::Pending);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll(&mut m), Poll::Ready(None));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        // Without a filter, frames follow each other as they come.
        let mut m = body(None);
        assert!(matches!(poll(&mut m), Poll::Ready(Some(_))));
        assert_eq!(poll(&mut m), Poll::Ready(None));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
    }
}
