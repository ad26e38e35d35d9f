//! The control endpoint of a running session: `<dir>/control.sock`, a Unix
//! socket only its owner can open, speaking NDJSON (`docs/ui.md`). The
//! supervisor serves it; `openclaw approve`/`deny` and the web UI are its
//! clients.

/// The other side: one request and reply, or a subscription.
pub mod client;
/// The session's proxied request latency, timed from its events.
pub mod latency;
/// The supervisor's side: the owner-only, bounded socket server.
pub mod server;
/// The protocol: requests, the pending-approval shape, the socket's name.
pub mod wire;

pub use client::{call, call_blocking, subscribe_to, ControlClientError};
pub use server::serve;
pub use wire::{ControlRequest, PendingWire, CONTROL_SOCK};
