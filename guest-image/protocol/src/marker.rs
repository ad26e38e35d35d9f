//! Boot-marker codes. The guest init's first act is a mark frame with
//! [`MARKER_INIT_STARTED`]; guests that may do port I/O (hand-assembled test
//! guests) write the code to [`BOOT_MARKER_PORT`] instead. The VMM times the
//! first arrival of each code from VM creation.

/// The marker port: unused by PC hardware and by the drivers our guest
/// kernel config builds.
pub const BOOT_MARKER_PORT: u16 = 0x0f00;
/// Sent by the guest init before anything else.
pub const MARKER_INIT_STARTED: u8 = 1;
/// Sent just before the task is executed.
pub const MARKER_TASK_STARTED: u8 = 2;
