//! The embedded store: redb on one file, with watch history kept in memory.
//!
//! Writes are serialised (redb has one writer anyway) so that revisions are published to watchers
//! in order. The last `HISTORY` events are kept for watches that resume from a recent revision;
//! older resumes get `Compacted` and the client lists again, as with a compacted etcd.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::mpsc;

use super::{KeyValue, Listing, Store, StoreError, WatchEvent, WatchStream};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION_KEY: &str = "revision";
/// Events kept for resuming watches.
const HISTORY: usize = 8192;
/// Events a watcher may fall behind before it is dropped.
const WATCH_BUFFER: usize = 4096;

pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    /// Held across a write transaction and its publication, so watchers see revisions in order.
    writer: Mutex<()>,
    watch: Mutex<WatchState>,
}

struct WatchState {
    history: VecDeque<WatchEvent>,
    /// Every event with a revision above this one is in `history`.
    floor: u64,
    watchers: Vec<Watcher>,
}

struct Watcher {
    prefix: String,
    tx: mpsc::Sender<Result<WatchEvent, StoreError>>,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Value layout: create revision (u64 LE), modification revision (u64 LE), data.
fn encode(create: u64, modified: u64, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + data.len());
    v.extend_from_slice(&create.to_le_bytes());
    v.extend_from_slice(&modified.to_le_bytes());
    v.extend_from_slice(data);
    v
}

fn decode(key: &str, raw: &[u8]) -> Result<KeyValue, StoreError> {
    if raw.len() < 16 {
        return Err(StoreError::Backend(format!("corrupt value for key {key}")));
    }
    let (create, rest) = raw.split_at(8);
    let (modified, data) = rest.split_at(8);
    let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
    Ok(KeyValue {
        key: key.to_string(),
        value: data.to_vec(),
        create_revision: word(create),
        mod_revision: word(modified),
    })
}

enum Write {
    Create(Vec<u8>),
    Update(Vec<u8>, u64),
    Put(Vec<u8>),
    Delete(Option<u64>),
}

fn insert(
    kv: &mut redb::Table<&str, &[u8]>,
    key: &str,
    existing: Option<&KeyValue>,
    revision: u64,
    value: Vec<u8>,
) -> Result<(WatchEvent, KeyValue), StoreError> {
    let create = existing.map(|e| e.create_revision).unwrap_or(revision);
    kv.insert(key, encode(create, revision, &value).as_slice()).map_err(backend)?;
    let stored = KeyValue { key: key.to_string(), value, create_revision: create, mod_revision: revision };
    Ok((WatchEvent::Put(stored.clone()), stored))
}

impl EmbeddedStore {
    pub async fn open(path: &Path) -> Result<EmbeddedStore, StoreError> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || EmbeddedStore::open_blocking(&path)).await.map_err(backend)?
    }

    fn open_blocking(path: &Path) -> Result<EmbeddedStore, StoreError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(backend)?;
        }
        let db = Database::create(path).map_err(|e| StoreError::Backend(format!("open {}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(backend)?;
        let revision = {
            txn.open_table(KV).map_err(backend)?;
            let meta = txn.open_table(META).map_err(backend)?;
            meta.get(REVISION_KEY).map_err(backend)?.map(|g| g.value()).unwrap_or(0)
        };
        txn.commit().map_err(backend)?;
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                db,
                writer: Mutex::new(()),
                watch: Mutex::new(WatchState { history: VecDeque::new(), floor: revision, watchers: Vec::new() }),
            }),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner)).await.map_err(backend)?
    }
}

impl Inner {
    fn read_revision(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let meta = txn.open_table(META).map_err(backend)?;
        Ok(meta.get(REVISION_KEY).map_err(backend)?.map(|g| g.value()).unwrap_or(0))
    }

    fn write(&self, key: &str, op: Write) -> Result<KeyValue, StoreError> {
        let _serial = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let txn = self.db.begin_write().map_err(backend)?;
        let (event, result) = {
            let mut kv = txn.open_table(KV).map_err(backend)?;
            let mut meta = txn.open_table(META).map_err(backend)?;
            let revision = meta.get(REVISION_KEY).map_err(backend)?.map(|g| g.value()).unwrap_or(0) + 1;
            let existing = match kv.get(key).map_err(backend)? {
                Some(raw) => Some(decode(key, raw.value())?),
                None => None,
            };
            let check = |expected: u64| match &existing {
                None => Err(StoreError::NotFound(key.to_string())),
                Some(cur) if cur.mod_revision != expected => {
                    Err(StoreError::Conflict { key: key.to_string(), expected, found: cur.mod_revision })
                }
                Some(_) => Ok(()),
            };
            let (event, result) = match op {
                Write::Delete(expected) => {
                    match (expected, &existing) {
                        (Some(e), _) => check(e)?,
                        (None, None) => return Err(StoreError::NotFound(key.to_string())),
                        (None, Some(_)) => {}
                    }
                    kv.remove(key).map_err(backend)?;
                    let mut deleted = existing.clone().ok_or_else(|| StoreError::NotFound(key.to_string()))?;
                    deleted.mod_revision = revision;
                    (WatchEvent::Delete { key: key.to_string(), revision, previous: existing }, deleted)
                }
                Write::Create(value) => {
                    if existing.is_some() {
                        return Err(StoreError::AlreadyExists(key.to_string()));
                    }
                    insert(&mut kv, key, existing.as_ref(), revision, value)?
                }
                Write::Update(value, expected) => {
                    check(expected)?;
                    insert(&mut kv, key, existing.as_ref(), revision, value)?
                }
                Write::Put(value) => insert(&mut kv, key, existing.as_ref(), revision, value)?,
            };
            meta.insert(REVISION_KEY, revision).map_err(backend)?;
            (event, result)
        };
        txn.commit().map_err(backend)?;
        self.publish(event);
        Ok(result)
    }

    fn publish(&self, event: WatchEvent) {
        let mut state = self.watch.lock().unwrap_or_else(|p| p.into_inner());
        state.watchers.retain(|w| {
            if !event.key().starts_with(&w.prefix) {
                return !w.tx.is_closed();
            }
            // A watcher that cannot keep up is dropped; its client lists and watches again.
            w.tx.try_send(Ok(event.clone())).is_ok()
        });
        state.history.push_back(event);
        while state.history.len() > HISTORY {
            if let Some(old) = state.history.pop_front() {
                state.floor = old.revision();
            }
        }
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_string();
        self.blocking(move |inner| {
            let txn = inner.db.begin_read().map_err(backend)?;
            let kv = txn.open_table(KV).map_err(backend)?;
            match kv.get(key.as_str()).map_err(backend)? {
                Some(raw) => Ok(Some(decode(&key, raw.value())?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        let prefix = prefix.to_string();
        self.blocking(move |inner| {
            let txn = inner.db.begin_read().map_err(backend)?;
            let kv = txn.open_table(KV).map_err(backend)?;
            let meta = txn.open_table(META).map_err(backend)?;
            let revision = meta.get(REVISION_KEY).map_err(backend)?.map(|g| g.value()).unwrap_or(0);
            let mut items = Vec::new();
            for entry in kv.range(prefix.as_str()..).map_err(backend)? {
                let (k, v) = entry.map_err(backend)?;
                let key = k.value();
                if !key.starts_with(prefix.as_str()) {
                    break;
                }
                items.push(decode(key, v.value())?);
            }
            Ok(Listing { items, revision })
        })
        .await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<u64, StoreError> {
        let key = key.to_string();
        self.blocking(move |inner| inner.write(&key, Write::Create(value)).map(|kv| kv.mod_revision)).await
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: u64) -> Result<u64, StoreError> {
        let key = key.to_string();
        self.blocking(move |inner| inner.write(&key, Write::Update(value, expected)).map(|kv| kv.mod_revision)).await
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<u64, StoreError> {
        let key = key.to_string();
        self.blocking(move |inner| inner.write(&key, Write::Put(value)).map(|kv| kv.mod_revision)).await
    }

    async fn delete(&self, key: &str, expected: Option<u64>) -> Result<KeyValue, StoreError> {
        let key = key.to_string();
        self.blocking(move |inner| inner.write(&key, Write::Delete(expected))).await
    }

    async fn watch(&self, prefix: &str, after: u64) -> Result<WatchStream, StoreError> {
        let mut state = self.inner.watch.lock().unwrap_or_else(|p| p.into_inner());
        if after < state.floor {
            return Err(StoreError::Compacted { requested: after, oldest: state.floor });
        }
        let backlog: Vec<WatchEvent> =
            state.history.iter().filter(|e| e.revision() > after && e.key().starts_with(prefix)).cloned().collect();
        let (tx, rx) = mpsc::channel(WATCH_BUFFER.max(backlog.len() + 64));
        for event in backlog {
            let _ = tx.try_send(Ok(event));
        }
        state.watchers.push(Watcher { prefix: prefix.to_string(), tx });
        Ok(rx)
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        self.blocking(|inner| inner.read_revision()).await
    }
}
