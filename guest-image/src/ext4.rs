//! ext4 images without loop mounts: `mkfs.ext4 -d` writes a directory tree
//! into a (sparse) image file, `debugfs rdump` copies one back out, and
//! `e2fsck` first replays what a stopped guest left in the journal. All
//! three are e2fsprogs (scripts/bootstrap installs it).

use std::path::Path;
use std::process::Command;

use crate::GuestImageError;

/// How an image is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ext4Options {
    /// Apparent size; the file is sparse, so unused space costs nothing.
    pub size: u64,
    /// A journal, for disks a guest writes and the host reads back after a
    /// possibly abrupt stop (`/work`); none for a read-only root or a layer
    /// thrown away after the session.
    pub journal: bool,
}

/// Writes `out` as an ext4 filesystem of `opts.size` bytes holding a copy
/// of `tree` (owners, modes, symlinks, hard links as they are there), or
/// empty without one. Inode tables and the journal are left to be
/// initialized lazily, so a fresh image allocates a few MiB at most; the
/// guest mounts such disks with `noinit_itable` so they stay that way.
pub fn make_image(
    tree: Option<&Path>,
    out: &Path,
    label: &str,
    opts: Ext4Options,
) -> Result<(), GuestImageError> {
    let _ = std::fs::remove_file(out);
    let file = std::fs::File::create(out).map_err(GuestImageError::io_path(out))?;
    file.set_len(opts.size)
        .map_err(GuestImageError::io_path(out))?;
    drop(file);
    let mut cmd = Command::new("mkfs.ext4");
    cmd.args(["-q", "-F", "-m", "0", "-L", label])
        .args(["-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard"])
        // Reproducible metadata where mkfs allows it; the content decides
        // the image's identity.
        .env("E2FSPROGS_FAKE_TIME", "1");
    if !opts.journal {
        cmd.args(["-O", "^has_journal"]);
    }
    if let Some(tree) = tree {
        cmd.arg("-d").arg(tree);
    }
    cmd.arg(out);
    run(&mut cmd, "mkfs.ext4")
}

/// The session's writable layer: sparse, so this is a ceiling on what the
/// command can add to the root filesystem, not a cost.
pub const LAYER_SIZE: u64 = 4 << 30;
/// Room on the `/work` disk beyond the `--workdir` files (sparse too).
pub const WORK_HEADROOM: u64 = 2 << 30;

/// A session's own disks, as the kvm backend makes them (and the boot
/// benchmark, to measure what they cost): `/work` at `work` holding a copy
/// of `workdir` (with a journal: the host reads it back after a possibly
/// abrupt stop) and, for a guest booted from a root image, the empty
/// writable layer at `layer` (no journal: it is thrown away).
pub fn make_session_disks(
    workdir: Option<&Path>,
    work: &Path,
    layer: Option<&Path>,
) -> Result<(), GuestImageError> {
    let size = match workdir {
        Some(tree) => size_for_tree(tree)?,
        None => 0,
    } + WORK_HEADROOM;
    make_image(
        workdir,
        work,
        "openclaw-work",
        Ext4Options {
            size,
            journal: true,
        },
    )?;
    if let Some(layer) = layer {
        make_image(
            None,
            layer,
            "openclaw-layer",
            Ext4Options {
                size: LAYER_SIZE,
                journal: false,
            },
        )?;
    }
    Ok(())
}

/// Bytes the image's contents need, with room for ext4's own metadata: the
/// size [`make_image`] is given for a tree (the file is sparse either way).
pub fn size_for_tree(tree: &Path) -> Result<u64, GuestImageError> {
    let (bytes, entries) = tree_usage(tree)?;
    // 4 KiB blocks (each file rounds up), an inode per entry, 20% slack,
    // and 64 MiB for the journal and group metadata.
    let data = bytes + entries * 4096;
    Ok((data + data / 5 + (64 << 20)).next_multiple_of(1 << 20))
}

/// (bytes in regular files, number of entries) under `tree`, not
/// following symlinks.
pub fn tree_usage(tree: &Path) -> Result<(u64, u64), GuestImageError> {
    let mut bytes = 0u64;
    let mut entries = 0u64;
    let mut stack = vec![tree.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(GuestImageError::io_path(&dir))? {
            let entry = entry.map_err(GuestImageError::io_path(&dir))?;
            let meta = entry
                .path()
                .symlink_metadata()
                .map_err(GuestImageError::io_path(&entry.path()))?;
            entries += 1;
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                bytes += meta.len();
            }
        }
    }
    Ok((bytes, entries))
}

/// Copies the whole filesystem in `image` into `dest` (created if needed),
/// owners and modes included, leaving out an empty `lost+found`. The image
/// is checked first (`e2fsck -fyD`): a guest stopped mid-write leaves a
/// journal to replay, a damaged filesystem is repaired rather than read
/// half-way, and names that repeat within a directory are made unique.
pub fn dump_tree(image: &Path, dest: &Path) -> Result<(), GuestImageError> {
    std::fs::create_dir_all(dest).map_err(GuestImageError::io_path(dest))?;
    // -D rebuilds every directory, and in doing so renames entries whose
    // name repeats one in the same directory (plain e2fsck compares names
    // only within one directory block). rdump opens a file's name without
    // O_NOFOLLOW, so a guest's symlink followed by a file of the same name
    // would otherwise be written through, outside `dest`.
    let status = Command::new("e2fsck")
        .args(["-f", "-y", "-D"])
        .arg(image)
        .output()
        .map_err(GuestImageError::io("e2fsck"))?;
    // 0: clean, 1: errors corrected; anything else and the copy may be partial.
    if !matches!(status.status.code(), Some(0 | 1)) {
        return Err(GuestImageError::Command {
            what: "e2fsck",
            status: status.status.to_string(),
            stderr_tail: String::from_utf8_lossy(&status.stdout).into_owned(),
        });
    }
    check_tree(image, dest)?;
    let request = format!("rdump / \"{}\"", dest.display());
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(&request)
        .arg(image)
        .output()
        .map_err(GuestImageError::io("debugfs"))?;
    // debugfs reports failures on stderr but exits 0: look for them.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let problems: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .collect();
    if !out.status.success() || !problems.is_empty() {
        return Err(GuestImageError::Command {
            what: "debugfs rdump",
            status: out.status.to_string(),
            stderr_tail: problems.join("\n"),
        });
    }
    let lost = dest.join("lost+found");
    if std::fs::read_dir(&lost).is_ok_and(|mut d| d.next().is_none()) {
        let _ = std::fs::remove_dir(&lost);
    }
    defuse_tree(dest)
}

/// The root directory's inode.
const ROOT_INODE: u64 = 2;
/// Deepest tree copied out: each level is one debugfs run to list, and
/// rdump's paths stop at PATH_MAX (4096) long before this anyway.
const MAX_DEPTH: usize = 1024;
/// `S_IFMT` and `S_IFDIR`, as `ls -p` prints a mode.
const MODE_TYPE: u32 = 0o170000;
const MODE_DIR: u32 = 0o040000;

/// rdump joins each directory entry's name, as it is on disk, to the
/// destination. e2fsck rejects `/` and NUL in names, except in directories
/// flagged encrypted (their names are ciphertext, any bytes), which a guest
/// kernel can flag. So every directory is listed first (`ls -p`, one
/// debugfs run per depth), and the copy is refused unless each listing
/// reads unambiguously: every line one entry, `.` and `..` first and only
/// there, every other name non-empty, without `/`, not repeated, and no
/// directory reached twice. A name holding a newline shows as several
/// lines; for each to read as an entry, its slashes sit around the
/// newline, so its path runs through a directory named only by newlines,
/// which no accepted name creates: rdump's write there fails.
///
/// rdump also writes each name's full size, holes as zeros and every hard
/// link again, so a sparse file (`truncate -s 1T`, no privilege needed) or
/// a file linked thousands of times could fill the host's disk: the sizes
/// listed are summed, and more than the disk image's own size is refused.
fn check_tree(image: &Path, scratch: &Path) -> Result<(), GuestImageError> {
    let unsafe_tree = |why: String| {
        GuestImageError::UnsafeTree(format!("{why}: a name could lead outside the destination"))
    };
    let limit = std::fs::metadata(image)
        .map_err(GuestImageError::io_path(image))?
        .len();
    let mut total = 0u64;
    let script = scratch.join(".openclaw-ls");
    let mut depth = 0;
    let mut level = vec![ROOT_INODE];
    let mut seen = std::collections::HashSet::from([ROOT_INODE]);
    while !level.is_empty() {
        depth += 1;
        if depth > MAX_DEPTH {
            return Err(GuestImageError::UnsafeTree(format!(
                "directories nested deeper than {MAX_DEPTH}"
            )));
        }
        let commands: String = level.iter().map(|ino| format!("ls -p <{ino}>\n")).collect();
        std::fs::write(&script, commands).map_err(GuestImageError::io_path(&script))?;
        let out = Command::new("debugfs")
            .arg("-f")
            .arg(&script)
            .arg(image)
            .output()
            .map_err(GuestImageError::io("debugfs ls"));
        let _ = std::fs::remove_file(&script);
        let out = out?;
        if !out.status.success() {
            return Err(GuestImageError::Command {
                what: "debugfs ls",
                status: out.status.to_string(),
                stderr_tail: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        let mut next = Vec::new();
        let mut dirs = level.iter();
        // (directory, entries read so far, names in it)
        let mut current: Option<(u64, usize, std::collections::HashSet<Vec<u8>>)> = None;
        for line in out.stdout.split(|b| *b == b'\n') {
            if line.is_empty() {
                continue;
            }
            if let Some(header) = line.strip_prefix(b"debugfs: ") {
                let Some(&dir) = dirs.next() else {
                    return Err(unsafe_tree("more listings than directories".into()));
                };
                if header != format!("ls -p <{dir}>").as_bytes() {
                    return Err(unsafe_tree(format!("listing of inode {dir} out of order")));
                }
                current = Some((dir, 0, Default::default()));
                continue;
            }
            let Some((dir, count, names)) = current.as_mut() else {
                return Err(unsafe_tree("an entry before any listing".into()));
            };
            let Some((ino, mode, name, size)) = parse_ls_p(line) else {
                return Err(unsafe_tree(format!("an unreadable entry in inode {dir}")));
            };
            // Unused slots (inode 0): listed, but rdump skips them.
            if ino == 0 {
                continue;
            }
            let expected_dot = match count {
                0 => Some(&b"."[..]),
                1 => Some(&b".."[..]),
                _ => None,
            };
            *count += 1;
            match expected_dot {
                Some(dot) if name == dot && (dot == b".." || ino == *dir) => continue,
                Some(_) => return Err(unsafe_tree(format!("inode {dir} lacks . or .."))),
                None => {}
            }
            if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
                return Err(unsafe_tree(format!(
                    "the name {:?} in inode {dir}",
                    String::from_utf8_lossy(name)
                )));
            }
            if !names.insert(name.to_vec()) {
                return Err(unsafe_tree(format!("a repeated name in inode {dir}")));
            }
            if mode & MODE_TYPE != MODE_DIR {
                total = total.saturating_add(size);
                if total > limit {
                    return Err(GuestImageError::UnsafeTree(format!(
                        "its files would take more than the {limit} bytes of its disk \
                         (sparse files or many links to one file)"
                    )));
                }
            } else {
                if !seen.insert(ino) {
                    return Err(unsafe_tree(format!("directory inode {ino} reached twice")));
                }
                next.push(ino);
            }
        }
        if dirs.next().is_some() {
            return Err(unsafe_tree("a directory without its listing".into()));
        }
        level = next;
    }
    Ok(())
}

/// `/ino/mode/uid/gid/name/size/` (size empty for directories): the
/// inode, the mode, the name (which may itself hold `/`) and the size.
fn parse_ls_p(line: &[u8]) -> Option<(u64, u32, &[u8], u64)> {
    let rest = line.strip_prefix(b"/")?.strip_suffix(b"/")?;
    let mut fields = rest.splitn(5, |b| *b == b'/');
    let number = |f: &[u8]| -> Option<u64> {
        (!f.is_empty() && f.iter().all(u8::is_ascii_digit))
            .then(|| std::str::from_utf8(f).ok()?.parse().ok())?
    };
    let ino = number(fields.next()?)?;
    let mode_field = fields.next()?;
    let mode = std::str::from_utf8(mode_field)
        .ok()
        .and_then(|m| u32::from_str_radix(m, 8).ok())?;
    number(fields.next()?)?;
    number(fields.next()?)?;
    // name/size: the size is the digits after the last '/'.
    let tail = fields.next()?;
    let cut = tail.iter().rposition(|b| *b == b'/')?;
    let size = &tail[cut + 1..];
    let size = match size {
        [] => 0,
        digits => number(digits)?,
    };
    Some((ino, mode, &tail[..cut], size))
}

/// What a guest wrote is untrusted, and a guest kernel can write any inode:
/// the copy on the host keeps regular files, directories and symlinks
/// (never followed), without set-uid, set-gid or sticky bits; device nodes,
/// FIFOs and sockets are dropped.
fn defuse_tree(dest: &Path) -> Result<(), GuestImageError> {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![dest.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(GuestImageError::io_path(&dir))? {
            let path = entry.map_err(GuestImageError::io_path(&dir))?.path();
            let meta = path
                .symlink_metadata()
                .map_err(GuestImageError::io_path(&path))?;
            let kind = meta.file_type();
            if kind.is_symlink() {
                continue;
            }
            if !kind.is_file() && !kind.is_dir() {
                std::fs::remove_file(&path).map_err(GuestImageError::io_path(&path))?;
                continue;
            }
            let mode = meta.permissions().mode();
            if mode & 0o7000 != 0 {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o777))
                    .map_err(GuestImageError::io_path(&path))?;
            }
            if kind.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(())
}

/// Bytes of disk the file really occupies (its allocated blocks).
pub fn allocated_bytes(path: &Path) -> Result<u64, GuestImageError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(GuestImageError::io_path(path))?;
    Ok(meta.blocks() * 512)
}

fn run(cmd: &mut Command, what: &'static str) -> Result<(), GuestImageError> {
    let out = cmd.output().map_err(GuestImageError::io(what))?;
    if out.status.success() {
        return Ok(());
    }
    Err(GuestImageError::Command {
        what,
        status: out.status.to_string(),
        stderr_tail: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_tree_goes_into_an_image_and_comes_back_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("sub/deeper")).expect("mkdir");
        std::fs::write(tree.join("a.txt"), b"alpha").expect("write");
        std::fs::write(tree.join("sub/deeper/run.sh"), b"#!/bin/sh\n").expect("write");
        std::fs::set_permissions(
            tree.join("sub/deeper/run.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
        std::os::unix::fs::symlink("a.txt", tree.join("link")).expect("symlink");
        let image = dir.path().join("disk.ext4");
        let size = size_for_tree(&tree).expect("size");
        assert!(size >= 64 << 20 && size % (1 << 20) == 0);
        make_image(
            Some(&tree),
            &image,
            "test",
            Ext4Options {
                size,
                journal: true,
            },
        )
        .expect("mkfs.ext4");
        assert_eq!(std::fs::metadata(&image).expect("meta").len(), size);
        assert!(
            allocated_bytes(&image).expect("blocks") < 4 << 20,
            "sparse: {} bytes allocated",
            allocated_bytes(&image).expect("blocks")
        );
        let out = dir.path().join("out");
        dump_tree(&image, &out).expect("rdump");
        assert_eq!(std::fs::read(out.join("a.txt")).expect("a"), b"alpha");
        let mode = std::fs::metadata(out.join("sub/deeper/run.sh"))
            .expect("run.sh")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            std::fs::read_link(out.join("link")).expect("link"),
            Path::new("a.txt")
        );
        assert!(
            !out.join("lost+found").exists(),
            "empty lost+found left out"
        );
    }

    #[test]
    fn a_copy_out_drops_special_files_and_privilege_bits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("shared")).expect("mkdir");
        std::fs::write(tree.join("suid"), b"#!/bin/sh\n").expect("write");
        std::fs::set_permissions(tree.join("suid"), std::fs::Permissions::from_mode(0o6755))
            .expect("chmod");
        std::fs::set_permissions(tree.join("shared"), std::fs::Permissions::from_mode(0o1777))
            .expect("chmod");
        nix::unistd::mkfifo(
            &tree.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .expect("mkfifo");
        let image = dir.path().join("disk.ext4");
        make_image(
            Some(&tree),
            &image,
            "test",
            Ext4Options {
                size: size_for_tree(&tree).expect("size"),
                journal: false,
            },
        )
        .expect("mkfs.ext4");
        let out = dir.path().join("out");
        dump_tree(&image, &out).expect("rdump");
        let mode = |p: &str| {
            std::fs::symlink_metadata(out.join(p))
                .expect(p)
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("suid"), 0o755);
        assert_eq!(mode("shared"), 0o777);
        assert!(std::fs::symlink_metadata(out.join("fifo")).is_err());
    }

    /// An image of `tree` as a guest kernel could leave it, with 1 KiB blocks
    /// and no directory index, so entries sit where the tests say.
    fn image_of(tree: &Path, image: &Path, features: &str) {
        std::fs::File::create(image)
            .and_then(|f| f.set_len(8 << 20))
            .expect("image");
        run(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-b", "1024", "-I", "256", "-O", features, "-d"])
                .arg(tree)
                .arg(image),
            "mkfs.ext4",
        )
        .expect("mkfs");
    }

    fn debugfs(image: &Path, write: bool, request: &str) -> String {
        let mut cmd = Command::new("debugfs");
        if write {
            cmd.arg("-w");
        }
        let out = cmd
            .arg("-R")
            .arg(request)
            .arg(image)
            .output()
            .expect("debugfs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The number after `key` in debugfs's answer (`0x` for hex).
    fn number_after(text: &str, key: &str) -> u64 {
        let at = text.find(key).unwrap_or_else(|| panic!("{key}: {text}")) + key.len();
        let rest = &text[at..];
        match rest.strip_prefix("0x") {
            Some(hex) => {
                let digits: String = hex.chars().take_while(char::is_ascii_hexdigit).collect();
                u64::from_str_radix(&digits, 16).expect("hex")
            }
            None => {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().expect("number")
            }
        }
    }

    /// Where, in the image file, the name of `name`'s entry in `dir` is.
    fn name_offset(image: &Path, dir: &str, name: &str) -> usize {
        let found = debugfs(image, false, &format!("dirsearch {dir} {name}"));
        (number_after(&found, "phys ") * 1024 + number_after(&found, "offset ") + 8) as usize
    }

    /// A guest kernel can write any bytes to its `/work` disk, including a
    /// directory holding two entries of one name: first a symlink out of
    /// the bundle, then a regular file. e2fsck compares names only within
    /// one directory block, and rdump opens the file's name without
    /// O_NOFOLLOW, so unless the duplicate is renamed the host writes the
    /// file (as root, with the guest's mode bits) wherever the link points.
    #[test]
    fn a_duplicate_name_behind_a_symlink_is_not_written_through_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = dir.path().join("outside");
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("d")).expect("mkdir");
        std::os::unix::fs::symlink(&outside, tree.join("d/x")).expect("symlink");
        // Fill the directory's first block, so the file's entry lands in a
        // later one, after the link.
        for i in 0..200 {
            std::fs::write(tree.join(format!("d/filler-with-a-long-name-{i}")), b"").expect("w");
        }
        std::fs::write(tree.join("payload"), b"from the guest").expect("write");
        let image = dir.path().join("work.ext4");
        image_of(&tree, &image, "^dir_index");
        // A second name for the payload, one letter like the link's, then
        // that letter changed on disk into the link's.
        debugfs(&image, true, "ln /payload /d/q");
        let at = name_offset(&image, "/d", "q");
        let mut bytes = std::fs::read(&image).expect("read");
        assert_eq!(bytes[at], b'q');
        bytes[at] = b'x';
        std::fs::write(&image, &bytes).expect("patch");

        let out = dir.path().join("out");
        let _ = dump_tree(&image, &out);
        assert!(
            std::fs::symlink_metadata(&outside).is_err(),
            "the guest's file was written outside the bundle, through its symlink"
        );
        // Both entries are kept, inside the bundle: one of them renamed.
        let names: Vec<String> = std::fs::read_dir(out.join("d"))
            .expect("d")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('x'))
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    /// e2fsck does not check names in a directory flagged encrypted (they
    /// are ciphertext, any bytes), and rdump joins them to the destination
    /// as they are: a guest that flags a directory encrypted, gives it a
    /// policy and names a file `../../outside` had the host write it there.
    #[test]
    fn a_name_with_slashes_in_an_encrypted_directory_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = dir.path().join("outside");
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("d")).expect("mkdir");
        let placeholder = "A".repeat(32);
        std::fs::write(tree.join("d").join(&placeholder), b"from the guest").expect("write");
        let image = dir.path().join("work.ext4");
        image_of(&tree, &image, "^metadata_csum,^dir_index");
        // A v1 encryption policy (version, contents and names modes, flags,
        // key descriptor, nonce), set as an attribute with no prefix and
        // then moved to the encryption index (9), which debugfs cannot name.
        let policy = dir.path().join("policy");
        let mut context = vec![1u8, 1, 4, 0];
        context.extend_from_slice(&[0x4b; 8]);
        context.extend_from_slice(&[0x4e; 16]);
        std::fs::write(&policy, &context).expect("policy");
        let file = format!("/d/{placeholder}");
        for path in ["/d", file.as_str()] {
            debugfs(
                &image,
                true,
                &format!("ea_set -f {} {path} c", policy.display()),
            );
            // EXTENTS | ENCRYPT
            debugfs(
                &image,
                true,
                &format!("set_inode_field {path} flags 0x80800"),
            );
        }
        let mut bytes = std::fs::read(&image).expect("read");
        for path in ["/d", file.as_str()] {
            let found = debugfs(&image, false, &format!("imap {path}"));
            let inode = (number_after(&found, "located at block ") * 1024
                + number_after(&found, "offset ")) as usize;
            // The in-inode attribute entry: name length 1, index 0, ..., "c".
            let entry = (inode + 128..inode + 256 - 17)
                .find(|&j| bytes[j] == 1 && bytes[j + 1] == 0 && bytes[j + 16] == b'c')
                .expect("the attribute entry");
            bytes[entry + 1] = 9;
        }
        let name = format!("../..{}outside", "/".repeat(20));
        assert_eq!(name.len(), placeholder.len());
        let at = name_offset(&image, "/d", &placeholder);
        assert_eq!(&bytes[at..at + 32], placeholder.as_bytes());
        bytes[at..at + 32].copy_from_slice(name.as_bytes());
        std::fs::write(&image, &bytes).expect("patch");

        let out = dir.path().join("out");
        let result = dump_tree(&image, &out);
        assert!(
            std::fs::symlink_metadata(&outside).is_err(),
            "the guest's file was written outside the bundle"
        );
        let err = result.expect_err("a name that leaves the destination is refused");
        assert!(
            matches!(&err, GuestImageError::UnsafeTree(why) if why.contains("could lead outside")),
            "{err}"
        );
    }

    /// Any user in the guest can `truncate -s 1T /work/f` (a sparse file
    /// costs its disk nothing), and a guest kernel can link one file
    /// thousands of times; rdump writes each name's full size, zeros and
    /// all, so either filled the host's disk. What the copy would write is
    /// summed first: more than the disk itself holds is refused.
    #[test]
    fn a_copy_larger_than_the_disk_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(&tree).expect("mkdir");
        std::fs::write(tree.join("sparse"), b"x").expect("write");
        std::fs::write(tree.join("linked"), vec![7u8; 512 << 10]).expect("write");
        let image = dir.path().join("work.ext4");
        image_of(&tree, &image, "^dir_index");
        // 64 MiB apparent on an 8 MiB disk, as `truncate` makes it.
        debugfs(&image, true, "sif /sparse size 0x4000000");
        let sparse_out = dir.path().join("out");
        let result = dump_tree(&image, &sparse_out);
        let written = tree_usage(&sparse_out).map(|(bytes, _)| bytes).unwrap_or(0);
        assert!(
            written < 8 << 20,
            "{written} bytes written from an 8 MiB disk"
        );
        assert!(
            matches!(&result, Err(GuestImageError::UnsafeTree(why)) if why.contains("bytes")),
            "{result:?}"
        );

        // 32 names of one 512 KiB file: 16 MiB copied out of 8.
        let image = dir.path().join("links.ext4");
        image_of(&tree, &image, "^dir_index");
        for i in 0..32 {
            debugfs(&image, true, &format!("ln /linked /l{i}"));
        }
        let links_out = dir.path().join("links-out");
        let result = dump_tree(&image, &links_out);
        let written = tree_usage(&links_out).map(|(bytes, _)| bytes).unwrap_or(0);
        assert!(
            written < 8 << 20,
            "{written} bytes written from an 8 MiB disk"
        );
        assert!(
            matches!(&result, Err(GuestImageError::UnsafeTree(why)) if why.contains("bytes")),
            "{result:?}"
        );
    }

    /// Listing costs one debugfs run per level: a guest's chain of
    /// thousands of nested directories is refused, not walked.
    #[test]
    fn a_tree_deeper_than_the_bound_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(&tree).expect("mkdir");
        let image = dir.path().join("work.ext4");
        image_of(&tree, &image, "^dir_index");
        // Made inside the image, one level at a time (mkfs -d aborts on
        // paths this long).
        let script = dir.path().join("deep");
        std::fs::write(&script, "mkdir d\ncd d\n".repeat(MAX_DEPTH + 1)).expect("script");
        let made = Command::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(&script)
            .arg(&image)
            .output()
            .expect("debugfs");
        assert!(made.status.success());
        let result = dump_tree(&image, &dir.path().join("out"));
        assert!(
            matches!(&result, Err(GuestImageError::UnsafeTree(why)) if why.contains("deeper")),
            "{result:?}"
        );
    }

    #[test]
    fn an_empty_image_is_a_few_mib_on_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("layer.ext4");
        make_image(
            None,
            &image,
            "layer",
            Ext4Options {
                size: 4 << 30,
                journal: false,
            },
        )
        .expect("mkfs.ext4");
        let used = allocated_bytes(&image).expect("blocks");
        assert!(
            used < 3 << 20,
            "{used} bytes allocated for an empty 4 GiB layer"
        );
    }

    #[test]
    fn reading_something_that_is_not_ext4_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let junk = dir.path().join("junk.img");
        std::fs::write(&junk, vec![0u8; 1 << 20]).expect("write");
        assert!(dump_tree(&junk, &dir.path().join("out")).is_err());
    }
}
