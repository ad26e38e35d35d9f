//! Debian root filesystems: `mmdebstrap` from the machine's configured
//! Debian mirror (the only place packages come from here), the default
//! packages agents need plus the caller's, Python packages with the host's
//! pip (wheels for the image's Python, from PyPI or the host's pip cache),
//! and the `task` user the command runs as.

use std::path::Path;
use std::process::Command;

use crate::GuestImageError;

/// Installed into every Debian image: what Python and Node agents, and
/// the tools they call, expect.
pub const DEFAULT_PACKAGES: &[&str] = &["python3", "nodejs", "curl", "git", "ca-certificates"];
/// Used when the host names no Debian suite of its own.
pub const DEFAULT_SUITE: &str = "bookworm";
const FALLBACK_MIRROR: &str = "http://deb.debian.org/debian";
/// The unprivileged user commands run as (uid and gid).
pub const TASK_UID: u32 = 1000;

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebianSpec {
    pub suite: String,
    pub mirror: String,
    /// Debian packages beyond [`DEFAULT_PACKAGES`].
    pub packages: Vec<String>,
    /// Python packages (pip requirement strings).
    pub pip: Vec<String>,
}

impl DebianSpec {
    /// The host's own suite and mirror, with `packages` and `pip` added.
    pub fn for_host(packages: Vec<String>, pip: Vec<String>) -> DebianSpec {
        let suite = host_suite().unwrap_or_else(|| DEFAULT_SUITE.to_string());
        let mirror = host_mirror(&suite).unwrap_or_else(|| FALLBACK_MIRROR.to_string());
        DebianSpec {
            suite,
            mirror,
            packages,
            pip,
        }
    }

    /// Every Debian package the image gets.
    pub fn all_packages(&self) -> Vec<String> {
        let mut all: Vec<String> = DEFAULT_PACKAGES.iter().map(|p| p.to_string()).collect();
        for p in &self.packages {
            if !all.contains(p) {
                all.push(p.clone());
            }
        }
        all
    }
}

/// `VERSION_CODENAME` of this host, when it is Debian.
pub fn host_suite() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    let id = text.lines().find_map(|l| l.strip_prefix("ID="))?;
    if id.trim_matches('"') != "debian" {
        return None;
    }
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|s| s.trim_matches('"').to_string())
        .filter(|s| !s.is_empty())
}

/// The mirror apt on this host uses for `suite` (deb822 `.sources` and
/// one-line `.list` files).
pub fn host_mirror(suite: &str) -> Option<String> {
    let mut files = vec![std::path::PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<_> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .find_map(|text| mirror_in(&text, suite))
}

/// The first URI serving `suite` in a sources file (either format).
pub fn mirror_in(text: &str, suite: &str) -> Option<String> {
    // One-line: `deb [options] URI SUITE COMPONENTS...`
    for line in text.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let rest = rest.trim_start();
        let rest = match rest.strip_prefix('[') {
            Some(r) => r.split_once(']').map_or("", |(_, after)| after),
            None => rest,
        };
        let mut words = rest.split_whitespace();
        if let (Some(uri), Some(s)) = (words.next(), words.next()) {
            if s == suite {
                return Some(uri.to_string());
            }
        }
    }
    // deb822: paragraphs with `Types: deb`, `URIs:` and `Suites:`.
    for para in text.split("\n\n") {
        let field = |name: &str| {
            para.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
        };
        let is_deb = field("Types:").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
        let has_suite = field("Suites:").is_some_and(|s| s.split_whitespace().any(|s| s == suite));
        if is_deb && has_suite {
            if let Some(uri) = field("URIs:").and_then(|u| u.split_whitespace().next()) {
                return Some(uri.to_string());
            }
        }
    }
    None
}

/// Bootstraps `spec` into `root` (which must not exist yet) and prepares
/// it for sessions.
pub fn build_rootfs(
    spec: &DebianSpec,
    root: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<(), GuestImageError> {
    log(&format!(
        "rootfs: mmdebstrap {} from {} with {} (a few minutes)",
        spec.suite,
        spec.mirror,
        spec.all_packages().join(",")
    ));
    let mut cmd = Command::new("mmdebstrap");
    cmd.args(["--variant=minbase", "--format=directory", "--quiet"])
        .arg(format!("--include={}", spec.all_packages().join(",")))
        // Documentation and translations: no agent reads them, and they
        // are a third of a small image.
        .args([
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            "--dpkgopt=path-exclude=/usr/share/info/*",
            "--aptopt=Acquire::Retries \"3\"",
        ])
        .arg(&spec.suite)
        .arg(root)
        .arg(&spec.mirror);
    run(&mut cmd, "mmdebstrap")?;
    if !spec.pip.is_empty() {
        pip_install(root, &spec.pip, log)?;
    }
    prepare_root(root)
}

/// Installs Python packages into the image's `dist-packages` with the
/// host's pip, as binary wheels for the image's Python version.
fn pip_install(
    root: &Path,
    packages: &[String],
    log: &mut dyn FnMut(&str),
) -> Result<(), GuestImageError> {
    let version = image_python_version(root).ok_or_else(|| GuestImageError::Command {
        what: "pip install",
        status: "no python3.N in the image".into(),
        stderr_tail: "add python3 to the image's packages".into(),
    })?;
    let target = root.join(format!("usr/local/lib/python{version}/dist-packages"));
    std::fs::create_dir_all(&target).map_err(GuestImageError::io_path(&target))?;
    log(&format!(
        "rootfs: pip install {} (Python {version})",
        packages.join(" ")
    ));
    let abi = format!("cp{}", version.replace('.', ""));
    let mut cmd = Command::new("python3");
    cmd.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ])
    // Everything into the image, whatever this host has installed.
    .args(["--ignore-installed", "--no-warn-conflicts"])
    .arg("--target")
    .arg(&target)
    .args(["--only-binary=:all:", "--implementation", "cp"])
    .args(["--python-version", &version, "--abi", &abi])
    .args([
        "--platform",
        "manylinux_2_17_x86_64",
        "--platform",
        "manylinux2014_x86_64",
        "--platform",
        "linux_x86_64",
    ])
    .args(packages);
    run(&mut cmd, "pip install")?;
    // Console scripts pip wrote name this host's interpreter: not usable
    // in the image, and not needed (`python3 -m ...` works).
    let _ = std::fs::remove_dir_all(target.join("bin"));
    Ok(())
}

/// `3.11` for an image with `/usr/lib/python3.11`.
pub fn image_python_version(root: &Path) -> Option<String> {
    let mut versions: Vec<String> = std::fs::read_dir(root.join("usr/lib"))
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|n| n.strip_prefix("python").map(str::to_string))
        .filter(|v| v.starts_with("3.") && v[2..].chars().all(|c| c.is_ascii_digit()))
        .collect();
    versions.sort_by_key(|v| v[2..].parse::<u32>().unwrap_or(0));
    versions.pop()
}

/// What sessions rely on in any root filesystem: the `task` user (uid
/// 1000) with its home, and the mount points the guest init uses.
pub fn prepare_root(root: &Path) -> Result<(), GuestImageError> {
    for dir in ["work", "proc", "sys", "dev", "tmp", "run", "home/task"] {
        std::fs::create_dir_all(root.join(dir)).map_err(GuestImageError::io_path(root))?;
    }
    std::os::unix::fs::chown(root.join("home/task"), Some(TASK_UID), Some(TASK_UID))
        .map_err(GuestImageError::io_path(root))?;
    add_line_unless(
        &root.join("etc/passwd"),
        &format!(":{TASK_UID}:"),
        &format!("task:x:{TASK_UID}:{TASK_UID}:openclaw task:/home/task:/bin/sh\n"),
    )?;
    add_line_unless(
        &root.join("etc/group"),
        &format!(":{TASK_UID}:"),
        &format!("task:x:{TASK_UID}:\n"),
    )
}

/// Appends `line` to `file` unless a line already contains `marker` in its
/// third field (the uid or gid).
fn add_line_unless(file: &Path, marker: &str, line: &str) -> Result<(), GuestImageError> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let taken = text.lines().any(|l| {
        l.split(':')
            .nth(2)
            .is_some_and(|id| format!(":{id}:") == marker)
    });
    if taken {
        return Ok(());
    }
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent).map_err(GuestImageError::io_path(parent))?;
    }
    let mut text = text;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(line);
    std::fs::write(file, text).map_err(GuestImageError::io_path(file))
}

fn run(cmd: &mut Command, what: &'static str) -> Result<(), GuestImageError> {
    let out = cmd.output().map_err(GuestImageError::io(what))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
    Err(GuestImageError::Command {
        what,
        status: out.status.to_string(),
        stderr_tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_are_read_from_both_source_formats() {
        let deb822 = "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\n";
        assert_eq!(
            mirror_in(deb822, "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(
            mirror_in(deb822, "bookworm-security").as_deref(),
            Some("http://security.example/debian-security")
        );
        assert_eq!(mirror_in(deb822, "trixie"), None);
        let one_line = "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://one.example/debian bookworm main\ndeb http://two.example/debian trixie main\n";
        assert_eq!(
            mirror_in(one_line, "bookworm").as_deref(),
            Some("http://one.example/debian")
        );
        assert_eq!(
            mirror_in(one_line, "trixie").as_deref(),
            Some("http://two.example/debian")
        );
    }

    #[test]
    fn default_packages_come_first_without_duplicates() {
        let spec = DebianSpec {
            suite: "bookworm".into(),
            mirror: "http://m".into(),
            packages: vec!["jq".into(), "curl".into()],
            pip: vec![],
        };
        assert_eq!(
            spec.all_packages(),
            ["python3", "nodejs", "curl", "git", "ca-certificates", "jq"]
        );
    }

    #[test]
    fn the_task_user_is_added_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc")).expect("etc");
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("w");
        std::fs::create_dir_all(root.join("usr/lib/python3.11")).expect("py");
        std::fs::create_dir_all(root.join("usr/lib/python3.9")).expect("py");
        prepare_root(root).expect("prepare");
        prepare_root(root).expect("again");
        let passwd = std::fs::read_to_string(root.join("etc/passwd")).expect("passwd");
        assert_eq!(passwd.matches(":1000:1000:").count(), 1, "{passwd}");
        assert!(root.join("work").is_dir() && root.join("home/task").is_dir());
        assert_eq!(image_python_version(root).as_deref(), Some("3.11"));
    }
}
