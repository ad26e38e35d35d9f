//! Named network namespaces as iproute2 keeps them (`/run/netns/<name>`):
//! the names ours carry and the `ip` calls that build and delete them. Used
//! by the session network and by the stale cleanup alike.

use std::path::Path;
use std::process::Command;

use crate::NetnsError;

/// Where iproute2 keeps named network namespaces.
pub(crate) const NETNS_DIR: &str = "/run/netns";
/// Every session namespace's name starts with this.
pub(crate) const NAME_PREFIX: &str = "openclaw-";

/// Deletes the named namespace if it exists.
pub(crate) fn delete_netns(name: &str) -> Result<(), NetnsError> {
    if !Path::new(NETNS_DIR).join(name).exists() {
        return Ok(());
    }
    ip(&["netns", "delete", name])
}

/// Runs `ip ARGS`, mapping failure to its stderr.
pub(crate) fn ip(args: &[&str]) -> Result<(), NetnsError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(NetnsError::IpSpawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetnsError::IpCommand {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}
