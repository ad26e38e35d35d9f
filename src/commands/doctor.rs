//! `openclaw doctor`: whether this host can run sessions, one check a line
//! (ok/no, what was found, what to do about a no), on which backend, and
//! an exit status scripts can use. The checks are the ones the backends
//! themselves depend on, made through the same code where it exists (the
//! KVM pre-probe, the `auto` backend's cached boot verdict, the guest image
//! lookup, the sandbox's cgroup detection).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use crate::home;
use crate::session::backends::{choice, image};

/// The pre-probe's budget (as `--backend auto` gives it).
const PREPROBE_BUDGET: Duration = Duration::from_secs(2);
/// Free space below which storage is a no: a session's `/work` is up to
/// 1 GiB by default, besides its bundle.
const MIN_FREE_BYTES: u64 = 1 << 30;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  openclaw doctor
  openclaw doctor --json | jq '.backends'

Each line is one check: ok or no, what was found, and for a no what to do.
The KVM checks boot a tiny hand-assembled guest (milliseconds) but never the
guest image: the boot verdict shown is the one `--backend auto` cached.
Exit status: 0 when sessions can run on at least one backend, else 1.")]
pub struct DoctorArgs {
    /// The openclaw home to check (storage, images, the cached KVM verdict)
    /// [default: $OPENCLAW_HOME, else ~/.openclaw].
    #[arg(long, value_name = "DIR")]
    home: Option<PathBuf>,
    /// One JSON object: every check, each backend's verdict.
    #[arg(long)]
    json: bool,
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// What to do about a no.
    pub fix: Option<String>,
}

/// Which checks each backend needs to be usable.
const NETNS_NEEDS: &[&str] = &[
    "root",
    "net_namespace",
    "sandbox_namespaces",
    "cgroups",
    "iproute2",
    "work_volume",
    "storage",
];
const KVM_NEEDS: &[&str] = &[
    "kvm_device",
    "kvm_api_version",
    "kvm_preprobe",
    "guest_image",
    "storage",
];

#[derive(Debug, Serialize)]
pub struct BackendVerdict {
    pub usable: bool,
    /// The checks it needs that said no.
    pub missing: Vec<&'static str>,
}

/// Every check and what it means for each backend (`openclaw doctor
/// --json`; `GET /readyz` of `openclaw serve` reads it too).
#[derive(Debug, Serialize)]
pub struct Diagnosis {
    pub checks: Vec<Check>,
    pub backends: std::collections::BTreeMap<&'static str, BackendVerdict>,
    pub can_run_sessions: bool,
}

pub fn execute(args: DoctorArgs) -> Result<ExitCode> {
    let home = match args.home {
        Some(dir) => dir,
        None => home::home_dir()?,
    };
    let diagnosis = diagnose(&home);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&diagnosis)?);
    } else {
        print_text(&diagnosis);
    }
    Ok(if diagnosis.can_run_sessions {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Runs every check for `home` and derives each backend's verdict.
pub fn diagnose(home: &Path) -> Diagnosis {
    let checks = checks(home);
    let mut backends = std::collections::BTreeMap::new();
    for (name, needs) in [("netns", NETNS_NEEDS), ("kvm", KVM_NEEDS)] {
        let missing: Vec<&'static str> = needs
            .iter()
            .copied()
            .filter(|n| !checks.iter().any(|c| c.name == *n && c.ok))
            .collect();
        backends.insert(
            name,
            BackendVerdict {
                usable: missing.is_empty(),
                missing,
            },
        );
    }
    let can_run_sessions = backends.values().any(|b| b.usable);
    Diagnosis {
        checks,
        backends,
        can_run_sessions,
    }
}

fn print_text(d: &Diagnosis) {
    for c in &d.checks {
        println!(
            "{:<3} {:<18} {}",
            if c.ok { "ok" } else { "no" },
            c.name,
            c.detail
        );
        if let Some(fix) = &c.fix {
            println!("    {:<18} fix: {fix}", "");
        }
    }
    println!();
    for (name, b) in &d.backends {
        if b.usable {
            println!("backend {name}: usable");
        } else {
            println!("backend {name}: not usable ({})", b.missing.join(", "));
        }
    }
    println!(
        "sessions can run on this host: {}",
        if d.can_run_sessions { "yes" } else { "no" }
    );
}

/// Every check, in a fixed order (the JSON names each one always).
pub fn checks(home: &Path) -> Vec<Check> {
    let mut out = vec![
        root(),
        net_namespace(),
        sandbox_namespaces(),
        cgroups(),
        iproute2(),
        work_volume(),
    ];
    let device = kvm_device();
    let device_ok = device.ok;
    out.push(device);
    out.push(kvm_api_version(device_ok));
    out.push(kvm_preprobe(device_ok));
    out.push(kvm_boot_verdict(home));
    out.push(guest_image());
    out.push(root_image(home));
    out.push(storage(home));
    out
}

fn yes(name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        name,
        ok: true,
        detail: detail.into(),
        fix: None,
    }
}

fn no(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name,
        ok: false,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

fn root() -> Check {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        yes(
            "root",
            "running as root (namespaces, cgroups, network setup)",
        )
    } else {
        no(
            "root",
            format!("running as uid {uid}"),
            "run openclaw as root (sudo): sessions create network namespaces and cgroups",
        )
    }
}

/// Unshares `flags` on a thread of its own (namespaces belong to the
/// thread; they go when it ends), so the process is left as it was.
fn can_unshare(flags: nix::sched::CloneFlags) -> Result<(), String> {
    std::thread::spawn(move || nix::sched::unshare(flags).map_err(|e| e.to_string()))
        .join()
        .unwrap_or_else(|_| Err("the probing thread panicked".into()))
}

fn net_namespace() -> Check {
    match can_unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
        Ok(()) => yes("net_namespace", "a network namespace can be created"),
        Err(e) => no(
            "net_namespace",
            format!("creating a network namespace failed: {e}"),
            "run as root on a kernel with CONFIG_NET_NS; in a container, give it CAP_SYS_ADMIN \
             and CAP_NET_ADMIN (or use the kvm backend)",
        ),
    }
}

fn sandbox_namespaces() -> Check {
    use nix::sched::CloneFlags;
    let flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    match can_unshare(flags) {
        Ok(()) => yes(
            "sandbox_namespaces",
            "mount, pid, uts and ipc namespaces can be created (user namespaces are not used)",
        ),
        Err(e) => no(
            "sandbox_namespaces",
            format!("creating mount/pid/uts/ipc namespaces failed: {e}"),
            "run as root on a kernel with namespaces enabled; in a container, give it \
             CAP_SYS_ADMIN",
        ),
    }
}

fn cgroups() -> Check {
    match sandbox::cgroup_version() {
        Ok(sandbox::CgroupVersion::V2) => {
            yes("cgroups", "cgroup v2 with the memory and pids controllers")
        }
        Ok(sandbox::CgroupVersion::V1) => yes(
            "cgroups",
            "cgroup v1 memory and pids hierarchies (v2 with memory and pids is preferred)",
        ),
        Err(e) => no(
            "cgroups",
            e.to_string(),
            "mount cgroup2 (/sys/fs/cgroup) with the memory and pids controllers enabled",
        ),
    }
}

fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

fn iproute2() -> Check {
    match on_path("ip") {
        Some(ip) => yes(
            "iproute2",
            format!("{} (session networks are made with it)", ip.display()),
        ),
        None => no(
            "iproute2",
            "no `ip` on PATH",
            "install iproute2 (apt-get install iproute2)",
        ),
    }
}

fn work_volume() -> Check {
    let mkfs = on_path("mkfs.ext4");
    let loop_control = Path::new("/dev/loop-control").exists();
    match (mkfs, loop_control) {
        (Some(mkfs), true) => yes(
            "work_volume",
            format!(
                "{} and /dev/loop-control: the sandbox's /work can be size-capped",
                mkfs.display()
            ),
        ),
        (mkfs, loop_control) => no(
            "work_volume",
            format!(
                "{}{}",
                if mkfs.is_none() {
                    "no mkfs.ext4 on PATH; "
                } else {
                    ""
                },
                if loop_control {
                    ""
                } else {
                    "no /dev/loop-control"
                }
            )
            .trim_end_matches("; ")
            .to_owned(),
            "install e2fsprogs and load the loop module (modprobe loop), or run sessions with \
             --work-max 0 (an uncapped /work)",
        ),
    }
}

fn kvm_device() -> Check {
    if !Path::new("/dev/kvm").exists() {
        return no(
            "kvm_device",
            "no /dev/kvm",
            "enable virtualization (VT-x/AMD-V) and load kvm_intel or kvm_amd; on a cloud VM, \
             choose one with nested virtualization; or use the netns backend",
        );
    }
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => yes("kvm_device", "/dev/kvm opens read-write"),
        Err(e) => no(
            "kvm_device",
            format!("/dev/kvm does not open: {e}"),
            "run as root, or add the user to the kvm group",
        ),
    }
}

fn kvm_api_version(device_ok: bool) -> Check {
    if !device_ok {
        return no(
            "kvm_api_version",
            "not checked: /dev/kvm unusable",
            "see kvm_device",
        );
    }
    match vmm::kvm_api_version() {
        Ok(12) => yes("kvm_api_version", "KVM_GET_API_VERSION is 12"),
        Ok(v) => no(
            "kvm_api_version",
            format!("KVM_GET_API_VERSION is {v}, not 12"),
            "use a kernel whose KVM has the stable API (any since 2.6.22)",
        ),
        Err(e) => no(
            "kvm_api_version",
            format!("KVM_GET_API_VERSION failed: {e}"),
            "see kvm_device",
        ),
    }
}

fn kvm_preprobe(device_ok: bool) -> Check {
    if !device_ok {
        return no(
            "kvm_preprobe",
            "not checked: /dev/kvm unusable",
            "see kvm_device",
        );
    }
    let pre = vmm::ProbeResult::preprobe(PREPROBE_BUDGET);
    if pre.usable {
        yes(
            "kvm_preprobe",
            format!("a minimal guest runs: {}", pre.reason),
        )
    } else {
        no(
            "kvm_preprobe",
            pre.reason,
            "this host's KVM cannot run the guest (nested PVM, for one): use the netns backend",
        )
    }
}

/// The `auto` backend's cached verdict, as it would read it. Informational:
/// `--backend kvm` does not consult it.
fn kvm_boot_verdict(home: &Path) -> Check {
    let path = home.join(choice::CACHE_FILE);
    let host = choice::HostKey::current();
    match (choice::read_cache(&path), host) {
        (None, _) => yes(
            "kvm_boot_probe",
            format!(
                "no cached verdict in {} yet: the next `openclaw run --backend auto` probes it",
                path.display()
            ),
        ),
        (Some(_), None) => yes("kvm_boot_probe", "a cached verdict, but no /dev/kvm now"),
        (Some(verdict), Some(host)) => {
            let digest = image::existing(&image::image_dir())
                .and_then(|img| choice::image_digest(&img).ok());
            if !verdict.applies_to(&host, digest.as_deref()) {
                yes(
                    "kvm_boot_probe",
                    format!(
                        "the cached verdict in {} is stale (host or image changed): the next \
                         `--backend auto` session probes again",
                        path.display()
                    ),
                )
            } else if verdict.usable {
                yes(
                    "kvm_boot_probe",
                    format!("cached: KVM boots the guest ({})", verdict.reason),
                )
            } else {
                no(
                    "kvm_boot_probe",
                    format!("cached: KVM is unusable for the guest ({})", verdict.reason),
                    format!(
                        "`--backend auto` uses netns here; delete {} to probe again",
                        path.display()
                    ),
                )
            }
        }
    }
}

fn guest_image() -> Check {
    let dir = image::image_dir();
    match image::existing(&dir) {
        Some(img) => yes(
            "guest_image",
            format!(
                "kernel and initramfs in {}",
                img.kernel.parent().unwrap_or(&dir).display()
            ),
        ),
        None => no(
            "guest_image",
            format!("no guest kernel/initramfs in {}", dir.display()),
            "run `openclaw image build` (minutes; `--backend kvm` builds it on first use)",
        ),
    }
}

/// The default root filesystem; informational: `--backend kvm` builds it
/// when missing, `--image initramfs` needs none.
fn root_image(home: &Path) -> Check {
    match image::find_root(home, None) {
        Ok(Some(_)) => yes(
            "root_image",
            format!(
                "the {} root image is in {}/images",
                image::DEFAULT_ROOT,
                home.display()
            ),
        ),
        Ok(None) => no(
            "root_image",
            format!("no {} root image yet", image::DEFAULT_ROOT),
            "run `openclaw image build` (the first `--backend kvm` session builds it otherwise)",
        ),
        Err(e) => no(
            "root_image",
            format!("the image store is unreadable: {e:#}"),
            format!("check {}/images", home.display()),
        ),
    }
}

fn storage(home: &Path) -> Check {
    if let Err(e) = std::fs::create_dir_all(home) {
        return no(
            "storage",
            format!("cannot create {}: {e}", home.display()),
            "choose a writable home (OPENCLAW_HOME or --home)",
        );
    }
    let probe = home.join(format!(".doctor-{}", std::process::id()));
    let written = std::fs::write(&probe, b"ok");
    let _ = std::fs::remove_file(&probe);
    if let Err(e) = written {
        return no(
            "storage",
            format!("{} is not writable: {e}", home.display()),
            "choose a writable home (OPENCLAW_HOME or --home)",
        );
    }
    match nix::sys::statvfs::statvfs(home) {
        Ok(st) => {
            let free = st.blocks_available().saturating_mul(st.fragment_size());
            let detail = format!("{} is writable, {} MiB free", home.display(), free >> 20);
            if free >= MIN_FREE_BYTES {
                yes("storage", detail)
            } else {
                no(
                    "storage",
                    detail,
                    "free space: a session's /work takes up to 1 GiB by default (--work-max)",
                )
            }
        }
        Err(e) => no(
            "storage",
            format!("cannot read free space of {}: {e}", home.display()),
            "check the file system under the home",
        ),
    }
}
