//! The kernel command line our guests boot with.

use linux_loader::cmdline::{Cmdline, Error as CmdlineError};

use super::layout::CMDLINE_MAX_SIZE;

/// What every guest gets: console on COM1, reset through the keyboard
/// controller (our power-off: no ACPI), reboot on panic, no PCI probing, two
/// UARTs (console + fallback control channel), an i8042 that does not probe
/// for a mouse (for kernels that have the driver; ours has not), and no
/// check that the PIT reaches the IO-APIC (it does, in KVM's in-kernel chips;
/// the check waits for timer ticks).
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 pci=off nomodule \
    8250.nr_uarts=2 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd no_timer_check";

/// Base arguments, then the caller's (later ones win in the kernel's parser).
pub fn build_cmdline(extra: &str) -> Result<Cmdline, CmdlineError> {
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE)?;
    cmdline.insert_str(BASE_CMDLINE)?;
    if !extra.trim().is_empty() {
        cmdline.insert_str(extra.trim())?;
    }
    Ok(cmdline)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_then_extra() {
        let c = build_cmdline("quiet openclaw.task=1").expect("valid");
        let s = c
            .as_cstring()
            .expect("cstring")
            .into_string()
            .expect("utf8");
        assert!(s.starts_with("console=ttyS0 reboot=k"));
        assert!(s.ends_with(" quiet openclaw.task=1"));
        assert!(s.contains(" 8250.nr_uarts=2 "));
    }

    #[test]
    fn rejects_what_the_kernel_cannot_take() {
        assert!(build_cmdline("a\u{0}b").is_err());
        assert!(build_cmdline(&"x".repeat(CMDLINE_MAX_SIZE)).is_err());
        assert!(build_cmdline("caf\u{e9}").is_err(), "non-ASCII");
    }
}
