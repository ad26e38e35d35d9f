//! virtio-net backed by the session's tap device.

pub mod device;
pub mod tap;

pub use device::{Net, NetConfig};
pub use tap::{Tap, TapError};
