//! The connection to the API server named in the kubeconfig: TLS with its CA, bearer token or
//! client certificate, and errors that say in one line what went wrong and what to do.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::kubeconfig::ClusterConfig;

/// A TLS connection to the server. rustls reads the socket 4 KiB at a time; the buffer below it
/// turns a bulk download's 250,000 read(2) calls per GiB into a few thousand.
pub type ServerStream = TlsStream<BufReader<TcpStream>>;

/// Bytes read from the socket at once under TLS.
const SOCKET_READ_BUFFER: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("server URL {0:?} in the kubeconfig is not https://host:port")]
    BadUrl(String),
    #[error("kubeconfig: {0}")]
    Credentials(String),
    #[error("cannot reach the hatch server at {server}: {reason} (is `hatch up` running? is KUBECONFIG right?)")]
    Unreachable { server: String, reason: String },
    #[error(
        "the server at {server} is not the one the kubeconfig trusts: {reason} (certificate mismatch; use the kubeconfig that server wrote)"
    )]
    Certificate { server: String, reason: String },
    #[error("connection to {server} failed: {reason}")]
    Connection { server: String, reason: String },
    #[error("{0}")]
    Api(ApiFailure),
}

/// A non-2xx answer, with the message of its `metav1.Status` body.
#[derive(Debug)]
pub struct ApiFailure {
    pub status: StatusCode,
    pub message: String,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            StatusCode::UNAUTHORIZED => {
                write!(
                    f,
                    "the server rejected the token (401 Unauthorized): {} — check the user in your kubeconfig",
                    self.message
                )
            }
            StatusCode::FORBIDDEN => write!(f, "forbidden (403): {}", self.message),
            _ => write!(f, "{} ({})", self.message, self.status),
        }
    }
}

/// The message of a `metav1.Status` body, or the body itself.
pub fn status_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(String::from))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string())
}

/// A request body that may stream (an image upload).
pub type RequestBody = UnsyncBoxBody<Bytes, std::io::Error>;

pub struct Cluster {
    pub config: ClusterConfig,
    tls: TlsConnector,
    /// host:port to dial.
    pub authority: String,
    server_name: ServerName<'static>,
}

impl Cluster {
    pub fn new(config: ClusterConfig) -> Result<Cluster, ClusterError> {
        let authority = config
            .server
            .strip_prefix("https://")
            .ok_or_else(|| ClusterError::BadUrl(config.server.clone()))?
            .to_string();
        let host = match authority.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => h.trim_matches(['[', ']']).to_string(),
            _ => return Err(ClusterError::BadUrl(config.server.clone())),
        };
        let server_name = ServerName::try_from(host).map_err(|_| ClusterError::BadUrl(config.server.clone()))?;
        // ring: the project's one provider (deprecated upstream only for lacking post-quantum
        // key exchange; its classical suites are what hatch and kubectl negotiate).
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        match &config.ca_pem {
            Some(pem) => {
                for cert in CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| ClusterError::Credentials(format!("certificate authority: {e}")))?;
                    roots.add(cert).map_err(|e| ClusterError::Credentials(format!("certificate authority: {e}")))?;
                }
            }
            None => return Err(ClusterError::Credentials("the cluster has no certificate-authority-data".into())),
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClusterError::Credentials(e.to_string()))?
            .with_root_certificates(roots);
        let mut tls = match (&config.client_cert_pem, &config.client_key_pem) {
            (Some(cert), Some(key)) => {
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<_, _>>()
                    .map_err(|e| ClusterError::Credentials(format!("client certificate: {e}")))?;
                let key = PrivateKeyDer::from_pem_slice(key)
                    .map_err(|e| ClusterError::Credentials(format!("client key: {e}")))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| ClusterError::Credentials(e.to_string()))?
            }
            _ => builder.with_no_client_auth(),
        };
        // Upgrades (exec) are HTTP/1.1 only.
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Cluster { config, tls: TlsConnector::from(Arc::new(tls)), authority, server_name })
    }

    /// Opens a TLS connection to the server.
    pub async fn connect(&self) -> Result<ServerStream, ClusterError> {
        let server = self.config.server.clone();
        let tcp = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| ClusterError::Unreachable { server: server.clone(), reason: e.to_string() })?;
        let _ = tcp.set_nodelay(true);
        let tcp = BufReader::with_capacity(SOCKET_READ_BUFFER, tcp);
        self.tls.connect(self.server_name.clone(), tcp).await.map_err(|e| {
            let reason = e.to_string();
            if reason.contains("certificate") || reason.contains("UnknownIssuer") || reason.contains("NotValidForName")
            {
                ClusterError::Certificate { server, reason }
            } else {
                ClusterError::Connection { server, reason }
            }
        })
    }

    pub fn bearer(&self) -> Option<String> {
        self.config.token.as_ref().map(|t| format!("Bearer {t}"))
    }

    /// One request; returns the body of a 2xx answer, or an `Api` error with the Status message.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        accept: &str,
    ) -> Result<Bytes, ClusterError> {
        let content_type = body.is_some().then_some("application/json");
        let body = Full::new(Bytes::from(body.unwrap_or_default())).map_err(|never| match never {}).boxed_unsync();
        self.send(method, path, body, content_type, accept).await
    }

    /// One request with a body that may stream; returns the body of a 2xx answer, or an `Api`
    /// error with the Status message. An upload the server answers early (a refusal) ends there.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: RequestBody,
        content_type: Option<&str>,
        accept: &str,
    ) -> Result<Bytes, ClusterError> {
        let stream = self.connect().await?;
        let failed =
            |e: hyper::Error| ClusterError::Connection { server: self.config.server.clone(), reason: e.to_string() };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(failed)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, &self.authority)
            .header(http::header::ACCEPT, accept)
            .header(http::header::USER_AGENT, concat!("hatch/", env!("CARGO_PKG_VERSION")));
        if let Some(auth) = self.bearer() {
            req = req.header(http::header::AUTHORIZATION, auth);
        }
        if let Some(content_type) = content_type {
            req = req.header(http::header::CONTENT_TYPE, content_type);
        }
        let req = req
            .body(body)
            .map_err(|e| ClusterError::Connection { server: self.config.server.clone(), reason: e.to_string() })?;
        let resp = sender.send_request(req).await.map_err(failed)?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map_err(failed)?.to_bytes();
        if !status.is_success() {
            return Err(ClusterError::Api(ApiFailure { status, message: status_message(&bytes) }));
        }
        Ok(bytes)
    }

    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value, ClusterError> {
        let bytes = self.request(Method::GET, path, None, "application/json").await?;
        serde_json::from_slice(&bytes).map_err(|e| ClusterError::Connection {
            server: self.config.server.clone(),
            reason: format!("the server sent invalid JSON: {e}"),
        })
    }
}
