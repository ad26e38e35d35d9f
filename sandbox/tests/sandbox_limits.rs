//! cgroup limits: a fork bomb and a memory hog inside a sandbox are stopped
//! by that sandbox's own limits; the host and other sessions carry on.

mod sandbox_common;

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use sandbox::{Sandbox, SandboxStdio};
use sandbox_common::*;

#[test]
fn fork_bomb_hits_the_pid_limit_and_dies_with_the_sandbox() {
    let net = network("bomb");
    // The sandbox's shell forks once, for the bomb, while pids are free,
    // then execs its sleep: with every pid taken, any later fork of its own
    // (a `sleep`, or the second half of the bomb's pipeline) can fail, and
    // it would exit on its own (status 2) before the kill this test checks.
    let mut spec = sh_spec(&net, "b() { b | b & }; b & exec sleep 60", b"ca");
    spec.pids_max = 32;
    spec.stdout = SandboxStdio::Null;
    spec.stderr = SandboxStdio::Null;
    let mut bomb = Sandbox::spawn(spec).expect("spawn bomb");
    let name = bomb.name().to_string();

    // A neighbour session keeps working while the bomb runs.
    let other = network("bombn");
    let neighbour = std::thread::spawn(move || run_sh(&other, "sleep 1; echo alive"));

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut max_seen = 0;
    while bomb.limit_events().pids_max == 0 {
        max_seen = max_seen.max(bomb.pids_current());
        assert!(Instant::now() < deadline, "the bomb never reached pids.max");
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..25 {
        max_seen = max_seen.max(bomb.pids_current());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(max_seen <= 32, "pids.max exceeded: {max_seen}");
    // The host can still fork.
    let host = std::process::Command::new("true")
        .status()
        .expect("host fork");
    assert!(host.success());
    let n = neighbour.join().expect("neighbour thread");
    assert_eq!(n.stdout, "alive\n", "neighbour: {}", n.stderr);

    bomb.kill().expect("kill");
    let status = bomb.wait().expect("wait");
    assert_eq!(status.signal(), Some(9), "{status:?}");
    drop(bomb);
    assert!(cgroups_mentioning(&name).is_empty(), "cgroups left behind");
}

#[test]
fn memory_hog_is_oom_killed_inside_its_own_limit() {
    let net = network("hog");
    // dd allocates and fills a 512 MiB buffer; the limit is 64 MiB.
    let mut spec = sh_spec(
        &net,
        "exec dd if=/dev/zero of=/dev/null bs=512M count=1",
        b"ca",
    );
    spec.memory_bytes = 64 << 20;
    let mut hog = Sandbox::spawn(spec).expect("spawn hog");
    let status = hog.wait().expect("wait");
    assert_eq!(status.signal(), Some(9), "hog not killed: {status:?}");
    assert!(
        hog.limit_events().oom_kills >= 1,
        "{:?}",
        hog.limit_events()
    );

    // Control: the same command within the limit completes.
    let mut spec = sh_spec(
        &net,
        "exec dd if=/dev/zero of=/dev/null bs=16M count=1",
        b"ca",
    );
    spec.memory_bytes = 64 << 20;
    let out = run(spec);
    assert!(out.status.success(), "{:?} {}", out.status, out.stderr);
}

#[test]
fn kill_ends_the_whole_pid_namespace_and_signals_are_forwarded() {
    let net = network("kill");
    let mut spec = sh_spec(&net, "sleep 300 & sleep 300 & sleep 300", b"ca");
    spec.stdout = SandboxStdio::Null;
    let mut child = Sandbox::spawn(spec).expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(5);
    while child.pids_current() < 4 {
        assert!(Instant::now() < deadline, "sleeps never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(child.try_wait().expect("try_wait"), None);
    let started = Instant::now();
    child.kill().expect("kill");
    let status = child.wait().expect("wait");
    assert_eq!(status.signal(), Some(9));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        child.pids_current(),
        0,
        "background processes outlived the sandbox"
    );

    // SIGTERM reaches the command through init, which runs its trap.
    let mut spec = sh_spec(
        &net,
        "trap 'echo got-term; exit 3' TERM; echo ready; while :; do sleep 0.1; done",
        b"ca",
    );
    spec.stderr = SandboxStdio::Inherit;
    let mut child = Sandbox::spawn(spec).expect("spawn");
    let mut out = child.take_stdout().expect("stdout");
    let mut buf = [0u8; 6];
    std::io::Read::read_exact(&mut out, &mut buf).expect("ready");
    child
        .signal(nix::sys::signal::Signal::SIGTERM)
        .expect("signal");
    let status = child.wait().expect("wait");
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut out, &mut rest);
    assert_eq!(status.code(), Some(3), "{status:?}");
    assert_eq!(rest, "got-term\n");
}

#[test]
fn exit_codes_pass_through() {
    let net = network("code");
    for code in [0, 1, 42] {
        let out = run_sh(&net, &format!("exit {code}"));
        assert_eq!(out.status.code(), Some(code));
    }
    let out = run_sh(&net, "kill -USR1 $$");
    assert_eq!(out.status.signal(), Some(10));
}

#[test]
fn killer_handle_stops_a_sandbox_blocked_in_wait_and_is_harmless_after() {
    let net = network("killer");
    let mut spec = sh_spec(&net, "sleep 300", b"ca");
    spec.stdout = SandboxStdio::Null;
    let mut child = Sandbox::spawn(spec).expect("spawn");
    let killer = child.killer();
    let waiter = std::thread::spawn(move || child.wait().expect("wait"));
    std::thread::sleep(Duration::from_millis(100));
    killer.kill().expect("kill through the handle");
    let status = waiter.join().expect("waiter");
    assert_eq!(status.signal(), Some(9));
    // The sandbox is reaped and dropped; the handle still answers Ok and
    // cannot reach whatever process reuses the pid.
    killer.kill().expect("kill after the end");
}
