//! Members of a room: who posts in it (and reads it, when it is closed or secret), and which of
//! them manage it. Every change of membership is an event in the room's history.
//!
//! A room always keeps at least one manager: the last one can neither leave nor be removed.

use crate::ChatError;
use crate::access::{readable, visible};
use crate::events::{EventKind, NewEvent, append};
use crate::names::{NameOf, check_name};
use crate::rooms::Privacy;
use crate::schema::{Query, read};
use serde::{Deserialize, Serialize};
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
            |r| {
                Ok(Member {
                    user: r.get(0)?,
                    manager: r.get(1)?,
                    joined_ms: r.get(2)?,
                })
            },
        )
    })
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
    check_name(NameOf::Room, room)?;
    check_name(NameOf::User, member)?;
    let (user, room, member) = (user.to_string(), room.to_string(), member.to_string());
    let done = db.write(move |tx: &mut Tx<'_>| {
        let r = visible(tx, &user, &room)?;
        let joining = member == user;
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
                "{member} is already a member of room {room}"
            )));
        }
        let added = Member {
            user: member.clone(),
            manager,
            joined_ms: tx.time_ms(),
        };
        tx.insert(
            "members",
            vec![
                Value::Text(room.clone()),
                Value::Text(added.user.clone()),
                Value::Integer(i64::from(added.manager)),
                Value::Integer(added.joined_ms),
            ],
        )?;
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
            let managers = tx
                .row(
                    "SELECT COUNT(*) FROM members WHERE room = ?1 AND manager = 1",
                    [&room],
                    |r| r.get::<_, i64>(0),
                )?
                .unwrap_or(0);
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

/// Takes `member` — a user removed from the deployment — out of every room, with a
/// `MemberRemoved` event in each (its live sessions lose the rooms), and drops its read
/// positions and post keys: a user later added under the same name starts with none of them.
/// A room it was the last manager of keeps no manager. Returns the rooms it left.
pub fn forget_user(db: &Database, member: &str) -> Result<Vec<String>, ChatError> {
    check_name(NameOf::User, member)?;
    let member = member.to_string();
    let done = db.write(move |tx: &mut Tx<'_>| {
        let rooms = tx.query(
            "SELECT room FROM members WHERE user = ?1 ORDER BY room",
            [&member],
            |r| r.get::<_, String>(0),
        )?;
        for room in &rooms {
            tx.delete(
                "members",
                vec![Value::Text(room.clone()), Value::Text(member.clone())],
            )?;
            append(
                tx,
                NewEvent {
                    room,
                    kind: EventKind::MemberRemoved,
                    sender: OPERATOR,
                    text: format!("{member} was removed from the deployment"),
                    subject: Some(&member),
                    reply_to: None,
                },
            )?;
        }
        delete_all_of(tx, &member, "read_positions", "user", "room")?;
        // The user's post keys too: a name given again starts with none (a key kept answered
        // the new user's post with the old one's message, naming a room the new user may not
        // see).
        delete_all_of(tx, &member, "post_keys", "sender", "key")?;
        Ok::<_, ChatError>(rooms)
    })?;
    Ok(done.value)
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
        let e = add_member(&db, "alice", "team", "bob", true).unwrap_err();
        assert_eq!(
            (e.code(), e.to_string().as_str()),
            ("conflict", "bob is already a member of room team")
        );

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
