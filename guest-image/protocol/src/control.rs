//! The control channel's frames: the guest init writes them to hvc0 (or
//! ttyS1), the VMM's `ControlDecoder` reads them byte by byte.
//!
//! A frame is `kind: u8, len: u16 LE, payload[len]`. The channel flows guest →
//! host, but for one byte the other way ([`HOST_STOP`]): the task's command
//! reaches the guest in the per-session cpio ([`crate::paths`]), its files
//! on the `/work` disk ([`crate::disks`]).

/// Bytes of the task's stdout.
pub const FRAME_STDOUT: u8 = 1;
/// Bytes of the task's stderr.
pub const FRAME_STDERR: u8 = 2;
/// The task's exit status: exactly 4 bytes, an `i32` LE in 0..=255 (as
/// `wait` reports it, 128+N for a signal); the host takes any other value
/// as a malformed frame.
pub const FRAME_EXIT: u8 = 3;
/// A boot mark: exactly 1 byte, a [`crate::marker`] code.
pub const FRAME_MARK: u8 = 4;

/// Host → guest, one byte on the same channel: stop the command now (the
/// session timed out or was interrupted). The guest init ends the command,
/// syncs and unmounts `/work`, reports a status and powers off, so what the
/// command wrote reaches the bundle as after a normal end.
pub const HOST_STOP: u8 = b'S';

/// Encodes one frame. A payload longer than the length field can say is cut
/// at `u16::MAX` bytes; callers with more to send split it first.
pub fn encode_frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len().min(u16::MAX as usize);
    let mut frame = Vec::with_capacity(3 + len);
    frame.push(kind);
    frame.extend_from_slice(&(len as u16).to_le_bytes());
    frame.extend_from_slice(&payload[..len]);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_kind_length_le_payload() {
        assert_eq!(encode_frame(FRAME_STDERR, b"ab"), [2, 2, 0, b'a', b'b']);
        assert_eq!(
            encode_frame(FRAME_EXIT, &(-3i32).to_le_bytes()),
            [3, 4, 0, 0xfd, 0xff, 0xff, 0xff]
        );
        assert_eq!(encode_frame(FRAME_STDOUT, b""), [1, 0, 0]);
    }

    #[test]
    fn the_payload_is_cut_at_what_the_length_field_can_say() {
        let frame = encode_frame(FRAME_STDOUT, &vec![7u8; 70_000]);
        assert_eq!(frame.len(), 3 + 65_535);
        assert_eq!(&frame[..3], &[FRAME_STDOUT, 0xff, 0xff]);
    }
}
