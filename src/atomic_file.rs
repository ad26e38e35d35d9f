//! Replacing a file whole: written beside, synced, renamed over, and the
//! directory synced. The one way openclaw rewrites a file it reads back
//! (reports, `session.json`, settings, keys, sealed secrets, caches).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result};

/// Puts `bytes` at `path`, created with `mode` (less the umask). A reader
/// sees the old file or the new one, never a part, and after a crash the
/// file is one of the two: the new file is synced before the rename and the
/// directory after it.
///
/// Whatever is at `path` is replaced, never written through: a link there
/// is itself replaced (a report file linked to the reader's own files must
/// not overwrite them), and a directory there refuses. The temporary file
/// has a random name and is created exclusively, so a link planted at it
/// fails the write instead of being followed; on any error it is removed.
pub fn replace(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?
        .to_string_lossy();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(
        ".{name}.{}.tmp",
        hex::encode(rand::random::<[u8; 8]>())
    ));
    let placed = (|| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(err) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(err).with_context(|| format!("writing {}", path.display()));
    }
    // The rename is durable only once the directory is.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {} after writing {name}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_file_is_created_with_its_mode_and_replaced_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("settings.toml");
        replace(&path, b"first", 0o600).expect("create");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        replace(&path, b"second", 0o600).expect("replace");
        assert_eq!(std::fs::read(&path).expect("read"), b"second");
        assert_eq!(entries(dir.path()), ["settings.toml"], "no temporary left");
    }

    #[test]
    fn a_link_at_the_path_is_replaced_not_written_through() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").expect("victim");
        let path = dir.path().join("report.json");
        std::os::unix::fs::symlink(&victim, &path).expect("symlink");
        replace(&path, b"{}", 0o644).expect("replace");
        assert_eq!(std::fs::read(&victim).expect("victim"), b"precious");
        assert!(!std::fs::symlink_metadata(&path)
            .expect("meta")
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&path).expect("read"), b"{}");
    }

    #[test]
    fn a_directory_at_the_path_refuses_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("session.json");
        std::fs::create_dir(&path).expect("mkdir");
        let err = replace(&path, b"{}", 0o644).expect_err("a directory is not replaced");
        assert!(format!("{err:#}").contains("session.json"), "{err:#}");
        assert!(path.is_dir());
        assert_eq!(entries(dir.path()), ["session.json"], "no temporary left");
    }
}
