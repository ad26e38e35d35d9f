//! The daemon's listener: HTTP/1.1 on the given address, one task per
//! connection, `/ui/` to the browser UI and the rest to the API; at start,
//! what a dead daemon left is settled first (`restart`); a periodic task
//! renews the session leases and stops sessions of deleted tenants
//! (`upkeep`); the drain on SIGTERM (or SIGINT): stop accepting, refuse
//! new sessions (503), stop the running ones with their chains closed (up
//! to [`SESSION_DRAIN_LIMIT`]), let in-flight requests finish (up to
//! [`DRAIN_LIMIT`]), exit 0.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use super::identity::{ProxyUser, TrustedProxies};
use super::launch::{Launcher, SessionDefaults};
use super::leases::{LeaseTiming, SessionLeases};
use super::restart;
use super::routes;
use super::state::State;
use super::ui;
use super::upkeep;
use crate::tenants;

/// Longest wait for in-flight requests after SIGTERM.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// Longest wait for signalled sessions to end, at the drain and for a dead
/// daemon's orphans at start; past it they are SIGKILLed and recovered.
pub const SESSION_DRAIN_LIMIT: Duration = Duration::from_secs(30);

pub struct ServeConfig {
    pub home: PathBuf,
    pub addr: SocketAddr,
    /// Tenants in PostgreSQL instead of `<home>/control.db`.
    pub database: Option<tenants::DatabaseUrl>,
    /// Passed to every session the daemon starts.
    pub sessions: SessionDefaults,
    /// `--trusted-proxy` and `--identity-header`; None: no header is read.
    pub identity: Option<TrustedProxies>,
    /// `--lease-ttl`: how long a session lease lasts unless renewed.
    pub leases: LeaseTiming,
}

/// Finishes the tenant deletions a CLI or a daemon left half done (their
/// sessions were settled just before); one that cannot finish is logged
/// and left marked for the next start or `openclaw tenants delete`.
fn finish_interrupted_deletes(registry: &tenants::Registry) {
    let caller = tenants::Caller {
        actor: crate::audit::Actor::Admin,
        via: crate::audit::Via::Api,
        request_id: crate::audit::new_request_id(),
        user: None,
    };
    let ended =
        |name: &tenants::TenantName| super::sessions::running_count(&registry.root(name)) == 0;
    match registry.finish_interrupted_deletes(&caller, ended) {
        Ok(done) => {
            for (name, result) in done {
                match result {
                    Ok(()) => tracing::info!(tenant = %name, "completed an interrupted delete"),
                    Err(e) => tracing::error!(
                        tenant = %name,
                        "an interrupted delete could not be completed: {e:#}"
                    ),
                }
            }
        }
        Err(e) => tracing::error!("listing the interrupted deletes: {e}"),
    }
}

/// Serves until SIGTERM or SIGINT, then drains. Prints
/// `listening on http://ADDR` on stdout once bound.
pub async fn run(config: ServeConfig) -> Result<()> {
    let registry = tenants::open_registry(&config.home, config.database.as_ref())?;
    // Before listening: no request sees a dead daemon's session as running.
    let settled = restart::settle(
        &registry,
        config.sessions.quota_db.as_ref(),
        &crate::usage::LedgerDb::of(&config.home, config.database.as_ref()),
        SESSION_DRAIN_LIMIT,
    )?;
    if !settled.stopped.is_empty() || !settled.recovered.is_empty() {
        tracing::info!(
            stopped = settled.stopped.len(),
            killed = settled.killed,
            recovered = settled.recovered.len(),
            "settled what the previous daemon left"
        );
    }
    finish_interrupted_deletes(&registry);
    let mut term = signal(SignalKind::terminate()).context("watching SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("watching SIGINT")?;
    let listener = TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("listening on {}", config.addr))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    println!("listening on http://{addr}");
    let launcher = Launcher::new(
        &config.home,
        config.sessions.clone(),
        registry.audit().share(),
    )?;
    let state = Arc::new(State {
        registry,
        launcher,
        sessions: Default::default(),
        logins: Default::default(),
        limits: match &config.database {
            Some(url) => super::quota::Limits::shared(tenants::PgStore::open(url)?),
            None => Default::default(),
        },
        ledger: crate::usage::LedgerReader::open(&crate::usage::LedgerDb::of(
            &config.home,
            config.database.as_ref(),
        ))?,
        leases: config
            .database
            .as_ref()
            .map(|url| SessionLeases::open(url, config.leases))
            .transpose()?,
    });
    tokio::spawn(upkeep::run(state.clone()));
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        tracing::warn!("serve accept: {err}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let state = state.clone();
                let identity = config.identity.clone();
                let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                    let state = state.clone();
                    // Who the peer says the user is, decided here where the
                    // peer is known; the routes act on it after the token.
                    let user = match &identity {
                        Some(proxies) => proxies.user_of(peer, req.headers()),
                        None => ProxyUser::None,
                    };
                    req.extensions_mut().insert(user);
                    async move {
                        // The browser UI has its own login and pages; the
                        // rest is the JSON API.
                        Ok::<_, Infallible>(if ui::serves(req.uri().path()) {
                            ui::handle(state, req).await
                        } else {
                            routes::handle(state, req).await
                        })
                    }
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
    // Refused before the listener closes: a request whose body arrives
    // after that sees the drain.
    state.launcher.refuse_starts();
    drop(listener);
    tracing::info!("draining: no new connections or sessions; stopping the running sessions");
    // Sessions first: their event streams end with them, so the requests
    // in flight can finish.
    let launcher = state.launcher.clone();
    let drained = tokio::task::spawn_blocking(move || launcher.drain(SESSION_DRAIN_LIMIT))
        .await
        .context("draining the sessions")?;
    tracing::info!(
        stopped = drained.stopped,
        killed = drained.killed,
        "sessions drained; finishing requests in flight"
    );
    if tokio::time::timeout(DRAIN_LIMIT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {DRAIN_LIMIT:?}; exiting anyway");
    }
    Ok(())
}
