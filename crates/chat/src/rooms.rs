//! Rooms: where messages are posted. Each has a privacy (open, closed, secret — see `access`),
//! an optional category, managers who change it and its members, and a history of events.

use crate::ChatError;
use crate::access::{managed, visible_room};
use crate::categories::category_exists;
use crate::events::{EventKind, NewEvent, append};
use crate::names::{NameOf, check_name};
use crate::schema::{Query, read};
use serde::{Deserialize, Serialize};
use tandem_store::rusqlite::Row;
use tandem_store::rusqlite::types::Type;
use tandem_store::{Database, Tx, Value};

/// Longest room or category description, in bytes of UTF-8.
pub const DESCRIPTION_BYTES_MAX: usize = 1024;

/// Who may see and read a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Privacy {
    /// Anyone sees and reads it, and may join it.
    Open,
    /// Anyone sees that it exists; only members read it and post in it.
    Closed,
    /// Only members know it exists, read it and post in it.
    Secret,
}

impl Privacy {
    /// The name stored in `rooms.privacy` (the same as the serde name).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Privacy::Open => "open",
            Privacy::Closed => "closed",
            Privacy::Secret => "secret",
        }
    }

    fn parse(s: &str) -> Option<Privacy> {
        Some(match s {
            "open" => Privacy::Open,
            "closed" => Privacy::Closed,
            "secret" => Privacy::Secret,
            _ => return None,
        })
    }
}

/// A room as one user sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Room {
    /// The room's name (1 to `NAME_CHARS_MAX` characters of `[A-Za-z0-9._-]`), unique.
    pub name: String,
    /// The category it belongs to, if any.
    pub category: Option<String>,
    /// Free text, at most `DESCRIPTION_BYTES_MAX` bytes; empty when none was given.
    pub description: String,
    /// Who may see and read it.
    pub privacy: Privacy,
    /// The user who created it.
    pub created_by: String,
    /// Commit time of its creation (ms since the Unix epoch).
    pub created_ms: i64,
    /// How many members it has.
    pub members: u64,
    /// Whether the asking user is a member.
    pub member: bool,
    /// Whether the asking user is one of its managers.
    pub manager: bool,
}

/// A room to create (a field it does not know is refused, not dropped).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRoom {
    /// Its name: 1 to `NAME_CHARS_MAX` characters of `[A-Za-z0-9._-]`, starting alphanumeric.
    pub name: String,
    /// An existing category, or none.
    pub category: Option<String>,
    /// At most `DESCRIPTION_BYTES_MAX` bytes; none means empty.
    pub description: Option<String>,
    /// Who may see and read it.
    pub privacy: Privacy,
}

/// A change to a room; fields left `None` stay as they are, and at least one must be given (a
/// field it does not know is refused, not dropped).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomUpdate {
    /// The new description (at most `DESCRIPTION_BYTES_MAX` bytes).
    pub description: Option<String>,
    /// The new privacy.
    pub privacy: Option<Privacy>,
    /// The new category, which must exist; the empty string takes the room out of its category.
    pub category: Option<String>,
}

/// Reads a room as `user` (parameter 1) sees it; add `WHERE …` (room name is parameter 2).
pub(crate) const ROOM_SELECT: &str = "SELECT r.name, r.category, r.description, r.privacy, \
     r.created_by, r.created_ms, (SELECT COUNT(*) FROM members c WHERE c.room = r.name), \
     m.manager FROM rooms r LEFT JOIN members m ON m.room = r.name AND m.user = ?1";

/// Reads a row selected with `ROOM_SELECT`.
pub(crate) fn room_row(r: &Row<'_>) -> tandem_store::rusqlite::Result<Room> {
    let privacy = privacy_at(r, 3)?;
    let members: i64 = r.get(6)?;
    let manager: Option<bool> = r.get(7)?;
    Ok(Room {
        name: r.get(0)?,
        category: r.get(1)?,
        description: r.get(2)?,
        privacy,
        created_by: r.get(4)?,
        created_ms: r.get(5)?,
        members: members as u64,
        member: manager.is_some(),
        manager: manager.unwrap_or(false),
    })
}

/// Reads column `i` of a row as a privacy.
pub(crate) fn privacy_at(r: &Row<'_>, i: usize) -> tandem_store::rusqlite::Result<Privacy> {
    let privacy: String = r.get(i)?;
    Privacy::parse(&privacy).ok_or_else(|| {
        tandem_store::rusqlite::Error::FromSqlConversionFailure(
            i,
            Type::Text,
            format!("unknown privacy {privacy:?}").into(),
        )
    })
}

/// Checks a description: at most `DESCRIPTION_BYTES_MAX` bytes.
pub(crate) fn check_description(description: &str) -> Result<(), ChatError> {
    if description.len() > DESCRIPTION_BYTES_MAX {
        return Err(ChatError::Invalid(format!(
            "a description is at most {DESCRIPTION_BYTES_MAX} bytes; this one has {}",
            description.len()
        )));
    }
    if description.contains('\0') {
        return Err(ChatError::Invalid(
            "a description may not contain NUL characters".into(),
        ));
    }
    Ok(())
}

/// Creates a room. Its creator becomes its first member and manager, and a `RoomCreated` event
/// opens its history. Invalid for a bad name or description; NotFound for a category that does
/// not exist; Conflict if a room of that name exists, in any case (room names are one
/// namespace, secret rooms included).
pub fn create_room(db: &Database, user: &str, room: &NewRoom) -> Result<Room, ChatError> {
    check_name(NameOf::User, user)?;
    check_name(NameOf::Room, &room.name)?;
    if let Some(c) = &room.category {
        check_name(NameOf::Category, c)?;
    }
    let description = room.description.clone().unwrap_or_default();
    check_description(&description)?;
    let (user, new) = (user.to_string(), room.clone());
    let done = db.write(move |tx: &mut Tx<'_>| {
        // Unique whatever their case (`lobby` and `LOBBY` were two rooms: anyone could make a
        // look-alike of another's room); names are ASCII, which NOCASE folds.
        if let Some(taken) = tx.row(
            "SELECT name FROM rooms WHERE name = ?1 COLLATE NOCASE",
            [&new.name],
            |r| r.get::<_, String>(0),
        )? {
            return Err(ChatError::Conflict(if taken == new.name {
                format!("room {} already exists", new.name)
            } else {
                format!(
                    "room {} already exists: room names are unique whatever their case",
                    new.name
                )
            }));
        }
        if let Some(c) = &new.category
            && !category_exists(tx, c)?
        {
            return Err(no_such_category(c));
        }
        let now = tx.time_ms();
        let room = Room {
            name: new.name.clone(),
            category: new.category.clone(),
            description: description.clone(),
            privacy: new.privacy,
            created_by: user.clone(),
            created_ms: now,
            members: 1,
            member: true,
            manager: true,
        };
        tx.insert("rooms", room_values(&room))?;
        tx.insert(
            "members",
            vec![
                Value::Text(room.name.clone()),
                Value::Text(user.clone()),
                Value::Integer(1),
                Value::Integer(now),
            ],
        )?;
        append(
            tx,
            NewEvent {
                room: &room.name,
                kind: EventKind::RoomCreated,
                sender: &user,
                text: format!(
                    "{user} created the {} room {}",
                    room.privacy.as_str(),
                    room.name
                ),
                subject: None,
                reply_to: None,
            },
        )?;
        Ok(room)
    })?;
    Ok(done.value)
}

/// Changes a room's description, privacy or category and records a `RoomUpdated` event naming
/// what changed. Managers only: Forbidden for other users who can see the room, NotFound for
/// those who cannot. Invalid when nothing is asked or a value breaks its rule; NotFound for a
/// category that does not exist. Returns the room as it is after the change.
pub fn update_room(
    db: &Database,
    user: &str,
    room: &str,
    update: &RoomUpdate,
) -> Result<Room, ChatError> {
    check_name(NameOf::User, user)?;
    check_name(NameOf::Room, room)?;
    if update.description.is_none() && update.privacy.is_none() && update.category.is_none() {
        return Err(ChatError::Invalid(
            "nothing to change: give a description, a privacy or a category".into(),
        ));
    }
    if let Some(d) = &update.description {
        check_description(d)?;
    }
    if let Some(c) = &update.category
        && !c.is_empty()
    {
        check_name(NameOf::Category, c)?;
    }
    let (user, name, update) = (user.to_string(), room.to_string(), update.clone());
    let done = db.write(move |tx: &mut Tx<'_>| {
        let mut room = managed(tx, &user, &name)?;
        let mut changes = Vec::new();
        // Only what differs is changed and told: an update that changes nothing writes
        // nothing (no event for every member to receive).
        if let Some(c) = &update.category {
            let to = (!c.is_empty()).then(|| c.clone());
            if to != room.category {
                if let Some(c) = &to
                    && !category_exists(tx, c)?
                {
                    return Err(no_such_category(c));
                }
                changes.push(match &to {
                    Some(c) => format!("category {c}"),
                    None => "no category".to_string(),
                });
                room.category = to;
            }
        }
        if let Some(p) = update.privacy
            && p != room.privacy
        {
            room.privacy = p;
            changes.push(format!("privacy {}", p.as_str()));
        }
        if let Some(d) = &update.description
            && *d != room.description
        {
            room.description = d.clone();
            changes.push("new description".to_string());
        }
        if changes.is_empty() {
            return Ok(room);
        }
        tx.update("rooms", room_values(&room))?;
        append(
            tx,
            NewEvent {
                room: &room.name,
                kind: EventKind::RoomUpdated,
                sender: &user,
                text: format!("{user} changed room {}: {}", room.name, changes.join(", ")),
                subject: None,
                reply_to: None,
            },
        )?;
        Ok(room)
    })?;
    Ok(done.value)
}

/// The room as `user` sees it. NotFound when it does not exist — or is secret and `user` is not
/// a member, with the same message.
pub fn room(db: &Database, user: &str, room: &str) -> Result<Room, ChatError> {
    check_name(NameOf::User, user)?;
    check_name(NameOf::Room, room)?;
    read(db, |c| visible_room(c, user, room))
}

/// Every room `user` may see — open and closed rooms, and the secret rooms `user` belongs to —
/// sorted by name.
pub fn rooms(db: &Database, user: &str) -> Result<Vec<Room>, ChatError> {
    check_name(NameOf::User, user)?;
    read(db, |c| {
        c.rows(
            &format!(
                "{ROOM_SELECT} WHERE r.privacy <> 'secret' OR m.user IS NOT NULL ORDER BY r.name"
            ),
            [user],
            room_row,
        )
    })
}

/// The row of `rooms` for `room`, in column order.
fn room_values(room: &Room) -> Vec<Value> {
    vec![
        Value::Text(room.name.clone()),
        room.category.clone().map_or(Value::Null, Value::Text),
        Value::Text(room.description.clone()),
        Value::Text(room.privacy.as_str().to_string()),
        Value::Text(room.created_by.clone()),
        Value::Integer(room.created_ms),
    ]
}

fn no_such_category(name: &str) -> ChatError {
    ChatError::NotFound(format!(
        "no category named {name}; create it first (tandem chat category add {name})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{mgc, new_room};
    use crate::{HistoryQuery, add_category, history};

    #[test]
    fn a_new_room_has_its_creator_as_manager_and_a_created_event() {
        let dir = tempfile::tempdir().unwrap();
        let db = mgc(dir.path());
        add_category(&db, "alice", "eng", None).unwrap();
        let new = NewRoom {
            name: "builds".into(),
            category: Some("eng".into()),
            description: Some("CI talk".into()),
            privacy: Privacy::Closed,
        };
        let created = create_room(&db, "alice", &new).unwrap();
        assert_eq!(created.name, "builds");
        assert_eq!(created.category.as_deref(), Some("eng"));
        assert_eq!(created.description, "CI talk");
        assert_eq!(created.privacy, Privacy::Closed);
        assert_eq!(created.created_by, "alice");
        assert_eq!(
            (created.members, created.member, created.manager),
            (1, true, true)
        );
        assert_eq!(room(&db, "alice", "builds").unwrap(), created);
        let as_bob = room(&db, "bob", "builds").unwrap();
        assert_eq!(
            (as_bob.members, as_bob.member, as_bob.manager),
            (1, false, false)
        );

        let page = history(&db, "alice", "builds", &HistoryQuery::default()).unwrap();
        assert_eq!(page.events.len(), 1);
        let e = &page.events[0];
        assert_eq!(e.kind, EventKind::RoomCreated);
        assert_eq!(e.sender, "alice");
        assert_eq!(e.text, "alice created the closed room builds");
        assert_eq!(e.time_ms, created.created_ms);

        let lsn = db.identity().lsn;
        let e = create_room(&db, "bob", &new_room("builds", Privacy::Open)).unwrap_err();
        assert_eq!(
            (e.code(), e.to_string().as_str()),
            ("conflict", "room builds already exists")
        );
        // Whatever the case (a look-alike of another's room was a room of its own).
        let e = create_room(&db, "bob", &new_room("Builds", Privacy::Open)).unwrap_err();
        assert_eq!(
            (e.code(), e.to_string().as_str()),
            (
                "conflict",
                "room Builds already exists: room names are unique whatever their case"
            )
        );
        assert_eq!(db.identity().lsn, lsn, "a refused create writes nothing");
        let mut orphan = new_room("orphan", Privacy::Open);
        orphan.category = Some("nope".into());
        assert_eq!(
            create_room(&db, "bob", &orphan).unwrap_err().code(),
            "not_found"
        );
        let mut long = new_room("long", Privacy::Open);
        long.description = Some("x".repeat(DESCRIPTION_BYTES_MAX + 1));
        assert_eq!(
            create_room(&db, "bob", &long).unwrap_err().code(),
            "invalid"
        );
        for bad in ["", "a b", "_x", &"r".repeat(65)] {
            let e = create_room(&db, "bob", &new_room(bad, Privacy::Open)).unwrap_err();
            assert_eq!(e.code(), "invalid", "{bad:?}");
        }
        assert_eq!(db.identity().lsn, lsn, "refused creations write nothing");
    }

    #[test]
    fn each_privacy_shows_the_room_to_the_right_users() {
        let dir = tempfile::tempdir().unwrap();
        let db = mgc(dir.path());
        for (name, privacy) in [
            ("c-closed", Privacy::Closed),
            ("a-open", Privacy::Open),
            ("b-secret", Privacy::Secret),
        ] {
            create_room(&db, "alice", &new_room(name, privacy)).unwrap();
        }
        let names = |user: &str| -> Vec<String> {
            rooms(&db, user)
                .unwrap()
                .into_iter()
                .map(|r| r.name)
                .collect()
        };
        assert_eq!(names("alice"), ["a-open", "b-secret", "c-closed"]);
        assert_eq!(
            names("bob"),
            ["a-open", "c-closed"],
            "secret rooms are not listed"
        );
        room(&db, "bob", "a-open").unwrap();
        room(&db, "bob", "c-closed").unwrap();
        let e = room(&db, "bob", "b-secret").unwrap_err();
        assert_eq!(e.code(), "not_found");
        assert_eq!(e.to_string(), "no room named b-secret");
        assert_eq!(
            room(&db, "bob", "nowhere").unwrap_err().to_string(),
            "no room named nowhere"
        );
        let hq = HistoryQuery::default();
        assert_eq!(
            history(&db, "bob", "b-secret", &hq).unwrap_err().code(),
            "not_found"
        );
        assert_eq!(
            history(&db, "bob", "c-closed", &hq).unwrap_err().code(),
            "forbidden"
        );
        assert_eq!(history(&db, "bob", "a-open", &hq).unwrap().events.len(), 1);

        // Once a member, bob sees the secret room everywhere.
        crate::add_member(&db, "alice", "b-secret", "bob", false).unwrap();
        assert_eq!(names("bob"), ["a-open", "b-secret", "c-closed"]);
        let r = room(&db, "bob", "b-secret").unwrap();
        assert_eq!((r.members, r.member, r.manager), (2, true, false));
        assert_eq!(
            history(&db, "bob", "b-secret", &hq).unwrap().events.len(),
            2
        );
    }

    #[test]
    fn managers_update_rooms_and_the_change_is_an_event() {
        let dir = tempfile::tempdir().unwrap();
        let db = mgc(dir.path());
        add_category(&db, "alice", "eng", None).unwrap();
        create_room(&db, "alice", &new_room("ops", Privacy::Open)).unwrap();
        crate::add_member(&db, "bob", "ops", "bob", false).unwrap();

        let update = RoomUpdate {
            description: Some("on call".into()),
            privacy: Some(Privacy::Secret),
            category: Some("eng".into()),
        };
        let e = update_room(&db, "bob", "ops", &update).unwrap_err();
        assert_eq!(e.code(), "forbidden", "bob is a member, not a manager");
        let e = update_room(&db, "carol", "ops", &update).unwrap_err();
        assert_eq!(e.code(), "forbidden");
        let updated = update_room(&db, "alice", "ops", &update).unwrap();
        assert_eq!(updated.description, "on call");
        assert_eq!(updated.privacy, Privacy::Secret);
        assert_eq!(updated.category.as_deref(), Some("eng"));
        assert_eq!(room(&db, "alice", "ops").unwrap(), updated);
        // Now secret: carol, not a member, cannot even be told it exists.
        assert_eq!(
            update_room(&db, "carol", "ops", &update)
                .unwrap_err()
                .code(),
            "not_found"
        );
        assert_eq!(room(&db, "carol", "ops").unwrap_err().code(), "not_found");

        let out = RoomUpdate {
            category: Some(String::new()),
            ..RoomUpdate::default()
        };
        assert_eq!(
            update_room(&db, "alice", "ops", &out).unwrap().category,
            None
        );

        let lsn = db.identity().lsn;
        let nothing = update_room(&db, "alice", "ops", &RoomUpdate::default()).unwrap_err();
        assert_eq!(nothing.code(), "invalid");
        let missing = RoomUpdate {
            category: Some("nope".into()),
            ..RoomUpdate::default()
        };
        assert_eq!(
            update_room(&db, "alice", "ops", &missing)
                .unwrap_err()
                .code(),
            "not_found"
        );
        assert_eq!(db.identity().lsn, lsn, "refused updates write nothing");

        let page = history(&db, "alice", "ops", &HistoryQuery::default()).unwrap();
        let updates: Vec<&str> = page
            .events
            .iter()
            .filter(|e| e.kind == EventKind::RoomUpdated)
            .map(|e| e.text.as_str())
            .collect();
        assert_eq!(
            updates,
            [
                "alice changed room ops: category eng, privacy secret, new description",
                "alice changed room ops: no category",
            ]
        );
    }

    #[test]
    fn privacy_serializes_lowercase() {
        assert_eq!(
            serde_json::to_string(&Privacy::Secret).unwrap(),
            "\"secret\""
        );
        let p: Privacy = serde_json::from_str("\"closed\"").unwrap();
        assert_eq!(p, Privacy::Closed);
        for p in [Privacy::Open, Privacy::Closed, Privacy::Secret] {
            assert_eq!(Privacy::parse(p.as_str()), Some(p));
        }
    }
}
