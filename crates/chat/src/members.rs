//! Members of a room: who posts in it (and reads it, when it is closed or secret), and which of
//! them manage it. Every change of membership is an event in the room's history.
//!
//! A room always keeps at least one manager while it has members: the last one can neither
//! leave, be removed nor step down; a user removed from the deployment hands the management of
//! the rooms it was the last manager of to the member who joined first. A room whose every
//! member was removed keeps no one: the deployment's operator gives it a member again
//! (`add_member_as_operator`), with no user's rights needed.

use crate::ChatError;
use crate::access::{Access, no_such_room, readable, visible};
use crate::events::{EventKind, NewEvent, append};
use crate::names::{NameOf, check_name};
use crate::rooms::{Privacy, privacy_at};
use crate::schema::{Query, read};
use serde::{Deserialize, Serialize};
use tandem_store::rusqlite::Row;
use tandem_store::{Database, Tx, Value};

/// A member of a room.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The member's user name.
    pub user: String,
    /// Whether the member manages the room (changes it, adds and removes members).
    pub manager: bool,
    /// Commit time of joining (ms since the Unix epoch).
    pub joined_ms: i64,
}

/// The members of `room`, sorted by user name. Only for users who may read the room: NotFound
/// for a secret room `user` is not in, Forbidden for a closed one.
pub fn members(db: &Database, user: &str, room: &str) -> Result<Vec<Member>, ChatError> {
    check_name(NameOf::User, user)?;
    check_name(NameOf::Room, room)?;
    read(db, |c| {
        readable(c, user, room)?;
        c.rows(
            "SELECT user, manager, joined_ms FROM members WHERE room = ?1 ORDER BY user",
            [room],
            member_row_of,
        )
    })
}

/// Who changes a room's members: one of its users, under the room's rules, or the deployment's
/// operator, who may change any room that exists (the way back for a room left without a
/// manager or without members).
#[derive(Clone, Debug)]
enum Actor {
    User(String),
    Operator,
}

impl Actor {
    /// The name the change's event is recorded as sent by.
    fn name(&self) -> &str {
        match self {
            Actor::User(u) => u,
            Actor::Operator => OPERATOR,
        }
    }

    /// What the actor may do in `room`: for a user, as `visible` says (NotFound when the user
    /// may not know of it); the operator manages every room that exists.
    fn access(&self, q: &impl Query, room: &str) -> Result<Access, ChatError> {
        match self {
            Actor::User(u) => visible(q, u, room),
            Actor::Operator => {
                let privacy = q
                    .row("SELECT privacy FROM rooms WHERE name = ?1", [room], |r| {
                        privacy_at(r, 0)
                    })?
                    .ok_or_else(|| no_such_room(room))?;
                Ok(Access {
                    privacy,
                    member: false,
                    manager: true,
                })
            }
        }
    }
}

/// Adds `member` to `room` (as a manager when `manager`) and records a `MemberAdded` event.
/// Managers add anyone; in an open room any user may add themself, not as a manager. Forbidden
/// otherwise (NotFound when `user` may not know the room exists); Conflict if `member` is
/// already a member.
pub fn add_member(
    db: &Database,
    user: &str,
    room: &str,
    member: &str,
    manager: bool,
) -> Result<Member, ChatError> {
    check_name(NameOf::User, user)?;
    add_member_by(db, Actor::User(user.to_string()), room, member, manager)
}

/// Adds `member` to `room` as the deployment's operator (recorded as sent by `operator`):
/// any room that exists, secret or without members included — the way back for a room whose
/// every member or manager was removed. NotFound when no room has that name; Conflict if
/// `member` is already a member (`set_manager_as_operator` makes a member a manager). The
/// caller checks that `member` is a user of the deployment: this crate knows no users.
pub fn add_member_as_operator(
    db: &Database,
    room: &str,
    member: &str,
    manager: bool,
) -> Result<Member, ChatError> {
    add_member_by(db, Actor::Operator, room, member, manager)
}

fn add_member_by(
    db: &Database,
    actor: Actor,
    room: &str,
    member: &str,
    manager: bool,
) -> Result<Member, ChatError> {
    check_name(NameOf::Room, room)?;
    check_name(NameOf::User, member)?;
    let user = actor.name().to_string();
    let operator = matches!(actor, Actor::Operator);
    let (room, member) = (room.to_string(), member.to_string());
    let done = db.write(move |tx: &mut Tx<'_>| {
        let r = actor.access(tx, &room)?;
        let joining = !operator && member == user;
        if !r.manager {
            if !joining {
                return Err(ChatError::Forbidden(format!(
                    "only managers of room {room} add other members, and {user} is not one"
                )));
            }
            if r.privacy != Privacy::Open {
                return Err(ChatError::Forbidden(format!(
                    "room {room} is {}: ask one of its managers to add you",
                    r.privacy.as_str()
                )));
            }
            if manager {
                return Err(ChatError::Forbidden(format!(
                    "only managers of room {room} make managers; join without asking to manage"
                )));
            }
        }
        if membership(tx, &room, &member)?.is_some() {
            return Err(ChatError::Conflict(format!(
                "{member} is already a member of room {room}{}",
                if manager {
                    ": make it a manager with PATCH /api/v1/rooms/{room}/members/{member} \
                     (tandem chat room set-manager)"
                } else {
                    ""
                }
            )));
        }
        let added = Member {
            user: member.clone(),
            manager,
            joined_ms: tx.time_ms(),
        };
        tx.insert("members", member_values(&room, &added))?;
        let text = match (joining, manager) {
            (true, false) => format!("{member} joined"),
            (true, true) => format!("{member} joined as a manager"),
            (false, false) => format!("{user} added {member}"),
            (false, true) => format!("{user} added {member} as a manager"),
        };
        append(
            tx,
            NewEvent {
                room: &room,
                kind: EventKind::MemberAdded,
                sender: &user,
                text,
                subject: Some(&member),
                reply_to: None,
            },
        )?;
        Ok(added)
    })?;
    Ok(done.value)
}

/// Makes `member`, a member of `room`, a manager of it (`manager`) or a member only, and
/// records a `RoomUpdated` event whose `subject` is `member`. Managers only: Forbidden for
/// other users who may see the room, NotFound for those who may not; NotFound when `member` is
/// not a member; Conflict when it would take the room's last manager away (as leaving does).
/// A member that already is what is asked is answered as it is, and nothing is written.
pub fn set_manager(
    db: &Database,
    user: &str,
    room: &str,
    member: &str,
    manager: bool,
) -> Result<Member, ChatError> {
    check_name(NameOf::User, user)?;
    set_manager_by(db, Actor::User(user.to_string()), room, member, manager)
}

/// `set_manager` as the deployment's operator (recorded as sent by `operator`), in any room
/// that exists: the way back for a room left with members but no manager.
pub fn set_manager_as_operator(
    db: &Database,
    room: &str,
    member: &str,
    manager: bool,
) -> Result<Member, ChatError> {
    set_manager_by(db, Actor::Operator, room, member, manager)
}

fn set_manager_by(
    db: &Database,
    actor: Actor,
    room: &str,
    member: &str,
    manager: bool,
) -> Result<Member, ChatError> {
    check_name(NameOf::Room, room)?;
    check_name(NameOf::User, member)?;
    let user = actor.name().to_string();
    let operator = matches!(actor, Actor::Operator);
    let (room, member) = (room.to_string(), member.to_string());
    let done = db.write(move |tx: &mut Tx<'_>| {
        let r = actor.access(tx, &room)?;
        if !r.manager {
            return Err(ChatError::Forbidden(format!(
                "only managers of room {room} make or unmake managers, and {user} is not one"
            )));
        }
        let Some(mut m) = member_row(tx, &room, &member)? else {
            return Err(ChatError::NotFound(format!(
                "{member} is not a member of room {room}"
            )));
        };
        if m.manager == manager {
            return Ok(m);
        }
        if !manager && managers(tx, &room)? == 1 {
            return Err(ChatError::Conflict(format!(
                "{member} is the last manager of room {room}, and a room keeps at least one: \
                 make another member a manager first"
            )));
        }
        m.manager = manager;
        tx.update("members", member_values(&room, &m))?;
        let text = match (manager, !operator && member == user) {
            (true, _) => format!("{user} made {member} a manager"),
            (false, true) => format!("{member} stepped down as a manager"),
            (false, false) => format!("{user} made {member} no longer a manager"),
        };
        append(
            tx,
            NewEvent {
                room: &room,
                kind: EventKind::RoomUpdated,
                sender: &user,
                text,
                subject: Some(&member),
                reply_to: None,
            },
        )?;
        Ok(m)
    })?;
    Ok(done.value)
}

/// Removes `member` from `room` and records a `MemberRemoved` event. Managers remove anyone; a
/// member may leave. Forbidden otherwise (NotFound when `user` may not know the room exists);
/// NotFound if `member` is not a member; Conflict when `member` is the room's last manager.
pub fn remove_member(db: &Database, user: &str, room: &str, member: &str) -> Result<(), ChatError> {
    check_name(NameOf::User, user)?;
    check_name(NameOf::Room, room)?;
    check_name(NameOf::User, member)?;
    let (user, room, member) = (user.to_string(), room.to_string(), member.to_string());
    db.write(move |tx: &mut Tx<'_>| {
        let r = visible(tx, &user, &room)?;
        let leaving = member == user;
        if !leaving && !r.manager {
            return Err(ChatError::Forbidden(format!(
                "only managers of room {room} remove other members, and {user} is not one"
            )));
        }
        let Some(was_manager) = membership(tx, &room, &member)? else {
            return Err(ChatError::NotFound(format!(
                "{member} is not a member of room {room}"
            )));
        };
        if was_manager {
            let managers = managers(tx, &room)?;
            assert!(managers >= 1, "a manager was just read in room {room}");
            if managers == 1 {
                return Err(ChatError::Conflict(format!(
                    "{member} is the last manager of room {room}, and a room keeps at least one: \
                     add another manager first"
                )));
            }
        }
        tx.delete(
            "members",
            vec![Value::Text(room.clone()), Value::Text(member.clone())],
        )?;
        let text = if leaving {
            format!("{member} left")
        } else {
            format!("{user} removed {member}")
        };
        append(
            tx,
            NewEvent {
                room: &room,
                kind: EventKind::MemberRemoved,
                sender: &user,
                text,
                subject: Some(&member),
                reply_to: None,
            },
        )?;
        Ok(())
    })?;
    Ok(())
}

/// Who a change made by the deployment's operator (not a user) is recorded as.
const OPERATOR: &str = "operator";

/// Deletes every row of `table` (primary key `(user_column, other_column)`) of `user`, one
/// journaled delete each.
fn delete_all_of(
    tx: &mut Tx<'_>,
    user: &str,
    table: &str,
    user_column: &str,
    other_column: &str,
) -> Result<(), ChatError> {
    let others = tx.query(
        &format!("SELECT {other_column} FROM {table} WHERE {user_column} = ?1"),
        [user],
        |r| r.get::<_, String>(0),
    )?;
    for other in others {
        tx.delete(
            table,
            vec![Value::Text(user.to_string()), Value::Text(other)],
        )?;
    }
    Ok(())
}

/// What `forget_user` did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forgotten {
    /// The rooms the user was taken out of, sorted by name.
    pub rooms: Vec<String>,
    /// The rooms the user was the last manager of, each with the member who manages it now.
    pub handed_over: Vec<Handover>,
    /// The rooms the user was the last member of: they keep no member, and only the
    /// deployment's operator can give them one (`add_member_as_operator`) — for a secret room
    /// nobody else even sees it.
    pub without_members: Vec<String>,
}

/// A room whose management passed to another member when its last manager was removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    /// The room.
    pub room: String,
    /// Its new manager: of the members left, the one who joined first (ties by name).
    pub manager: String,
}

/// Takes `member` — a user removed from the deployment — out of every room, with a
/// `MemberRemoved` event in each (its live sessions lose the rooms), and drops its read
/// positions and post keys: a user later added under the same name starts with none of them.
/// A room it was the last manager of is managed from then on by the member left who joined it
/// first (ties by name), told by a `RoomUpdated` event sent by `operator` whose subject is the
/// new manager: no room keeps members and no manager. A room it was the last member of keeps
/// none (`Forgotten::without_members`).
pub fn forget_user(db: &Database, member: &str) -> Result<Forgotten, ChatError> {
    check_name(NameOf::User, member)?;
    let member = member.to_string();
    let done = db.write(move |tx: &mut Tx<'_>| {
        let rooms = tx.query(
            "SELECT room, manager FROM members WHERE user = ?1 ORDER BY room",
            [&member],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?)),
        )?;
        let mut done = Forgotten::default();
        for (room, was_manager) in rooms {
            tx.delete(
                "members",
                vec![Value::Text(room.clone()), Value::Text(member.clone())],
            )?;
            append(
                tx,
                NewEvent {
                    room: &room,
                    kind: EventKind::MemberRemoved,
                    sender: OPERATOR,
                    text: format!("{member} was removed from the deployment"),
                    subject: Some(&member),
                    reply_to: None,
                },
            )?;
            if was_manager && managers(tx, &room)? == 0 {
                let first = tx.row(
                    "SELECT user, manager, joined_ms FROM members WHERE room = ?1 \
                     ORDER BY joined_ms, user LIMIT 1",
                    [&room],
                    member_row_of,
                )?;
                match first {
                    None => done.without_members.push(room.clone()),
                    Some(mut heir) => {
                        debug_assert!(!heir.manager, "room {room} has no manager left");
                        heir.manager = true;
                        tx.update("members", member_values(&room, &heir))?;
                        append(
                            tx,
                            NewEvent {
                                room: &room,
                                kind: EventKind::RoomUpdated,
                                sender: OPERATOR,
                                text: format!(
                                    "{} manages room {room} now: {member}, its last manager, \
                                     was removed from the deployment",
                                    heir.user
                                ),
                                subject: Some(&heir.user),
                                reply_to: None,
                            },
                        )?;
                        done.handed_over.push(Handover {
                            room: room.clone(),
                            manager: heir.user,
                        });
                    }
                }
            }
            // Pair assertion with `remove_member`'s rule: a room with members has a manager
            // (unless it had none before, which only an older build's removal left).
            debug_assert!(
                !was_manager || managers(tx, &room)? > 0 || done.without_members.contains(&room),
                "room {room} keeps members and no manager"
            );
            done.rooms.push(room);
        }
        delete_all_of(tx, &member, "read_positions", "user", "room")?;
        // The user's post keys too: a name given again starts with none (a key kept answered
        // the new user's post with the old one's message, naming a room the new user may not
        // see).
        delete_all_of(tx, &member, "post_keys", "sender", "key")?;
        Ok::<_, ChatError>(done)
    })?;
    Ok(done.value)
}

/// How many managers `room` has.
fn managers(q: &impl Query, room: &str) -> Result<i64, ChatError> {
    Ok(q.row(
        "SELECT COUNT(*) FROM members WHERE room = ?1 AND manager = 1",
        [room],
        |r| r.get::<_, i64>(0),
    )?
    .unwrap_or(0))
}

/// Reads a row selected as `user, manager, joined_ms` of `members`.
fn member_row_of(r: &Row<'_>) -> tandem_store::rusqlite::Result<Member> {
    Ok(Member {
        user: r.get(0)?,
        manager: r.get(1)?,
        joined_ms: r.get(2)?,
    })
}

/// `user`'s row in `room`, when a member.
fn member_row(q: &impl Query, room: &str, user: &str) -> Result<Option<Member>, ChatError> {
    q.row(
        "SELECT user, manager, joined_ms FROM members WHERE room = ?1 AND user = ?2",
        [room, user],
        member_row_of,
    )
}

/// The row of `members` for `m` in `room`, in column order.
fn member_values(room: &str, m: &Member) -> Vec<Value> {
    vec![
        Value::Text(room.to_string()),
        Value::Text(m.user.clone()),
        Value::Integer(i64::from(m.manager)),
        Value::Integer(m.joined_ms),
    ]
}

/// `Some(manager)` when `user` is a member of `room`.
pub(crate) fn membership(
    q: &impl Query,
    room: &str,
    user: &str,
) -> Result<Option<bool>, ChatError> {
    q.row(
        "SELECT manager FROM members WHERE room = ?1 AND user = ?2",
        [room, user],
        |r| r.get::<_, bool>(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{mgc, new_room};
    use crate::{HistoryQuery, create_room, history};

    fn who(db: &Database, user: &str, room: &str) -> Vec<(String, bool)> {
        members(db, user, room)
            .unwrap()
            .into_iter()
            .map(|m| (m.user, m.manager))
            .collect()
    }

    #[test]
    fn managers_add_and_remove_and_each_change_is_in_history() {
        let dir = tempfile::tempdir().unwrap();
        let db = mgc(dir.path());
        create_room(&db, "alice", &new_room("team", Privacy::Closed)).unwrap();
        let bob = add_member(&db, "alice", "team", "bob", false).unwrap();
        assert_eq!((bob.user.as_str(), bob.manager), ("bob", false));
        assert!(bob.joined_ms > 0);
        add_member(&db, "alice", "team", "carol", true).unwrap();
        assert_eq!(
            who(&db, "bob", "team"),
            [
                ("alice".into(), true),
                ("bob".into(), false),
                ("carol".into(), true)
            ]
        );
        let e = add_member(&db, "alice", "team", "bob", false).unwrap_err();
        assert_eq!(
            (e.code(), e.to_string().as_str()),
            ("conflict", "bob is already a member of room team")
        );
        let e = add_member(&db, "alice", "team", "bob", true).unwrap_err();
        assert_eq!(e.code(), "conflict");
        assert!(e.to_string().contains("set-manager"), "{e}");

        remove_member(&db, "carol", "team", "bob").unwrap();
        remove_member(&db, "alice", "team", "alice").unwrap();
        assert_eq!(who(&db, "carol", "team"), [("carol".into(), true)]);

        let page = history(&db, "carol", "team", &HistoryQuery::default()).unwrap();
        let seen: Vec<(EventKind, &str, Option<&str>, &str)> = page
            .events
            .iter()
            .map(|e| {
                (
                    e.kind,
                    e.sender.as_str(),
                    e.subject.as_deref(),
                    e.text.as_str(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                (
                    EventKind::RoomCreated,
                    "alice",
                    None,
                    "alice created the closed room team"
                ),
                (
                    EventKind::MemberAdded,
                    "alice",
                    Some("bob"),
                    "alice added bob"
                ),
                (
                    EventKind::MemberAdded,
                    "alice",
                    Some("carol"),
                    "alice added carol as a manager"
                ),
                (
                    EventKind::MemberRemoved,
                    "carol",
                    Some("bob"),
                    "carol removed bob"
                ),
                (
                    EventKind::MemberRemoved,
                    "alice",
                    Some("alice"),
                    "alice left"
                ),
            ]
        );
    }

    #[test]
    fn who_may_change_membership() {
        let dir = tempfile::tempdir().unwrap();
        let db = mgc(dir.path());
        create_room(&db, "alice", &new_room("open", Privacy::Open)).unwrap();
        create_room(&db, "alice", &new_room("closed", Privacy::Closed)).unwrap();
        create_room(&db, "alice", &new_room("secret", Privacy::Secret)).unwrap();
        let lsn = db.identity().lsn;
        let code = |r: Result<Member, ChatError>| r.unwrap_err().code();
        // Nobody but a manager adds someone else, or makes a manager.
        assert_eq!(
            code(add_member(&db, "bob", "open", "carol", false)),
            "forbidden"
        );
        assert_eq!(
            code(add_member(&db, "bob", "open", "bob", true)),
            "forbidden"
        );
        // Closed rooms are joined only through a manager; secret ones are not even seen.
        assert_eq!(
            code(add_member(&db, "bob", "closed", "bob", false)),
            "forbidden"
        );
        assert_eq!(
            code(add_member(&db, "bob", "secret", "bob", false)),
            "not_found"
        );
        assert_eq!(
            code(add_member(&db, "bob", "nowhere", "bob", false)),
            "not_found"
        );
        assert_eq!(
            code(add_member(&db, "bob", "open", "no one", false)),
            "invalid"
        );
        assert_eq!(db.identity().lsn, lsn, "refusals write nothing");

        // Anyone joins an open room, once.
        add_member(&db, "bob", "open", "bob", false).unwrap();
        assert_eq!(
            code(add_member(&db, "bob", "open", "bob", false)),
            "conflict"
        );
        // A member that is not a manager still adds no one.
        assert_eq!(
            code(add_member(&db, "bob", "open", "carol", false)),
            "forbidden"
        );

        // Members leave; only managers remove others; non-members are not found.
        let rcode = |r: Result<(), ChatError>| r.unwrap_err().code();
        add_member(&db, "carol", "open", "carol", false).unwrap();
        assert_eq!(
            rcode(remove_member(&db, "bob", "open", "carol")),
            "forbidden"
        );
        assert_eq!(
            rcode(remove_member(&db, "alice", "open", "dave")),
            "not_found"
        );
        assert_eq!(
            rcode(remove_member(&db, "dave", "open", "dave")),
            "not_found"
        );
        assert_eq!(
            rcode(remove_member(&db, "bob", "secret", "alice")),
            "not_found"
        );
        remove_member(&db, "bob", "open", "bob").unwrap();
        remove_member(&db, "alice", "open", "carol").unwrap();
        let open = crate::room(&db, "alice", "open").unwrap();
        assert_eq!(open.members, 1);

        // Leaving a secret room: it disappears for the one who left.
        add_member(&db, "alice", "secret", "bob", false).unwrap();
        remove_member(&db, "bob", "secret", "bob").unwrap();
        assert_eq!(
            crate::room(&db, "bob", "secret").unwrap_err().code(),
            "not_found"
        );
    }

    #[test]
    fn the_last_manager_stays() {
        let dir = tempfile::tempdir().unwrap();
        let db = mgc(dir.path());
        create_room(&db, "alice", &new_room("team", Privacy::Closed)).unwrap();
        add_member(&db, "alice", "team", "bob", false).unwrap();
        let e = remove_member(&db, "alice", "team", "alice").unwrap_err();
        assert_eq!(e.code(), "conflict");
        assert!(e.to_string().contains("last manager"), "{e}");
        add_member(&db, "alice", "team", "carol", true).unwrap();
        remove_member(&db, "carol", "team", "alice").unwrap();
        let e = remove_member(&db, "carol", "team", "carol").unwrap_err();
        assert_eq!(e.code(), "conflict");
        assert_eq!(
            who(&db, "bob", "team"),
            [("bob".into(), false), ("carol".into(), true)]
        );
    }

    #[test]
    fn a_forgotten_user_leaves_no_post_key_behind() {
        let dir = tempfile::tempdir().unwrap();
        let db = mgc(dir.path());
        create_room(&db, "alice", &new_room("vault", Privacy::Secret)).unwrap();
        add_member(&db, "alice", "vault", "bob", false).unwrap();
        create_room(&db, "alice", &new_room("lobby", Privacy::Open)).unwrap();
        let keyed = |room: &str, text: &str| {
            crate::post_with(
                &db,
                "bob",
                crate::NewPost {
                    room,
                    text,
                    reply_to: None,
                    key: Some("k1"),
                },
            )
        };
        keyed("vault", "confidential").unwrap();
        forget_user(&db, "bob").unwrap();
        // A new bob, with the name given again: his key k1 is his own.
        add_member(&db, "bob", "lobby", "bob", false).unwrap();
        let e = keyed("lobby", "hello").unwrap();
        assert_eq!((e.room.as_str(), e.text.as_str()), ("lobby", "hello"));
    }

    /// The events of `room` after id `after`, as (kind, sender, subject, text).
    fn events_after(
        db: &Database,
        room: &str,
        after: i64,
    ) -> Vec<(EventKind, String, Option<String>, String)> {
        // Read as the database holds them: no user may read a room left without members.
        read(db, |c| {
            c.rows(
                &format!(
                    "SELECT {} FROM events WHERE room = ?1 AND id > ?2 ORDER BY id",
                    crate::events::EVENT_COLUMNS
                ),
                (room, after),
                crate::events::event_row,
            )
        })
        .unwrap()
        .into_iter()
        .map(|e| (e.kind, e.sender, e.subject, e.text))
        .collect()
    }

    fn last_id(db: &Database) -> i64 {
        read(db, |c| {
            c.row("SELECT MAX(id) FROM events", [], |r| r.get::<_, i64>(0))
        })
        .unwrap()
        .unwrap()
    }

    /// Adds `users` to `room` in one transaction, all with the same joining time.
    fn join_at_once(db: &Database, room: &str, users: &[&str]) {
        let (room, users): (String, Vec<String>) =
            (room.into(), users.iter().map(|u| u.to_string()).collect());
        db.write(move |tx: &mut Tx<'_>| {
            let now = tx.time_ms();
            for u in &users {
                let m = Member {
                    user: u.clone(),
                    manager: false,
                    joined_ms: now,
                };
                tx.insert("members", member_values(&room, &m))?;
            }
            Ok::<_, ChatError>(())
        })
        .unwrap();
    }

    #[test]
    fn a_removed_last_manager_hands_the_room_to_the_member_who_joined_first() {
        let dir = tempfile::tempdir().unwrap();
        let db = mgc(dir.path());
        // team: zed joined before amy, so zed manages it next, whatever the names' order.
        create_room(&db, "alice", &new_room("team", Privacy::Closed)).unwrap();
        add_member(&db, "alice", "team", "zed", false).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(3));
        add_member(&db, "alice", "team", "amy", false).unwrap();
        // tie: two members who joined at the same moment: the first by name.
        create_room(&db, "alice", &new_room("tie", Privacy::Open)).unwrap();
        join_at_once(&db, "tie", &["mia", "lou"]);
        // shared: another manager is left, nothing is handed over.
        create_room(&db, "alice", &new_room("shared", Privacy::Open)).unwrap();
        add_member(&db, "alice", "shared", "bob", true).unwrap();
        add_member(&db, "alice", "shared", "carl", false).unwrap();
        // vault: alice alone in a secret room.
        create_room(&db, "alice", &new_room("vault", Privacy::Secret)).unwrap();
        // guest: alice only a member.
        create_room(&db, "bob", &new_room("guest", Privacy::Closed)).unwrap();
        add_member(&db, "bob", "guest", "alice", false).unwrap();
        let before = last_id(&db);

        let done = forget_user(&db, "alice").unwrap();
        assert_eq!(done.rooms, ["guest", "shared", "team", "tie", "vault"]);
        assert_eq!(
            done.handed_over,
            [
                Handover {
                    room: "team".into(),
                    manager: "zed".into()
                },
                Handover {
                    room: "tie".into(),
                    manager: "lou".into()
                },
            ]
        );
        assert_eq!(done.without_members, ["vault"]);

        assert_eq!(
            who(&db, "zed", "team"),
            [("amy".into(), false), ("zed".into(), true)]
        );
        assert_eq!(
            who(&db, "lou", "tie"),
            [("lou".into(), true), ("mia".into(), false)]
        );
        assert_eq!(
            who(&db, "bob", "shared"),
            [("bob".into(), true), ("carl".into(), false)]
        );
        assert_eq!(who(&db, "bob", "guest"), [("bob".into(), true)]);
        // The removal, then the handover, each an event of the room.
        assert_eq!(
            events_after(&db, "team", before),
            [
                (
                    EventKind::MemberRemoved,
                    "operator".into(),
                    Some("alice".into()),
                    "alice was removed from the deployment".into()
                ),
                (
                    EventKind::RoomUpdated,
                    "operator".into(),
                    Some("zed".into()),
                    "zed manages room team now: alice, its last manager, was removed from the \
                     deployment"
                        .into()
                ),
            ]
        );
        assert_eq!(events_after(&db, "shared", before).len(), 1);
        // The new manager manages: edits the closed room, adds members and managers.
        let update = crate::RoomUpdate {
            description: Some("ours now".into()),
            ..crate::RoomUpdate::default()
        };
        crate::update_room(&db, "zed", "team", &update).unwrap();
        add_member(&db, "zed", "team", "bea", true).unwrap();
        // The emptied secret room: nobody sees it, its name is taken.
        assert_eq!(
            crate::room(&db, "bob", "vault").unwrap_err().code(),
            "not_found"
        );
        let again = create_room(&db, "bob", &new_room("vault", Privacy::Open));
        assert_eq!(again.unwrap_err().code(), "conflict");
    }

    #[test]
    fn the_operator_gives_a_room_without_members_a_manager_again() {
        let dir = tempfile::tempdir().unwrap();
        let db = mgc(dir.path());
        create_room(&db, "alice", &new_room("vault", Privacy::Secret)).unwrap();
        forget_user(&db, "alice").unwrap();
        let before = last_id(&db);
        let lsn = db.identity().lsn;
        let code = |r: Result<Member, ChatError>| r.unwrap_err().code();
        assert_eq!(
            code(add_member_as_operator(&db, "nowhere", "bob", true)),
            "not_found"
        );
        assert_eq!(
            code(add_member_as_operator(&db, "vault", "no one", true)),
            "invalid"
        );
        assert_eq!(
            code(set_manager_as_operator(&db, "vault", "bob", true)),
            "not_found"
        );
        assert_eq!(db.identity().lsn, lsn, "refusals write nothing");

        let bob = add_member_as_operator(&db, "vault", "bob", true).unwrap();
        assert_eq!((bob.user.as_str(), bob.manager), ("bob", true));
        assert_eq!(
            events_after(&db, "vault", before),
            [(
                EventKind::MemberAdded,
                "operator".into(),
                Some("bob".into()),
                "operator added bob as a manager".into()
            )]
        );
        // bob sees and manages the room again.
        crate::room(&db, "bob", "vault").unwrap();
        add_member(&db, "bob", "vault", "carol", false).unwrap();
        assert_eq!(
            code(add_member_as_operator(&db, "vault", "carol", false)),
            "conflict"
        );
        // A member of a room without manager (as an older build's removal left) is made one.
        let carol = set_manager_as_operator(&db, "vault", "carol", true).unwrap();
        assert!(carol.manager);
        assert_eq!(
            events_after(&db, "vault", last_id(&db) - 1)[0].3,
            "operator made carol a manager"
        );
    }

    #[test]
    fn managers_make_and_unmake_managers_and_the_last_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        let db = mgc(dir.path());
        create_room(&db, "alice", &new_room("team", Privacy::Closed)).unwrap();
        create_room(&db, "alice", &new_room("vault", Privacy::Secret)).unwrap();
        add_member(&db, "alice", "team", "bob", false).unwrap();
        let before = last_id(&db);
        let lsn = db.identity().lsn;
        let code = |r: Result<Member, ChatError>| r.unwrap_err().code();
        assert_eq!(
            code(set_manager(&db, "bob", "team", "bob", true)),
            "forbidden"
        );
        assert_eq!(
            code(set_manager(&db, "carol", "team", "bob", true)),
            "forbidden"
        );
        assert_eq!(
            code(set_manager(&db, "bob", "vault", "alice", false)),
            "not_found"
        );
        assert_eq!(
            code(set_manager(&db, "alice", "team", "carol", true)),
            "not_found"
        );
        let e = set_manager(&db, "alice", "team", "alice", false).unwrap_err();
        assert_eq!(e.code(), "conflict");
        assert!(e.to_string().contains("last manager"), "{e}");
        // What is already so is answered, and writes nothing.
        assert!(
            set_manager(&db, "alice", "team", "alice", true)
                .unwrap()
                .manager
        );
        assert!(
            !set_manager(&db, "alice", "team", "bob", false)
                .unwrap()
                .manager
        );
        assert_eq!(db.identity().lsn, lsn, "refusals and no-ops write nothing");

        let bob = set_manager(&db, "alice", "team", "bob", true).unwrap();
        assert!(bob.manager);
        // bob manages now: he may step alice down, and she may not step him down after.
        set_manager(&db, "bob", "team", "alice", false).unwrap();
        assert_eq!(
            code(set_manager(&db, "alice", "team", "bob", false)),
            "forbidden"
        );
        assert_eq!(
            code(set_manager(&db, "bob", "team", "bob", false)),
            "conflict"
        );
        set_manager(&db, "bob", "team", "alice", true).unwrap();
        set_manager(&db, "bob", "team", "bob", false).unwrap();
        assert_eq!(
            who(&db, "bob", "team"),
            [("alice".into(), true), ("bob".into(), false)]
        );
        let seen: Vec<(EventKind, String, Option<String>, String)> =
            events_after(&db, "team", before);
        let updated = |by: &str, of: &str, text: &str| {
            (
                EventKind::RoomUpdated,
                by.to_string(),
                Some(of.to_string()),
                text.to_string(),
            )
        };
        assert_eq!(
            seen,
            [
                updated("alice", "bob", "alice made bob a manager"),
                updated("bob", "alice", "bob made alice no longer a manager"),
                updated("bob", "alice", "bob made alice a manager"),
                updated("bob", "bob", "bob stepped down as a manager"),
            ]
        );
        // Joining time is kept through the changes.
        let bob = members(&db, "alice", "team").unwrap().remove(1);
        assert_eq!(
            bob.joined_ms,
            members(&db, "bob", "team").unwrap()[1].joined_ms
        );
    }

    #[test]
    fn members_are_listed_only_to_readers() {
        let dir = tempfile::tempdir().unwrap();
        let db = mgc(dir.path());
        create_room(&db, "alice", &new_room("open", Privacy::Open)).unwrap();
        create_room(&db, "alice", &new_room("closed", Privacy::Closed)).unwrap();
        create_room(&db, "alice", &new_room("secret", Privacy::Secret)).unwrap();
        assert_eq!(who(&db, "bob", "open"), [("alice".into(), true)]);
        assert_eq!(
            members(&db, "bob", "closed").unwrap_err().code(),
            "forbidden"
        );
        assert_eq!(
            members(&db, "bob", "secret").unwrap_err().code(),
            "not_found"
        );
    }
}
