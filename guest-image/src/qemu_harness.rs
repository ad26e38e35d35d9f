//! The QEMU harness: real KVM for our VMM on machines whose own /dev/kvm
//! cannot run guest user space (nested PVM). QEMU's software emulation
//! presents an AMD CPU with SVM; a Debian cloud kernel inside (L1) loads
//! kvm-amd and has a real /dev/kvm; a static runner there boots our guest
//! with our VMM and prints a verdict on the serial console.
//!
//! Everything downloaded or built lives under the workspace's `target/`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cpio::CpioWriter;
use crate::GuestImageError;

pub const QEMU: &str = "qemu-system-x86_64";
const L1_PACKAGE: &str = "linux-image-cloud-amd64";

/// Is QEMU installed?
pub fn qemu_available() -> bool {
    Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The L1 kernel and the modules that give it /dev/kvm (and tap).
pub struct L1Kernel {
    pub vmlinuz: PathBuf,
    /// In load order.
    pub modules: Vec<PathBuf>,
}

/// Fetches Debian's cloud kernel with `apt-get download` (its versioned
/// dependency too) and unpacks it under `dir`, once.
pub fn l1_kernel(dir: &Path) -> Result<L1Kernel, GuestImageError> {
    let root = dir.join("kroot");
    if let Some(k) = find_l1(&root) {
        return Ok(k);
    }
    let debs = dir.join("debs");
    std::fs::create_dir_all(&debs).map_err(GuestImageError::io("create debs dir"))?;
    let deps = run_out(
        Command::new("apt-cache").args(["depends", L1_PACKAGE]),
        "apt-cache depends",
    )?;
    let versioned = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .ok_or_else(|| GuestImageError::Command {
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
        .map_err(GuestImageError::io("read debs dir"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&versioned))
        })
        .ok_or(GuestImageError::NoInit(debs.join(&versioned)))?;
    run_out(
        Command::new("dpkg").arg("-x").arg(&deb).arg(&root),
        "dpkg -x",
    )?;
    find_l1(&root).ok_or(GuestImageError::NoInit(root))
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
    // Dependencies first (read from each module's `depends=`): irqbypass <- kvm <- kvm-amd.
    let modules = [
        "virt/lib/irqbypass.ko",
        "arch/x86/kvm/kvm.ko",
        "arch/x86/kvm/kvm-amd.ko",
        "drivers/net/tun.ko",
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
pub fn outer_initramfs(l1: &L1Kernel, payload: &L1Payload) -> Result<Vec<u8>, GuestImageError> {
    let mut w = CpioWriter::new();
    for d in ["bin", "dev", "proc", "sys", "tmp", "mod", "run"] {
        w.dir(d, 0o755);
    }
    w.char_dev("dev/console", 0o600, 5, 1);
    let read = |p: &Path| std::fs::read(p).map_err(GuestImageError::io_path(p));
    w.file(
        "bin/busybox",
        0o755,
        &read(Path::new(crate::initramfs::BUSYBOX))?,
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

/// What QEMU printed, and how long it ran.
pub struct QemuRun {
    pub output: String,
    pub elapsed: Duration,
    pub timed_out: bool,
    /// L1 printed nothing for `STALL`: it hung (the runner prints a line
    /// per boot, each well under a minute even under emulation).
    pub stalled: bool,
}

/// How long L1 may stay silent before the harness calls it hung.
pub const STALL: Duration = Duration::from_secs(120);

/// Boots L1 under TCG with an SVM-capable CPU and returns its console output.
pub fn run_qemu(
    l1: &L1Kernel,
    initramfs: &Path,
    mem_mib: u32,
    timeout: Duration,
) -> Result<QemuRun, GuestImageError> {
    let started = Instant::now();
    // QEMU's monitor, used when L1 goes silent: its registers and LAPIC say
    // why, and a key press wakes it (see the nudge below). In the temp dir:
    // a socket path must fit in 108 bytes, a workspace path may not.
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let monitor = std::env::temp_dir().join(format!(
        "openclaw-qemu-{}-{}.monitor",
        std::process::id(),
        RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&monitor);
    let l1_cmdline = format!(
        "console=ttyS0 quiet panic=-1 mitigations=off {}",
        std::env::var("OPENCLAW_L1_CMDLINE").unwrap_or_default()
    );
    let mut child = Command::new(QEMU)
        .args([
            "-M",
            "q35",
            "-accel",
            "tcg",
            "-cpu",
            "EPYC,+svm,+npt",
            "-smp",
            "1",
            "-nographic",
        ])
        .args(["-serial", "stdio", "-no-reboot", "-nodefaults", "-monitor"])
        .arg(format!("unix:{},server=on,wait=off", monitor.display()))
        .arg("-m")
        .arg(mem_mib.to_string())
        .arg("-kernel")
        .arg(&l1.vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        // Not no_timer_check: with it, L1's timer can be left broken and L1
        // hangs (seen in 3 of 3 long runs); an L1 that panics on the timer
        // check is retried by the test instead.
        .args(["-append", &l1_cmdline])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(GuestImageError::io("start qemu"))?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or(GuestImageError::NoInit(PathBuf::from(QEMU)))?;
    let out = Arc::new(Mutex::new((Vec::new(), Instant::now())));
    let sink = out.clone();
    // OPENCLAW_HARNESS_LOG=FILE mirrors L1's console as it comes (soak runs).
    let mut mirror =
        std::env::var_os("OPENCLAW_HARNESS_LOG").and_then(|p| std::fs::File::create(p).ok());
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Some(f) = mirror.as_mut() {
                let _ = std::io::Write::write_all(f, &buf[..n]);
            }
            let mut guard = sink.lock().unwrap_or_else(|e| e.into_inner());
            guard.0.extend_from_slice(&buf[..n]);
            guard.1 = Instant::now();
        }
    });
    let (mut timed_out, mut stalled) = (false, false);
    let nudge_after = nudge_after();
    // (silence before the nudge, when it was sent, whether L1 spoke again,
    // L1's last line before it, the lost wakeup it found if any)
    let mut nudges: Vec<(Duration, Instant, bool, String, Option<String>)> = Vec::new();
    loop {
        let last_output = out.lock().unwrap_or_else(|e| e.into_inner()).1;
        let quiet_for = last_output.elapsed();
        if let Some(last) = nudges.last_mut() {
            last.2 |= last_output > last.1;
        }
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() > timeout || quiet_for > STALL => {
                timed_out = started.elapsed() > timeout;
                stalled = !timed_out;
                let dump = monitor_dump(&monitor);
                out.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .0
                    .extend_from_slice(dump.as_bytes());
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            Ok(None)
                if quiet_for > nudge_after
                    && nudges.last().is_none_or(|n| n.1.elapsed() > nudge_after) =>
            {
                let after = last_line(&out);
                let stuck = lost_wakeup(&monitor_command(&monitor, "info registers\ninfo lapic\n"));
                // Each monitor command waits out a read timeout: take the
                // time just before the key press, so output that comes
                // after it counts as L1 speaking again.
                let sent = Instant::now();
                monitor_command(&monitor, "sendkey shift\n");
                nudges.push((quiet_for, sent, false, after, stuck));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => {
                return Err(GuestImageError::Io {
                    what: "wait for qemu".into(),
                    source: e,
                })
            }
        }
    }
    let _ = reader.join();
    let _ = std::fs::remove_file(&monitor);
    let bytes = std::mem::take(&mut out.lock().unwrap_or_else(|e| e.into_inner()).0);
    let mut output = String::from_utf8_lossy(&bytes).into_owned();
    for (silence, _, resumed, after, stuck) in &nudges {
        output.push_str(&format!(
            "\nHARNESS NUDGE: keyboard interrupt after {:.1} s of silence following {after:?}; {}; L1 {}\n",
            silence.as_secs_f64(),
            stuck.as_deref().unwrap_or("L1 was not stuck"),
            if *resumed { "spoke again" } else { "stayed silent" }
        ));
    }
    Ok(QemuRun {
        output,
        elapsed: started.elapsed(),
        timed_out,
        stalled,
    })
}

/// Reads QEMU's `info registers` + `info lapic` answer: is L1's CPU halted
/// with interrupts enabled while its LAPIC holds a deliverable interrupt?
/// Hardware would have taken it; QEMU's TCG sometimes loses that wakeup.
fn lost_wakeup(monitor: &str) -> Option<String> {
    let field = |name: &str| {
        monitor
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .map(str::to_string)
    };
    let halted = field("HLT=")? == "1";
    let rflags = u64::from_str_radix(&field("RFL=")?, 16).ok()?;
    let interrupts_on = rflags & 0x200 != 0;
    let line = |name: &str| {
        monitor
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .map(|l| l.trim_start()[name.len()..].trim().to_string())
    };
    let irr: Vec<u32> = line("IRR")?
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let isr_empty = line("ISR")?.contains("(none)");
    let ppr = monitor
        .split("PPR 0x")
        .nth(1)
        .and_then(|t| u32::from_str_radix(t.split_whitespace().next()?, 16).ok())?;
    let deliverable: Vec<u32> = irr.into_iter().filter(|v| v & 0xf0 > ppr & 0xf0).collect();
    (halted && interrupts_on && isr_empty && !deliverable.is_empty()).then(|| {
        format!(
            "L1 was halted with interrupts on and vector(s) {deliverable:?} pending (a lost wakeup)"
        )
    })
}

/// The last non-empty line L1 printed so far.
fn last_line(out: &Mutex<(Vec<u8>, Instant)>) -> String {
    let guard = out.lock().unwrap_or_else(|e| e.into_inner());
    let tail = &guard.0[guard.0.len().saturating_sub(400)..];
    String::from_utf8_lossy(tail)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// How long L1 may be silent before the harness nudges it
/// (`OPENCLAW_HARNESS_NUDGE_SECS`, default 5).
fn nudge_after() -> Duration {
    Duration::from_secs(
        std::env::var("OPENCLAW_HARNESS_NUDGE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5),
    )
}

/// Sends HMP commands to QEMU's monitor and returns what it answered.
fn monitor_command(socket: &Path, commands: &str) -> String {
    use std::io::Write;
    let Ok(mut conn) = std::os::unix::net::UnixStream::connect(socket) else {
        return "(monitor socket unavailable)\n".into();
    };
    let _ = conn.set_read_timeout(Some(Duration::from_millis(1500)));
    let _ = conn.write_all(commands.as_bytes());
    let mut text = String::new();
    let mut buf = [0u8; 65536];
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 {
            break;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    text
}

/// L1's CPU and interrupt-controller state from QEMU's monitor, for a stall.
fn monitor_dump(socket: &Path) -> String {
    let mut text = String::from("\nHARNESS STALL DUMP (QEMU monitor):\n");
    let answer = monitor_command(socket, "info registers\ninfo lapic\ninfo pic\ninfo irq\n");
    text.push_str(&answer);
    text.push_str(&format!(
        "\nHARNESS STALL: {}\n",
        lost_wakeup(&answer).unwrap_or_else(|| "no lost wakeup seen".into())
    ));
    text
}

fn run_out(cmd: &mut Command, what: &'static str) -> Result<String, GuestImageError> {
    let out = cmd.output().map_err(GuestImageError::io(what))?;
    if !out.status.success() {
        return Err(GuestImageError::Command {
            what,
            status: out.status.to_string(),
            stderr_tail: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The workspace root (guest-image's parent directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Builds a static example binary of this crate (same flags as the guest init).
pub fn build_static_example(name: &str) -> Result<PathBuf, GuestImageError> {
    let root = workspace_root();
    let target = root.join("target/guest-init");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "-p",
            "guest-image",
            "--example",
            name,
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", &target)
        .env("RUSTFLAGS", crate::STATIC_RUSTFLAGS)
        .output()
        .map_err(GuestImageError::io("cargo build (example)"))?;
    if !out.status.success() {
        return Err(GuestImageError::Command {
            what: "cargo build (example)",
            status: out.status.to_string(),
            stderr_tail: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(target
        .join("x86_64-unknown-linux-gnu/debug/examples")
        .join(name))
}

/// QEMU itself, its shared libraries and microvm firmware, to run QEMU's
/// `-M microvm` inside L1 beside our VMM (for the benchmark's comparison).
pub fn qemu_payload_files() -> Result<Vec<(String, PathBuf)>, GuestImageError> {
    let qemu = Path::new("/usr/bin").join(QEMU);
    let mut files = vec![(format!("bin/{QEMU}"), qemu.clone())];
    for lib in crate::initramfs::shared_libraries(&qemu)? {
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

/// Builds everything (guest init, image, static runner, L1 kernel), boots
/// L1 and runs `l1_runner KERNEL INITRAMFS BOOTS <runner_args>` there.
/// `with_qemu` also carries QEMU into L1; `env` is set for the runner.
pub fn run_l1_runner(
    boots: usize,
    runner_args: &[&str],
    with_qemu: bool,
    env: &[(&str, &str)],
    timeout: Duration,
) -> Result<QemuRun, GuestImageError> {
    let root = workspace_root();
    let init = crate::build_guest_init(&root, &root.join("target/guest-init"))?;
    let image = crate::build_image(&root.join("target/guest-image"), &init, 2, &mut |l| {
        eprintln!("image: {l}")
    })?;
    let runner = build_static_example("l1_runner")?;
    let l1 = l1_kernel(&root.join("target/qemu-harness"))?;
    let mut files = vec![
        ("guest/vmlinux".to_string(), image.kernel.clone()),
        ("guest/initramfs.cpio".to_string(), image.initramfs.clone()),
        ("bin/l1_runner".to_string(), runner),
    ];
    if with_qemu {
        files.extend(qemu_payload_files()?);
    }
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
    std::fs::write(&path, outer).map_err(GuestImageError::io("write outer initramfs"))?;
    let run = run_qemu(&l1, &path, if with_qemu { 1536 } else { 1024 }, timeout);
    let _ = std::fs::remove_file(&path);
    run
}

#[cfg(test)]
mod tests {
    use super::lost_wakeup;

    /// Excerpts of QEMU's monitor answer at the L1 stall of 06:35 UTC.
    const REGS: &str = "RIP=ffffffffb6217a0b RFL=00000206 [-----P-] CPL=0 II=0 A20=1 SMM=0 HLT=1\n";
    const LAPIC: &str =
        "LVTT\t 0x000000ec active-hi edge                 one-shot     Fixed  (vec 236)\n\
        ICR\t 0x000008fd logical edge de-assert no-shorthand\n\
        ISR\t (none)\n\
        IRR\t 236 \n\n\
        APR 0x00 TPR 0x10 DFR 0x0f LDR 0x01 PPR 0x10\n";

    #[test]
    fn a_halted_cpu_with_a_deliverable_interrupt_is_a_lost_wakeup() {
        let found = lost_wakeup(&format!("{REGS}{LAPIC}")).expect("stuck");
        assert!(found.contains("[236]"), "{found}");
    }

    #[test]
    fn a_running_cpu_an_empty_irr_or_a_masked_vector_is_not() {
        let running = REGS.replace("HLT=1", "HLT=0");
        assert_eq!(lost_wakeup(&format!("{running}{LAPIC}")), None);
        let idle = LAPIC.replace("IRR\t 236", "IRR\t (none)");
        assert_eq!(lost_wakeup(&format!("{REGS}{idle}")), None);
        let masked = LAPIC.replace("PPR 0x10", "PPR 0xe0");
        assert_eq!(lost_wakeup(&format!("{REGS}{masked}")), None);
        let cli = REGS.replace("RFL=00000206", "RFL=00000006");
        assert_eq!(lost_wakeup(&format!("{cli}{LAPIC}")), None);
        assert_eq!(lost_wakeup("(monitor socket unavailable)"), None);
    }
}
