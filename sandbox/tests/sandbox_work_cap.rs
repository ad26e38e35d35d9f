//! `/work` with a size cap: a command that writes past it gets `ENOSPC`
//! from a real file system, the host disk keeps its space, the supervisor
//! reads the results after the sandbox ended, and nothing (image file,
//! mount, loop device) outlives the volume.

mod sandbox_common;

use std::path::Path;
use std::sync::Arc;

use sandbox::{WorkVolume, MIN_WORK_BYTES};
use sandbox_common::*;

const CAP: u64 = 8 << 20;

fn loop_attached(device: &Path) -> bool {
    let name = device
        .file_name()
        .expect("loopN")
        .to_string_lossy()
        .into_owned();
    Path::new("/sys/block")
        .join(name)
        .join("loop/backing_file")
        .exists()
}

#[test]
fn writes_past_the_cap_fail_with_enospc_and_nothing_is_left_behind() {
    let bundle = tempfile::tempdir().expect("tempdir");
    let image = bundle.path().join("work.img");
    let volume = WorkVolume::create(&image, CAP, 65534, 65534).expect("work volume");
    assert!(
        !exists(&image),
        "the image is unlinked once the loop device holds it"
    );
    let device = volume.device().to_path_buf();
    assert!(loop_attached(&device));
    assert!(
        mounts_mentioning(&device.display().to_string()).is_empty(),
        "the supervisor's mount is detached: in no mount table"
    );
    assert!(!exists(volume.path().join("lost+found")));
    std::fs::write(volume.path().join("task.txt"), "the task\n").expect("copy in");
    std::os::unix::fs::chown(volume.path().join("task.txt"), Some(65534), Some(65534))
        .expect("chown");

    let volume = Arc::new(volume);
    let net = network("wcap");
    let mut spec = sh_spec(
        &net,
        "cat /work/task.txt; \
         dd if=/dev/zero of=/work/fill bs=1M count=64 2>/work/dd.err; echo \"dd=$?\"; \
         grep -c 'No space left on device' /work/dd.err",
        b"ca",
    );
    spec.work_volume = Some(volume.clone());
    let out = run(spec);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout, "the task\ndd=1\n1\n", "stderr: {}", out.stderr);

    let usage = volume.usage().expect("usage");
    assert!(usage.is_full(), "{usage:?}");
    assert!(usage.size_bytes <= CAP, "{usage:?}");
    let filled = std::fs::metadata(volume.path().join("fill"))
        .expect("the sandbox's file, read after it ended")
        .len();
    assert!(filled > CAP / 2 && filled <= CAP, "{filled}");
    // The host directory that would have held the image holds nothing.
    assert_eq!(
        std::fs::read_dir(bundle.path()).expect("read").count(),
        0,
        "nothing of the volume in the host directory"
    );

    drop(volume);
    assert!(!loop_attached(&device), "the loop device detached itself");
    assert!(mounts_mentioning(&device.display().to_string()).is_empty());
}

#[test]
fn a_cap_below_the_minimum_is_refused_and_a_volume_with_a_workdir_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = WorkVolume::create(&dir.path().join("w.img"), MIN_WORK_BYTES - 1, 65534, 65534)
        .expect_err("too small");
    assert!(err.to_string().contains("minimum"), "{err}");
    assert!(!exists(dir.path().join("w.img")));

    let volume = WorkVolume::create(&dir.path().join("w.img"), MIN_WORK_BYTES, 65534, 65534)
        .expect("volume");
    let net = network("wboth");
    let mut spec = sh_spec(&net, "true", b"ca");
    spec.work_volume = Some(Arc::new(volume));
    spec.workdir = Some(dir.path().to_path_buf());
    let err = sandbox::Sandbox::spawn(spec).expect_err("both");
    assert!(err.to_string().contains("not both"), "{err}");
}
