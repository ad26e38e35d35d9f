//! [`cleanup_stale`]: removes what crashed supervisors left behind, the
//! sandboxes (processes, cgroups, staging) first and then, through `netns`,
//! their session networks.

use std::fs;

use netns::records::{file_name, read_dir_or_empty, remove_tree, temp_is_stale, Owner};

use crate::{cgroup, rootfs, SandboxError};

/// What [`cleanup_stale`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StaleCleanup {
    /// Network namespaces removed (names as under `/run/netns`).
    pub networks: Vec<String>,
    /// Sandboxes whose processes, cgroups and staging were removed.
    pub sandboxes: Vec<String>,
}

/// Removes session networks and sandboxes whose owning supervisor is dead:
/// kills their processes, deletes their cgroups, namespaces and staging
/// directories. Call once at supervisor start; resources of live
/// supervisors are left alone. Blocking.
pub fn cleanup_stale() -> Result<StaleCleanup, SandboxError> {
    let mut done = StaleCleanup::default();

    // Sandboxes first: their processes hold the namespaces open.
    let sdir = rootfs::sandboxes_dir();
    for entry in read_dir_or_empty(&sdir)? {
        let name = file_name(&entry);
        if name.starts_with('.') {
            // Staging still being built (published by rename once its
            // owner record is in).
            if temp_is_stale(&name) {
                remove_tree(&entry)?;
            }
            continue;
        }
        let owner = fs::read_to_string(entry.join("owner"))
            .ok()
            .and_then(|l| Owner::parse(&l));
        if owner.is_some_and(Owner::is_alive) {
            continue;
        }
        cgroup::remove_stale(&name)?;
        remove_tree(&entry)?;
        done.sandboxes.push(name);
    }

    done.networks = netns::cleanup_stale_networks()?;
    Ok(done)
}
