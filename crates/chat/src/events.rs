//! Events: everything that happens in a room — messages and room changes — in one sequence of
//! ids for all rooms. History, search, the live feed and unread counts all read events.

use crate::ChatError;
use crate::schema::Query;
use serde::{Deserialize, Serialize};
use tandem_store::rusqlite::Row;
use tandem_store::rusqlite::types::Type;
use tandem_store::{Tx, Value};

/// What an event records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A message posted by a member; the only kind that is searched and counted as unread.
    Message,
    /// The room was created (its creator is the sender, and its first manager).
    RoomCreated,
    /// A manager changed the room's description, privacy or category (`subject` is `None`), or
    /// made a member a manager or a member only (`subject` is that member; the sender is
    /// `operator` when a removed user's rooms passed to a new manager, or the operator acted).
    RoomUpdated,
    /// A member was added, or joined (`subject` is the member).
    MemberAdded,
    /// A member was removed, or left (`subject` is the member).
    MemberRemoved,
}

impl EventKind {
    /// The name stored in the `events.kind` column (the same as the serde name).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventKind::Message => "message",
            EventKind::RoomCreated => "room_created",
            EventKind::RoomUpdated => "room_updated",
            EventKind::MemberAdded => "member_added",
            EventKind::MemberRemoved => "member_removed",
        }
    }

    fn parse(s: &str) -> Option<EventKind> {
        Some(match s {
            "message" => EventKind::Message,
            "room_created" => EventKind::RoomCreated,
            "room_updated" => EventKind::RoomUpdated,
            "member_added" => EventKind::MemberAdded,
            "member_removed" => EventKind::MemberRemoved,
            _ => return None,
        })
    }
}

/// Everything that happens in a room is an event with a global, increasing id (one sequence for
/// all rooms): messages and room changes. Live streams and history both carry events; a client
/// resumes after the last id it saw.
///
/// Ids increase in commit order (and so do LSNs): an event with a larger id never commits
/// before one with a smaller id, so "everything after id N" never skips an event that commits
/// later.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The event's id: 1, 2, 3, … across all rooms, without gaps.
    pub id: i64,
    /// The room it happened in.
    pub room: String,
    /// What happened.
    pub kind: EventKind,
    /// Who did it: the poster of a message, the user who changed the room or its members.
    pub sender: String,
    /// Commit time (ms since the Unix epoch), the same on every copy.
    pub time_ms: i64,
    /// The message text; for room and member events a human sentence ("alice added bob").
    pub text: String,
    /// The member added or removed, or whose manager flag a `RoomUpdated` event changed; `None`
    /// for other events.
    pub subject: Option<String>,
    /// The message (of the same room) this message answers.
    pub reply_to: Option<i64>,
    /// The LSN of the transaction that wrote the event: a copy that has applied this LSN holds
    /// the event.
    pub lsn: u64,
}

/// The columns of `events`, in declaration order, for `SELECT`s that `event_row` reads.
pub(crate) const EVENT_COLUMNS: &str =
    "id, room, kind, sender, time_ms, text, subject, reply_to, lsn";

/// Reads a row selected with `EVENT_COLUMNS`.
pub(crate) fn event_row(r: &Row<'_>) -> tandem_store::rusqlite::Result<Event> {
    let kind: String = r.get(2)?;
    let kind = EventKind::parse(&kind).ok_or_else(|| {
        tandem_store::rusqlite::Error::FromSqlConversionFailure(
            2,
            Type::Text,
            format!("unknown event kind {kind:?}").into(),
        )
    })?;
    let lsn: i64 = r.get(8)?;
    Ok(Event {
        id: r.get(0)?,
        room: r.get(1)?,
        kind,
        sender: r.get(3)?,
        time_ms: r.get(4)?,
        text: r.get(5)?,
        subject: r.get(6)?,
        reply_to: r.get(7)?,
        lsn: lsn as u64,
    })
}

/// An event to append: everything but what the transaction decides (id, time, LSN).
pub(crate) struct NewEvent<'a> {
    pub(crate) room: &'a str,
    pub(crate) kind: EventKind,
    pub(crate) sender: &'a str,
    pub(crate) text: String,
    pub(crate) subject: Option<&'a str>,
    pub(crate) reply_to: Option<i64>,
}

/// Appends an event with the next id. The single writer runs transactions one after the other,
/// so ids are unique, contiguous and increase in commit order.
pub(crate) fn append(tx: &mut Tx<'_>, e: NewEvent<'_>) -> Result<Event, ChatError> {
    let id = tx
        .row("SELECT COALESCE(MAX(id), 0) + 1 FROM events", [], |r| {
            r.get::<_, i64>(0)
        })?
        .expect("an aggregate returns one row");
    assert!(id >= 1, "event ids start at 1");
    let event = Event {
        id,
        room: e.room.to_string(),
        kind: e.kind,
        sender: e.sender.to_string(),
        time_ms: tx.time_ms(),
        text: e.text,
        subject: e.subject.map(str::to_string),
        reply_to: e.reply_to,
        lsn: tx.lsn(),
    };
    tx.insert(
        "events",
        vec![
            Value::Integer(event.id),
            Value::Text(event.room.clone()),
            Value::Text(event.kind.as_str().to_string()),
            Value::Text(event.sender.clone()),
            Value::Integer(event.time_ms),
            Value::Text(event.text.clone()),
            event.subject.clone().map_or(Value::Null, Value::Text),
            event.reply_to.map_or(Value::Null, Value::Integer),
            Value::Integer(crate::schema::lsn_param(event.lsn)),
        ],
    )?;
    Ok(event)
}

/// Pair assertion with `append`, where a page of events is read: ids strictly increase and so
/// do not repeat, and LSNs never go back as ids go forward.
pub(crate) fn debug_assert_ascending(events: &[Event]) {
    for w in events.windows(2) {
        debug_assert!(
            w[0].id < w[1].id,
            "event ids ascend: {} then {}",
            w[0].id,
            w[1].id
        );
        debug_assert!(
            w[0].lsn <= w[1].lsn,
            "LSNs follow ids: event {} at LSN {}, event {} at LSN {}",
            w[0].id,
            w[0].lsn,
            w[1].id,
            w[1].lsn
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_stored_under_their_serde_names() {
        for kind in [
            EventKind::Message,
            EventKind::RoomCreated,
            EventKind::RoomUpdated,
            EventKind::MemberAdded,
            EventKind::MemberRemoved,
        ] {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(EventKind::parse("Message"), None);
    }
}
