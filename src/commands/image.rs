//! `openclaw image …`: build the guest and root filesystems, import OCI and
//! docker archives, list the store (the work is in `session::backends::image`
//! and the `guest-image` crate).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Subcommand;
use guest_image::debian::DebianSpec;
use guest_image::store::{self, StoredImage};

use crate::home;
use crate::session::backends::image;

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build (or reuse) the guest kernel and initramfs images, then a Debian
    /// root filesystem (python3, nodejs, curl, git, ca-certificates and
    /// --packages) into the image store.
    Build {
        /// Output directory of the guest kernel and initramfs [default:
        /// $OPENCLAW_GUEST_IMAGE, else target/guest-image in the source tree:
        /// where `openclaw run --backend kvm` looks].
        #[arg(long)]
        out: Option<PathBuf>,
        /// A prebuilt static guest init (default: build it from this source tree).
        #[arg(long)]
        init: Option<PathBuf>,
        /// Parallel jobs for the kernel build.
        #[arg(long, default_value_t = 2)]
        jobs: usize,
        /// The root image's name (`openclaw run --image NAME`).
        #[arg(long, default_value = image::DEFAULT_ROOT)]
        name: String,
        /// More Debian packages (comma-separated or repeated).
        #[arg(long, value_delimiter = ',', value_name = "PKG")]
        packages: Vec<String>,
        /// Python packages to pip-install into the image (binary wheels for
        /// its Python; comma-separated or repeated).
        #[arg(long, value_delimiter = ',', value_name = "REQ")]
        pip: Vec<String>,
        /// Debian suite [default: this host's, else bookworm].
        #[arg(long)]
        suite: Option<String>,
        /// Debian mirror [default: the one this host's apt uses for the suite].
        #[arg(long)]
        mirror: Option<String>,
        /// Only the guest kernel and initramfs images, no root filesystem.
        #[arg(long)]
        guest_only: bool,
    },
    /// Import a `docker save` archive or an OCI image layout (directory or
    /// tar) as a root filesystem; its Env, WorkingDir and User are kept.
    Import {
        /// The archive or layout.
        source: PathBuf,
        /// The image's name [default: the file or directory name].
        #[arg(long)]
        name: Option<String>,
    },
    /// List the root filesystems in the image store, newest first.
    List,
}

pub fn execute(cmd: ImageCommand) -> Result<ExitCode> {
    let home = home::home_dir()?;
    match cmd {
        ImageCommand::Build {
            out,
            init,
            jobs,
            name,
            packages,
            pip,
            suite,
            mirror,
            guest_only,
        } => {
            let guest = image::build(out, init, jobs)?;
            for (what, path) in [
                ("kernel", &guest.kernel),
                ("initramfs", &guest.initramfs),
                ("boot initramfs", &guest.boot),
            ] {
                println!("{what}: {} ({})", path.display(), mib(file_size(path)?));
            }
            if guest_only {
                return Ok(ExitCode::SUCCESS);
            }
            let mut spec = DebianSpec::for_host(packages, pip);
            if let Some(suite) = suite {
                spec.mirror = guest_image::debian::host_mirror(&suite).unwrap_or(spec.mirror);
                spec.suite = suite;
            }
            if let Some(mirror) = mirror {
                spec.mirror = mirror;
            }
            let started = Instant::now();
            let stored = image::build_debian(&home, &name, &spec, &mut |l| eprintln!("image: {l}"))
                .context("building the Debian root filesystem")?;
            print_stored(&stored, started);
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Import { source, name } => {
            let name = match name {
                Some(name) => name,
                None => default_name(&source),
            };
            let started = Instant::now();
            let stored = image::import(&home, &source, &name, &mut |l| eprintln!("image: {l}"))?;
            print_stored(&stored, started);
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::List => {
            let images = store::list(&home)?;
            if images.is_empty() {
                println!(
                    "no images in {} (`openclaw image build` or `openclaw image import`)",
                    store::images_dir(&home).display()
                );
            }
            for i in images {
                let m = &i.manifest;
                println!(
                    "{:<16} {}  {}  {:>9} ({} on disk)  {}",
                    m.name,
                    &m.id[..12],
                    m.created,
                    mib(m.size),
                    mib(m.allocated),
                    m.source
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_stored(stored: &StoredImage, started: Instant) {
    let m = &stored.manifest;
    println!(
        "image: {} id {} ({}, {} on disk) in {:.0?}",
        m.name,
        m.id,
        mib(m.size),
        mib(m.allocated),
        started.elapsed()
    );
    println!("rootfs: {}", stored.rootfs.display());
}

/// `busybox.tar` → `busybox`; `./layout/` → `layout`.
fn default_name(source: &Path) -> String {
    let base = source
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("imported");
    base.strip_suffix(".tar").unwrap_or(base).to_string()
}

fn file_size(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("{}", path.display()))?
        .len())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}
