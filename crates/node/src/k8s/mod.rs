//! The node's Kubernetes streaming server: `kubectl exec` served the way the kubelet serves it.
//!
//! `GET|POST /exec/{namespace}/{pod}/{container}?command=…&stdin=…&stdout=…&stderr=…&tty=…`
//! (plus hatch's `user`, `privileged`, `env`, `workdir`, `detach`), upgraded to
//!
//! * **WebSocket** (`v5.channel.k8s.io`, `v4.channel.k8s.io`, `v4.base64.channel.k8s.io`,
//!   `channel.k8s.io`, `base64.channel.k8s.io`): see `ws.rs`;
//! * **SPDY/3.1** (`X-Stream-Protocol-Version` v4…v1; v5 offered first is served as v4, like the
//!   kubelet): see `spdy.rs`.
//!
//! Everything that can be refused is refused before the upgrade, with a `metav1.Status` body
//! kubectl prints (unknown pod 404, bad container or query 400, container not running 400,
//! no upgrade 400). After the upgrade the process runs through the engine (`exec_start`), its
//! output is relayed, and the session ends like the kubelet's: output drained, the Status on the
//! error channel, then an orderly close. A client that vanishes hangs the process up; a client
//! that breaks the protocol loses only its own session.
//!
//! Every exec request that names a pod is reported once to the [`ExecObserver`] when it is over
//! (the audit log's end record, keyed by the `Hatch-Audit-Id` request header).
//!
//! Besides exec, `GET|POST /images` lists and imports images (see `images.rs`): plain requests,
//! reached through the API server's node proxy.
//!
//! Callers that serve HTTP themselves (the API server under `hatch up`) call
//! [`StreamingServer::handle`] from a hyper connection built `with_upgrades()`.

pub mod images;
mod session;
mod spdy;
mod ws;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use hatch_wire::exec_options::ExecOptions;
use hatch_wire::k8s_ws::{self, Subprotocol};
use hatch_wire::spdy::{HEADER_ACCEPTED_PROTOCOL_VERSIONS, HEADER_PROTOCOL_VERSION, StreamProtocol, UPGRADE_TOKEN};
use hatch_wire::status::{Reason, Status};

use crate::engine::exec::ExecSpec;
use crate::engine::{Engine, EngineError};

/// Response body type of [`StreamingServer::handle`] (the same type as the Docker API's).
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// Request header carrying the API server's audit id, echoed in [`ExecSummary::audit_id`].
pub const AUDIT_ID_HEADER: &str = "Hatch-Audit-Id";

/// Largest request head accepted by [`StreamingServer::serve`].
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// A client must send its request head (and finish TLS) within this.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Told about every exec request once it is over.
pub trait ExecObserver: Send + Sync + 'static {
    fn exec_finished(&self, summary: ExecSummary);
}

/// How one exec request went: the audit log's end record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSummary {
    /// The `Hatch-Audit-Id` request header, when the API server sent one.
    pub audit_id: Option<String>,
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub command: Vec<String>,
    pub tty: bool,
    /// The process's exit code (128+N for signal N); `None` when nothing ran or it is unknown.
    pub exit_code: Option<i32>,
    /// Bytes from the client delivered to the process's stdin.
    pub bytes_in: u64,
    /// Bytes of the process's output sent to the client.
    pub bytes_out: u64,
    pub started: SystemTime,
    pub ended: SystemTime,
    /// Why the exec failed or was cut short (refused request, failed start, client gone,
    /// protocol error); `None` for a session that ran to its end.
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("tls handshake: {0}")]
    Tls(std::io::Error),
    #[error("tls handshake timed out")]
    TlsTimeout,
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
}

/// The streaming server. Cheap to share; one per node.
pub struct StreamingServer {
    engine: Arc<Engine>,
    observer: Option<Arc<dyn ExecObserver>>,
}

/// The transport a request asked for, negotiated.
enum Transport {
    WebSocket {
        protocol: Subprotocol,
        /// Echo the protocol in the 101 (not when the client offered none).
        echo: bool,
        accept: String,
    },
    Spdy(StreamProtocol),
}

/// A refused request: its Status and any extra response headers.
struct Refusal {
    status: Box<Status>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl From<Status> for Refusal {
    fn from(status: Status) -> Refusal {
        Refusal { status: Box::new(status), headers: Vec::new() }
    }
}

impl StreamingServer {
    pub fn new(engine: Arc<Engine>, observer: Option<Arc<dyn ExecObserver>>) -> Arc<Self> {
        Arc::new(StreamingServer { engine, observer })
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Serves one request for `/exec/{ns}/{pod}/{container}?…` or `/images` (404 Status for
    /// other paths).
    ///
    /// On success an exec's answer is a 101; the session then runs on its own task over the upgraded
    /// connection, so the hyper connection serving `req` must have been built `with_upgrades()`.
    pub async fn handle(self: &Arc<Self>, mut req: Request<Incoming>) -> Response<Body> {
        if req.uri().path() == images::IMAGES_PATH {
            return images::handle(&self.engine.images, req).await;
        }
        let started = SystemTime::now();
        let Some((namespace, pod, container)) = parse_path(req.uri().path()) else {
            let status = Status::failure(Reason::NotFound, "the server could not find the requested resource");
            return status_response(&Refusal::from(status));
        };
        let audit_id = req.headers().get(AUDIT_ID_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let mut summary = ExecSummary {
            audit_id,
            namespace,
            pod,
            container,
            command: Vec::new(),
            tty: false,
            exit_code: None,
            bytes_in: 0,
            bytes_out: 0,
            started,
            ended: started,
            error: None,
        };
        match self.prepare(&req, &mut summary) {
            Ok((transport, opts, session)) => {
                let on_upgrade = hyper::upgrade::on(&mut req);
                let response = switching_protocols(&transport);
                let mut exec = session::Exec::new(self.clone(), session, opts, summary);
                if matches!(transport, Transport::WebSocket { .. }) {
                    exec.start_early().await;
                }
                tracing::debug!(
                    namespace = %exec.summary().namespace,
                    pod = %exec.summary().pod,
                    container = %exec.summary().container,
                    command = ?exec.opts.command,
                    tty = exec.opts.tty,
                    "k8s exec upgrading"
                );
                tokio::spawn(async move {
                    let upgraded = match on_upgrade.await {
                        Ok(u) => u,
                        Err(e) => {
                            exec.finish(None, Some(format!("connection upgrade failed: {e}")));
                            return;
                        }
                    };
                    match transport {
                        Transport::WebSocket { protocol, .. } => ws::run(exec, upgraded, protocol).await,
                        Transport::Spdy(protocol) => spdy::run(exec, upgraded, protocol).await,
                    }
                });
                response
            }
            Err(refusal) => {
                tracing::debug!(
                    namespace = %summary.namespace,
                    pod = %summary.pod,
                    code = refusal.status.http_code(),
                    message = %refusal.status.message,
                    "k8s exec refused"
                );
                summary.error = Some(refusal.status.message.clone());
                summary.ended = SystemTime::now();
                self.report(summary);
                status_response(&refusal)
            }
        }
    }

    /// Everything checked before the upgrade; on success the exec exists (not yet started).
    fn prepare(
        &self,
        req: &Request<Incoming>,
        summary: &mut ExecSummary,
    ) -> Result<(Transport, ExecOptions, Arc<crate::engine::exec::ExecSession>), Refusal> {
        if req.method() != Method::GET && req.method() != Method::POST {
            return Err(
                Status::failure(Reason::MethodNotAllowed, format!("method {} is not allowed", req.method())).into()
            );
        }
        let opts =
            ExecOptions::from_query(req.uri().query().unwrap_or("")).map_err(|e| Status::bad_request(e.to_string()))?;
        summary.command = opts.command.clone();
        summary.tty = opts.tty;
        let transport = negotiate(req)?;

        let engine = &self.engine;
        let container =
            engine.pod_container(&summary.namespace, &summary.pod, Some(&summary.container)).map_err(|e| match e {
                EngineError::NoSuchPod(_) => Status::not_found("pods", &summary.pod),
                EngineError::BadRequest(m) => Status::bad_request(m),
                other => Status::internal_error(&other.to_string()),
            })?;
        let not_running = || {
            Status::bad_request(format!(
                "container {} in pod {} is not running",
                go_quote(&summary.container),
                go_quote(&summary.pod)
            ))
        };
        if !container.is_running() {
            return Err(not_running().into());
        }
        let spec = ExecSpec {
            cmd: opts.command.clone(),
            env: opts.env.clone(),
            working_dir: opts.workdir.clone().unwrap_or_default(),
            user: opts.user.clone().unwrap_or_default(),
            privileged: opts.privileged,
            tty: opts.tty,
            attach_stdin: opts.stdin,
            attach_stdout: opts.stdout,
            attach_stderr: opts.stderr,
            detach_keys: String::new(),
            console_size: None,
        };
        let session = engine.exec_create(&container, spec).map_err(|e| match e {
            EngineError::NotRunning(_) => not_running(),
            EngineError::BadRequest(m) => Status::bad_request(m),
            other => Status::internal_error(&other.to_string()),
        })?;
        Ok((transport, opts, session))
    }

    fn report(&self, summary: ExecSummary) {
        tracing::info!(
            audit_id = summary.audit_id.as_deref().unwrap_or(""),
            namespace = %summary.namespace,
            pod = %summary.pod,
            container = %summary.container,
            command = ?summary.command,
            tty = summary.tty,
            exit_code = ?summary.exit_code,
            bytes_in = summary.bytes_in,
            bytes_out = summary.bytes_out,
            error = summary.error.as_deref().unwrap_or(""),
            "k8s exec finished"
        );
        if let Some(observer) = &self.observer {
            observer.exec_finished(summary);
        }
    }

    /// Accepts connections until `shutdown`: plain TCP, or TLS with `tls` (client certificates
    /// are whatever that config requires). HTTP/1.1 with upgrades. Sessions already upgraded
    /// keep running after shutdown; only the accept loop stops.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        shutdown: CancellationToken,
    ) {
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "streaming server accept");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            // Interactive sessions: every keystroke is its own small write.
            let _ = stream.set_nodelay(true);
            let server = self.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let result = match acceptor {
                    None => server.serve_connection(TokioIo::new(stream)).await,
                    Some(acceptor) => match tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => server.serve_connection(TokioIo::new(tls)).await,
                        Ok(Err(e)) => Err(ConnectionError::Tls(e)),
                        Err(_) => Err(ConnectionError::TlsTimeout),
                    },
                };
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "streaming connection ended with an error");
                }
            });
        }
    }

    async fn serve_connection<I>(self: Arc<Self>, io: I) -> Result<(), ConnectionError>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let service = service_fn(move |req| {
            let server = self.clone();
            async move { Ok::<_, Infallible>(server.handle(req).await) }
        });
        hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEAD_TIMEOUT)
            .max_buf_size(MAX_HEAD_BYTES)
            .serve_connection(io, service)
            .with_upgrades()
            .await?;
        Ok(())
    }
}

/// `/exec/{namespace}/{pod}/{container}`, each segment non-empty and percent-decoded.
fn parse_path(path: &str) -> Option<(String, String, String)> {
    let rest = path.strip_prefix("/exec/")?;
    let segments: Vec<String> =
        rest.split('/').map(|s| percent_decode(s).filter(|d| !d.is_empty())).collect::<Option<Vec<String>>>()?;
    match <[String; 3]>::try_from(segments) {
        Ok([ns, pod, container]) => Some((ns, pod, container)),
        Err(_) => None,
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok().filter(|s| !s.contains(['\0', '/']))
}

/// Values of a header, split on commas and trimmed.
fn header_tokens<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Which upgrade the request asks for, and its protocol.
fn negotiate(req: &Request<Incoming>) -> Result<Transport, Refusal> {
    let headers = req.headers();
    let upgrade_required = || Status::bad_request("Upgrade request required");
    if !header_tokens(headers, header::CONNECTION.as_str()).any(|t| t.eq_ignore_ascii_case("upgrade")) {
        return Err(upgrade_required().into());
    }
    let upgrade: Vec<&str> = header_tokens(headers, header::UPGRADE.as_str()).collect();
    if upgrade.iter().any(|t| t.eq_ignore_ascii_case("websocket")) {
        negotiate_websocket(req)
    } else if upgrade.iter().any(|t| t.eq_ignore_ascii_case(UPGRADE_TOKEN)) {
        negotiate_spdy(headers)
    } else {
        Err(upgrade_required().into())
    }
}

fn negotiate_websocket(req: &Request<Incoming>) -> Result<Transport, Refusal> {
    let headers = req.headers();
    if req.method() != Method::GET {
        return Err(Status::bad_request("websocket upgrade requires GET").into());
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).and_then(|v| v.to_str().ok()).map(str::trim) != Some("13") {
        return Err(Refusal {
            status: Box::new(Status::bad_request("unsupported websocket version, expected 13")),
            headers: vec![(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"))],
        });
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(Status::bad_request("missing Sec-WebSocket-Key").into());
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let offered: Vec<&str> = header_tokens(headers, header::SEC_WEBSOCKET_PROTOCOL.as_str()).collect();
    if offered.is_empty() {
        return Ok(Transport::WebSocket { protocol: Subprotocol::IMPLICIT, echo: false, accept });
    }
    match k8s_ws::negotiate(&offered) {
        Some(protocol) => Ok(Transport::WebSocket { protocol, echo: true, accept }),
        None => {
            let supported: Vec<&str> = Subprotocol::ALL.iter().map(|p| p.name()).collect();
            Err(Status::bad_request(format!(
                "requested protocol(s) are not supported: {offered:?}; supports {supported:?}"
            ))
            .into())
        }
    }
}

fn negotiate_spdy(headers: &HeaderMap) -> Result<Transport, Refusal> {
    let offered: Vec<&str> = headers.get_all(HEADER_PROTOCOL_VERSION).iter().filter_map(|v| v.to_str().ok()).collect();
    if offered.is_empty() {
        return Err(Status::bad_request(format!("unable to upgrade: {HEADER_PROTOCOL_VERSION} is required")).into());
    }
    let supported = &StreamProtocol::KUBELET_SUPPORTED;
    match StreamProtocol::negotiate(&offered, supported) {
        Some(protocol) => Ok(Transport::Spdy(protocol)),
        None => {
            let names: Vec<&str> = supported.iter().map(|p| p.name()).collect();
            let status = Status::failure(
                Reason::Forbidden,
                format!(
                    "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {names:?}"
                ),
            );
            let name = HeaderName::from_bytes(HEADER_ACCEPTED_PROTOCOL_VERSIONS.as_bytes()).ok();
            let headers = name
                .map(|name| names.iter().map(|n| (name.clone(), HeaderValue::from_static(n))).collect())
                .unwrap_or_default();
            Err(Refusal { status: Box::new(status), headers })
        }
    }
}

fn switching_protocols(transport: &Transport) -> Response<Body> {
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    match transport {
        Transport::WebSocket { protocol, echo, accept } => {
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            if let Ok(v) = HeaderValue::from_str(accept) {
                h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
            }
            if *echo {
                h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol.name()));
            }
        }
        Transport::Spdy(protocol) => {
            h.insert(header::UPGRADE, HeaderValue::from_static(UPGRADE_TOKEN));
            h.insert(HEADER_PROTOCOL_VERSION, HeaderValue::from_static(protocol.name()));
        }
    }
    resp
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never: Infallible| match never {}).boxed_unsync()
}

fn empty() -> Body {
    http_body_util::Empty::new().map_err(|never: Infallible| match never {}).boxed_unsync()
}

fn status_response(refusal: &Refusal) -> Response<Body> {
    let status = (*refusal.status).clone().with_type_meta();
    let body = Full::new(Bytes::from(status.to_json())).map_err(|never: Infallible| match never {}).boxed_unsync();
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::from_u16(status.http_code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for (name, value) in &refusal.headers {
        h.append(name.clone(), value.clone());
    }
    resp
}

// Go's %q for the names Kubernetes allows.
fn go_quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_paths() {
        assert_eq!(parse_path("/exec/default/foo/main"), Some(("default".into(), "foo".into(), "main".into())));
        assert_eq!(parse_path("/exec/ns/p%2Dx/c"), Some(("ns".into(), "p-x".into(), "c".into())));
        assert_eq!(parse_path("/exec/ns/pod"), None);
        assert_eq!(parse_path("/exec/ns/pod/c/extra"), None);
        assert_eq!(parse_path("/exec//pod/c"), None);
        assert_eq!(parse_path("/exec/ns/pod/%2F"), None);
        assert_eq!(parse_path("/exec/ns/pod/%zz"), None);
        assert_eq!(parse_path("/exec/ns/pod/%4"), None);
        assert_eq!(parse_path("/attach/ns/pod/c"), None);
    }
}
