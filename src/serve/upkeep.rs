//! The daemon's periodic tasks, every [`RENEW_EVERY`] (a sixth of
//! `--lease-ttl`): renews the session leases it holds (`--database`;
//! `leases`), and stops its sessions whose tenant no longer exists —
//! deleted through another daemon on the same database, whose deletion can
//! stop only its own sessions — as a deletion does (SIGTERM, then killed
//! past the limit), one `session.stop` audit line each. Apart from that,
//! on the same period, the sessions whose leases could not be renewed in
//! time (the database out of reach) are stopped the same way: past its
//! lease a session no longer counts in its tenant's `sessions` quota, and
//! another daemon may start one in its place.

use std::sync::Arc;
use std::time::Duration;

use super::leases::{SessionLeases, LEASE_LAPSED, RENEW_EVERY};
use super::routes::TENANT_STOP_LIMIT;
use super::state::State;
use crate::audit::{self, Actor, AuditRecord, Outcome, Via};
use crate::tenants::{TenantName, TenantOpError};

/// Runs forever (the daemon exits without waiting for it). The first round
/// runs at once: a start never waits a whole period for its first renewal,
/// and a lease lasts several periods. The lapse check runs as a task of its
/// own, so a renewal hung on an unreachable database does not hold it up.
pub async fn run(state: Arc<State>) {
    let period = state
        .leases
        .as_ref()
        .map_or(RENEW_EVERY, |l| l.timing().renew_every);
    if let Some(leases) = state.leases.clone() {
        tokio::spawn(stop_lapsed_every(state.clone(), leases, period));
    }
    run_every(state, period).await;
}

async fn stop_lapsed_every(state: Arc<State>, leases: Arc<SessionLeases>, period: Duration) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let lapsed = leases.lapsing();
        if lapsed.is_empty() {
            continue;
        }
        let state = state.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || stop_lapsed(&state, &lapsed)).await {
            tracing::error!("stopping the sessions whose leases lapsed died: {e}");
        }
    }
}

/// Stops the sessions holding the leases `lapsed` (SIGTERM: each runner
/// closes its chain with an interrupted `session_end`; killed and
/// recovered past the limit), one log line and one `session.stop` audit
/// line each as it is signalled.
fn stop_lapsed(state: &State, lapsed: &[String]) {
    state
        .launcher
        .stop_leased(lapsed, TENANT_STOP_LIMIT, |tenant, id| {
            tracing::error!(tenant, session = id, "stopped the session: {LEASE_LAPSED}");
            audit_stop(state, tenant, id, LEASE_LAPSED);
        });
}

fn audit_stop(state: &State, tenant: &str, id: &str, why: &str) {
    let mut record = AuditRecord::now(
        Actor::Admin,
        Via::Api,
        "session.stop",
        id,
        &audit::new_request_id(),
    );
    record.tenant = Some(tenant.to_owned());
    record.detail = Some(why.to_owned());
    record.outcome = Outcome::Ok;
    if let Err(e) = state.registry.audit().append(&record) {
        tracing::error!(tenant, session = id, "auditing the stop: {e:#}");
    }
}

async fn run_every(state: Arc<State>, period: Duration) {
    let mut ticks = tokio::time::interval(period);
    // A round that took long (a stop waited for) is not made up for.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let state = state.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || round(&state)).await {
            tracing::error!("the periodic lease and tenant check died: {e}");
        }
    }
}

/// One round: renew, then check the tenants.
fn round(state: &State) {
    if let Some(leases) = &state.leases {
        if let Err(e) = leases.renew() {
            tracing::error!("renewing the session leases: {e}");
        }
    }
    stop_deleted_tenants(state);
}

/// Stops the sessions of every tenant of this daemon's sessions that the
/// store no longer has. A store that cannot be read stops nothing (the
/// tenant may well exist); the next round asks again.
fn stop_deleted_tenants(state: &State) {
    for name in state.launcher.running_tenants() {
        let Ok(tenant) = TenantName::parse(&name) else {
            continue;
        };
        match state.registry.quotas(&tenant) {
            Ok(_) => continue,
            Err(TenantOpError::NotFound(_)) => {}
            Err(e) => {
                tracing::warn!(tenant = name, "checking that the tenant exists: {e}");
                continue;
            }
        }
        let stopped = state.launcher.stop_tenant(&tenant, TENANT_STOP_LIMIT);
        tracing::info!(
            tenant = name,
            "the tenant was deleted: stopped {} session(s)",
            stopped.len()
        );
        for id in stopped {
            audit_stop(state, &name, &id, "the tenant was deleted");
        }
    }
}
