//! What the tests and the benchmark carry into L1 besides the guest: host
//! binaries with their shared libraries, and a small OCI image layout
//! written from scratch (busybox, an `Env`, a `WorkingDir`, a `User`).

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::HarnessError;

/// The uid and gid of the OCI layout's `User` (`app`, in its `/etc/passwd`).
pub const OCI_APP_UID: u32 = 1234;

/// A binary and its shared libraries as (path in L1, path here).
pub fn with_libraries(binary: &Path, inside: &str) -> Result<Vec<(String, PathBuf)>, HarnessError> {
    let mut files = vec![(inside.to_owned(), binary.to_path_buf())];
    for lib in guest_image::initramfs::shared_libraries(binary)? {
        let inside = lib.to_string_lossy().trim_start_matches('/').to_owned();
        files.push((inside, lib));
    }
    Ok(files)
}

/// Where `name` is on this host's PATH (symlinks resolved).
pub fn which(name: &str) -> Result<PathBuf, HarnessError> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map_err(HarnessError::io("sh"))?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if path.is_empty() {
        return Err(HarnessError::NotFound(PathBuf::from(format!(
            "{name} on the PATH (scripts/bootstrap installs it)"
        ))));
    }
    std::fs::canonicalize(&path).map_err(HarnessError::io_path(Path::new(&path)))
}

/// e2fsprogs as the kvm backend uses them in L1: `mkfs.ext4` makes a
/// session's disks, `e2fsck` and `debugfs` read `/work` back.
pub fn e2fsprogs_files() -> Result<Vec<(String, PathBuf)>, HarnessError> {
    let mut files = Vec::new();
    for tool in ["mkfs.ext4", "e2fsck", "debugfs"] {
        files.extend(with_libraries(&which(tool)?, &format!("usr/sbin/{tool}"))?);
    }
    Ok(files)
}

/// An OCI image layout in `dir` with one layer (busybox as `/bin/sh`, an
/// app directory, `/etc/passwd` and `/etc/group` naming `app` as
/// [`OCI_APP_UID`]) and a config with `Env` (`PATH=/bin`,
/// `GREETING=hello-from-oci`), `WorkingDir` `/srv/app` and `User` `app`.
/// Written here from scratch; nothing is fetched.
pub fn busybox_oci_layout(dir: &Path) -> Result<PathBuf, HarnessError> {
    let io = HarnessError::io;
    let tree = dir.join("oci-tree");
    for sub in ["bin", "srv/app", "etc"] {
        std::fs::create_dir_all(tree.join(sub)).map_err(io("oci tree"))?;
    }
    std::fs::copy(guest_image::initramfs::BUSYBOX, tree.join("bin/busybox"))
        .map_err(io("copy busybox"))?;
    std::os::unix::fs::symlink("busybox", tree.join("bin/sh")).map_err(io("symlink"))?;
    let uid = OCI_APP_UID;
    std::fs::write(
        tree.join("etc/passwd"),
        format!("root:x:0:0:root:/root:/bin/sh\napp:x:{uid}:{uid}:app:/srv/app:/bin/sh\n"),
    )
    .map_err(io("passwd"))?;
    std::fs::write(tree.join("etc/group"), format!("root:x:0:\napp:x:{uid}:\n"))
        .map_err(io("group"))?;
    let layer = dir.join("layer.tar");
    let tar = Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-cf"])
        .arg(&layer)
        .arg("-C")
        .arg(&tree)
        .args(["bin", "srv", "etc"])
        .status()
        .map_err(io("tar"))?;
    if !tar.success() {
        return Err(HarnessError::Command {
            what: "tar (OCI layer)",
            status: tar.to_string(),
            stderr_tail: String::new(),
        });
    }
    let layer_bytes = std::fs::read(&layer).map_err(HarnessError::io_path(&layer))?;
    let layout = dir.join("oci-layout-dir");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(io("oci blobs"))?;
    let put = |bytes: &[u8]| -> Result<(String, usize), HarnessError> {
        let digest = hex::encode(Sha256::digest(bytes));
        std::fs::write(blobs.join(&digest), bytes).map_err(HarnessError::io("oci blob"))?;
        Ok((format!("sha256:{digest}"), bytes.len()))
    };
    let (layer_digest, layer_size) = put(&layer_bytes)?;
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin", "GREETING=hello-from-oci"],
            "WorkingDir": "/srv/app",
            "User": "app"
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest.clone()]}
    });
    let (config_digest, config_size) = put(config.to_string().as_bytes())?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer_size}]
    });
    let (manifest_digest, manifest_size) = put(manifest.to_string().as_bytes())?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": manifest_size}]
    });
    std::fs::write(layout.join("index.json"), index.to_string()).map_err(io("index.json"))?;
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .map_err(io("oci-layout"))?;
    Ok(layout)
}
