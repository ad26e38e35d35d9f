//! The per-session cpio appended to the base initramfs: the session CA (the
//! guest's only trust anchor), credential placeholders, the task's argv and
//! its files. Never real secrets: placeholders are what the proxy swaps.

use guest_protocol::paths::{
    ARGV_PATH, CA_PATH, ENV_PATH, PIDS_MAX_PATH, SESSION_DIR, USER_PATH, WORKDIR_PATH, WORK_DIR,
};

use crate::cpio::CpioWriter;

#[derive(Debug, Clone, Default)]
pub struct SessionFiles {
    /// PEM of the session CA the proxy signs with.
    pub ca_pem: Vec<u8>,
    /// Environment for the task (placeholders, proxy settings).
    pub env: Vec<(String, String)>,
    /// The command to run; argv[0] is looked up in the guest's PATH.
    pub argv: Vec<String>,
    /// Task files, relative to the work dir: (path, mode, contents). Only
    /// for guests without a `/work` disk.
    pub files: Vec<(String, u32, Vec<u8>)>,
    /// Where the command starts when not `/work` (an image's WorkingDir).
    pub workdir: Option<String>,
    /// The user the command runs as when the image names one.
    pub user: Option<String>,
    /// The command's process limit.
    pub pids_max: Option<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionImageError {
    #[error("the task has no command")]
    EmptyArgv,
    #[error("argv or environment contains a NUL byte or a newline in a name")]
    BadString,
    #[error("task file path {0:?} escapes the work dir")]
    BadPath(String),
}

impl SessionFiles {
    /// The cpio bytes to pass as `VmConfig::extra_cpio`.
    pub fn to_cpio(&self) -> Result<Vec<u8>, SessionImageError> {
        if self.argv.is_empty() {
            return Err(SessionImageError::EmptyArgv);
        }
        let mut argv = Vec::new();
        for a in &self.argv {
            if a.contains('\0') {
                return Err(SessionImageError::BadString);
            }
            argv.extend_from_slice(a.as_bytes());
            argv.push(0);
        }
        let mut env = Vec::new();
        for (k, v) in &self.env {
            if k.is_empty() || k.contains(['\0', '=', '\n']) || v.contains('\0') {
                return Err(SessionImageError::BadString);
            }
            env.extend_from_slice(k.as_bytes());
            env.push(b'=');
            env.extend_from_slice(v.as_bytes());
            env.push(0);
        }
        let mut w = CpioWriter::new();
        w.dir("openclaw", 0o755);
        w.dir(SESSION_DIR, 0o755);
        w.file(CA_PATH, 0o644, &self.ca_pem);
        w.file(ENV_PATH, 0o600, &env);
        w.file(ARGV_PATH, 0o600, &argv);
        for (path, value) in [
            (WORKDIR_PATH, self.workdir.clone()),
            (USER_PATH, self.user.clone()),
            (PIDS_MAX_PATH, self.pids_max.map(|n| n.to_string())),
        ] {
            if let Some(value) = value {
                if value.contains(['\0', '\n']) {
                    return Err(SessionImageError::BadString);
                }
                w.file(path, 0o600, value.as_bytes());
            }
        }
        w.dir(WORK_DIR, 0o755);
        let mut made_dirs = Vec::new();
        for (path, mode, data) in &self.files {
            let clean = path.trim_start_matches('/');
            if clean.is_empty()
                || clean
                    .split('/')
                    .any(|c| c == ".." || c == "." || c.is_empty())
            {
                return Err(SessionImageError::BadPath(path.clone()));
            }
            let parts: Vec<&str> = clean.split('/').collect();
            for i in 1..parts.len() {
                let dir = format!("{WORK_DIR}/{}", parts[..i].join("/"));
                if !made_dirs.contains(&dir) {
                    w.dir(&dir, 0o755);
                    made_dirs.push(dir);
                }
            }
            w.file(&format!("{WORK_DIR}/{clean}"), *mode, data);
        }
        Ok(w.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::read_entries;

    #[test]
    fn session_cpio_carries_ca_env_argv_and_files() {
        let s = SessionFiles {
            ca_pem: b"-----BEGIN CERTIFICATE-----".to_vec(),
            env: vec![("GITHUB_TOKEN".into(), "openclaw-placeholder-1".into())],
            argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
            files: vec![("src/main.sh".into(), 0o755, b"echo".to_vec())],
            workdir: Some("/app".into()),
            user: None,
            pids_max: Some(256),
        };
        let entries = read_entries(&s.to_cpio().expect("valid")).expect("parses");
        let get = |n: &str| entries.iter().find(|e| e.name == n).map(|e| e.data.clone());
        assert_eq!(get("openclaw/session/ca.pem").expect("ca"), s.ca_pem);
        assert_eq!(
            get("openclaw/session/argv").expect("argv"),
            b"sh\0-c\0echo hi\0"
        );
        assert_eq!(
            get("openclaw/session/env").expect("env"),
            b"GITHUB_TOKEN=openclaw-placeholder-1\0"
        );
        assert_eq!(get("openclaw/work/src/main.sh").expect("file"), b"echo");
        assert!(entries.iter().any(|e| e.name == "openclaw/work/src"));
        assert_eq!(get("openclaw/session/workdir").expect("workdir"), b"/app");
        assert_eq!(get("openclaw/session/pids_max").expect("pids"), b"256");
        assert!(
            get("openclaw/session/user").is_none(),
            "not named: the default"
        );
    }

    #[test]
    fn rejects_bad_input() {
        let ok = || SessionFiles {
            argv: vec!["true".into()],
            ..Default::default()
        };
        assert_eq!(
            SessionFiles::default().to_cpio(),
            Err(SessionImageError::EmptyArgv)
        );
        let mut s = ok();
        s.files.push(("../etc/passwd".into(), 0o644, vec![]));
        assert!(matches!(s.to_cpio(), Err(SessionImageError::BadPath(_))));
        let mut s = ok();
        s.env.push(("A=B".into(), "c".into()));
        assert_eq!(s.to_cpio(), Err(SessionImageError::BadString));
        let mut s = ok();
        s.argv.push("a\0b".into());
        assert_eq!(s.to_cpio(), Err(SessionImageError::BadString));
    }
}
