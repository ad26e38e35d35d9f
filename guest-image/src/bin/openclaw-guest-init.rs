//! The guest's PID 1: marks the boot, mounts, configures the NIC from the
//! kernel command line, and then either runs the command in the initramfs
//! (the initramfs-only guest) or mounts the image's root filesystem
//! read-only under an overlay with the session's writable layer, `/work`
//! from its own disk, and moves into it. There it installs the session CA
//! as the system trust store, runs the command as an unprivileged user with
//! its limits, streams stdout/stderr and the exit status over the control
//! channel (hvc0, else ttyS1), stops the command when the host asks, ends
//! every process, unmounts `/work` so the host can read it, and resets the
//! VM (power off).
//!
//! Built static (`-C target-feature=+crt-static`) so the image needs no libc for it.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use guest_protocol::disks::{LAYER_ID, ROOT_ID, WORK_ID};
use guest_protocol::paths::{
    ARGV_PATH, CA_BUNDLE, CA_ENV, CA_PATH, ENV_PATH, PIDS_MAX_PATH, USER_PATH, WORKDIR_PATH,
    WORK_DIR, WORK_MOUNT,
};
use guest_protocol::{
    cmdline, encode_frame, FRAME_EXIT, FRAME_MARK, FRAME_STDERR, FRAME_STDOUT, HOST_STOP,
    MARKER_INIT_STARTED, MARKER_TASK_STARTED,
};
use nix::mount::{mount, umount, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::termios;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// The control channel: virtio-console first (one VM exit per write), the
/// second UART when the VMM offers no virtio-console.
const CONTROL_TTYS: [&str; 2] = ["/dev/hvc0", "/dev/ttyS1"];
/// The unprivileged user commands run as unless the image names another.
const TASK_UID: u32 = 1000;
/// Reported when the init itself fails before or around the task.
const STATUS_INIT_FAILED: i32 = 125;
/// Where the root filesystem is assembled before the init moves into it.
const LOWER: &str = "/mnt/lower";
const LAYER: &str = "/mnt/layer";
const NEW_ROOT: &str = "/mnt/root";
/// The command's environment before the image's and the session's.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// CA bundle locations across distributions (the netns backend's list):
/// each that exists in the image holds the session CA alone.
const CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/ssl/cert.pem",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/pki/tls/cert.pem",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ca-certificates/extracted/tls-ca-bundle.pem",
];
/// Directories of individually trusted certificates: emptied, so nothing
/// but the session CA is trusted.
const TRUST_DIRS: &[&str] = &["/etc/ssl/certs", "/etc/pki/tls/certs", "/etc/pki/ca-trust"];
/// After the host's stop: how long the command has to end on SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(2);

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
                end_everything();
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

/// What the host put in the session cpio.
struct Session {
    ca: Vec<u8>,
    env: Vec<String>,
    argv: Vec<String>,
    workdir: Option<String>,
    user: Option<String>,
    pids_max: Option<u64>,
}

impl Session {
    fn read() -> Result<Session, String> {
        let line = |path: &str| {
            std::fs::read_to_string(path)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        Ok(Session {
            ca: std::fs::read(CA_PATH).map_err(|e| format!("{CA_PATH}: {e}"))?,
            env: read_nul_separated(ENV_PATH)?,
            argv: read_nul_separated(ARGV_PATH)?,
            workdir: line(WORKDIR_PATH),
            user: line(USER_PATH),
            pids_max: line(PIDS_MAX_PATH).and_then(|n| n.parse().ok()),
        })
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
    configure_network(param(cmdline::IP), param(cmdline::GATEWAY))?;
    let session = Session::read()?;
    let disks = find_disks();
    let has_root = disks.contains_key(ROOT_ID);
    let base = if has_root {
        assemble_root(&disks)?;
        NEW_ROOT
    } else {
        "/"
    };
    let work = match disks.get(WORK_ID) {
        Some(dev) => {
            let at = format!("{}{WORK_MOUNT}", base.trim_end_matches('/'));
            std::fs::create_dir_all(&at).map_err(|e| format!("{at}: {e}"))?;
            mount_ext4(dev, &at, MsFlags::MS_NOSUID | MsFlags::MS_NODEV)?;
            WORK_MOUNT
        }
        None => {
            // The initramfs-only guest: the files came in the session cpio;
            // /work names them too, as on the netns backend.
            match std::os::unix::fs::symlink(WORK_DIR, WORK_MOUNT) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("{WORK_MOUNT}: {e}")),
            }
            WORK_DIR
        }
    };
    if has_root {
        mount_system_dirs(NEW_ROOT)?;
        switch_root(NEW_ROOT)?;
    }
    if let Some(dns) = param(cmdline::RESOLVER) {
        write_file("/etc/resolv.conf", format!("nameserver {dns}\n").as_bytes())?;
    }
    write_file("/etc/hosts", b"127.0.0.1 localhost openclaw\n")?;
    let _ = nix::unistd::sethostname("openclaw");
    install_trust_anchor(&session.ca)?;
    let (uid, gid) = resolve_user(session.user.as_deref());
    chown_tree(Path::new(work), uid, gid)?;
    let cwd = session.workdir.clone().unwrap_or_else(|| work.to_string());
    std::fs::create_dir_all(&cwd).map_err(|e| format!("working directory {cwd}: {e}"))?;
    if let Some(n) = session.pids_max {
        // Inherited by the command; counted against its user (the init,
        // root, is exempt).
        setrlimit(Resource::RLIMIT_NPROC, n, n).map_err(|e| format!("process limit: {e}"))?;
    }

    let code = run_task(control, &session, uid, gid, &cwd)?;
    // Whatever the command left running goes too; then /work is written
    // out and unmounted, so the host reads a clean filesystem.
    end_everything();
    if disks.contains_key(WORK_ID) {
        nix::unistd::sync();
        if let Err(e) = umount(WORK_MOUNT) {
            eprintln!("openclaw-guest-init: unmounting {WORK_MOUNT}: {e}");
        }
    }
    nix::unistd::sync();
    control.frame(FRAME_EXIT, &code.to_le_bytes());
    control.drain();
    Ok(code)
}

/// Starts the command, streams its output, stops it when the host asks;
/// returns its exit status.
fn run_task(
    control: &mut Control,
    session: &Session,
    uid: u32,
    gid: u32,
    cwd: &str,
) -> Result<i32, String> {
    let (program, args) = session
        .argv
        .split_first()
        .ok_or("the session has no command")?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .env("HOME", WORK_MOUNT)
        .env("TMPDIR", "/tmp")
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a stop reaches everything it started.
        .process_group(0)
        .uid(uid)
        // std drops supplementary groups when root sets a uid.
        .gid(gid);
    for kv in &session.env {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    // Last: the image or the session cannot point TLS elsewhere.
    for var in CA_ENV {
        cmd.env(var, CA_BUNDLE);
    }
    // PATH lookup for argv[0] happens in the child with the command's PATH.
    control.frame(FRAME_MARK, &[MARKER_TASK_STARTED]);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let pgid = AtomicI32::new(child.id() as i32);
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
    let done = Arc::new(AtomicBool::new(false));
    if let Ok(tty) = control.tty.try_clone() {
        let (done, group) = (done.clone(), pgid.load(Ordering::Relaxed));
        std::thread::spawn(move || listen_for_stop(tty, group, &done));
    }
    let code = wait_for(Pid::from_raw(child.id() as i32))?;
    done.store(true, Ordering::Release);
    // Background processes holding the output pipes would keep the pumps
    // reading forever.
    end_everything();
    for p in pumps {
        let _ = p.join();
    }
    Ok(code)
}

/// Waits for the command `pid` to end; its exit status (128+N for a
/// signal). Every other child that ends meanwhile is reaped too: as PID 1
/// the init inherits the command's orphans, and one left a zombie counts
/// against the command user's process limit until the session ends.
fn wait_for(pid: Pid) -> Result<i32, String> {
    loop {
        match waitpid(None::<Pid>, None) {
            Ok(WaitStatus::Exited(p, code)) if p == pid => return Ok(code),
            Ok(WaitStatus::Signaled(p, signal, _)) if p == pid => return Ok(128 + signal as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("waiting for the task: {e}")),
        }
    }
}

/// Reads the control channel for the host's stop: SIGTERM to the command's
/// group, then SIGKILL to everything after a grace period.
fn listen_for_stop(mut tty: File, group: i32, done: &AtomicBool) {
    let mut byte = [0u8; 1];
    loop {
        match tty.read(&mut byte) {
            Ok(1) if byte[0] == HOST_STOP => break,
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
    if done.load(Ordering::Acquire) {
        return;
    }
    let _ = killpg(Pid::from_raw(group), Signal::SIGTERM);
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline && !done.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(50));
    }
    if !done.load(Ordering::Acquire) {
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    }
}

/// SIGKILL to every process but this one, and reap them (as PID 1, every
/// orphan is ours).
fn end_everything() {
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(10)),
            Ok(_) => {}
            Err(_) => return, // ECHILD: none left
        }
    }
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

/// The virtio-blk disks by the id the host gave each (`/sys/block/vdX/serial`).
fn find_disks() -> HashMap<String, String> {
    let mut disks = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return disks;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Ok(serial) = std::fs::read_to_string(entry.path().join("serial")) {
            let id = serial.trim_end_matches(['\0', '\n']).trim().to_string();
            if !id.is_empty() {
                disks.insert(id, format!("/dev/{name}"));
            }
        }
    }
    disks
}

fn mount_ext4(dev: &str, at: &str, flags: MsFlags) -> Result<(), String> {
    // noinit_itable: the host made the image with lazy inode tables; left
    // alone they stay sparse (a session's disks cost it almost nothing).
    let data = (!flags.contains(MsFlags::MS_RDONLY)).then_some("noinit_itable");
    mount(Some(dev), at, Some("ext4"), flags, data).map_err(|e| format!("mount {dev} on {at}: {e}"))
}

/// The image read-only below, the session's layer above: the overlay at
/// [`NEW_ROOT`]. Without a layer disk the upper dirs live in memory.
fn assemble_root(disks: &HashMap<String, String>) -> Result<(), String> {
    for dir in [LOWER, LAYER, NEW_ROOT] {
        std::fs::create_dir_all(dir).map_err(|e| format!("{dir}: {e}"))?;
    }
    let root = disks.get(ROOT_ID).ok_or("no root disk")?;
    mount_ext4(root, LOWER, MsFlags::MS_RDONLY | MsFlags::MS_NODEV)?;
    match disks.get(LAYER_ID) {
        Some(layer) => mount_ext4(layer, LAYER, MsFlags::MS_NODEV)?,
        None => mount(
            Some("tmpfs"),
            LAYER,
            Some("tmpfs"),
            MsFlags::MS_NODEV,
            None::<&str>,
        )
        .map_err(|e| format!("mount the layer: {e}"))?,
    }
    for dir in ["upper", "work"] {
        let path = format!("{LAYER}/{dir}");
        std::fs::create_dir_all(&path).map_err(|e| format!("{path}: {e}"))?;
    }
    let options = format!("lowerdir={LOWER},upperdir={LAYER}/upper,workdir={LAYER}/work");
    mount(
        Some("overlay"),
        NEW_ROOT,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|e| format!("mount the overlay root: {e}"))
}

/// /proc, /sys, /dev, /dev/shm, /tmp and /run inside the new root.
fn mount_system_dirs(root: &str) -> Result<(), String> {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let tmp = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    for (src, dir, fstype, flags, mode) in [
        ("proc", "/proc", "proc", nosuid, 0o555),
        ("sysfs", "/sys", "sysfs", nosuid, 0o555),
        ("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID, 0o755),
        ("tmpfs", "/dev/shm", "tmpfs", tmp, 0o1777),
        ("tmpfs", "/tmp", "tmpfs", tmp, 0o1777),
        ("tmpfs", "/run", "tmpfs", tmp, 0o755),
    ] {
        let at = format!("{root}{dir}");
        std::fs::create_dir_all(&at).map_err(|e| format!("{at}: {e}"))?;
        mount(Some(src), at.as_str(), Some(fstype), flags, None::<&str>)
            .map_err(|e| format!("mount {at}: {e}"))?;
        std::fs::set_permissions(&at, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("chmod {at}: {e}"))?;
    }
    Ok(())
}

/// Makes `root` the root: moved over `/`, then chroot (an initramfs cannot
/// be pivoted away; the command, unprivileged, cannot leave the chroot).
fn switch_root(root: &str) -> Result<(), String> {
    nix::unistd::chdir(root).map_err(|e| format!("chdir {root}: {e}"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| format!("moving the root: {e}"))?;
    nix::unistd::chroot(".").map_err(|e| format!("chroot: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))
}

/// `openclaw.ip=10.0.0.2/30 openclaw.gw=10.0.0.1`, via busybox ip (in the
/// initramfs, before any switch of root).
fn configure_network(ip: Option<String>, gw: Option<String>) -> Result<(), String> {
    sh(&["ip", "link", "set", "lo", "up"])?;
    let Some(ip) = ip else { return Ok(()) };
    sh(&["ip", "addr", "add", &ip, "dev", "eth0"])?;
    sh(&["ip", "link", "set", "eth0", "up"])?;
    if let Some(gw) = gw {
        sh(&["ip", "route", "add", "default", "via", &gw])?;
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

fn write_file(path: &str, data: &[u8]) -> Result<(), String> {
    if let Some(parent) = Path::new(path).parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    // A symlink here (resolv.conf → systemd's) is replaced, not followed.
    let _ = std::fs::remove_file(path);
    std::fs::write(path, data).map_err(|e| format!("{path}: {e}"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| format!("chmod {path}: {e}"))
}

/// The session CA becomes the whole system trust store: the trust
/// directories are emptied and every bundle the image has (and Debian's,
/// always) holds the session CA alone.
fn install_trust_anchor(ca: &[u8]) -> Result<(), String> {
    for dir in TRUST_DIRS {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.filter_map(|e| e.ok()) {
                let path = entry.path();
                let removed = if path.is_dir() && !path.is_symlink() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                removed.map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
    }
    for bundle in CA_BUNDLES {
        let exists = Path::new(bundle).symlink_metadata().is_ok()
            || Path::new(bundle).parent().is_some_and(Path::is_dir);
        if *bundle == CA_BUNDLE || exists {
            write_file(bundle, ca)?;
        }
    }
    Ok(())
}

/// (uid, gid) for the image's user: a name or number from its
/// `/etc/passwd`, `uid:gid`; never root, and [`TASK_UID`] when the image
/// names none (or names root).
fn resolve_user(user: Option<&str>) -> (u32, u32) {
    let default = (TASK_UID, TASK_UID);
    let Some(user) = user.filter(|u| !u.is_empty()) else {
        return default;
    };
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let lookup = |table: &str, name: &str| -> Option<(u32, u32)> {
        table.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&name)).then(|| {
                let id = f.get(2).and_then(|v| v.parse().ok())?;
                let gid = f.get(3).and_then(|v| v.parse().ok()).unwrap_or(id);
                Some((id, gid))
            })?
        })
    };
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let Some((uid, mut gid)) = user_part
        .parse::<u32>()
        .ok()
        .map(|uid| {
            let gid = passwd
                .lines()
                .find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.get(2) == Some(&user_part)).then(|| f.get(3)?.parse().ok())?
                })
                .unwrap_or(uid);
            (uid, gid)
        })
        .or_else(|| lookup(&passwd, user_part))
    else {
        return default;
    };
    if let Some(g) = group_part {
        gid = g
            .parse()
            .ok()
            .or_else(|| lookup(&group, g).map(|(id, _)| id))
            .unwrap_or(gid);
    }
    if uid == 0 {
        return default;
    }
    (uid, if gid == 0 { uid } else { gid })
}

fn read_nul_separated(path: &str) -> Result<Vec<String>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    Ok(bytes
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

fn chown_tree(path: &Path, uid: u32, gid: u32) -> Result<(), String> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .map_err(|e| format!("chown {}: {e}", path.display()))?;
    if path.is_dir() && !path.is_symlink() {
        for entry in std::fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))? {
            let entry = entry.map_err(|e| e.to_string())?;
            chown_tree(&entry.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// The control channel: framed writes to the console device in raw mode
/// (and the host's one-byte stop, read by [`listen_for_stop`]).
struct Control {
    tty: File,
}

impl Control {
    fn open() -> Result<Control, String> {
        let mut opened = Err(String::from("no control channel device"));
        for path in CONTROL_TTYS {
            opened = OpenOptions::new()
                .read(true)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// As PID 1 the init is the parent of every orphan: a command that
    /// starts helpers in the background and lets them go (a shell's
    /// `(cmd &)`, daemonizing tools) leaves them to the init, and an
    /// unreaped one stays a zombie, counted against the command user's
    /// process limit (`--pids-max`) until the session ends. The test
    /// process stands in for PID 1 as a child subreaper.
    #[test]
    fn orphans_are_reaped_while_the_command_runs() {
        nix::sys::prctl::set_child_subreaper(true).expect("subreaper");
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("orphan");
        // Exits 3 once its orphan is gone (reaped), 9 if it stayed a
        // zombie for 20 s.
        let script = r#"
            (sleep 0 & echo $! > "$1")
            orphan=$(cat "$1")
            i=0
            while [ $i -lt 200 ]; do
                [ -e "/proc/$orphan" ] || exit 3
                sleep 0.1
                i=$((i + 1))
            done
            exit 9
        "#;
        // `wait_for` reaps it by its pid, as `run_task` does the command.
        #[allow(clippy::zombie_processes)]
        let child = Command::new("/bin/sh")
            .args(["-c", script, "sh"])
            .arg(&pidfile)
            .spawn()
            .expect("sh");
        let code = wait_for(Pid::from_raw(child.id() as i32)).expect("wait");
        assert_eq!(code, 3, "the orphan stayed a zombie while the command ran");
    }
}
