//! Response building, request parsing and error mapping shared by the Docker API handlers.

use std::collections::HashMap;
use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;

use crate::engine::EngineError;

pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;
pub type ApiResponse = Response<Body>;

/// Largest JSON request body accepted (container and exec configs are a few KiB).
pub const MAX_JSON_BODY: usize = 4 << 20;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never: Infallible| match never {}).boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never: Infallible| match never {}).boxed_unsync()
}

pub fn status(code: StatusCode) -> ApiResponse {
    let mut resp = Response::new(empty());
    *resp.status_mut() = code;
    resp
}

pub fn json(code: StatusCode, value: &serde_json::Value) -> ApiResponse {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    let mut resp = Response::new(full(body));
    *resp.status_mut() = code;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Docker's error shape: `{"message": "..."}`.
pub fn error(code: StatusCode, message: impl std::fmt::Display) -> ApiResponse {
    json(code, &serde_json::json!({ "message": message.to_string() }))
}

/// An error a handler returns; becomes a Docker-shaped JSON response.
#[derive(Debug)]
pub struct ApiError {
    pub code: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError { code: StatusCode::BAD_REQUEST, message: message.into() }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError { code: StatusCode::NOT_FOUND, message: message.into() }
    }

    pub fn into_response(self) -> ApiResponse {
        if self.code == StatusCode::NOT_MODIFIED {
            return status(self.code);
        }
        error(self.code, self.message)
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        let code = match &e {
            EngineError::NoSuchContainer(_)
            | EngineError::NoSuchExec(_)
            | EngineError::NoSuchImage(_)
            | EngineError::NoSuchPod(_) => StatusCode::NOT_FOUND,
            EngineError::NotRunning(_) | EngineError::Conflict(_) => StatusCode::CONFLICT,
            EngineError::BadRequest(_) | EngineError::StartFailed(_) => StatusCode::BAD_REQUEST,
            EngineError::NotModified => StatusCode::NOT_MODIFIED,
            EngineError::Image(hatch_image::Error::NotFound(_)) => StatusCode::NOT_FOUND,
            EngineError::Image(hatch_image::Error::Conflict(_)) => StatusCode::CONFLICT,
            EngineError::Image(i) if i.is_bad_input() => StatusCode::BAD_REQUEST,
            EngineError::Image(_) | EngineError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError { code, message: e.to_string() }
    }
}

pub type ApiResult = Result<ApiResponse, ApiError>;

/// Query parameters (the last value of a repeated key wins, as Go's `Get`).
pub struct Query(HashMap<String, String>);

impl Query {
    pub fn parse(query: Option<&str>) -> Query {
        Query(form_urlencoded::parse(query.unwrap_or("").as_bytes()).into_owned().collect())
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Docker's boolean form values: `1`/`true` (any case) are true; absent or `0`/`false` false.
    pub fn flag(&self, key: &str) -> bool {
        self.get(key).is_some_and(|v| {
            let v = v.to_ascii_lowercase();
            !(v.is_empty() || v == "0" || v == "false" || v == "no")
        })
    }

    pub fn int(&self, key: &str) -> Result<Option<i64>, ApiError> {
        match self.get(key).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) => {
                v.parse().map(Some).map_err(|_| ApiError::bad_request(format!("invalid value for {key}: {v:?}")))
            }
        }
    }
}

/// Reads a JSON body of bounded size; an empty body gives `T::default()`.
pub async fn read_json<T: DeserializeOwned + Default>(body: Incoming) -> Result<T, ApiError> {
    let bytes = Limited::new(body, MAX_JSON_BODY)
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("read request body: {e}")))?
        .to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
}

/// Go's `time.RFC3339Nano`; the zero time for 0.
pub fn rfc3339(nanos: i64) -> String {
    if nanos == 0 {
        return "0001-01-01T00:00:00Z".into();
    }
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos))
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| "0001-01-01T00:00:00Z".into())
}

pub use hatch_wire::units::human_duration;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_flags() {
        let q = Query::parse(Some("a=1&b=false&c=True&d=&e=0"));
        assert!(q.flag("a") && q.flag("c"));
        assert!(!q.flag("b") && !q.flag("d") && !q.flag("e") && !q.flag("zz"));
    }

    #[test]
    fn time_format() {
        assert_eq!(rfc3339(0), "0001-01-01T00:00:00Z");
        assert!(rfc3339(1_700_000_000_000_000_000).starts_with("2023-11-14T22:13:20"));
    }
}
