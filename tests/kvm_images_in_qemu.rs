//! Real agents in the microVM: `openclaw run --backend kvm --image …` end to
//! end on real KVM inside the QEMU harness, booted from root filesystems on
//! virtio-blk. The Debian image (python3, nodejs, curl, git,
//! ca-certificates, and the OpenAI SDK pip-installed at build time) is built
//! once with `mmdebstrap` and cached under `target/qemu-harness/images`;
//! a small OCI layout (busybox, an `Env`, a `WorkingDir`) is written by
//! this test and imported with `openclaw image import`. Both reach L1 as
//! read-only disks. A local mock upstream (`qemu-harness`'s
//! `examples/mock_upstream.rs`, HTTPS with its own CA) answers for
//! `api.openai.com` and `granted.example`. In L1:
//! - a Python agent uses the OpenAI SDK with streaming through the session
//!   proxy: allowed, the real key injected in place of the placeholder (the
//!   upstream says which it saw), a blocked request to another host; the
//!   CA variables all name the session CA bundle; what it writes in `/work`
//!   is in the bundle's `work/`; the receipts verify;
//! - a Node agent's `fetch` is allowed; a file the Python session wrote
//!   outside `/work` (its writable layer) is gone; its `/work` file arrives;
//! - the OCI image's `Env` and `WorkingDir` are what its command sees;
//! - `--backend auto` with a command the image lacks is an error naming the
//!   image, never another backend;
//! - no session keeps its disks (`vm/`) and nothing of the sessions' network
//!   is left.
//!
//! Ignored (with the reason) only when QEMU is missing;
//! `OPENCLAW_REQUIRE_HARNESS=1` makes that a failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use guest_image::debian::DebianSpec;
use guest_image::store;
use qemu_harness::{L1Disk, L1Payload};
use sha2::{Digest, Sha256};
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
/// variables; a file in /work and one in its writable layer.
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
openclaw run $ARGS --backend kvm --image /tmp/img/oci -- /bin/sh -c 'echo "GREETING=$GREETING"; echo "PWD=$PWD"' >/tmp/out 2>/tmp/err
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

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn openclaw(home: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_openclaw"))
        .env("OPENCLAW_HOME", home)
        .args(args)
        .output()
        .expect("openclaw runs");
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// `openclaw keygen` + `cap mint` on this host, into `home`.
fn mint(home: &Path) -> PathBuf {
    openclaw(home, &["keygen"]);
    let policy = home.join("policy.toml");
    std::fs::write(&policy, POLICY).expect("policy");
    let cap = home.join("task.cap");
    openclaw(
        home,
        &[
            "cap",
            "mint",
            policy.to_str().expect("utf-8"),
            "-o",
            cap.to_str().expect("utf-8"),
        ],
    );
    cap
}

/// The upstream's CA and one leaf for every host it plays.
fn upstream_certs(dir: &Path) -> [PathBuf; 3] {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut params = CertificateParams::new(Vec::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "images harness upstream CA");
    let ca = params.self_signed(&ca_key).expect("ca");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(vec![
        "granted.example".into(),
        "other.example".into(),
        "api.openai.com".into(),
    ])
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

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// An OCI image layout with one layer (busybox as /bin/sh, an app dir) and
/// a config with `Env` and `WorkingDir`, written here from scratch.
fn oci_layout(dir: &Path) -> PathBuf {
    let tree = dir.join("oci-tree");
    std::fs::create_dir_all(tree.join("bin")).expect("mkdir");
    std::fs::create_dir_all(tree.join("srv/app")).expect("mkdir");
    std::fs::copy(guest_image::initramfs::BUSYBOX, tree.join("bin/busybox")).expect("busybox");
    std::os::unix::fs::symlink("busybox", tree.join("bin/sh")).expect("symlink");
    let layer = dir.join("layer.tar");
    let tar = Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-cf"])
        .arg(&layer)
        .arg("-C")
        .arg(&tree)
        .args(["bin", "srv"])
        .status()
        .expect("tar");
    assert!(tar.success());
    let layer_bytes = std::fs::read(&layer).expect("layer");
    let layout = dir.join("oci-layout-dir");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("mkdir");
    let put = |bytes: &[u8]| {
        let digest = sha256_hex(bytes);
        std::fs::write(blobs.join(&digest), bytes).expect("blob");
        (format!("sha256:{digest}"), bytes.len())
    };
    let (layer_digest, layer_size) = put(&layer_bytes);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin", "GREETING=hello-from-oci"],
            "WorkingDir": "/srv/app"
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest.clone()]}
    });
    let (config_digest, config_size) = put(config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer_size}]
    });
    let (manifest_digest, manifest_size) = put(manifest.to_string().as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": manifest_size}]
    });
    std::fs::write(layout.join("index.json"), index.to_string()).expect("index");
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("oci-layout");
    layout
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

fn tagged<'a>(output: &'a str, tag: &str) -> Vec<&'a str> {
    output
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter_map(|l| l.strip_prefix(tag))
        .map(str::trim)
        .collect()
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
    let cap = mint(&home);
    let [ca, cert, key] = upstream_certs(work.path());
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
    let layout = oci_layout(work.path());
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
    assert!(oci
        .manifest
        .env
        .contains(&"GREETING=hello-from-oci".to_string()));
    let listed = openclaw(&home, &["image", "list"]);
    assert!(listed.contains("oci-test"), "{listed}");

    let mock = qemu_harness::build_static_example("mock_upstream").expect("mock upstream builds");
    let l1 = qemu_harness::l1_kernel(&root.join("target/qemu-harness")).expect("L1 kernel");
    // The debug binary is ~200 MB of debug info; L1 keeps its initramfs in RAM.
    let openclaw_bin = work.path().join("openclaw");
    let strip = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&openclaw_bin)
        .arg(env!("CARGO_BIN_EXE_openclaw"))
        .status()
        .expect("strip");
    assert!(strip.success());

    let mut files: Vec<(String, PathBuf)> = vec![
        ("guest/vmlinux".into(), image.kernel.clone()),
        ("guest/initramfs.cpio".into(), image.initramfs.clone()),
        ("guest/boot.cpio".into(), image.boot.clone()),
        ("oc/task.cap".into(), cap),
        ("oc/secrets.toml".into(), secrets),
        ("oc/agent.py".into(), agent_py),
        ("oc/agent.js".into(), agent_js),
        (
            "oc/debian.json".into(),
            debian.dir.join(store::MANIFEST_FILE),
        ),
        ("oc/oci.json".into(), oci.dir.join(store::MANIFEST_FILE)),
        ("oc/keys/root.pub".into(), home.join("keys/root.pub")),
        ("oc/keys/receipt.key".into(), home.join("keys/receipt.key")),
        ("oc/keys/receipt.pub".into(), home.join("keys/receipt.pub")),
        ("up/ca.pem".into(), ca),
        ("up/cert.pem".into(), cert),
        ("up/key.pem".into(), key),
        ("usr/bin/mock_upstream".into(), mock),
    ];
    files.extend(with_libraries(&openclaw_bin, "usr/bin/openclaw"));
    files.extend(with_libraries(&which("ip"), "usr/sbin/ip"));
    // The kvm backend makes the session's disks and reads /work back with
    // e2fsprogs.
    files.extend(with_libraries(&which("mkfs.ext4"), "usr/sbin/mkfs.ext4"));
    files.extend(with_libraries(&which("e2fsck"), "usr/sbin/e2fsck"));
    files.extend(with_libraries(&which("debugfs"), "usr/sbin/debugfs"));
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

    let attempt = || {
        qemu_harness::run_qemu_with_disks(&l1, &outer_path, 2048, Duration::from_secs(1500), &disks)
            .expect("QEMU runs")
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

    // The OCI image's Env and WorkingDir.
    assert_eq!(value(&out, "OCI rc="), "0", "{:?}", lines(&out, "OCI-ERR"));
    assert_eq!(
        lines(&out, "OCI-OUT"),
        ["GREETING=hello-from-oci", "PWD=/srv/app"]
    );
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
