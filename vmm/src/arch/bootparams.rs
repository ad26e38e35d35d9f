//! The Linux zero page: boot protocol header fields and the e820 memory map.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};

use super::layout::{CMDLINE_ADDR, EBDA_START, HIMEM_START};

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
/// "Undefined" boot loader id: we are not one the kernel knows.
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x100_0000;
pub const E820_RAM: u32 = 1;

/// One e820 map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// Guest RAM as the kernel should see it: low memory up to the EBDA (which
/// holds our MP table) and everything from 1 MiB to the end of RAM.
pub fn e820_map(mem_end: u64) -> Vec<E820Entry> {
    let mut map = vec![E820Entry {
        addr: 0,
        size: EBDA_START,
        kind: E820_RAM,
    }];
    if mem_end > HIMEM_START {
        map.push(E820Entry {
            addr: HIMEM_START,
            size: mem_end - HIMEM_START,
            kind: E820_RAM,
        });
    }
    map
}

/// Builds the zero page. `kernel_header` is the bzImage's own setup header
/// (None for an ELF vmlinux); `initrd` is (guest address, size).
pub fn build_boot_params(
    kernel_header: Option<setup_header>,
    cmdline_len: usize,
    initrd: Option<(u64, u64)>,
    mem_end: u64,
) -> boot_params {
    let mut params = boot_params::default();
    if let Some(hdr) = kernel_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let map = e820_map(mem_end);
    for (slot, entry) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind,
        };
    }
    params.e820_entries = map.len() as u8;
    params
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::ByteValued;

    #[test]
    fn e820_covers_low_and_high_ram_not_the_bios_hole() {
        let map = e820_map(256 << 20);
        assert_eq!(map.len(), 2);
        assert_eq!(
            map[0],
            E820Entry {
                addr: 0,
                size: 0x9fc00,
                kind: E820_RAM
            }
        );
        assert_eq!(map[1].addr, 0x10_0000);
        assert_eq!(map[1].addr + map[1].size, 256 << 20);
    }

    #[test]
    fn zero_page_fields_sit_at_boot_protocol_offsets() {
        let p = build_boot_params(None, 42, Some((0x700_0000, 0x1234)), 128 << 20);
        let bytes = p.as_slice();
        let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
        // Offsets from Documentation/arch/x86/boot.rst and zero-page.rst.
        assert_eq!(u16_at(0x1fe), 0xaa55);
        assert_eq!(u32_at(0x202), 0x5372_6448);
        assert_eq!(bytes[0x210], 0xff);
        assert_eq!(u32_at(0x218), 0x700_0000, "ramdisk_image");
        assert_eq!(u32_at(0x21c), 0x1234, "ramdisk_size");
        assert_eq!(u32_at(0x228), CMDLINE_ADDR as u32, "cmd_line_ptr");
        assert_eq!(u32_at(0x238), 42, "cmdline_size");
        assert_eq!(bytes[0x1e8], 2, "e820_entries");
        assert_eq!(u64_at(0x2d0 + 20), 0x10_0000, "second e820 entry's address");
        assert_eq!(u64_at(0x2d0 + 28), (128 << 20) - 0x10_0000);
        assert_eq!(u32_at(0x2d0 + 36), E820_RAM);
    }

    #[test]
    fn bzimage_header_is_kept_and_our_fields_override() {
        let hdr = setup_header {
            setup_sects: 27,
            version: 0x20f,
            ..Default::default()
        };
        let p = build_boot_params(Some(hdr), 10, None, 64 << 20);
        let (sects, version, size) = (p.hdr.setup_sects, p.hdr.version, p.hdr.ramdisk_size);
        assert_eq!((sects, version, size), (27, 0x20f, 0));
        let magic = p.hdr.header;
        assert_eq!(magic, KERNEL_HDR_MAGIC);
    }
}
