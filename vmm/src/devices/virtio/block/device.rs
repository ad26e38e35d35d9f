//! The virtio-blk device: a disk file behind one request queue. Requests
//! are carried out synchronously when the driver notifies (in the vCPU
//! thread that wrote QueueNotify), so the guest waits for its own I/O and
//! nothing runs behind its back. Offered: SEG_MAX (without it Linux sends
//! one segment per request), FLUSH (ext4's barriers become `fdatasync`),
//! RO for read-only disks.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX};
use virtio_queue::{Queue, QueueT};

use super::disk::DiskFile;
use super::request::{parse, Malformed};
use crate::devices::virtio::{VirtioDevice, VirtioInterrupt, DEVICE_TYPE_BLOCK};
use crate::vstate::memory::GuestMemory;

const QUEUE_SIZE: u16 = 256;
/// Data segments per request: the queue holds them plus header and status.
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;

/// One disk of a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// The image file (or block device).
    pub path: PathBuf,
    /// Opened `O_RDONLY` and offered with VIRTIO_BLK_F_RO.
    pub read_only: bool,
    /// What GET_ID answers (at most 20 bytes): how the guest tells its
    /// disks apart (`/sys/block/vdX/serial`), whatever order they probe in.
    pub id: String,
}

struct Active {
    mem: GuestMemory,
    queue: Queue,
    interrupt: Arc<VirtioInterrupt>,
}

pub struct Block {
    disk: DiskFile,
    id: Vec<u8>,
    active: Option<Active>,
    /// The VM's stop flag: see [`Block::stop_on`].
    stop: Arc<AtomicBool>,
}

impl Block {
    pub fn new(disk: DiskFile, id: &str) -> Block {
        Block {
            disk,
            id: id.as_bytes().to_vec(),
            active: None,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Requests stop being carried out once `stop` is set: between
    /// requests and between the 64 KiB chunks of one. One notify may ask
    /// for a lot (256 requests, each as long as the disk) and runs on the
    /// vCPU thread `kill()` joins. A per-notify budget would not do here:
    /// blk-mq keeps requests in flight and kicks only when it adds one, so
    /// requests left in the ring would wait for its timeout. The guest
    /// waiting for its own I/O is fine; only stopping must not wait.
    pub fn stop_on(mut self, stop: Arc<AtomicBool>) -> Block {
        self.stop = stop;
        self
    }

    /// `struct virtio_blk_config` up to `blk_size`: capacity (sectors),
    /// size_max (0: not offered), seg_max, geometry (none), blk_size 512.
    fn config_space(&self) -> [u8; 24] {
        let mut c = [0u8; 24];
        c[0..8].copy_from_slice(&self.disk.sectors().to_le_bytes());
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        c[20..24].copy_from_slice(&512u32.to_le_bytes());
        c
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_BLK_F_SEG_MAX) | (1u64 << VIRTIO_BLK_F_FLUSH);
        if self.disk.read_only() {
            f |= 1u64 << VIRTIO_BLK_F_RO;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.config_space();
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|at| config.get(at))
                .copied()
                .unwrap_or(0);
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        queues: Vec<Queue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), String> {
        let queue = queues
            .into_iter()
            .next()
            .ok_or("virtio-blk needs one queue")?;
        self.active = Some(Active {
            mem,
            queue,
            interrupt,
        });
        Ok(())
    }

    fn queue_notify(&mut self, index: u32) {
        if index != 0 {
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        process_queue(active, &self.disk, &self.id, &self.stop);
    }

    fn reset(&mut self) {
        self.active = None;
    }
}

/// Answers every request the driver made available.
/// Once `stop` is set the rest stays in the ring: the VM is going away.
fn process_queue(active: &mut Active, disk: &DiskFile, id: &[u8], stop: &AtomicBool) {
    let mem = active.mem.clone();
    let mut used_any = false;
    while !stop.load(Ordering::Acquire) {
        let Some(chain) = active.queue.pop_descriptor_chain(&mem) else {
            break;
        };
        let head = chain.head_index();
        let used_len = match parse(chain, &mem) {
            Ok(request) => request.execute(&mem, disk, id, stop),
            Err(Malformed::BadHeader(status)) => {
                let ioerr = virtio_bindings::virtio_blk::VIRTIO_BLK_S_IOERR as u8;
                u32::from(vm_memory::Bytes::write_obj(&mem, ioerr, status).is_ok())
            }
            Err(Malformed::NoStatus) => 0,
        };
        if active.queue.add_used(&mem, head, used_len).is_err() {
            // The used ring is not where the driver said: nothing more can
            // be answered until it resets the device.
            break;
        }
        used_any = true;
    }
    if used_any && active.queue.needs_notification(&mem).unwrap_or(true) {
        active.interrupt.signal_used();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::mmio::{MmioTransport, STATUS_DRIVER_OK};
    use crate::devices::virtio::test_utils::{activate, read_reg, write_reg};
    use crate::devices::virtio::VIRTIO_F_VERSION_1;
    use crate::devices::IrqLine;
    use crate::vstate::memory::create_guest_memory;
    use virtio_bindings::virtio_blk::{
        VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
        VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    };
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;
    const HEADER: u64 = 0x30_0000;
    const DATA: u64 = 0x40_0000;
    const STATUS: u64 = 0x50_0000;
    const SECTORS: u64 = 16;

    /// A disk whose sector n is filled with byte n.
    fn disk_file(dir: &tempfile::TempDir) -> PathBuf {
        let path = dir.path().join("disk.img");
        let bytes: Vec<u8> = (0..SECTORS).flat_map(|s| vec![s as u8; 512]).collect();
        std::fs::write(&path, bytes).expect("write disk");
        path
    }

    struct Rig<'a> {
        t: MmioTransport<Block>,
        q: MockSplitQueue<'a, GuestMemory>,
        mem: &'a GuestMemory,
        irq: Arc<VirtioInterrupt>,
    }

    fn rig<'a>(mem: &'a GuestMemory, path: &std::path::Path, read_only: bool) -> Rig<'a> {
        let disk = DiskFile::open(path, read_only).expect("disk opens");
        let irq = Arc::new(VirtioInterrupt::new(IrqLine::detached()));
        let mut t = MmioTransport::new(Block::new(disk, "openclaw-test"), mem.clone(), irq.clone());
        let q = MockSplitQueue::create(mem, GuestAddress(0x10_0000), 16);
        let mut features =
            VIRTIO_F_VERSION_1 | (1 << VIRTIO_BLK_F_SEG_MAX) | (1 << VIRTIO_BLK_F_FLUSH);
        if read_only {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        let status = activate(&mut t, features, &[&q]);
        assert_ne!(status & STATUS_DRIVER_OK, 0, "status {status:#x}");
        Rig { t, q, mem, irq }
    }

    impl Rig<'_> {
        /// Submits one chain of (addr, len, device-writable) buffers and
        /// returns (used length, status byte).
        fn submit(&mut self, bufs: &[(u64, u32, bool)]) -> (u32, u8) {
            // Every chain was answered before the next is submitted, so
            // the table can be reused from the start.
            let first = 0u16;
            let descs: Vec<RawDescriptor> = bufs
                .iter()
                .enumerate()
                .map(|(i, (addr, len, writable))| {
                    let last = i + 1 == bufs.len();
                    let flags = if *writable { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
                    let next = if last { 0 } else { first + i as u16 + 1 };
                    RawDescriptor::from(SplitDescriptor::new(*addr, *len, flags, next))
                })
                .collect();
            let used_before = self.q.used().idx().load();
            self.mem
                .write_obj(0xffu8, GuestAddress(STATUS))
                .expect("status");
            self.q.add_desc_chains(&descs, first).expect("chain");
            write_reg(&mut self.t, 0x50, 0);
            let used_idx = self.q.used().idx().load();
            assert_eq!(used_idx, used_before + 1, "the chain was answered");
            let elem = self
                .q
                .used()
                .ring()
                .ref_at(usize::from(used_before))
                .expect("used elem")
                .load();
            assert_eq!(elem.id(), u32::from(first), "the right chain");
            let status: u8 = self.mem.read_obj(GuestAddress(STATUS)).expect("status");
            (elem.len(), status)
        }

        fn request(&mut self, kind: u32, sector: u64, data: &[(u64, u32, bool)]) -> (u32, u8) {
            let mut header = [0u8; 16];
            header[0..4].copy_from_slice(&kind.to_le_bytes());
            header[8..16].copy_from_slice(&sector.to_le_bytes());
            self.mem
                .write_slice(&header, GuestAddress(HEADER))
                .expect("header");
            let mut bufs = vec![(HEADER, 16, false)];
            bufs.extend_from_slice(data);
            bufs.push((STATUS, 1, true));
            self.submit(&bufs)
        }

        fn read_mem(&self, addr: u64, len: usize) -> Vec<u8> {
            let mut v = vec![0u8; len];
            self.mem
                .read_slice(&mut v, GuestAddress(addr))
                .expect("read");
            v
        }
    }

    #[test]
    fn config_space_and_features_describe_the_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = disk_file(&dir);
        let mem = create_guest_memory(16).expect("memory");
        let mut r = rig(&mem, &path, true);
        assert_eq!(read_reg(&mut r.t, 0x008), DEVICE_TYPE_BLOCK);
        let mut capacity = [0u8; 8];
        r.t.read(0x100, &mut capacity);
        assert_eq!(u64::from_le_bytes(capacity), SECTORS);
        assert_eq!(read_reg(&mut r.t, 0x100 + 12), SEG_MAX);
        write_reg(&mut r.t, 0x014, 0);
        let features = read_reg(&mut r.t, 0x010);
        assert_ne!(features & (1 << VIRTIO_BLK_F_RO), 0, "read-only offered");
        assert_ne!(features & (1 << VIRTIO_BLK_F_FLUSH), 0);
        let rw = Block::new(DiskFile::open(&path, false).expect("rw"), "x");
        assert_eq!(rw.features() & (1 << VIRTIO_BLK_F_RO), 0);
    }

    #[test]
    fn reads_land_in_guest_memory_across_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = disk_file(&dir);
        let mem = create_guest_memory(16).expect("memory");
        let mut r = rig(&mem, &path, true);
        // Sectors 3..6 into two buffers (512 + 1024 bytes).
        let (len, status) = r.request(
            VIRTIO_BLK_T_IN,
            3,
            &[(DATA, 512, true), (DATA + 0x1000, 1024, true)],
        );
        assert_eq!(status, VIRTIO_BLK_S_OK as u8);
        assert_eq!(len, 512 + 1024 + 1, "data and the status byte");
        assert_eq!(r.read_mem(DATA, 512), vec![3u8; 512]);
        assert_eq!(r.read_mem(DATA + 0x1000, 512), vec![4u8; 512]);
        assert_eq!(r.read_mem(DATA + 0x1200, 512), vec![5u8; 512]);
        assert_ne!(r.irq.status() & 1, 0, "the driver was interrupted");
    }

    #[test]
    fn writes_reach_the_file_and_flush_is_answered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = disk_file(&dir);
        let mem = create_guest_memory(16).expect("memory");
        let mut r = rig(&mem, &path, false);
        mem.write_slice(&[0xabu8; 1024], GuestAddress(DATA))
            .expect("data");
        let (len, status) = r.request(VIRTIO_BLK_T_OUT, 15, &[(DATA, 512, false)]);
        assert_eq!((len, status), (1, VIRTIO_BLK_S_OK as u8));
        let (_, status) = r.request(VIRTIO_BLK_T_FLUSH, 0, &[]);
        assert_eq!(status, VIRTIO_BLK_S_OK as u8);
        let file = std::fs::read(&path).expect("read back");
        assert_eq!(&file[15 * 512..], &[0xabu8; 512][..]);
        assert_eq!(
            &file[14 * 512..15 * 512],
            &[14u8; 512][..],
            "neighbour untouched"
        );
    }

    #[test]
    fn a_read_only_disk_refuses_writes_with_ioerr() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = disk_file(&dir);
        let before = std::fs::read(&path).expect("read");
        let mem = create_guest_memory(16).expect("memory");
        let mut r = rig(&mem, &path, true);
        let (len, status) = r.request(VIRTIO_BLK_T_OUT, 0, &[(DATA, 512, false)]);
        assert_eq!((len, status), (1, VIRTIO_BLK_S_IOERR as u8));
        let (_, status) = r.request(VIRTIO_BLK_T_FLUSH, 0, &[]);
        assert_eq!(status, VIRTIO_BLK_S_OK as u8, "nothing to flush");
        assert_eq!(std::fs::read(&path).expect("read"), before, "unchanged");
    }

    #[test]
    fn sectors_beyond_the_disk_are_ioerr_not_a_crash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = disk_file(&dir);
        let mem = create_guest_memory(16).expect("memory");
        let mut r = rig(&mem, &path, false);
        for sector in [SECTORS, SECTORS - 1 + 1, u64::MAX, u64::MAX / 512 + 1] {
            let (_, status) = r.request(VIRTIO_BLK_T_IN, sector, &[(DATA, 512, true)]);
            assert_eq!(status, VIRTIO_BLK_S_IOERR as u8, "sector {sector}");
        }
        // The last sector plus one more: straddles the end.
        let (_, status) = r.request(VIRTIO_BLK_T_OUT, SECTORS - 1, &[(DATA, 1024, false)]);
        assert_eq!(status, VIRTIO_BLK_S_IOERR as u8);
        assert_eq!(
            std::fs::metadata(&path).expect("meta").len(),
            SECTORS * 512,
            "not grown"
        );
        // Not whole sectors.
        let (_, status) = r.request(VIRTIO_BLK_T_IN, 0, &[(DATA, 100, true)]);
        assert_eq!(status, VIRTIO_BLK_S_IOERR as u8);
        // A buffer that is not guest RAM.
        let (_, status) = r.request(VIRTIO_BLK_T_IN, 0, &[(0x7fff_f000_0000, 512, true)]);
        assert_eq!(status, VIRTIO_BLK_S_IOERR as u8);
        // Data in the wrong direction (a read into a driver-readable buffer).
        let (_, status) = r.request(VIRTIO_BLK_T_IN, 0, &[(DATA, 512, false)]);
        assert_eq!(status, VIRTIO_BLK_S_IOERR as u8);
        // The device still works afterwards.
        let (_, status) = r.request(VIRTIO_BLK_T_IN, 2, &[(DATA, 512, true)]);
        assert_eq!(status, VIRTIO_BLK_S_OK as u8);
        assert_eq!(r.read_mem(DATA, 512), vec![2u8; 512]);
    }

    #[test]
    fn get_id_answers_the_disk_id_and_unknown_types_are_unsupported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = disk_file(&dir);
        let mem = create_guest_memory(16).expect("memory");
        let mut r = rig(&mem, &path, true);
        mem.write_slice(&[0xeeu8; 20], GuestAddress(DATA))
            .expect("fill");
        let (len, status) = r.request(VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 20, true)]);
        assert_eq!((len, status), (21, VIRTIO_BLK_S_OK as u8));
        let mut want = b"openclaw-test".to_vec();
        want.resize(20, 0);
        assert_eq!(r.read_mem(DATA, 20), want);
        let (len, status) = r.request(VIRTIO_BLK_T_DISCARD, 0, &[(DATA, 16, false)]);
        assert_eq!((len, status), (1, VIRTIO_BLK_S_UNSUPP as u8));
    }

    #[test]
    fn malformed_chains_are_answered_without_touching_the_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = disk_file(&dir);
        let before = std::fs::read(&path).expect("read");
        let mem = create_guest_memory(16).expect("memory");
        let mut r = rig(&mem, &path, false);
        // No device-writable byte for a status: returned with length 0.
        let (len, status) = r.submit(&[(HEADER, 16, false), (DATA, 512, false)]);
        assert_eq!((len, status), (0, 0xff));
        // A header the device would have to write: IOERR.
        let (len, status) = r.submit(&[(HEADER, 16, true), (STATUS, 1, true)]);
        assert_eq!((len, status), (1, VIRTIO_BLK_S_IOERR as u8));
        // A short header.
        let (_, status) = r.submit(&[(HEADER, 8, false), (STATUS, 1, true)]);
        assert_eq!(status, VIRTIO_BLK_S_IOERR as u8);
        // Header, data and status in one run of bytes split oddly (any layout).
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
        header[8..16].copy_from_slice(&1u64.to_le_bytes());
        mem.write_slice(&header, GuestAddress(DATA))
            .expect("header");
        mem.write_slice(&[0x5au8; 512], GuestAddress(DATA + 16))
            .expect("data");
        let (len, status) = r.submit(&[(DATA, 16 + 512, false), (STATUS, 1, true)]);
        assert_eq!((len, status), (1, VIRTIO_BLK_S_OK as u8));
        let after = std::fs::read(&path).expect("read");
        assert_eq!(&after[512..1024], &[0x5au8; 512][..]);
        assert_eq!(&after[..512], &before[..512]);
        assert_eq!(&after[1024..], &before[1024..]);
    }

    #[test]
    fn reset_stops_answering_until_reactivated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = disk_file(&dir);
        let mem = create_guest_memory(16).expect("memory");
        let mut r = rig(&mem, &path, true);
        write_reg(&mut r.t, 0x70, 0);
        assert!(r.t.device().active.is_none());
    }

    /// An OUT whose second buffer is not guest RAM is answered IOERR
    /// without its first buffer reaching the disk: every buffer is checked
    /// before any I/O, so a failed write leaves the file as it was.
    #[test]
    fn an_out_request_with_a_buffer_outside_guest_memory_fails_without_touching_the_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = disk_file(&dir);
        let before = std::fs::read(&path).expect("read");
        let mem = create_guest_memory(16).expect("memory");
        let mut r = rig(&mem, &path, false);
        mem.write_slice(&[0xabu8; 512], GuestAddress(DATA))
            .expect("data");
        let (_, status) = r.request(
            VIRTIO_BLK_T_OUT,
            4,
            &[(DATA, 512, false), (0x7fff_f000_0000, 512, false)],
        );
        assert_eq!(status, VIRTIO_BLK_S_IOERR as u8, "reported as failed");
        assert_eq!(
            std::fs::read(&path).expect("read"),
            before,
            "a request answered IOERR for a bad guest address modified the disk"
        );
    }

    /// Once the VM is stopping (`kill()` set the flag and joins the vCPU
    /// threads), a notify carries nothing out: the request stays in the
    /// ring and the disk as it was, however much the guest queued.
    #[test]
    fn requests_are_not_carried_out_once_the_vm_is_stopping() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = disk_file(&dir);
        let before = std::fs::read(&path).expect("read");
        let mem = create_guest_memory(16).expect("memory");
        let mut r = rig(&mem, &path, false);
        let stop = Arc::new(AtomicBool::new(false));
        let block = r.t.device_mut();
        block.stop = stop.clone();
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
        mem.write_slice(&header, GuestAddress(HEADER))
            .expect("header");
        mem.write_slice(&[0xabu8; 512], GuestAddress(DATA))
            .expect("data");
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(HEADER, 16, F_NEXT, 1)),
            RawDescriptor::from(SplitDescriptor::new(DATA, 512, F_NEXT, 2)),
            RawDescriptor::from(SplitDescriptor::new(STATUS, 1, F_WRITE, 0)),
        ];
        r.q.add_desc_chains(&descs, 0).expect("chain");
        stop.store(true, Ordering::Release);
        write_reg(&mut r.t, 0x50, 0);
        assert_eq!(r.q.used().idx().load(), 0, "left in the ring");
        assert_eq!(
            std::fs::read(&path).expect("read"),
            before,
            "disk untouched"
        );
    }
}
