//! The kvm backend's images: the guest (kernel, the initramfs-only guest,
//! the boot initramfs) that sessions find in `target/guest-image` or
//! `$OPENCLAW_GUEST_IMAGE`, built when missing; and the root filesystems in
//! the image store (`<home>/images`): which one a session boots
//! (`--image NAME|ID|PATH`, default the newest `debian`, or `initramfs` for
//! the initramfs-only guest), building the Debian one, importing OCI and
//! docker archives. `openclaw image …` is the command-line front end.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use guest_image::store::{self, StoredImage};
use guest_image::{debian, rootfs, GuestImage};

/// The source tree this binary was built from: where the image is cached.
pub fn source_tree() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Overrides where `openclaw run` looks for (and builds) the guest image:
/// a directory holding `vmlinux`, `initramfs.cpio` and `boot.cpio`.
pub const IMAGE_DIR_ENV: &str = "OPENCLAW_GUEST_IMAGE";
/// The root filesystem sessions boot when `--image` is not given.
pub const DEFAULT_ROOT: &str = "debian";
/// `--image initramfs`: no root filesystem, the busybox-and-curl guest.
pub const INITRAMFS_ONLY: &str = "initramfs";

/// Where sessions find the guest image: `$OPENCLAW_GUEST_IMAGE`, else
/// `target/guest-image` in the source tree (what `openclaw image build` writes).
pub fn image_dir() -> PathBuf {
    match std::env::var_os(IMAGE_DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => source_tree().join("target/guest-image"),
    }
}

/// The image in `dir`, if all of its files are there.
pub fn existing(dir: &Path) -> Option<GuestImage> {
    GuestImage::existing(dir)
}

/// The image sessions use, built first when it is missing (with a progress
/// line: the kernel build takes minutes).
pub fn ensure() -> Result<GuestImage> {
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
pub fn build(out: Option<PathBuf>, init: Option<PathBuf>, jobs: usize) -> Result<GuestImage> {
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

/// What a kvm session boots.
#[derive(Debug, Clone)]
pub enum Root {
    /// The initramfs-only guest (busybox, curl).
    Initramfs,
    /// A root filesystem from the store (boxed: a manifest is large).
    Image(Box<StoredImage>),
}

impl Root {
    /// For messages and `session.json`.
    pub fn label(&self) -> String {
        match self {
            Root::Initramfs => INITRAMFS_ONLY.into(),
            Root::Image(image) => image.manifest.label(),
        }
    }
}

/// The root a session asked for: `--image` (a name, id or path,
/// `initramfs`), else the default image. `Ok(None)`: the default was asked
/// for and is not built.
pub fn find_root(home: &Path, requested: Option<&str>) -> Result<Option<Root>> {
    match requested {
        Some(INITRAMFS_ONLY) => Ok(Some(Root::Initramfs)),
        Some(what) => Ok(Some(Root::Image(Box::new(
            store::resolve(home, what).with_context(|| format!("--image {what}"))?,
        )))),
        None => match store::resolve(home, DEFAULT_ROOT) {
            Ok(image) => Ok(Some(Root::Image(Box::new(image)))),
            Err(guest_image::GuestImageError::NoImage(_)) => Ok(None),
            Err(e) => Err(e.into()),
        },
    }
}

/// Whether the image can run `program`: an error naming the image when
/// it certainly cannot.
pub fn check_command(root: &Root, program: &str) -> Result<()> {
    let Root::Image(image) = root else {
        return Ok(());
    };
    if image.manifest.has_command(program) == Some(false) {
        anyhow::bail!(
            "the command {program:?} is not in image {} (not found on its PATH {}); choose an \
             image that has it with --image, or add it (`openclaw image build --packages …`)",
            image.manifest.label(),
            image.manifest.path_var()
        );
    }
    Ok(())
}

/// Builds a Debian image into the store under `home`.
pub fn build_debian(
    home: &Path,
    name: &str,
    spec: &debian::DebianSpec,
    log: &mut dyn FnMut(&str),
) -> Result<StoredImage> {
    Ok(rootfs::build_debian(home, name, spec, log)?)
}

/// Imports a `docker save` archive or an OCI layout into the store.
pub fn import(
    home: &Path,
    source: &Path,
    name: &str,
    log: &mut dyn FnMut(&str),
) -> Result<StoredImage> {
    rootfs::import(home, source, name, log)
        .with_context(|| format!("importing {}", source.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_image::store::NewImage;

    /// A store entry whose rootfs is a placeholder file: what choosing an
    /// image reads is the manifest.
    fn add_image(home: &Path, name: &str, commands: &[&str]) -> StoredImage {
        let staging = store::staging_dir(home).expect("staging");
        let file = staging.join(store::ROOTFS_FILE);
        std::fs::write(&file, name.as_bytes()).expect("write");
        let image = store::add(
            home,
            &file,
            NewImage {
                name: name.into(),
                source: "test".into(),
                packages: Vec::new(),
                pip: Vec::new(),
                env: Vec::new(),
                working_dir: String::new(),
                user: String::new(),
                commands: commands.iter().map(|c| c.to_string()).collect(),
            },
        )
        .expect("add");
        std::fs::remove_dir_all(staging).expect("clean");
        image
    }

    #[test]
    fn the_default_root_is_the_debian_image_when_there_is_one() {
        let home = tempfile::tempdir().expect("tempdir");
        assert!(find_root(home.path(), None).expect("no store").is_none());
        assert!(matches!(
            find_root(home.path(), Some(INITRAMFS_ONLY)).expect("initramfs"),
            Some(Root::Initramfs)
        ));
        let err = find_root(home.path(), Some("missing")).expect_err("no such image");
        assert!(format!("{err:#}").contains("--image missing"), "{err:#}");

        let debian = add_image(home.path(), DEFAULT_ROOT, &["/usr/bin/python3"]);
        let other = add_image(home.path(), "other", &["/bin/sh"]);
        match find_root(home.path(), None).expect("default") {
            Some(Root::Image(image)) => assert_eq!(image.manifest.id, debian.manifest.id),
            other => panic!("{other:?}"),
        }
        match find_root(home.path(), Some(&other.manifest.id[..12])).expect("by id") {
            Some(Root::Image(image)) => assert_eq!(image.manifest.name, "other"),
            other => panic!("{other:?}"),
        }
        let by_path = other.dir.to_str().expect("utf-8");
        match find_root(home.path(), Some(by_path)).expect("by path") {
            Some(Root::Image(image)) => assert_eq!(image.manifest.id, other.manifest.id),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_command_the_image_lacks_is_an_error_naming_the_image() {
        let home = tempfile::tempdir().expect("tempdir");
        let image = add_image(home.path(), "slim", &["/usr/bin/python3", "/bin/sh"]);
        let root = Root::Image(Box::new(image.clone()));
        check_command(&root, "python3").expect("on its PATH");
        check_command(&root, "/bin/sh").expect("by absolute path");
        // A path relative to the working directory cannot be told before boot.
        check_command(&root, "./agent.sh").expect("not judged");
        let err = check_command(&root, "node").expect_err("not in the image");
        let text = err.to_string();
        assert!(
            text.contains("\"node\" is not in image slim (")
                && text.contains(&image.manifest.id[..12]),
            "{text}"
        );
        // The initramfs-only guest has no manifest: nothing is judged.
        check_command(&Root::Initramfs, "node").expect("initramfs");
    }
}
