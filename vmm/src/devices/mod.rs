//! The guest's devices and the bus that routes port and MMIO exits to them.

pub mod boot_marker;
pub mod control;
pub mod i8042;
pub mod serial;
pub mod virtio;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub use boot_marker::{BootMarker, BOOT_MARKER_PORT};
pub use control::{
    control_queue, ControlDecoder, ControlEvent, ControlReceiver, ControlSender, CONTROL_QUEUE_MAX,
};
pub use i8042::{ResetFlag, I8042_PORT_BASE};
pub use serial::{
    CappedLog, IrqLine, SerialPort, COM1_BASE, COM1_IRQ, COM2_BASE, COM2_IRQ,
    DEFAULT_CONSOLE_LOG_MAX,
};

use virtio::mmio::MmioDevice;

type I8042 = vm_superio::I8042Device<ResetFlag>;

/// Port-I/O and MMIO devices of one VM.
pub struct Bus {
    pub console: Mutex<SerialPort>,
    pub control: Mutex<SerialPort>,
    i8042: Mutex<I8042>,
    pub marker: Arc<BootMarker>,
    reset: Arc<AtomicBool>,
    /// virtio-mmio windows, slot i at `VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_SIZE`.
    virtio: Vec<Mutex<Box<dyn MmioDevice>>>,
}

impl Bus {
    pub fn new(console: SerialPort, control: SerialPort, marker: Arc<BootMarker>) -> Bus {
        let reset = Arc::new(AtomicBool::new(false));
        Bus {
            console: Mutex::new(console),
            control: Mutex::new(control),
            i8042: Mutex::new(I8042::new(ResetFlag(reset.clone()))),
            marker,
            reset,
            virtio: Vec::new(),
        }
    }

    /// Adds a virtio-mmio device in the next slot (before the bus is shared
    /// with vCPUs); returns the slot index.
    pub fn add_virtio(&mut self, device: Box<dyn MmioDevice>) -> usize {
        self.virtio.push(Mutex::new(device));
        self.virtio.len() - 1
    }

    /// Whether the guest asked the keyboard controller to reset the CPU.
    pub fn reset_requested(&self) -> bool {
        self.reset.load(Ordering::Acquire)
    }

    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
        // Absent devices read as all ones, as on an ISA bus with nothing there.
        data.fill(0xff);
        let Some(first) = data.first_mut() else {
            return;
        };
        match port {
            COM1_BASE..=0x3ff => *first = lock(&self.console).read((port - COM1_BASE) as u8),
            COM2_BASE..=0x2ff => *first = lock(&self.control).read((port - COM2_BASE) as u8),
            0x60 | 0x64 => *first = lock(&self.i8042).read((port - I8042_PORT_BASE) as u8),
            _ => {}
        }
    }

    pub fn pio_write(&self, port: u16, data: &[u8]) {
        // `rep outsb` arrives as several bytes for one port.
        for byte in data {
            match port {
                COM1_BASE..=0x3ff => lock(&self.console).write((port - COM1_BASE) as u8, *byte),
                COM2_BASE..=0x2ff => lock(&self.control).write((port - COM2_BASE) as u8, *byte),
                0x60 | 0x64 => {
                    // The trigger only sets a flag; it cannot fail.
                    let _ = lock(&self.i8042).write((port - I8042_PORT_BASE) as u8, *byte);
                }
                BOOT_MARKER_PORT => self.marker.record(*byte),
                _ => {}
            }
        }
    }

    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        data.fill(0);
        match virtio_slot(addr).and_then(|(slot, offset)| Some((self.virtio.get(slot)?, offset))) {
            Some((dev, offset)) => lock(dev).mmio_read(offset, data),
            // The guest decides how often this happens: rate-limited.
            None => ratelog::debug!(addr, len = data.len(), "MMIO read where no device is"),
        }
    }

    pub fn mmio_write(&self, addr: u64, data: &[u8]) {
        match virtio_slot(addr).and_then(|(slot, offset)| Some((self.virtio.get(slot)?, offset))) {
            Some((dev, offset)) => lock(dev).mmio_write(offset, data),
            None => ratelog::debug!(addr, len = data.len(), "MMIO write where no device is"),
        }
    }
}

/// (slot, offset) of the virtio-mmio window `addr` falls in.
fn virtio_slot(addr: u64) -> Option<(usize, u64)> {
    use crate::arch::{VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE};
    let rel = addr.checked_sub(VIRTIO_MMIO_BASE)?;
    let slot = usize::try_from(rel / VIRTIO_MMIO_SIZE).ok()?;
    (slot < 32).then_some((slot, rel % VIRTIO_MMIO_SIZE))
}

/// A poisoned device lock means a vCPU thread panicked mid-access; the device
/// state is still the best we have, so keep going.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
