//! Live events. The db node holding `mgc` answers `GET /internal/v1/db/mgc/feed?after=ID`
//! with the events after ID that are durable (later: hardened on the mirror), waiting for new
//! ones up to a deadline. Each chat node follows that feed from one task and broadcasts the
//! events, in id order and without gaps, to its WebSocket sessions.

use crate::error::ApiError;
use crate::server::{NodeState, Shared};
use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;
use tandem_chat::Event;
use tokio::sync::broadcast;

/// Longest a feed request waits for a new event.
pub(crate) const FEED_WAIT_MS_MAX: u64 = 25_000;
/// Most events one feed answer carries.
pub(crate) const FEED_EVENTS_MAX: usize = 1_000;
/// Events a chat node keeps for sessions that fall behind; past that a session re-reads.
pub(crate) const BROADCAST_EVENTS_MAX: usize = 16_384;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FeedQuery {
    after: i64,
    #[serde(default)]
    wait_ms: u64,
    limit: Option<usize>,
}

/// On the db node: the events after `after`, durable ones only, waiting for some when none.
pub(crate) async fn serve_feed(
    State(node): State<Shared>,
    Path(database): Path<String>,
    q: Result<Query<FeedQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let db = node.host.get(&database).cloned().ok_or_else(|| {
        ApiError::not_found(format!(
            "node {} holds no open copy of {database}",
            node.name
        ))
    })?;
    if q.after < 0 {
        // Where the feed stands: the newest durable event.
        let upto = db.durable_lsn();
        let last = tokio::task::spawn_blocking(move || tandem_chat::last_event_id(&db, upto))
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))??;
        return Ok(Json(
            json!({ "events": [], "last_id": last, "durable_lsn": upto }),
        ));
    }
    let limit = q.limit.unwrap_or(FEED_EVENTS_MAX).clamp(1, FEED_EVENTS_MAX);
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(q.wait_ms.min(FEED_WAIT_MS_MAX));
    let mut durable = db.subscribe();
    loop {
        let upto = *durable.borrow_and_update();
        let d = db.clone();
        let events =
            tokio::task::spawn_blocking(move || tandem_chat::feed(&d, q.after, upto, limit))
                .await
                .map_err(|e| ApiError::unavailable(e.to_string()))??;
        if !events.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(Json(json!({ "events": events, "durable_lsn": upto })));
        }
        // Wait for the next durable commit (or the deadline, or the node stopping).
        let mut stopping = node.stopping.clone();
        let woken = tokio::select! {
            r = tokio::time::timeout_at(deadline, durable.changed()) => r.is_ok(),
            _ = stopping.wait_for(|s| *s) => false,
        };
        if !woken {
            let d = db.clone();
            let upto = *durable.borrow();
            let events =
                tokio::task::spawn_blocking(move || tandem_chat::feed(&d, q.after, upto, limit))
                    .await
                    .map_err(|e| ApiError::unavailable(e.to_string()))??;
            return Ok(Json(json!({ "events": events, "durable_lsn": upto })));
        }
    }
}

/// The address of the db node whose `mgc` copy the chat pool uses now: the primary in state
/// `normal`, the backup in `failed-over` (as the CMS says).
pub(crate) fn chat_database_node(node: &NodeState) -> Result<tandem_topology::Node, ApiError> {
    let chat = node
        .topology
        .chat
        .as_ref()
        .ok_or_else(|| ApiError::not_found("the topology has no chat pool"))?;
    let failed_over = node
        .cms
        .chat()
        .is_some_and(|c| c.state == tandem_pool::cms::ChatPoolState::FailedOver);
    let name = if failed_over {
        chat.backup.clone().ok_or_else(|| {
            ApiError::unavailable("the chat pool is failed over but has no backup database")
        })?
    } else {
        chat.primary.clone()
    };
    node.topology
        .node(&name)
        .cloned()
        .ok_or_else(|| ApiError::unavailable(format!("no node {name}")))
}

#[derive(Deserialize)]
struct FeedAnswer {
    events: Vec<Event>,
}

/// On a chat node: follows the feed and broadcasts every event, in order, to the sessions.
pub(crate) async fn follow(node: Shared, tx: broadcast::Sender<Event>) {
    // Start at the newest event: sessions read their own backlog.
    let mut after: Option<i64> = None;
    let mut failures = 0u32;
    loop {
        let target = match chat_database_node(&node) {
            Ok(n) => n,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let url_after = after.unwrap_or(-1);
        let answer = node
            .client
            .feed(
                &target.address,
                tandem_topology::DATABASE_MGC,
                url_after,
                if after.is_some() { FEED_WAIT_MS_MAX } else { 0 },
            )
            .await;
        match answer {
            Ok(v) => {
                failures = 0;
                if after.is_none() {
                    // The first answer says where the feed stands.
                    after = Some(v["last_id"].as_i64().unwrap_or(0));
                    continue;
                }
                match serde_json::from_value::<FeedAnswer>(v) {
                    Ok(f) => {
                        for e in f.events {
                            after = Some(e.id);
                            let _ = tx.send(e);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "unreadable feed answer");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(error = %e, db = %target.name, "the chat database's feed does not answer; retrying");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
