//! Pods: validation and defaults at create, the status a node's report implies, and mirror pods
//! (Docker-made containers, which have no stored object).

use hatch_wire::status::{Status, StatusCause, StatusDetails};
use serde_json::{Map, Value, json};

use super::{now_rfc3339, str_at};
use crate::contract::{ContainerReport, PodReport};
use crate::error::ApiError;

/// Annotation naming the container kubectl (and hatch) use when none is given.
pub const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";
/// Annotation the kubelet puts on mirror pods.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
const DEFAULT_GRACE_SECONDS: i64 = 30;

/// A DNS-1123 subdomain (pod and namespace names).
pub fn valid_subdomain(name: &str) -> bool {
    crate::pki::valid_node_name(name)
}

/// A DNS-1123 label (container names).
pub fn valid_label(name: &str) -> bool {
    !name.is_empty() && name.len() <= 63 && !name.contains('.') && valid_subdomain(name)
}

fn invalid(name: &str, causes: Vec<(&str, String)>) -> Status {
    let summary: Vec<String> = causes.iter().map(|(field, msg)| format!("{field}: {msg}")).collect();
    let message = if summary.len() == 1 {
        format!("Pod {} is invalid: {}", quote(name), summary[0])
    } else {
        format!("Pod {} is invalid: [{}]", quote(name), summary.join(", "))
    };
    let mut s = Status::failure(hatch_wire::status::Reason::Invalid, message);
    s.details = Some(StatusDetails {
        name: name.to_string(),
        kind: "Pod".into(),
        causes: causes
            .into_iter()
            .map(|(field, message)| StatusCause {
                cause_type: "FieldValueInvalid".into(),
                message,
                field: field.to_string(),
            })
            .collect(),
        ..StatusDetails::default()
    });
    s
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5).map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char).collect()
}

/// Checks a Pod posted to `namespace` and fills in what the API server would: uid, timestamps,
/// defaults, a fresh status. The node is chosen later.
pub fn prepare_new_pod(mut pod: Value, namespace: &str) -> Result<Value, ApiError> {
    let Some(obj) = pod.as_object_mut() else {
        return Err(ApiError::bad_request("the body of the request was not a JSON object"));
    };
    match obj.get("kind").and_then(Value::as_str) {
        None | Some("Pod") => {}
        Some(other) => return Err(ApiError::bad_request(format!("the body of the request is a {other}, not a Pod"))),
    }
    match obj.get("apiVersion").and_then(Value::as_str) {
        None | Some("v1") => {}
        Some(other) => return Err(ApiError::bad_request(format!("pods are served as v1, not {other}"))),
    }
    obj.insert("kind".into(), json!("Pod"));
    obj.insert("apiVersion".into(), json!("v1"));
    let meta = obj.entry("metadata").or_insert_with(|| json!({}));
    let Some(meta) = meta.as_object_mut() else { return Err(ApiError::bad_request("metadata must be an object")) };
    match meta.get("namespace").and_then(Value::as_str) {
        None | Some("") => {}
        Some(ns) if ns == namespace => {}
        Some(_) => {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
    }
    let mut name = meta.get("name").and_then(Value::as_str).unwrap_or("").to_string();
    if name.is_empty()
        && let Some(prefix) = meta.get("generateName").and_then(Value::as_str)
    {
        name = format!("{prefix}{}", random_suffix());
    }
    if name.is_empty() {
        return Err(ApiError::new(invalid(
            "",
            vec![("metadata.name", "Required value: name or generateName is required".into())],
        )));
    }
    if !valid_subdomain(&name) {
        return Err(ApiError::new(invalid(
            &name,
            vec![(
                "metadata.name",
                format!(
                    "Invalid value: {}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'",
                    quote(&name)
                ),
            )],
        )));
    }
    for k in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "managedFields",
        "selfLink",
    ] {
        meta.remove(k);
    }
    meta.insert("name".into(), json!(name));
    meta.insert("namespace".into(), json!(namespace));
    meta.insert("uid".into(), json!(super::new_uid()));
    meta.insert("creationTimestamp".into(), json!(now_rfc3339()));

    let spec = obj.entry("spec").or_insert_with(|| json!({}));
    let Some(spec) = spec.as_object_mut() else {
        return Err(ApiError::new(invalid(&name, vec![("spec", "must be an object".into())])));
    };
    let mut causes = Vec::new();
    let mut seen = Vec::new();
    match spec.get_mut("containers").and_then(Value::as_array_mut) {
        Some(containers) if !containers.is_empty() => {
            for (i, c) in containers.iter_mut().enumerate() {
                let Some(c) = c.as_object_mut() else {
                    causes.push(("spec.containers", format!("[{i}] must be an object")));
                    continue;
                };
                let cname = c.get("name").and_then(Value::as_str).unwrap_or("").to_string();
                if !valid_label(&cname) {
                    causes.push((
                        "spec.containers.name",
                        format!("Invalid value: {}: a lowercase RFC 1123 label is required", quote(&cname)),
                    ));
                } else if seen.contains(&cname) {
                    causes.push(("spec.containers.name", format!("Duplicate value: {}", quote(&cname))));
                }
                seen.push(cname);
                let image = c.get("image").and_then(Value::as_str).unwrap_or("");
                if image.trim().is_empty() {
                    causes.push(("spec.containers.image", "Required value".into()));
                }
                let pull = if image.contains('@')
                    || image.rsplit('/').next().is_some_and(|last| last.contains(':') && !last.ends_with(":latest"))
                {
                    "IfNotPresent"
                } else {
                    "Always"
                };
                c.entry("imagePullPolicy").or_insert_with(|| json!(pull));
                c.entry("terminationMessagePath").or_insert_with(|| json!("/dev/termination-log"));
                c.entry("terminationMessagePolicy").or_insert_with(|| json!("File"));
                c.entry("resources").or_insert_with(|| json!({}));
            }
        }
        _ => causes.push(("spec.containers", "Required value".into())),
    }
    if !causes.is_empty() {
        return Err(ApiError::new(invalid(&name, causes)));
    }
    spec.entry("restartPolicy").or_insert_with(|| json!("Always"));
    spec.entry("terminationGracePeriodSeconds").or_insert_with(|| json!(DEFAULT_GRACE_SECONDS));
    spec.entry("dnsPolicy").or_insert_with(|| json!("ClusterFirst"));
    spec.entry("schedulerName").or_insert_with(|| json!("default-scheduler"));
    spec.entry("securityContext").or_insert_with(|| json!({}));
    spec.entry("enableServiceLinks").or_insert_with(|| json!(true));
    let node = spec.get("nodeName").and_then(Value::as_str).unwrap_or("").to_string();
    let mut status = json!({ "phase": "Pending", "qosClass": "BestEffort" });
    if !node.is_empty() {
        status["conditions"] = json!([condition("PodScheduled", "True", &now_rfc3339())]);
    }
    obj.insert("status".into(), status);
    Ok(pod)
}

fn condition(kind: &str, status: &str, at: &str) -> Value {
    json!({ "type": kind, "status": status, "lastProbeTime": null, "lastTransitionTime": at })
}

/// Container names of a pod's spec, in order.
pub fn container_names(pod: &Value) -> Vec<String> {
    pod["spec"]["containers"]
        .as_array()
        .map(|cs| cs.iter().map(|c| str_at(c, &["name"]).to_string()).collect())
        .unwrap_or_default()
}

/// The container an exec without `-c` targets: the default-container annotation when it names a
/// container of the pod, else the first.
pub fn default_container(pod: &Value) -> Option<String> {
    let names = container_names(pod);
    let annotated = str_at(pod, &["metadata", "annotations", DEFAULT_CONTAINER_ANNOTATION]);
    if !annotated.is_empty() && names.iter().any(|n| n == annotated) {
        return Some(annotated.to_string());
    }
    names.into_iter().next()
}

pub fn grace_seconds(pod: &Value) -> i64 {
    pod["spec"]["terminationGracePeriodSeconds"].as_i64().unwrap_or(DEFAULT_GRACE_SECONDS)
}

pub fn is_terminating(pod: &Value) -> bool {
    pod["metadata"].get("deletionTimestamp").is_some_and(|v| !v.is_null())
}

fn container_state(c: &ContainerReport) -> Value {
    let time_or_null = |s: &str| if s.is_empty() { Value::Null } else { json!(s) };
    match c.state.as_str() {
        "running" => json!({ "running": { "startedAt": time_or_null(&c.started_at) } }),
        "exited" => {
            let reason = if c.exit_code == 0 { "Completed" } else { "Error" };
            let mut t = json!({
                "exitCode": c.exit_code,
                "reason": reason,
                "startedAt": time_or_null(&c.started_at),
                "finishedAt": time_or_null(&c.finished_at),
                "containerID": format!("hatch://{}", c.id),
            });
            if !c.message.is_empty() {
                t["message"] = json!(c.message);
            }
            json!({ "terminated": t })
        }
        "created" => json!({ "waiting": { "reason": "ContainerCreating" } }),
        _ => {
            let reason = if c.reason.is_empty() { "ContainerCreating" } else { c.reason.as_str() };
            let mut w = json!({ "reason": reason });
            if !c.message.is_empty() {
                w["message"] = json!(c.message);
            }
            json!({ "waiting": w })
        }
    }
}

fn container_status(c: &ContainerReport) -> Value {
    let running = c.state == "running";
    let mut s = json!({
        "name": c.name,
        "state": container_state(c),
        "lastState": {},
        "ready": running,
        "restartCount": c.restart_count,
        "image": c.image,
        "imageID": c.image_id,
        "started": running,
    });
    if !c.id.is_empty() {
        s["containerID"] = json!(format!("hatch://{}", c.id));
    }
    s
}

/// The phase a set of container states implies.
fn phase(containers: &[ContainerReport], expected: usize) -> &'static str {
    let running = containers.iter().filter(|c| c.state == "running").count();
    let exited: Vec<&ContainerReport> = containers.iter().filter(|c| c.state == "exited").collect();
    if running > 0 {
        "Running"
    } else if !containers.is_empty() && exited.len() == expected.max(containers.len()) {
        if exited.iter().all(|c| c.exit_code == 0) { "Succeeded" } else { "Failed" }
    } else {
        "Pending"
    }
}

/// The pod status a node's report implies, keeping condition transition times of `previous`
/// where the condition did not change (so unchanged reports produce identical statuses).
pub fn status_from_report(pod: &Value, report: &PodReport, host_ip: &str) -> Value {
    let previous = &pod["status"];
    let names = container_names(pod);
    // Spec order; containers the node has not reported yet are "creating".
    let ordered: Vec<ContainerReport> = if names.is_empty() {
        report.containers.clone()
    } else {
        names
            .iter()
            .map(|n| {
                report.containers.iter().find(|c| &c.name == n).cloned().unwrap_or_else(|| ContainerReport {
                    name: n.clone(),
                    state: "waiting".into(),
                    reason: "ContainerCreating".into(),
                    ..ContainerReport::default()
                })
            })
            .collect()
    };
    let all_ready = !ordered.is_empty() && ordered.iter().all(|c| c.state == "running");
    let phase = phase(&ordered, ordered.len());
    let now = now_rfc3339();
    let keep_time = |kind: &str, status: &str| -> String {
        previous["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| str_at(c, &["type"]) == kind && str_at(c, &["status"]) == status))
            .map(|c| str_at(c, &["lastTransitionTime"]).to_string())
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| now.clone())
    };
    let ready = if all_ready { "True" } else { "False" };
    let mut conditions = vec![
        condition("Initialized", "True", &keep_time("Initialized", "True")),
        condition("Ready", ready, &keep_time("Ready", ready)),
        condition("ContainersReady", ready, &keep_time("ContainersReady", ready)),
        condition("PodScheduled", "True", &keep_time("PodScheduled", "True")),
    ];
    if !all_ready {
        for c in conditions.iter_mut().filter(|c| c["status"] == "False") {
            c["reason"] = json!("ContainersNotReady");
            let not_ready: Vec<&str> =
                ordered.iter().filter(|c| c.state != "running").map(|c| c.name.as_str()).collect();
            c["message"] = json!(format!("containers with unready status: [{}]", not_ready.join(" ")));
        }
    }
    let start_time = match str_at(previous, &["startTime"]) {
        "" => ordered.iter().map(|c| c.started_at.as_str()).filter(|s| !s.is_empty()).min().unwrap_or(&now).to_string(),
        t => t.to_string(),
    };
    let mut status = Map::new();
    status.insert("phase".into(), json!(phase));
    status.insert("conditions".into(), json!(conditions));
    if !host_ip.is_empty() {
        status.insert("hostIP".into(), json!(host_ip));
        status.insert("hostIPs".into(), json!([{ "ip": host_ip }]));
    }
    status.insert("startTime".into(), json!(start_time));
    status.insert("containerStatuses".into(), Value::Array(ordered.iter().map(container_status).collect()));
    status.insert("qosClass".into(), json!("BestEffort"));
    Value::Object(status)
}

/// A Docker-made container as the one-container pod `default/<name>` on `node`.
pub fn mirror_pod(report: &PodReport, node: &str, host_ip: &str, resource_version: u64) -> Value {
    let containers: Vec<Value> = report
        .containers
        .iter()
        .map(|c| {
            let mut v = json!({ "name": c.name, "image": c.image });
            if !c.command.is_empty() {
                v["command"] = json!(c.command);
            }
            v
        })
        .collect();
    let mut pod = json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": report.name,
            "namespace": report.namespace,
            "uid": super::derived_uid(&format!("mirror/{node}/{}/{}", report.namespace, report.name)),
            "resourceVersion": resource_version.to_string(),
            "creationTimestamp": if report.created.is_empty() { now_rfc3339() } else { report.created.clone() },
            "annotations": { MIRROR_ANNOTATION: "docker" },
        },
        "spec": {
            "nodeName": node,
            "containers": containers,
            "restartPolicy": "Never",
        },
    });
    let status = status_from_report(&pod, report, host_ip);
    pod["status"] = status;
    pod
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn run_pod() -> Value {
        json!({
            "kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": "x", "labels": {"run": "x"}},
            "spec": {"containers": [{"name": "x", "image": "bb", "args": ["sleep", "1d"]}]},
        })
    }

    #[test]
    fn defaults_and_identity() {
        let pod = prepare_new_pod(run_pod(), "default").unwrap();
        assert_eq!(pod["metadata"]["namespace"], "default");
        assert_eq!(pod["metadata"]["uid"].as_str().unwrap().len(), 36);
        assert_eq!(pod["spec"]["restartPolicy"], "Always");
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(pod["status"]["phase"], "Pending");
        assert_eq!(pod["metadata"]["labels"]["run"], "x");
        assert_eq!(pod["spec"]["containers"][0]["args"][1], "1d");
    }

    #[test]
    fn invalid_pods() {
        let mut p = run_pod();
        p["metadata"]["name"] = json!("Bad_Name");
        let e = prepare_new_pod(p, "default").unwrap_err().into_status();
        assert_eq!(e.code, 422);
        assert_eq!(e.reason, "Invalid");
        let mut p = run_pod();
        p["spec"]["containers"] = json!([]);
        assert!(
            prepare_new_pod(p, "default")
                .unwrap_err()
                .into_status()
                .message
                .contains("spec.containers: Required value")
        );
        let mut p = run_pod();
        p["spec"]["containers"] = json!([{"name": "a", "image": "bb"}, {"name": "a", "image": "bb"}]);
        assert!(prepare_new_pod(p, "default").unwrap_err().into_status().message.contains("Duplicate"));
        let mut p = run_pod();
        p["metadata"]["namespace"] = json!("other");
        assert_eq!(prepare_new_pod(p, "default").unwrap_err().into_status().code, 400);
        let mut p = run_pod();
        p["metadata"] = json!({"generateName": "web-"});
        let pod = prepare_new_pod(p, "ns1").unwrap();
        assert!(pod["metadata"]["name"].as_str().unwrap().starts_with("web-"));
        assert_eq!(prepare_new_pod(json!([1]), "default").unwrap_err().into_status().code, 400);
    }

    #[test]
    fn default_container_choice() {
        let mut p = json!({"spec": {"containers": [{"name": "main"}, {"name": "side"}]}, "metadata": {}});
        assert_eq!(default_container(&p).as_deref(), Some("main"));
        p["metadata"]["annotations"] = json!({DEFAULT_CONTAINER_ANNOTATION: "side"});
        assert_eq!(default_container(&p).as_deref(), Some("side"));
        p["metadata"]["annotations"] = json!({DEFAULT_CONTAINER_ANNOTATION: "nope"});
        assert_eq!(default_container(&p).as_deref(), Some("main"));
    }

    #[test]
    fn status_follows_containers() {
        let pod = prepare_new_pod(
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "bb"}, {"name": "b", "image": "bb"}]}}),
            "default",
        )
        .unwrap();
        let report = |a: &str, b: Option<(&str, i32)>| PodReport {
            namespace: "default".into(),
            name: "p".into(),
            uid: "u".into(),
            containers: std::iter::once(ContainerReport { name: "a".into(), state: a.into(), ..Default::default() })
                .chain(b.map(|(s, code)| ContainerReport {
                    name: "b".into(),
                    state: s.into(),
                    exit_code: code,
                    ..Default::default()
                }))
                .collect(),
            ..Default::default()
        };
        let s = status_from_report(&pod, &report("running", None), "10.0.0.1");
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["containerStatuses"][1]["state"]["waiting"]["reason"], "ContainerCreating");
        assert_eq!(s["hostIP"], "10.0.0.1");
        let s2 = status_from_report(&json!({"spec": pod["spec"], "status": s}), &report("running", None), "10.0.0.1");
        assert_eq!(s2["conditions"], s["conditions"], "unchanged reports keep transition times");
        let s = status_from_report(&pod, &report("running", Some(("running", 0))), "");
        assert_eq!(s["conditions"][1]["status"], "True");
        let s = status_from_report(&pod, &report("exited", Some(("exited", 0))), "");
        assert_eq!(s["phase"], "Succeeded");
        let s = status_from_report(&pod, &report("exited", Some(("exited", 2))), "");
        assert_eq!(s["phase"], "Failed");
        assert_eq!(s["containerStatuses"][1]["state"]["terminated"]["exitCode"], 2);
    }

    #[test]
    fn mirror_pods() {
        let report = PodReport {
            namespace: "default".into(),
            name: "web".into(),
            mirror: true,
            created: "2024-01-01T00:00:00Z".into(),
            containers: vec![ContainerReport {
                name: "web".into(),
                image: "bb".into(),
                state: "running".into(),
                command: vec!["sleep".into(), "1d".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        let p = mirror_pod(&report, "n1", "", 9);
        assert_eq!(p["kind"], "Pod");
        assert_eq!(p["spec"]["nodeName"], "n1");
        assert_eq!(p["metadata"]["resourceVersion"], "9");
        assert_eq!(p["metadata"]["annotations"][MIRROR_ANNOTATION], "docker");
        assert_eq!(p["status"]["phase"], "Running");
        assert_eq!(mirror_pod(&report, "n1", "", 9)["metadata"]["uid"], p["metadata"]["uid"]);
    }
}
