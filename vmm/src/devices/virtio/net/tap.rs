//! The session's tap device, with a virtio-net header on every frame. It is
//! created in the calling thread's network namespace: the caller opens it
//! inside the session's (the `netns` crate's `run_in`), so its only peer is
//! the session network, and hands it to the VM. Unsafe is confined to the
//! three ioctls below.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;
/// `struct virtio_net_hdr_v1`: what a VERSION_1 virtio-net driver prepends.
pub const VNET_HDR_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("tap name {0:?} is empty or longer than 15 bytes")]
    BadName(String),
    #[error("cannot open /dev/net/tun: {0}")]
    OpenTun(std::io::Error),
    #[error("TUNSETIFF failed: {0}")]
    SetIff(std::io::Error),
    #[error("TUNSETVNETHDRSZ failed: {0}")]
    SetVnetHdrSize(std::io::Error),
    #[error("bringing the tap up failed: {0}")]
    LinkUp(std::io::Error),
    #[error("host address {0:?} is not an IPv4 a.b.c.d/len")]
    BadAddress(String),
    #[error("giving the tap its address failed: {0}")]
    AddAddress(String),
}

/// `struct ifreq` with the flags member of its union.
#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: i16,
    _pad: [u8; 22],
}

impl IfReqFlags {
    fn new(name: &str) -> IfReqFlags {
        let mut req = IfReqFlags {
            name: [0; libc::IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        req
    }
}

/// An open tap device. Frames read and written carry a 12-byte virtio-net header.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Creates (or attaches to) tap `name` in the calling thread's network
    /// namespace, and sets it up.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        Tap::open_with_address(name, None)
    }

    /// Like [`Tap::open`], and gives the tap (the host side of the guest's
    /// link) the address `host_cidr` (e.g. `10.0.2.1/24`) in that namespace,
    /// before the guest can send anything.
    pub fn open_with_address(name: &str, host_cidr: Option<&str>) -> Result<Tap, TapError> {
        let name_ok = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.';
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || !name.bytes().all(name_ok) {
            return Err(TapError::BadName(name.to_string()));
        }
        if let Some(cidr) = host_cidr {
            check_cidr(cidr)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut req = IfReqFlags::new(name);
        req.flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` is one
        // (repr(C), 40 bytes) and lives across the call; the fd is ours.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReqFlags) } < 0 {
            return Err(TapError::SetIff(std::io::Error::last_os_error()));
        }
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which
        // points at a live local.
        if unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                TUNSETVNETHDRSZ,
                &hdr_len as *const libc::c_int,
            )
        } < 0
        {
            return Err(TapError::SetVnetHdrSize(std::io::Error::last_os_error()));
        }
        link_up(name)?;
        if let Some(cidr) = host_cidr {
            // A child forked from this thread starts in this thread's namespace.
            let out = std::process::Command::new("ip")
                .args(["addr", "add", cidr, "dev", name])
                .output()
                .map_err(|e| TapError::AddAddress(e.to_string()))?;
            if !out.status.success() {
                let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
                return Err(TapError::AddAddress(stderr));
            }
        }
        Ok(Tap {
            file,
            name: name.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// One frame (with its virtio-net header) or `WouldBlock`.
    pub fn read_frame(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&self.file).read(buf)
    }

    /// One whole frame, starting with its virtio-net header.
    pub fn write_frame(&self, frame: &[u8]) -> std::io::Result<usize> {
        (&self.file).write(frame)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// A `Tap` over any fd (a socketpair end), so tests can watch the
/// device's TX path without /dev/net/tun.
#[cfg(test)]
impl Tap {
    pub(crate) fn from_file(file: File) -> Tap {
        Tap {
            file,
            name: "test".into(),
        }
    }
}

fn check_cidr(cidr: &str) -> Result<(), TapError> {
    let bad = || TapError::BadAddress(cidr.to_string());
    let (addr, len) = cidr.split_once('/').ok_or_else(bad)?;
    addr.parse::<std::net::Ipv4Addr>().map_err(|_| bad())?;
    match len.parse::<u8>() {
        Ok(l) if l <= 32 => Ok(()),
        _ => Err(bad()),
    }
}

/// SIOCGIFFLAGS/SIOCSIFFLAGS with IFF_UP, in the calling thread's namespace.
fn link_up(name: &str) -> Result<(), TapError> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| TapError::LinkUp(e.into()))?;
    let mut req = IfReqFlags::new(name);
    // SAFETY: SIOCGIFFLAGS fills the flags of the `struct ifreq` we own.
    if unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCGIFFLAGS,
            &mut req as *mut IfReqFlags,
        )
    } < 0
    {
        return Err(TapError::LinkUp(std::io::Error::last_os_error()));
    }
    req.flags |= libc::IFF_UP as i16;
    // SAFETY: SIOCSIFFLAGS reads the same live `struct ifreq`.
    if unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCSIFFLAGS,
            &mut req as *mut IfReqFlags,
        )
    } < 0
    {
        return Err(TapError::LinkUp(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(matches!(Tap::open(""), Err(TapError::BadName(_))));
        assert!(matches!(
            Tap::open("a-name-far-too-long"),
            Err(TapError::BadName(_))
        ));
        assert!(matches!(Tap::open("tap 0"), Err(TapError::BadName(_))));
        // A tap in a namespace that does not exist: opened through netns
        // (as the binary does), it fails at the namespace.
        assert!(matches!(
            netns::run_in(std::path::Path::new("/nonexistent/netns"), || Tap::open(
                "tap0"
            )),
            Err(netns::NetnsError::EnterNetns { .. })
        ));
        for bad in ["10.0.0.1", "10.0.0.1/33", "dev lo", "10.0.0/24"] {
            assert!(
                matches!(
                    Tap::open_with_address("tap0", Some(bad)),
                    Err(TapError::BadAddress(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn ifreq_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<IfReqFlags>(), 40);
        let r = IfReqFlags::new("tap0");
        assert_eq!(&r.name[..5], b"tap0\0");
    }
}
