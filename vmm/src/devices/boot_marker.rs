//! The boot-time marker: the guest init's first act is a mark, either a
//! write to a dedicated port (guests that may do port I/O, e.g. hand-made
//! ones) or a mark frame on the control channel (the guest init: it needs no
//! privileged I/O for it). The VMM records how long after VM creation each
//! marker code first arrived. The port and the codes are
//! `guest_protocol::marker`'s.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use guest_protocol::marker::{BOOT_MARKER_PORT, MARKER_INIT_STARTED, MARKER_TASK_STARTED};

pub struct BootMarker {
    created: Instant,
    seen: Mutex<Vec<(u8, Duration)>>,
}

impl BootMarker {
    pub fn new(created: Instant) -> BootMarker {
        BootMarker {
            created,
            seen: Mutex::new(Vec::new()),
        }
    }

    /// Records the first arrival of `code`.
    pub fn record(&self, code: u8) {
        let at = self.created.elapsed();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if !seen.iter().any(|(c, _)| *c == code) && seen.len() < 256 {
            seen.push((code, at));
        }
    }

    /// Time from VM creation to the first write of `code`.
    pub fn elapsed(&self, code: u8) -> Option<Duration> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.iter().find(|(c, _)| *c == code).map(|(_, d)| *d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_write_of_each_code_counts() {
        let m = BootMarker::new(Instant::now());
        assert_eq!(m.elapsed(1), None);
        m.record(1);
        let first = m.elapsed(1).expect("recorded");
        std::thread::sleep(Duration::from_millis(5));
        m.record(1);
        assert_eq!(
            m.elapsed(1),
            Some(first),
            "a repeat does not move the marker"
        );
        m.record(2);
        assert!(m.elapsed(2).expect("recorded") > first);
    }
}
