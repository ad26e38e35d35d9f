//! `openclaw image …`: build or locate the microVM guest image.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build (or reuse) the guest kernel and base initramfs.
    Build {
        /// Output directory (default: target/guest-image in the source tree).
        #[arg(long)]
        out: Option<PathBuf>,
        /// A prebuilt static guest init (default: build it from this source tree).
        #[arg(long)]
        init: Option<PathBuf>,
        /// Parallel jobs for the kernel build.
        #[arg(long, default_value_t = 2)]
        jobs: usize,
    },
}

pub fn execute(cmd: ImageCommand) -> Result<ExitCode> {
    match cmd {
        ImageCommand::Build { out, init, jobs } => {
            let image = build(out, init, jobs)?;
            for (what, path) in [("kernel", &image.kernel), ("initramfs", &image.initramfs)] {
                let size = std::fs::metadata(path)
                    .with_context(|| format!("{}", path.display()))?
                    .len();
                println!(
                    "{what}: {} ({:.1} MiB)",
                    path.display(),
                    size as f64 / (1 << 20) as f64
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The source tree this binary was built from: where the image is cached.
pub fn source_tree() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds (or reuses) the guest image; `openclaw run --backend kvm` calls this
/// when the image is missing.
pub fn build(
    out: Option<PathBuf>,
    init: Option<PathBuf>,
    jobs: usize,
) -> Result<guest_image::GuestImage> {
    let tree = source_tree();
    let out = out.unwrap_or_else(|| tree.join("target/guest-image"));
    let init = match init {
        Some(init) => init,
        None => {
            eprintln!("image: building the static guest init");
            guest_image::build_guest_init(&tree, &tree.join("target/guest-init"))?
        }
    };
    let image = guest_image::build_image(&out, &init, jobs.max(1), &mut |line| {
        eprintln!("image: {line}")
    })?;
    Ok(image)
}
