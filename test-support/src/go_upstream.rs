//! The adversarial Go upstream (`test-support/upstreams/go/`): a real
//! server-side parser (Go's encoding/json into structs, net/url and
//! mime/multipart forms, emulated PHP form rules and framework routing
//! styles) that logs what it read of each request as one JSON line. Built
//! by `go build` into `target/go-upstream/` (stdlib only, offline), started
//! with a certificate from a test CA for the hosts it plays.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use crate::TestCa;

/// The Go sources, in this crate.
fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("upstreams/go")
}

/// `$CARGO_TARGET_DIR/go-upstream`, else the workspace's `target/go-upstream`.
fn build_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("go-upstream")
}

/// Builds the upstream once per test process (Go's own cache makes a
/// rebuild of unchanged sources quick) and returns the binary. Panics
/// with what to install when `go` is missing: the suite needs it.
pub fn go_upstream_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = build_dir();
            std::fs::create_dir_all(&dir).expect("target/go-upstream");
            // Build under a private name, then rename: test processes may
            // build at the same time.
            let tmp = dir.join(format!("openclaw-go-upstream.{}", std::process::id()));
            let out = Command::new("go")
                .args(["build", "-trimpath", "-o"])
                .arg(&tmp)
                .arg(".")
                .current_dir(source_dir())
                .env("GOCACHE", dir.join("cache"))
                .env("GOPATH", dir.join("gopath"))
                .env("GOPROXY", "off")
                .env("GOFLAGS", "")
                .env("GOTOOLCHAIN", "local")
                .env("CGO_ENABLED", "0")
                .output()
                .unwrap_or_else(|e| {
                    panic!("cannot run `go` ({e}): install golang-go (scripts/bootstrap)")
                });
            assert!(
                out.status.success(),
                "go build of the test upstream failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let bin = dir.join("openclaw-go-upstream");
            std::fs::rename(&tmp, &bin).expect("install the built upstream");
            bin
        })
        .clone()
}

/// Unicode simple case folding orbits as Go's `unicode.SimpleFold` walks
/// them (every orbit with more than one member).
pub fn go_fold_orbits() -> Vec<Vec<char>> {
    let out = Command::new(go_upstream_binary())
        .arg("-orbits")
        .output()
        .expect("run the upstream");
    assert!(out.status.success());
    let orbits: Vec<Vec<String>> = serde_json::from_slice(&out.stdout).expect("orbits JSON");
    orbits
        .into_iter()
        .map(|o| o.iter().filter_map(|s| s.chars().next()).collect())
        .collect()
}

/// A running Go upstream; killed when dropped.
pub struct GoUpstream {
    child: Child,
    /// Where it listens (loopback).
    pub addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for GoUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl GoUpstream {
    /// Starts the upstream on 127.0.0.1 with a certificate for `hosts`
    /// signed by `ca`.
    pub fn start(ca: &TestCa, hosts: &[&str]) -> GoUpstream {
        let bin = go_upstream_binary();
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = ca.leaf_pem(hosts);
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, cert).expect("write cert");
        std::fs::write(&key_path, key).expect("write key");
        let log = dir.path().join("readings.jsonl");
        let mut child = Command::new(bin)
            .args(["-listen", "127.0.0.1:0", "-cert"])
            .arg(&cert_path)
            .arg("-key")
            .arg(&key_path)
            .arg("-log")
            .arg(&log)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the Go upstream");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the upstream's first line");
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the upstream: {line:?}"));
        GoUpstream {
            child,
            addr,
            log,
            _dir: dir,
        }
    }

    /// Every request's reading so far, in arrival order (each is written
    /// before the request is answered).
    pub fn readings(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("reading line"))
            .collect()
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.readings().len()
    }
}
