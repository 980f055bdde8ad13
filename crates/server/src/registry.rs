//! The cluster state over the store: pods (stored ones and the mirror pods nodes report), nodes and
//! their heartbeats, scheduling, graceful deletion, and the desired-pods long poll for nodes.
//!
//! Keys: `/registry/pods/<namespace>/<name>` (a `v1.Pod` without its resourceVersion, which is the
//! key's modification revision) and `/registry/nodes/<name>` (a [`NodeRecord`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hatch_wire::status::{Reason, Status};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::contract::{DesiredPods, NodeStatusReport};
use crate::error::ApiError;
use crate::k8s::node::{NodeRecord, heartbeat_now};
use crate::k8s::pod::{self, is_terminating};
use crate::k8s::{self, format_time, now_rfc3339, set_resource_version, str_at};
use crate::store::{KeyValue, Store, StoreError};

pub const PODS_PREFIX: &str = "/registry/pods/";
pub const NODES_PREFIX: &str = "/registry/nodes/";
const CLUSTER_KEY: &str = "/hatch/cluster";
/// Extra time a node gets past a pod's grace period before the pod is removed without it.
const FINALIZE_SLACK: Duration = Duration::from_secs(15);
/// Attempts at a read-modify-write before giving up on a busy key.
const CAS_ATTEMPTS: usize = 8;

pub fn pod_key(namespace: &str, name: &str) -> String {
    format!("{PODS_PREFIX}{namespace}/{name}")
}

fn node_key(name: &str) -> String {
    format!("{NODES_PREFIX}{name}")
}

fn decode_pod(kv: &KeyValue) -> Result<Value, ApiError> {
    let mut pod: Value = serde_json::from_slice(&kv.value)?;
    set_resource_version(&mut pod, kv.mod_revision);
    Ok(pod)
}

/// The stored form: everything but the resourceVersion.
fn encode_pod(pod: &Value) -> Result<Vec<u8>, ApiError> {
    let mut stored = pod.clone();
    if let Some(meta) = stored.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    Ok(serde_json::to_vec(&stored)?)
}

fn revision_of(pod: &Value) -> u64 {
    str_at(pod, &["metadata", "resourceVersion"]).parse().unwrap_or(0)
}

pub enum Deleted {
    /// Removed from the store.
    Gone(Value),
    /// Marked for deletion; the node stops its containers and the pod disappears afterwards.
    Terminating(Value),
}

pub struct Registry {
    pub store: Arc<dyn Store>,
    /// A node not heard from for this long is NotReady; execs to it fail fast.
    pub node_timeout: Duration,
    cluster_created: String,
}

impl Registry {
    pub async fn open(store: Arc<dyn Store>, node_timeout: Duration) -> Result<Registry, StoreError> {
        let cluster_created = match store.get(CLUSTER_KEY).await? {
            Some(kv) => serde_json::from_slice::<Value>(&kv.value)
                .ok()
                .map(|v| str_at(&v, &["created"]).to_string())
                .unwrap_or_else(now_rfc3339),
            None => {
                let created = now_rfc3339();
                let body = serde_json::to_vec(&json!({ "created": created })).unwrap_or_default();
                match store.create(CLUSTER_KEY, body).await {
                    Ok(_) | Err(StoreError::AlreadyExists(_)) => {}
                    Err(e) => return Err(e),
                }
                created
            }
        };
        Ok(Registry { store, node_timeout, cluster_created })
    }

    // ---- reading --------------------------------------------------------------------------

    /// Stored pods (of `namespace`, or all), sorted by namespace and name, and the store revision.
    pub async fn stored_pods(&self, namespace: Option<&str>) -> Result<(Vec<Value>, u64), ApiError> {
        let prefix = match namespace {
            Some(ns) => format!("{PODS_PREFIX}{ns}/"),
            None => PODS_PREFIX.to_string(),
        };
        let listing = self.store.list(&prefix).await?;
        let pods = listing.items.iter().map(decode_pod).collect::<Result<Vec<_>, _>>()?;
        Ok((pods, listing.revision))
    }

    pub async fn nodes(&self) -> Result<(Vec<(NodeRecord, u64)>, u64), ApiError> {
        let listing = self.store.list(NODES_PREFIX).await?;
        let mut nodes = Vec::new();
        for kv in &listing.items {
            match serde_json::from_slice::<NodeRecord>(&kv.value) {
                Ok(n) => nodes.push((n, kv.mod_revision)),
                Err(e) => tracing::warn!(key = %kv.key, error = %e, "skipping corrupt node record"),
            }
        }
        Ok((nodes, listing.revision))
    }

    pub async fn node(&self, name: &str) -> Result<Option<(NodeRecord, u64)>, ApiError> {
        match self.store.get(&node_key(name)).await? {
            Some(kv) => Ok(Some((serde_json::from_slice(&kv.value)?, kv.mod_revision))),
            None => Ok(None),
        }
    }

    pub fn node_object(&self, node: &NodeRecord, revision: u64) -> Value {
        node.to_k8s(revision, OffsetDateTime::now_utc(), self.node_timeout)
    }

    pub fn is_ready(&self, node: &NodeRecord) -> bool {
        node.is_ready(OffsetDateTime::now_utc(), self.node_timeout)
    }

    /// Mirror pods reported by `nodes` that no stored pod shadows.
    fn mirror_pods(nodes: &[(NodeRecord, u64)], stored: &[Value], namespace: Option<&str>) -> Vec<Value> {
        let mut out = Vec::new();
        for (node, revision) in nodes {
            for report in node.report.pods.iter().filter(|p| p.mirror) {
                if namespace.is_some_and(|ns| ns != report.namespace) {
                    continue;
                }
                let shadowed =
                    stored.iter().any(|p| k8s::namespace(p) == report.namespace && k8s::name(p) == report.name);
                if !shadowed {
                    out.push(pod::mirror_pod(report, &node.name, &node.host_ip(), *revision));
                }
            }
        }
        out
    }

    /// Every pod (stored and mirror), sorted by namespace and name, and the store revision.
    pub async fn list_pods(&self, namespace: Option<&str>) -> Result<(Vec<Value>, u64), ApiError> {
        let (mut pods, revision) = self.stored_pods(namespace).await?;
        let (nodes, _) = self.nodes().await?;
        let mirrors = Registry::mirror_pods(&nodes, &pods, namespace);
        pods.extend(mirrors);
        pods.sort_by(|a, b| (k8s::namespace(a), k8s::name(a)).cmp(&(k8s::namespace(b), k8s::name(b))));
        Ok((pods, revision))
    }

    pub async fn get_pod(&self, namespace: &str, name: &str) -> Result<Option<Value>, ApiError> {
        if let Some(kv) = self.store.get(&pod_key(namespace, name)).await? {
            return Ok(Some(decode_pod(&kv)?));
        }
        let (nodes, _) = self.nodes().await?;
        Ok(Registry::mirror_pods(&nodes, &[], Some(namespace)).into_iter().find(|p| k8s::name(p) == name))
    }

    /// Namespaces: `default`, `kube-system`, and every namespace a pod lives in.
    pub async fn namespaces(&self) -> Result<(Vec<Value>, u64), ApiError> {
        let (pods, revision) = self.list_pods(None).await?;
        let mut names: Vec<String> = vec!["default".into(), "kube-system".into()];
        for p in &pods {
            let ns = k8s::namespace(p).to_string();
            if !names.contains(&ns) {
                names.push(ns);
            }
        }
        names.sort();
        let items = names
            .iter()
            .map(|n| {
                json!({
                    "kind": "Namespace",
                    "apiVersion": "v1",
                    "metadata": {
                        "name": n,
                        "uid": k8s::derived_uid(&format!("namespace/{n}")),
                        "creationTimestamp": self.cluster_created,
                        "resourceVersion": revision.to_string(),
                        "labels": { "kubernetes.io/metadata.name": n },
                    },
                    "spec": { "finalizers": ["kubernetes"] },
                    "status": { "phase": "Active" },
                })
            })
            .collect();
        Ok((items, revision))
    }

    // ---- pods -----------------------------------------------------------------------------

    /// The Ready node with the fewest pods (ties by name).
    fn pick_node(&self, nodes: &[(NodeRecord, u64)], pods: &[Value]) -> Option<String> {
        let now = OffsetDateTime::now_utc();
        let mut load: BTreeMap<&str, usize> = BTreeMap::new();
        for p in pods {
            *load.entry(str_at(p, &["spec", "nodeName"])).or_default() += 1;
        }
        nodes
            .iter()
            .filter(|(n, _)| n.is_ready(now, self.node_timeout))
            .min_by_key(|(n, _)| (load.get(n.name.as_str()).copied().unwrap_or(0), n.name.clone()))
            .map(|(n, _)| n.name.clone())
    }

    fn bind(pod: &mut Value, node: &str) {
        pod["spec"]["nodeName"] = json!(node);
        let scheduled = json!({ "type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now_rfc3339() });
        pod["status"]["conditions"] = json!([scheduled]);
    }

    pub async fn create_pod(&self, namespace: &str, body: Value, dry_run: bool) -> Result<Value, ApiError> {
        let mut pod = pod::prepare_new_pod(body, namespace)?;
        let name = k8s::name(&pod).to_string();
        if str_at(&pod, &["spec", "nodeName"]).is_empty() {
            let (nodes, _) = self.nodes().await?;
            let (pods, _) = self.stored_pods(None).await?;
            match self.pick_node(&nodes, &pods) {
                Some(node) => Registry::bind(&mut pod, &node),
                None => {
                    pod["status"]["conditions"] = json!([{
                        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                        "message": "no ready node", "lastProbeTime": null, "lastTransitionTime": now_rfc3339(),
                    }]);
                }
            }
        }
        if dry_run {
            return Ok(pod);
        }
        if self.get_pod(namespace, &name).await?.is_some() {
            return Err(ApiError::new(already_exists(&name)));
        }
        let revision = match self.store.create(&pod_key(namespace, &name), encode_pod(&pod)?).await {
            Ok(r) => r,
            Err(StoreError::AlreadyExists(_)) => return Err(ApiError::new(already_exists(&name))),
            Err(e) => return Err(e.into()),
        };
        set_resource_version(&mut pod, revision);
        tracing::info!(%namespace, pod = %name, node = %str_at(&pod, &["spec", "nodeName"]), "pod created");
        Ok(pod)
    }

    /// Deletes a pod: at once when it has no (ready) node or `grace` is 0, otherwise by marking
    /// it and letting its node stop the containers first.
    pub async fn delete_pod(
        &self,
        namespace: &str,
        name: &str,
        grace: Option<i64>,
        dry_run: bool,
    ) -> Result<Deleted, ApiError> {
        for _ in 0..CAS_ATTEMPTS {
            let Some(kv) = self.store.get(&pod_key(namespace, name)).await? else {
                if let Some(mirror) = self.get_pod(namespace, name).await? {
                    let node = str_at(&mirror, &["spec", "nodeName"]).to_string();
                    return Err(ApiError::new(Status::failure(
                        Reason::MethodNotAllowed,
                        format!(
                            "pod {name:?} mirrors a Docker container on node {node:?}; remove it with `docker rm -f {name}` there"
                        ),
                    )));
                }
                return Err(ApiError::not_found("pods", name));
            };
            let mut pod = decode_pod(&kv)?;
            let grace = grace.unwrap_or_else(|| pod::grace_seconds(&pod)).max(0);
            let node = str_at(&pod, &["spec", "nodeName"]).to_string();
            let node_ready = match self.node(&node).await? {
                Some((record, _)) if !node.is_empty() => self.is_ready(&record),
                _ => false,
            };
            if dry_run {
                return Ok(Deleted::Gone(pod));
            }
            if grace == 0 || !node_ready {
                return match self.store.delete(&kv.key, Some(kv.mod_revision)).await {
                    Ok(_) => {
                        tracing::info!(%namespace, pod = %name, "pod deleted");
                        Ok(Deleted::Gone(pod))
                    }
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(StoreError::NotFound(_)) => Err(ApiError::not_found("pods", name)),
                    Err(e) => Err(e.into()),
                };
            }
            let deadline = OffsetDateTime::now_utc() + Duration::from_secs(grace as u64);
            if let Some(existing) = k8s::parse_time(str_at(&pod, &["metadata", "deletionTimestamp"]))
                && existing <= deadline
            {
                return Ok(Deleted::Terminating(pod));
            }
            pod["metadata"]["deletionTimestamp"] = json!(format_time(deadline));
            pod["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            match self.store.update(&kv.key, encode_pod(&pod)?, kv.mod_revision).await {
                Ok(revision) => {
                    set_resource_version(&mut pod, revision);
                    tracing::info!(%namespace, pod = %name, grace, "pod terminating");
                    return Ok(Deleted::Terminating(pod));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound(_)) => return Err(ApiError::not_found("pods", name)),
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::conflict(format!("pod {name:?} is changing too fast; try again")))
    }

    // ---- nodes ----------------------------------------------------------------------------

    /// Read-modify-write of a node record (created when missing).
    async fn update_node(&self, name: &str, change: impl Fn(&mut NodeRecord)) -> Result<NodeRecord, ApiError> {
        for _ in 0..CAS_ATTEMPTS {
            let existing = self.node(name).await?;
            let mut record = match &existing {
                Some((r, _)) => r.clone(),
                None => NodeRecord {
                    name: name.to_string(),
                    uid: k8s::new_uid(),
                    created: now_rfc3339(),
                    ..NodeRecord::default()
                },
            };
            change(&mut record);
            let body = serde_json::to_vec(&record)?;
            let result = match existing {
                Some((_, revision)) => self.store.update(&node_key(name), body, revision).await,
                None => self.store.create(&node_key(name), body).await,
            };
            match result {
                Ok(_) => return Ok(record),
                Err(StoreError::Conflict { .. } | StoreError::AlreadyExists(_) | StoreError::NotFound(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::conflict(format!("node {name:?} is changing too fast; try again")))
    }

    /// Records a node at join, with its labels.
    pub async fn register_node(&self, name: &str, labels: BTreeMap<String, String>) -> Result<(), ApiError> {
        self.update_node(name, |r| r.labels.extend(labels.clone())).await?;
        Ok(())
    }

    /// A node's status report: heartbeat, the statuses of its pods, and the final removal of
    /// terminating pods whose containers are gone.
    pub async fn report_status(&self, node: &str, report: NodeStatusReport) -> Result<(), ApiError> {
        let now = heartbeat_now();
        let record = self
            .update_node(node, |r| {
                if r.report.ready != report.ready || r.ready_since.is_empty() {
                    r.ready_since = now.clone();
                }
                r.report = report.clone();
                r.last_heartbeat = now.clone();
            })
            .await?;
        let host_ip = record.host_ip();
        let (pods, _) = self.stored_pods(None).await?;
        for pod in pods.iter().filter(|p| str_at(p, &["spec", "nodeName"]) == node) {
            let key = pod_key(k8s::namespace(pod), k8s::name(pod));
            let revision = revision_of(pod);
            match report.pods.iter().find(|r| !r.mirror && r.uid == k8s::uid(pod)) {
                Some(r) => {
                    let status = pod::status_from_report(pod, r, &host_ip);
                    if pod["status"] != status {
                        let mut updated = pod.clone();
                        updated["status"] = status;
                        match self.store.update(&key, encode_pod(&updated)?, revision).await {
                            // The next report catches up on a concurrent change.
                            Ok(_) | Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
                None if is_terminating(pod) => match self.store.delete(&key, Some(revision)).await {
                    Ok(_) => tracing::info!(pod = %key, %node, "pod stopped on its node; removed"),
                    Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                },
                None => {}
            }
        }
        Ok(())
    }

    /// Pods bound to `node`, and a version that changes when that set (or a deletion mark) does.
    async fn bound_pods(&self, node: &str) -> Result<(Vec<Value>, String, u64), ApiError> {
        let (pods, revision) = self.stored_pods(None).await?;
        let bound: Vec<Value> = pods.into_iter().filter(|p| str_at(p, &["spec", "nodeName"]) == node).collect();
        let mut hasher = Sha256::new();
        for p in &bound {
            hasher.update(k8s::uid(p).as_bytes());
            hasher.update(if is_terminating(p) { b"-d;" } else { b"-a;" });
        }
        let version = hex::encode(&hasher.finalize()[..12]);
        Ok((bound, version, revision))
    }

    /// The long poll of `GET /hatch/v1/nodes/{name}/pods`: answers once the node's pod set differs
    /// from `known`, or after `timeout` with the current set.
    pub async fn desired_pods(&self, node: &str, known: &str, timeout: Duration) -> Result<DesiredPods, ApiError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (pods, version, revision) = self.bound_pods(node).await?;
            if version != known || tokio::time::Instant::now() >= deadline {
                return Ok(DesiredPods { resource_version: version, pods });
            }
            match self.store.watch(PODS_PREFIX, revision).await {
                Ok(mut events) => {
                    if tokio::time::timeout_at(deadline, events.recv()).await.is_err() {
                        return Ok(DesiredPods { resource_version: version, pods });
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "desired pods watch; polling");
                    let _ = tokio::time::timeout_at(deadline, tokio::time::sleep(Duration::from_secs(1))).await;
                }
            }
        }
    }

    /// Periodic housekeeping: binds unscheduled pods to a ready node; removes terminating pods
    /// whose node is gone or past their grace period.
    pub async fn sweep(&self) -> Result<(), ApiError> {
        let (pods, _) = self.stored_pods(None).await?;
        let (nodes, _) = self.nodes().await?;
        let now = OffsetDateTime::now_utc();
        for pod in &pods {
            let key = pod_key(k8s::namespace(pod), k8s::name(pod));
            let node = str_at(pod, &["spec", "nodeName"]);
            if is_terminating(pod) {
                let node_ready = nodes.iter().any(|(n, _)| n.name == node && n.is_ready(now, self.node_timeout));
                let overdue = k8s::parse_time(str_at(pod, &["metadata", "deletionTimestamp"]))
                    .is_some_and(|deadline| now > deadline + FINALIZE_SLACK);
                if !node_ready || overdue {
                    match self.store.delete(&key, Some(revision_of(pod))).await {
                        Ok(_) => tracing::info!(pod = %key, %node, overdue, "terminating pod removed without its node"),
                        Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            } else if node.is_empty()
                && let Some(target) = self.pick_node(&nodes, &pods)
            {
                let mut bound = pod.clone();
                Registry::bind(&mut bound, &target);
                match self.store.update(&key, encode_pod(&bound)?, revision_of(pod)).await {
                    Ok(_) => tracing::info!(pod = %key, node = %target, "pod scheduled"),
                    Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }
}

fn already_exists(name: &str) -> Status {
    let mut s = Status::failure(
        Reason::AlreadyExists,
        format!("pods {} already exists", serde_json::to_string(name).unwrap_or_default()),
    );
    s.details =
        Some(hatch_wire::status::StatusDetails { name: name.to_string(), kind: "pods".into(), ..Default::default() });
    s
}
