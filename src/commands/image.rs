//! `openclaw image …`: build or locate the microVM guest image (the work is
//! in `session::backends::image`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;

use crate::session::backends::image;

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build (or reuse) the guest kernel and base initramfs.
    Build {
        /// Output directory [default: $OPENCLAW_GUEST_IMAGE, else target/guest-image
        /// in the source tree: where `openclaw run --backend kvm` looks].
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
            let image = image::build(out, init, jobs)?;
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
