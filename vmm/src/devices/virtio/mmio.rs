//! The virtio-mmio (version 2) register interface and the device status
//! state machine a driver walks: ACKNOWLEDGE → DRIVER → FEATURES_OK →
//! DRIVER_OK, with queue setup between FEATURES_OK and DRIVER_OK.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};

use super::{VirtioInterrupt, VIRTIO_F_VERSION_1};
use crate::vstate::memory::GuestMemory;

pub const MMIO_MAGIC: u32 = 0x7472_6976; // "virt"
pub const MMIO_VERSION: u32 = 2;
pub const VENDOR_ID: u32 = 0x4f43_4c57; // "OCLW"

pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 64;
pub const STATUS_FAILED: u32 = 128;

const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG_SPACE: u64 = 0x100;

/// What a device behind the transport implements.
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    fn queue_max_sizes(&self) -> &[u16];
    /// Offered feature bits (VERSION_1 is added by the transport).
    fn features(&self) -> u64;
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Starts the device with the driver's queues (all ready and valid).
    fn activate(
        &mut self,
        mem: GuestMemory,
        queues: Vec<Queue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), String>;
    /// The driver wrote QueueNotify for queue `index`.
    fn queue_notify(&mut self, index: u32);
    /// Driver reset: stop using the queues.
    fn reset(&mut self);
}

pub struct MmioTransport<D: VirtioDevice> {
    device: D,
    mem: GuestMemory,
    interrupt: Arc<VirtioInterrupt>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<Queue>,
    activated: bool,
}

impl<D: VirtioDevice> MmioTransport<D> {
    pub fn new(device: D, mem: GuestMemory, interrupt: Arc<VirtioInterrupt>) -> MmioTransport<D> {
        let queues = fresh_queues(&device);
        MmioTransport {
            device,
            mem,
            interrupt,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues,
            activated: false,
        }
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    fn offered_features(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        // Queue setup is only allowed before the device runs.
        if self.status & STATUS_DRIVER_OK != 0 {
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        if data.len() != 4 {
            data.fill(0);
            return;
        }
        let value = match offset {
            REG_MAGIC => MMIO_MAGIC,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => match self.queues.get(self.queue_sel as usize) {
                // The device owns the live queues once activated; all were ready.
                Some(_) if self.activated => 1,
                Some(q) => u32::from(q.ready()),
                None => 0,
            },
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status,
            REG_CONFIG_GENERATION => 0,
            _ => 0,
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            return; // our devices' config space is read-only
        }
        let Ok(raw) = <[u8; 4]>::try_from(data) else {
            return;
        };
        let value = u32::from_le_bytes(raw);
        let features_phase =
            self.status & STATUS_DRIVER != 0 && self.status & STATUS_FEATURES_OK == 0;
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            REG_DRIVER_FEATURES if features_phase => match self.driver_features_sel {
                0 => {
                    self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value)
                }
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
                }
                _ => {}
            },
            REG_QUEUE_SEL => self.queue_sel = value,
            REG_QUEUE_NUM => {
                if let Some(q) = self.selected_queue() {
                    q.set_size(value as u16);
                }
            }
            REG_QUEUE_READY => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(value == 1);
                }
            }
            REG_QUEUE_DESC_LOW => self.with_queue(|q| q.set_desc_table_address(Some(value), None)),
            REG_QUEUE_DESC_HIGH => self.with_queue(|q| q.set_desc_table_address(None, Some(value))),
            REG_QUEUE_DRIVER_LOW => {
                self.with_queue(|q| q.set_avail_ring_address(Some(value), None))
            }
            REG_QUEUE_DRIVER_HIGH => {
                self.with_queue(|q| q.set_avail_ring_address(None, Some(value)))
            }
            REG_QUEUE_DEVICE_LOW => self.with_queue(|q| q.set_used_ring_address(Some(value), None)),
            REG_QUEUE_DEVICE_HIGH => {
                self.with_queue(|q| q.set_used_ring_address(None, Some(value)))
            }
            REG_QUEUE_NOTIFY if self.activated => self.device.queue_notify(value),
            REG_INTERRUPT_ACK => self.interrupt.ack(value),
            REG_STATUS => self.set_status(value),
            _ => {}
        }
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if let Some(q) = self.selected_queue() {
            f(q);
        }
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let new_bits = value & !self.status;
        // The driver may only add bits, in order.
        if value & self.status != self.status {
            self.status |= STATUS_FAILED;
            return;
        }
        if new_bits & STATUS_FEATURES_OK != 0 {
            let offered = self.offered_features();
            let ok = self.driver_features & !offered == 0
                && self.driver_features & VIRTIO_F_VERSION_1 != 0;
            if !ok {
                // Not setting FEATURES_OK is how the device refuses (spec 3.1.1).
                self.status = value & !STATUS_FEATURES_OK;
                return;
            }
        }
        if new_bits & STATUS_DRIVER_OK != 0 {
            if self.status & STATUS_FEATURES_OK == 0 {
                self.status |= STATUS_FAILED;
                return;
            }
            let mem = &self.mem;
            if !self.queues.iter().all(|q| q.ready() && q.is_valid(mem)) {
                self.status = value | STATUS_NEEDS_RESET;
                return;
            }
            // The device takes the configured queues; the transport keeps
            // fresh ones for after a reset.
            let queues = std::mem::replace(&mut self.queues, fresh_queues(&self.device));
            match self
                .device
                .activate(self.mem.clone(), queues, self.interrupt.clone())
            {
                Ok(()) => self.activated = true,
                Err(e) => {
                    ratelog::warn!(error = %e, "virtio device activation failed");
                    self.status = value | STATUS_NEEDS_RESET;
                    return;
                }
            }
        }
        self.status = value;
    }

    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
            self.activated = false;
        }
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.queues = fresh_queues(&self.device);
        self.interrupt.ack(u32::MAX);
    }
}

fn fresh_queues<D: VirtioDevice>(device: &D) -> Vec<Queue> {
    device
        .queue_max_sizes()
        .iter()
        .map(|max| Queue::new(*max).expect("device queue sizes are powers of two"))
        .collect()
}

/// A device window on the MMIO bus, whatever the device behind it.
pub trait MmioDevice: Send {
    fn mmio_read(&mut self, offset: u64, data: &mut [u8]);
    fn mmio_write(&mut self, offset: u64, data: &[u8]);
}

impl<D: VirtioDevice> MmioDevice for MmioTransport<D> {
    fn mmio_read(&mut self, offset: u64, data: &mut [u8]) {
        self.read(offset, data);
    }

    fn mmio_write(&mut self, offset: u64, data: &[u8]) {
        self.write(offset, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::IrqLine;
    use crate::vstate::memory::create_guest_memory;
    use std::sync::Mutex;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    /// A device that records what the transport asks of it.
    #[derive(Default)]
    struct Recorder {
        log: Arc<Mutex<Vec<String>>>,
    }

    impl VirtioDevice for Recorder {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 16]
        }
        fn features(&self) -> u64 {
            1 << 5
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn activate(
            &mut self,
            _: GuestMemory,
            queues: Vec<Queue>,
            _: Arc<VirtioInterrupt>,
        ) -> Result<(), String> {
            self.log
                .lock()
                .expect("log")
                .push(format!("activate {}", queues.len()));
            Ok(())
        }
        fn queue_notify(&mut self, index: u32) {
            self.log
                .lock()
                .expect("log")
                .push(format!("notify {index}"));
        }
        fn reset(&mut self) {
            self.log.lock().expect("log").push("reset".into());
        }
    }

    fn rd(t: &mut MmioTransport<Recorder>, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(t: &mut MmioTransport<Recorder>, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn transport() -> (
        MmioTransport<Recorder>,
        Arc<Mutex<Vec<String>>>,
        GuestMemory,
    ) {
        let mem = create_guest_memory(16).expect("memory");
        let rec = Recorder::default();
        let log = rec.log.clone();
        let irq = Arc::new(VirtioInterrupt::new(IrqLine::detached()));
        (MmioTransport::new(rec, mem.clone(), irq), log, mem)
    }

    /// What Linux's virtio_mmio driver does, step by step.
    fn drive_to_ok(t: &mut MmioTransport<Recorder>, mem: &GuestMemory) {
        wr(t, REG_STATUS, STATUS_ACKNOWLEDGE);
        wr(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(t, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(rd(t, REG_DEVICE_FEATURES), 1, "VERSION_1 (bit 32) offered");
        wr(t, REG_DEVICE_FEATURES_SEL, 0);
        assert_eq!(rd(t, REG_DEVICE_FEATURES), 1 << 5);
        wr(t, REG_DRIVER_FEATURES_SEL, 0);
        wr(t, REG_DRIVER_FEATURES, 1 << 5);
        wr(t, REG_DRIVER_FEATURES_SEL, 1);
        wr(t, REG_DRIVER_FEATURES, 1);
        wr(
            t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_ne!(rd(t, REG_STATUS) & STATUS_FEATURES_OK, 0);
        for (i, base) in [(0u32, 0x10_0000u64), (1, 0x20_0000)] {
            let mock = MockSplitQueue::create(mem, GuestAddress(base), 16);
            wr(t, REG_QUEUE_SEL, i);
            assert_eq!(rd(t, REG_QUEUE_NUM_MAX), 16);
            wr(t, REG_QUEUE_NUM, 16);
            wr(t, REG_QUEUE_DESC_LOW, mock.desc_table_addr().0 as u32);
            wr(t, REG_QUEUE_DESC_HIGH, 0);
            wr(t, REG_QUEUE_DRIVER_LOW, mock.avail_addr().0 as u32);
            wr(t, REG_QUEUE_DRIVER_HIGH, 0);
            wr(t, REG_QUEUE_DEVICE_LOW, mock.used_addr().0 as u32);
            wr(t, REG_QUEUE_DEVICE_HIGH, 0);
            wr(t, REG_QUEUE_READY, 1);
            assert_eq!(rd(t, REG_QUEUE_READY), 1);
        }
        wr(
            t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
    }

    #[test]
    fn identity_registers() {
        let (mut t, _, _) = transport();
        assert_eq!(rd(&mut t, REG_MAGIC), 0x7472_6976);
        assert_eq!(rd(&mut t, REG_VERSION), 2);
        assert_eq!(rd(&mut t, REG_DEVICE_ID), 42);
        assert_eq!(rd(&mut t, REG_VENDOR_ID), VENDOR_ID);
        let mut cfg = [0u8; 2];
        t.read(CONFIG_SPACE + 3, &mut cfg);
        assert_eq!(cfg, [3, 3]);
    }

    #[test]
    fn a_well_behaved_driver_activates_the_device_and_notifies() {
        let (mut t, log, mem) = transport();
        wr(&mut t, REG_QUEUE_NOTIFY, 0);
        assert!(
            log.lock().expect("log").is_empty(),
            "no notify before activation"
        );
        drive_to_ok(&mut t, &mem);
        assert_eq!(t.status() & STATUS_DRIVER_OK, STATUS_DRIVER_OK);
        wr(&mut t, REG_QUEUE_NOTIFY, 1);
        assert_eq!(*log.lock().expect("log"), vec!["activate 2", "notify 1"]);
        // Queue registers are frozen once running.
        wr(&mut t, REG_QUEUE_SEL, 0);
        wr(&mut t, REG_QUEUE_READY, 0);
        assert_eq!(rd(&mut t, REG_QUEUE_READY), 1);
        // Reset returns everything to the start.
        wr(&mut t, REG_STATUS, 0);
        assert_eq!(rd(&mut t, REG_STATUS), 0);
        assert_eq!(rd(&mut t, REG_QUEUE_READY), 0);
        assert_eq!(
            log.lock().expect("log").last().map(String::as_str),
            Some("reset")
        );
    }

    #[test]
    fn features_the_device_did_not_offer_are_refused() {
        let (mut t, _, _) = transport();
        wr(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(&mut t, REG_DRIVER_FEATURES_SEL, 0);
        wr(&mut t, REG_DRIVER_FEATURES, 1 << 6); // not offered
        wr(&mut t, REG_DRIVER_FEATURES_SEL, 1);
        wr(&mut t, REG_DRIVER_FEATURES, 1);
        wr(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_eq!(rd(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn legacy_drivers_without_version_1_are_refused() {
        let (mut t, _, _) = transport();
        wr(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(&mut t, REG_DRIVER_FEATURES, 1 << 5);
        wr(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_eq!(rd(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn driver_ok_without_valid_queues_needs_reset() {
        let (mut t, log, _) = transport();
        wr(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(&mut t, REG_DRIVER_FEATURES_SEL, 1);
        wr(&mut t, REG_DRIVER_FEATURES, 1);
        wr(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        wr(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        assert_ne!(rd(&mut t, REG_STATUS) & STATUS_NEEDS_RESET, 0);
        assert!(log.lock().expect("log").is_empty(), "never activated");
    }

    #[test]
    fn skipping_steps_fails_the_device() {
        let (mut t, _, _) = transport();
        wr(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK,
        );
        assert_ne!(rd(&mut t, REG_STATUS) & STATUS_FAILED, 0);
        let (mut t, _, _) = transport();
        wr(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE); // clearing a bit
        assert_ne!(rd(&mut t, REG_STATUS) & STATUS_FAILED, 0);
    }

    #[test]
    fn interrupt_status_and_ack() {
        let (mut t, _, _) = transport();
        t.interrupt.signal_used();
        assert_eq!(rd(&mut t, REG_INTERRUPT_STATUS), 1);
        wr(&mut t, REG_INTERRUPT_ACK, 1);
        assert_eq!(rd(&mut t, REG_INTERRUPT_STATUS), 0);
    }
}
