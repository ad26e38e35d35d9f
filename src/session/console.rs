//! The sandboxed command's output: passed through to our stdout/stderr as it
//! comes, and kept in the bundle's `console.log`. The netns backend pumps
//! the sandbox's pipes; the kvm backend writes what the guest's control
//! channel delivers.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};

#[derive(Clone)]
pub struct Console {
    log: Arc<Mutex<File>>,
}

impl Console {
    pub fn create(path: &Path) -> Result<Self> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Console {
            log: Arc::new(Mutex::new(file)),
        })
    }

    /// Copies both streams until they close; the returned future ends when
    /// both have (after the sandbox exited).
    pub fn pump(
        &self,
        stdout: Option<File>,
        stderr: Option<File>,
    ) -> impl std::future::Future<Output = ()> {
        let out = stdout.map(|f| self.spawn_copy(f, false));
        let err = stderr.map(|f| self.spawn_copy(f, true));
        async move {
            for handle in [out, err].into_iter().flatten() {
                let _ = handle.await;
            }
        }
    }

    /// Passes `bytes` through to our stdout or stderr and appends them to
    /// the log.
    pub fn write(&self, is_stderr: bool, bytes: &[u8]) {
        // Pass-through failing (closed terminal) must not stop the log.
        if is_stderr {
            let _ = std::io::stderr().write_all(bytes);
        } else {
            let mut stdout = std::io::stdout();
            let _ = stdout.write_all(bytes).and_then(|()| stdout.flush());
        }
        if let Ok(mut log) = self.log.lock() {
            let _ = log.write_all(bytes);
        }
    }

    fn spawn_copy(&self, mut from: File, is_stderr: bool) -> tokio::task::JoinHandle<()> {
        let console = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut buf = [0u8; 8192];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                console.write(is_stderr, &buf[..n]);
            }
        })
    }
}
