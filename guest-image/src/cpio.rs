//! A writer for the `newc` cpio format, the one the kernel's initramfs
//! unpacker reads (Documentation/driver-api/early-userspace/buffer-format.rst).

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";

pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFCHR: u32 = 0o020000;

/// Builds one archive in memory. Entries are written in the order added;
/// parents must come before their children.
#[derive(Default)]
pub struct CpioWriter {
    out: Vec<u8>,
    next_ino: u32,
}

impl CpioWriter {
    pub fn new() -> CpioWriter {
        CpioWriter {
            out: Vec::new(),
            next_ino: 1,
        }
    }

    pub fn dir(&mut self, path: &str, mode: u32) {
        self.entry(path, S_IFDIR | (mode & 0o7777), 2, (0, 0), b"");
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.entry(path, S_IFREG | (mode & 0o7777), 1, (0, 0), data);
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.entry(path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes());
    }

    pub fn char_dev(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        self.entry(path, S_IFCHR | (mode & 0o7777), 1, (major, minor), b"");
    }

    /// Ends the archive and returns its bytes (a multiple of 4 long, so
    /// another archive can follow directly).
    pub fn finish(mut self) -> Vec<u8> {
        self.entry(TRAILER, 0, 1, (0, 0), b"");
        self.out
    }

    fn entry(&mut self, path: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        let name = path.trim_start_matches('/');
        let ino = if name == TRAILER { 0 } else { self.next_ino };
        self.next_ino += 1;
        let fields = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: fixed, so images are reproducible
            data.len() as u32,
            0, // dev major
            0, // dev minor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.out.extend_from_slice(MAGIC.as_bytes());
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        self.out.resize(self.out.len().next_multiple_of(4), 0);
    }
}

/// One parsed entry (for tests and for inspecting images).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpioEntry {
    pub name: String,
    pub mode: u32,
    pub rdev: (u32, u32),
    pub data: Vec<u8>,
}

/// Reads back every entry of one or more concatenated archives, the way the
/// kernel does (zero padding between archives is skipped).
pub fn read_entries(mut bytes: &[u8]) -> Result<Vec<CpioEntry>, String> {
    let mut entries = Vec::new();
    loop {
        while bytes.first() == Some(&0) {
            bytes = &bytes[1..];
        }
        if bytes.is_empty() {
            return Ok(entries);
        }
        let start_len = bytes.len();
        if bytes.len() < 110 || &bytes[..6] != MAGIC.as_bytes() {
            return Err("bad cpio header".into());
        }
        let field = |i: usize| -> Result<u32, String> {
            let s =
                std::str::from_utf8(&bytes[6 + 8 * i..14 + 8 * i]).map_err(|e| e.to_string())?;
            u32::from_str_radix(s, 16).map_err(|e| e.to_string())
        };
        let (mode, size, rmaj, rmin, namesize) =
            (field(1)?, field(6)?, field(9)?, field(10)?, field(11)?);
        let name_end = 110 + namesize as usize;
        let name = String::from_utf8(bytes.get(110..name_end - 1).ok_or("short name")?.to_vec())
            .map_err(|e| e.to_string())?;
        let data_start = name_end.next_multiple_of(4);
        let data_end = data_start + size as usize;
        let data = bytes
            .get(data_start..data_end)
            .ok_or("short data")?
            .to_vec();
        bytes = &bytes[data_end.next_multiple_of(4).min(bytes.len())..];
        debug_assert!(bytes.len() < start_len);
        if name != TRAILER {
            entries.push(CpioEntry {
                name,
                mode,
                rdev: (rmaj, rmin),
                data,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_matches_the_kernel_format() {
        let mut w = CpioWriter::new();
        w.file("/init", 0o755, b"#!/bin/sh\n");
        let bytes = w.finish();
        assert_eq!(&bytes[..6], b"070701");
        // mode field (2nd) of the first entry: regular file 0755.
        assert_eq!(&bytes[14..22], b"000081ed");
        // filesize (7th) = 10, namesize (12th) = "init\0" = 5.
        assert_eq!(&bytes[54..62], b"0000000a");
        assert_eq!(&bytes[94..102], b"00000005");
        assert_eq!(&bytes[110..115], b"init\0");
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn round_trip_of_every_kind_and_of_concatenated_archives() {
        let mut a = CpioWriter::new();
        a.dir("dev", 0o755);
        a.char_dev("dev/console", 0o600, 5, 1);
        a.file("bin/busybox", 0o755, &[1, 2, 3, 4, 5]);
        a.symlink("bin/sh", "busybox");
        let mut b = CpioWriter::new();
        b.file("openclaw/session/ca.pem", 0o644, b"PEM");
        let mut both = a.finish();
        both.extend(b.finish());
        let entries = read_entries(&both).expect("parses");
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "bin/busybox",
                "bin/sh",
                "openclaw/session/ca.pem"
            ]
        );
        assert_eq!(entries[1].rdev, (5, 1));
        assert_eq!(entries[1].mode, S_IFCHR | 0o600);
        assert_eq!(entries[2].data, [1, 2, 3, 4, 5]);
        assert_eq!(entries[3].data, b"busybox");
        assert_eq!(entries[3].mode & 0o170000, S_IFLNK);
        assert_eq!(entries[4].data, b"PEM");
    }
}
