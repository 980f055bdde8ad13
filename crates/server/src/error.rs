//! API errors: every failure reaches the client as a `metav1.Status` body with its HTTP code.

use hatch_wire::status::{Reason, Status};

use crate::store::StoreError;

/// Boxed: a Status is large, and errors travel through many `Result`s.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", .0.message)]
pub struct ApiError(pub Box<Status>);

impl ApiError {
    pub fn new(status: Status) -> ApiError {
        ApiError(Box::new(status))
    }

    pub fn status(&self) -> &Status {
        &self.0
    }

    pub fn into_status(self) -> Status {
        *self.0
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(Status::bad_request(message))
    }

    pub fn not_found(resource: &str, name: &str) -> ApiError {
        ApiError::new(Status::not_found(resource, name))
    }

    pub fn internal(message: impl std::fmt::Display) -> ApiError {
        ApiError::new(Status::internal_error(&message.to_string()))
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(Status::failure(Reason::Conflict, message))
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(Status::failure(Reason::ServiceUnavailable, message))
    }

    pub fn method_not_allowed(message: impl Into<String>) -> ApiError {
        ApiError::new(Status::failure(Reason::MethodNotAllowed, message))
    }
}

impl From<Status> for ApiError {
    fn from(s: Status) -> ApiError {
        ApiError::new(s)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        tracing::warn!(error = %e, "store");
        ApiError::internal(e)
    }
}

impl From<serde_json::Error> for ApiError {
    fn from(e: serde_json::Error) -> ApiError {
        ApiError::internal(format!("corrupt stored object: {e}"))
    }
}
