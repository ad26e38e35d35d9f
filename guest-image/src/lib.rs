//! Builds the guest image the microVM boots: a kernel from a documented config
//! fragment and an initramfs (busybox, curl, CA trust, the guest init), plus
//! the small per-session cpio appended to it. What the guest init and the
//! host agree on (frames, markers, paths, switches) is `guest_protocol`'s.
//!
//! The public interface is: [`build_image`] → [`GuestImage`] (paths of the
//! cached kernel and base initramfs), [`SessionFiles::to_cpio`] for the
//! per-session part, and [`cpio`] for reading/writing newc archives.
#![forbid(unsafe_code)]

/// Reading and writing newc cpio archives.
pub mod cpio;
/// The base initramfs: busybox, curl and its libraries, the guest init.
pub mod initramfs;
/// The guest kernel, built from Debian's source and the config fragment.
pub mod kernel;
/// The per-session cpio.
pub mod session;

use std::path::{Path, PathBuf};

pub use session::{SessionFiles, SessionImageError};

#[derive(Debug, thiserror::Error)]
pub enum GuestImageError {
    #[error("Debian's linux-source is not installed (/usr/src/linux-source-*.tar.xz); run scripts/bootstrap")]
    NoLinuxSource,
    #[error("the kernel config lost {0}: a dependency of the fragment is missing")]
    ConfigDropped(String),
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
    #[error("guest init binary not found at {0}; build it with `cargo build -p guest-image --bin openclaw-guest-init --release --target x86_64-unknown-linux-gnu` and RUSTFLAGS='-C target-feature=+crt-static'")]
    NoInit(PathBuf),
}

impl PartialEq for GuestImageError {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl GuestImageError {
    fn io(what: &'static str) -> impl Fn(std::io::Error) -> GuestImageError {
        move |source| GuestImageError::Io {
            what: what.to_string(),
            source,
        }
    }

    fn io_path(path: &Path) -> impl Fn(std::io::Error) -> GuestImageError + '_ {
        move |source| GuestImageError::Io {
            what: format!("reading {}", path.display()),
            source,
        }
    }
}

/// A built image.
#[derive(Debug, Clone)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
}

/// Builds (or reuses) the kernel in `out` and writes `out/initramfs.cpio`
/// around the static guest init at `init`.
pub fn build_image(
    out: &Path,
    init: &Path,
    jobs: usize,
    log: &mut dyn FnMut(&str),
) -> Result<GuestImage, GuestImageError> {
    if !init.exists() {
        return Err(GuestImageError::NoInit(init.to_path_buf()));
    }
    std::fs::create_dir_all(out).map_err(GuestImageError::io("create output dir"))?;
    let kernel = kernel::build_kernel(out, jobs, log)?;
    let initramfs = out.join("initramfs.cpio");
    let bytes = initramfs::build_base_initramfs(init)?;
    let tmp = out.join("initramfs.cpio.tmp");
    std::fs::write(&tmp, &bytes).map_err(GuestImageError::io("write initramfs"))?;
    std::fs::rename(&tmp, &initramfs).map_err(GuestImageError::io("rename initramfs"))?;
    log(&format!(
        "initramfs: {} ({} bytes)",
        initramfs.display(),
        bytes.len()
    ));
    Ok(GuestImage { kernel, initramfs })
}

/// Flags for the static binaries built for guests and for L1: static, so
/// they need no libc there; no debug info, so the guest kernel has fewer
/// bytes to unpack. (Optimising them too was measured: no gain in the
/// harness, minutes more to build.) Shared, so the two builds share a cache.
pub const STATIC_RUSTFLAGS: &str = "-C target-feature=+crt-static -C debuginfo=0 -C strip=symbols";

/// Builds the static guest init from this workspace's source with cargo and
/// returns its path. `target_dir` keeps its artifacts apart (static flags).
pub fn build_guest_init(workspace: &Path, target_dir: &Path) -> Result<PathBuf, GuestImageError> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = std::process::Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "-p",
            "guest-image",
            "--bin",
            "openclaw-guest-init",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .current_dir(workspace)
        .env("CARGO_TARGET_DIR", target_dir)
        .env("RUSTFLAGS", STATIC_RUSTFLAGS)
        .output()
        .map_err(GuestImageError::io("cargo build (guest init)"))?;
    if !output.status.success() {
        return Err(GuestImageError::Command {
            what: "cargo build (guest init)",
            status: output.status.to_string(),
            stderr_tail: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    let bin = target_dir.join("x86_64-unknown-linux-gnu/debug/openclaw-guest-init");
    if bin.exists() {
        Ok(bin)
    } else {
        Err(GuestImageError::NoInit(bin))
    }
}
