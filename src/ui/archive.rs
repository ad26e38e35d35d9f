//! The bundle download: a finished session's directory as a `.tar.gz`,
//! streamed while it is written. Symlinks the sandbox left in `work/` are
//! stored as links (never followed), sockets and temporary files are left
//! out.

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use flate2::write::GzEncoder;
use tokio::sync::mpsc;

/// Sends what is written to a channel, in chunks (blocking; run it on a
/// blocking thread).
struct ChannelWriter {
    tx: mpsc::Sender<Bytes>,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tx
            .blocking_send(Bytes::copy_from_slice(buf))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Starts writing `dir` as `<name>/…` into a gzip'd tar; the chunks arrive
/// on the returned channel, which closes at the end (or early on an error:
/// the archive is then truncated and fails to unpack, never silently short).
pub fn stream_tar_gz(dir: PathBuf, name: String) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(8);
    tokio::task::spawn_blocking(move || {
        let out = std::io::BufWriter::with_capacity(64 * 1024, ChannelWriter { tx });
        let mut tar = tar::Builder::new(GzEncoder::new(out, flate2::Compression::default()));
        tar.follow_symlinks(false);
        let result = add_tree(&mut tar, &dir, Path::new(&name))
            .and_then(|()| tar.into_inner())
            .and_then(|gz| gz.finish())
            .and_then(|mut out| out.flush());
        if let Err(err) = result {
            tracing::warn!("bundle archive of {}: {err}", dir.display());
        }
    });
    rx
}

fn add_tree<W: Write>(tar: &mut tar::Builder<W>, dir: &Path, name: &Path) -> std::io::Result<()> {
    tar.append_dir(name, dir)?;
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let file_name = entry.file_name();
        // Temporary files (`.session.json.tmp`) are half-written by design.
        if file_name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let inner = name.join(&file_name);
        let kind = std::fs::symlink_metadata(&path)?.file_type();
        if kind.is_dir() {
            add_tree(tar, &path, &inner)?;
        } else if kind.is_file() || kind.is_symlink() {
            tar.append_path_with_name(&path, &inner)?;
        }
        // Sockets (control.sock), fifos and devices are not part of a bundle.
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[tokio::test]
    async fn archives_files_keeps_links_as_links_and_skips_sockets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = dir.path().join("b1");
        std::fs::create_dir_all(b.join("work")).expect("mkdir");
        std::fs::write(b.join("session.json"), b"{}").expect("write");
        std::fs::write(b.join(".session.json.tmp"), b"half").expect("write");
        std::fs::write(b.join("work/result.txt"), b"booked").expect("write");
        std::os::unix::fs::symlink("/etc/shadow", b.join("work/escape")).expect("symlink");
        let _sock = std::os::unix::net::UnixListener::bind(b.join("control.sock")).expect("bind");

        let mut rx = stream_tar_gz(b.clone(), "b1".into());
        let mut gz = Vec::new();
        while let Some(chunk) = rx.recv().await {
            gz.extend_from_slice(&chunk);
        }
        let mut tar_bytes = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut tar_bytes)
            .expect("valid gzip");
        let mut archive = tar::Archive::new(&tar_bytes[..]);
        let mut seen = Vec::new();
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let path = entry.path().expect("path").display().to_string();
            if path == "b1/work/escape" {
                assert!(entry.header().entry_type().is_symlink());
                assert_eq!(
                    entry
                        .link_name()
                        .expect("link")
                        .expect("some")
                        .display()
                        .to_string(),
                    "/etc/shadow"
                );
            }
            if path == "b1/work/result.txt" {
                let mut text = String::new();
                entry.read_to_string(&mut text).expect("read");
                assert_eq!(text, "booked");
            }
            seen.push(path);
        }
        seen.sort();
        assert_eq!(
            seen,
            [
                "b1",
                "b1/session.json",
                "b1/work",
                "b1/work/escape",
                "b1/work/result.txt"
            ]
        );
    }
}
