//! A minimal KVM microVM monitor for one agent session, and the host-side
//! isolation pieces both backends share (session network namespace, tap,
//! the `netns` process sandbox).
//!
//! Unsafe code is allowed only in `vstate/` (KVM objects), `host/` (tap,
//! namespaces, cgroups) and generated bindings; every block says why it is sound.

pub mod host;
