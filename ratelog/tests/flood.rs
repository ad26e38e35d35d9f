//! A flood through one call site produces a bounded number of log lines,
//! two call sites are limited separately, and the count of what was left
//! out is logged when the next window opens.

use std::io::Write;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().expect("lock"))
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

fn refuse(n: u64) {
    ratelog::info!(request = n, "refused");
}

fn fail(n: u64) {
    ratelog::warn!(request = n, "device error");
}

#[test]
fn a_flood_is_bounded_per_call_site() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let started = std::time::Instant::now();
    tracing::subscriber::with_default(subscriber, || {
        for n in 0..100_000 {
            refuse(n);
            fail(n);
        }
    });
    // However long the loop took (a loaded machine may span several
    // windows), each call site logged at most a burst, plus the count of
    // what it left out, per window.
    let windows =
        (started.elapsed().as_secs_f64() / ratelog::INTERVAL.as_secs_f64()).ceil() as usize + 1;
    let per_site = windows * (ratelog::BURST as usize + 1);
    let lines = captured.lines();
    let refused = lines.iter().filter(|l| l.contains("refused")).count();
    let errors = lines.iter().filter(|l| l.contains("device error")).count();
    let left_out = lines.iter().filter(|l| l.contains("left out")).count();
    assert!(refused >= ratelog::BURST as usize, "{lines:?}");
    assert!(errors >= ratelog::BURST as usize, "{lines:?}");
    assert!(
        refused + errors + left_out <= 2 * per_site,
        "{} lines: {lines:?}",
        lines.len()
    );
}
