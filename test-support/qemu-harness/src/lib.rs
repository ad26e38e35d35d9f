//! The QEMU harness: real KVM for our VMM on machines whose own /dev/kvm
//! cannot run guest user space (nested PVM). QEMU's software emulation
//! presents an AMD CPU with SVM; a Debian cloud kernel inside (L1) loads
//! kvm-amd and has a real /dev/kvm; a static runner there boots our guest
//! with our VMM and prints a verdict on the serial console.
//!
//! Test infrastructure only (a dev-dependency): `tests/kvm_in_qemu.rs` here
//! and the root package's `tests/kvm_backend_in_qemu.rs` use it, and
//! `benches/boot.rs` for its side-by-side with QEMU microvm.
//!
//! The public interface is: [`run_l1_runner`] (build everything, boot L1, run
//! `examples/l1_runner.rs` there), or piecewise [`l1_kernel`] →
//! [`outer_initramfs`] with an [`L1Payload`] → [`run_qemu`] (or
//! [`run_qemu_with_disks`], for images given to L1 as disks) → [`QemuRun`].
//! Everything downloaded or built lives under the workspace's `target/`.
#![forbid(unsafe_code)]

/// L1's kernel and modules, and the outer initramfs.
mod l1;
/// QEMU itself: the run, the nudges, the stall dump.
mod qemu;
/// The static `l1_runner` and one call that builds and runs it in L1.
mod runner;

use std::path::{Path, PathBuf};

pub use l1::{l1_kernel, outer_initramfs, qemu_payload_files, L1Kernel, L1Payload};
pub use qemu::{qemu_available, run_qemu, run_qemu_with_disks, L1Disk, QemuRun, QEMU, STALL};
pub use runner::{build_static_example, run_l1_runner};

/// What failed while preparing or running the harness.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("guest image: {0}")]
    Image(#[from] guest_image::GuestImageError),
    #[error("{what} failed ({status}):\n{stderr_tail}")]
    Command {
        what: &'static str,
        status: String,
        stderr_tail: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0} not found")]
    NotFound(PathBuf),
}

impl HarnessError {
    fn io(what: &'static str) -> impl Fn(std::io::Error) -> HarnessError {
        move |source| HarnessError::Io {
            what: what.to_string(),
            source,
        }
    }

    fn io_path(path: &Path) -> impl Fn(std::io::Error) -> HarnessError + '_ {
        move |source| HarnessError::Io {
            what: format!("reading {}", path.display()),
            source,
        }
    }
}

/// The workspace root (this crate sits at `test-support/qemu-harness`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_default()
}
