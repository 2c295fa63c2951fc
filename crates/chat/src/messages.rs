//! Messages and the room's history: posting, paging through a room's events, and the feed of
//! every room's events that chat nodes stream to clients.
//!
//! Readers see only events that are durable on this copy (`Database::durable_lsn`, where the
//! store also waits for a synchronous mirror): nothing is shown that a failover could take back.

use crate::ChatError;
use crate::access::{readable, visible};
use crate::events::{
    EVENT_COLUMNS, Event, EventKind, NewEvent, append, debug_assert_ascending, event_row,
};
use crate::names::{NameOf, check_name};
use crate::schema::{Query, lsn_param, read};
use serde::{Deserialize, Serialize};
use tandem_store::{Database, Tx, Value};

/// Longest message text, in bytes of UTF-8.
pub const TEXT_BYTES_MAX: usize = 8192;
/// Most events in one page of history.
pub const HISTORY_LIMIT_MAX: usize = 500;
/// Longest key a client gives a post (`Idempotency-Key`), in bytes.
pub const POST_KEY_BYTES_MAX: usize = 128;
/// How long a post's key is remembered, after its message: a retry within it is answered
/// with the first message, one after it makes a new message (a day, as payment APIs keep
/// theirs). Without a bound, the keys would grow with every keyed post for good.
pub const POST_KEY_KEPT_MS: i64 = 24 * 3600 * 1000;
/// Most keys one call to [`expire_post_keys`] forgets: one write transaction.
pub const POST_KEYS_EXPIRED_MAX: usize = 1000;
/// Events in a page of history when the query gives no limit.
pub const HISTORY_LIMIT_DEFAULT: usize = 100;
/// Most events one call to [`feed`] returns.
pub const FEED_LIMIT_MAX: usize = HISTORY_LIMIT_MAX * 4;

/// A page of a room's events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// Events ascending by id.
    pub events: Vec<Event>,
    /// Whether there are further events in the paging direction: older ones for a page taken
    /// `before` a cursor or without one, newer ones for a page taken `after` a cursor.
    pub more: bool,
}

/// Which page of a room's history to read (a parameter it does not know is refused: a typo
/// would otherwise read another page than the one meant).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// The newest events with an id below this one.
    pub before: Option<i64>,
    /// The oldest events with an id above this one.
    pub after: Option<i64>,
    /// Events in the page: 1 to `HISTORY_LIMIT_MAX`; `HISTORY_LIMIT_DEFAULT` when none.
    pub limit: Option<usize>,
}

/// A post as a client sends it: the room, the text, the message it answers, and the key the
/// client gives it so that sending it again (no answer came) makes no second message.
#[derive(Clone, Copy, Debug)]
pub struct NewPost<'a> {
    /// The room posted to.
    pub room: &'a str,
    /// The message, 1 to `TEXT_BYTES_MAX` bytes.
    pub text: &'a str,
    /// The message of the same room this one answers.
    pub reply_to: Option<i64>,
    /// The client's key for this post (`check_post_key`), unique per sender.
    pub key: Option<&'a str>,
}

/// Refuses a post key that is empty, over `POST_KEY_BYTES_MAX` bytes, or not printable ASCII.
fn check_post_key(key: &str) -> Result<(), ChatError> {
    if key.is_empty()
        || key.len() > POST_KEY_BYTES_MAX
        || !key.bytes().all(|b| b.is_ascii_graphic())
    {
        let shown = if key.chars().count() > 40 {
            format!(
                "{:?}… ({} bytes)",
                key.chars().take(40).collect::<String>(),
                key.len()
            )
        } else {
            format!("{key:?}")
        };
        return Err(ChatError::Invalid(format!(
            "a post key (Idempotency-Key) is 1 to {POST_KEY_BYTES_MAX} printable ASCII \
             characters without spaces; {shown} is not"
        )));
    }
    Ok(())
}

fn post_tx(
    user: &str,
    p: NewPost<'_>,
) -> Result<impl Fn(&mut Tx<'_>) -> Result<Event, ChatError> + Send + 'static, ChatError> {
    check_name(NameOf::User, user)?;
    check_name(NameOf::Room, p.room)?;
    check_text(p.text)?;
    if let Some(key) = p.key {
        check_post_key(key)?;
    }
    let (user, room, text) = (user.to_string(), p.room.to_string(), p.text.to_string());
    let (reply_to, key) = (p.reply_to, p.key.map(str::to_string));
    Ok(move |tx: &mut Tx<'_>| {
        let r = visible(tx, &user, &room)?;
        if let Some(key) = &key
            && let Some(first) = keyed(tx, &user, key)?
        {
            // A retry: the message the key made is the answer, if the retry is the same post.
            if first.room == room && first.text == text && first.reply_to == reply_to {
                return Ok(first);
            }
            return Err(ChatError::Conflict(format!(
                "{user} already used the post key {key} for message {} in room {}: a retry \
                 sends the same room, text and reply_to; a new message takes a new key",
                first.id, first.room
            )));
        }
        if !r.member {
            return Err(ChatError::Forbidden(format!(
                "{user} is not a member of room {room}: {}",
                if r.privacy == crate::Privacy::Open {
                    "join it before posting"
                } else {
                    "only its members post; ask one of its managers to add you"
                }
            )));
        }
        if let Some(id) = reply_to {
            let target = tx.row("SELECT room, kind FROM events WHERE id = ?1", [id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?;
            if target.as_ref().map(|(r, k)| (r.as_str(), k.as_str()))
                != Some((room.as_str(), EventKind::Message.as_str()))
            {
                return Err(ChatError::Invalid(format!(
                    "reply_to {id} is not a message of room {room}: a reply answers a message of \
                     its own room"
                )));
            }
        }
        let event = append(
            tx,
            NewEvent {
                room: &room,
                kind: EventKind::Message,
                sender: &user,
                text: text.clone(),
                subject: None,
                reply_to,
            },
        )?;
        if let Some(key) = &key {
            tx.insert(
                "post_keys",
                vec![
                    Value::Text(user.clone()),
                    Value::Text(key.clone()),
                    Value::Integer(event.id),
                ],
            )?;
        }
        Ok(event)
    })
}

/// Forgets the keys of messages posted before `before_ms` (ms since the Unix epoch), oldest
/// first, at most `POST_KEYS_EXPIRED_MAX` in one transaction, and returns how many. The keys
/// are read in the order they were stored, which is their messages' order, and the read stops
/// at the first one still kept: a call costs what it forgets, however many keys are kept. The
/// deletes are journaled, so every copy forgets the same keys.
pub fn expire_post_keys(db: &Database, before_ms: i64) -> Result<usize, ChatError> {
    let forgotten = db.write(move |tx: &mut Tx<'_>| -> Result<usize, ChatError> {
        let oldest = tx.query(
            "SELECT k.sender, k.key, e.time_ms FROM post_keys k JOIN events e ON e.id = \
             k.event_id ORDER BY k.rowid LIMIT ?1",
            [POST_KEYS_EXPIRED_MAX as i64],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            },
        )?;
        let mut n = 0;
        for (sender, key, time_ms) in oldest {
            if time_ms >= before_ms {
                break;
            }
            tx.delete("post_keys", [Value::Text(sender), Value::Text(key)])?;
            n += 1;
        }
        Ok(n)
    })?;
    Ok(forgotten.value)
}

/// The message `user` posted with `key`, if any.
fn keyed(tx: &Tx<'_>, user: &str, key: &str) -> Result<Option<Event>, ChatError> {
    tx.row(
        &format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE id = \
             (SELECT event_id FROM post_keys WHERE sender = ?1 AND key = ?2)"
        ),
        [user, key],
        event_row,
    )
}

/// Posts `text` in `room` as `user` and returns the `Message` event, durable. Only members post
/// (in an open room too: join first): Forbidden otherwise, NotFound when `user` may not know
/// the room exists. Invalid for text that is empty, only white space or over `TEXT_BYTES_MAX`
/// bytes, and for a `reply_to` that is not a message of the same room.
pub fn post(
    db: &Database,
    user: &str,
    room: &str,
    text: &str,
    reply_to: Option<i64>,
) -> Result<Event, ChatError> {
    let p = NewPost {
        room,
        text,
        reply_to,
        key: None,
    };
    post_with(db, user, p)
}

/// `post` with the client's key, as `post_async` takes it.
pub fn post_with(db: &Database, user: &str, p: NewPost<'_>) -> Result<Event, ChatError> {
    Ok(db.write(post_tx(user, p)?)?.value)
}

/// `post` for async callers, with the client's key: the same transaction, awaited instead of
/// blocking a thread. A post whose key `user` already used is answered with the message it
/// made — nothing is written — when the room, text and reply are the same, and refused
/// (Conflict) otherwise.
pub async fn post_async(db: &Database, user: &str, p: NewPost<'_>) -> Result<Event, ChatError> {
    Ok(db.write_async(post_tx(user, p)?).await?.value)
}

/// A page of `room`'s events for `user`: the newest `limit`, the newest `limit` before a
/// cursor, or the oldest `limit` after one. Open rooms are read by anyone; closed and secret
/// rooms by their members (Forbidden for a closed room, NotFound for a secret one). Invalid for
/// both cursors at once or a limit outside 1 to `HISTORY_LIMIT_MAX`. Paging with the first id
/// of each page as `before` (or the last as `after`) visits every event exactly once.
pub fn history(db: &Database, user: &str, room: &str, q: &HistoryQuery) -> Result<Page, ChatError> {
    check_name(NameOf::User, user)?;
    check_name(NameOf::Room, room)?;
    if q.before.is_some() && q.after.is_some() {
        return Err(ChatError::Invalid(
            "give before or after, not both: a page goes one way from its cursor".into(),
        ));
    }
    let limit = check_limit("history", q.limit, HISTORY_LIMIT_DEFAULT, HISTORY_LIMIT_MAX)?;
    let durable = lsn_param(db.durable_lsn());
    // One more than asked tells whether there are more.
    let fetch = (limit + 1) as i64;
    read(db, |c| {
        readable(c, user, room)?;
        let mut events = match q.after {
            Some(after) => c.rows(
                &format!(
                    "SELECT {EVENT_COLUMNS} FROM events WHERE room = ?1 AND id > ?2 \
                     AND lsn <= ?3 ORDER BY id LIMIT ?4"
                ),
                (room, after, durable, fetch),
                event_row,
            )?,
            None => {
                let before = q.before.unwrap_or(i64::MAX);
                let mut newest_first = c.rows(
                    &format!(
                        "SELECT {EVENT_COLUMNS} FROM events WHERE room = ?1 AND id < ?2 \
                         AND lsn <= ?3 ORDER BY id DESC LIMIT ?4"
                    ),
                    (room, before, durable, fetch),
                    event_row,
                )?;
                let more = newest_first.len() > limit;
                newest_first.truncate(limit);
                newest_first.reverse();
                debug_assert_ascending(&newest_first);
                return Ok(Page {
                    events: newest_first,
                    more,
                });
            }
        };
        let more = events.len() > limit;
        events.truncate(limit);
        debug_assert_ascending(&events);
        Ok(Page { events, more })
    })
}

/// Events of every room with an id above `after` and an LSN at most `upto_lsn` (and durable
/// here), ascending by id, at most `limit` (1 to `FEED_LIMIT_MAX`). For chat nodes that stream
/// live events: no user filter — callers filter with [`crate::can_read`]. Because ids and LSNs
/// increase together, a caller that resumes after the last id it got misses nothing.
pub fn feed(
    db: &Database,
    after: i64,
    upto_lsn: u64,
    limit: usize,
) -> Result<Vec<Event>, ChatError> {
    let limit = check_limit("feed", Some(limit), FEED_LIMIT_MAX, FEED_LIMIT_MAX)?;
    let upto = lsn_param(upto_lsn.min(db.durable_lsn()));
    let events = read(db, |c| {
        c.rows(&feed_sql(), (after, upto, limit as i64), event_row)
    })?;
    debug_assert_ascending(&events);
    Ok(events)
}

/// The newest event at or before an LSN.
const HEAD_SQL: &str = "SELECT id FROM events WHERE +lsn <= ?1 ORDER BY id DESC LIMIT 1";

/// The events after an id, at or before an LSN, by id from that id (`+lsn`: not by the `lsn`
/// index, see `last_event_id`).
fn feed_sql() -> String {
    format!("SELECT {EVENT_COLUMNS} FROM events WHERE id > ?1 AND +lsn <= ?2 ORDER BY id LIMIT ?3")
}

/// The id of the newest event, of any room, with an LSN at most `upto_lsn` (and durable here);
/// 0 when there is none. A feed that starts `after` it carries every later event: where a chat
/// node starts following live events.
pub fn last_event_id(db: &Database, upto_lsn: u64) -> Result<i64, ChatError> {
    let upto = lsn_param(upto_lsn.min(db.durable_lsn()));
    read(db, |c| {
        // Ids and LSNs increase together: the newest events are the ones past `upto`, if any.
        // `+lsn` keeps the planner off the `lsn` index: walking it for every event at or before
        // `upto` (nearly all) and sorting them took tens of milliseconds in a big room; walking
        // ids down from the newest stops at the first durable one.
        Ok(c.row(HEAD_SQL, [upto], |r| r.get::<_, i64>(0))?
            .unwrap_or(0))
    })
}

/// Checks message text: 1 to `TEXT_BYTES_MAX` bytes, not only white space.
fn check_text(text: &str) -> Result<(), ChatError> {
    if text.len() > TEXT_BYTES_MAX {
        return Err(ChatError::Invalid(format!(
            "a message is at most {TEXT_BYTES_MAX} bytes; this one has {}",
            text.len()
        )));
    }
    if text.chars().all(invisible) {
        return Err(ChatError::Invalid(
            "a message needs text: it is empty or only white space (or characters that show \
             nothing, such as zero-width spaces)"
                .into(),
        ));
    }
    if text.contains('\0') {
        return Err(ChatError::Invalid(
            "a message may not contain NUL characters".into(),
        ));
    }
    Ok(())
}

/// White space, and the characters that show nothing: zero-width spaces and joiners, the
/// byte-order mark, soft hyphens, direction marks and embeddings (a message of only these was
/// accepted, and showed as an empty line).
fn invisible(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

/// A page size: `default` when none, else 1 to `max`.
pub(crate) fn check_limit(
    what: &str,
    limit: Option<usize>,
    default: usize,
    max: usize,
) -> Result<usize, ChatError> {
    let limit = limit.unwrap_or(default);
    if limit == 0 || limit > max {
        return Err(ChatError::Invalid(format!(
            "a {what} limit is 1 to {max} events; {limit} was asked"
        )));
    }
    Ok(limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Privacy;
    use crate::test_support::{bulk_post, mgc, new_room};
    use std::collections::BTreeSet;

    #[test]
    fn a_retried_post_with_its_key_is_answered_with_the_first_message() {
        let dir = tempfile::tempdir().unwrap();
        let db = mgc(dir.path());
        crate::create_room(&db, "alice", &new_room("lobby", Privacy::Open)).unwrap();
        crate::create_room(&db, "alice", &new_room("other", Privacy::Open)).unwrap();
        crate::add_member(&db, "alice", "lobby", "bob", false).unwrap();
        let post = |user: &str, room: &str, text: &str, key: Option<&str>| {
            let p = NewPost {
                room,
                text,
                reply_to: None,
                key,
            };
            post_with(&db, user, p)
        };
        let first = post("alice", "lobby", "hello", Some("k-1")).unwrap();
        let lsn = db.identity().lsn;
        // The retry: the same message, and nothing written.
        assert_eq!(post("alice", "lobby", "hello", Some("k-1")).unwrap(), first);
        assert_eq!(db.identity().lsn, lsn);
        // The key used for another post: refused, saying which message holds it.
        for (room, text) in [("lobby", "hello again"), ("other", "hello")] {
            match post("alice", room, text, Some("k-1")) {
                Err(ChatError::Conflict(m)) => {
                    assert!(m.contains(&format!("message {}", first.id)), "{m}")
                }
                r => panic!("{r:?}"),
            }
        }
        // Keys are per sender; without a key every post is a message of its own.
        let bobs = post("bob", "lobby", "hello", Some("k-1")).unwrap();
        assert_ne!(bobs.id, first.id);
        let a = post("alice", "lobby", "hello", None).unwrap();
        let b = post("alice", "lobby", "hello", None).unwrap();
        assert_ne!(a.id, b.id);
        // A bad key is refused before anything runs.
        for key in ["", "with space", "é", &"k".repeat(POST_KEY_BYTES_MAX + 1)] {
            assert!(
                matches!(
                    post("alice", "lobby", "x", Some(key)),
                    Err(ChatError::Invalid(_))
                ),
                "{key:?}"
            );
        }
        // A long key is shown cut, with its length.
        match post(
            "alice",
            "lobby",
            "x",
            Some(&"k".repeat(POST_KEY_BYTES_MAX + 1)),
        ) {
            Err(ChatError::Invalid(m)) => assert!(m.contains("… (129 bytes) is not"), "{m}"),
            r => panic!("{r:?}"),
        }
        check_post_key(&"k".repeat(POST_KEY_BYTES_MAX)).unwrap();
        let page = history(&db, "alice", "lobby", &HistoryQuery::default()).unwrap();
        let hellos = page.events.iter().filter(|e| e.text == "hello").count();
        assert_eq!(hellos, 4, "{page:?}");
    }

    #[test]
    fn post_keys_are_forgotten_oldest_first_once_their_messages_are_old_enough() {
        let dir = tempfile::tempdir().unwrap();
        let db = mgc(dir.path());
        crate::create_room(&db, "alice", &new_room("lobby", Privacy::Open)).unwrap();
        let post = |text: &str, key: &str| {
            let p = NewPost {
                room: "lobby",
                text,
                reply_to: None,
                key: Some(key),
            };
            post_with(&db, "alice", p).unwrap()
        };
        let keys = |db: &Database| -> Vec<String> {
            db.read(|c| {
                let mut stmt = c.prepare("SELECT key FROM post_keys ORDER BY rowid")?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                Ok(rows.collect::<tandem_store::rusqlite::Result<Vec<String>>>()?)
            })
            .unwrap()
        };
        let n = POST_KEYS_EXPIRED_MAX + 5;
        let old: Vec<Event> = (0..n).map(|i| post("old", &format!("o-{i}"))).collect();
        let cutoff = old.last().unwrap().time_ms + 1;
        // Posted after the cutoff (the clock may not have moved: wait until it has).
        let now_ms = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64
        };
        while now_ms() < cutoff {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let new = post("new", "n-0");
        assert!(new.time_ms >= cutoff);
        // Nothing is old enough yet.
        assert_eq!(expire_post_keys(&db, old[0].time_ms).unwrap(), 0);
        // One transaction forgets at most POST_KEYS_EXPIRED_MAX, the oldest; the next the rest;
        // the kept key stays.
        assert_eq!(
            expire_post_keys(&db, cutoff).unwrap(),
            POST_KEYS_EXPIRED_MAX
        );
        assert_eq!(keys(&db).first().map(String::as_str), Some("o-1000"));
        assert_eq!(expire_post_keys(&db, cutoff).unwrap(), 5);
        assert_eq!(expire_post_keys(&db, cutoff).unwrap(), 0);
        assert_eq!(keys(&db), ["n-0"]);
        // A forgotten key makes a new message; a kept one still answers with its message.
        let again = post("old", "o-0");
        assert_ne!(again.id, old[0].id);
        assert_eq!(post("new", "n-0"), new);
        // The deletes are in the journal: a copy made from it forgets the same keys.
        let copy_dir = tempfile::tempdir().unwrap();
        let copy = crate::test_support::replayed(&db, copy_dir.path(), 1000);
        assert_eq!(keys(&copy), keys(&db));
    }

    #[test]
    fn the_feed_and_its_head_walk_events_by_id_not_by_lsn() {
        let dir = tempfile::tempdir().unwrap();
        let db = mgc(dir.path());
        let plan = |sql: &str, params: &[i64]| -> String {
            db.read(|c| {
                let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                let rows = stmt
                    .query_map(tandem_store::rusqlite::params_from_iter(params), |r| {
                        r.get::<_, String>(3)
                    })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?.join("; "))
            })
            .unwrap()
        };
        for (sql, params) in [
            (HEAD_SQL.to_string(), &[1i64][..]),
            (feed_sql(), &[1, 2, 3]),
        ] {
            let p = plan(&sql, params);
            assert!(
                !p.contains("events_lsn") && !p.contains("TEMP B-TREE"),
                "{sql}: {p}"
            );
        }
        // What the unary plus guards against: without it the planner takes the `lsn` index.
        let bare = HEAD_SQL.replace("+lsn", "lsn");
        assert!(plan(&bare, &[1]).contains("events_lsn"));
    }

    #[test]
    fn only_members_post_and_the_text_follows_its_rules() {
        let dir = tempfile::tempdir().unwrap();
        let db = mgc(dir.path());
        crate::create_room(&db, "alice", &new_room("open", Privacy::Open)).unwrap();
        crate::create_room(&db, "alice", &new_room("closed", Privacy::Closed)).unwrap();
        crate::create_room(&db, "alice", &new_room("secret", Privacy::Secret)).unwrap();
        let first = post(&db, "alice", "open", "hello", None).unwrap();
        assert_eq!(first.kind, EventKind::Message);
        assert_eq!(
            (first.room.as_str(), first.sender.as_str()),
            ("open", "alice")
        );
        assert_eq!(first.text, "hello");
        assert_eq!(first.lsn, db.identity().lsn);
        assert!(first.time_ms > 0);

        let lsn = db.identity().lsn;
        let code = |r: Result<Event, ChatError>| r.unwrap_err().code();
        let e = post(&db, "bob", "open", "hi", None).unwrap_err();
        assert_eq!(e.code(), "forbidden");
        assert!(e.to_string().contains("join it before posting"), "{e}");
        assert_eq!(code(post(&db, "bob", "closed", "hi", None)), "forbidden");
        assert_eq!(code(post(&db, "bob", "secret", "hi", None)), "not_found");
        assert_eq!(code(post(&db, "bob", "nowhere", "hi", None)), "not_found");
        let long = "x".repeat(TEXT_BYTES_MAX + 1);
        for bad in [
            "",
            " ",
            "\n\t \u{3000}",
            "\u{200B}",
            "\u{FEFF}\u{200D} \u{202E}",
            "a\0b",
            long.as_str(),
        ] {
            assert_eq!(
                code(post(&db, "alice", "open", bad, None)),
                "invalid",
                "{bad:?}"
            );
        }
        assert_eq!(db.identity().lsn, lsn, "refused posts write nothing");
        post(&db, "alice", "open", &long[1..], None).unwrap();
        // Invisible characters beside visible ones are the sender's to send.
        post(&db, "alice", "open", "a\u{200B}b", None).unwrap();
        // Multi-byte text is bounded in bytes, not characters.
        let wide = "é".repeat(TEXT_BYTES_MAX / 2 + 1);
        assert_eq!(code(post(&db, "alice", "open", &wide, None)), "invalid");

        // After joining, bob posts in the open room.
        crate::add_member(&db, "bob", "open", "bob", false).unwrap();
        post(&db, "bob", "open", "hi", None).unwrap();
    }

    #[test]
    fn a_reply_answers_a_message_of_its_own_room() {
        let dir = tempfile::tempdir().unwrap();
        let db = mgc(dir.path());
        let a = crate::create_room(&db, "alice", &new_room("a", Privacy::Open)).unwrap();
        crate::create_room(&db, "alice", &new_room("b", Privacy::Open)).unwrap();
        let in_a = post(&db, "alice", "a", "question", None).unwrap();
        let in_b = post(&db, "alice", "b", "elsewhere", None).unwrap();
        let reply = post(&db, "alice", "a", "answer", Some(in_a.id)).unwrap();
        assert_eq!(reply.reply_to, Some(in_a.id));
        let created = history(&db, "alice", &a.name, &HistoryQuery::default())
            .unwrap()
            .events[0]
            .id;
        for bad in [in_b.id, created, 0, -1, 10_000] {
            let e = post(&db, "alice", "a", "answer", Some(bad)).unwrap_err();
            assert_eq!(e.code(), "invalid", "reply_to {bad}");
        }
        let page = history(&db, "bob", "a", &HistoryQuery::default()).unwrap();
        assert_eq!(page.events.last().unwrap(), &reply);
    }

    /// Pages through `room` backwards from the newest, then forwards from the start.
    fn walk(db: &Database, room: &str, limit: usize) -> (Vec<i64>, Vec<i64>) {
        let mut backwards = Vec::new();
        let mut q = HistoryQuery {
            limit: Some(limit),
            ..HistoryQuery::default()
        };
        loop {
            let page = history(db, "bob", room, &q).unwrap();
            assert!(page.events.len() <= limit);
            assert!(
                page.events.len() == limit || !page.more,
                "a short page is the last"
            );
            let ids: Vec<i64> = page.events.iter().map(|e| e.id).collect();
            backwards.splice(0..0, ids);
            if !page.more {
                break;
            }
            q.before = Some(page.events[0].id);
        }
        let mut forwards = Vec::new();
        let mut q = HistoryQuery {
            after: Some(0),
            limit: Some(limit),
            ..HistoryQuery::default()
        };
        loop {
            let page = history(db, "bob", room, &q).unwrap();
            assert!(
                page.events.len() == limit || !page.more,
                "a short page is the last"
            );
            forwards.extend(page.events.iter().map(|e| e.id));
            match page.events.last() {
                Some(last) if page.more => q.after = Some(last.id),
                _ => break,
            }
        }
        (backwards, forwards)
    }

    #[test]
    fn paging_visits_every_event_exactly_once_in_both_directions() {
        let dir = tempfile::tempdir().unwrap();
        let db = mgc(dir.path());
        crate::create_room(&db, "alice", &new_room("busy", Privacy::Open)).unwrap();
        crate::create_room(&db, "alice", &new_room("other", Privacy::Open)).unwrap();
        // Interleave the two rooms so that ids of one room have gaps.
        for _ in 0..4 {
            bulk_post(&db, "busy", "alice", 250);
            bulk_post(&db, "other", "alice", 7);
        }
        let expected: Vec<i64> = crate::feed(&db, 0, u64::MAX, FEED_LIMIT_MAX)
            .unwrap()
            .into_iter()
            .filter(|e| e.room == "busy")
            .map(|e| e.id)
            .collect();
        assert_eq!(expected.len(), 1001, "1000 messages and the creation");
        for limit in [1, 7, 100, 333, HISTORY_LIMIT_MAX] {
            let (backwards, forwards) = walk(&db, "busy", limit);
            assert_eq!(backwards, expected, "before-paging, limit {limit}");
            assert_eq!(forwards, expected, "after-paging, limit {limit}");
        }
        // A page exactly at the end says there is nothing more.
        let last = *expected.last().unwrap();
        let page = history(
            &db,
            "bob",
            "busy",
            &HistoryQuery {
                after: Some(last - 1),
                limit: Some(1),
                before: None,
            },
        )
        .unwrap();
        assert_eq!((page.events.len(), page.more), (1, false));
        let page = history(
            &db,
            "bob",
            "busy",
            &HistoryQuery {
                before: Some(expected[1]),
                limit: Some(1),
                after: None,
            },
        )
        .unwrap();
        assert_eq!((page.events[0].id, page.more), (expected[0], false));
        let page = history(
            &db,
            "bob",
            "busy",
            &HistoryQuery {
                before: Some(expected[0]),
                ..HistoryQuery::default()
            },
        )
        .unwrap();
        assert_eq!(
            page,
            Page {
                events: vec![],
                more: false
            }
        );
        // The default page is the newest 100, with older ones left.
        let page = history(&db, "bob", "busy", &HistoryQuery::default()).unwrap();
        assert_eq!(page.events.len(), HISTORY_LIMIT_DEFAULT);
        assert_eq!(page.events.last().unwrap().id, last);
        assert!(page.more);
        let ids: BTreeSet<i64> = page.events.iter().map(|e| e.id).collect();
        assert_eq!(ids.len(), HISTORY_LIMIT_DEFAULT);
    }

    #[test]
    fn bad_paging_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = mgc(dir.path());
        crate::create_room(&db, "alice", &new_room("r", Privacy::Open)).unwrap();
        let bad = [
            HistoryQuery {
                before: Some(5),
                after: Some(1),
                limit: None,
            },
            HistoryQuery {
                limit: Some(0),
                ..HistoryQuery::default()
            },
            HistoryQuery {
                limit: Some(HISTORY_LIMIT_MAX + 1),
                ..HistoryQuery::default()
            },
        ];
        for q in bad {
            assert_eq!(
                history(&db, "alice", "r", &q).unwrap_err().code(),
                "invalid",
                "{q:?}"
            );
        }
        assert_eq!(feed(&db, 0, u64::MAX, 0).unwrap_err().code(), "invalid");
        assert_eq!(
            feed(&db, 0, u64::MAX, FEED_LIMIT_MAX + 1)
                .unwrap_err()
                .code(),
            "invalid"
        );
    }

    #[test]
    fn history_pages_use_the_room_index_without_sorting() {
        let dir = tempfile::tempdir().unwrap();
        let db = mgc(dir.path());
        for (order, cmp) in [("DESC", "<"), ("", ">")] {
            let sql = format!(
                "EXPLAIN QUERY PLAN SELECT {EVENT_COLUMNS} FROM events WHERE room = ?1 \
                 AND id {cmp} ?2 AND lsn <= ?3 ORDER BY id {order} LIMIT ?4"
            );
            let plan: Vec<String> = db
                .read(|c| {
                    let mut stmt = c.prepare(&sql)?;
                    let rows = stmt.query_map(("r", 5, 5, 5), |r| r.get::<_, String>(3))?;
                    Ok(rows.collect::<Result<Vec<_>, _>>()?)
                })
                .unwrap();
            let plan = plan.join("; ");
            assert!(
                plan.contains("USING INDEX events_room (room=? AND id"),
                "{plan}"
            );
            assert!(!plan.contains("TEMP B-TREE"), "no sort: {plan}");
        }
    }

    #[test]
    fn the_feed_stops_at_the_lsn_and_resumes_after_an_id() {
        let dir = tempfile::tempdir().unwrap();
        let db = mgc(dir.path());
        crate::create_room(&db, "alice", &new_room("a", Privacy::Open)).unwrap();
        crate::create_room(&db, "alice", &new_room("s", Privacy::Secret)).unwrap();
        let mut posted = Vec::new();
        for i in 0..10 {
            let room = if i % 2 == 0 { "a" } else { "s" };
            posted.push(post(&db, "alice", room, &format!("m{i}"), None).unwrap());
        }
        let all = feed(&db, 0, u64::MAX, FEED_LIMIT_MAX).unwrap();
        assert_eq!(all.len(), 12, "two creations and ten messages, every room");
        let ids: Vec<i64> = all.iter().map(|e| e.id).collect();
        assert_eq!(ids, (1..=12).collect::<Vec<i64>>());
        assert_eq!(&all[2..], &posted[..]);

        let upto = posted[4].lsn;
        let some = feed(&db, 0, upto, FEED_LIMIT_MAX).unwrap();
        assert!(some.iter().all(|e| e.lsn <= upto));
        assert_eq!(some.last().unwrap(), &posted[4]);
        let after = feed(&db, posted[4].id, u64::MAX, 3).unwrap();
        assert_eq!(after, posted[5..8]);
        assert!(feed(&db, posted[9].id, u64::MAX, 10).unwrap().is_empty());
        assert!(
            feed(&db, 0, 0, 10).unwrap().is_empty(),
            "LSN 0 holds no event"
        );

        assert_eq!(last_event_id(&db, 0).unwrap(), 0);
        assert_eq!(last_event_id(&db, upto).unwrap(), posted[4].id);
        assert_eq!(last_event_id(&db, u64::MAX).unwrap(), posted[9].id);
        let from_there = feed(&db, last_event_id(&db, upto).unwrap(), u64::MAX, 10).unwrap();
        assert_eq!(from_there, posted[5..]);
    }

    #[test]
    fn concurrent_posts_get_contiguous_ids() {
        let dir = tempfile::tempdir().unwrap();
        let db = mgc(dir.path());
        crate::create_room(&db, "alice", &new_room("r", Privacy::Open)).unwrap();
        const THREADS: usize = 8;
        const POSTS: usize = 50;
        let users: Vec<String> = (0..THREADS).map(|t| format!("user{t}")).collect();
        for u in &users {
            crate::add_member(&db, u, "r", u, false).unwrap();
        }
        let before = feed(&db, 0, u64::MAX, FEED_LIMIT_MAX).unwrap().len() as i64;
        let handles: Vec<_> = users
            .iter()
            .map(|u| {
                let (db, u) = (db.clone(), u.clone());
                std::thread::spawn(move || {
                    (0..POSTS)
                        .map(|i| post(&db, &u, "r", &format!("{u} says {i}"), None).unwrap())
                        .collect::<Vec<Event>>()
                })
            })
            .collect();
        let mut mine: Vec<Event> = Vec::new();
        for h in handles {
            let events = h.join().unwrap();
            // Each poster sees its own posts in the order it made them.
            assert!(
                events
                    .windows(2)
                    .all(|w| w[0].id < w[1].id && w[0].lsn < w[1].lsn)
            );
            mine.extend(events);
        }
        let mut ids: Vec<i64> = mine.iter().map(|e| e.id).collect();
        ids.sort();
        let want: Vec<i64> = (before + 1..=before + (THREADS * POSTS) as i64).collect();
        assert_eq!(ids, want, "contiguous, no duplicates");
        let stored = feed(&db, before, u64::MAX, FEED_LIMIT_MAX).unwrap();
        mine.sort_by_key(|e| e.id);
        assert_eq!(stored, mine, "what each poster was told is what was stored");
    }
}
