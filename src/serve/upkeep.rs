//! The daemon's periodic task, every [`RENEW_EVERY`]: renews the session
//! leases it holds (`--database`; `leases`).

use std::sync::Arc;
use std::time::Duration;

use super::leases::RENEW_EVERY;
use super::state::State;

/// Runs forever (the daemon exits without waiting for it). The first round
/// runs at once; a lease lasts several periods.
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
            tracing::error!("the periodic lease renewal died: {e}");
        }
    }
}

/// One round: renew.
fn round(state: &State) {
    if let Some(leases) = &state.leases {
        if let Err(e) = leases.renew() {
            tracing::error!("renewing the session leases: {e}");
        }
    }
}
