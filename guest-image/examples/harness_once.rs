//! Boots the QEMU harness once with a chosen script and prints the L1
//! console: for debugging the harness and for `benches/boot.rs`.
//!
//! Usage: harness_once BOOTS [extra args for l1_runner...]

use std::time::Duration;

use guest_image::qemu_harness::{self, L1Payload};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let boots = args.first().cloned().unwrap_or_else(|| "1".into());
    let root = qemu_harness::workspace_root();
    let init = guest_image::build_guest_init(&root, &root.join("target/guest-init"))?;
    let image = guest_image::build_image(&root.join("target/guest-image"), &init, 2, &mut |l| {
        eprintln!("{l}")
    })?;
    let runner = qemu_harness::build_static_example("l1_runner")?;
    let l1 = qemu_harness::l1_kernel(&root.join("target/qemu-harness"))?;
    let cmdline = std::env::var("GUEST_CMDLINE").unwrap_or_else(|_| "quiet".into());
    let payload = L1Payload {
        files: vec![
            ("guest/vmlinux".into(), image.kernel.clone()),
            ("guest/initramfs.cpio".into(), image.initramfs.clone()),
            ("bin/l1_runner".into(), runner),
        ],
        script: format!(
            "DUMP_CONSOLE=1 GUEST_CMDLINE='{cmdline}' /bin/l1_runner /guest/vmlinux /guest/initramfs.cpio {boots} {}",
            args[1..].join(" ")
        ),
    };
    let outer = qemu_harness::outer_initramfs(&l1, &payload)?;
    let path = root.join("target/qemu-harness/outer-once.cpio");
    std::fs::write(&path, outer)?;
    let run = qemu_harness::run_qemu(&l1, &path, 1024, Duration::from_secs(600))?;
    println!("{}", run.output);
    println!(
        "QEMU wall time: {:?} timed_out={}",
        run.elapsed, run.timed_out
    );
    Ok(())
}
