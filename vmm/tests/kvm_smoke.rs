//! KVM smoke tests with hand-assembled 64-bit guests, on whatever /dev/kvm this
//! host has (the dev/CI machines' nested PVM included): long-mode entry,
//! serial output, the boot marker, reset, triple fault, timeout and kill.
//! Skipped with a message when /dev/kvm is absent.

use std::path::Path;
use std::time::Duration;

use vmm::{ExitReason, Kernel, MicroVm, VmConfig, BOOT_MARKER_PORT};

const LOAD_ADDR: u64 = 0x10_0000;

fn kvm_available() -> bool {
    if Path::new("/dev/kvm").exists() {
        true
    } else {
        eprintln!("SKIPPED: /dev/kvm is absent on this host");
        false
    }
}

/// `mov dx, port; mov al, byte; out dx, al` for each byte.
fn out_bytes(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut code = vec![0x66, 0xba];
    code.extend_from_slice(&port.to_le_bytes());
    for b in bytes {
        code.extend_from_slice(&[0xb0, *b, 0xee]);
    }
    code
}

/// `mov al, 0xfe; out 0x64, al; hlt`: ask the keyboard controller to reset.
const RESET: [u8; 5] = [0xb0, 0xfe, 0xe6, 0x64, 0xf4];

fn config(code: Vec<u8>, dir: &Path) -> VmConfig {
    let mut c = VmConfig::new(
        Kernel::Flat {
            code,
            load_addr: LOAD_ADDR,
        },
        dir.join("console.log"),
    );
    c.mem_mib = 32;
    c
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn long_mode_guest_writes_serial_hits_the_boot_marker_and_resets() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut code = out_bytes(0x3f8, b"hello from long mode\n");
    code.extend(out_bytes(BOOT_MARKER_PORT, &[1]));
    code.extend(RESET);
    let vm = MicroVm::boot(config(code, dir.path())).expect("boot");
    let exit = vm.wait(Some(Duration::from_secs(20)));
    assert!(
        matches!(exit.reason, ExitReason::Reset),
        "{:?}",
        exit.reason
    );
    let boot = exit.boot_time.expect("boot marker seen");
    assert!(boot <= exit.total_time);
    let console = std::fs::read_to_string(dir.path().join("console.log")).expect("console");
    assert_eq!(console, "hello from long mode\n");
    eprintln!(
        "flat guest: boot marker after {boot:?}, whole run {:?}",
        exit.total_time
    );
}

#[test]
fn control_channel_frames_come_back_as_task_output() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut wire = vmm::encode_frame(vmm::FRAME_STDOUT, b"out");
    wire.extend(vmm::encode_frame(vmm::FRAME_STDERR, b"err"));
    wire.extend(vmm::encode_frame(vmm::FRAME_EXIT, &7i32.to_le_bytes()));
    let mut code = out_bytes(0x2f8, &wire);
    code.extend(RESET);
    let exit = MicroVm::boot(config(code, dir.path()))
        .expect("boot")
        .wait(Some(Duration::from_secs(20)));
    assert!(
        matches!(exit.reason, ExitReason::Reset),
        "{:?}",
        exit.reason
    );
    assert_eq!(exit.task.stdout, b"out");
    assert_eq!(exit.task.stderr, b"err");
    assert_eq!(exit.task.exit_status, Some(7));
    assert_eq!(exit.boot_time, None, "this guest never wrote the marker");
}

#[test]
fn triple_fault_ends_the_vm_as_shutdown() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // ud2 with an empty IDT: #UD -> #GP -> double fault -> triple fault.
    let exit = MicroVm::boot(config(vec![0x0f, 0x0b], dir.path()))
        .expect("boot")
        .wait(Some(Duration::from_secs(20)));
    assert!(
        matches!(exit.reason, ExitReason::Shutdown | ExitReason::Error(_)),
        "{:?}",
        exit.reason
    );
}

#[test]
fn a_spinning_guest_times_out_and_leaves_no_threads() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let before = threads();
    let mut c = config(vec![0xeb, 0xfe], dir.path()); // jmp .
    c.vcpus = 2;
    let vm = MicroVm::boot(c).expect("boot");
    assert!(threads() >= before + 2, "one thread per vCPU");
    let exit = vm.wait(Some(Duration::from_millis(300)));
    assert!(
        matches!(exit.reason, ExitReason::TimedOut),
        "{:?}",
        exit.reason
    );
    // Other tests run in parallel threads, so compare with a margin of them.
    assert!(
        threads() <= before + 1,
        "vCPU threads joined: {} -> {}",
        before,
        threads()
    );
}

#[test]
fn kill_stops_a_running_guest() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let vm = MicroVm::boot(config(vec![0xeb, 0xfe], dir.path())).expect("boot");
    std::thread::sleep(Duration::from_millis(50));
    let started = std::time::Instant::now();
    let exit = vm.kill();
    assert!(
        matches!(exit.reason, ExitReason::Killed),
        "{:?}",
        exit.reason
    );
    eprintln!("kill took {:?}", started.elapsed());
}

#[test]
fn bad_configurations_name_their_stage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = config(vec![0xf4], dir.path());
    c.vcpus = 0;
    assert!(matches!(
        MicroVm::boot(c),
        Err(vmm::StartVmError::VcpuCount(0))
    ));
    if !kvm_available() {
        return;
    }
    let mut c = config(vec![0xf4], dir.path());
    c.kernel = Kernel::File(dir.path().join("missing-vmlinux"));
    assert!(matches!(
        MicroVm::boot(c),
        Err(vmm::StartVmError::OpenKernel { .. })
    ));
    let mut c = config(vec![0xf4], dir.path());
    c.mem_mib = 1;
    assert!(matches!(
        MicroVm::boot(c),
        Err(vmm::StartVmError::GuestMemory(_))
    ));
    let mut c = config(vec![0xf4], dir.path());
    c.extra_cpio = Some(vec![0; 64 << 20]);
    assert!(matches!(
        MicroVm::boot(c),
        Err(vmm::StartVmError::InitramfsTooLarge { .. })
    ));
}
