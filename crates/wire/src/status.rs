//! Kubernetes `metav1.Status`: the exit status on the exec error channel, and
//! the body of every API error response.
//!
//! The serialized shape matches Go's `encoding/json` output of
//! `metav1.Status` byte for byte (field order, `omitempty`, `"metadata":{}`):
//!
//! ```
//! use hatch_wire::status::Status;
//! use std::num::NonZeroU8;
//!
//! assert_eq!(Status::success().to_json(), br#"{"metadata":{},"status":"Success"}"#);
//! let exit3 = Status::non_zero_exit(NonZeroU8::new(3).unwrap(), "exit status 3");
//! assert_eq!(
//!     String::from_utf8(exit3.to_json()).unwrap(),
//!     r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: exit status 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#
//! );
//! ```
//!
//! On the exec error channel (WebSocket channel 3, SPDY `error` stream) write
//! [`Status::error_channel_payload`]; API servers answer errors with
//! [`Status::with_type_meta`] bodies. Clients turn what they received into an
//! [`ExecOutcome`] with [`ExecOutcome::from_error_stream`], which mirrors
//! kubectl.

use std::num::NonZeroU8;

use serde::{Deserialize, Deserializer, Serialize};

/// `status` value of a successful operation.
pub const STATUS_SUCCESS: &str = "Success";
/// `status` value of a failed operation.
pub const STATUS_FAILURE: &str = "Failure";
/// `reason` of a Status reporting a non-zero exit code.
pub const REASON_NON_ZERO_EXIT_CODE: &str = "NonZeroExitCode";
/// Cause type (serialized under the JSON key `reason`) carrying the exit code.
pub const CAUSE_EXIT_CODE: &str = "ExitCode";

/// A `metav1.Status`. Fields mirror the Go struct; empty strings, `None` and
/// a zero `code` are omitted when serializing, like Go's `omitempty`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// `"Status"` in API response bodies; absent on the exec error channel.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "null_default")]
    pub kind: Option<String>,
    /// `"v1"` in API response bodies; absent on the exec error channel.
    #[serde(
        rename = "apiVersion",
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "null_default"
    )]
    pub api_version: Option<String>,
    /// `ListMeta`; always serialized (as `{}` when empty), like Go.
    #[serde(default, deserialize_with = "null_default")]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// [`STATUS_SUCCESS`] or [`STATUS_FAILURE`].
    #[serde(default, skip_serializing_if = "String::is_empty", deserialize_with = "null_default")]
    pub status: String,
    /// Human-readable description.
    #[serde(default, skip_serializing_if = "String::is_empty", deserialize_with = "null_default")]
    pub message: String,
    /// Machine-readable reason (`NonZeroExitCode`, `NotFound`, …).
    #[serde(default, skip_serializing_if = "String::is_empty", deserialize_with = "null_default")]
    pub reason: String,
    /// Extra data (the exit code cause, the resource name and kind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<StatusDetails>,
    /// HTTP status code; 0 (omitted) on the exec error channel.
    #[serde(default, skip_serializing_if = "is_zero", deserialize_with = "null_default")]
    pub code: i32,
}

/// `metav1.StatusDetails`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusDetails {
    /// Name of the resource concerned.
    #[serde(default, skip_serializing_if = "String::is_empty", deserialize_with = "null_default")]
    pub name: String,
    /// API group of the resource.
    #[serde(default, skip_serializing_if = "String::is_empty", deserialize_with = "null_default")]
    pub group: String,
    /// Kind (or resource) concerned, e.g. `pods`.
    #[serde(default, skip_serializing_if = "String::is_empty", deserialize_with = "null_default")]
    pub kind: String,
    /// UID of the resource.
    #[serde(default, skip_serializing_if = "String::is_empty", deserialize_with = "null_default")]
    pub uid: String,
    /// Individual causes.
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "null_default")]
    pub causes: Vec<StatusCause>,
    /// Suggested retry delay.
    #[serde(rename = "retryAfterSeconds", default, skip_serializing_if = "is_zero", deserialize_with = "null_default")]
    pub retry_after_seconds: i32,
}

/// `metav1.StatusCause`. Note that Go's `Type` field is serialized under the
/// JSON key **`reason`**.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCause {
    /// The cause type, e.g. [`CAUSE_EXIT_CODE`]. JSON key `reason`.
    #[serde(rename = "reason", default, skip_serializing_if = "String::is_empty", deserialize_with = "null_default")]
    pub cause_type: String,
    /// The cause's message; the decimal exit code for [`CAUSE_EXIT_CODE`].
    #[serde(default, skip_serializing_if = "String::is_empty", deserialize_with = "null_default")]
    pub message: String,
    /// The field concerned, if any.
    #[serde(default, skip_serializing_if = "String::is_empty", deserialize_with = "null_default")]
    pub field: String,
}

fn is_zero(v: &i32) -> bool {
    *v == 0
}

// Go decodes `null` into the zero value; serde's `default` only covers a
// missing key.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Common failure reasons with their HTTP codes (Go `metav1.StatusReason*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// 400.
    BadRequest,
    /// 401.
    Unauthorized,
    /// 403.
    Forbidden,
    /// 404.
    NotFound,
    /// 405.
    MethodNotAllowed,
    /// 409.
    Conflict,
    /// 409 (Go uses 409 for AlreadyExists).
    AlreadyExists,
    /// 422.
    Invalid,
    /// 429.
    TooManyRequests,
    /// 500.
    InternalError,
    /// 503.
    ServiceUnavailable,
    /// 504.
    Timeout,
}

impl Reason {
    /// The `reason` string.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::BadRequest => "BadRequest",
            Reason::Unauthorized => "Unauthorized",
            Reason::Forbidden => "Forbidden",
            Reason::NotFound => "NotFound",
            Reason::MethodNotAllowed => "MethodNotAllowed",
            Reason::Conflict => "Conflict",
            Reason::AlreadyExists => "AlreadyExists",
            Reason::Invalid => "Invalid",
            Reason::TooManyRequests => "TooManyRequests",
            Reason::InternalError => "InternalError",
            Reason::ServiceUnavailable => "ServiceUnavailable",
            Reason::Timeout => "Timeout",
        }
    }

    /// The HTTP status code the API server uses with this reason.
    pub const fn http_code(self) -> u16 {
        match self {
            Reason::BadRequest => 400,
            Reason::Unauthorized => 401,
            Reason::Forbidden => 403,
            Reason::NotFound => 404,
            Reason::MethodNotAllowed => 405,
            Reason::Conflict | Reason::AlreadyExists => 409,
            Reason::Invalid => 422,
            Reason::TooManyRequests => 429,
            Reason::InternalError => 500,
            Reason::ServiceUnavailable => 503,
            Reason::Timeout => 504,
        }
    }
}

/// Errors from [`Status::from_json`].
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The bytes are not a JSON `Status` object.
    #[error("invalid status json: {0}")]
    Json(#[from] serde_json::Error),
}

impl Status {
    /// `{"metadata":{},"status":"Success"}`: the process exited 0.
    pub fn success() -> Status {
        Status { status: STATUS_SUCCESS.to_owned(), ..Status::default() }
    }

    /// The kubelet's shape for a non-zero exit: reason `NonZeroExitCode`,
    /// message `command terminated with non-zero exit code: <detail>` and the
    /// code as a `{"reason":"ExitCode","message":"<n>"}` cause. kubectl exits
    /// with `code`. A signal death is reported as 128+N by convention.
    pub fn non_zero_exit(code: NonZeroU8, detail: &str) -> Status {
        Status {
            status: STATUS_FAILURE.to_owned(),
            message: format!("command terminated with non-zero exit code: {detail}"),
            reason: REASON_NON_ZERO_EXIT_CODE.to_owned(),
            details: Some(StatusDetails {
                causes: vec![StatusCause {
                    cause_type: CAUSE_EXIT_CODE.to_owned(),
                    message: code.to_string(),
                    ..StatusCause::default()
                }],
                ..StatusDetails::default()
            }),
            ..Status::default()
        }
    }

    /// [`success`](Status::success) for 0, otherwise
    /// [`non_zero_exit`](Status::non_zero_exit). kubectl only accepts exit
    /// codes 0–255, so values outside that range (a negative code from a
    /// runtime that lost the process, say) are clamped to 255 rather than
    /// wrapped, which could turn a failure into 0.
    pub fn from_exit_code(code: i32, detail: &str) -> Status {
        let clamped = u8::try_from(code).unwrap_or(u8::MAX);
        match NonZeroU8::new(clamped) {
            None => Status::success(),
            Some(nz) => Status::non_zero_exit(nz, detail),
        }
    }

    /// A generic failure: `status: Failure`, the reason, its HTTP code and
    /// `message` verbatim.
    pub fn failure(reason: Reason, message: impl Into<String>) -> Status {
        Status {
            status: STATUS_FAILURE.to_owned(),
            message: message.into(),
            reason: reason.as_str().to_owned(),
            code: i32::from(reason.http_code()),
            ..Status::default()
        }
    }

    /// Go `NewInternalError`: `Internal error occurred: <err>`, code 500, with
    /// the error as a cause.
    pub fn internal_error(err: &str) -> Status {
        let mut s = Status::failure(Reason::InternalError, format!("Internal error occurred: {err}"));
        s.details = Some(StatusDetails {
            causes: vec![StatusCause { message: err.to_owned(), ..StatusCause::default() }],
            ..StatusDetails::default()
        });
        s
    }

    /// Go `NewNotFound`: `pods "foo" not found`, code 404, details name/kind.
    /// `resource` is the plural resource name (`pods`, `nodes`).
    pub fn not_found(resource: &str, name: &str) -> Status {
        let mut s = Status::failure(Reason::NotFound, format!("{resource} {} not found", go_quote(name)));
        s.details =
            Some(StatusDetails { name: name.to_owned(), kind: resource.to_owned(), ..StatusDetails::default() });
        s
    }

    /// Go `NewForbidden`: `pods "foo" is forbidden: <why>` (or `pods is
    /// forbidden: <why>` without a name), code 403.
    pub fn forbidden(resource: &str, name: &str, why: &str) -> Status {
        let message = if name.is_empty() {
            format!("{resource} is forbidden: {why}")
        } else {
            format!("{resource} {} is forbidden: {why}", go_quote(name))
        };
        let mut s = Status::failure(Reason::Forbidden, message);
        s.details =
            Some(StatusDetails { name: name.to_owned(), kind: resource.to_owned(), ..StatusDetails::default() });
        s
    }

    /// Go `NewUnauthorized`: code 401; an empty message becomes `Unauthorized`.
    pub fn unauthorized(message: &str) -> Status {
        let message = if message.is_empty() { "Unauthorized" } else { message };
        Status::failure(Reason::Unauthorized, message)
    }

    /// Go `NewBadRequest`: code 400, message verbatim.
    pub fn bad_request(message: impl Into<String>) -> Status {
        Status::failure(Reason::BadRequest, message)
    }

    /// Adds `"kind":"Status","apiVersion":"v1"`, as the API server does for
    /// error response bodies (kubectl needs them to recognise the body).
    #[must_use]
    pub fn with_type_meta(mut self) -> Status {
        self.kind = Some("Status".to_owned());
        self.api_version = Some("v1".to_owned());
        self
    }

    /// True when `status` is `Success`.
    pub fn is_success(&self) -> bool {
        self.status == STATUS_SUCCESS
    }

    /// The HTTP status code to answer with: `code` when it is a valid HTTP
    /// code, else 500 for failures and 200 for success.
    pub fn http_code(&self) -> u16 {
        match u16::try_from(self.code) {
            Ok(c @ 100..=599) => c,
            _ if self.is_success() => 200,
            _ => 500,
        }
    }

    /// Serializes to compact JSON, in Go's field order.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialization cannot fail: every field is a string, number, vector
        // or string-keyed map. Fall back to a valid failure just in case.
        serde_json::to_vec(self).unwrap_or_else(|_| {
            br#"{"metadata":{},"status":"Failure","message":"status serialization failed"}"#.to_vec()
        })
    }

    /// Parses a Status (error channel content or an API error body).
    pub fn from_json(bytes: &[u8]) -> Result<Status, StatusError> {
        Ok(serde_json::from_slice(bytes)?)
    }

    /// What to write on the exec error channel at the end of a session.
    ///
    /// `json` comes from the negotiated protocol
    /// ([`crate::k8s_ws::Subprotocol::status_is_json`],
    /// [`crate::spdy::StreamProtocol::status_is_json`]). JSON protocols
    /// (v4, v5) always get the Status, success included; the older text
    /// protocols get the bare message, and nothing at all on success
    /// (`None`): write nothing, just close.
    pub fn error_channel_payload(&self, json: bool) -> Option<Vec<u8>> {
        if json {
            Some(self.to_json())
        } else if self.is_success() {
            None
        } else {
            Some(self.message.clone().into_bytes())
        }
    }
}

// Go's %q for the ASCII names Kubernetes allows; other characters are
// escaped the JSON way, which is close enough for a message.
fn go_quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

/// How an exec ended, as seen by a client reading the error channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecOutcome {
    /// The process exited with this code (0 = success). kubectl exits with it.
    Exit(u8),
    /// The exec failed for another reason; kubectl prints `error: <message>`
    /// and exits 1.
    Error(String),
}

impl ExecOutcome {
    /// Interprets everything read from the error channel until it closed,
    /// exactly as kubectl 1.27–1.33 (client-go) does:
    ///
    /// * nothing at all → `Exit(0)` (kubectl's behaviour, even though it
    ///   hides a lost connection: servers must always write a status);
    /// * `json` protocols: `Success` → `Exit(0)`; `Failure` with reason
    ///   `NonZeroExitCode` → `Exit(n)` from the `ExitCode` cause (must parse
    ///   as 0–255); any other `Failure` → `Error(message)`; anything
    ///   unparsable → `Error("error stream protocol error: …")`;
    /// * text protocols (v1–v3): any text → `Error("error executing remote
    ///   command: <text>")`.
    pub fn from_error_stream(data: &[u8], json: bool) -> ExecOutcome {
        if data.is_empty() {
            return ExecOutcome::Exit(0);
        }
        if !json {
            return ExecOutcome::Error(format!("error executing remote command: {}", String::from_utf8_lossy(data)));
        }
        let status = match Status::from_json(data) {
            Ok(s) => s,
            Err(StatusError::Json(e)) => {
                return ExecOutcome::Error(format!(
                    "error stream protocol error: {e} in {}",
                    go_quote(&String::from_utf8_lossy(data))
                ));
            }
        };
        match status.status.as_str() {
            STATUS_SUCCESS => ExecOutcome::Exit(0),
            STATUS_FAILURE if status.reason == REASON_NON_ZERO_EXIT_CODE => {
                let Some(details) = &status.details else {
                    return ExecOutcome::Error("error stream protocol error: details must be set".to_owned());
                };
                match details.causes.iter().find(|c| c.cause_type == CAUSE_EXIT_CODE) {
                    Some(cause) => match parse_go_uint8(&cause.message) {
                        Some(code) => ExecOutcome::Exit(code),
                        None => ExecOutcome::Error(format!(
                            "error stream protocol error: invalid exit code value {}",
                            go_quote(&cause.message)
                        )),
                    },
                    None => {
                        ExecOutcome::Error(format!("error stream protocol error: no {CAUSE_EXIT_CODE} cause given"))
                    }
                }
            }
            STATUS_FAILURE => ExecOutcome::Error(status.message),
            _ => ExecOutcome::Error("error stream protocol error: unknown error".to_owned()),
        }
    }

    /// The process exit code kubectl would return: the code, or 1 for errors.
    pub fn exit_code(&self) -> u8 {
        match self {
            ExecOutcome::Exit(code) => *code,
            ExecOutcome::Error(_) => 1,
        }
    }
}

// strconv.ParseUint(s, 10, 8): ASCII digits only (no sign, no spaces).
fn parse_go_uint8(s: &str) -> Option<u8> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nz(n: u8) -> NonZeroU8 {
        NonZeroU8::new(n).unwrap_or(NonZeroU8::MIN)
    }

    #[test]
    fn success_shape() {
        assert_eq!(Status::success().to_json(), br#"{"metadata":{},"status":"Success"}"#);
    }

    #[test]
    fn non_zero_exit_shape() {
        let s = Status::non_zero_exit(nz(3), "error executing command [sh -c exit 3], exit code 3");
        assert_eq!(
            String::from_utf8_lossy(&s.to_json()),
            r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#
        );
    }

    #[test]
    fn from_exit_code_clamps() {
        assert!(Status::from_exit_code(0, "x").is_success());
        let exit = |c| ExecOutcome::from_error_stream(&Status::from_exit_code(c, "x").to_json(), true);
        assert_eq!(exit(7), ExecOutcome::Exit(7));
        assert_eq!(exit(255), ExecOutcome::Exit(255));
        assert_eq!(exit(256), ExecOutcome::Exit(255));
        assert_eq!(exit(-1), ExecOutcome::Exit(255));
    }

    #[test]
    fn api_error_bodies() {
        let s = Status::not_found("pods", "foo").with_type_meta();
        assert_eq!(
            String::from_utf8_lossy(&s.to_json()),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"pods \"foo\" not found","reason":"NotFound","details":{"name":"foo","kind":"pods"},"code":404}"#
        );
        assert_eq!(s.http_code(), 404);
        let s = Status::internal_error("boom");
        assert_eq!(
            String::from_utf8_lossy(&s.to_json()),
            r#"{"metadata":{},"status":"Failure","message":"Internal error occurred: boom","reason":"InternalError","details":{"causes":[{"message":"boom"}]},"code":500}"#
        );
        let s = Status::bad_request("you must specify at least 1 of stdin, stdout, stderr");
        assert_eq!(s.code, 400);
        assert_eq!(s.reason, "BadRequest");
        let s = Status::forbidden("pods", "foo", "exec denied by policy");
        assert_eq!(s.message, r#"pods "foo" is forbidden: exec denied by policy"#);
        assert_eq!(s.http_code(), 403);
        assert_eq!(Status::forbidden("pods", "", "no").message, "pods is forbidden: no");
        let s = Status::unauthorized("");
        assert_eq!((s.message.as_str(), s.code), ("Unauthorized", 401));
        assert_eq!(Status::success().http_code(), 200);
        assert_eq!(Status::default().http_code(), 500);
    }

    #[test]
    fn error_channel_payloads() {
        let ok = Status::success();
        let bad = Status::non_zero_exit(nz(2), "x");
        assert_eq!(ok.error_channel_payload(true), Some(ok.to_json()));
        assert_eq!(ok.error_channel_payload(false), None);
        assert_eq!(bad.error_channel_payload(false), Some(b"command terminated with non-zero exit code: x".to_vec()));
    }

    #[test]
    fn outcome_mirrors_kubectl() {
        use ExecOutcome::*;
        let f = |s: &str| ExecOutcome::from_error_stream(s.as_bytes(), true);
        assert_eq!(f(""), Exit(0));
        assert_eq!(f(r#"{"metadata":{},"status":"Success"}"#), Exit(0));
        assert_eq!(
            f(
                r#"{"metadata":{},"status":"Failure","message":"m","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#
            ),
            Exit(3)
        );
        assert_eq!(
            f(
                r#"{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[{"reason":"Other","message":"x"},{"reason":"ExitCode","message":"42"}]}}"#
            ),
            Exit(42)
        );
        assert_eq!(
            f(r#"{"status":"Failure","reason":"NonZeroExitCode"}"#),
            Error("error stream protocol error: details must be set".into())
        );
        assert_eq!(
            f(r#"{"status":"Failure","reason":"NonZeroExitCode","details":{}}"#),
            Error("error stream protocol error: no ExitCode cause given".into())
        );
        assert_eq!(
            f(
                r#"{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"256"}]}}"#
            ),
            Error(r#"error stream protocol error: invalid exit code value "256""#.into())
        );
        assert_eq!(
            f(
                r#"{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"+3"}]}}"#
            ),
            Error(r#"error stream protocol error: invalid exit code value "+3""#.into())
        );
        assert_eq!(
            f(
                r#"{"metadata":{},"status":"Failure","message":"Internal error occurred: boom","reason":"InternalError","code":500}"#
            ),
            Error("Internal error occurred: boom".into())
        );
        assert_eq!(f(r#"{"status":"Weird"}"#), Error("error stream protocol error: unknown error".into()));
        assert!(matches!(f("not json"), Error(m) if m.starts_with("error stream protocol error: ")));
        assert_eq!(
            f(r#"{"status":null,"metadata":null,"code":null}"#),
            Error("error stream protocol error: unknown error".into())
        );
        assert_eq!(ExecOutcome::from_error_stream(b"", false), Exit(0));
        assert_eq!(
            ExecOutcome::from_error_stream(b"boom", false),
            Error("error executing remote command: boom".into())
        );
        assert_eq!(Error("x".into()).exit_code(), 1);
        assert_eq!(Exit(9).exit_code(), 9);
    }

    #[test]
    fn parses_go_api_body() -> Result<(), StatusError> {
        let body = br#"{"kind":"Status","apiVersion":"v1","metadata":{"resourceVersion":""},"status":"Failure","message":"pods \"x\" not found","reason":"NotFound","details":{"name":"x","kind":"pods","retryAfterSeconds":0},"code":404}"#;
        let s = Status::from_json(body)?;
        assert_eq!(s.code, 404);
        assert_eq!(s.kind.as_deref(), Some("Status"));
        assert_eq!(s.details.map(|d| d.name), Some("x".to_owned()));
        Ok(())
    }

    proptest! {
        #[test]
        fn exit_codes_round_trip(code in 0u8..=255, detail in ".{0,40}") {
            let s = Status::from_exit_code(i32::from(code), &detail);
            prop_assert_eq!(ExecOutcome::from_error_stream(&s.to_json(), true), ExecOutcome::Exit(code));
            let back = Status::from_json(&s.to_json()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back, s);
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..128), json in any::<bool>()) {
            let _ = ExecOutcome::from_error_stream(&bytes, json);
            let _ = Status::from_json(&bytes);
        }
    }
}
