//! The session network with a sandbox inside: teardown leaves nothing, a
//! dead supervisor's network and sandbox are cleaned up, and the sandbox
//! reaches listeners bound through the network's helpers.

mod sandbox_common;

use std::process::Command;
use std::time::{Duration, Instant};

use netns::SessionNetwork;
use sandbox::{cleanup_stale, Sandbox, SandboxStdio};
use sandbox_common::*;

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A pid that certainly belongs to no running process any more.
fn dead_pid() -> u32 {
    let mut c = Command::new("true").spawn().expect("spawn");
    let pid = c.id();
    c.wait().expect("wait");
    pid
}

#[test]
fn teardown_leaves_no_namespace_cgroup_mount_or_staging() {
    let net = network("down");
    let name = net.name().to_string();
    let mut spec = sh_spec(&net, "sleep 300", b"ca");
    spec.stdout = SandboxStdio::Null;
    let sb = Sandbox::spawn(spec).expect("spawn");
    let sb_name = sb.name().to_string();
    let staging = format!("/run/openclaw/sandboxes/{sb_name}");
    assert!(exists(&staging));
    assert!(!cgroups_mentioning(&sb_name).is_empty());
    let init = sb.pid();
    drop(sb);
    assert!(!exists(format!("/proc/{init}")), "sandbox init still there");
    assert!(cgroups_mentioning(&sb_name).is_empty());
    assert!(!exists(&staging));
    drop(net);
    assert!(!exists(format!("/run/netns/{name}")));
    assert!(
        mounts_mentioning(&name).is_empty(),
        "{:?}",
        mounts_mentioning(&name)
    );
    let listed = ip(&["netns", "list"]);
    assert!(!listed.contains(&name), "{listed}");
}

#[test]
fn stale_cleanup_removes_a_dead_supervisors_network_and_sandbox_only() {
    // A live session must survive the cleanup.
    let live = network("live");

    // A network whose recorded owner is dead.
    let id = session_id("stale");
    let dead = SessionNetwork::create_owned_by(&id, dead_pid(), 1).expect("create");
    let stale_name = dead.name().to_string();
    std::mem::forget(dead);

    // A sandbox whose supervisor "crashed": forget it, then point its
    // owner record at a dead pid.
    let mut spec = sh_spec(&live, "sleep 300", b"ca");
    spec.stdout = SandboxStdio::Null;
    let sb = Sandbox::spawn(spec).expect("spawn");
    let sb_name = sb.name().to_string();
    let init = nix::unistd::Pid::from_raw(sb.pid() as i32);
    std::mem::forget(sb);
    let owner = format!("/run/openclaw/sandboxes/{sb_name}/owner");
    std::fs::write(&owner, format!("{} 1", dead_pid())).expect("rewrite owner");

    let done = cleanup_stale().expect("cleanup");
    assert!(done.networks.contains(&stale_name), "{done:?}");
    assert!(done.sandboxes.contains(&sb_name), "{done:?}");
    assert!(!done.networks.iter().any(|n| n == live.name()), "{done:?}");
    assert!(!exists(format!("/run/netns/{stale_name}")));
    assert!(live.path().exists(), "live session removed");
    assert!(cgroups_mentioning(&sb_name).is_empty());
    assert!(!exists(format!("/run/openclaw/sandboxes/{sb_name}")));
    // The orphaned sandbox was killed (it is our child: reap it).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match nix::sys::wait::waitpid(init, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _)) => {
                assert_eq!(sig, nix::sys::signal::Signal::SIGKILL);
                break;
            }
            Ok(nix::sys::wait::WaitStatus::StillAlive) => {
                assert!(Instant::now() < deadline, "stale sandbox still running");
                std::thread::sleep(Duration::from_millis(10));
            }
            other => panic!("unexpected wait result {other:?}"),
        }
    }
    // A second run finds nothing of ours to remove.
    let again = cleanup_stale().expect("cleanup again");
    assert!(!again.networks.contains(&stale_name));
}

#[test]
fn bind_helpers_listen_inside_and_the_sandbox_reaches_them() {
    let net = network("bind");
    let tcp = net.bind_tcp(80).expect("bind 80");
    let udp = net.bind_udp(53).expect("bind 53");
    assert_eq!(tcp.local_addr().expect("addr").ip(), net.proxy_addr());
    assert_eq!(udp.local_addr().expect("addr").port(), 53);
    std::thread::spawn(move || {
        for s in tcp.incoming().flatten() {
            use std::io::Write;
            let mut s = s;
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nproxy");
        }
    });
    let out = run_sh(
        &net,
        &format!("curl -sS --max-time 5 http://{}/", net.proxy_addr()),
    );
    assert_eq!(out.stdout, "proxy", "{}", out.stderr);
}

#[test]
fn public_types_can_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<SessionNetwork>();
    send_sync::<sandbox::SandboxChild>();
    send_sync::<sandbox::SandboxSpec>();
    send_sync::<sandbox::SandboxError>();
}
