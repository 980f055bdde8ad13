//! A small HTTPS client for the server's node API: one TLS connection per request (a status every
//! 5 s and a 30 s long poll do not need pooling), JSON in and out.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::AgentError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_RESPONSE: usize = 64 * 1024 * 1024;

#[derive(Clone)]
pub struct ApiClient {
    /// `host:port` to dial.
    authority: String,
    server_name: ServerName<'static>,
    tls: Arc<ClientConfig>,
    bearer: Option<String>,
}

/// `https://host:port` → (`host`, `host:port`).
pub fn parse_server_url(url: &str) -> Result<(String, String), AgentError> {
    let bad = || AgentError::Config(format!("invalid server URL {url:?}: expected https://HOST:PORT"));
    let uri: Uri = url.parse().map_err(|_| bad())?;
    if uri.scheme_str() != Some("https") {
        return Err(bad());
    }
    let host = uri.host().ok_or_else(bad)?.trim_matches(['[', ']']).to_string();
    let port = uri.port_u16().unwrap_or(443);
    let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    Ok((host, authority))
}

impl ApiClient {
    pub fn new(server_url: &str, tls: Arc<ClientConfig>, bearer: Option<String>) -> Result<ApiClient, AgentError> {
        let (host, authority) = parse_server_url(server_url)?;
        let server_name = ServerName::try_from(host.clone())
            .map_err(|e| AgentError::Config(format!("server host {host:?}: {e}")))?
            .to_owned();
        Ok(ApiClient { authority, server_name, tls, bearer })
    }

    /// Sends one request; any HTTP status is returned, transport failures are errors.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), AgentError> {
        let unreachable = |e: String| AgentError::Unreachable(format!("{}: {e}", self.authority));
        let exchange = async {
            let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.authority))
                .await
                .map_err(|_| unreachable("connect timed out".into()))?
                .map_err(|e| unreachable(e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            let tls = TlsConnector::from(self.tls.clone())
                .connect(self.server_name.clone(), tcp)
                .await
                .map_err(|e| unreachable(format!("tls: {e}")))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tls))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let connection = tokio::spawn(conn);
            let mut builder = Request::builder()
                .method(method)
                .uri(path)
                .header(http::header::HOST, &self.authority)
                .header(http::header::ACCEPT, "application/json");
            if body.is_some() {
                builder = builder.header(http::header::CONTENT_TYPE, "application/json");
            }
            if let Some(token) = &self.bearer {
                builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let req = builder
                .body(Full::new(Bytes::from(body.unwrap_or_default())))
                .map_err(|e| AgentError::Config(e.to_string()))?;
            let resp = sender.send_request(req).await.map_err(|e| unreachable(e.to_string()))?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            connection.abort();
            Ok::<_, AgentError>((status, bytes))
        };
        tokio::time::timeout(timeout, exchange).await.map_err(|_| unreachable("request timed out".into()))?
    }

    /// A JSON request whose answer must be 2xx; other answers become errors with the server's message.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
        timeout: Duration,
    ) -> Result<T, AgentError> {
        let body = body.map(serde_json::to_vec).transpose().map_err(|e| AgentError::Config(e.to_string()))?;
        let (status, bytes) = self.request(method, path, body, timeout).await?;
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(300).collect());
            return Err(AgentError::Refused { status: status.as_u16(), message });
        }
        serde_json::from_slice(&bytes).map_err(|e| AgentError::Protocol(format!("{path}: {e}")))
    }
}
