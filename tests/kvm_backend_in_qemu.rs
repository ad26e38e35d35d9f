//! `openclaw run --backend kvm|auto` end to end on real KVM, inside the QEMU
//! harness (the `qemu-harness` crate: L1 is a Debian kernel with kvm-amd
//! under TCG). The outer initramfs carries openclaw (stripped) with its
//! shared libraries, iproute2's `ip`, `openssl s_server` as the local HTTPS
//! upstream (its own test CA), e2fsprogs (the session's `/work` disk), the
//! guest image, and a token granting one host. The sessions boot the
//! initramfs-only guest (`--image initramfs`; root filesystem images are
//! tests/kvm_images_in_qemu.rs). In L1:
//! - `--backend kvm`: the `--workdir` files (at /work), `OPENCLAW_TASK` and
//!   `OPENCLAW_SESSION` reach the task; the guest's curl to the granted host is allowed (200
//!   from the upstream), to another host blocked (NXDOMAIN, receipted); the
//!   task's stdout, stderr and exit status come back; the receipts verify;
//! - `--backend auto` probes, picks kvm and caches the verdict; the next
//!   auto run reuses it, and SIGTERM stops it (130, `interrupted`);
//! - `--timeout` stops a VM (124);
//! - SIGKILL of a supervisor whose guest loops requests: its VMM threads
//!   die with it; `openclaw recover` removes its namespace (and the tap in
//!   it) and closes its chain, which verifies as interrupted;
//! - afterwards no tap, namespace, session network or VMM thread is left.
//!
//! The verdict is read from L1's serial console. Ignored (with the reason)
//! only when QEMU is missing; `OPENCLAW_REQUIRE_HARNESS=1` makes that a
//! failure (`test_requirements`, set up by the root build script).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use qemu_harness::L1Payload;
use test_requirements::{require, Requirement};

const POLICY: &str = r#"
ttl = "30m"

[web]
allow = ["granted.example"]
methods = ["GET"]
"#;

/// The agent: one allowed and one blocked request, output on both streams,
/// its own exit status.
const AGENT: &str =
    "cat /work/note.txt; echo TASK=$OPENCLAW_TASK; echo SESSION=$OPENCLAW_SESSION; \
curl -sS -o /dev/null -w \"GRANTED %{http_code}\\n\" https://granted.example/; \
curl -sS -o /dev/null -w \"OTHER %{http_code}\\n\" https://other.example/ 2>/dev/null; \
echo agent-stderr >&2; exit 7";

/// Runs in L1 after the modules are loaded. Every result is a tagged line.
const SCRIPT: &str = r#"
export PATH=/usr/sbin:/usr/bin:/bin
bb=/bin/busybox
mount -t tmpfs run /run
ip link set lo up
$bb mkdir -p /tmp/home/keys
for f in root.pub receipt.key receipt.pub; do $bb cp /oc/keys/$f /tmp/home/keys/$f; done
$bb chmod 600 /tmp/home/keys/receipt.key
export OPENCLAW_HOME=/tmp/home OPENCLAW_GUEST_IMAGE=/guest
openssl s_server -accept 127.0.0.1:8443 -cert /up/cert.pem -key /up/key.pem -www -quiet >/tmp/upstream.log 2>&1 &
sleep 1
ARGS="--capabilities /oc/task.cap --image initramfs --approve deny --memory-mib 256 --upstream-ca /up/ca.pem --resolve granted.example=127.0.0.1:8443 --resolve other.example=127.0.0.1:8443"
show() { # tag file
  $bb sed "s/^/$1| /" "$2"
}
session_json() { # tag
  S=$($bb ls -td /tmp/home/sessions/* | $bb head -n 1)
  echo "$1 $($bb tr -d '\n' < $S/session.json)"
}

echo "STEP kvm"
$bb mkdir -p /tmp/wd
echo hello-workdir > /tmp/wd/note.txt
openclaw run $ARGS --backend kvm --workdir /tmp/wd --agent "book it" -- /bin/sh -c "$AGENT" >/tmp/out 2>/tmp/err
echo "KVM rc=$?"
show KVM-OUT /tmp/out; show KVM-ERR /tmp/err
session_json KVM-SESSION
S=$($bb ls -td /tmp/home/sessions/* | $bb head -n 1)
show RECEIPT $S/receipts.jsonl
openclaw verify $S --key /tmp/home/keys/receipt.pub --cap-pubkey /tmp/home/keys/root.pub >/tmp/verify 2>&1
echo "VERIFY rc=$?"
show VERIFY-OUT /tmp/verify
show CONSOLE $S/console.log

echo "STEP auto"
openclaw run $ARGS --backend auto -- /bin/sh -c 'echo auto-ran' >/tmp/out 2>/tmp/err
echo "AUTO rc=$?"
show AUTO-OUT /tmp/out; show AUTO-ERR /tmp/err
session_json AUTO-SESSION
echo "CACHE $($bb tr -d '\n' < /tmp/home/kvm-probe.json)"

echo "STEP sigterm"
openclaw run $ARGS --backend auto -- /bin/sh -c 'echo sleeping; sleep 600' >/tmp/out 2>/tmp/err &
pid=$!
n=0
while ! $bb grep -q sleeping /tmp/out && [ $n -lt 300 ]; do sleep 1; n=$((n+1)); done
kill -TERM $pid
wait $pid
echo "SIGTERM rc=$?"
show SIGTERM-ERR /tmp/err
session_json SIGTERM-SESSION

echo "STEP timeout"
openclaw run $ARGS --backend kvm --timeout 20s -- /bin/sh -c 'sleep 600' >/tmp/out 2>/tmp/err
echo "TIMEOUT rc=$?"
show TIMEOUT-ERR /tmp/err
session_json TIMEOUT-SESSION

echo "STEP sigkill"
openclaw run $ARGS --backend kvm -- /bin/sh -c 'echo looping; while :; do curl -sS -o /dev/null https://granted.example/; sleep 1; done' >/tmp/out 2>/tmp/err &
pid=$!
n=0
while ! $bb grep -q granted.example /tmp/err && [ $n -lt 300 ]; do sleep 1; n=$((n+1)); done
echo "SIGKILL-VCPUS-BEFORE $($bb cat /proc/*/task/*/comm 2>/dev/null | $bb grep -c '^vcpu')"
kill -KILL $pid
wait $pid
echo "SIGKILL rc=$?"
echo "SIGKILL-VCPUS-AFTER $($bb cat /proc/*/task/*/comm 2>/dev/null | $bb grep -c '^vcpu')"
session_json SIGKILL-SESSION
openclaw recover >/tmp/rec 2>&1
echo "RECOVER rc=$?"
show RECOVER-OUT /tmp/rec
S=$($bb ls -td /tmp/home/sessions/* | $bb head -n 1)
openclaw verify $S --key /tmp/home/keys/receipt.pub >/tmp/verify 2>&1
echo "SIGKILL-VERIFY rc=$?"
show SIGKILL-VERIFY-OUT /tmp/verify
session_json RECOVERED-SESSION

echo "NETDEVS $($bb ls /sys/class/net | $bb tr '\n' ' ')"
echo "NETNS [$(/usr/sbin/ip netns list | $bb tr '\n' ' ')]"
echo "VMM-THREADS $($bb cat /proc/*/task/*/comm 2>/dev/null | $bb grep -c '^vcpu')"
"#;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `openclaw keygen` + `cap mint` on this host, into `home`.
fn mint(home: &Path) -> PathBuf {
    let openclaw = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_openclaw"))
            .env("OPENCLAW_HOME", home)
            .args(args)
            .output()
            .expect("openclaw runs");
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    };
    openclaw(&["keygen"]);
    let policy = home.join("policy.toml");
    std::fs::write(&policy, POLICY).expect("policy");
    let cap = home.join("task.cap");
    openclaw(&[
        "cap",
        "mint",
        policy.to_str().expect("utf-8"),
        "-o",
        cap.to_str().expect("utf-8"),
    ]);
    cap
}

/// The upstream's CA and a leaf for both hosts, as openssl s_server reads them.
fn upstream_certs(dir: &Path) -> [PathBuf; 3] {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut params = CertificateParams::new(Vec::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "kvm harness upstream CA");
    let ca = params.self_signed(&ca_key).expect("ca");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(vec!["granted.example".into(), "other.example".into()])
        .expect("params")
        .signed_by(&leaf_key, &ca, &ca_key)
        .expect("leaf");
    let paths = [
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    ];
    std::fs::write(&paths[0], ca.pem()).expect("write");
    std::fs::write(&paths[1], leaf.pem()).expect("write");
    std::fs::write(&paths[2], leaf_key.serialize_pem()).expect("write");
    paths
}

/// A binary and its shared libraries as (path in L1, path here).
fn with_libraries(binary: &Path, inside: &str) -> Vec<(String, PathBuf)> {
    let mut files = vec![(inside.to_owned(), binary.to_path_buf())];
    for lib in guest_image::initramfs::shared_libraries(binary).expect("ldd") {
        let inside = lib.to_string_lossy().trim_start_matches('/').to_owned();
        files.push((inside, lib));
    }
    files
}

fn which(name: &str) -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .expect("sh");
    let path = text(&out.stdout).trim().to_owned();
    assert!(
        !path.is_empty(),
        "{name} is not installed (scripts/bootstrap)"
    );
    std::fs::canonicalize(&path).expect("resolves")
}

/// The lines L1 printed under `tag`, each without the `agent| ` mark that
/// `openclaw run` puts on the agent's own output when it is not a terminal
/// (docs/approvals.md, the shared terminal).
fn lines<'a>(output: &'a str, tag: &str) -> Vec<&'a str> {
    let prefix = format!("{tag}| ");
    output
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .map(|l| l.strip_prefix("agent| ").unwrap_or(l))
        .collect()
}

fn value<'a>(output: &'a str, tag: &str) -> &'a str {
    output
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .find_map(|l| l.strip_prefix(tag))
        .unwrap_or_else(|| panic!("no {tag:?} line in L1's output"))
        .trim()
}

fn session(output: &str, tag: &str) -> serde_json::Value {
    serde_json::from_str(value(output, tag)).unwrap_or_else(|e| panic!("{tag}: {e}"))
}

#[test]
#[cfg_attr(
    not(openclaw_has_qemu),
    ignore = "qemu-system-x86_64 is not installed (scripts/bootstrap installs it)"
)]
fn kvm_backend_sessions_inside_qemu() {
    require(
        &[Requirement::Qemu],
        "kvm_backend_in_qemu::kvm_backend_sessions_inside_qemu",
    );
    let root = qemu_harness::workspace_root();
    let work = tempfile::tempdir().expect("tempdir");
    let home = work.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let cap = mint(&home);
    let [ca, cert, key] = upstream_certs(work.path());

    let init = guest_image::build_guest_init(&root, &root.join("target/guest-init"))
        .expect("guest init builds");
    let image = guest_image::build_image(&root.join("target/guest-image"), &init, 2, &mut |l| {
        eprintln!("image: {l}")
    })
    .expect("guest image builds");
    let l1 = qemu_harness::l1_kernel(&root.join("target/qemu-harness")).expect("L1 kernel");
    // The debug binary is ~200 MB of debug info; L1 keeps its initramfs in RAM.
    let openclaw = work.path().join("openclaw");
    let strip = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&openclaw)
        .arg(env!("CARGO_BIN_EXE_openclaw"))
        .status()
        .expect("strip");
    assert!(strip.success());

    let mut files: Vec<(String, PathBuf)> = vec![
        ("guest/vmlinux".into(), image.kernel.clone()),
        ("guest/initramfs.cpio".into(), image.initramfs.clone()),
        ("guest/boot.cpio".into(), image.boot.clone()),
        ("oc/task.cap".into(), cap),
        ("oc/keys/root.pub".into(), home.join("keys/root.pub")),
        ("oc/keys/receipt.key".into(), home.join("keys/receipt.key")),
        ("oc/keys/receipt.pub".into(), home.join("keys/receipt.pub")),
        ("up/ca.pem".into(), ca),
        ("up/cert.pem".into(), cert),
        ("up/key.pem".into(), key),
    ];
    files.extend(with_libraries(&openclaw, "usr/bin/openclaw"));
    files.extend(with_libraries(&which("ip"), "usr/sbin/ip"));
    files.extend(with_libraries(&which("openssl"), "usr/bin/openssl"));
    // The kvm backend makes the session's /work disk and reads it back with
    // e2fsprogs.
    files.extend(with_libraries(&which("mkfs.ext4"), "usr/sbin/mkfs.ext4"));
    files.extend(with_libraries(&which("e2fsck"), "usr/sbin/e2fsck"));
    files.extend(with_libraries(&which("debugfs"), "usr/sbin/debugfs"));
    files.sort();
    files.dedup_by(|a, b| a.0 == b.0);
    let payload = L1Payload {
        files,
        script: format!("AGENT='{AGENT}'\n{SCRIPT}"),
    };
    let outer = qemu_harness::outer_initramfs(&l1, &payload).expect("outer initramfs");
    let outer_path = work.path().join("outer.cpio");
    std::fs::write(&outer_path, &outer).expect("write outer initramfs");
    eprintln!("outer initramfs: {} MiB", outer.len() >> 20);

    let attempt = || {
        qemu_harness::run_qemu(&l1, &outer_path, 1536, Duration::from_secs(900)).expect("QEMU runs")
    };
    let mut run = attempt();
    // One retry only when L1 itself never came up (the emulated outer
    // machine, not our code).
    if !run.timed_out && !run.stalled && !run.output.contains("HARNESS: /dev/kvm ready") {
        println!("L1 did not come up:\n{}\nretrying once", run.output);
        run = attempt();
    }
    let out = run.output.clone();
    println!("{out}");
    println!("QEMU wall time: {:?}", run.elapsed);
    let last_step = out
        .lines()
        .rev()
        .find(|l| l.starts_with("STEP "))
        .unwrap_or("(none)");
    assert!(
        !run.stalled,
        "L1 hung (no output for {:?}) during {last_step}",
        qemu_harness::STALL
    );
    assert!(!run.timed_out, "no result within the timeout ({last_step})");
    assert!(
        out.contains("HARNESS: /dev/kvm ready"),
        "kvm-amd did not load"
    );

    // --backend kvm: the task's streams and status, allowed and blocked.
    assert_eq!(value(&out, "KVM rc="), "7", "{:?}", lines(&out, "KVM-ERR"));
    let kvm = session(&out, "KVM-SESSION");
    let id = kvm["id"].as_str().expect("id");
    assert_eq!(
        lines(&out, "KVM-OUT"),
        [
            "hello-workdir",
            "TASK=book it",
            &format!("SESSION={id}"),
            "GRANTED 200",
            "OTHER 000"
        ]
    );
    let stderr = lines(&out, "KVM-ERR");
    assert!(stderr.contains(&"agent-stderr"), "{stderr:?}");
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("Sandbox created (microVM, 1 vCPU, 256 MiB, booted in")),
        "{stderr:?}"
    );
    assert_eq!(kvm["backend"], "kvm");
    assert_eq!(kvm["exit_code"], 7);
    assert_eq!(kvm["vm_image"], "initramfs");
    assert_eq!(kvm["status"], "failed");
    let boot_ms = kvm["boot_ms"].as_u64().expect("boot time recorded");
    assert!(boot_ms > 0);
    let receipts: Vec<serde_json::Value> = lines(&out, "RECEIPT")
        .iter()
        .map(|l| serde_json::from_str(l).expect("receipt json"))
        .collect();
    let decisions: Vec<&serde_json::Value> = receipts
        .iter()
        .filter(|r| r["kind"] == "decision")
        .collect();
    let decided = |host: &str, decision: &str| {
        decisions.iter().any(|r| {
            r["decision"]["decision"] == decision && r["action"].to_string().contains(host)
        })
    };
    assert!(decided("granted.example", "allow"), "{decisions:#?}");
    assert!(decided("other.example", "block"), "{decisions:#?}");
    assert!(!decided("other.example", "allow"), "{decisions:#?}");
    assert_eq!(receipts[0]["sandbox"], "kvm", "{:?}", receipts[0]);
    assert_eq!(
        value(&out, "VERIFY rc="),
        "0",
        "{:?}",
        lines(&out, "VERIFY-OUT")
    );
    let console = lines(&out, "CONSOLE");
    assert!(console.contains(&"GRANTED 200") && console.contains(&"agent-stderr"));

    // --backend auto: probed, kvm, cached; then reused.
    assert_eq!(
        value(&out, "AUTO rc="),
        "0",
        "{:?}",
        lines(&out, "AUTO-ERR")
    );
    assert_eq!(lines(&out, "AUTO-OUT"), ["auto-ran"]);
    let auto = session(&out, "AUTO-SESSION");
    assert_eq!(auto["backend"], "kvm", "{}", auto["backend_reason"]);
    let reason = auto["backend_reason"].as_str().expect("reason");
    assert!(reason.starts_with("auto: KVM boots the guest"), "{reason}");
    let cache: serde_json::Value = serde_json::from_str(value(&out, "CACHE")).expect("cache json");
    assert_eq!(cache["usable"], true);
    assert!(cache["image_sha256"].is_string());

    // The cached verdict answers the next auto run; SIGTERM stops its VM.
    assert_eq!(value(&out, "SIGTERM rc="), "130");
    let sigterm = session(&out, "SIGTERM-SESSION");
    assert_eq!(sigterm["backend"], "kvm");
    assert_eq!(sigterm["status"], "interrupted");
    assert!(
        sigterm["backend_reason"]
            .as_str()
            .is_some_and(|r| r.contains("cached verdict")),
        "{}",
        sigterm["backend_reason"]
    );

    // --timeout stops the VM.
    assert_eq!(
        value(&out, "TIMEOUT rc="),
        "124",
        "{:?}",
        lines(&out, "TIMEOUT-ERR")
    );
    assert_eq!(session(&out, "TIMEOUT-SESSION")["status"], "timed_out");

    // SIGKILL of the supervisor: its VMM threads go with it; recovery
    // closes the chain as interrupted.
    assert_eq!(value(&out, "SIGKILL-VCPUS-BEFORE"), "1", "the VM ran");
    assert_eq!(value(&out, "SIGKILL rc="), "137");
    assert_eq!(
        value(&out, "SIGKILL-VCPUS-AFTER"),
        "0",
        "a vCPU thread outlived its supervisor"
    );
    let killed = session(&out, "SIGKILL-SESSION");
    assert_eq!(killed["backend"], "kvm");
    assert_eq!(killed["status"], "running", "nobody closed it yet");
    assert_eq!(
        value(&out, "RECOVER rc="),
        "0",
        "{:?}",
        lines(&out, "RECOVER-OUT")
    );
    let killed_id = killed["id"].as_str().expect("id");
    let recovered = lines(&out, "RECOVER-OUT");
    assert!(
        recovered.iter().any(|l| l.contains(&format!(
            "{killed_id}: interrupted (supervisor died) at seq"
        ))),
        "{recovered:?}"
    );
    // The guest's requests were receipted before the kill: the chain ends
    // after them, not at session_start.
    assert!(
        !recovered.iter().any(|l| l.contains("at seq 0;")),
        "{recovered:?}"
    );
    assert_eq!(
        value(&out, "SIGKILL-VERIFY rc="),
        "0",
        "{:?}",
        lines(&out, "SIGKILL-VERIFY-OUT")
    );
    let verified = lines(&out, "SIGKILL-VERIFY-OUT");
    assert!(
        verified
            .iter()
            .any(|l| l.contains("interrupted (supervisor died) at seq")),
        "{verified:?}"
    );
    assert_eq!(
        session(&out, "RECOVERED-SESSION")["status"],
        "supervisor_died"
    );

    // Nothing left: L1 has no NIC of its own, so only lo.
    assert_eq!(value(&out, "NETDEVS"), "lo");
    assert_eq!(value(&out, "NETNS"), "[]");
    assert_eq!(value(&out, "VMM-THREADS"), "0");
    println!(
        "kvm backend in the harness: boot marker {boot_ms} ms, auto's probe {:?} ms",
        cache["boot_ms"]
    );
}
