//! Entering a network namespace: [`run_in`] runs a closure on a throwaway
//! thread that joined the namespace, the only such code in the workspace.
//! (The sandbox's init joins its namespace too, but as a new process, with
//! the file [`open`] returns.)

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use crate::NetnsError;

/// Opens the namespace at `path` (`/run/netns/<name>`, `/proc/<pid>/ns/net`)
/// for `setns(CLONE_NEWNET)`.
pub fn open(path: &Path) -> Result<File, NetnsError> {
    File::open(path).map_err(|source| NetnsError::EnterNetns {
        path: path.to_path_buf(),
        source,
    })
}

/// Runs `f` on a fresh thread that has entered the network namespace at
/// `path`, and returns its result. Sockets and taps created inside `f` stay
/// in that namespace after the thread ends (bind std sockets here, then
/// hand them to tokio with `from_std`), while the caller's threads stay
/// where they were. Blocks until `f` returns.
pub fn run_in<F, T>(path: &Path, f: F) -> Result<T, NetnsError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let file = open(path)?;
    let inner_path = path.to_path_buf();
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let handle = std::thread::Builder::new()
        .name(format!("netns-{name}"))
        .spawn(move || -> Result<T, NetnsError> {
            // setns(CLONE_NEWNET) changes only this thread, which is ours
            // and ends after `f`.
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                NetnsError::EnterNetns {
                    path: inner_path,
                    source: e.into(),
                }
            })?;
            Ok(f())
        })
        .map_err(|source| NetnsError::EnterNetns {
            path: path.to_path_buf(),
            source,
        })?;
    handle.join().map_err(|_| NetnsError::NetnsThreadPanicked)?
}
