//! The keyboard controller, only so the guest can reset (our power-off).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub const I8042_PORT_BASE: u16 = 0x60;

/// Set when the guest writes the CPU-reset command; vCPU loops poll it.
pub struct ResetFlag(pub Arc<AtomicBool>);

impl vm_superio::Trigger for ResetFlag {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.store(true, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::devices::{BootMarker, Bus, ControlDecoder, IrqLine, SerialPort};
    use std::sync::Arc;

    #[test]
    fn reset_command_on_port_0x64_sets_the_flag() {
        let (tx, _rx) = crate::devices::control_queue(crate::devices::CONTROL_QUEUE_MAX);
        let bus = Bus::new(
            SerialPort::new(IrqLine::detached(), Box::new(std::io::sink())),
            SerialPort::new(IrqLine::detached(), Box::new(ControlDecoder::new(tx))),
            Arc::new(BootMarker::new(std::time::Instant::now())),
        );
        bus.pio_write(0x64, &[0xaa]);
        bus.pio_write(0x60, &[0xfe]);
        assert!(
            !bus.reset_requested(),
            "only 0xfe on the command port resets"
        );
        bus.pio_write(0x64, &[0xfe]);
        assert!(bus.reset_requested());
    }
}
