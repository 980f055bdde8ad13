//! Pod watches (`?watch=true`): newline-delimited `WatchEvent` JSON, as informers and
//! `kubectl delete`'s wait consume them.
//!
//! From a resourceVersion, events after it; without one (or `0`), the current pods as `ADDED`
//! first. `sendInitialEvents=true` (watch-list) sends the current pods and then a `BOOKMARK`
//! marked `k8s.io/initial-events-end`. History that is gone is reported as a `410 Expired` ERROR
//! event, after which clients list again.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hatch_wire::status::{Reason, Status};
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::pods::Selectors;
use super::{Body, header, query_params};
use crate::error::ApiError;
use crate::k8s::table::{self, IncludeObject};
use crate::k8s::{self, set_resource_version};
use crate::registry::PODS_PREFIX;
use crate::server::Server;
use crate::store::{StoreError, WatchEvent};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

struct Emitter {
    tx: mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>,
    table: Option<IncludeObject>,
}

impl Emitter {
    /// Sends one event; false once the client is gone.
    async fn send(&self, kind: &str, object: Value) -> bool {
        let object = match self.table {
            Some(include) if kind != "ERROR" && kind != "BOOKMARK" => {
                let revision = k8s::str_at(&object, &["metadata", "resourceVersion"]).to_string();
                table::pods_table(&[object], &revision, include)
            }
            _ => object,
        };
        let mut line = serde_json::to_vec(&json!({ "type": kind, "object": object })).unwrap_or_default();
        line.push(b'\n');
        self.tx.send(Ok(Frame::data(Bytes::from(line)))).await.is_ok()
    }
}

fn bookmark(revision: u64, initial_end: bool) -> Value {
    let mut meta = json!({ "resourceVersion": revision.to_string() });
    if initial_end {
        meta["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    json!({ "kind": "Pod", "apiVersion": "v1", "metadata": meta })
}

fn expired(message: String) -> Value {
    let mut s = Status::failure(Reason::BadRequest, message).with_type_meta();
    s.reason = "Expired".into();
    s.code = 410;
    serde_json::to_value(&s).unwrap_or_else(|_| json!({}))
}

pub(crate) async fn pods(
    server: Arc<Server>,
    req: &Request<Incoming>,
    namespace: Option<String>,
    selectors: Selectors,
) -> Result<Response<Body>, ApiError> {
    let params = query_params(req);
    let flag = |k: &str| params.get(k).is_some_and(|v| hatch_wire::exec_options::parse_go_bool(v) == Some(true));
    let send_initial = flag("sendInitialEvents");
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT);
    let from: Option<u64> = match params.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(rv) => Some(rv.parse().map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?),
    };
    let table = table::wants_table(header(req, "accept"))
        .then(|| IncludeObject::parse(params.get("includeObject").map(String::as_str)));
    let prefix = match &namespace {
        Some(ns) => format!("{PODS_PREFIX}{ns}/"),
        None => PODS_PREFIX.to_string(),
    };

    // The initial state (when asked for), then changes after it.
    let (initial, after) = match (from, send_initial) {
        (Some(rv), false) => (None, rv),
        _ => {
            let (pods, revision) = server.registry.list_pods(namespace.as_deref()).await?;
            (Some(pods.into_iter().filter(|p| selectors.matches(p)).collect::<Vec<_>>()), revision)
        }
    };
    let events = match server.store.watch(&prefix, after).await {
        Ok(events) => Some(events),
        Err(StoreError::Compacted { requested, oldest }) => {
            tracing::debug!(requested, oldest, "watch from a compacted revision");
            None
        }
        Err(e) => return Err(e.into()),
    };

    let (tx, rx) = mpsc::channel(64);
    let emitter = Emitter { tx, table };
    tokio::spawn(async move {
        let Some(mut events) = events else {
            let _ = emitter.send("ERROR", expired(format!("too old resource version: {after}"))).await;
            return;
        };
        if let Some(pods) = initial {
            for pod in pods {
                if !emitter.send("ADDED", pod).await {
                    return;
                }
            }
            if send_initial && !emitter.send("BOOKMARK", bookmark(after, true)).await {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let event = tokio::select! {
                _ = emitter.tx.closed() => return,
                _ = tokio::time::sleep_until(deadline) => return,
                e = events.recv() => e,
            };
            let (kind, kv) = match event {
                None => return,
                Some(Err(StoreError::Compacted { requested, .. })) => {
                    let _ = emitter.send("ERROR", expired(format!("too old resource version: {requested}"))).await;
                    return;
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "pod watch ended");
                    return;
                }
                Some(Ok(WatchEvent::Put(kv))) => {
                    (if kv.create_revision == kv.mod_revision { "ADDED" } else { "MODIFIED" }, kv)
                }
                Some(Ok(WatchEvent::Delete { previous: Some(prev), revision, .. })) => {
                    let mut kv = prev;
                    kv.mod_revision = revision;
                    ("DELETED", kv)
                }
                Some(Ok(WatchEvent::Delete { previous: None, .. })) => continue,
            };
            let Ok(mut pod) = serde_json::from_slice::<Value>(&kv.value) else { continue };
            set_resource_version(&mut pod, kv.mod_revision);
            if selectors.matches(&pod) && !emitter.send(kind, pod).await {
                return;
            }
        }
    });

    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let mut resp = Response::new(StreamBody::new(stream).boxed_unsync());
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}
