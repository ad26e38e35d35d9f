//! `UpstreamPool`: the upstream connections of ONE sandbox connection, opened
//! lazily on the first forwarded request (so refused requests never cause
//! one) and closed with it.

use std::sync::Arc;

use http::{header, uri::Scheme, HeaderValue, Request, Response, Uri, Version};
use hyper::{
    body::Incoming,
    client::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::Mutex;

use super::{Io, ProxyBody};
use crate::{decide::Listener, server::Shared, tls::server::AlpnOffer, ProxyError};

/// Upstream connections a single HTTP/2 sandbox connection may open when
/// upstream only speaks HTTP/1.1 (one per concurrent stream, bounded).
const MAX_H1_PER_CONN: usize = 8;

enum Sender {
    H1(http1::SendRequest<ProxyBody>),
    H2(http2::SendRequest<ProxyBody>),
}

pub(crate) struct UpstreamPool {
    shared: Arc<Shared>,
    listener: Listener,
    /// The host the connections below lead to. Fixed (the SNI) on TLS; on
    /// plain HTTP a request for another host drops them first.
    bound: Mutex<Option<String>>,
    offer: AlpnOffer,
    /// True when the sandbox side is HTTP/1.1: requests then come one at a
    /// time and a single upstream connection is reused.
    sequential: bool,
    h2: Mutex<Option<http2::SendRequest<ProxyBody>>>,
    h1: Mutex<Vec<http1::SendRequest<ProxyBody>>>,
    h1_open: Mutex<usize>,
    /// Signalled when a busy HTTP/1.1 sender comes back.
    returned: tokio::sync::Notify,
}

impl UpstreamPool {
    pub(crate) fn new(
        shared: Arc<Shared>,
        listener: Listener,
        host: Option<String>,
        offer: AlpnOffer,
        sequential: bool,
    ) -> Self {
        Self {
            shared,
            listener,
            bound: Mutex::new(host),
            offer,
            sequential,
            h2: Mutex::new(None),
            h1: Mutex::new(Vec::new()),
            h1_open: Mutex::new(0),
            returned: tokio::sync::Notify::new(),
        }
    }

    pub(crate) fn offer(&self) -> AlpnOffer {
        self.offer
    }

    /// Open a fresh upstream byte stream; returns it and whether it speaks h2.
    pub(crate) async fn open_stream(
        &self,
        host: &str,
        offer: AlpnOffer,
    ) -> Result<(Box<dyn Io>, bool), ProxyError> {
        match self.listener {
            Listener::Https => {
                let (tls, h2) = self.shared.upstream.connect_tls(host, offer).await?;
                Ok((Box::new(tls), h2))
            }
            Listener::Http => Ok((
                Box::new(self.shared.upstream.connect_tcp(host, 80).await?),
                false,
            )),
        }
    }

    async fn open(&self, host: &str) -> Result<Sender, ProxyError> {
        let (io, h2) = self.open_stream(host, self.offer).await?;
        let io = TokioIo::new(io);
        if h2 {
            let (send, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .adaptive_window(true)
                .handshake(io)
                .await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Sender::H2(send))
        } else {
            let (send, conn) = http1::Builder::new().handshake(io).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Sender::H1(send))
        }
    }

    /// Send one request upstream on an existing or new connection.
    pub(crate) async fn send(
        &self,
        host: &str,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        {
            let mut bound = self.bound.lock().await;
            if bound.as_deref() != Some(host) {
                if bound.is_some() {
                    self.h1.lock().await.clear();
                    *self.h1_open.lock().await = 0;
                    *self.h2.lock().await = None;
                }
                *bound = Some(host.to_owned());
            }
        }
        if let Some(mut s) = self.h2_ready().await {
            return Ok(s.send_request(to_h2(req, host, self.listener)?).await?);
        }
        let mut h1 = match self.h1_checkout().await {
            Some(s) => s,
            None => match self.open(host).await? {
                Sender::H2(s) => {
                    *self.h2.lock().await = Some(s.clone());
                    let mut s = s;
                    return Ok(s.send_request(to_h2(req, host, self.listener)?).await?);
                }
                Sender::H1(s) => {
                    *self.h1_open.lock().await += 1;
                    s
                }
            },
        };
        let result = h1.send_request(to_h1(req, host)).await;
        self.h1.lock().await.push(h1);
        self.returned.notify_one();
        Ok(result?)
    }

    async fn h2_ready(&self) -> Option<http2::SendRequest<ProxyBody>> {
        let mut slot = self.h2.lock().await;
        match slot.as_ref() {
            Some(s) if !s.is_closed() => Some(s.clone()),
            Some(_) => {
                *slot = None;
                None
            }
            None => None,
        }
    }

    /// A ready HTTP/1.1 sender, or None when a new connection should be opened.
    async fn h1_checkout(&self) -> Option<http1::SendRequest<ProxyBody>> {
        loop {
            let mut idle = self.h1.lock().await;
            let mut open = self.h1_open.lock().await;
            let before = idle.len();
            idle.retain(|s| !s.is_closed());
            *open -= before - idle.len();
            if let Some(i) = idle.iter().position(|s| s.is_ready()) {
                return Some(idle.swap_remove(i));
            }
            let at_cap = *open >= MAX_H1_PER_CONN;
            if idle.is_empty() && !at_cap {
                return None;
            }
            if !self.sequential && !at_cap {
                return None;
            }
            // Sequential sandbox side (or at the cap): the previous exchange
            // just ended, wait for that connection to become ready again.
            let Some(mut s) = idle.pop() else {
                drop((idle, open));
                self.returned.notified().await;
                continue;
            };
            drop((idle, open));
            if s.ready().await.is_ok() {
                return Some(s);
            }
            *self.h1_open.lock().await -= 1;
        }
    }
}

fn origin_form(uri: &Uri) -> Uri {
    uri.path_and_query()
        .map(|pq| Uri::from(pq.clone()))
        .unwrap_or_else(|| Uri::from_static("/"))
}

fn to_h1(mut req: Request<ProxyBody>, host: &str) -> Request<ProxyBody> {
    *req.version_mut() = Version::HTTP_11;
    *req.uri_mut() = origin_form(req.uri());
    if !req.headers().contains_key(header::HOST) {
        if let Ok(v) = HeaderValue::from_str(host) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    req
}

fn to_h2(
    mut req: Request<ProxyBody>,
    host: &str,
    listener: Listener,
) -> Result<Request<ProxyBody>, ProxyError> {
    *req.version_mut() = Version::HTTP_2;
    let scheme = match listener {
        Listener::Https => Scheme::HTTPS,
        Listener::Http => Scheme::HTTP,
    };
    let mut parts = req.uri().clone().into_parts();
    parts.scheme = Some(scheme);
    parts.authority = Some(
        host.parse()
            .map_err(|_| ProxyError::Malformed("host is not a valid authority".into()))?,
    );
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *req.uri_mut() =
        Uri::from_parts(parts).map_err(|_| ProxyError::Malformed("request target".into()))?;
    // :authority carries the host in HTTP/2.
    req.headers_mut().remove(header::HOST);
    Ok(req)
}
