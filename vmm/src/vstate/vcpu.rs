//! One vCPU: its boot-time register state (long mode, GDT, page tables) and
//! the run loop that dispatches port and MMIO exits to the devices.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, CpuId, Msrs};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress};

use super::memory::GuestMemory;
use crate::arch::{
    identity_page_tables, kvm_segment_from_gdt, BOOT_GDT, BOOT_GDT_ADDR, BOOT_IDT_ADDR,
    BOOT_STACK_POINTER, PDE_ADDR, PDPTE_ADDR, PML4_ADDR, ZERO_PAGE_ADDR,
};
use crate::devices::Bus;

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default memory type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("KVM_CREATE_VCPU failed: {0}")]
    Create(kvm_ioctls::Error),
    #[error("setting up vCPU state ({what}) failed: {source}")]
    Setup {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("writing boot page tables or GDT to guest memory failed: {0}")]
    BootTables(vm_memory::GuestMemoryError),
    #[error("KVM_RUN failed: {0}")]
    Run(kvm_ioctls::Error),
    /// KVM could not handle an exit (on nested PVM: often an instruction its
    /// emulator does not know).
    #[error(
        "KVM internal error (suberror {suberror}) at guest rip {rip:#x}; extra data {data:x?}"
    )]
    Internal {
        suberror: u32,
        rip: u64,
        data: Vec<u64>,
    },
    #[error("KVM could not enter the guest: hardware reason {reason:#x}")]
    FailEntry { reason: u64 },
    #[error("unexpected vCPU exit: {0}")]
    UnexpectedExit(String),
}

/// Why a vCPU stopped running without an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuStop {
    /// The guest asked for a reset (i8042 or KVM system event): our "power off".
    Reset,
    /// Triple fault.
    Shutdown,
    /// `hlt` reached userspace (only without an in-kernel LAPIC).
    Halted,
    /// The VMM asked it to stop (kill, timeout, another vCPU ended the VM).
    Kicked,
}

/// Lets another thread stop a vCPU that is inside KVM_RUN.
#[derive(Clone)]
pub struct VcpuKick {
    /// The vCPU's `kvm_run` page while its thread still owns the fd; None after.
    run_page: Arc<Mutex<Option<usize>>>,
}

impl VcpuKick {
    /// Makes the next (or current) KVM_RUN return. The caller also signals the
    /// thread to interrupt a KVM_RUN already in progress.
    pub fn request_exit(&self) {
        let guard = self.run_page.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(addr) = *guard {
            let page = addr as *mut kvm_bindings::kvm_run;
            // SAFETY: `addr` is the vCPU's mmap'd kvm_run page. The vCPU thread
            // clears it under this same lock before the fd (and mapping) is
            // dropped, so the page is mapped while we hold the lock. A byte
            // write to immediate_exit is how KVM documents this request.
            unsafe { std::ptr::addr_of_mut!((*page).immediate_exit).write_volatile(1) };
        }
    }
}

pub struct Vcpu {
    pub index: u8,
    fd: VcpuFd,
    run_page: Arc<Mutex<Option<usize>>>,
}

impl Vcpu {
    pub fn new(vm: &kvm_ioctls::VmFd, index: u8) -> Result<Vcpu, VcpuError> {
        let mut fd = vm
            .create_vcpu(u64::from(index))
            .map_err(VcpuError::Create)?;
        let page = fd.get_kvm_run() as *mut kvm_bindings::kvm_run as usize;
        Ok(Vcpu {
            index,
            fd,
            run_page: Arc::new(Mutex::new(Some(page))),
        })
    }

    pub fn kick_handle(&self) -> VcpuKick {
        VcpuKick {
            run_page: self.run_page.clone(),
        }
    }

    /// CPUID (with this vCPU's APIC id), MSRs, FPU and LAPIC wiring; every vCPU.
    pub fn configure_common(
        &self,
        supported: &CpuId,
        vcpus: u8,
        tsc_deadline: bool,
    ) -> Result<(), VcpuError> {
        let setup = |what| move |source| VcpuError::Setup { what, source };
        let mut cpuid = supported.clone();
        for entry in cpuid.as_mut_slice() {
            match entry.function {
                1 => {
                    // Initial APIC id and the logical processor count.
                    entry.ebx = (entry.ebx & 0x0000_ffff)
                        | (u32::from(self.index) << 24)
                        | (u32::from(vcpus) << 16);
                    // Running under a hypervisor.
                    entry.ecx |= 1 << 31;
                    // KVM emulates the TSC-deadline LAPIC timer but does not
                    // report it in the supported CPUID; without it the guest
                    // calibrates the LAPIC timer against the PIT at boot.
                    if tsc_deadline {
                        entry.ecx |= 1 << 24;
                    }
                }
                0xb | 0x1f => entry.edx = u32::from(self.index), // x2APIC id
                _ => {}
            }
        }
        self.fd.set_cpuid2(&cpuid).map_err(setup("cpuid"))?;

        let entries: Vec<kvm_msr_entry> = [
            (MSR_IA32_SYSENTER_CS, 0),
            (MSR_IA32_SYSENTER_ESP, 0),
            (MSR_IA32_SYSENTER_EIP, 0),
            (MSR_STAR, 0),
            (MSR_CSTAR, 0),
            (MSR_KERNEL_GS_BASE, 0),
            (MSR_SYSCALL_MASK, 0),
            (MSR_LSTAR, 0),
            (MSR_IA32_TSC, 0),
            (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
            (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
        ]
        .into_iter()
        .map(|(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
        let msrs = Msrs::from_entries(&entries).map_err(|_| VcpuError::Setup {
            what: "msrs",
            source: kvm_ioctls::Error::new(libc::EINVAL),
        })?;
        let written = self.fd.set_msrs(&msrs).map_err(setup("msrs"))?;
        if written != entries.len() {
            return Err(VcpuError::Setup {
                what: "msrs (not all accepted)",
                source: kvm_ioctls::Error::new(libc::EINVAL),
            });
        }

        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        self.fd.set_fpu(&fpu).map_err(setup("fpu"))?;

        // LINT0 takes the legacy PIC (ExtINT), LINT1 NMIs, as on a PC.
        let mut lapic = self.fd.get_lapic().map_err(setup("get lapic"))?;
        for (offset, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
            let mut raw = [0u8; 4];
            for (i, b) in raw.iter_mut().enumerate() {
                *b = lapic.regs[offset + i] as u8;
            }
            let value = (u32::from_le_bytes(raw) & !0x700) | (mode << 8);
            for (i, b) in value.to_le_bytes().iter().enumerate() {
                lapic.regs[offset + i] = *b as _;
            }
        }
        self.fd.set_lapic(&lapic).map_err(setup("set lapic"))?;
        Ok(())
    }

    /// Puts the boot vCPU in 64-bit mode at `entry`, with `rsi` at the zero page.
    pub fn configure_boot(&self, mem: &GuestMemory, entry: u64) -> Result<(), VcpuError> {
        let setup = |what| move |source| VcpuError::Setup { what, source };
        write_boot_tables(mem)?;
        let mut sregs = self.fd.get_sregs().map_err(setup("get sregs"))?;
        sregs.gdt.base = BOOT_GDT_ADDR;
        sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
        sregs.idt.base = BOOT_IDT_ADDR;
        sregs.idt.limit = 7;
        let code = kvm_segment_from_gdt(BOOT_GDT[1], 1);
        let data = kvm_segment_from_gdt(BOOT_GDT[2], 2);
        sregs.cs = code;
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        sregs.tr = kvm_segment_from_gdt(BOOT_GDT[3], 3);
        sregs.cr3 = PML4_ADDR;
        sregs.cr4 |= X86_CR4_PAE;
        sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
        sregs.efer |= EFER_LME | EFER_LMA;
        self.fd.set_sregs(&sregs).map_err(setup("sregs"))?;

        let regs = kvm_regs {
            rflags: 0x2, // bit 1 is reserved and must be set
            rip: entry,
            rsp: BOOT_STACK_POINTER,
            rbp: BOOT_STACK_POINTER,
            rsi: ZERO_PAGE_ADDR,
            ..Default::default()
        };
        self.fd.set_regs(&regs).map_err(setup("regs"))?;
        Ok(())
    }

    /// Runs until the guest resets/halts, the VMM kicks it, or an error.
    pub fn run(mut self, bus: &Bus, stop: &AtomicBool) -> Result<VcpuStop, VcpuError> {
        let result = self.run_loop(bus, stop);
        // The page goes away with the fd: no kick may touch it after this.
        *self.run_page.lock().unwrap_or_else(|e| e.into_inner()) = None;
        result
    }

    fn run_loop(&mut self, bus: &Bus, stop: &AtomicBool) -> Result<VcpuStop, VcpuError> {
        loop {
            if stop.load(Ordering::Acquire) {
                return Ok(VcpuStop::Kicked);
            }
            match self.fd.run() {
                Ok(exit) => {
                    if let Some(stopped) = handle_exit(exit, bus)? {
                        return Ok(stopped);
                    }
                    if bus.reset_requested() {
                        return Ok(VcpuStop::Reset);
                    }
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.fd.set_kvm_immediate_exit(0);
                }
                Err(e) => return Err(VcpuError::Run(e)),
            }
            if let Some(err) = self.pending_internal_error() {
                return Err(err);
            }
        }
    }

    /// `handle_exit` reports an internal error by name only; the details
    /// (suberror, rip) are read here where the fd is available.
    fn pending_internal_error(&mut self) -> Option<VcpuError> {
        let run = self.fd.get_kvm_run();
        if run.exit_reason != kvm_bindings::KVM_EXIT_INTERNAL_ERROR {
            return None;
        }
        // SAFETY: exit_reason says the `internal` member of the union is the live one.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let n = (internal.ndata as usize).min(internal.data.len());
        let data = internal.data[..n].to_vec();
        let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or(u64::MAX);
        Some(VcpuError::Internal {
            suberror: internal.suberror,
            rip,
            data,
        })
    }
}

/// Writes the GDT, an empty IDT and the identity page tables.
fn write_boot_tables(mem: &GuestMemory) -> Result<(), VcpuError> {
    for (i, entry) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_ADDR + 8 * i as u64))
            .map_err(VcpuError::BootTables)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_ADDR))
        .map_err(VcpuError::BootTables)?;
    let (pml4, pdpt, pd) = identity_page_tables();
    for (table, base) in [(pml4, PML4_ADDR), (pdpt, PDPTE_ADDR), (pd, PDE_ADDR)] {
        for (i, entry) in table.iter().enumerate() {
            mem.write_obj(*entry, GuestAddress(base + 8 * i as u64))
                .map_err(VcpuError::BootTables)?;
        }
    }
    Ok(())
}

/// Dispatches one exit. `Ok(Some(_))` ends the run loop.
pub fn handle_exit(exit: VcpuExit<'_>, bus: &Bus) -> Result<Option<VcpuStop>, VcpuError> {
    match exit {
        VcpuExit::IoIn(port, data) => {
            bus.pio_read(port, data);
            Ok(None)
        }
        VcpuExit::IoOut(port, data) => {
            bus.pio_write(port, data);
            Ok(None)
        }
        VcpuExit::MmioRead(addr, data) => {
            bus.mmio_read(addr, data);
            Ok(None)
        }
        VcpuExit::MmioWrite(addr, data) => {
            bus.mmio_write(addr, data);
            Ok(None)
        }
        VcpuExit::Hlt => Ok(Some(VcpuStop::Halted)),
        VcpuExit::Shutdown => Ok(Some(VcpuStop::Shutdown)),
        VcpuExit::SystemEvent(kind, _) => match kind {
            kvm_bindings::KVM_SYSTEM_EVENT_RESET | kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => {
                Ok(Some(VcpuStop::Reset))
            }
            other => Err(VcpuError::UnexpectedExit(format!("system event {other}"))),
        },
        // Details are filled in by the caller, which holds the fd.
        VcpuExit::InternalError => Ok(None),
        VcpuExit::FailEntry(reason, _cpu) => Err(VcpuError::FailEntry { reason }),
        VcpuExit::Intr | VcpuExit::IrqWindowOpen => Ok(None),
        other => Err(VcpuError::UnexpectedExit(format!("{other:?}"))),
    }
}
