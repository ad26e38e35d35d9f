//! `openclaw serve`: the control plane's JSON API over HTTP for many
//! tenants: bearer tokens, tenant-scoped sessions and usage, tenant
//! management for the admin, an OpenAPI document (`docs/control-plane.md`).

/// The JSON error shape and its stable codes.
mod error;
/// A running session's events as server-sent events.
mod events;
/// Users named by a trusted reverse proxy.
mod identity;
/// Sessions the daemon starts (`openclaw run` children) and stops.
mod launch;
/// The concurrent-sessions quota across daemons: this daemon's leases.
mod leases;
/// `GET /metrics`: Prometheus text from the bundles, ledgers and 429s.
mod metrics;
/// The OpenAPI 3.1 document of what is served.
mod openapi;
/// Quotas at the API: the request window, the create lock, the day's usage.
mod quota;
/// What a dead daemon left: orphaned sessions stopped, the rest recovered.
mod restart;
/// Routes and handlers.
mod routes;
/// A tenant's own secrets: list, put, delete.
mod secrets;
/// The listener and the SIGTERM drain.
mod server;
/// A tenant's sessions: listed, read and verified inside its root.
pub(crate) mod sessions;
/// What every handler shares (store, launcher, quota windows).
mod state;
/// The browser UI for a tenant's login, under `/ui/`.
mod ui;
/// The periodic task: lease renewal, sessions of deleted tenants stopped.
mod upkeep;
/// A session's workdir archive, unpacked where nothing can leave it.
mod workdir;

pub use identity::TrustedProxies;
pub use launch::{end_with_daemon, SessionDefaults};
pub use leases::{cli_session_lease, parse_lease_ttl, LeaseTiming};
pub use server::{run, ServeConfig};
