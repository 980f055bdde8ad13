//! A minimal client for a node's Docker Engine API over its unix socket.

use std::path::PathBuf;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

/// Where `hatch up` puts the socket when no `--docker-socket` is given.
pub const DEFAULT_SOCKET: &str = "/var/lib/hatch/docker.sock";

pub type RequestBody = UnsyncBoxBody<Bytes, std::io::Error>;

#[derive(Debug, thiserror::Error)]
pub enum DockerSocketError {
    #[error(
        "cannot reach the hatch node at {path}: {source} (is `hatch up` running? set DOCKER_HOST=unix://… to its socket)"
    )]
    Connect { path: String, source: std::io::Error },
    #[error("DOCKER_HOST={0} is not a unix:// socket; hatch's image commands talk to the node's socket")]
    NotUnix(String),
    #[error("request to the hatch node failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("bad request: {0}")]
    Request(#[from] http::Error),
    #[error("{message}")]
    Api { status: StatusCode, message: String },
}

/// The node's Docker API socket.
pub struct DockerSocket {
    path: PathBuf,
}

impl DockerSocket {
    /// `DOCKER_HOST=unix://…` if set (as the docker CLI reads it), else hatch's default.
    pub fn from_env() -> Result<DockerSocket, DockerSocketError> {
        match std::env::var("DOCKER_HOST") {
            Ok(host) if !host.is_empty() => match host.strip_prefix("unix://") {
                Some(path) => Ok(DockerSocket { path: path.into() }),
                None => Err(DockerSocketError::NotUnix(host)),
            },
            _ => Ok(DockerSocket { path: DEFAULT_SOCKET.into() }),
        }
    }

    /// Sends one request and returns the status and the whole response body. A non-2xx answer
    /// becomes `Api` with Docker's `{"message"}` text.
    pub async fn request(&self, method: Method, path: &str, body: RequestBody) -> Result<Bytes, DockerSocketError> {
        let stream = tokio::net::UnixStream::connect(&self.path)
            .await
            .map_err(|source| DockerSocketError::Connect { path: self.path.display().to_string(), source })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "docker socket connection");
            }
        });
        let req = Request::builder()
            .method(method)
            .uri(format!("http://hatch{path}"))
            .header(http::header::HOST, "hatch")
            .body(body)?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(String::from))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
            return Err(DockerSocketError::Api { status, message });
        }
        Ok(bytes)
    }

    pub async fn get(&self, path: &str) -> Result<Bytes, DockerSocketError> {
        self.request(Method::GET, path, empty()).await
    }
}

pub fn empty() -> RequestBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}
