//! Helpers shared by the integration tests: tarball builders (including headers the `tar`
//! crate refuses to write, such as `..` paths), stores in temporary directories.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use hatch_image::{ImageStore, Limits};
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};
use tempfile::TempDir;

pub const MTIME: u64 = 1_600_000_000;

/// Builds a tarball in memory, entry by entry.
pub struct Tarball {
    builder: tar::Builder<Vec<u8>>,
}

impl Default for Tarball {
    fn default() -> Self {
        Self::new()
    }
}

impl Tarball {
    pub fn new() -> Self {
        Self { builder: tar::Builder::new(Vec::new()) }
    }

    fn header(kind: EntryType, mode: u32, size: u64) -> Header {
        let mut header = Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(size);
        header.set_mtime(MTIME);
        header.set_uid(0);
        header.set_gid(0);
        header
    }

    pub fn dir(mut self, path: &str, mode: u32) -> Self {
        let mut header = Self::header(EntryType::Directory, mode, 0);
        self.builder.append_data(&mut header, path, std::io::empty()).unwrap();
        self
    }

    pub fn file(self, path: &str, content: &[u8], mode: u32) -> Self {
        self.file_owned(path, content, mode, 0, 0)
    }

    pub fn file_owned(mut self, path: &str, content: &[u8], mode: u32, uid: u64, gid: u64) -> Self {
        let mut header = Self::header(EntryType::Regular, mode, content.len() as u64);
        header.set_uid(uid);
        header.set_gid(gid);
        self.builder.append_data(&mut header, path, content).unwrap();
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut header = Self::header(EntryType::Symlink, 0o777, 0);
        self.builder.append_link(&mut header, path, target).unwrap();
        self
    }

    pub fn hardlink(mut self, path: &str, target: &str) -> Self {
        let mut header = Self::header(EntryType::Link, 0o644, 0);
        self.builder.append_link(&mut header, path, target).unwrap();
        self
    }

    pub fn fifo(mut self, path: &str) -> Self {
        let mut header = Self::header(EntryType::Fifo, 0o644, 0);
        self.builder.append_data(&mut header, path, std::io::empty()).unwrap();
        self
    }

    pub fn device(mut self, path: &str, kind: EntryType) -> Self {
        let mut header = Self::header(kind, 0o666, 0);
        header.set_device_major(1).unwrap();
        header.set_device_minor(3).unwrap();
        self.builder.append_data(&mut header, path, std::io::empty()).unwrap();
        self
    }

    /// An entry whose name and link name are copied byte for byte into the header, so it
    /// can carry `..` components or absolute paths the `tar` crate would refuse to write.
    pub fn raw(mut self, kind: EntryType, name: &str, link: &str, content: &[u8]) -> Self {
        let mut header = Self::header(kind, 0o644, content.len() as u64);
        {
            let old = header.as_old_mut();
            old.name = [0; 100];
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            old.linkname = [0; 100];
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_cksum();
        self.builder.append(&header, content).unwrap();
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.builder.into_inner().unwrap()
    }
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A store in a temporary directory, with a canary directory next to it that escape
/// attempts aim at: `<tmp>/store` and `<tmp>/canary/passwd`.
pub struct Fixture {
    pub dir: TempDir,
    pub store: ImageStore,
}

impl Fixture {
    pub fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    pub fn with_limits(limits: Limits) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("canary")).unwrap();
        std::fs::write(dir.path().join("canary/passwd"), b"canary\n").unwrap();
        let store = ImageStore::open_with_limits(&dir.path().join("store"), limits).unwrap();
        Self { dir, store }
    }

    pub fn store_root(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    pub fn canary_dir(&self) -> PathBuf {
        self.dir.path().join("canary")
    }

    /// The canary is intact, nothing appeared next to it, and the store holds no image
    /// and no staging leftovers.
    pub fn assert_untouched(&self) {
        let canary = self.canary_dir();
        assert_eq!(std::fs::read(canary.join("passwd")).unwrap(), b"canary\n");
        let names: Vec<_> = std::fs::read_dir(&canary).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["passwd"], "something was written into the canary dir");
        let meta = std::fs::metadata(canary.join("passwd")).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::nlink(&meta), 1);
        let top: Vec<_> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let mut top_sorted = top.clone();
        top_sorted.sort();
        assert_eq!(top_sorted, ["canary", "store"], "something was written next to the store");
        assert!(self.store.list().is_empty());
        assert_eq!(std::fs::read_dir(self.store_root().join("tmp")).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(self.store_root().join("rootfs")).unwrap().count(), 0);
    }
}

/// A `docker save`-style image: config JSON for the given uncompressed layers.
pub fn image_config(layers: &[&[u8]], cmd: &[&str]) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|l| format!("sha256:{}", sha256_hex(l))).collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-02T03:04:05.123456789Z",
        "config": {"Env": ["PATH=/bin", "FOO=bar"], "Cmd": cmd, "WorkingDir": "/srv", "User": "1000",
                    "Labels": {"a": "b"}, "ExposedPorts": {"80/tcp": {}}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "2024-01-02T03:04:05Z", "created_by": "test"}],
    }))
    .unwrap()
}

/// A legacy `docker save` archive (Docker < 25): `<n>/layer.tar`, `<config hex>.json`,
/// `manifest.json`, `repositories`.
pub fn legacy_archive(config: &[u8], layers: &[Vec<u8>], tags: &[&str]) -> Vec<u8> {
    let config_hex = sha256_hex(config);
    let mut archive = Tarball::new();
    let mut layer_paths = Vec::new();
    for (n, layer) in layers.iter().enumerate() {
        let dir = format!("{:064x}", n + 1);
        archive = archive
            .dir(&format!("{dir}/"), 0o755)
            .file(&format!("{dir}/VERSION"), b"1.0", 0o644)
            .file(&format!("{dir}/json"), b"{}", 0o644)
            .file(&format!("{dir}/layer.tar"), layer, 0o644);
        layer_paths.push(format!("{dir}/layer.tar"));
    }
    let manifest = serde_json::json!([{
        "Config": format!("{config_hex}.json"),
        "RepoTags": if tags.is_empty() { serde_json::Value::Null } else { serde_json::json!(tags) },
        "Layers": layer_paths,
    }]);
    archive
        .file(&format!("{config_hex}.json"), config, 0o644)
        .file("manifest.json", &serde_json::to_vec(&manifest).unwrap(), 0o644)
        .file("repositories", b"{}", 0o644)
        .finish()
}

/// Names of the entries of a tarball.
pub fn entry_names(archive: &[u8]) -> Vec<String> {
    let mut reader = tar::Archive::new(archive);
    reader.entries().unwrap().map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned()).collect()
}

pub fn read_entry(archive: &[u8], name: &str) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut reader = tar::Archive::new(archive);
    for entry in reader.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap() == Path::new(name) {
            let mut out = Vec::new();
            entry.read_to_end(&mut out).unwrap();
            return Some(out);
        }
    }
    None
}
