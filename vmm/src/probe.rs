//! `--backend auto`'s question: does this host's KVM boot our guest correctly
//! and quickly? Answered in two steps: a pre-probe ([`ProbeResult::preprobe`]:
//! a hand-assembled guest that enters ring 3 and makes a system call, no
//! image needed, milliseconds) that rules out hosts such as nested PVM, then
//! [`probe`], which boots the real guest image in probe mode (the init
//! reports exit status 0 over the control channel and powers off).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::builder::{ExitReason, Kernel, MicroVm, VmConfig};

/// The pre-probe's hand-assembled guest.
mod syscall_guest;

/// `KVM_GET_API_VERSION` on a fresh `/dev/kvm` handle: 12 wherever KVM is
/// usable (the only version [`crate::vstate::vm::Vm::new`] accepts); an
/// error when `/dev/kvm` cannot be opened. For `openclaw doctor`.
pub fn kvm_api_version() -> Result<i32, std::io::Error> {
    let kvm = kvm_ioctls::Kvm::new().map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
    Ok(kvm.get_api_version())
}

/// The verdict, with the reason to show the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    pub usable: bool,
    pub reason: String,
    pub boot_time: Option<Duration>,
}

impl ProbeResult {
    /// The pre-probe: boots a tiny hand-assembled guest (no kernel image)
    /// that sets up `syscall`, drops to ring 3 and makes a system call back
    /// into ring 0. A host whose KVM cannot do that (the project's nested
    /// PVM machines: guest user mode cannot make system calls) can never run
    /// the guest init, so the full [`probe`] is not worth building an image
    /// for. Takes milliseconds on hardware KVM. Never errors.
    pub fn preprobe(budget: Duration) -> ProbeResult {
        let no = |reason: String| ProbeResult {
            usable: false,
            reason,
            boot_time: None,
        };
        if !Path::new("/dev/kvm").exists() {
            return no("no /dev/kvm on this host".into());
        }
        // COM1 carries the handler's one-byte verdict; a private file read back.
        let console = std::env::temp_dir().join(format!(
            "openclaw-preprobe-{}-{:?}.log",
            std::process::id(),
            std::thread::current().id()
        ));
        let mut config = VmConfig::new(
            Kernel::Flat {
                code: syscall_guest::CODE.to_vec(),
                load_addr: syscall_guest::LOAD_ADDR,
            },
            console.clone(),
        );
        config.mem_mib = 16;
        let vm = match MicroVm::boot(config) {
            Ok(vm) => vm,
            Err(e) => {
                let _ = std::fs::remove_file(&console);
                return no(format!("pre-probe: the VM did not start: {e}"));
            }
        };
        let exit = vm.wait(Some(budget));
        let verdict = std::fs::read(&console)
            .ok()
            .and_then(|bytes| bytes.first().copied());
        let _ = std::fs::remove_file(&console);
        // boot_time: mark 1 (ring 0 ran); task_start_time: mark 2 (the
        // system call arrived in ring 0 from ring 3).
        let ring0 = if exit.boot_time.is_some() {
            "ring-0 setup ran"
        } else {
            "ring-0 setup never finished"
        };
        let handler = syscall_guest::verdict_byte_meaning(verdict);
        match (exit.reason, exit.task_start_time) {
            (ExitReason::Reset, Some(t)) if verdict == Some(b'S') => ProbeResult {
                usable: true,
                reason: format!("pre-probe: a ring-3 system call round trip worked in {t:.2?}"),
                boot_time: Some(t),
            },
            (ExitReason::Error(e), _) => no(format!(
                "pre-probe: KVM failed running a guest that enters user mode and makes a \
                 system call ({ring0}; {handler}): {e}"
            )),
            (ExitReason::TimedOut, _) => no(format!(
                "pre-probe: a guest system call from user mode did not complete within \
                 {budget:?} ({ring0}; {handler})"
            )),
            (ExitReason::Shutdown, _) => no(format!(
                "pre-probe: the guest triple-faulted entering user mode or making a system \
                 call ({ring0}; {handler})"
            )),
            (reason, _) => no(format!(
                "pre-probe: a system call from guest user mode does not work as the CPU \
                 defines it here: {handler} ({ring0}; the guest ended with {reason:?})"
            )),
        }
    }
}

/// Boots `kernel` + `initramfs` with `openclaw.probe=1` and checks that the
/// guest's user space ran (a real system call path) and reported success
/// within `budget`. Never errors: every failure is a "no" with its reason.
pub fn probe(kernel: &Path, initramfs: &Path, console: PathBuf, budget: Duration) -> ProbeResult {
    let no = |reason: String| ProbeResult {
        usable: false,
        reason,
        boot_time: None,
    };
    if !Path::new("/dev/kvm").exists() {
        return no("no /dev/kvm on this host".into());
    }
    let mut config = VmConfig::new(Kernel::File(kernel.to_path_buf()), console);
    config.initramfs = Some(initramfs.to_path_buf());
    config.cmdline = format!("quiet {}", guest_protocol::cmdline::PROBE);
    config.mem_mib = 128;
    let vm = match MicroVm::boot(config) {
        Ok(vm) => vm,
        Err(e) => return no(format!("the probe VM did not start: {e}")),
    };
    let exit = vm.wait(Some(budget));
    match (exit.reason, exit.task.exit_status) {
        (ExitReason::Reset, Some(0)) => ProbeResult {
            usable: true,
            reason: format!(
                "probe guest booted and ran user space in {:.2?}",
                exit.boot_time.unwrap_or(exit.total_time)
            ),
            boot_time: exit.boot_time,
        },
        (ExitReason::TimedOut, _) => no(format!(
            "probe guest did not finish within {budget:?} (boot marker {}): KVM here is too slow \
             or cannot run guest user space (nested PVM)",
            exit.boot_time
                .map_or("never reached".into(), |t| format!("at {t:.2?}"))
        )),
        (ExitReason::Error(e), _) => no(format!("probe guest failed: {e}")),
        (reason, status) => no(format!(
            "probe guest ended with {reason:?}, status {status:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// On this project's machines /dev/kvm is nested PVM, where guest user
    /// mode cannot make system calls: the pre-probe must say no, fast, with
    /// a reason. Elsewhere it must at least answer within its budget.
    #[test]
    fn preprobe_on_this_host() {
        let started = Instant::now();
        let r = ProbeResult::preprobe(Duration::from_secs(2));
        let took = started.elapsed();
        eprintln!("pre-probe: usable={} in {took:?}: {}", r.usable, r.reason);
        assert!(took < Duration::from_secs(5), "bounded by its budget");
        assert!(r.reason.starts_with("pre-probe: ") || r.reason.contains("no /dev/kvm"));
        if Path::new("/sys/module/kvm_pvm").exists() {
            assert!(!r.usable, "{}", r.reason);
        }
        if r.usable {
            assert!(r.boot_time.is_some());
        }
    }
}
