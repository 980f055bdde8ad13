//! HTTP handling: authentication, routing, and the Kubernetes response conventions (JSON bodies,
//! `metav1.Status` errors with kind and apiVersion).

mod exec;
mod nodes;
mod pods;
mod proxy;
mod watch;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use hatch_wire::status::Status;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use serde_json::Value;

use crate::auth::{Action, Identity, Role, Verb, authorize};
use crate::error::ApiError;
use crate::k8s::discovery;
use crate::server::Server;

/// Response body of every handler.
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// Largest request body accepted (a Pod, a status report).
const MAX_BODY: usize = 4 * 1024 * 1024;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(full(bytes));
    *resp.status_mut() = code;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

pub fn status_response(status: &Status) -> Response<Body> {
    let body = status.clone().with_type_meta().to_json();
    let mut resp = Response::new(full(body));
    *resp.status_mut() = StatusCode::from_u16(status.http_code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn error_response(e: &ApiError) -> Response<Body> {
    status_response(e.status())
}

/// First value of each query parameter.
pub(crate) fn query_params(req: &Request<Incoming>) -> HashMap<String, String> {
    let mut params = HashMap::new();
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        params.entry(k.into_owned()).or_insert_with(|| v.into_owned());
    }
    params
}

pub(crate) fn header<'a>(req: &'a Request<Incoming>, name: &str) -> &'a str {
    req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, ApiError> {
    let content_type = header(&req, "content-type").to_string();
    if content_type.contains("protobuf") || content_type.contains("yaml") {
        return Err(ApiError::new(Status::failure(
            hatch_wire::status::Reason::BadRequest,
            format!("the content type {content_type:?} is not supported; send application/json"),
        )));
    }
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

fn bearer_token(req: &Request<Incoming>) -> Option<&str> {
    let value = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Endpoints anyone may call without credentials (as Kubernetes' public-info-viewer).
fn public(method: &Method, path: &str) -> bool {
    *method == Method::GET && matches!(path, "/version" | "/healthz" | "/livez" | "/readyz" | "/cacerts")
}

pub(crate) async fn handle(
    server: Arc<Server>,
    cert_identity: Identity,
    remote: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    // A bad token is a 401 everywhere; no token falls back to the client certificate.
    let identity = match bearer_token(&req) {
        Some(token) => match server.tokens.lookup(token).await {
            Ok(Some(record)) => Identity::Token { name: record.name, role: record.role },
            Ok(None) => {
                tracing::debug!(%remote, %method, %path, "unknown bearer token");
                return status_response(&Status::unauthorized(""));
            }
            Err(e) => return error_response(&ApiError::internal(e)),
        },
        None => cert_identity,
    };
    if identity == Identity::Anonymous && !public(&method, &path) {
        tracing::debug!(%remote, %method, %path, "no credentials");
        return status_response(&Status::unauthorized(""));
    }
    let response = match route(&server, identity.clone(), req, &method, &path).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    tracing::debug!(%remote, user = %identity.user(), %method, %path, status = response.status().as_u16(), "request");
    response
}

fn check(
    identity: &Identity,
    verb: Verb,
    resource: &str,
    subresource: Option<&str>,
    namespace: Option<&str>,
    name: &str,
) -> Result<(), ApiError> {
    authorize(identity, &Action { verb, resource, subresource, namespace })
        .map_err(|why| ApiError::new(Status::forbidden(resource, name, &why)))
}

/// get, list or watch, from the method and query.
fn read_verb(params: &HashMap<String, String>, named: bool) -> Verb {
    let watch = params.get("watch").is_some_and(|w| hatch_wire::exec_options::parse_go_bool(w) == Some(true));
    match (named, watch) {
        (true, _) => Verb::Get,
        (false, true) => Verb::Watch,
        (false, false) => Verb::List,
    }
}

async fn route(
    server: &Arc<Server>,
    identity: Identity,
    req: Request<Incoming>,
    method: &Method,
    path: &str,
) -> Result<Response<Body>, ApiError> {
    let segments: Vec<&str> = path.trim_start_matches('/').trim_end_matches('/').split('/').collect();
    let params = query_params(&req);
    let k8s_user = matches!(identity, Identity::Token { role: Role::Admin | Role::View, .. });
    match (method, segments.as_slice()) {
        (&Method::GET, ["version"]) => Ok(json_response(StatusCode::OK, &discovery::version())),
        (&Method::GET, ["healthz" | "livez" | "readyz"]) => {
            let mut r = Response::new(full("ok"));
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            Ok(r)
        }
        (&Method::GET, ["cacerts"]) => {
            let mut r = Response::new(full(server.pki.ca_pem().to_string()));
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/x-pem-file"));
            Ok(r)
        }

        // hatch's own API: nodes and tokens.
        (_, ["hatch", "v1", rest @ ..]) => nodes::route(server, identity, req, method, rest).await,

        // Discovery is for users of the Kubernetes API only.
        _ if !k8s_user => Err(ApiError::new(Status::failure(
            hatch_wire::status::Reason::Forbidden,
            format!("forbidden: User {:?} cannot access the Kubernetes API", identity.user()),
        ))),
        (&Method::GET, ["api"]) => {
            Ok(json_response(StatusCode::OK, &discovery::api_versions(&server.advertised_address())))
        }
        (&Method::GET, ["apis"]) => Ok(json_response(StatusCode::OK, &discovery::api_group_list())),
        (&Method::GET, ["api", "v1"]) => Ok(json_response(StatusCode::OK, &discovery::core_v1_resources())),

        (&Method::GET, ["api", "v1", "namespaces"]) => {
            check(&identity, Verb::List, "namespaces", None, None, "")?;
            pods::list_namespaces(server, &req, None).await
        }
        (&Method::GET, ["api", "v1", "namespaces", name]) => {
            check(&identity, Verb::Get, "namespaces", None, None, name)?;
            pods::list_namespaces(server, &req, Some(name)).await
        }
        (&Method::GET, ["api", "v1", "nodes"]) => {
            check(&identity, read_verb(&params, false), "nodes", None, None, "")?;
            pods::list_nodes(server, &req, None).await
        }
        (&Method::GET, ["api", "v1", "nodes", name]) => {
            check(&identity, Verb::Get, "nodes", None, None, name)?;
            pods::list_nodes(server, &req, Some(name)).await
        }
        // The node proxy: only the node's image endpoints (admin only, like Kubernetes' nodes/proxy).
        (&Method::GET | &Method::POST, ["api", "v1", "nodes", name, "proxy", rest @ ..]) => {
            let verb = if *method == Method::GET { Verb::Get } else { Verb::Create };
            check(&identity, verb, "nodes", Some("proxy"), None, name)?;
            let Some(node_path) = proxy::node_path(rest) else {
                return Err(ApiError::new(Status::failure(
                    hatch_wire::status::Reason::NotFound,
                    "the node proxy serves only the node's \"images\"",
                )));
            };
            let name = name.to_string();
            proxy::proxy(server, req, &name, &node_path).await
        }
        (_, ["api", "v1", "nodes", _, "proxy", ..]) => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method})"
        ))),
        (&Method::GET, ["api", "v1", "pods"]) => {
            check(&identity, read_verb(&params, false), "pods", None, None, "")?;
            pods::list(server, req, None).await
        }
        (&Method::GET, ["api", "v1", "namespaces", ns, "pods"]) => {
            check(&identity, read_verb(&params, false), "pods", None, Some(ns), "")?;
            pods::list(server, req, Some(ns)).await
        }
        (&Method::POST, ["api", "v1", "namespaces", ns, "pods"]) => {
            check(&identity, Verb::Create, "pods", None, Some(ns), "")?;
            pods::create(server, req, ns).await
        }
        (&Method::GET, ["api", "v1", "namespaces", ns, "pods", name]) => {
            check(&identity, Verb::Get, "pods", None, Some(ns), name)?;
            pods::get(server, &req, ns, name).await
        }
        (&Method::DELETE, ["api", "v1", "namespaces", ns, "pods", name]) => {
            check(&identity, Verb::Delete, "pods", None, Some(ns), name)?;
            pods::delete(server, req, ns, name).await
        }
        (&Method::GET | &Method::POST, ["api", "v1", "namespaces", ns, "pods", name, "exec"]) => {
            let (ns, name) = (ns.to_string(), name.to_string());
            Ok(exec::exec(server, identity, req, &ns, &name).await)
        }
        (_, ["api", "v1", "namespaces", _, "pods", _, "exec"]) => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method})"
        ))),
        _ => Err(ApiError::new(Status::failure(
            hatch_wire::status::Reason::NotFound,
            "the server could not find the requested resource",
        ))),
    }
}
