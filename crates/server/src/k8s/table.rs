//! `meta.k8s.io/v1` Tables: what `kubectl get` prints when it asks with `as=Table` (server-side
//! printing). Columns and cell values follow the Kubernetes printers for pods and nodes.

use serde_json::{Value, json};
use time::OffsetDateTime;

use super::{parse_time, str_at};

/// Whether an `Accept` header asks for a Table.
pub fn wants_table(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let params: Vec<&str> = part.split(';').map(str::trim).collect();
        params.contains(&"as=Table") && params.contains(&"g=meta.k8s.io")
    })
}

/// What each row carries as `object` (`?includeObject=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(s: Option<&str>) -> IncludeObject {
        match s {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

/// kubectl's compact durations (`5s`, `3m20s`, `2d4h`, `3y12d`), as `duration.HumanDuration` prints.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        return match seconds % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        return match hours % 24 {
            0 => format!("{days}d"),
            h => format!("{days}d{h}h"),
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{days}d");
    }
    let years = days / 365;
    if hours < 24 * 365 * 8 {
        return match days % 365 {
            0 => format!("{years}y"),
            d => format!("{years}y{d}d"),
        };
    }
    format!("{years}y")
}

/// Age of an object from its `creationTimestamp`, or `<unknown>`.
pub fn age(obj: &Value, now: OffsetDateTime) -> String {
    match parse_time(str_at(obj, &["metadata", "creationTimestamp"])) {
        Some(t) => human_duration((now - t).whole_seconds()),
        None => "<unknown>".into(),
    }
}

fn column(name: &str, kind: &str, format: &str, description: &str, priority: u32) -> Value {
    json!({ "name": name, "type": kind, "format": format, "description": description, "priority": priority })
}

/// The Name column every table starts with, as the apiserver describes it.
fn name_column() -> Value {
    column("Name", "string", "name", "Name must be unique within a namespace.", 0)
}

/// The Age column (from metadata.creationTimestamp), as the apiserver describes it.
fn age_column() -> Value {
    column(
        "Age",
        "string",
        "",
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
        0,
    )
}

fn row_object(obj: &Value, include: IncludeObject, kind: &str) -> Option<Value> {
    match include {
        IncludeObject::None => None,
        IncludeObject::Object => {
            let mut o = obj.clone();
            if o.get("kind").is_none() {
                o["kind"] = json!(kind);
                o["apiVersion"] = json!("v1");
            }
            Some(o)
        }
        IncludeObject::Metadata => Some(json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
        })),
    }
}

fn table(columns: Vec<Value>, rows: Vec<Value>, resource_version: &str) -> Value {
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": { "resourceVersion": resource_version },
        "columnDefinitions": columns,
        "rows": rows,
    })
}

fn row(cells: Vec<Value>, object: Option<Value>) -> Value {
    let mut r = json!({ "cells": cells });
    if let Some(o) = object {
        r["object"] = o;
    }
    r
}

/// The STATUS column of a pod, as the Kubernetes pod printer derives it.
pub fn pod_status_reason(pod: &Value) -> String {
    let status = &pod["status"];
    let mut reason = match str_at(status, &["reason"]) {
        "" => str_at(status, &["phase"]).to_string(),
        r => r.to_string(),
    };
    let mut has_running = false;
    if let Some(containers) = status["containerStatuses"].as_array() {
        for c in containers.iter().rev() {
            let state = &c["state"];
            if let Some(w) = state.get("waiting")
                && !str_at(w, &["reason"]).is_empty()
            {
                reason = str_at(w, &["reason"]).to_string();
            } else if let Some(t) = state.get("terminated") {
                reason = match str_at(t, &["reason"]) {
                    "" => match t["signal"].as_i64() {
                        Some(sig) if sig != 0 => format!("Signal:{sig}"),
                        _ => format!("ExitCode:{}", t["exitCode"].as_i64().unwrap_or(0)),
                    },
                    r => r.to_string(),
                };
            } else if state.get("running").is_some() && c["ready"].as_bool() == Some(true) {
                has_running = true;
            }
        }
    }
    if reason == "Completed" && has_running {
        reason = "Running".into();
    }
    if pod["metadata"].get("deletionTimestamp").is_some_and(|d| !d.is_null()) {
        reason = "Terminating".into();
    }
    if reason.is_empty() { "Pending".into() } else { reason }
}

fn pod_row(pod: &Value, now: OffsetDateTime, include: IncludeObject) -> Value {
    let spec_count = pod["spec"]["containers"].as_array().map(Vec::len).unwrap_or(0);
    let statuses = pod["status"]["containerStatuses"].as_array().cloned().unwrap_or_default();
    let ready = statuses.iter().filter(|c| c["ready"].as_bool() == Some(true)).count();
    let restarts: i64 = statuses.iter().map(|c| c["restartCount"].as_i64().unwrap_or(0)).sum();
    let or_none = |s: &str| if s.is_empty() { "<none>".to_string() } else { s.to_string() };
    row(
        vec![
            json!(super::name(pod)),
            json!(format!("{ready}/{spec_count}")),
            json!(pod_status_reason(pod)),
            json!(restarts.to_string()),
            json!(age(pod, now)),
            json!(or_none(str_at(pod, &["status", "podIP"]))),
            json!(or_none(str_at(pod, &["spec", "nodeName"]))),
            json!("<none>"),
            json!("<none>"),
        ],
        row_object(pod, include, "Pod"),
    )
}

pub fn pods_table(pods: &[Value], resource_version: &str, include: IncludeObject) -> Value {
    let now = OffsetDateTime::now_utc();
    let columns = vec![
        name_column(),
        column("Ready", "string", "", "The aggregate readiness state of this pod for accepting traffic.", 0),
        column("Status", "string", "", "The aggregate status of the containers in this pod.", 0),
        column("Restarts", "string", "", "The number of times the containers in this pod have been restarted.", 0),
        age_column(),
        column("IP", "string", "", "IP address allocated to the pod.", 1),
        column("Node", "string", "", "Name of the Node this pod is running on.", 1),
        column("Nominated Node", "string", "", "Name of the node nominated for this pod.", 1),
        column("Readiness Gates", "string", "", "Readiness gates of this pod.", 1),
    ];
    let rows = pods.iter().map(|p| pod_row(p, now, include)).collect();
    table(columns, rows, resource_version)
}

/// Ready / NotReady / Unknown, as the node printer shows the Ready condition.
pub fn node_status_text(node: &Value) -> String {
    let conditions = node["status"]["conditions"].as_array().cloned().unwrap_or_default();
    let text = match conditions.iter().find(|c| str_at(c, &["type"]) == "Ready").map(|c| str_at(c, &["status"])) {
        Some("True") => "Ready",
        Some(_) => "NotReady",
        None => "Unknown",
    };
    let mut text = text.to_string();
    if node["spec"]["unschedulable"].as_bool() == Some(true) {
        text.push_str(",SchedulingDisabled");
    }
    text
}

fn node_roles(node: &Value) -> String {
    let mut roles: Vec<String> = node["metadata"]["labels"]
        .as_object()
        .map(|labels| {
            labels.keys().filter_map(|k| k.strip_prefix("node-role.kubernetes.io/")).map(str::to_string).collect()
        })
        .unwrap_or_default();
    roles.retain(|r| !r.is_empty());
    if roles.is_empty() { "<none>".into() } else { roles.join(",") }
}

fn node_address(node: &Value, kind: &str) -> String {
    node["status"]["addresses"]
        .as_array()
        .and_then(|a| a.iter().find(|x| str_at(x, &["type"]) == kind))
        .map(|x| str_at(x, &["address"]).to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "<none>".into())
}

pub fn nodes_table(nodes: &[Value], resource_version: &str, include: IncludeObject) -> Value {
    let now = OffsetDateTime::now_utc();
    let columns = vec![
        name_column(),
        column("Status", "string", "", "The status of the node", 0),
        column("Roles", "string", "", "The roles of the node", 0),
        age_column(),
        column("Version", "string", "", "Kubelet Version reported by the node.", 0),
        column("Internal-IP", "string", "", "List of internal IPs.", 1),
        column("External-IP", "string", "", "List of external IPs.", 1),
        column("OS-Image", "string", "", "OS Image reported by the node from /etc/os-release.", 1),
        column("Kernel-Version", "string", "", "Kernel Version reported by the node.", 1),
        column("Container-Runtime", "string", "", "Container Runtime Version reported by the node.", 1),
    ];
    let rows = nodes
        .iter()
        .map(|n| {
            let info = &n["status"]["nodeInfo"];
            row(
                vec![
                    json!(super::name(n)),
                    json!(node_status_text(n)),
                    json!(node_roles(n)),
                    json!(age(n, now)),
                    json!(str_at(info, &["kubeletVersion"])),
                    json!(node_address(n, "InternalIP")),
                    json!(node_address(n, "ExternalIP")),
                    json!(str_at(info, &["osImage"])),
                    json!(str_at(info, &["kernelVersion"])),
                    json!(str_at(info, &["containerRuntimeVersion"])),
                ],
                row_object(n, include, "Node"),
            )
        })
        .collect();
    table(columns, rows, resource_version)
}

pub fn namespaces_table(namespaces: &[Value], resource_version: &str, include: IncludeObject) -> Value {
    let now = OffsetDateTime::now_utc();
    let columns = vec![name_column(), column("Status", "string", "", "The status of the namespace", 0), age_column()];
    let rows = namespaces
        .iter()
        .map(|n| {
            row(
                vec![json!(super::name(n)), json!(str_at(n, &["status", "phase"])), json!(age(n, now))],
                row_object(n, include, "Namespace"),
            )
        })
        .collect();
    table(columns, rows, resource_version)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn durations_like_kubectl() {
        let cases = [
            (-5, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (59, "59s"),
            (119, "119s"),
            (120, "2m"),
            (200, "3m20s"),
            (600, "10m"),
            (179 * 60, "179m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 120, "3h2m"),
            (10 * 3600, "10h"),
            (47 * 3600, "47h"),
            (48 * 3600, "2d"),
            (50 * 3600, "2d2h"),
            (10 * 86400, "10d"),
            (800 * 86400, "2y70d"),
            (730 * 86400, "2y"),
            (9 * 365 * 86400, "9y"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
    }

    #[test]
    fn table_accept() {
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json, */*"));
        assert!(!wants_table("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"));
    }

    fn pod(statuses: Value, deleting: bool) -> Value {
        let mut p = json!({
            "kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": "web", "namespace": "default", "creationTimestamp": crate::k8s::now_rfc3339()},
            "spec": {"nodeName": "n1", "containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "containerStatuses": statuses},
        });
        if deleting {
            p["metadata"]["deletionTimestamp"] = json!(crate::k8s::now_rfc3339());
        }
        p
    }

    #[test]
    fn pod_rows() {
        let p = pod(
            json!([
                {"name": "a", "ready": true, "restartCount": 1, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 2, "state": {"terminated": {"exitCode": 3}}},
            ]),
            false,
        );
        let t = pods_table(std::slice::from_ref(&p), "7", IncludeObject::Metadata);
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(t["metadata"]["resourceVersion"], "7");
        let names: Vec<&str> =
            t["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(&names[..5], ["Name", "Ready", "Status", "Restarts", "Age"]);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "web");
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[2], "ExitCode:3");
        assert_eq!(cells[3], "3");
        assert_eq!(cells[4], "0s");
        assert_eq!(cells[6], "n1");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["rows"][0]["object"]["metadata"]["namespace"], "default");

        let running = pod(json!([{"name": "a", "ready": true, "state": {"running": {}}}]), false);
        assert_eq!(pod_status_reason(&running), "Running");
        let creating = pod(json!([{"name": "a", "state": {"waiting": {"reason": "ContainerCreating"}}}]), false);
        assert_eq!(pod_status_reason(&creating), "ContainerCreating");
        assert_eq!(pod_status_reason(&pod(json!([]), true)), "Terminating");
        let t = pods_table(&[running], "1", IncludeObject::None);
        assert!(t["rows"][0].get("object").is_none());
    }

    #[test]
    fn node_rows() {
        let n = json!({
            "metadata": {"name": "n1", "creationTimestamp": "2020-01-01T00:00:00Z",
                         "labels": {"node-role.kubernetes.io/control-plane": ""}},
            "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "Unknown"}],
                       "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
                       "nodeInfo": {"kubeletVersion": "v1.33.0-hatch"}},
        });
        let t = nodes_table(&[n], "3", IncludeObject::Metadata);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "n1");
        assert_eq!(cells[1], "NotReady");
        assert_eq!(cells[2], "control-plane");
        assert!(cells[3].as_str().unwrap().ends_with('y') || cells[3].as_str().unwrap().contains('y'));
        assert_eq!(cells[4], "v1.33.0-hatch");
        assert_eq!(cells[5], "10.0.0.1");
        assert_eq!(cells[6], "<none>");
    }
}
