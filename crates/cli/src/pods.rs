//! The cluster verbs: `hatch get pods|nodes`, `hatch ps`, `hatch run`, `hatch rm`, through the API
//! server. Tables come from the server's `meta.k8s.io` Table answers (the columns kubectl prints),
//! so `hatch` and `kubectl` line up exactly.

use std::time::{Duration, Instant};

use http::Method;
use serde_json::{Value, json};

use crate::cluster::{ApiFailure, Cluster, ClusterError};
use crate::table;

const TABLE_ACCEPT: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";

#[derive(Debug, thiserror::Error)]
pub enum PodsError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("{0}")]
    Usage(String),
    #[error("pod {name} did not start: {reason}")]
    NotStarted { name: String, reason: String },
    #[error("unexpected answer from the server: {0}")]
    Answer(String),
}

/// Output format of the listing verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Table,
    Wide,
    Json,
}

impl Output {
    pub fn parse(s: &str) -> Result<Output, PodsError> {
        match s {
            "" | "table" => Ok(Output::Table),
            "wide" => Ok(Output::Wide),
            "json" => Ok(Output::Json),
            other => Err(PodsError::Usage(format!("unknown output format {other:?} (use table, wide or json)"))),
        }
    }
}

/// Which pods a listing covers.
pub enum Scope {
    Namespace(String),
    AllNamespaces,
}

fn pods_path(scope: &Scope) -> String {
    match scope {
        Scope::Namespace(ns) => format!("/api/v1/namespaces/{ns}/pods"),
        Scope::AllNamespaces => "/api/v1/pods".to_string(),
    }
}

/// Renders a `meta.k8s.io/v1` Table: priority-0 columns (all with `wide`), optionally a leading
/// NAMESPACE column taken from each row's object.
fn render_table(t: &Value, wide: bool, namespace_column: bool) -> Result<String, PodsError> {
    let columns = t["columnDefinitions"].as_array().ok_or_else(|| PodsError::Answer("table without columns".into()))?;
    let shown: Vec<usize> =
        (0..columns.len()).filter(|i| wide || columns[*i]["priority"].as_i64().unwrap_or(0) == 0).collect();
    let mut headers: Vec<String> = Vec::new();
    if namespace_column {
        headers.push("NAMESPACE".into());
    }
    headers.extend(shown.iter().map(|i| columns[*i]["name"].as_str().unwrap_or("").to_uppercase()));
    let mut rows = Vec::new();
    for row in t["rows"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let cells = row["cells"].as_array().map(Vec::as_slice).unwrap_or_default();
        let mut line = Vec::new();
        if namespace_column {
            line.push(row["object"]["metadata"]["namespace"].as_str().unwrap_or("").to_string());
        }
        for i in &shown {
            line.push(match cells.get(*i) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => "<none>".into(),
                Some(other) => other.to_string(),
            });
        }
        rows.push(line);
    }
    if rows.is_empty() {
        return Ok("No resources found.\n".into());
    }
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    Ok(table::render(&headers, &rows))
}

async fn list(cluster: &Cluster, path: &str, output: Output, namespace_column: bool) -> Result<String, PodsError> {
    if output == Output::Json {
        let v = cluster.get_json(path).await?;
        return Ok(serde_json::to_string_pretty(&v).unwrap_or_default() + "\n");
    }
    let bytes = cluster.request(Method::GET, &format!("{path}?includeObject=Metadata"), None, TABLE_ACCEPT).await?;
    let t: Value = serde_json::from_slice(&bytes).map_err(|e| PodsError::Answer(e.to_string()))?;
    render_table(&t, output == Output::Wide, namespace_column)
}

/// `hatch get pods`.
pub async fn get_pods(cluster: &Cluster, scope: Scope, output: Output) -> Result<String, PodsError> {
    let all = matches!(scope, Scope::AllNamespaces);
    list(cluster, &pods_path(&scope), output, all).await
}

/// `hatch get nodes`.
pub async fn get_nodes(cluster: &Cluster, output: Output) -> Result<String, PodsError> {
    list(cluster, "/api/v1/nodes", output, false).await
}

/// What `hatch run` asks for.
pub struct RunRequest {
    pub namespace: String,
    pub name: Option<String>,
    pub image: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub detach: bool,
}

fn pod_manifest(name: &str, req: &RunRequest) -> Result<Value, PodsError> {
    let env: Vec<Value> = req
        .env
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok(json!({ "name": k, "value": v })),
            _ => Err(PodsError::Usage(format!("-e {kv:?}: expected KEY=VALUE"))),
        })
        .collect::<Result<_, _>>()?;
    let mut container = json!({ "name": name, "image": req.image });
    if !req.args.is_empty() {
        container["args"] = json!(req.args);
    }
    if !env.is_empty() {
        container["env"] = json!(env);
    }
    Ok(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "namespace": req.namespace, "labels": { "run": name } },
        "spec": { "containers": [container], "restartPolicy": "Never" },
    }))
}

/// A pod name from the image (`busybox:1.36` → `busybox-7f3a2c`), as a user would pick.
fn generated_name(image: &str) -> String {
    let base = image.rsplit('/').next().unwrap_or(image).split([':', '@']).next().unwrap_or("pod");
    let base: String =
        base.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    let suffix = format!("{:06x}", std::process::id() ^ (Instant::now().elapsed().subsec_nanos() & 0xff_ffff));
    format!("{}-{suffix}", base.trim_matches('-'))
}

/// `hatch run`: creates a one-container pod; without `-d`, waits until it runs (or fails).
pub async fn run(cluster: &Cluster, req: RunRequest) -> Result<String, PodsError> {
    let name = req.name.clone().unwrap_or_else(|| generated_name(&req.image));
    let manifest = pod_manifest(&name, &req)?;
    let path = format!("/api/v1/namespaces/{}/pods", req.namespace);
    let body = serde_json::to_vec(&manifest).map_err(|e| PodsError::Answer(e.to_string()))?;
    cluster.request(Method::POST, &path, Some(body), "application/json").await?;
    if req.detach {
        return Ok(name);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pod = cluster.get_json(&format!("{path}/{name}")).await?;
        let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
        let waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"].as_str();
        // Kubernetes' waiting reasons for a container that cannot start (ErrImageNeverPull,
        // CreateContainerError, ...): no point waiting for those.
        if let Some(reason) = waiting.filter(|r| r.starts_with("Err") || r.ends_with("Error")) {
            let message = pod["status"]["containerStatuses"][0]["state"]["waiting"]["message"].as_str();
            return Err(PodsError::NotStarted { name, reason: format!("{reason}: {}", message.unwrap_or("")) });
        }
        match phase {
            "Running" | "Succeeded" => return Ok(name),
            "Failed" => {
                let reason = pod["status"]["message"].as_str().or(waiting).unwrap_or("the container failed");
                return Err(PodsError::NotStarted { name, reason: reason.to_string() });
            }
            _ if Instant::now() > deadline => {
                return Err(PodsError::NotStarted {
                    name,
                    reason: format!("still {phase} after 60 s ({})", waiting.unwrap_or("no node has started it")),
                });
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// `hatch rm [-f] POD`: deletes the pod (at once with `force`).
pub async fn rm(cluster: &Cluster, namespace: &str, name: &str, force: bool) -> Result<(), PodsError> {
    let mut path = format!("/api/v1/namespaces/{namespace}/pods/{name}");
    if force {
        path.push_str("?gracePeriodSeconds=0");
    }
    match cluster.request(Method::DELETE, &path, None, "application/json").await {
        Ok(_) => Ok(()),
        Err(ClusterError::Api(ApiFailure { status, .. })) if status == http::StatusCode::NOT_FOUND => {
            Err(PodsError::Usage(format!("pod {name:?} not found in namespace {namespace:?} (see `hatch ps`)")))
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_show_priority_zero_columns_and_namespaces() -> Result<(), PodsError> {
        let t = json!({
            "columnDefinitions": [
                { "name": "Name", "priority": 0 }, { "name": "Status", "priority": 0 }, { "name": "Node", "priority": 1 }
            ],
            "rows": [{ "cells": ["web", "Running", "vm"], "object": { "metadata": { "namespace": "team" } } }],
        });
        assert_eq!(render_table(&t, false, false)?, "NAME   STATUS\nweb    Running\n");
        assert_eq!(
            render_table(&t, true, true)?,
            "NAMESPACE   NAME   STATUS    NODE\nteam        web    Running   vm\n"
        );
        let empty = json!({ "columnDefinitions": [{ "name": "Name" }], "rows": [] });
        assert_eq!(render_table(&empty, false, false)?, "No resources found.\n");
        Ok(())
    }

    #[test]
    fn run_manifests() -> Result<(), PodsError> {
        let req = RunRequest {
            namespace: "default".into(),
            name: None,
            image: "registry/busybox:1.36".into(),
            args: vec!["sleep".into(), "1d".into()],
            env: vec!["A=1".into()],
            detach: true,
        };
        let name = generated_name(&req.image);
        assert!(name.starts_with("busybox-"), "{name}");
        let m = pod_manifest(&name, &req)?;
        assert_eq!(m["spec"]["containers"][0]["args"], json!(["sleep", "1d"]));
        assert_eq!(m["spec"]["containers"][0]["env"][0], json!({ "name": "A", "value": "1" }));
        let bad = RunRequest { env: vec!["novalue".into()], ..req };
        assert!(pod_manifest("x", &bad).is_err());
        Ok(())
    }
}
