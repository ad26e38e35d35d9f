//! The daemon's periodic task, every [`RENEW_EVERY`]: renews the session
//! leases it holds (`--database`; `leases`), and stops its sessions whose
//! tenant no longer exists — deleted through another daemon on the same
//! database, whose deletion can stop only its own sessions — as a deletion
//! does (SIGTERM, then killed past the limit), one `session.stop` audit
//! line each.

use std::sync::Arc;
use std::time::Duration;

use super::leases::RENEW_EVERY;
use super::routes::TENANT_STOP_LIMIT;
use super::state::State;
use crate::audit::{self, Actor, AuditRecord, Outcome, Via};
use crate::tenants::{TenantName, TenantOpError};

/// Runs forever (the daemon exits without waiting for it). The first round
/// runs at once: a start never waits a whole period for its first renewal,
/// and a lease lasts several periods.
pub async fn run(state: Arc<State>) {
    run_every(state, RENEW_EVERY).await;
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
            let mut record = AuditRecord::now(
                Actor::Admin,
                Via::Api,
                "session.stop",
                &id,
                &audit::new_request_id(),
            );
            record.tenant = Some(name.clone());
            record.detail = Some("the tenant was deleted".to_owned());
            record.outcome = Outcome::Ok;
            if let Err(e) = state.registry.audit().append(&record) {
                tracing::error!(tenant = name, session = id, "auditing the stop: {e:#}");
            }
        }
    }
}
