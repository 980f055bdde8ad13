//! The Docker Engine API (versions 1.24–1.50) on a root-only unix socket, for the docker CLI and
//! docker-py.

mod common;
mod containers;
mod exec;
mod hijack;
mod images;
mod system;

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;
use common::{ApiError, ApiResponse, ApiResult};

/// Newest API version served; the docker CLI negotiates down to it.
pub const API_VERSION: &str = "1.50";
pub const MIN_API_VERSION: &str = "1.24";
const MIN_MINOR: u32 = 24;
const MAX_MINOR: u32 = 50;

/// Largest request head (line + headers) accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DockerApiError {
    #[error("listen on {path}: {source}")]
    Listen { path: String, source: std::io::Error },
}

/// Shared state of the API handlers.
pub struct Api {
    pub engine: Arc<Engine>,
}

/// Binds the socket (mode 0660, owned by root) and serves until `shutdown`.
pub async fn serve(engine: Arc<Engine>, socket: PathBuf, shutdown: CancellationToken) -> Result<(), DockerApiError> {
    let socket = socket.as_path();
    let err = |source| DockerApiError::Listen { path: socket.display().to_string(), source };
    if socket.exists() {
        std::fs::remove_file(socket).map_err(err)?;
    }
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    let listener = UnixListener::bind(socket).map_err(err)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    let api = Arc::new(Api { engine });
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "docker socket accept");
                    continue;
                }
            },
        };
        let api = api.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let api = api.clone();
                async move { Ok::<_, Infallible>(route(api, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "docker API connection ended with an error");
            }
        });
    }
}

/// Splits `/v1.NN/rest` into the API minor version and the rest.
fn split_version(path: &str) -> Result<(Option<u32>, &str), ApiError> {
    let Some(rest) = path.strip_prefix("/v") else { return Ok((None, path)) };
    let (version, rest) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => return Ok((None, path)),
    };
    let Some(minor) = version.strip_prefix("1.").and_then(|m| m.parse::<u32>().ok()) else {
        return Ok((None, path));
    };
    if minor > MAX_MINOR {
        return Err(ApiError::bad_request(format!(
            "client version 1.{minor} is too new. Maximum supported API version is {API_VERSION}"
        )));
    }
    if minor < MIN_MINOR {
        return Err(ApiError::bad_request(format!(
            "client version 1.{minor} is too old. Minimum supported API version is {MIN_API_VERSION}, please upgrade your client to a newer version"
        )));
    }
    Ok((Some(minor), rest))
}

async fn route(api: Arc<Api>, req: Request<Incoming>) -> ApiResponse {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let result = match split_version(&path) {
        Ok((version, rest)) => dispatch(&api, req, version.unwrap_or(MAX_MINOR), rest).await,
        Err(e) => Err(e),
    };
    let response = result.unwrap_or_else(ApiError::into_response);
    tracing::debug!(%method, %path, status = %response.status(), "docker api");
    response
}

async fn dispatch(api: &Api, req: Request<Incoming>, version: u32, path: &str) -> ApiResult {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = req.method().clone();
    match (&method, segments.as_slice()) {
        (&Method::GET | &Method::HEAD, ["_ping"]) => Ok(system::ping(&method)),
        (&Method::GET, ["version"]) => Ok(system::version()),
        (&Method::GET, ["info"]) => Ok(system::info(api)),

        (&Method::GET, ["containers", "json"]) => containers::list(api, &req),
        (&Method::POST, ["containers", "create"]) => containers::create(api, req).await,
        (&Method::GET, ["containers", id, "json"]) => containers::inspect(api, id),
        (&Method::POST, ["containers", id, "start"]) => containers::start(api, id).await,
        (&Method::POST, ["containers", id, "stop"]) => containers::stop(api, id, &req).await,
        (&Method::POST, ["containers", id, "restart"]) => containers::restart(api, id, &req).await,
        (&Method::POST, ["containers", id, "kill"]) => containers::kill(api, id, &req).await,
        (&Method::POST, ["containers", id, "wait"]) => containers::wait(api, id, &req),
        (&Method::POST, ["containers", id, "attach"]) => containers::attach(api, id, req, version).await,
        (&Method::POST, ["containers", id, "resize"]) => containers::resize(api, id, &req).await,
        (&Method::GET, ["containers", id, "logs"]) => containers::logs(api, id, &req).await,
        (&Method::DELETE, ["containers", id]) => containers::remove(api, id, &req).await,
        (&Method::POST, ["containers", id, "exec"]) => exec::create(api, id, req).await,

        (&Method::POST, ["exec", id, "start"]) => exec::start(api, id, req, version).await,
        (&Method::POST, ["exec", id, "resize"]) => exec::resize(api, id, &req),
        (&Method::GET, ["exec", id, "json"]) => exec::inspect(api, id),

        (&Method::GET, ["images", "json"]) => images::list(api).await,
        (&Method::POST, ["images", "create"]) => images::create(api, req).await,
        (&Method::POST, ["images", "load"]) => images::load(api, req).await,
        (&Method::GET, ["images", "get"]) => images::save(api, &req).await,
        (&Method::GET, ["images", name @ .., "get"]) if !name.is_empty() => {
            images::save_one(api, &name.join("/")).await
        }
        (&Method::GET, ["images", name @ .., "json"]) if !name.is_empty() => {
            images::inspect(api, &name.join("/")).await
        }
        (&Method::POST, ["images", name @ .., "tag"]) if !name.is_empty() => {
            images::tag(api, &name.join("/"), &req).await
        }
        (&Method::DELETE, ["images", name @ ..]) if !name.is_empty() => {
            images::remove(api, &name.join("/"), &req).await
        }

        _ => Err(ApiError { code: StatusCode::NOT_FOUND, message: format!("page not found: {method} {path}") }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_prefix() {
        assert_eq!(split_version("/v1.41/containers/json").ok(), Some((Some(41), "/containers/json")));
        assert_eq!(split_version("/_ping").ok(), Some((None, "/_ping")));
        assert!(split_version("/v1.60/info").is_err());
        assert!(split_version("/v1.12/info").is_err());
        assert_eq!(split_version("/version").ok(), Some((None, "/version")));
    }
}
