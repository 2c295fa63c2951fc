//! Every HTTP error is JSON: `{"error": {"code": "...", "message": "..."}}` with a 4xx or 5xx
//! status that says whose fault it is.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ErrorEnvelope {
    pub(crate) error: ErrorBody,
}

#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
    /// Sent as `Retry-After` (seconds) when set.
    pub(crate) retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same error, asking the client to wait `after` before it tries again.
    pub(crate) fn retry_after(mut self, after: std::time::Duration) -> ApiError {
        self.retry_after = Some(after.as_secs_f64().ceil().max(1.0) as u64);
        self
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid", message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub(crate) fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub(crate) fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub(crate) fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// A JSON body that could not be read, with what was wrong in it: over the size bound (413,
    /// named), without the JSON content type (415), not JSON (400), JSON of another shape —
    /// fields unknown, missing or of the wrong type, not an object (422). Every route answers
    /// alike (sign-in answered 400 where the chat routes answered 415 or 422).
    pub(crate) fn json(e: crate::json_body::BodyRejection) -> ApiError {
        let status = e.status();
        match status {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(),
            s if s.is_client_error() => ApiError::new(s, "invalid", e.body_text()),
            _ => ApiError::bad_request(e.body_text()),
        }
    }

    pub(crate) fn too_large() -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "a request body is at most {} bytes",
                crate::server::REQUEST_BYTES_MAX
            ),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorEnvelope {
            error: ErrorBody {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

impl From<tandem_pool::PoolError> for ApiError {
    fn from(e: tandem_pool::PoolError) -> ApiError {
        use tandem_pool::PoolError::*;
        let status = match &e {
            NotFound(_) => StatusCode::NOT_FOUND,
            Conflict(_) => StatusCode::CONFLICT,
            Invalid(_) => StatusCode::BAD_REQUEST,
            Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Store(s) => return ApiError::from_store(s),
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

impl ApiError {
    fn from_store(e: &tandem_store::StoreError) -> ApiError {
        use tandem_store::StoreError::*;
        match e {
            Role(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_primary", m.clone()),
            StaleEpoch { .. } => ApiError::new(StatusCode::CONFLICT, "stale_epoch", e.to_string()),
            Invalid(m) => ApiError::bad_request(m.clone()),
            CatchingUp(m) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "catching_up", m.clone())
            }
            CommitFailed(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "commit_failed",
                e.to_string(),
            ),
            _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string()),
        }
    }
}

impl From<tandem_chat::ChatError> for ApiError {
    fn from(e: tandem_chat::ChatError) -> ApiError {
        use tandem_chat::ChatError::*;
        let status = match &e {
            NotFound(_) => StatusCode::NOT_FOUND,
            Forbidden(_) => StatusCode::FORBIDDEN,
            Invalid(_) => StatusCode::BAD_REQUEST,
            Conflict(_) => StatusCode::CONFLICT,
            Store(s) => return ApiError::from_store(s),
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

impl From<tandem_store::StoreError> for ApiError {
    fn from(e: tandem_store::StoreError) -> ApiError {
        ApiError::from_store(&e)
    }
}

impl From<crate::client::ClientError> for ApiError {
    fn from(e: crate::client::ClientError) -> ApiError {
        match e {
            crate::client::ClientError::Api { status, body } => ApiError::relayed(status, body),
            other => ApiError::unavailable(other.to_string()),
        }
    }
}

impl ApiError {
    /// Another node's error passed on: its status and message, its code when it is one of
    /// ours (`upstream` otherwise).
    pub(crate) fn relayed(status: u16, body: ErrorBody) -> ApiError {
        ApiError {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            code: match body.code.as_str() {
                "not_found" => "not_found",
                "conflict" => "conflict",
                "invalid" => "invalid",
                "unauthorized" => "unauthorized",
                "forbidden" => "forbidden",
                "not_primary" => "not_primary",
                "not_active" => "not_active",
                "catching_up" => "catching_up",
                "too_large" => "too_large",
                "commit_failed" => "commit_failed",
                "unavailable" => "unavailable",
                _ => "upstream",
            },
            message: body.message,
            retry_after: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_index_catching_up_is_a_503_that_a_chat_node_passes_on() {
        let behind = || tandem_store::StoreError::CatchingUp("the search index is behind".into());
        for e in [
            ApiError::from(behind()),
            ApiError::from(tandem_chat::ChatError::Store(behind())),
        ] {
            assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(e.code, "catching_up");
            assert_eq!(e.message, "the search index is behind");
        }
        // The db node's answer, as a chat node's client reads it, keeps its status and code.
        let passed = ApiError::from(crate::client::ClientError::Api {
            status: 503,
            body: ErrorBody {
                code: "catching_up".into(),
                message: "the search index is behind".into(),
            },
        });
        assert_eq!(passed.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(passed.code, "catching_up");
    }

    /// A commit that failed on the db node (its disk full) reaches users with the code README
    /// documents, not `upstream` (until session 33).
    #[test]
    fn a_failed_commit_and_an_unavailable_node_keep_their_codes_through_a_chat_node() {
        for code in ["commit_failed", "unavailable"] {
            let passed = ApiError::relayed(
                503,
                ErrorBody {
                    code: code.into(),
                    message: "commit failed, rolled back: database or disk is full".into(),
                },
            );
            assert_eq!(
                (passed.status, passed.code),
                (StatusCode::SERVICE_UNAVAILABLE, code)
            );
        }
        let foreign = ApiError::relayed(
            500,
            ErrorBody {
                code: "weird".into(),
                message: "x".into(),
            },
        );
        assert_eq!(foreign.code, "upstream");
    }
}
