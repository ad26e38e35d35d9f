//! CPU time from getrusage, for the benches that report it (included with
//! `#[path]`: a bench is its own crate).

use std::time::Duration;

/// The CPU time this thread has used (user and system): unlike the wall
/// clock, not inflated while other processes have the CPU.
pub fn cpu_now() -> Duration {
    cpu_used(nix::sys::resource::UsageWho::RUSAGE_THREAD)
}

/// The CPU time (user and system) of the whole process.
#[allow(dead_code)] // not every bench including this reads the process's
pub fn process_cpu_now() -> Duration {
    cpu_used(nix::sys::resource::UsageWho::RUSAGE_SELF)
}

/// The CPU time (user and system) of this thread or of the whole process.
fn cpu_used(who: nix::sys::resource::UsageWho) -> Duration {
    let usage = nix::sys::resource::getrusage(who).expect("getrusage");
    let micros = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(u64::try_from(t.tv_sec()).expect("time"))
            + Duration::from_micros(u64::try_from(t.tv_usec()).expect("time"))
    };
    micros(usage.user_time()) + micros(usage.system_time())
}
