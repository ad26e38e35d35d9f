//! Requirement-gated tests: tests that need something of the host (QEMU for
//! the harness, `/dev/kvm`, a nested PVM `/dev/kvm`, `/dev/net/tun`, the
//! real LLM client libraries, PostgreSQL's server binaries) and that
//! must never report "passed" when they did not run.
//!
//! How a test is gated:
//! - the owning crate's build script calls [`emit_cfgs`]: it probes each
//!   requirement and sets a cfg when it is met (`openclaw_has_qemu`, …);
//! - the test carries `#[cfg_attr(not(openclaw_has_qemu), ignore = "why")]`,
//!   so where the requirement is missing cargo reports it as *ignored*;
//! - the test's first line is [`require`]: it fails the test if the
//!   requirement is missing after all, and records that the test ran in
//!   `target/harness-ran/` (CI counts those files).
//!
//! `OPENCLAW_REQUIRE_HARNESS=1` (set by `.ci/run`) forces the cfgs of the
//! requirements CI's machine must have ([`Requirement::required_by_ci`]), so
//! a missing one fails its tests instead of ignoring them.
//!
//! Only `std`: build scripts depend on this crate, and `cargo check` of
//! their crates must stay cheap.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

/// The environment variable that turns a would-be ignore into a failure.
pub const REQUIRE_ENV: &str = "OPENCLAW_REQUIRE_HARNESS";
/// Under the target directory: one file per gated test that ran.
pub const RAN_DIR: &str = "harness-ran";

/// Something of the host a test needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// `qemu-system-x86_64` on the PATH: the QEMU harness (real KVM in L1).
    Qemu,
    /// `/dev/kvm`: the host's own KVM, whatever it is.
    Kvm,
    /// `/dev/kvm` is the nested PVM hypervisor (module `kvm_pvm`) of the
    /// project's dev and CI machines, where guest user mode cannot make
    /// system calls: tests of how openclaw copes with that.
    KvmIsPvm,
    /// `/dev/net/tun`: taps.
    Tun,
    /// The real LLM client libraries the netns sandbox can run: the pinned
    /// OpenAI and Anthropic Python SDKs in `scripts/bootstrap`'s venv (its
    /// marker file, written last) and `node` (built-in fetch).
    SdkClients,
    /// PostgreSQL's binaries (`initdb`, `pg_ctl`, `postgres`, `createdb`) under
    /// `/usr/lib/postgresql/<version>/bin` (Debian's `postgresql`): the tests
    /// of the control plane's PostgreSQL store start a private server.
    Postgres,
    /// Schemathesis (PyPI), pinned, in `scripts/bootstrap`'s own venv for it
    /// (its marker file, written last): the API's contract test.
    Schemathesis,
}

const QEMU: &str = "qemu-system-x86_64";
const KVM: &str = "/dev/kvm";
const PVM_MODULE: &str = "/sys/module/kvm_pvm";
const TUN: &str = "/dev/net/tun";
/// `scripts/bootstrap`'s venv, and the marker it writes once the pinned SDKs
/// are in it.
pub const SDK_VENV: &str = "/usr/local/lib/openclaw/test-venv";
const SDK_MARKER: &str = "/usr/local/lib/openclaw/test-venv/openclaw-sdks";
const NODE: &str = "node";
/// Debian's PostgreSQL: one directory per major version, each with `bin/`.
pub const POSTGRES_LIB: &str = "/usr/lib/postgresql";
/// `scripts/bootstrap`'s schemathesis venv (its `bin/st`), and its marker.
pub const SCHEMATHESIS_VENV: &str = "/usr/local/lib/openclaw/schemathesis-venv";
const SCHEMATHESIS_MARKER: &str = "/usr/local/lib/openclaw/schemathesis-venv/openclaw-schemathesis";

impl Requirement {
    pub const ALL: [Requirement; 7] = [
        Requirement::Qemu,
        Requirement::Kvm,
        Requirement::KvmIsPvm,
        Requirement::Tun,
        Requirement::SdkClients,
        Requirement::Postgres,
        Requirement::Schemathesis,
    ];

    /// The cfg a build script sets when the requirement is met.
    pub fn cfg(self) -> &'static str {
        match self {
            Requirement::Qemu => "openclaw_has_qemu",
            Requirement::Kvm => "openclaw_has_kvm",
            Requirement::KvmIsPvm => "openclaw_kvm_is_pvm",
            Requirement::Tun => "openclaw_has_tun",
            Requirement::SdkClients => "openclaw_has_sdk_clients",
            Requirement::Postgres => "openclaw_has_postgres",
            Requirement::Schemathesis => "openclaw_has_schemathesis",
        }
    }

    /// Short name, as recorded in `target/harness-ran/`.
    pub fn name(self) -> &'static str {
        match self {
            Requirement::Qemu => "qemu",
            Requirement::Kvm => "kvm",
            Requirement::KvmIsPvm => "kvm-pvm",
            Requirement::Tun => "tun",
            Requirement::SdkClients => "sdk-clients",
            Requirement::Postgres => "postgres",
            Requirement::Schemathesis => "schemathesis",
        }
    }

    /// What is missing when the requirement is not met.
    pub fn missing(self) -> &'static str {
        match self {
            Requirement::Qemu => {
                "qemu-system-x86_64 is not installed (scripts/bootstrap installs it)"
            }
            Requirement::Kvm => "/dev/kvm is absent on this host",
            Requirement::KvmIsPvm => "this host's /dev/kvm is not nested PVM (module kvm_pvm)",
            Requirement::Tun => "/dev/net/tun is absent on this host",
            Requirement::SdkClients => {
                "the SDK venv (/usr/local/lib/openclaw/test-venv) or node is missing \
                 (scripts/bootstrap installs both)"
            }
            Requirement::Postgres => {
                "PostgreSQL's binaries (/usr/lib/postgresql/<version>/bin/initdb, \
                 pg_ctl, postgres, createdb) are missing (scripts/bootstrap installs Debian's postgresql)"
            }
            Requirement::Schemathesis => {
                "schemathesis's venv (/usr/local/lib/openclaw/schemathesis-venv) is missing \
                 (scripts/bootstrap installs it)"
            }
        }
    }

    /// Whether CI's machine must meet it: `OPENCLAW_REQUIRE_HARNESS=1` forces
    /// these. Nested PVM is not one: it is what the project's machines are,
    /// not something installed, and on real KVM the QEMU harness's tests are
    /// what covers the kvm backend.
    pub fn required_by_ci(self) -> bool {
        !matches!(self, Requirement::KvmIsPvm)
    }

    /// Whether this host meets the requirement now.
    pub fn met(self) -> bool {
        match self {
            Requirement::Qemu => find_on_path(QEMU).is_some(),
            Requirement::Kvm => Path::new(KVM).exists(),
            Requirement::KvmIsPvm => Path::new(KVM).exists() && Path::new(PVM_MODULE).exists(),
            Requirement::Tun => Path::new(TUN).exists(),
            Requirement::SdkClients => {
                Path::new(SDK_MARKER).is_file() && find_on_path(NODE).is_some()
            }
            Requirement::Postgres => postgres_bin_dir().is_some(),
            Requirement::Schemathesis => Path::new(SCHEMATHESIS_MARKER).is_file(),
        }
    }

    /// Paths whose change can change [`Requirement::met`], for
    /// `rerun-if-changed`. Only paths that exist: cargo reruns a build script
    /// on every build while a watched path is missing (and then rebuilds the
    /// crate). So a device that appears later (a kvm module loaded after the
    /// build) is seen at the next rerun of the build script, not before.
    fn watched(self) -> Vec<PathBuf> {
        let paths = match self {
            // The PATH's directories: installing QEMU adds an entry to one.
            Requirement::Qemu => path_dirs(),
            // A reloaded kvm module makes a new /dev/kvm node.
            Requirement::Kvm | Requirement::KvmIsPvm => vec![PathBuf::from(KVM)],
            Requirement::Tun => vec![PathBuf::from(TUN)],
            // The marker's directory gains an entry when bootstrap writes
            // it; before the venv exists, its parent (or /usr/local/lib).
            Requirement::SdkClients => {
                let mut paths = path_dirs();
                paths.extend(
                    [SDK_VENV, "/usr/local/lib/openclaw", "/usr/local/lib"]
                        .into_iter()
                        .map(PathBuf::from)
                        .find(|p| p.exists()),
                );
                paths
            }
            // A new major version adds a directory here; before the first,
            // its parent gains /usr/lib/postgresql.
            Requirement::Postgres => [POSTGRES_LIB, "/usr/lib"]
                .into_iter()
                .map(PathBuf::from)
                .find(|p| p.exists())
                .into_iter()
                .collect(),
            // As for the SDK venv: the marker's directory, or the nearest
            // existing parent.
            Requirement::Schemathesis => [
                SCHEMATHESIS_VENV,
                "/usr/local/lib/openclaw",
                "/usr/local/lib",
            ]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .into_iter()
            .collect(),
        };
        paths.into_iter().filter(|p| p.exists()).collect()
    }
}

fn path_dirs() -> Vec<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .filter(|d| d.is_absolute())
                .collect()
        })
        .unwrap_or_default()
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    path_dirs()
        .into_iter()
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The `bin/` of the newest PostgreSQL under `/usr/lib/postgresql` that has
/// the server binaries a test needs to start its own server.
pub fn postgres_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(POSTGRES_LIB)
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let major: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            ["initdb", "pg_ctl", "postgres", "createdb"]
                .iter()
                .all(|b| bin.join(b).is_file())
                .then_some((major, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// Whether `OPENCLAW_REQUIRE_HARNESS` asks for every CI requirement.
pub fn required_by_environment() -> bool {
    std::env::var_os(REQUIRE_ENV).is_some_and(|v| v == "1")
}

/// For a build script: probes `requirements` and prints the cargo lines that
/// set their cfgs (met, or forced by `OPENCLAW_REQUIRE_HARNESS=1`) and rerun
/// the script when the answer can change.
pub fn emit_cfgs(requirements: &[Requirement]) {
    println!("cargo:rerun-if-env-changed={REQUIRE_ENV}");
    let forced = required_by_environment();
    for r in Requirement::ALL {
        println!("cargo:rustc-check-cfg=cfg({})", r.cfg());
    }
    for &r in requirements {
        for path in r.watched() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
        if r.met() || (forced && r.required_by_ci()) {
            println!("cargo:rustc-cfg={}", r.cfg());
        }
    }
}

/// First line of a gated test: fails it when a requirement is missing (the
/// test was built to run: the requirement was met at build time, or
/// `OPENCLAW_REQUIRE_HARNESS=1` demanded it), and records in
/// `target/harness-ran/` that `test` ran.
///
/// # Panics
/// When a requirement is not met: that is the test failing.
pub fn require(requirements: &[Requirement], test: &str) {
    for r in requirements {
        assert!(
            r.met(),
            "{test} cannot run: {} (it was built to run: the requirement was met at build \
             time, or {REQUIRE_ENV}=1 demands it)",
            r.missing()
        );
    }
    record(requirements, test);
}

/// Where the records go: `$CARGO_TARGET_DIR`, else the workspace's `target/`.
/// A relative `CARGO_TARGET_DIR` counts from the workspace root (where cargo
/// and `.ci/run` start), not from a test's own directory.
pub fn ran_dir() -> PathBuf {
    // This crate sits at test-support/requirements.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), |dir| root.join(PathBuf::from(dir)));
    target.join(RAN_DIR)
}

fn record(requirements: &[Requirement], test: &str) {
    let dir = ran_dir();
    let file: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '.'
            }
        })
        .collect();
    let names: Vec<&str> = requirements.iter().map(|r| r.name()).collect();
    // A record that cannot be written shows up as a missing count in CI.
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(file), format!("{test} {}\n", names.join(",")));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cfg_names_are_distinct_and_prefixed() {
        let mut cfgs: Vec<&str> = Requirement::ALL.iter().map(|r| r.cfg()).collect();
        assert!(cfgs.iter().all(|c| c.starts_with("openclaw_")));
        cfgs.sort_unstable();
        cfgs.dedup();
        assert_eq!(cfgs.len(), Requirement::ALL.len());
    }

    #[test]
    fn ci_requires_all_but_the_kind_of_kvm() {
        let required: Vec<_> = Requirement::ALL
            .into_iter()
            .filter(|r| r.required_by_ci())
            .collect();
        assert_eq!(
            required,
            [
                Requirement::Qemu,
                Requirement::Kvm,
                Requirement::Tun,
                Requirement::SdkClients,
                Requirement::Postgres,
                Requirement::Schemathesis
            ]
        );
    }
}
