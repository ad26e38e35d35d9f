//! Builds what the microVM boots: a kernel from a documented config
//! fragment, two initramfs images (the initramfs-only guest with busybox
//! and curl, and the small boot initramfs that mounts a root filesystem),
//! root filesystems (Debian via mmdebstrap, or imported from OCI/docker
//! archives) as ext4 images in a content-addressed store, and the small
//! per-session cpio. What the guest init and the host agree on (frames,
//! markers, paths, switches, disk ids) is `guest_protocol`'s.
//!
//! The public interface is: [`build_image`] → [`GuestImage`] (paths of the
//! cached kernel and initramfs images); [`debian::build_rootfs`] and
//! [`oci::import`] fill a directory, [`ext4`] turns it into an image (and
//! reads one back), [`store`] keeps images; [`SessionFiles::to_cpio`] for
//! the per-session part; [`cpio`] for newc archives.
#![forbid(unsafe_code)]

/// Reading and writing newc cpio archives.
pub mod cpio;
/// Debian root filesystems with mmdebstrap (and pip).
pub mod debian;
/// ext4 images from directories and back, without loop mounts.
pub mod ext4;
/// The initramfs images: busybox, curl and its libraries, the guest init.
pub mod initramfs;
/// The guest kernel, built from Debian's source and the config fragment.
pub mod kernel;
/// Importing `docker save` archives and OCI image layouts.
pub mod oci;
/// Building root filesystems (Debian, imports) into the store.
pub mod rootfs;
/// The per-session cpio.
pub mod session;
/// The content-addressed image store under `<home>/images`.
pub mod store;

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
    /// A guest's filesystem that `debugfs rdump` could not copy out safely:
    /// a name that could lead outside the destination (or a listing that
    /// does not read unambiguously), or more bytes than its disk holds.
    /// Nothing was copied.
    #[error("refusing to copy the guest's filesystem out: {0}")]
    UnsafeTree(String),
    /// A tool reading a guest's filesystem could not be confined (so it
    /// was not run: never as root instead), or outran its limits.
    #[error("refusing to copy the guest's filesystem out: {0}")]
    ToolJail(#[from] sandbox::ToolError),
    #[error("not an image archive: {0}")]
    BadArchive(String),
    #[error("{0}")]
    NoImage(String),
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

/// A built guest: the kernel and its two initramfs images.
#[derive(Debug, Clone)]
pub struct GuestImage {
    pub kernel: PathBuf,
    /// The initramfs-only guest (busybox, curl): the probe, and sessions
    /// with `--image initramfs`.
    pub initramfs: PathBuf,
    /// The guest init and busybox only: boots a root filesystem from disk.
    pub boot: PathBuf,
}

/// File names inside an image directory (`target/guest-image`).
pub const KERNEL_FILE: &str = "vmlinux";
pub const INITRAMFS_FILE: &str = "initramfs.cpio";
pub const BOOT_FILE: &str = "boot.cpio";

impl GuestImage {
    /// The image in `dir`, if all of its files are there.
    pub fn existing(dir: &Path) -> Option<GuestImage> {
        let image = GuestImage {
            kernel: dir.join(KERNEL_FILE),
            initramfs: dir.join(INITRAMFS_FILE),
            boot: dir.join(BOOT_FILE),
        };
        (image.kernel.is_file() && image.initramfs.is_file() && image.boot.is_file())
            .then_some(image)
    }
}

/// Builds (or reuses) the kernel in `out` and writes `out/initramfs.cpio`
/// and `out/boot.cpio` around the static guest init at `init`.
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
    let write = |name: &str, bytes: Vec<u8>, log: &mut dyn FnMut(&str)| {
        let path = out.join(name);
        let tmp = out.join(format!("{name}.tmp"));
        std::fs::write(&tmp, &bytes).map_err(GuestImageError::io("write initramfs"))?;
        std::fs::rename(&tmp, &path).map_err(GuestImageError::io("rename initramfs"))?;
        log(&format!(
            "initramfs: {} ({} bytes)",
            path.display(),
            bytes.len()
        ));
        Ok::<_, GuestImageError>(path)
    };
    let initramfs = write(INITRAMFS_FILE, initramfs::build_base_initramfs(init)?, log)?;
    let boot = write(BOOT_FILE, initramfs::build_boot_initramfs(init)?, log)?;
    Ok(GuestImage {
        kernel,
        initramfs,
        boot,
    })
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
