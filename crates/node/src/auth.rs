//! The internal API is for nodes and operators holding the cluster secret: a request without
//! it, or with another, is refused and logged.

use crate::client::SECRET_HEADER;
use crate::error::ApiError;
use crate::server::Shared;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;

/// Compares in time independent of where the two differ.
fn same(a: &str, b: &str) -> bool {
    let (x, y) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

pub(crate) async fn require_secret(
    State(node): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    if !is_internal(req.uri().path()) {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(SECRET_HEADER)
        .and_then(|v| v.to_str().ok());
    match given {
        Some(s) if same(s, &node.topology.secret) => {
            let from_node = req
                .headers()
                .get(crate::client::NODE_HEADER)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|n| n != node.name);
            if from_node && node.client.isolated() {
                // Fault injection: this node is cut off from the other nodes.
                return ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "partitioned",
                    format!(
                        "{} is cut off from the other nodes (fault injection)",
                        node.name
                    ),
                )
                .into_response();
            }
            next.run(req).await
        }
        other => {
            let why = if other.is_some() {
                "a wrong cluster secret"
            } else {
                "no cluster secret"
            };
            tracing::warn!(%peer, path = %req.uri().path(), "internal request refused: {why}");
            metrics::counter!("tandem_internal_requests_refused_total").increment(1);
            ApiError::unauthorized(format!(
                "the internal API needs the cluster secret in the {SECRET_HEADER} header; this request had {why}"
            ))
            .into_response()
        }
    }
}

/// A path of the internal API (any, whether or not a route has it).
fn is_internal(path: &str) -> bool {
    path == "/internal" || path.starts_with("/internal/")
}

#[cfg(test)]
mod tests {
    #[test]
    fn internal_paths_are_told_apart() {
        assert!(super::is_internal("/internal/v1/status"));
        assert!(super::is_internal("/internal/nothing"));
        assert!(super::is_internal("/internal"));
        assert!(!super::is_internal("/internals"));
        assert!(!super::is_internal("/api/v1/rooms"));
    }

    #[test]
    fn secrets_compare_by_content() {
        assert!(super::same("abc", "abc"));
        assert!(!super::same("abc", "abd"));
        assert!(!super::same("abc", "abcd"));
    }
}
