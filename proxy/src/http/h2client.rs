//! HTTP/2 to upstream on the `h2` crate directly rather than through
//! hyper's HTTP/2 client (#18). hyper hands every request to its
//! connection's dispatch task over a channel and spawns one more task per
//! request to wait for the response and pass it back: two task hand-offs
//! and a spawn on every request. Here the sandbox stream's own task sends
//! the request and waits for its response; a request body is sent from
//! that same task while the response is awaited, and only a body still
//! unsent when the response arrives gets a task of its own.
//!
//! What upstream receives is what hyper's client sent: the same request
//! head (hop-by-hop headers are already gone, see `forward.rs`; a missing
//! `Content-Length` is filled in from an exact body size as hyper does),
//! the same body frames and trailers, and the same SETTINGS but for the
//! window sizes (fixed windows: hyper's adaptive window measured no gain
//! here, docs/proxy.md session 12).

use std::{
    future::{poll_fn, Future},
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use h2::{
    client::{Builder, SendRequest},
    Reason, RecvStream, SendStream,
};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response};
use hyper::body::{Body, Frame, SizeHint};

use super::{BoxError, Io, ProxyBody};
use crate::ProxyError;

/// Flow-control windows offered to upstream: per stream and per
/// connection. What one upstream connection may have buffered in the
/// proxy for bodies the sandbox has not read yet is the connection's.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONN_WINDOW: u32 = 5 * 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;
const MAX_HEADER_LIST: u32 = 16 * 1024;
const INITIAL_MAX_SEND_STREAMS: usize = 100;

/// A handle on one upstream HTTP/2 connection; clones share it. The
/// connection closes once every handle and every stream is gone.
#[derive(Clone)]
pub(crate) struct H2Sender {
    send: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

/// Why a request did not get a response.
pub(crate) enum SendFailed {
    /// Nothing of it reached the connection (it had closed): here it is.
    Unsent(Box<Request<ProxyBody>>, ProxyError),
    Other(ProxyError),
}

impl H2Sender {
    /// The HTTP/2 handshake on `io`; the connection runs on a task of its
    /// own until it closes.
    pub(crate) async fn handshake(io: Box<dyn Io>) -> Result<Self, ProxyError> {
        let (send, conn) = Builder::new()
            .initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONN_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_header_list_size(MAX_HEADER_LIST)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .max_local_error_reset_streams(Some(1024))
            .enable_push(false)
            .handshake::<_, Bytes>(io)
            .await?;
        let closed = Arc::new(AtomicBool::new(false));
        let flag = closed.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                ratelog::debug!(error = %e, "upstream HTTP/2 connection ended");
            }
            flag.store(true, Ordering::Release);
        });
        Ok(Self { send, closed })
    }

    /// The connection has ended (closed, failed or told to go away and
    /// drained): no new request may use it.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Send one request (URI in absolute form, see `client::to_h2`) and
    /// wait for its response head.
    pub(crate) async fn send(
        mut self,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<H2Body>, SendFailed> {
        // A connection that has closed takes no new stream: the request
        // goes back untouched, as hyper's client hands it back.
        if let Err(e) = poll_fn(|cx| self.send.poll_ready(cx)).await {
            return Err(SendFailed::Unsent(Box::new(req), e.into()));
        }
        fill_content_length(&mut req);
        let no_content = req.method() == Method::HEAD;
        let (head, body) = req.into_parts();
        let eos = body.is_end_stream();
        let (response, tx) = match self.send.send_request(Request::from_parts(head, ()), eos) {
            Ok(sent) => sent,
            Err(e) => return Err(SendFailed::Other(e.into())),
        };
        // Dropped with this future (the sandbox went away), the pipe and
        // the response future take the stream with them: h2 resets it.
        let mut pipe = (!eos).then(|| Box::pin(pipe_body(body, tx)));
        let mut response = response;
        let response = poll_fn(|cx| {
            if let Some(p) = pipe.as_mut() {
                if p.as_mut().poll(cx).is_ready() {
                    pipe = None;
                }
            }
            Pin::new(&mut response).poll(cx)
        })
        .await;
        let (parts, recv) = match response {
            Ok(resp) => resp.into_parts(),
            Err(e) => return Err(SendFailed::Other(e.into())),
        };
        // The rest of the body goes on after the response head (a server
        // may answer before it has read everything).
        if let Some(p) = pipe {
            tokio::spawn(p);
        }
        let body = if no_content {
            H2Body::no_content(recv)
        } else {
            H2Body::new(recv, &parts.headers)
        };
        Ok(Response::from_parts(parts, body))
    }
}

/// hyper's client rule, kept so upstream sees the same head: a body of
/// exactly known size gets a `Content-Length` if it has none, unless it is
/// empty on a method without defined body semantics.
fn fill_content_length(req: &mut Request<ProxyBody>) {
    let Some(len) = req.body().size_hint().exact() else {
        return;
    };
    let no_body_semantics = matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::DELETE | Method::CONNECT
    );
    if (len != 0 || !no_body_semantics) && !req.headers().contains_key(header::CONTENT_LENGTH) {
        req.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
}

/// What polling the body or the stream found first.
enum Next {
    Frame(Option<Result<Frame<Bytes>, BoxError>>),
    /// Upstream reset the stream (or the connection went): stop sending.
    Reset,
}

/// Send a request body's frames on its stream, a frame at a time as flow
/// control allows; a body that fails resets the stream (upstream must not
/// take a cut body for a whole one).
async fn pipe_body(mut body: ProxyBody, mut tx: SendStream<Bytes>) {
    loop {
        // Wait for room before reading more of the body, so a slow
        // upstream slows the sandbox instead of filling the proxy.
        tx.reserve_capacity(1);
        if tx.capacity() == 0 {
            let room = poll_fn(|cx| {
                if tx.poll_reset(cx).is_ready() {
                    return Poll::Ready(None);
                }
                tx.poll_capacity(cx).map(|c| c.and_then(Result::ok))
            })
            .await;
            if room.is_none() {
                return;
            }
        }
        let next = poll_fn(|cx| {
            if tx.poll_reset(cx).is_ready() {
                return Poll::Ready(Next::Reset);
            }
            Pin::new(&mut body).poll_frame(cx).map(Next::Frame)
        })
        .await;
        let frame = match next {
            Next::Reset => return,
            Next::Frame(None) => {
                let _ = tx.send_data(Bytes::new(), true);
                return;
            }
            Next::Frame(Some(Err(e))) => {
                ratelog::debug!(error = %e, "request body failed; upstream stream reset");
                tx.send_reset(Reason::INTERNAL_ERROR);
                return;
            }
            Next::Frame(Some(Ok(frame))) => frame,
        };
        match frame.into_data() {
            Ok(data) => {
                let eos = body.is_end_stream();
                if tx.send_data(data, eos).is_err() || eos {
                    return;
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let _ = tx.send_trailers(trailers);
                } else {
                    let _ = tx.send_data(Bytes::new(), true);
                }
                return;
            }
        }
    }
}

/// A response body from an upstream HTTP/2 stream: data as it arrives,
/// its window released as it is handed on, then the trailers.
pub(crate) struct H2Body {
    recv: RecvStream,
    data_done: bool,
    /// What `Content-Length` says is still to come, when it says.
    remaining: Option<u64>,
    /// A response to HEAD: ended with its head, nothing of the stream read.
    no_content: bool,
}

impl H2Body {
    /// `headers` is the response head's: its one `Content-Length`, if it
    /// has one, is the size hint (h2 checks the data against it).
    fn new(recv: RecvStream, headers: &HeaderMap) -> Self {
        let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
        let remaining = match (lengths.next(), lengths.next()) {
            (Some(v), None) => v.to_str().ok().and_then(|s| s.parse().ok()),
            _ => None,
        };
        Self {
            recv,
            data_done: false,
            remaining,
            no_content: false,
        }
    }

    /// The body of a response to HEAD: none, whatever upstream's head says
    /// (its `Content-Length` is what a GET would carry) and whatever it
    /// sends after the head (h2 resets a stream that sends DATA there;
    /// that is upstream's error, and the sandbox's answer is the head).
    fn no_content(recv: RecvStream) -> Self {
        Self {
            recv,
            data_done: true,
            remaining: Some(0),
            no_content: true,
        }
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if this.no_content {
            return Poll::Ready(None);
        }
        if !this.data_done {
            match this.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    // Handed on: upstream may send as much again.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    if let Some(r) = this.remaining.as_mut() {
                        *r = r.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => this.data_done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        match this.recv.poll_trailers(cx) {
            Poll::Ready(Ok(Some(t))) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Poll::Ready(Ok(None)) => Poll::Ready(None),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.no_content || self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
