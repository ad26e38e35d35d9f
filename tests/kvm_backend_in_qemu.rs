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
//!   auto run reuses it, and SIGTERM stops it (130, `interrupted`): the
//!   guest passes the stop on to the command (SIGTERM), what the command
//!   writes in `/work` then is in the bundle's `work/`, and the session's
//!   disks are gone;
//! - `--timeout` stops a VM (124) the same way: a file written before and
//!   one written on the stop are both in the bundle;
//! - SIGKILL of a supervisor whose guest loops requests: its VMM threads
//!   die with it; `openclaw recover` removes its namespace (and the tap in
//!   it) and closes its chain, which verifies as interrupted;
//! - afterwards no tap, namespace, session network or VMM thread is left.
//!
//! The verdict is read from L1's serial console. Ignored (with the reason)
//! only when QEMU is missing; `OPENCLAW_REQUIRE_HARNESS=1` makes that a
//! failure (`test_requirements`, set up by the root build script).

use std::path::{Path, PathBuf};
use std::time::Duration;

use qemu_harness::{lines, tagged, value, which, with_libraries, L1Payload};
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
bundle() { # tag: the newest bundle's work/ files and whether its disks are gone
  S=$($bb ls -td /tmp/home/sessions/* | $bb head -n 1)
  for f in $(cd $S/work && $bb find . -type f | $bb sort); do echo "$1-WORK $f $($bb head -c 100 $S/work/$f)"; done
  echo "$1-DISKS $($bb ls -d $S/vm 2>/dev/null || echo gone)"
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
# The command writes its /work file only when the guest passes the stop
# on (SIGTERM to its group): the file in the bundle shows the whole path.
openclaw run $ARGS --backend auto -- /bin/sh -c 'trap "echo written-on-stop > /work/sigterm.txt; exit 0" TERM; echo sleeping; sleep 600 & wait' >/tmp/out 2>/tmp/err &
pid=$!
n=0
while ! $bb grep -q sleeping /tmp/out && [ $n -lt 300 ]; do sleep 1; n=$((n+1)); done
kill -TERM $pid
wait $pid
echo "SIGTERM rc=$?"
show SIGTERM-ERR /tmp/err
session_json SIGTERM-SESSION
bundle SIGTERM

echo "STEP timeout"
openclaw run $ARGS --backend kvm --timeout 20s -- /bin/sh -c 'echo written-before > /work/before.txt; trap "echo written-on-stop > /work/timeout.txt; exit 0" TERM; sleep 600 & wait' >/tmp/out 2>/tmp/err
echo "TIMEOUT rc=$?"
show TIMEOUT-ERR /tmp/err
session_json TIMEOUT-SESSION
bundle TIMEOUT

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
    let openclaw = Path::new(env!("CARGO_BIN_EXE_openclaw"));
    let cap = qemu_harness::mint(openclaw, &home, POLICY);
    let [ca, cert, key] = qemu_harness::upstream_certs(
        work.path(),
        "kvm harness upstream CA",
        &["granted.example", "other.example"],
    );

    let init = guest_image::build_guest_init(&root, &root.join("target/guest-init"))
        .expect("guest init builds");
    let image = guest_image::build_image(&root.join("target/guest-image"), &init, 2, &mut |l| {
        eprintln!("image: {l}")
    })
    .expect("guest image builds");
    let l1 = qemu_harness::l1_kernel(&root.join("target/qemu-harness")).expect("L1 kernel");

    // openclaw, ip, e2fsprogs (the session's /work disk), the guest, keys.
    let mut files: Vec<(String, PathBuf)> =
        qemu_harness::openclaw_files(openclaw, work.path(), &image, &home)
            .expect("openclaw's files for L1");
    files.extend([
        ("oc/task.cap".into(), cap),
        ("up/ca.pem".into(), ca),
        ("up/cert.pem".into(), cert),
        ("up/key.pem".into(), key),
    ]);
    files.extend(
        with_libraries(&which("openssl").expect("openssl"), "usr/bin/openssl").expect("ldd"),
    );
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

    let out =
        qemu_harness::run_l1_checked(&l1, &outer_path, 1536, Duration::from_secs(900), &[]).output;

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
    // The guest passed the stop on to the command, whose /work file came
    // back; the session's disks went.
    assert_eq!(
        tagged(&out, "SIGTERM-WORK"),
        ["./sigterm.txt written-on-stop"]
    );
    assert_eq!(value(&out, "SIGTERM-DISKS"), "gone");

    // --timeout stops the VM.
    assert_eq!(
        value(&out, "TIMEOUT rc="),
        "124",
        "{:?}",
        lines(&out, "TIMEOUT-ERR")
    );
    assert_eq!(session(&out, "TIMEOUT-SESSION")["status"], "timed_out");
    assert_eq!(
        tagged(&out, "TIMEOUT-WORK"),
        [
            "./before.txt written-before",
            "./timeout.txt written-on-stop"
        ]
    );
    assert_eq!(value(&out, "TIMEOUT-DISKS"), "gone");

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
