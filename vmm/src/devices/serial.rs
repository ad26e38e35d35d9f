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
}
