//! The copy fallback for `/etc` (kernels without overlayfs), forced with
//! `OPENCLAW_SANDBOX_ETC=copy`; in its own test binary because the switch
//! is process-wide.

mod sandbox_common;

use sandbox_common::*;

#[test]
fn copied_etc_gives_the_same_view() {
    std::env::set_var("OPENCLAW_SANDBOX_ETC", "copy");
    let net = network("copy");
    let ca = "-----BEGIN CERTIFICATE-----\nSESSION\n-----END CERTIFICATE-----\n";
    let out = run(sh_spec(
        &net,
        "cat /etc/resolv.conf; ls /etc/ssl/certs; cat /etc/ssl/certs/ca-certificates.crt; \
         test -e /etc/shadow && echo SHADOW; grep -c . /etc/passwd >/dev/null && echo passwd-ok; \
         echo > /etc/x 2>/dev/null || echo ro",
        ca.as_bytes(),
    ));
    assert!(out.status.success(), "{}", out.stderr);
    let want = format!(
        "nameserver {}\nca-certificates.crt\n{ca}passwd-ok\nro\n",
        net.proxy_addr()
    );
    assert_eq!(out.stdout, want);
}
