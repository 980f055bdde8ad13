//! hatch's own API under `/hatch/v1`: node join, status, desired pods and exec ends (docs/architecture.md,
//! "Node ⇄ server"), and token minting for `hatch token create`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hatch_wire::status::{Reason, Status};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::{Body, json_response, query_params, read_json};
use crate::auth::{Identity, Role};
use crate::contract::{ExecEndBatch, JoinRequest, JoinResponse, NodeStatusReport, TokenRequest, TokenResponse};
use crate::error::ApiError;
use crate::pki::valid_node_name;
use crate::server::Server;

const DEFAULT_POLL: Duration = Duration::from_secs(30);

fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(Status::failure(Reason::Forbidden, message))
}

/// Only node `name` itself may speak for node `name`.
fn require_node(identity: &Identity, name: &str) -> Result<(), ApiError> {
    match identity {
        Identity::Node(n) if n == name => Ok(()),
        other => Err(forbidden(format!("{} may not act as node {name:?}", other.user()))),
    }
}

pub(crate) async fn route(
    server: &Arc<Server>,
    identity: Identity,
    req: Request<Incoming>,
    method: &Method,
    rest: &[&str],
) -> Result<Response<Body>, ApiError> {
    match (method, rest) {
        (&Method::POST, ["nodes", "join"]) => join(server, &identity, req).await,
        (&Method::PUT, ["nodes", name, "status"]) => {
            require_node(&identity, name)?;
            let report: NodeStatusReport = read_json(req).await?;
            server.node_status(name, report).await?;
            Ok(json_response(StatusCode::OK, &serde_json::json!({})))
        }
        (&Method::GET, ["nodes", name, "pods"]) => {
            require_node(&identity, name)?;
            let params = query_params(&req);
            let known = params.get("resourceVersion").cloned().unwrap_or_default();
            let timeout = params
                .get("timeoutSeconds")
                .and_then(|t| t.parse::<u64>().ok())
                .map(Duration::from_secs)
                .unwrap_or(DEFAULT_POLL);
            let desired = server.node_desired_pods(name, &known, timeout).await?;
            Ok(json_response(StatusCode::OK, &serde_json::to_value(&desired)?))
        }
        (&Method::POST, ["nodes", name, "audit"]) => {
            require_node(&identity, name)?;
            let batch: ExecEndBatch = read_json(req).await?;
            for end in batch.records {
                server.exec_finished(Some(name), end).await?;
            }
            Ok(json_response(StatusCode::OK, &serde_json::json!({})))
        }
        (&Method::POST, ["tokens"]) => {
            if !matches!(identity, Identity::Token { role: Role::Admin, .. }) {
                return Err(forbidden(format!("{} may not create tokens", identity.user())));
            }
            let request: TokenRequest = read_json(req).await?;
            let role = match Role::parse(&request.role) {
                Some(r @ (Role::Admin | Role::View)) => r,
                _ => return Err(ApiError::bad_request(format!("unknown role {:?}: use view or admin", request.role))),
            };
            let name = request
                .name
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| format!("{}-{}", role.as_str(), &crate::auth::random_secret()[..8]));
            let token = server.tokens.mint(&name, role).await.map_err(ApiError::internal)?;
            tracing::info!(%name, role = role.as_str(), by = %identity.user(), "token created");
            let body = TokenResponse { name, role: role.as_str().to_string(), token };
            Ok(json_response(StatusCode::CREATED, &serde_json::to_value(&body)?))
        }
        _ => Err(ApiError::new(Status::failure(Reason::NotFound, "the server could not find the requested resource"))),
    }
}

async fn join(server: &Arc<Server>, identity: &Identity, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    if !matches!(identity, Identity::Token { role: Role::Join | Role::Admin, .. }) {
        return Err(forbidden(format!("{} may not join nodes", identity.user())));
    }
    let request: JoinRequest = read_json(req).await?;
    if !valid_node_name(&request.name) {
        return Err(ApiError::bad_request(format!(
            "invalid node name {:?}: use lower-case letters, digits, '-' and '.'",
            request.name
        )));
    }
    let host = request
        .streaming_address
        .rsplit_once(':')
        .map(|(h, _)| h.trim_matches(['[', ']']).to_string())
        .unwrap_or_default();
    let certificate = server
        .pki
        .sign_node_csr(&request.csr, &request.name, &[host])
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    server.registry.register_node(&request.name, BTreeMap::new()).await?;
    tracing::info!(node = %request.name, address = %request.streaming_address, "node joined");
    let body = JoinResponse { certificate, ca: server.pki.ca_pem().to_string() };
    Ok(json_response(StatusCode::OK, &serde_json::to_value(&body)?))
}
