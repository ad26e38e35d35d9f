//! virtio-console as the control channel's fast path: the guest init writes
//! its frames to /dev/hvc0 and each `write()` reaches us as one queue
//! notification instead of one VM exit per byte (COM2). The other way the
//! host sends single bytes (the stop request) through [`ConsoleInput`]:
//! held until the driver posts receive buffers, then copied into them.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;

use super::{VirtioDevice, VirtioInterrupt};
use crate::vstate::memory::GuestMemory;

pub const DEVICE_TYPE_CONSOLE: u32 = 3;
const RX_QUEUE: u32 = 0;
const TX_QUEUE: u32 = 1;
const QUEUE_SIZE: u16 = 64;
/// Host bytes waiting for receive buffers are capped: the host only ever
/// sends a stop request or two.
const MAX_PENDING: usize = 4096;

struct Active {
    mem: GuestMemory,
    tx: Queue,
    interrupt: Arc<VirtioInterrupt>,
}

/// The receive side, shared with the host's [`ConsoleInput`] handle.
#[derive(Default)]
struct Receive {
    pending: VecDeque<u8>,
    queue: Option<(GuestMemory, Queue, Arc<VirtioInterrupt>)>,
}

impl Receive {
    /// Copies pending bytes into the driver's receive buffers.
    fn deliver(&mut self) {
        let Some((mem, queue, interrupt)) = self.queue.as_mut() else {
            return;
        };
        let mem = mem.clone();
        let mut used_any = false;
        while !self.pending.is_empty() {
            let Some(chain) = queue.pop_descriptor_chain(&mem) else {
                break;
            };
            let head = chain.head_index();
            let mut written = 0u32;
            for desc in chain.filter(|d| d.is_write_only()) {
                let n = (desc.len() as usize).min(self.pending.len());
                let bytes: Vec<u8> = self.pending.iter().take(n).copied().collect();
                if mem.write_slice(&bytes, desc.addr()).is_err() {
                    break;
                }
                self.pending.drain(..n);
                written += n as u32;
                if self.pending.is_empty() {
                    break;
                }
            }
            if queue.add_used(&mem, head, written).is_err() {
                break;
            }
            used_any = true;
        }
        if used_any && queue.needs_notification(&mem).unwrap_or(true) {
            interrupt.signal_used();
        }
    }
}

/// Sends bytes to the guest over the console (its receive queue).
#[derive(Clone, Default)]
pub struct ConsoleInput(Arc<Mutex<Receive>>);

impl ConsoleInput {
    pub fn send(&self, bytes: &[u8]) {
        let mut rx = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let room = MAX_PENDING.saturating_sub(rx.pending.len());
        rx.pending.extend(bytes.iter().take(room));
        rx.deliver();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Receive> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct Console {
    out: Box<dyn Write + Send>,
    active: Option<Active>,
    input: ConsoleInput,
}

impl Console {
    /// Bytes the guest sends go to `out` (the control decoder).
    pub fn new(out: Box<dyn Write + Send>) -> Console {
        Console {
            out,
            active: None,
            input: ConsoleInput::default(),
        }
    }

    /// The handle the host sends bytes to the guest with.
    pub fn input(&self) -> ConsoleInput {
        self.input.clone()
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE_CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        queues: Vec<Queue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), String> {
        let mut queues = queues.into_iter();
        let (Some(rx), Some(tx)) = (queues.next(), queues.next()) else {
            return Err("virtio-console needs two queues".into());
        };
        {
            let mut receive = self.input.lock();
            receive.queue = Some((mem.clone(), rx, interrupt.clone()));
            receive.deliver();
        }
        self.active = Some(Active { mem, tx, interrupt });
        Ok(())
    }

    fn queue_notify(&mut self, index: u32) {
        if index == RX_QUEUE {
            // New receive buffers: anything waiting goes now.
            self.input.lock().deliver();
            return;
        }
        if index != TX_QUEUE {
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = active.mem.clone();
        let mut used_any = false;
        while let Some(chain) = active.tx.pop_descriptor_chain(&mem) {
            let head = chain.head_index();
            for desc in chain {
                if desc.is_write_only() {
                    continue;
                }
                let mut buf = vec![0u8; desc.len() as usize];
                if mem.read_slice(&mut buf, desc.addr()).is_ok() {
                    let _ = self.out.write_all(&buf);
                }
            }
            if active.tx.add_used(&mem, head, 0).is_err() {
                break;
            }
            used_any = true;
        }
        if used_any && active.tx.needs_notification(&mem).unwrap_or(true) {
            active.interrupt.signal_used();
        }
    }

    fn reset(&mut self) {
        self.active = None;
        self.input.lock().queue = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::mmio::{MmioTransport, STATUS_DRIVER_OK};
    use crate::devices::virtio::test_utils::{activate, write_reg};
    use crate::devices::virtio::VIRTIO_F_VERSION_1;
    use crate::devices::IrqLine;
    use crate::vstate::memory::create_guest_memory;
    use std::sync::Mutex;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("sink").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmitted_chains_reach_the_sink_in_order() {
        let mem = create_guest_memory(16).expect("memory");
        let rxq = MockSplitQueue::create(&mem, GuestAddress(0x10_0000), 16);
        let txq = MockSplitQueue::create(&mem, GuestAddress(0x20_0000), 16);
        mem.write_slice(b"hello ", GuestAddress(0x30_0000))
            .expect("write");
        mem.write_slice(b"world", GuestAddress(0x30_1000))
            .expect("write");
        let chains = [
            RawDescriptor::from(SplitDescriptor::new(0x30_0000, 6, 0, 0)),
            RawDescriptor::from(SplitDescriptor::new(0x30_1000, 5, 0, 0)),
        ];
        txq.add_desc_chains(&chains, 0).expect("chains");
        let sink = Sink::default();
        let irq = Arc::new(VirtioInterrupt::new(IrqLine::detached()));
        let mut t = MmioTransport::new(
            Console::new(Box::new(sink.clone())),
            mem.clone(),
            irq.clone(),
        );
        write_reg(&mut t, 0x50, TX_QUEUE);
        assert!(
            sink.0.lock().expect("sink").is_empty(),
            "nothing before activation"
        );
        let status = activate(&mut t, VIRTIO_F_VERSION_1, &[&rxq, &txq]);
        assert_ne!(status & STATUS_DRIVER_OK, 0);
        write_reg(&mut t, 0x50, TX_QUEUE);
        assert_eq!(&*sink.0.lock().expect("sink"), b"hello world");
        assert_eq!(txq.used().idx().load(), 2);
        assert_eq!(irq.status() & 1, 1);
    }

    #[test]
    fn host_bytes_wait_for_receive_buffers_then_arrive() {
        let mem = create_guest_memory(16).expect("memory");
        let rxq = MockSplitQueue::create(&mem, GuestAddress(0x10_0000), 16);
        let txq = MockSplitQueue::create(&mem, GuestAddress(0x20_0000), 16);
        let irq = Arc::new(VirtioInterrupt::new(IrqLine::detached()));
        let console = Console::new(Box::new(Sink::default()));
        let input = console.input();
        input.send(b"S"); // before the driver is there: held
        let mut t = MmioTransport::new(console, mem.clone(), irq.clone());
        let status = activate(&mut t, VIRTIO_F_VERSION_1, &[&rxq, &txq]);
        assert_ne!(status & STATUS_DRIVER_OK, 0);
        assert_eq!(rxq.used().idx().load(), 0, "no receive buffer yet");
        // The driver posts two 1-byte buffers and notifies.
        let bufs = [
            RawDescriptor::from(SplitDescriptor::new(0x30_0000, 1, 2, 0)),
            RawDescriptor::from(SplitDescriptor::new(0x30_1000, 1, 2, 0)),
        ];
        rxq.add_desc_chains(&bufs, 0).expect("rx buffers");
        write_reg(&mut t, 0x50, RX_QUEUE);
        assert_eq!(
            rxq.used().idx().load(),
            1,
            "the held byte went into one buffer"
        );
        let mut got = [0u8; 1];
        mem.read_slice(&mut got, GuestAddress(0x30_0000))
            .expect("read");
        assert_eq!(&got, b"S");
        // Later bytes go straight into the buffer still posted.
        input.send(b"T");
        assert_eq!(rxq.used().idx().load(), 2);
        mem.read_slice(&mut got, GuestAddress(0x30_1000))
            .expect("read");
        assert_eq!(&got, b"T");
        assert_eq!(irq.status() & 1, 1);
    }
}
