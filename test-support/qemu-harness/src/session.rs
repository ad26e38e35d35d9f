//! What the tests that drive `openclaw run` inside L1 share
//! (`tests/kvm_backend_in_qemu.rs`, `tests/kvm_images_in_qemu.rs`): the
//! keys and token minted on this host, the upstream's certificates, the
//! files L1 needs to run openclaw's kvm backend, the run with its one retry
//! and its checks, and reading L1's tagged output lines.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{e2fsprogs_files, run_qemu_with_disks, which, with_libraries, HarnessError};
use crate::{L1Disk, L1Kernel, QemuRun, STALL};

/// Runs the `openclaw` binary at `openclaw` with `OPENCLAW_HOME=home`;
/// panics (naming the output) unless it succeeds; returns its stdout.
pub fn openclaw_ok(openclaw: &Path, home: &Path, args: &[&str]) -> String {
    let out = Command::new(openclaw)
        .env("OPENCLAW_HOME", home)
        .args(args)
        .output()
        .expect("openclaw runs");
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `openclaw keygen` and `cap mint` of `policy` into `home`; the token's path.
pub fn mint(openclaw: &Path, home: &Path, policy: &str) -> PathBuf {
    openclaw_ok(openclaw, home, &["keygen"]);
    let policy_path = home.join("policy.toml");
    std::fs::write(&policy_path, policy).expect("policy");
    let cap = home.join("task.cap");
    openclaw_ok(
        openclaw,
        home,
        &[
            "cap",
            "mint",
            policy_path.to_str().expect("utf-8"),
            "-o",
            cap.to_str().expect("utf-8"),
        ],
    );
    cap
}

/// A CA named `ca_name` and one leaf for every host in `hosts`, written to
/// `dir` as [ca.pem, cert.pem, key.pem] (what the upstream in L1 serves
/// and what `--upstream-ca` trusts).
pub fn upstream_certs(dir: &Path, ca_name: &str, hosts: &[&str]) -> [PathBuf; 3] {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut params = CertificateParams::new(Vec::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, ca_name);
    let ca = params.self_signed(&ca_key).expect("ca");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
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

/// What L1 needs to run `openclaw run --backend kvm`: openclaw itself
/// (debug info stripped into `scratch`: the debug binary is ~200 MB and
/// L1 keeps its initramfs in RAM), iproute2's `ip`, e2fsprogs (the
/// session's disks), all with their shared libraries, and the guest
/// (`/guest/{vmlinux,initramfs.cpio,boot.cpio}`, as `OPENCLAW_GUEST_IMAGE`
/// expects), plus the keys `openclaw keygen` made in `home` under
/// `/oc/keys`.
pub fn openclaw_files(
    openclaw: &Path,
    scratch: &Path,
    image: &guest_image::GuestImage,
    home: &Path,
) -> Result<Vec<(String, PathBuf)>, HarnessError> {
    let stripped = scratch.join("openclaw");
    let strip = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&stripped)
        .arg(openclaw)
        .status()
        .map_err(HarnessError::io("strip"))?;
    if !strip.success() {
        return Err(HarnessError::Command {
            what: "strip",
            status: strip.to_string(),
            stderr_tail: String::new(),
        });
    }
    let mut files: Vec<(String, PathBuf)> = vec![
        ("guest/vmlinux".into(), image.kernel.clone()),
        ("guest/initramfs.cpio".into(), image.initramfs.clone()),
        ("guest/boot.cpio".into(), image.boot.clone()),
    ];
    for key in ["root.pub", "receipt.key", "receipt.pub"] {
        files.push((format!("oc/keys/{key}"), home.join("keys").join(key)));
    }
    files.extend(with_libraries(&stripped, "usr/bin/openclaw")?);
    files.extend(with_libraries(&which("ip")?, "usr/sbin/ip")?);
    files.extend(e2fsprogs_files()?);
    Ok(files)
}

/// Boots L1 with `initramfs` (and `disks`), retrying once only when L1
/// itself never came up (the emulated outer machine, not our code); prints
/// L1's output and QEMU's wall time, and fails the test when L1 hung, ran
/// out of time or had no /dev/kvm (naming the script's last `STEP`).
pub fn run_l1_checked(
    l1: &L1Kernel,
    initramfs: &Path,
    mem_mib: u32,
    timeout: Duration,
    disks: &[L1Disk],
) -> QemuRun {
    let attempt =
        || run_qemu_with_disks(l1, initramfs, mem_mib, timeout, disks).expect("QEMU runs");
    let mut run = attempt();
    if !run.timed_out && !run.stalled && !run.output.contains("HARNESS: /dev/kvm ready") {
        println!("L1 did not come up:\n{}\nretrying once", run.output);
        run = attempt();
    }
    println!("{}", run.output);
    println!("QEMU wall time: {:?}", run.elapsed);
    let last_step = run
        .output
        .lines()
        .rev()
        .find(|l| l.starts_with("STEP "))
        .unwrap_or("(none)")
        .to_string();
    assert!(
        !run.stalled,
        "L1 hung (no output for {STALL:?}) during {last_step}"
    );
    assert!(!run.timed_out, "no result within the timeout ({last_step})");
    assert!(
        run.output.contains("HARNESS: /dev/kvm ready"),
        "kvm-amd did not load"
    );
    run
}

/// The lines L1 printed as `TAG| …` (a file shown by the script's `show`),
/// each without the `agent| ` mark that `openclaw run` puts on the agent's
/// own output when it is not a terminal (docs/approvals.md, the shared
/// terminal).
pub fn lines<'a>(output: &'a str, tag: &str) -> Vec<&'a str> {
    let prefix = format!("{tag}| ");
    output
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .map(|l| l.strip_prefix("agent| ").unwrap_or(l))
        .collect()
}

/// The rest of the first line that starts with `tag`, trimmed; panics
/// when there is none.
pub fn value<'a>(output: &'a str, tag: &str) -> &'a str {
    output
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .find_map(|l| l.strip_prefix(tag))
        .unwrap_or_else(|| panic!("no {tag:?} line in L1's output"))
        .trim()
}

/// The rest of every line that starts with `tag`, trimmed.
pub fn tagged<'a>(output: &'a str, tag: &str) -> Vec<&'a str> {
    output
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter_map(|l| l.strip_prefix(tag))
        .map(str::trim)
        .collect()
}
