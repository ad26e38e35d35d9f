//! `--backend auto`'s probe on this host's own /dev/kvm. On the project's
//! dev/CI machines that is a nested PVM hypervisor (module `kvm_pvm`), where
//! guest user space cannot make system calls: the probe must say no, with a
//! reason. (Inside the QEMU harness it must say yes: see kvm_in_qemu.rs.)

use std::path::Path;
use std::time::{Duration, Instant};

#[test]
fn probe_on_this_host() {
    let root = qemu_harness::workspace_root();
    let dir = tempfile::tempdir().expect("tempdir");
    if !Path::new("/dev/kvm").exists() {
        let r = vmm::probe(
            Path::new("/nonexistent"),
            Path::new("/nonexistent"),
            dir.path().join("c.log"),
            Duration::from_secs(1),
        );
        assert!(!r.usable);
        assert!(r.reason.contains("no /dev/kvm"), "{}", r.reason);
        return;
    }
    let init = guest_image::build_guest_init(&root, &root.join("target/guest-init"))
        .expect("guest init builds");
    let image = guest_image::build_image(&root.join("target/guest-image"), &init, 2, &mut |l| {
        eprintln!("{l}")
    })
    .expect("guest image builds");
    let budget = Duration::from_secs(15);
    let started = Instant::now();
    let r = vmm::probe(
        &image.kernel,
        &image.initramfs,
        dir.path().join("probe.log"),
        budget,
    );
    let took = started.elapsed();
    eprintln!("probe: usable={} in {took:?}: {}", r.usable, r.reason);
    assert!(
        took < budget + Duration::from_secs(5),
        "the probe respects its budget"
    );
    assert!(!r.reason.is_empty());
    if Path::new("/sys/module/kvm_pvm").exists() {
        assert!(
            !r.usable,
            "nested PVM cannot run our guest's user space: {}",
            r.reason
        );
    } else if r.usable {
        assert!(r.boot_time.is_some_and(|t| t < budget));
    }
}
