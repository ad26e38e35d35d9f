//! KVM smoke tests with hand-assembled 64-bit guests, on whatever /dev/kvm this
//! host has (the dev/CI machines' nested PVM included): long-mode entry,
//! serial output, the boot marker, reset, triple fault, timeout and kill.
//! Ignored (with the reason) where /dev/kvm is absent; `OPENCLAW_REQUIRE_HARNESS=1`
//! makes that a failure (`test_requirements`, set up by vmm's build script).

use std::path::Path;
use std::time::Duration;

use guest_protocol::{encode_frame, BOOT_MARKER_PORT, FRAME_EXIT, FRAME_STDERR, FRAME_STDOUT};
use test_requirements::{require, Requirement};
use vmm::{ExitReason, Kernel, MicroVm, VmConfig};

const LOAD_ADDR: u64 = 0x10_0000;

/// First line of each test that needs the host's KVM: fails it if /dev/kvm
/// is missing after all, and records that it ran.
/// Checks the requirement and serializes the tests that boot VMs, so that
/// counting `vcpu*` threads sees this test's VM only.
fn kvm(test: &str) -> std::sync::MutexGuard<'static, ()> {
    require(&[Requirement::Kvm], &format!("kvm_smoke::{test}"));
    one_vm_at_a_time()
}

fn one_vm_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static BOOTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    BOOTING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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

/// This process's vCPU threads (the VMM names them `vcpu<N>`).
fn vcpu_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .filter(|name| name.starts_with("vcpu"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
#[cfg_attr(not(openclaw_has_kvm), ignore = "/dev/kvm is absent on this host")]
fn long_mode_guest_writes_serial_hits_the_boot_marker_and_resets() {
    let _serial = kvm("long_mode_guest_writes_serial_hits_the_boot_marker_and_resets");
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
#[cfg_attr(not(openclaw_has_kvm), ignore = "/dev/kvm is absent on this host")]
fn control_channel_frames_come_back_as_task_output() {
    let _serial = kvm("control_channel_frames_come_back_as_task_output");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut wire = encode_frame(FRAME_STDOUT, b"out");
    wire.extend(encode_frame(FRAME_STDERR, b"err"));
    wire.extend(encode_frame(FRAME_EXIT, &7i32.to_le_bytes()));
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
#[cfg_attr(not(openclaw_has_kvm), ignore = "/dev/kvm is absent on this host")]
fn triple_fault_ends_the_vm_as_shutdown() {
    let _serial = kvm("triple_fault_ends_the_vm_as_shutdown");
    let dir = tempfile::tempdir().expect("tempdir");
    // ud2 with an empty IDT: #UD -> #GP -> double fault -> triple fault.
    let vm = MicroVm::boot(config(vec![0x0f, 0x0b], dir.path())).expect("boot");
    // The guest ends on its own: a caller polling has_ended() notices.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !vm.has_ended() {
        assert!(
            std::time::Instant::now() < deadline,
            "has_ended never turned true"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let exit = vm.wait(Some(Duration::from_secs(20)));
    assert!(
        matches!(exit.reason, ExitReason::Shutdown | ExitReason::Error(_)),
        "{:?}",
        exit.reason
    );
}

#[test]
#[cfg_attr(not(openclaw_has_kvm), ignore = "/dev/kvm is absent on this host")]
fn a_spinning_guest_times_out_and_leaves_no_threads() {
    let _serial = kvm("a_spinning_guest_times_out_and_leaves_no_threads");
    let dir = tempfile::tempdir().expect("tempdir");
    let before = vcpu_threads();
    let mut c = config(vec![0xeb, 0xfe], dir.path()); // jmp .
    c.vcpus = 2;
    let vm = MicroVm::boot(c).expect("boot");
    // A thread names itself once it runs: give both a moment to start.
    let mut seen = vcpu_threads();
    for _ in 0..200 {
        if seen == before + 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        seen = vcpu_threads();
    }
    assert_eq!(seen, before + 2, "one thread per vCPU");
    let exit = vm.wait(Some(Duration::from_millis(300)));
    assert!(
        matches!(exit.reason, ExitReason::TimedOut),
        "{:?}",
        exit.reason
    );
    assert_eq!(vcpu_threads(), before, "vCPU threads joined");
}

#[test]
#[cfg_attr(not(openclaw_has_kvm), ignore = "/dev/kvm is absent on this host")]
fn kill_stops_a_running_guest() {
    let _serial = kvm("kill_stops_a_running_guest");
    let dir = tempfile::tempdir().expect("tempdir");
    let vm = MicroVm::boot(config(vec![0xeb, 0xfe], dir.path())).expect("boot");
    std::thread::sleep(Duration::from_millis(50));
    assert!(!vm.has_ended(), "a spinning guest is still running");
    let started = std::time::Instant::now();
    let exit = vm.kill();
    assert!(
        matches!(exit.reason, ExitReason::Killed),
        "{:?}",
        exit.reason
    );
    eprintln!("kill took {:?}", started.elapsed());
}

/// Maps guest-physical 0xd000_0000 (virtio-mmio slot 0, above the 1 GiB
/// the boot page tables cover) with a 2 MiB page, then copies the device's
/// MagicValue register to the serial port.
fn read_virtio_magic_to_serial() -> Vec<u8> {
    let mut code = vec![
        0x48, 0xc7, 0xc7, 0x18, 0xa0, 0x00, 0x00, // mov rdi, 0xa018 (PDPT[3])
        0x48, 0xc7, 0x07, 0x03, 0x00, 0x20, 0x00, // mov qword [rdi], 0x200003 (PD at 2 MiB)
        0x48, 0xc7, 0xc7, 0x00, 0x04, 0x20, 0x00, // mov rdi, 0x200400 (PD[0x80])
        0x48, 0xb8, 0x83, 0x00, 0x00, 0xd0, 0x00, 0x00, 0x00, 0x00, // mov rax, 0xd0000083
        0x48, 0x89, 0x07, // mov [rdi], rax
        0x0f, 0x20, 0xd8, 0x0f, 0x22, 0xd8, // mov rax, cr3; mov cr3, rax (flush)
        0xbb, 0x00, 0x00, 0x00, 0xd0, // mov ebx, 0xd0000000
        0x8b, 0x03, // mov eax, [rbx]  (MMIO read of MagicValue)
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
    ];
    for _ in 0..3 {
        code.extend_from_slice(&[0xee, 0xc1, 0xe8, 0x08]); // out dx, al; shr eax, 8
    }
    code.push(0xee);
    code
}

/// A network namespace made by the test, removed on drop.
struct Netns(String);
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

#[test]
#[cfg_attr(
    not(all(openclaw_has_kvm, openclaw_has_tun)),
    ignore = "needs /dev/kvm and /dev/net/tun, and one of them is absent on this host"
)]
fn guest_reads_the_virtio_mmio_registers_of_its_nic() {
    require(
        &[Requirement::Kvm, Requirement::Tun],
        "kvm_smoke::guest_reads_the_virtio_mmio_registers_of_its_nic",
    );
    let _serial = one_vm_at_a_time();
    let ns = Netns(format!("ocvmm-smoke-{}", std::process::id()));
    let made = std::process::Command::new("ip")
        .args(["netns", "add", &ns.0])
        .status();
    assert!(made.is_ok_and(|s| s.success()), "ip netns add");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut code = read_virtio_magic_to_serial();
    code.extend(out_bytes(BOOT_MARKER_PORT, &[1]));
    code.extend(RESET);
    let mut c = config(code, dir.path());
    let netns_path = std::path::PathBuf::from(format!("/run/netns/{}", ns.0));
    let tap = netns::run_in(&netns_path, || {
        vmm::Tap::open_with_address("ocsmoke0", Some("10.78.0.1/24"))
    })
    .expect("enter the test namespace")
    .expect("tap in the test namespace");
    c.net = Some(vmm::NetConfig {
        tap,
        mac: [2, 0, 0, 0, 0, 1],
    });
    let exit = MicroVm::boot(c)
        .expect("boot")
        .wait(Some(Duration::from_secs(20)));
    assert!(
        matches!(exit.reason, ExitReason::Reset),
        "{:?}",
        exit.reason
    );
    assert!(exit.boot_time.is_some());
    let console = std::fs::read(dir.path().join("console.log")).expect("console");
    assert_eq!(console, b"virt", "MagicValue 0x74726976 read over MMIO");
    // The tap went away with the VM.
    let links = std::process::Command::new("ip")
        .args(["-n", &ns.0, "link", "show", "ocsmoke0"])
        .output()
        .expect("ip");
    assert!(!links.status.success(), "tap still exists after teardown");
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
}

/// The stages after /dev/kvm is opened.
#[test]
#[cfg_attr(not(openclaw_has_kvm), ignore = "/dev/kvm is absent on this host")]
fn bad_configurations_past_opening_kvm_name_their_stage() {
    let _serial = kvm("bad_configurations_past_opening_kvm_name_their_stage");
    let dir = tempfile::tempdir().expect("tempdir");
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
    let mut c = config(vec![0xf4], dir.path());
    c.disks.push(vmm::DiskConfig {
        path: dir.path().join("missing.ext4"),
        read_only: true,
        id: "root".into(),
    });
    let err = MicroVm::boot(c)
        .err()
        .expect("a missing disk stops the boot");
    assert!(
        matches!(&err, vmm::StartVmError::OpenDisk(_)) && err.to_string().contains("missing.ext4"),
        "{err}"
    );
}
