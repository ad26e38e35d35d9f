//! virtio-blk: the guest's disks (the image's root filesystem, read-only and
//! shared; the session's writable layer; the session's `/work`).
//!
//! Our own, not a rust-vmm block crate: rust-vmm's `virtio-blk` (in the
//! vm-virtio repository) is not published on crates.io, and what we need of
//! it is small (IN, OUT, FLUSH, GET_ID on a plain file, synchronously). The
//! rings are `virtio-queue`'s, as for the net device; the wire constants are
//! `virtio-bindings`'.

pub mod device;
pub mod disk;
pub mod request;

pub use device::{Block, DiskConfig};
pub use disk::{DiskError, DiskFile};
