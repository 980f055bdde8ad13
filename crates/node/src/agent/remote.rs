//! The server over HTTPS (`hatch node`): the node API with the node's certificate, and the exec
//! audit ends sent back in batches.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::Method;
use tokio::sync::mpsc;

use super::client::ApiClient;
use super::contract::{DesiredPods, ExecEnd, ExecEndBatch, NodeStatus};
use super::join::NodeIdentity;
use super::{AgentError, ControlPlane, exec_end, tls};
use crate::k8s::{ExecObserver, ExecSummary};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Audit ends waiting to be sent, at most (beyond that they are logged and dropped).
const AUDIT_BACKLOG: usize = 4096;

pub struct RemoteControlPlane {
    node: String,
    client: ApiClient,
}

impl RemoteControlPlane {
    pub fn new(server_url: &str, node: &str, identity: &NodeIdentity) -> Result<RemoteControlPlane, AgentError> {
        let config = tls::api_client_config(&identity.ca_pem, Some((&identity.cert_pem, &identity.key_pem)))?;
        Ok(RemoteControlPlane { node: node.to_string(), client: ApiClient::new(server_url, config, None)? })
    }

    fn path(&self, rest: &str) -> String {
        format!("/hatch/v1/nodes/{}/{rest}", self.node)
    }
}

#[async_trait]
impl ControlPlane for RemoteControlPlane {
    async fn report_status(&self, status: &NodeStatus) -> Result<(), AgentError> {
        let _: serde_json::Value =
            self.client.json(Method::PUT, &self.path("status"), Some(status), REQUEST_TIMEOUT).await?;
        Ok(())
    }

    async fn desired_pods(&self, known: &str, timeout: Duration) -> Result<DesiredPods, AgentError> {
        let known: String = form_urlencoded::byte_serialize(known.as_bytes()).collect();
        let path = self.path(&format!("pods?resourceVersion={known}&timeoutSeconds={}", timeout.as_secs()));
        self.client.json(Method::GET, &path, None::<&()>, timeout + REQUEST_TIMEOUT).await
    }

    async fn exec_ended(&self, ends: Vec<ExecEnd>) -> Result<(), AgentError> {
        let batch = ExecEndBatch { records: ends };
        let _: serde_json::Value =
            self.client.json(Method::POST, &self.path("audit"), Some(&batch), REQUEST_TIMEOUT).await?;
        Ok(())
    }
}

/// Sends the ends of forwarded execs to the server's audit log, in order, retrying while the
/// server is away.
pub struct AuditForwarder {
    tx: mpsc::Sender<ExecEnd>,
}

impl AuditForwarder {
    pub fn start(control: Arc<dyn ControlPlane>) -> Arc<AuditForwarder> {
        let (tx, mut rx) = mpsc::channel::<ExecEnd>(AUDIT_BACKLOG);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                let mut delay = Duration::from_millis(200);
                loop {
                    match control.exec_ended(batch.clone()).await {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, records = batch.len(), "sending exec audit ends; retrying");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(10));
                        }
                    }
                }
            }
        });
        Arc::new(AuditForwarder { tx })
    }
}

impl ExecObserver for AuditForwarder {
    fn exec_finished(&self, summary: ExecSummary) {
        let Some(end) = exec_end(&summary) else { return };
        if let Err(e) = self.tx.try_send(end) {
            tracing::error!(error = %e, audit_id = ?summary.audit_id, "exec audit end dropped: backlog full");
        }
    }
}
