//! The flight-booking scenario (the product page's story), offline: mock
//! HTTPS services on loopback with their own CA, the seed capability token,
//! secrets the agent never sees, and a scripted agent run through the real
//! `openclaw run` session path.

use std::io::IsTerminal;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use serde::Serialize;

use super::mock_services::{self, ExpectedSecrets, SeenRequest};
use crate::keys;
use crate::session::config::{ApproveMode, BackendChoice, Bounds, RunConfig, SessionLabels};
use crate::session::runner::{self, SessionOutcome};

pub const POLICY: &str = include_str!("../../examples/flight-booking/policy.toml");
pub const CATALOG: &str = include_str!("../../examples/flight-booking/catalog.toml");
pub const AGENT: &str = include_str!("../../examples/flight-booking/agent.sh");
pub const TASK: &str = "Book a round-trip flight from SFO to JFK, departing Tuesday Jan 14, \
returning Friday Jan 17. Budget under $600. Use my United MileagePlus account.";

/// What the demo leaves beside the session bundle for whoever checks it.
pub const UPSTREAM_LEDGER: &str = "demo-upstream.json";

pub struct DemoOptions {
    pub home: PathBuf,
    pub approve: Option<ApproveMode>,
    pub json_events: bool,
    pub approval_timeout: Duration,
    /// `--tenant/--user`, as `openclaw run` takes them.
    pub labels: SessionLabels,
}

/// What the mock services saw, kept in the bundle as `demo-upstream.json`.
#[derive(Debug, Serialize)]
pub struct UpstreamLedger {
    pub requests: Vec<SeenRequest>,
}

/// Runs the scenario; returns the session and what the upstreams saw.
pub async fn run(options: DemoOptions) -> Result<(SessionOutcome, Vec<SeenRequest>)> {
    let demo_dir = options.home.join("demo").join("flight-booking");
    std::fs::create_dir_all(&demo_dir)
        .with_context(|| format!("creating {}", demo_dir.display()))?;
    let (root_key, receipt_key) = demo_keys(&demo_dir.join("keys"))?;

    // The "internet": one CA of our own for every mock service.
    let upstream_ca = Arc::new(
        proxy::SessionCa::generate("openclaw demo upstream")
            .context("creating the demo upstream CA")?,
    );
    let ca_path = demo_dir.join("upstream-ca.pem");
    std::fs::write(&ca_path, upstream_ca.cert_pem())
        .with_context(|| format!("writing {}", ca_path.display()))?;
    let secrets = ExpectedSecrets {
        united_password: format!("hunter2-{}", hex::encode(rand::random::<[u8; 6]>())),
        card_number: format!("4111{:012}", rand::random::<u64>() % 1_000_000_000_000),
    };
    let services =
        mock_services::start(mock_services::tls_config(upstream_ca)?, secrets.clone()).await?;

    let secrets_path = demo_dir.join("secrets.toml");
    write_private(
        &secrets_path,
        &format!(
            "# Demo secrets: the agent sees only placeholders for these.\n\
             [[secret]]\nname = \"united_login\"\nvalue = \"{}\"\nhosts = [\"united.com\"]\n\n\
             [[secret]]\nname = \"united_card\"\nvalue = \"{}\"\nhosts = [\"united.com\"]\n",
            secrets.united_password, secrets.card_number
        ),
    )?;
    let catalog_path = demo_dir.join("catalog.toml");
    std::fs::write(&catalog_path, CATALOG).context("writing the demo catalog")?;

    let policy = capabilities::Policy::from_toml_str(POLICY).context("the seed policy")?;
    let token = capabilities::mint(&policy, &root_key.to_bytes(), SystemTime::now())
        .context("minting the seed token")?;
    std::fs::write(demo_dir.join("flight-booking.cap"), &token).context("writing the token")?;

    let workdir = tempfile_dir(&demo_dir)?;
    std::fs::write(workdir.join("agent.sh"), AGENT).context("writing agent.sh")?;

    let approve = options
        .approve
        .unwrap_or(if std::io::stdin().is_terminal() {
            ApproveMode::Prompt
        } else {
            ApproveMode::Auto
        });
    let config = RunConfig {
        token_text: token,
        root_public_key: root_key.verifying_key(),
        receipt_key,
        secrets: Some(secrets_path),
        catalog: Some(catalog_path),
        backend: BackendChoice::Auto,
        image: None,
        approve,
        approval_timeout: options.approval_timeout,
        workdir: Some(workdir.clone()),
        resolve: mock_services::HOSTS
            .iter()
            .map(|h| (h.to_string(), services.addr))
            .collect(),
        upstream_ca: vec![ca_path],
        json_events: options.json_events,
        task: Some(TASK.into()),
        memory_bytes: 512 << 20,
        pids_max: 128,
        command: vec!["/bin/sh".into(), "/work/agent.sh".into()],
        sessions_dir: options.home.join("sessions"),
        home: options.home.clone(),
        timeout: None,
        bounds: Bounds::default(),
        labels: options.labels.clone(),
        quota_db: None,
        ledger_db: None,
        daemon_started: false,
    };
    let outcome = runner::run_session(config).await;
    let _ = std::fs::remove_dir_all(&workdir);
    let outcome = outcome?;
    let seen = services.ledger.snapshot();
    let ledger = serde_json::to_vec_pretty(&UpstreamLedger {
        requests: seen.clone(),
    })?;
    std::fs::write(outcome.dir.join(UPSTREAM_LEDGER), ledger).context("writing the ledger")?;
    Ok((outcome, seen))
}

/// The demo's own root and receipt keys (never the user's), made once.
fn demo_keys(dir: &Path) -> Result<(ed25519_dalek::SigningKey, ed25519_dalek::SigningKey)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let pair = |key: &str, public: &str| -> Result<ed25519_dalek::SigningKey> {
        let path = dir.join(key);
        if path.exists() {
            return keys::read_signing_key(&path);
        }
        let signing = keys::generate();
        keys::write_signing_key(&path, &signing, false)?;
        keys::write_verifying_key(&dir.join(public), &signing.verifying_key(), true)?;
        Ok(signing)
    };
    Ok((
        pair(keys::ROOT_KEY, keys::ROOT_PUB)?,
        pair(keys::RECEIPT_KEY, keys::RECEIPT_PUB)?,
    ))
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

fn tempfile_dir(parent: &Path) -> Result<PathBuf> {
    let dir = parent.join(format!("work-{}", hex::encode(rand::random::<[u8; 4]>())));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
