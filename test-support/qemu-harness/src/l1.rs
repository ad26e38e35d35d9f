//! L1, the VM QEMU runs: Debian's cloud kernel (fetched and unpacked once
//! under `target/qemu-harness/`), the modules that give it /dev/kvm and taps,
//! and the outer initramfs that carries a payload in and runs its script.

use std::path::{Path, PathBuf};
use std::process::Command;

use guest_image::cpio::CpioWriter;

use crate::{HarnessError, QEMU};

const L1_PACKAGE: &str = "linux-image-cloud-amd64";

/// The L1 kernel and the modules that give it /dev/kvm, taps and virtio disks.
pub struct L1Kernel {
    pub vmlinuz: PathBuf,
    /// In load order.
    pub modules: Vec<PathBuf>,
}

/// Fetches Debian's cloud kernel with `apt-get download` (its versioned
/// dependency too) and unpacks it under `dir`, once.
pub fn l1_kernel(dir: &Path) -> Result<L1Kernel, HarnessError> {
    let root = dir.join("kroot");
    if let Some(k) = find_l1(&root) {
        return Ok(k);
    }
    let debs = dir.join("debs");
    std::fs::create_dir_all(&debs).map_err(HarnessError::io("create debs dir"))?;
    let deps = run_out(
        Command::new("apt-cache").args(["depends", L1_PACKAGE]),
        "apt-cache depends",
    )?;
    let versioned = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .ok_or_else(|| HarnessError::Command {
            what: "apt-cache depends",
            status: "no linux-image dependency".into(),
            stderr_tail: deps.clone(),
        })?
        .to_string();
    run_out(
        Command::new("apt-get")
            .args(["download", &versioned])
            .current_dir(&debs),
        "apt-get download",
    )?;
    let deb = std::fs::read_dir(&debs)
        .map_err(HarnessError::io("read debs dir"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&versioned))
        })
        .ok_or_else(|| HarnessError::NotFound(debs.join(&versioned)))?;
    run_out(
        Command::new("dpkg").arg("-x").arg(&deb).arg(&root),
        "dpkg -x",
    )?;
    find_l1(&root).ok_or(HarnessError::NotFound(root))
}

fn find_l1(root: &Path) -> Option<L1Kernel> {
    let boot = std::fs::read_dir(root.join("boot")).ok()?;
    let vmlinuz = boot.filter_map(|e| e.ok().map(|e| e.path())).find(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("vmlinuz-"))
    })?;
    let release = vmlinuz
        .file_name()?
        .to_str()?
        .strip_prefix("vmlinuz-")?
        .to_string();
    let mods = root.join("lib/modules").join(release).join("kernel");
    // Dependencies first (read from each module's `depends=`): irqbypass <- kvm <- kvm-amd;
    // virtio_ring <- virtio <- virtio_pci (+ its two helpers) and virtio_blk,
    // for the disks a test hands L1 (`run_qemu_with_disks`).
    let modules = [
        "virt/lib/irqbypass.ko",
        "arch/x86/kvm/kvm.ko",
        "arch/x86/kvm/kvm-amd.ko",
        "drivers/net/tun.ko",
        "drivers/virtio/virtio_ring.ko",
        "drivers/virtio/virtio.ko",
        "drivers/virtio/virtio_pci_legacy_dev.ko",
        "drivers/virtio/virtio_pci_modern_dev.ko",
        "drivers/virtio/virtio_pci.ko",
        "drivers/block/virtio_blk.ko",
    ]
    .iter()
    .map(|m| mods.join(m))
    .collect::<Vec<_>>();
    modules
        .iter()
        .all(|m| m.exists())
        .then_some(L1Kernel { vmlinuz, modules })
}

/// Files to carry into L1, and the shell commands its /init runs.
pub struct L1Payload {
    /// (path inside L1, file on this host)
    pub files: Vec<(String, PathBuf)>,
    /// Shell lines run after the modules are loaded; their output is the verdict.
    pub script: String,
}

/// The outer initramfs: busybox, the modules, the payload, and an /init.
pub fn outer_initramfs(l1: &L1Kernel, payload: &L1Payload) -> Result<Vec<u8>, HarnessError> {
    let mut w = CpioWriter::new();
    for d in ["bin", "dev", "proc", "sys", "tmp", "mod", "run"] {
        w.dir(d, 0o755);
    }
    w.char_dev("dev/console", 0o600, 5, 1);
    let read = |p: &Path| std::fs::read(p).map_err(HarnessError::io_path(p));
    w.file(
        "bin/busybox",
        0o755,
        &read(Path::new(guest_image::initramfs::BUSYBOX))?,
    );
    for applet in [
        "sh", "mount", "insmod", "poweroff", "cat", "echo", "ls", "ip", "sleep",
    ] {
        w.symlink(&format!("bin/{applet}"), "busybox");
    }
    let mut insmods = String::new();
    for m in &l1.modules {
        let name = m
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("module.ko");
        w.file(&format!("mod/{name}"), 0o644, &read(m)?);
        insmods.push_str(&format!(
            "insmod /mod/{name} || echo \"HARNESS: insmod {name} failed\"\n"
        ));
    }
    let mut made = Vec::new();
    for (inside, host) in &payload.files {
        let inside = inside.trim_start_matches('/');
        let parts: Vec<&str> = inside.split('/').collect();
        for i in 1..parts.len() {
            let d = parts[..i].join("/");
            if !made.contains(&d) && !["bin", "tmp", "mod", "run"].contains(&d.as_str()) {
                w.dir(&d, 0o755);
                made.push(d);
            }
        }
        w.file(inside, 0o755, &read(host)?);
    }
    let init = format!(
        "#!/bin/busybox sh\nexport PATH=/bin\nmount -t proc proc /proc\nmount -t sysfs sysfs /sys\n\
         mount -t devtmpfs dev /dev\nmount -t tmpfs tmp /tmp\n{insmods}\
         test -c /dev/kvm && echo 'HARNESS: /dev/kvm ready' || echo 'HARNESS: no /dev/kvm'\n\
         {}\necho HARNESS: done\npoweroff -f\n",
        payload.script
    );
    w.file("init", 0o755, init.as_bytes());
    Ok(w.finish())
}

/// QEMU itself, its shared libraries and microvm firmware, to run QEMU's
/// `-M microvm` inside L1 beside our VMM (for the benchmark's comparison).
pub fn qemu_payload_files() -> Result<Vec<(String, PathBuf)>, HarnessError> {
    let qemu = Path::new("/usr/bin").join(QEMU);
    let mut files = vec![(format!("bin/{QEMU}"), qemu.clone())];
    for lib in guest_image::initramfs::shared_libraries(&qemu)? {
        let inside = lib.to_string_lossy().trim_start_matches('/').to_string();
        files.push((inside, lib));
    }
    for fw in [
        "bios-microvm.bin",
        "qboot.rom",
        "linuxboot_dma.bin",
        "kvmvapic.bin",
    ] {
        let host = Path::new("/usr/share/qemu").join(fw);
        if host.exists() {
            files.push((format!("usr/share/qemu/{fw}"), host));
        }
    }
    Ok(files)
}

fn run_out(cmd: &mut Command, what: &'static str) -> Result<String, HarnessError> {
    let out = cmd.output().map_err(HarnessError::io(what))?;
    if !out.status.success() {
        return Err(HarnessError::Command {
            what,
            status: out.status.to_string(),
            stderr_tail: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
