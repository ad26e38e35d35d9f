//! Runs inside the QEMU harness's L1 VM (which has a real /dev/kvm): boots
//! the openclaw guest with our VMM again and again, checks what comes back
//! over the control channel, and prints a verdict line the test reads from
//! the serial console. Built static, like the guest init.
//!
//! Usage: l1_runner KERNEL INITRAMFS BOOTS [probe] [net] [compare] | [disk]
//!
//! `net` adds one boot with a virtio-net NIC on a tap: the guest fetches a
//! page from a server the runner starts on the tap's address.
//! `compare` (for benches/boot.rs) also boots the same kernel, initramfs and
//! task under QEMU's `-M microvm -accel kvm` (when /bin/qemu is present),
//! one QEMU boot after each of ours, and prints both medians.
//! `disk` (for benches/boot.rs, instead of the usual boots) alternates
//! BOOTS pairs of sessions as the kvm backend boots them, each with a NIC
//! and a `/work` disk: the initramfs-only guest, then the guest booted from
//! a root image on virtio-blk (`/guest/boot.cpio`, the L1 disk whose serial
//! is `$BENCH_ROOT_SERIAL`, a fresh writable layer). Each session's command
//! makes one HTTP request to a server on the tap (`$BENCH_FETCH`: `curl`,
//! or `wget` for busybox images); the runner prints the time from VM
//! creation to the guest's /init (boot marker), to the command's start and
//! to that first request, the medians side by side, and what the session's
//! own disks occupy (apparent and allocated) after a command that writes
//! nothing.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use guest_image::SessionFiles;
use guest_protocol::cmdline as switch;
use vmm::{ExitReason, Kernel, MicroVm, NetConfig, Tap, VmConfig};

const TASK: &str = "echo out-line; echo err-line >&2; echo \"placeholder=$OPENCLAW_TEST_TOKEN\"; \
    test \"$(id -u)\" = 1000 && echo uid-ok; grep -q 'TEST SESSION CA' /etc/ssl/certs/ca-certificates.crt && echo ca-ok; exit 3";
const EXPECTED_STDOUT: &str = "out-line\nplaceholder=openclaw-placeholder-42\nuid-ok\nca-ok\n";

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: l1_runner KERNEL INITRAMFS BOOTS [probe]");
        std::process::exit(2);
    }
    let kernel = PathBuf::from(&args[1]);
    let initramfs = PathBuf::from(&args[2]);
    let boots: usize = args[3].parse().unwrap_or(1);
    let cmdline = std::env::var("GUEST_CMDLINE").unwrap_or_else(|_| "quiet".into());
    if args[4..].iter().any(|a| a == "disk") {
        let ok = disk_bench(&kernel, &initramfs, &cmdline, boots);
        println!(
            "HARNESS VERDICT: {} disk bench",
            if ok { "PASS" } else { "FAIL" }
        );
        return;
    }

    let session = SessionFiles {
        ca_pem: b"-----BEGIN CERTIFICATE-----\nTEST SESSION CA\n-----END CERTIFICATE-----\n"
            .to_vec(),
        env: vec![(
            "OPENCLAW_TEST_TOKEN".into(),
            "openclaw-placeholder-42".into(),
        )],
        argv: vec!["/bin/sh".into(), "-c".into(), TASK.into()],
        files: vec![("README".into(), 0o644, b"task files arrive here\n".to_vec())],
        ..Default::default()
    };
    let extra = match session.to_cpio() {
        Ok(c) => c,
        Err(e) => {
            println!("HARNESS VERDICT: FAIL session cpio: {e}");
            return;
        }
    };

    // `compare`: a QEMU microvm boot after each of ours, so the machine's
    // load drifts alike for both.
    let compare = args[4..].iter().any(|a| a == "compare") && prepare_qemu(&initramfs, &extra);
    let (mut q_marks, mut q_totals) = (Vec::new(), Vec::new());
    let (fds_before, threads_before) = (fds(), threads());
    let mut passed = 0;
    let mut boot_times = Vec::new();
    let mut totals = Vec::new();
    for i in 1..=boots {
        let console = PathBuf::from(format!("/tmp/console-{i}.log"));
        let mut config = VmConfig::new(Kernel::File(kernel.clone()), console.clone());
        config.initramfs = Some(initramfs.clone());
        config.extra_cpio = Some(extra.clone());
        config.cmdline = cmdline.clone();
        config.mem_mib = 256;
        // Marks where an L1 hang happens (creation or guest run).
        println!("BOOT {i} starting");
        let setup_started = std::time::Instant::now();
        let vm = match MicroVm::boot(config) {
            Ok(vm) => vm,
            Err(e) => {
                println!("BOOT {i} FAIL start: {e}");
                continue;
            }
        };
        let setup_ms = setup_started.elapsed().as_millis();
        let exit = vm.wait(Some(Duration::from_secs(90)));
        let stdout = String::from_utf8_lossy(&exit.task.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&exit.task.stderr).into_owned();
        let ok = matches!(exit.reason, ExitReason::Reset)
            && stdout == EXPECTED_STDOUT
            && stderr == "err-line\n"
            && exit.task.exit_status == Some(3);
        let ms = |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{}", d.as_millis()));
        println!(
            "BOOT {i} {} reason={:?} setup_ms={setup_ms} boot_marker_ms={} task_start_ms={} total_ms={} status={:?}",
            if ok { "ok" } else { "FAIL" },
            exit.reason,
            ms(exit.boot_time),
            ms(exit.task_start_time),
            exit.total_time.as_millis(),
            exit.task.exit_status,
        );
        if std::env::var_os("DUMP_CONSOLE").is_some() {
            for line in std::fs::read_to_string(&console)
                .unwrap_or_default()
                .lines()
            {
                println!("  console| {line}");
            }
        }
        if ok {
            passed += 1;
            if let Some(t) = exit.boot_time {
                boot_times.push(t);
            }
            totals.push(exit.total_time);
        } else {
            println!(
                "  stdout={stdout:?} stderr={stderr:?} malformed={:?}",
                exit.task.malformed
            );
            let log = std::fs::read_to_string(&console).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            for line in tail.into_iter().rev() {
                println!("  console| {line}");
            }
        }
        let _ = std::fs::remove_file(&console);
        if compare {
            qemu_boot(i, &cmdline, &mut q_marks, &mut q_totals);
        }
    }
    let (fds_after, threads_after) = (fds(), threads());
    println!("TEARDOWN fds {fds_before}->{fds_after} threads {threads_before}->{threads_after}");
    if !totals.is_empty() {
        println!("OURS total median ms={}", median(&mut totals).as_millis());
    }
    if !boot_times.is_empty() {
        boot_times.sort();
        println!(
            "BOOT MARKER ms: min={} median={} max={}",
            boot_times[0].as_millis(),
            boot_times[boot_times.len() / 2].as_millis(),
            boot_times[boot_times.len() - 1].as_millis()
        );
    }
    if std::env::var_os("GUEST_DMESG").is_some() {
        dmesg_boot(&kernel, &initramfs, &cmdline);
    }
    let mut net_ok = true;
    if args[4..].iter().any(|a| a == "net") {
        net_ok = net_boot(&kernel, &initramfs, &cmdline);
    }
    if !q_marks.is_empty() {
        println!(
            "QEMU-MICROVM mark median ms={} total median ms={}",
            median(&mut q_marks).as_millis(),
            median(&mut q_totals).as_millis()
        );
    }
    if args[4..].iter().any(|a| a == "probe") {
        let r = vmm::probe(
            &kernel,
            &initramfs,
            "/tmp/probe.log".into(),
            Duration::from_secs(30),
        );
        println!("PROBE usable={} reason={}", r.usable, r.reason);
    }
    let clean = fds_after == fds_before && threads_after == threads_before;
    println!(
        "HARNESS VERDICT: {} {passed}/{boots} teardown_clean={clean} net_ok={net_ok}",
        if passed == boots && clean && net_ok {
            "PASS"
        } else {
            "FAIL"
        }
    );
}

const PAGE: &str = "hello-from-l1";

/// One boot with a NIC: the guest's wget and curl reach a server on the tap.
fn net_boot(kernel: &Path, initramfs: &Path, cmdline: &str) -> bool {
    let session = SessionFiles {
        ca_pem: b"unused".to_vec(),
        env: vec![],
        argv: vec![
            "/bin/sh".into(),
            "-c".into(),
            "wget -q -O - http://10.0.2.1:8080/wget && echo && curl -sS http://10.0.2.1:8080/curl && echo".into(),
        ],
        ..Default::default()
    };
    let Ok(extra) = session.to_cpio() else {
        return false;
    };
    let mut config = VmConfig::new(
        Kernel::File(kernel.to_path_buf()),
        "/tmp/console-net.log".into(),
    );
    config.initramfs = Some(initramfs.to_path_buf());
    config.extra_cpio = Some(extra);
    config.cmdline = format!(
        "{cmdline} {}=10.0.2.2/24 {}=10.0.2.1",
        switch::IP,
        switch::GATEWAY
    );
    // The L1 VM is the whole world here: the tap lives in its namespace.
    let tap = match Tap::open_with_address("oc0", Some("10.0.2.1/24")) {
        Ok(tap) => tap,
        Err(e) => {
            println!("NET FAIL tap: {e}");
            return false;
        }
    };
    config.net = Some(NetConfig {
        tap,
        mac: [0x02, 0x0c, 0x1a, 0, 0, 2],
    });
    let vm = match MicroVm::boot(config) {
        Ok(vm) => vm,
        Err(e) => {
            println!("NET FAIL start: {e}");
            return false;
        }
    };
    let server = match TcpListener::bind("10.0.2.1:8080") {
        Ok(l) => l,
        Err(e) => {
            println!("NET FAIL bind: {e}");
            return false;
        }
    };
    let serving = std::thread::spawn(move || {
        let mut paths = Vec::new();
        for _ in 0..2 {
            let Ok((mut conn, _)) = server.accept() else {
                break;
            };
            let mut buf = [0u8; 1024];
            let n = conn.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            paths.push(request.split_whitespace().nth(1).unwrap_or("").to_string());
            let _ = write!(
                conn,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{PAGE}",
                PAGE.len()
            );
        }
        paths
    });
    let exit = vm.wait(Some(Duration::from_secs(120)));
    let stdout = String::from_utf8_lossy(&exit.task.stdout).into_owned();
    let ok = stdout == format!("{PAGE}\n{PAGE}\n") && exit.task.exit_status == Some(0);
    println!(
        "NET {} reason={:?} status={:?} boot_marker_ms={:?} stdout={stdout:?} stderr={:?}",
        if ok { "ok" } else { "FAIL" },
        exit.reason,
        exit.task.exit_status,
        exit.boot_time.map(|d| d.as_millis()),
        String::from_utf8_lossy(&exit.task.stderr)
    );
    if ok {
        let paths = serving.join().unwrap_or_default();
        println!("NET server saw {paths:?}");
    } else {
        let log = std::fs::read_to_string("/tmp/console-net.log").unwrap_or_default();
        for line in log
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            println!("  console| {line}");
        }
    }
    let tap_gone = !Path::new("/sys/class/net/oc0").exists();
    println!("NET tap removed after teardown: {tap_gone}");
    ok && tap_gone
}

/// One boot whose task prints the guest kernel's log (timestamped, even
/// under `quiet`): where the guest's boot time goes.
fn dmesg_boot(kernel: &Path, initramfs: &Path, cmdline: &str) {
    let session = SessionFiles {
        ca_pem: b"unused".to_vec(),
        env: vec![],
        argv: vec!["/bin/dmesg".into()],
        ..Default::default()
    };
    let Ok(extra) = session.to_cpio() else {
        return;
    };
    let mut config = VmConfig::new(
        Kernel::File(kernel.to_path_buf()),
        "/tmp/console-dmesg.log".into(),
    );
    config.initramfs = Some(initramfs.to_path_buf());
    config.extra_cpio = Some(extra);
    config.cmdline = format!("{cmdline} printk.time=1");
    let Ok(vm) = MicroVm::boot(config) else {
        println!("DMESG boot failed to start");
        return;
    };
    let exit = vm.wait(Some(Duration::from_secs(90)));
    println!(
        "DMESG boot_marker_ms={:?} task_start_ms={:?}",
        exit.boot_time.map(|d| d.as_millis()),
        exit.task_start_time.map(|d| d.as_millis())
    );
    for line in String::from_utf8_lossy(&exit.task.stdout).lines() {
        println!("  dmesg| {line}");
    }
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// QEMU microvm on L1's KVM, same guest: time to the first control-channel
/// byte (the guest init's boot mark) and to QEMU's exit after the guest's reset.
/// QEMU microvm on L1's KVM, same guest: writes its initrd (base + session
/// cpio, as our VMM concatenates them) once; false when QEMU is not there.
fn prepare_qemu(initramfs: &Path, extra: &[u8]) -> bool {
    if !Path::new(QEMU_IN_L1).exists() {
        println!("QEMU-MICROVM skipped: no qemu in L1");
        return false;
    }
    let mut combined = std::fs::read(initramfs).unwrap_or_default();
    combined.resize(combined.len().next_multiple_of(4), 0);
    combined.extend_from_slice(extra);
    if std::fs::write("/tmp/combined.cpio", &combined).is_err() {
        println!("QEMU-MICROVM skipped: cannot write the initrd");
        return false;
    }
    true
}

const QEMU_IN_L1: &str = "/bin/qemu-system-x86_64";

/// One QEMU microvm boot: time to the first control-channel byte (the guest
/// init's boot mark) and to QEMU's exit after the guest's reset, recorded
/// into `marks` and `totals`.
fn qemu_boot(i: usize, cmdline: &str, marks: &mut Vec<Duration>, totals: &mut Vec<Duration>) {
    let qemu = Path::new(QEMU_IN_L1);
    let control = PathBuf::from(format!("/tmp/q-control-{i}.bin"));
    let started = std::time::Instant::now();
    let child = Command::new(qemu)
        .args([
            "-M",
            "microvm,acpi=off,x-option-roms=off,rtc=off",
            "-accel",
            "kvm",
            "-cpu",
            "host",
        ])
        .args([
            "-m",
            "256",
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
        ])
        .args([
            "-L",
            "/usr/share/qemu",
            "-kernel",
            "/guest/vmlinux",
            "-initrd",
            "/tmp/combined.cpio",
        ])
        .arg("-append")
        .arg(format!("{} {cmdline} reboot=t", vmm::arch::BASE_CMDLINE))
        .args(["-serial", "file:/tmp/q-console.log"])
        .arg("-chardev")
        .arg(format!("file,id=ctl,path={}", control.display()))
        .args(["-device", "isa-serial,chardev=ctl,iobase=0x2f8,irq=3"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        println!("QEMU-MICROVM FAIL: cannot start qemu");
        return;
    };
    let mut mark = None;
    loop {
        if mark.is_none()
            && std::fs::metadata(&control)
                .map(|m| m.len() > 0)
                .unwrap_or(false)
        {
            mark = Some(started.elapsed());
        }
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() > Duration::from_secs(120) => {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(1)),
            Err(_) => break,
        }
    }
    let total = started.elapsed();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let out = std::fs::read(&control).unwrap_or_default();
    println!(
        "QEMU-MICROVM run {i} mark_ms={:?} total_ms={} control_bytes={} {}",
        mark.map(|d| d.as_millis()),
        total.as_millis(),
        out.len(),
        err.lines().next().unwrap_or("")
    );
    if let Some(m) = mark {
        marks.push(m);
        totals.push(total);
    }
    let _ = std::fs::remove_file(&control);
}

/// One of the disk benchmark's two guests.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BenchGuest {
    Initramfs,
    RootDisk,
}

/// One session's times from VM creation, and its disks' cost.
struct BenchRun {
    marker: Duration,
    task: Duration,
    request: Duration,
    /// (apparent, allocated) bytes of the layer and the /work disk after
    /// the session; the root image's guest only.
    disks: Option<[(u64, u64); 2]>,
}

/// Reads one of a [`BenchRun`]'s times.
type Field = fn(&BenchRun) -> Duration;

/// The `disk` mode: see the file's header.
fn disk_bench(kernel: &Path, initramfs: &Path, cmdline: &str, boots: usize) -> bool {
    let serial = std::env::var("BENCH_ROOT_SERIAL").unwrap_or_default();
    let Some(root) = disk_by_serial(&serial) else {
        println!("DISK-BENCH FAIL: no L1 disk with serial {serial:?}");
        return false;
    };
    let fetch = std::env::var("BENCH_FETCH").unwrap_or_else(|_| "curl".into());
    let url = "http://10.0.2.1:8080/first";
    let argv: Vec<String> = match fetch.as_str() {
        "wget" => ["/bin/busybox", "wget", "-q", "-O", "/dev/null", url]
            .map(String::from)
            .to_vec(),
        _ => ["/usr/bin/curl", "-sS", "-o", "/dev/null", url]
            .map(String::from)
            .to_vec(),
    };
    println!("DISK-BENCH root image {root}, command {argv:?}, {boots} pairs alternating");
    let mut runs: Vec<(BenchGuest, BenchRun)> = Vec::new();
    let mut ok = true;
    for i in 1..=boots {
        for guest in [BenchGuest::Initramfs, BenchGuest::RootDisk] {
            match bench_session(kernel, initramfs, &root, cmdline, &argv, guest, i) {
                Ok(run) => runs.push((guest, run)),
                Err(e) => {
                    println!("DISK-BENCH {i} FAIL: {e}");
                    ok = false;
                }
            }
        }
    }
    let pick = |g: BenchGuest, f: Field| -> Vec<Duration> {
        runs.iter()
            .filter(|(guest, _)| *guest == g)
            .map(|(_, r)| f(r))
            .collect()
    };
    let fields: [(&str, Field); 3] = [
        ("marker", |r| r.marker),
        ("task", |r| r.task),
        ("request", |r| r.request),
    ];
    for (name, f) in fields {
        let (mut a, mut b) = (
            pick(BenchGuest::Initramfs, f),
            pick(BenchGuest::RootDisk, f),
        );
        if a.is_empty() || b.is_empty() {
            continue;
        }
        let (ma, mb) = (median(&mut a), median(&mut b));
        println!(
            "DISK-BENCH median {name} initramfs_ms={} rootdisk_ms={} ratio={:.2}",
            ma.as_millis(),
            mb.as_millis(),
            mb.as_secs_f64() / ma.as_secs_f64()
        );
    }
    let costs: Vec<[(u64, u64); 2]> = runs.iter().filter_map(|(_, r)| r.disks).collect();
    if let Some(max) = costs.iter().map(|[layer, work]| layer.1 + work.1).max() {
        let [layer, work] = costs[0];
        println!(
            "DISK-BENCH session disks after a command that writes nothing: layer apparent={} \
             allocated={} work apparent={} allocated={}; most allocated in any session={max}",
            layer.0, layer.1, work.0, work.1
        );
    }
    ok
}

/// `/dev/vdX` whose serial is `serial`.
fn disk_by_serial(serial: &str) -> Option<String> {
    std::fs::read_dir("/sys/block").ok()?.find_map(|e| {
        let e = e.ok()?;
        let s = std::fs::read_to_string(e.path().join("serial")).ok()?;
        (!serial.is_empty() && s.trim_end_matches(['\0', '\n']).trim() == serial)
            .then(|| format!("/dev/{}", e.file_name().to_string_lossy()))
    })
}

/// One session as the kvm backend runs it, timed from VM creation.
fn bench_session(
    kernel: &Path,
    initramfs: &Path,
    root: &str,
    cmdline: &str,
    argv: &[String],
    guest: BenchGuest,
    i: usize,
) -> Result<BenchRun, String> {
    use guest_protocol::disks::{LAYER_ID, ROOT_ID, WORK_ID};
    let name = match guest {
        BenchGuest::Initramfs => "initramfs",
        BenchGuest::RootDisk => "rootdisk",
    };
    let dir = PathBuf::from(format!("/tmp/bench-{name}-{i}"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (work, layer) = (dir.join("work.ext4"), dir.join("layer.ext4"));
    let with_root = guest == BenchGuest::RootDisk;
    let made = std::time::Instant::now();
    guest_image::ext4::make_session_disks(None, &work, with_root.then_some(layer.as_path()))
        .map_err(|e| format!("session disks: {e}"))?;
    let made = made.elapsed();
    let session = SessionFiles {
        ca_pem: b"-----BEGIN CERTIFICATE-----\nBENCH CA\n-----END CERTIFICATE-----\n".to_vec(),
        env: vec![],
        argv: argv.to_vec(),
        ..Default::default()
    };
    let extra = session
        .to_cpio()
        .map_err(|e| format!("session cpio: {e}"))?;
    let console = dir.join("console.log");
    let mut config = VmConfig::new(Kernel::File(kernel.to_path_buf()), console.clone());
    config.extra_cpio = Some(extra);
    config.mem_mib = 256;
    config.disks.push(vmm::DiskConfig {
        path: work.clone(),
        read_only: false,
        id: WORK_ID.into(),
    });
    if with_root {
        config.initramfs = Some(PathBuf::from("/guest/boot.cpio"));
        config.disks.push(vmm::DiskConfig {
            path: root.into(),
            read_only: true,
            id: ROOT_ID.into(),
        });
        config.disks.push(vmm::DiskConfig {
            path: layer.clone(),
            read_only: false,
            id: LAYER_ID.into(),
        });
    } else {
        config.initramfs = Some(initramfs.to_path_buf());
    }
    config.cmdline = format!(
        "{cmdline} {}=10.0.2.2/24 {}=10.0.2.1",
        switch::IP,
        switch::GATEWAY
    );
    let tap =
        Tap::open_with_address("oc0", Some("10.0.2.1/24")).map_err(|e| format!("tap: {e}"))?;
    config.net = Some(NetConfig {
        tap,
        mac: [0x02, 0x0c, 0x1a, 0, 0, 3],
    });
    let server = TcpListener::bind("10.0.2.1:8080").map_err(|e| format!("bind: {e}"))?;
    server
        .set_nonblocking(true)
        .map_err(|e| format!("nonblocking: {e}"))?;
    let ended = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let created = std::time::Instant::now();
    let serving = {
        let ended = ended.clone();
        // Polled (1 ms) rather than blocking, so a guest that never asks
        // cannot leave this thread waiting.
        std::thread::spawn(move || loop {
            match server.accept() {
                Ok((mut conn, _)) => {
                    let at = created.elapsed();
                    let _ = conn.set_nonblocking(false);
                    let mut buf = [0u8; 1024];
                    let _ = conn.read(&mut buf);
                    let _ = write!(conn, "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
                    return Some(at);
                }
                Err(_) if ended.load(std::sync::atomic::Ordering::Acquire) => return None,
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        })
    };
    let vm = MicroVm::boot(config).map_err(|e| format!("start: {e}"));
    let exit = match vm {
        Ok(vm) => vm.wait(Some(Duration::from_secs(180))),
        Err(e) => {
            ended.store(true, std::sync::atomic::Ordering::Release);
            let _ = serving.join();
            return Err(e);
        }
    };
    ended.store(true, std::sync::atomic::Ordering::Release);
    let request = serving.join().ok().flatten();
    if exit.task.exit_status != Some(0) {
        let log = std::fs::read_to_string(&console).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!(
            "{name}: reason={:?} status={:?} stderr={:?}\n  console| {}",
            exit.reason,
            exit.task.exit_status,
            String::from_utf8_lossy(&exit.task.stderr),
            tail.join("\n  console| ")
        ));
    }
    let request = request.ok_or_else(|| format!("{name}: the server saw no request"))?;
    let (Some(marker), Some(task)) = (exit.boot_time, exit.task_start_time) else {
        return Err(format!("{name}: no boot or task marker"));
    };
    let disks = with_root.then(|| {
        let cost = |p: &Path| {
            (
                std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
                guest_image::ext4::allocated_bytes(p).unwrap_or(0),
            )
        };
        [cost(&layer), cost(&work)]
    });
    println!(
        "DISK-BENCH {i} {name} marker_ms={} task_ms={} request_ms={} total_ms={} disks_made_ms={}{}",
        marker.as_millis(),
        task.as_millis(),
        request.as_millis(),
        exit.total_time.as_millis(),
        made.as_millis(),
        disks.map_or(String::new(), |[l, w]| format!(
            " layer_alloc={} work_alloc={}",
            l.1, w.1
        ))
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(BenchRun {
        marker,
        task,
        request,
        disks,
    })
}
