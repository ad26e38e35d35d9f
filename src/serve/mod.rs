//! `openclaw serve`: the control plane's JSON API over HTTP for many
//! tenants: bearer tokens, tenant-scoped sessions and usage, tenant
//! management for the admin, an OpenAPI document (`docs/control-plane.md`).

/// The JSON error shape and its stable codes.
mod error;
/// A running session's events as server-sent events.
mod events;
/// Sessions the daemon starts (`openclaw run` children) and stops.
mod launch;
/// The OpenAPI 3.1 document of what is served.
mod openapi;
/// Routes and handlers.
mod routes;
/// A tenant's own secrets: list, put, delete.
mod secrets;
/// The listener and the SIGTERM drain.
mod server;
/// A tenant's sessions: listed, read and verified inside its root.
mod sessions;

pub use server::{run, ServeConfig};
