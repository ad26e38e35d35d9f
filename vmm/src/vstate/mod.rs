//! KVM objects: guest memory, the VM and its vCPUs. The only place (besides
//! the tap device and host namespaces) where this crate uses `unsafe`.

pub mod memory;
pub mod vcpu;
pub mod vm;
