//! `hatch image import NAME TARBALL|DIR` and `hatch image ls`.

use std::io::Write;
use std::path::Path;

use bytes::Bytes;
use futures_util::StreamExt;
use http::Method;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde::Deserialize;

use crate::docker_socket::{DockerSocket, DockerSocketError, RequestBody};
use crate::table;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Source { path: String, source: std::io::Error },
    #[error("{path} is neither a tarball nor a directory")]
    NotAnImage { path: String },
    #[error(transparent)]
    Node(#[from] DockerSocketError),
    #[error("unexpected answer from the node: {0}")]
    Answer(String),
}

/// A `Write` that hands what it gets to the request body, so a directory is tarred while it is
/// sent, never held in memory.
struct ChunkWriter(tokio::sync::mpsc::Sender<std::io::Result<Bytes>>);

impl Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "upload ended"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn channel_body(rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>) -> RequestBody {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
        .map(|item| item.map(Frame::data));
    StreamBody::new(stream).boxed_unsync()
}

/// Streams `source` (a rootfs tarball, possibly gzipped, or a directory) as a tarball.
fn source_body(source: &Path) -> Result<RequestBody, ImageError> {
    let path = source.display().to_string();
    let meta = std::fs::metadata(source).map_err(|e| ImageError::Source { path: path.clone(), source: e })?;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    if meta.is_dir() {
        let dir = source.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let mut builder = tar::Builder::new(std::io::BufWriter::with_capacity(256 * 1024, ChunkWriter(tx.clone())));
            // Keep symlinks as links: the rootfs's absolute links point inside the image.
            builder.follow_symlinks(false);
            let result =
                builder.append_dir_all(".", &dir).and_then(|_| builder.into_inner()).and_then(|mut w| w.flush());
            if let Err(e) = result {
                let _ = tx.blocking_send(Err(std::io::Error::new(e.kind(), format!("{}: {e}", dir.display()))));
            }
        });
    } else if meta.is_file() {
        let file = source.to_path_buf();
        tokio::spawn(async move {
            let file = match tokio::fs::File::open(&file).await {
                Ok(f) => f,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let mut stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
            while let Some(chunk) = stream.next().await {
                if tx.send(chunk).await.is_err() {
                    return;
                }
            }
        });
    } else {
        return Err(ImageError::NotAnImage { path });
    }
    Ok(channel_body(rx))
}

/// Imports `source` as image `name[:tag]`; returns the image id.
pub async fn import(node: &DockerSocket, name: &str, source: &Path) -> Result<String, ImageError> {
    let (repo, tag) = match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (name, "latest"),
    };
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("fromSrc", "-")
        .append_pair("repo", repo)
        .append_pair("tag", tag)
        .finish();
    let body = source_body(source)?;
    let answer = node.request(Method::POST, &format!("/images/create?{query}"), body).await?;
    // Docker's progress stream: the last `status` is the image id.
    let text = String::from_utf8_lossy(&answer);
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("status").and_then(|s| s.as_str()).map(String::from))
        .next_back()
        .ok_or_else(|| ImageError::Answer(text.trim().to_string()))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ImageSummary {
    id: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    created: i64,
    size: u64,
}

/// `hatch image ls`: a table like `docker images`, or the node's JSON with `json`.
pub async fn list(node: &DockerSocket, json: bool) -> Result<String, ImageError> {
    let answer = node.get("/images/json").await?;
    if json {
        return Ok(String::from_utf8_lossy(&answer).into_owned());
    }
    let images: Vec<ImageSummary> =
        serde_json::from_slice(&answer).map_err(|e| ImageError::Answer(format!("image list: {e}")))?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut rows = Vec::new();
    for image in &images {
        let id: String = image.id.trim_start_matches("sha256:").chars().take(12).collect();
        let created = format!("{} ago", hatch_wire::units::human_duration(now - image.created));
        let size = hatch_wire::units::human_size(image.size);
        let tags = image.repo_tags.clone().filter(|t| !t.is_empty()).unwrap_or_else(|| vec!["<none>:<none>".into()]);
        for tag in tags {
            let (repo, tag) = tag.rsplit_once(':').unwrap_or((&tag, "<none>"));
            rows.push(vec![repo.to_string(), tag.to_string(), id.clone(), created.clone(), size.clone()]);
        }
    }
    Ok(table::render(&["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], &rows))
}
