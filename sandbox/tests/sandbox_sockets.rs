//! Socket families inside the sandbox, tried with real programs: only
//! `AF_UNIX`, `AF_INET`, `AF_INET6` and netlink's routing protocol open;
//! `AF_VSOCK` (not confined by any network namespace), `AF_PACKET` and the
//! other netlink protocols are refused, while curl, Python and Node still
//! resolve names and fetch over HTTPS through the session address.

mod sandbox_common;

use std::net::{TcpListener, UdpSocket};
use std::sync::atomic::Ordering;

use sandbox_common::*;

/// Tries `socket(family, type, protocol)` (and a few `socketpair`s) and
/// prints `NAME RESULT` per line, RESULT being `ok` or the errno's name.
const PROBE: &str = r#"
import errno, socket
cases = [
    ("AF_UNIX", 1, 1, 0), ("AF_INET", 2, 1, 0), ("AF_INET6", 10, 1, 0),
    ("AF_VSOCK", 40, 1, 0), ("AF_PACKET", 17, 3, 0), ("AF_XDP", 44, 3, 0),
    ("NETLINK_ROUTE", 16, 3, 0), ("NETLINK_SOCK_DIAG", 16, 3, 4),
    ("NETLINK_AUDIT", 16, 3, 9), ("NETLINK_KOBJECT_UEVENT", 16, 2, 15),
    ("NETLINK_GENERIC", 16, 3, 16), ("NETLINK_NETFILTER", 16, 3, 12),
    ("NETLINK_XFRM", 16, 3, 6),
]
for name, fam, typ, proto in cases:
    try:
        socket.socket(fam, typ, proto).close()
        r = "ok"
    except OSError as e:
        r = errno.errorcode.get(e.errno, str(e.errno))
    print(name, r)
for name, fam in [("pair_AF_UNIX", 1), ("pair_AF_VSOCK", 40), ("pair_AF_NETLINK", 16)]:
    try:
        for s in socket.socketpair(fam, 1, 0):
            s.close()
        r = "ok"
    except OSError as e:
        r = errno.errorcode.get(e.errno, str(e.errno))
    print(name, r)
"#;

fn results(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect()
}

fn python_available() -> bool {
    std::path::Path::new("/usr/bin/python3").is_file()
}

#[test]
fn only_unix_inet_inet6_and_netlink_route_sockets_open() {
    assert!(python_available(), "the test needs /usr/bin/python3");
    let net = network("fam");
    let mut spec = sh_spec(&net, "exec /usr/bin/python3 -c \"$PROBE\"", b"ca");
    spec = spec.env("PROBE", PROBE);
    let out = run(spec);
    assert!(out.status.success(), "probe: {}", out.stderr);
    let got = results(&out.stdout);
    let want = [
        ("AF_UNIX", "ok"),
        ("AF_INET", "ok"),
        ("AF_INET6", "ok"),
        ("AF_VSOCK", "EAFNOSUPPORT"),
        ("AF_PACKET", "EAFNOSUPPORT"),
        ("AF_XDP", "EAFNOSUPPORT"),
        ("NETLINK_ROUTE", "ok"),
        ("NETLINK_SOCK_DIAG", "EPROTONOSUPPORT"),
        ("NETLINK_AUDIT", "EPROTONOSUPPORT"),
        ("NETLINK_KOBJECT_UEVENT", "EPROTONOSUPPORT"),
        ("NETLINK_GENERIC", "EPROTONOSUPPORT"),
        ("NETLINK_NETFILTER", "EPROTONOSUPPORT"),
        ("NETLINK_XFRM", "EPROTONOSUPPORT"),
        ("pair_AF_UNIX", "ok"),
        ("pair_AF_VSOCK", "EAFNOSUPPORT"),
        ("pair_AF_NETLINK", "EAFNOSUPPORT"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
    assert_eq!(got, want, "stderr: {}", out.stderr);

    // Control: the same probe on the host, unsandboxed, as root. Where the
    // kernel offers a family the sandbox was refused, the refusal is the
    // filter's, not the kernel's (this machine offers AF_VSOCK, AF_PACKET
    // and all those netlink protocols).
    let host = std::process::Command::new("/usr/bin/python3")
        .args(["-c", PROBE])
        .output()
        .expect("host probe");
    let host = results(&String::from_utf8_lossy(&host.stdout));
    let offered_here: Vec<&str> = host
        .iter()
        .filter(|(_, r)| r == "ok")
        .map(|(n, _)| n.as_str())
        .collect();
    let refused_by_filter: Vec<&str> = ["AF_VSOCK", "AF_PACKET", "NETLINK_SOCK_DIAG"]
        .into_iter()
        .filter(|name| offered_here.contains(name))
        .collect();
    assert!(
        !refused_by_filter.is_empty(),
        "the host offers none of the refused families: {host:?}"
    );
}

/// Real programs resolve and fetch over HTTPS with the filter in place:
/// glibc's resolver (`getaddrinfo` with `AI_ADDRCONFIG` reads the
/// namespace's addresses over `NETLINK_ROUTE`), curl, Python's urllib,
/// Node's https, and `ip addr` (netlink) all work.
#[test]
fn curl_python_node_and_ip_work_under_the_filter() {
    let net = network("prog");
    let addr = net.proxy_addr();
    let pki = test_pki("openclaw session CA (test)", &["shop.test"]);
    let (https, dns) = net
        .run_in(move || (TcpListener::bind((addr, 443)), UdpSocket::bind((addr, 53))))
        .expect("enter netns");
    let served = serve_https(https.expect("bind 443"), &pki, "fetched");
    serve_dns(dns.expect("bind 53"), addr);

    let mut programs = vec![
        ("curl", "curl -sS --max-time 10 https://shop.test/".to_owned()),
        (
            "getaddrinfo with AI_ADDRCONFIG",
            "/usr/bin/python3 -c 'import socket; print(\"fetched\" if socket.getaddrinfo(\"shop.test\", 443, flags=socket.AI_ADDRCONFIG) else \"\", end=\"\")'"
                .to_owned(),
        ),
        (
            "python urllib",
            "/usr/bin/python3 -c 'import urllib.request as u; print(u.urlopen(\"https://shop.test/\", timeout=10).read().decode(), end=\"\")'"
                .to_owned(),
        ),
        (
            "ip addr (NETLINK_ROUTE)",
            format!("ip -4 -o addr show | grep -q '{addr}' && printf fetched"),
        ),
    ];
    if std::path::Path::new("/usr/bin/node").is_file() {
        programs.push((
            "node https",
            "node -e 'require(\"https\").get(\"https://shop.test/\", r => { r.setEncoding(\"utf8\"); r.on(\"data\", d => process.stdout.write(d)); }).on(\"error\", e => { console.error(e); process.exit(1); })'"
                .to_owned(),
        ));
        programs.push((
            "node os.networkInterfaces",
            "node -e 'const i = require(\"os\").networkInterfaces(); process.stdout.write(i.lo ? \"fetched\" : JSON.stringify(i))'"
                .to_owned(),
        ));
    } else {
        eprintln!("note: no /usr/bin/node here; the Node cases are not run");
    }
    for (what, script) in &programs {
        let out = run(sh_spec(&net, script, pki.ca_pem.as_bytes()));
        assert!(
            out.status.success(),
            "{what}: `{script}` → {:?} {}",
            out.status,
            out.stderr
        );
        assert_eq!(out.stdout, "fetched", "{what}: {}", out.stderr);
    }
    assert!(served.load(Ordering::SeqCst) >= 2, "HTTPS requests arrived");
}
