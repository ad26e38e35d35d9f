//! Importing images people already have: a `docker save` archive or an OCI
//! image layout (a directory, or a tar of one). The layers are applied in
//! order into a directory: whiteouts (`.wh.NAME`) delete what lower layers
//! put there, an opaque marker (`.wh..wh..opq`) empties its directory of
//! lower layers' entries, and every path stays inside the root (the `tar`
//! crate's `unpack_in` refuses `..` and symlinked escapes). The image
//! config's `Env`, `WorkingDir` and `User` are returned for the manifest.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::GuestImageError;

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// What the image config says about running it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunConfig {
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

#[derive(Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct OciManifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize, Default)]
struct ImageConfigFile {
    #[serde(default)]
    config: Option<ImageConfigRun>,
}

#[derive(Deserialize, Default)]
struct ImageConfigRun {
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
    #[serde(rename = "User", default)]
    user: Option<String>,
}

fn bad(what: impl Into<String>) -> GuestImageError {
    GuestImageError::BadArchive(what.into())
}

/// Applies the image at `source` (archive or layout) into `root` (created,
/// must be empty) and returns its run config and a description of the
/// source. `scratch` holds an unpacked archive while it is read.
pub fn import(
    source: &Path,
    root: &Path,
    scratch: &Path,
) -> Result<(RunConfig, String), GuestImageError> {
    let layout = if source.is_dir() {
        source.to_path_buf()
    } else {
        let dir = scratch.join("archive");
        std::fs::create_dir_all(&dir).map_err(GuestImageError::io_path(&dir))?;
        let file = File::open(source).map_err(GuestImageError::io_path(source))?;
        tar::Archive::new(BufReader::new(file))
            .unpack(&dir)
            .map_err(|e| bad(format!("unpacking {}: {e}", source.display())))?;
        dir
    };
    std::fs::create_dir_all(root).map_err(GuestImageError::io_path(root))?;
    let (config_path, layers, kind) = if layout.join("manifest.json").is_file() {
        let (c, l) = docker_parts(&layout)?;
        (c, l, "docker-archive")
    } else if layout.join("index.json").is_file() {
        let (c, l) = oci_parts(&layout)?;
        (c, l, "oci")
    } else {
        return Err(bad(format!(
            "{} is neither a docker save archive (manifest.json) nor an OCI layout (index.json)",
            source.display()
        )));
    };
    for layer in &layers {
        apply_layer(layer, root)?;
    }
    let config: ImageConfigFile = read_json(&config_path)?;
    let run = config.config.unwrap_or_default();
    Ok((
        RunConfig {
            env: run.env.unwrap_or_default(),
            working_dir: run.working_dir.unwrap_or_default(),
            user: run.user.unwrap_or_default(),
        },
        format!("{kind} {}", source.display()),
    ))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, GuestImageError> {
    let bytes = std::fs::read(path).map_err(GuestImageError::io_path(path))?;
    serde_json::from_slice(&bytes).map_err(|e| bad(format!("{}: {e}", path.display())))
}

/// A path named inside the archive, which must stay inside it.
fn inside(base: &Path, relative: &str) -> Result<PathBuf, GuestImageError> {
    let rel = Path::new(relative);
    if rel
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(bad(format!("{relative:?} points outside the archive")));
    }
    Ok(base.join(rel))
}

fn docker_parts(dir: &Path) -> Result<(PathBuf, Vec<PathBuf>), GuestImageError> {
    let entries: Vec<DockerManifestEntry> = read_json(&dir.join("manifest.json"))?;
    let entry = match entries.as_slice() {
        [one] => one,
        [] => return Err(bad("manifest.json lists no image")),
        _ => return Err(bad("the archive holds several images; save one")),
    };
    let layers = entry
        .layers
        .iter()
        .map(|l| inside(dir, l))
        .collect::<Result<_, _>>()?;
    Ok((inside(dir, &entry.config)?, layers))
}

fn blob(dir: &Path, digest: &str) -> Result<PathBuf, GuestImageError> {
    let (algo, hex) = digest
        .split_once(':')
        .ok_or_else(|| bad(format!("digest {digest:?}")))?;
    if algo != "sha256" || hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad(format!("unsupported digest {digest:?}")));
    }
    Ok(dir.join("blobs/sha256").join(hex))
}

fn oci_parts(dir: &Path) -> Result<(PathBuf, Vec<PathBuf>), GuestImageError> {
    let mut index: Index = read_json(&dir.join("index.json"))?;
    // An index may point at another index (multi-platform): take linux/amd64.
    for _ in 0..4 {
        let chosen = pick_manifest(&index.manifests)?;
        let path = blob(dir, &chosen.digest)?;
        if chosen.media_type.contains("index") || chosen.media_type.contains("manifest.list") {
            index = read_json(&path)?;
            continue;
        }
        let manifest: OciManifest = read_json(&path)?;
        let layers = manifest
            .layers
            .iter()
            .map(|l| blob(dir, &l.digest))
            .collect::<Result<_, _>>()?;
        return Ok((blob(dir, &manifest.config.digest)?, layers));
    }
    Err(bad("image indexes nested too deep"))
}

fn pick_manifest(manifests: &[Descriptor]) -> Result<&Descriptor, GuestImageError> {
    let for_us = |d: &&Descriptor| {
        d.platform
            .as_ref()
            .is_none_or(|p| p.os == "linux" && p.architecture == "amd64")
    };
    let candidates: Vec<&Descriptor> = manifests.iter().filter(for_us).collect();
    match candidates.as_slice() {
        [] => Err(bad("no linux/amd64 image in the index")),
        [one] => Ok(one),
        _ if candidates.iter().all(|d| d.platform.is_some()) => Ok(candidates[0]),
        _ => Err(bad("the index holds several images; export one")),
    }
}

/// A layer as a tar stream: plain, or gzip-compressed.
fn layer_reader(path: &Path) -> Result<Box<dyn Read>, GuestImageError> {
    let mut file = File::open(path).map_err(GuestImageError::io_path(path))?;
    let mut magic = [0u8; 4];
    let n = file
        .read(&mut magic)
        .map_err(GuestImageError::io_path(path))?;
    let file = File::open(path).map_err(GuestImageError::io_path(path))?;
    match &magic[..n] {
        [0x1f, 0x8b, ..] => Ok(Box::new(flate2::read::GzDecoder::new(BufReader::new(file)))),
        [0x28, 0xb5, 0x2f, 0xfd] => Err(bad(format!(
            "{}: zstd layers are not supported; save the image with gzip or uncompressed layers",
            path.display()
        ))),
        _ => Ok(Box::new(BufReader::new(file))),
    }
}

/// One layer onto `root`: first its whiteouts and opaque markers (they
/// speak of the lower layers only), then its entries.
pub fn apply_layer(layer: &Path, root: &Path) -> Result<(), GuestImageError> {
    let layer_error = |e: std::io::Error| bad(format!("layer {}: {e} ({e:?})", layer.display()));
    let mut archive = tar::Archive::new(layer_reader(layer)?);
    for entry in archive.entries().map_err(layer_error)? {
        let entry = entry.map_err(layer_error)?;
        let path = entry.path().map_err(layer_error)?.into_owned();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !name.starts_with(WHITEOUT) {
            continue;
        }
        let parent = clean_relative(path.parent().unwrap_or(Path::new("")))?;
        let dir = crate::store::resolve_in_root(root, &format!("/{}", parent.display()))
            .ok_or_else(|| bad(format!("{}: symlink loop", path.display())))?;
        if name == OPAQUE {
            if let Ok(children) = std::fs::read_dir(&dir) {
                for child in children.filter_map(|c| c.ok()) {
                    remove_any(&child.path())?;
                }
            }
        } else {
            let hidden = &name[WHITEOUT.len()..];
            if hidden.is_empty() || hidden == "." || hidden == ".." || hidden.contains('/') {
                return Err(bad(format!("whiteout {}", path.display())));
            }
            remove_any(&dir.join(hidden))?;
        }
    }
    let mut archive = tar::Archive::new(layer_reader(layer)?);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    for entry in archive.entries().map_err(layer_error)? {
        let mut entry = entry.map_err(layer_error)?;
        let path = entry.path().map_err(layer_error)?.into_owned();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(WHITEOUT))
        {
            continue;
        }
        // A file replacing a directory (or the reverse): the lower one goes.
        let target = root.join(clean_relative(&path)?);
        if let Ok(meta) = target.symlink_metadata() {
            let replacing_dir = meta.is_dir() && !entry.header().entry_type().is_dir();
            let dir_over_other = !meta.is_dir() && entry.header().entry_type().is_dir();
            if replacing_dir || dir_over_other {
                remove_any(&target)?;
            }
        }
        entry.unpack_in(root).map_err(layer_error)?;
    }
    Ok(())
}

/// A layer path without `./` and leading `/`; `..` is refused.
fn clean_relative(path: &Path) -> Result<PathBuf, GuestImageError> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            _ => return Err(bad(format!("{} leaves the image root", path.display()))),
        }
    }
    Ok(out)
}

fn remove_any(path: &Path) -> Result<(), GuestImageError> {
    match path.symlink_metadata() {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => Ok(()),
    }
    .map_err(GuestImageError::io_path(path))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// A tar of (path, contents or None for a directory, symlink target).
    pub fn tar_of(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            match data {
                Some(bytes) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(bytes.len() as u64);
                    header.set_mode(0o755);
                    builder
                        .append_data(&mut header, path, *bytes)
                        .expect("append file");
                }
                None => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    header.set_mode(0o755);
                    builder
                        .append_data(&mut header, path, std::io::empty())
                        .expect("append dir");
                }
            }
        }
        builder.into_inner().expect("tar")
    }

    fn put_blob(dir: &Path, bytes: &[u8]) -> String {
        let hex = hex::encode(Sha256::digest(bytes));
        std::fs::create_dir_all(dir.join("blobs/sha256")).expect("blobs");
        std::fs::write(dir.join("blobs/sha256").join(&hex), bytes).expect("blob");
        format!("sha256:{hex}")
    }

    /// An OCI layout: layer 1 has files, layer 2 whites one out and makes
    /// a directory opaque (and adds to it); gzip for the second layer.
    pub fn oci_layout(dir: &Path, base: &[(&str, Option<&[u8]>)]) -> PathBuf {
        let layout = dir.join("layout");
        std::fs::create_dir_all(&layout).expect("layout");
        std::fs::write(
            layout.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .expect("oci-layout");
        let mut l1: Vec<(&str, Option<&[u8]>)> = vec![
            ("etc/", None),
            ("etc/keep.conf", Some(b"keep")),
            ("etc/gone.conf", Some(b"gone")),
            ("data/", None),
            ("data/old.txt", Some(b"old")),
            ("app/", None),
        ];
        l1.extend_from_slice(base);
        let layer1 = put_blob(&layout, &tar_of(&l1));
        let l2 = tar_of(&[
            ("etc/.wh.gone.conf", Some(b"")),
            ("data/", None),
            ("data/.wh..wh..opq", Some(b"")),
            ("data/new.txt", Some(b"new")),
            ("app/hello.txt", Some(b"hello from the image")),
        ]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &l2).expect("gzip");
        let layer2 = put_blob(&layout, &gz.finish().expect("gzip"));
        let config = put_blob(
            &layout,
            br#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin:/usr/bin","GREETING=from-oci"],"WorkingDir":"/app","User":"1000:1000"},"rootfs":{"type":"layers","diff_ids":[]}}"#,
        );
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":1}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer1}","size":1}},{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer2}","size":1}}]}}"#
        );
        let manifest = put_blob(&layout, manifest.as_bytes());
        std::fs::write(
            layout.join("index.json"),
            format!(
                r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest}","size":1,"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#
            ),
        )
        .expect("index");
        layout
    }

    fn check_root(root: &Path) {
        assert_eq!(
            std::fs::read(root.join("etc/keep.conf")).expect("keep"),
            b"keep"
        );
        assert!(!root.join("etc/gone.conf").exists(), "whiteout applied");
        assert!(!root.join("data/old.txt").exists(), "opaque dir emptied");
        assert_eq!(
            std::fs::read(root.join("data/new.txt")).expect("new"),
            b"new"
        );
        assert_eq!(
            std::fs::read(root.join("app/hello.txt")).expect("hello"),
            b"hello from the image"
        );
    }

    #[test]
    fn an_oci_layout_applies_layers_whiteouts_and_opaque_dirs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = oci_layout(dir.path(), &[]);
        let root = dir.path().join("root");
        let (run, source) = import(&layout, &root, &dir.path().join("scratch")).expect("import");
        check_root(&root);
        assert_eq!(run.env, ["PATH=/bin:/usr/bin", "GREETING=from-oci"]);
        assert_eq!(run.working_dir, "/app");
        assert_eq!(run.user, "1000:1000");
        assert!(source.starts_with("oci "), "{source}");
    }

    #[test]
    fn a_docker_save_archive_is_read_the_same_way() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = oci_layout(dir.path(), &[]);
        // docker save's manifest.json beside the same blobs, all in one tar.
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index"))
                .expect("json");
        let manifest_digest = index["manifests"][0]["digest"].as_str().expect("digest");
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(blob(&layout, manifest_digest).expect("blob")).expect("manifest"),
        )
        .expect("json");
        let path_of =
            |d: &serde_json::Value| format!("blobs/sha256/{}", &d.as_str().expect("digest")[7..]);
        let docker = serde_json::json!([{
            "Config": path_of(&manifest["config"]["digest"]),
            "RepoTags": ["test:latest"],
            "Layers": manifest["layers"].as_array().expect("layers").iter().map(|l| path_of(&l["digest"])).collect::<Vec<_>>(),
        }]);
        std::fs::remove_file(layout.join("index.json")).expect("rm index");
        std::fs::write(layout.join("manifest.json"), docker.to_string()).expect("manifest");
        let archive = dir.path().join("image.tar");
        let mut builder = tar::Builder::new(File::create(&archive).expect("create"));
        builder.append_dir_all(".", &layout).expect("append");
        builder.finish().expect("finish");
        drop(builder);
        let root = dir.path().join("root");
        let (run, source) = import(&archive, &root, &dir.path().join("scratch")).expect("import");
        check_root(&root);
        assert_eq!(run.working_dir, "/app");
        assert!(source.starts_with("docker-archive "), "{source}");
    }

    #[test]
    fn layers_cannot_write_outside_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).expect("root");
        // A symlink to the outside, then a file through it.
        let mut builder = tar::Builder::new(Vec::new());
        let mut link = tar::Header::new_gnu();
        link.set_uid(0);
        link.set_gid(0);
        link.set_mtime(0);
        link.set_mode(0o777);
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        builder
            .append_link(&mut link, "escape", dir.path())
            .expect("link");
        let mut file = tar::Header::new_gnu();
        file.set_uid(0);
        file.set_gid(0);
        file.set_mtime(0);
        file.set_size(3);
        file.set_mode(0o644);
        builder
            .append_data(&mut file, "escape/pwned", &b"bad"[..])
            .expect("file");
        let layer = dir.path().join("evil.tar");
        std::fs::write(&layer, builder.into_inner().expect("tar")).expect("write");
        let _ = apply_layer(&layer, &root);
        assert!(
            !dir.path().join("pwned").exists(),
            "wrote through a symlink"
        );
        // A whiteout naming a path above the root (written raw: the tar
        // crate will not build such a name).
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_mode(0o644);
        header.set_size(0);
        let name = b"../.wh.victim";
        header.as_gnu_mut().expect("gnu").name[..name.len()].copy_from_slice(name);
        header.set_cksum();
        let mut builder = tar::Builder::new(Vec::new());
        builder.append(&header, std::io::empty()).expect("append");
        let evil = builder.into_inner().expect("tar");
        std::fs::write(dir.path().join("victim"), b"x").expect("victim");
        std::fs::write(&layer, evil).expect("write");
        assert!(apply_layer(&layer, &root).is_err());
        assert!(dir.path().join("victim").exists());
    }
}
