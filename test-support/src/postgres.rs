//! A private PostgreSQL server for one test: `initdb` into a fresh temporary
//! directory as an unprivileged user (initdb refuses root), started with
//! `pg_ctl` listening only on 127.0.0.1 (a free port) and on a unix socket in
//! that directory, password (SCRAM) auth over TCP for the test user and trust
//! on the socket for the helper's own `createdb`; stopped and removed on drop.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The database role the server is made with (its superuser).
pub const POSTGRES_USER: &str = "openclaw";

/// A running PostgreSQL of this test run; stopped (immediately) and its
/// directory removed when dropped.
pub struct PostgresServer {
    // Declared first: dropped after `Drop::drop` stopped the server.
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    password: String,
    /// The user the server runs as when the test runs as root.
    run_as: Option<String>,
}

impl PostgresServer {
    /// `initdb` and start. Panics (the test fails) when the binaries are
    /// missing or the server does not come up: callers are gated on
    /// `Requirement::Postgres`.
    pub fn start() -> PostgresServer {
        let bin = test_requirements::postgres_bin_dir()
            .expect("PostgreSQL's binaries under /usr/lib/postgresql/<version>/bin");
        let dir = tempfile::Builder::new()
            .prefix("openclaw-pg-")
            .tempdir()
            .expect("tempdir");
        let run_as = running_as_root().then(unprivileged_user);
        if let Some(user) = &run_as {
            let (uid, gid) = ids_of(user).expect("the unprivileged user's ids");
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown tempdir");
        }
        let password = random_hex(16);
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{password}\n")).expect("pwfile");
        if let Some(user) = &run_as {
            let (uid, gid) = ids_of(user).expect("ids");
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).expect("chown pwfile");
        }
        let mut server = PostgresServer {
            dir,
            bin,
            port: 0,
            password,
            run_as,
        };
        let data = server.data_dir();
        server.run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                POSTGRES_USER.as_ref(),
                "--pwfile".as_ref(),
                pwfile.as_os_str(),
                "--auth-host=scram-sha-256".as_ref(),
                "--auth-local=trust".as_ref(),
                "--encoding=UTF8".as_ref(),
                // Every Debian has it (no locales package needed).
                "--locale=C.UTF-8".as_ref(),
                "--no-sync".as_ref(),
            ],
        );
        let _ = std::fs::remove_file(&pwfile);
        // A free port can be taken between the probe and the bind: retry.
        for attempt in 0.. {
            server.port = free_port();
            if server.pg_ctl_start() {
                break;
            }
            assert!(attempt < 4, "PostgreSQL did not start:\n{}", server.log());
        }
        server
    }

    /// Creates database `name` (owned by [`POSTGRES_USER`]) and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        let sock = self.dir.path().to_path_buf();
        let port = self.port.to_string();
        self.run(
            "createdb",
            &[
                "-h".as_ref(),
                sock.as_os_str(),
                "-p".as_ref(),
                port.as_ref(),
                "-U".as_ref(),
                POSTGRES_USER.as_ref(),
                name.as_ref(),
            ],
        );
        self.url(name)
    }

    /// `postgres://openclaw:<password>@127.0.0.1:<port>/<db>`: TCP, password auth.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{POSTGRES_USER}:{}@127.0.0.1:{}/{db}",
            self.password, self.port
        )
    }

    /// The test user's password (tests look for it where it must not be).
    pub fn password(&self) -> &str {
        &self.password
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (fast: connections are closed), keeping its data.
    pub fn stop(&self) {
        let data = self.data_dir();
        self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "fast".as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        );
    }

    /// Starts it again on the same port, after [`PostgresServer::stop`].
    pub fn restart(&self) {
        assert!(
            self.pg_ctl_start(),
            "PostgreSQL did not start again:\n{}",
            self.log()
        );
    }

    /// The server's log, for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn pg_ctl_start(&self) -> bool {
        let data = self.data_dir();
        let log = self.dir.path().join("server.log");
        // Test data: durability is not what these tests measure.
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            self.port,
            self.dir.path().display()
        );
        self.command("pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .arg("-o")
            .arg(options)
            .args(["-w", "-t", "60", "start"])
            .output()
            .expect("running pg_ctl")
            .status
            .success()
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut cmd = Command::new("runuser");
                cmd.args(["-u", user, "--"]).arg(path);
                cmd
            }
            None => Command::new(path),
        };
        // The unprivileged user may not be able to enter the test's cwd.
        cmd.current_dir(self.dir.path());
        cmd
    }

    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) {
        let out = self
            .command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `postgres` (Debian's package makes it), else `nobody`.
fn unprivileged_user() -> String {
    ["postgres", "nobody"]
        .into_iter()
        .find(|u| ids_of(u).is_some())
        .expect("a postgres or nobody user to run PostgreSQL as")
        .to_owned()
}

fn ids_of(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string(Path::new("/etc/passwd")).ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == user).then_some(())?;
        let uid = fields.nth(1)?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some((uid, gid))
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn random_hex(bytes: usize) -> String {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("/dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}
