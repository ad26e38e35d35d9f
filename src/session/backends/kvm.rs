//! The kvm backend's part of a session: the microVM that runs the command
//! (our VMM, the guest image, a per-session cpio with the session CA,
//! placeholders, argv and the `--workdir` files), its NIC on a tap inside
//! the session network, its control channel streamed to `console.log`, and
//! its end: the guest's exit status, Ctrl-C/SIGTERM, a timeout, or a failure
//! named by its stage.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use guest_image::{GuestImage, SessionFiles};
use guest_protocol::cmdline as switch;
use tokio::sync::mpsc;
use vmm::{ControlEvent, ExitReason, Kernel, MicroVm, NetConfig, RunningVm, Tap, VmConfig, VmExit};

use super::BackendContext;
use crate::bundle;
use crate::session::config::{shutdown_signal, EXIT_INTERRUPTED, EXIT_TIMEOUT};
use crate::session::console::Console;

/// The guest kernel's own serial console (boot messages), beside the task's
/// output in `console.log`.
pub const GUEST_CONSOLE_LOG: &str = "guest-console.log";
/// How long the guest may take to reach its init's first act. Hardware KVM
/// needs tens of milliseconds, KVM emulated inside QEMU several seconds.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// Overrides [`BOOT_TIMEOUT`] (a duration such as `5s`), for tests.
const BOOT_TIMEOUT_ENV: &str = "OPENCLAW_KVM_BOOT_TIMEOUT";
/// The task files travel in guest memory (the per-session cpio).
const MAX_WORKDIR_BYTES: u64 = 64 << 20;
/// After the exit status arrived, how long the guest may take to power off.
const POWER_OFF_GRACE: Duration = Duration::from_secs(10);
const VCPUS: u8 = 1;

/// The session's view of the VM's life, sent from the thread that owns it.
enum VmNote {
    Booted(Duration),
}

/// How the VM's life ended.
enum VmEnd {
    /// The guest reported the task's exit status.
    Exited(i32, VmExit),
    /// The guest ended without reporting one (crash, panic, power-off).
    Died(VmExit),
    /// The control channel carried a malformed frame: stopped (fail closed).
    Malformed(String),
    /// No boot marker within the boot timeout.
    BootTimeout(Duration, VmExit),
    /// The session's `--timeout` passed.
    TimedOut,
    /// Ctrl-C / SIGTERM.
    Stopped,
}

/// Runs the command in a microVM booted from `image` to its end; returns
/// its exit code.
pub async fn supervise(context: BackendContext<'_>, image: &GuestImage) -> Result<i32> {
    let BackendContext {
        config,
        dir,
        info,
        network,
        ca_pem,
        enforcement,
        console,
        monitor: out,
        started,
    } = context;
    let proxy_ip = network.proxy_addr();
    let files = collect_workdir(config.workdir.as_deref())?;
    let mut env: Vec<(String, String)> = enforcement
        .sandbox_env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(task) = &config.task {
        env.push(("OPENCLAW_TASK".into(), task.clone()));
    }
    env.push(("OPENCLAW_SESSION".into(), info.id.clone()));
    let cpio = SessionFiles {
        ca_pem: ca_pem.as_bytes().to_vec(),
        env,
        argv: config.command.clone(),
        files,
    }
    .to_cpio()
    .context("preparing the guest's session files")?;

    let mem_mib = (config.memory_bytes >> 20).max(64);
    let tap = tap_name(&info.id);
    let mut vm_config = VmConfig::new(
        Kernel::File(image.kernel.clone()),
        dir.join(GUEST_CONSOLE_LOG),
    );
    vm_config.initramfs = Some(image.initramfs.clone());
    vm_config.extra_cpio = Some(cpio);
    vm_config.mem_mib = mem_mib;
    vm_config.vcpus = VCPUS;
    vm_config.cmdline = format!(
        "quiet {}={}/{} {}={proxy_ip} {}={proxy_ip}",
        switch::IP,
        network.guest_addr(),
        network.prefix_len(),
        switch::GATEWAY,
        switch::RESOLVER,
    );
    // The tap is created inside the session network and handed to the VM.
    // The proxy's address lives on the namespace's lo; the tap only needs a
    // route to the guest (below).
    let (netns_path, name) = (network.path().to_path_buf(), tap.clone());
    let nic =
        tokio::task::spawn_blocking(move || ::netns::run_in(&netns_path, move || Tap::open(&name)))
            .await?
            .context("entering the session network")?
            .context("creating the guest's NIC in the session network")?;
    vm_config.net = Some(NetConfig {
        tap: nic,
        mac: guest_mac(),
    });
    out.note(&format!(
        "starting the microVM ({VCPUS} vCPU, {mem_mib} MiB, NIC {tap} in the session network)"
    ));

    let vm = tokio::task::spawn_blocking(move || MicroVm::boot(vm_config))
        .await?
        .context("VM start")?;
    // From here the VM owner thread tears the VM down on every path.
    // Blocking (`ip`), a few milliseconds; the guest needs far longer
    // before it sends its first packet.
    let route = tokio::task::block_in_place(|| network.route_guest_via(&tap));
    if let Err(err) = route {
        drop(tokio::task::spawn_blocking(move || vm.kill()).await);
        return Err(err).context("connecting the guest's NIC to the session network");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let boot_timeout = boot_timeout();
    let deadline = config.timeout.map(|t| Instant::now() + t);
    let (notes, mut notes_rx) = mpsc::unbounded_channel();
    let owner = {
        let stop = stop.clone();
        let console = console.clone();
        tokio::task::spawn_blocking(move || {
            let end = own_vm(vm, console.clone(), stop, boot_timeout, deadline, notes);
            // The guest's last output on screen before the closing lines.
            console.flush();
            end
        })
    };
    tokio::pin!(owner);
    let signal = shutdown_signal();
    tokio::pin!(signal);
    let mut interrupted = false;
    let mut booted = false;
    let end = loop {
        tokio::select! {
            end = &mut owner => break end?,
            Some(VmNote::Booted(boot)) = notes_rx.recv(), if !booted => {
                booted = true;
                let ready_ms = started.elapsed().as_millis() as u64;
                info.sandbox_ready_ms = Some(ready_ms);
                info.boot_ms = Some(boot.as_millis() as u64);
                info.vm_vcpus = Some(VCPUS);
                info.vm_mem_mib = Some(mem_mib);
                bundle::write_info(dir, info)?;
                out.startup(info, ready_ms);
            }
            _ = &mut signal, if !interrupted => {
                interrupted = true;
                out.note("interrupted: stopping the microVM, denying pending approvals");
                stop.store(true, Ordering::Release);
            }
        }
    };
    console.record(&mut info.bounds);
    match end {
        VmEnd::Exited(code, exit) => {
            tracing::debug!(reason = ?exit.reason, total = ?exit.total_time, "microVM ended");
            Ok(code)
        }
        VmEnd::Stopped => Ok(EXIT_INTERRUPTED),
        VmEnd::TimedOut => {
            out.note(&format!(
                "timed out after {}: the microVM was stopped",
                humantime::format_duration(config.timeout.unwrap_or_default())
            ));
            Ok(EXIT_TIMEOUT)
        }
        VmEnd::BootTimeout(after, exit) => bail!(
            "boot: the guest did not reach its init within {} ({}; its kernel log is in {})",
            humantime::format_duration(after),
            describe(&exit),
            dir.join(GUEST_CONSOLE_LOG).display()
        ),
        VmEnd::Malformed(what) => bail!(
            "control channel: the guest sent a malformed frame ({what}); the microVM was \
             stopped"
        ),
        VmEnd::Died(exit) => bail!(
            "run: the guest ended without reporting the command's exit status ({}; see {})",
            describe(&exit),
            dir.join(GUEST_CONSOLE_LOG).display()
        ),
    }
}

fn describe(exit: &VmExit) -> String {
    let reason = match &exit.reason {
        ExitReason::Error(e) => format!("vCPU error: {e}"),
        other => format!("{other:?}"),
    };
    match exit.boot_time {
        Some(boot) => format!("{reason}, boot marker at {boot:.2?}"),
        None => format!("{reason}, boot marker never reached"),
    }
}

/// Runs on a blocking thread that owns the VM: streams the control channel
/// to the console, reports the boot, and ends the VM on every path.
fn own_vm(
    mut vm: RunningVm,
    console: Console,
    stop: Arc<AtomicBool>,
    boot_timeout: Duration,
    deadline: Option<Instant>,
    notes: mpsc::UnboundedSender<VmNote>,
) -> VmEnd {
    let Some(control) = vm.take_control() else {
        return VmEnd::Died(vm.kill());
    };
    let started = Instant::now();
    let mut booted = false;
    let mut status = None;
    let deliver = |event: ControlEvent| -> Option<Result<i32, String>> {
        match event {
            ControlEvent::Stdout(bytes) => console.write(false, &bytes),
            ControlEvent::Stderr(bytes) => console.write(true, &bytes),
            ControlEvent::Exit(code) => return Some(Ok(code)),
            ControlEvent::Malformed(what) => return Some(Err(what)),
        }
        None
    };
    loop {
        match control.recv_timeout(Duration::from_millis(25)) {
            Ok(event) => match deliver(event) {
                Some(Ok(code)) => {
                    status = Some(code);
                    break;
                }
                Some(Err(what)) => {
                    vm.kill();
                    return VmEnd::Malformed(what);
                }
                None => {}
            },
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if !booted {
            if let Some(boot) = vm.boot_time() {
                booted = true;
                let _ = notes.send(VmNote::Booted(boot));
            }
        }
        if stop.load(Ordering::Acquire) {
            vm.kill();
            return VmEnd::Stopped;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            vm.kill();
            return VmEnd::TimedOut;
        }
        if !booted && started.elapsed() >= boot_timeout {
            return VmEnd::BootTimeout(boot_timeout, vm.kill());
        }
        // The guest reset or failed without an exit frame.
        if vm.has_ended() {
            break;
        }
    }
    if !booted {
        if let Some(boot) = vm.boot_time() {
            let _ = notes.send(VmNote::Booted(boot));
        }
    }
    // The guest powers off right after its exit frame.
    let exit = vm.wait(Some(POWER_OFF_GRACE));
    for event in control.try_iter() {
        if let Some(Ok(code)) = deliver(event) {
            status.get_or_insert(code);
        }
    }
    match status {
        Some(code) => VmEnd::Exited(code, exit),
        None => VmEnd::Died(exit),
    }
}

fn boot_timeout() -> Duration {
    std::env::var(BOOT_TIMEOUT_ENV)
        .ok()
        .and_then(|v| humantime::parse_duration(&v).ok())
        .unwrap_or(BOOT_TIMEOUT)
}

/// `oc-<last 6 of the session id>`: unique enough inside the session's own
/// namespace (the only place it exists), within IFNAMSIZ.
fn tap_name(session_id: &str) -> String {
    let tail: String = session_id
        .chars()
        .rev()
        .filter(char::is_ascii_alphanumeric)
        .take(6)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("oc-{tail}")
}

/// A random, locally administered unicast MAC.
fn guest_mac() -> [u8; 6] {
    let mut mac: [u8; 6] = rand::random();
    mac[0] = (mac[0] & 0xfc) | 0x02;
    mac
}

/// The `--workdir` files for the guest's `/work`: regular files with their
/// modes, relative paths; symlinks and special files are left out (the
/// guest gets a copy, not the host directory).
fn collect_workdir(root: Option<&Path>) -> Result<Vec<(String, u32, Vec<u8>)>> {
    let Some(root) = root else {
        return Ok(Vec::new());
    };
    let mut files = Vec::new();
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let entry = entry?;
            let kind = entry.file_type()?;
            let path = entry.path();
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                use std::os::unix::fs::PermissionsExt;
                let mode = entry.metadata()?.permissions().mode() & 0o777;
                let data =
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                total += data.len() as u64;
                if total > MAX_WORKDIR_BYTES {
                    bail!(
                        "the --workdir files exceed {} MiB, which the kvm backend copies into \
                         guest memory",
                        MAX_WORKDIR_BYTES >> 20
                    );
                }
                let relative = path
                    .strip_prefix(root)
                    .context("walking the workdir")?
                    .to_string_lossy()
                    .into_owned();
                files.push((relative, mode, data));
            }
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_fit_ifnamsiz() {
        let name = tap_name("20261122-101500-3f9a1c");
        assert_eq!(name, "oc-3f9a1c");
        assert!(name.len() < 16);
    }

    #[test]
    fn guest_macs_are_local_unicast() {
        for _ in 0..32 {
            let mac = guest_mac();
            assert_eq!(mac[0] & 0x03, 0x02, "{mac:02x?}");
        }
    }

    #[test]
    fn workdir_files_keep_paths_and_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("sub/deeper")).expect("mkdir");
        std::fs::write(dir.path().join("agent.sh"), b"echo hi").expect("write");
        std::fs::set_permissions(
            dir.path().join("agent.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
        std::fs::write(dir.path().join("sub/deeper/data.txt"), b"x").expect("write");
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).expect("symlink");
        let files = collect_workdir(Some(dir.path())).expect("collect");
        let names: Vec<(&str, u32)> = files.iter().map(|(p, m, _)| (p.as_str(), *m)).collect();
        assert_eq!(names, [("agent.sh", 0o755), ("sub/deeper/data.txt", 0o644)]);
        assert!(collect_workdir(None).expect("none").is_empty());
    }
}
