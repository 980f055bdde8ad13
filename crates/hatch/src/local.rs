//! `hatch up`'s in-process wiring between the server and its local node: execs are a function
//! call on the client's own request (no TLS hop, no re-framing), status and desired pods are
//! calls into the server, and exec ends go straight to the audit log.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::{Request, Response};
use hyper::body::Incoming;

use hatch_node::agent::contract::{DesiredPods, ExecEnd, NodeStatus};
use hatch_node::agent::{AgentError, ControlPlane, exec_end};
use hatch_node::k8s::{ExecObserver, ExecSummary, StreamingServer};
use hatch_server::{LocalNode, Server, contract};

/// The two sides keep their own copies of the contract types; JSON is the contract.
fn convert<T: serde::Serialize, U: serde::de::DeserializeOwned>(value: &T) -> Result<U, AgentError> {
    serde_json::to_value(value)
        .and_then(serde_json::from_value)
        .map_err(|e| AgentError::Protocol(format!("node/server contract: {e}")))
}

fn refused(e: hatch_server::error::ApiError) -> AgentError {
    let status = e.into_status();
    AgentError::Refused { status: status.http_code(), message: status.message }
}

pub struct LocalExec(pub Arc<StreamingServer>);

#[async_trait]
impl LocalNode for LocalExec {
    async fn exec(&self, req: Request<Incoming>) -> Response<hatch_server::Body> {
        // Both sides use the same body type; nothing to convert.
        self.0.handle(req).await
    }

    async fn images(&self, req: Request<Incoming>) -> Response<hatch_server::Body> {
        // The streaming server routes `/images` itself.
        self.0.handle(req).await
    }
}

pub struct LocalControlPlane {
    pub server: Arc<Server>,
    pub node: String,
}

#[async_trait]
impl ControlPlane for LocalControlPlane {
    async fn report_status(&self, status: &NodeStatus) -> Result<(), AgentError> {
        let report: contract::NodeStatusReport = convert(status)?;
        self.server.node_status(&self.node, report).await.map_err(refused)
    }

    async fn desired_pods(&self, known: &str, timeout: Duration) -> Result<DesiredPods, AgentError> {
        let desired = self.server.node_desired_pods(&self.node, known, timeout).await.map_err(refused)?;
        convert(&desired)
    }

    async fn exec_ended(&self, ends: Vec<ExecEnd>) -> Result<(), AgentError> {
        for end in ends {
            let end: contract::ExecEnd = convert(&end)?;
            self.server.exec_finished(Some(&self.node), end).await.map_err(refused)?;
        }
        Ok(())
    }
}

/// Exec ends of the local node, written to the audit log as they come.
pub struct LocalAudit {
    pub server: Arc<Server>,
    pub node: String,
}

impl ExecObserver for LocalAudit {
    fn exec_finished(&self, summary: ExecSummary) {
        let Some(end) = exec_end(&summary) else { return };
        let Ok(end) = convert::<_, contract::ExecEnd>(&end) else { return };
        let server = self.server.clone();
        let node = self.node.clone();
        tokio::spawn(async move {
            if let Err(e) = server.exec_finished(Some(&node), end).await {
                tracing::error!(error = %e, "audit log: exec end");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use hatch_node::agent::contract as node;

    /// The node's and the server's copies of the contract read each other's JSON.
    #[test]
    fn contract_copies_agree() {
        let status = node::NodeStatus {
            ready: true,
            version: "0.1.0".into(),
            streaming_address: "10.0.0.2:10250".into(),
            os_image: "Debian".into(),
            kernel_version: "6.1".into(),
            architecture: "x86_64".into(),
            pods: vec![node::PodStatus {
                namespace: "default".into(),
                name: "web".into(),
                uid: "u1".into(),
                mirror: false,
                created: "2024-01-01T00:00:00Z".into(),
                containers: vec![node::ContainerStatus {
                    name: "c".into(),
                    id: "abc".into(),
                    image: "bb".into(),
                    image_id: "sha256:1".into(),
                    state: "exited".into(),
                    exit_code: 3,
                    started_at: "2024-01-01T00:00:01Z".into(),
                    finished_at: "2024-01-01T00:00:02Z".into(),
                    reason: "".into(),
                    message: "m".into(),
                    restart_count: 1,
                    command: vec!["sh".into()],
                }],
            }],
        };
        let server_side: contract::NodeStatusReport = convert(&status).unwrap();
        assert_eq!(server_side.pods[0].containers[0].exit_code, 3);
        assert_eq!(server_side.streaming_address, "10.0.0.2:10250");
        let back: node::NodeStatus = convert(&server_side).unwrap();
        assert_eq!(back, status);

        let end = node::ExecEnd {
            audit_id: "a".into(),
            exit_code: Some(42),
            bytes_in: 5,
            bytes_out: 7,
            started: "s".into(),
            ended: "e".into(),
            error: None,
            ..Default::default()
        };
        let server_end: contract::ExecEnd = convert(&end).unwrap();
        assert_eq!((server_end.exit_code, server_end.bytes_in, server_end.bytes_out), (Some(42), 5, 7));
        let desired = contract::DesiredPods { resource_version: "v".into(), pods: vec![serde_json::json!({"a": 1})] };
        let node_desired: node::DesiredPods = convert(&desired).unwrap();
        assert_eq!(node_desired.resource_version, "v");
        let join = node::JoinRequest { name: "n".into(), csr: "c".into(), streaming_address: "h:1".into() };
        let server_join: contract::JoinRequest = convert(&join).unwrap();
        assert_eq!(server_join.streaming_address, "h:1");
    }
}
