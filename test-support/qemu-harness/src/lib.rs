//! The QEMU harness: real KVM for our VMM on machines whose own /dev/kvm
//! cannot run guest user space (nested PVM). QEMU's software emulation
//! presents an AMD CPU with SVM; a Debian cloud kernel inside (L1) loads
//! kvm-amd and has a real /dev/kvm; a static runner there boots our guest
//! with our VMM and prints a verdict on the serial console.
//!
//! Test infrastructure only (a dev-dependency): `tests/kvm_in_qemu.rs` here
//! and the root package's `tests/kvm_backend_in_qemu.rs` and
//! `tests/kvm_images_in_qemu.rs` use it, and `benches/boot.rs` for its
//! side-by-side with QEMU microvm and its root-disk boots.
//!
//! The public interface is: [`run_l1_runner`] (build everything, boot L1, run
//! `examples/l1_runner.rs` there), or piecewise [`l1_kernel`] →
//! [`outer_initramfs`] with an [`L1Payload`] → [`run_qemu`] (or
//! [`run_qemu_with_disks`], for images given to L1 as disks) → [`QemuRun`];
//! [`run_l1_runner_with`] adds files, disks and QEMU memory to the runner's
//! run. What tests carry into L1 besides the guest: [`with_libraries`],
//! [`e2fsprogs_files`], [`busybox_oci_layout`]; the tests that drive
//! `openclaw run` in L1 share [`mint`], [`upstream_certs`],
//! [`openclaw_files`], [`run_l1_checked`] and the output readers
//! [`lines`], [`value`], [`tagged`].
//! Everything downloaded or built lives under the workspace's `target/`.
#![forbid(unsafe_code)]

/// L1's kernel and modules, and the outer initramfs.
mod l1;
/// Host binaries and fixtures carried into L1 (with libraries, an OCI layout).
mod payload;
/// QEMU itself: the run, the nudges, the stall dump.
mod qemu;
/// The static `l1_runner` and one call that builds and runs it in L1.
mod runner;
/// What the tests driving `openclaw run` in L1 share.
mod session;

use std::path::{Path, PathBuf};

pub use l1::{l1_kernel, outer_initramfs, qemu_payload_files, L1Kernel, L1Payload};
pub use payload::{busybox_oci_layout, e2fsprogs_files, which, with_libraries, OCI_APP_UID};
pub use qemu::{qemu_available, run_qemu, run_qemu_with_disks, L1Disk, QemuRun, QEMU, STALL};
pub use runner::{build_static_example, run_l1_runner, run_l1_runner_with, RunnerExtras};
pub use session::{
    lines, mint, openclaw_files, openclaw_ok, run_l1_checked, tagged, upstream_certs, value,
};

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
