//! Boots the QEMU harness once and prints the L1 console: for debugging the
//! harness. The guest console is dumped too.
//!
//! Usage: [GUEST_DMESG=1] GUEST_CMDLINE='loglevel=7' harness_once BOOTS [probe] [net] [compare]

use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let boots = args.first().and_then(|b| b.parse().ok()).unwrap_or(1);
    let rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    let cmdline = std::env::var("GUEST_CMDLINE").unwrap_or_else(|_| "quiet".into());
    // GUEST_DMESG=1: one more boot that prints the guest's timestamped log.
    let mut env = vec![("DUMP_CONSOLE", "1"), ("GUEST_CMDLINE", cmdline.as_str())];
    if std::env::var_os("GUEST_DMESG").is_some() {
        env.push(("GUEST_DMESG", "1"));
    }
    let run = qemu_harness::run_l1_runner(
        boots,
        &rest,
        rest.contains(&"compare"),
        &env,
        Duration::from_secs(900),
    )?;
    println!("{}", run.output);
    println!(
        "QEMU wall time: {:?} timed_out={}",
        run.elapsed, run.timed_out
    );
    Ok(())
}
