//! `openclaw ui`: serve sessions and reports in a browser.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::home;
use crate::ui::{Server, UiConfig};

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  openclaw ui                        # http://127.0.0.1:7878/?token=… (open the printed URL)
  openclaw ui --addr 127.0.0.1:0     # any free port

The printed URL carries a random access token; opening it sets an HttpOnly,
SameSite=Strict cookie and drops the token from the address bar. Approvals
answered here are receipted with the approver \"ui\". See docs/ui.md.")]
pub struct UiArgs {
    /// Address to serve on (loopback unless --allow-remote).
    #[arg(long, default_value = "127.0.0.1:7878")]
    addr: SocketAddr,
    /// Serve on a non-loopback address. The UI speaks plain HTTP: anyone on
    /// the path can read the token and answer approvals. Prefer an SSH tunnel.
    #[arg(long)]
    allow_remote: bool,
}

pub fn execute(args: UiArgs) -> Result<ExitCode> {
    if !args.addr.ip().is_loopback() {
        if !args.allow_remote {
            bail!(
                "refusing to serve on {} (not loopback): the UI answers approvals over plain \
                 HTTP; pass --allow-remote if you really mean it, or use an SSH tunnel",
                args.addr
            );
        }
        eprintln!(
            "warning: serving on {} (not loopback) over plain HTTP: the access token and every \
             approval travel unencrypted",
            args.addr
        );
    }
    let home = home::home_dir()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let server = Server::bind(UiConfig {
            home,
            addr: args.addr,
            remote: args.allow_remote,
        })
        .await?;
        // The one line a script (or a test) reads: the URL with the token.
        println!("{}", server.url()?);
        eprintln!("openclaw ui: open the URL above in a browser; Ctrl-C stops it");
        tokio::select! {
            result = server.run() => result,
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })?;
    Ok(ExitCode::SUCCESS)
}
