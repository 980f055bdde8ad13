//! Nodes: what the store keeps about each (its last report and heartbeat) and the `v1.Node` shown
//! to kubectl.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::{KUBE_GIT_VERSION, format_time, parse_time};
use crate::contract::NodeStatusReport;

/// Stored at `/registry/nodes/<name>`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    pub name: String,
    pub uid: String,
    pub created: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// RFC 3339 time of the last status report.
    #[serde(default)]
    pub last_heartbeat: String,
    /// When `ready` last changed (the Ready condition's transition time).
    #[serde(default)]
    pub ready_since: String,
    #[serde(default)]
    pub report: NodeStatusReport,
}

impl NodeRecord {
    /// How long ago the node was last heard from.
    pub fn silence(&self, now: OffsetDateTime) -> Option<Duration> {
        let last = parse_time(&self.last_heartbeat)?;
        Some((now - last).try_into().unwrap_or(Duration::ZERO))
    }

    /// Ready: it says so, and it was heard from within `timeout`.
    pub fn is_ready(&self, now: OffsetDateTime, timeout: Duration) -> bool {
        self.report.ready && self.silence(now).is_some_and(|s| s < timeout)
    }

    /// The host part of the streaming address (the node's InternalIP).
    pub fn host_ip(&self) -> String {
        let addr = &self.report.streaming_address;
        if addr.is_empty() {
            return String::new();
        }
        match addr.parse::<std::net::SocketAddr>() {
            Ok(sa) => sa.ip().to_string(),
            Err(_) => addr.rsplit_once(':').map(|(h, _)| h.trim_matches(['[', ']']).to_string()).unwrap_or_default(),
        }
    }

    pub fn to_k8s(&self, resource_version: u64, now: OffsetDateTime, timeout: Duration) -> Value {
        let ready = self.is_ready(now, timeout);
        let (status, reason, message) = if ready {
            ("True", "KubeletReady", "hatch node is posting ready status".to_string())
        } else if self.report.ready {
            let silence = self.silence(now).map(|d| d.as_secs()).unwrap_or(0);
            ("Unknown", "NodeStatusUnknown", format!("hatch node stopped posting node status {silence}s ago"))
        } else {
            ("False", "KubeletNotReady", "hatch node reports not ready".to_string())
        };
        let mut labels: BTreeMap<String, String> = BTreeMap::from([
            ("kubernetes.io/hostname".into(), self.name.clone()),
            ("kubernetes.io/os".into(), "linux".into()),
            ("kubernetes.io/arch".into(), arch(&self.report.architecture).into()),
        ]);
        labels.extend(self.labels.clone());
        let mut addresses = Vec::new();
        let ip = self.host_ip();
        if !ip.is_empty() {
            addresses.push(json!({ "type": "InternalIP", "address": ip }));
        }
        addresses.push(json!({ "type": "Hostname", "address": self.name }));
        let port = self.report.streaming_address.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).unwrap_or(0);
        let transition = if self.ready_since.is_empty() { self.created.clone() } else { self.ready_since.clone() };
        json!({
            "kind": "Node",
            "apiVersion": "v1",
            "metadata": {
                "name": self.name,
                "uid": self.uid,
                "resourceVersion": resource_version.to_string(),
                "creationTimestamp": self.created,
                "labels": labels,
            },
            "spec": {},
            "status": {
                "conditions": [{
                    "type": "Ready",
                    "status": status,
                    "lastHeartbeatTime": seconds(&self.last_heartbeat),
                    "lastTransitionTime": seconds(&transition),
                    "reason": reason,
                    "message": message,
                }],
                "addresses": addresses,
                "daemonEndpoints": { "kubeletEndpoint": { "Port": port } },
                "nodeInfo": {
                    "kubeletVersion": KUBE_GIT_VERSION,
                    "kubeProxyVersion": "",
                    "operatingSystem": "linux",
                    "architecture": arch(&self.report.architecture),
                    "osImage": self.report.os_image,
                    "kernelVersion": self.report.kernel_version,
                    "containerRuntimeVersion": format!("hatch://{}", self.report.version),
                    "machineID": "",
                    "systemUUID": "",
                    "bootID": "",
                },
            },
        })
    }
}

fn arch(reported: &str) -> &str {
    match reported {
        "" | "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Sub-second precision: readiness is judged from it.
pub fn heartbeat_now() -> String {
    super::format_time_precise(OffsetDateTime::now_utc())
}

/// A stored time as Kubernetes shows it (whole seconds).
fn seconds(t: &str) -> String {
    parse_time(t).map(format_time).unwrap_or_else(|| t.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn readiness_follows_heartbeats() {
        let now = OffsetDateTime::now_utc();
        let mut n = NodeRecord {
            name: "n1".into(),
            last_heartbeat: format_time(now - Duration::from_secs(10)),
            report: NodeStatusReport { ready: true, streaming_address: "10.1.1.1:10250".into(), ..Default::default() },
            ..Default::default()
        };
        assert!(n.is_ready(now, Duration::from_secs(40)));
        assert_eq!(n.to_k8s(1, now, Duration::from_secs(40))["status"]["conditions"][0]["status"], "True");
        n.last_heartbeat = format_time(now - Duration::from_secs(41));
        assert!(!n.is_ready(now, Duration::from_secs(40)));
        let k = n.to_k8s(1, now, Duration::from_secs(40));
        assert_eq!(k["status"]["conditions"][0]["status"], "Unknown");
        assert_eq!(k["status"]["addresses"][0]["address"], "10.1.1.1");
        assert_eq!(k["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"], 10250);
        assert_eq!(n.host_ip(), "10.1.1.1");
    }
}
