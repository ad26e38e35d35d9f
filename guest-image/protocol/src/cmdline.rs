//! The `openclaw.*` kernel command-line switches: the host appends them to
//! the guest's command line, the guest init reads them from /proc/cmdline.

/// Key of the probe switch.
pub const PROBE_KEY: &str = "openclaw.probe";
/// Probe mode: the guest init reports exit status 0 at once (proves guest
/// user space and system calls work, nothing else).
pub const PROBE: &str = "openclaw.probe=1";
/// `eth0`'s address with its prefix length (`10.0.2.2/24`); without it the
/// guest has only `lo`.
pub const IP: &str = "openclaw.ip";
/// The default gateway.
pub const GATEWAY: &str = "openclaw.gw";
/// The one resolver written to /etc/resolv.conf.
pub const RESOLVER: &str = "openclaw.dns";

/// The value of the first `key=value` word of `cmdline` whose key is `key`.
pub fn value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
}

/// Whether `cmdline` asks for probe mode.
pub fn probe_requested(cmdline: &str) -> bool {
    value(cmdline, PROBE_KEY) == Some("1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_read_by_exact_key() {
        let line = "quiet openclaw.ip=10.0.2.2/24 openclaw.ipx=no openclaw.gw=10.0.2.1\n";
        assert_eq!(value(line, IP), Some("10.0.2.2/24"));
        assert_eq!(value(line, GATEWAY), Some("10.0.2.1"));
        assert_eq!(value(line, RESOLVER), None);
        assert_eq!(value("openclaw.ipx=1", IP), None);
        assert_eq!(value("openclaw.ip", IP), None);
    }

    #[test]
    fn probe_mode_is_the_probe_switch() {
        assert!(probe_requested(&format!("quiet {PROBE}")));
        assert_eq!(PROBE.split_once('='), Some((PROBE_KEY, "1")));
        assert!(!probe_requested("quiet openclaw.probe=0"));
        assert!(!probe_requested("quiet"));
    }
}
