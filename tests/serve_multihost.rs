//! Several daemons on one PostgreSQL database (`docs/control-plane.md`,
//! "Quotas" and "PostgreSQL"): two `openclaw serve` with two homes, as two
//! hosts sharing only the database and the tenant's keys. A tenant's
//! `sessions` quota holds for the two together (the database's session
//! leases), and deleting a tenant through one daemon ends its sessions on
//! the other. Real netns sessions: needs root. Gated on
//! `Requirement::Postgres` (docs/testing.md).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use test_requirements::{require, Requirement};
use test_support::PostgresServer;

mod support;

use support::serve::{call, cli_env, mint_for, start_env_with, wait_ended, Daemon, Reply};

const DATABASE_ENV: &str = "OPENCLAW_DATABASE";

/// Two hosts: two homes and their daemons on one database, a tenant
/// `acme` (its keys copied to the second home) and the admin token.
struct TwoHosts {
    _server: PostgresServer,
    url: String,
    homes: [tempfile::TempDir; 2],
    logs: tempfile::TempDir,
    daemons: [Daemon; 2],
    admin: String,
    token: String,
    /// With [`Setup::relay_a`]: the first daemon's way to the database.
    relay: Option<Relay>,
}

/// How [`two_hosts_with`] sets the hosts up.
#[derive(Default)]
struct Setup<'a> {
    /// The tenant's `sessions` quota.
    quota: Option<&'a str>,
    /// The first daemon reaches the database through a [`Relay`] the test
    /// can cut (its sessions too: they are given the daemon's URL).
    relay_a: bool,
    /// More `openclaw serve` flags for both daemons.
    flags: &'a [&'a str],
    /// More environment for both daemons.
    env: &'a [(&'a str, &'a str)],
}

/// A TCP relay to the database that the test can cut, as a network
/// partition between one host and the database: its relayed connections
/// are shut down and new ones closed at once (the host sees resets and
/// closed connections, never an answer). Or stalled: as a hung server or
/// dropped packets, connections stay open (new ones are accepted) but
/// nothing is forwarded either way, ever again.
struct Relay {
    port: u16,
    /// The relayed connections' sockets (both ends); `None` once cut.
    open: Arc<Mutex<Option<Vec<TcpStream>>>>,
    stalled: Arc<AtomicBool>,
}

impl Relay {
    fn start(to: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let port = listener.local_addr().expect("addr").port();
        let open = Arc::new(Mutex::new(Some(Vec::new())));
        let kept = open.clone();
        let stalled = Arc::new(AtomicBool::new(false));
        let stall = stalled.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let mut kept = kept.lock().expect("relay lock");
                // Cut: dropped, so closed at once.
                let Some(sockets) = kept.as_mut() else {
                    continue;
                };
                // Stalled: kept open, never answered.
                if stall.load(Ordering::SeqCst) {
                    sockets.push(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                for s in [&client, &server] {
                    sockets.push(s.try_clone().expect("clone"));
                }
                pipe(
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                    stall.clone(),
                );
                pipe(server, client, stall.clone());
            }
        });
        Relay {
            port,
            open,
            stalled,
        }
    }

    fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }

    fn cut(&self) {
        let open = self.open.lock().expect("relay lock").take();
        for s in open.into_iter().flatten() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// A run SIGTERMed and waited for at the end of the test, however it ends
/// (so its sandbox is taken down as on Ctrl-C).
struct Terminated(Option<std::process::Child>);

impl Drop for Terminated {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let _ = child.wait();
        }
    }
}

/// Copies `from` to `to` until either closes; once `stalled`, what is read
/// is dropped (the sockets stay open, so the peers wait for good).
fn pipe(mut from: TcpStream, mut to: TcpStream, stalled: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if !stalled.load(Ordering::SeqCst) && to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}

impl TwoHosts {
    fn home(&self, i: usize) -> &Path {
        self.homes[i].path()
    }

    fn create(&self, i: usize) -> Reply {
        // The agent outlives any wait of the test: it ends only when stopped.
        let body = json!({"capabilities": mint_for(self.home(0), "acme"),
                          "command": ["sleep", "600"]});
        call(
            &self.daemons[i],
            "POST",
            "/v1/sessions",
            Some(&self.token),
            Some(&body.to_string()),
        )
    }

    fn stop(&self, i: usize, id: &str) {
        let r = call(
            &self.daemons[i],
            "POST",
            &format!("/v1/sessions/{id}/stop"),
            Some(&self.token),
            None,
        );
        assert_eq!(r.status, 202, "{:?}", r.body);
        wait_ended(self.home(i), "acme", id);
    }

    /// The leases the database holds: (tenant, session id or null).
    fn leases(&self) -> Vec<(String, Option<String>)> {
        let mut db = postgres::Client::connect(&self.url, postgres::NoTls).expect("connect");
        db.query(
            "SELECT tenant, session FROM session_leases ORDER BY tenant, session",
            &[],
        )
        .expect("session_leases")
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    }
}

impl Drop for TwoHosts {
    /// SIGTERM, so each daemon's drain stops the sessions it still runs
    /// (a killed daemon leaves them running), however the test ended.
    fn drop(&mut self) {
        for d in &mut self.daemons {
            if let Ok(pid) = i32::try_from(d.child.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        for d in &mut self.daemons {
            let _ = d.child.wait();
        }
    }
}

fn cli(home: &Path, url: &str, args: &[&str]) -> String {
    cli_env(home, &[(DATABASE_ENV, url)], args)
}

fn two_hosts(database: &str, quota: Option<&str>) -> TwoHosts {
    two_hosts_with(
        database,
        Setup {
            quota,
            ..Setup::default()
        },
    )
}

fn two_hosts_with(database: &str, setup: Setup<'_>) -> TwoHosts {
    let quota = setup.quota;
    let server = PostgresServer::start();
    let url = server.create_database(database);
    let homes = [
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    ];
    let logs = tempfile::tempdir().expect("tempdir");
    let admin = cli(homes[0].path(), &url, &["tenants", "admin-token"]);
    let token = cli(homes[0].path(), &url, &["tenants", "create", "acme"]);
    if let Some(n) = quota {
        cli(
            homes[0].path(),
            &url,
            &["tenants", "quota", "acme", "--sessions", n],
        );
    }
    // The second host has the tenant's directory (its keys) as the first's.
    let copied = Command::new("cp")
        .arg("-a")
        .arg(homes[0].path().join("tenants"))
        .arg(homes[1].path())
        .status()
        .expect("cp");
    assert!(copied.success());
    let relay = setup.relay_a.then(|| Relay::start(server.port()));
    let url_a = match &relay {
        Some(relay) => url.replace(
            &format!("127.0.0.1:{}/", server.port()),
            &format!("127.0.0.1:{}/", relay.port),
        ),
        None => url.clone(),
    };
    let daemons = [
        start_env_with(
            homes[0].path(),
            &logs.path().join("one.log"),
            setup.flags,
            &[&[(DATABASE_ENV, url_a.as_str())], setup.env].concat(),
        ),
        start_env_with(
            homes[1].path(),
            &logs.path().join("two.log"),
            setup.flags,
            &[&[(DATABASE_ENV, url.as_str())], setup.env].concat(),
        ),
    ];
    TwoHosts {
        _server: server,
        url,
        homes,
        logs,
        daemons,
        admin,
        token,
        relay,
    }
}

fn audit_lines(home: &Path) -> Vec<Value> {
    std::fs::read_to_string(home.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit json"))
        .collect()
}

/// The audit lines of the database's `audit` table (every daemon's).
fn database_audit_lines(url: &str) -> Vec<Value> {
    let mut db = postgres::Client::connect(url, postgres::NoTls).expect("connect");
    db.query("SELECT line FROM audit ORDER BY id", &[])
        .expect("audit")
        .into_iter()
        .map(|r| serde_json::from_str(r.get::<_, &str>(0)).expect("audit json"))
        .collect()
}

/// With `--database` every audit line of a daemon goes to the database's
/// `audit` table as well as its home's file, and so does the `session.end`
/// line the session's own `openclaw run` writes when it ends (before, that
/// one went to the file only): `openclaw audit --database` on any host
/// shows the session's create, stop and end.
#[test]
#[cfg_attr(
    not(openclaw_has_postgres),
    ignore = "PostgreSQL's binaries are missing (scripts/bootstrap installs them)"
)]
fn a_sessions_end_is_audited_in_the_database_as_its_start_is() {
    require(
        &[Requirement::Postgres],
        "serve_multihost::a_sessions_end_is_audited_in_the_database_as_its_start_is",
    );
    let hosts = two_hosts("endaudit", None);
    let r = hosts.create(0);
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["id"].as_str().expect("id").to_owned();
    hosts.stop(0, &id);
    let of_session = |lines: Vec<Value>| -> Vec<String> {
        lines
            .into_iter()
            .filter(|l| l["target"] == json!(id))
            .map(|l| l["action"].as_str().expect("action").to_owned())
            .collect()
    };
    // The run writes its end after session.json says it ended.
    let in_file = support::wait_until("the session.end line", Duration::from_secs(60), || {
        let actions = of_session(audit_lines(hosts.home(0)));
        actions
            .contains(&"session.end".to_owned())
            .then_some(actions)
    });
    assert_eq!(in_file, ["session.create", "session.stop", "session.end"]);
    // The table's copy of the end line is written after the file's.
    let in_table = support::wait_until("the session.end row", Duration::from_secs(60), || {
        let actions = of_session(database_audit_lines(&hosts.url));
        actions
            .contains(&"session.end".to_owned())
            .then_some(actions)
    });
    assert_eq!(
        in_table, in_file,
        "the database's audit table holds what the host's file does"
    );
    let end = database_audit_lines(&hosts.url)
        .into_iter()
        .find(|l| l["action"] == "session.end")
        .expect("session.end");
    assert_eq!(
        (&end["tenant"], &end["via"], &end["outcome"]),
        (&json!("acme"), &json!("api"), &json!("ok")),
        "{end}"
    );
    let detail = end["detail"].as_str().expect("detail");
    assert!(
        detail.starts_with("interrupted; ") && detail.contains("chain head"),
        "{detail}"
    );
    // Read back through the other host.
    let shown = cli(hosts.home(1), &hosts.url, &["audit", "--tenant", "acme"]);
    assert!(
        shown
            .lines()
            .any(|l| l.contains("\"session.end\"") && l.contains(&id)),
        "{shown}"
    );
}

/// The test: with a `sessions` quota of 1, a session running on
/// daemon A leaves no room on daemon B (429 `sessions`, audited); once A's
/// session ends, B's create starts; once B's session dies (its runner
/// killed, then recovered), its lease is gone and A has room again.
#[test]
#[cfg_attr(
    not(openclaw_has_postgres),
    ignore = "PostgreSQL's binaries are missing (scripts/bootstrap installs them)"
)]
fn a_tenants_sessions_quota_holds_across_two_daemons_on_one_database() {
    require(
        &[Requirement::Postgres],
        "serve_multihost::a_tenants_sessions_quota_holds_across_two_daemons_on_one_database",
    );
    let hosts = two_hosts("leases", Some("1"));
    let quotas = call(
        &hosts.daemons[1],
        "GET",
        "/v1/tenants/acme/quotas",
        Some(&hosts.admin),
        None,
    );
    assert_eq!(
        quotas.body["sessions"], 1,
        "B reads the quota: {:?}",
        quotas.body
    );
    let first = hosts.create(0);
    assert_eq!(first.status, 201, "{:?}", first.body);
    let first = first.body["id"].as_str().expect("id").to_owned();

    let refused = hosts.create(1);
    assert_eq!(
        (refused.status, refused.code(), refused.field()),
        (429, "quota_exceeded", "sessions"),
        "daemon B started a second session past the tenant's quota of 1: {:?}",
        refused.body
    );
    assert_eq!(refused.header("retry-after").as_deref(), Some("5"));
    assert!(
        audit_lines(hosts.home(1)).iter().any(|l| {
            l["action"] == "session.create"
                && l["outcome"] == "refused"
                && l["detail"] == "quota exceeded: sessions"
        }),
        "B audits its refusal"
    );
    assert_eq!(
        hosts.leases(),
        [("acme".to_owned(), Some(first.clone()))],
        "one lease, A's session's"
    );

    // A's session ends: its lease goes when A's reaper sees the process
    // end, and B's next create starts. Until then B may still refuse.
    hosts.stop(0, &first);
    let second = support::wait_until(
        "B's create to start once A's session ended",
        Duration::from_secs(60),
        || {
            let r = hosts.create(1);
            match (r.status, r.field()) {
                (201, _) => Some(r.body["id"].as_str().expect("id").to_owned()),
                (429, "sessions") => None,
                _ => panic!("B's create: {:?}", r.body),
            }
        },
    );
    // And now A has no room.
    let r = hosts.create(0);
    assert_eq!((r.status, r.field()), (429, "sessions"), "{:?}", r.body);
    // B's session dies (its runner SIGKILLed): B's reaper recovers it and
    // its lease goes with it.
    let info: Value = serde_json::from_str(
        &std::fs::read_to_string(
            hosts
                .home(1)
                .join("tenants/acme/sessions")
                .join(&second)
                .join("session.json"),
        )
        .expect("session.json"),
    )
    .expect("json");
    let pid = info["supervisor_pid"].as_i64().expect("supervisor_pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid")),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the session's runner");
    let info = wait_ended(hosts.home(1), "acme", &second);
    assert_ne!(info["status"], "running", "{info}");
    support::wait_until("B's lease to go", Duration::from_secs(60), || {
        hosts.leases().is_empty().then_some(())
    });
    let r = hosts.create(0);
    assert_eq!(r.status, 201, "room again on A: {:?}", r.body);
    hosts.stop(0, r.body["id"].as_str().expect("id"));
}

/// Deleting a tenant through daemon A ends its session on daemon B
/// (SIGTERM, its chain closed), with a `session.stop` audit line on B.
#[test]
#[cfg_attr(
    not(openclaw_has_postgres),
    ignore = "PostgreSQL's binaries are missing (scripts/bootstrap installs them)"
)]
fn deleting_a_tenant_through_one_daemon_ends_its_sessions_on_the_other() {
    require(
        &[Requirement::Postgres],
        "serve_multihost::deleting_a_tenant_through_one_daemon_ends_its_sessions_on_the_other",
    );
    let hosts = two_hosts("deletion", None);
    let on_b = hosts.create(1);
    assert_eq!(on_b.status, 201, "{:?}", on_b.body);
    let id = on_b.body["id"].as_str().expect("id").to_owned();

    let r = call(
        &hosts.daemons[0],
        "DELETE",
        "/v1/tenants/acme",
        Some(&hosts.admin),
        None,
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    // The agent sleeps for 600 s: only a stop ends it within wait_ended's 60.
    let info = wait_ended(hosts.home(1), "acme", &id);
    assert_ne!(info["status"], "running", "{info}");
    // Written once the stop was waited for, after session.json changed.
    let stops = support::wait_until("B's session.stop line", Duration::from_secs(60), || {
        let stops: Vec<Value> = audit_lines(hosts.home(1))
            .into_iter()
            .filter(|l| l["action"] == "session.stop")
            .collect();
        (!stops.is_empty()).then_some(stops)
    });
    assert_eq!(stops.len(), 1, "{stops:?}");
    assert_eq!(
        (
            &stops[0]["tenant"],
            &stops[0]["target"],
            &stops[0]["outcome"],
            &stops[0]["detail"]
        ),
        (
            &json!("acme"),
            &json!(id),
            &json!("ok"),
            &json!("the tenant was deleted")
        ),
        "{stops:?}"
    );
    // Its chain was closed by its runner and verifies.
    let bundle = hosts
        .home(1)
        .join("tenants/acme/sessions")
        .join(&id)
        .to_path_buf();
    let verify = support::openclaw(hosts.home(1))
        .arg("verify")
        .arg(&bundle)
        .arg("--key")
        .arg(hosts.home(1).join("tenants/acme/keys/receipt.pub"))
        .output()
        .expect("verify");
    assert!(verify.status.success(), "{}", support::text(&verify));
    support::wait_until("B's lease to go", Duration::from_secs(60), || {
        hosts.leases().is_empty().then_some(())
    });
}

/// `openclaw run --tenant acme` with the database as its `--quota-db` (a
/// session run by hand on a host of the database) holds a lease as a
/// daemon's session does: with a `sessions` quota of 1, while it runs a
/// daemon's create is 429 `sessions` and a second such run is refused
/// (non-zero, a message naming the quota, no bundle); once it ends, its
/// lease is gone and the daemon starts one.
#[test]
#[cfg_attr(
    not(openclaw_has_postgres),
    ignore = "PostgreSQL's binaries are missing (scripts/bootstrap installs them)"
)]
fn a_session_run_from_the_cli_for_a_tenant_counts_in_its_sessions_quota() {
    require(
        &[Requirement::Postgres],
        "serve_multihost::a_session_run_from_the_cli_for_a_tenant_counts_in_its_sessions_quota",
    );
    let hosts = two_hosts("cli", Some("1"));
    let home = hosts.home(0);
    let keys = home.join("tenants/acme/keys");
    let cli_sessions = home.join("cli-sessions");
    std::fs::create_dir(&cli_sessions).expect("mkdir");
    let cap = home.join("acme.cap");
    std::fs::write(&cap, mint_for(home, "acme")).expect("cap");
    let run = || {
        let mut cmd = support::openclaw(home);
        cmd.arg("run")
            .arg("--capabilities")
            .arg(&cap)
            .arg("--pubkey")
            .arg(keys.join("root.pub"))
            .arg("--receipt-key")
            .arg(keys.join("receipt.key"))
            .arg("--sessions-dir")
            .arg(&cli_sessions)
            .args([
                "--backend",
                "netns",
                "--approve",
                "deny",
                "--tenant",
                "acme",
            ])
            // Bounds a run that should have been refused (exit 124).
            .args(["--timeout", "120s"])
            .env("OPENCLAW_QUOTA_DB", &hosts.url)
            .args(["--", "sleep", "600"]);
        cmd
    };
    let bundles = || std::fs::read_dir(&cli_sessions).expect("sessions").count();
    let mut first = run()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openclaw run");
    let first_pid = nix::unistd::Pid::from_raw(i32::try_from(first.id()).expect("pid"));
    support::wait_until("the CLI session to run", Duration::from_secs(60), || {
        std::fs::read_dir(&cli_sessions)
            .ok()?
            .filter_map(|e| e.ok())
            .any(|e| e.path().join("control.sock").exists())
            .then_some(())
    });
    let end_first = |first: &mut std::process::Child| {
        let _ = nix::sys::signal::kill(first_pid, nix::sys::signal::Signal::SIGTERM);
        let _ = first.wait();
    };
    let refused = hosts.create(1);
    if refused.status == 201 {
        // Ended before asserting, so a failure leaves nothing running.
        hosts.stop(1, refused.body["id"].as_str().expect("id"));
        end_first(&mut first);
    }
    assert_eq!(
        (refused.status, refused.field()),
        (429, "sessions"),
        "a daemon started a session past the quota of 1 while a CLI session ran: {:?}",
        refused.body
    );
    let second = run().output().expect("a second openclaw run");
    end_first(&mut first);
    assert!(!second.status.success(), "{}", support::text(&second));
    assert!(
        support::text(&second).contains("at its sessions quota"),
        "{}",
        support::text(&second)
    );
    assert_eq!(bundles(), 1, "the refused run started nothing");
    // The ended run released its lease: room again.
    support::wait_until("the CLI run's lease to go", Duration::from_secs(60), || {
        hosts.leases().is_empty().then_some(())
    });
    let r = hosts.create(1);
    assert_eq!(r.status, 201, "{:?}", r.body);
    hosts.stop(1, r.body["id"].as_str().expect("id"));
}

/// A daemon cut off from the database cannot renew its sessions' leases;
/// once they expire there, another daemon may start sessions in their
/// place. So the cut-off daemon stops each session whose lease it could
/// not renew in time (SIGTERM: the chain closed with an interrupted
/// `session_end`, and it verifies), says why in its log and writes a
/// `session.stop` audit line. With a `sessions` quota of 1 and 6 s leases:
/// A's session runs on through several renewals while the database is
/// reachable; A's way to it is cut; B's create starts once A's lease
/// expired; A's session has ended, interrupted.
#[test]
#[cfg_attr(
    not(openclaw_has_postgres),
    ignore = "PostgreSQL's binaries are missing (scripts/bootstrap installs them)"
)]
fn a_daemon_cut_off_from_the_database_stops_the_sessions_whose_leases_lapse() {
    require(
        &[Requirement::Postgres],
        "serve_multihost::a_daemon_cut_off_from_the_database_stops_the_sessions_whose_leases_lapse",
    );
    const TTL: Duration = Duration::from_secs(6);
    let hosts = two_hosts_with(
        "lapse",
        Setup {
            quota: Some("1"),
            relay_a: true,
            flags: &["--lease-ttl", "6s"],
            ..Setup::default()
        },
    );
    let on_a = hosts.create(0);
    assert_eq!(on_a.status, 201, "{:?}", on_a.body);
    let on_a = on_a.body["id"].as_str().expect("id").to_owned();
    let session_json = hosts
        .home(0)
        .join("tenants/acme/sessions")
        .join(&on_a)
        .join("session.json");
    let status = || -> Value {
        serde_json::from_str::<Value>(&std::fs::read_to_string(&session_json).expect("read"))
            .expect("json")["status"]
            .clone()
    };
    // Renewed while the database is reachable: it outlives its first leases.
    std::thread::sleep(2 * TTL);
    assert_eq!(status(), "running");
    let r = hosts.create(1);
    assert_eq!((r.status, r.field()), (429, "sessions"), "{:?}", r.body);

    hosts.relay.as_ref().expect("relay").cut();
    let on_b = support::wait_until(
        "B's create once A's lease expired",
        Duration::from_secs(120),
        || {
            let r = hosts.create(1);
            match (r.status, r.field()) {
                (201, _) => Some(r.body["id"].as_str().expect("id").to_owned()),
                (429, "sessions") => None,
                _ => panic!("B's create: {:?}", r.body),
            }
        },
    );
    let info = wait_ended(hosts.home(0), "acme", &on_a);
    assert_eq!(
        info["status"], "interrupted",
        "A's session whose lease lapsed: {info}"
    );
    let stops = support::wait_until("A's session.stop line", Duration::from_secs(60), || {
        let stops: Vec<Value> = audit_lines(hosts.home(0))
            .into_iter()
            .filter(|l| l["action"] == "session.stop")
            .collect();
        (!stops.is_empty()).then_some(stops)
    });
    assert_eq!(stops.len(), 1, "{stops:?}");
    assert_eq!(
        (
            &stops[0]["tenant"],
            &stops[0]["target"],
            &stops[0]["outcome"]
        ),
        (&json!("acme"), &json!(on_a), &json!("ok")),
        "{stops:?}"
    );
    let detail = stops[0]["detail"].as_str().expect("detail");
    assert!(detail.contains("lease could not be renewed"), "{detail}");
    let log = std::fs::read_to_string(hosts.logs.path().join("one.log")).expect("A's log");
    assert!(
        log.lines().any(|l| l.contains(&on_a)
            && l.contains("stopped the session")
            && l.contains("lease could not be renewed")),
        "A's log says why it stopped the session:\n{log}"
    );
    let bundle = hosts.home(0).join("tenants/acme/sessions").join(&on_a);
    let verify = support::openclaw(hosts.home(0))
        .arg("verify")
        .arg(&bundle)
        .arg("--key")
        .arg(hosts.home(0).join("tenants/acme/keys/receipt.pub"))
        .output()
        .expect("verify");
    assert!(verify.status.success(), "{}", support::text(&verify));
    hosts.stop(1, &on_b);
}

/// A database that keeps A's connections open but never answers (a hung
/// server, packets dropped: the relay stalls) must not hang A's control
/// layer: every database call is bounded (`--database-timeout`, 1 s
/// here). A's lease lapses, so B's create starts; A's session ends
/// `interrupted` (its runner's deletion of its quota holds gives up, so it
/// is not killed and recovered as `supervisor_died`); and A's SIGTERM drain
/// exits 0 (its reaping and release of the lease do not wait on a renewal
/// stuck in the database).
#[test]
#[cfg_attr(
    not(openclaw_has_postgres),
    ignore = "PostgreSQL's binaries are missing (scripts/bootstrap installs them)"
)]
fn a_daemon_whose_database_hangs_stops_the_lapsed_sessions_interrupted_and_then_itself() {
    require(
        &[Requirement::Postgres],
        "serve_multihost::a_daemon_whose_database_hangs_stops_the_lapsed_sessions_interrupted_and_then_itself",
    );
    let mut hosts = two_hosts_with(
        "hang",
        Setup {
            quota: Some("1"),
            relay_a: true,
            // The daemon's bound, passed to its sessions with the flag.
            flags: &["--lease-ttl", "6s", "--database-timeout", "1s"],
            env: &[],
        },
    );
    let on_a = hosts.create(0);
    assert_eq!(on_a.status, 201, "{:?}", on_a.body);
    let on_a = on_a.body["id"].as_str().expect("id").to_owned();

    hosts.relay.as_ref().expect("relay").stall();
    let on_b = support::wait_until(
        "B's create once A's lease expired",
        Duration::from_secs(120),
        || {
            let r = hosts.create(1);
            match (r.status, r.field()) {
                (201, _) => Some(r.body["id"].as_str().expect("id").to_owned()),
                (429, "sessions") => None,
                _ => panic!("B's create: {:?}", r.body),
            }
        },
    );
    let info = wait_ended(hosts.home(0), "acme", &on_a);
    let log = || std::fs::read_to_string(hosts.logs.path().join("one.log")).expect("A's log");
    assert_eq!(
        info["status"],
        "interrupted",
        "A's session whose lease lapsed: {info}\n{}",
        log()
    );

    if let Ok(pid) = i32::try_from(hosts.daemons[0].child.id()) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM A");
    }
    let exited = support::wait_until("A's exit after SIGTERM", Duration::from_secs(120), || {
        hosts.daemons[0].child.try_wait().expect("wait")
    });
    assert_eq!(exited.code(), Some(0), "{}", log());
    hosts.stop(1, &on_b);
}

/// `openclaw run --tenant acme` on a host cut off from the database cannot
/// renew its lease either: it stops its session as Ctrl-C does (exit 130,
/// the chain closed as interrupted, verifying), saying why, before the
/// lease expires and a daemon starts a session in its place. 6 s leases, a
/// `sessions` quota of 1, the run's way to the database through the relay.
#[test]
#[cfg_attr(
    not(openclaw_has_postgres),
    ignore = "PostgreSQL's binaries are missing (scripts/bootstrap installs them)"
)]
fn a_session_run_from_the_cli_cut_off_from_the_database_stops_when_its_lease_lapses() {
    require(
        &[Requirement::Postgres],
        "serve_multihost::a_session_run_from_the_cli_cut_off_from_the_database_stops_when_its_lease_lapses",
    );
    const TTL: Duration = Duration::from_secs(6);
    let hosts = two_hosts_with(
        "clilapse",
        Setup {
            quota: Some("1"),
            relay_a: true,
            flags: &[],
            ..Setup::default()
        },
    );
    let relay = hosts.relay.as_ref().expect("relay");
    let home = hosts.home(0);
    let keys = home.join("tenants/acme/keys");
    let cli_sessions = home.join("cli-sessions");
    std::fs::create_dir(&cli_sessions).expect("mkdir");
    let cap = home.join("acme.cap");
    std::fs::write(&cap, mint_for(home, "acme")).expect("cap");
    let via_relay = hosts.url.replace(
        &format!("127.0.0.1:{}/", hosts._server.port()),
        &format!("127.0.0.1:{}/", relay.port),
    );
    let run = support::openclaw(home)
        .arg("run")
        .arg("--capabilities")
        .arg(&cap)
        .arg("--pubkey")
        .arg(keys.join("root.pub"))
        .arg("--receipt-key")
        .arg(keys.join("receipt.key"))
        .arg("--sessions-dir")
        .arg(&cli_sessions)
        .args(["--backend", "netns", "--approve", "deny"])
        .args(["--tenant", "acme", "--lease-ttl", "6s"])
        // Bounds a run that is never stopped (exit 124).
        .args(["--timeout", "300s"])
        .env("OPENCLAW_QUOTA_DB", &via_relay)
        .args(["--", "sleep", "600"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openclaw run");
    let mut run = Terminated(Some(run));
    let bundle = support::wait_until("the CLI session to run", Duration::from_secs(60), || {
        std::fs::read_dir(&cli_sessions)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.join("control.sock").exists())
    });
    // Renewed while the database is reachable: it outlives its first leases.
    std::thread::sleep(2 * TTL);
    let r = hosts.create(1);
    assert_eq!((r.status, r.field()), (429, "sessions"), "{:?}", r.body);

    relay.cut();
    let out = run
        .0
        .take()
        .expect("running")
        .wait_with_output()
        .expect("the run's end");
    let text = support::text(&out);
    assert_eq!(out.status.code(), Some(130), "{text}");
    assert!(
        text.contains("lease could not be renewed"),
        "the run says why it stopped: {text}"
    );
    let info: Value = serde_json::from_str(
        &std::fs::read_to_string(bundle.join("session.json")).expect("session.json"),
    )
    .expect("json");
    assert_eq!(info["status"], "interrupted", "{info}");
    let verify = support::openclaw(home)
        .arg("verify")
        .arg(&bundle)
        .arg("--key")
        .arg(keys.join("receipt.pub"))
        .output()
        .expect("verify");
    assert!(verify.status.success(), "{}", support::text(&verify));
    // Its lease expires: a daemon starts a session in its place.
    let on_b = support::wait_until(
        "B's create once the run's lease expired",
        Duration::from_secs(120),
        || {
            let r = hosts.create(1);
            match (r.status, r.field()) {
                (201, _) => Some(r.body["id"].as_str().expect("id").to_owned()),
                (429, "sessions") => None,
                _ => panic!("B's create: {:?}", r.body),
            }
        },
    );
    hosts.stop(1, &on_b);
}

/// `openclaw run --tenant acme` whose database hangs (the relay stalls:
/// connections kept open, nothing forwarded) cannot renew its lease either,
/// and must not hang on it: every database call of the run is bounded
/// (`--database-timeout 1s`), so it stops its session as on Ctrl-C (exit
/// 130, `interrupted`, the chain verifying), saying why, instead of waiting
/// on the database for good.
#[test]
#[cfg_attr(
    not(openclaw_has_postgres),
    ignore = "PostgreSQL's binaries are missing (scripts/bootstrap installs them)"
)]
fn a_session_run_from_the_cli_whose_database_hangs_ends_interrupted() {
    require(
        &[Requirement::Postgres],
        "serve_multihost::a_session_run_from_the_cli_whose_database_hangs_ends_interrupted",
    );
    let hosts = two_hosts_with(
        "clihang",
        Setup {
            quota: Some("1"),
            relay_a: true,
            ..Setup::default()
        },
    );
    let relay = hosts.relay.as_ref().expect("relay");
    let home = hosts.home(0);
    let keys = home.join("tenants/acme/keys");
    let cli_sessions = home.join("cli-sessions");
    std::fs::create_dir(&cli_sessions).expect("mkdir");
    let cap = home.join("acme.cap");
    std::fs::write(&cap, mint_for(home, "acme")).expect("cap");
    let via_relay = hosts.url.replace(
        &format!("127.0.0.1:{}/", hosts._server.port()),
        &format!("127.0.0.1:{}/", relay.port),
    );
    let run = support::openclaw(home)
        .arg("run")
        .arg("--capabilities")
        .arg(&cap)
        .arg("--pubkey")
        .arg(keys.join("root.pub"))
        .arg("--receipt-key")
        .arg(keys.join("receipt.key"))
        .arg("--sessions-dir")
        .arg(&cli_sessions)
        .args(["--backend", "netns", "--approve", "deny"])
        .args(["--tenant", "acme", "--lease-ttl", "6s"])
        .args(["--database-timeout", "1s"])
        // Bounds a run that is never stopped (exit 124).
        .args(["--timeout", "300s"])
        .env("OPENCLAW_QUOTA_DB", &via_relay)
        .env_remove("OPENCLAW_DATABASE_TIMEOUT")
        .args(["--", "sleep", "600"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openclaw run");
    let mut run = Terminated(Some(run));
    let bundle = support::wait_until("the CLI session to run", Duration::from_secs(60), || {
        std::fs::read_dir(&cli_sessions)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.join("control.sock").exists())
    });
    relay.stall();
    let out = run
        .0
        .take()
        .expect("running")
        .wait_with_output()
        .expect("the run's end");
    let text = support::text(&out);
    assert_eq!(out.status.code(), Some(130), "{text}");
    assert!(
        text.contains("lease could not be renewed"),
        "the run says why it stopped: {text}"
    );
    let info: Value = serde_json::from_str(
        &std::fs::read_to_string(bundle.join("session.json")).expect("session.json"),
    )
    .expect("json");
    assert_eq!(info["status"], "interrupted", "{info}");
    let verify = support::openclaw(home)
        .arg("verify")
        .arg(&bundle)
        .arg("--key")
        .arg(keys.join("receipt.pub"))
        .output()
        .expect("verify");
    assert!(verify.status.success(), "{}", support::text(&verify));
}
