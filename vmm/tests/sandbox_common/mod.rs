//! Shared helpers for the sandbox and session-network integration tests:
//! unique session ids, running a sandboxed shell snippet and capturing its
//! output, and leftover checks.
#![allow(dead_code)]

use std::io::Read;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU32, Ordering};

use vmm::host::{Sandbox, SandboxSpec, SandboxStdio, SessionNetwork};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A session id unique across test binaries and tests.
pub fn session_id(tag: &str) -> String {
    format!(
        "t{}{}{}",
        std::process::id(),
        tag,
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn network(tag: &str) -> SessionNetwork {
    SessionNetwork::create(&session_id(tag)).expect("create session network")
}

pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// A spec running `sh -c script` in `net` with `ca` as trust anchor.
pub fn sh_spec(net: &SessionNetwork, script: &str, ca: &[u8]) -> SandboxSpec {
    let mut spec = SandboxSpec::new(net, "sh", ["-c", script], ca.to_vec());
    spec.stdin = SandboxStdio::Null;
    spec.stdout = SandboxStdio::Pipe;
    spec.stderr = SandboxStdio::Pipe;
    spec
}

/// Runs `spec` to completion and captures its output.
pub fn run(spec: SandboxSpec) -> Output {
    let mut child = Sandbox::spawn(spec).expect("spawn sandbox");
    let mut out = child.take_stdout().expect("stdout pipe");
    let mut err = child.take_stderr().expect("stderr pipe");
    let t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut stdout = String::new();
    let _ = out.read_to_string(&mut stdout);
    let stderr = t.join().expect("stderr reader");
    let status = child.wait().expect("wait");
    Output {
        status,
        stdout,
        stderr,
    }
}

/// Runs `sh -c script` in `net` and captures the result.
pub fn run_sh(net: &SessionNetwork, script: &str) -> Output {
    run(sh_spec(net, script, b"no CA in this test\n"))
}

/// Mount table lines mentioning `needle`.
pub fn mounts_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter(|l| l.contains(needle))
        .map(String::from)
        .collect()
}

/// Every path under the cgroup roots whose name contains `needle`.
pub fn cgroups_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for root in [
        "/sys/fs/cgroup/memory/openclaw",
        "/sys/fs/cgroup/pids/openclaw",
        "/sys/fs/cgroup/openclaw",
    ] {
        if let Ok(rd) = std::fs::read_dir(root) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.contains(needle) {
                    found.push(e.path().display().to_string());
                }
            }
        }
    }
    found
}

pub fn exists(p: impl AsRef<Path>) -> bool {
    p.as_ref().symlink_metadata().is_ok()
}
