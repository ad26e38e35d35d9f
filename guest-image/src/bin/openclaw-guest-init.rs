//! The guest's PID 1: marks the boot, mounts, configures the NIC from the
//! kernel command line, installs the session CA as the only trust anchor,
//! runs the task with its placeholders, streams stdout/stderr and the exit
//! status over the control channel (hvc0, else ttyS1), then resets the VM (power off).
//!
//! Built static (`-C target-feature=+crt-static`) so the image needs no libc for it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use guest_protocol::paths::{ARGV_PATH, CA_PATH, ENV_PATH, WORK_DIR};
use guest_protocol::{
    cmdline, encode_frame, FRAME_EXIT, FRAME_MARK, FRAME_STDERR, FRAME_STDOUT, MARKER_INIT_STARTED,
    MARKER_TASK_STARTED,
};
use nix::mount::{mount, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::termios;

/// The control channel: virtio-console first (one VM exit per write), the
/// second UART when the VMM offers no virtio-console.
const CONTROL_TTYS: [&str; 2] = ["/dev/hvc0", "/dev/ttyS1"];
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
const WORK_ALIAS: &str = "/work";
const TASK_UID: u32 = 1000;
/// Reported when the init itself fails before or around the task.
const STATUS_INIT_FAILED: i32 = 125;

fn main() {
    // First act: the boot mark. /dev needs devtmpfs for /dev/ttyS1.
    let _ = mount(
        Some("devtmpfs"),
        "/dev",
        Some("devtmpfs"),
        MsFlags::empty(),
        None::<&str>,
    );
    match Control::open() {
        Ok(mut control) => {
            control.frame(FRAME_MARK, &[MARKER_INIT_STARTED]);
            if let Err(e) = run(&mut control) {
                eprintln!("openclaw-guest-init: {e}");
                control.frame(
                    FRAME_STDERR,
                    format!("openclaw-guest-init: {e}\n").as_bytes(),
                );
                control.frame(FRAME_EXIT, &STATUS_INIT_FAILED.to_le_bytes());
                control.drain();
            }
        }
        Err(e) => eprintln!("openclaw-guest-init: no control channel: {e}"),
    }
    nix::unistd::sync();
    // reboot=k on the command line: the kernel resets through the i8042, which
    // our VMM treats as power-off.
    let _ = reboot(RebootMode::RB_AUTOBOOT);
    loop {
        std::thread::park();
    }
}

/// Runs the session; the exit frame is sent here on success.
fn run(control: &mut Control) -> Result<i32, String> {
    mount_filesystems()?;
    let line =
        std::fs::read_to_string("/proc/cmdline").map_err(|e| format!("/proc/cmdline: {e}"))?;
    let param = |key: &str| cmdline::value(&line, key).map(str::to_string);
    if cmdline::probe_requested(&line) {
        // Proves guest user space and system calls work; nothing else.
        control.frame(FRAME_EXIT, &0i32.to_le_bytes());
        control.drain();
        return Ok(0);
    }
    configure_network(
        param(cmdline::IP),
        param(cmdline::GATEWAY),
        param(cmdline::RESOLVER),
    )?;
    install_trust_anchor()?;
    let env = read_nul_separated(ENV_PATH)?;
    let argv = read_nul_separated(ARGV_PATH)?;
    let (program, args) = argv.split_first().ok_or("the session has no command")?;
    chown_tree(std::path::Path::new(WORK_DIR))?;
    // The netns backend shows the task its files at /work: same path here,
    // so one command line works on both backends.
    match std::os::unix::fs::symlink(WORK_DIR, WORK_ALIAS) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("{WORK_ALIAS}: {e}")),
    }

    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin:/sbin")
        .env("HOME", "/home/task")
        .env("CURL_CA_BUNDLE", CA_BUNDLE)
        .env("SSL_CERT_FILE", CA_BUNDLE)
        .current_dir(WORK_DIR)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .uid(TASK_UID)
        // std drops supplementary groups when root sets a uid.
        .gid(TASK_UID);
    for kv in &env {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    control.frame(FRAME_MARK, &[MARKER_TASK_STARTED]);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let shared = Arc::new(Mutex::new(Control {
        tty: control
            .tty
            .try_clone()
            .map_err(|e| format!("dup tty: {e}"))?,
    }));
    let pumps: Vec<_> = [
        (
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            FRAME_STDOUT,
        ),
        (
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            FRAME_STDERR,
        ),
    ]
    .into_iter()
    .filter_map(|(stream, kind)| stream.map(|s| (s, kind)))
    .map(|(mut stream, kind)| {
        let control = shared.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                control
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .frame(kind, &buf[..n]);
            }
        })
    })
    .collect();
    let status = child
        .wait()
        .map_err(|e| format!("waiting for the task: {e}"))?;
    for p in pumps {
        let _ = p.join();
    }
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    control.frame(FRAME_EXIT, &code.to_le_bytes());
    control.drain();
    Ok(code)
}

fn mount_filesystems() -> Result<(), String> {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    for (src, target, fstype, flags) in [
        ("proc", "/proc", "proc", nosuid),
        ("sysfs", "/sys", "sysfs", nosuid),
        (
            "tmpfs",
            "/tmp",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        ),
    ] {
        mount(Some(src), target, Some(fstype), flags, None::<&str>)
            .map_err(|e| format!("mount {target}: {e}"))?;
    }
    std::fs::set_permissions("/tmp", std::fs::Permissions::from_mode(0o1777))
        .map_err(|e| format!("chmod /tmp: {e}"))?;
    Ok(())
}

/// `openclaw.ip=10.0.0.2/30 openclaw.gw=10.0.0.1 openclaw.dns=10.0.0.1`, via busybox ip.
fn configure_network(
    ip: Option<String>,
    gw: Option<String>,
    dns: Option<String>,
) -> Result<(), String> {
    sh(&["ip", "link", "set", "lo", "up"])?;
    let Some(ip) = ip else { return Ok(()) };
    sh(&["ip", "addr", "add", &ip, "dev", "eth0"])?;
    sh(&["ip", "link", "set", "eth0", "up"])?;
    if let Some(gw) = gw {
        sh(&["ip", "route", "add", "default", "via", &gw])?;
    }
    if let Some(dns) = dns {
        std::fs::write("/etc/resolv.conf", format!("nameserver {dns}\n"))
            .map_err(|e| format!("resolv.conf: {e}"))?;
    }
    Ok(())
}

fn sh(args: &[&str]) -> Result<(), String> {
    let status = Command::new("/bin/busybox")
        .args(args)
        .status()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{}` failed: {status}", args.join(" ")))
    }
}

/// The session CA becomes the whole bundle: nothing else is trusted.
fn install_trust_anchor() -> Result<(), String> {
    let ca = std::fs::read(CA_PATH).map_err(|e| format!("{CA_PATH}: {e}"))?;
    std::fs::write(CA_BUNDLE, ca).map_err(|e| format!("{CA_BUNDLE}: {e}"))
}

fn read_nul_separated(path: &str) -> Result<Vec<String>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    Ok(bytes
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

fn chown_tree(path: &std::path::Path) -> Result<(), String> {
    std::os::unix::fs::lchown(path, Some(TASK_UID), Some(TASK_UID))
        .map_err(|e| format!("chown {}: {e}", path.display()))?;
    if path.is_dir() && !path.is_symlink() {
        for entry in std::fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))? {
            let entry = entry.map_err(|e| e.to_string())?;
            chown_tree(&entry.path())?;
        }
    }
    Ok(())
}

/// The control channel: framed writes to the second UART in raw mode.
struct Control {
    tty: File,
}

impl Control {
    fn open() -> Result<Control, String> {
        let mut opened = Err(String::from("no control channel device"));
        for path in CONTROL_TTYS {
            opened = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| format!("{path}: {e}"));
            if opened.is_ok() {
                break;
            }
        }
        let tty = opened?;
        // Raw: no newline translation or echo processing of our binary frames.
        let mut attrs = termios::tcgetattr(&tty).map_err(|e| format!("tcgetattr: {e}"))?;
        termios::cfmakeraw(&mut attrs);
        termios::tcsetattr(&tty, termios::SetArg::TCSANOW, &attrs)
            .map_err(|e| format!("tcsetattr: {e}"))?;
        Ok(Control { tty })
    }

    fn frame(&mut self, kind: u8, payload: &[u8]) {
        for chunk in payload.chunks(u16::MAX as usize) {
            let _ = self.tty.write_all(&encode_frame(kind, chunk));
        }
    }

    /// Waits until every byte left the UART, so a reset cannot cut the tail.
    fn drain(&mut self) {
        let _ = termios::tcdrain(&self.tty);
    }
}
