//! The KVM VM: memory slots, in-kernel interrupt controllers, PIT, irqfds.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::memory::GuestMemory;
use crate::arch::KVM_TSS_ADDR;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(kvm_ioctls::Error),
    #[error("KVM API version {0}, need 12")]
    ApiVersion(i32),
    #[error("KVM_CREATE_VM failed: {0}")]
    CreateVm(kvm_ioctls::Error),
    #[error("KVM_SET_TSS_ADDR failed: {0}")]
    TssAddress(kvm_ioctls::Error),
    #[error("KVM_CREATE_IRQCHIP failed: {0}")]
    IrqChip(kvm_ioctls::Error),
    #[error("KVM_CREATE_PIT2 failed: {0}")]
    Pit(kvm_ioctls::Error),
    #[error("KVM_SET_USER_MEMORY_REGION failed: {0}")]
    MemoryRegion(kvm_ioctls::Error),
    #[error("KVM_IRQFD failed: {0}")]
    Irqfd(kvm_ioctls::Error),
    #[error("KVM_GET_SUPPORTED_CPUID failed: {0}")]
    Cpuid(kvm_ioctls::Error),
}

/// An open `/dev/kvm` and one VM on it.
pub struct Vm {
    pub kvm: Kvm,
    pub fd: VmFd,
    pub cpuid: kvm_bindings::CpuId,
}

impl Vm {
    /// Creates the VM with an in-kernel IOAPIC/PIC/LAPIC and PIT.
    pub fn new() -> Result<Vm, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let version = kvm.get_api_version();
        if version != 12 {
            return Err(VmError::ApiVersion(version));
        }
        let fd = kvm.create_vm().map_err(VmError::CreateVm)?;
        fd.set_tss_address(KVM_TSS_ADDR as usize)
            .map_err(VmError::TssAddress)?;
        fd.create_irq_chip().map_err(VmError::IrqChip)?;
        // The PC speaker port is ignored instead of exiting to us on every beep.
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(VmError::Pit)?;
        let cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(VmError::Cpuid)?;
        Ok(Vm { kvm, fd, cpuid })
    }

    /// Gives the guest its RAM, one KVM slot per region.
    pub fn register_memory(&self, mem: &GuestMemory) -> Result<(), VmError> {
        for (slot, region) in mem.iter().enumerate() {
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(|_| VmError::MemoryRegion(kvm_ioctls::Error::new(libc::EFAULT)))?;
            let desc = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the mapping belongs to `mem`, which the caller keeps alive
            // for as long as the VM runs (RunningVm owns both), and the slot
            // does not overlap another one.
            unsafe { self.fd.set_user_memory_region(desc) }.map_err(VmError::MemoryRegion)?;
        }
        Ok(())
    }

    /// Wires an eventfd to interrupt line `gsi` of the in-kernel IOAPIC.
    pub fn register_irq(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd.register_irqfd(evt, gsi).map_err(VmError::Irqfd)
    }
}
