//! The daemon's listener: HTTP/1.1 on the given address, one task per
//! connection, and the drain on SIGTERM (or SIGINT): stop accepting, let
//! in-flight requests finish (up to [`DRAIN_LIMIT`]), exit 0.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use super::launch::Launcher;
use super::routes::{self, State};
use crate::tenants;

/// Longest wait for in-flight requests after SIGTERM.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(30);

pub struct ServeConfig {
    pub home: PathBuf,
    pub addr: SocketAddr,
    /// Tenants in PostgreSQL instead of `<home>/control.db`.
    pub database: Option<tenants::DatabaseUrl>,
}

/// Serves until SIGTERM or SIGINT, then drains. Prints
/// `listening on http://ADDR` on stdout once bound.
pub async fn run(config: ServeConfig) -> Result<()> {
    let registry = tenants::open_registry(&config.home, config.database.as_ref())?;
    let mut term = signal(SignalKind::terminate()).context("watching SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("watching SIGINT")?;
    let listener = TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("listening on {}", config.addr))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    println!("listening on http://{addr}");
    let launcher = Launcher::new(&config.home)?;
    let state = Arc::new(State {
        registry,
        launcher,
        limits: Default::default(),
    });
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(err) => {
                        tracing::warn!("serve accept: {err}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let state = state.clone();
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(routes::handle(state, req).await) }
                });
                // A client that never finishes its request head is dropped.
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(err) = conn.await {
                        tracing::debug!("serve connection: {err}");
                    }
                });
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    drop(listener);
    tracing::info!("draining: no new connections, finishing requests in flight");
    if tokio::time::timeout(DRAIN_LIMIT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {DRAIN_LIMIT:?}; exiting anyway");
    }
    Ok(())
}
