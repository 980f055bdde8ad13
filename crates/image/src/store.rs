//! The content-addressed image store (layout in the crate docs).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::archive::{SaveImage, Spool, write_archive};
use crate::changes::apply_changes;
use crate::compress::decompressed;
use crate::config::{History, ImageConfig, RootFs, RunConfig, default_path_env, host_architecture};
use crate::error::{Error, IoContext};
use crate::fsutil::{TeeReader, atomic_write, random_suffix, read_limited, remove_any, sha256_hex};
use crate::pack::pack_dir;
use crate::reference::Reference;
use crate::timefmt::format_rfc3339;
use crate::unpack::{Budget, LayerStats, unpack_layer};
use crate::{Limits, is_full_hex, sha256_digest};

const INDEX_FILE: &str = "index.json";
const INDEX_VERSION: u32 = 1;
const LOCK_FILE: &str = "lock";
/// Shortest id prefix accepted as a reference, as the brief for `docker` ids asks.
const MIN_ID_PREFIX: usize = 4;
/// Bytes tolerated after a layer's end-of-archive marker (GNU tar pads to 10 KiB records).
const MAX_TRAILING_BYTES: u64 = 16 << 20;
/// Buffer for writing layer tarballs (fewer, larger writes).
const COPY_BUFFER: usize = 1 << 20;

/// An image as `docker images` / `docker image inspect` show it.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// `sha256:<64 hex>`: the sha256 of the image config JSON.
    pub id: String,
    /// `name:tag`, sorted.
    pub repo_tags: Vec<String>,
    /// Unix seconds, from the config's `created`.
    pub created: i64,
    /// Bytes of file content over all layers (what Docker reports as `Size`).
    pub size: u64,
    /// The parsed image config: `config.config` holds `Env`, `Cmd`, `Entrypoint`,
    /// `WorkingDir`, `User`, `Labels`, `ExposedPorts`; also `architecture`, `os`,
    /// `rootfs.diff_ids`, `history`.
    pub config: ImageConfig,
    /// The flattened root filesystem: the overlayfs lower directory. Read-only by contract.
    pub rootfs: PathBuf,
}

impl Image {
    /// The 64 hex characters of the id.
    pub fn hex(&self) -> &str {
        self.id.trim_start_matches("sha256:")
    }

    /// The 12-character id `docker images` prints.
    pub fn short_id(&self) -> &str {
        let hex = self.hex();
        &hex[..hex.len().min(12)]
    }

    /// `created` as RFC 3339, for `docker image inspect` (the config's own text when present).
    pub fn created_rfc3339(&self) -> String {
        self.config.created.clone().unwrap_or_else(|| format_rfc3339(self.created, 0))
    }

    /// How to run it (`Env`, `Cmd`, `Entrypoint`, `WorkingDir`, `User`, ...).
    pub fn run_config(&self) -> &RunConfig {
        &self.config.config
    }

    /// `sha256:<hex>` of each uncompressed layer, bottom first.
    pub fn diff_ids(&self) -> &[String] {
        &self.config.rootfs.diff_ids
    }
}

/// Options of `docker import` (`POST /images/create?fromSrc=-`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ImportOptions<'a> {
    /// `repo[:tag]`; `None` leaves the image untagged.
    pub reference: Option<&'a str>,
    /// `--change` Dockerfile instructions.
    pub changes: &'a [String],
    /// `--message`: the commit message.
    pub message: Option<&'a str>,
}

/// One line of `docker rmi` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoveAction {
    /// A tag (`bb:latest`) was removed.
    Untagged(String),
    /// The image (`sha256:<hex>`) and its rootfs were deleted.
    Deleted(String),
}

/// An image read by [`ImageStore::load`], with the tags the archive gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedImage {
    pub image: Image,
    /// Tags from the archive (`RepoTags`), now pointing at this image.
    pub tags: Vec<String>,
}

impl LoadedImage {
    /// The lines `docker load` prints: `Loaded image: bb:latest` per tag, or
    /// `Loaded image ID: sha256:...` for an untagged image.
    pub fn messages(&self) -> Vec<String> {
        if self.tags.is_empty() {
            vec![format!("Loaded image ID: {}", self.image.id)]
        } else {
            self.tags.iter().map(|tag| format!("Loaded image: {tag}")).collect()
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct IndexFile {
    version: u32,
    /// Image hex → record.
    images: BTreeMap<String, ImageRecord>,
    /// `name:tag` → image hex.
    tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ImageRecord {
    size: u64,
    /// Unix seconds when it entered this store.
    #[serde(default)]
    added: i64,
}

struct State {
    index: IndexFile,
    /// Parsed configs of the images in the index.
    configs: HashMap<String, ImageConfig>,
}

/// How a reference matched.
enum Found {
    Tag(Reference),
    Id,
}

/// A staging directory under `tmp/`, removed when dropped (on success its content has been
/// renamed away already).
struct Staging {
    dir: PathBuf,
}

impl Staging {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn mkdir(&self, name: &str) -> Result<PathBuf, Error> {
        let path = self.path(name);
        fs::DirBuilder::new().mode(0o755).create(&path).context(|| format!("creating {}", path.display()))?;
        // Explicitly, whatever the umask: this may become an image's `/`.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .context(|| format!("setting the mode of {}", path.display()))?;
        Ok(path)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(e) = remove_any(&self.dir) {
            warn!(dir = %self.dir.display(), error = %e, "could not remove staging directory");
        }
    }
}

/// An image extracted into staging, waiting for [`ImageStore::commit`].
struct StagedImage {
    hex: String,
    config_bytes: Vec<u8>,
    config: ImageConfig,
    /// `None` when the image was already in the store at planning time.
    rootfs: Option<PathBuf>,
    size: u64,
    tags: Vec<Reference>,
}

/// A new layer blob in staging: diff id hex → uncompressed tarball.
type StagedLayers = BTreeMap<String, PathBuf>;

fn now() -> (i64, u32) {
    let elapsed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    (i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX), elapsed.subsec_nanos())
}

fn create_new_file(path: &Path) -> Result<File, Error> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .context(|| format!("creating {}", path.display()))
}

/// Decompress, hash and extract one layer; optionally keep an uncompressed copy.
/// Returns the diff id hex, the uncompressed length and what was extracted.
fn extract_layer(
    reader: impl Read,
    what: &str,
    rootfs: &Path,
    copy_to: Option<&Path>,
    budget: &mut Budget,
) -> Result<(String, u64, LayerStats), Error> {
    let stream = decompressed(reader, what)?;
    let copy = copy_to.map(create_new_file).transpose()?.map(|file| BufWriter::with_capacity(COPY_BUFFER, file));
    let mut tee = TeeReader::new(stream, copy);
    let stats = unpack_layer(&mut tee, rootfs, budget)?;
    tee.drain(MAX_TRAILING_BYTES).map_err(|e| Error::InvalidArchive(format!("{what}: {e}")))?;
    let (diff_hex, length, copy) = tee.finish();
    if let Some(mut copy) = copy {
        copy.flush().context(|| format!("writing a copy of {what}"))?;
    }
    debug!(what, diff_id = %diff_hex, bytes = length, entries = stats.entries, "extracted layer");
    Ok((diff_hex, length, stats))
}

fn parse_config(hex: &str, bytes: &[u8]) -> Result<ImageConfig, Error> {
    let config = ImageConfig::parse(bytes).map_err(|e| Error::InvalidConfig(format!("image sha256:{hex}: {e}")))?;
    if !config.os.is_empty() && config.os != "linux" {
        return Err(Error::InvalidConfig(format!("image sha256:{hex} is for {:?}, not linux", config.os)));
    }
    Ok(config)
}

/// The image store. Cheap `&self` methods take an internal lock; imports extract without it
/// and only take it to commit, so they can run concurrently with everything else.
pub struct ImageStore {
    root: PathBuf,
    limits: Limits,
    state: Mutex<State>,
    /// Held (flock) for the store's lifetime: one process per store.
    _lock: File,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore").field("root", &self.root).field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl ImageStore {
    /// Open (creating if needed) the store under `root`, with default [`Limits`].
    pub fn open(root: &Path) -> Result<Self, Error> {
        Self::open_with_limits(root, Limits::default())
    }

    /// Open the store, clean what a crash left behind and check every image is complete.
    pub fn open_with_limits(root: &Path, limits: Limits) -> Result<Self, Error> {
        fs::create_dir_all(root).context(|| format!("creating {}", root.display()))?;
        fs::set_permissions(root, fs::Permissions::from_mode(0o700))
            .context(|| format!("restricting {}", root.display()))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(root.join(LOCK_FILE))
            .context(|| format!("opening {}", root.join(LOCK_FILE).display()))?;
        rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive).map_err(|errno| {
            Error::io(format!("image store {} is in use by another process", root.display()), errno.into())
        })?;
        for sub in ["configs", "layers", "rootfs", "tmp"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).context(|| format!("creating {}", dir.display()))?;
        }
        let store = Self {
            root: root.to_owned(),
            limits,
            state: Mutex::new(State { index: IndexFile::default(), configs: HashMap::new() }),
            _lock: lock,
        };
        store.clean_tmp()?;
        let state = store.recover()?;
        *store.lock() = state;
        Ok(store)
    }

    /// The directory the store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation restores the state on error, so a panic cannot leave it half-done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn config_path(&self, hex: &str) -> PathBuf {
        self.root.join("configs").join(format!("{hex}.json"))
    }

    fn layer_path(&self, diff_hex: &str) -> PathBuf {
        self.root.join("layers").join(format!("{diff_hex}.tar"))
    }

    fn rootfs_path(&self, hex: &str) -> PathBuf {
        self.root.join("rootfs").join(hex)
    }

    fn staging(&self, purpose: &str) -> Result<Staging, Error> {
        let dir = self.tmp_dir().join(format!("{purpose}-{}", random_suffix()));
        fs::DirBuilder::new().mode(0o700).create(&dir).context(|| format!("creating {}", dir.display()))?;
        Ok(Staging { dir })
    }

    /// Remove staging leftovers of a crashed or killed process.
    fn clean_tmp(&self) -> Result<(), Error> {
        let tmp = self.tmp_dir();
        for entry in fs::read_dir(&tmp).context(|| format!("listing {}", tmp.display()))? {
            let path = entry.context(|| format!("listing {}", tmp.display()))?.path();
            info!(path = %path.display(), "removing leftover from an interrupted import");
            remove_any(&path).context(|| format!("removing {}", path.display()))?;
        }
        for entry in fs::read_dir(&self.root).context(|| format!("listing {}", self.root.display()))? {
            let path = entry.context(|| format!("listing {}", self.root.display()))?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            if name.is_some_and(|n| n.starts_with(&format!(".{INDEX_FILE}.tmp-"))) {
                remove_any(&path).context(|| format!("removing {}", path.display()))?;
            }
        }
        Ok(())
    }

    /// Read the index, drop records whose files are gone and files no record uses.
    fn recover(&self) -> Result<State, Error> {
        let index_path = self.root.join(INDEX_FILE);
        let mut index = match fs::read(&index_path) {
            Ok(bytes) => serde_json::from_slice::<IndexFile>(&bytes).map_err(|e| Error::Corrupt {
                path: index_path.clone(),
                reason: format!("cannot parse {INDEX_FILE}: {e}"),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                IndexFile { version: INDEX_VERSION, ..IndexFile::default() }
            }
            Err(e) => return Err(Error::io(format!("reading {}", index_path.display()), e)),
        };
        if index.version > INDEX_VERSION {
            return Err(Error::Corrupt {
                path: index_path,
                reason: format!("{INDEX_FILE} has version {}, this hatch reads up to {INDEX_VERSION}", index.version),
            });
        }
        let mut changed = index.version != INDEX_VERSION;
        index.version = INDEX_VERSION;
        let mut configs = HashMap::new();
        let hexes: Vec<String> = index.images.keys().cloned().collect();
        for hex in hexes {
            match self.check_image(&hex) {
                Ok(config) => {
                    configs.insert(hex, config);
                }
                Err(reason) => {
                    warn!(image = %hex, %reason, "dropping incomplete image from the store");
                    index.images.remove(&hex);
                    changed = true;
                }
            }
        }
        let before = index.tags.len();
        index.tags.retain(|_, hex| configs.contains_key(hex));
        changed |= index.tags.len() != before;

        let used_layers: BTreeSet<String> = configs.values().flat_map(ImageConfig::diff_id_hexes).collect();
        self.remove_unused("rootfs", |name| configs.contains_key(name))?;
        self.remove_unused("configs", |name| name.strip_suffix(".json").is_some_and(|hex| configs.contains_key(hex)))?;
        self.remove_unused("layers", |name| name.strip_suffix(".tar").is_some_and(|hex| used_layers.contains(hex)))?;
        if changed {
            self.write_index(&index)?;
        }
        Ok(State { index, configs })
    }

    fn check_image(&self, hex: &str) -> Result<ImageConfig, String> {
        if !is_full_hex(hex) {
            return Err("not a sha256 id".to_owned());
        }
        let bytes = fs::read(self.config_path(hex)).map_err(|e| format!("config: {e}"))?;
        if sha256_hex(&bytes) != hex {
            return Err("config does not match its id".to_owned());
        }
        let config = ImageConfig::parse(&bytes)?;
        match fs::symlink_metadata(self.rootfs_path(hex)) {
            Ok(meta) if meta.is_dir() => Ok(config),
            Ok(_) => Err("rootfs is not a directory".to_owned()),
            Err(e) => Err(format!("rootfs: {e}")),
        }
    }

    fn remove_unused(&self, sub: &str, keep: impl Fn(&str) -> bool) -> Result<(), Error> {
        let dir = self.root.join(sub);
        for entry in fs::read_dir(&dir).context(|| format!("listing {}", dir.display()))? {
            let path = entry.context(|| format!("listing {}", dir.display()))?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if !keep(&name) {
                info!(path = %path.display(), "removing unreferenced store file");
                remove_any(&path).context(|| format!("removing {}", path.display()))?;
            }
        }
        Ok(())
    }

    fn write_index(&self, index: &IndexFile) -> Result<(), Error> {
        let bytes =
            serde_json::to_vec_pretty(index).map_err(|e| Error::io("encoding index", std::io::Error::other(e)))?;
        let path = self.root.join(INDEX_FILE);
        atomic_write(&path, &bytes).context(|| format!("writing {}", path.display()))
    }

    fn image_of(&self, state: &State, hex: &str) -> Option<Image> {
        let record = state.index.images.get(hex)?;
        let config = state.configs.get(hex)?;
        let repo_tags =
            state.index.tags.iter().filter(|(_, target)| *target == hex).map(|(tag, _)| tag.clone()).collect();
        Some(Image {
            id: sha256_digest(hex),
            repo_tags,
            created: config.created_unix(),
            size: record.size,
            config: config.clone(),
            rootfs: self.rootfs_path(hex),
        })
    }

    fn lookup(state: &State, reference: &str) -> Result<(String, Found), Error> {
        if let Some(hex) = reference.strip_prefix("sha256:") {
            return Self::by_id_prefix(state, hex, reference).map(|hex| (hex, Found::Id));
        }
        if let Ok(parsed) = Reference::parse(reference)
            && let Some(hex) = state.index.tags.get(&parsed.to_string())
        {
            return Ok((hex.clone(), Found::Tag(parsed)));
        }
        Self::by_id_prefix(state, reference, reference).map(|hex| (hex, Found::Id))
    }

    fn by_id_prefix(state: &State, prefix: &str, reference: &str) -> Result<String, Error> {
        let is_hex = prefix.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !is_hex || prefix.len() < MIN_ID_PREFIX || prefix.len() > 64 {
            return Err(Error::NotFound(reference.to_owned()));
        }
        let mut matches = state
            .index
            .images
            .range(prefix.to_owned()..)
            .take_while(|(hex, _)| hex.starts_with(prefix))
            .map(|(hex, _)| hex.clone());
        match (matches.next(), matches.next()) {
            (Some(hex), None) => Ok(hex),
            (Some(_), Some(_)) => Err(Error::Ambiguous(reference.to_owned())),
            (None, _) => Err(Error::NotFound(reference.to_owned())),
        }
    }

    /// All images, newest first (`docker images`).
    pub fn list(&self) -> Vec<Image> {
        let state = self.lock();
        let mut images: Vec<Image> = state.index.images.keys().filter_map(|hex| self.image_of(&state, hex)).collect();
        images.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.id.cmp(&b.id)));
        images
    }

    /// Find an image by `name`, `name:tag` (default tag `latest`), `sha256:<hex>`, full hex
    /// or a unique id prefix of at least 4 characters. Tags win over id prefixes, as in Docker.
    pub fn resolve(&self, reference: &str) -> Result<Image, Error> {
        let state = self.lock();
        let (hex, _) = Self::lookup(&state, reference)?;
        self.image_of(&state, &hex).ok_or_else(|| Error::NotFound(reference.to_owned()))
    }

    /// The id (`sha256:<hex>`) a reference names, e.g. to check whether a container uses it.
    pub fn image_id(&self, reference: &str) -> Result<String, Error> {
        let state = self.lock();
        Self::lookup(&state, reference).map(|(hex, _)| sha256_digest(&hex))
    }

    /// The image config JSON exactly as stored (its sha256 is the image id).
    pub fn config_json(&self, reference: &str) -> Result<Vec<u8>, Error> {
        let hex = {
            let state = self.lock();
            Self::lookup(&state, reference)?.0
        };
        let path = self.config_path(&hex);
        fs::read(&path).context(|| format!("reading {}", path.display()))
    }

    /// Point `target` (`name[:tag]`, default `latest`) at the image `source` names
    /// (`docker tag`). A tag already pointing elsewhere moves; the old image stays, untagged.
    pub fn tag(&self, source: &str, target: &str) -> Result<Image, Error> {
        let target = Reference::parse(target)?;
        let mut state = self.lock();
        let (hex, _) = Self::lookup(&state, source)?;
        let previous = state.index.tags.insert(target.to_string(), hex.clone());
        if let Err(e) = self.write_index(&state.index) {
            match previous {
                Some(old) => state.index.tags.insert(target.to_string(), old),
                None => state.index.tags.remove(&target.to_string()),
            };
            return Err(e);
        }
        self.image_of(&state, &hex).ok_or_else(|| Error::NotFound(source.to_owned()))
    }

    /// `docker rmi` without a container check: see [`ImageStore::remove_guarded`].
    pub fn remove(&self, reference: &str, force: bool) -> Result<Vec<RemoveAction>, Error> {
        self.remove_guarded(reference, force, |_| None)
    }

    /// `docker rmi` with Docker's rules. By tag: untag; delete the image if that was its last
    /// tag. By id: untag everything and delete, which needs `force` when the tags span several
    /// repositories. `in_use` is asked (under the store lock: it must not call back into the
    /// store) before an image would be deleted; `Some(reason)` (e.g. "container 1a2b is using
    /// its referenced image") refuses without `force`, and with `force` only untags, keeping
    /// the image so the container's rootfs stays valid.
    pub fn remove_guarded(
        &self,
        reference: &str,
        force: bool,
        in_use: impl FnOnce(&Image) -> Option<String>,
    ) -> Result<Vec<RemoveAction>, Error> {
        let mut state = self.lock();
        let (hex, found) = Self::lookup(&state, reference)?;
        let image = self.image_of(&state, &hex).ok_or_else(|| Error::NotFound(reference.to_owned()))?;
        let short = image.short_id().to_owned();
        let (untag, mut delete) = match &found {
            Found::Tag(tag) => (vec![tag.to_string()], image.repo_tags.len() <= 1),
            Found::Id => {
                let repositories: BTreeSet<&str> =
                    image.repo_tags.iter().map(|t| t.rsplit_once(':').map_or(t.as_str(), |(name, _)| name)).collect();
                if repositories.len() > 1 && !force {
                    return Err(Error::Conflict(format!(
                        "unable to delete {short} (must be forced) - image is referenced in multiple repositories"
                    )));
                }
                (image.repo_tags.clone(), true)
            }
        };
        if delete && let Some(reason) = in_use(&image) {
            if !force {
                return Err(Error::Conflict(match &found {
                    Found::Tag(_) => {
                        format!("unable to remove repository reference {reference:?} (must force) - {reason}")
                    }
                    Found::Id => format!("unable to delete {short} (must be forced) - {reason}"),
                }));
            }
            delete = false;
        }

        let saved_index = state.index.clone();
        let mut actions = Vec::new();
        for tag in &untag {
            state.index.tags.remove(tag);
            actions.push(RemoveAction::Untagged(tag.clone()));
        }
        if delete {
            state.index.images.remove(&hex);
            actions.push(RemoveAction::Deleted(image.id.clone()));
        }
        if let Err(e) = self.write_index(&state.index) {
            state.index = saved_index;
            return Err(e);
        }
        if !delete {
            return Ok(actions);
        }
        // The index no longer names the image: from here on, failures only leave garbage that
        // the next open collects.
        let removed_config = state.configs.remove(&hex);
        let used_layers: BTreeSet<String> = state.configs.values().flat_map(ImageConfig::diff_id_hexes).collect();
        let doomed = self.tmp_dir().join(format!("delete-{hex}-{}", random_suffix()));
        let moved = fs::rename(self.rootfs_path(&hex), &doomed);
        let _ = fs::remove_file(self.config_path(&hex));
        for diff in removed_config.iter().flat_map(ImageConfig::diff_id_hexes) {
            if !used_layers.contains(&diff) {
                let _ = fs::remove_file(self.layer_path(&diff));
            }
        }
        drop(state);
        match moved {
            Ok(()) => {
                if let Err(e) = remove_any(&doomed) {
                    warn!(path = %doomed.display(), error = %e, "could not remove deleted rootfs");
                }
            }
            Err(e) => warn!(image = %hex, error = %e, "could not move deleted rootfs away"),
        }
        Ok(actions)
    }

    /// `docker import`: a plain rootfs tarball (optionally gzip-compressed) becomes a one-layer
    /// image with `PATH` set and no `Cmd`, tagged `reference` if given.
    pub fn import_tar(&self, reader: impl Read, reference: Option<&str>, changes: &[String]) -> Result<Image, Error> {
        self.import_tar_with(reader, &ImportOptions { reference, changes, message: None })
    }

    /// [`ImageStore::import_tar`] with all of `docker import`'s options.
    pub fn import_tar_with(&self, reader: impl Read, options: &ImportOptions<'_>) -> Result<Image, Error> {
        let (tags, run) = Self::prepare_import(options)?;
        let staging = self.staging("import")?;
        let rootfs = staging.mkdir("rootfs")?;
        let layer = staging.path("layer.tar");
        let mut budget = Budget::new(self.limits);
        let (diff_hex, length, stats) = extract_layer(reader, "tarball", &rootfs, Some(&layer), &mut budget)?;
        if length == 0 {
            return Err(Error::InvalidArchive("the tarball is empty".to_owned()));
        }
        self.finish_import(staging, rootfs, layer, diff_hex, stats, run, tags, options, "-")
    }

    /// Import a rootfs directory: it is archived (never following symlinks inside it; device
    /// nodes and sockets are skipped) and extracted like a tarball.
    pub fn import_dir(&self, dir: &Path, reference: Option<&str>) -> Result<Image, Error> {
        self.import_dir_with(dir, &ImportOptions { reference, changes: &[], message: None })
    }

    /// [`ImageStore::import_dir`] with `docker import`'s options.
    pub fn import_dir_with(&self, dir: &Path, options: &ImportOptions<'_>) -> Result<Image, Error> {
        let (tags, run) = Self::prepare_import(options)?;
        let staging = self.staging("import")?;
        let rootfs = staging.mkdir("rootfs")?;
        let layer = staging.path("layer.tar");
        let writer = pack_dir(dir, BufWriter::with_capacity(COPY_BUFFER, create_new_file(&layer)?), self.limits)?;
        writer.into_inner().map_err(|e| Error::io(format!("writing {}", layer.display()), e.into_error()))?;
        let file = File::open(&layer).context(|| format!("opening {}", layer.display()))?;
        let mut budget = Budget::new(self.limits);
        let (diff_hex, _, stats) = extract_layer(file, "directory", &rootfs, None, &mut budget)?;
        let source = dir.display().to_string();
        self.finish_import(staging, rootfs, layer, diff_hex, stats, run, tags, options, &source)
    }

    fn prepare_import(options: &ImportOptions<'_>) -> Result<(Vec<Reference>, RunConfig), Error> {
        let tags = options.reference.map(Reference::parse).transpose()?.into_iter().collect();
        let mut run = RunConfig { env: Some(vec![default_path_env()]), ..RunConfig::default() };
        apply_changes(&mut run, options.changes)?;
        Ok((tags, run))
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_import(
        &self,
        staging: Staging,
        rootfs: PathBuf,
        layer: PathBuf,
        diff_hex: String,
        stats: LayerStats,
        run: RunConfig,
        tags: Vec<Reference>,
        options: &ImportOptions<'_>,
        source: &str,
    ) -> Result<Image, Error> {
        let (seconds, nanos) = now();
        let created = format_rfc3339(seconds, nanos);
        let config = ImageConfig {
            architecture: host_architecture().to_owned(),
            os: "linux".to_owned(),
            created: Some(created.clone()),
            comment: options.message.map(str::to_owned),
            config: run,
            rootfs: RootFs { kind: "layers".to_owned(), diff_ids: vec![sha256_digest(&diff_hex)] },
            history: vec![History {
                created: Some(created),
                comment: Some(options.message.map_or_else(|| format!("Imported from {source}"), str::to_owned)),
                ..History::default()
            }],
            ..ImageConfig::default()
        };
        let config_bytes =
            serde_json::to_vec(&config).map_err(|e| Error::io("encoding image config", std::io::Error::other(e)))?;
        let staged = StagedImage {
            hex: sha256_hex(&config_bytes),
            config_bytes,
            config,
            rootfs: Some(rootfs),
            size: stats.content_bytes,
            tags,
        };
        let layers = StagedLayers::from([(diff_hex, layer)]);
        let mut images = self.commit(&staging, vec![staged], layers)?;
        images.pop().ok_or_else(|| Error::InvalidArchive("nothing was imported".to_owned()))
    }

    /// `docker load`: read a `docker save` archive or OCI image layout tarball, flatten each
    /// image's layers into a rootfs and tag it as the archive says. All or nothing.
    pub fn load(&self, reader: impl Read) -> Result<Vec<LoadedImage>, Error> {
        let staging = self.staging("load")?;
        let spool_dir = staging.mkdir("archive")?;
        let spool = Spool::read(reader, &spool_dir, self.limits)?;
        let planned = spool.plan()?;
        let mut budget = Budget::new(self.limits);
        let mut layers = StagedLayers::new();
        let mut staged = Vec::new();
        for (number, image) in planned.into_iter().enumerate() {
            let hex = sha256_hex(&image.config);
            let config = parse_config(&hex, &image.config)?;
            let diff_hexes = config.diff_id_hexes();
            if diff_hexes.len() != image.layers.len() {
                return Err(Error::InvalidArchive(format!(
                    "image sha256:{hex}: the config lists {} layers but the manifest {}",
                    diff_hexes.len(),
                    image.layers.len()
                )));
            }
            if diff_hexes.len() > self.limits.max_layers {
                return Err(Error::Limit(format!(
                    "image sha256:{hex} has more than {} layers",
                    self.limits.max_layers
                )));
            }
            let known =
                self.lock().index.images.contains_key(&hex) || staged.iter().any(|s: &StagedImage| s.hex == hex);
            let mut size = 0;
            let rootfs = if known {
                size = self.lock().index.images.get(&hex).map_or(0, |r| r.size);
                None
            } else {
                let rootfs = staging.mkdir(&format!("rootfs-{number}"))?;
                for (key, expected) in image.layers.iter().zip(&diff_hexes) {
                    let stats =
                        self.extract_load_layer(&spool, &staging, key, expected, &rootfs, &mut layers, &mut budget)?;
                    size += stats.content_bytes;
                }
                Some(rootfs)
            };
            staged.push(StagedImage { hex, config_bytes: image.config, config, rootfs, size, tags: image.tags });
        }
        let tags: Vec<Vec<String>> = staged.iter().map(|s| s.tags.iter().map(ToString::to_string).collect()).collect();
        let images = self.commit(&staging, staged, layers)?;
        Ok(images.into_iter().zip(tags).map(|(image, tags)| LoadedImage { image, tags }).collect())
    }

    /// Extract one layer of a loaded image, from a verified copy when one exists (a blob the
    /// store or this load already has), else from the archive, checking its diff id.
    #[allow(clippy::too_many_arguments)]
    fn extract_load_layer(
        &self,
        spool: &Spool,
        staging: &Staging,
        key: &str,
        expected: &str,
        rootfs: &Path,
        layers: &mut StagedLayers,
        budget: &mut Budget,
    ) -> Result<LayerStats, Error> {
        let staged_copy = staging.path(&format!("layer-{expected}.tar"));
        // Hard-link a blob the store has, so a concurrent `remove` cannot take it away
        // before this load commits.
        if !layers.contains_key(expected) && fs::hard_link(self.layer_path(expected), &staged_copy).is_ok() {
            layers.insert(expected.to_owned(), staged_copy.clone());
        }
        let (source, copy_to) = match layers.get(expected) {
            Some(path) => (File::open(path).context(|| format!("opening {}", path.display()))?, None),
            None => (spool.open(key)?, Some(staged_copy.as_path())),
        };
        let what = format!("layer {key}");
        let (diff_hex, _, stats) = extract_layer(source, &what, rootfs, copy_to, budget)?;
        if diff_hex != expected {
            return Err(Error::InvalidArchive(format!(
                "{what} has diff id sha256:{diff_hex} but the image config says sha256:{expected}"
            )));
        }
        if copy_to.is_some() {
            layers.insert(diff_hex, staged_copy);
        }
        Ok(stats)
    }

    /// Move staged images into place and record them and their tags, under the lock.
    fn commit(&self, staging: &Staging, images: Vec<StagedImage>, layers: StagedLayers) -> Result<Vec<Image>, Error> {
        // Make the extracted files durable before the index can point at them.
        let staging_dir = File::open(&staging.dir).context(|| format!("opening {}", staging.dir.display()))?;
        rustix::fs::syncfs(&staging_dir).context(|| "syncing the image store".to_owned())?;

        let mut state = self.lock();
        let saved_index = state.index.clone();
        let result = self.commit_locked(&mut state, &images, &layers);
        if let Err(e) = result {
            state.index = saved_index;
            let State { index, configs } = &mut *state;
            configs.retain(|hex, _| index.images.contains_key(hex));
            return Err(e);
        }
        // One image per staged image, in order: `load` pairs them with the archive's tags.
        images
            .iter()
            .map(|image| {
                self.image_of(&state, &image.hex).ok_or_else(|| Error::Corrupt {
                    path: self.root.join(INDEX_FILE),
                    reason: format!("image sha256:{} vanished while it was committed", image.hex),
                })
            })
            .collect()
    }

    fn commit_locked(&self, state: &mut State, images: &[StagedImage], layers: &StagedLayers) -> Result<(), Error> {
        for (diff_hex, path) in layers {
            let destination = self.layer_path(diff_hex);
            if !destination.exists() {
                fs::rename(path, &destination).context(|| format!("storing layer {diff_hex}"))?;
            }
        }
        let (added, _) = now();
        for image in images {
            if !state.index.images.contains_key(&image.hex) {
                let Some(rootfs) = &image.rootfs else {
                    return Err(Error::Conflict(format!(
                        "image sha256:{} was removed while it was being loaded; load again",
                        image.hex
                    )));
                };
                atomic_write(&self.config_path(&image.hex), &image.config_bytes)
                    .context(|| format!("storing config of sha256:{}", image.hex))?;
                let destination = self.rootfs_path(&image.hex);
                // Only an interrupted earlier commit can have left one; no record uses it.
                remove_any(&destination).context(|| format!("removing {}", destination.display()))?;
                fs::rename(rootfs, &destination).context(|| format!("storing rootfs of sha256:{}", image.hex))?;
                state.index.images.insert(image.hex.clone(), ImageRecord { size: image.size, added });
                state.configs.insert(image.hex.clone(), image.config.clone());
                info!(image = %image.hex, size = image.size, "image added");
            }
            for tag in &image.tags {
                if let Some(old) = state.index.tags.insert(tag.to_string(), image.hex.clone())
                    && old != image.hex
                {
                    info!(%tag, old = %old, new = %image.hex, "tag moved to a new image");
                }
            }
        }
        self.write_index(&state.index)
    }

    /// `docker save`: write the images the references name as one archive (Docker 25 layout:
    /// `manifest.json` plus an OCI image layout). A tag reference saves that tag; a bare name
    /// saves every tag of the repository; an id saves the image untagged.
    pub fn save<W: Write>(&self, references: &[&str], writer: W) -> Result<W, Error> {
        if references.is_empty() {
            return Err(Error::NotFound("no image given to save".to_owned()));
        }
        let images = {
            let state = self.lock();
            let mut wanted: Vec<(String, Vec<Reference>)> = Vec::new();
            let mut want = |hex: String, tag: Option<Reference>| {
                let position = match wanted.iter().position(|(h, _)| *h == hex) {
                    Some(position) => position,
                    None => {
                        wanted.push((hex, Vec::new()));
                        wanted.len() - 1
                    }
                };
                if let Some(tag) = tag
                    && !wanted[position].1.contains(&tag)
                {
                    wanted[position].1.push(tag);
                }
            };
            for reference in references {
                let repository_tags: Vec<(Reference, String)> = match Reference::parse_tagged(reference) {
                    Ok((parsed, false)) => state
                        .index
                        .tags
                        .iter()
                        .filter_map(|(tag, hex)| {
                            let tag = Reference::parse(tag).ok()?;
                            (tag.name() == parsed.name()).then(|| (tag, hex.clone()))
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                if repository_tags.is_empty() {
                    match Self::lookup(&state, reference)? {
                        (hex, Found::Tag(tag)) => want(hex, Some(tag)),
                        (hex, Found::Id) => want(hex, None),
                    }
                } else {
                    for (tag, hex) in repository_tags {
                        want(hex, Some(tag));
                    }
                }
            }
            // Open everything under the lock: an open file survives a concurrent remove.
            wanted
                .into_iter()
                .map(|(hex, tags)| self.open_for_save(&state, &hex, tags))
                .collect::<Result<Vec<_>, _>>()?
        };
        write_archive(writer, images)
    }

    fn open_for_save(&self, state: &State, hex: &str, tags: Vec<Reference>) -> Result<SaveImage, Error> {
        let config_path = self.config_path(hex);
        let config = File::open(&config_path)
            .and_then(|file| read_limited(file, self.limits.max_metadata_bytes))
            .context(|| format!("reading {}", config_path.display()))?;
        let diff_hexes = state.configs.get(hex).map(ImageConfig::diff_id_hexes).unwrap_or_default();
        let layers = diff_hexes
            .into_iter()
            .map(|diff| {
                let path = self.layer_path(&diff);
                let file = File::open(&path).map_err(|e| Error::Corrupt {
                    path: path.clone(),
                    reason: format!("layer blob of image sha256:{hex} is unreadable ({e}); import the image again"),
                })?;
                Ok((diff, file))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(SaveImage { config, layers, tags })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_with(hexes: &[&str]) -> State {
        let mut index = IndexFile::default();
        for hex in hexes {
            index.images.insert((*hex).to_owned(), ImageRecord { size: 0, added: 0 });
        }
        index.tags.insert("abcd:latest".to_owned(), hexes[0].to_owned());
        State { index, configs: HashMap::new() }
    }

    #[test]
    fn id_prefixes_must_be_unique_and_long_enough() {
        let a = format!("abcd1{}", "0".repeat(59));
        let b = format!("abcd2{}", "0".repeat(59));
        let c = format!("ffff0{}", "0".repeat(59));
        let state = state_with(&[&c, &a, &b]);
        let find = |r: &str| ImageStore::lookup(&state, r).map(|(hex, _)| hex);
        assert!(matches!(find("abcd1"), Ok(hex) if hex == a));
        assert!(matches!(find(&format!("sha256:{b}")), Ok(hex) if hex == b));
        assert!(matches!(find("abc"), Err(Error::NotFound(_))));
        assert!(matches!(find("sha256:abcd"), Err(Error::Ambiguous(_))));
        // A tag named like the prefix wins over the ambiguity.
        assert!(matches!(find("abcd"), Ok(hex) if hex == c));
        assert!(matches!(find("ffff"), Ok(hex) if hex == c));
        assert!(matches!(find("ABCD1"), Err(Error::NotFound(_))));
        let err = find("sha256:abcd").err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("ambiguous image reference \"sha256:abcd\": it matches more than one image"));
    }
}
