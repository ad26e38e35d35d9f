//! A simulated virtio driver for tests: walks the transport's status machine
//! the way Linux's virtio_mmio driver does, with queues built by
//! virtio-queue's mock in guest memory.

use virtio_queue::mock::MockSplitQueue;

use super::mmio::{
    MmioTransport, VirtioDevice, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK,
    STATUS_FEATURES_OK,
};
use crate::vstate::memory::GuestMemory;

pub fn read_reg<D: VirtioDevice>(t: &mut MmioTransport<D>, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

pub fn write_reg<D: VirtioDevice>(t: &mut MmioTransport<D>, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

/// Negotiates `features` (must include VERSION_1), installs one mock queue
/// per device queue, and sets DRIVER_OK. Returns the final status.
pub fn activate<D: VirtioDevice>(
    t: &mut MmioTransport<D>,
    features: u64,
    queues: &[&MockSplitQueue<'_, GuestMemory>],
) -> u32 {
    let mut status = STATUS_ACKNOWLEDGE;
    write_reg(t, 0x70, status);
    status |= STATUS_DRIVER;
    write_reg(t, 0x70, status);
    for (sel, half) in [(0u32, features as u32), (1, (features >> 32) as u32)] {
        write_reg(t, 0x24, sel);
        write_reg(t, 0x20, half);
    }
    status |= STATUS_FEATURES_OK;
    write_reg(t, 0x70, status);
    for (i, q) in queues.iter().enumerate() {
        write_reg(t, 0x30, i as u32);
        let max = read_reg(t, 0x34);
        write_reg(t, 0x38, max.min(16));
        for (low, addr) in [
            (0x80, q.desc_table_addr()),
            (0x90, q.avail_addr()),
            (0xa0, q.used_addr()),
        ] {
            write_reg(t, low, addr.0 as u32);
            write_reg(t, low + 4, (addr.0 >> 32) as u32);
        }
        write_reg(t, 0x44, 1);
    }
    status |= STATUS_DRIVER_OK;
    write_reg(t, 0x70, status);
    read_reg(t, 0x70)
}
