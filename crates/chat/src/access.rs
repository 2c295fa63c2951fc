//! Who may see, read, post in and manage a room — the privacy rules, written once and used by
//! every operation, on reader connections and inside write transactions alike.
//!
//! | privacy | who sees it exists | who reads it | who posts |
//! |---|---|---|---|
//! | open | everyone | everyone | members (anyone may join) |
//! | closed | everyone | members | members |
//! | secret | members | members | members |
//!
//! A secret room is indistinguishable from a room that does not exist for a non-member: every
//! refusal is the same `NotFound` with the same message.

use crate::ChatError;
use crate::names::{NameOf, check_name};
use crate::rooms::{Privacy, ROOM_SELECT, Room, privacy_at, room_row};
use crate::schema::{Query, read};
use tandem_store::Database;

/// What one user may do in a room the user may know of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Access {
    /// The room's privacy.
    pub(crate) privacy: Privacy,
    /// Whether the user is a member.
    pub(crate) member: bool,
    /// Whether the user is one of its managers.
    pub(crate) manager: bool,
}

impl Access {
    /// Whether the user may read the room's events.
    pub(crate) fn may_read(&self) -> bool {
        self.member || self.privacy == Privacy::Open
    }
}

/// The one answer for a room that does not exist or that the user may not know of.
pub(crate) fn no_such_room(room: &str) -> ChatError {
    ChatError::NotFound(format!("no room named {room}"))
}

/// What `user` may do in `room`. NotFound when the room does not exist or is secret and `user`
/// is not a member. Names must be valid (checked by the caller).
pub(crate) fn visible(q: &impl Query, user: &str, room: &str) -> Result<Access, ChatError> {
    let found = q.row(
        "SELECT r.privacy, m.manager FROM rooms r \
         LEFT JOIN members m ON m.room = r.name AND m.user = ?1 WHERE r.name = ?2",
        [user, room],
        |r| {
            let manager: Option<bool> = r.get(1)?;
            Ok(Access {
                privacy: privacy_at(r, 0)?,
                member: manager.is_some(),
                manager: manager.unwrap_or(false),
            })
        },
    )?;
    match found {
        Some(a) if a.privacy != Privacy::Secret || a.member => Ok(a),
        _ => Err(no_such_room(room)),
    }
}

/// The room as `user` sees it, under the same rule as `visible`.
pub(crate) fn visible_room(q: &impl Query, user: &str, room: &str) -> Result<Room, ChatError> {
    let access = visible(q, user, room)?;
    let r = q
        .row(
            &format!("{ROOM_SELECT} WHERE r.name = ?2"),
            [user, room],
            room_row,
        )?
        .ok_or_else(|| no_such_room(room))?;
    // Pair assertion: both reads describe the same room in the same snapshot.
    debug_assert_eq!(
        (r.privacy, r.member, r.manager),
        (access.privacy, access.member, access.manager)
    );
    Ok(r)
}

/// What `user` may do in `room`, provided `user` may read its events: NotFound as `visible`,
/// Forbidden for a closed room `user` is not a member of.
pub(crate) fn readable(q: &impl Query, user: &str, room: &str) -> Result<Access, ChatError> {
    let a = visible(q, user, room)?;
    if !a.may_read() {
        return Err(ChatError::Forbidden(format!(
            "room {room} is closed: only its members read it; ask one of its managers to add you"
        )));
    }
    Ok(a)
}

/// The room, provided `user` is one of its managers: NotFound as `visible`, Forbidden otherwise.
pub(crate) fn managed(q: &impl Query, user: &str, room: &str) -> Result<Room, ChatError> {
    let r = visible_room(q, user, room)?;
    if !r.manager {
        return Err(ChatError::Forbidden(format!(
            "only managers of room {room} may do this, and {user} is not one"
        )));
    }
    Ok(r)
}

/// Whether `user` may read the events of `room` (open, or a member). False for a room that
/// does not exist, so that filtering a stream of events never fails on a room name. Invalid for
/// a malformed user or room name.
pub fn can_read(db: &Database, user: &str, room: &str) -> Result<bool, ChatError> {
    check_name(NameOf::User, user)?;
    check_name(NameOf::Room, room)?;
    read(db, |c| match visible(c, user, room) {
        Ok(a) => Ok(a.may_read()),
        Err(ChatError::NotFound(_)) => Ok(false),
        Err(e) => Err(e),
    })
}

/// Ok when `user` may read `room`; otherwise the refusal a read of it gets (NotFound as
/// `visible`, Forbidden for a closed room), so that every route refuses alike.
pub fn check_readable(db: &Database, user: &str, room: &str) -> Result<(), ChatError> {
    check_name(NameOf::User, user)?;
    check_name(NameOf::Room, room)?;
    read(db, |c| readable(c, user, room).map(|_| ()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{mgc, new_room};

    #[test]
    fn can_read_follows_the_privacy_table() {
        let dir = tempfile::tempdir().unwrap();
        let db = mgc(dir.path());
        for (name, privacy) in [
            ("open", Privacy::Open),
            ("closed", Privacy::Closed),
            ("secret", Privacy::Secret),
        ] {
            crate::create_room(&db, "alice", &new_room(name, privacy)).unwrap();
        }
        let cases = [
            ("open", "alice", true),
            ("open", "bob", true),
            ("closed", "alice", true),
            ("closed", "bob", false),
            ("secret", "alice", true),
            ("secret", "bob", false),
            ("nowhere", "alice", false),
        ];
        for (room, user, want) in cases {
            assert_eq!(can_read(&db, user, room).unwrap(), want, "{user} in {room}");
        }
        assert_eq!(
            can_read(&db, "bob", "no room").unwrap_err().code(),
            "invalid"
        );
        assert_eq!(can_read(&db, "", "open").unwrap_err().code(), "invalid");
        // The refusals for a secret room and for no room at all read the same.
        let secret = read(&db, |c| visible(c, "bob", "secret")).unwrap_err();
        let missing = read(&db, |c| visible(c, "bob", "missing")).unwrap_err();
        assert_eq!(
            secret.to_string().replace("secret", "X"),
            missing.to_string().replace("missing", "X")
        );
    }
}
