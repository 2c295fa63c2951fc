//! Live events. The db node holding `mgc` answers `GET /internal/v1/db/mgc/feed?after=ID`
//! with the events after ID that are durable (later: hardened on the mirror), waiting for new
//! ones up to a deadline. Each chat node follows that feed from one task and broadcasts the
//! events, in id order and without gaps, to its WebSocket sessions — only while it has some:
//! with none, following cost a chat node under posting load about a twelfth of its CPU for
//! nothing. When the first session comes, the follower starts again at the feed's end and
//! broadcasts `Resumed` first; a session reads the feed from its own last event on `Resumed`,
//! so the events between its backlog and the follower's restart are not lost.

use crate::error::ApiError;
use crate::server::{NodeState, Shared};
use axum::Json;
use axum::extract::ws::Utf8Bytes;
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tandem_chat::Event;
use tokio::sync::broadcast;

/// Longest a feed request waits for a new event.
pub(crate) const FEED_WAIT_MS_MAX: u64 = 25_000;
/// How often a waiting feed looks whether its copy is still the one hosted.
const FEED_HOSTED_CHECK: Duration = Duration::from_millis(500);
/// Most events one feed answer carries.
pub(crate) const FEED_EVENTS_MAX: usize = 1_000;
/// Events a chat node keeps for sessions that fall behind; past that a session re-reads.
pub(crate) const BROADCAST_EVENTS_MAX: usize = 16_384;
/// While no session listens, how often the follower looks for one.
const IDLE_POLL_MS: u64 = 50;

/// What a chat node broadcasts to its sessions.
#[derive(Clone, Debug)]
pub(crate) enum FeedItem {
    Event(Arc<LiveEvent>),
    /// The follower starts again at the feed's end (it had stopped while no session listened):
    /// a session reads the feed from its last event before taking the next ones.
    Resumed,
}

/// An event broadcast to a chat node's sessions. Its WebSocket frame is made once, by the first
/// session that sends it, and shared by every other: a room followed by 10,000 sessions costs
/// one serialization per event, not 10,000.
#[derive(Debug)]
pub(crate) struct LiveEvent {
    pub(crate) event: Event,
    frame: OnceLock<Utf8Bytes>,
}

impl LiveEvent {
    fn new(event: Event) -> LiveEvent {
        LiveEvent {
            event,
            frame: OnceLock::new(),
        }
    }

    /// The text frame a session sends (a cheap clone of the shared bytes).
    pub(crate) fn frame(&self) -> Utf8Bytes {
        self.frame.get_or_init(|| event_frame(&self.event)).clone()
    }
}

/// The text frame of an event on a session's WebSocket: `{"event": {...}, "type": "event"}`.
pub(crate) fn event_frame(e: &Event) -> Utf8Bytes {
    #[derive(Serialize)]
    struct Frame<'a> {
        event: &'a Event,
        #[serde(rename = "type")]
        kind: &'static str,
    }
    serde_json::to_string(&Frame {
        event: e,
        kind: "event",
    })
    .expect("an event serializes")
    .into()
}

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
) -> Result<Json<FeedPage>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let db = node.open_copy(&database)?;
    crate::server::require_primary(&node, &database, &db)?;
    if q.after < 0 {
        // Where the feed stands: the newest durable event.
        let upto = db.durable_lsn();
        let last = tokio::task::spawn_blocking(move || tandem_chat::last_event_id(&db, upto))
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))??;
        return Ok(Json(FeedPage {
            events: Vec::new(),
            last_id: Some(last),
            durable_lsn: upto,
        }));
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
            return Ok(Json(FeedPage::of(events, upto)));
        }
        // Wait for the next durable commit (or the deadline, or the node stopping, or the copy
        // put away: a restore replaces it only once this handle too is let go).
        let mut stopping = node.stopping.clone();
        let woken = loop {
            let slice = deadline.min(tokio::time::Instant::now() + FEED_HOSTED_CHECK);
            tokio::select! {
                r = tokio::time::timeout_at(slice, durable.changed()) => {
                    if r.is_ok() {
                        break true;
                    }
                }
                _ = stopping.wait_for(|s| *s) => break false,
            }
            let hosted = node.host.get(&database);
            if slice >= deadline || !hosted.is_some_and(|h| h.same_handle(&db)) {
                break false;
            }
        };
        if !woken {
            let d = db.clone();
            let upto = *durable.borrow();
            let events =
                tokio::task::spawn_blocking(move || tandem_chat::feed(&d, q.after, upto, limit))
                    .await
                    .map_err(|e| ApiError::unavailable(e.to_string()))??;
            return Ok(Json(FeedPage::of(events, upto)));
        }
    }
}

/// A page of the chat database's feed, as the db node writes it and chat nodes read it.
#[derive(Serialize, Deserialize)]
pub(crate) struct FeedPage {
    pub(crate) events: Vec<Event>,
    /// Where the feed stands, the newest durable event's id: the answer to `after` < 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) last_id: Option<i64>,
    pub(crate) durable_lsn: u64,
}

impl FeedPage {
    fn of(events: Vec<Event>, durable_lsn: u64) -> FeedPage {
        FeedPage {
            events,
            last_id: None,
            durable_lsn,
        }
    }
}

/// Whether the chat pool uses the backup site's `mgc` now (state `failed-over`, as the CMS says).
pub(crate) fn chat_uses_backup(node: &NodeState) -> bool {
    node.cms
        .chat()
        .is_some_and(|c| c.state == tandem_pool::cms::ChatPoolState::FailedOver)
}

/// Reads the feed of the chat database the chat pool uses now, following its primary when it
/// moved (reads are safe to send again).
pub(crate) async fn read_feed(
    node: &NodeState,
    after: i64,
    wait_ms: u64,
) -> Result<FeedPage, crate::ClientError> {
    let db = tandem_topology::DATABASE_MGC;
    let backup = chat_uses_backup(node);
    let candidates = crate::locator::candidates(&node.topology, db, backup);
    let Some(first) = node.locator.current(db, backup, &candidates) else {
        return Err(crate::ClientError::Unreachable {
            addr: db.into(),
            message: "the topology places no chat database".into(),
            sent: false,
        });
    };
    // A node that left a call unanswered (hung): where is the primary now?
    let first = if node.locator.suspected(&first.name) {
        node.locator
            .probe(&node.client, db, backup, &candidates)
            .await
            .unwrap_or(first)
    } else {
        first
    };
    match node.client.feed(&first.address, db, after, wait_ms).await {
        Err(e) if e.retry_elsewhere() || matches!(e, crate::ClientError::Unreachable { .. }) => {
            match node
                .locator
                .probe(&node.client, db, backup, &candidates)
                .await
            {
                Some(n) if n.name != first.name => {
                    node.client.feed(&n.address, db, after, wait_ms).await
                }
                _ => Err(e),
            }
        }
        r => r,
    }
}

/// On a chat node: follows the feed and broadcasts every event, in order, to the sessions,
/// while there are some (see the module documentation).
pub(crate) async fn follow(node: Shared, tx: broadcast::Sender<FeedItem>) {
    // Start at the newest event: sessions read their own backlog.
    let mut after: Option<i64> = None;
    let mut failures = 0u32;
    loop {
        if tx.receiver_count() == 0 {
            after = None;
            while tx.receiver_count() == 0 {
                tokio::time::sleep(Duration::from_millis(IDLE_POLL_MS)).await;
            }
        }
        let url_after = after.unwrap_or(-1);
        let wait = if after.is_some() { FEED_WAIT_MS_MAX } else { 0 };
        let answer = read_feed(&node, url_after, wait).await;
        match answer {
            Ok(page) => {
                failures = 0;
                if after.is_none() {
                    // The first answer says where the feed stands.
                    after = Some(page.last_id.unwrap_or(0));
                    let _ = tx.send(FeedItem::Resumed);
                    continue;
                }
                for e in page.events {
                    after = Some(e.id);
                    let _ = tx.send(FeedItem::Event(Arc::new(LiveEvent::new(e))));
                }
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(error = %e, "the chat database's feed does not answer; retrying");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_chat::EventKind;

    #[test]
    fn an_event_frame_holds_its_type_and_the_whole_event() {
        let e = Event {
            id: 12,
            room: "lobby".into(),
            kind: EventKind::MemberAdded,
            sender: "alice".into(),
            time_ms: 1_700_000_000_000,
            text: "alice added bob".into(),
            subject: Some("bob".into()),
            reply_to: None,
            lsn: 99,
        };
        let frame: serde_json::Value = serde_json::from_str(event_frame(&e).as_str()).unwrap();
        assert_eq!(frame["type"], "event");
        assert_eq!(frame.as_object().unwrap().len(), 2);
        assert_eq!(
            serde_json::from_value::<Event>(frame["event"].clone()).unwrap(),
            e
        );
    }

    #[test]
    fn a_feed_page_says_where_the_feed_stands_only_when_asked() {
        let text = serde_json::to_string(&FeedPage::of(Vec::new(), 5)).unwrap();
        assert_eq!(text, r#"{"events":[],"durable_lsn":5}"#);
        let page: FeedPage =
            serde_json::from_str(r#"{"events":[],"last_id":40,"durable_lsn":7}"#).unwrap();
        assert_eq!((page.last_id, page.durable_lsn), (Some(40), 7));
    }
}
