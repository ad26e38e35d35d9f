//! virtio over MMIO: the transport's register state machine (`mmio`) and the
//! devices behind it (`console`, `net`, `block`).

pub mod block;
pub mod console;
pub mod mmio;
pub mod net;
#[cfg(test)]
pub mod test_utils;

use std::sync::atomic::{AtomicU32, Ordering};

use super::IrqLine;

pub use mmio::{MmioTransport, VirtioDevice};

/// Feature bit every device we offer requires: the virtio 1.x ("modern") layout.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
pub const DEVICE_TYPE_NET: u32 = 1;
pub const DEVICE_TYPE_BLOCK: u32 = 2;
/// InterruptStatus bit: a used ring was updated.
pub const INT_USED_RING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// A device's interrupt: the InterruptStatus bits and the irqfd behind them.
pub struct VirtioInterrupt {
    status: AtomicU32,
    line: IrqLine,
}

impl VirtioInterrupt {
    pub fn new(line: IrqLine) -> VirtioInterrupt {
        VirtioInterrupt {
            status: AtomicU32::new(0),
            line,
        }
    }

    /// Tells the driver that used buffers are waiting.
    pub fn signal_used(&self) {
        self.status.fetch_or(INT_USED_RING, Ordering::AcqRel);
        if let Err(e) = vm_superio::Trigger::trigger(&self.line) {
            ratelog::debug!(error = %e, "virtio interrupt failed");
        }
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire)
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::AcqRel);
    }
}
