//! The host<->guest control channel, decoded on the host.
//!
//! The wire format is `guest_protocol::control`'s: the guest init writes
//! `kind: u8, len: u16 LE, payload[len]` frames to hvc0 (or its second UART,
//! ttyS1), raw mode. Kinds: 1 stdout bytes, 2 stderr bytes, 3 exit status
//! (i32 LE, 0..=255), 4 boot mark (one byte: the marker code, recorded with its
//! arrival time). The task's command and files reach the guest in the
//! per-session cpio, so the channel only flows guest -> host.

use std::io::Write;
use std::sync::mpsc::Sender;
use std::sync::Arc;

use guest_protocol::{FRAME_EXIT, FRAME_MARK, FRAME_STDERR, FRAME_STDOUT};

use super::BootMarker;

/// What the guest reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlEvent {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(i32),
    /// A frame that breaks the format; decoding stops (fail closed).
    Malformed(String),
}

enum State {
    ExpectKind,
    ExpectLen { kind: u8, got: Vec<u8> },
    ExpectPayload { kind: u8, left: usize, got: Vec<u8> },
    Broken,
}

/// Byte-at-a-time decoder: the UART hands it one transmitted byte per write.
pub struct ControlDecoder {
    state: State,
    events: Sender<ControlEvent>,
    marker: Option<Arc<BootMarker>>,
}

impl ControlDecoder {
    pub fn new(events: Sender<ControlEvent>) -> ControlDecoder {
        ControlDecoder {
            state: State::ExpectKind,
            events,
            marker: None,
        }
    }

    /// Boot marks (frame kind 4) are timed by `marker`.
    pub fn with_marker(events: Sender<ControlEvent>, marker: Arc<BootMarker>) -> ControlDecoder {
        ControlDecoder {
            state: State::ExpectKind,
            events,
            marker: Some(marker),
        }
    }

    fn push(&mut self, byte: u8) {
        self.state = match std::mem::replace(&mut self.state, State::Broken) {
            State::ExpectKind => match byte {
                FRAME_STDOUT | FRAME_STDERR | FRAME_EXIT | FRAME_MARK => State::ExpectLen {
                    kind: byte,
                    got: Vec::with_capacity(2),
                },
                other => self.fail(format!("unknown frame kind {other}")),
            },
            State::ExpectLen { kind, mut got } => {
                got.push(byte);
                if got.len() < 2 {
                    State::ExpectLen { kind, got }
                } else {
                    let left = usize::from(u16::from_le_bytes([got[0], got[1]]));
                    if kind == FRAME_EXIT && left != 4 {
                        self.fail(format!("exit frame of {left} bytes"))
                    } else if kind == FRAME_MARK && left != 1 {
                        self.fail(format!("mark frame of {left} bytes"))
                    } else if left == 0 {
                        self.emit(kind, Vec::new())
                    } else {
                        State::ExpectPayload {
                            kind,
                            left,
                            got: Vec::with_capacity(left),
                        }
                    }
                }
            }
            State::ExpectPayload {
                kind,
                left,
                mut got,
            } => {
                got.push(byte);
                if left == 1 {
                    self.emit(kind, got)
                } else {
                    State::ExpectPayload {
                        kind,
                        left: left - 1,
                        got,
                    }
                }
            }
            State::Broken => State::Broken,
        };
    }

    /// Hands a whole frame on; the state after it (`Broken` for an exit
    /// status no command can have).
    fn emit(&self, kind: u8, payload: Vec<u8>) -> State {
        if kind == FRAME_MARK {
            if let (Some(marker), Some(code)) = (&self.marker, payload.first()) {
                marker.record(*code);
            }
            return State::ExpectKind;
        }
        let event = match kind {
            FRAME_STDOUT => ControlEvent::Stdout(payload),
            FRAME_STDERR => ControlEvent::Stderr(payload),
            _ => {
                let raw: [u8; 4] = payload.as_slice().try_into().unwrap_or([0xff; 4]);
                let code = i32::from_le_bytes(raw);
                // What `wait` can report (128+N for a signal): a status
                // outside it would be clamped into a different one later.
                if !(0..=255).contains(&code) {
                    return self.fail(format!("exit status {code} (not 0..=255)"));
                }
                ControlEvent::Exit(code)
            }
        };
        // Nobody listening any more is not the guest's problem.
        let _ = self.events.send(event);
        State::ExpectKind
    }

    fn fail(&self, why: String) -> State {
        let _ = self.events.send(ControlEvent::Malformed(why));
        State::Broken
    }
}

impl Write for ControlDecoder {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for b in buf {
            self.push(*b);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_protocol::encode_frame;
    use std::sync::mpsc::channel;

    fn decode(bytes: &[u8]) -> Vec<ControlEvent> {
        let (tx, rx) = channel();
        let mut d = ControlDecoder::new(tx);
        // One byte per write, as the UART delivers them.
        for b in bytes {
            d.write_all(&[*b]).expect("write");
        }
        drop(d);
        rx.iter().collect()
    }

    #[test]
    fn streams_and_exit_status_round_trip() {
        let mut wire = encode_frame(FRAME_STDOUT, b"hello\n");
        wire.extend(encode_frame(FRAME_STDERR, b"oops"));
        wire.extend(encode_frame(FRAME_STDOUT, b""));
        wire.extend(encode_frame(FRAME_EXIT, &3i32.to_le_bytes()));
        assert_eq!(
            decode(&wire),
            vec![
                ControlEvent::Stdout(b"hello\n".to_vec()),
                ControlEvent::Stderr(b"oops".to_vec()),
                ControlEvent::Stdout(vec![]),
                ControlEvent::Exit(3),
            ]
        );
    }

    #[test]
    fn mark_frames_time_the_boot_and_are_not_output() {
        let (tx, rx) = channel();
        let marker = Arc::new(BootMarker::new(std::time::Instant::now()));
        let mut d = ControlDecoder::with_marker(tx, marker.clone());
        let mut wire = encode_frame(FRAME_MARK, &[1]);
        wire.extend(encode_frame(FRAME_STDOUT, b"x"));
        d.write_all(&wire).expect("write");
        drop(d);
        assert!(marker.elapsed(1).is_some());
        assert_eq!(
            rx.iter().collect::<Vec<_>>(),
            vec![ControlEvent::Stdout(b"x".to_vec())]
        );
        assert!(matches!(
            &decode(&[FRAME_MARK, 2, 0, 1, 1])[0],
            ControlEvent::Malformed(_)
        ));
    }

    #[test]
    fn garbage_stops_decoding() {
        let mut wire = vec![9u8];
        wire.extend(encode_frame(FRAME_EXIT, &0i32.to_le_bytes()));
        let events = decode(&wire);
        assert_eq!(events.len(), 1);
        assert!(matches!(&events[0], ControlEvent::Malformed(m) if m.contains("kind 9")));
        let bad_exit = [FRAME_EXIT, 2, 0, 0, 0];
        assert!(matches!(&decode(&bad_exit)[0], ControlEvent::Malformed(_)));
    }

    /// The guest init reports what `wait` gave it: 0..=255 (128+N for a
    /// signal). Anything else is no command's status: a guest that sent -1
    /// left the session "failed" without an exit code while `openclaw run`
    /// exited 0 (the code is clamped into 0..=255).
    #[test]
    fn an_exit_status_outside_0_to_255_is_malformed() {
        for code in [0i32, 7, 255] {
            assert_eq!(
                decode(&encode_frame(FRAME_EXIT, &code.to_le_bytes())),
                vec![ControlEvent::Exit(code)]
            );
        }
        for code in [-1i32, -3, 256, i32::MIN, i32::MAX] {
            let events = decode(&encode_frame(FRAME_EXIT, &code.to_le_bytes()));
            assert!(
                matches!(&events[..], [ControlEvent::Malformed(m)] if m.contains("exit status")),
                "{code}: {events:?}"
            );
        }
    }

    #[test]
    fn long_payloads_are_capped_at_the_length_field() {
        let big = vec![b'x'; 70_000];
        let frame = encode_frame(FRAME_STDOUT, &big);
        assert_eq!(frame.len(), 3 + 65535);
        assert_eq!(
            decode(&frame),
            vec![ControlEvent::Stdout(vec![b'x'; 65535])]
        );
    }
}
