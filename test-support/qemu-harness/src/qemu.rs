//! Running L1 under QEMU's TCG with an SVM-capable CPU: its console is the
//! result. A silent L1 is nudged through QEMU's monitor (docs/vmm.md, "The
//! L1 hang"); one silent for [`STALL`] is dumped and called hung.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{HarnessError, L1Kernel};

/// The emulator.
pub const QEMU: &str = "qemu-system-x86_64";

/// Is QEMU installed?
pub fn qemu_available() -> bool {
    Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
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
) -> Result<QemuRun, HarnessError> {
    run_qemu_with_disks(l1, initramfs, mem_mib, timeout, &[])
}

/// A file L1 sees as a read-only virtio disk: `/dev/vdX` whose
/// `/sys/block/vdX/serial` is `serial` (how L1's script finds it). Images
/// too large to carry in L1's initramfs (which lives in its RAM) go this way.
#[derive(Debug, Clone)]
pub struct L1Disk {
    pub path: PathBuf,
    pub serial: String,
}

/// [`run_qemu`] with disks for L1.
pub fn run_qemu_with_disks(
    l1: &L1Kernel,
    initramfs: &Path,
    mem_mib: u32,
    timeout: Duration,
    disks: &[L1Disk],
) -> Result<QemuRun, HarnessError> {
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
        .args(disks.iter().enumerate().flat_map(|(i, d)| {
            [
                "-drive".to_string(),
                format!(
                    "file={},format=raw,if=none,id=disk{i},readonly=on",
                    d.path.display()
                ),
                "-device".to_string(),
                format!("virtio-blk-pci,drive=disk{i},serial={}", d.serial),
            ]
        }))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(HarnessError::io("start qemu"))?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| HarnessError::NotFound(PathBuf::from(format!("{QEMU}'s stdout"))))?;
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
                return Err(HarnessError::Io {
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
