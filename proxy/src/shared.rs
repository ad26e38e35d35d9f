//! `Shared`: the state every connection of one proxy instance uses (the
//! gate, the upstream client and pool, limits, TLS configurations,
//! counters, the stop signal). It sits below the server and the HTTP
//! modules, which all take it; it imports none of them back.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use tokio::sync::{watch, Semaphore};

use crate::{
    config::Limits,
    decide::{Gate, Refusal},
    http::{pool::UpstreamPool, stall::StallWatch},
    tls::{server::ServerConfigs, upstream::UpstreamClient},
};

/// State shared by every connection of one proxy.
pub(crate) struct Shared {
    pub gate: Arc<dyn Gate>,
    pub upstream: UpstreamClient,
    /// Upstream connections shared by this session's sandbox connections.
    pub pool: Arc<UpstreamPool>,
    pub limits: Limits,
    pub server_configs: ServerConfigs,
    pub conn_limit: Arc<Semaphore>,
    pub next_conn: AtomicU64,
    pub connections: AtomicU64,
    pub refusals: AtomicU64,
    /// Slow readers: the limit, the counter, the HTTP/2 bodies watched.
    pub stalls: Arc<StallWatch>,
    pub stop: watch::Receiver<bool>,
}

impl Shared {
    pub(crate) fn refusal(&self, r: Refusal) {
        self.refusals.fetch_add(1, Ordering::Relaxed);
        self.gate.refused(r);
    }
}
