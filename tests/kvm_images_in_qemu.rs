//! Real agents in the microVM: `openclaw run --backend kvm --image …` end to
//! end on real KVM inside the QEMU harness, booted from root filesystems on
//! virtio-blk. The Debian image (python3, nodejs, curl, git,
//! ca-certificates, and the OpenAI SDK pip-installed at build time) is built
//! once with `mmdebstrap` and cached under `target/qemu-harness/images`;
//! a small OCI layout (busybox, an `Env`, a `WorkingDir`, a `User`:
//! `qemu_harness::busybox_oci_layout`) is written by this test and imported
//! with `openclaw image import`. Both reach L1 as
//! read-only disks. A local mock upstream (`qemu-harness`'s
//! `examples/mock_upstream.rs`, HTTPS with its own CA) answers for
//! `api.openai.com` and `granted.example`. In L1:
//! - a Python agent uses the OpenAI SDK with streaming through the session
//!   proxy: allowed, the real key injected in place of the placeholder (the
//!   upstream says which it saw), a blocked request to another host; the
//!   CA variables all name the session CA bundle; what it writes in `/work`
//!   is in the bundle's `work/`; the receipts verify; its writes to the
//!   system root (`/usr`, `/etc`, the CA bundle, …) are refused, and the
//!   image's disk is read-only in the guest's kernel;
//! - a Node agent's `fetch` is allowed; a file the Python session wrote
//!   outside `/work` (its writable layer) is gone; its `/work` file arrives;
//! - the OCI image's `Env`, `WorkingDir` and `User` are what its command
//!   sees; with `--pids-max 32` a fork loop of that user's stops at the
//!   limit (32 processes in all) and the session ends cleanly with the
//!   loop's count in the bundle;
//! - `--backend auto` with a command the image lacks is an error naming the
//!   image, never another backend;
//! - no session keeps its disks (`vm/`) and nothing of the sessions' network
//!   is left.
//!
//! Ignored (with the reason) only when QEMU is missing;
//! `OPENCLAW_REQUIRE_HARNESS=1` makes that a failure.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use guest_image::debian::DebianSpec;
use guest_image::store;
use qemu_harness::{lines, tagged, value, L1Disk, L1Payload, OCI_APP_UID};
use test_requirements::{require, Requirement};

const POLICY: &str = r#"
ttl = "30m"

[web]
allow = ["granted.example"]
methods = ["GET"]

[llm]
providers = ["api.openai.com"]
credential = "openai_key"
"#;

/// The real key, which only the upstream may see.
const REAL_KEY: &str = "sk-harness-real-key-5d1e";

const SECRETS: &str = r#"
[[secret]]
name = "openai_key"
value = "sk-harness-real-key-5d1e"
# Where the SDK puts its key; a placeholder anywhere else is refused
# (docs/credentials.md, placement).
header = "Authorization"
format = "Bearer {}"
"#;

/// The Python agent: the OpenAI SDK, streaming; a blocked request; the CA
/// variables; a file in /work and one in its writable layer; writes to the
/// system root, each refused; which of its disks are read-only.
const PY_AGENT: &str = r#"
import os, urllib.request
from openai import OpenAI
client = OpenAI(api_key=os.environ["OPENAI_KEY"])
stream = client.chat.completions.create(
    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True)
text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
print("PY-LLM", text, flush=True)
try:
    urllib.request.urlopen("https://other.example/", timeout=30)
    print("PY-OTHER reached", flush=True)
except Exception as e:
    print("PY-OTHER failed", type(e).__name__, flush=True)
for var in ["SSL_CERT_FILE", "CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "GIT_SSL_CAINFO"]:
    print("PY-CA", var, os.environ.get(var), flush=True)
print("PY-TASK", os.environ.get("OPENCLAW_TASK"), "uid", os.getuid(), flush=True)
with open("/work/py-out.txt", "w") as f:
    f.write("written by python\n")
with open("/var/tmp/layer-marker", "w") as f:
    f.write("only this session\n")
print("PY-MARKER", os.path.exists("/var/tmp/layer-marker"), flush=True)
import errno, glob
for target in ["/usr/x", "/etc/x", "/x", "/bin/x", "/lib/x", "/etc/resolv.conf",
               "/etc/ssl/certs/ca-certificates.crt", "/usr/bin/python3"]:
    try:
        with open(target, "a") as f:
            f.write("x\n")
        print("PY-RO wrote", target, flush=True)
    except OSError as e:
        print("PY-RO refused", target, errno.errorcode.get(e.errno, e.errno), flush=True)
for d in sorted(glob.glob("/sys/block/vd*")):
    with open(d + "/serial") as f:
        serial = f.read().strip("\0\n ")
    with open(d + "/ro") as f:
        print("PY-DISK", serial, "ro=" + f.read().strip(), flush=True)
"#;

/// The Node agent: fetch, the previous session's layer, a file in /work.
const NODE_AGENT: &str = r#"
const fs = require("fs");
(async () => {
  const r = await fetch("https://granted.example/node/hello");
  console.log("NODE", r.status, JSON.stringify(await r.json()));
  console.log("NODE-MARKER", fs.existsSync("/var/tmp/layer-marker") ? "present" : "absent");
  fs.writeFileSync("/work/node-out.txt", "written by node\n");
})().catch((e) => { console.log("NODE-ERR", String(e)); process.exit(1); });
"#;

/// Runs in L1 after the modules are loaded. Every result is a tagged line.
const SCRIPT: &str = r#"
export PATH=/usr/sbin:/usr/bin:/bin
bb=/bin/busybox
mount -t tmpfs run /run
ip link set lo up
$bb mkdir -p /tmp/home/keys
for f in root.pub receipt.key receipt.pub; do $bb cp /oc/keys/$f /tmp/home/keys/$f; done
$bb chmod 600 /tmp/home/keys/receipt.key
$bb cp /oc/secrets.toml /tmp/secrets.toml; $bb chmod 600 /tmp/secrets.toml
export OPENCLAW_HOME=/tmp/home OPENCLAW_GUEST_IMAGE=/guest
# The images: each a manifest here and its rootfs on the disk with its serial.
disk() {
  for d in /sys/block/vd*; do
    [ "$($bb cat $d/serial 2>/dev/null)" = "$1" ] && echo /dev/${d##*/}
  done
}
for img in debian oci; do
  $bb mkdir -p /tmp/img/$img
  $bb cp /oc/$img.json /tmp/img/$img/manifest.json
  $bb ln -s "$(disk $img-image)" /tmp/img/$img/rootfs.ext4
  echo "DISK $img $($bb readlink /tmp/img/$img/rootfs.ext4)"
done
# Sessions print only when they end; L1's own user space says it is alive
# (the harness calls an L1 silent for two minutes hung).
( while :; do sleep 30; echo "L1 alive $($bb date +%s)"; done ) &
mock_upstream 127.0.0.1:8443 /up/cert.pem /up/key.pem "Bearer $REAL_KEY" >/tmp/upstream.log 2>&1 &
sleep 1
ARGS="--capabilities /oc/task.cap --secrets /tmp/secrets.toml --approve deny --memory-mib 512 --upstream-ca /up/ca.pem --resolve granted.example=127.0.0.1:8443 --resolve other.example=127.0.0.1:8443 --resolve api.openai.com=127.0.0.1:8443"
show() { # tag file
  $bb sed "s/^/$1| /" "$2"
}
latest() { $bb ls -td /tmp/home/sessions/* | $bb head -n 1; }
session_json() { # tag
  echo "$1 $($bb tr -d '\n' < $(latest)/session.json)"
}
bundle() { # tag: the bundle's work/ files and whether the disks are gone
  S=$(latest)
  for f in $(cd $S/work && $bb find . -type f | $bb sort); do echo "$1-WORK $f $($bb head -c 100 $S/work/$f)"; done
  echo "$1-DISKS $($bb ls -d $S/vm 2>/dev/null || echo gone)"
}

echo "STEP python"
$bb mkdir -p /tmp/wd
$bb cp /oc/agent.py /oc/agent.js /tmp/wd/
t0=$($bb date +%s)
openclaw run $ARGS --backend kvm --image /tmp/img/debian --workdir /tmp/wd --agent "say hi" -- python3 agent.py >/tmp/out 2>/tmp/err
echo "PY rc=$? in $(( $($bb date +%s) - t0 ))s"
show PY-OUT /tmp/out; show PY-ERR /tmp/err
session_json PY-SESSION
bundle PY
S=$(latest)
show RECEIPT $S/receipts.jsonl
openclaw verify $S --key /tmp/home/keys/receipt.pub --cap-pubkey /tmp/home/keys/root.pub >/tmp/verify 2>&1
echo "VERIFY rc=$?"
show VERIFY-OUT /tmp/verify

echo "STEP node"
t0=$($bb date +%s)
openclaw run $ARGS --backend kvm --image /tmp/img/debian --workdir /tmp/wd -- node agent.js >/tmp/out 2>/tmp/err
echo "NODE rc=$? in $(( $($bb date +%s) - t0 ))s"
show NODE-OUT /tmp/out; show NODE-ERR /tmp/err
bundle NODE

echo "STEP oci"
# The image's Env, WorkingDir and User; then a fork loop of that user's
# against --pids-max (its count lands in /work; the timeout only bounds a
# failure).
openclaw run $ARGS --backend kvm --image /tmp/img/oci --pids-max 32 --timeout 180s -- /bin/sh -c 'echo "GREETING=$GREETING"; echo "PWD=$PWD"; echo "ID=$(id -u):$(id -g)"; ( n=0; while :; do sleep 600 & n=$((n+1)); echo $n > /work/forks; done ); echo "LOOP rc=$?"; read n < /work/forks; echo "FORKS $n"' >/tmp/out 2>/tmp/err
echo "OCI rc=$?"
show OCI-OUT /tmp/out; show OCI-ERR /tmp/err
bundle OCI

echo "STEP missing"
openclaw run $ARGS --backend auto --image /tmp/img/oci -- python3 -c 1 >/tmp/out 2>/tmp/err
echo "MISSING rc=$?"
show MISSING-ERR /tmp/err

show UPSTREAM /tmp/upstream.log
echo "NETDEVS $($bb ls /sys/class/net | $bb tr '\n' ' ')"
echo "NETNS [$(/usr/sbin/ip netns list | $bb tr '\n' ' ')]"
"#;

fn openclaw(home: &Path, args: &[&str]) -> String {
    qemu_harness::openclaw_ok(Path::new(env!("CARGO_BIN_EXE_openclaw")), home, args)
}

/// The Debian image the tests boot, built once into a store under
/// `target/` (mmdebstrap and pip take minutes; delete the directory to
/// rebuild).
fn debian_image(root: &Path) -> store::StoredImage {
    let home = root.join("target/qemu-harness/images");
    const NAME: &str = "debian-agents";
    if let Ok(image) = store::resolve(&home, NAME) {
        return image;
    }
    let started = Instant::now();
    let spec = DebianSpec::for_host(Vec::new(), vec!["openai".into()]);
    let image =
        guest_image::rootfs::build_debian(&home, NAME, &spec, &mut |l| eprintln!("image: {l}"))
            .expect("the Debian image builds (mmdebstrap from this host's mirror, pip from PyPI)");
    println!(
        "Debian image built in {:?}: {} MiB apparent, {} MiB on disk",
        started.elapsed(),
        image.manifest.size >> 20,
        image.manifest.allocated >> 20
    );
    image
}

#[test]
#[cfg_attr(
    not(openclaw_has_qemu),
    ignore = "qemu-system-x86_64 is not installed (scripts/bootstrap installs it)"
)]
fn agents_run_in_microvms_booted_from_debian_and_oci_images() {
    require(
        &[Requirement::Qemu],
        "kvm_images_in_qemu::agents_run_in_microvms_booted_from_debian_and_oci_images",
    );
    let root = qemu_harness::workspace_root();
    let work = tempfile::tempdir().expect("tempdir");
    let home = work.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let openclaw_bin = Path::new(env!("CARGO_BIN_EXE_openclaw"));
    let cap = qemu_harness::mint(openclaw_bin, &home, POLICY);
    let [ca, cert, key] = qemu_harness::upstream_certs(
        work.path(),
        "images harness upstream CA",
        &["granted.example", "other.example", "api.openai.com"],
    );
    let secrets = work.path().join("secrets.toml");
    std::fs::write(&secrets, SECRETS).expect("secrets");
    let (agent_py, agent_js) = (work.path().join("agent.py"), work.path().join("agent.js"));
    std::fs::write(&agent_py, PY_AGENT).expect("agent.py");
    std::fs::write(&agent_js, NODE_AGENT).expect("agent.js");

    let init = guest_image::build_guest_init(&root, &root.join("target/guest-init"))
        .expect("guest init builds");
    let image = guest_image::build_image(&root.join("target/guest-image"), &init, 2, &mut |l| {
        eprintln!("image: {l}")
    })
    .expect("guest image builds");
    let debian = debian_image(&root);
    let started = Instant::now();
    let layout = qemu_harness::busybox_oci_layout(work.path()).expect("OCI layout");
    let imported = openclaw(
        &home,
        &[
            "image",
            "import",
            layout.to_str().expect("utf-8"),
            "--name",
            "oci-test",
        ],
    );
    println!("{imported}OCI import took {:?}", started.elapsed());
    let oci = store::resolve(&home, "oci-test").expect("the import is in the store");
    assert_eq!(oci.manifest.working_dir, "/srv/app");
    assert_eq!(oci.manifest.user, "app");
    assert!(oci
        .manifest
        .env
        .contains(&"GREETING=hello-from-oci".to_string()));
    let listed = openclaw(&home, &["image", "list"]);
    assert!(listed.contains("oci-test"), "{listed}");

    let mock = qemu_harness::build_static_example("mock_upstream").expect("mock upstream builds");
    let l1 = qemu_harness::l1_kernel(&root.join("target/qemu-harness")).expect("L1 kernel");

    // openclaw, ip, e2fsprogs (the session's disks), the guest, keys.
    let mut files: Vec<(String, PathBuf)> =
        qemu_harness::openclaw_files(openclaw_bin, work.path(), &image, &home)
            .expect("openclaw's files for L1");
    files.extend([
        ("oc/task.cap".into(), cap),
        ("oc/secrets.toml".into(), secrets),
        ("oc/agent.py".into(), agent_py),
        ("oc/agent.js".into(), agent_js),
        (
            "oc/debian.json".into(),
            debian.dir.join(store::MANIFEST_FILE),
        ),
        ("oc/oci.json".into(), oci.dir.join(store::MANIFEST_FILE)),
        ("up/ca.pem".into(), ca),
        ("up/cert.pem".into(), cert),
        ("up/key.pem".into(), key),
        ("usr/bin/mock_upstream".into(), mock),
    ]);
    files.sort();
    files.dedup_by(|a, b| a.0 == b.0);
    let payload = L1Payload {
        files,
        script: format!("REAL_KEY='{REAL_KEY}'\n{SCRIPT}"),
    };
    let outer = qemu_harness::outer_initramfs(&l1, &payload).expect("outer initramfs");
    let outer_path = work.path().join("outer.cpio");
    std::fs::write(&outer_path, &outer).expect("write outer initramfs");
    eprintln!("outer initramfs: {} MiB", outer.len() >> 20);
    let disks = [
        L1Disk {
            path: debian.rootfs.clone(),
            serial: "debian-image".into(),
        },
        L1Disk {
            path: oci.rootfs.clone(),
            serial: "oci-image".into(),
        },
    ];

    let out =
        qemu_harness::run_l1_checked(&l1, &outer_path, 2048, Duration::from_secs(1500), &disks)
            .output;
    for img in ["debian", "oci"] {
        let disk = value(&out, &format!("DISK {img}"));
        assert!(disk.starts_with("/dev/vd"), "{img}'s disk in L1: {disk:?}");
    }

    // Python: the SDK streams through the proxy with the real key injected;
    // another host is blocked; the CA variables; /work comes back.
    let py_rc = value(&out, "PY rc=");
    assert!(
        py_rc.starts_with("0 "),
        "{py_rc}: {:?}",
        lines(&out, "PY-ERR")
    );
    let py = lines(&out, "PY-OUT");
    assert!(py.contains(&"PY-LLM Hello from the mock"), "{py:?}");
    assert!(
        py.iter().any(|l| l.starts_with("PY-OTHER failed")),
        "{py:?}"
    );
    for var in [
        "SSL_CERT_FILE",
        "CURL_CA_BUNDLE",
        "REQUESTS_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        "GIT_SSL_CAINFO",
    ] {
        let line = format!("PY-CA {var} /etc/ssl/certs/ca-certificates.crt");
        assert!(py.contains(&line.as_str()), "{line} in {py:?}");
    }
    assert!(py.contains(&"PY-TASK say hi uid 1000"), "{py:?}");
    assert!(py.contains(&"PY-MARKER True"), "{py:?}");
    // The system root cannot be written: refused as on netns (read-only or
    // not the command's); the image's disk is read-only in the guest's
    // kernel (VIRTIO_BLK_F_RO), the session's own disks are not.
    for target in [
        "/usr/x",
        "/etc/x",
        "/x",
        "/bin/x",
        "/lib/x",
        "/etc/resolv.conf",
        "/etc/ssl/certs/ca-certificates.crt",
        "/usr/bin/python3",
    ] {
        let refused = [
            format!("PY-RO refused {target} EACCES"),
            format!("PY-RO refused {target} EROFS"),
        ];
        assert!(
            py.iter().any(|l| refused.iter().any(|r| l == r)),
            "{target} in {py:?}"
        );
    }
    assert!(!py.iter().any(|l| l.starts_with("PY-RO wrote")), "{py:?}");
    for disk in [
        "PY-DISK openclaw-root ro=1",
        "PY-DISK openclaw-layer ro=0",
        "PY-DISK openclaw-work ro=0",
    ] {
        assert!(py.contains(&disk), "{disk} in {py:?}");
    }
    let py_session: serde_json::Value =
        serde_json::from_str(value(&out, "PY-SESSION")).expect("session json");
    assert_eq!(py_session["backend"], "kvm");
    assert_eq!(py_session["exit_code"], 0);
    assert!(
        py_session["vm_image"]
            .as_str()
            .is_some_and(|i| i.starts_with("debian-agents (")),
        "{}",
        py_session["vm_image"]
    );
    let py_work = tagged(&out, "PY-WORK");
    assert!(
        py_work.contains(&"./py-out.txt written by python"),
        "{py_work:?}"
    );
    assert!(
        py_work.iter().any(|l| l.starts_with("./agent.py")),
        "{py_work:?}"
    );
    assert_eq!(value(&out, "PY-DISKS"), "gone");
    let upstream = lines(&out, "UPSTREAM");
    assert!(
        upstream.contains(
            &"UPSTREAM POST /v1/chat/completions host=api.openai.com auth=real stream=true"
        ),
        "{upstream:?}"
    );
    assert!(
        !upstream.iter().any(|l| l.contains("other.example")),
        "{upstream:?}"
    );
    let receipts: Vec<serde_json::Value> = lines(&out, "RECEIPT")
        .iter()
        .map(|l| serde_json::from_str(l).expect("receipt json"))
        .collect();
    let decided = |host: &str, decision: &str| {
        receipts.iter().any(|r| {
            r["kind"] == "decision"
                && r["decision"]["decision"] == decision
                && r["action"].to_string().contains(host)
        })
    };
    assert!(decided("api.openai.com", "allow"), "{receipts:#?}");
    assert!(decided("other.example", "block"), "{receipts:#?}");
    assert_eq!(
        value(&out, "VERIFY rc="),
        "0",
        "{:?}",
        lines(&out, "VERIFY-OUT")
    );
    let receipt_text = lines(&out, "RECEIPT").join("\n");
    assert!(!receipt_text.contains(REAL_KEY), "the key is in a receipt");

    // Node: fetch allowed; the Python session's layer is gone.
    let node_rc = value(&out, "NODE rc=");
    assert!(
        node_rc.starts_with("0 "),
        "{node_rc}: {:?}",
        lines(&out, "NODE-ERR")
    );
    let node = lines(&out, "NODE-OUT");
    assert!(node.contains(&r#"NODE 200 {"hello":"node"}"#), "{node:?}");
    assert!(node.contains(&"NODE-MARKER absent"), "{node:?}");
    let node_work = tagged(&out, "NODE-WORK");
    assert!(
        node_work.contains(&"./node-out.txt written by node"),
        "{node_work:?}"
    );
    assert_eq!(value(&out, "NODE-DISKS"), "gone");

    // The OCI image's Env, WorkingDir and User; the fork loop stopped at
    // --pids-max (the shell, the loop's subshell and 30 sleeps), and the
    // session ended with the command's own status, not the timeout.
    let oci_err = lines(&out, "OCI-ERR");
    assert_eq!(value(&out, "OCI rc="), "0", "{oci_err:?}");
    assert_eq!(
        lines(&out, "OCI-OUT"),
        [
            "GREETING=hello-from-oci",
            "PWD=/srv/app",
            &format!("ID={OCI_APP_UID}:{OCI_APP_UID}"),
            "LOOP rc=2",
            "FORKS 30"
        ]
    );
    assert!(
        oci_err.iter().any(|l| l.contains("can't fork")),
        "{oci_err:?}"
    );
    assert_eq!(tagged(&out, "OCI-WORK"), ["./forks 30"]);
    assert_eq!(value(&out, "OCI-DISKS"), "gone");

    // A command the image lacks: an error naming the image, no session run.
    assert_eq!(value(&out, "MISSING rc="), "125");
    let missing = lines(&out, "MISSING-ERR").join("\n");
    assert!(
        missing.contains("\"python3\" is not in image oci-test"),
        "{missing}"
    );

    assert_eq!(value(&out, "NETDEVS"), "lo");
    assert_eq!(value(&out, "NETNS"), "[]");
    println!(
        "images in the harness: python session {py_rc}, node session {node_rc}; Debian image \
         {} MiB ({} MiB on disk)",
        debian.manifest.size >> 20,
        debian.manifest.allocated >> 20
    );
}
