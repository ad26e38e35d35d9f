//! The initramfs images, built once; sessions append their own small cpio
//! (see `session`):
//! - the base (initramfs-only guest): the guest init, busybox (Debian
//!   `busybox-static`), curl with the shared libraries it links, and a
//!   skeleton /etc;
//! - the boot initramfs: the guest init and busybox only (busybox `ip`
//!   configures the NIC before the init moves into the root filesystem
//!   it mounts from disk). ~2 MB instead of ~22 MB to unpack.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cpio::CpioWriter;
use crate::GuestImageError;

pub const BUSYBOX: &str = "/bin/busybox";
pub const CURL: &str = "/usr/bin/curl";

/// The unprivileged user the task runs as.
pub const TASK_UID: u32 = 1000;

/// Shared libraries `binary` needs, as ldd resolves them on this host.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, GuestImageError> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(GuestImageError::io("ldd"))?;
    if !output.status.success() {
        return Err(GuestImageError::Command {
            what: "ldd",
            status: output.status.to_string(),
            stderr_tail: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(parse_ldd(&String::from_utf8_lossy(&output.stdout)))
}

/// `libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)` and the loader's
/// `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has no file.
pub fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Builds the boot initramfs: the init, busybox and the mount points.
pub fn build_boot_initramfs(init: &Path) -> Result<Vec<u8>, GuestImageError> {
    let mut w = CpioWriter::new();
    for dir in [
        "bin", "etc", "proc", "sys", "dev", "tmp", "run", "mnt", "openclaw",
    ] {
        w.dir(dir, 0o755);
    }
    w.char_dev("dev/console", 0o600, 5, 1);
    let read = |p: &Path| std::fs::read(p).map_err(GuestImageError::io_path(p));
    w.file("init", 0o755, &read(init)?);
    w.file("bin/busybox", 0o755, &read(Path::new(BUSYBOX))?);
    w.symlink("bin/sh", "busybox");
    Ok(w.finish())
}

/// Builds the base initramfs around the guest init binary.
pub fn build_base_initramfs(init: &Path) -> Result<Vec<u8>, GuestImageError> {
    let mut w = CpioWriter::new();
    for dir in [
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "lib",
        "lib64",
        "lib/x86_64-linux-gnu",
        "etc",
        "etc/ssl",
        "etc/ssl/certs",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "root",
        "home",
        "openclaw",
    ] {
        w.dir(dir, if dir == "tmp" { 0o1777 } else { 0o755 });
    }
    // The kernel opens /dev/console for init's stdio before devtmpfs is mounted.
    w.char_dev("dev/console", 0o600, 5, 1);
    w.dir("home/task", 0o755);

    let read = |p: &Path| std::fs::read(p).map_err(GuestImageError::io_path(p));
    w.file("init", 0o755, &read(init)?);

    let busybox = Path::new(BUSYBOX);
    w.file("bin/busybox", 0o755, &read(busybox)?);
    let list = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(GuestImageError::io("busybox --list-full"))?;
    let mut applets: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty() && l != "bin/busybox")
        .collect();
    applets.sort();
    applets.dedup();
    let mut made_usr_sbin = false;
    for applet in &applets {
        // busybox lists bin/, sbin/, usr/bin/ and usr/sbin/ applets.
        if let Some(dir) = applet.rsplit_once('/').map(|(d, _)| d) {
            if dir == "usr/sbin" && !made_usr_sbin {
                w.dir("usr/sbin", 0o755);
                made_usr_sbin = true;
            }
            if ["bin", "sbin", "usr/bin", "usr/sbin"].contains(&dir) {
                w.symlink(applet, "/bin/busybox");
            }
        }
    }

    let curl = Path::new(CURL);
    w.file("usr/bin/curl", 0o755, &read(curl)?);
    let mut libs = shared_libraries(curl)?;
    libs.sort();
    libs.dedup();
    for lib in libs {
        let name = lib
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| GuestImageError::Io {
                what: "library name".into(),
                source: std::io::ErrorKind::InvalidData.into(),
            })?;
        let dest = if lib.starts_with("/lib64") {
            format!("lib64/{name}")
        } else {
            format!("lib/x86_64-linux-gnu/{name}")
        };
        // Symlinks resolved: the guest gets the real bytes under the soname.
        w.file(&dest, 0o755, &read(&lib)?);
    }

    w.file(
        "etc/passwd",
        0o644,
        format!(
            "root:x:0:0:root:/root:/bin/sh\ntask:x:{TASK_UID}:{TASK_UID}:task:/home/task:/bin/sh\n"
        )
        .as_bytes(),
    );
    w.file(
        "etc/group",
        0o644,
        format!("root:x:0:\ntask:x:{TASK_UID}:\n").as_bytes(),
    );
    w.file(
        "etc/nsswitch.conf",
        0o644,
        b"hosts: files dns\npasswd: files\ngroup: files\n",
    );
    w.file("etc/hosts", 0o644, b"127.0.0.1 localhost\n");
    Ok(w.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_is_parsed_into_paths() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibcurl.so.4 => /lib/x86_64-linux-gnu/libcurl.so.4 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f44)\n\tlibmissing.so => not found\n";
        assert_eq!(
            parse_ldd(text),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libcurl.so.4"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }
}
