//! The kvm backend's end-to-end test on real KVM: inside the QEMU harness
//! (this crate), our VMM boots the openclaw guest 20 times; each boot
//! must return the task's stdout, stderr and exit status over the control
//! channel, and teardown must leave no fds or threads behind. One more boot
//! has a virtio-net NIC on a tap: the guest's wget and curl fetch pages from
//! a server on the tap's address, and the tap is gone after teardown. The
//! probe must say yes there. Ignored (with the reason) only when QEMU is not
//! installed; `OPENCLAW_REQUIRE_HARNESS=1` makes that a failure
//! (`test_requirements`).

use std::time::Duration;

use test_requirements::{require, Requirement};

/// The issue asks for at least 20 boots without a hang.
const BOOTS: usize = 20;

// L1 under QEMU's TCG occasionally misses a wakeup (docs/vmm.md, "The L1
// hang"); the harness nudges a silent L1 with a keyboard interrupt and the
// output lists each nudge. A guest or VMM that hangs stays silent after the
// nudges and fails the test as a stall.
#[test]
#[cfg_attr(
    not(openclaw_has_qemu),
    ignore = "qemu-system-x86_64 is not installed (scripts/bootstrap installs it)"
)]
fn our_vmm_boots_the_guest_repeatedly_inside_qemu() {
    require(
        &[Requirement::Qemu],
        "kvm_in_qemu::our_vmm_boots_the_guest_repeatedly_inside_qemu",
    );
    // OPENCLAW_HARNESS_BOOTS can raise the count (soak runs), never lower it.
    let boots = std::env::var("OPENCLAW_HARNESS_BOOTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(BOOTS)
        .max(BOOTS);
    let attempt = || {
        qemu_harness::run_l1_runner(
            boots,
            &["probe", "net"],
            false,
            &[],
            // ~10 s per boot on a loaded 2-core machine, and L1's own boot.
            Duration::from_secs(300 + 15 * boots as u64),
        )
        .expect("harness builds and QEMU runs")
    };
    let mut run = attempt();
    // One retry only when L1 itself never came up (the emulated outer
    // machine, not our VMM); anything after /dev/kvm is ready counts.
    if !run.timed_out && !run.stalled && !run.output.contains("HARNESS: /dev/kvm ready") {
        println!(
            "L1 did not come up; its console:\n{}\nretrying once",
            run.output
        );
        run = attempt();
    }
    println!("{}", run.output);
    println!("QEMU wall time: {:?}", run.elapsed);
    let rescued = run
        .output
        .lines()
        .filter(|l| l.starts_with("HARNESS NUDGE") && l.contains("(a lost wakeup)"))
        .count();
    println!("L1 lost wakeups ended by a nudge: {rescued}");
    let last = run
        .output
        .lines()
        .rev()
        .find(|l| l.starts_with("BOOT "))
        .unwrap_or("(no boot finished)");
    assert!(
        !run.stalled,
        "the L1 VM hung: no console output for {:?}; last finished boot: {last}",
        qemu_harness::STALL
    );
    assert!(
        !run.timed_out,
        "no verdict within the timeout; last finished boot: {last}"
    );
    assert!(
        run.output.contains("HARNESS: /dev/kvm ready"),
        "kvm-amd did not load in L1"
    );
    let verdict = run
        .output
        .lines()
        .find(|l| l.starts_with("HARNESS VERDICT:"))
        .expect("a verdict line");
    assert!(
        verdict.starts_with(&format!("HARNESS VERDICT: PASS {boots}/{boots}")),
        "{verdict}"
    );
    assert!(
        run.output.lines().any(|l| l.starts_with("NET ok")),
        "guest networking over virtio-net failed"
    );
    let probe = run
        .output
        .lines()
        .find(|l| l.starts_with("PROBE "))
        .expect("a probe line");
    assert!(probe.starts_with("PROBE usable=true"), "{probe}");
}
