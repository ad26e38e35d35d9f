//! The kvm backend's guest image (kernel and base initramfs): where sessions
//! look for it, and building it when it is missing. `openclaw image build`
//! is the command-line front end.

use std::path::{Path, PathBuf};

use anyhow::Result;

/// The source tree this binary was built from: where the image is cached.
pub fn source_tree() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Overrides where `openclaw run` looks for (and builds) the guest image:
/// a directory holding `vmlinux` and `initramfs.cpio`.
pub const IMAGE_DIR_ENV: &str = "OPENCLAW_GUEST_IMAGE";

/// Where sessions find the guest image: `$OPENCLAW_GUEST_IMAGE`, else
/// `target/guest-image` in the source tree (what `openclaw image build` writes).
pub fn image_dir() -> PathBuf {
    match std::env::var_os(IMAGE_DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => source_tree().join("target/guest-image"),
    }
}

/// The image in `dir`, if both of its files are there.
pub fn existing(dir: &Path) -> Option<guest_image::GuestImage> {
    let image = guest_image::GuestImage {
        kernel: dir.join("vmlinux"),
        initramfs: dir.join("initramfs.cpio"),
    };
    (image.kernel.is_file() && image.initramfs.is_file()).then_some(image)
}

/// The image sessions use, built first when it is missing (with a progress
/// line: the kernel build takes minutes).
pub fn ensure() -> Result<guest_image::GuestImage> {
    let dir = image_dir();
    if let Some(image) = existing(&dir) {
        return Ok(image);
    }
    eprintln!(
        "image: the microVM guest image is missing; building it in {} (once; the kernel \
         takes a few minutes)",
        dir.display()
    );
    build(Some(dir), None, 2)
}

/// Builds (or reuses) the guest image; `openclaw run --backend kvm` calls this
/// when the image is missing.
pub fn build(
    out: Option<PathBuf>,
    init: Option<PathBuf>,
    jobs: usize,
) -> Result<guest_image::GuestImage> {
    let tree = source_tree();
    let out = out.unwrap_or_else(image_dir);
    let init = match init {
        Some(init) => init,
        None => {
            eprintln!("image: building the static guest init");
            guest_image::build_guest_init(&tree, &tree.join("target/guest-init"))?
        }
    };
    let image = guest_image::build_image(&out, &init, jobs.max(1), &mut |line| {
        eprintln!("image: {line}")
    })?;
    Ok(image)
}
