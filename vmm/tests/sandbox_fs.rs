//! The sandbox's filesystem and privilege view: read-only system root,
//! invisible host secrets, no way back to privileges.

mod sandbox_common;

use sandbox_common::*;

#[test]
fn smoke_runs_as_nobody_in_own_namespaces() {
    let net = network("smoke");
    let out = run_sh(&net, "id -u; id -g; hostname; echo $$; pwd; ls /");
    assert!(out.status.success(), "stderr: {}", out.stderr);
    eprintln!("{}", out.stdout);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "65534");
    assert_eq!(lines[1], "65534");
    assert_eq!(lines[2], "openclaw");
    assert_eq!(lines[3], "2", "the command is PID 2 under our init");
    assert_eq!(lines[4], "/work");
}
