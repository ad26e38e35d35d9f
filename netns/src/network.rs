//! The per-session network namespace: a named netns (`/run/netns/openclaw-<id>`)
//! with `lo` up carrying the proxy's address as a /32, and no route, veth or
//! forwarding to anywhere else. (The address sits on `lo` rather than a
//! dummy interface: it needs no kernel module, and a /32 leaves every other
//! destination without a route, so connects fail at once with
//! `ENETUNREACH`.)
//!
//! Built with iproute2's `ip` (a documented runtime dependency, installed by
//! `scripts/bootstrap`): it creates the namespace as a bind mount under
//! `/run/netns`, where the kvm backend can open it to place its tap.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};

use crate::iproute::{delete_netns, ip, NAME_PREFIX, NETNS_DIR};
use crate::records::{self, Owner};
use crate::{enter, NetnsError};

/// A session's network namespace. Dropping it deletes the namespace (any
/// socket or process still inside keeps its own reference until closed).
///
/// Invariant: the owner record (`/run/openclaw/net/slot-<n>`) exists for as
/// long as the namespace does, and is written before it is created.
#[derive(Debug)]
pub struct SessionNetwork {
    name: String,
    path: PathBuf,
    slot: u8,
    record: PathBuf,
    /// Whether `ip netns add` succeeded: a name clash with a live session
    /// must not delete that session's namespace.
    created: bool,
}

impl SessionNetwork {
    /// Creates the namespace for `session_id` (1-32 chars of `[A-Za-z0-9_-]`),
    /// with `lo` up holding `10.200.<slot>.1/32`, the slot being the
    /// first free one among live sessions. Blocking (runs `ip`).
    pub fn create(session_id: &str) -> Result<SessionNetwork, NetnsError> {
        Self::create_with_owner(session_id, Owner::current())
    }

    /// As [`create`](Self::create) but recording another owner process;
    /// lets tests simulate a supervisor that died.
    #[doc(hidden)]
    pub fn create_owned_by(
        session_id: &str,
        owner_pid: u32,
        owner_start: u64,
    ) -> Result<SessionNetwork, NetnsError> {
        Self::create_with_owner(
            session_id,
            Owner {
                pid: owner_pid,
                start: owner_start,
            },
        )
    }

    fn create_with_owner(session_id: &str, owner: Owner) -> Result<SessionNetwork, NetnsError> {
        validate_session_id(session_id)?;
        let name = format!("{NAME_PREFIX}{session_id}");
        let dir = records::net_dir();
        records::ensure_dir(&dir)?;
        let contents = format!("{name}\n{}\n", owner.to_line());
        let tmp = records::write_temp(&dir, &contents)?;
        let mut claimed = None;
        for slot in 1..=254u8 {
            let record = dir.join(format!("slot-{slot}"));
            match records::publish(&tmp, &record) {
                Ok(true) => {
                    claimed = Some((slot, record));
                    break;
                }
                Ok(false) => {}
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
            }
        }
        let _ = std::fs::remove_file(&tmp);
        let (slot, record) = claimed.ok_or(NetnsError::NoFreeSlot)?;
        let net = SessionNetwork {
            path: Path::new(NETNS_DIR).join(&name),
            name,
            slot,
            record,
            created: false,
        };
        let mut net = net;
        // From here `net`'s Drop removes whatever was built.
        if let Err(e) = net.build() {
            drop(net);
            return Err(e);
        }
        tracing::debug!(netns = %net.name, addr = %net.proxy_addr(), "session network created");
        Ok(net)
    }

    fn build(&mut self) -> Result<(), NetnsError> {
        let cidr = format!("{}/32", self.proxy_addr());
        ip(&["netns", "add", &self.name])?;
        self.created = true;
        let n = self.name.as_str();
        ip(&["-n", n, "link", "set", "lo", "up"])?;
        ip(&["-n", n, "addr", "add", &cidr, "dev", "lo"])?;
        Ok(())
    }

    /// The namespace's name as `ip netns` knows it (`openclaw-<id>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/openclaw-<id>`: open it and `setns(CLONE_NEWNET)` to enter.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The address the proxy listens on (DNS 53, HTTP 80, HTTPS 443) and the
    /// sandbox's only resolver: `10.200.<slot>.1`.
    pub fn proxy_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 200, self.slot, 1)
    }

    /// The guest's address for the kvm backend: `10.200.<slot>.2`.
    pub fn guest_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 200, self.slot, 2)
    }

    /// Prefix length of the session subnet (`10.200.<slot>.0/24`) the kvm
    /// backend configures in its guest.
    pub fn prefix_len(&self) -> u8 {
        24
    }

    /// For the kvm backend: brings up `ifname` (a tap already created in this
    /// namespace) and routes the guest address through it, so replies from
    /// the proxy reach the guest. Blocking.
    pub fn route_guest_via(&self, ifname: &str) -> Result<(), NetnsError> {
        let n = self.name.as_str();
        let guest = format!("{}/32", self.guest_addr());
        ip(&["-n", n, "link", "set", ifname, "up"])?;
        ip(&["-n", n, "route", "replace", &guest, "dev", ifname])?;
        Ok(())
    }

    /// Runs `f` on a fresh thread that has entered this namespace, and
    /// returns its result: [`crate::run_in`] on [`path`](Self::path). This
    /// is how the proxy's listeners and the kvm backend's tap are made.
    /// Blocks until `f` returns.
    pub fn run_in<F, T>(&self, f: F) -> Result<T, NetnsError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        enter::run_in(&self.path, f)
    }

    /// Binds a TCP listener on `proxy_addr():port` inside the namespace
    /// (e.g. 80 and 443 for the proxy). Blocking; the returned std listener
    /// can be handed to tokio with `TcpListener::from_std` after
    /// `set_nonblocking(true)`.
    pub fn bind_tcp(&self, port: u16) -> Result<TcpListener, NetnsError> {
        let addr = SocketAddr::from((self.proxy_addr(), port));
        self.run_in(move || TcpListener::bind(addr))?
            .map_err(|source| NetnsError::Bind { addr, source })
    }

    /// Binds a UDP socket on `proxy_addr():port` inside the namespace
    /// (53 for the proxy's DNS responder). Blocking.
    pub fn bind_udp(&self, port: u16) -> Result<UdpSocket, NetnsError> {
        let addr = SocketAddr::from((self.proxy_addr(), port));
        self.run_in(move || UdpSocket::bind(addr))?
            .map_err(|source| NetnsError::Bind { addr, source })
    }

    fn teardown(&mut self) -> Result<(), NetnsError> {
        if self.created {
            delete_netns(&self.name)?;
        }
        let _ = std::fs::remove_file(&self.record);
        Ok(())
    }
}

impl Drop for SessionNetwork {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::warn!(netns = %self.name, error = %e, "session network teardown failed; cleanup_stale will retry");
        }
    }
}

fn validate_session_id(id: &str) -> Result<(), NetnsError> {
    let ok = !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(NetnsError::InvalidSessionId(id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_checked() {
        assert!(validate_session_id("abc-123_X").is_ok());
        for bad in ["", "a/b", "a b", "../x", &"x".repeat(33)] {
            assert!(matches!(
                validate_session_id(bad),
                Err(NetnsError::InvalidSessionId(_))
            ));
        }
    }
}
