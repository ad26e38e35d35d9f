//! Paths inside the guest: the host writes the per-session cpio with them
//! (`guest_image::SessionFiles`), the guest init reads them.

/// The session's directory.
pub const SESSION_DIR: &str = "/openclaw/session";
/// The session CA (PEM): the guest's only trust anchor.
pub const CA_PATH: &str = "/openclaw/session/ca.pem";
/// The task's environment: `NAME=value` entries, each ended by a NUL.
pub const ENV_PATH: &str = "/openclaw/session/env";
/// The task's argv: entries, each ended by a NUL.
pub const ARGV_PATH: &str = "/openclaw/session/argv";
/// The task's files; the task runs here.
pub const WORK_DIR: &str = "/openclaw/work";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_files_sit_in_the_session_dir() {
        for path in [CA_PATH, ENV_PATH, ARGV_PATH] {
            let (dir, name) = path.rsplit_once('/').expect("absolute");
            assert_eq!(dir, SESSION_DIR);
            assert!(!name.is_empty());
        }
        assert!(!WORK_DIR.starts_with(SESSION_DIR));
    }
}
