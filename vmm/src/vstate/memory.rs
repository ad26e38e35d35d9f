//! Guest RAM: one anonymous mapping from guest-physical 0 up to the MMIO gap,
//! aligned to 2 MiB in the VMM's address space and marked for transparent
//! huge pages, so KVM can back the guest with 2 MiB pages.

use std::sync::Arc;

use vm_memory::bitmap::{Bitmap, WithBitmapSlice};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use crate::arch::MAX_MEM_BYTES;

/// Guest memory as the rest of the VMM sees it.
pub type GuestMemory = GuestMemoryMmap<RamOwner>;

/// KVM maps guest pages with 2 MiB entries only where guest-physical and
/// host-virtual addresses agree modulo 2 MiB; a plain mmap is 4 KiB aligned.
const HUGE_PAGE: usize = 2 << 20;

#[derive(Debug, thiserror::Error)]
pub enum GuestMemoryError {
    #[error("guest memory of {0} MiB is outside 16 MiB ..= {max} MiB", max = MAX_MEM_BYTES >> 20)]
    BadSize(u64),
    #[error("cannot map guest memory: {0}")]
    Mmap(std::io::Error),
    #[error("cannot describe guest memory: {0}")]
    Region(String),
}

/// The mapping behind guest RAM; unmapped when the last user drops it.
#[derive(Debug)]
struct Mapping {
    addr: usize,
    len: usize,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `addr..addr+len` is the mapping `create_guest_memory` made
        // for this `Mapping` alone; the last `RamOwner` holding it is going
        // away with the region, so nothing can reach the memory any more.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// Keeps guest RAM mapped for as long as a region refers to it. vm-memory
/// does not unmap memory it did not map itself, and every clone of the guest
/// memory shares the region, so the region's (otherwise unused) dirty bitmap
/// is where the ownership lives. Dirty tracking is not used: a no-op.
#[derive(Clone, Debug, Default)]
pub struct RamOwner {
    /// Held only for its `Drop`.
    _mapping: Option<Arc<Mapping>>,
}

impl WithBitmapSlice<'_> for RamOwner {
    type S = ();
}

impl Bitmap for RamOwner {
    fn mark_dirty(&self, _offset: usize, _len: usize) {}

    fn dirty_at(&self, _offset: usize) -> bool {
        false
    }

    fn slice_at(&self, _offset: usize) {}
}

/// Allocates `mem_mib` MiB of guest RAM starting at guest-physical 0.
pub fn create_guest_memory(mem_mib: u64) -> Result<GuestMemory, GuestMemoryError> {
    let bytes = mem_mib
        .checked_mul(1 << 20)
        .ok_or(GuestMemoryError::BadSize(mem_mib))?;
    if !(16 << 20..=MAX_MEM_BYTES).contains(&bytes) {
        return Err(GuestMemoryError::BadSize(mem_mib));
    }
    let len = bytes as usize;
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    // Map 2 MiB more than needed, then give back the unaligned head and tail.
    // SAFETY: a new anonymous mapping at an address the kernel picks; no
    // existing memory is affected.
    let raw = unsafe { libc::mmap(std::ptr::null_mut(), len + HUGE_PAGE, prot, flags, -1, 0) };
    if raw == libc::MAP_FAILED {
        return Err(GuestMemoryError::Mmap(std::io::Error::last_os_error()));
    }
    let start = raw as usize;
    let aligned = start.next_multiple_of(HUGE_PAGE);
    let tail = start + len + HUGE_PAGE - (aligned + len);
    // SAFETY: both ranges lie inside the mapping just made and outside
    // `aligned..aligned+len`, which is all that is kept.
    unsafe {
        if aligned > start {
            libc::munmap(raw, aligned - start);
        }
        if tail > 0 {
            libc::munmap((aligned + len) as *mut libc::c_void, tail);
        }
        // As QEMU does for guest RAM: huge pages also where THP is
        // "madvise", and the kernel compacts memory to find them (in the
        // harness's L1, THP "always" with defrag "madvise": without the
        // hint, boots measured ~10% slower, setup ~30% slower).
        libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
    let owner = RamOwner {
        _mapping: Some(Arc::new(Mapping { addr: aligned, len })),
    };
    // SAFETY: `aligned..aligned+len` is mapped read/write, and `owner`, which
    // the region keeps, unmaps it only when the region itself is dropped.
    let region = unsafe {
        MmapRegionBuilder::new_with_bitmap(len, owner)
            .with_mmap_prot(prot)
            .with_mmap_flags(flags)
            .with_raw_mmap_pointer(aligned as *mut u8)
    }
    .build()
    .map_err(|e| GuestMemoryError::Region(e.to_string()))?;
    let region = GuestRegionMmap::new(region, GuestAddress(0))
        .ok_or_else(|| GuestMemoryError::Region("region wraps the address space".into()))?;
    GuestMemoryMmap::from_regions(vec![region]).map_err(|e| GuestMemoryError::Region(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn sizes_are_checked_and_memory_is_usable() {
        assert!(matches!(
            create_guest_memory(1),
            Err(GuestMemoryError::BadSize(1))
        ));
        assert!(
            create_guest_memory(4096).is_err(),
            "RAM would overlap the MMIO gap"
        );
        let mem = create_guest_memory(32).expect("32 MiB");
        assert_eq!(mem.last_addr(), GuestAddress((32 << 20) - 1));
        mem.write_obj(0xdead_beefu32, GuestAddress(0x1000))
            .expect("write");
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x1000)).expect("read"),
            0xdead_beef
        );
    }

    #[test]
    fn ram_is_2mib_aligned_and_freed_with_the_last_clone() {
        let mem = create_guest_memory(16).expect("16 MiB");
        let host = mem.get_host_address(GuestAddress(0)).expect("host") as usize;
        assert_eq!(host % HUGE_PAGE, 0, "host address {host:#x}");
        let region = mem.iter().next().expect("one region");
        let mapping = Arc::downgrade(region.bitmap()._mapping.as_ref().expect("owned"));
        let clone = mem.clone();
        drop(mem);
        clone
            .write_obj(7u8, GuestAddress(0x10_0000))
            .expect("a clone keeps the memory mapped");
        assert!(mapping.upgrade().is_some());
        drop(clone);
        assert!(
            mapping.upgrade().is_none(),
            "the mapping is dropped (unmapped) with the last clone"
        );
    }
}
