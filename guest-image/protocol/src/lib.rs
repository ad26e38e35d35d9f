//! What the host (our VMM, the session code) and the guest (the guest init)
//! must agree on, in one place both depend on: the control channel's frames,
//! the boot markers, where the per-session files sit inside the guest, and the
//! kernel command-line switches the guest init reads.
//!
//! The public interface is:
//! - [`control`]: [`encode_frame`] and the frame kinds (`FRAME_*`);
//! - [`marker`]: the boot-marker codes and the marker port;
//! - [`paths`]: the guest paths of the per-session cpio;
//! - [`disks`]: the ids of the root, layer and `/work` disks;
//! - [`cmdline`]: the `openclaw.*` switches and reading them back.
//!
//! Only `std`, no I/O: the guest init is built static from it, the VMM decodes
//! what it encodes.
#![forbid(unsafe_code)]

/// The command-line switches the guest init reads (`openclaw.ip=` …).
pub mod cmdline;
/// The control channel's wire format (guest → host frames, the host's stop).
pub mod control;
/// The ids of a guest's disks.
pub mod disks;
/// Boot-marker codes: how the guest says how far it got.
pub mod marker;
/// Where the per-session files sit inside the guest.
pub mod paths;

pub use control::{encode_frame, FRAME_EXIT, FRAME_MARK, FRAME_STDERR, FRAME_STDOUT, HOST_STOP};
pub use marker::{BOOT_MARKER_PORT, MARKER_INIT_STARTED, MARKER_TASK_STARTED};
