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
/// The working directory the command starts in, when not `/work` (an
/// image's `WorkingDir`): one line.
pub const WORKDIR_PATH: &str = "/openclaw/session/workdir";
/// The user the command runs as, when the image names one (`name`, `uid`
/// or `uid:gid`): one line. Root is never used.
pub const USER_PATH: &str = "/openclaw/session/user";
/// The command's process limit (RLIMIT_NPROC of its user): one number.
pub const PIDS_MAX_PATH: &str = "/openclaw/session/pids_max";
/// The task's files in the initramfs-only guest without a `/work` disk.
pub const WORK_DIR: &str = "/openclaw/work";
/// Where the command's files are, on every backend: the `/work` disk
/// when there is one.
pub const WORK_MOUNT: &str = "/work";
/// The system CA bundle the session CA replaces (and the file the
/// `*_CA_*` variables name).
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Variables that point TLS clients at [`CA_BUNDLE`], set for every
/// command (the netns backend sets the same ones).
pub const CA_ENV: &[&str] = &[
    "SSL_CERT_FILE",
    "CURL_CA_BUNDLE",
    "REQUESTS_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_files_sit_in_the_session_dir() {
        for path in [
            CA_PATH,
            ENV_PATH,
            ARGV_PATH,
            WORKDIR_PATH,
            USER_PATH,
            PIDS_MAX_PATH,
        ] {
            let (dir, name) = path.rsplit_once('/').expect("absolute");
            assert_eq!(dir, SESSION_DIR);
            assert!(!name.is_empty());
        }
        assert!(!WORK_DIR.starts_with(SESSION_DIR));
    }
}
