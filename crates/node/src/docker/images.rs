//! `/images/...`: import (`docker import`), load and save, list, inspect, tag, remove.
//!
//! Archive bodies stream straight into the (blocking) image store through a sync bridge, so a
//! large import never sits in memory.

use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, BodyStream, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};
use tokio_util::io::{StreamReader, SyncIoBridge};

use hatch_image::{Image, ImageStore, ImportOptions, RemoveAction};

use super::Api;
use super::common::{ApiError, ApiResult, Query, json};
use crate::engine::EngineError;

/// Runs a blocking image-store operation on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, hatch_image::Error> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::from(EngineError::Internal(format!("image task: {e}"))))?
        .map_err(|e| ApiError::from(EngineError::from(e)))
}

/// The request body as a blocking `Read`, for use inside `spawn_blocking`.
fn body_reader(body: Incoming) -> SyncIoBridge<impl tokio::io::AsyncRead + Unpin> {
    let stream = BodyStream::new(body)
        .try_filter_map(|frame| std::future::ready(Ok(frame.into_data().ok())))
        .map_err(std::io::Error::other);
    SyncIoBridge::new(StreamReader::new(stream))
}

/// Docker's progress stream: one JSON object per line.
fn json_lines(lines: &[Value]) -> super::common::ApiResponse {
    let mut body = Vec::new();
    for line in lines {
        let _ = serde_json::to_writer(&mut body, line);
        body.push(b'\n');
    }
    let mut resp = Response::new(super::common::full(body));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn summary(image: &Image) -> Value {
    json!({
        "Id": image.id,
        "ParentId": "",
        "RepoTags": image.repo_tags,
        "RepoDigests": [],
        "Created": image.created,
        "Size": image.size,
        "VirtualSize": image.size,
        "SharedSize": -1,
        "Labels": image.run_config().labels,
        "Containers": -1,
    })
}

pub async fn list(api: &Api) -> ApiResult {
    let images = api.engine.images.clone();
    let list = blocking(move || Ok(images.list())).await?;
    Ok(json(StatusCode::OK, &Value::Array(list.iter().map(summary).collect())))
}

/// `docker import`: `POST /images/create?fromSrc=-&repo=bb&tag=latest` with a rootfs tarball.
/// Pulls (`fromImage`) are refused: hatch has no registry.
pub async fn create(api: &Api, req: Request<Incoming>) -> ApiResult {
    let query = Query::parse(req.uri().query());
    if let Some(image) = query.get("fromImage") {
        let tag = query.get("tag").filter(|t| !t.is_empty()).unwrap_or("latest");
        return Err(ApiError::not_found(format!(
            "No such image: {image}:{tag} (hatch has no registry to pull from: bring images with `docker import`, `docker load` or `hatch image import`)"
        )));
    }
    match query.get("fromSrc") {
        Some("-") => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "importing from {other:?} is not supported; send the tarball in the request body (fromSrc=-)"
            )));
        }
        None => return Err(ApiError::bad_request("missing fromSrc or fromImage")),
    }
    let reference = match (query.get("repo").filter(|r| !r.is_empty()), query.get("tag").filter(|t| !t.is_empty())) {
        (Some(repo), Some(tag)) => Some(format!("{repo}:{tag}")),
        (Some(repo), None) => Some(repo.to_string()),
        (None, _) => None,
    };
    let changes: Vec<String> = form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .filter(|(k, _)| k == "changes")
        .map(|(_, v)| v.into_owned())
        .collect();
    let message = query.get("message").map(String::from);
    let store = api.engine.images.clone();
    let reader = body_reader(req.into_body());
    let image = blocking(move || {
        let options = ImportOptions { reference: reference.as_deref(), changes: &changes, message: message.as_deref() };
        store.import_tar_with(reader, &options)
    })
    .await?;
    Ok(json_lines(&[json!({ "status": image.id })]))
}

/// `docker load`.
pub async fn load(api: &Api, req: Request<Incoming>) -> ApiResult {
    let store = api.engine.images.clone();
    let reader = body_reader(req.into_body());
    let loaded = blocking(move || store.load(reader)).await?;
    let lines: Vec<Value> =
        loaded.iter().flat_map(|l| l.messages()).map(|m| json!({ "stream": format!("{m}\n") })).collect();
    Ok(json_lines(&lines))
}

/// A `Write` that hands chunks to the response body.
struct ChannelWriter(tokio::sync::mpsc::Sender<Bytes>);

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Bytes::copy_from_slice(buf))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn save_response(store: Arc<ImageStore>, references: Vec<String>) -> super::common::ApiResponse {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = references.iter().map(String::as_str).collect();
        let writer = std::io::BufWriter::with_capacity(256 * 1024, ChannelWriter(tx));
        if let Err(e) = store
            .save(&refs, writer)
            .and_then(|mut w| w.flush().map_err(|e| hatch_image::Error::Io { context: "save".into(), source: e }))
        {
            tracing::warn!(error = %e, "docker save");
        }
    });
    let body = StreamBody::new(
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) })
            .map(|b| Ok::<_, std::io::Error>(Frame::data(b))),
    );
    let mut resp = Response::new(BodyExt::boxed_unsync(body));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-tar"));
    resp
}

/// `docker save a b`: `GET /images/get?names=a&names=b`.
pub async fn save(api: &Api, req: &Request<Incoming>) -> ApiResult {
    let names: Vec<String> = form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .filter(|(k, _)| k == "names")
        .map(|(_, v)| v.into_owned())
        .collect();
    if names.is_empty() {
        return Err(ApiError::bad_request("no images named"));
    }
    // Resolve first so a bad name is a clean 404 rather than a truncated archive.
    for name in &names {
        let store = api.engine.images.clone();
        let name = name.clone();
        blocking(move || store.resolve(&name)).await?;
    }
    Ok(save_response(api.engine.images.clone(), names))
}

pub async fn save_one(api: &Api, name: &str) -> ApiResult {
    let store = api.engine.images.clone();
    let owned = name.to_string();
    blocking(move || store.resolve(&owned)).await?;
    Ok(save_response(api.engine.images.clone(), vec![name.to_string()]))
}

pub async fn inspect(api: &Api, name: &str) -> ApiResult {
    let store = api.engine.images.clone();
    let owned = name.to_string();
    let image = blocking(move || store.resolve(&owned)).await?;
    Ok(json(
        StatusCode::OK,
        &json!({
            "Id": image.id,
            "RepoTags": image.repo_tags,
            "RepoDigests": [],
            "Parent": "",
            "Comment": image.config.comment.clone().unwrap_or_default(),
            "Created": image.created_rfc3339(),
            "Container": "",
            "ContainerConfig": {},
            "DockerVersion": "",
            "Author": image.config.author.clone().unwrap_or_default(),
            "Config": image.run_config(),
            "Architecture": image.config.architecture,
            "Os": image.config.os,
            "Size": image.size,
            "VirtualSize": image.size,
            "GraphDriver": { "Name": "overlay", "Data": { "LowerDir": image.rootfs } },
            "RootFS": { "Type": "layers", "Layers": image.diff_ids() },
            "Metadata": { "LastTagTime": "0001-01-01T00:00:00Z" },
        }),
    ))
}

pub async fn tag(api: &Api, name: &str, req: &Request<Incoming>) -> ApiResult {
    let query = Query::parse(req.uri().query());
    let repo = query.get("repo").filter(|r| !r.is_empty()).ok_or_else(|| ApiError::bad_request("repo is required"))?;
    let target = match query.get("tag").filter(|t| !t.is_empty()) {
        Some(tag) => format!("{repo}:{tag}"),
        None => repo.to_string(),
    };
    let store = api.engine.images.clone();
    let source = name.to_string();
    blocking(move || store.tag(&source, &target)).await?;
    Ok(super::common::status(StatusCode::CREATED))
}

pub async fn remove(api: &Api, name: &str, req: &Request<Incoming>) -> ApiResult {
    let force = Query::parse(req.uri().query()).flag("force");
    let store = api.engine.images.clone();
    let engine = api.engine.clone();
    let reference = name.to_string();
    let actions = blocking(move || {
        store.remove_guarded(&reference, force, |image| {
            engine.image_in_use(&image.id).map(|c| format!("image is being used by container {}", &c[..12]))
        })
    })
    .await?;
    let out: Vec<Value> = actions
        .into_iter()
        .map(|a| match a {
            RemoveAction::Untagged(t) => json!({ "Untagged": t }),
            RemoveAction::Deleted(id) => json!({ "Deleted": id }),
        })
        .collect();
    Ok(json(StatusCode::OK, &Value::Array(out)))
}
