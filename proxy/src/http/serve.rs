//! Serving one sandbox connection: the TLS handshake (SNI first, then the
//! ALPN answer), then HTTP/1.1 behind the smuggling guard or HTTP/2.

use std::{net::SocketAddr, sync::Arc};

use hyper::{
    server::conn::{http1, http2},
    service::service_fn,
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{net::TcpStream, time::timeout};
use tokio_rustls::LazyConfigAcceptor;

use super::{
    forward::{handle, ConnCtx},
    guard::H1Guard,
    pool::UpstreamPool,
    Io,
};
use crate::{
    decide::{ConnInfo, Listener, Refusal},
    server::Shared,
    tls::server::{choose_answer, AlpnOffer, Proto},
    ProxyError,
};

fn refuse_conn(shared: &Shared, conn: ConnInfo, err: ProxyError) {
    let blocked = err.blocked();
    tracing::debug!(
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
    let deadline = shared.limits.handshake_timeout;
    let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
    let start = match timeout(deadline, acceptor).await {
        Err(_) => return tracing::debug!(conn = id, "ClientHello not received in time"),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
            return refuse_conn(&shared, info, ProxyError::NotTls(e))
        }
        Ok(Err(e)) => return tracing::debug!(conn = id, error = %e, "connection ended before TLS"),
        Ok(Ok(start)) => start,
    };
    let hello = start.client_hello();
    // Fail closed before anything else: no SNI, no destination.
    let Some(sni) = hello
        .server_name()
        .map(|s| s.trim_end_matches('.').to_ascii_lowercase())
    else {
        return refuse_conn(&shared, info, ProxyError::NoSni);
    };
    let offer = AlpnOffer::from_client(hello.alpn());
    let answer = choose_answer(offer, shared.upstream.learned_h2(&sni));
    let config = shared.server_configs.for_answer(answer);
    info.sni = Some(sni.clone());
    info.alpn = answer.map(|p| String::from_utf8_lossy(p.alpn()).into_owned());
    let tls = match timeout(deadline, start.into_stream(config)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            return tracing::debug!(conn = id, error = %ProxyError::ClientTls(e), "handshake failed")
        }
        Err(_) => return tracing::debug!(conn = id, "TLS handshake not completed in time"),
    };
    let h2 = answer == Some(Proto::H2);
    let pool = UpstreamPool::new(shared.clone(), Listener::Https, Some(sni), offer, !h2);
    let ctx = Arc::new(ConnCtx { shared, info, pool });
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
    let pool = UpstreamPool::new(
        shared.clone(),
        Listener::Http,
        None,
        AlpnOffer::default(),
        true,
    );
    serve_h1(Arc::new(ConnCtx { shared, info, pool }), tcp).await;
}

async fn serve_h1(ctx: Arc<ConnCtx>, io: impl Io) {
    let limits = &ctx.shared.limits;
    let (guarded, trip) = H1Guard::new(io, limits.max_header_bytes);
    let svc_ctx = ctx.clone();
    let svc = service_fn(move |req| handle(svc_ctx.clone(), req));
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
            return tracing::debug!(conn = ctx.info.id, error = %e, "connection ended")
        }
    };
    refuse_conn(&ctx.shared, ctx.info.clone(), err);
}

async fn serve_h2(ctx: Arc<ConnCtx>, io: impl Io) {
    let limits = &ctx.shared.limits;
    let svc_ctx = ctx.clone();
    let svc = service_fn(move |req| handle(svc_ctx.clone(), req));
    let result = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_h2_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(limits.header_timeout))
        .adaptive_window(true)
        .serve_connection(TokioIo::new(io), svc)
        .await;
    if let Err(e) = result {
        tracing::debug!(conn = ctx.info.id, error = %e, "h2 connection ended");
    }
}
