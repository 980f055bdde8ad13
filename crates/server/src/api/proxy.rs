//! The node proxy subresource, `GET|POST /api/v1/nodes/{node}/proxy/images`: the node's image
//! endpoints (list, import a rootfs tarball) from any machine with a kubeconfig.
//!
//! Only the `images` path is proxied; anything else under `proxy/` is a 404. Authorization is the
//! caller's (`nodes/proxy`, admin only, as Kubernetes treats it). The request goes to the local
//! node in-process, or to a remote node over mutual TLS on a fresh connection that carries this
//! one request; the body streams both ways, never buffered here.

use std::sync::Arc;
use std::time::Duration;

use hatch_wire::status::{Reason, Status};
use http::header::{ACCEPT, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use time::OffsetDateTime;

use super::Body;
use super::exec::strip_credentials;
use crate::error::ApiError;
use crate::k8s::node::NodeRecord;
use crate::server::Server;

/// The node paths reachable through the proxy.
const PROXIED: &[&str] = &["images"];
/// How long a node may take to answer once the request (and its whole body) is sent: an import
/// unpacks the tarball first.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);

/// The node path for the segments after `proxy/`, if it is one hatch proxies.
pub(crate) fn node_path(rest: &[&str]) -> Option<String> {
    match rest {
        [one] if PROXIED.contains(one) => Some(format!("/{one}")),
        _ => None,
    }
}

/// Forwards `req` to `node_name`'s `path` (from [`node_path`]) with the client's query.
pub(crate) async fn proxy(
    server: &Arc<Server>,
    mut req: Request<Incoming>,
    node_name: &str,
    path: &str,
) -> Result<Response<Body>, ApiError> {
    let node = match server.registry.node(node_name).await? {
        Some((node, _)) => node,
        None => return Err(ApiError::not_found("nodes", node_name)),
    };
    // A silent node fails now, instead of a dial that hangs.
    if !server.registry.is_ready(&node) {
        let silence = node.silence(OffsetDateTime::now_utc()).map(|d| d.as_secs()).unwrap_or(0);
        return Err(ApiError::unavailable(format!(
            "node {node_name:?} is not ready: no status from it for {silence}s (see `hatch get nodes`)"
        )));
    }
    let path_and_query = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    tracing::info!(node = %node_name, method = %req.method(), path = %path_and_query, "node proxy");
    strip_credentials(req.headers_mut());
    match server.local_node(node_name) {
        Some(local) => {
            *req.uri_mut() = path_and_query.parse::<Uri>().map_err(ApiError::internal)?;
            Ok(local.images(req).await)
        }
        None => forward_remote(server, &node, req, &path_and_query).await.map_err(ApiError::new),
    }
}

/// Sends the request, body streaming, to a remote node and streams its answer back.
async fn forward_remote(
    server: &Arc<Server>,
    node: &NodeRecord,
    req: Request<Incoming>,
    path_and_query: &str,
) -> Result<Response<Body>, Status> {
    let unavailable = |what: String| Status::failure(Reason::ServiceUnavailable, what);
    let address = &node.report.streaming_address;
    if address.is_empty() {
        return Err(unavailable(format!("node {:?} has no streaming address", node.name)));
    }
    let mut forwarded = Request::builder().method(req.method().clone()).uri(path_and_query);
    if let Some(headers) = forwarded.headers_mut() {
        // Only what describes the body: hyper frames it again from the body's own length.
        for name in [CONTENT_TYPE, CONTENT_LENGTH, ACCEPT] {
            if let Some(value) = req.headers().get(&name) {
                headers.insert(name, value.clone());
            }
        }
        if let Ok(host) = HeaderValue::from_str(address) {
            headers.insert(HOST, host);
        }
    }
    let forwarded = forwarded.body(req.into_body()).map_err(|e| Status::internal_error(&e.to_string()))?;

    let tls = server.dialer.dial(&node.name, address).await.map_err(|e| unavailable(e.to_string()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(tls))
        .await
        .map_err(|e| unavailable(format!("http with node {:?}: {e}", node.name)))?;
    let node_name = node.name.clone();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(node = %node_name, error = %e, "node proxy connection");
        }
    });
    let answer = match tokio::time::timeout(ANSWER_TIMEOUT, sender.send_request(forwarded)).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => return Err(unavailable(format!("node {:?} dropped the request: {e}", node.name))),
        Err(_) => return Err(unavailable(format!("node {:?} did not answer in time", node.name))),
    };
    // One request per backend connection.
    drop(sender);
    let (mut parts, body) = answer.into_parts();
    parts.headers.remove(CONNECTION);
    tracing::debug!(node = %node.name, status = parts.status.as_u16(), "node proxy answered");
    Ok(Response::from_parts(parts, body.map_err(std::io::Error::other).boxed_unsync()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_images_is_proxied() {
        assert_eq!(node_path(&["images"]), Some("/images".to_string()));
        assert_eq!(node_path(&[]), None);
        assert_eq!(node_path(&["exec", "ns", "pod", "c"]), None);
        assert_eq!(node_path(&["images", "extra"]), None);
        assert_eq!(node_path(&["logs"]), None);
    }
}
