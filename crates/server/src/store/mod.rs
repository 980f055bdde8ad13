//! The server's key-value store: one etcd-shaped trait, an embedded implementation (redb) used by
//! default, and etcd behind the `etcd` cargo feature.
//!
//! Every write bumps one global revision; each key remembers the revision that created it and the
//! one that last modified it (etcd's `create_revision`/`mod_revision`). Kubernetes' resourceVersion
//! is the modification revision, and watches resume after a revision, so an informer's list-then-watch
//! misses nothing.

mod embedded;
#[cfg(feature = "etcd")]
mod etcd;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;

pub use embedded::EmbeddedStore;
#[cfg(feature = "etcd")]
pub use etcd::EtcdStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key {0} already exists")]
    AlreadyExists(String),
    #[error("key {0} not found")]
    NotFound(String),
    /// A compare-and-swap lost: the key changed since the caller read it.
    #[error("key {key} was modified (expected revision {expected}, found {found})")]
    Conflict { key: String, expected: u64, found: u64 },
    /// A watch asked for history that is no longer kept.
    #[error("revision {requested} is too old (oldest available is {oldest})")]
    Compacted { requested: u64, oldest: u64 },
    #[error("unsupported store url {0:?} (use `embedded`, `redb:///path/to/file` or `etcd://host:port[,host:port]`)")]
    BadUrl(String),
    #[error("this hatch was built without etcd support (cargo feature `etcd`)")]
    EtcdDisabled,
    #[error("store backend: {0}")]
    Backend(String),
}

/// One stored key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
}

/// A change seen by a watch. `revision` is the store revision of the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A create or an update (a create has `create_revision == mod_revision`).
    Put(KeyValue),
    /// A delete; `previous` is the value before the delete when the backend knows it.
    Delete { key: String, revision: u64, previous: Option<KeyValue> },
}

impl WatchEvent {
    pub fn revision(&self) -> u64 {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { revision, .. } => *revision,
        }
    }

    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }
}

/// Events of a watch, in revision order. The stream ends (with an error item, when there is one)
/// if the watch cannot continue; callers then list again.
pub type WatchStream = mpsc::Receiver<Result<WatchEvent, StoreError>>;

/// Result of a prefix listing: the keys and the store revision the listing reflects.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub items: Vec<KeyValue>,
    pub revision: u64,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;
    async fn list(&self, prefix: &str) -> Result<Listing, StoreError>;
    /// Creates `key`; fails with `AlreadyExists` if it is present. Returns the new revision.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<u64, StoreError>;
    /// Replaces `key` if its modification revision is still `expected`. Returns the new revision.
    async fn update(&self, key: &str, value: Vec<u8>, expected: u64) -> Result<u64, StoreError>;
    /// Writes `key` whatever it holds. Returns the new revision.
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<u64, StoreError>;
    /// Deletes `key` (only if its modification revision is `expected`, when given). Returns the
    /// deleted value with the revision of the delete as its `mod_revision`.
    async fn delete(&self, key: &str, expected: Option<u64>) -> Result<KeyValue, StoreError>;
    /// Changes under `prefix` with a revision greater than `after`.
    async fn watch(&self, prefix: &str, after: u64) -> Result<WatchStream, StoreError>;
    /// The current store revision.
    async fn revision(&self) -> Result<u64, StoreError>;
}

/// Opens the store named by `url`: `embedded` (the default, `DATA/store.redb`), `redb:///path`, or
/// `etcd://host:port[,host:port…][/prefix]`.
pub async fn open(url: Option<&str>, data_dir: &Path) -> Result<Arc<dyn Store>, StoreError> {
    match url.unwrap_or("embedded") {
        "" | "embedded" => Ok(Arc::new(EmbeddedStore::open(&data_dir.join("store.redb")).await?)),
        u if u.starts_with("redb://") => {
            let path = &u["redb://".len()..];
            if path.is_empty() {
                return Err(StoreError::BadUrl(u.to_string()));
            }
            Ok(Arc::new(EmbeddedStore::open(Path::new(path)).await?))
        }
        u if u.starts_with("etcd://") => open_etcd(u).await,
        other => Err(StoreError::BadUrl(other.to_string())),
    }
}

#[cfg(feature = "etcd")]
async fn open_etcd(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    Ok(Arc::new(EtcdStore::connect_url(url).await?))
}

#[cfg(not(feature = "etcd"))]
async fn open_etcd(_url: &str) -> Result<Arc<dyn Store>, StoreError> {
    Err(StoreError::EtcdDisabled)
}

/// The smallest key greater than every key starting with `prefix` (etcd's range end for a prefix).
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
