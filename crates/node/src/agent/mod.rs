//! The node agent: registers the node with a server, reports its status (every pod, mirror pods
//! included) every 5 s and on change, long-polls the pods bound to it and reconciles the engine
//! with them, and reports the ends of execs for the audit log.
//!
//! The agent talks to the server through a [`ControlPlane`]: over HTTPS with the node's
//! certificate ([`remote::RemoteControlPlane`], `hatch node`), or by function calls when server
//! and node share a process (`hatch up`).
//!
//! Reconciling: containers of new pods are created and started once (a container removed behind
//! the agent's back is reported, not recreated; restart policies are not implemented); containers
//! of pods marked for deletion are stopped within their grace period and removed; containers of
//! pods that are no longer bound to the node are removed. Mirror pods (Docker-made containers)
//! are only reported.

pub mod client;
pub mod contract;
pub mod join;
mod pods;
pub mod remote;
pub mod tls;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::engine::container::{Container, Status};
use crate::engine::pods::pod_identity;
use crate::engine::{Engine, EngineError};
use crate::k8s::ExecSummary;
use contract::{ContainerStatus, DesiredPods, ExecEnd, NodeStatus, PodStatus};
pub use pods::{DesiredContainer, DesiredPod};

/// Status reports go out at least this often (docs/architecture.md).
pub const STATUS_INTERVAL: Duration = Duration::from_secs(5);
/// How often the engine is looked at for changes worth reporting at once.
const CHANGE_POLL: Duration = Duration::from_secs(1);
const LONG_POLL: Duration = Duration::from_secs(30);
/// Reconcile this often even without news (retries failed creations).
const RECONCILE_INTERVAL: Duration = Duration::from_secs(10);
/// A failed container creation is retried after this.
const RETRY_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Config(String),
    #[error("server unreachable: {0}")]
    Unreachable(String),
    #[error("server refused ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("unexpected answer: {0}")]
    Protocol(String),
    #[error("tls: {0}")]
    Tls(String),
    #[error("{0}")]
    Io(String),
}

/// The server, as the agent sees it.
#[async_trait]
pub trait ControlPlane: Send + Sync + 'static {
    async fn report_status(&self, status: &NodeStatus) -> Result<(), AgentError>;
    /// Answers once the pods bound to this node differ from `known` (or after `timeout`).
    async fn desired_pods(&self, known: &str, timeout: Duration) -> Result<DesiredPods, AgentError>;
    async fn exec_ended(&self, ends: Vec<ExecEnd>) -> Result<(), AgentError>;
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub name: String,
    /// `host:port` where the server reaches this node's streaming endpoint (empty in-process).
    pub streaming_address: String,
    /// Where the agent keeps its state (`DATA/agent`).
    pub state_dir: PathBuf,
}

struct Failure {
    reason: String,
    message: String,
    at: Instant,
}

#[derive(Default)]
struct State {
    desired: Vec<DesiredPod>,
    /// The desired set has been fetched at least once (before that nothing is removed).
    fetched: bool,
    /// `uid/container` of containers this agent created, so removed ones are not recreated.
    started: BTreeSet<String>,
    failures: HashMap<String, Failure>,
    /// Containers being stopped or removed.
    stopping: HashSet<String>,
}

pub struct Agent {
    engine: Arc<Engine>,
    config: AgentConfig,
    control: Arc<dyn ControlPlane>,
    state: Mutex<State>,
    reconciling: tokio::sync::Mutex<()>,
    changed: Notify,
    host: HostInfo,
}

struct HostInfo {
    os_image: String,
    kernel_version: String,
}

impl HostInfo {
    fn read() -> HostInfo {
        let os_image = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=")).map(|v| v.trim_matches('"').to_string())
            })
            .unwrap_or_else(|| "Linux".into());
        let kernel_version =
            std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default();
        HostInfo { os_image, kernel_version }
    }
}

fn rfc3339_nanos(nanos: i64) -> String {
    if nanos <= 0 {
        return String::new();
    }
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos as i128)
        .ok()
        .and_then(|t| t.replace_nanosecond(0).ok())
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

fn rfc3339_precise(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    let micros = t.nanosecond() / 1000 * 1000;
    t.replace_nanosecond(micros).unwrap_or(t).format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

fn container_status(name: &str, c: &Container) -> ContainerStatus {
    let r = c.record();
    let state = match r.status {
        Status::Running => "running",
        Status::Created => "created",
        Status::Exited | Status::Removing => "exited",
    };
    ContainerStatus {
        name: name.to_string(),
        id: r.id.clone(),
        image: r.spec.image.clone(),
        image_id: r.image_id.clone(),
        state: state.to_string(),
        exit_code: r.exit_code,
        started_at: rfc3339_nanos(r.started_at),
        finished_at: if state == "exited" { rfc3339_nanos(r.finished_at) } else { String::new() },
        reason: String::new(),
        message: r.error.clone(),
        restart_count: r.restart_count,
        command: std::iter::once(r.path.clone()).chain(r.args.iter().cloned()).collect(),
    }
}

fn key(uid: &str, container: &str) -> String {
    format!("{uid}/{container}")
}

/// The audit end record of an exec the server forwarded (the others have no audit id).
pub fn exec_end(summary: &ExecSummary) -> Option<ExecEnd> {
    Some(ExecEnd {
        audit_id: summary.audit_id.clone()?,
        namespace: summary.namespace.clone(),
        pod: summary.pod.clone(),
        container: summary.container.clone(),
        command: summary.command.clone(),
        tty: summary.tty,
        exit_code: summary.exit_code,
        bytes_in: summary.bytes_in,
        bytes_out: summary.bytes_out,
        started: rfc3339_precise(summary.started),
        ended: rfc3339_precise(summary.ended),
        error: summary.error.clone(),
    })
}

impl Agent {
    pub fn new(engine: Arc<Engine>, config: AgentConfig, control: Arc<dyn ControlPlane>) -> Arc<Agent> {
        let mut state = State::default();
        if let Ok(bytes) = std::fs::read(config.state_dir.join("state.json"))
            && let Ok(started) = serde_json::from_slice::<BTreeSet<String>>(&bytes)
        {
            state.started = started;
        }
        Arc::new(Agent {
            engine,
            config,
            control,
            state: Mutex::new(state),
            reconciling: tokio::sync::Mutex::new(()),
            changed: Notify::new(),
            host: HostInfo::read(),
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save_started(&self, started: &BTreeSet<String>) {
        let path = self.config.state_dir.join("state.json");
        let tmp = path.with_extension("tmp");
        let result = std::fs::create_dir_all(&self.config.state_dir)
            .and_then(|_| std::fs::write(&tmp, serde_json::to_vec(started).unwrap_or_default()))
            .and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "saving agent state");
        }
    }

    /// The node's status as it is now: every pod on it, and the desired pods not (yet) running.
    pub fn status(&self) -> NodeStatus {
        let views = self.engine.pods();
        let state = self.state();
        let mut pods: Vec<PodStatus> = Vec::new();
        for view in &views {
            let created = view.containers.first().map(|(_, c)| rfc3339_nanos(c.record().created)).unwrap_or_default();
            let mut containers: Vec<ContainerStatus> =
                view.containers.iter().map(|(name, c)| container_status(name, c)).collect();
            if let Some(desired) = state.desired.iter().find(|d| !view.mirror && d.uid == view.uid) {
                // Spec order; containers missing from the engine are explained.
                containers = desired
                    .containers
                    .iter()
                    .map(|dc| {
                        containers
                            .iter()
                            .find(|c| c.name == dc.name)
                            .cloned()
                            .unwrap_or_else(|| self.waiting(&state, desired, dc))
                    })
                    .collect();
            }
            pods.push(PodStatus {
                namespace: view.namespace.clone(),
                name: view.name.clone(),
                uid: view.uid.clone(),
                mirror: view.mirror,
                created,
                containers,
            });
        }
        for desired in state.desired.iter().filter(|d| !d.terminating) {
            if views.iter().any(|v| !v.mirror && v.uid == desired.uid) {
                continue;
            }
            pods.push(PodStatus {
                namespace: desired.namespace.clone(),
                name: desired.name.clone(),
                uid: desired.uid.clone(),
                mirror: false,
                created: String::new(),
                containers: desired.containers.iter().map(|dc| self.waiting(&state, desired, dc)).collect(),
            });
        }
        NodeStatus {
            ready: true,
            version: env!("CARGO_PKG_VERSION").to_string(),
            streaming_address: self.config.streaming_address.clone(),
            os_image: self.host.os_image.clone(),
            kernel_version: self.host.kernel_version.clone(),
            architecture: std::env::consts::ARCH.to_string(),
            pods,
        }
    }

    fn waiting(&self, state: &State, pod: &DesiredPod, c: &DesiredContainer) -> ContainerStatus {
        let k = key(&pod.uid, &c.name);
        let (reason, message) = match state.failures.get(&k) {
            Some(f) => (f.reason.clone(), f.message.clone()),
            None if state.started.contains(&k) => (
                "ContainerRemoved".to_string(),
                "the container was removed outside the agent; delete the pod to clean up".to_string(),
            ),
            None => ("ContainerCreating".to_string(), String::new()),
        };
        ContainerStatus {
            name: c.name.clone(),
            image: c.image.clone(),
            state: "waiting".into(),
            reason,
            message,
            ..ContainerStatus::default()
        }
    }

    /// Sends one status report now.
    pub async fn report_now(&self) -> Result<(), AgentError> {
        self.control.report_status(&self.status()).await
    }

    /// Runs the status and desired-pods loops until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let status = tokio::spawn(self.clone().status_loop(shutdown.clone()));
        let pods = tokio::spawn(self.clone().pods_loop(shutdown.clone()));
        let periodic = tokio::spawn(self.clone().reconcile_loop(shutdown.clone()));
        shutdown.cancelled().await;
        for task in [status, pods, periodic] {
            task.abort();
        }
    }

    async fn status_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let mut last: Option<NodeStatus> = None;
        let mut last_at = Instant::now();
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(CHANGE_POLL) => {}
                _ = self.changed.notified() => {}
            }
            let status = self.status();
            if last.as_ref() == Some(&status) && last_at.elapsed() < STATUS_INTERVAL {
                continue;
            }
            match self.control.report_status(&status).await {
                Ok(()) => {
                    if failing {
                        tracing::info!("status reports reach the server again");
                    }
                    failing = false;
                    last = Some(status);
                    last_at = Instant::now();
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "status report failed; retrying");
                    }
                    failing = true;
                }
            }
        }
    }

    async fn pods_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let mut known = String::new();
        let mut backoff = Duration::from_millis(500);
        loop {
            let answer = tokio::select! {
                _ = shutdown.cancelled() => return,
                answer = self.control.desired_pods(&known, LONG_POLL) => answer,
            };
            match answer {
                Ok(desired) => {
                    backoff = Duration::from_millis(500);
                    if desired.resource_version == known {
                        continue;
                    }
                    known = desired.resource_version.clone();
                    let parsed: Vec<DesiredPod> = desired.pods.iter().filter_map(DesiredPod::from_pod).collect();
                    {
                        let mut state = self.state();
                        state.desired = parsed;
                        state.fetched = true;
                    }
                    self.reconcile().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "fetching desired pods failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    async fn reconcile_loop(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RECONCILE_INTERVAL) => {}
            }
            self.reconcile().await;
        }
    }

    /// Brings the engine in line with the desired pods.
    pub async fn reconcile(self: &Arc<Self>) {
        let _one_at_a_time = self.reconciling.lock().await;
        let (desired, fetched) = {
            let state = self.state();
            (state.desired.clone(), state.fetched)
        };
        let mut by_uid: HashMap<String, Vec<(String, Arc<Container>)>> = HashMap::new();
        for c in self.engine.list() {
            let (_, _, name, uid, mirror) = pod_identity(&c);
            if !mirror && !uid.is_empty() {
                by_uid.entry(uid).or_default().push((name, c));
            }
        }
        for pod in &desired {
            let existing = by_uid.get(&pod.uid).cloned().unwrap_or_default();
            if pod.terminating {
                for (_, c) in existing {
                    self.stop_and_remove(c, Some(pod.grace_seconds));
                }
                continue;
            }
            for dc in &pod.containers {
                if existing.iter().any(|(name, _)| name == &dc.name) {
                    continue;
                }
                let k = key(&pod.uid, &dc.name);
                {
                    let state = self.state();
                    if state.started.contains(&k)
                        || state.failures.get(&k).is_some_and(|f| f.at.elapsed() < RETRY_AFTER)
                    {
                        continue;
                    }
                }
                self.start_container(pod, dc).await;
            }
        }
        if fetched {
            for (uid, containers) in &by_uid {
                if !desired.iter().any(|d| &d.uid == uid) {
                    for (_, c) in containers {
                        tracing::info!(id = %c.id, %uid, "removing the container of a pod no longer bound here");
                        self.stop_and_remove(c.clone(), None);
                    }
                }
            }
            let mut state = self.state();
            let before = state.started.len();
            state.started.retain(|k| desired.iter().any(|d| k.starts_with(&format!("{}/", d.uid))));
            state.failures.retain(|k, _| desired.iter().any(|d| k.starts_with(&format!("{}/", d.uid))));
            if state.started.len() != before {
                let started = state.started.clone();
                drop(state);
                self.save_started(&started);
            }
        }
        self.changed.notify_one();
    }

    async fn start_container(self: &Arc<Self>, pod: &DesiredPod, dc: &DesiredContainer) {
        let k = key(&pod.uid, &dc.name);
        let spec = pod.container_spec(dc);
        let result = async {
            let c = self
                .engine
                .create(Some(pod.container_name(&dc.name)), spec)
                .await
                .map_err(|e| ("CreateContainerError", e))?;
            if let Err(e) = self.engine.start(&c).await {
                let _ = self.engine.remove(&c, true).await;
                return Err(("RunContainerError", e));
            }
            Ok(c)
        }
        .await;
        match result {
            Ok(c) => {
                tracing::info!(namespace = %pod.namespace, pod = %pod.name, container = %dc.name, id = %c.id, "pod container started");
                let started = {
                    let mut state = self.state();
                    state.failures.remove(&k);
                    state.started.insert(k);
                    state.started.clone()
                };
                self.save_started(&started);
            }
            Err((reason, e)) => {
                let (reason, message) = match &e {
                    EngineError::NoSuchImage(image) => (
                        "ErrImageNeverPull",
                        format!("image {image:?} is not on this node (import it; there is no registry to pull from)"),
                    ),
                    other => (reason, other.to_string()),
                };
                tracing::warn!(namespace = %pod.namespace, pod = %pod.name, container = %dc.name, %reason, %message, "pod container did not start");
                self.state().failures.insert(k, Failure { reason: reason.to_string(), message, at: Instant::now() });
            }
        }
    }

    /// Stops (within `grace` seconds; at once when `None`) and removes a container, in the background.
    fn stop_and_remove(self: &Arc<Self>, c: Arc<Container>, grace: Option<i64>) {
        if !self.state().stopping.insert(c.id.clone()) {
            return;
        }
        let agent = self.clone();
        tokio::spawn(async move {
            if let Some(grace) = grace
                && c.is_running()
            {
                let _ = agent.engine.stop(&c, Some(grace), None).await;
            }
            if let Err(e) = agent.engine.remove(&c, true).await {
                tracing::warn!(id = %c.id, error = %e, "removing a pod container");
            }
            agent.state().stopping.remove(&c.id);
            agent.changed.notify_one();
        });
    }
}
