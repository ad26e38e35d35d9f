//! The session network namespace: what it holds, that it goes away with
//! its owner, that a dead supervisor's network is cleaned up, and entering
//! it. (With a sandbox inside: `sandbox/tests/sandbox_session.rs`.)

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use netns::{NetnsError, SessionNetwork};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A session id unique across test binaries and tests.
fn session_id(tag: &str) -> String {
    format!(
        "n{}{}{}",
        std::process::id(),
        tag,
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

fn network(tag: &str) -> SessionNetwork {
    SessionNetwork::create(&session_id(tag)).expect("create session network")
}

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
fn namespace_holds_only_loopback_with_the_session_address_and_no_routes() {
    let net = network("shape");
    assert!(net.path().starts_with("/run/netns"));
    assert!(net.path().exists());
    let addr = net.proxy_addr();
    assert_eq!(addr.octets()[..2], [10, 200]);
    assert_eq!(addr.octets()[3], 1);
    assert_eq!(net.guest_addr().octets()[3], 2);

    let links = ip(&["-n", net.name(), "-o", "link", "show"]);
    assert_eq!(links.lines().count(), 1, "only lo: {links}");
    assert!(links.contains("lo:") && links.contains("UP"), "{links}");
    let addrs = ip(&["-n", net.name(), "-o", "-4", "addr", "show"]);
    assert!(addrs.contains(&format!("{addr}/32")), "{addrs}");
    assert_eq!(
        ip(&["-n", net.name(), "-4", "route", "show"]).trim(),
        "",
        "no routes"
    );
    assert_eq!(
        ip(&["-n", net.name(), "-6", "route", "show", "table", "main"])
            .lines()
            .filter(|l| !l.contains("::1"))
            .count(),
        0
    );
    let fwd = net
        .run_in(|| std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward"))
        .expect("enter")
        .expect("read");
    assert_eq!(fwd.trim(), "0", "forwarding off");

    // Listeners bound through run_in live in the namespace: the address
    // does not exist on the host.
    let inside = net
        .run_in(move || TcpListener::bind((addr, 443)).map(|l| l.local_addr()))
        .expect("enter")
        .expect("bind inside");
    assert_eq!(inside.expect("addr").ip(), addr);
    assert!(
        TcpListener::bind((addr, 443)).is_err(),
        "address exists on the host"
    );
}

#[test]
fn two_networks_get_distinct_addresses_and_names() {
    let a = network("dist");
    let b = network("dist");
    assert_ne!(a.name(), b.name());
    assert_ne!(a.proxy_addr(), b.proxy_addr());
    let same = SessionNetwork::create(a.name().trim_start_matches("openclaw-"));
    assert!(same.is_err(), "a live session's name cannot be taken");
    assert!(
        a.path().exists(),
        "the failed create left the live namespace alone"
    );
}

#[test]
fn stale_network_cleanup_removes_a_dead_supervisors_network_only() {
    let live = network("nlive");
    let id = session_id("nstale");
    let dead = SessionNetwork::create_owned_by(&id, dead_pid(), 1).expect("create");
    let stale_name = dead.name().to_string();
    std::mem::forget(dead);

    let removed = netns::cleanup_stale_networks().expect("cleanup");
    assert!(removed.contains(&stale_name), "{removed:?}");
    assert!(!removed.iter().any(|n| n == live.name()), "{removed:?}");
    assert!(!Path::new("/run/netns").join(&stale_name).exists());
    assert!(live.path().exists(), "live session removed");
    let again = netns::cleanup_stale_networks().expect("cleanup again");
    assert!(!again.contains(&stale_name));
}

#[test]
fn entering_a_missing_namespace_fails_before_running_anything() {
    let ran = Arc::new(AtomicBool::new(false));
    let flag = ran.clone();
    let result = netns::run_in(Path::new("/nonexistent/netns"), move || {
        flag.store(true, Ordering::SeqCst)
    });
    assert!(
        matches!(result, Err(NetnsError::EnterNetns { ref path, .. }) if path == Path::new("/nonexistent/netns")),
        "{result:?}"
    );
    assert!(
        !ran.load(Ordering::SeqCst),
        "the closure ran outside the namespace"
    );
}

#[test]
fn a_panic_inside_the_namespace_comes_back_as_an_error() {
    let net = network("panic");
    let result = net.run_in(|| -> u32 { panic!("inside the namespace") });
    assert!(
        matches!(result, Err(NetnsError::NetnsThreadPanicked)),
        "{result:?}"
    );
    // The caller's thread never left its own namespace.
    assert!(TcpListener::bind((net.proxy_addr(), 0)).is_err());
}

#[test]
fn network_types_can_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<SessionNetwork>();
    send_sync::<NetnsError>();
}
