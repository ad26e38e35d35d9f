//! Terminals for the tests of `screen`, `console` and `approval_prompt`:
//! one that keeps what it was given, and one that takes nothing until
//! opened (a paused terminal, a pipe nobody reads).

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};

/// Keeps every byte written; clones share them.
#[derive(Clone, Default)]
pub struct Recorded(Arc<Mutex<Vec<u8>>>);

impl Write for Recorded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Recorded {
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().expect("lock").clone()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }
}

/// Takes nothing until [`open`](Stalled::open)ed (paused with Ctrl-S, a
/// pager not reading, a pipe nobody reads), then keeps what it gets in
/// `shown`.
#[derive(Clone, Default)]
pub struct Stalled {
    open: Arc<(Mutex<bool>, Condvar)>,
    pub shown: Recorded,
}

impl Stalled {
    pub fn open(&self) {
        *self.open.0.lock().expect("lock") = true;
        self.open.1.notify_all();
    }
}

impl Write for Stalled {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (open, cv) = &*self.open;
        let mut open = open.lock().expect("lock");
        while !*open {
            open = cv.wait(open).expect("wait");
        }
        self.shown.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
