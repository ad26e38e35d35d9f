//! The virtio-net device: TX frames go from the guest's transmit queue to the
//! tap when the driver notifies; an RX thread moves frames from the tap into
//! the guest's receive buffers. No offloads: every frame is a plain Ethernet
//! frame behind a zeroed 12-byte virtio-net header.

use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::tap::{Tap, VNET_HDR_LEN};
use crate::devices::virtio::{VirtioDevice, VirtioInterrupt, DEVICE_TYPE_NET};
use crate::vstate::memory::GuestMemory;

pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
const RX_QUEUE: usize = 0;
const TX_QUEUE: usize = 1;
const QUEUE_SIZE: u16 = 256;
/// Largest frame we move: header + 1514-byte Ethernet frame, with VLAN room.
const MAX_FRAME: usize = VNET_HDR_LEN + 1518;

/// The NIC as the session sees it.
#[derive(Debug)]
pub struct NetConfig {
    /// The tap, already open: the caller creates it inside the session's
    /// network namespace (and gives it an address there if it needs one).
    pub tap: Tap,
    pub mac: [u8; 6],
}

/// Queues and memory once the driver activated the device.
struct Active {
    mem: GuestMemory,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<VirtioInterrupt>,
    /// A frame read from the tap that did not fit anywhere yet.
    pending: Option<Vec<u8>>,
}

pub struct Net {
    tap: Arc<Tap>,
    mac: [u8; 6],
    active: Arc<Mutex<Option<Active>>>,
    /// Wakes the RX thread: the driver added receive buffers.
    rx_kick: Arc<EventFd>,
    stop: Arc<EventFd>,
    rx_thread: Option<JoinHandle<()>>,
}

impl Net {
    pub fn new(config: NetConfig) -> Net {
        Net {
            tap: Arc::new(config.tap),
            mac: config.mac,
            active: Arc::new(Mutex::new(None)),
            rx_kick: Arc::new(new_eventfd()),
            stop: Arc::new(new_eventfd()),
            rx_thread: None,
        }
    }

    fn stop_rx_thread(&mut self) {
        if let Some(t) = self.rx_thread.take() {
            let _ = self.stop.write(1);
            let _ = t.join();
            let _ = self.stop.read();
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.stop_rx_thread();
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_NET_F_MAC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_net_config starts with the MAC.
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.mac.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        queues: Vec<Queue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), String> {
        let mut queues = queues.into_iter();
        let (Some(rx), Some(tx)) = (queues.next(), queues.next()) else {
            return Err("virtio-net needs two queues".into());
        };
        *lock(&self.active) = Some(Active {
            mem,
            rx,
            tx,
            interrupt,
            pending: None,
        });
        let (tap, active, kick, stop) = (
            self.tap.clone(),
            self.active.clone(),
            self.rx_kick.clone(),
            self.stop.clone(),
        );
        let thread = std::thread::Builder::new()
            .name("virtio-net-rx".into())
            .spawn(move || rx_loop(&tap, &active, &kick, &stop))
            .map_err(|e| format!("RX thread: {e}"))?;
        self.rx_thread = Some(thread);
        Ok(())
    }

    fn queue_notify(&mut self, index: u32) {
        match index as usize {
            RX_QUEUE => {
                let _ = self.rx_kick.write(1);
            }
            TX_QUEUE => {
                let mut guard = lock(&self.active);
                if let Some(active) = guard.as_mut() {
                    process_tx(active, &self.tap);
                }
            }
            _ => {}
        }
    }

    fn reset(&mut self) {
        self.stop_rx_thread();
        *lock(&self.active) = None;
    }
}

fn new_eventfd() -> EventFd {
    EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
        .expect("eventfd: only fails when the process is out of fds")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends every frame the driver queued for transmission.
fn process_tx(active: &mut Active, tap: &Tap) {
    let mem = active.mem.clone();
    let mut used_any = false;
    while let Some(chain) = active.tx.pop_descriptor_chain(&mem) {
        let head = chain.head_index();
        let mut frame = Vec::with_capacity(MAX_FRAME);
        for desc in chain {
            if desc.is_write_only() || frame.len() + desc.len() as usize > 65_562 {
                break;
            }
            let start = frame.len();
            frame.resize(start + desc.len() as usize, 0);
            if mem.read_slice(&mut frame[start..], desc.addr()).is_err() {
                frame.clear();
                break;
            }
        }
        if frame.len() > VNET_HDR_LEN {
            // No offload was offered, so the header's checksum and GSO
            // fields mean nothing here (spec 5.1.6.2.2: the device ignores
            // what it does not know); the IFF_VNET_HDR tap would act on them
            // in the host kernel. The frame goes on behind a zeroed header.
            frame[..VNET_HDR_LEN].fill(0);
            // A full tap (peer not reading) drops the frame, like a wire would.
            if let Err(e) = tap.write_frame(&frame) {
                ratelog::debug!(error = %e, "tap write dropped a frame");
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

/// Copies frames from the tap into receive buffers until either runs out.
/// Returns whether a frame is waiting for buffers.
fn process_rx(active: &mut Active, tap: &Tap) -> bool {
    let mem = active.mem.clone();
    let mut used_any = false;
    loop {
        if active.pending.is_none() {
            let mut buf = vec![0u8; 65_562];
            match tap.read_frame(&mut buf) {
                Ok(n) if n > 0 => {
                    buf.truncate(n);
                    // num_buffers = 1 (no mergeable buffers negotiated).
                    if buf.len() >= VNET_HDR_LEN {
                        buf[10] = 1;
                        buf[11] = 0;
                    }
                    active.pending = Some(buf);
                }
                _ => break,
            }
        }
        let Some(chain) = active.rx.pop_descriptor_chain(&mem) else {
            break;
        };
        let head = chain.head_index();
        let frame = active.pending.take().unwrap_or_default();
        let mut written = 0usize;
        for desc in chain {
            if !desc.is_write_only() || written >= frame.len() {
                continue;
            }
            let n = (desc.len() as usize).min(frame.len() - written);
            if mem
                .write_slice(&frame[written..written + n], GuestAddress(desc.addr().0))
                .is_err()
            {
                break;
            }
            written += n;
        }
        // A frame larger than the buffers is truncated: the driver drops it.
        if active.rx.add_used(&mem, head, written as u32).is_err() {
            break;
        }
        used_any = true;
    }
    if used_any && active.rx.needs_notification(&mem).unwrap_or(true) {
        active.interrupt.signal_used();
    }
    active.pending.is_some()
}

fn rx_loop(tap: &Tap, active: &Mutex<Option<Active>>, kick: &EventFd, stop: &EventFd) {
    let mut waiting_for_buffers = false;
    loop {
        let mut fds = vec![
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
            PollFd::new(kick.as_fd(), PollFlags::POLLIN),
        ];
        // With a frame already waiting for buffers, only a kick helps.
        if !waiting_for_buffers {
            fds.push(PollFd::new(tap.as_fd(), PollFlags::POLLIN));
        }
        let polled = poll(&mut fds, PollTimeout::NONE);
        if fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN))
        {
            return;
        }
        if polled.is_err() {
            continue;
        }
        let _ = kick.read();
        let mut guard = lock(active);
        let Some(active) = guard.as_mut() else { return };
        waiting_for_buffers = process_rx(active, tap);
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
    use std::process::Command;
    use std::time::{Duration, Instant};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;

    const VRING_DESC_F_WRITE: u16 = 2;
    const GUEST_MAC: [u8; 6] = [0x02, 0x0c, 0x1a, 0x00, 0x00, 0x02];

    /// A network namespace made by this test, removed on drop.
    struct Netns(String);
    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    fn ip(args: &[&str]) -> bool {
        Command::new("ip")
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Ethernet broadcast ARP request "who has 10.77.0.1? tell 10.77.0.2".
    fn arp_request() -> Vec<u8> {
        let mut f = vec![0u8; VNET_HDR_LEN];
        f.extend([0xff; 6]);
        f.extend(GUEST_MAC);
        f.extend([0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
        f.extend(GUEST_MAC);
        f.extend([10, 77, 0, 2]);
        f.extend([0; 6]);
        f.extend([10, 77, 0, 1]);
        f
    }

    #[test]
    #[cfg_attr(
        not(openclaw_has_tun),
        ignore = "needs /dev/net/tun (and root), absent on this host"
    )]
    fn an_arp_request_out_of_the_tx_queue_is_answered_into_the_rx_queue() {
        test_requirements::require(
            &[test_requirements::Requirement::Tun],
            "vmm::devices::virtio::net::device::an_arp_request_out_of_the_tx_queue_is_answered_into_the_rx_queue",
        );
        let ns = Netns(format!("ocvmm-net-{}", std::process::id()));
        assert!(ip(&["netns", "add", &ns.0]), "ip netns add");
        let netns_path = std::path::PathBuf::from(format!("/run/netns/{}", ns.0));
        let tap = netns::run_in(&netns_path, || {
            Tap::open_with_address("ocvmm0", Some("10.77.0.1/24"))
        })
        .expect("enter the test namespace")
        .expect("tap in the test namespace");
        let net = Net::new(NetConfig {
            tap,
            mac: GUEST_MAC,
        });
        assert!(
            !ip(&["link", "show", "ocvmm0"]),
            "the tap lives in the session namespace, not the host's"
        );

        let mem = create_guest_memory(16).expect("memory");
        let rxq = MockSplitQueue::create(&mem, GuestAddress(0x10_0000), 16);
        let txq = MockSplitQueue::create(&mem, GuestAddress(0x20_0000), 16);
        let rx_bufs: Vec<RawDescriptor> = (0..8u16)
            .map(|i| {
                RawDescriptor::from(SplitDescriptor::new(
                    0x40_0000 + u64::from(i) * 0x1000,
                    2048,
                    VRING_DESC_F_WRITE,
                    0,
                ))
            })
            .collect();
        rxq.add_desc_chains(&rx_bufs, 0).expect("rx buffers");
        let frame = arp_request();
        mem.write_slice(&frame, GuestAddress(0x50_0000))
            .expect("tx frame");
        let tx = [RawDescriptor::from(SplitDescriptor::new(
            0x50_0000,
            frame.len() as u32,
            0,
            0,
        ))];
        txq.add_desc_chains(&tx, 0).expect("tx chain");

        let irq = Arc::new(VirtioInterrupt::new(IrqLine::detached()));
        let mut t = MmioTransport::new(net, mem.clone(), irq.clone());
        let status = activate(&mut t, VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC, &[&rxq, &txq]);
        assert_ne!(status & STATUS_DRIVER_OK, 0, "status {status:#x}");
        write_reg(&mut t, 0x50, 0); // RX buffers available
        write_reg(&mut t, 0x50, 1); // TX: send the ARP request

        assert_eq!(txq.used().idx().load(), 1, "the TX chain was consumed");
        // The kernel may also send its own frames (IPv6 router solicitations,
        // MLD) into the tap: look through what arrived for the ARP reply.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seen = 0u16;
        let mut reply = None;
        while reply.is_none() && Instant::now() < deadline {
            let idx = rxq.used().idx().load();
            while seen < idx {
                let used = rxq
                    .used()
                    .ring()
                    .ref_at(usize::from(seen))
                    .expect("used elem")
                    .load();
                seen += 1;
                let mut frame = vec![0u8; used.len() as usize];
                mem.read_slice(
                    &mut frame,
                    GuestAddress(0x40_0000 + u64::from(used.id()) * 0x1000),
                )
                .expect("rx buffer");
                if frame.len() > VNET_HDR_LEN + 14
                    && frame[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14] == [0x08, 0x06]
                {
                    reply = Some(frame);
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let reply = reply.expect("an ARP frame came back from the tap");
        let eth = &reply[VNET_HDR_LEN..];
        assert_eq!(&eth[0..6], &GUEST_MAC, "unicast to the guest's MAC");
        assert_eq!(&eth[20..22], &[0, 2], "an ARP reply");
        assert_eq!(&eth[28..32], &[10, 77, 0, 1], "from the tap's address");
        assert_ne!(irq.status() & 1, 0, "the driver was interrupted");

        // Reset stops the RX thread and releases the queues.
        write_reg(&mut t, 0x70, 0);
        drop(t);
    }

    /// No offload is offered, so whatever the driver put in the header
    /// (here: NEEDS_CSUM and TCPv4 GSO) must not reach the host kernel
    /// through the IFF_VNET_HDR tap; the frame itself goes out unchanged.
    #[test]
    fn tx_frames_reach_the_tap_behind_a_zeroed_vnet_header_whatever_the_guest_wrote() {
        use std::os::unix::net::UnixDatagram;
        let (ours, peer) = UnixDatagram::pair().expect("socketpair");
        ours.set_nonblocking(true).expect("nonblocking");
        // TX writes to the tap inside the notify, so the datagram is there
        // by the time write_reg returns.
        peer.set_nonblocking(true).expect("nonblocking");
        let file = std::fs::File::from(std::os::fd::OwnedFd::from(ours));
        let net = Net::new(NetConfig {
            tap: Tap::from_file(file),
            mac: GUEST_MAC,
        });
        let mem = create_guest_memory(16).expect("memory");
        let rxq = MockSplitQueue::create(&mem, GuestAddress(0x10_0000), 16);
        let txq = MockSplitQueue::create(&mem, GuestAddress(0x20_0000), 16);
        // virtio_net_hdr_v1: flags NEEDS_CSUM, gso_type TCPV4, hdr_len 54,
        // gso_size 1448, csum_start 34, csum_offset 16, num_buffers 0.
        let mut frame = vec![1u8, 1, 54, 0, 0xa8, 0x05, 34, 0, 16, 0, 0, 0];
        frame.extend(&arp_request()[VNET_HDR_LEN..]);
        mem.write_slice(&frame, GuestAddress(0x50_0000))
            .expect("tx frame");
        let tx = [RawDescriptor::from(SplitDescriptor::new(
            0x50_0000,
            frame.len() as u32,
            0,
            0,
        ))];
        txq.add_desc_chains(&tx, 0).expect("tx chain");
        let irq = Arc::new(VirtioInterrupt::new(IrqLine::detached()));
        let mut t = MmioTransport::new(net, mem.clone(), irq);
        let status = activate(&mut t, VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC, &[&rxq, &txq]);
        assert_ne!(status & STATUS_DRIVER_OK, 0, "status {status:#x}");
        write_reg(&mut t, 0x50, 1);
        assert_eq!(txq.used().idx().load(), 1, "the TX chain was consumed");
        let mut got = vec![0u8; 2048];
        let n = peer.recv(&mut got).expect("the frame reached the tap");
        assert_eq!(
            &got[..VNET_HDR_LEN],
            &[0u8; VNET_HDR_LEN],
            "guest-chosen offload header reached the host tap un-negotiated"
        );
        assert_eq!(
            &got[VNET_HDR_LEN..n],
            &frame[VNET_HDR_LEN..],
            "frame unchanged"
        );
        write_reg(&mut t, 0x70, 0);
    }
}
