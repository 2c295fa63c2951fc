//! The chat role: users' chat API (JSON over HTTP, bearer tokens) and the WebSocket of live
//! room events. A chat node serves only while the CMS lists it as an active server; it calls the
//! chat database the chat pool state names (domain operations, never SQL) and streams the
//! events that database's feed broadcasts.

use crate::chat_feed::{BROADCAST_EVENTS_MAX, chat_uses_backup, read_feed};
use crate::error::ApiError;
use crate::json_body::{BodyRejection, Object};
use crate::server::{NodeState, Shared};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tandem_chat::{EventKind, HistoryQuery, NewRoom, RoomUpdate};
use tokio::sync::broadcast;

/// How long a checked token is trusted without asking its pool again.
const TOKEN_CACHE_TTL_MS: u64 = 30_000;
/// Tokens remembered at most.
const TOKEN_CACHE_ENTRIES_MAX: usize = 100_000;
/// Rooms one WebSocket may follow.
const SESSION_ROOMS_MAX: usize = 256;
/// Rooms whose reading right a session's opening asks about at once.
const SESSION_CHECKS_AT_ONCE: usize = 16;
/// A session's read buffer. A client only closes and pings, so a few KiB do: WebSocket's
/// default (128 KiB, allocated as the session opens) made 10,000 sessions take 1.3 GB
/// (`bench chat`).
const SESSION_READ_BUFFER: usize = 4 * 1024;
/// The largest message or frame a client may send on a session (it sends none that matter):
/// past it the session ends, so a client cannot make the node buffer megabytes.
const SESSION_MESSAGE_MAX: usize = 16 * 1024;
/// How often a live session reads the feed again while it cannot (a failover under way).
const FEED_RETRY_MS: u64 = 200;

/// Chat-node state: the token cache and the broadcast of the chat database's feed.
pub(crate) struct ChatRole {
    /// Token → its user, the CMS's changes as this node had heard them, when checked.
    tokens: Mutex<HashMap<String, (String, u64, Instant)>>,
    pub(crate) events: broadcast::Sender<crate::chat_feed::FeedItem>,
    /// Set once the node is built (the senders hold a weak reference to it).
    pub(crate) posts: std::sync::OnceLock<crate::post_batcher::PostBatcher>,
}

impl ChatRole {
    pub(crate) fn new() -> ChatRole {
        ChatRole {
            tokens: Mutex::new(HashMap::new()),
            events: broadcast::channel(BROADCAST_EVENTS_MAX).0,
            posts: std::sync::OnceLock::new(),
        }
    }
}

fn body<T>(r: Result<Object<T>, BodyRejection>) -> Result<T, ApiError> {
    r.map(|Object(v)| v).map_err(ApiError::json)
}

fn path<T>(r: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    r.map(|Path(v)| v)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

fn query<T>(r: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    r.map(|Query(v)| v)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

/// The user a chat request is signed in as, found by [`signed_in`] before anything else of the
/// request is looked at.
#[derive(Clone)]
struct SignedIn(String);

/// A `?token=` in a request's query (WebSockets: browsers open them without headers).
#[derive(Deserialize)]
struct TokenParam {
    token: Option<String>,
}

/// Every chat route's first step: the node must be an active chat server and the request
/// signed in, checked before its body is read — a client without a valid token is answered
/// at once and never makes the node take in a body (up to `REQUEST_BYTES_MAX`) or parse it.
async fn signed_in(
    State(node): State<Shared>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<Response, ApiError> {
    let token_param = Query::<TokenParam>::try_from_uri(request.uri())
        .ok()
        .and_then(|Query(t)| t.token);
    let u = user(&node, request.headers(), token_param.as_deref()).await?;
    request.extensions_mut().insert(SignedIn(u));
    Ok(next.run(request).await)
}

/// The user behind the request's bearer token (also accepted as `?token=` for WebSockets,
/// which browsers open without headers). Refuses when this node is not an active chat server.
async fn user(
    node: &Shared,
    headers: &HeaderMap,
    token_param: Option<&str>,
) -> Result<String, ApiError> {
    active(node)?;
    let token = bearer(headers, token_param).ok_or_else(|| {
        ApiError::unauthorized("a bearer token is needed: sign in with POST /api/v1/login")
    })?;
    user_of_token(node, token).await
}

/// The request's token: its `Authorization: Bearer` header, or else the query's `token`.
fn bearer<'a>(headers: &'a HeaderMap, token_param: Option<&'a str>) -> Option<&'a str> {
    crate::frontend::bearer_token(headers).or(token_param)
}

/// The user a token signs in, remembered for `TOKEN_CACHE_TTL_MS` while the CMS, as this node
/// follows it (within about `CMS_FOLLOW_INTERVAL_MS`), has not changed: a user removed — or
/// removed and added again, even to the same pool — is asked of its pool again at once. (Until
/// session 32 a removed user's token went on working here for up to 30 s; until session 33, one
/// whose name was given again to the same pool, as the new user.) The CMS changes only by an
/// operator's hand, so the cache lasts between them.
async fn user_of_token(node: &Shared, token: &str) -> Result<String, ApiError> {
    let chat = node
        .chat
        .as_ref()
        .expect("chat routes exist only with the chat role");
    let changes = node.cms.changes();
    if let Some((user, seen, at)) = chat.tokens.lock().expect("token cache").get(token)
        && at.elapsed() < Duration::from_millis(TOKEN_CACHE_TTL_MS)
        && *seen == changes
    {
        return Ok(user.clone());
    }
    let (user, _pool) = crate::frontend::authenticate_token(node, token).await?;
    let mut cache = chat.tokens.lock().expect("token cache");
    if cache.len() >= TOKEN_CACHE_ENTRIES_MAX {
        cache.clear();
    }
    cache.insert(token.to_string(), (user.clone(), changes, Instant::now()));
    Ok(user)
}

/// A chat node serves only while it is in the CMS's active server list (as in the seed).
fn active(node: &Shared) -> Result<(), ApiError> {
    if !node.cms.has_snapshot() {
        return Err(ApiError::unavailable(
            "no CMS snapshot yet: this chat node does not know the active server list",
        ));
    }
    let chat = node
        .cms
        .chat()
        .ok_or_else(|| ApiError::unavailable("the CMS has no chat pool"))?;
    if chat.active.iter().any(|n| *n == node.name) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_active",
            format!(
                "chat node {} is not an active server of the chat pool; active servers: {}",
                node.name,
                if chat.active.is_empty() {
                    "none".to_string()
                } else {
                    chat.active.join(", ")
                }
            ),
        ))
    }
}

/// A chat procedure's answer as its JSON text: the users' API passes it on as it came from the
/// db node, with no `Value` parsed and written again.
pub(crate) type Raw = Box<RawValue>;

/// Runs a chat procedure on the chat database the chat pool uses now, here or remotely.
pub(crate) async fn mgc<T: DeserializeOwned>(
    node: &NodeState,
    procedure: &str,
    args: impl Serialize + Sync,
) -> Result<T, ApiError> {
    node.call_on(
        tandem_topology::DATABASE_MGC,
        chat_uses_backup(node),
        procedure,
        &args,
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCategory {
    name: String,
    description: Option<String>,
}

async fn categories(
    State(node): State<Shared>,
    _: Extension<SignedIn>,
) -> Result<Json<Raw>, ApiError> {
    Ok(Json(mgc(&node, "chat.categories", json!({})).await?))
}

async fn add_category(
    State(node): State<Shared>,
    Extension(SignedIn(u)): Extension<SignedIn>,
    b: Result<Object<NewCategory>, BodyRejection>,
) -> Result<Response, ApiError> {
    let c = body(b)?;
    let r: Raw = mgc(
        &node,
        "chat.add_category",
        json!({ "user": u, "name": c.name, "description": c.description }),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(r)).into_response())
}

async fn rooms(
    State(node): State<Shared>,
    Extension(SignedIn(u)): Extension<SignedIn>,
) -> Result<Json<Raw>, ApiError> {
    Ok(Json(mgc(&node, "chat.rooms", json!({ "user": u })).await?))
}

async fn create_room(
    State(node): State<Shared>,
    Extension(SignedIn(u)): Extension<SignedIn>,
    b: Result<Object<NewRoom>, BodyRejection>,
) -> Result<Response, ApiError> {
    let room = body(b)?;
    let r: Raw = mgc(
        &node,
        "chat.create_room",
        json!({ "user": u, "room": room }),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(r)).into_response())
}

async fn get_room(
    State(node): State<Shared>,
    Extension(SignedIn(u)): Extension<SignedIn>,
    p: Result<Path<String>, PathRejection>,
) -> Result<Json<Raw>, ApiError> {
    let room = path(p)?;
    Ok(Json(
        mgc(&node, "chat.room", json!({ "user": u, "room": room })).await?,
    ))
}

async fn update_room(
    State(node): State<Shared>,
    Extension(SignedIn(u)): Extension<SignedIn>,
    p: Result<Path<String>, PathRejection>,
    b: Result<Object<RoomUpdate>, BodyRejection>,
) -> Result<Json<Raw>, ApiError> {
    let (room, update) = (path(p)?, body(b)?);
    Ok(Json(
        mgc(
            &node,
            "chat.update_room",
            json!({ "user": u, "room": room, "update": update }),
        )
        .await?,
    ))
}

async fn members(
    State(node): State<Shared>,
    Extension(SignedIn(u)): Extension<SignedIn>,
    p: Result<Path<String>, PathRejection>,
) -> Result<Json<Raw>, ApiError> {
    let room = path(p)?;
    Ok(Json(
        mgc(&node, "chat.members", json!({ "user": u, "room": room })).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewMember {
    user: String,
    #[serde(default)]
    manager: bool,
}

async fn add_member(
    State(node): State<Shared>,
    Extension(SignedIn(u)): Extension<SignedIn>,
    p: Result<Path<String>, PathRejection>,
    b: Result<Object<NewMember>, BodyRejection>,
) -> Result<Response, ApiError> {
    let (room, m) = (path(p)?, body(b)?);
    // A name no user can have is said so first (and not echoed whole).
    tandem_pool::users::validate_name(&m.user)?;
    // A member is a user of the deployment: one that some pool homes.
    if crate::frontend::home_if_any(&node, &m.user)
        .await?
        .is_none()
    {
        return Err(ApiError::not_found(format!(
            "no user named {}: `tandem user add {} --pool POOL` adds one",
            m.user, m.user
        )));
    }
    let r: Raw = mgc(
        &node,
        "chat.add_member",
        json!({ "user": u, "room": room, "member": m.user, "manager": m.manager }),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(r)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberChange {
    manager: bool,
}

async fn set_manager(
    State(node): State<Shared>,
    Extension(SignedIn(u)): Extension<SignedIn>,
    p: Result<Path<(String, String)>, PathRejection>,
    b: Result<Object<MemberChange>, BodyRejection>,
) -> Result<Json<Raw>, ApiError> {
    let ((room, member), change) = (path(p)?, body(b)?);
    Ok(Json(
        mgc(
            &node,
            "chat.set_manager",
            json!({ "user": u, "room": room, "member": member, "manager": change.manager }),
        )
        .await?,
    ))
}

async fn remove_member(
    State(node): State<Shared>,
    Extension(SignedIn(u)): Extension<SignedIn>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let (room, member) = path(p)?;
    mgc::<Raw>(
        &node,
        "chat.remove_member",
        json!({ "user": u, "room": room, "member": member }),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewMessage {
    text: String,
    reply_to: Option<i64>,
}

async fn post_message(
    State(node): State<Shared>,
    headers: HeaderMap,
    Extension(SignedIn(u)): Extension<SignedIn>,
    p: Result<Path<String>, PathRejection>,
    b: Result<Object<NewMessage>, BodyRejection>,
) -> Result<Response, ApiError> {
    let (room, m) = (path(p)?, body(b)?);
    // The client's key for the post: a retry with the same key is answered with the message
    // the first attempt made (IETF's Idempotency-Key header; the post checks its form).
    let key = headers
        .get("idempotency-key")
        .map(|v| {
            v.to_str().map(str::to_string).map_err(|_| {
                ApiError::bad_request("the Idempotency-Key header is not printable ASCII")
            })
        })
        .transpose()?;
    let batcher = node
        .chat
        .as_ref()
        .and_then(|c| c.posts.get())
        .expect("set at start");
    let r = batcher
        .post(crate::chat_procedures::Post {
            user: u,
            room,
            text: m.text,
            reply_to: m.reply_to,
            key,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(r)).into_response())
}

async fn history(
    State(node): State<Shared>,
    Extension(SignedIn(u)): Extension<SignedIn>,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<Raw>, ApiError> {
    let (room, q) = (path(p)?, query(q)?);
    Ok(Json(
        mgc(
            &node,
            "chat.history",
            json!({ "user": u, "room": room, "query": q }),
        )
        .await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchQuery {
    q: String,
    before: Option<i64>,
    limit: Option<usize>,
}

async fn search(
    State(node): State<Shared>,
    Extension(SignedIn(u)): Extension<SignedIn>,
    q: Result<Query<SearchQuery>, QueryRejection>,
) -> Result<Json<Raw>, ApiError> {
    let q = query(q)?;
    let mut args = json!({ "user": u, "query": q.q, "limit": q.limit });
    // Only when given: a db node of an earlier version refuses a field it does not know.
    if let Some(before) = q.before {
        args["before"] = json!(before);
    }
    Ok(Json(mgc(&node, "chat.search", args).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadMark {
    event_id: i64,
}

async fn mark_read(
    State(node): State<Shared>,
    Extension(SignedIn(u)): Extension<SignedIn>,
    p: Result<Path<String>, PathRejection>,
    b: Result<Object<ReadMark>, BodyRejection>,
) -> Result<StatusCode, ApiError> {
    let (room, m) = (path(p)?, body(b)?);
    mgc::<Raw>(
        &node,
        "chat.mark_read",
        json!({ "user": u, "room": room, "event_id": m.event_id }),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn unread(
    State(node): State<Shared>,
    Extension(SignedIn(u)): Extension<SignedIn>,
    p: Result<Path<String>, PathRejection>,
) -> Result<Json<Raw>, ApiError> {
    let room = path(p)?;
    Ok(Json(
        mgc(&node, "chat.unread", json!({ "user": u, "room": room })).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    /// Comma-separated room names.
    rooms: String,
    /// Resume after this event id (default: only new events).
    after: Option<i64>,
    token: Option<String>,
}

/// `GET /api/v1/events?rooms=a,b&after=ID`: a WebSocket of the rooms' events, in id order,
/// first those after `after` (the backlog), then live ones, each once.
async fn events(
    State(node): State<Shared>,
    headers: HeaderMap,
    Extension(SignedIn(u)): Extension<SignedIn>,
    q: Result<Query<EventsQuery>, QueryRejection>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let rooms: HashSet<String> = q
        .rooms
        .split(',')
        .filter(|r| !r.is_empty())
        .map(str::to_string)
        .collect();
    if rooms.is_empty() || rooms.len() > SESSION_ROOMS_MAX {
        return Err(ApiError::bad_request(format!(
            "rooms: name 1 to {SESSION_ROOMS_MAX} rooms, comma-separated"
        )));
    }
    // The session's start is fixed before the user's right to read each room is asked: an
    // event that ends that right (a removal, a privacy change) is then either seen by the
    // checks or after the start, where the session looks at the right again. (Asked first, a
    // removal committed between the checks and the start went unseen, and the session went on
    // sending the room's events to a user no longer in it.)
    let rx = node.chat.as_ref().expect("chat role").events.subscribe();
    let newest = read_feed(&node, -1, 0).await?.last_id.unwrap_or(0);
    let checks = rooms.iter().cloned().map(|r| {
        let (node, u) = (node.clone(), u.clone());
        async move {
            // Refused as a read of the room's history is: 404 when the user may not see it,
            // 403 for a closed room they are not in (it was 404 for both).
            let _: Value = mgc(&node, "chat.check_read", json!({ "user": u, "room": r })).await?;
            Ok::<(), ApiError>(())
        }
    });
    let mut checks = futures_util::stream::iter(checks).buffer_unordered(SESSION_CHECKS_AT_ONCE);
    while let Some(checked) = checks.next().await {
        checked?;
    }
    drop(checks);
    let after = match q.after {
        Some(a) if a < 0 => {
            return Err(ApiError::bad_request(format!(
                "after {a}: an event id is 0 or more (0: every event of the rooms)"
            )));
        }
        // Events past the newest do not exist — or were lost with a site, their ids to be
        // given again: a session resuming there would skip those.
        Some(a) if a > newest => {
            return Err(ApiError::bad_request(format!(
                "after {a} is past the newest event, {newest}: the events after it were lost \
                 in a failover or never existed; read the rooms' history again and resume from \
                 its last event"
            )));
        }
        Some(a) => a,
        None => newest,
    };
    // Checked after the query: a client learns first what is wrong in what it asked.
    let ws = ws.map_err(|e| {
        ApiError::bad_request(format!(
            "this route is a WebSocket: open it with a WebSocket client ({})",
            e.body_text()
        ))
    })?;
    let token = bearer(&headers, q.token.as_deref())
        .unwrap_or_default()
        .to_string();
    Ok(ws
        .read_buffer_size(SESSION_READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(SESSION_MESSAGE_MAX)
        .max_frame_size(SESSION_MESSAGE_MAX)
        .on_upgrade(move |socket| {
            let who = Who { user: u, token };
            session(node, who, rooms, after, rx, socket)
        }))
}

/// Whose session it is: the user, and the token it signed in with (looked at again now and
/// then: a user removed, its tokens gone, is not sent a room's events for good).
struct Who {
    user: String,
    token: String,
}

/// After an event that may end the user's right to read its room — the user removed from
/// it, or the room's privacy changed — the room leaves the session unless the user still may
/// read it (asked again; unknown counts as no). A member made a manager or a member only
/// (`RoomUpdated` with a subject) reads as before: not asked.
async fn recheck_access(
    node: &Shared,
    user: &str,
    rooms: &mut HashSet<String>,
    e: &tandem_chat::Event,
) {
    let may_change = match e.kind {
        EventKind::MemberRemoved => e.subject.as_deref() == Some(user),
        EventKind::RoomUpdated => e.subject.is_none(),
        _ => false,
    };
    if !may_change || !rooms.contains(&e.room) {
        return;
    }
    let still = mgc::<Value>(
        node,
        "chat.can_read",
        json!({ "user": user, "room": e.room }),
    )
    .await;
    if !matches!(still, Ok(v) if v["can_read"] == true) {
        rooms.remove(&e.room);
    }
}

/// Sends the backlog after `after` read from the feed, then the live broadcast, skipping what
/// was already sent; a session that falls behind the broadcast re-reads from the feed.
async fn session(
    node: Shared,
    who: Who,
    mut rooms: HashSet<String>,
    mut last: i64,
    mut rx: broadcast::Receiver<crate::chat_feed::FeedItem>,
    mut socket: WebSocket,
) {
    let _open = crate::metrics::SessionCount::open();
    let every = Duration::from_millis(
        node.topology
            .chat
            .as_ref()
            .map_or(tandem_topology::CHAT_SESSION_PING_MS_DEFAULT, |c| {
                c.session_ping_ms
            }),
    );
    // A client that takes in nothing for as long as a silent one may stay is gone too.
    let bound = every * tandem_topology::CHAT_SESSION_SILENT_PINGS;
    if !catch_up(&node, &who.user, &mut rooms, &mut last, &mut socket, bound).await {
        return;
    }
    if rooms.is_empty() {
        send_within(
            &mut socket,
            Message::Close(Some(no_room_left())),
            CLOSE_WAIT,
        )
        .await;
        return;
    }
    let ready = json!({ "type": "ready", "last_id": last }).to_string();
    if !send_within(&mut socket, Message::Text(ready.into()), bound).await {
        return;
    }
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unanswered = 0u32;
    loop {
        tokio::select! {
            _ = ping.tick() => {
                // A client gone without closing (its network lost, its device asleep) answers
                // nothing: its session ends instead of staying open for good.
                if unanswered >= tandem_topology::CHAT_SESSION_SILENT_PINGS {
                    let gone = CloseFrame {
                        code: close_code::AWAY,
                        reason: "no answer to pings".into(),
                    };
                    send_within(&mut socket, Message::Close(Some(gone)), CLOSE_WAIT).await;
                    return;
                }
                unanswered += 1;
                if !send_within(&mut socket, Message::Ping(Default::default()), bound).await {
                    return;
                }
                // A token that signs in no one any more (its user removed) ends the session;
                // one that cannot be checked now (the users' database failing over) does not.
                if let Err(e) = user_of_token(&node, &who.token).await
                    && e.status == axum::http::StatusCode::UNAUTHORIZED
                {
                    let revoked = CloseFrame {
                        code: close_code::POLICY,
                        reason: "the token signs in no user any more".into(),
                    };
                    send_within(&mut socket, Message::Close(Some(revoked)), CLOSE_WAIT).await;
                    return;
                }
            }
            got = rx.recv() => match got {
                Ok(crate::chat_feed::FeedItem::Resumed) => {
                    if !catch_up(&node, &who.user, &mut rooms, &mut last, &mut socket, bound).await {
                        return;
                    }
                }
                Ok(crate::chat_feed::FeedItem::Event(live)) => {
                    let e = &live.event;
                    if e.id <= last || !rooms.contains(&e.room) {
                        continue;
                    }
                    last = e.id;
                    if !send_within(&mut socket, Message::Text(live.frame()), bound).await {
                        return;
                    }
                    recheck_access(&node, &who.user, &mut rooms, e).await;
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    if !catch_up(&node, &who.user, &mut rooms, &mut last, &mut socket, bound).await {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => {
                    // The node is stopping: the client is told so, and reconnects elsewhere.
                    let away = CloseFrame {
                        code: close_code::AWAY,
                        reason: "the node is stopping".into(),
                    };
                    send_within(&mut socket, Message::Close(Some(away)), CLOSE_WAIT).await;
                    return;
                }
            },
            msg = socket.recv() => {
                if client_left(msg) {
                    return;
                }
                // Anything heard (a pong above all) says the client is there.
                unanswered = 0;
            }
        }
        if rooms.is_empty() {
            send_within(
                &mut socket,
                Message::Close(Some(no_room_left())),
                CLOSE_WAIT,
            )
            .await;
            return;
        }
    }
}

/// The close of a session none of whose rooms the user may read any more (removed from them,
/// or they were made closed or secret): a policy close that says so (it closed with no code).
fn no_room_left() -> CloseFrame {
    CloseFrame {
        code: close_code::POLICY,
        reason: "none of this session's rooms may be read by you any more".into(),
    }
}

/// How long the frame that ends a session may wait for its client: the session ends anyway,
/// and a node that stops must not wait on a client that reads nothing.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Hands one frame to the client's connection: false once the client is gone — or has taken in
/// nothing for `bound`. A client that stops reading (stalled, or reading nothing on purpose)
/// fills its connection's buffers, and a send then waits for good: its session, the pings that
/// would have ended it included, would stay open as long as the client kept the connection.
async fn send_within(socket: &mut WebSocket, m: Message, bound: Duration) -> bool {
    matches!(
        tokio::time::timeout(bound, socket.send(m)).await,
        Ok(Ok(()))
    )
}

/// Whether what the client sent ends the session: a close, an error, or the end of the stream.
fn client_left(msg: Option<Result<Message, axum::Error>>) -> bool {
    matches!(msg, Some(Ok(Message::Close(_))) | None | Some(Err(_)))
}

/// Why a catch-up stopped.
enum Stopped {
    /// The client is gone.
    Socket,
    /// The feed could not be read (its database unreachable, or failing over).
    Feed(String),
}

/// Sends every event of the session's rooms after `last` read from the feed, moving `last`:
/// one try, which the first failure stops.
async fn catch_up_once(
    node: &Shared,
    user: &str,
    rooms: &mut HashSet<String>,
    last: &mut i64,
    socket: &mut WebSocket,
    bound: Duration,
) -> Result<(), Stopped> {
    loop {
        let events = read_feed(node, *last, 0)
            .await
            .map_err(|e| Stopped::Feed(e.to_string()))?
            .events;
        if events.is_empty() {
            return Ok(());
        }
        for e in events {
            *last = e.id;
            if rooms.contains(&e.room) {
                let m = Message::Text(crate::chat_feed::event_frame(&e));
                if !send_within(socket, m, bound).await {
                    return Err(Stopped::Socket);
                }
                recheck_access(node, user, rooms, &e).await;
            }
        }
    }
}

/// A session's catch-up (its backlog, then again after the feed resumed or after it fell
/// behind): a feed that cannot be read — its database failing over, which is when the feed
/// resumes, or killed just as the session opens — is read again every `FEED_RETRY_MS` for as
/// long as the client stays. False once the client is gone.
async fn catch_up(
    node: &Shared,
    user: &str,
    rooms: &mut HashSet<String>,
    last: &mut i64,
    socket: &mut WebSocket,
    bound: Duration,
) -> bool {
    loop {
        match catch_up_once(node, user, rooms, last, socket, bound).await {
            Ok(()) => return true,
            Err(Stopped::Socket) => return false,
            Err(Stopped::Feed(e)) => {
                tracing::debug!(
                    "a live session's feed cannot be read ({e}); again in {FEED_RETRY_MS} ms"
                );
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(FEED_RETRY_MS)) => {}
                    msg = socket.recv() => if client_left(msg) {
                        return false;
                    },
                }
            }
        }
    }
}

/// The chat API's routes, each behind [`signed_in`].
pub(crate) fn routes(node: &Shared) -> Router<Shared> {
    Router::new()
        .route("/api/v1/categories", get(categories).post(add_category))
        .route("/api/v1/rooms", get(rooms).post(create_room))
        .route("/api/v1/rooms/{room}", get(get_room).patch(update_room))
        .route(
            "/api/v1/rooms/{room}/members",
            get(members).post(add_member),
        )
        .route(
            "/api/v1/rooms/{room}/members/{user}",
            delete(remove_member).patch(set_manager),
        )
        .route(
            "/api/v1/rooms/{room}/messages",
            get(history).post(post_message),
        )
        .route("/api/v1/rooms/{room}/read", post(mark_read))
        .route("/api/v1/rooms/{room}/unread", get(unread))
        .route("/api/v1/search", get(search))
        .route("/api/v1/events", get(events))
        .route_layer(axum::middleware::from_fn_with_state(
            node.clone(),
            signed_in,
        ))
}
