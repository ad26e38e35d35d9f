//! `--backend auto`'s question: does this host's KVM boot our guest correctly
//! and quickly? Answered by booting the real guest image in probe mode (the
//! init reports exit status 0 over the control channel and powers off).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::builder::{ExitReason, Kernel, MicroVm, VmConfig};

/// The verdict, with the reason to show the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    pub usable: bool,
    pub reason: String,
    pub boot_time: Option<Duration>,
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
    config.cmdline = "quiet openclaw.probe=1".into();
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
