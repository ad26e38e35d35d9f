//! `--backend kvm|auto` on this machine's own /dev/kvm (the project's
//! dev/CI hosts: nested PVM, where guest user mode cannot make system
//! calls): auto picks netns with the pre-probe's reason and caches that
//! verdict (reused; re-probed when its key changes); `--backend kvm` fails
//! with exit 125 naming the stage, leaving no namespace, tap or session
//! behind. The kvm backend's success path runs inside the QEMU harness
//! (tests/kvm_backend_in_qemu.rs). Also: a setup failure after the receipt
//! chain started (any backend) still closes the chain.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use serde_json::Value;
use test_requirements::{require, Requirement};

mod support;

const POLICY: &str = r#"
ttl = "10m"

[web]
allow = ["granted.example"]
methods = ["GET"]
"#;

struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        let home = Home {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        support::keygen_and_mint(home.path(), POLICY);
        home
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn openclaw(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_openclaw"));
        cmd.env("OPENCLAW_HOME", self.path())
            .env_remove("RUST_LOG")
            .env_remove("OPENCLAW_KVM_PREPROBE")
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, backend: &str, script: &str) -> Command {
        let mut cmd = self.openclaw();
        cmd.arg("run")
            .arg("--capabilities")
            .arg(self.path().join("task.cap"))
            .args(["--backend", backend, "--", "/bin/sh", "-c", script]);
        cmd
    }

    /// [`Home::run`] with `--image` (the kvm backend's root filesystem).
    fn run_with_image(&self, backend: &str, image: &str, script: &str) -> Command {
        let mut cmd = self.openclaw();
        cmd.arg("run")
            .arg("--capabilities")
            .arg(self.path().join("task.cap"))
            .args(["--image", image])
            .args(["--backend", backend, "--", "/bin/sh", "-c", script]);
        cmd
    }

    fn sessions(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.path().join("sessions")) {
            Ok(dir) => dir.map(|e| e.expect("entry").path()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Runs `cmd`; returns its output and the session it created (ids from
    /// the same second do not sort by time, so compare before and after).
    fn run_new(&self, cmd: &mut Command) -> (Output, PathBuf, std::time::Duration) {
        let before = self.sessions();
        let started = Instant::now();
        let out = cmd.output().expect("openclaw runs");
        let took = started.elapsed();
        let mut new: Vec<PathBuf> = self
            .sessions()
            .into_iter()
            .filter(|s| !before.contains(s))
            .collect();
        assert_eq!(new.len(), 1, "one new session: {}", text(&out.stderr));
        (out, new.remove(0), took)
    }

    fn cache(&self) -> PathBuf {
        self.path().join("kvm-probe.json")
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).expect("json")
}

/// The session namespaces that exist now.
fn session_namespaces() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    text(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("openclaw-"))
        .map(str::to_owned)
        .collect()
}

/// First line of each test of how openclaw copes with a nested PVM
/// /dev/kvm: fails it if this host is not one after all, and records that
/// it ran. Elsewhere those tests are ignored: real KVM is covered by the
/// QEMU harness (tests/kvm_backend_in_qemu.rs).
fn pvm_host(test: &str) {
    require(&[Requirement::KvmIsPvm], &format!("kvm_backend::{test}"));
}

fn timed(cmd: &mut Command) -> (Output, std::time::Duration) {
    let started = Instant::now();
    let out = cmd.output().expect("openclaw runs");
    (out, started.elapsed())
}

#[test]
#[cfg_attr(
    not(openclaw_kvm_is_pvm),
    ignore = "this host's /dev/kvm is absent or not nested PVM; the QEMU harness covers real KVM"
)]
fn auto_picks_netns_on_pvm_with_the_pre_probe_reason_and_caches_the_verdict() {
    pvm_host("auto_picks_netns_on_pvm_with_the_pre_probe_reason_and_caches_the_verdict");
    let home = Home::new();
    let script = "echo out; echo err >&2; exit 3";

    // First run: the pre-probe decides, and its verdict is cached.
    let (out, dir, took) = home.run_new(&mut home.run("auto", script));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    // The agent's output, marked as the agent's (docs/approvals.md).
    assert_eq!(text(&out.stdout), "agent| out\n");
    let info = read_json(&dir.join("session.json"));
    assert_eq!(info["backend"], "netns");
    let reason = info["backend_reason"].as_str().expect("reason").to_owned();
    assert!(
        reason.starts_with("auto: KVM is present but unusable") && reason.contains("pre-probe: "),
        "{reason}"
    );
    assert!(
        stderr.contains(&format!("backend netns: {reason}")),
        "the startup line says which and why: {stderr}"
    );
    let cache = read_json(&home.cache());
    assert_eq!(cache["usable"], false);
    assert_eq!(
        cache["image_sha256"],
        Value::Null,
        "the pre-probe needs no image"
    );
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    assert_eq!(cache["host"]["kernel_release"], release.trim());
    assert!(cache["host"]["kvm_modules"]
        .as_array()
        .expect("modules")
        .iter()
        .any(|m| m == "kvm_pvm"));
    let probed_at = cache["probed_at"].clone();
    eprintln!("first auto run (pre-probe): {took:?}; {reason}");

    // Second run: the cached verdict answers.
    let (out, dir, took) = home.run_new(&mut home.run("auto", script));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let info = read_json(&dir.join("session.json"));
    assert_eq!(info["backend"], "netns");
    let reason = info["backend_reason"].as_str().expect("reason");
    assert!(reason.contains("cached verdict"), "{reason}");
    assert_eq!(read_json(&home.cache())["probed_at"], probed_at);
    eprintln!("second auto run (cached): {took:?}");

    // The cached verdict is what is used: a marked one shows up as is.
    let mut marked = read_json(&home.cache());
    marked["reason"] = "MARKED-VERDICT".into();
    std::fs::write(home.cache(), marked.to_string()).expect("write cache");
    let (out, dir, _) = home.run_new(&mut home.run("auto", script));
    assert_eq!(out.status.code(), Some(3));
    let info = read_json(&dir.join("session.json"));
    assert!(
        info["backend_reason"]
            .as_str()
            .is_some_and(|r| r.contains("MARKED-VERDICT")),
        "{}",
        info["backend_reason"]
    );

    // A changed key (another kernel) invalidates it: probed again.
    for field in ["kernel_release", "kvm_device"] {
        let mut stale = read_json(&home.cache());
        stale["host"][field] = "something else".into();
        std::fs::write(home.cache(), stale.to_string()).expect("write cache");
        let (out, dir, _) = home.run_new(&mut home.run("auto", script));
        assert_eq!(out.status.code(), Some(3));
        let info = read_json(&dir.join("session.json"));
        let reason = info["backend_reason"].as_str().expect("reason");
        assert!(
            !reason.contains("cached") && reason.contains("pre-probe: "),
            "{field}: {reason}"
        );
        let fresh = read_json(&home.cache());
        assert_eq!(fresh["host"]["kernel_release"], release.trim());
        assert_ne!(fresh["host"]["kvm_device"], "something else");
        assert_ne!(fresh["reason"], "MARKED-VERDICT");
    }
    let ids: Vec<String> = home
        .sessions()
        .iter()
        .filter_map(|s| s.file_name()?.to_str().map(str::to_owned))
        .collect();
    assert!(session_namespaces()
        .iter()
        .all(|n| !ids.iter().any(|id| n.ends_with(id.as_str()))));
}

#[test]
#[cfg_attr(
    not(openclaw_kvm_is_pvm),
    ignore = "this host's /dev/kvm is absent or not nested PVM; the QEMU harness covers real KVM"
)]
fn kvm_backend_fails_at_the_pre_probe_with_exit_125_and_leaves_nothing() {
    pvm_host("kvm_backend_fails_at_the_pre_probe_with_exit_125_and_leaves_nothing");
    let home = Home::new();
    let (out, took) = timed(&mut home.run("kvm", "echo should-not-run"));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(
        stderr.contains("kvm backend: this host's KVM cannot run the guest (pre-probe: "),
        "{stderr}"
    );
    assert!(!text(&out.stdout).contains("should-not-run"));
    // No session, hence no session namespace (they are named after the
    // session). Comparing the machine-wide namespace list would also see
    // sessions of tests running beside this one.
    assert!(
        home.sessions().is_empty(),
        "refused before any session exists"
    );
    eprintln!("--backend kvm refused in {took:?}: {stderr}");
}

/// Past the pre-probe (`OPENCLAW_KVM_PREPROBE=skip`) the real guest boots
/// on PVM's emulator and never reaches its init: the boot stage fails after
/// the boot timeout. Exercises the whole kvm session path up to there
/// (image, tap inside the session namespace, VM start, kill, teardown).
#[test]
#[cfg_attr(
    not(openclaw_kvm_is_pvm),
    ignore = "this host's /dev/kvm is absent or not nested PVM; the QEMU harness covers real KVM"
)]
fn kvm_backend_boot_failure_names_the_stage_and_tears_everything_down() {
    pvm_host("kvm_backend_boot_failure_names_the_stage_and_tears_everything_down");
    let home = Home::new();
    let (out, dir, took) = home.run_new(
        home.run_with_image("kvm", "initramfs", "echo should-not-run")
            .env("OPENCLAW_KVM_PREPROBE", "skip")
            .env("OPENCLAW_KVM_BOOT_TIMEOUT", "3s"),
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(
        stderr.contains("boot: the guest did not reach its init within 3s"),
        "{stderr}"
    );
    assert!(stderr.contains("starting the microVM (1 vCPU"), "{stderr}");
    let info = read_json(&dir.join("session.json"));
    assert_eq!(info["backend"], "kvm");
    assert_eq!(info["backend_reason"], "requested with --backend kvm");
    assert_eq!(info["status"], "failed");
    assert!(dir.join("guest-console.log").exists());
    assert!(dir.join("report.json").exists());
    // The receipt chain is closed and verifies.
    let verify = home
        .openclaw()
        .arg("verify")
        .arg(&dir)
        .arg("--key")
        .arg(home.path().join("keys/receipt.pub"))
        .arg("--cap-pubkey")
        .arg(home.path().join("keys/root.pub"))
        .output()
        .expect("verify");
    assert!(verify.status.success(), "{}", text(&verify.stdout));
    // The tap lived only in the session namespace, which is gone.
    let id = dir.file_name().and_then(|f| f.to_str()).expect("id");
    let now = session_namespaces();
    assert!(
        !now.iter().any(|n| n.ends_with(id)),
        "session namespace left: {now:?}"
    );
    let tap = format!("oc-{}", &id[id.len() - 6..]);
    assert!(!Path::new("/sys/class/net").join(&tap).exists());
    eprintln!("boot-stage failure after {took:?}");
}

/// The session fails after its receipt log exists (here: the service catalog
/// is missing): exit 125, and the chain still ends with session_end.
#[test]
fn a_setup_failure_after_the_chain_starts_still_closes_it() {
    let home = Home::new();
    let mut cmd = home.openclaw();
    cmd.arg("run")
        .arg("--capabilities")
        .arg(home.path().join("task.cap"))
        // The catalog is read when enforcement is built, after the chain's
        // session_start (a missing secrets file is refused before anything).
        .arg("--catalog")
        .arg(home.path().join("missing-catalog.toml"))
        .args([
            "--backend",
            "netns",
            "--",
            "/bin/sh",
            "-c",
            "echo should-not-run",
        ]);
    let (out, dir, _) = home.run_new(&mut cmd);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("loading the service catalog"), "{stderr}");
    let receipts = std::fs::read_to_string(dir.join("receipts.jsonl")).expect("receipts");
    assert!(receipts.lines().count() >= 2, "{receipts}");
    let verify = home
        .openclaw()
        .arg("verify")
        .arg(&dir)
        .arg("--key")
        .arg(home.path().join("keys/receipt.pub"))
        .output()
        .expect("verify");
    assert!(verify.status.success(), "{}", text(&verify.stdout));
    assert_eq!(read_json(&dir.join("session.json"))["status"], "failed");
}
