//! `RequestBody`: a streaming request body the gate can buffer a bounded
//! prefix of, inspect and replace, before it is forwarded.

use std::{
    fmt,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};

use crate::{
    http::{client::body_could_be_a_request, metered::Upload, BoxError, ProxyBody},
    ProxyError,
};

/// The request body, streaming. Nothing is read from the sandbox until the
/// gate asks ([`RequestBody::buffer_up_to`]) or the request is forwarded; then
/// the buffered prefix goes first and the rest streams behind it.
///
/// Request trailers are dropped, never forwarded: the gate decides on the
/// head and the body, and with a streamed body the trailers come after the
/// request has gone upstream, too late to decide on. Servers that merge
/// trailer fields into the headers would otherwise act on fields nobody
/// checked (a method override, a credential placeholder left unreplaced).
pub struct RequestBody {
    /// Invariant: holds every data byte read so far, in order.
    buffered: BytesMut,
    /// None once the sandbox's body ended.
    rest: Option<ProxyBody>,
    replaced: bool,
    /// Kept exactly as long as the buffered bytes are
    /// ([`RequestBody::hold_with_buffer`]).
    hold: Option<BufferHold>,
}

/// Whatever must live exactly as long as a body's buffered bytes (the
/// gate's read permit for a body read whole): dropped with the last of
/// those bytes, whether they went upstream, failed to or were dropped.
pub type BufferHold = Box<dyn std::any::Any + Send + Sync>;

impl fmt::Debug for RequestBody {
    // Never prints body bytes: they may hold secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestBody")
            .field("buffered_len", &self.buffered.len())
            .field("complete", &self.is_complete())
            .field("held", &self.hold.is_some())
            .finish()
    }
}

impl RequestBody {
    pub(crate) fn new(body: ProxyBody) -> Self {
        let rest = if body.is_end_stream() {
            None
        } else {
            Some(body)
        };
        Self {
            buffered: BytesMut::new(),
            rest,
            replaced: false,
            hold: None,
        }
    }

    /// Keeps `hold` until the buffered bytes are gone: sent upstream (the
    /// last of them written out), or dropped with the request or the
    /// connection. An upstream that answers before it has read the body
    /// does not end the hold: the proxy still holds and sends those bytes.
    /// A second hold replaces the first (dropping it).
    pub fn hold_with_buffer(&mut self, hold: BufferHold) {
        self.hold = Some(hold);
    }

    /// Read from the sandbox until at least `limit` bytes are buffered or the
    /// body ends. A body over the limit stays incomplete: the caller decides
    /// (the enforcing gate blocks rather than guesses).
    pub async fn buffer_up_to(&mut self, limit: usize) -> Result<(), ProxyError> {
        while self.buffered.len() < limit {
            let Some(rest) = self.rest.as_mut() else {
                break;
            };
            match rest.frame().await {
                None => self.rest = None,
                Some(Err(e)) => return Err(ProxyError::RequestBody(e.to_string())),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.buffered.extend_from_slice(&data),
                    // Trailers end the body; they are dropped (above).
                    Err(frame) => {
                        if frame.is_trailers() {
                            self.rest = None;
                        }
                    }
                },
            }
        }
        Ok(())
    }

    /// The bytes buffered so far (a prefix of the body, or all of it when
    /// [`is_complete`](Self::is_complete)).
    pub fn buffered(&self) -> &[u8] {
        &self.buffered
    }

    /// True when the whole body has been read into [`buffered`](Self::buffered).
    pub fn is_complete(&self) -> bool {
        self.rest.is_none()
    }

    /// Replace the whole body (credential substitution). Only a completely
    /// buffered body can be replaced; the proxy fixes `Content-Length`.
    pub fn replace(&mut self, body: Bytes) -> Result<(), ProxyError> {
        if !self.is_complete() {
            return Err(ProxyError::BodyNotBuffered);
        }
        self.buffered = BytesMut::from(&body[..]);
        self.replaced = true;
        Ok(())
    }

    /// True while more of the body may come and its total length is not
    /// known (no `Content-Length`: chunked, or HTTP/2 DATA without one).
    pub(crate) fn length_unknown(&self) -> bool {
        self.rest
            .as_ref()
            .is_some_and(|r| r.size_hint().exact().is_none())
    }

    /// Length of the body to send, when it is known because it was replaced.
    pub(crate) fn replaced_len(&self) -> Option<usize> {
        self.replaced.then_some(self.buffered.len())
    }

    /// Reads just enough of the body to tell whether its first bytes could
    /// be read as a request of their own by a server that answers without
    /// reading the body ([`body_could_be_a_request`]).
    pub(crate) async fn could_be_a_request(&mut self) -> Result<bool, ProxyError> {
        loop {
            if let Some(verdict) = body_could_be_a_request(&self.buffered, self.rest.is_none()) {
                return Ok(verdict);
            }
            self.buffer_up_to(self.buffered.len() + 1).await?;
        }
    }

    /// True when there is a body to send (some of it read, or more to come).
    pub(crate) fn has_content(&self) -> bool {
        !self.buffered.is_empty() || self.rest.is_some()
    }

    /// The body to send upstream: buffered prefix, then the rest streaming;
    /// `upload` is told when it has ended, failed or was dropped.
    pub(crate) fn into_upstream(
        self,
        counter: Arc<AtomicU64>,
        upload: Option<Arc<Upload>>,
    ) -> ProxyBody {
        let prefix = (!self.buffered.is_empty()).then(|| {
            let bytes = self.buffered.freeze();
            match self.hold {
                // The hold rides in the bytes themselves: hyper and h2
                // queue the frame until it is written, past the body's end
                // (and any early answer), so the hold ends with the last
                // reference to the buffer, not with this body. Nothing is
                // allocated for a body without a hold.
                Some(hold) => Bytes::from_owner(HeldBytes { bytes, _hold: hold }),
                None => bytes,
            }
        });
        // With nothing buffered there is nothing to hold: `hold` drops here.
        Prefixed {
            prefix,
            rest: self.rest,
            counter,
            upload,
        }
        .boxed_unsync()
    }
}

/// Buffered body bytes and what must live as long as they do.
struct HeldBytes {
    bytes: Bytes,
    _hold: BufferHold,
}

impl AsRef<[u8]> for HeldBytes {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

struct Prefixed {
    prefix: Option<Bytes>,
    rest: Option<ProxyBody>,
    counter: Arc<AtomicU64>,
    upload: Option<Arc<Upload>>,
}

impl Prefixed {
    fn ended(&mut self) {
        if let Some(upload) = self.upload.take() {
            upload.end();
        }
    }
}

impl Drop for Prefixed {
    fn drop(&mut self) {
        self.ended();
    }
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(prefix) = this.prefix.take() {
            this.counter
                .fetch_add(prefix.len() as u64, Ordering::Relaxed);
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        if let Some(rest) = this.rest.as_mut() {
            match Pin::new(rest).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(d) = frame.data_ref() {
                        this.counter.fetch_add(d.len() as u64, Ordering::Relaxed);
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    // Trailers (the last frame): dropped, see `RequestBody`.
                    this.rest = None;
                }
                Poll::Ready(Some(Err(e))) => {
                    this.ended();
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => this.rest = None,
            }
        }
        this.ended();
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let p = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        match &self.rest {
            None => SizeHint::with_exact(p),
            Some(r) => {
                let h = r.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(h.lower() + p);
                if let Some(u) = h.upper() {
                    out.set_upper(u + p);
                }
                out
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    fn streaming(chunks: &[&'static str]) -> ProxyBody {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        Iter(frames.into_iter()).boxed_unsync()
    }

    // A body over a Vec of frames, to avoid a futures dependency in tests.
    struct Iter(std::vec::IntoIter<Result<Frame<Bytes>, BoxError>>);
    impl hyper::body::Body for Iter {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.get_mut().0.next())
        }
    }

    #[tokio::test]
    async fn prefix_is_buffered_then_replayed_before_the_rest() {
        let mut body = RequestBody::new(streaming(&["abc", "def", "ghi"]));
        body.buffer_up_to(4).await.expect("buffer");
        assert_eq!(body.buffered(), b"abcdef");
        assert!(!body.is_complete());
        assert!(body.replace(Bytes::from_static(b"x")).is_err());
        let counter = Arc::new(AtomicU64::new(0));
        let all = body
            .into_upstream(counter.clone(), None)
            .collect()
            .await
            .expect("collect")
            .to_bytes();
        assert_eq!(&all[..], b"abcdefghi");
        assert_eq!(counter.load(Ordering::Relaxed), 9);
    }

    /// The hold outlives the body's end while its bytes are still queued
    /// (as hyper and h2 queue a frame until it is written) and drops with
    /// the last of them.
    #[tokio::test]
    async fn a_hold_lives_as_long_as_the_buffered_bytes() {
        let mut body = RequestBody::new(streaming(&["abc", "def"]));
        body.buffer_up_to(1024).await.expect("buffer");
        let hold = Arc::new(());
        body.hold_with_buffer(Box::new(hold.clone()));
        body.replace(Bytes::from_static(b"abcdefg"))
            .expect("replace");
        let mut upstream = body.into_upstream(Arc::new(AtomicU64::new(0)), None);
        let frame = upstream.frame().await.expect("a frame").expect("data");
        assert!(upstream.frame().await.is_none(), "the body has ended");
        drop(upstream);
        let mut queued = frame.into_data().expect("data");
        assert_eq!(&queued[..], b"abcdefg");
        let unwritten = queued.split_off(3);
        drop(queued);
        assert_eq!(Arc::strong_count(&hold), 2, "dropped with bytes unsent");
        drop(unwritten);
        assert_eq!(Arc::strong_count(&hold), 1, "kept past its bytes");
    }

    /// A body dropped before it is forwarded (refused) drops its hold.
    #[tokio::test]
    async fn a_refused_body_drops_its_hold() {
        let mut body = RequestBody::new(streaming(&["abc"]));
        body.buffer_up_to(1024).await.expect("buffer");
        let hold = Arc::new(());
        body.hold_with_buffer(Box::new(hold.clone()));
        drop(body);
        assert_eq!(Arc::strong_count(&hold), 1);
    }

    #[tokio::test]
    async fn complete_body_can_be_replaced() {
        let full = Full::new(Bytes::from_static(b"password=ocs_x"))
            .map_err(|never| match never {})
            .boxed_unsync();
        let mut body = RequestBody::new(full);
        body.buffer_up_to(1024).await.expect("buffer");
        assert!(body.is_complete());
        body.replace(Bytes::from_static(b"password=hunter2"))
            .expect("replace");
        assert_eq!(body.replaced_len(), Some(16));
        let out = body
            .into_upstream(Arc::new(AtomicU64::new(0)), None)
            .collect()
            .await
            .expect("collect")
            .to_bytes();
        assert_eq!(&out[..], b"password=hunter2");
    }
}
