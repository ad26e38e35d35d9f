//! The image store: root filesystems, content-addressed under
//! `<home>/images/<sha256>/` as `rootfs.ext4` beside a small
//! `manifest.json` (name, when, from what, Env/WorkingDir/User, size, the
//! commands on its PATH). Looked up by a path, an id (or a unique prefix of
//! at least 8 hex digits) or a name (the newest image of that name).

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::GuestImageError;

pub const ROOTFS_FILE: &str = "rootfs.ext4";
pub const MANIFEST_FILE: &str = "manifest.json";
const MANIFEST_VERSION: u32 = 1;
/// What a command runs with when the image says nothing (Debian's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the store says about an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageManifest {
    pub version: u32,
    /// SHA-256 of `rootfs.ext4`: the image's id and directory name.
    pub id: String,
    pub name: String,
    /// RFC 3339, UTC.
    pub created: String,
    /// Where it came from: `debian bookworm (mmdebstrap, <mirror>)`,
    /// `oci <path>`, `docker-archive <path>`.
    pub source: String,
    /// Debian packages asked for (Debian images).
    #[serde(default)]
    pub packages: Vec<String>,
    /// Python packages installed with pip (Debian images).
    #[serde(default)]
    pub pip: Vec<String>,
    /// `NAME=value` entries from the image config (OCI), else empty.
    #[serde(default)]
    pub env: Vec<String>,
    /// The command's working directory; empty: `/work`.
    #[serde(default)]
    pub working_dir: String,
    /// The image config's user (`name`, `uid` or `uid:gid`); empty: the
    /// session's unprivileged default.
    #[serde(default)]
    pub user: String,
    /// Apparent size of `rootfs.ext4` in bytes.
    pub size: u64,
    /// Bytes it occupies on disk (the file is sparse).
    pub allocated: u64,
    /// Absolute paths of the executables in the image's PATH directories:
    /// how a session tells, before booting, whether the image can run a
    /// command at all.
    #[serde(default)]
    pub commands: Vec<String>,
}

impl ImageManifest {
    /// The PATH the image's command runs with.
    pub fn path_var(&self) -> &str {
        self.env
            .iter()
            .find_map(|kv| kv.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH)
    }

    /// Whether `program` (argv[0]) can be found in the image: looked up on
    /// its PATH like a shell would, or, for an absolute path, in the
    /// image's command list. `None`: cannot be told before boot (a path
    /// relative to the working directory, or outside the PATH directories).
    pub fn has_command(&self, program: &str) -> Option<bool> {
        if program.starts_with('/') {
            let dir = program.rsplit_once('/').map_or("/", |(d, _)| d);
            let on_path = self.path_var().split(':').any(|p| p == dir);
            return on_path.then(|| self.commands.iter().any(|c| c == program));
        }
        if program.contains('/') {
            return None;
        }
        Some(self.path_var().split(':').any(|dir| {
            let full = format!("{}/{program}", dir.trim_end_matches('/'));
            self.commands.contains(&full)
        }))
    }

    /// A short description for lists and messages: `name (id[..12])`.
    pub fn label(&self) -> String {
        format!("{} ({})", self.name, &self.id[..self.id.len().min(12)])
    }
}

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredImage {
    pub dir: PathBuf,
    pub rootfs: PathBuf,
    pub manifest: ImageManifest,
}

/// `<home>/images`.
pub fn images_dir(home: &Path) -> PathBuf {
    home.join("images")
}

/// What an image is built into before it is added: its rootfs file and
/// manifest fields except id, sizes and creation time.
pub struct NewImage {
    pub name: String,
    pub source: String,
    pub packages: Vec<String>,
    pub pip: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub commands: Vec<String>,
}

/// Moves `rootfs` (an ext4 image file on the same filesystem as `home`,
/// e.g. written into [`staging_dir`]) into the store under its digest.
pub fn add(home: &Path, rootfs: &Path, image: NewImage) -> Result<StoredImage, GuestImageError> {
    let id = file_sha256(rootfs)?;
    let dir = images_dir(home).join(&id);
    std::fs::create_dir_all(&dir).map_err(GuestImageError::io_path(&dir))?;
    let target = dir.join(ROOTFS_FILE);
    std::fs::rename(rootfs, &target).map_err(GuestImageError::io_path(&target))?;
    let manifest = ImageManifest {
        version: MANIFEST_VERSION,
        id,
        name: image.name,
        created: now_rfc3339(),
        source: image.source,
        packages: image.packages,
        pip: image.pip,
        env: image.env,
        working_dir: image.working_dir,
        user: image.user,
        size: std::fs::metadata(&target)
            .map_err(GuestImageError::io_path(&target))?
            .len(),
        allocated: crate::ext4::allocated_bytes(&target)?,
        commands: image.commands,
    };
    let bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| GuestImageError::Io {
        what: "manifest".into(),
        source: std::io::Error::other(e),
    })?;
    let tmp = dir.join("manifest.json.tmp");
    std::fs::write(&tmp, bytes).map_err(GuestImageError::io_path(&tmp))?;
    std::fs::rename(&tmp, dir.join(MANIFEST_FILE)).map_err(GuestImageError::io_path(&dir))?;
    Ok(StoredImage {
        rootfs: target,
        dir,
        manifest,
    })
}

/// A scratch directory inside the store (same filesystem, so [`add`] is a
/// rename); the caller removes it.
pub fn staging_dir(home: &Path) -> Result<PathBuf, GuestImageError> {
    let dir = images_dir(home).join(format!(".staging-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(GuestImageError::io_path(&dir))?;
    Ok(dir)
}

/// Reads the image in `dir` (a store entry or any directory holding
/// `rootfs.ext4` and `manifest.json`).
pub fn open(dir: &Path) -> Result<StoredImage, GuestImageError> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = std::fs::read(&path).map_err(GuestImageError::io_path(&path))?;
    let manifest: ImageManifest =
        serde_json::from_slice(&bytes).map_err(|e| GuestImageError::Io {
            what: format!("reading {}", path.display()),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
    let rootfs = dir.join(ROOTFS_FILE);
    if !rootfs.exists() {
        return Err(GuestImageError::NoImage(format!(
            "{} has a manifest but no {ROOTFS_FILE}",
            dir.display()
        )));
    }
    Ok(StoredImage {
        dir: dir.to_path_buf(),
        rootfs,
        manifest,
    })
}

/// Every image in the store, newest first.
pub fn list(home: &Path) -> Result<Vec<StoredImage>, GuestImageError> {
    let dir = images_dir(home);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(GuestImageError::io_path(&dir)(e)),
    };
    let mut images: Vec<StoredImage> = entries
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| open(&e.path()).ok())
        .collect();
    images.sort_by(|a, b| {
        b.manifest
            .created
            .cmp(&a.manifest.created)
            .then(a.manifest.id.cmp(&b.manifest.id))
    });
    Ok(images)
}

/// Finds an image by path, id (prefix) or name.
pub fn resolve(home: &Path, what: &str) -> Result<StoredImage, GuestImageError> {
    let as_path = Path::new(what);
    if what.contains('/') || as_path.join(MANIFEST_FILE).exists() {
        return open(as_path);
    }
    let images = list(home)?;
    let is_hex = what.len() >= 8 && what.chars().all(|c| c.is_ascii_hexdigit());
    if is_hex {
        let matching: Vec<&StoredImage> = images
            .iter()
            .filter(|i| i.manifest.id.starts_with(&what.to_ascii_lowercase()))
            .collect();
        match matching.as_slice() {
            [one] => return Ok((*one).clone()),
            [] => {}
            _ => {
                return Err(GuestImageError::NoImage(format!(
                    "{what} names {} images; give more of the id",
                    matching.len()
                )))
            }
        }
    }
    images
        .into_iter()
        .find(|i| i.manifest.name == what)
        .ok_or_else(|| {
            GuestImageError::NoImage(format!(
                "no image named {what} in {} (`openclaw image list`; `openclaw image build` or \
                 `openclaw image import` makes one)",
                images_dir(home).display()
            ))
        })
}

/// Executables in `root`'s PATH directories, as absolute paths inside the
/// image. Directory symlinks are followed inside `root` (an absolute link
/// target is taken relative to `root`, never to this host).
pub fn list_commands(root: &Path, path_var: &str) -> Vec<String> {
    let mut found = Vec::new();
    for dir in path_var.split(':').filter(|d| d.starts_with('/')) {
        let Some(real) = resolve_in_root(root, dir) else {
            continue;
        };
        let Ok(entries) = std::fs::read_dir(&real) else {
            continue;
        };
        for entry in entries.filter_map(|e| e.ok()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let inside = format!("{}/{name}", dir.trim_end_matches('/'));
            let is_exec = match entry.path().symlink_metadata() {
                Ok(m) if m.file_type().is_symlink() => true,
                Ok(m) => {
                    use std::os::unix::fs::PermissionsExt;
                    m.is_file() && m.permissions().mode() & 0o111 != 0
                }
                Err(_) => false,
            };
            if is_exec {
                found.push(inside);
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

/// `inside` (absolute, in the image) as a path under `root`, following
/// symlinks within the image (at most 40, like the kernel).
pub fn resolve_in_root(root: &Path, inside: &str) -> Option<PathBuf> {
    let mut pending: Vec<String> = inside
        .split('/')
        .filter(|c| !c.is_empty())
        .rev()
        .map(str::to_string)
        .collect();
    let mut parts: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(c) = pending.pop() {
        match c.as_str() {
            "." => continue,
            ".." => {
                parts.pop();
                continue;
            }
            _ => {}
        }
        let candidate: PathBuf = parts
            .iter()
            .fold(root.to_path_buf(), |p, c| p.join(c))
            .join(&c);
        match std::fs::read_link(&candidate) {
            Ok(target) => {
                links += 1;
                if links > 40 {
                    return None;
                }
                let target = target.to_string_lossy().into_owned();
                if target.starts_with('/') {
                    parts.clear();
                }
                pending.extend(
                    target
                        .split('/')
                        .filter(|c| !c.is_empty())
                        .rev()
                        .map(str::to_string),
                );
            }
            Err(_) => parts.push(c),
        }
    }
    Some(parts.iter().fold(root.to_path_buf(), |p, c| p.join(c)))
}

pub fn file_sha256(path: &Path) -> Result<String, GuestImageError> {
    let mut file = std::fs::File::open(path).map_err(GuestImageError::io_path(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(GuestImageError::io_path(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Now as RFC 3339 UTC (seconds), without a date crate.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_rfc3339(secs)
}

fn format_rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(env: &[&str], commands: &[&str]) -> ImageManifest {
        ImageManifest {
            version: MANIFEST_VERSION,
            id: "ab".repeat(32),
            name: "t".into(),
            created: "2026-01-01T00:00:00Z".into(),
            source: "test".into(),
            packages: vec![],
            pip: vec![],
            env: env.iter().map(|s| s.to_string()).collect(),
            working_dir: String::new(),
            user: String::new(),
            size: 0,
            allocated: 0,
            commands: commands.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn commands_are_looked_up_on_the_image_path() {
        let m = manifest(&[], &["/usr/bin/python3", "/bin/sh"]);
        assert_eq!(m.has_command("python3"), Some(true));
        assert_eq!(m.has_command("sh"), Some(true));
        assert_eq!(m.has_command("node"), Some(false));
        assert_eq!(m.has_command("/bin/sh"), Some(true));
        assert_eq!(m.has_command("/usr/bin/node"), Some(false));
        assert_eq!(
            m.has_command("/work/agent.py"),
            None,
            "not knowable before boot"
        );
        assert_eq!(m.has_command("./agent.sh"), None);
        let narrow = manifest(&["PATH=/opt/bin"], &["/usr/bin/python3"]);
        assert_eq!(
            narrow.has_command("python3"),
            Some(false),
            "not on its PATH"
        );
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr/bin")).expect("mkdir");
        std::os::unix::fs::symlink("usr/bin", root.join("bin")).expect("rel link");
        std::os::unix::fs::symlink("/usr/bin", root.join("sbin")).expect("abs link");
        std::os::unix::fs::symlink("/etc", root.join("usr/bin/escape")).expect("link");
        assert_eq!(resolve_in_root(root, "/bin"), Some(root.join("usr/bin")));
        assert_eq!(resolve_in_root(root, "/sbin"), Some(root.join("usr/bin")));
        assert_eq!(
            resolve_in_root(root, "/bin/escape"),
            Some(root.join("etc")),
            "an absolute target stays inside the root"
        );
        assert_eq!(resolve_in_root(root, "/../../x"), Some(root.join("x")));
        std::os::unix::fs::symlink("loop", root.join("loop")).expect("loop");
        assert_eq!(resolve_in_root(root, "/loop"), None);

        use std::os::unix::fs::PermissionsExt;
        std::fs::write(root.join("usr/bin/tool"), b"").expect("write");
        std::fs::set_permissions(
            root.join("usr/bin/tool"),
            std::fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
        std::fs::write(root.join("usr/bin/data"), b"").expect("write");
        let cmds = list_commands(root, "/bin:/usr/bin:/missing");
        assert!(cmds.contains(&"/bin/tool".to_string()), "{cmds:?}");
        assert!(cmds.contains(&"/usr/bin/tool".to_string()));
        assert!(!cmds.iter().any(|c| c.ends_with("/data")), "not executable");
    }

    #[test]
    fn the_store_adds_lists_and_resolves() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path();
        let stage = staging_dir(home).expect("staging");
        let new = |name: &str| NewImage {
            name: name.into(),
            source: "test".into(),
            packages: vec!["python3".into()],
            pip: vec![],
            env: vec!["FOO=bar".into()],
            working_dir: "/app".into(),
            user: String::new(),
            commands: vec![],
        };
        std::fs::write(stage.join("a.ext4"), b"image a").expect("write");
        let a = add(home, &stage.join("a.ext4"), new("alpha")).expect("add");
        assert_eq!(a.manifest.id.len(), 64);
        assert_eq!(a.dir, images_dir(home).join(&a.manifest.id));
        assert_eq!(std::fs::read(&a.rootfs).expect("rootfs"), b"image a");
        std::fs::write(stage.join("b.ext4"), b"image b").expect("write");
        let b = add(home, &stage.join("b.ext4"), new("beta")).expect("add");
        std::fs::remove_dir_all(&stage).expect("cleanup");

        let listed = list(home).expect("list");
        assert_eq!(listed.len(), 2, "the staging dir is not an image");
        assert_eq!(resolve(home, "alpha").expect("by name"), a);
        assert_eq!(
            resolve(home, &b.manifest.id[..10]).expect("by id prefix"),
            b
        );
        assert_eq!(
            resolve(home, a.dir.to_str().expect("utf-8")).expect("by path"),
            a
        );
        let err = resolve(home, "gamma").expect_err("unknown");
        assert!(err.to_string().contains("no image named gamma"), "{err}");
        assert_eq!(a.manifest.env, ["FOO=bar"]);
        assert_eq!(a.manifest.working_dir, "/app");
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(format_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
