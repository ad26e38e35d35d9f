//! The boot recipe: guest memory, kernel, initramfs, boot structures, devices,
//! vCPUs, in that order, each stage with its own `StartVmError` variant; and
//! the running VM's lifecycle (wait, kill, teardown).

use std::fs::File;
use std::io::{LineWriter, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use linux_loader::loader::{self, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::arch::{
    self, mptable::MAX_VCPUS, CMDLINE_ADDR, EBDA_START, HIMEM_START, ZERO_PAGE_ADDR,
};
use crate::arch::{VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE};
use crate::devices::virtio::block::{Block, DiskConfig, DiskError, DiskFile};
use crate::devices::virtio::console::{Console, ConsoleInput};
use crate::devices::virtio::mmio::MmioDevice;
use crate::devices::virtio::net::{Net, NetConfig};
use crate::devices::virtio::{MmioTransport, VirtioInterrupt};
use crate::devices::{
    boot_marker, control_queue, BootMarker, Bus, CappedLog, ControlDecoder, ControlEvent,
    ControlReceiver, IrqLine, SerialPort, COM1_IRQ, COM2_IRQ, CONTROL_QUEUE_MAX,
    DEFAULT_CONSOLE_LOG_MAX,
};
use crate::vstate::memory::{create_guest_memory, GuestMemory, GuestMemoryError};
use crate::vstate::vcpu::{Vcpu, VcpuError, VcpuKick, VcpuStop};
use crate::vstate::vm::{Vm, VmError};

/// virtio-mmio slot i interrupts on line 5 + i (ISA IRQs 3 and 4 are the UARTs).
const VIRTIO_FIRST_IRQ: u32 = 5;
/// The MP table routes IRQs 0..24 to the IOAPIC.
const VIRTIO_LAST_IRQ: u32 = 23;

/// Wires slot `slot`'s interrupt and announces the device on the command line.
fn virtio_interrupt(
    vm: &Vm,
    slot: u64,
    cmdline: &mut linux_loader::cmdline::Cmdline,
) -> Result<Arc<VirtioInterrupt>, StartVmError> {
    let irq = VIRTIO_FIRST_IRQ + slot as u32;
    if irq > VIRTIO_LAST_IRQ {
        return Err(StartVmError::TooManyDevices(slot + 1));
    }
    let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(StartVmError::Irq)?;
    vm.register_irq(&evt, irq)
        .map_err(StartVmError::RegisterIrq)?;
    cmdline
        .add_virtio_mmio_device(
            VIRTIO_MMIO_SIZE,
            GuestAddress(VIRTIO_MMIO_BASE + slot * VIRTIO_MMIO_SIZE),
            irq,
            None,
        )
        .map_err(StartVmError::Cmdline)?;
    Ok(Arc::new(VirtioInterrupt::new(IrqLine::new(evt))))
}

/// What to boot.
#[derive(Clone, Debug)]
pub enum Kernel {
    /// An uncompressed `vmlinux` ELF or a `bzImage`.
    File(PathBuf),
    /// Raw 64-bit code copied to `load_addr` and entered there in long mode:
    /// hand-assembled smoke guests and probes.
    Flat { code: Vec<u8>, load_addr: u64 },
}

/// Everything one microVM is made of.
#[derive(Debug)]
pub struct VmConfig {
    pub kernel: Kernel,
    /// The base initramfs (built once).
    pub initramfs: Option<PathBuf>,
    /// A per-session cpio appended after the base (the kernel unpacks both).
    pub extra_cpio: Option<Vec<u8>>,
    /// Arguments after [`arch::BASE_CMDLINE`].
    pub cmdline: String,
    pub mem_mib: u64,
    pub vcpus: u8,
    /// Where the guest console (COM1) is written.
    pub console: PathBuf,
    /// Bytes of the guest console kept in `console`; the rest is dropped
    /// after one note (default [`DEFAULT_CONSOLE_LOG_MAX`]).
    pub console_max_bytes: u64,
    /// The NIC: a virtio-net device on a tap the caller opened in the
    /// session's namespace.
    pub net: Option<NetConfig>,
    /// virtio-blk disks, in this order after the NIC (the guest tells them
    /// apart by their ids, not their order).
    pub disks: Vec<DiskConfig>,
}

impl VmConfig {
    /// 256 MiB, one vCPU, no initramfs.
    pub fn new(kernel: Kernel, console: PathBuf) -> VmConfig {
        VmConfig {
            kernel,
            initramfs: None,
            extra_cpio: None,
            cmdline: String::new(),
            mem_mib: 256,
            vcpus: 1,
            console,
            console_max_bytes: DEFAULT_CONSOLE_LOG_MAX,
            net: None,
            disks: Vec::new(),
        }
    }
}

/// The boot stage that failed.
#[derive(Debug, thiserror::Error)]
pub enum StartVmError {
    #[error("bad vCPU count {0} (1..={MAX_VCPUS})")]
    VcpuCount(u8),
    #[error("creating the KVM VM: {0}")]
    CreateVm(#[source] VmError),
    #[error("allocating guest memory: {0}")]
    GuestMemory(#[source] GuestMemoryError),
    #[error("registering guest memory with KVM: {0}")]
    RegisterMemory(#[source] VmError),
    #[error("opening kernel {path}: {source}")]
    OpenKernel {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("loading the kernel: {0}")]
    LoadKernel(#[source] loader::Error),
    #[error("the flat guest does not fit in guest memory at {0:#x}")]
    LoadFlat(u64),
    #[error("reading initramfs {path}: {source}")]
    ReadInitramfs {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("initramfs of {size} bytes does not fit above the kernel")]
    InitramfsTooLarge { size: u64 },
    #[error("copying the initramfs into guest memory: {0}")]
    LoadInitramfs(#[source] vm_memory::GuestMemoryError),
    #[error("invalid kernel command line: {0}")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error("writing the command line to guest memory: {0}")]
    LoadCommandline(#[source] loader::Error),
    #[error("writing the zero page or MP table: {0}")]
    BootParams(#[source] vm_memory::GuestMemoryError),
    #[error("opening console log {path}: {source}")]
    Console {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    OpenDisk(#[source] DiskError),
    #[error("{0} virtio devices do not fit the interrupt lines")]
    TooManyDevices(u64),
    #[error("wiring device interrupts: {0}")]
    Irq(#[source] std::io::Error),
    #[error("registering device interrupts: {0}")]
    RegisterIrq(#[source] VmError),
    #[error("creating vCPU: {0}")]
    CreateVcpu(#[source] VcpuError),
    #[error("configuring vCPU: {0}")]
    ConfigureVcpu(#[source] VcpuError),
    #[error("starting vCPU thread: {0}")]
    SpawnVcpu(#[source] std::io::Error),
    #[error("installing the vCPU kick signal handler: {0}")]
    Signal(#[source] vmm_sys_util::errno::Error),
}

/// How the VM ended.
#[derive(Debug)]
pub enum ExitReason {
    /// The guest reset the machine: its way of powering off.
    Reset,
    /// Triple fault.
    Shutdown,
    Halted,
    /// `kill()` was called.
    Killed,
    /// `wait()`'s deadline passed; the VM was stopped.
    TimedOut,
    /// A vCPU failed.
    Error(VcpuError),
}

/// What came back from the task over the control channel.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TaskOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_status: Option<i32>,
    pub malformed: Option<String>,
    /// Output dropped because the control queue was full (nobody read it
    /// while the VM ran: at most [`CONTROL_QUEUE_MAX`] is kept).
    pub lost: u64,
}

impl TaskOutput {
    pub fn absorb(&mut self, event: ControlEvent) {
        match event {
            ControlEvent::Stdout(b) => self.stdout.extend(b),
            ControlEvent::Stderr(b) => self.stderr.extend(b),
            ControlEvent::Exit(code) => self.exit_status = Some(code),
            ControlEvent::Malformed(m) => self.malformed = Some(m),
            ControlEvent::Lost(n) => self.lost += n,
        }
    }
}

#[derive(Debug)]
pub struct VmExit {
    pub reason: ExitReason,
    /// VM creation -> the guest init's first act.
    pub boot_time: Option<Duration>,
    /// VM creation -> just before the task was started.
    pub task_start_time: Option<Duration>,
    /// Whatever the caller did not take through [`RunningVm::take_control`].
    pub task: TaskOutput,
    /// VM creation -> teardown finished.
    pub total_time: Duration,
}

pub struct MicroVm;

impl MicroVm {
    /// Builds and starts a VM. Returns once the vCPUs run.
    pub fn boot(mut config: VmConfig) -> Result<RunningVm, StartVmError> {
        if config.vcpus == 0 || config.vcpus > MAX_VCPUS {
            return Err(StartVmError::VcpuCount(config.vcpus));
        }
        install_kick_handler()?;
        let created = Instant::now();
        let vm = Vm::new().map_err(StartVmError::CreateVm)?;
        let mem = create_guest_memory(config.mem_mib).map_err(StartVmError::GuestMemory)?;
        vm.register_memory(&mem)
            .map_err(StartVmError::RegisterMemory)?;
        let mem_end = mem.last_addr().0 + 1;

        let (entry, kernel_end, header) = load_kernel(&mem, &config.kernel)?;
        let initrd = load_initramfs(&mem, &config, kernel_end, mem_end)?;

        let mut cmdline = arch::build_cmdline(&config.cmdline).map_err(StartVmError::Cmdline)?;
        // virtio-mmio slots: 0 the control channel's virtio-console, then the
        // NIC (when configured), then the disks.
        let (control_tx, control_rx) = control_queue(CONTROL_QUEUE_MAX);
        let marker = Arc::new(BootMarker::new(created));
        // Set by `stop_vcpus`; the block device also watches it (see
        // `Block::stop_on`).
        let stop = Arc::new(AtomicBool::new(false));
        let mut virtio: Vec<Box<dyn MmioDevice>> = Vec::new();
        let console_decoder = ControlDecoder::with_marker(control_tx.clone(), marker.clone());
        let interrupt = virtio_interrupt(&vm, 0, &mut cmdline)?;
        let console = Console::new(Box::new(console_decoder));
        let console_input = console.input();
        virtio.push(Box::new(MmioTransport::new(
            console,
            mem.clone(),
            interrupt,
        )));
        if let Some(net_config) = config.net.take() {
            let net = Net::new(net_config);
            let interrupt = virtio_interrupt(&vm, 1, &mut cmdline)?;
            virtio.push(Box::new(MmioTransport::new(net, mem.clone(), interrupt)));
        }
        for disk in &config.disks {
            let file =
                DiskFile::open(&disk.path, disk.read_only).map_err(StartVmError::OpenDisk)?;
            let interrupt = virtio_interrupt(&vm, virtio.len() as u64, &mut cmdline)?;
            virtio.push(Box::new(MmioTransport::new(
                Block::new(file, &disk.id).stop_on(stop.clone()),
                mem.clone(),
                interrupt,
            )));
        }
        loader::load_cmdline(&mem, GuestAddress(CMDLINE_ADDR), &cmdline)
            .map_err(StartVmError::LoadCommandline)?;
        let cmdline_len = cmdline
            .as_cstring()
            .map_err(StartVmError::Cmdline)?
            .as_bytes()
            .len();
        let params = arch::build_boot_params(header, cmdline_len, initrd, mem_end);
        mem.write_obj(params, GuestAddress(ZERO_PAGE_ADDR))
            .map_err(StartVmError::BootParams)?;
        mem.write_slice(
            &arch::build_mptable(EBDA_START, config.vcpus),
            GuestAddress(EBDA_START),
        )
        .map_err(StartVmError::BootParams)?;

        let console_file =
            File::create(&config.console).map_err(|source| StartVmError::Console {
                path: config.console.clone(),
                source,
            })?;
        let com1_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(StartVmError::Irq)?;
        let com2_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(StartVmError::Irq)?;
        vm.register_irq(&com1_evt, COM1_IRQ)
            .map_err(StartVmError::RegisterIrq)?;
        vm.register_irq(&com2_evt, COM2_IRQ)
            .map_err(StartVmError::RegisterIrq)?;
        let decoder = ControlDecoder::with_marker(control_tx, marker.clone());
        let mut bus = Bus::new(
            SerialPort::new(
                IrqLine::new(com1_evt),
                Box::new(CappedLog::new(
                    LineWriter::new(console_file),
                    config.console_max_bytes,
                )),
            ),
            SerialPort::new(IrqLine::new(com2_evt), Box::new(decoder)),
            marker,
        );
        for device in virtio {
            bus.add_virtio(device);
        }
        let bus = Arc::new(bus);

        // The TSC-deadline timer (as Firecracker advertises it): the guest
        // then skips calibrating its LAPIC timer against the PIT at boot.
        let tsc_deadline = vm.kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer);
        let mut vcpus = Vec::with_capacity(usize::from(config.vcpus));
        for index in 0..config.vcpus {
            let vcpu = Vcpu::new(&vm.fd, index).map_err(StartVmError::CreateVcpu)?;
            vcpu.configure_common(&vm.cpuid, config.vcpus, tsc_deadline)
                .map_err(StartVmError::ConfigureVcpu)?;
            if index == 0 {
                vcpu.configure_boot(&mem, entry)
                    .map_err(StartVmError::ConfigureVcpu)?;
            }
            vcpus.push(vcpu);
        }

        let (done_tx, done_rx) = channel();
        let mut running = RunningVm {
            threads: Vec::new(),
            kicks: Vec::new(),
            stop: stop.clone(),
            done: done_rx,
            control: Some(control_rx),
            console_input,
            bus: bus.clone(),
            created,
            _vm: vm,
            _mem: mem,
        };
        for vcpu in vcpus {
            running.kicks.push(vcpu.kick_handle());
            let (bus, stop, done) = (bus.clone(), stop.clone(), done_tx.clone());
            let handle = std::thread::Builder::new()
                .name(format!("vcpu{}", vcpu.index))
                .spawn(move || {
                    let result = vcpu.run(&bus, &stop);
                    let _ = done.send(result);
                })
                .map_err(StartVmError::SpawnVcpu)?; // Drop of `running` stops started vCPUs.
            running.threads.push(handle);
        }
        Ok(running)
    }
}

fn load_kernel(
    mem: &GuestMemory,
    kernel: &Kernel,
) -> Result<(u64, u64, Option<loader::bootparam::setup_header>), StartVmError> {
    match kernel {
        Kernel::Flat { code, load_addr } => {
            mem.write_slice(code, GuestAddress(*load_addr))
                .map_err(|_| StartVmError::LoadFlat(*load_addr))?;
            Ok((*load_addr, load_addr + code.len() as u64, None))
        }
        Kernel::File(path) => {
            let mut file = File::open(path).map_err(|source| StartVmError::OpenKernel {
                path: path.clone(),
                source,
            })?;
            let mut magic = [0u8; 4];
            file.read_exact(&mut magic)
                .map_err(|source| StartVmError::OpenKernel {
                    path: path.clone(),
                    source,
                })?;
            let highmem = Some(GuestAddress(HIMEM_START));
            if &magic == b"\x7fELF" {
                let r = loader::Elf::load(mem, None, &mut file, highmem)
                    .map_err(StartVmError::LoadKernel)?;
                Ok((r.kernel_load.0, r.kernel_end, None))
            } else {
                let r = loader::BzImage::load(mem, None, &mut file, highmem)
                    .map_err(StartVmError::LoadKernel)?;
                // The 64-bit entry point is 0x200 past the protected-mode code.
                Ok((r.kernel_load.0 + 0x200, r.kernel_end, r.setup_header))
            }
        }
    }
}

fn load_initramfs(
    mem: &GuestMemory,
    config: &VmConfig,
    kernel_end: u64,
    mem_end: u64,
) -> Result<Option<(u64, u64)>, StartVmError> {
    let read_error = |path: &PathBuf| {
        let path = path.clone();
        move |source| StartVmError::ReadInitramfs { path, source }
    };
    // The base image is read straight into guest memory: one copy instead
    // of three (file -> buffer -> grown buffer -> guest), ~22 MB each.
    let base = match &config.initramfs {
        Some(path) => {
            let file = File::open(path).map_err(read_error(path))?;
            let len = file.metadata().map_err(read_error(path))?.len();
            Some((file, len))
        }
        None => None,
    };
    let base_len = base.as_ref().map_or(0, |(_, len)| *len);
    let extra = config.extra_cpio.as_deref().unwrap_or_default();
    // Each cpio must start 4-byte aligned for the kernel's unpacker; the
    // gap stays zero (fresh anonymous memory).
    let extra_at = if extra.is_empty() {
        base_len
    } else {
        base_len.next_multiple_of(4)
    };
    let size = extra_at + extra.len() as u64;
    if size == 0 {
        return Ok(None);
    }
    let addr = arch::layout::initrd_load_addr(mem_end, size, kernel_end)
        .ok_or(StartVmError::InitramfsTooLarge { size })?;
    if let Some((mut file, len)) = base {
        let len = usize::try_from(len).map_err(|_| StartVmError::InitramfsTooLarge { size })?;
        mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
            .map_err(StartVmError::LoadInitramfs)?;
    }
    if !extra.is_empty() {
        mem.write_slice(extra, GuestAddress(addr + extra_at))
            .map_err(StartVmError::LoadInitramfs)?;
    }
    Ok(Some((addr, size)))
}

/// A no-op handler: the signal only has to interrupt KVM_RUN.
extern "C" fn kick_signal_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn install_kick_handler() -> Result<(), StartVmError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| result = register_signal_handler(SIGRTMIN(), kick_signal_handler));
    result.map_err(StartVmError::Signal)
}

/// A booted VM. Dropping it stops the vCPUs and frees everything.
pub struct RunningVm {
    threads: Vec<JoinHandle<()>>,
    kicks: Vec<VcpuKick>,
    stop: Arc<AtomicBool>,
    done: Receiver<Result<VcpuStop, VcpuError>>,
    control: Option<ControlReceiver>,
    console_input: ConsoleInput,
    bus: Arc<Bus>,
    created: Instant,
    // Dropped after the vCPU threads are joined (see `Drop`).
    _vm: Vm,
    _mem: GuestMemory,
}

impl RunningVm {
    /// The control channel's events, to stream them while the VM runs.
    /// After this, `wait()` returns an empty `TaskOutput`. The queue holds
    /// at most [`CONTROL_QUEUE_MAX`]: output the caller does not take in
    /// time is dropped (never waited for) and counted as
    /// [`ControlEvent::Lost`].
    pub fn take_control(&mut self) -> Option<ControlReceiver> {
        self.control.take()
    }

    /// Asks the guest init to stop the command (`guest_protocol`'s
    /// `HOST_STOP` over the console): it ends the command, writes out and
    /// unmounts `/work`, reports a status and powers off. The caller still
    /// bounds the wait (a guest that ignores it is killed).
    pub fn request_stop(&self) {
        self.console_input.send(&[guest_protocol::HOST_STOP]);
    }

    /// Time from VM creation to the guest init's first act, once it happened.
    pub fn boot_time(&self) -> Option<Duration> {
        self.bus.marker.elapsed(boot_marker::MARKER_INIT_STARTED)
    }

    /// Whether the guest has ended on its own (a vCPU left its run loop:
    /// reset, shutdown, halt or an error), so `wait` returns at once. Lets a
    /// caller that streams the control channel notice a guest that died
    /// without saying goodbye.
    pub fn has_ended(&self) -> bool {
        self.threads.iter().any(JoinHandle::is_finished)
    }

    /// Waits until the guest ends or `timeout` passes, then tears down.
    pub fn wait(mut self, timeout: Option<Duration>) -> VmExit {
        let first = match timeout {
            Some(t) => self.done.recv_timeout(t),
            None => self.done.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let reason = match first {
            Ok(Ok(VcpuStop::Reset)) => ExitReason::Reset,
            Ok(Ok(VcpuStop::Shutdown)) => ExitReason::Shutdown,
            Ok(Ok(VcpuStop::Halted)) => ExitReason::Halted,
            Ok(Ok(VcpuStop::Kicked)) => ExitReason::Killed,
            Ok(Err(e)) => ExitReason::Error(e),
            Err(RecvTimeoutError::Timeout) => ExitReason::TimedOut,
            Err(RecvTimeoutError::Disconnected) => ExitReason::Killed,
        };
        self.stop_vcpus();
        let mut task = TaskOutput::default();
        if let Some(rx) = self.control.take() {
            for event in rx.try_iter() {
                task.absorb(event);
            }
        }
        VmExit {
            reason,
            boot_time: self.boot_time(),
            task_start_time: self.bus.marker.elapsed(boot_marker::MARKER_TASK_STARTED),
            task,
            total_time: self.created.elapsed(),
        }
    }

    /// Stops the VM now.
    pub fn kill(mut self) -> VmExit {
        self.stop_vcpus();
        let mut exit = self.wait(Some(Duration::ZERO));
        exit.reason = ExitReason::Killed;
        exit
    }

    /// Asks every vCPU to leave KVM_RUN and joins the threads.
    fn stop_vcpus(&mut self) {
        self.stop.store(true, Ordering::Release);
        for kick in &self.kicks {
            kick.request_exit();
        }
        for handle in self.threads.drain(..) {
            // Interrupts a KVM_RUN in progress; immediate_exit covers the
            // window before the next one. A thread that already ended
            // ignores it (not yet joined, so its id is still valid).
            let _ = handle.kill(SIGRTMIN());
            let _ = handle.join();
        }
        lock_flush(&self.bus);
    }
}

fn lock_flush(bus: &Bus) {
    bus.console
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .flush();
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        self.stop_vcpus();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(initramfs: Option<PathBuf>, extra: Option<Vec<u8>>) -> VmConfig {
        let mut c = VmConfig::new(
            Kernel::Flat {
                code: vec![0xf4],
                load_addr: HIMEM_START,
            },
            PathBuf::from("/dev/null"),
        );
        c.initramfs = initramfs;
        c.extra_cpio = extra;
        c
    }

    #[test]
    fn initramfs_and_session_cpio_land_4_byte_aligned_at_the_top_of_ram() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().join("base.cpio");
        std::fs::write(&base, b"BASE!").expect("write");
        let mem = create_guest_memory(32).expect("memory");
        let mem_end = mem.last_addr().0 + 1;
        let c = config(Some(base), Some(b"xyz".to_vec()));
        let (addr, size) = load_initramfs(&mem, &c, HIMEM_START + 0x1000, mem_end)
            .expect("loads")
            .expect("an initramfs");
        assert_eq!(size, 8 + 3, "base, padding to 4 bytes, session cpio");
        assert!(addr + size <= mem_end && addr > HIMEM_START);
        let mut got = [0u8; 11];
        mem.read_slice(&mut got, GuestAddress(addr)).expect("read");
        assert_eq!(&got, b"BASE!\0\0\0xyz");

        let only_extra = config(None, Some(b"xyz".to_vec()));
        let (addr, size) = load_initramfs(&mem, &only_extra, HIMEM_START, mem_end)
            .expect("loads")
            .expect("an initramfs");
        assert_eq!(size, 3);
        let mut got = [0u8; 3];
        mem.read_slice(&mut got, GuestAddress(addr)).expect("read");
        assert_eq!(&got, b"xyz");
        assert!(matches!(
            load_initramfs(&mem, &config(None, None), HIMEM_START, mem_end),
            Ok(None)
        ));
    }

    #[test]
    fn a_missing_initramfs_names_its_path() {
        let mem = create_guest_memory(16).expect("memory");
        let missing = PathBuf::from("/nonexistent/initramfs.cpio");
        let err = load_initramfs(
            &mem,
            &config(Some(missing.clone()), None),
            HIMEM_START,
            16 << 20,
        )
        .expect_err("missing file");
        assert!(
            matches!(&err, StartVmError::ReadInitramfs { path, .. } if *path == missing),
            "{err}"
        );
    }
}
