//! ext4 images without loop mounts: `mkfs.ext4 -d` writes a directory tree
//! into a (sparse) image file, `debugfs rdump` copies one back out, and
//! `e2fsck` first replays what a stopped guest left in the journal. All
//! three are e2fsprogs (scripts/bootstrap installs it).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sandbox::{ToolJail, ToolLimits};

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
/// following symlinks: every name of a file counts (a hard link again), at
/// its full size (a sparse file's holes too); the sums saturate.
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
                bytes = bytes.saturating_add(meta.len());
            }
        }
    }
    Ok((bytes, entries))
}

/// Copies the whole filesystem in `image` into `dest` (which must not
/// exist, or be an empty directory), owners and modes included, leaving
/// out an empty `lost+found`. The image is checked first (`e2fsck -fyD`):
/// a guest stopped mid-write leaves a journal to replay, a damaged
/// filesystem is repaired rather than read half-way, and names that repeat
/// within a directory are made unique.
///
/// e2fsprogs parse what the guest wrote, so none of them runs as root: each
/// run is a [`sandbox::ToolJail`] (uid `nobody`, no capabilities,
/// `no_new_privs`, no network, a root holding only the program directories,
/// the image and a scratch output directory, rlimits and a timeout). The
/// image is handed to `nobody` for the check (e2fsck writes it) and given
/// back after; rdump writes into a scratch directory `nobody` owns next to
/// the image, and only once that copy checked out does the host (root) set
/// the owners the guest gave and move it to `dest`. If the jail cannot be
/// built, nothing is run and the copy is refused.
pub fn dump_tree(image: &Path, dest: &Path) -> Result<(), GuestImageError> {
    dump_tree_with(image, dest, &Tools::default())
}

/// The e2fsprogs programs [`dump_tree`] runs: names looked up in the
/// host's program directories, or paths (tests put wrappers in their place).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    pub e2fsck: PathBuf,
    pub debugfs: PathBuf,
}

impl Default for Tools {
    fn default() -> Tools {
        Tools {
            e2fsck: "e2fsck".into(),
            debugfs: "debugfs".into(),
        }
    }
}

/// The uid and gid e2fsprogs run as on a guest's disk: `nobody`, as the
/// netns backend's command, owning nothing on the host.
pub const TOOL_UID: u32 = 65534;
/// The image and the output directory, as the tools see them.
const IMAGE_IN: &str = "/disk.ext4";
const OUT_IN: &str = "/out";

/// Limits of one e2fsprogs run on an image of `image_size` bytes: 1 GiB of
/// address space (more for images past 8 GiB), a minute of CPU plus 30 s
/// per GiB, twice that plus a minute of wall-clock time, no file written
/// larger than the image.
pub fn tool_limits(image_size: u64) -> ToolLimits {
    let cpu_seconds = 60 + 30 * image_size.div_ceil(1 << 30);
    ToolLimits {
        address_space: (1u64 << 30).max(image_size / 8),
        cpu_seconds,
        file_size: image_size,
        open_files: 64,
        timeout: Duration::from_secs(2 * cpu_seconds + 60),
    }
}

/// [`dump_tree`] with the given programs.
pub fn dump_tree_with(image: &Path, dest: &Path, tools: &Tools) -> Result<(), GuestImageError> {
    let size = std::fs::metadata(image)
        .map_err(GuestImageError::io_path(image))?
        .len();
    let scratch = Scratch::new(image)?;
    let _lent = LentImage::lend(image)?;
    let jail = ToolJail::new(&scratch.root(), TOOL_UID, TOOL_UID, tool_limits(size))
        .bind(image, IMAGE_IN)
        .bind(&scratch.out(), OUT_IN);
    // -D rebuilds every directory, and in doing so renames entries whose
    // name repeats one in the same directory (plain e2fsck compares names
    // only within one directory block). rdump opens a file's name without
    // O_NOFOLLOW, so a guest's symlink followed by a file of the same name
    // would otherwise be written through, outside the destination.
    let checked = jail.run(
        &tools.e2fsck,
        &["-f", "-y", "-D", IMAGE_IN].map(OsStr::new),
        b"",
    )?;
    // 0: clean, 1: errors corrected; anything else and the copy may be partial.
    if !matches!(checked.status.code(), Some(0 | 1)) {
        return Err(GuestImageError::Command {
            what: "e2fsck",
            status: checked.status.to_string(),
            stderr_tail: String::from_utf8_lossy(&checked.stdout).into_owned()
                + &String::from_utf8_lossy(&checked.stderr),
        });
    }
    let owners = check_tree(&jail, tools, size)?;
    let request = format!("rdump / {OUT_IN}");
    let dumped = jail.run(
        &tools.debugfs,
        &["-R", request.as_str(), IMAGE_IN].map(OsStr::new),
        b"",
    )?;
    // debugfs reports failures on stderr but exits 0: look for them. Only
    // root may give files away, so rdump's chown of each file to the
    // guest's owner fails; the host sets those owners below.
    let stderr = String::from_utf8_lossy(&dumped.stderr);
    let chown_refused = |l: &str| {
        ["rdump", "dump_file"].iter().any(|function| {
            l.strip_prefix(function)
                .and_then(|l| {
                    l.strip_prefix(": Operation not permitted while changing ownership of /out")
                })
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    };
    let problems: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty() && !chown_refused(l))
        .collect();
    if !dumped.status.success() || !problems.is_empty() {
        return Err(GuestImageError::Command {
            what: "debugfs rdump",
            status: dumped.status.to_string(),
            stderr_tail: problems.join("\n"),
        });
    }
    // Every process of the jail has ended (its pid namespace went with
    // the program), so from here on nothing changes the copy under us.
    let out = scratch.out();
    let lost = out.join("lost+found");
    if std::fs::read_dir(&lost).is_ok_and(|mut d| d.next().is_none()) {
        let _ = std::fs::remove_dir(&lost);
    }
    defuse_tree(&out, &owners)?;
    move_into(&out, dest)
}

/// A private directory next to the image, removed with everything in it
/// when dropped: `root/`, the empty mount point of the tools' jail, and
/// `out/`, where rdump writes (`nobody`'s, mode 0700).
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(image: &Path) -> Result<Scratch, GuestImageError> {
        use std::os::unix::fs::DirBuilderExt;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let parent = image.parent().unwrap_or(Path::new("."));
        let dir = parent.join(format!(".copyout-{}-{n}", std::process::id()));
        let mut builder = std::fs::DirBuilder::new();
        builder.mode(0o700);
        builder
            .create(&dir)
            .map_err(GuestImageError::io_path(&dir))?;
        let scratch = Scratch { dir };
        for sub in [scratch.root(), scratch.out()] {
            builder
                .create(&sub)
                .map_err(GuestImageError::io_path(&sub))?;
        }
        let out = scratch.out();
        std::os::unix::fs::chown(&out, Some(TOOL_UID), Some(TOOL_UID))
            .map_err(GuestImageError::io_path(&out))?;
        Ok(scratch)
    }

    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    fn out(&self) -> PathBuf {
        self.dir.join("out")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // remove_dir_all does not follow symlinks.
        if let Err(err) = std::fs::remove_dir_all(&self.dir) {
            if err.kind() != std::io::ErrorKind::NotFound {
                eprintln!("removing {}: {err}", self.dir.display());
            }
        }
    }
}

/// The image, owned by [`TOOL_UID`] (mode 0600) while the tools read and
/// repair it; its owner and mode are given back when dropped.
struct LentImage {
    file: std::fs::File,
    owner: (u32, u32),
    mode: u32,
}

impl LentImage {
    fn lend(image: &Path) -> Result<LentImage, GuestImageError> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(image)
            .map_err(GuestImageError::io_path(image))?;
        let meta = file.metadata().map_err(GuestImageError::io_path(image))?;
        let lent = LentImage {
            file,
            owner: (meta.uid(), meta.gid()),
            mode: meta.mode() & 0o7777,
        };
        std::os::unix::fs::fchown(&lent.file, Some(TOOL_UID), Some(TOOL_UID))
            .and_then(|()| {
                lent.file
                    .set_permissions(std::fs::Permissions::from_mode(0o600))
            })
            .map_err(GuestImageError::io_path(image))?;
        Ok(lent)
    }
}

impl Drop for LentImage {
    fn drop(&mut self) {
        let (uid, gid) = self.owner;
        let _ = std::os::unix::fs::fchown(&self.file, Some(uid), Some(gid));
        let _ = self
            .file
            .set_permissions(std::fs::Permissions::from_mode(self.mode));
    }
}

/// Moves the checked copy `out` to `dest`: renamed (same filesystem: the
/// image lives beside the bundle's `work/`), never copied through links.
fn move_into(out: &Path, dest: &Path) -> Result<(), GuestImageError> {
    match std::fs::symlink_metadata(dest) {
        Ok(meta) if meta.is_dir() => {
            std::fs::remove_dir(dest).map_err(GuestImageError::io_path(dest))?;
        }
        Ok(_) => {
            return Err(GuestImageError::Io {
                what: format!("{} exists and is not a directory", dest.display()),
                source: std::io::ErrorKind::AlreadyExists.into(),
            })
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(GuestImageError::io_path(parent))?;
            }
        }
        Err(err) => return Err(GuestImageError::io_path(dest)(err)),
    }
    std::fs::rename(out, dest).map_err(|source| GuestImageError::Io {
        what: format!("moving the copy to {}", dest.display()),
        source,
    })
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
///
/// Returns the owner (uid, gid) the guest gave each path, relative to the
/// copy's root ("" for the root itself).
fn check_tree(jail: &ToolJail, tools: &Tools, limit: u64) -> Result<Owners, GuestImageError> {
    let unsafe_tree = |why: String| {
        GuestImageError::UnsafeTree(format!("{why}: a name could lead outside the destination"))
    };
    let mut total = 0u64;
    let mut depth = 0;
    let mut level = vec![ROOT_INODE];
    let mut seen = std::collections::HashSet::from([ROOT_INODE]);
    // Where each directory listed so far is, relative to the copy's root.
    let mut dir_paths = std::collections::HashMap::from([(ROOT_INODE, PathBuf::new())]);
    let mut owners = Owners::new();
    while !level.is_empty() {
        depth += 1;
        if depth > MAX_DEPTH {
            return Err(GuestImageError::UnsafeTree(format!(
                "directories nested deeper than {MAX_DEPTH}"
            )));
        }
        let commands: String = level.iter().map(|ino| format!("ls -p <{ino}>\n")).collect();
        let out = jail.run(
            &tools.debugfs,
            &["-f", "-", IMAGE_IN].map(OsStr::new),
            commands.as_bytes(),
        )?;
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
            let Some(Listed {
                ino,
                mode,
                uid,
                gid,
                name,
                size,
            }) = parse_ls_p(line)
            else {
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
            let dir_path = &dir_paths[dir];
            match expected_dot {
                Some(b".") if name == b"." && ino == *dir => {
                    owners.insert(dir_path.clone(), (uid, gid));
                    continue;
                }
                Some(b"..") if name == b".." => continue,
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
            let path = dir_path.join(OsStr::from_bytes(name));
            if mode & MODE_TYPE != MODE_DIR {
                owners.insert(path, (uid, gid));
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
                dir_paths.insert(ino, path);
                next.push(ino);
            }
        }
        if dirs.next().is_some() {
            return Err(unsafe_tree("a directory without its listing".into()));
        }
        level = next;
    }
    Ok(owners)
}

/// Each path of the copy (relative to its root) and the (uid, gid) the
/// guest gave it.
type Owners = std::collections::HashMap<PathBuf, (u32, u32)>;

/// One line of `ls -p`.
struct Listed<'a> {
    ino: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    name: &'a [u8],
    size: u64,
}

/// `/ino/mode/uid/gid/name/size/` (size empty for directories): the
/// inode, the mode, the owner, the name (which may itself hold `/`) and
/// the size.
fn parse_ls_p(line: &[u8]) -> Option<Listed<'_>> {
    let rest = line.strip_prefix(b"/")?.strip_suffix(b"/")?;
    let mut fields = rest.splitn(5, |b| *b == b'/');
    let number = |f: &[u8]| -> Option<u64> {
        (!f.is_empty() && f.iter().all(u8::is_ascii_digit))
            .then(|| std::str::from_utf8(f).ok()?.parse().ok())?
    };
    let id = |f: &[u8]| -> Option<u32> { number(f)?.try_into().ok() };
    let ino = number(fields.next()?)?;
    let mode_field = fields.next()?;
    let mode = std::str::from_utf8(mode_field)
        .ok()
        .and_then(|m| u32::from_str_radix(m, 8).ok())?;
    let uid = id(fields.next()?)?;
    let gid = id(fields.next()?)?;
    // name/size: the size is the digits after the last '/'.
    let tail = fields.next()?;
    let cut = tail.iter().rposition(|b| *b == b'/')?;
    let size = &tail[cut + 1..];
    let size = match size {
        [] => 0,
        digits => number(digits)?,
    };
    Some(Listed {
        ino,
        mode,
        uid,
        gid,
        name: &tail[..cut],
        size,
    })
}

/// What a guest wrote is untrusted, and a guest kernel can write any inode:
/// the copy on the host keeps regular files, directories and symlinks
/// (never followed), without set-uid, set-gid or sticky bits; device nodes,
/// FIFOs and sockets are dropped. Each keeps the owner the guest gave it
/// (`owners`, from the listing); a path the listing did not have (rdump
/// made something it was not asked for) fails the copy.
fn defuse_tree(copy: &Path, owners: &Owners) -> Result<(), GuestImageError> {
    let give_back = |path: &Path| {
        let rel = path.strip_prefix(copy).unwrap_or(path);
        let Some(&(uid, gid)) = owners.get(rel) else {
            return Err(GuestImageError::UnsafeTree(format!(
                "the copy holds {}, which the guest's filesystem did not list",
                rel.display()
            )));
        };
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
            .map_err(GuestImageError::io_path(path))
    };
    give_back(copy)?;
    let mut stack = vec![copy.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(GuestImageError::io_path(&dir))? {
            let path = entry.map_err(GuestImageError::io_path(&dir))?.path();
            let meta = path
                .symlink_metadata()
                .map_err(GuestImageError::io_path(&path))?;
            let kind = meta.file_type();
            if !kind.is_file() && !kind.is_dir() && !kind.is_symlink() {
                std::fs::remove_file(&path).map_err(GuestImageError::io_path(&path))?;
                continue;
            }
            give_back(&path)?;
            if kind.is_symlink() {
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
        // Owners as the guest's user gives them (mkfs -d keeps them).
        std::os::unix::fs::chown(tree.join("a.txt"), Some(1000), Some(1001)).expect("chown");
        std::os::unix::fs::lchown(tree.join("link"), Some(1002), Some(1003)).expect("chown");
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
        // mkfs -d leaves the root's owner 0:0; a guest's user changes it.
        debugfs(&image, true, "sif <2> uid 1000");
        debugfs(&image, true, "sif <2> gid 1000");
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
        use std::os::unix::fs::MetadataExt;
        let owner = |p: &Path| {
            let meta = std::fs::symlink_metadata(p).expect("meta");
            (meta.uid(), meta.gid())
        };
        assert_eq!(owner(&out.join("a.txt")), (1000, 1001));
        assert_eq!(owner(&out.join("link")), (1002, 1003));
        assert_eq!(owner(&out), (1000, 1000));
        assert_eq!(owner(&out.join("sub/deeper/run.sh")), (0, 0));
        // The image the tools had lent to them is root's again, and no
        // scratch directory is left beside it.
        assert_eq!(owner(&image), (0, 0));
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 3, "{left:?}");
    }

    /// If the tools cannot be confined, they are not run at all (never as
    /// root instead), and the copy is refused saying why.
    #[test]
    fn a_tool_that_cannot_be_confined_is_not_run_and_the_copy_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(&tree).expect("mkdir");
        let image = dir.path().join("work.ext4");
        image_of(&tree, &image, "^dir_index");
        let tools = Tools {
            e2fsck: dir.path().join("no-such-e2fsck"),
            debugfs: "debugfs".into(),
        };
        let out = dir.path().join("out");
        let err = dump_tree_with(&image, &out, &tools).expect_err("refused");
        assert!(matches!(err, GuestImageError::ToolJail(_)), "{err}");
        assert!(
            err.to_string()
                .starts_with("refusing to copy the guest's filesystem out: could not confine"),
            "{err}"
        );
        assert!(!out.exists());
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

    /// What a wrapper put in place of e2fsck or debugfs finds about the
    /// process it runs in, printed on both streams, then fails (so the
    /// copy-out's error carries it).
    const RECORDER: &str = r#"#!/bin/bash
record=$(
echo "uid=$(id -u) gid=$(id -g) groups=$(id -G)"
grep -E '^(NoNewPrivs|CapEff|CapBnd):' /proc/self/status
if exec 3<>/dev/tcp/127.0.0.1/$OPENCLAW_TEST_PORT; then echo "connect: open"; else echo "connect: failed"; fi
if cat /etc/shadow >/dev/null 2>&1; then echo "shadow: readable"; else echo "shadow: unreadable"; fi
if ls /root >/dev/null 2>&1; then echo "root: readable"; else echo "root: unreadable"; fi
if echo x > /tmp/.openclaw-jail-probe 2>/dev/null; then echo "tmp: writable"; rm -f /tmp/.openclaw-jail-probe; else echo "tmp: read-only"; fi
echo "links: $(ip -o link 2>&1 | cut -d' ' -f2 | tr '\n' ' ')"
)
echo "$record"
echo "$record" >&2
exit 8
"#;

    /// e2fsprogs parse the guest's bytes: a bug there must not run as
    /// root with the host's filesystem and network. Each tool the copy-out
    /// runs is replaced by a recorder: it runs as nobody, with no
    /// capabilities, `no_new_privs`, no network, no view of the host.
    #[test]
    fn the_tools_reading_a_guest_disk_run_unprivileged_and_offline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(&tree).expect("mkdir");
        std::fs::write(tree.join("a"), b"alpha").expect("write");
        let image = dir.path().join("work.ext4");
        image_of(&tree, &image, "^dir_index");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
        let port = listener.local_addr().expect("addr").port();
        let recorder = dir.path().join("recorder");
        std::fs::write(
            &recorder,
            RECORDER.replace("$OPENCLAW_TEST_PORT", &port.to_string()),
        )
        .expect("recorder");
        std::fs::set_permissions(&recorder, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let real = Tools::default();
        for tools in [
            Tools {
                e2fsck: recorder.clone(),
                debugfs: real.debugfs.clone(),
            },
            Tools {
                e2fsck: real.e2fsck.clone(),
                debugfs: recorder.clone(),
            },
        ] {
            let out = dir.path().join("out");
            let err = dump_tree_with(&image, &out, &tools).expect_err("the recorder fails");
            let record = err.to_string();
            for expected in [
                "uid=65534 gid=65534 groups=65534\n",
                "NoNewPrivs:\t1",
                "CapEff:\t0000000000000000",
                "CapBnd:\t0000000000000000",
                "connect: failed",
                "shadow: unreadable",
                "root: unreadable",
                "tmp: read-only",
                "links: lo: \n",
            ] {
                assert!(record.contains(expected), "{expected:?} in {record}");
            }
            assert!(
                !out.exists() || tree_usage(&out).expect("usage") == (0, 0),
                "nothing copied"
            );
            let _ = std::fs::remove_dir_all(&out);
        }
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
