//! 16550 UARTs (vm-superio): COM1 is the console, COM2 the control channel.

use std::io::Write;

use vmm_sys_util::eventfd::EventFd;

pub const COM1_BASE: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
pub const COM2_BASE: u16 = 0x2f8;
pub const COM2_IRQ: u32 = 3;

/// An interrupt line into the in-kernel IOAPIC (an irqfd), or none in tests.
pub struct IrqLine(Option<EventFd>);

impl IrqLine {
    pub fn new(evt: EventFd) -> IrqLine {
        IrqLine(Some(evt))
    }

    /// A line connected to nothing, for device tests without a VM.
    pub fn detached() -> IrqLine {
        IrqLine(None)
    }
}

impl vm_superio::Trigger for IrqLine {
    type E = std::io::Error;

    fn trigger(&self) -> Result<(), Self::E> {
        match &self.0 {
            Some(evt) => evt.write(1),
            None => Ok(()),
        }
    }
}

/// One UART whose transmitted bytes go to `out`.
pub struct SerialPort {
    uart: vm_superio::Serial<IrqLine, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
}

impl SerialPort {
    pub fn new(irq: IrqLine, out: Box<dyn Write + Send>) -> SerialPort {
        SerialPort {
            uart: vm_superio::Serial::new(irq, out),
        }
    }

    pub fn read(&mut self, offset: u8) -> u8 {
        self.uart.read(offset)
    }

    pub fn write(&mut self, offset: u8, value: u8) {
        // A failed write to the sink (full disk, closed pipe) must not stop
        // the guest; the console is best effort.
        if let Err(e) = self.uart.write(offset, value) {
            ratelog::debug!(error = ?e, "serial write failed");
        }
    }

    pub fn flush(&mut self) {
        let _ = self.uart.writer_mut().flush();
    }
}

/// Default cap of the guest console's log (`VmConfig::console_max_bytes`):
/// a verbose kernel boot log is a few hundred KiB at most.
pub const DEFAULT_CONSOLE_LOG_MAX: u64 = 8 << 20;

/// Where COM1's bytes go: a writer that keeps the first `max` bytes, then
/// writes one note and drops the rest. How much the guest prints is its
/// choice (a `rep outsb` moves a page per VM exit); how much host disk that
/// takes must not be.
pub struct CappedLog<W: Write> {
    inner: W,
    max: u64,
    left: u64,
    noted: bool,
}

impl<W: Write> CappedLog<W> {
    pub fn new(inner: W, max: u64) -> CappedLog<W> {
        CappedLog {
            inner,
            max,
            left: max,
            noted: false,
        }
    }
}

impl<W: Write> Write for CappedLog<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let keep = usize::try_from(self.left).map_or(buf.len(), |left| left.min(buf.len()));
        if keep > 0 {
            let n = self.inner.write(&buf[..keep])?;
            self.left -= n as u64;
            return Ok(n);
        }
        if !self.noted && !buf.is_empty() {
            self.noted = true;
            // Best effort, like the rest of the console: a failed note must
            // not stop the guest.
            let _ = write!(
                self.inner,
                "\n[openclaw: the guest console reached its cap of {} bytes; the rest is dropped]\n",
                self.max
            );
            let _ = self.inner.flush();
        }
        // Dropped, yet reported written: the UART must not see an error.
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmitted_bytes_reach_the_sink_and_raise_the_interrupt() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let out = Shared::default();
        let mut port = SerialPort::new(
            IrqLine::new(evt.try_clone().expect("clone")),
            Box::new(out.clone()),
        );
        port.write(1, 0x02); // IER: transmitter-empty interrupt on
        for b in b"hi\n" {
            port.write(0, *b);
        }
        assert_eq!(&*out.0.lock().expect("lock"), b"hi\n");
        assert!(evt.read().expect("interrupt was raised") >= 1);
        // LSR says the transmitter is empty, so the driver may send more.
        assert_ne!(port.read(5) & 0x20, 0);
    }

    /// COM1 goes to `guest-console.log` through [`CappedLog`], as the
    /// builder wires it: a guest `rep outsb`-ing pages to 0x3f8 stops
    /// growing the host file at the cap, and the log says so once.
    #[test]
    fn com1_output_past_the_console_log_cap_is_dropped_with_one_note() {
        use crate::devices::{BootMarker, Bus, ControlDecoder};
        const MAX: u64 = 64 << 10;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("guest-console.log");
        let file = std::fs::File::create(&path).expect("create");
        let (tx, _rx) = crate::devices::control_queue(crate::devices::CONTROL_QUEUE_MAX);
        let bus = Bus::new(
            SerialPort::new(
                IrqLine::detached(),
                Box::new(CappedLog::new(std::io::LineWriter::new(file), MAX)),
            ),
            SerialPort::new(IrqLine::detached(), Box::new(ControlDecoder::new(tx))),
            Arc::new(BootMarker::new(std::time::Instant::now())),
        );
        let page = [b'A'; 4096];
        for _ in 0..4 * MAX / page.len() as u64 {
            bus.pio_write(COM1_BASE, &page); // one `rep outsb` exit
        }
        bus.console
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .flush();
        let log = std::fs::read(&path).expect("read");
        let kept = log.iter().take_while(|b| **b == b'A').count() as u64;
        assert_eq!(kept, MAX, "the first MAX bytes are kept");
        let note = String::from_utf8_lossy(&log[MAX as usize..]);
        assert_eq!(
            note,
            format!("\n[openclaw: the guest console reached its cap of {MAX} bytes; the rest is dropped]\n"),
            "one note, then nothing"
        );
    }
}
