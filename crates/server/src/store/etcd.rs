//! The etcd store (v3 API, etcd 3.4+): for several servers sharing one cluster state.
//!
//! Keys live under a prefix (`/hatch` unless the URL names another), revisions are etcd's own,
//! and compare-and-swap is an etcd transaction on the key's modification revision.

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use tokio::sync::mpsc;

use super::{KeyValue, Listing, Store, StoreError, WatchEvent, WatchStream};

const DEFAULT_PREFIX: &str = "/hatch";
const WATCH_BUFFER: usize = 1024;

pub struct EtcdStore {
    client: Client,
    prefix: String,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("etcd: {e}"))
}

fn revision_of(header: Option<&etcd_client::ResponseHeader>) -> u64 {
    header.map(|h| h.revision()).unwrap_or(0).max(0) as u64
}

impl EtcdStore {
    /// `etcd://host:port[,host:port…][/prefix]`.
    pub async fn connect_url(url: &str) -> Result<EtcdStore, StoreError> {
        let rest = url.strip_prefix("etcd://").ok_or_else(|| StoreError::BadUrl(url.to_string()))?;
        let (hosts, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/').to_string()),
            None => (rest, DEFAULT_PREFIX.to_string()),
        };
        let endpoints: Vec<String> =
            hosts.split(',').filter(|h| !h.is_empty()).map(|h| format!("http://{h}")).collect();
        if endpoints.is_empty() {
            return Err(StoreError::BadUrl(url.to_string()));
        }
        EtcdStore::connect(&endpoints, &prefix).await
    }

    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<EtcdStore, StoreError> {
        let options =
            ConnectOptions::new().with_connect_timeout(Duration::from_secs(5)).with_timeout(Duration::from_secs(15));
        let client = Client::connect(endpoints, Some(options)).await.map_err(backend)?;
        let store = EtcdStore { client, prefix: prefix.to_string() };
        // Fail at start, not at the first request, when etcd is not there.
        store.revision().await?;
        Ok(store)
    }

    /// Discards history up to `revision` (etcd keeps every revision until compacted).
    pub async fn compact(&self, revision: u64) -> Result<(), StoreError> {
        self.client.clone().compact(revision as i64, None).await.map_err(backend)?;
        Ok(())
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn convert(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
        let key = kv.key_str().map_err(backend)?;
        let key = key.strip_prefix(self.prefix.as_str()).unwrap_or(key).to_string();
        Ok(KeyValue {
            key,
            value: kv.value().to_vec(),
            create_revision: kv.create_revision().max(0) as u64,
            mod_revision: kv.mod_revision().max(0) as u64,
        })
    }

    /// Why a guarded transaction failed: the key is gone, or it changed.
    async fn explain_failure(&self, key: &str, expected: u64) -> StoreError {
        match self.get(key).await {
            Ok(Some(cur)) => StoreError::Conflict { key: key.to_string(), expected, found: cur.mod_revision },
            Ok(None) => StoreError::NotFound(key.to_string()),
            Err(e) => e,
        }
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let resp = self.client.clone().get(self.full(key), None).await.map_err(backend)?;
        resp.kvs().first().map(|kv| self.convert(kv)).transpose()
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        let resp =
            self.client.clone().get(self.full(prefix), Some(GetOptions::new().with_prefix())).await.map_err(backend)?;
        let items = resp.kvs().iter().map(|kv| self.convert(kv)).collect::<Result<Vec<_>, _>>()?;
        Ok(Listing { items, revision: revision_of(resp.header()) })
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<u64, StoreError> {
        let full = self.full(key);
        let txn = Txn::new()
            .when([Compare::create_revision(full.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(full, value, None)]);
        let resp = self.client.clone().txn(txn).await.map_err(backend)?;
        if !resp.succeeded() {
            return Err(StoreError::AlreadyExists(key.to_string()));
        }
        Ok(revision_of(resp.header()))
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: u64) -> Result<u64, StoreError> {
        let full = self.full(key);
        let txn = Txn::new()
            .when([Compare::mod_revision(full.clone(), CompareOp::Equal, expected as i64)])
            .and_then([TxnOp::put(full, value, None)]);
        let resp = self.client.clone().txn(txn).await.map_err(backend)?;
        if !resp.succeeded() {
            return Err(self.explain_failure(key, expected).await);
        }
        Ok(revision_of(resp.header()))
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<u64, StoreError> {
        let resp = self.client.clone().put(self.full(key), value, None).await.map_err(backend)?;
        Ok(revision_of(resp.header()))
    }

    async fn delete(&self, key: &str, expected: Option<u64>) -> Result<KeyValue, StoreError> {
        let full = self.full(key);
        let guard = match expected {
            Some(rev) => Compare::mod_revision(full.clone(), CompareOp::Equal, rev as i64),
            // "Exists": a key that was ever created has a non-zero version.
            None => Compare::version(full.clone(), CompareOp::Greater, 0),
        };
        let txn = Txn::new().when([guard]).and_then([TxnOp::delete(full, Some(DeleteOptions::new().with_prev_key()))]);
        let resp = self.client.clone().txn(txn).await.map_err(backend)?;
        if !resp.succeeded() {
            return Err(self.explain_failure(key, expected.unwrap_or(0)).await);
        }
        let revision = revision_of(resp.header());
        for op in resp.op_responses() {
            if let TxnOpResponse::Delete(d) = op
                && let Some(prev) = d.prev_kvs().first()
            {
                let mut deleted = self.convert(prev)?;
                deleted.mod_revision = revision;
                return Ok(deleted);
            }
        }
        Err(StoreError::NotFound(key.to_string()))
    }

    async fn watch(&self, prefix: &str, after: u64) -> Result<WatchStream, StoreError> {
        let options = WatchOptions::new().with_prefix().with_prev_key().with_start_revision(after as i64 + 1);
        let mut stream = self.client.clone().watch(self.full(prefix), Some(options)).await.map_err(backend)?;
        // The first response confirms the watch, or reports that `after` was compacted.
        let first = stream.message().await.map_err(backend)?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let mut pending = first;
        let strip = self.prefix.clone();
        let convert = move |kv: &etcd_client::KeyValue| -> Result<KeyValue, StoreError> {
            let key = kv.key_str().map_err(backend)?;
            Ok(KeyValue {
                key: key.strip_prefix(strip.as_str()).unwrap_or(key).to_string(),
                value: kv.value().to_vec(),
                create_revision: kv.create_revision().max(0) as u64,
                mod_revision: kv.mod_revision().max(0) as u64,
            })
        };
        if let Some(resp) = &pending
            && resp.compact_revision() > 0
        {
            return Err(StoreError::Compacted { requested: after, oldest: resp.compact_revision() as u64 });
        }
        tokio::spawn(async move {
            loop {
                let resp = match pending.take() {
                    Some(r) => r,
                    None => {
                        let next = tokio::select! {
                            _ = tx.closed() => return,
                            next = stream.message() => next,
                        };
                        match next {
                            Ok(Some(r)) => r,
                            Ok(None) => return,
                            Err(e) => {
                                let _ = tx.send(Err(backend(e))).await;
                                return;
                            }
                        }
                    }
                };
                if resp.compact_revision() > 0 {
                    let oldest = resp.compact_revision() as u64;
                    let _ = tx.send(Err(StoreError::Compacted { requested: after, oldest })).await;
                    return;
                }
                if resp.canceled() {
                    let _ = tx.send(Err(backend(format!("watch canceled: {}", resp.cancel_reason())))).await;
                    return;
                }
                for event in resp.events() {
                    let Some(kv) = event.kv() else { continue };
                    let converted = match convert(kv) {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    };
                    let item = match event.event_type() {
                        EventType::Put => WatchEvent::Put(converted),
                        EventType::Delete => WatchEvent::Delete {
                            revision: converted.mod_revision,
                            previous: event.prev_kv().and_then(|p| convert(p).ok()),
                            key: converted.key,
                        },
                    };
                    if tx.send(Ok(item)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        let resp = self
            .client
            .clone()
            .get(self.full("/"), Some(GetOptions::new().with_count_only()))
            .await
            .map_err(backend)?;
        Ok(revision_of(resp.header()))
    }
}
