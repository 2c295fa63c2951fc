//! Unread counts: each user's read position in each room, and how many messages by others
//! follow it.

use crate::ChatError;
use crate::access::readable;
use crate::names::{NameOf, check_name};
use crate::schema::{Query, lsn_param, read};
use tandem_store::{Database, Tx, Value};

/// Most unread messages counted in one room: past it, [`unread`] answers this bound (a client
/// shows "10000+"), so a count costs at most this many index entries.
pub const UNREAD_COUNT_MAX: u64 = 10_000;

/// Moves `user`'s read position in `room` up to `event_id`, an event of that room. The position
/// never moves back: an older event leaves it where it is (and writes nothing). Only for users
/// who may read the room (NotFound / Forbidden as `history`); Invalid when `event_id` is not an
/// event of `room`.
pub fn mark_read(db: &Database, user: &str, room: &str, event_id: i64) -> Result<(), ChatError> {
    check_name(NameOf::User, user)?;
    check_name(NameOf::Room, room)?;
    let (user, room) = (user.to_string(), room.to_string());
    db.write(move |tx: &mut Tx<'_>| {
        readable(tx, &user, &room)?;
        let known = tx
            .row(
                "SELECT 1 FROM events WHERE id = ?1 AND room = ?2",
                (event_id, &room),
                |_| Ok(()),
            )?
            .is_some();
        if !known {
            return Err(ChatError::Invalid(format!(
                "event {event_id} is not an event of room {room}"
            )));
        }
        let current = position(tx, &user, &room)?;
        if current.is_some_and(|p| p >= event_id) {
            return Ok(());
        }
        let row = vec![
            Value::Text(user.clone()),
            Value::Text(room.clone()),
            Value::Integer(event_id),
        ];
        if current.is_some() {
            tx.update("read_positions", row)?;
        } else {
            tx.insert("read_positions", row)?;
        }
        Ok(())
    })?;
    Ok(())
}

/// How many `Message` events of `room`, posted by others than `user`, follow `user`'s read
/// position (all of them before any `mark_read`), at most `UNREAD_COUNT_MAX`. Only for users who
/// may read the room (NotFound / Forbidden as `history`).
pub fn unread(db: &Database, user: &str, room: &str) -> Result<u64, ChatError> {
    check_name(NameOf::User, user)?;
    check_name(NameOf::Room, room)?;
    let durable = lsn_param(db.durable_lsn());
    read(db, |c| {
        readable(c, user, room)?;
        let from = position(c, user, room)?.unwrap_or(0);
        let n = c
            .row(
                "SELECT COUNT(*) FROM (SELECT 1 FROM events WHERE room = ?1 AND id > ?2 \
                 AND kind = 'message' AND sender <> ?3 AND lsn <= ?4 LIMIT ?5)",
                (room, from, user, durable, UNREAD_COUNT_MAX as i64),
                |r| r.get::<_, i64>(0),
            )?
            .unwrap_or(0);
        debug_assert!((0..=UNREAD_COUNT_MAX as i64).contains(&n));
        Ok(n as u64)
    })
}

/// `user`'s read position in `room`: the id of the last event read.
fn position(q: &impl Query, user: &str, room: &str) -> Result<Option<i64>, ChatError> {
    q.row(
        "SELECT event_id FROM read_positions WHERE user = ?1 AND room = ?2",
        [user, room],
        |r| r.get(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Privacy;
    use crate::test_support::{mgc, new_room};
    use crate::{add_member, create_room, post};

    #[test]
    fn unread_counts_messages_of_others_after_the_position_which_never_moves_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = mgc(dir.path());
        create_room(&db, "alice", &new_room("r", Privacy::Open)).unwrap();
        add_member(&db, "alice", "r", "bob", false).unwrap();
        assert_eq!(
            unread(&db, "bob", "r").unwrap(),
            0,
            "room events are not unread"
        );
        let m: Vec<i64> = (0..5)
            .map(|i| post(&db, "alice", "r", &format!("m{i}"), None).unwrap().id)
            .collect();
        post(&db, "bob", "r", "mine", None).unwrap();
        assert_eq!(
            unread(&db, "bob", "r").unwrap(),
            5,
            "bob's own message is not unread"
        );
        assert_eq!(unread(&db, "alice", "r").unwrap(), 1);
        assert_eq!(
            unread(&db, "carol", "r").unwrap(),
            6,
            "open rooms are read by anyone"
        );

        mark_read(&db, "bob", "r", m[2]).unwrap();
        assert_eq!(unread(&db, "bob", "r").unwrap(), 2);
        let lsn = db.identity().lsn;
        mark_read(&db, "bob", "r", m[0]).unwrap();
        assert_eq!(db.identity().lsn, lsn, "moving back writes nothing");
        assert_eq!(unread(&db, "bob", "r").unwrap(), 2, "and does not move");
        mark_read(&db, "bob", "r", m[4]).unwrap();
        assert_eq!(unread(&db, "bob", "r").unwrap(), 0);
        post(&db, "alice", "r", "more", None).unwrap();
        assert_eq!(unread(&db, "bob", "r").unwrap(), 1);
        assert_eq!(
            unread(&db, "alice", "r").unwrap(),
            1,
            "positions are per user"
        );
    }

    #[test]
    fn positions_are_for_readers_and_for_events_of_the_room() {
        let dir = tempfile::tempdir().unwrap();
        let db = mgc(dir.path());
        create_room(&db, "alice", &new_room("closed", Privacy::Closed)).unwrap();
        create_room(&db, "alice", &new_room("secret", Privacy::Secret)).unwrap();
        create_room(&db, "alice", &new_room("open", Privacy::Open)).unwrap();
        let c = post(&db, "alice", "closed", "x", None).unwrap().id;
        let s = post(&db, "alice", "secret", "x", None).unwrap().id;
        assert_eq!(
            mark_read(&db, "bob", "closed", c).unwrap_err().code(),
            "forbidden"
        );
        assert_eq!(
            mark_read(&db, "bob", "secret", s).unwrap_err().code(),
            "not_found"
        );
        assert_eq!(
            unread(&db, "bob", "closed").unwrap_err().code(),
            "forbidden"
        );
        assert_eq!(
            unread(&db, "bob", "secret").unwrap_err().code(),
            "not_found"
        );
        for bad in [c, s, 0, 999] {
            let e = mark_read(&db, "bob", "open", bad).unwrap_err();
            assert_eq!(e.code(), "invalid", "event {bad}");
        }
    }
}
