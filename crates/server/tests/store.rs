//! One test suite, run against every store backend: the embedded redb store always, and etcd
//! (a private etcd started on loopback) when built with `--features etcd`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use hatch_server::store::{EmbeddedStore, Store, StoreError, WatchEvent};

fn unique(prefix: &str) -> String {
    let n: u64 = rand_suffix();
    format!("/test/{prefix}-{n:x}/")
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
    t ^ (std::process::id() as u64).rotate_left(32)
}

async fn next(events: &mut hatch_server::store::WatchStream) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("watch event in time")
        .expect("watch stream open")
        .expect("watch event, not an error")
}

async fn create_get_update(store: &dyn Store) {
    let p = unique("cgu");
    let key = format!("{p}a");
    let r1 = store.create(&key, b"one".to_vec()).await.unwrap();
    let got = store.get(&key).await.unwrap().unwrap();
    assert_eq!((got.value.as_slice(), got.create_revision, got.mod_revision), (&b"one"[..], r1, r1));
    assert!(matches!(store.create(&key, b"again".to_vec()).await, Err(StoreError::AlreadyExists(_))));

    let r2 = store.update(&key, b"two".to_vec(), r1).await.unwrap();
    assert!(r2 > r1);
    let got = store.get(&key).await.unwrap().unwrap();
    assert_eq!((got.value.as_slice(), got.create_revision, got.mod_revision), (&b"two"[..], r1, r2));
    match store.update(&key, b"stale".to_vec(), r1).await {
        Err(StoreError::Conflict { expected, found, .. }) => assert_eq!((expected, found), (r1, r2)),
        other => panic!("stale update: {other:?}"),
    }
    assert_eq!(store.get(&key).await.unwrap().unwrap().value, b"two");
    assert!(matches!(store.update(&format!("{p}missing"), b"x".to_vec(), 1).await, Err(StoreError::NotFound(_))));

    let r3 = store.put(&key, b"three".to_vec()).await.unwrap();
    assert!(r3 > r2);
    let r4 = store.put(&format!("{p}b"), b"new".to_vec()).await.unwrap();
    let b = store.get(&format!("{p}b")).await.unwrap().unwrap();
    assert_eq!((b.create_revision, b.mod_revision), (r4, r4));
    assert!(store.revision().await.unwrap() >= r4);
    assert!(store.get(&format!("{p}nope")).await.unwrap().is_none());
}

async fn prefix_listing(store: &dyn Store) {
    let p = unique("list");
    for k in ["x/2", "x/1", "xy/3", "y/1"] {
        store.create(&format!("{p}{k}"), k.as_bytes().to_vec()).await.unwrap();
    }
    let listing = store.list(&format!("{p}x/")).await.unwrap();
    let keys: Vec<String> = listing.items.iter().map(|kv| kv.key.trim_start_matches(&p).to_string()).collect();
    assert_eq!(keys, ["x/1", "x/2"], "sorted, and only under the prefix");
    assert!(listing.revision >= listing.items.iter().map(|kv| kv.mod_revision).max().unwrap());
    assert_eq!(store.list(&p).await.unwrap().items.len(), 4);
    assert!(store.list(&format!("{p}z/")).await.unwrap().items.is_empty());
}

async fn deletes(store: &dyn Store) {
    let p = unique("del");
    let key = format!("{p}k");
    let r1 = store.create(&key, b"v".to_vec()).await.unwrap();
    let r2 = store.update(&key, b"w".to_vec(), r1).await.unwrap();
    assert!(matches!(store.delete(&key, Some(r1)).await, Err(StoreError::Conflict { .. })));
    let deleted = store.delete(&key, Some(r2)).await.unwrap();
    assert_eq!(deleted.value, b"w");
    assert!(deleted.mod_revision > r2, "the delete has its own revision");
    assert!(store.get(&key).await.unwrap().is_none());
    assert!(matches!(store.delete(&key, None).await, Err(StoreError::NotFound(_))));
    assert!(matches!(store.delete(&key, Some(r2)).await, Err(StoreError::NotFound(_))));
    // Re-creating starts a new life.
    let r3 = store.create(&key, b"again".to_vec()).await.unwrap();
    assert_eq!(store.get(&key).await.unwrap().unwrap().create_revision, r3);
    store.delete(&key, None).await.unwrap();
}

async fn watches(store: &dyn Store) {
    let p = unique("watch");
    let other = unique("other");
    let start = store.revision().await.unwrap();
    let mut live = store.watch(&p, start).await.unwrap();
    let r1 = store.create(&format!("{p}a"), b"1".to_vec()).await.unwrap();
    store.create(&format!("{other}a"), b"elsewhere".to_vec()).await.unwrap();
    let r2 = store.update(&format!("{p}a"), b"2".to_vec(), r1).await.unwrap();
    let deleted = store.delete(&format!("{p}a"), None).await.unwrap();

    match next(&mut live).await {
        WatchEvent::Put(kv) => {
            assert_eq!((kv.value.as_slice(), kv.create_revision, kv.mod_revision), (&b"1"[..], r1, r1))
        }
        e => panic!("{e:?}"),
    }
    match next(&mut live).await {
        WatchEvent::Put(kv) => {
            assert_eq!((kv.value.as_slice(), kv.create_revision, kv.mod_revision), (&b"2"[..], r1, r2))
        }
        e => panic!("{e:?}"),
    }
    match next(&mut live).await {
        WatchEvent::Delete { key, revision, previous } => {
            assert!(key.ends_with("a"));
            assert_eq!(revision, deleted.mod_revision);
            assert_eq!(previous.unwrap().value, b"2");
        }
        e => panic!("{e:?}"),
    }

    // Resuming after a revision replays exactly what followed it.
    let mut resumed = store.watch(&p, r1).await.unwrap();
    assert_eq!(next(&mut resumed).await.revision(), r2);
    assert_eq!(next(&mut resumed).await.revision(), deleted.mod_revision);
    let r5 = store.create(&format!("{p}b"), b"5".to_vec()).await.unwrap();
    assert_eq!(next(&mut resumed).await.revision(), r5);
    assert!(tokio::time::timeout(Duration::from_millis(300), resumed.recv()).await.is_err(), "nothing else");
    // The other prefix's write never showed up.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), live.recv())
            .await
            .map_or(true, |e| { matches!(e, Some(Ok(WatchEvent::Put(ref kv))) if kv.mod_revision == r5) })
    );
}

async fn compare_and_swap_under_contention(store: Arc<dyn Store>) {
    let p = unique("cas");
    let key = format!("{p}counter");
    store.create(&key, b"0".to_vec()).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let store = store.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let cur = store.get(&key).await.unwrap().unwrap();
                let n: u64 = std::str::from_utf8(&cur.value).unwrap().parse().unwrap();
                match store.update(&key, (n + 1).to_string().into_bytes(), cur.mod_revision).await {
                    Ok(_) => return,
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => panic!("{e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(store.get(&key).await.unwrap().unwrap().value, b"16", "no lost update");
}

/// A watch from a compacted revision fails, at once or as the stream's first item.
async fn assert_compacted(store: &dyn Store, prefix: &str, after: u64) {
    match store.watch(prefix, after).await {
        Err(StoreError::Compacted { .. }) => {}
        Ok(mut events) => match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
            Ok(Some(Err(StoreError::Compacted { .. }))) => {}
            other => panic!("expected a compaction error, got {other:?}"),
        },
        Err(e) => panic!("expected a compaction error, got {e}"),
    }
}

async fn suite(store: Arc<dyn Store>) {
    create_get_update(store.as_ref()).await;
    prefix_listing(store.as_ref()).await;
    deletes(store.as_ref()).await;
    watches(store.as_ref()).await;
    compare_and_swap_under_contention(store.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&path).await.unwrap());
    suite(store.clone()).await;

    // Data and revisions survive a reopen; history before it does not.
    let key = "/test/persist";
    let rev = store.create(key, b"kept".to_vec()).await.unwrap();
    drop(store);
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&path).await.unwrap());
    assert_eq!(store.get(key).await.unwrap().unwrap().mod_revision, rev);
    assert_eq!(store.revision().await.unwrap(), rev);
    assert!(store.put(key, b"x".to_vec()).await.unwrap() > rev);
    assert_compacted(store.as_ref(), "/test/", 1).await;
}

#[cfg(feature = "etcd")]
mod etcd {
    use super::*;
    use hatch_server::store::EtcdStore;
    use std::process::{Child, Command, Stdio};

    /// A private etcd on loopback ports, killed on drop.
    struct Etcd {
        child: Child,
        _dir: tempfile::TempDir,
        client_url: String,
    }

    impl Drop for Etcd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    fn start_etcd() -> Etcd {
        let binary = std::env::var("HATCH_ETCD").unwrap_or_else(|_| "etcd".into());
        let dir = tempfile::tempdir().unwrap();
        let (client, peer) = (free_port(), free_port());
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new(&binary)
            .args(["--name", "hatch-test", "--data-dir"])
            .arg(dir.path())
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("hatch-test={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {binary} ({e}); install the Debian package etcd-server"));
        Etcd { child, _dir: dir, client_url }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn etcd_store() {
        let etcd = start_etcd();
        let endpoint = etcd.client_url.clone();
        let mut store = None;
        for _ in 0..100 {
            match EtcdStore::connect(std::slice::from_ref(&endpoint), "/hatch-test").await {
                Ok(s) => {
                    store = Some(s);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let store: Arc<dyn Store> = Arc::new(store.expect("etcd ready within 10 s"));
        suite(store.clone()).await;
        // The URL form names endpoints and a prefix; keys stay apart by prefix.
        let url = format!("etcd://{}/other-prefix", endpoint.trim_start_matches("http://"));
        let other = EtcdStore::connect_url(&url).await.unwrap();
        assert!(other.list("/test/").await.unwrap().items.is_empty());
        // Compaction makes old revisions unavailable to watches, as with the embedded store.
        let rev = store.put("/test/compact", b"x".to_vec()).await.unwrap();
        other.compact(rev).await.unwrap();
        assert_compacted(store.as_ref(), "/test/", 1).await;
    }
}
