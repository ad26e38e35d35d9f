//! A minimal HTTPS keep-alive client for the benchmarks: one TLS
//! connection, HTTP/2 or HTTP/1.1 as ALPN chose, GETs one after another.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;

/// One open connection, speaking whatever protocol the server chose.
pub enum HttpsClient {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl HttpsClient {
    /// Connects to `addr` with SNI `host`; ALPN comes from `cfg`.
    pub async fn connect(addr: SocketAddr, host: &str, cfg: Arc<ClientConfig>) -> HttpsClient {
        let tls = crate::tls_connect(addr, host, cfg)
            .await
            .expect("TLS connection");
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        if h2 {
            let (s, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .expect("h2 handshake");
            tokio::spawn(c);
            HttpsClient::H2(s)
        } else {
            let (s, c) = hyper::client::conn::http1::handshake(io)
                .await
                .expect("h1 handshake");
            tokio::spawn(c);
            HttpsClient::H1(s)
        }
    }

    /// GET `path` on `host`; asserts 200 and reads the whole body.
    pub async fn get(&mut self, host: &str, path: &str) {
        let resp = match self {
            HttpsClient::H1(s) => {
                s.ready().await.expect("h1 connection ready");
                let req = http::Request::get(path)
                    .header("host", host)
                    .body(Empty::new())
                    .expect("request");
                s.send_request(req).await.expect("h1 response")
            }
            HttpsClient::H2(s) => {
                let req = http::Request::get(format!("https://{host}{path}"))
                    .body(Empty::new())
                    .expect("request");
                s.send_request(req).await.expect("h2 response")
            }
        };
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.expect("response body");
    }
}
