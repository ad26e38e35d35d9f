//! A session's workdir archive from `POST /v1/sessions` (`workdir`: a
//! base64 `.tar.gz`): decoded, size-bounded and unpacked into a staging
//! directory that `openclaw run --workdir` copies into the sandbox. Nothing
//! in the archive can reach outside that directory: absolute paths, `..`,
//! links whose target is absolute or climbs, hard links to anything but a
//! file the archive itself wrote, writes through a link, devices and FIFOs
//! are refused, and a refused archive leaves nothing on disk.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use base64::Engine;

/// Largest archive taken (after base64 decoding).
pub const MAX_ARCHIVE_BYTES: usize = 8 << 20;
/// Largest total the archive may unpack to (tar headers included): a
/// small archive that inflates without end is refused, not unpacked.
pub const MAX_UNPACKED_BYTES: u64 = 64 << 20;
/// Most entries taken.
pub const MAX_ENTRIES: usize = 10_000;

/// The unpacked workdir; removed when dropped (the session has copied it
/// by the time its sandbox is ready, and a refused request never uses it).
#[derive(Debug)]
pub struct StagedWorkdir {
    dir: PathBuf,
}

impl StagedWorkdir {
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for StagedWorkdir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("removing the staged workdir {}: {e}", self.dir.display());
            }
        }
    }
}

/// Decodes `base64` and unpacks it into `dest`, which must not exist yet.
/// `Err` says what is wrong with the archive (for a 400 naming `workdir`);
/// `dest` is gone then.
pub fn unpack(base64_text: &str, dest: PathBuf) -> Result<StagedWorkdir, String> {
    // Checked before decoding: base64 is 4/3 of the bytes it carries.
    if base64_text.len() > MAX_ARCHIVE_BYTES / 3 * 4 + 4 {
        return Err(format!(
            "the archive is over {} MiB",
            MAX_ARCHIVE_BYTES >> 20
        ));
    }
    let archive = base64::engine::general_purpose::STANDARD
        .decode(base64_text.trim())
        .map_err(|_| "not base64 (standard alphabet, padded)".to_owned())?;
    if archive.len() > MAX_ARCHIVE_BYTES {
        return Err(format!(
            "the archive is over {} MiB",
            MAX_ARCHIVE_BYTES >> 20
        ));
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dest)
        .map_err(|e| {
            tracing::warn!("creating the staged workdir {}: {e}", dest.display());
            "the archive could not be unpacked on this host".to_owned()
        })?;
    // From here on, any refusal removes what was written.
    let staged = StagedWorkdir { dir: dest };
    unpack_into(&archive, &staged.dir)?;
    Ok(staged)
}

/// Counts what the decompressor yields and fails once it passes the bound.
struct Bounded<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > MAX_UNPACKED_BYTES {
            return Err(std::io::Error::other(TooLarge));
        }
        Ok(n)
    }
}

#[derive(Debug)]
struct TooLarge;

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the archive unpacks to over {} MiB",
            MAX_UNPACKED_BYTES >> 20
        )
    }
}

impl std::error::Error for TooLarge {}

/// The archive error as the client is told it: the bound when it was
/// passed, else the reader's own words (about the archive, not the host).
fn read_error(e: std::io::Error) -> String {
    if e.get_ref().is_some_and(|inner| inner.is::<TooLarge>()) {
        return TooLarge.to_string();
    }
    format!("not a readable .tar.gz: {e}")
}

fn unpack_into(archive: &[u8], dest: &Path) -> Result<(), String> {
    let gz = flate2::read::GzDecoder::new(archive);
    let mut tar = tar::Archive::new(Bounded { inner: gz, read: 0 });
    // Regular files this archive wrote: the only things a hard link may name.
    let mut files: HashSet<PathBuf> = HashSet::new();
    let mut count = 0usize;
    for entry in tar.entries().map_err(read_error)? {
        let mut entry = entry.map_err(read_error)?;
        count += 1;
        if count > MAX_ENTRIES {
            return Err(format!("the archive has over {MAX_ENTRIES} entries"));
        }
        let kind = entry.header().entry_type();
        if kind == tar::EntryType::XGlobalHeader {
            // pax metadata for the whole archive; nothing to write.
            continue;
        }
        let raw = entry.path().map_err(read_error)?.into_owned();
        let Some(rel) = inside(&raw) else {
            return Err(format!(
                "entry {:?}: only relative paths without '..' may be in the archive",
                raw.display().to_string()
            ));
        };
        let named = |why: &str| format!("entry {:?}: {why}", rel.display().to_string());
        if rel.as_os_str().is_empty() {
            // `./` itself: the directory already exists.
            if kind.is_dir() {
                continue;
            }
            return Err(named("names the archive's root"));
        }
        let target = dest.join(&rel);
        make_parents(dest, &rel).map_err(|why| named(&why))?;
        if kind.is_dir() {
            match std::fs::symlink_metadata(&target) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => return Err(named("a directory where another entry is")),
                Err(_) => std::fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&target)
                    .map_err(|e| named(&format!("cannot be made: {e}")))?,
            }
        } else if kind.is_file() {
            let mode = entry.header().mode().unwrap_or(0o644) & 0o755;
            // create_new: never replaces, never follows a link at the name.
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode | 0o600)
                .open(&target)
                .map_err(|e| named(&format!("cannot be written: {e}")))?;
            let mut buf = [0u8; 64 * 1024];
            loop {
                let n = entry.read(&mut buf).map_err(read_error)?;
                if n == 0 {
                    break;
                }
                file.write_all(&buf[..n])
                    .map_err(|e| named(&format!("cannot be written: {e}")))?;
            }
            files.insert(rel);
        } else if kind.is_symlink() {
            let link = entry
                .link_name()
                .map_err(read_error)?
                .ok_or_else(|| named("a symbolic link without a target"))?;
            // Without `..` or a leading `/`, a target can only descend from
            // the link's own directory, however links chain: it stays inside.
            if inside(&link).is_none_or(|l| l.as_os_str().is_empty()) {
                return Err(named(
                    "a symbolic link may only point down into the archive (no '/' start, no '..')",
                ));
            }
            std::os::unix::fs::symlink(&link, &target)
                .map_err(|e| named(&format!("cannot be made: {e}")))?;
        } else if kind.is_hard_link() {
            let link = entry
                .link_name()
                .map_err(read_error)?
                .ok_or_else(|| named("a hard link without a target"))?;
            let source = inside(&link)
                .filter(|l| files.contains(l))
                .ok_or_else(|| named("a hard link may only name a file earlier in the archive"))?;
            std::fs::hard_link(dest.join(source), &target)
                .map_err(|e| named(&format!("cannot be made: {e}")))?;
        } else {
            return Err(named(
                "only files, directories and links may be in the archive (no devices, FIFOs or sockets)",
            ));
        }
    }
    Ok(())
}

/// `path` as a relative path of normal components (`./` dropped), or None
/// when it is absolute or has `..`.
fn inside(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::Normal(name) => out.push(name),
            Component::CurDir => {}
            Component::RootDir | Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Creates the directories above `rel` under `dest`; an existing one that is
/// a link (or not a directory) is refused, so nothing is written through a
/// link the archive made.
fn make_parents(dest: &Path, rel: &Path) -> Result<(), String> {
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    let mut at = dest.to_path_buf();
    for part in parent.components() {
        at.push(part);
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err("its directory is a link or a file in the archive".into()),
            Err(_) => std::fs::DirBuilder::new()
                .mode(0o755)
                .create(&at)
                .map_err(|e| format!("its directory cannot be made: {e}"))?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A .tar.gz of `entries` as base64; each header written as given
    /// (paths unchecked), so hostile archives can be built.
    fn archive(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> String {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, link, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(0o644);
            header.set_size(data.len() as u64);
            // Raw bytes into the name field: `set_path` would refuse `..`.
            let name = &mut header.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            if !link.is_empty() {
                let field = &mut header.as_old_mut().linkname;
                field[..link.len()].copy_from_slice(link.as_bytes());
            }
            header.set_cksum();
            builder.append(&header, *data).expect("append");
        }
        let tar = builder.into_inner().expect("tar");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).expect("gz");
        base64::engine::general_purpose::STANDARD.encode(gz.finish().expect("gz"))
    }

    use tar::EntryType as T;

    #[test]
    fn files_directories_and_inner_links_are_unpacked() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dest = tmp.path().join("w");
        let text = archive(&[
            ("./", T::Directory, "", b""),
            ("./data/", T::Directory, "", b""),
            ("./data/in.txt", T::Regular, "", b"hello"),
            ("./deep/er/file", T::Regular, "", b"x"),
            ("./same", T::Link, "data/in.txt", b""),
            ("./data/alias", T::Symlink, "in.txt", b""),
        ]);
        let staged = unpack(&text, dest.clone()).expect("unpacked");
        assert_eq!(
            std::fs::read(dest.join("data/in.txt")).expect("read"),
            b"hello"
        );
        assert_eq!(
            std::fs::read(dest.join("deep/er/file")).expect("read"),
            b"x"
        );
        assert_eq!(std::fs::read(dest.join("same")).expect("read"), b"hello");
        assert_eq!(
            std::fs::read_link(dest.join("data/alias")).expect("link"),
            Path::new("in.txt")
        );
        drop(staged);
        assert!(!dest.exists(), "removed when dropped");
    }

    #[test]
    fn hostile_archives_are_refused_and_leave_nothing() {
        let cases: Vec<(&str, String)> = vec![
            ("absolute", archive(&[("/etc/x", T::Regular, "", b"x")])),
            ("dotdot", archive(&[("a/../../x", T::Regular, "", b"x")])),
            ("symlink out", archive(&[("l", T::Symlink, "/etc", b"")])),
            ("symlink up", archive(&[("l", T::Symlink, "../x", b"")])),
            (
                "write through a link",
                archive(&[
                    ("d/", T::Directory, "", b""),
                    ("l", T::Symlink, "d", b""),
                    ("l/x", T::Regular, "", b"x"),
                ]),
            ),
            (
                "hard link out",
                archive(&[("h", T::Link, "/etc/passwd", b"")]),
            ),
            ("hard link up", archive(&[("h", T::Link, "../x", b"")])),
            (
                "hard link to a link",
                archive(&[("l", T::Symlink, "x", b""), ("h", T::Link, "l", b"")]),
            ),
            ("device", archive(&[("dev", T::Char, "", b"")])),
            ("fifo", archive(&[("p", T::Fifo, "", b"")])),
            (
                "duplicate",
                archive(&[("f", T::Regular, "", b"1"), ("f", T::Regular, "", b"2")]),
            ),
            ("not base64", "***".to_owned()),
            (
                "not gzip",
                base64::engine::general_purpose::STANDARD.encode(b"plain text"),
            ),
        ];
        for (what, text) in cases {
            let tmp = tempfile::tempdir().expect("tempdir");
            let dest = tmp.path().join("w");
            let err = unpack(&text, dest.clone()).expect_err(what);
            assert!(!err.is_empty(), "{what}");
            assert!(!dest.exists(), "{what}: nothing left on disk");
            assert_eq!(
                std::fs::read_dir(tmp.path()).expect("dir").count(),
                0,
                "{what}: nothing beside it either"
            );
        }
    }

    #[test]
    fn an_archive_that_inflates_past_the_bound_is_refused() {
        // 65 MiB of zeros compress to well under the archive bound.
        let big = vec![0u8; (MAX_UNPACKED_BYTES + (1 << 20)) as usize];
        let text = archive(&[("zeros", T::Regular, "", &big)]);
        assert!(text.len() < MAX_ARCHIVE_BYTES);
        let tmp = tempfile::tempdir().expect("tempdir");
        let dest = tmp.path().join("w");
        let err = unpack(&text, dest.clone()).expect_err("too large");
        assert!(err.contains("unpacks to over 64 MiB"), "{err}");
        assert!(!dest.exists());
    }
}
