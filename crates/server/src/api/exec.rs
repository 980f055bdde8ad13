//! `pods/exec` (GET for WebSocket, POST for SPDY): authenticate (done by the caller), authorize,
//! audit, find the pod's node, then hand the upgrade to the node unchanged apart from the path.
//! The start record is fsync'ed while the node prepares; the answer (a 101 included) reaches the
//! client only once the record is on disk, and not at all if it cannot be written.
//!
//! The local node (`hatch up`) gets the client's own request, so the upgrade is the client's
//! connection and nothing is re-framed. A remote node is dialled over mutual TLS on a fresh
//! connection; its 101 is relayed and the two upgraded streams are spliced. Any other answer is
//! relayed with `Connection: close` and the backend connection is dropped, never reused
//! (CVE-2018-1002105).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hatch_wire::exec_options::ExecOptions;
use hatch_wire::status::{Reason, Status};
use http::header::{AUTHORIZATION, CONNECTION, CONTENT_TYPE, HOST};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use time::OffsetDateTime;

use super::{Body, full, status_response};
use crate::audit::ExecRecord;
use crate::auth::{Action, Identity, Verb, authorize};
use crate::contract::{ContainerReport, PodReport};
use crate::k8s::node::NodeRecord;
use crate::k8s::pod::{container_names, default_container};
use crate::k8s::{self, format_time_precise, str_at};
use crate::server::Server;

/// The header carrying the audit id to the node; the node's end record names it.
pub const AUDIT_ID_HEADER: &str = "hatch-audit-id";
const BACKEND_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest error body relayed from a node.
const MAX_RELAYED_BODY: usize = 64 * 1024;

fn new_audit_id() -> String {
    let bytes: [u8; 16] = rand::random();
    hex::encode(bytes)
}

fn now_precise() -> String {
    format_time_precise(OffsetDateTime::now_utc())
}

/// What the audit start record needs, even from a query that does not parse.
fn describe(query: &str) -> (Vec<String>, bool, bool, String) {
    let mut command = Vec::new();
    let (mut tty, mut stdin, mut container) = (false, false, String::new());
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let on = || hatch_wire::exec_options::parse_go_bool(&v) == Some(true);
        match k.as_ref() {
            "command" => command.push(v.into_owned()),
            "tty" => tty = on(),
            "stdin" => stdin = on(),
            "container" if container.is_empty() => container = v.into_owned(),
            _ => {}
        }
    }
    (command, tty, stdin, container)
}

fn bad_request(message: impl Into<String>) -> Status {
    Status::bad_request(message)
}

/// Why a container cannot take an exec right now, if it cannot.
fn not_running(report: Option<&ContainerReport>, container: &str, pod: &str) -> Option<Status> {
    let quoted = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let detail = match report {
        Some(c) if c.state == "running" => return None,
        Some(c) if c.state == "exited" => format!("it exited with code {}", c.exit_code),
        Some(c) if !c.reason.is_empty() => format!("it is waiting: {}", c.reason),
        Some(c) if c.state == "created" => "it was created but not started".to_string(),
        _ => "it has not started yet".to_string(),
    };
    Some(bad_request(format!("container {} in pod {} is not running: {detail}", quoted(container), quoted(pod))))
}

pub(crate) async fn exec(
    server: &Arc<Server>,
    identity: Identity,
    req: Request<Incoming>,
    namespace: &str,
    pod_name: &str,
) -> Response<Body> {
    let started = Instant::now();
    let query = req.uri().query().unwrap_or("").to_string();
    let (command, tty, stdin, container_param) = describe(&query);
    let mut record = ExecRecord {
        stage: "start",
        audit_id: new_audit_id(),
        time: now_precise(),
        user: identity.user(),
        role: identity.role_name().to_string(),
        allowed: false,
        method: req.method().to_string(),
        namespace: namespace.to_string(),
        pod: pod_name.to_string(),
        container: container_param.clone(),
        command,
        tty,
        stdin,
        ..ExecRecord::default()
    };

    // Any exec is a create, GET (WebSocket) as much as POST (SPDY).
    let verb = if req.method() == Method::GET { Verb::Get } else { Verb::Create };
    let action = Action { verb, resource: "pods", subresource: Some("exec"), namespace: Some(namespace) };
    if let Err(why) = authorize(&identity, &action) {
        record.reason = Some(why.clone());
        record.start = Some(record.time.clone());
        if let Err(e) = server.audit.start(record).wait().await {
            tracing::error!(error = %e, "audit log");
        }
        tracing::info!(user = %identity.user(), %namespace, pod = %pod_name, "exec denied");
        return status_response(&Status::forbidden("pods", pod_name, &why));
    }
    record.allowed = true;
    record.start = Some(record.time.clone());

    let target = match resolve(server, &req, namespace, pod_name).await {
        Ok(t) => t,
        Err(status) => {
            // Authorized but refused: a start and an end record, with the reason.
            return refuse(server, record, *status).await;
        }
    };
    record.container = target.container.clone();
    record.node = target.node.name.clone();

    let resolved = started.elapsed();
    // The start record goes to disk while the node prepares; the answer waits for it below.
    let durable = server.audit.start(record.clone());

    let path_and_query = exec_path(namespace, pod_name, &target.container, &query);
    let response = match server.local_node(&target.node.name) {
        Some(local) => {
            let mut req = req;
            match path_and_query.parse::<Uri>() {
                Ok(uri) => *req.uri_mut() = uri,
                Err(e) => return finish_refused(server, &record, Status::internal_error(&e.to_string())).await,
            }
            prepare_headers(req.headers_mut(), &record.audit_id);
            local.exec(req).await
        }
        None => match forward_remote(server, &target.node, req, &path_and_query, &record.audit_id).await {
            Ok(r) => r,
            Err(status) => return finish_refused(server, &record, status).await,
        },
    };
    let forwarded = started.elapsed();
    // Nothing of the session reaches the client before its start record is on disk. (Dropping
    // a 101 here means the upgrade never happens: the node's process never gets the client.)
    if let Err(e) = durable.wait().await {
        tracing::error!(error = %e, "audit log unavailable; refusing exec");
        let mut resp = status_response(&Status::internal_error(&format!("audit log unavailable: {e}")));
        resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        return resp;
    }
    tracing::debug!(
        audit_id = %record.audit_id, node = %record.node, status = response.status().as_u16(),
        resolve_us = resolved.as_micros() as u64,
        forward_us = (forwarded - resolved).as_micros() as u64,
        audit_wait_us = (started.elapsed() - forwarded).as_micros() as u64,
        "exec forwarded"
    );
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        return response;
    }
    // Not upgraded: the node's answer goes back as is, on a connection that then closes.
    let (mut parts, body) = response.into_parts();
    let bytes =
        match tokio::time::timeout(Duration::from_secs(10), Limited::new(body, MAX_RELAYED_BODY).collect()).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            _ => Bytes::new(),
        };
    let message = hatch_wire::status::Status::from_json(&bytes)
        .map(|s| s.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).chars().take(200).collect());
    let code = parts.status.as_u16();
    if let Err(e) = server
        .audit
        .finish(&record.audit_id, None, |r| r.error = Some(format!("node answered {code}: {message}")))
        .await
    {
        tracing::error!(error = %e, "audit log");
    }
    parts.headers.insert(CONNECTION, HeaderValue::from_static("close"));
    Response::from_parts(parts, full(bytes))
}

struct Target {
    container: String,
    node: NodeRecord,
}

async fn resolve(
    server: &Arc<Server>,
    req: &Request<Incoming>,
    namespace: &str,
    pod_name: &str,
) -> Result<Target, Box<Status>> {
    let upgrade = req.headers().get(http::header::UPGRADE).is_some();
    if !upgrade {
        return Err(Box::new(bad_request("Upgrade request required")));
    }
    let options =
        ExecOptions::from_query(req.uri().query().unwrap_or("")).map_err(|e| Box::new(bad_request(e.to_string())))?;
    let pod = match server.registry.get_pod(namespace, pod_name).await {
        Ok(Some(p)) => p,
        Ok(None) => return Err(Box::new(Status::not_found("pods", pod_name))),
        Err(e) => return Err(e.0),
    };
    let container = match options.container.as_deref() {
        Some(c) if container_names(&pod).iter().any(|n| n == c) => c.to_string(),
        Some(c) => return Err(Box::new(bad_request(format!("container {c} is not valid for pod {pod_name}")))),
        None => {
            default_container(&pod).ok_or_else(|| Box::new(bad_request(format!("pod {pod_name} has no containers"))))?
        }
    };
    let node_name = str_at(&pod, &["spec", "nodeName"]).to_string();
    if node_name.is_empty() {
        return Err(Box::new(bad_request(format!("pod {pod_name} does not have a host assigned"))));
    }
    let node = match server.registry.node(&node_name).await {
        Ok(Some((n, _))) => n,
        Ok(None) => {
            return Err(Box::new(Status::failure(
                Reason::ServiceUnavailable,
                format!("node {node_name:?} of pod {pod_name:?} is not registered"),
            )));
        }
        Err(e) => return Err(e.0),
    };
    // A silent node fails the exec now, instead of a dial that hangs.
    if !server.registry.is_ready(&node) {
        let silence = node.silence(OffsetDateTime::now_utc()).map(|d| d.as_secs()).unwrap_or(0);
        return Err(Box::new(Status::failure(
            Reason::ServiceUnavailable,
            format!("node {node_name:?} of pod {pod_name:?} is not ready: no status from it for {silence}s"),
        )));
    }
    let report: Option<&PodReport> = node
        .report
        .pods
        .iter()
        .find(|p| if p.mirror { p.namespace == namespace && p.name == pod_name } else { p.uid == k8s::uid(&pod) });
    let container_report = report.and_then(|r| r.containers.iter().find(|c| c.name == container));
    if let Some(status) = not_running(container_report, &container, pod_name) {
        return Err(Box::new(status));
    }
    Ok(Target { container, node })
}

/// `/exec/{ns}/{pod}/{container}` with the client's query, plus `container=` when it named none.
fn exec_path(namespace: &str, pod: &str, container: &str, query: &str) -> String {
    let seg = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let has_container = form_urlencoded::parse(query.as_bytes()).any(|(k, v)| k == "container" && !v.is_empty());
    let mut query = query.to_string();
    if !has_container {
        if !query.is_empty() {
            query.push('&');
        }
        query.push_str("container=");
        query.push_str(&seg(container));
    }
    format!("/exec/{}/{}/{}?{query}", seg(namespace), seg(pod), seg(container))
}

/// The client's credentials (and any audit id it forged) never reach a node.
pub(crate) fn strip_credentials(headers: &mut http::HeaderMap) {
    headers.remove(AUTHORIZATION);
    headers.remove("proxy-authorization");
    headers.remove(AUDIT_ID_HEADER);
    for name in headers.keys().cloned().collect::<Vec<HeaderName>>() {
        if name.as_str().starts_with("impersonate-") {
            headers.remove(&name);
        }
    }
}

/// The client's credentials stay here; the node learns the audit id instead.
fn prepare_headers(headers: &mut http::HeaderMap, audit_id: &str) {
    strip_credentials(headers);
    if let Ok(v) = HeaderValue::from_str(audit_id) {
        headers.insert(AUDIT_ID_HEADER, v);
    }
}

async fn refuse(server: &Arc<Server>, record: ExecRecord, status: Status) -> Response<Body> {
    if let Err(e) = server.audit.start(record.clone()).wait().await {
        tracing::error!(error = %e, "audit log");
    }
    finish_refused(server, &record, status).await
}

async fn finish_refused(server: &Arc<Server>, record: &ExecRecord, status: Status) -> Response<Body> {
    let message = status.message.clone();
    if let Err(e) = server.audit.finish(&record.audit_id, None, |r| r.error = Some(message)).await {
        tracing::error!(error = %e, "audit log");
    }
    tracing::info!(audit_id = %record.audit_id, pod = %record.pod, reason = %status.message, "exec refused");
    let mut resp = status_response(&status);
    resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Dials the node (mutual TLS, fresh connection), forwards the upgrade request and, on 101,
/// splices the client's and the node's connections.
async fn forward_remote(
    server: &Arc<Server>,
    node: &NodeRecord,
    mut req: Request<Incoming>,
    path_and_query: &str,
    audit_id: &str,
) -> Result<Response<Body>, Status> {
    let address = node.report.streaming_address.clone();
    let unavailable = |what: String| Status::failure(Reason::ServiceUnavailable, what);
    if address.is_empty() {
        return Err(unavailable(format!("node {:?} has no streaming address", node.name)));
    }
    let client_upgrade = hyper::upgrade::on(&mut req);
    let forwarded = || {
        let mut forwarded = Request::builder().method(req.method().clone()).uri(path_and_query);
        if let Some(headers) = forwarded.headers_mut() {
            *headers = req.headers().clone();
            prepare_headers(headers, audit_id);
            if let Ok(host) = HeaderValue::from_str(&address) {
                headers.insert(HOST, host);
            }
        }
        forwarded.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())
    };
    // A pre-dialled connection may have been closed by the node meanwhile: then dial afresh.
    let internal = |e: String| Status::internal_error(&e);
    let (mut answer, connection) = match send_once(server, node, forwarded().map_err(internal)?, true).await {
        Ok(sent) => sent,
        Err((true, _)) => send_once(server, node, forwarded().map_err(internal)?, false).await.map_err(|(_, s)| s)?,
        Err((false, status)) => return Err(status),
    };

    if answer.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut parts, body) = answer.into_parts();
        let bytes =
            match tokio::time::timeout(Duration::from_secs(10), Limited::new(body, MAX_RELAYED_BODY).collect()).await {
                Ok(Ok(c)) => c.to_bytes(),
                _ => Bytes::new(),
            };
        connection.abort();
        parts.headers.insert(CONNECTION, HeaderValue::from_static("close"));
        if !parts.headers.contains_key(CONTENT_TYPE) {
            parts.headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        return Ok(Response::from_parts(parts, full(bytes)));
    }

    let mut to_client = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    if let Some(headers) = to_client.headers_mut() {
        *headers = answer.headers().clone();
    }
    let backend_upgrade = hyper::upgrade::on(&mut answer);
    drop(connection);
    let node_name = node.name.clone();
    tokio::spawn(async move {
        let (client, backend) = match tokio::join!(client_upgrade, backend_upgrade) {
            (Ok(c), Ok(b)) => (c, b),
            (c, b) => {
                tracing::debug!(node = %node_name, client = c.is_ok(), backend = b.is_ok(), "exec upgrade failed");
                return;
            }
        };
        let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
        match tokio::io::copy_bidirectional(&mut client, &mut backend).await {
            Ok((up, down)) => tracing::debug!(node = %node_name, up, down, "exec stream closed"),
            Err(e) => tracing::debug!(node = %node_name, error = %e, "exec stream ended"),
        }
    });
    to_client.body(super::empty()).map_err(|e| Status::internal_error(&e.to_string()))
}

/// Sends the upgrade request on a connection of its own (a warm one when `warm` and one is ready).
/// The error says whether it is worth one more try on a fresh connection.
async fn send_once(
    server: &Arc<Server>,
    node: &NodeRecord,
    request: Request<Empty<Bytes>>,
    warm: bool,
) -> Result<(Response<Incoming>, tokio::task::JoinHandle<()>), (bool, Status)> {
    let unavailable = |what: String| Status::failure(Reason::ServiceUnavailable, what);
    let address = &node.report.streaming_address;
    let (tls, was_warm) = if warm {
        server.dialer.connect(&node.name, address).await
    } else {
        server.dialer.dial(&node.name, address).await.map(|c| (c, false))
    }
    .map_err(|e| (false, unavailable(e.to_string())))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tls))
        .await
        .map_err(|e| (was_warm, unavailable(format!("http with node {:?}: {e}", node.name))))?;
    let connection = tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "node connection");
        }
    });
    let answer = match tokio::time::timeout(BACKEND_ANSWER_TIMEOUT, sender.send_request(request)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            connection.abort();
            return Err((was_warm, unavailable(format!("node {:?} dropped the exec: {e}", node.name))));
        }
        Err(_) => {
            connection.abort();
            return Err((false, unavailable(format!("node {:?} did not answer the exec in time", node.name))));
        }
    };
    // One request per backend connection, whatever happens next.
    drop(sender);
    Ok((answer, connection))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn exec_paths() {
        assert_eq!(
            exec_path("default", "p", "c", "command=ls&container=c&stdout=true"),
            "/exec/default/p/c?command=ls&container=c&stdout=true"
        );
        assert_eq!(
            exec_path("default", "p", "main", "command=ls&stdout=true"),
            "/exec/default/p/main?command=ls&stdout=true&container=main"
        );
        assert_eq!(
            exec_path("default", "p", "main", "command=ls&container="),
            "/exec/default/p/main?command=ls&container=&container=main"
        );
    }

    #[test]
    fn audit_descriptions_survive_bad_queries() {
        let (cmd, tty, stdin, c) = describe("command=sh&command=-c&command=exit%2042&tty=1&stdin=bogus&container=x");
        assert_eq!(cmd, ["sh", "-c", "exit 42"]);
        assert!(tty && !stdin);
        assert_eq!(c, "x");
    }

    #[test]
    fn credentials_never_reach_the_node() {
        let mut h = http::HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer secret"));
        h.insert("impersonate-user", HeaderValue::from_static("root"));
        h.insert(AUDIT_ID_HEADER, HeaderValue::from_static("forged"));
        h.insert("sec-websocket-protocol", HeaderValue::from_static("v5.channel.k8s.io"));
        prepare_headers(&mut h, "real");
        assert!(h.get(AUTHORIZATION).is_none() && h.get("impersonate-user").is_none());
        assert_eq!(h.get(AUDIT_ID_HEADER).unwrap(), "real");
        assert!(h.get("sec-websocket-protocol").is_some());
    }

    #[test]
    fn stopped_containers_are_explained() {
        let exited = ContainerReport { name: "c".into(), state: "exited".into(), exit_code: 3, ..Default::default() };
        assert!(not_running(Some(&exited), "c", "p").unwrap().message.contains("exited with code 3"));
        let running = ContainerReport { state: "running".into(), ..exited.clone() };
        assert!(not_running(Some(&running), "c", "p").is_none());
        assert!(not_running(None, "c", "p").unwrap().message.contains("not started"));
    }
}
