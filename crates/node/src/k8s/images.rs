//! The node's image endpoints, reached through the API server's node proxy
//! (`/api/v1/nodes/{node}/proxy/images`), so images can be managed from any machine with a
//! kubeconfig:
//!
//! * `GET /images` → a JSON array of `{"id", "repoTags", "size", "created"}` (created in Unix
//!   seconds);
//! * `POST /images?name=NAME[:TAG]` with a root-filesystem tarball (gzipped or not) as the body,
//!   what `docker import` takes → a JSON array holding the image added.
//!
//! The body streams into the image store (never held in memory; the store caps what one import
//! may unpack). The rest of a refused upload is read and dropped (bounded) before the answer.
//! Errors are `metav1.Status`: 400 for a tarball the store refuses (`../`, absolute paths, links
//! out, device nodes, garbage), 500 for the store's own failures.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use http::{Method, Request, Response, header};
use http_body_util::BodyStream;
use hyper::body::Incoming;
use serde::Serialize;
use tokio_util::io::{StreamReader, SyncIoBridge};

use hatch_image::{Image, ImageStore, ImportOptions};
use hatch_wire::status::{Reason, Status};

use super::{Body, Refusal, status_response};

/// The path these endpoints are served on.
pub const IMAGES_PATH: &str = "/images";

/// One image, as `GET /images` lists it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ImageSummary<'a> {
    id: &'a str,
    repo_tags: &'a [String],
    size: u64,
    created: i64,
}

fn summaries(images: &[Image]) -> Vec<ImageSummary<'_>> {
    images
        .iter()
        .map(|i| ImageSummary { id: &i.id, repo_tags: &i.repo_tags, size: i.size, created: i.created })
        .collect()
}

fn json_response(images: &[Image]) -> Response<Body> {
    let bytes = serde_json::to_vec(&summaries(images)).unwrap_or_default();
    let mut resp = Response::new(super::full(bytes));
    resp.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    resp
}

/// Longest error message sent back: a garbage tarball's message quotes its bytes.
const MAX_MESSAGE_CHARS: usize = 300;

/// One printable ASCII line: anything else escaped (a garbage tarball's bytes end up in the
/// message), cut at [`MAX_MESSAGE_CHARS`].
fn printable(message: &str) -> String {
    // Lossily decoded bytes: the rest is the archive's garbage, not words.
    let (message, binary) = match message.find(char::REPLACEMENT_CHARACTER) {
        Some(at) => (&message[..at], true),
        None => (message, false),
    };
    let mut out = String::new();
    for c in message.chars() {
        if out.len() >= MAX_MESSAGE_CHARS {
            out.push_str("...");
            break;
        }
        if c.is_ascii() && !c.is_ascii_control() {
            out.push(c);
        } else {
            out.extend(c.escape_unicode());
        }
    }
    if binary {
        out.push_str("<binary data>");
    }
    out
}

/// The store's error as a Status: the input's fault is a 400 with the store's own message.
fn image_error(e: hatch_image::Error) -> Status {
    if e.is_bad_input() {
        Status::bad_request(format!("not an importable root-filesystem tarball: {}", printable(&e.to_string())))
    } else if let hatch_image::Error::NotFound(_) = e {
        Status::failure(Reason::NotFound, e.to_string())
    } else {
        Status::internal_error(&printable(&e.to_string()))
    }
}

/// The name to import as, from `?name=`: required, like `docker import`'s repository.
fn import_name(query: Option<&str>) -> Result<String, Refusal> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == "name")
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Status::bad_request("the image name is required: POST /images?name=NAME[:TAG]").into())
}

/// At most this much of a refused upload is read and dropped, and for at most this long.
const DRAIN_BYTES: u64 = 1 << 30;
const DRAIN_TIME: Duration = Duration::from_secs(30);

/// Reads what is left of a refused upload (bounded), so the client, still sending, gets the
/// refusal: a connection closed with unread data is reset, and the reset loses the answer.
fn drain(reader: &mut impl Read) {
    let started = Instant::now();
    let mut buf = vec![0u8; 256 * 1024];
    let mut drained = 0u64;
    while drained < DRAIN_BYTES && started.elapsed() < DRAIN_TIME {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => drained += n as u64,
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, hatch_image::Error> + Send + 'static,
) -> Result<T, Refusal> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal_error(&format!("image task: {e}")))?
        .map_err(|e| image_error(e).into())
}

/// Serves `GET|POST /images` (the caller checked the path).
pub async fn handle(store: &Arc<ImageStore>, req: Request<Incoming>) -> Response<Body> {
    let result = match *req.method() {
        Method::GET => {
            let store = store.clone();
            blocking(move || Ok(store.list())).await
        }
        Method::POST => import(store, req).await,
        ref other => Err(Status::failure(Reason::MethodNotAllowed, format!("method {other} is not allowed")).into()),
    };
    match result {
        Ok(images) => json_response(&images),
        Err(refusal) => {
            tracing::info!(code = refusal.status.http_code(), message = %refusal.status.message, "image request refused");
            status_response(&refusal)
        }
    }
}

async fn import(store: &Arc<ImageStore>, req: Request<Incoming>) -> Result<Vec<Image>, Refusal> {
    let name = import_name(req.uri().query())?;
    let stream = BodyStream::new(req.into_body())
        .try_filter_map(|frame| std::future::ready(Ok(frame.into_data().ok())))
        .map_err(std::io::Error::other)
        .boxed();
    let mut reader = SyncIoBridge::new(StreamReader::new(stream));
    let store = store.clone();
    let reference = name.clone();
    let image = blocking(move || {
        let options = ImportOptions { reference: Some(&reference), changes: &[], message: None };
        let imported = store.import_tar_with(&mut reader, &options);
        if imported.is_err() {
            drain(&mut reader);
        }
        imported
    })
    .await?;
    tracing::info!(name = %name, id = %image.id, size = image.size, "image imported");
    Ok(vec![image])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_names() {
        assert_eq!(import_name(Some("name=bb%3Av2")).ok(), Some("bb:v2".to_string()));
        assert_eq!(import_name(Some("other=1&name=bb")).ok(), Some("bb".to_string()));
        assert!(import_name(Some("name=")).is_err());
        assert!(import_name(None).is_err());
    }

    #[test]
    fn messages_stay_on_one_printable_line() {
        assert_eq!(printable("bad\nentry \u{7}é"), "bad\\u{a}entry \\u{7}\\u{e9}");
        assert_eq!(printable(&"a".repeat(1000)).len(), MAX_MESSAGE_CHARS + 3);
        assert_eq!(printable("not utf-8 text: \u{fffd}x\u{fffd} when"), "not utf-8 text: <binary data>");
    }
}
