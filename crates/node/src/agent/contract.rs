//! The node ⇄ server contract (docs/architecture.md, "Node ⇄ server"), the node's side. The server
//! has its own copy (`hatch_server::contract`); `crates/hatch` tests that both agree.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinRequest {
    pub name: String,
    pub csr: String,
    pub streaming_address: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinResponse {
    pub certificate: String,
    pub ca: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub ready: bool,
    pub version: String,
    pub streaming_address: String,
    pub os_image: String,
    pub kernel_version: String,
    pub architecture: String,
    pub pods: Vec<PodStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub mirror: bool,
    pub created: String,
    pub containers: Vec<ContainerStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    pub name: String,
    pub id: String,
    pub image: String,
    pub image_id: String,
    /// `running`, `created`, `exited`, or `waiting` (not created yet, or creation failed).
    pub state: String,
    pub exit_code: i32,
    pub started_at: String,
    pub finished_at: String,
    pub reason: String,
    pub message: String,
    pub restart_count: u32,
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredPods {
    pub resource_version: String,
    pub pods: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecEnd {
    pub audit_id: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub command: Vec<String>,
    pub tty: bool,
    pub exit_code: Option<i32>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub started: String,
    pub ended: String,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExecEndBatch {
    pub records: Vec<ExecEnd>,
}
