//! Which isolation backend a session runs on (`--backend kvm|netns|auto`)
//! and why: the KVM pre-probe, the guest-image probe behind `auto`, the
//! cached verdict (`<home>/kvm-probe.json`) keyed on what could change it,
//! and for kvm the root filesystem (`--image`) and whether it has the
//! command: a command the image lacks is an error naming the image, never a
//! quiet switch to netns.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use guest_image::GuestImage;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vmm::ProbeResult;

use super::image::{self, Root};
use crate::session::config::BackendChoice;

/// The pre-probe's budget: it takes milliseconds on hardware KVM.
const PREPROBE_BUDGET: Duration = Duration::from_secs(2);
/// The image probe's budget, which is also `auto`'s idea of "quickly": a
/// host where the guest needs longer to boot and run a no-op is better
/// served by the namespace sandbox. (Hardware KVM: well under a second;
/// the project's QEMU harness, where KVM itself is emulated: 3-12 s.)
const PROBE_BUDGET: Duration = Duration::from_secs(20);
/// The cache file under the openclaw home.
pub const CACHE_FILE: &str = "kvm-probe.json";
/// `--backend kvm` normally refuses hosts the pre-probe rules out;
/// `OPENCLAW_KVM_PREPROBE=skip` lets tests and diagnostics go on to boot
/// the real guest there (it then fails at the boot stage).
const PREPROBE_ENV: &str = "OPENCLAW_KVM_PREPROBE";
const CACHE_VERSION: u32 = 1;

/// The backend a session uses.
#[derive(Debug, Clone)]
pub enum Backend {
    Netns,
    Kvm(KvmBoot),
}

/// What a kvm session boots: the guest kernel and initramfs images, and the
/// root filesystem (or none: the initramfs-only guest).
#[derive(Debug, Clone)]
pub struct KvmBoot {
    pub guest: GuestImage,
    pub root: Root,
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Netns => "netns",
            Backend::Kvm(_) => "kvm",
        }
    }
}

/// A decided backend and the reason shown to the user.
#[derive(Debug, Clone)]
pub struct Chosen {
    pub backend: Backend,
    pub reason: String,
}

/// What the verdict depends on, besides the image: the host kernel (and so
/// its KVM), the `/dev/kvm` node (recreated when a KVM module is reloaded)
/// and which KVM modules are loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostKey {
    pub kernel_release: String,
    pub kvm_device: String,
    pub kvm_modules: Vec<String>,
}

impl HostKey {
    /// None without a `/dev/kvm`.
    pub fn current() -> Option<HostKey> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata("/dev/kvm").ok()?;
        let kernel_release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let mut kvm_modules: Vec<String> = std::fs::read_dir("/sys/module")
            .map(|dir| {
                dir.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.starts_with("kvm"))
                    .collect()
            })
            .unwrap_or_default();
        kvm_modules.sort();
        let rdev = meta.rdev();
        Some(HostKey {
            kernel_release,
            kvm_device: format!(
                "{}:{} ino {} ctime {}",
                nix::sys::stat::major(rdev),
                nix::sys::stat::minor(rdev),
                meta.ino(),
                meta.ctime()
            ),
            kvm_modules,
        })
    }
}

/// `<home>/kvm-probe.json`: the last verdict and what it was decided on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedVerdict {
    pub version: u32,
    pub host: HostKey,
    /// SHA-256 of the kernel and initramfs the image probe booted; None when
    /// the pre-probe alone decided (it needs no image).
    pub image_sha256: Option<String>,
    pub usable: bool,
    pub reason: String,
    pub boot_ms: Option<u64>,
    pub probed_at: String,
}

impl CachedVerdict {
    /// Whether this verdict answers for `host` and (when it came from the
    /// image probe) the image whose digest is `image`.
    pub fn applies_to(&self, host: &HostKey, image: Option<&str>) -> bool {
        self.version == CACHE_VERSION
            && &self.host == host
            && match &self.image_sha256 {
                None => !self.usable,
                Some(digest) => image == Some(digest.as_str()),
            }
    }
}

pub fn read_cache(path: &Path) -> Option<CachedVerdict> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Written beside and renamed: a reader never sees half a file. Failure to
/// cache only costs a probe next time.
pub fn write_cache(path: &Path, verdict: &CachedVerdict) {
    let written = serde_json::to_vec_pretty(verdict)
        .map_err(anyhow::Error::from)
        .and_then(|bytes| crate::atomic_file::replace(path, &bytes, 0o644));
    if let Err(err) = written {
        tracing::warn!(
            "caching the KVM probe verdict in {}: {err:#}",
            path.display()
        );
    }
}

/// SHA-256 over the kernel and then the initramfs.
pub fn image_digest(image: &GuestImage) -> Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for path in [&image.kernel, &image.initramfs] {
        let mut file =
            std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
        loop {
            let n = file
                .read(&mut buf)
                .with_context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Decides the backend. `home` holds the verdict cache and the image
/// store; `image` is `--image`, `program` the command's argv[0]. Blocking
/// (probes boot VMs; `--backend kvm` may build images).
pub fn choose(
    choice: BackendChoice,
    image: Option<&str>,
    program: Option<&str>,
    home: &Path,
) -> Result<Chosen> {
    match choice {
        BackendChoice::Netns => Ok(Chosen {
            backend: Backend::Netns,
            reason: "requested with --backend netns".into(),
        }),
        BackendChoice::Kvm => {
            let guest = choose_kvm()?;
            let root = match image::find_root(home, image)? {
                Some(root) => root,
                None => {
                    eprintln!(
                        "image: no {} root image yet; building it (once; a few minutes)",
                        image::DEFAULT_ROOT
                    );
                    let spec = guest_image::debian::DebianSpec::for_host(Vec::new(), Vec::new());
                    Root::Image(Box::new(
                        image::build_debian(home, image::DEFAULT_ROOT, &spec, &mut |l| {
                            eprintln!("image: {l}")
                        })
                        .context("kvm backend: building the root image")?,
                    ))
                }
            };
            if let Some(program) = program {
                image::check_command(&root, program)?;
            }
            Ok(Chosen {
                backend: Backend::Kvm(KvmBoot { guest, root }),
                reason: "requested with --backend kvm".into(),
            })
        }
        BackendChoice::Auto => {
            let chosen = choose_auto(&home.join(CACHE_FILE));
            let Backend::Kvm(boot) = chosen.backend else {
                return Ok(chosen);
            };
            // kvm it is: the image must exist (auto builds nothing) and
            // have the command.
            let Some(root) = image::find_root(home, image)? else {
                return Ok(Chosen {
                    backend: Backend::Netns,
                    reason: format!(
                        "auto: KVM boots the guest, but no {} root image is built (`openclaw image \
                         build` makes it), so the namespace sandbox is used",
                        image::DEFAULT_ROOT
                    ),
                });
            };
            if let Some(program) = program {
                image::check_command(&root, program).context("--backend auto chose kvm")?;
            }
            Ok(Chosen {
                backend: Backend::Kvm(KvmBoot {
                    guest: boot.guest,
                    root,
                }),
                reason: chosen.reason,
            })
        }
    }
}

/// `--backend kvm`: the pre-probe (milliseconds) so a host that cannot run
/// the guest fails at once with the reason, then the image, built if missing.
fn choose_kvm() -> Result<GuestImage> {
    if !Path::new("/dev/kvm").exists() {
        bail!("kvm backend: no /dev/kvm on this host (use --backend netns or auto)");
    }
    let skip = std::env::var(PREPROBE_ENV).is_ok_and(|v| v == "skip");
    if !skip {
        let pre = ProbeResult::preprobe(PREPROBE_BUDGET);
        if !pre.usable {
            bail!(
                "kvm backend: this host's KVM cannot run the guest ({}); use --backend netns \
                 or auto",
                pre.reason
            );
        }
    }
    image::ensure().context("kvm backend: building the guest image")
}

/// `--backend auto`: never builds an image, never fails; netns unless KVM
/// passes both probes (or a cached verdict for this host and image says so).
fn choose_auto(cache_path: &Path) -> Chosen {
    let netns = |reason: String| Chosen {
        backend: Backend::Netns,
        reason: format!("auto: {reason}"),
    };
    let Some(host) = HostKey::current() else {
        return netns("no /dev/kvm on this host, so the namespace sandbox is used".into());
    };
    let image = image::existing(&image::image_dir());
    let cached = read_cache(cache_path);
    // A cached pre-probe "no" needs no image digest: settle it first.
    if let Some(verdict) = &cached {
        if verdict.image_sha256.is_none() && verdict.applies_to(&host, None) {
            return netns(cached_reason(verdict, cache_path));
        }
    }
    let digest = match (&image, &cached) {
        (Some(image), Some(verdict)) if verdict.image_sha256.is_some() => image_digest(image).ok(),
        _ => None,
    };
    if let (Some(image), Some(verdict)) = (&image, &cached) {
        if verdict.applies_to(&host, digest.as_deref()) {
            return if verdict.usable {
                Chosen {
                    backend: Backend::Kvm(KvmBoot {
                        guest: image.clone(),
                        root: Root::Initramfs,
                    }),
                    reason: format!("auto: {}", cached_reason(verdict, cache_path)),
                }
            } else {
                netns(cached_reason(verdict, cache_path))
            };
        }
    }

    // Not being allowed to open /dev/kvm (not root, not in group kvm) says
    // nothing about the host: answered, never cached.
    if let Err(err) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return netns(format!(
            "cannot open /dev/kvm ({err}), so the namespace sandbox is used"
        ));
    }
    let pre = ProbeResult::preprobe(PREPROBE_BUDGET);
    if !pre.usable {
        write_cache(
            cache_path,
            &CachedVerdict {
                version: CACHE_VERSION,
                host,
                image_sha256: None,
                usable: false,
                reason: pre.reason.clone(),
                boot_ms: None,
                probed_at: receipts::format_time(SystemTime::now()),
            },
        );
        return netns(format!(
            "KVM is present but unusable for microVMs ({}), so the namespace sandbox is used",
            pre.reason
        ));
    }
    let Some(image) = image else {
        return netns(format!(
            "KVM passes the pre-probe, but the guest image is not built (`openclaw image \
             build`, or one `openclaw run --backend kvm`, builds it into {}), so the namespace \
             sandbox is used",
            image::image_dir().display()
        ));
    };
    let digest = match digest.map(Ok).unwrap_or_else(|| image_digest(&image)) {
        Ok(digest) => digest,
        Err(err) => return netns(format!("the guest image is unreadable ({err:#})")),
    };
    let console = cache_path.with_file_name("kvm-probe-console.log");
    let result = vmm::probe(&image.kernel, &image.initramfs, console, PROBE_BUDGET);
    write_cache(
        cache_path,
        &CachedVerdict {
            version: CACHE_VERSION,
            host,
            image_sha256: Some(digest),
            usable: result.usable,
            reason: result.reason.clone(),
            boot_ms: result.boot_time.map(|t| t.as_millis() as u64),
            probed_at: receipts::format_time(SystemTime::now()),
        },
    );
    if result.usable {
        Chosen {
            backend: Backend::Kvm(KvmBoot {
                guest: image,
                root: Root::Initramfs,
            }),
            reason: format!("auto: KVM boots the guest ({})", result.reason),
        }
    } else {
        netns(format!(
            "KVM passes the pre-probe but does not boot the guest well enough ({}), so the \
             namespace sandbox is used",
            result.reason
        ))
    }
}

fn cached_reason(verdict: &CachedVerdict, path: &Path) -> String {
    let what = if verdict.usable {
        "KVM boots the guest"
    } else {
        "KVM is unusable for microVMs"
    };
    format!(
        "{what} ({}; cached verdict of {}, from {}; delete it to probe again)",
        verdict.reason,
        verdict.probed_at,
        path.display()
    )
}

/// The openclaw home for a sessions directory (`<home>/sessions`).
pub fn home_of(sessions_dir: &Path) -> PathBuf {
    sessions_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| sessions_dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostKey {
        HostKey {
            kernel_release: "6.1.0".into(),
            kvm_device: "10:232 ino 5 ctime 1".into(),
            kvm_modules: vec!["kvm".into(), "kvm_amd".into()],
        }
    }

    fn verdict(image: Option<&str>, usable: bool) -> CachedVerdict {
        CachedVerdict {
            version: CACHE_VERSION,
            host: host(),
            image_sha256: image.map(str::to_owned),
            usable,
            reason: "r".into(),
            boot_ms: None,
            probed_at: "t".into(),
        }
    }

    #[test]
    fn a_verdict_applies_only_to_its_host_and_image() {
        let v = verdict(Some("abc"), true);
        assert!(v.applies_to(&host(), Some("abc")));
        assert!(!v.applies_to(&host(), Some("abd")), "image changed");
        assert!(!v.applies_to(&host(), None), "image gone");
        for change in [
            |h: &mut HostKey| h.kernel_release = "6.2.0".into(),
            |h: &mut HostKey| h.kvm_device = "10:232 ino 6 ctime 2".into(),
            |h: &mut HostKey| h.kvm_modules = vec!["kvm".into(), "kvm_pvm".into()],
        ] {
            let mut other = host();
            change(&mut other);
            assert!(!v.applies_to(&other, Some("abc")), "{other:?}");
        }
        let mut old = v.clone();
        old.version = CACHE_VERSION + 1;
        assert!(!old.applies_to(&host(), Some("abc")));
    }

    #[test]
    fn a_pre_probe_verdict_can_only_say_no() {
        // The pre-probe alone never admits kvm: that needs the image probe.
        assert!(verdict(None, false).applies_to(&host(), None));
        assert!(verdict(None, false).applies_to(&host(), Some("any")));
        assert!(!verdict(None, true).applies_to(&host(), None));
    }

    #[test]
    fn cache_round_trips_and_ignores_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(CACHE_FILE);
        assert_eq!(read_cache(&path), None);
        let v = verdict(Some("abc"), true);
        write_cache(&path, &v);
        assert_eq!(read_cache(&path), Some(v));
        std::fs::write(&path, b"{not json").expect("write");
        assert_eq!(read_cache(&path), None);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn image_digest_covers_both_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = GuestImage {
            kernel: dir.path().join("vmlinux"),
            initramfs: dir.path().join("initramfs.cpio"),
            boot: dir.path().join("boot.cpio"),
        };
        std::fs::write(&image.kernel, b"kernel").expect("write");
        std::fs::write(&image.initramfs, b"initramfs").expect("write");
        let first = image_digest(&image).expect("digest");
        std::fs::write(&image.initramfs, b"initramfs2").expect("write");
        assert_ne!(image_digest(&image).expect("digest"), first);
    }

    #[test]
    fn host_key_names_this_host_when_it_has_kvm() {
        match HostKey::current() {
            None => assert!(!Path::new("/dev/kvm").exists()),
            Some(key) => {
                assert!(!key.kernel_release.is_empty());
                assert!(key.kvm_device.starts_with("10:232"), "{key:?}");
            }
        }
    }
}
