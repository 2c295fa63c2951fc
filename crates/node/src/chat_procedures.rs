//! The chat domain's operations on `mgc`, by name: what chat nodes call on the db node holding
//! the chat database. Each takes the (already authenticated) user as an argument.

use crate::error::{ApiError, ErrorBody};
use crate::procedures::{Args, args};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tandem_chat as chat;
use tandem_store::Database;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddCategory {
    user: String,
    name: String,
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRoom {
    user: String,
    room: chat::NewRoom,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateRoom {
    user: String,
    room: String,
    update: chat::RoomUpdate,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserRoom {
    user: String,
    room: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserOnly {
    user: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddMember {
    user: String,
    room: String,
    member: String,
    #[serde(default)]
    manager: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveMember {
    user: String,
    room: String,
    member: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetManager {
    user: String,
    room: String,
    member: String,
    manager: bool,
}

/// A change the deployment's operator makes to a room's members (`chat.operator_add_member`,
/// `chat.operator_set_manager`): recorded as sent by `operator`, in any room that exists.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OperatorMember {
    room: String,
    member: String,
    manager: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ForgetUser {
    member: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PostBatch {
    posts: Vec<Post>,
}

/// One post, as a chat node sends it (alone or in a batch).
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Post {
    pub(crate) user: String,
    pub(crate) room: String,
    pub(crate) text: String,
    pub(crate) reply_to: Option<i64>,
    /// The client's key for this post (`Idempotency-Key`): a retry is answered with the
    /// message the first made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct History {
    user: String,
    room: String,
    #[serde(default)]
    query: chat::HistoryQuery,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Search {
    user: String,
    query: String,
    /// Sent only when given: a db node of an earlier version refuses the field.
    #[serde(default)]
    before: Option<i64>,
    limit: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MarkRead {
    user: String,
    room: String,
    event_id: i64,
}

/// The procedures that run without a blocking thread: posting (the hot path) awaits its
/// transaction. None for every other procedure. The answer is its JSON text, written straight
/// from the events (no `Value` in between).
pub(crate) async fn run_async(
    db: &Database,
    p: &str,
    a: &Args,
) -> Option<Result<Box<RawValue>, ApiError>> {
    match p {
        "chat.post" => Some(match args::<Post>(p, a) {
            Ok(a) => post_one(db, a).await.and_then(|e| json_text(&e)),
            Err(e) => Err(e),
        }),
        "chat.post_batch" => {
            let a: PostBatch = match args(p, a) {
                Ok(a) => a,
                Err(e) => return Some(Err(e)),
            };
            if a.posts.len() > POST_BATCH_MAX {
                return Some(Err(ApiError::bad_request(format!(
                    "{} posts in one batch; at most {POST_BATCH_MAX}",
                    a.posts.len()
                ))));
            }
            // Submitted together, they share a group commit; each gets its own answer.
            let answers =
                futures_util::future::join_all(a.posts.into_iter().map(|p| post_one(db, p))).await;
            let items: Vec<BatchItem> = answers
                .into_iter()
                .map(|r| match r {
                    Ok(ok) => BatchItem::Ok { ok },
                    Err(e) => BatchItem::Err {
                        error: ErrorBody {
                            code: e.code.to_string(),
                            message: e.message,
                        },
                        status: e.status.as_u16(),
                    },
                })
                .collect();
            Some(json_text(&items))
        }
        _ => None,
    }
}

/// One post's answer in a batch's: `{"ok": event}` or `{"error": {code, message}, "status": n}`.
#[derive(Serialize)]
#[serde(untagged)]
pub(crate) enum BatchItem {
    Ok { ok: chat::Event },
    Err { error: ErrorBody, status: u16 },
}

/// Posts one chat node may send in one `chat.post_batch` call.
pub(crate) const POST_BATCH_MAX: usize = 512;

async fn post_one(db: &Database, a: Post) -> Result<chat::Event, ApiError> {
    let p = chat::NewPost {
        room: &a.room,
        text: &a.text,
        reply_to: a.reply_to,
        key: a.key.as_deref(),
    };
    chat::post_async(db, &a.user, p)
        .await
        .map_err(ApiError::from)
}

fn json_text(v: &impl Serialize) -> Result<Box<RawValue>, ApiError> {
    serde_json::value::to_raw_value(v).map_err(|e| ApiError::bad_request(e.to_string()))
}

fn to(v: impl Serialize) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError::bad_request(e.to_string()))
}

pub(crate) fn run(db: &Database, p: &str, a: &Args) -> Result<Value, ApiError> {
    match p {
        "chat.add_category" => {
            let a: AddCategory = args(p, a)?;
            to(chat::add_category(
                db,
                &a.user,
                &a.name,
                a.description.as_deref(),
            )?)
        }
        "chat.categories" => to(chat::categories(db)?),
        "chat.create_room" => {
            let a: CreateRoom = args(p, a)?;
            to(chat::create_room(db, &a.user, &a.room)?)
        }
        "chat.update_room" => {
            let a: UpdateRoom = args(p, a)?;
            to(chat::update_room(db, &a.user, &a.room, &a.update)?)
        }
        "chat.room" => {
            let a: UserRoom = args(p, a)?;
            to(chat::room(db, &a.user, &a.room)?)
        }
        "chat.rooms" => {
            let a: UserOnly = args(p, a)?;
            to(chat::rooms(db, &a.user)?)
        }
        "chat.members" => {
            let a: UserRoom = args(p, a)?;
            to(chat::members(db, &a.user, &a.room)?)
        }
        "chat.add_member" => {
            let a: AddMember = args(p, a)?;
            to(chat::add_member(
                db, &a.user, &a.room, &a.member, a.manager,
            )?)
        }
        "chat.set_manager" => {
            let a: SetManager = args(p, a)?;
            to(chat::set_manager(
                db, &a.user, &a.room, &a.member, a.manager,
            )?)
        }
        "chat.operator_add_member" => {
            let a: OperatorMember = args(p, a)?;
            to(chat::add_member_as_operator(
                db, &a.room, &a.member, a.manager,
            )?)
        }
        "chat.operator_set_manager" => {
            let a: OperatorMember = args(p, a)?;
            to(chat::set_manager_as_operator(
                db, &a.room, &a.member, a.manager,
            )?)
        }
        // `{rooms, handed_over, without_members}`: the rooms left, those whose management
        // passed to another member, those left without members.
        "chat.forget_user" => {
            let a: ForgetUser = args(p, a)?;
            to(chat::forget_user(db, &a.member)?)
        }
        "chat.remove_member" => {
            let a: RemoveMember = args(p, a)?;
            chat::remove_member(db, &a.user, &a.room, &a.member)?;
            Ok(json!({}))
        }
        "chat.post" => {
            let a: Post = args(p, a)?;
            to(chat::post(db, &a.user, &a.room, &a.text, a.reply_to)?)
        }
        "chat.history" => {
            let a: History = args(p, a)?;
            to(chat::history(db, &a.user, &a.room, &a.query)?)
        }
        "chat.search" => {
            let a: Search = args(p, a)?;
            to(chat::search(db, &a.user, &a.query, a.before, a.limit)?)
        }
        "chat.can_read" => {
            let a: UserRoom = args(p, a)?;
            Ok(json!({ "can_read": chat::can_read(db, &a.user, &a.room)? }))
        }
        "chat.check_read" => {
            let a: UserRoom = args(p, a)?;
            chat::check_readable(db, &a.user, &a.room)?;
            Ok(json!({}))
        }
        "chat.mark_read" => {
            let a: MarkRead = args(p, a)?;
            chat::mark_read(db, &a.user, &a.room, a.event_id)?;
            Ok(json!({}))
        }
        "chat.unread" => {
            let a: UserRoom = args(p, a)?;
            Ok(json!({ "unread": chat::unread(db, &a.user, &a.room)? }))
        }
        other => Err(ApiError::bad_request(format!(
            "procedure {other} does not exist on the chat database"
        ))),
    }
}
