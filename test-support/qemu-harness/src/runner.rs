//! Building the static `l1_runner` example and running it inside L1: the
//! harness's usual payload (our VMM booting the guest image again and again).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::{
    l1_kernel, outer_initramfs, qemu_payload_files, run_qemu_with_disks, workspace_root,
    HarnessError, L1Disk, L1Payload, QemuRun,
};

/// Builds a static example binary of this crate (same flags as the guest init).
pub fn build_static_example(name: &str) -> Result<PathBuf, HarnessError> {
    let root = workspace_root();
    let target = root.join("target/guest-init");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "-p",
            "qemu-harness",
            "--example",
            name,
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", &target)
        .env("RUSTFLAGS", guest_image::STATIC_RUSTFLAGS)
        .output()
        .map_err(HarnessError::io("cargo build (example)"))?;
    if !out.status.success() {
        return Err(HarnessError::Command {
            what: "cargo build (example)",
            status: out.status.to_string(),
            stderr_tail: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(target
        .join("x86_64-unknown-linux-gnu/debug/examples")
        .join(name))
}

/// More for [`run_l1_runner_with`] to carry: files (path in L1, path
/// here), read-only disks, and L1's memory when not the default.
#[derive(Debug, Default)]
pub struct RunnerExtras {
    pub files: Vec<(String, PathBuf)>,
    pub disks: Vec<L1Disk>,
    pub mem_mib: Option<u32>,
}

/// Builds everything (guest init, image, static runner, L1 kernel), boots
/// L1 and runs `l1_runner KERNEL INITRAMFS BOOTS <runner_args>` there.
/// `with_qemu` also carries QEMU into L1; `env` is set for the runner.
pub fn run_l1_runner(
    boots: usize,
    runner_args: &[&str],
    with_qemu: bool,
    env: &[(&str, &str)],
    timeout: Duration,
) -> Result<QemuRun, HarnessError> {
    run_l1_runner_with(
        boots,
        runner_args,
        with_qemu,
        env,
        timeout,
        RunnerExtras::default(),
    )
}

/// [`run_l1_runner`] with `extras`; L1 also gets the boot initramfs (a
/// root filesystem's guest) at `/guest/boot.cpio`.
pub fn run_l1_runner_with(
    boots: usize,
    runner_args: &[&str],
    with_qemu: bool,
    env: &[(&str, &str)],
    timeout: Duration,
    extras: RunnerExtras,
) -> Result<QemuRun, HarnessError> {
    let root = workspace_root();
    let init = guest_image::build_guest_init(&root, &root.join("target/guest-init"))?;
    let image = guest_image::build_image(&root.join("target/guest-image"), &init, 2, &mut |l| {
        eprintln!("image: {l}")
    })?;
    let runner = build_static_example("l1_runner")?;
    let l1 = l1_kernel(&root.join("target/qemu-harness"))?;
    let mut files = vec![
        ("guest/vmlinux".to_string(), image.kernel.clone()),
        ("guest/initramfs.cpio".to_string(), image.initramfs.clone()),
        ("guest/boot.cpio".to_string(), image.boot.clone()),
        ("bin/l1_runner".to_string(), runner),
    ];
    if with_qemu {
        files.extend(qemu_payload_files()?);
    }
    files.extend(extras.files);
    files.sort();
    files.dedup_by(|a, b| a.0 == b.0);
    let env: String = env.iter().map(|(k, v)| format!("{k}='{v}' ")).collect();
    let payload = L1Payload {
        files,
        script: format!(
            "{env}/bin/l1_runner /guest/vmlinux /guest/initramfs.cpio {boots} {}",
            runner_args.join(" ")
        ),
    };
    let outer = outer_initramfs(&l1, &payload)?;
    let path = root.join(format!(
        "target/qemu-harness/outer-{}.cpio",
        std::process::id()
    ));
    std::fs::write(&path, outer).map_err(HarnessError::io("write outer initramfs"))?;
    let mem = extras
        .mem_mib
        .unwrap_or(if with_qemu { 1536 } else { 1024 });
    let run = run_qemu_with_disks(&l1, &path, mem, timeout, &extras.disks);
    let _ = std::fs::remove_file(&path);
    run
}
