//! virtio-console as the control channel's fast path: the guest init writes
//! its frames to /dev/hvc0 and each `write()` reaches us as one queue
//! notification instead of one VM exit per byte (COM2). The other way the
//! host sends single bytes (the stop request) through [`ConsoleInput`]:
//! held until the driver posts receive buffers, then copied into them.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

use super::{VirtioDevice, VirtioInterrupt};
use crate::vstate::memory::GuestMemory;

pub const DEVICE_TYPE_CONSOLE: u32 = 3;
const RX_QUEUE: u32 = 0;
const TX_QUEUE: u32 = 1;
const QUEUE_SIZE: u16 = 64;
/// Host bytes waiting for receive buffers are capped: the host only ever
/// sends a stop request or two.
const MAX_PENDING: usize = 4096;
/// The longest TX descriptor forwarded: one whole control frame (kind,
/// 16-bit length, payload). hvc sends at most a page per buffer, so a
/// longer one is no driver's; it is dropped (answered, nothing forwarded),
/// as one outside guest RAM is. The guest could write any bytes to the
/// decoder anyway, so missing ones give it nothing new.
const MAX_DESC_LEN: u32 = 3 + u16::MAX as u32;
/// Bytes forwarded per TX notify, checked before each chain (so at most
/// this plus one chain, itself at most QUEUE_SIZE x MAX_DESC_LEN): the copy
/// runs on the vCPU thread, which `kill()` joins. Chains past it stay in
/// the ring and go on the next notify. Linux's hvc waits for each buffer to
/// come back before sending the next, so a real driver has one page
/// outstanding; a full ring of pages still fits.
const TX_BUDGET: u64 = QUEUE_SIZE as u64 * 4096;
/// Copies go through a buffer of this size, whatever a descriptor says.
const COPY_CHUNK: usize = 4096;

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
        let mut forwarded = 0u64;
        while forwarded < TX_BUDGET {
            let Some(chain) = active.tx.pop_descriptor_chain(&mem) else {
                break;
            };
            let head = chain.head_index();
            // INDIRECT_DESC is not offered, so a chain has at most
            // QUEUE_SIZE descriptors; an indirect table (which virtio-queue
            // follows anyway) could hold 65535. The rest is not read.
            for desc in chain.take(usize::from(QUEUE_SIZE)) {
                if desc.is_write_only() {
                    continue;
                }
                if desc.len() > MAX_DESC_LEN {
                    ratelog::warn!(
                        len = desc.len(),
                        "virtio-console: TX descriptor longer than a control frame dropped"
                    );
                    continue;
                }
                forwarded += forward(&mem, desc.addr(), desc.len(), &mut self.out);
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

/// Copies `len` bytes of guest memory at `addr` to `out` through a fixed
/// buffer, or nothing when the range is not all guest RAM. Returns the
/// bytes copied.
fn forward(mem: &GuestMemory, addr: GuestAddress, len: u32, out: &mut dyn Write) -> u64 {
    let len = len as usize;
    if !vm_memory::GuestMemoryBackend::check_range(mem, addr, len) {
        return 0;
    }
    let mut buf = [0u8; COPY_CHUNK];
    let mut done = 0usize;
    while done < len {
        let n = (len - done).min(COPY_CHUNK);
        let Some(at) = addr.checked_add(done as u64) else {
            break;
        };
        if mem.read_slice(&mut buf[..n], at).is_err() {
            break;
        }
        // A failing sink (the decoder never fails) loses the bytes, as
        // before; the guest is not stopped for it.
        let _ = out.write_all(&buf[..n]);
        done += n;
    }
    done as u64
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

    /// A TX chain of `per_chain` descriptors (readable, linked) starting at
    /// table index `first`, each `len` bytes at `addr`.
    fn tx_chain(first: u16, per_chain: u16, addr: u64, len: u32) -> Vec<RawDescriptor> {
        (0..per_chain)
            .map(|i| {
                let last = i + 1 == per_chain;
                let (flags, next) = if last { (0, 0) } else { (1, first + i + 1) };
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
            })
            .collect()
    }

    /// Inner half of the next test, run in a child process with a 2 GiB
    /// address-space limit (ignored when run directly).
    #[test]
    #[ignore = "run by console_tx_descriptor_outside_guest_memory_is_refused_before_allocating"]
    fn console_tx_descriptor_outside_guest_memory_is_refused_before_allocating_inner() {
        let mem = create_guest_memory(16).expect("memory");
        let rxq = MockSplitQueue::create(&mem, GuestAddress(0x10_0000), 16);
        let txq = MockSplitQueue::create(&mem, GuestAddress(0x20_0000), 16);
        // A 4 GiB descriptor at an address that is not guest RAM at all.
        let chains = [
            RawDescriptor::from(SplitDescriptor::new(0x1_0000_0000, u32::MAX - 15, 0, 0)),
            RawDescriptor::from(SplitDescriptor::new(0x30_0000, 1, 0, 0)),
        ];
        mem.write_slice(b"x", GuestAddress(0x30_0000))
            .expect("write");
        txq.add_desc_chains(&chains, 0).expect("chains");
        let sink = Sink::default();
        let irq = Arc::new(VirtioInterrupt::new(IrqLine::detached()));
        let mut t = MmioTransport::new(Console::new(Box::new(sink.clone())), mem.clone(), irq);
        let status = activate(&mut t, VIRTIO_F_VERSION_1, &[&rxq, &txq]);
        assert_ne!(status & STATUS_DRIVER_OK, 0);
        write_reg(&mut t, 0x50, TX_QUEUE);
        assert_eq!(txq.used().idx().load(), 2, "both chains answered");
        assert_eq!(&*sink.0.lock().expect("sink"), b"x");
    }

    /// A guest-chosen descriptor length (up to 4 GiB) is never allocated:
    /// where the host cannot back it (RLIMIT_AS, overcommit_memory=2, a
    /// small host) that would abort the whole VMM process. The child runs
    /// with a 2 GiB address-space limit; the chain after the bad one still
    /// arrives.
    #[test]
    fn console_tx_descriptor_outside_guest_memory_is_refused_before_allocating() {
        let exe = std::env::current_exe().expect("test binary");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(
                "ulimit -v 2097152 && exec \"$0\" --exact --ignored --test-threads=1 \
                  devices::virtio::console::tests::console_tx_descriptor_outside_guest_memory_is_refused_before_allocating_inner",
            )
            .arg(exe)
            .output()
            .expect("spawn");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "the VMM process died on a guest-chosen descriptor length: {:?}\n{}\n{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A descriptor longer than the largest control frame is dropped, not
    /// forwarded, even inside guest RAM; one of exactly that length (a
    /// whole frame) still goes through, and so does the chain after it.
    #[test]
    fn console_tx_descriptor_longer_than_a_control_frame_is_dropped() {
        let mem = create_guest_memory(16).expect("memory");
        let rxq = MockSplitQueue::create(&mem, GuestAddress(0x10_0000), 16);
        let txq = MockSplitQueue::create(&mem, GuestAddress(0x20_0000), 16);
        let frame = vec![b'f'; MAX_DESC_LEN as usize];
        mem.write_slice(&vec![b'x'; 8 << 20], GuestAddress(0x40_0000))
            .expect("write");
        mem.write_slice(&frame, GuestAddress(0x30_0000))
            .expect("write");
        let chains = [
            RawDescriptor::from(SplitDescriptor::new(0x40_0000, MAX_DESC_LEN + 1, 0, 0)),
            RawDescriptor::from(SplitDescriptor::new(0x30_0000, MAX_DESC_LEN, 0, 0)),
        ];
        txq.add_desc_chains(&chains, 0).expect("chains");
        let sink = Sink::default();
        let irq = Arc::new(VirtioInterrupt::new(IrqLine::detached()));
        let mut t = MmioTransport::new(Console::new(Box::new(sink.clone())), mem.clone(), irq);
        let status = activate(&mut t, VIRTIO_F_VERSION_1, &[&rxq, &txq]);
        assert_ne!(status & STATUS_DRIVER_OK, 0);
        write_reg(&mut t, 0x50, TX_QUEUE);
        assert_eq!(txq.used().idx().load(), 2, "both chains answered");
        assert!(
            *sink.0.lock().expect("sink") == frame,
            "only the whole-frame descriptor was forwarded"
        );
    }

    /// One notify forwards at most its budget (plus the chain that crosses
    /// it), so a guest cannot keep the vCPU thread copying for minutes
    /// (`kill()` joins it); the chains left in the ring go out on the next
    /// notifies, each once and in order.
    #[test]
    fn console_tx_notify_forwards_at_most_its_budget_and_leaves_the_rest_for_the_next() {
        const DESC: u32 = 64 << 10;
        const PER_CHAIN: u16 = 2;
        const CHAINS: u16 = 8; // 16 descriptors: the test queues' size
        let chain_bytes = u64::from(DESC) * u64::from(PER_CHAIN);
        assert_eq!(chain_bytes * 2, TX_BUDGET, "two chains per notify");
        let mem = create_guest_memory(16).expect("memory");
        let rxq = MockSplitQueue::create(&mem, GuestAddress(0x10_0000), 16);
        let txq = MockSplitQueue::create(&mem, GuestAddress(0x20_0000), 16);
        // Chain c repeats one 64 KiB region filled with byte c.
        for c in 0..CHAINS {
            let addr = 0x40_0000 + u64::from(c) * u64::from(DESC);
            mem.write_slice(&vec![c as u8; DESC as usize], GuestAddress(addr))
                .expect("write");
            let first = c * PER_CHAIN;
            txq.add_desc_chains(&tx_chain(first, PER_CHAIN, addr, DESC), first)
                .expect("chain");
        }
        let sink = Sink::default();
        let irq = Arc::new(VirtioInterrupt::new(IrqLine::detached()));
        let mut t = MmioTransport::new(Console::new(Box::new(sink.clone())), mem.clone(), irq);
        let status = activate(&mut t, VIRTIO_F_VERSION_1, &[&rxq, &txq]);
        assert_ne!(status & STATUS_DRIVER_OK, 0);
        for notify in 1..=4u16 {
            write_reg(&mut t, 0x50, TX_QUEUE);
            assert_eq!(txq.used().idx().load(), 2 * notify, "two chains per notify");
            let got = sink.0.lock().expect("sink").len() as u64;
            assert_eq!(got, u64::from(2 * notify) * chain_bytes);
        }
        write_reg(&mut t, 0x50, TX_QUEUE);
        assert_eq!(txq.used().idx().load(), CHAINS, "nothing answered twice");
        let got = sink.0.lock().expect("sink");
        let expected: Vec<u8> = (0..CHAINS)
            .flat_map(|c| vec![c as u8; chain_bytes as usize])
            .collect();
        assert!(*got == expected, "every chain once, in order");
    }
}
