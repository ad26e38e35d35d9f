//! [`WorkVolume`]: the sandbox's `/work` as a size-capped filesystem on the
//! host disk. An ext4 file system in a sparse image, on a loop device set to
//! detach itself when its last user goes (`LO_FLAGS_AUTOCLEAR`), the image
//! unlinked as soon as the loop device holds it. The supervisor reaches the
//! volume through a detached mount (`fsmount`) that appears in no mount
//! table; the sandbox mounts the same device at `/work`. So a write past the
//! cap fails with `ENOSPC` inside the sandbox while the host disk keeps its
//! space, and nothing is left behind whenever the supervisor stops: its
//! descriptors close, the mounts go, the loop device detaches and the
//! unlinked image's blocks are freed.
//!
//! Needs root, `/dev/loop-control` and `mkfs.ext4` (e2fsprogs).

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::SandboxError;

/// Smallest cap accepted: below this ext4's own metadata leaves no room.
pub const MIN_WORK_BYTES: u64 = 4 << 20;

/// How close to the cap counts as full: ext4 refuses a write it cannot
/// hold whole, so a writer of 1 MiB blocks (dd, tar, most copy loops) gets
/// `ENOSPC` with up to 1 MiB still free (measured: 0.45-0.95 MiB left on
/// 8-256 MiB volumes). A writer of larger blocks may be refused earlier,
/// which this does not see.
const FULL_SLACK_BYTES: u64 = 1 << 20;

/// A size-capped `/work` for one sandbox. Dropping it releases the
/// supervisor's view; the volume ends once the sandbox's mount is gone too.
#[derive(Debug)]
pub struct WorkVolume {
    /// The detached mount of the volume's root (the supervisor's view).
    root: OwnedFd,
    /// `/dev/loopN`, which the sandbox mounts at `/work`.
    device: PathBuf,
    cap_bytes: u64,
}

/// What `statvfs` says about a [`WorkVolume`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkUsage {
    /// The file system's size (the cap less ext4's own metadata).
    pub size_bytes: u64,
    pub used_bytes: u64,
    /// What an unprivileged writer may still use (no blocks are reserved
    /// for root on this file system).
    pub available_bytes: u64,
}

impl WorkUsage {
    /// Whether the volume is full: less than 1 MiB (plus 1/256 of its
    /// size) is left, where writes of ordinary block sizes fail with
    /// `ENOSPC`.
    pub fn is_full(&self) -> bool {
        self.available_bytes < FULL_SLACK_BYTES + self.size_bytes / 256
    }
}

fn volume_err(stage: &'static str) -> impl FnOnce(io::Error) -> SandboxError {
    move |source| SandboxError::WorkVolume { stage, source }
}

// Linux UAPI values (include/uapi/linux/loop.h, linux/mount.h).
const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOUNT_ATTR_NOSUID: libc::c_uint = 0x2;
const MOUNT_ATTR_NODEV: libc::c_uint = 0x4;

/// `struct loop_info64`.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdev: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

fn autoclear_info() -> LoopInfo64 {
    LoopInfo64 {
        lo_device: 0,
        lo_inode: 0,
        lo_rdev: 0,
        lo_offset: 0,
        lo_sizelimit: 0,
        lo_number: 0,
        lo_encrypt_type: 0,
        lo_encrypt_key_size: 0,
        lo_flags: LO_FLAGS_AUTOCLEAR,
        lo_file_name: [0; 64],
        lo_crypt_name: [0; 64],
        lo_encrypt_key: [0; 32],
        lo_init: [0; 2],
    }
}

/// Binds `image` to a free loop device that detaches itself on its last
/// close. Returns the device's path and an open descriptor of it.
fn attach_loop(image: &File) -> Result<(PathBuf, File), SandboxError> {
    let control = File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/loop-control")
        .map_err(volume_err("opening /dev/loop-control"))?;
    // Another process may take the device we were offered before we bind
    // it (EBUSY): ask again.
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a number.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
        if n < 0 {
            return Err(volume_err("finding a free loop device")(
                io::Error::last_os_error(),
            ));
        }
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let device = File::options()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(volume_err("opening the loop device"))?;
        let config = LoopConfig {
            fd: image.as_raw_fd() as u32,
            block_size: 0,
            info: autoclear_info(),
            reserved: [0; 8],
        };
        // SAFETY: LOOP_CONFIGURE reads a `struct loop_config` that lives
        // across the call.
        let rc = unsafe {
            libc::ioctl(
                device.as_raw_fd(),
                LOOP_CONFIGURE as _,
                &config as *const LoopConfig,
            )
        };
        if rc == 0 {
            return Ok((path, device));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EBUSY) => continue,
            // Kernels before 5.8: bind, then set the flags.
            Some(libc::EINVAL) | Some(libc::ENOTTY) => {
                set_fd_then_status(&device, image)?;
                return Ok((path, device));
            }
            _ => return Err(volume_err("binding the image to a loop device")(err)),
        }
    }
    Err(volume_err("binding the image to a loop device")(
        io::Error::from_raw_os_error(libc::EBUSY),
    ))
}

fn set_fd_then_status(device: &File, image: &File) -> Result<(), SandboxError> {
    // SAFETY: LOOP_SET_FD takes the backing file's descriptor by value.
    let rc = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_SET_FD as _, image.as_raw_fd()) };
    if rc != 0 {
        return Err(volume_err("binding the image to a loop device")(
            io::Error::last_os_error(),
        ));
    }
    let info = autoclear_info();
    // SAFETY: LOOP_SET_STATUS64 reads a `struct loop_info64` that lives
    // across the call.
    let rc = unsafe {
        libc::ioctl(
            device.as_raw_fd(),
            LOOP_SET_STATUS64 as _,
            &info as *const LoopInfo64,
        )
    };
    if rc != 0 {
        return Err(volume_err("setting the loop device to detach itself")(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn cstring(s: &str) -> CString {
    CString::new(s).expect("no NUL in these strings")
}

/// Mounts `device` (ext4) as a detached mount, `nosuid,nodev`.
fn detached_mount(device: &Path) -> Result<OwnedFd, SandboxError> {
    let ext4 = cstring("ext4");
    // SAFETY: fsopen reads a C string and returns a new descriptor.
    let fs = unsafe { libc::syscall(libc::SYS_fsopen, ext4.as_ptr(), FSOPEN_CLOEXEC) };
    if fs < 0 {
        return Err(volume_err("fsopen(ext4)")(io::Error::last_os_error()));
    }
    // SAFETY: the syscall just returned this descriptor; nothing else owns it.
    let fs = unsafe { OwnedFd::from_raw_fd(fs as RawFd) };
    let source = CString::new(device.as_os_str().as_encoded_bytes()).map_err(|_| {
        volume_err("naming the loop device")(io::Error::from(io::ErrorKind::InvalidInput))
    })?;
    let key = cstring("source");
    // SAFETY: fsconfig reads two C strings that live across the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_SET_STRING,
            key.as_ptr(),
            source.as_ptr(),
            0,
        )
    };
    if rc < 0 {
        return Err(volume_err("fsconfig(source)")(io::Error::last_os_error()));
    }
    // SAFETY: FSCONFIG_CMD_CREATE takes no pointers.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    if rc < 0 {
        return Err(volume_err("creating the ext4 superblock")(
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: fsmount takes a descriptor and flags, returns a new descriptor.
    let mnt = unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            fs.as_raw_fd(),
            FSMOUNT_CLOEXEC,
            MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        )
    };
    if mnt < 0 {
        return Err(volume_err("fsmount")(io::Error::last_os_error()));
    }
    // SAFETY: as above, a fresh descriptor only we hold.
    Ok(unsafe { OwnedFd::from_raw_fd(mnt as RawFd) })
}

fn mkfs_ext4(device: &Path, uid: u32, gid: u32) -> Result<(), SandboxError> {
    let out = Command::new("mkfs.ext4")
        .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin")
        // No blocks reserved for root (the cap is all the sandbox's), no
        // journal (the volume lives one session), an inode per 8 KiB
        // (package trees are many small files), the root owned by the
        // sandbox user.
        .args(["-q", "-F", "-m", "0", "-O", "^has_journal", "-i", "8192"])
        .arg("-E")
        .arg(format!(
            "root_owner={uid}:{gid},lazy_itable_init=1,nodiscard"
        ))
        .arg(device)
        .output()
        .map_err(volume_err("running mkfs.ext4 (e2fsprogs)"))?;
    if !out.status.success() {
        return Err(volume_err("mkfs.ext4")(io::Error::other(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        )));
    }
    Ok(())
}

impl WorkVolume {
    /// Makes a `cap_bytes` volume whose blocks live in a sparse image at
    /// `image` (a path on the disk that should carry them, e.g. the session
    /// bundle; the file is gone again before this returns), with its root
    /// owned by `uid:gid`. Blocking (runs `mkfs.ext4`, ~30 ms).
    pub fn create(image: &Path, cap_bytes: u64, uid: u32, gid: u32) -> Result<Self, SandboxError> {
        if cap_bytes < MIN_WORK_BYTES {
            return Err(SandboxError::InvalidSpec(format!(
                "a /work cap of {cap_bytes} bytes is below the minimum of {MIN_WORK_BYTES}"
            )));
        }
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(image)
            .map_err(volume_err("creating the image file"))?;
        // From here the loop device holds the image: unlink it whatever
        // happens next, so no crash leaves it behind.
        let attached = file
            .set_len(cap_bytes)
            .map_err(volume_err("sizing the image file"))
            .and_then(|()| attach_loop(&file));
        let _ = std::fs::remove_file(image);
        drop(file);
        let (device, loop_fd) = attached?;
        mkfs_ext4(&device, uid, gid)?;
        let root = detached_mount(&device)?;
        // The mount holds the device now; our descriptor's close no longer
        // detaches it (and will once the mounts are gone).
        drop(loop_fd);
        let volume = WorkVolume {
            root,
            device,
            cap_bytes,
        };
        // mkfs leaves lost+found; it would only confuse the task's results.
        let _ = std::fs::remove_dir(volume.path().join("lost+found"));
        Ok(volume)
    }

    /// The volume's root as a path the supervisor can use with ordinary
    /// file calls (`/proc/self/fd/N/.`): copy the task's files in before the
    /// sandbox starts, and the results out after it ended.
    pub fn path(&self) -> PathBuf {
        // `/.`: the directory itself, not the magic link to it (so lchown,
        // is_symlink and friends see the directory).
        PathBuf::from(format!("/proc/self/fd/{}/.", self.root.as_raw_fd()))
    }

    /// The loop device the sandbox mounts at `/work`.
    pub fn device(&self) -> &Path {
        &self.device
    }

    /// The cap the volume was made with.
    pub fn cap_bytes(&self) -> u64 {
        self.cap_bytes
    }

    /// Size, use and what is left, now.
    pub fn usage(&self) -> Result<WorkUsage, SandboxError> {
        let st = nix::sys::statvfs::fstatvfs(&self.root)
            .map_err(|e| volume_err("statvfs of the volume")(e.into()))?;
        let block = st.fragment_size() as u64;
        let size = st.blocks() as u64 * block;
        let free = st.blocks_free() as u64 * block;
        Ok(WorkUsage {
            size_bytes: size,
            used_bytes: size.saturating_sub(free),
            available_bytes: st.blocks_available() as u64 * block,
        })
    }
}
