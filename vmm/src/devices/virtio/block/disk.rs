//! A disk's backing file: opened read-only or read-write, its size in
//! 512-byte sectors, positional reads and writes that never leave it, and
//! `fdatasync` for the guest's FLUSH. A block device (the QEMU harness hands
//! L1 its images as `/dev/vdX`) works as well as a regular file.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// virtio-blk addresses disks in 512-byte sectors, whatever the block size.
pub const SECTOR_SIZE: u64 = 512;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("opening disk {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("disk {path} is {size} bytes, not a whole number of 512-byte sectors")]
    Size { path: PathBuf, size: u64 },
}

/// An open disk image.
#[derive(Debug)]
pub struct DiskFile {
    file: File,
    read_only: bool,
    /// Invariant: the file's size when opened, a multiple of [`SECTOR_SIZE`].
    size: u64,
}

impl DiskFile {
    /// Opens `path`; a read-only disk is opened `O_RDONLY`, so no bug in
    /// this device can change it (the root image is shared by sessions).
    pub fn open(path: &Path, read_only: bool) -> Result<DiskFile, DiskError> {
        let open_error = |source| DiskError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(open_error)?;
        // Seeking to the end also sizes block devices (metadata says 0).
        let size = file.seek(SeekFrom::End(0)).map_err(open_error)?;
        if size % SECTOR_SIZE != 0 {
            return Err(DiskError::Size {
                path: path.to_path_buf(),
                size,
            });
        }
        Ok(DiskFile {
            file,
            read_only,
            size,
        })
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Capacity in sectors, as the config space reports it.
    pub fn sectors(&self) -> u64 {
        self.size / SECTOR_SIZE
    }

    /// Whether `len` bytes from `offset` lie inside the disk.
    pub fn contains(&self, offset: u64, len: u64) -> bool {
        offset.checked_add(len).is_some_and(|end| end <= self.size)
    }

    /// Reads exactly `buf.len()` bytes at `offset` (checked by the caller
    /// with [`DiskFile::contains`]; checked again here).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.check(offset, buf.len())?;
        self.file.read_exact_at(buf, offset)
    }

    pub fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        if self.read_only {
            return Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        }
        self.check(offset, buf.len())?;
        self.file.write_all_at(buf, offset)
    }

    /// The guest's FLUSH: what it wrote reaches stable storage.
    pub fn flush(&self) -> std::io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }

    fn check(&self, offset: u64, len: usize) -> std::io::Result<()> {
        if self.contains(offset, len as u64) {
            Ok(())
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "beyond the end of the disk",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_bounds_and_read_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("disk.img");
        std::fs::write(&path, vec![7u8; 4096]).expect("write");
        let rw = DiskFile::open(&path, false).expect("opens");
        assert_eq!(rw.sectors(), 8);
        assert!(rw.contains(4096 - 512, 512));
        assert!(!rw.contains(4096 - 511, 512));
        assert!(!rw.contains(u64::MAX, 2), "no overflow");
        rw.write_at(b"abc", 100).expect("write inside");
        assert!(rw.write_at(b"abc", 4094).is_err(), "past the end");
        rw.flush().expect("fdatasync");
        let ro = DiskFile::open(&path, true).expect("opens read-only");
        let mut buf = [0u8; 3];
        ro.read_at(&mut buf, 100).expect("read");
        assert_eq!(&buf, b"abc");
        assert!(ro.write_at(b"x", 0).is_err());
        assert!(ro.read_at(&mut [0u8; 8], 4090).is_err());

        std::fs::write(dir.path().join("odd.img"), [0u8; 1000]).expect("write");
        assert!(matches!(
            DiskFile::open(&dir.path().join("odd.img"), true),
            Err(DiskError::Size { size: 1000, .. })
        ));
        assert!(matches!(
            DiskFile::open(&dir.path().join("missing.img"), true),
            Err(DiskError::Open { .. })
        ));
    }
}
