//! Pods, nodes and namespaces: get, list (JSON or Table), create, delete, and the watch hand-off.

use std::collections::HashMap;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::{Body, header, json_response, query_params, read_json, watch};
use crate::error::ApiError;
use crate::k8s::selector::{FieldSelector, LabelSelector};
use crate::k8s::table::{self, IncludeObject};
use crate::k8s::{self, list_object};
use crate::registry::Deleted;
use crate::server::Server;

pub(crate) struct Selectors {
    pub fields: FieldSelector,
    pub labels: LabelSelector,
}

impl Selectors {
    pub fn from_params(params: &HashMap<String, String>) -> Result<Selectors, ApiError> {
        let bad = |e: k8s::selector::SelectorError| ApiError::bad_request(e.to_string());
        Ok(Selectors {
            fields: FieldSelector::parse(params.get("fieldSelector").map(String::as_str).unwrap_or("")).map_err(bad)?,
            labels: LabelSelector::parse(params.get("labelSelector").map(String::as_str).unwrap_or("")).map_err(bad)?,
        })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.fields.matches(obj) && self.labels.matches(obj)
    }
}

fn dry_run(params: &HashMap<String, String>) -> bool {
    params.get("dryRun").is_some_and(|v| v == "All")
}

/// The list as a Table or a `<Kind>List`, as the client asked.
fn respond_list(
    req: &Request<Incoming>,
    kind: &str,
    items: Vec<Value>,
    revision: u64,
    render: fn(&[Value], &str, IncludeObject) -> Value,
) -> Response<Body> {
    let params = query_params(req);
    if table::wants_table(header(req, "accept")) {
        let include = IncludeObject::parse(params.get("includeObject").map(String::as_str));
        json_response(StatusCode::OK, &render(&items, &revision.to_string(), include))
    } else {
        json_response(StatusCode::OK, &list_object(kind, items, revision))
    }
}

fn respond_one(
    req: &Request<Incoming>,
    item: Value,
    render: fn(&[Value], &str, IncludeObject) -> Value,
) -> Response<Body> {
    if table::wants_table(header(req, "accept")) {
        let params = query_params(req);
        let include = IncludeObject::parse(params.get("includeObject").map(String::as_str));
        let revision = k8s::str_at(&item, &["metadata", "resourceVersion"]).to_string();
        json_response(StatusCode::OK, &render(&[item], &revision, include))
    } else {
        json_response(StatusCode::OK, &item)
    }
}

pub(crate) async fn list(
    server: &Arc<Server>,
    req: Request<Incoming>,
    namespace: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let params = query_params(&req);
    let selectors = Selectors::from_params(&params)?;
    if params.get("watch").is_some_and(|w| hatch_wire::exec_options::parse_go_bool(w) == Some(true)) {
        return watch::pods(server.clone(), &req, namespace.map(str::to_string), selectors).await;
    }
    let (pods, revision) = server.registry.list_pods(namespace).await?;
    let pods: Vec<Value> = pods.into_iter().filter(|p| selectors.matches(p)).collect();
    Ok(respond_list(&req, "PodList", pods, revision, table::pods_table))
}

pub(crate) async fn get(
    server: &Arc<Server>,
    req: &Request<Incoming>,
    namespace: &str,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    match server.registry.get_pod(namespace, name).await? {
        Some(pod) => Ok(respond_one(req, pod, table::pods_table)),
        None => Err(ApiError::not_found("pods", name)),
    }
}

pub(crate) async fn create(
    server: &Arc<Server>,
    req: Request<Incoming>,
    namespace: &str,
) -> Result<Response<Body>, ApiError> {
    let params = query_params(&req);
    let body: Value = read_json(req).await?;
    let pod = server.registry.create_pod(namespace, body, dry_run(&params)).await?;
    Ok(json_response(StatusCode::CREATED, &pod))
}

pub(crate) async fn delete(
    server: &Arc<Server>,
    req: Request<Incoming>,
    namespace: &str,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    let params = query_params(&req);
    let has_body = req.headers().get("content-length").is_some_and(|v| v != "0")
        || req.headers().get("transfer-encoding").is_some();
    let options: Value = if has_body { read_json(req).await? } else { json!({}) };
    let grace = params
        .get("gracePeriodSeconds")
        .and_then(|g| g.parse::<i64>().ok())
        .or_else(|| options["gracePeriodSeconds"].as_i64());
    let dry_run = dry_run(&params) || options["dryRun"].as_array().is_some_and(|d| d.iter().any(|v| v == "All"));
    if let Some(uid) = options["preconditions"]["uid"].as_str()
        && let Some(pod) = server.registry.get_pod(namespace, name).await?
        && k8s::uid(&pod) != uid
    {
        return Err(ApiError::conflict(format!(
            "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
            k8s::uid(&pod)
        )));
    }
    let pod = match server.registry.delete_pod(namespace, name, grace, dry_run).await? {
        Deleted::Gone(pod) | Deleted::Terminating(pod) => pod,
    };
    Ok(json_response(StatusCode::OK, &pod))
}

pub(crate) async fn list_nodes(
    server: &Arc<Server>,
    req: &Request<Incoming>,
    name: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let (nodes, revision) = server.registry.nodes().await?;
    let objects: Vec<Value> = nodes.iter().map(|(n, rev)| server.registry.node_object(n, *rev)).collect();
    match name {
        Some(name) => match objects.into_iter().find(|n| k8s::name(n) == name) {
            Some(node) => Ok(respond_one(req, node, table::nodes_table)),
            None => Err(ApiError::not_found("nodes", name)),
        },
        None => {
            let selectors = Selectors::from_params(&query_params(req))?;
            let objects = objects.into_iter().filter(|n| selectors.labels.matches(n)).collect();
            Ok(respond_list(req, "NodeList", objects, revision, table::nodes_table))
        }
    }
}

pub(crate) async fn list_namespaces(
    server: &Arc<Server>,
    req: &Request<Incoming>,
    name: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let (namespaces, revision) = server.registry.namespaces().await?;
    match name {
        Some(name) => match namespaces.into_iter().find(|n| k8s::name(n) == name) {
            Some(ns) => Ok(respond_one(req, ns, table::namespaces_table)),
            None => Err(ApiError::not_found("namespaces", name)),
        },
        None => Ok(respond_list(req, "NamespaceList", namespaces, revision, table::namespaces_table)),
    }
}
