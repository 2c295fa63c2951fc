//! The frontend role: users of the pool sign in with their password for a bearer token; the
//! token names its user so any frontend can check it against the user's home pool.

use crate::error::ApiError;
use crate::json_body::{BodyRejection, Object};
use crate::server::Shared;
use crate::sign_in;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    user: String,
    password: String,
}

/// A user's bearer token: `<user>.<secret>`. Only the secret part's hash is stored.
pub fn user_token(user: &str, secret: &str) -> String {
    format!("{user}.{secret}")
}

fn split_token(token: &str) -> Option<(&str, &str)> {
    token.rsplit_once('.')
}

/// The pool `user` is homed on: from the CMS snapshot this node follows, or, for a user the
/// snapshot does not know yet (added within the last follow interval), from the CMS itself.
async fn home(node: &Shared, user: &str) -> Result<String, ApiError> {
    home_if_any(node, user)
        .await?
        .ok_or_else(|| ApiError::unauthorized("wrong user name or password"))
}

/// `home`, or None for a name no pool homes: no such user.
pub(crate) async fn home_if_any(node: &Shared, user: &str) -> Result<Option<String>, ApiError> {
    if let Some(pool) = node.cms.home_of(user) {
        return Ok(Some(pool));
    }
    let asked = node
        .call_db(
            tandem_topology::DATABASE_CMS,
            "cms.home_of",
            json!({ "user": user }),
        )
        .await
        .map_err(|e| {
            ApiError::unavailable(format!(
                "the CMS does not answer and this node's snapshot does not know the user: {}",
                e.message
            ))
        })?;
    Ok(asked["pool"].as_str().map(str::to_string))
}

/// A sign-in: refused at once (429) while its address waits after failed ones, then checked
/// in its turn (at most `sign_in::AT_ONCE` at a time on this node; 503 after
/// `sign_in::QUEUE_WAIT` without one).
async fn login(
    State(node): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Object<Login>, BodyRejection>,
) -> Result<Json<Value>, ApiError> {
    let Object(l) = body.map_err(ApiError::json)?;
    let from = peer.ip();
    let attempt = node
        .sign_ins
        .begin(from, &l.user, Instant::now())
        .map_err(|refusal| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_attempts",
                refusal.message(&l.user, from),
            )
            .retry_after(refusal.wait())
        })?;
    let _turn = tokio::time::timeout(sign_in::QUEUE_WAIT, node.sign_ins.turns.acquire())
        .await
        .map_err(|_| {
            ApiError::unavailable(format!(
                "this node is checking {} sign-ins already: try again",
                sign_in::AT_ONCE
            ))
            .retry_after(Duration::from_secs(1))
        })?
        .map_err(|_| ApiError::unavailable("this node is stopping"))?;
    let answer = check_password(&node, &l).await;
    match &answer {
        Err(e) if e.status == StatusCode::UNAUTHORIZED => attempt.failed(Instant::now()),
        Ok(_) => attempt.succeeded(),
        Err(_) => drop(attempt),
    }
    answer.map(Json)
}

/// A new token for `l.user` if `l.password` is theirs.
async fn check_password(node: &Shared, l: &Login) -> Result<Value, ApiError> {
    let Some(pool) = home_if_any(node, &l.user).await? else {
        let password = l.password.clone();
        let refused =
            tokio::task::spawn_blocking(move || tandem_pool::users::refuse_unknown_user(&password))
                .await
                .map_err(|e| ApiError::unavailable(e.to_string()))?;
        return Err(refused.into());
    };
    let r = node
        .call_db(
            &format!("users-{pool}"),
            "users.login",
            json!({ "name": l.user, "password": l.password }),
        )
        .await?;
    let secret = r["token"]
        .as_str()
        .ok_or_else(|| ApiError::unavailable("the user database answered no token"))?;
    Ok(json!({ "user": l.user, "pool": pool, "token": user_token(&l.user, secret) }))
}

/// The signed-in user, from the `Authorization: Bearer` header.
pub(crate) async fn authenticate(
    node: &Shared,
    headers: &HeaderMap,
) -> Result<(String, String), ApiError> {
    let token = bearer_token(headers).ok_or_else(bad_token)?;
    authenticate_token(node, token).await
}

/// The token of an `Authorization: Bearer TOKEN` header. The scheme's name is matched without
/// regard to case and may be followed by more than one space (RFC 9110 §11.1): `bearer TOKEN`
/// was refused as "a bearer token is needed".
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn bad_token() -> ApiError {
    ApiError::unauthorized("a valid bearer token is needed: sign in with POST /api/v1/login")
}

/// The user and home pool of a bearer token, checked against the user's home pool.
pub(crate) async fn authenticate_token(
    node: &Shared,
    token: &str,
) -> Result<(String, String), ApiError> {
    let bad = bad_token;
    let (user, secret) = split_token(token).ok_or_else(bad)?;
    let pool = home(node, user).await.map_err(|_| bad())?;
    let r = node
        .call_db(
            &format!("users-{pool}"),
            "users.authenticate",
            json!({ "token": secret }),
        )
        .await?;
    match r.get("name").and_then(|n| n.as_str()) {
        Some(name) if name == user => Ok((user.to_string(), pool)),
        _ => Err(bad()),
    }
}

async fn me(State(node): State<Shared>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let (user, pool) = authenticate(&node, &headers).await?;
    Ok(Json(json!({ "user": user, "pool": pool })))
}

pub(crate) fn routes() -> Router<Shared> {
    Router::new()
        .route("/api/v1/login", post(login))
        .route("/api/v1/me", get(me))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bearer_scheme_is_matched_without_regard_to_case() {
        let token_of = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(axum::http::header::AUTHORIZATION, value.parse().unwrap());
            bearer_token(&h).map(str::to_string)
        };
        for value in ["Bearer bob.abc", "bearer bob.abc", "BEARER  bob.abc"] {
            assert_eq!(token_of(value).as_deref(), Some("bob.abc"), "{value}");
        }
        for value in [
            "Basic Ym9i",
            "Bearer",
            "Bearer ",
            "Bearerbob.abc",
            "bob.abc",
        ] {
            assert_eq!(token_of(value), None, "{value}");
        }
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }
}
