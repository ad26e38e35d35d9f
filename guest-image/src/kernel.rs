//! Builds the guest kernel from Debian's `linux-source` tarball: tinyconfig +
//! our fragment, `make vmlinux`, cached by a stamp of the inputs.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::GuestImageError;

/// The documented config fragment (guest-image/kernel/openclaw.config).
pub const CONFIG_FRAGMENT: &str = include_str!("../kernel/openclaw.config");

/// Debian's kernel source tarball, newest version first.
pub fn find_linux_source() -> Result<PathBuf, GuestImageError> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/src")
        .map_err(|_| GuestImageError::NoLinuxSource)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("linux-source-") && n.ends_with(".tar.xz"))
        })
        .collect();
    found.sort();
    found.pop().ok_or(GuestImageError::NoLinuxSource)
}

/// The options the fragment turns on (`CONFIG_X=y`) and off (`# CONFIG_X is not set`).
pub fn fragment_options() -> (Vec<&'static str>, Vec<&'static str>) {
    let mut on = Vec::new();
    let mut off = Vec::new();
    for line in CONFIG_FRAGMENT.lines() {
        if let Some(opt) = line.strip_suffix("=y") {
            on.push(opt);
        } else if let Some(opt) = line
            .strip_prefix("# ")
            .and_then(|l| l.strip_suffix(" is not set"))
        {
            off.push(opt);
        }
    }
    (on, off)
}

/// Checks a generated `.config` kept every choice of the fragment (Kconfig
/// silently drops options whose dependencies are missing).
pub fn check_config(dot_config: &str) -> Result<(), GuestImageError> {
    let (on, off) = fragment_options();
    let lines: Vec<&str> = dot_config.lines().collect();
    for opt in on {
        if !lines.contains(&format!("{opt}=y").as_str()) {
            return Err(GuestImageError::ConfigDropped(opt.to_string()));
        }
    }
    for opt in off {
        if lines.iter().any(|l| l.starts_with(&format!("{opt}="))) {
            return Err(GuestImageError::ConfigDropped(format!(
                "{opt} (should be off)"
            )));
        }
    }
    Ok(())
}

/// Returns `out/vmlinux`, building it unless the stamp says it is current.
pub fn build_kernel(
    out: &Path,
    jobs: usize,
    log: &mut dyn FnMut(&str),
) -> Result<PathBuf, GuestImageError> {
    let tarball = find_linux_source()?;
    let size = std::fs::metadata(&tarball)
        .map_err(GuestImageError::io("stat linux source"))?
        .len();
    let stamp = format!("{}\n{size}\n{CONFIG_FRAGMENT}", tarball.display());
    let vmlinux = out.join("vmlinux");
    let stamp_path = out.join("vmlinux.stamp");
    if vmlinux.exists()
        && std::fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str())
    {
        log(&format!("kernel: reusing {}", vmlinux.display()));
        return Ok(vmlinux);
    }
    let src_root = out.join("src");
    let version = tarball
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".tar.xz"))
        .ok_or(GuestImageError::NoLinuxSource)?
        .to_string();
    let src = src_root.join(&version);
    if !src.join("Makefile").exists() {
        log(&format!("kernel: unpacking {}", tarball.display()));
        std::fs::create_dir_all(&src_root).map_err(GuestImageError::io("create source dir"))?;
        run(
            Command::new("tar")
                .arg("-xf")
                .arg(&tarball)
                .arg("-C")
                .arg(&src_root),
            "tar",
        )?;
    }
    let fragment = out.join("openclaw.config");
    std::fs::write(&fragment, CONFIG_FRAGMENT).map_err(GuestImageError::io("write fragment"))?;
    log("kernel: configuring (tinyconfig + openclaw.config)");
    run(
        Command::new("make")
            .arg("-s")
            .arg("tinyconfig")
            .current_dir(&src),
        "make tinyconfig",
    )?;
    run(
        Command::new("scripts/kconfig/merge_config.sh")
            .args(["-m", ".config"])
            .arg(&fragment)
            .current_dir(&src),
        "merge_config.sh",
    )?;
    run(
        Command::new("make")
            .arg("-s")
            .arg("olddefconfig")
            .current_dir(&src),
        "make olddefconfig",
    )?;
    let dot_config = std::fs::read_to_string(src.join(".config"))
        .map_err(GuestImageError::io("read .config"))?;
    check_config(&dot_config)?;
    log(&format!(
        "kernel: building vmlinux with make -j{jobs} (a few minutes)"
    ));
    run(
        Command::new("make")
            .arg("-s")
            .arg(format!("-j{jobs}"))
            .arg("vmlinux")
            .current_dir(&src),
        "make vmlinux",
    )?;
    std::fs::copy(src.join("vmlinux"), &vmlinux).map_err(GuestImageError::io("copy vmlinux"))?;
    std::fs::write(&stamp_path, stamp).map_err(GuestImageError::io("write stamp"))?;
    Ok(vmlinux)
}

fn run(cmd: &mut Command, what: &'static str) -> Result<(), GuestImageError> {
    let output = cmd.output().map_err(GuestImageError::io(what))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
    Err(GuestImageError::Command {
        what,
        status: output.status.to_string(),
        stderr_tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_names_the_settings_the_guest_needs() {
        let (on, off) = fragment_options();
        for needed in [
            "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES",
            "CONFIG_VIRTIO_NET",
            "CONFIG_VIRTIO_CONSOLE",
            "CONFIG_SERIAL_8250_CONSOLE",
            "CONFIG_BLK_DEV_INITRD",
            "CONFIG_BLOCK",
            "CONFIG_VIRTIO_BLK",
            "CONFIG_EXT4_FS",
            "CONFIG_OVERLAY_FS",
        ] {
            assert!(on.contains(&needed), "{needed}");
        }
        for absent in [
            "CONFIG_MODULES",
            "CONFIG_PTP_1588_CLOCK_KVM",
            "CONFIG_PCI",
            "CONFIG_ACPI",
            // The L1-hang cure (docs/vmm.md): no i8042 probe storm.
            "CONFIG_VT",
            "CONFIG_INPUT",
            "CONFIG_SERIO",
        ] {
            assert!(off.contains(&absent), "{absent}");
        }
        // Every setting line carries a reason on a comment line above it or
        // belongs to a commented group.
        assert!(
            CONFIG_FRAGMENT
                .lines()
                .filter(|l| l.starts_with("# "))
                .count()
                > 20
        );
    }

    #[test]
    fn check_config_catches_dropped_options() {
        let (on, off) = fragment_options();
        let mut good: String = on.iter().map(|o| format!("{o}=y\n")).collect();
        good.extend(off.iter().map(|o| format!("# {o} is not set\n")));
        assert_eq!(check_config(&good), Ok(()));
        let missing = good.replace("CONFIG_VIRTIO_NET=y\n", "");
        assert_eq!(
            check_config(&missing),
            Err(GuestImageError::ConfigDropped("CONFIG_VIRTIO_NET".into()))
        );
        let extra = format!("{good}CONFIG_MODULES=y\n");
        assert!(matches!(
            check_config(&extra),
            Err(GuestImageError::ConfigDropped(_))
        ));
    }
}
