//! `docker save` archives: the legacy layout (`manifest.json`, `<id>/layer.tar`,
//! `<config>.json`, `repositories`), the Docker 25+ layout (the same `manifest.json` pointing
//! into `blobs/sha256/`, plus `index.json` and `oci-layout`) and plain OCI image layouts.
//!
//! The outer archive is a stream (an HTTP body) whose `manifest.json` may come last, so its
//! regular files are spooled to numbered files in a staging directory first; paths are only
//! keys in a map, never created on disk, so a hostile outer archive cannot place anything.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tar::{EntryType, Header};
use tracing::debug;

use crate::compress::decompressed;
use crate::config::host_architecture;
use crate::error::{Error, IoContext};
use crate::fsutil::{HashingWriter, read_limited, sha256_hex};
use crate::reference::Reference;
use crate::unpack::{UnpackError, normalize_path};
use crate::{Limits, is_full_hex, sha256_digest};

pub(crate) const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
const ANNOTATION_REFERENCE_TYPE: &str = "vnd.docker.reference.type";
const MAX_LINK_HOPS: usize = 16;
const MAX_INDEX_DEPTH: usize = 4;

/// One entry of `manifest.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct LegacyManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: i64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    platform: Option<Platform>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciIndex {
    schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciManifest {
    schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// An image found in an archive, ready to be extracted.
#[derive(Debug)]
pub(crate) struct PlannedImage {
    /// Raw config bytes; the image id is their sha256.
    pub config: Vec<u8>,
    /// Spool keys of the layer blobs, bottom first.
    pub layers: Vec<String>,
    pub tags: Vec<Reference>,
}

#[derive(Debug)]
enum Node {
    File { path: PathBuf },
    Link(String),
}

/// The regular files of an archive, by normalised path.
pub(crate) struct Spool {
    nodes: HashMap<String, Node>,
    limits: Limits,
}

fn archive_error(reason: impl Into<String>) -> Error {
    Error::InvalidArchive(reason.into())
}

fn key_of(raw: &[u8], limits: &Limits) -> Result<String, Error> {
    let name = String::from_utf8_lossy(raw).into_owned();
    let components = normalize_path(raw, limits.max_path_bytes)
        .map_err(|reason| Error::Unpack(UnpackError::Unsafe { entry: name.clone(), reason }))?;
    let joined = components.join(&b'/');
    String::from_utf8(joined).map_err(|_| archive_error(format!("{name:?} is not utf-8")))
}

/// Resolve a symlink target against the directory of `key`, staying inside the archive.
fn resolve_link(key: &str, target: &[u8], entry: &str) -> Result<String, Error> {
    let refuse =
        |reason: &str| Error::Unpack(UnpackError::Unsafe { entry: entry.to_owned(), reason: reason.to_owned() });
    if target.starts_with(b"/") {
        return Err(refuse("symbolic link in an image archive points outside it"));
    }
    let target = std::str::from_utf8(target).map_err(|_| refuse("link target is not utf-8"))?;
    let mut parts: Vec<&str> = key.split('/').collect();
    parts.pop();
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(refuse("symbolic link target climbs out of the archive"));
                }
            }
            other => parts.push(other),
        }
    }
    Ok(parts.join("/"))
}

/// `blobs/sha256/<hex>` → `<hex>`.
fn blob_hex(key: &str) -> Option<&str> {
    key.strip_prefix("blobs/sha256/").filter(|h| is_full_hex(h))
}

fn blob_key(digest: &str) -> Result<String, Error> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if is_full_hex(hex) => Ok(format!("blobs/sha256/{hex}")),
        _ => Err(archive_error(format!("unsupported digest {digest:?} (only sha256 is supported)"))),
    }
}

impl Spool {
    /// Copy the regular files of the (possibly gzip-compressed) archive into `dir`.
    pub(crate) fn read<R: Read>(reader: R, dir: &Path, limits: Limits) -> Result<Self, Error> {
        let stream = decompressed(reader, "image archive")?;
        let mut archive = tar::Archive::new(stream);
        let mut nodes = HashMap::new();
        let mut total_bytes = 0u64;
        let mut entries = 0u64;
        let mut spooled = 0u64;
        let read_error = |e: io::Error| archive_error(format!("reading tar stream: {e}"));
        for entry in archive.entries().map_err(read_error)? {
            let mut entry = entry.map_err(read_error)?;
            entries += 1;
            if entries > limits.max_entries {
                return Err(Error::Limit(format!("image archive has more than {} entries", limits.max_entries)));
            }
            let raw_path = entry.path_bytes().into_owned();
            let name = String::from_utf8_lossy(&raw_path).into_owned();
            let kind = entry.header().entry_type();
            if kind.is_dir() || kind.is_pax_global_extensions() {
                continue;
            }
            let key = key_of(&raw_path, &limits)?;
            if kind.is_file() || kind.is_contiguous() {
                total_bytes = total_bytes.saturating_add(entry.size());
                if total_bytes > limits.max_archive_bytes {
                    return Err(Error::Limit(format!(
                        "image archive is larger than {} bytes",
                        limits.max_archive_bytes
                    )));
                }
                spooled += 1;
                let path = dir.join(spooled.to_string());
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .context(|| format!("spooling {name:?}"))?;
                let mut writer = HashingWriter::new(file);
                io::copy(&mut entry, &mut writer).map_err(|e| archive_error(format!("reading {name:?}: {e}")))?;
                let (digest, _, _) = writer.finish();
                if let Some(expected) = blob_hex(&key)
                    && digest != expected
                {
                    return Err(archive_error(format!("blob {key} is corrupt: its content hashes to sha256:{digest}")));
                }
                nodes.insert(key, Node::File { path });
            } else if kind.is_symlink() {
                let target = entry.link_name_bytes().unwrap_or_default();
                let resolved = resolve_link(&key, &target, &name)?;
                nodes.insert(key, Node::Link(resolved));
            } else if kind.is_hard_link() {
                let target = entry.link_name_bytes().unwrap_or_default();
                nodes.insert(key, Node::Link(key_of(&target, &limits)?));
            } else {
                return Err(Error::Unpack(UnpackError::Unsafe {
                    entry: name,
                    reason: format!("unexpected entry type {:?} in an image archive", char::from(kind.as_byte())),
                }));
            }
        }
        debug!(files = nodes.len(), bytes = total_bytes, "spooled image archive");
        Ok(Self { nodes, limits })
    }

    fn path_of(&self, key: &str) -> Result<&Path, Error> {
        let mut current = key;
        for _ in 0..MAX_LINK_HOPS {
            match self.nodes.get(current) {
                Some(Node::File { path }) => return Ok(path),
                Some(Node::Link(target)) => current = target,
                None => {
                    return Err(archive_error(format!("{key} is referenced but missing from the archive")));
                }
            }
        }
        Err(archive_error(format!("{key}: too many levels of links")))
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        self.nodes.contains_key(key)
    }

    /// Open a spooled file; `key` may also be written as a path relative to the archive root.
    pub(crate) fn open(&self, key: &str) -> Result<File, Error> {
        let path = self.path_of(key)?;
        File::open(path).context(|| format!("opening spooled {key}"))
    }

    fn read_bytes(&self, key: &str) -> Result<Vec<u8>, Error> {
        let file = self.open(key)?;
        read_limited(file, self.limits.max_metadata_bytes).map_err(|e| archive_error(format!("reading {key}: {e}")))
    }

    fn read_json<T: DeserializeOwned>(&self, key: &str) -> Result<T, Error> {
        let bytes = self.read_bytes(key)?;
        serde_json::from_slice(&bytes).map_err(|e| archive_error(format!("parsing {key}: {e}")))
    }

    /// Find the images: `manifest.json` when present (it carries the tags), else `index.json`.
    pub(crate) fn plan(&self) -> Result<Vec<PlannedImage>, Error> {
        let planned = if self.contains("manifest.json") {
            self.plan_legacy()?
        } else if self.contains("index.json") {
            self.plan_oci()?
        } else {
            return Err(archive_error(
                "no manifest.json or index.json found; is this a `docker save` archive? \
                 (use import for plain rootfs tarballs)",
            ));
        };
        if planned.is_empty() {
            return Err(archive_error("the archive contains no images"));
        }
        // The same config listed twice (one entry per tag) is one image.
        let mut merged: Vec<PlannedImage> = Vec::new();
        for image in planned {
            match merged.iter_mut().find(|m| m.config == image.config) {
                Some(existing) => {
                    for tag in image.tags {
                        if !existing.tags.contains(&tag) {
                            existing.tags.push(tag);
                        }
                    }
                }
                None => merged.push(image),
            }
        }
        Ok(merged)
    }

    fn plan_legacy(&self) -> Result<Vec<PlannedImage>, Error> {
        let manifest: Vec<LegacyManifestEntry> = self.read_json("manifest.json")?;
        manifest
            .into_iter()
            .map(|entry| {
                let config_key = key_of(entry.config.as_bytes(), &self.limits)?;
                let layers = entry.layers.iter().map(|layer| key_of(layer.as_bytes(), &self.limits)).collect::<Result<
                    Vec<_>,
                    _,
                >>(
                )?;
                let tags = entry
                    .repo_tags
                    .unwrap_or_default()
                    .iter()
                    .map(|tag| Reference::parse(tag).map_err(Error::from))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(PlannedImage { config: self.read_bytes(&config_key)?, layers, tags })
            })
            .collect()
    }

    fn plan_oci(&self) -> Result<Vec<PlannedImage>, Error> {
        let index: OciIndex = self.read_json("index.json")?;
        // A layout holding several platforms' images side by side: load this host's.
        let host_only = index.manifests.iter().any(|m| self.usable_here(m));
        let mut planned = Vec::new();
        for descriptor in &index.manifests {
            if host_only && !self.usable_here(descriptor) {
                debug!(digest = %descriptor.digest, "skipping an image for another platform");
                continue;
            }
            let tags = tag_from_annotations(&descriptor.annotations)?;
            self.collect_manifests(descriptor, &tags, 0, &mut planned)?;
        }
        Ok(planned)
    }

    /// A descriptor for this platform (or for none), not an attestation, whose blob is here.
    fn usable_here(&self, descriptor: &Descriptor) -> bool {
        let attestation = descriptor.annotations.contains_key(ANNOTATION_REFERENCE_TYPE);
        let platform_ok =
            descriptor.platform.as_ref().is_none_or(|p| p.os == "linux" && p.architecture == host_architecture());
        !attestation && platform_ok && blob_key(&descriptor.digest).is_ok_and(|key| self.contains(&key))
    }

    fn collect_manifests(
        &self,
        descriptor: &Descriptor,
        tags: &[Reference],
        depth: usize,
        planned: &mut Vec<PlannedImage>,
    ) -> Result<(), Error> {
        if depth > MAX_INDEX_DEPTH {
            return Err(archive_error("image indexes are nested too deeply"));
        }
        let key = blob_key(&descriptor.digest)?;
        let media_type = descriptor.media_type.as_str();
        if media_type == MEDIA_OCI_INDEX || media_type == MEDIA_DOCKER_LIST {
            let index: OciIndex = self.read_json(&key)?;
            let host = host_architecture();
            let chosen = index.manifests.iter().find(|m| self.usable_here(m));
            return match chosen {
                Some(manifest) => self.collect_manifests(manifest, tags, depth + 1, planned),
                None => Err(archive_error(format!(
                    "index {} has no image for linux/{host} in this archive",
                    descriptor.digest
                ))),
            };
        }
        let manifest: OciManifest = self.read_json(&key)?;
        let config = self.read_bytes(&blob_key(&manifest.config.digest)?)?;
        let layers = manifest
            .layers
            .iter()
            .map(|layer| {
                if layer.media_type.contains("zstd") {
                    return Err(archive_error(format!(
                        "layer {} is zstd-compressed, which is not supported",
                        layer.digest
                    )));
                }
                blob_key(&layer.digest)
            })
            .collect::<Result<Vec<_>, _>>()?;
        planned.push(PlannedImage { config, layers, tags: tags.to_vec() });
        Ok(())
    }
}

/// The image name an OCI index entry carries, if any.
fn tag_from_annotations(annotations: &BTreeMap<String, String>) -> Result<Vec<Reference>, Error> {
    if let Some(name) = annotations.get(ANNOTATION_IMAGE_NAME) {
        return Ok(vec![Reference::parse(name)?]);
    }
    match annotations.get(ANNOTATION_REF_NAME) {
        // A bare tag ("latest") names no repository: the image loads untagged.
        Some(name) if name.contains(':') || name.contains('/') => Ok(vec![Reference::parse(name)?]),
        Some(name) => {
            debug!(ref_name = %name, "index entry has a tag but no repository; loading untagged");
            Ok(Vec::new())
        }
        None => Ok(Vec::new()),
    }
}

/// An image to write into a `docker save` archive.
pub(crate) struct SaveImage {
    pub config: Vec<u8>,
    /// Diff id hex and open uncompressed layer tarball, bottom first.
    pub layers: Vec<(String, File)>,
    pub tags: Vec<Reference>,
}

fn blob_path(hex: &str) -> String {
    format!("blobs/sha256/{hex}")
}

fn file_header(size: u64, mode: u32, kind: EntryType) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header
}

fn append_bytes<W: Write>(builder: &mut tar::Builder<W>, path: &str, bytes: &[u8]) -> Result<(), Error> {
    let mut header = file_header(bytes.len() as u64, 0o644, EntryType::Regular);
    builder.append_data(&mut header, path, bytes).context(|| format!("writing {path} to the archive"))
}

fn json_bytes<T: Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(value).map_err(|e| Error::io("encoding archive json", io::Error::other(e)))
}

/// Write a Docker 25-style archive: OCI layout (`blobs/sha256`, `index.json`, `oci-layout`)
/// plus the `manifest.json` every `docker load` since 1.10 reads.
pub(crate) fn write_archive<W: Write>(out: W, images: Vec<SaveImage>) -> Result<W, Error> {
    let mut builder = tar::Builder::new(out);
    for dir in ["blobs/", "blobs/sha256/"] {
        let mut header = file_header(0, 0o755, EntryType::Directory);
        builder.append_data(&mut header, dir, io::empty()).context(|| format!("writing {dir} to the archive"))?;
    }
    let mut written = HashSet::new();
    let mut manifest_json = Vec::new();
    let mut index = OciIndex { schema_version: 2, media_type: Some(MEDIA_OCI_INDEX.to_owned()), manifests: Vec::new() };
    for image in images {
        let config_hex = sha256_hex(&image.config);
        if written.insert(config_hex.clone()) {
            append_bytes(&mut builder, &blob_path(&config_hex), &image.config)?;
        }
        let mut layer_descriptors = Vec::new();
        for (diff_hex, mut file) in image.layers {
            let size = file.metadata().context(|| format!("inspecting layer {diff_hex}"))?.len();
            if written.insert(diff_hex.clone()) {
                let mut header = file_header(size, 0o644, EntryType::Regular);
                builder
                    .append_data(&mut header, blob_path(&diff_hex), &mut file)
                    .context(|| format!("writing layer {diff_hex} to the archive"))?;
            }
            layer_descriptors.push(Descriptor {
                media_type: MEDIA_OCI_LAYER_TAR.to_owned(),
                digest: sha256_digest(&diff_hex),
                size: i64::try_from(size).unwrap_or(i64::MAX),
                annotations: BTreeMap::new(),
                platform: None,
            });
        }
        let manifest = OciManifest {
            schema_version: 2,
            media_type: Some(MEDIA_OCI_MANIFEST.to_owned()),
            config: Descriptor {
                media_type: MEDIA_OCI_CONFIG.to_owned(),
                digest: sha256_digest(&config_hex),
                size: image.config.len() as i64,
                annotations: BTreeMap::new(),
                platform: None,
            },
            layers: layer_descriptors.clone(),
        };
        let manifest_bytes = json_bytes(&manifest)?;
        let manifest_hex = sha256_hex(&manifest_bytes);
        if written.insert(manifest_hex.clone()) {
            append_bytes(&mut builder, &blob_path(&manifest_hex), &manifest_bytes)?;
        }
        let descriptor = |annotations| Descriptor {
            media_type: MEDIA_OCI_MANIFEST.to_owned(),
            digest: sha256_digest(&manifest_hex),
            size: manifest_bytes.len() as i64,
            annotations,
            platform: None,
        };
        if image.tags.is_empty() {
            index.manifests.push(descriptor(BTreeMap::new()));
        }
        for tag in &image.tags {
            index.manifests.push(descriptor(BTreeMap::from([
                (ANNOTATION_IMAGE_NAME.to_owned(), tag.qualified()),
                (ANNOTATION_REF_NAME.to_owned(), tag.tag().to_owned()),
            ])));
        }
        manifest_json.push(LegacyManifestEntry {
            config: blob_path(&config_hex),
            repo_tags: if image.tags.is_empty() {
                None
            } else {
                Some(image.tags.iter().map(ToString::to_string).collect())
            },
            layers: layer_descriptors.iter().map(|l| blob_path(l.digest.trim_start_matches("sha256:"))).collect(),
        });
    }
    append_bytes(&mut builder, "index.json", &json_bytes(&index)?)?;
    append_bytes(&mut builder, "manifest.json", &json_bytes(&manifest_json)?)?;
    append_bytes(&mut builder, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    builder.into_inner().context(|| "finishing the archive".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_links_inside_the_archive() {
        let ok = |key: &str, target: &str| resolve_link(key, target.as_bytes(), "e").ok();
        assert_eq!(ok("abc/layer.tar", "../def/layer.tar").as_deref(), Some("def/layer.tar"));
        assert_eq!(ok("a", "b").as_deref(), Some("b"));
        assert!(ok("abc/layer.tar", "../../etc/passwd").is_none());
        assert!(ok("abc/layer.tar", "/etc/passwd").is_none());
    }

    #[test]
    fn blob_keys() {
        let hex = "a".repeat(64);
        assert_eq!(blob_key(&format!("sha256:{hex}")).ok(), Some(format!("blobs/sha256/{hex}")));
        assert!(blob_key("sha512:abc").is_err());
        assert!(blob_key("sha256:../../x").is_err());
        assert_eq!(blob_hex(&format!("blobs/sha256/{hex}")), Some(hex.as_str()));
    }

    #[test]
    fn bare_ref_name_loads_untagged() {
        let tags = |pairs: &[(&str, &str)]| {
            let map = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
            tag_from_annotations(&map)
                .map(|t| t.iter().map(ToString::to_string).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        assert_eq!(tags(&[(ANNOTATION_REF_NAME, "latest")]), Vec::<String>::new());
        assert_eq!(tags(&[(ANNOTATION_REF_NAME, "bb:1")]), ["bb:1"]);
        assert_eq!(tags(&[(ANNOTATION_IMAGE_NAME, "docker.io/library/bb:2"), (ANNOTATION_REF_NAME, "2")]), ["bb:2"]);
    }
}
