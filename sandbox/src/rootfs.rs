//! The sandbox's filesystem view, prepared in the parent: a filtered copy
//! of `/etc` with the resolver and CA bundle replaced, and the list of mount
//! steps ([`Op`]) the child replays in its own mount namespace before
//! `pivot_root` into a tmpfs that holds only the allowed pieces.

use std::ffi::CString;
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::SandboxError;

/// Step names reported when a step fails inside the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Stage {
    WaitParent = 1,
    EnterNetns,
    MakePrivate,
    MountRoot,
    BindSystem,
    BindEtc,
    MountProc,
    MountDev,
    BindDevice,
    MountTmp,
    BindWorkdir,
    PivotRoot,
    RemountRoot,
    Hostname,
    Signals,
    Fork,
    Stdio,
    Chdir,
    DropCaps,
    SetIds,
    NoNewPrivs,
    Seccomp,
    Exec,
    Namespaces,
    Limits,
    ParentDeath,
}

impl Stage {
    const ALL: [Stage; 26] = [
        Stage::WaitParent,
        Stage::EnterNetns,
        Stage::MakePrivate,
        Stage::MountRoot,
        Stage::BindSystem,
        Stage::BindEtc,
        Stage::MountProc,
        Stage::MountDev,
        Stage::BindDevice,
        Stage::MountTmp,
        Stage::BindWorkdir,
        Stage::PivotRoot,
        Stage::RemountRoot,
        Stage::Hostname,
        Stage::Signals,
        Stage::Fork,
        Stage::Stdio,
        Stage::Chdir,
        Stage::DropCaps,
        Stage::SetIds,
        Stage::NoNewPrivs,
        Stage::Seccomp,
        Stage::Exec,
        Stage::Namespaces,
        Stage::Limits,
        Stage::ParentDeath,
    ];

    pub fn from_u32(v: u32) -> Option<Stage> {
        Stage::ALL.iter().copied().find(|s| *s as u32 == v)
    }

    pub fn name(self) -> &'static str {
        match self {
            Stage::WaitParent => "waiting for the parent",
            Stage::EnterNetns => "entering the session network namespace",
            Stage::MakePrivate => "making mounts private",
            Stage::MountRoot => "mounting the root tmpfs",
            Stage::BindSystem => "binding a system directory",
            Stage::BindEtc => "mounting /etc",
            Stage::MountProc => "mounting /proc",
            Stage::MountDev => "mounting /dev",
            Stage::BindDevice => "binding a device node",
            Stage::MountTmp => "mounting /tmp",
            Stage::BindWorkdir => "binding the workdir",
            Stage::PivotRoot => "pivot_root",
            Stage::RemountRoot => "remounting the root read-only",
            Stage::Hostname => "setting the hostname",
            Stage::Signals => "watching signals and the supervisor's lifeline",
            Stage::Fork => "forking the command",
            Stage::Stdio => "setting up stdio",
            Stage::Chdir => "changing to the workdir",
            Stage::DropCaps => "dropping capabilities",
            Stage::SetIds => "switching uid/gid",
            Stage::NoNewPrivs => "setting no_new_privs",
            Stage::Seccomp => "installing the seccomp filter",
            Stage::Exec => "executing the command",
            Stage::Namespaces => "creating namespaces",
            Stage::Limits => "setting resource limits",
            Stage::ParentDeath => "setting the parent-death signal",
        }
    }
}

/// One step of building the root, replayed by the child with raw syscalls.
#[derive(Debug)]
pub(crate) enum Op {
    Mount {
        src: Option<CString>,
        dst: CString,
        fstype: Option<CString>,
        flags: libc::c_ulong,
        data: Option<CString>,
        stage: Stage,
    },
    Mkdir {
        path: CString,
        stage: Stage,
    },
    Touch {
        path: CString,
        stage: Stage,
    },
    Symlink {
        target: CString,
        link: CString,
        stage: Stage,
    },
}

/// Where the sandbox sees its working directory.
pub(crate) const WORKDIR_IN: &str = "/work";
/// Top-level host entries the sandbox sees read-only (when they exist).
const SYSTEM_DIRS: &[&str] = &["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];
/// Device nodes bound from the host.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];
/// Known CA bundle paths under /etc across distros; each that exists on the
/// host is replaced by the session CA.
const CA_BUNDLES: &[&str] = &[
    "ssl/certs/ca-certificates.crt",
    "ssl/cert.pem",
    "pki/tls/certs/ca-bundle.crt",
    "pki/tls/cert.pem",
    "ssl/ca-bundle.pem",
    "ca-certificates/extracted/tls-ca-bundle.pem",
];
/// The bundle path the env variables point at (always written).
pub(crate) const CA_BUNDLE_IN: &str = "/etc/ssl/certs/ca-certificates.crt";

fn stage_err(path: &Path) -> impl FnOnce(io::Error) -> SandboxError + '_ {
    move |source| SandboxError::Stage {
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn cstr(p: &Path) -> Result<CString, SandboxError> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| SandboxError::InvalidSpec(format!("path with NUL byte: {}", p.display())))
}

/// How the sandbox's `/etc` is assembled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EtcView {
    /// A read-only overlay: `top` (the session's files, whiteouts for what
    /// is hidden, opaque trust directories) over the host's `/etc`. Costs a
    /// walk of `lstat`s, no copying.
    Overlay { top: PathBuf, host: PathBuf },
    /// A filtered copy (kernels without overlayfs).
    Copy { dir: PathBuf },
}

/// Whether this kernel offers overlayfs.
pub(crate) fn overlay_supported() -> bool {
    fs::read_to_string("/proc/filesystems")
        .map(|s| {
            s.lines()
                .any(|l| l.split_whitespace().last() == Some("overlay"))
        })
        .unwrap_or(false)
}

/// Stages the sandbox's `/etc` under `staging` the best way this host
/// allows: anything the sandbox user could not read on the host is hidden,
/// the host's trust stores are gone, and the resolver and CA bundle are the
/// session's.
pub(crate) fn stage_etc(
    host_etc: &Path,
    staging: &Path,
    resolver: Ipv4Addr,
    ca_pem: &[u8],
) -> Result<EtcView, SandboxError> {
    // OPENCLAW_SANDBOX_ETC=copy forces the fallback (tests, odd kernels).
    let forced_copy = std::env::var_os("OPENCLAW_SANDBOX_ETC").is_some_and(|v| v == "copy");
    if overlay_supported() && !forced_copy {
        let top = staging.join("etc-top");
        stage_etc_overlay(host_etc, &top, resolver, ca_pem)?;
        Ok(EtcView::Overlay {
            top,
            host: host_etc.to_path_buf(),
        })
    } else {
        let dir = staging.join("etc");
        stage_etc_copy(host_etc, &dir, resolver, ca_pem)?;
        Ok(EtcView::Copy { dir })
    }
}

/// Writes the session's resolver, hosts, hostname and CA bundles into
/// `dst` (a copy or an overlay top layer).
fn write_session_files(
    host_etc: &Path,
    dst: &Path,
    resolver: Ipv4Addr,
    ca_pem: &[u8],
) -> Result<(), SandboxError> {
    let write = |rel: &str, data: &[u8]| -> Result<(), SandboxError> {
        let p = dst.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).map_err(stage_err(parent))?;
        }
        // A symlink here (e.g. resolv.conf → systemd) must be replaced,
        // not followed.
        let _ = fs::remove_file(&p);
        fs::write(&p, data).map_err(stage_err(&p))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).map_err(stage_err(&p))
    };
    write("resolv.conf", format!("nameserver {resolver}\n").as_bytes())?;
    write("hosts", b"127.0.0.1 localhost\n::1 localhost\n")?;
    write("hostname", b"openclaw\n")?;
    for rel in CA_BUNDLES {
        if host_etc.join(rel).symlink_metadata().is_ok()
            || Path::new("/etc").join(rel) == Path::new(CA_BUNDLE_IN)
        {
            write(rel, ca_pem)?;
        }
    }
    Ok(())
}

/// The overlay's top layer: whiteouts for unreadable entries, opaque
/// (emptied) trust directories, then the session's files.
fn stage_etc_overlay(
    host_etc: &Path,
    top: &Path,
    resolver: Ipv4Addr,
    ca_pem: &[u8],
) -> Result<(), SandboxError> {
    fs::create_dir_all(top).map_err(stage_err(top))?;
    fs::set_permissions(top, fs::Permissions::from_mode(0o755)).map_err(stage_err(top))?;
    whiteout_unreadable(host_etc, top, Path::new(""))?;
    for d in TRUST_DIRS {
        let dir = top.join(d);
        // Already whited out (unreadable on the host): hidden entirely.
        if fs::symlink_metadata(&dir).is_ok() {
            continue;
        }
        if fs::symlink_metadata(host_etc.join(d)).is_ok_and(|m| m.is_dir()) {
            fs::create_dir_all(&dir).map_err(stage_err(&dir))?;
            make_opaque(&dir)?;
        }
    }
    write_session_files(host_etc, top, resolver, ca_pem)
}

/// Marks `dir` opaque: overlayfs shows none of the lower layers' entries.
fn make_opaque(dir: &Path) -> Result<(), SandboxError> {
    let path = cstr(dir)?;
    // SAFETY: both pointers are to NUL-terminated/len-delimited buffers
    // that live across the call.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            b"y".as_ptr().cast(),
            1,
            0,
        )
    };
    if rc == -1 {
        return Err(stage_err(dir)(io::Error::last_os_error()));
    }
    Ok(())
}

/// Creates an overlay whiteout (a 0:0 character device) at `path`.
fn whiteout(path: &Path) -> Result<(), SandboxError> {
    use nix::sys::stat::{mknod, Mode, SFlag};
    mknod(path, SFlag::S_IFCHR, Mode::empty(), 0).map_err(|e| stage_err(path)(io::Error::from(e)))
}

fn whiteout_unreadable(src: &Path, top: &Path, rel: &Path) -> Result<(), SandboxError> {
    let entries = fs::read_dir(src).map_err(stage_err(src))?;
    for entry in entries {
        let entry = entry.map_err(stage_err(src))?;
        let rel = rel.join(entry.file_name());
        let Ok(meta) = fs::symlink_metadata(entry.path()) else {
            continue;
        };
        let mode = meta.mode();
        let hidden = if meta.is_dir() {
            mode & 0o005 != 0o005
        } else {
            meta.is_file() && mode & 0o004 == 0
        };
        if hidden {
            let parent = top.join(rel.parent().unwrap_or(Path::new("")));
            ensure_layer_dir(src, &parent)?;
            whiteout(&top.join(&rel))?;
        } else if meta.is_dir() && !is_trust_dir(&rel) {
            whiteout_unreadable(&entry.path(), top, &rel)?;
        }
    }
    Ok(())
}

/// Creates a directory in the top layer with its host twin's mode (the
/// merged directory takes the top layer's attributes).
fn ensure_layer_dir(host_twin: &Path, dir: &Path) -> Result<(), SandboxError> {
    if dir.exists() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(stage_err(dir))?;
    let mode = fs::metadata(host_twin)
        .map(|m| m.mode() & 0o777)
        .unwrap_or(0o755);
    fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(stage_err(dir))
}

/// Copies host `/etc` into `dst`, keeping only what any user could read
/// anyway (world-readable files, world-searchable dirs, symlinks), dropping
/// the host's trust store and resolver, then writing the session's.
fn stage_etc_copy(
    host_etc: &Path,
    dst: &Path,
    resolver: Ipv4Addr,
    ca_pem: &[u8],
) -> Result<(), SandboxError> {
    copy_readable(host_etc, dst, Path::new(""))?;
    write_session_files(host_etc, dst, resolver, ca_pem)
}

/// Host trust stores and credentials directories, shown empty (apart from
/// the session's CA bundle files).
const TRUST_DIRS: &[&str] = &[
    "ssl/certs",
    "ca-certificates",
    "pki",
    "ssl/private",
    "ssh",
    "sudoers.d",
];

/// Host trust stores other than the bundle files: skipped entirely.
fn is_trust_dir(rel: &Path) -> bool {
    TRUST_DIRS.iter().any(|d| rel == Path::new(d))
}

fn copy_readable(src: &Path, dst: &Path, rel: &Path) -> Result<(), SandboxError> {
    fs::create_dir_all(dst).map_err(stage_err(dst))?;
    let meta = fs::metadata(src).map_err(stage_err(src))?;
    fs::set_permissions(
        dst,
        fs::Permissions::from_mode(meta.mode() & 0o7777 & !0o7000),
    )
    .map_err(stage_err(dst))?;
    if is_trust_dir(rel) {
        return Ok(());
    }
    let entries = fs::read_dir(src).map_err(stage_err(src))?;
    for entry in entries {
        let entry = entry.map_err(stage_err(src))?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let rel = rel.join(entry.file_name());
        let Ok(meta) = fs::symlink_metadata(&from) else {
            continue;
        };
        let ft = meta.file_type();
        let mode = meta.mode();
        if ft.is_symlink() {
            let target = fs::read_link(&from).map_err(stage_err(&from))?;
            std::os::unix::fs::symlink(&target, &to).map_err(stage_err(&to))?;
        } else if ft.is_dir() {
            if mode & 0o005 == 0o005 {
                copy_readable(&from, &to, &rel)?;
            }
        } else if ft.is_file() && mode & 0o004 != 0 {
            fs::copy(&from, &to).map_err(stage_err(&from))?;
            fs::set_permissions(&to, fs::Permissions::from_mode(mode & 0o777))
                .map_err(stage_err(&to))?;
        }
    }
    Ok(())
}

/// Everything the mount plan needs to know.
pub(crate) struct RootSpec<'a> {
    /// Empty directory on the host the child mounts its root tmpfs on.
    pub root: &'a Path,
    /// The staged `/etc`.
    pub etc: &'a EtcView,
    /// Host directory bound read-write at `/work`, or a private tmpfs.
    pub workdir: Option<&'a Path>,
    /// A [`crate::WorkVolume`]'s loop device, mounted at `/work` instead.
    pub work_device: Option<&'a Path>,
    pub uid: u32,
    pub gid: u32,
    pub tmp_size: u64,
}

/// A bind mount of `src` at `dst`, then its remount `nosuid` (and
/// read-only when `ro`) with the `extra` flags.
pub(crate) fn bind_ops(
    ops: &mut Vec<Op>,
    src: &Path,
    dst: &Path,
    ro: bool,
    extra: libc::c_ulong,
    stage: Stage,
) -> Result<(), SandboxError> {
    use libc::{MS_BIND, MS_NOSUID, MS_RDONLY, MS_REMOUNT};
    ops.push(Op::Mount {
        src: Some(cstr(src)?),
        dst: cstr(dst)?,
        fstype: None,
        flags: MS_BIND,
        data: None,
        stage,
    });
    let ro_flag = if ro { MS_RDONLY } else { 0 };
    ops.push(Op::Mount {
        src: None,
        dst: cstr(dst)?,
        fstype: None,
        flags: MS_BIND | MS_REMOUNT | MS_NOSUID | ro_flag | extra,
        data: None,
        stage,
    });
    Ok(())
}

/// The host's program and library directories ([`SYSTEM_DIRS`]) under the
/// new root `r`, read-only and `nodev`; the host's symlinks among them
/// (merged `/usr`) as the same symlinks.
pub(crate) fn system_dir_ops(r: &Path, ops: &mut Vec<Op>) -> Result<(), SandboxError> {
    for name in SYSTEM_DIRS {
        let host = Path::new("/").join(name);
        let Ok(meta) = fs::symlink_metadata(&host) else {
            continue;
        };
        let inside = r.join(name);
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&host).map_err(stage_err(&host))?;
            ops.push(Op::Symlink {
                target: cstr(&target)?,
                link: cstr(&inside)?,
                stage: Stage::BindSystem,
            });
        } else if meta.is_dir() {
            ops.push(Op::Mkdir {
                path: cstr(&inside)?,
                stage: Stage::BindSystem,
            });
            bind_ops(ops, &host, &inside, true, libc::MS_NODEV, Stage::BindSystem)?;
        }
    }
    Ok(())
}

/// A `proc` of the pid namespace's own at `root/proc`: only its processes.
pub(crate) fn proc_ops(root: &Path, ops: &mut Vec<Op>) -> Result<(), SandboxError> {
    use libc::{MS_NODEV, MS_NOEXEC, MS_NOSUID};
    let proc_dir = cstr(&root.join("proc"))?;
    ops.push(Op::Mkdir {
        path: proc_dir.clone(),
        stage: Stage::MountProc,
    });
    ops.push(Op::Mount {
        src: Some(c"proc".to_owned()),
        dst: proc_dir,
        fstype: Some(c"proc".to_owned()),
        flags: MS_NOSUID | MS_NODEV | MS_NOEXEC,
        data: None,
        stage: Stage::MountProc,
    });
    Ok(())
}

/// A `/dev` of its own at `root/dev`: a tmpfs of `size` holding binds of
/// those of the host's `devices` it has, the fd links and, with `shm`, a
/// `/dev/shm`; remounted read-only so nothing adds device nodes later.
/// One builder for the sandbox and the tool jail, so the two cannot drift.
pub(crate) fn dev_ops(
    root: &Path,
    devices: &[&str],
    size: &str,
    shm: bool,
    ops: &mut Vec<Op>,
) -> Result<(), SandboxError> {
    use libc::{MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY, MS_REMOUNT};
    let s = |v: &str| CString::new(v).expect("static strings have no NUL");
    let dev = root.join("dev");
    ops.push(Op::Mkdir {
        path: cstr(&dev)?,
        stage: Stage::MountDev,
    });
    ops.push(Op::Mount {
        src: Some(s("tmpfs")),
        dst: cstr(&dev)?,
        fstype: Some(s("tmpfs")),
        flags: MS_NOSUID | MS_NOEXEC,
        data: Some(s(&format!("mode=0755,size={size}"))),
        stage: Stage::MountDev,
    });
    for name in devices {
        let host = Path::new("/dev").join(name);
        if !host.exists() {
            continue;
        }
        let inside = dev.join(name);
        ops.push(Op::Touch {
            path: cstr(&inside)?,
            stage: Stage::BindDevice,
        });
        bind_ops(ops, &host, &inside, false, MS_NOEXEC, Stage::BindDevice)?;
    }
    for (target, link) in [
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ] {
        ops.push(Op::Symlink {
            target: s(target),
            link: cstr(&dev.join(link))?,
            stage: Stage::MountDev,
        });
    }
    if shm {
        let shm = dev.join("shm");
        ops.push(Op::Mkdir {
            path: cstr(&shm)?,
            stage: Stage::MountDev,
        });
        ops.push(Op::Mount {
            src: Some(s("tmpfs")),
            dst: cstr(&shm)?,
            fstype: Some(s("tmpfs")),
            flags: MS_NOSUID | MS_NODEV,
            data: Some(s("mode=1777,size=16m")),
            stage: Stage::MountDev,
        });
    }
    ops.push(Op::Mount {
        src: None,
        dst: cstr(&dev)?,
        fstype: None,
        flags: MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NOEXEC,
        data: None,
        stage: Stage::MountDev,
    });
    Ok(())
}

/// Builds the mount steps up to (not including) `pivot_root`.
pub(crate) fn plan(spec: &RootSpec<'_>) -> Result<Vec<Op>, SandboxError> {
    use libc::{MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY};
    let r = spec.root;
    let c = |p: &Path| cstr(p);
    let s = |v: &str| CString::new(v).expect("static strings have no NUL");
    let mut ops = Vec::new();

    ops.push(Op::Mount {
        src: Some(s("tmpfs")),
        dst: c(r)?,
        fstype: Some(s("tmpfs")),
        flags: MS_NOSUID | MS_NODEV,
        data: Some(s("mode=0755,size=1m")),
        stage: Stage::MountRoot,
    });
    system_dir_ops(r, &mut ops)?;
    let etc = r.join("etc");
    ops.push(Op::Mkdir {
        path: c(&etc)?,
        stage: Stage::BindEtc,
    });
    match spec.etc {
        EtcView::Copy { dir } => bind_ops(
            &mut ops,
            dir,
            &etc,
            true,
            MS_NODEV | MS_NOEXEC,
            Stage::BindEtc,
        )?,
        EtcView::Overlay { top, host } => {
            // Lower layers only: the overlay is read-only by construction.
            let mut data = b"lowerdir=".to_vec();
            data.extend_from_slice(top.as_os_str().as_bytes());
            data.push(b':');
            data.extend_from_slice(host.as_os_str().as_bytes());
            if data.contains(&b',') || top.as_os_str().as_bytes().contains(&b':') {
                return Err(SandboxError::InvalidSpec(
                    "staging path unusable as an overlay layer".into(),
                ));
            }
            ops.push(Op::Mount {
                src: Some(s("overlay")),
                dst: c(&etc)?,
                fstype: Some(s("overlay")),
                flags: MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                data: Some(
                    CString::new(data).map_err(|_| {
                        SandboxError::InvalidSpec("NUL in overlay layer path".into())
                    })?,
                ),
                stage: Stage::BindEtc,
            });
        }
    }

    proc_ops(r, &mut ops)?;
    dev_ops(r, DEVICES, "64k", true, &mut ops)?;

    let tmp = r.join("tmp");
    ops.push(Op::Mkdir {
        path: c(&tmp)?,
        stage: Stage::MountTmp,
    });
    ops.push(Op::Mount {
        src: Some(s("tmpfs")),
        dst: c(&tmp)?,
        fstype: Some(s("tmpfs")),
        flags: MS_NOSUID | MS_NODEV,
        data: Some(s(&format!("mode=1777,size={}", spec.tmp_size))),
        stage: Stage::MountTmp,
    });

    let work = r.join(WORKDIR_IN.trim_start_matches('/'));
    ops.push(Op::Mkdir {
        path: c(&work)?,
        stage: Stage::BindWorkdir,
    });
    match (spec.work_device, spec.workdir) {
        // The same ext4 superblock the supervisor holds a detached mount of.
        (Some(device), _) => ops.push(Op::Mount {
            src: Some(c(device)?),
            dst: c(&work)?,
            fstype: Some(s("ext4")),
            flags: MS_NOSUID | MS_NODEV,
            data: None,
            stage: Stage::BindWorkdir,
        }),
        (None, Some(host)) => bind_ops(&mut ops, host, &work, false, MS_NODEV, Stage::BindWorkdir)?,
        (None, None) => ops.push(Op::Mount {
            src: Some(s("tmpfs")),
            dst: c(&work)?,
            fstype: Some(s("tmpfs")),
            flags: MS_NOSUID | MS_NODEV,
            data: Some(s(&format!(
                "mode=0700,uid={},gid={},size={}",
                spec.uid, spec.gid, spec.tmp_size
            ))),
            stage: Stage::BindWorkdir,
        }),
    }
    Ok(ops)
}

/// Where every sandbox's staging directory (with its owner record) lives.
pub(crate) fn sandboxes_dir() -> PathBuf {
    Path::new(netns::RUN_DIR).join("sandboxes")
}

/// The host path of the staging directory of sandbox `name`.
pub(crate) fn staging_dir(name: &str) -> PathBuf {
    sandboxes_dir().join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_etc_has_session_resolver_and_ca_and_no_secrets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = dir.path().join("host");
        fs::create_dir_all(host.join("ssl/certs")).expect("mkdir");
        fs::write(host.join("passwd"), "root:x:0:0::/root:/bin/sh\n").expect("write");
        fs::write(host.join("shadow"), "root:secret-hash\n").expect("write");
        fs::set_permissions(host.join("shadow"), fs::Permissions::from_mode(0o600)).expect("chmod");
        fs::write(host.join("ssl/certs/ca-certificates.crt"), "HOST ROOTS").expect("write");
        fs::write(host.join("ssl/certs/abcd1234.0"), "HOST ROOT").expect("write");
        std::os::unix::fs::symlink(
            "/run/systemd/resolve/stub-resolv.conf",
            host.join("resolv.conf"),
        )
        .expect("symlink");
        let out = dir.path().join("out");
        stage_etc_copy(&host, &out, Ipv4Addr::new(10, 200, 7, 1), b"SESSION CA").expect("stage");

        assert_eq!(
            fs::read_to_string(out.join("resolv.conf")).expect("read"),
            "nameserver 10.200.7.1\n"
        );
        assert!(!out
            .join("resolv.conf")
            .symlink_metadata()
            .expect("meta")
            .file_type()
            .is_symlink());
        assert_eq!(
            fs::read_to_string(out.join("ssl/certs/ca-certificates.crt")).expect("read"),
            "SESSION CA"
        );
        assert!(
            !out.join("ssl/certs/abcd1234.0").exists(),
            "host roots are dropped"
        );
        assert!(
            !out.join("shadow").exists(),
            "unreadable files are not copied"
        );
        assert!(out.join("passwd").exists());
    }

    #[test]
    fn overlay_top_layer_whiteouts_unreadable_and_empties_trust_dirs() {
        use std::os::unix::fs::FileTypeExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let host = dir.path().join("host");
        fs::create_dir_all(host.join("ssl/certs")).expect("mkdir");
        fs::create_dir_all(host.join("app")).expect("mkdir");
        fs::write(host.join("passwd"), "root:x:0:0::/root:/bin/sh\n").expect("write");
        fs::write(host.join("shadow"), "root:secret-hash\n").expect("write");
        fs::set_permissions(host.join("shadow"), fs::Permissions::from_mode(0o600)).expect("chmod");
        fs::write(host.join("app/token"), "t").expect("write");
        fs::create_dir_all(host.join("ssl/private")).expect("mkdir");
        fs::set_permissions(host.join("ssl/private"), fs::Permissions::from_mode(0o700))
            .expect("chmod");
        fs::set_permissions(host.join("app/token"), fs::Permissions::from_mode(0o640))
            .expect("chmod");
        let top = dir.path().join("top");
        stage_etc_overlay(&host, &top, Ipv4Addr::new(10, 200, 7, 1), b"SESSION CA")
            .expect("stage overlay top layer (needs root for trusted xattrs)");
        let is_whiteout = |p: &Path| {
            fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
        };
        assert!(is_whiteout(&top.join("shadow")));
        assert!(is_whiteout(&top.join("app/token")));
        assert!(is_whiteout(&top.join("ssl/private")));
        assert!(
            !top.join("passwd").exists(),
            "readable files come from the host layer"
        );
        assert_eq!(
            fs::read_to_string(top.join("ssl/certs/ca-certificates.crt")).expect("ca"),
            "SESSION CA"
        );
        assert_eq!(
            fs::read_to_string(top.join("resolv.conf")).expect("resolv"),
            "nameserver 10.200.7.1\n"
        );
    }

    #[test]
    fn stage_names_round_trip() {
        for s in Stage::ALL {
            assert_eq!(Stage::from_u32(s as u32), Some(s));
        }
        assert_eq!(Stage::from_u32(0), None);
    }
}
