//! Guest RAM: one anonymous mapping from guest-physical 0 up to the MMIO gap.

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::arch::MAX_MEM_BYTES;

/// Guest memory as the rest of the VMM sees it.
pub type GuestMemory = GuestMemoryMmap<()>;

#[derive(Debug, thiserror::Error)]
pub enum GuestMemoryError {
    #[error("guest memory of {0} MiB is outside 16 MiB ..= {max} MiB", max = MAX_MEM_BYTES >> 20)]
    BadSize(u64),
    #[error("cannot map guest memory: {0}")]
    Map(#[from] vm_memory::mmap::FromRangesError),
}

/// Allocates `mem_mib` MiB of guest RAM starting at guest-physical 0.
pub fn create_guest_memory(mem_mib: u64) -> Result<GuestMemory, GuestMemoryError> {
    let bytes = mem_mib
        .checked_mul(1 << 20)
        .ok_or(GuestMemoryError::BadSize(mem_mib))?;
    if !(16 << 20..=MAX_MEM_BYTES).contains(&bytes) {
        return Err(GuestMemoryError::BadSize(mem_mib));
    }
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), bytes as usize)])?;
    Ok(mem)
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
}
