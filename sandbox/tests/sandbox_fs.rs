//! The sandbox's filesystem and privilege view: read-only system root,
//! invisible host secrets, no way back to privileges, clean environment.

mod sandbox_common;

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use sandbox_common::*;

#[test]
fn runs_as_nobody_as_pid_2_in_own_namespaces() {
    let net = network("smoke");
    let out = run_sh(
        &net,
        "id -u; id -g; id -G; hostname; echo $$; pwd; ls /proc | grep -E '^[0-9]+$' | sort -n | tr '\\n' ' '",
    );
    assert!(out.status.success(), "stderr: {}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        &lines[..6],
        ["65534", "65534", "65534", "openclaw", "2", "/work"]
    );
    // Only the sandbox's own processes: init, sh and the pipeline.
    let pids: Vec<u32> = lines[6]
        .split_whitespace()
        .map(|p| p.parse().expect("pid"))
        .collect();
    assert!(pids.contains(&1) && pids.contains(&2), "{pids:?}");
    assert!(
        pids.iter().all(|&p| p < 20),
        "host processes visible: {pids:?}"
    );
}

#[test]
fn no_capabilities_no_new_privs_seccomp_on() {
    let net = network("caps");
    let out = run_sh(
        &net,
        "grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Seccomp):' /proc/self/status",
    );
    assert!(out.status.success(), "{}", out.stderr);
    for line in out.stdout.lines() {
        let (k, v) = line.split_once(':').expect("key: value");
        let v = v.trim();
        match k {
            "NoNewPrivs" => assert_eq!(v, "1"),
            "Seccomp" => assert_eq!(v, "2", "filter mode"),
            _ => assert_eq!(v, "0000000000000000", "{k} not empty"),
        }
    }
    assert_eq!(out.stdout.lines().count(), 7, "{}", out.stdout);
}

#[test]
fn regaining_privileges_fails() {
    let net = network("priv");
    // The setuid binaries really are setuid on the host, so the sandbox
    // is what neutralises them.
    for bin in ["/usr/bin/mount", "/usr/bin/su"] {
        let mode = std::fs::metadata(bin)
            .expect("setuid binary present")
            .mode();
        assert!(mode & 0o4000 != 0, "{bin} is not setuid on this host");
    }
    let cases = [
        ("unshare -U true", "Operation not permitted"),
        ("unshare -r true", "Operation not permitted"),
        ("unshare -n true", "Operation not permitted"),
        ("mount -t tmpfs x /tmp", ""),
        ("/usr/bin/mount --bind /usr /tmp", ""),
        ("su -c id root </dev/null", ""),
        ("chroot / true", ""),
        ("nsenter -t 1 -m true", ""),
        ("cat /proc/1/environ", "Permission denied"),
        ("ls /proc/1/root/", "Permission denied"),
        ("mknod /tmp/sda b 8 0", ""),
        ("echo 1 > /proc/sys/kernel/sysrq", ""),
    ];
    for (script, needle) in cases {
        let out = run_sh(&net, script);
        assert!(
            !out.status.success(),
            "`{script}` succeeded: {}",
            out.stdout
        );
        assert!(
            out.stderr.contains(needle),
            "`{script}`: expected {needle:?} in {:?}",
            out.stderr
        );
    }
    // Every mount the sandbox sees is nosuid.
    let out = run_sh(&net, "cat /proc/self/mountinfo");
    assert!(out.status.success());
    for line in out.stdout.lines() {
        let opts = line.split_whitespace().nth(5).unwrap_or("");
        assert!(opts.contains("nosuid"), "mount without nosuid: {line}");
    }
}

#[test]
fn system_root_is_read_only_tmp_and_work_are_writable() {
    let net = network("ro");
    for target in [
        "/usr/x",
        "/etc/x",
        "/x",
        "/bin/x",
        "/lib/x",
        "/dev/x",
        "/etc/resolv.conf",
    ] {
        let out = run_sh(&net, &format!("echo > {target}"));
        assert!(!out.status.success(), "wrote {target}");
        assert!(
            out.stderr.contains("Read-only file system")
                || out.stderr.contains("Permission denied"),
            "{target}: {}",
            out.stderr
        );
    }
    let out = run_sh(
        &net,
        "echo t > /tmp/t && echo w > /work/w && cat /tmp/t /work/w && echo > /dev/null",
    );
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout, "t\nw\n");
}

#[test]
fn host_secrets_keys_homes_and_other_sessions_are_invisible() {
    let tag = session_id("sec");
    // A fake openclaw home, a user's home with a key, another session's
    // bundle and a host /tmp file, all readable by everyone on the host.
    let places: Vec<PathBuf> = vec![
        format!("/root/.openclaw-{tag}/secrets.toml").into(),
        format!("/root/.openclaw-{tag}/keys/receipts.key").into(),
        format!("/root/.openclaw-{tag}/sessions/other/ca.key").into(),
        format!("/root/.openclaw-{tag}/sessions/other/receipts.jsonl").into(),
        format!("/home/u{tag}/.ssh/id_ed25519").into(),
        format!("/var/tmp/openclaw-{tag}/sessions/other/receipts.jsonl").into(),
        format!("/tmp/openclaw-{tag}-secret").into(),
    ];
    for p in &places {
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, "united_password = \"hunter2\"\n").expect("write");
    }
    struct Cleanup(Vec<PathBuf>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for p in &self.0 {
                let _ = std::fs::remove_dir_all(p);
                let _ = std::fs::remove_file(p);
            }
        }
    }
    let _cleanup = Cleanup(vec![
        format!("/root/.openclaw-{tag}").into(),
        format!("/home/u{tag}").into(),
        format!("/var/tmp/openclaw-{tag}").into(),
        format!("/tmp/openclaw-{tag}-secret").into(),
    ]);

    let net = network("sec");
    let mut script = String::new();
    for p in &places {
        script.push_str(&format!(
            "test -e {0} && echo VISIBLE {0}; cat {0} 2>/dev/null; ",
            p.display()
        ));
    }
    script.push_str("grep -rs hunter2 / --exclude-dir=proc --exclude-dir=usr | head -n 3; ls /");
    let out = run_sh(&net, &script);
    assert!(!out.stdout.contains("VISIBLE"), "{}", out.stdout);
    assert!(!out.stdout.contains("hunter2"), "{}", out.stdout);
    let mut expect: Vec<String> = ["dev", "etc", "proc", "tmp", "work"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for d in ["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
        if exists(format!("/{d}")) {
            expect.push(d.to_string());
        }
    }
    expect.sort();
    let mut got: Vec<String> = out.stdout.lines().map(String::from).collect();
    got.sort();
    assert_eq!(got, expect, "the root holds only the allowed pieces");

    // /etc holds nothing the sandbox user could not read on the host anyway.
    let out = run_sh(
        &net,
        "test -e /etc/shadow && echo SHADOW; ls /etc/ssh 2>/dev/null; ls /dev | tr '\\n' ' '",
    );
    assert!(!out.stdout.contains("SHADOW"), "{}", out.stdout);
    assert_eq!(
        out.stdout.trim_end(),
        "fd full null random shm stderr stdin stdout tty urandom zero"
    );
}

#[test]
fn environment_is_clean_and_caller_vars_arrive() {
    std::env::set_var("OPENCLAW_TEST_SUPERVISOR_SECRET", "do-not-pass");
    let net = network("env");
    let spec = sh_spec(&net, "env | sort", b"ca")
        .env("OPENCLAW_TASK", "book a flight")
        .env("UNITED_PASSWORD", "{{openclaw:united_password}}");
    let out = run(spec);
    assert!(out.status.success(), "{}", out.stderr);
    let keys: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    let mut want = vec![
        "CURL_CA_BUNDLE",
        "HOME",
        "NODE_EXTRA_CA_CERTS",
        "OPENCLAW_TASK",
        "PATH",
        "PWD",
        "REQUESTS_CA_BUNDLE",
        "SSL_CERT_FILE",
        "TMPDIR",
        "UNITED_PASSWORD",
    ];
    want.sort();
    let mut keys_sorted = keys.clone();
    keys_sorted.retain(|k| *k != "SHLVL" && *k != "_" && *k != "OLDPWD");
    keys_sorted.sort();
    assert_eq!(keys_sorted, want, "{}", out.stdout);
    assert!(out.stdout.contains("OPENCLAW_TASK=book a flight\n"));
}

#[test]
fn task_files_go_in_and_results_come_out() {
    let net = network("work");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("task.txt"), "find flights\n").expect("write");
    std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).expect("chown");
    let mut spec = sh_spec(&net, "cat task.txt; echo booked > result.txt", b"ca");
    spec.workdir = Some(dir.path().to_path_buf());
    let out = run(spec);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout, "find flights\n");
    let result = dir.path().join("result.txt");
    assert_eq!(
        std::fs::read_to_string(&result).expect("result"),
        "booked\n"
    );
    assert_eq!(std::fs::metadata(&result).expect("meta").uid(), 65534);
}
