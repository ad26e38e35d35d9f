//! `UpstreamPool`: the upstream connections of ONE proxy instance (= one
//! session), shared by its sandbox connections (which send on them through
//! `client.rs`). A connection is opened lazily by the first forwarded
//! request that needs it (refused requests never cause one) and kept for
//! later requests of any sandbox connection of the same session; sessions
//! never share (each has its own proxy and pool).
//!
//! Keyed by listener (scheme), host (= SNI) and the ALPN list offered
//! upstream, so a request only rides a connection whose handshake offered
//! exactly what its own client offered; the negotiated protocol decides the
//! slot: one multiplexed HTTP/2 connection, or idle HTTP/1.1 connections
//! checked out one request at a time and given back when the response body
//! has been delivered completely. Upgrades (WebSocket) never use the pool.

use std::{
    collections::HashMap,
    sync::{atomic::AtomicU64, Arc, Mutex},
    time::{Duration, Instant},
};

use capabilities::Host;
use hyper::client::conn::http1;
use tokio::sync::Notify;

use super::{h2client::H2Sender, ProxyBody};
use crate::{decide::Listener, tls::server::AlpnOffer};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    pub listener: Listener,
    pub host: Host,
    pub offer: AlpnOffer,
}

struct Idle {
    sender: http1::SendRequest<ProxyBody>,
    since: Instant,
}

#[derive(Default)]
struct KeyPool {
    h2: Option<(H2Sender, Instant)>,
    idle: Vec<Idle>,
    /// HTTP/1.1 connections alive for this key: idle, leased or connecting.
    open_h1: usize,
    /// Signalled when an HTTP/1.1 connection is given back or closed.
    returned: Arc<Notify>,
}

impl KeyPool {
    fn is_empty(&self) -> bool {
        self.h2.is_none() && self.idle.is_empty() && self.open_h1 == 0
    }
}

/// What [`UpstreamPool::pick`] hands out for one request.
pub(crate) enum Pick {
    H2(H2Sender),
    Idle(http1::SendRequest<ProxyBody>),
    Open,
    Wait(Arc<Notify>),
}

/// The pool of one proxy instance.
pub(crate) struct UpstreamPool {
    keys: Mutex<HashMap<PoolKey, KeyPool>>,
    idle_timeout: Duration,
    /// Bound on HTTP/1.1 connections per key (busy and idle together).
    max_h1_per_key: usize,
    /// Requests handed back unsent by a reused connection (retried or not).
    pub unsent: AtomicU64,
}

impl UpstreamPool {
    pub(crate) fn new(idle_timeout: Duration, max_h1_per_key: usize) -> Self {
        Self {
            keys: Mutex::new(HashMap::new()),
            idle_timeout,
            max_h1_per_key: max_h1_per_key.max(1),
            unsent: AtomicU64::new(0),
        }
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PoolKey, KeyPool>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What to send on; `reuse` false (a retry) always opens a new connection.
    pub(crate) fn pick(&self, key: &PoolKey, reuse: bool) -> Pick {
        let mut keys = self.lock();
        if !keys.contains_key(key) {
            // First use of this key: nothing to reuse, reserve a slot.
            let kp = KeyPool {
                open_h1: 1,
                ..KeyPool::default()
            };
            keys.insert(key.clone(), kp);
            return Pick::Open;
        }
        let Some(kp) = keys.get_mut(key) else {
            return Pick::Open;
        };
        let now = Instant::now();
        if let Some((s, used)) = kp.h2.as_mut().filter(|_| reuse) {
            if !s.is_closed() {
                *used = now;
                return Pick::H2(s.clone());
            }
            kp.h2 = None;
        }
        if reuse {
            while let Some(e) = kp.idle.pop() {
                if e.sender.is_closed() || now.duration_since(e.since) > self.idle_timeout {
                    kp.open_h1 -= 1;
                    continue;
                }
                return Pick::Idle(e.sender);
            }
        }
        if kp.open_h1 < self.max_h1_per_key {
            kp.open_h1 += 1;
            return Pick::Open;
        }
        Pick::Wait(kp.returned.clone())
    }

    /// An HTTP/1.1 connection leaves the pool for good (closed, failed, or
    /// its exchange did not end cleanly), or a reserved slot was not used.
    pub(crate) fn release_slot(&self, key: &PoolKey) {
        let mut keys = self.lock();
        if let Some(kp) = keys.get_mut(key) {
            kp.open_h1 = kp.open_h1.saturating_sub(1);
            kp.returned.notify_one();
            if kp.is_empty() {
                keys.remove(key);
            }
        }
    }

    fn give_back(&self, key: &PoolKey, sender: http1::SendRequest<ProxyBody>) {
        let mut keys = self.lock();
        let Some(kp) = keys.get_mut(key) else { return };
        // Every live connection may wait idle (`open_h1` is bounded by
        // `max_h1_per_key`; the idle timeout closes what stays unused): a
        // smaller idle cap than the sandbox's concurrency closes
        // connections that the next requests open again, a TLS handshake
        // per request under steady load (session 10: the enforce bench at
        // 64 HTTP/1.1 connections, with a cap of 32, spent 3× the CPU per
        // request).
        if sender.is_closed() {
            kp.open_h1 = kp.open_h1.saturating_sub(1);
        } else {
            kp.idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
        kp.returned.notify_one();
    }

    pub(crate) fn store_h2(&self, key: &PoolKey, sender: &H2Sender) {
        let mut keys = self.lock();
        let kp = keys.entry(key.clone()).or_default();
        // The slot was reserved as a possible HTTP/1.1 connection.
        kp.open_h1 = kp.open_h1.saturating_sub(1);
        kp.returned.notify_one();
        // The newest wins: an older one still serves its open streams.
        kp.h2 = Some((sender.clone(), Instant::now()));
    }

    /// Close what has been idle longer than the idle timeout.
    pub(crate) fn sweep(&self) {
        let now = Instant::now();
        let mut keys = self.lock();
        keys.retain(|_, kp| {
            let before = kp.idle.len();
            kp.idle.retain(|e| {
                !e.sender.is_closed() && now.duration_since(e.since) <= self.idle_timeout
            });
            kp.open_h1 -= before - kp.idle.len();
            if kp.h2.as_ref().is_some_and(|(s, used)| {
                s.is_closed() || now.duration_since(*used) > self.idle_timeout
            }) {
                kp.h2 = None;
            }
            !kp.is_empty()
        });
    }
}

/// An HTTP/1.1 upstream connection checked out for one exchange. Attach it
/// to the response body ([`super::metered::Metered`]): when the body was
/// delivered completely it goes back to the pool ([`Lease::reusable`]);
/// dropped otherwise, the connection is closed.
pub(crate) struct Lease {
    pool: Arc<UpstreamPool>,
    key: PoolKey,
    sender: Option<http1::SendRequest<ProxyBody>>,
    reusable: bool,
}

impl Lease {
    /// A lease on `key`'s slot, holding no connection yet.
    pub(crate) fn new(pool: Arc<UpstreamPool>, key: PoolKey) -> Self {
        Lease {
            pool,
            key,
            sender: None,
            reusable: false,
        }
    }

    /// The connection this exchange runs on.
    pub(crate) fn hold(&mut self, sender: http1::SendRequest<ProxyBody>) {
        self.sender = Some(sender);
    }

    pub(crate) fn reusable(&mut self) {
        self.reusable = true;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let pool = &self.pool;
        match self.sender.take() {
            Some(s) if self.reusable => pool.give_back(&self.key, s),
            _ => pool.release_slot(&self.key),
        }
    }
}

/// A reserved HTTP/1.1 slot that is released unless it becomes a lease.
pub(crate) struct Reserved<'a> {
    pool: &'a UpstreamPool,
    key: &'a PoolKey,
    armed: bool,
}

impl<'a> Reserved<'a> {
    /// The slot [`Pick::Open`] reserved for `key`.
    pub(crate) fn new(pool: &'a UpstreamPool, key: &'a PoolKey) -> Self {
        Reserved {
            pool,
            key,
            armed: true,
        }
    }

    /// A connection was opened in the slot: it is no longer released here.
    pub(crate) fn keep(&mut self) {
        self.armed = false;
    }
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.pool.release_slot(self.key);
        }
    }
}
