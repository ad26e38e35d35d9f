//! Root filesystems into the store: a Debian bootstrap or an imported
//! archive is staged as a directory inside the store, written to an ext4
//! image, and added under its digest with its manifest (and the commands on
//! its PATH, so a session can tell before booting whether it has one).

use std::path::Path;

use crate::store::{self, NewImage, StoredImage};
use crate::{debian, ext4, oci, GuestImageError};

/// Builds a Debian image into the store under `home`.
pub fn build_debian(
    home: &Path,
    name: &str,
    spec: &debian::DebianSpec,
    log: &mut dyn FnMut(&str),
) -> Result<StoredImage, GuestImageError> {
    let staging = store::staging_dir(home)?;
    let result = (|| {
        let root = staging.join("root");
        debian::build_rootfs(spec, &root, log)?;
        finish(
            home,
            &staging,
            &root,
            NewImage {
                name: name.to_string(),
                source: format!("debian {} (mmdebstrap, {})", spec.suite, spec.mirror),
                packages: spec.all_packages(),
                pip: spec.pip.clone(),
                env: Vec::new(),
                working_dir: String::new(),
                user: String::new(),
                commands: Vec::new(),
            },
            log,
        )
    })();
    remove_staging(&staging);
    result
}

/// Imports a `docker save` archive or an OCI layout into the store.
pub fn import(
    home: &Path,
    source: &Path,
    name: &str,
    log: &mut dyn FnMut(&str),
) -> Result<StoredImage, GuestImageError> {
    let staging = store::staging_dir(home)?;
    let result = (|| {
        let root = staging.join("root");
        log(&format!(
            "import: applying the layers of {}",
            source.display()
        ));
        let (run, from) = oci::import(source, &root, &staging.join("scratch"))?;
        debian::prepare_root(&root)?;
        finish(
            home,
            &staging,
            &root,
            NewImage {
                name: name.to_string(),
                source: from,
                packages: Vec::new(),
                pip: Vec::new(),
                env: run.env,
                working_dir: run.working_dir,
                user: run.user,
                commands: Vec::new(),
            },
            log,
        )
    })();
    remove_staging(&staging);
    result
}

/// The staged tree → ext4 → the store.
fn finish(
    home: &Path,
    staging: &Path,
    root: &Path,
    mut image: NewImage,
    log: &mut dyn FnMut(&str),
) -> Result<StoredImage, GuestImageError> {
    let path_var = image
        .env
        .iter()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or(store::DEFAULT_PATH)
        .to_string();
    image.commands = store::list_commands(root, &path_var);
    let size = ext4::size_for_tree(root)?;
    let file = staging.join(store::ROOTFS_FILE);
    log(&format!(
        "rootfs: writing an ext4 image of {} MiB",
        size >> 20
    ));
    ext4::make_image(
        Some(root),
        &file,
        "openclaw-root",
        ext4::Ext4Options {
            size,
            journal: false,
        },
    )?;
    store::add(home, &file, image)
}

/// The staging tree may hold a bootstrap's /proc or /dev mounts if it was
/// interrupted: never follow into them.
fn remove_staging(staging: &Path) {
    if let Err(err) = std::fs::remove_dir_all(staging) {
        eprintln!("removing {}: {err}", staging.display());
    }
}
