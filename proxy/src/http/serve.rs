//! Serving one sandbox connection: the TLS handshake (SNI first, then the
//! ALPN answer), then HTTP/1.1 behind the smuggling guard or HTTP/2.

use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use capabilities::Host;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::{
    body::{Body, Frame, Incoming, SizeHint},
    server::conn::{http1, http2},
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpStream, time::timeout};
use tokio_rustls::LazyConfigAcceptor;
use tracing::Instrument;

use super::{
    client::ConnUpstream,
    forward::{handle, ConnCtx},
    guard::H1Guard,
    h2watch::{H2Limits, H2Watch, H2_MAX_FRAME},
    BoxError, Io, ProxyBody,
};
use crate::{
    decide::{ConnInfo, Listener, Refusal},
    shared::Shared,
    tls::server::{choose_answer, AlpnOffer, Proto},
    ProxyError,
};

/// hyper's executor for HTTP/2 stream tasks, which keeps them in the
/// connection's span (session and connection id on their log lines).
#[derive(Clone)]
struct InSpan(tracing::Span);

impl<F> hyper::rt::Executor<F> for InSpan
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(fut.instrument(self.0.clone()));
    }
}

fn refuse_conn(shared: &Shared, conn: ConnInfo, err: ProxyError) {
    let blocked = err.blocked();
    ratelog::debug!(
        conn = conn.id,
        reason = blocked.reason,
        "connection refused"
    );
    shared.refusal(Refusal {
        conn,
        request: None,
        reason: blocked.reason,
        detail: err.to_string(),
    });
}

/// A connection on the TLS listener.
pub(crate) async fn serve_tls(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr, id: u64) {
    let mut info = ConnInfo {
        id,
        peer,
        listener: Listener::Https,
        sni: None,
        alpn: None,
    };
    super::stall::set_send_low_watermark(&tcp);
    let deadline = shared.limits.handshake_timeout;
    let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
    let start = match timeout(deadline, acceptor).await {
        Err(_) => return ratelog::debug!(conn = id, "ClientHello not received in time"),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
            return refuse_conn(&shared, info, ProxyError::NotTls(e))
        }
        Ok(Err(e)) => return ratelog::debug!(conn = id, error = %e, "connection ended before TLS"),
        Ok(Ok(start)) => start,
    };
    let hello = start.client_hello();
    // Fail closed before anything else: no SNI, no destination; one that is
    // not a host name is no destination either.
    let Some(sni) = hello.server_name() else {
        return refuse_conn(&shared, info, ProxyError::NoSni);
    };
    let Ok(sni) = Host::parse(sni) else {
        let err = ProxyError::BadSni(sni.to_owned());
        return refuse_conn(&shared, info, err);
    };
    let offer = AlpnOffer::from_client(hello.alpn());
    let answer = choose_answer(offer, shared.upstream.learned_h2(&sni));
    let config = shared.server_configs.for_answer(answer);
    info.sni = Some(sni.clone());
    info.alpn = answer.map(|p| String::from_utf8_lossy(p.alpn()).into_owned());
    let tls = match timeout(deadline, start.into_stream(config)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            return ratelog::debug!(conn = id, error = %ProxyError::ClientTls(e), "handshake failed")
        }
        Err(_) => return ratelog::debug!(conn = id, "TLS handshake not completed in time"),
    };
    let h2 = answer == Some(Proto::H2);
    let pool = ConnUpstream::new(shared.clone(), Listener::Https, offer);
    // Bounds a sandbox that stops reading, whatever the protocol.
    let tls = super::stall::StallGuard::new(tls, shared.stalls.clone(), id);
    let ctx = Arc::new(ConnCtx {
        shared,
        info,
        pool,
        switched: Arc::default(),
    });
    if h2 {
        serve_h2(ctx, tls).await;
    } else {
        serve_h1(ctx, tls).await;
    }
}

/// A connection on the plain-HTTP listener.
pub(crate) async fn serve_plain(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr, id: u64) {
    let info = ConnInfo {
        id,
        peer,
        listener: Listener::Http,
        sni: None,
        alpn: None,
    };
    let pool = ConnUpstream::new(shared.clone(), Listener::Http, AlpnOffer::default());
    super::stall::set_send_low_watermark(&tcp);
    let tcp = super::stall::StallGuard::new(tcp, shared.stalls.clone(), id);
    let ctx = ConnCtx {
        shared,
        info,
        pool,
        switched: Arc::default(),
    };
    serve_h1(Arc::new(ctx), tcp).await;
}

/// Per connection: responses finished and streams open, so the HTTP/1.1
/// guard knows when it may answer and HTTP/2 knows when it is idle.
#[derive(Default)]
struct Activity {
    answered: Arc<AtomicU64>,
    open: AtomicUsize,
    /// Milliseconds since `epoch` of the last stream end.
    last_end_ms: AtomicU64,
    epoch: Option<tokio::time::Instant>,
}

/// A response body that tells [`Activity`] when hyper is done with it.
struct Tracked {
    inner: ProxyBody,
    activity: Arc<Activity>,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let a = &self.activity;
        if let Some(epoch) = a.epoch {
            let ms = u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
            a.last_end_ms.store(ms, Ordering::Relaxed);
        }
        a.open.fetch_sub(1, Ordering::Relaxed);
        a.answered.fetch_add(1, Ordering::Release);
    }
}

async fn tracked(
    ctx: Arc<ConnCtx>,
    activity: Arc<Activity>,
    req: Request<Incoming>,
) -> Result<Response<Tracked>, Infallible> {
    activity.open.fetch_add(1, Ordering::Relaxed);
    // Counted from here, so a stream whose handler is dropped early still ends.
    let guard = Tracked {
        inner: http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed_unsync(),
        activity,
    };
    let resp = handle(ctx, req).await?;
    let mut guard = guard;
    Ok(resp.map(|b| {
        guard.inner = b;
        guard
    }))
}

async fn serve_h1(ctx: Arc<ConnCtx>, io: impl Io) {
    let limits = &ctx.shared.limits;
    let activity = Arc::new(Activity::default());
    let (guarded, trip) = H1Guard::new(
        io,
        limits.max_header_bytes,
        activity.answered.clone(),
        ctx.switched.clone(),
    );
    let svc_ctx = ctx.clone();
    let svc = service_fn(move |req| tracked(svc_ctx.clone(), activity.clone(), req));
    let result = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192) * 2)
        .serve_connection(TokioIo::new(guarded), svc)
        .with_upgrades()
        .await;
    // A guard trip surfaces as a quiet EOF or an error, depending on whether
    // hyper had buffered part of a message: check the trip either way.
    let tripped = *trip.lock().unwrap_or_else(|p| p.into_inner());
    let err = match (tripped, result) {
        (Some(t), _) => t.into_error(),
        (None, Ok(())) => return,
        (None, Err(e)) if e.is_parse_too_large() => ProxyError::HeadersTooLarge,
        (None, Err(e)) if e.is_parse() => ProxyError::Malformed(e.to_string()),
        (None, Err(e)) => {
            return ratelog::debug!(conn = ctx.info.id, error = %e, "connection ended")
        }
    };
    refuse_conn(&ctx.shared, ctx.info.clone(), err);
}

async fn serve_h2(ctx: Arc<ConnCtx>, io: impl Io) {
    let limits = &ctx.shared.limits;
    let activity = Arc::new(Activity {
        epoch: Some(tokio::time::Instant::now()),
        ..Activity::default()
    });
    let svc_ctx = ctx.clone();
    let svc_activity = activity.clone();
    // hyper spawns a task per HTTP/2 stream and moves the future into it
    // (and its output over it when done): boxed, that is a pointer, not the
    // handler's whole state (about 6 KiB), copied for every request.
    let svc = service_fn(move |req| Box::pin(tracked(svc_ctx.clone(), svc_activity.clone(), req)));
    // h2 answers lists over its own limit with a bare 431 that never reaches
    // us; with its limit above ours, `handle` sees them and reports them.
    // Lists over h2's limit and requests h2 finds malformed are caught by the
    // watch before h2 decodes them (the connection ends, with one event).
    let h2_limit = u32::try_from(limits.max_header_bytes.saturating_mul(4)).unwrap_or(u32::MAX);
    let (watched, trip) = H2Watch::new(
        io,
        H2Limits {
            list: h2_limit as usize,
            frame: H2_MAX_FRAME,
        },
    );
    let conn = http2::Builder::new(InSpan(tracing::Span::current()))
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_h2_streams)
        .max_header_list_size(h2_limit)
        .max_frame_size(H2_MAX_FRAME as u32)
        // Extended CONNECT (RFC 8441): WebSockets over HTTP/2, decided and
        // carried as HTTP/1.1 upgrades are (`http/websocket.rs`).
        .enable_connect_protocol()
        .keep_alive_interval(Some(limits.header_timeout))
        .adaptive_window(true)
        .serve_connection(TokioIo::new(watched), svc);
    tokio::pin!(conn);
    let idle = limits.idle_timeout;
    let tick = (idle / 4).max(Duration::from_millis(10));
    let mut closing = false;
    let result = loop {
        tokio::select! {
            r = conn.as_mut() => break r,
            _ = tokio::time::sleep(tick), if !closing => {
                let last_end = Duration::from_millis(activity.last_end_ms.load(Ordering::Relaxed));
                let quiet = activity.epoch.map_or(Duration::ZERO, |e| e.elapsed().saturating_sub(last_end));
                if activity.open.load(Ordering::Relaxed) == 0 && quiet >= idle {
                    ratelog::debug!(conn = ctx.info.id, "idle h2 connection closed");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
            // A connection with no stream left ends at once after GOAWAY;
            // one still open and streamless an idle period later never got
            // going (no client preface: hyper waits for it whatever the
            // shutdown asked), so it goes.
            _ = tokio::time::sleep(idle), if closing => {
                if activity.open.load(Ordering::Relaxed) == 0 {
                    ratelog::debug!(conn = ctx.info.id, "h2 connection still not closed; dropped");
                    break Ok(());
                }
            }
        }
    };
    let tripped = *trip.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(t) = tripped {
        return refuse_conn(&ctx.shared, ctx.info.clone(), t.into_error());
    }
    if let Err(e) = result {
        ratelog::debug!(conn = ctx.info.id, error = %e, "h2 connection ended");
    }
}
