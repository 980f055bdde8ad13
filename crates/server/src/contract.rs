//! The node ⇄ server contract (docs/architecture.md, "Node ⇄ server"): JSON bodies of
//! `/hatch/v1/...`. The node agent has its own copy of these types; `crates/hatch` tests that both
//! sides agree.

use serde::{Deserialize, Serialize};

/// `POST /hatch/v1/nodes/join` (bearer: the join token).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinRequest {
    pub name: String,
    /// PEM certificate signing request; only its public key is used.
    pub csr: String,
    /// `host:port` where the node serves exec (TLS, server certificate required).
    #[serde(default)]
    pub streaming_address: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinResponse {
    /// PEM certificate for `CN=node:<name>` (client and server usage).
    pub certificate: String,
    /// PEM of the cluster CA.
    pub ca: String,
}

/// `PUT /hatch/v1/nodes/{name}/status` (mTLS as `node:<name>`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatusReport {
    pub ready: bool,
    /// hatch version of the node.
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub streaming_address: String,
    #[serde(default)]
    pub os_image: String,
    #[serde(default)]
    pub kernel_version: String,
    #[serde(default)]
    pub architecture: String,
    /// Every pod on the node, mirror pods (Docker-made containers) included.
    #[serde(default)]
    pub pods: Vec<PodReport>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodReport {
    pub namespace: String,
    pub name: String,
    /// Empty for mirror pods.
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub mirror: bool,
    /// RFC 3339; for mirror pods, when the container was created.
    #[serde(default)]
    pub created: String,
    #[serde(default)]
    pub containers: Vec<ContainerReport>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerReport {
    pub name: String,
    /// Engine container id; empty while it does not exist.
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub image: String,
    #[serde(default)]
    pub image_id: String,
    /// `running`, `created`, `exited`, or `waiting` (not created yet, or creation failed).
    pub state: String,
    #[serde(default)]
    pub exit_code: i32,
    #[serde(default)]
    pub started_at: String,
    #[serde(default)]
    pub finished_at: String,
    /// For `waiting`: a short CamelCase reason (`ContainerCreating`, `ErrImageNeverPull`, …).
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub restart_count: u32,
    /// The pod's argv, for mirror pods (Docker containers) that have no stored spec.
    #[serde(default)]
    pub command: Vec<String>,
}

/// Answer of `GET /hatch/v1/nodes/{name}/pods?resourceVersion=…&timeoutSeconds=…`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredPods {
    /// Opaque; changes whenever the set of pods bound to the node (or their deletion) changes.
    pub resource_version: String,
    /// Full `v1.Pod` objects.
    pub pods: Vec<serde_json::Value>,
}

/// `POST /hatch/v1/nodes/{name}/audit`: ends of execs that the server forwarded to this node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecEnd {
    pub audit_id: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub pod: String,
    #[serde(default)]
    pub container: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub tty: bool,
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub bytes_in: u64,
    #[serde(default)]
    pub bytes_out: u64,
    /// RFC 3339 with fractional seconds.
    pub started: String,
    pub ended: String,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExecEndBatch {
    pub records: Vec<ExecEnd>,
}

/// `POST /hatch/v1/tokens` (admin).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRequest {
    pub role: String,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenResponse {
    pub name: String,
    pub role: String,
    pub token: String,
}
