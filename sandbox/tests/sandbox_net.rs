//! The sandbox's network view: its resolver is the session address, the
//! session CA is its only trust anchor, and nothing else is reachable.

mod sandbox_common;

use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::sync::atomic::Ordering;
use std::time::Duration;

use sandbox_common::*;

fn curl_exit(out: &Output) -> Option<i32> {
    out.status.code()
}

#[test]
fn resolves_through_the_session_address_only() {
    let net = network("dns");
    let addr = net.proxy_addr();
    let sock = net
        .run_in(move || UdpSocket::bind((addr, 53)))
        .expect("enter netns")
        .expect("bind dns");
    let seen = serve_dns(sock, addr);
    let out = run_sh(
        &net,
        "cat /etc/resolv.conf; getent ahostsv4 united.com | head -n1",
    );
    assert!(out.status.success(), "stderr: {}", out.stderr);
    assert!(
        out.stdout.contains(&format!("nameserver {addr}")),
        "{}",
        out.stdout
    );
    assert_eq!(
        out.stdout
            .lines()
            .filter(|l| l.starts_with("nameserver"))
            .count(),
        1,
        "the proxy is the only resolver"
    );
    assert!(
        out.stdout
            .lines()
            .last()
            .unwrap_or("")
            .starts_with(&addr.to_string()),
        "united.com resolved to the proxy: {}",
        out.stdout
    );
    assert!(
        seen.load(Ordering::SeqCst) >= 1,
        "the query reached our responder"
    );

    // Another resolver is unreachable: no route leaves the namespace.
    let out = run_sh(&net, "exec bash -c 'echo x > /dev/udp/192.0.2.53/53'");
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("unreachable"),
        "UDP to another resolver: {}",
        out.stderr
    );
}

#[test]
fn curl_trusts_the_session_ca_and_nothing_else() {
    let net = network("tls");
    let addr = net.proxy_addr();
    let session = test_pki("openclaw session CA (test)", &["shop.test"]);
    let foreign = test_pki("some other CA", &["shop.test"]);
    let (good, bad) = net
        .run_in(move || {
            (
                TcpListener::bind((addr, 443)),
                TcpListener::bind((addr, 8443)),
            )
        })
        .expect("enter netns");
    let served = serve_https(good.expect("bind 443"), &session, "hello from the session");
    let foreign_served = serve_https(bad.expect("bind 8443"), &foreign, "should not be read");
    let dns = net
        .run_in(move || UdpSocket::bind((addr, 53)))
        .expect("enter netns")
        .expect("bind dns");
    serve_dns(dns, addr);

    let script = "curl -sS --max-time 10 https://shop.test/";
    let out = run(sh_spec(&net, script, session.ca_pem.as_bytes()));
    assert!(out.status.success(), "curl via session CA: {}", out.stderr);
    assert_eq!(out.stdout, "hello from the session");
    assert_eq!(served.load(Ordering::SeqCst), 1);

    // Same name, same address, certificate from a CA the sandbox does not
    // trust: curl refuses (60 = peer certificate cannot be authenticated).
    let script = "curl -sS --max-time 10 https://shop.test:8443/";
    let out = run(sh_spec(&net, script, session.ca_pem.as_bytes()));
    assert_eq!(curl_exit(&out), Some(60), "stderr: {}", out.stderr);
    assert_eq!(foreign_served.load(Ordering::SeqCst), 0);

    // The host's system roots are gone from the view, not only unused.
    let out = run(sh_spec(
        &net,
        "ls /etc/ssl/certs; cat /etc/ssl/certs/ca-certificates.crt; \
         echo $SSL_CERT_FILE $CURL_CA_BUNDLE $REQUESTS_CA_BUNDLE $NODE_EXTRA_CA_CERTS",
        session.ca_pem.as_bytes(),
    ));
    assert!(out.status.success(), "{}", out.stderr);
    let bundle = "/etc/ssl/certs/ca-certificates.crt";
    assert!(
        out.stdout.starts_with("ca-certificates.crt\n"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains(session.ca_pem.trim()));
    assert_eq!(
        out.stdout.lines().last(),
        Some(format!("{bundle} {bundle} {bundle} {bundle}").as_str())
    );
}

#[test]
fn escape_attempts_fail() {
    let net = network("esc");
    let addr = net.proxy_addr();

    // Services on the host's loopback, TCP, UDP and IPv6.
    let host_tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("host tcp");
    host_tcp.set_nonblocking(true).expect("nonblocking");
    let tcp_port = host_tcp.local_addr().expect("addr").port();
    let host_udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("host udp");
    host_udp
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let udp_port = host_udp.local_addr().expect("addr").port();
    let host_v6 = TcpListener::bind("[::1]:0").ok();
    if let Some(l) = &host_v6 {
        l.set_nonblocking(true).expect("nonblocking");
    }
    let v6_port = host_v6
        .as_ref()
        .map(|l| l.local_addr().expect("addr").port());

    // An abstract unix socket on the host (like D-Bus or X11 use): those
    // are scoped to the network namespace.
    let abstract_name = format!("openclaw-test-{}", session_id("abs"));
    let host_abstract = {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
            .expect("abstract addr");
        std::os::unix::net::UnixListener::bind_addr(&addr).expect("bind abstract")
    };
    host_abstract.set_nonblocking(true).expect("nonblocking");

    // A listener in the session namespace on one port proves the address
    // works, so failures on other ports are about the port.
    let inside = net
        .run_in(move || TcpListener::bind((addr, 8080)))
        .expect("enter")
        .expect("bind 8080");
    std::thread::spawn(move || {
        for s in inside.incoming().flatten() {
            use std::io::Write;
            let mut s = s;
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
        }
    });

    let c = "curl -sS --max-time 5 -o /dev/null";
    let mut cases = vec![
        (
            "session address, listening port",
            format!("{c} http://{addr}:8080/"),
            Some(0),
        ),
        (
            "host loopback TCP",
            format!("{c} http://127.0.0.1:{tcp_port}/"),
            Some(7),
        ),
        (
            "session address, other port",
            format!("{c} http://{addr}:22/"),
            Some(7),
        ),
        ("an outside IP", format!("{c} http://192.0.2.1/"), Some(7)),
        (
            "an outside IPv6",
            format!("{c} -6 'http://[2001:db8::1]/'"),
            Some(7),
        ),
        (
            "UDP to an outside IP",
            "bash -c 'echo x > /dev/udp/192.0.2.1/53'".to_string(),
            Some(1),
        ),
    ];
    cases.push((
        "host abstract unix socket",
        format!("{c} --abstract-unix-socket {abstract_name} http://x/"),
        Some(7),
    ));
    if let Some(p) = v6_port {
        cases.push((
            "host loopback IPv6",
            format!("{c} 'http://[::1]:{p}/'"),
            Some(7),
        ));
    }
    for (what, script, want) in &cases {
        let out = run_sh(&net, script);
        assert_eq!(
            out.status.code(),
            *want,
            "{what}: `{script}` → {:?} {}",
            out.status,
            out.stderr
        );
    }

    // UDP to the host's loopback "succeeds" locally (it is the sandbox's
    // own loopback) but never arrives at the host's socket.
    let out = run_sh(
        &net,
        &format!("bash -c 'echo escaped > /dev/udp/127.0.0.1/{udp_port}'"),
    );
    assert!(out.status.code().is_some());
    let mut buf = [0u8; 64];
    assert!(
        host_udp.recv_from(&mut buf).is_err(),
        "host UDP got a datagram"
    );
    assert!(
        host_tcp.accept().is_err(),
        "host TCP listener got a connection"
    );
    if let Some(l) = host_v6 {
        assert!(l.accept().is_err(), "host IPv6 listener got a connection");
    }
}

#[test]
fn two_sessions_cannot_reach_each_other() {
    let a = network("twoa");
    let b = network("twob");
    assert_ne!(a.proxy_addr(), b.proxy_addr());
    let a_addr = a.proxy_addr();
    let listener = a
        .run_in(move || TcpListener::bind((a_addr, 8080)))
        .expect("enter")
        .expect("bind");
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            use std::io::Write;
            let mut s = s;
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nA");
        }
    });
    let url = format!("http://{a_addr}:8080/");
    let from_a = run_sh(&a, &format!("curl -sS --max-time 5 {url}"));
    assert_eq!(
        from_a.stdout, "A",
        "control: A reaches its own listener: {}",
        from_a.stderr
    );
    let from_b = run_sh(&b, &format!("curl -sS --max-time 5 {url}"));
    assert_eq!(
        from_b.status.code(),
        Some(7),
        "B reached A: {}",
        from_b.stderr
    );

    // Files: each sees its own /work only; the other's host path is absent.
    let wa = tempfile::tempdir().expect("tempdir");
    let wb = tempfile::tempdir().expect("tempdir");
    std::fs::write(wa.path().join("a-secret.txt"), "A's data").expect("write");
    std::fs::write(wb.path().join("b-file.txt"), "B's data").expect("write");
    let mut spec = sh_spec(
        &b,
        &format!(
            "ls /work; test -e {}/a-secret.txt && echo SEES-A; cat /work/a-secret.txt 2>/dev/null; true",
            wa.path().display()
        ),
        b"x",
    );
    spec.workdir = Some(wb.path().to_path_buf());
    let out = run(spec);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout, "b-file.txt\n");
}
