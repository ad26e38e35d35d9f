//! The kvm backend's part of a session: the microVM that runs the command
//! (our VMM; the guest kernel; the image's root filesystem read-only with
//! the session's own writable layer, or the initramfs-only guest; a
//! per-session cpio with the session CA, placeholders and argv; the
//! `--workdir` files on a `/work` disk), its NIC on a tap inside the session
//! network, its control channel streamed to `console.log`, and its end: the
//! guest's exit status, Ctrl-C/SIGTERM or a timeout (the guest is asked to
//! stop, so `/work` is written out), or a failure named by its stage.
//! Afterwards `/work` is copied into the bundle's `work/` (as on netns) and
//! the session's disks are deleted.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use guest_image::ext4;
use guest_image::SessionFiles;
use guest_protocol::cmdline as switch;
use guest_protocol::disks::{LAYER_ID, ROOT_ID, WORK_ID};
use tokio::sync::mpsc;
use vmm::{
    ControlEvent, DiskConfig, ExitReason, Kernel, MicroVm, NetConfig, RunningVm, Tap, VmConfig,
    VmExit,
};

use super::choice::KvmBoot;
use super::image::Root;
use super::BackendContext;
use crate::bundle;
use crate::session::config::{shutdown_signal, RunEnd};
use crate::session::console::Console;

/// The guest kernel's own serial console (boot messages), beside the task's
/// output in `console.log`.
pub const GUEST_CONSOLE_LOG: &str = "guest-console.log";
/// How long the guest may take to reach its init's first act. Hardware KVM
/// needs tens of milliseconds, KVM emulated inside QEMU several seconds.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// Overrides [`BOOT_TIMEOUT`] (a duration such as `5s`), for tests.
const BOOT_TIMEOUT_ENV: &str = "OPENCLAW_KVM_BOOT_TIMEOUT";
/// After the exit status arrived, how long the guest may take to power off.
const POWER_OFF_GRACE: Duration = Duration::from_secs(10);
/// After the host asked the guest to stop (timeout, Ctrl-C): how long it
/// may take to end the command, write out `/work` and report, before the
/// VM is killed (and `/work` is read as it is).
const STOP_GRACE: Duration = Duration::from_secs(15);
const VCPUS: u8 = 1;
/// The session's disks, in the bundle while the VM runs; deleted after.
const DISKS_DIR: &str = "vm";

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

/// Runs the command in a microVM booted from `boot` to its end, then copies
/// `/work` into the bundle; returns how the command ended.
pub async fn supervise(context: BackendContext<'_>, boot: &KvmBoot) -> Result<RunEnd> {
    let dir = context.dir.to_path_buf();
    let disks = dir.join(DISKS_DIR);
    let result = run_vm(context, boot, &disks).await;
    // Whatever happened, the command's /work comes back and the session's
    // disks go (the writable layer with them).
    let work_image = disks.join("work.ext4");
    let copied = if work_image.exists() {
        let work = dir.join("work");
        tokio::task::spawn_blocking(move || ext4::dump_tree(&work_image, &work))
            .await
            .map_err(anyhow::Error::from)
            .and_then(|r| r.map_err(anyhow::Error::from))
    } else {
        Ok(())
    };
    if let Err(err) = std::fs::remove_dir_all(&disks) {
        if err.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("removing the session's disks in {}: {err}", disks.display());
        }
    }
    let code = result?;
    copied.context("copying /work out of the microVM into the bundle's work/")?;
    Ok(code)
}

async fn run_vm(context: BackendContext<'_>, boot: &KvmBoot, disks: &Path) -> Result<RunEnd> {
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
    // The image's own environment first, then the session's (placeholders,
    // OPENCLAW_*); the guest init adds the CA variables last.
    let manifest = match &boot.root {
        Root::Image(image) => Some(&image.manifest),
        Root::Initramfs => None,
    };
    let mut env: Vec<(String, String)> = manifest
        .map(|m| m.env.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.extend(
        enforcement
            .sandbox_env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    if let Some(task) = &config.task {
        env.push(("OPENCLAW_TASK".into(), task.clone()));
    }
    env.push(("OPENCLAW_SESSION".into(), info.id.clone()));
    let cpio = SessionFiles {
        ca_pem: ca_pem.as_bytes().to_vec(),
        env,
        argv: config.command.clone(),
        files: Vec::new(),
        workdir: manifest
            .map(|m| m.working_dir.clone())
            .filter(|w| !w.is_empty()),
        user: manifest.map(|m| m.user.clone()).filter(|u| !u.is_empty()),
        pids_max: Some(config.pids_max),
    }
    .to_cpio()
    .context("preparing the guest's session files")?;

    // The session's disks: /work (a copy of --workdir) and, with a root
    // image, the writable layer above it.
    std::fs::create_dir_all(disks).with_context(|| format!("creating {}", disks.display()))?;
    let work_image = disks.join("work.ext4");
    let layer_image = disks.join("layer.ext4");
    let (workdir, with_layer) = (config.workdir.clone(), manifest.is_some());
    let (work_disk, layer_disk) = (work_image.clone(), layer_image.clone());
    tokio::task::spawn_blocking(move || {
        ext4::make_session_disks(
            workdir.as_deref(),
            &work_disk,
            with_layer.then_some(layer_disk.as_path()),
        )
    })
    .await?
    .context("writing the session's disks (/work and the writable layer)")?;

    let mem_mib = (config.memory_bytes >> 20).max(64);
    let tap = tap_name(&info.id);
    let image = &boot.guest;
    let mut vm_config = VmConfig::new(
        Kernel::File(image.kernel.clone()),
        dir.join(GUEST_CONSOLE_LOG),
    );
    vm_config.extra_cpio = Some(cpio);
    vm_config.disks.push(DiskConfig {
        path: work_image,
        read_only: false,
        id: WORK_ID.into(),
    });
    match &boot.root {
        Root::Image(root) => {
            vm_config.initramfs = Some(image.boot.clone());
            vm_config.disks.push(DiskConfig {
                path: root.rootfs.clone(),
                read_only: true,
                id: ROOT_ID.into(),
            });
            vm_config.disks.push(DiskConfig {
                path: layer_image,
                read_only: false,
                id: LAYER_ID.into(),
            });
        }
        Root::Initramfs => vm_config.initramfs = Some(image.initramfs.clone()),
    }
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
    let boot_root = boot.root.label();
    out.note(&format!(
        "starting the microVM ({VCPUS} vCPU, {mem_mib} MiB, image {boot_root}, NIC {tap} in the \
         session network)"
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
                info.vm_image = Some(boot_root.clone());
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
            Ok(RunEnd::Exited(code))
        }
        VmEnd::Stopped => Ok(RunEnd::Interrupted),
        VmEnd::TimedOut => {
            out.note(&format!(
                "timed out after {}: the microVM was stopped",
                humantime::format_duration(config.timeout.unwrap_or_default())
            ));
            Ok(RunEnd::TimedOut)
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
    // Set once the guest was asked to stop: since when, and how it ends.
    let mut stopping: Option<(Instant, fn() -> VmEnd)> = None;
    let deliver = |event: ControlEvent| -> Option<Result<i32, String>> {
        match event {
            ControlEvent::Stdout(bytes) => console.write(false, &bytes),
            ControlEvent::Stderr(bytes) => console.write(true, &bytes),
            ControlEvent::Exit(code) => return Some(Ok(code)),
            ControlEvent::Malformed(what) => return Some(Err(what)),
            ControlEvent::Lost(bytes) => console.lost(bytes),
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
        // A stop is asked of the guest first, so /work is written out; a
        // guest that does not answer in time is killed.
        match stopping {
            None => {
                let end: Option<fn() -> VmEnd> = if stop.load(Ordering::Acquire) {
                    Some(|| VmEnd::Stopped)
                } else if deadline.is_some_and(|d| Instant::now() >= d) {
                    Some(|| VmEnd::TimedOut)
                } else {
                    None
                };
                if let Some(end) = end {
                    if booted {
                        vm.request_stop();
                        stopping = Some((Instant::now(), end));
                    } else {
                        vm.kill();
                        return end();
                    }
                }
            }
            Some((since, end)) if since.elapsed() >= STOP_GRACE => {
                vm.kill();
                return end();
            }
            Some(_) => {}
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
    // The guest powers off right after its exit frame; what it still sends
    // meanwhile goes on to the console (the control queue is bounded, and
    // drops what waits too long).
    let grace = Instant::now();
    let exit = loop {
        let left = POWER_OFF_GRACE.saturating_sub(grace.elapsed());
        if vm.has_ended() || left.is_zero() {
            break vm.wait(Some(Duration::ZERO));
        }
        match control.recv_timeout(left.min(Duration::from_millis(25))) {
            Ok(event) => {
                if let Some(Ok(code)) = deliver(event) {
                    status.get_or_insert(code);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break vm.wait(Some(left)),
        }
    };
    if let Some((_, end)) = stopping {
        return end();
    }
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
}
