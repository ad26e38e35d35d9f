//! Where each boot structure lives in guest-physical memory (Firecracker-like
//! low-memory layout; everything the VMM writes sits below 1 MiB).

/// The GDT the vCPU starts with.
pub const BOOT_GDT_ADDR: u64 = 0x500;
/// An empty IDT: interrupts stay masked until the kernel installs its own.
pub const BOOT_IDT_ADDR: u64 = 0x520;
/// Initial stack pointer for the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// The Linux zero page (`struct boot_params`); `rsi` points here at entry.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Level 4 page table; the level 3 and level 2 tables follow it.
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPTE_ADDR: u64 = 0xa000;
pub const PDE_ADDR: u64 = 0xb000;
/// The kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the Extended BIOS Data Area; the MP table goes here and low RAM ends here.
pub const EBDA_START: u64 = 0x9fc00;
/// Start of high memory, where kernels are loaded.
pub const HIMEM_START: u64 = 0x10_0000;
/// Guest RAM must end below this; 32-bit MMIO (IOAPIC, LAPIC, virtio-mmio) lives above it.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// First virtio-mmio device window, each `VIRTIO_MMIO_SIZE` apart.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// KVM's TSS needs three pages of guest-physical space that is not RAM.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const APIC_DEFAULT_PHYS_BASE: u32 = 0xfee0_0000;

/// The maximum guest RAM this layout supports (RAM is one region below the MMIO gap).
pub const MAX_MEM_BYTES: u64 = MMIO_GAP_START;

// The stack grows down from below the page tables, above the zero page.
const _: () =
    assert!(BOOT_STACK_POINTER < PML4_ADDR && BOOT_STACK_POINTER > ZERO_PAGE_ADDR + 0x1000);

/// Highest page-aligned address at which an initrd of `size` bytes fits below `mem_end`.
pub fn initrd_load_addr(mem_end: u64, size: u64, kernel_end: u64) -> Option<u64> {
    let addr = mem_end.checked_sub(size)? & !0xfff;
    (addr >= kernel_end).then_some(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_structures_do_not_overlap_and_stay_below_ebda() {
        let mut regions = [
            (BOOT_GDT_ADDR, 0x20),
            (BOOT_IDT_ADDR, 8),
            (ZERO_PAGE_ADDR, 0x1000),
            (PML4_ADDR, 0x1000),
            (PDPTE_ADDR, 0x1000),
            (PDE_ADDR, 0x1000),
            (CMDLINE_ADDR, CMDLINE_MAX_SIZE as u64),
        ];
        regions.sort();
        for pair in regions.windows(2) {
            assert!(pair[0].0 + pair[0].1 <= pair[1].0, "{pair:x?} overlap");
        }
        assert!(regions.iter().all(|(a, l)| a + l <= EBDA_START));
    }

    #[test]
    fn initrd_goes_to_the_top_page_aligned() {
        let mem_end = 128 << 20;
        let addr = initrd_load_addr(mem_end, 5000, 32 << 20).expect("fits");
        assert_eq!(addr % 4096, 0);
        assert!(addr + 5000 <= mem_end && addr + 5000 + 4096 > mem_end);
        assert_eq!(initrd_load_addr(mem_end, 120 << 20, 32 << 20), None);
        assert_eq!(initrd_load_addr(4096, 8192, 0), None);
    }
}
