//! Builds the guest image the microVM boots: a kernel from a documented config
//! fragment and an initramfs (busybox, curl, CA trust, the guest init), plus
//! the small per-session cpio appended to it.
#![forbid(unsafe_code)]
