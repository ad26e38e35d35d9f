//! Identity page tables for the first GiB, enough for the kernel's 64-bit
//! entry until it builds its own.

use super::layout::{PDE_ADDR, PDPTE_ADDR};

/// Present + writable.
const PAGE_PRESENT_RW: u64 = 0x3;
/// Present + writable + 2 MiB page.
const PAGE_HUGE_PRESENT_RW: u64 = 0x83;

/// The three tables (PML4, PDPT, PD) as little-endian u64 arrays; PD maps
/// 512 x 2 MiB = 1 GiB one to one.
pub fn identity_page_tables() -> ([u64; 512], [u64; 512], [u64; 512]) {
    let mut pml4 = [0u64; 512];
    let mut pdpt = [0u64; 512];
    let mut pd = [0u64; 512];
    pml4[0] = PDPTE_ADDR | PAGE_PRESENT_RW;
    pdpt[0] = PDE_ADDR | PAGE_PRESENT_RW;
    for (i, entry) in pd.iter_mut().enumerate() {
        *entry = ((i as u64) << 21) | PAGE_HUGE_PRESENT_RW;
    }
    (pml4, pdpt, pd)
}

/// Walks the tables as the MMU would and returns the physical address for `virt`.
#[cfg(test)]
fn translate(tables: &([u64; 512], [u64; 512], [u64; 512]), virt: u64) -> Option<u64> {
    let (pml4, pdpt, pd) = tables;
    let l4 = pml4[((virt >> 39) & 0x1ff) as usize];
    if l4 & 1 == 0 || l4 & !0xfff != PDPTE_ADDR {
        return None;
    }
    let l3 = pdpt[((virt >> 30) & 0x1ff) as usize];
    if l3 & 1 == 0 || l3 & !0xfff != PDE_ADDR {
        return None;
    }
    let l2 = pd[((virt >> 21) & 0x1ff) as usize];
    if l2 & 1 == 0 || l2 & 0x80 == 0 {
        return None;
    }
    Some((l2 & !0x1f_ffff & 0x000f_ffff_ffff_f000) | (virt & 0x1f_ffff))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_gib_is_identity_mapped() {
        let t = identity_page_tables();
        for virt in [0u64, 0x7000, 0x10_0000, 0x100_0000 + 0x123, (1 << 30) - 1] {
            assert_eq!(translate(&t, virt), Some(virt), "{virt:#x}");
        }
        assert_eq!(translate(&t, 1 << 30), None, "only the first GiB is mapped");
    }

    #[test]
    fn entries_are_present_writable_huge() {
        let (pml4, pdpt, pd) = identity_page_tables();
        assert_eq!(pml4[0] & 0xfff, 0x3);
        assert_eq!(pdpt[0] & 0xfff, 0x3);
        assert!(pd.iter().all(|e| e & 0xfff == 0x83));
        assert_eq!(pml4[1..].iter().filter(|e| **e != 0).count(), 0);
    }
}
