//! The host<->guest control channel, decoded on the host.
//!
//! The wire format is `guest_protocol::control`'s: the guest init writes
//! `kind: u8, len: u16 LE, payload[len]` frames to hvc0 (or its second UART,
//! ttyS1), raw mode. Kinds: 1 stdout bytes, 2 stderr bytes, 3 exit status
//! (i32 LE, 0..=255), 4 boot mark (one byte: the marker code, recorded with its
//! arrival time). The task's command and files reach the guest in the
//! per-session cpio, so the channel only flows guest -> host.
//!
//! The decoder runs on a vCPU thread, which must never wait for the host
//! (a vCPU that waits cannot be killed promptly): decoded events go into a
//! queue bounded by [`CONTROL_QUEUE_MAX`]; output that does not fit is
//! dropped and counted, and the count reaches the host as
//! [`ControlEvent::Lost`] ahead of the next event that fits.

use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

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
    /// This many bytes of stdout/stderr were dropped here, before this
    /// event, because the host had not taken what was queued.
    Lost(u64),
}

/// The most the control queue holds: payload bytes plus [`EVENT_CHARGE`]
/// per event. The host takes events as they come (writing them to a file),
/// so this is only reached when it stalls or stops reading (after the exit
/// frame, during the power-off grace).
pub const CONTROL_QUEUE_MAX: usize = 4 << 20;
/// What one queued event costs beyond its payload (the event itself and
/// the channel's slot), so a flood of empty frames is bounded too.
const EVENT_CHARGE: usize = 64;
/// Room past the bound kept for the exit status and a malformed-frame
/// report, which are never dropped for output's sake (a handful: a guest
/// repeating exit frames gets the rest dropped).
const STATUS_ROOM: usize = 16 * EVENT_CHARGE;

/// What the sending and receiving ends share: how much is queued, and how
/// much output was dropped since the last [`ControlEvent::Lost`].
#[derive(Debug, Default)]
struct QueueCount {
    charged: AtomicUsize,
    lost: AtomicU64,
}

fn charge_of(event: &ControlEvent) -> usize {
    match event {
        ControlEvent::Stdout(b) | ControlEvent::Stderr(b) => b.len() + EVENT_CHARGE,
        ControlEvent::Malformed(m) => m.len() + EVENT_CHARGE,
        ControlEvent::Exit(_) | ControlEvent::Lost(_) => EVENT_CHARGE,
    }
}

/// The vCPU side of the control queue: never blocks.
#[derive(Clone)]
pub struct ControlSender {
    tx: Sender<ControlEvent>,
    count: Arc<QueueCount>,
    max: usize,
}

/// The host side of the control queue.
pub struct ControlReceiver {
    rx: Receiver<ControlEvent>,
    count: Arc<QueueCount>,
}

/// A control queue holding at most `max` (see [`CONTROL_QUEUE_MAX`]).
pub fn control_queue(max: usize) -> (ControlSender, ControlReceiver) {
    let (tx, rx) = mpsc::channel();
    let count = Arc::new(QueueCount::default());
    (
        ControlSender {
            tx,
            count: count.clone(),
            max,
        },
        ControlReceiver { rx, count },
    )
}

impl ControlSender {
    /// Queues `event` if it fits (with a pending [`ControlEvent::Lost`]
    /// ahead of it); output that does not fit is counted as lost.
    pub fn send(&self, event: ControlEvent) {
        let output = match &event {
            ControlEvent::Stdout(b) | ControlEvent::Stderr(b) => Some(b.len() as u64),
            _ => None,
        };
        let limit = if output.is_some() {
            self.max
        } else {
            self.max + STATUS_ROOM
        };
        let lost = self.count.lost.load(Ordering::Acquire);
        let cost = charge_of(&event) + if lost > 0 { EVENT_CHARGE } else { 0 };
        let reserved = self
            .count
            .charged
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                (c + cost <= limit).then_some(c + cost)
            });
        if reserved.is_err() {
            if let Some(n) = output {
                self.count.lost.fetch_add(n, Ordering::AcqRel);
            }
            return;
        }
        if lost > 0 {
            // Another sender may have counted more since: it says so itself.
            let n = self.count.lost.swap(0, Ordering::AcqRel);
            if n > 0 {
                self.deliver(ControlEvent::Lost(n));
            } else {
                self.count.charged.fetch_sub(EVENT_CHARGE, Ordering::AcqRel);
            }
        }
        self.deliver(event);
    }

    fn deliver(&self, event: ControlEvent) {
        // Nobody listening any more is not the guest's problem; the charge
        // stays, so nothing more is queued for nobody.
        let _ = self.tx.send(event);
    }
}

impl ControlReceiver {
    /// The next event, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<ControlEvent, RecvTimeoutError> {
        let event = self.rx.recv_timeout(timeout)?;
        self.release(&event);
        Ok(event)
    }

    /// The events queued now, without waiting.
    pub fn try_iter(&self) -> impl Iterator<Item = ControlEvent> + '_ {
        self.rx.try_iter().inspect(|e| self.release(e))
    }

    /// What the queue holds now (payload plus the per-event charge).
    pub fn queued(&self) -> usize {
        self.count.charged.load(Ordering::Acquire)
    }

    fn release(&self, event: &ControlEvent) {
        self.count
            .charged
            .fetch_sub(charge_of(event), Ordering::AcqRel);
    }
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
    events: ControlSender,
    marker: Option<Arc<BootMarker>>,
}

impl ControlDecoder {
    pub fn new(events: ControlSender) -> ControlDecoder {
        ControlDecoder {
            state: State::ExpectKind,
            events,
            marker: None,
        }
    }

    /// Boot marks (frame kind 4) are timed by `marker`.
    pub fn with_marker(events: ControlSender, marker: Arc<BootMarker>) -> ControlDecoder {
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
        self.events.send(event);
        State::ExpectKind
    }

    fn fail(&self, why: String) -> State {
        self.events.send(ControlEvent::Malformed(why));
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

    fn decode(bytes: &[u8]) -> Vec<ControlEvent> {
        let (tx, rx) = control_queue(CONTROL_QUEUE_MAX);
        let mut d = ControlDecoder::new(tx);
        // One byte per write, as the UART delivers them.
        for b in bytes {
            d.write_all(&[*b]).expect("write");
        }
        drop(d);
        rx.try_iter().collect()
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
        let (tx, rx) = control_queue(CONTROL_QUEUE_MAX);
        let marker = Arc::new(BootMarker::new(std::time::Instant::now()));
        let mut d = ControlDecoder::with_marker(tx, marker.clone());
        let mut wire = encode_frame(FRAME_MARK, &[1]);
        wire.extend(encode_frame(FRAME_STDOUT, b"x"));
        d.write_all(&wire).expect("write");
        drop(d);
        assert!(marker.elapsed(1).is_some());
        assert_eq!(
            rx.try_iter().collect::<Vec<_>>(),
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

    /// The decoder runs on a vCPU thread: a host that does not read (it
    /// stalled, or waits out the power-off grace) must neither make it wait
    /// nor let the guest's output pile up in memory. Past the bound output
    /// is dropped and counted; the count comes ahead of the next event that
    /// fits, and the exit status still gets through a full queue.
    #[test]
    fn a_host_that_does_not_read_holds_at_most_the_bound_and_hears_what_was_lost() {
        const MAX: usize = 256 << 10;
        let (tx, rx) = control_queue(MAX);
        let mut d = ControlDecoder::new(tx);
        let frame = encode_frame(FRAME_STDOUT, &[b'y'; 60_000]);
        let mut sent = 0u64;
        for _ in 0..1000 {
            d.write_all(&frame).expect("write");
            sent += 60_000;
            assert!(rx.queued() <= MAX, "{} queued", rx.queued());
        }
        // Empty frames cost something too.
        let empty = encode_frame(FRAME_STDERR, b"");
        for _ in 0..100_000 {
            d.write_all(&empty).expect("write");
        }
        assert!(rx.queued() <= MAX, "{} queued", rx.queued());
        d.write_all(&encode_frame(FRAME_EXIT, &0i32.to_le_bytes()))
            .expect("write");

        let first: Vec<ControlEvent> = rx.try_iter().collect();
        let kept: u64 = first
            .iter()
            .map(|e| match e {
                ControlEvent::Stdout(b) => b.len() as u64,
                _ => 0,
            })
            .sum();
        assert!(kept > 0 && kept < sent, "{kept} of {sent}");
        let lost: u64 = first
            .iter()
            .map(|e| match e {
                ControlEvent::Lost(n) => *n,
                _ => 0,
            })
            .sum();
        assert_eq!(first.last(), Some(&ControlEvent::Exit(0)));
        // One count, after the last output that was kept (the gap's place).
        let at = first
            .iter()
            .position(|e| matches!(e, ControlEvent::Lost(_)))
            .expect("a Lost event");
        assert_eq!(first[at], ControlEvent::Lost(lost));
        assert!(!first[at..]
            .iter()
            .any(|e| matches!(e, ControlEvent::Stdout(_))));
        assert_eq!(kept + lost, sent);
        assert_eq!(rx.queued(), 0, "what was taken is no longer charged");

        // Once read, output flows again, and nothing more is said lost.
        d.write_all(&encode_frame(FRAME_STDOUT, b"after\n"))
            .expect("write");
        assert_eq!(
            rx.try_iter().collect::<Vec<_>>(),
            vec![ControlEvent::Stdout(b"after\n".to_vec())]
        );
    }
}
