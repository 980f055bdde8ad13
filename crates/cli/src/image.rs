//! `hatch image import NAME TARBALL|DIR [--node N]` and `hatch image ls [--node N] [-o json]`,
//! through the API server's node proxy (`/api/v1/nodes/{node}/proxy/images`): without `--node`,
//! every Ready node in turn.

use std::io::Write;
use std::path::Path;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde::{Deserialize, Serialize};

use crate::cluster::{ApiFailure, Cluster, ClusterError, RequestBody};
use crate::table;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Source { path: String, source: std::io::Error },
    #[error("{path} is neither a tarball nor a directory")]
    NotAnImage { path: String },
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    // Not `source`: the node's message is already in this line; anyhow must not repeat it.
    #[error("node {node:?}: {error}")]
    OnNode { node: String, error: ClusterError },
    #[error("node {0:?} not found (see `hatch get nodes`)")]
    NoSuchNode(String),
    #[error("no node is Ready (see `hatch get nodes`)")]
    NoReadyNode,
    #[error("unexpected answer from {0}")]
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

/// An image on a node, as the node's `GET /images` lists it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeImage {
    pub id: String,
    #[serde(default)]
    pub repo_tags: Vec<String>,
    pub size: u64,
    /// Unix seconds.
    pub created: i64,
}

fn images_path(node: &str, name: Option<&str>) -> String {
    let node: String = form_urlencoded::byte_serialize(node.as_bytes()).collect();
    match name {
        Some(name) => {
            let query: String = form_urlencoded::Serializer::new(String::new()).append_pair("name", name).finish();
            format!("/api/v1/nodes/{node}/proxy/images?{query}")
        }
        None => format!("/api/v1/nodes/{node}/proxy/images"),
    }
}

/// Whether a `v1.Node` has condition Ready=True.
fn is_ready(node: &serde_json::Value) -> bool {
    node["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// The nodes a verb works on: the one named (which must exist), else every Ready node.
pub async fn target_nodes(cluster: &Cluster, node: Option<&str>) -> Result<Vec<String>, ImageError> {
    if let Some(node) = node {
        let path = format!("/api/v1/nodes/{}", form_urlencoded::byte_serialize(node.as_bytes()).collect::<String>());
        return match cluster.get_json(&path).await {
            Ok(_) => Ok(vec![node.to_string()]),
            Err(ClusterError::Api(ApiFailure { status: StatusCode::NOT_FOUND, .. })) => {
                Err(ImageError::NoSuchNode(node.to_string()))
            }
            Err(e) => Err(e.into()),
        };
    }
    let list = cluster.get_json("/api/v1/nodes").await?;
    let names: Vec<String> = list["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|n| is_ready(n))
        .filter_map(|n| n["metadata"]["name"].as_str().map(String::from))
        .collect();
    if names.is_empty() {
        return Err(ImageError::NoReadyNode);
    }
    Ok(names)
}

fn on_node(node: &str) -> impl Fn(ClusterError) -> ImageError + '_ {
    move |e| match e {
        ClusterError::Api(ApiFailure { status: StatusCode::NOT_FOUND, ref message })
            if message.starts_with("nodes ") =>
        {
            ImageError::NoSuchNode(node.to_string())
        }
        other => ImageError::OnNode { node: node.to_string(), error: other },
    }
}

/// Imports `source` as image `name[:tag]` on each of `nodes`, in turn (the file is re-read and a
/// directory re-tarred for each); returns (node, image id) pairs.
pub async fn import(
    cluster: &Cluster,
    nodes: &[String],
    name: &str,
    source: &Path,
) -> Result<Vec<(String, String)>, ImageError> {
    // Ask every node first (authorization, existence, readiness): a server that refuses an
    // upload closes the connection under it, and the client would see a broken pipe instead of
    // the refusal.
    for node in nodes {
        cluster
            .request(Method::GET, &images_path(node, None), None, "application/json")
            .await
            .map_err(on_node(node))?;
    }
    let mut imported = Vec::new();
    for node in nodes {
        let body = source_body(source)?;
        let answer = cluster
            .send(Method::POST, &images_path(node, Some(name)), body, Some("application/x-tar"), "application/json")
            .await
            .map_err(on_node(node))?;
        let id = node_images(node, &answer)?
            .first()
            .map(|i| i.id.clone())
            .ok_or_else(|| ImageError::Answer(format!("node {node:?}: no image")))?;
        imported.push((node.clone(), id));
    }
    Ok(imported)
}

/// A node's `/images` answer (the list, or the image an import added).
fn node_images(node: &str, answer: &[u8]) -> Result<Vec<NodeImage>, ImageError> {
    serde_json::from_slice(answer).map_err(|e| ImageError::Answer(format!("node {node:?}: {e}")))
}

/// Renders `import`'s result: one line per node.
pub fn render_imported(imported: &[(String, String)]) -> String {
    let rows: Vec<Vec<String>> = imported.iter().map(|(node, id)| vec![node.clone(), id.clone()]).collect();
    table::render(&["NODE", "IMAGE ID"], &rows)
}

/// Every image of each of `nodes`.
pub async fn list(cluster: &Cluster, nodes: &[String]) -> Result<Vec<(String, NodeImage)>, ImageError> {
    let mut all = Vec::new();
    for node in nodes {
        let answer = cluster
            .request(Method::GET, &images_path(node, None), None, "application/json")
            .await
            .map_err(on_node(node))?;
        all.extend(node_images(node, &answer)?.into_iter().map(|i| (node.clone(), i)));
    }
    Ok(all)
}

/// `hatch image ls -o json`: an array of the node's image objects with a `node` field.
pub fn render_json(images: &[(String, NodeImage)]) -> String {
    let items: Vec<serde_json::Value> = images
        .iter()
        .map(|(node, image)| {
            let mut v = serde_json::to_value(image).unwrap_or_default();
            v["node"] = serde_json::Value::String(node.clone());
            v
        })
        .collect();
    serde_json::to_string_pretty(&items).unwrap_or_default() + "\n"
}

/// `hatch image ls`: a table like `docker images`, with the node each image is on.
pub fn render_table(images: &[(String, NodeImage)], now: i64) -> String {
    let mut rows = Vec::new();
    for (node, image) in images {
        let id: String = image.id.trim_start_matches("sha256:").chars().take(12).collect();
        let created = format!("{} ago", hatch_wire::units::human_duration(now - image.created));
        let size = hatch_wire::units::human_size(image.size);
        let tags = if image.repo_tags.is_empty() { vec!["<none>:<none>".to_string()] } else { image.repo_tags.clone() };
        for tag in tags {
            let (repo, tag) = tag.rsplit_once(':').filter(|(_, t)| !t.contains('/')).unwrap_or((&tag, "<none>"));
            rows.push(vec![repo.to_string(), tag.to_string(), id.clone(), created.clone(), size.clone(), node.clone()]);
        }
    }
    table::render(&["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE", "NODE"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_paths() {
        assert_eq!(images_path("worker", None), "/api/v1/nodes/worker/proxy/images");
        assert_eq!(images_path("worker", Some("bb:v2")), "/api/v1/nodes/worker/proxy/images?name=bb%3Av2");
    }

    #[test]
    fn tables_have_a_node_column() {
        let image = NodeImage {
            id: format!("sha256:{}", "ab".repeat(32)),
            repo_tags: vec!["bb:latest".into(), "bb:v2".into()],
            size: 2_100_000,
            created: 100,
        };
        let untagged = NodeImage { repo_tags: vec![], ..image.clone() };
        let out = render_table(&[("n1".into(), image), ("n2".into(), untagged)], 160);
        let lines: Vec<Vec<&str>> = out.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(lines[0], ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE", "NODE"]);
        assert_eq!(lines[1][..3], ["bb", "latest", "abababababab"]);
        assert_eq!(lines[1].last(), Some(&"n1"));
        assert_eq!(lines[2][1], "v2");
        assert_eq!(lines[3][..2], ["<none>", "<none>"]);
        assert_eq!(lines[3].last(), Some(&"n2"));
    }

    #[test]
    fn ready_nodes() {
        let ready = serde_json::json!({ "status": { "conditions": [{ "type": "Ready", "status": "True" }] } });
        let not_ready = serde_json::json!({ "status": { "conditions": [{ "type": "Ready", "status": "Unknown" }] } });
        assert!(is_ready(&ready) && !is_ready(&not_ready) && !is_ready(&serde_json::json!({})));
    }
}
