//! The supervisor's lifeline: one pipe per supervisor process, made on the
//! first spawn and kept open until the process ends. Only this process
//! holds the write end (close-on-exec, never written, closed by every
//! sandbox init before it does anything else); each init keeps the read
//! end and watches it. However the supervisor dies (SIGKILL, the OOM
//! killer, a panic), the kernel closes the write end, the read end hangs
//! up, and the init exits, which ends its pid namespace and everything in
//! it.
//!
//! Not `PR_SET_PDEATHSIG`: that fires when the *thread* that cloned the
//! init exits, and the supervisor spawns from tokio's blocking pool, whose
//! threads come and go while sessions run.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;

use crate::SandboxError;

/// Both ends; the write end is held only so that it closes when this
/// process ends.
struct Lifeline {
    read: OwnedFd,
    _write: OwnedFd,
}

static LIFELINE: OnceLock<Lifeline> = OnceLock::new();

/// The read end a new sandbox init watches (the same for every sandbox of
/// this process).
pub(crate) fn read_end() -> Result<RawFd, SandboxError> {
    if let Some(l) = LIFELINE.get() {
        return Ok(l.read.as_raw_fd());
    }
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| SandboxError::Pipe(e.into()))?;
    // A racing first spawn may win; its pipe is then the one, ours closes.
    let l = LIFELINE.get_or_init(move || Lifeline {
        read,
        _write: write,
    });
    Ok(l.read.as_raw_fd())
}
