//! A minimal KVM microVM monitor for one agent session.
//!
//! The public interface is:
//! - [`MicroVm::boot`] with a [`VmConfig`] → [`RunningVm`] or a [`StartVmError`]
//!   naming the stage that failed;
//! - [`RunningVm::take_control`] (stdout/stderr/exit status as [`ControlEvent`]s,
//!   queued up to [`CONTROL_QUEUE_MAX`]),
//!   [`RunningVm::wait`], [`RunningVm::kill`] → [`VmExit`] with the boot time;
//! - [`probe`] for `--backend auto`.
//!
//! Unsafe code is allowed only in `vstate/` (KVM objects), the tap's ioctls
//! (`devices/virtio/net/tap.rs`) and generated bindings; every block says
//! why it is sound.

/// x86_64 boot structures: layout, GDT, page tables, zero page, MP table, cmdline.
pub mod arch;
/// The boot recipe and the running VM's lifecycle.
mod builder;
/// Serial ports, i8042, boot marker, control channel.
pub mod devices;
/// Whether this host's KVM runs our guests correctly and quickly.
mod probe;
/// KVM objects: memory, VM, vCPUs.
pub mod vstate;

pub use builder::{
    ExitReason, Kernel, MicroVm, RunningVm, StartVmError, TaskOutput, VmConfig, VmExit,
};
pub use devices::virtio::block::{DiskConfig, DiskError};
pub use devices::virtio::net::{NetConfig, Tap, TapError};
pub use devices::{ControlEvent, ControlReceiver, CONTROL_QUEUE_MAX, DEFAULT_CONSOLE_LOG_MAX};
pub use probe::{kvm_api_version, probe, ProbeResult};
pub use vstate::vcpu::VcpuError;
