//! One virtio-blk request: read from a descriptor chain, carried out against
//! the disk, answered with a status byte. Whatever the chain says, the
//! outcome is a status for the guest (`S_OK`, `S_IOERR`, `S_UNSUPP`), never
//! a panic or an access outside the disk.
//!
//! A request is a 16-byte header (`type: u32, reserved: u32, sector: u64`,
//! driver-readable), the data, and one status byte (device-writable) at the
//! very end. The chain's layout is not assumed beyond that (spec 2.7.4,
//! "message framing"): the header and status are found by byte position,
//! the data is whatever lies between.

use std::sync::atomic::{AtomicBool, Ordering};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress};

use super::disk::{DiskFile, SECTOR_SIZE};
use crate::vstate::memory::GuestMemory;

const HEADER_LEN: u64 = 16;
/// Bytes moved between the disk and guest memory per step: a bounded
/// buffer however large the guest's descriptors say they are.
const CHUNK: usize = 64 << 10;

/// A piece of guest memory the chain points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u64,
    pub device_writable: bool,
}

/// What the driver asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    In,
    Out,
    Flush,
    GetId,
    Unsupported(u32),
}

/// A parsed request: everything needed to carry it out and answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub kind: RequestKind,
    pub sector: u64,
    /// The data between the header and the status byte, in chain order.
    pub data: Vec<Segment>,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

/// A chain that cannot be answered as a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Malformed {
    /// No device-writable byte at the end to put a status in: the request
    /// is returned unanswered (used length 0).
    NoStatus,
    /// The header is short, device-writable or unreadable; answered
    /// `S_IOERR` at `status`.
    BadHeader(GuestAddress),
}

/// Splits a chain into header, data and status by byte position.
pub fn parse(
    chain: DescriptorChain<&GuestMemory>,
    mem: &GuestMemory,
) -> Result<Request, Malformed> {
    let mut segments: Vec<Segment> = chain
        .map(|d| Segment {
            addr: d.addr(),
            len: u64::from(d.len()),
            device_writable: d.is_write_only(),
        })
        .filter(|s| s.len > 0)
        .collect();
    // The status byte: the last byte of the last descriptor, device-writable.
    let status = match segments.last_mut() {
        Some(last) if last.device_writable => {
            last.len -= 1;
            last.addr.checked_add(last.len).ok_or(Malformed::NoStatus)?
        }
        _ => return Err(Malformed::NoStatus),
    };
    // The header: the first 16 bytes, driver-readable.
    let mut header = [0u8; HEADER_LEN as usize];
    let mut filled = 0u64;
    let mut data = Vec::new();
    for seg in segments.into_iter().filter(|s| s.len > 0) {
        if filled < HEADER_LEN {
            if seg.device_writable {
                return Err(Malformed::BadHeader(status));
            }
            let take = seg.len.min(HEADER_LEN - filled);
            let into = &mut header[filled as usize..(filled + take) as usize];
            mem.read_slice(into, seg.addr)
                .map_err(|_| Malformed::BadHeader(status))?;
            filled += take;
            if take < seg.len {
                let addr = seg
                    .addr
                    .checked_add(take)
                    .ok_or(Malformed::BadHeader(status))?;
                data.push(Segment {
                    addr,
                    len: seg.len - take,
                    device_writable: false,
                });
            }
        } else {
            data.push(seg);
        }
    }
    if filled < HEADER_LEN {
        return Err(Malformed::BadHeader(status));
    }
    let kind = match u32::from_le_bytes([header[0], header[1], header[2], header[3]]) {
        VIRTIO_BLK_T_IN => RequestKind::In,
        VIRTIO_BLK_T_OUT => RequestKind::Out,
        VIRTIO_BLK_T_FLUSH => RequestKind::Flush,
        VIRTIO_BLK_T_GET_ID => RequestKind::GetId,
        other => RequestKind::Unsupported(other),
    };
    let mut sector = [0u8; 8];
    sector.copy_from_slice(&header[8..16]);
    Ok(Request {
        kind,
        sector: u64::from_le_bytes(sector),
        data,
        status,
    })
}

/// Why a request failed (logged at debug level, the guest sees `S_IOERR`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("data of {0} bytes is not whole sectors")]
    PartialSector(u64),
    #[error("sectors {sector}+{len} bytes lie beyond the disk")]
    OutOfRange { sector: u64, len: u64 },
    #[error("the disk is read-only")]
    ReadOnly,
    #[error("a data buffer has the wrong direction")]
    Direction,
    #[error("guest memory at {0:#x} is not RAM")]
    GuestMemory(u64),
    #[error("disk I/O: {0}")]
    Io(String),
    #[error("the VM is stopping")]
    Stopped,
}

impl Request {
    /// Carries the request out and writes its status byte. Returns the used
    /// length: the bytes written into device-writable buffers.
    /// `stop` set mid-transfer ends it (answered IOERR): the VM is stopping.
    pub fn execute(&self, mem: &GuestMemory, disk: &DiskFile, id: &[u8], stop: &AtomicBool) -> u32 {
        let (status, written) = match self.run(mem, disk, id, stop) {
            Ok(written) => (VIRTIO_BLK_S_OK, written),
            Err(Outcome::Unsupported) => (VIRTIO_BLK_S_UNSUPP, 0),
            Err(Outcome::Failed(e)) => {
                tracing::debug!(error = %e, kind = ?self.kind, sector = self.sector, "virtio-blk request failed");
                (VIRTIO_BLK_S_IOERR, 0)
            }
        };
        if mem.write_obj(status as u8, self.status).is_err() {
            return 0;
        }
        u32::try_from(written + 1).unwrap_or(u32::MAX)
    }

    fn run(
        &self,
        mem: &GuestMemory,
        disk: &DiskFile,
        id: &[u8],
        stop: &AtomicBool,
    ) -> Result<u64, Outcome> {
        match self.kind {
            RequestKind::In => self.transfer(mem, disk, true, stop),
            RequestKind::Out => self.transfer(mem, disk, false, stop),
            RequestKind::Flush => disk
                .flush()
                .map(|()| 0)
                .map_err(|e| RequestError::Io(e.to_string()).into()),
            RequestKind::GetId => {
                // Up to 20 bytes, NUL-padded (not NUL-terminated when 20 long).
                let mut bytes = [0u8; VIRTIO_BLK_ID_BYTES as usize];
                let n = id.len().min(bytes.len());
                bytes[..n].copy_from_slice(&id[..n]);
                let mut written = 0u64;
                for seg in &self.data {
                    if !seg.device_writable {
                        return Err(RequestError::Direction.into());
                    }
                    let rest = &bytes[written as usize..];
                    let take = seg.len.min(rest.len() as u64) as usize;
                    mem.write_slice(&rest[..take], seg.addr)
                        .map_err(|_| RequestError::GuestMemory(seg.addr.0))?;
                    written += take as u64;
                }
                Ok(written)
            }
            RequestKind::Unsupported(_) => Err(Outcome::Unsupported),
        }
    }

    /// IN (disk → guest) or OUT (guest → disk), bounds-checked first.
    fn transfer(
        &self,
        mem: &GuestMemory,
        disk: &DiskFile,
        into_guest: bool,
        stop: &AtomicBool,
    ) -> Result<u64, Outcome> {
        if !into_guest && disk.read_only() {
            return Err(RequestError::ReadOnly.into());
        }
        let mut total = 0u64;
        for seg in &self.data {
            if seg.device_writable != into_guest {
                return Err(RequestError::Direction.into());
            }
            // Every buffer is checked before any I/O: a request answered
            // IOERR must not have written part of its data to the disk.
            let whole = usize::try_from(seg.len)
                .is_ok_and(|len| vm_memory::GuestMemoryBackend::check_range(mem, seg.addr, len));
            if !whole {
                return Err(RequestError::GuestMemory(seg.addr.0).into());
            }
            total = total.checked_add(seg.len).ok_or(RequestError::OutOfRange {
                sector: self.sector,
                len: u64::MAX,
            })?;
        }
        if total % SECTOR_SIZE != 0 {
            return Err(RequestError::PartialSector(total).into());
        }
        let start = self.sector.checked_mul(SECTOR_SIZE);
        let Some(start) = start.filter(|s| disk.contains(*s, total)) else {
            return Err(RequestError::OutOfRange {
                sector: self.sector,
                len: total,
            }
            .into());
        };
        let mut buf = vec![0u8; CHUNK.min(total as usize)];
        let mut offset = start;
        for seg in &self.data {
            let mut done = 0u64;
            while done < seg.len {
                if stop.load(Ordering::Acquire) {
                    return Err(RequestError::Stopped.into());
                }
                let n = (seg.len - done).min(CHUNK as u64) as usize;
                let chunk = &mut buf[..n];
                let addr = seg
                    .addr
                    .checked_add(done)
                    .ok_or(RequestError::GuestMemory(seg.addr.0))?;
                if into_guest {
                    disk.read_at(chunk, offset)
                        .map_err(|e| RequestError::Io(e.to_string()))?;
                    mem.write_slice(chunk, addr)
                        .map_err(|_| RequestError::GuestMemory(addr.0))?;
                } else {
                    mem.read_slice(chunk, addr)
                        .map_err(|_| RequestError::GuestMemory(addr.0))?;
                    disk.write_at(chunk, offset)
                        .map_err(|e| RequestError::Io(e.to_string()))?;
                }
                done += n as u64;
                offset += n as u64;
            }
        }
        Ok(if into_guest { total } else { 0 })
    }
}

enum Outcome {
    Unsupported,
    Failed(RequestError),
}

impl From<RequestError> for Outcome {
    fn from(e: RequestError) -> Outcome {
        Outcome::Failed(e)
    }
}
