//! Rate-limited `tracing` events, one limiter per call site, for every
//! message a sandbox or guest can make the supervisor log (a refused
//! request, a DNS refusal, a device error): a flood of them costs at most
//! [`BURST`] lines per [`INTERVAL`] and call site, plus one line saying how
//! many were left out. The habit is Firecracker's
//! (`src/vmm/src/logger/rate_limited.rs`); this is our own small version.
//!
//! The public interface is:
//! - [`error!`], [`warn!`], [`info!`], [`debug!`]: drop-in forms of
//!   `tracing`'s macros (same fields and message syntax), each expanding to
//!   its own [`Limiter`] in a `static`;
//! - [`Limiter`]: the window counter behind them, usable directly.
//!
//! A leaf crate (it depends on `tracing` only) so that `proxy`, `enforce`
//! and `vmm`, which share no other dependency, use the one implementation.
#![forbid(unsafe_code)]

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[doc(hidden)]
pub use tracing;

/// Events a call site may log per [`INTERVAL`].
pub const BURST: u32 = 10;
/// The window [`BURST`] counts over.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// Counts one call site's events in fixed windows of [`INTERVAL`].
#[derive(Debug)]
pub struct Limiter {
    state: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    /// When the current window opened (`None`: nothing logged yet).
    start: Option<Instant>,
    /// Events let through in the current window.
    passed: u32,
    /// Events left out since the last one let through.
    suppressed: u64,
}

impl Default for Limiter {
    fn default() -> Self {
        Self::new()
    }
}

impl Limiter {
    /// A limiter with nothing counted (`const`: it lives in a `static`).
    pub const fn new() -> Self {
        Limiter {
            state: Mutex::new(Window {
                start: None,
                passed: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether one more event may be logged now: `Some(n)` if so, `n` being
    /// how many were left out since the last one logged (say so first);
    /// `None` if this one is left out (and counted).
    pub fn check(&self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    /// [`check`](Self::check) at a given instant (tests).
    pub fn check_at(&self, now: Instant) -> Option<u64> {
        let mut w = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let expired = w
            .start
            .is_none_or(|start| now.saturating_duration_since(start) >= INTERVAL);
        if expired {
            w.start = Some(now);
            w.passed = 0;
        }
        if w.passed < BURST {
            w.passed += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            None
        }
    }
}

/// `tracing::event!` at `$level` through a limiter of this call site's own.
#[doc(hidden)]
#[macro_export]
macro_rules! __limited {
    ($level:expr, $($arg:tt)+) => {{
        static LIMITER: $crate::Limiter = $crate::Limiter::new();
        if $crate::tracing::enabled!($level) {
            if let ::std::option::Option::Some(suppressed) = LIMITER.check() {
                if suppressed > 0 {
                    $crate::tracing::event!(
                        $level,
                        suppressed,
                        "{suppressed} similar messages from here were left out (rate limit)"
                    );
                }
                $crate::tracing::event!($level, $($arg)+);
            }
        }
    }};
}

/// `tracing::error!`, rate-limited per call site.
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => { $crate::__limited!($crate::tracing::Level::ERROR, $($arg)+) };
}

/// `tracing::warn!`, rate-limited per call site.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => { $crate::__limited!($crate::tracing::Level::WARN, $($arg)+) };
}

/// `tracing::info!`, rate-limited per call site.
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => { $crate::__limited!($crate::tracing::Level::INFO, $($arg)+) };
}

/// `tracing::debug!`, rate-limited per call site.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => { $crate::__limited!($crate::tracing::Level::DEBUG, $($arg)+) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_window_then_the_count_of_what_was_left_out() {
        let l = Limiter::new();
        let t0 = Instant::now();
        for _ in 0..BURST {
            assert_eq!(l.check_at(t0), Some(0));
        }
        for i in 0..25 {
            assert_eq!(l.check_at(t0 + Duration::from_millis(i)), None);
        }
        // Still the same window.
        assert_eq!(l.check_at(t0 + INTERVAL - Duration::from_millis(1)), None);
        // A new window: the first event carries the count.
        assert_eq!(l.check_at(t0 + INTERVAL), Some(26));
        assert_eq!(l.check_at(t0 + INTERVAL), Some(0));
    }
}
