//! The disks of a guest that boots a root filesystem: the host gives each
//! virtio-blk disk one of these ids (answered to GET_ID, seen by the guest
//! as `/sys/block/vdX/serial`), and the guest init finds its disks by id,
//! whatever order they were probed in.

/// The image's root filesystem (ext4), read-only: the overlay's lower layer.
pub const ROOT_ID: &str = "openclaw-root";
/// The session's writable layer (ext4): the overlay's upper and work dirs.
pub const LAYER_ID: &str = "openclaw-layer";
/// The session's `/work` (ext4); the host copies it into the bundle's
/// `work/` after the VM stops.
pub const WORK_ID: &str = "openclaw-work";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_fit_the_twenty_bytes_get_id_answers() {
        for id in [ROOT_ID, LAYER_ID, WORK_ID] {
            assert!(id.len() <= 20, "{id}");
        }
    }
}
