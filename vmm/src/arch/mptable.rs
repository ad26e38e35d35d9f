//! The Intel MultiProcessor table: how a kernel without ACPI learns its
//! CPUs, the IOAPIC and how ISA interrupts are wired.

use super::layout::{APIC_DEFAULT_PHYS_BASE, IOAPIC_ADDR};

const MPC_SIGNATURE: &[u8; 4] = b"PCMP";
const MPF_SIGNATURE: &[u8; 4] = b"_MP_";
const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;
const MP_IRQ_INT: u8 = 0;
const MP_IRQ_NMI: u8 = 1;
const MP_IRQ_EXTINT: u8 = 3;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// ISA IRQs 0..24 routed one to one onto IOAPIC pins.
const IRQ_COUNT: u8 = 24;
/// The size of the floating pointer structure.
const MPF_SIZE: usize = 16;
const MPC_HEADER_SIZE: usize = 44;

/// Upper bound on vCPUs: APIC ids are one byte and the IOAPIC takes the next id.
pub const MAX_VCPUS: u8 = 254;

/// Builds the floating pointer + configuration table to be written at `addr`.
pub fn build_mptable(addr: u64, vcpus: u8) -> Vec<u8> {
    let ioapic_id = vcpus + 1;
    let mut entries = Vec::new();
    for cpu in 0..vcpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[MP_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&0x600u32.to_le_bytes()); // CPU signature: family 6
        entries.extend_from_slice(&0x201u32.to_le_bytes()); // features: FPU, APIC
        entries.extend_from_slice(&[0; 8]);
    }
    entries.extend_from_slice(&[MP_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[MP_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    for irq in 0..IRQ_COUNT {
        // type, irq type, flags (conforming polarity/trigger), bus 0, bus irq, apic, pin
        entries.extend_from_slice(&[MP_INTSRC, MP_IRQ_INT, 0, 0, 0, irq, ioapic_id, irq]);
    }
    entries.extend_from_slice(&[MP_LINTSRC, MP_IRQ_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[MP_LINTSRC, MP_IRQ_NMI, 0, 0, 0, 0, 0xff, 1]);
    let entry_count = (vcpus as u16) + 1 + 1 + u16::from(IRQ_COUNT) + 2;

    let table_addr = addr + MPF_SIZE as u64;
    let mut mpc = Vec::with_capacity(MPC_HEADER_SIZE + entries.len());
    mpc.extend_from_slice(MPC_SIGNATURE);
    mpc.extend_from_slice(&((MPC_HEADER_SIZE + entries.len()) as u16).to_le_bytes());
    mpc.push(4); // spec revision 1.4
    mpc.push(0); // checksum, below
    mpc.extend_from_slice(b"OPENCLAW");
    mpc.extend_from_slice(b"MICROVM     ");
    mpc.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    mpc.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    mpc.extend_from_slice(&entry_count.to_le_bytes());
    mpc.extend_from_slice(&APIC_DEFAULT_PHYS_BASE.to_le_bytes());
    mpc.extend_from_slice(&0u32.to_le_bytes()); // reserved
    debug_assert_eq!(mpc.len(), MPC_HEADER_SIZE);
    mpc.extend_from_slice(&entries);
    mpc[7] = checksum(&mpc);

    let mut mpf = Vec::with_capacity(MPF_SIZE);
    mpf.extend_from_slice(MPF_SIGNATURE);
    mpf.extend_from_slice(&(table_addr as u32).to_le_bytes());
    mpf.push(1); // length in 16-byte units
    mpf.push(4); // spec revision
    mpf.push(0); // checksum, below
    mpf.extend_from_slice(&[0; 5]); // feature bytes: 0 = a table follows
    mpf[10] = checksum(&mpf);

    mpf.extend_from_slice(&mpc);
    mpf
}

/// The byte that makes `bytes` sum to zero mod 256.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    #[test]
    fn checksums_and_signatures() {
        for vcpus in [1u8, 2, 8] {
            let t = build_mptable(0x9fc00, vcpus);
            assert_eq!(&t[..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0, "floating pointer checksum");
            assert_eq!(u32::from_le_bytes(t[4..8].try_into().expect("4")), 0x9fc10);
            let mpc = &t[16..];
            assert_eq!(&mpc[..4], b"PCMP");
            let len = u16::from_le_bytes([mpc[4], mpc[5]]) as usize;
            assert_eq!(len, mpc.len());
            assert_eq!(sum(mpc), 0, "table checksum");
        }
    }

    #[test]
    fn entries_describe_each_cpu_and_the_ioapic() {
        let vcpus = 3u8;
        let t = build_mptable(0x9fc00, vcpus);
        let mpc = &t[16..];
        let count = u16::from_le_bytes([mpc[34], mpc[35]]);
        assert_eq!(count, 3 + 1 + 1 + 24 + 2);
        let mut off = 44;
        let mut cpus = Vec::new();
        let mut ioapic = None;
        let mut intsrc = 0;
        for _ in 0..count {
            let kind = mpc[off];
            let size = if kind == MP_PROCESSOR { 20 } else { 8 };
            match kind {
                MP_PROCESSOR => cpus.push((mpc[off + 1], mpc[off + 3])),
                MP_IOAPIC => ioapic = Some(mpc[off + 1]),
                MP_INTSRC => intsrc += 1,
                _ => {}
            }
            off += size;
        }
        assert_eq!(off, mpc.len(), "entry sizes add up to the table length");
        assert_eq!(
            cpus,
            vec![(0, 3), (1, 1), (2, 1)],
            "cpu 0 is the enabled BSP"
        );
        assert_eq!(ioapic, Some(vcpus + 1));
        assert_eq!(intsrc, 24);
    }
}
