//! Full-text search over messages, through the search index: an FTS5 index of each message's
//! text in a file of its own beside `mgc` (`follow-search.db`), which a follower thread keeps
//! behind the acknowledged commits on every copy (`tandem_store::Follow`). Posts never wait for
//! it; a search waits until it holds every acknowledged message, so a message is found once
//! its post is answered, on the primary as on a mirror, a standby or a restored copy.
//!
//! The user's words are searched as words, never parsed as FTS5 syntax: each white-space
//! separated piece becomes a quoted FTS5 string, and the pieces must all occur. Any input is a
//! valid query.

use crate::ChatError;
use crate::events::{EVENT_COLUMNS, Event, event_row};
use crate::messages::check_limit;
use crate::names::{NameOf, check_name};
use crate::schema::{Query, lsn_param, read};
use tandem_store::rusqlite::{Connection, types::Value};
use tandem_store::{Database, Follow, Follower, Op, StoreError};

/// Most results of one search.
pub const SEARCH_LIMIT_MAX: usize = 100;
/// Results of a search that gives no limit.
pub const SEARCH_LIMIT_DEFAULT: usize = 20;
/// Longest search query, in bytes of UTF-8.
pub const SEARCH_QUERY_BYTES_MAX: usize = 1024;
/// How long a search waits for the index to hold every acknowledged message. It is a few
/// milliseconds behind under load; longer only while it is rebuilt from the rows (a copy
/// restored or reseeded), when a search is refused as catching up rather than answered from
/// part of the messages.
pub const SEARCH_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// The search index, run on every copy of `mgc` by [`crate::prepare`].
pub static SEARCH: Follow = Follow {
    name: "search",
    version: 1,
    make: || Box::new(SearchIndex),
};

/// Where `events`' columns are in a journaled row (checked against the schema by a test).
const EVENT_ID: usize = 0;
const EVENT_KIND: usize = 2;
const EVENT_TEXT: usize = 5;

/// Keeps `events_fts`: contentless (the text is in `events`), with deletes.
struct SearchIndex;

impl SearchIndex {
    fn index(conn: &Connection, row: &[Value]) -> Result<(), StoreError> {
        if matches!(&row[EVENT_KIND], Value::Text(k) if k == "message") {
            conn.prepare_cached("INSERT INTO events_fts (rowid, text) VALUES (?1, ?2)")?
                .execute((&row[EVENT_ID], &row[EVENT_TEXT]))?;
        }
        Ok(())
    }

    fn unindex(conn: &Connection, id: &Value) -> Result<(), StoreError> {
        conn.prepare_cached("DELETE FROM events_fts WHERE rowid = ?1")?
            .execute([id])?;
        Ok(())
    }
}

impl Follower for SearchIndex {
    fn create(&mut self, conn: &Connection) -> Result<(), StoreError> {
        conn.execute_batch(
            "CREATE VIRTUAL TABLE events_fts USING fts5 (text, content='', contentless_delete=1)",
        )?;
        Ok(())
    }

    fn apply(&mut self, conn: &Connection, op: &Op) -> Result<(), StoreError> {
        match op {
            Op::Insert { table, row } if table == "events" => Self::index(conn, row),
            Op::Update { table, row } if table == "events" => {
                Self::unindex(conn, &row[EVENT_ID])?;
                Self::index(conn, row)
            }
            Op::Delete { table, key } if table == "events" => Self::unindex(conn, &key[0]),
            _ => Ok(()),
        }
    }

    fn rebuild(&mut self, conn: &Connection) -> Result<(), StoreError> {
        let has_events: bool = conn.query_row(
            "SELECT count(*) > 0 FROM source.sqlite_master WHERE type = 'table' AND name = 'events'",
            [],
            |r| r.get(0),
        )?;
        if has_events {
            conn.execute_batch(
                "INSERT INTO events_fts (rowid, text) \
                 SELECT id, text FROM source.events WHERE kind = 'message'",
            )?;
        }
        Ok(())
    }
}

/// Messages that contain every word of `query`, in rooms `user` may read (open rooms, and the
/// rooms `user` is a member of), newest first, at most `limit` (1 to `SEARCH_LIMIT_MAX`;
/// `SEARCH_LIMIT_DEFAULT` when none). Invalid for an empty query or one over
/// `SEARCH_QUERY_BYTES_MAX` bytes. Whatever the query holds — quotes, operators, parentheses —
/// it is searched as words, never refused as syntax. Refused as catching up
/// (`StoreError::CatchingUp`) when the index does not hold every acknowledged message within
/// `SEARCH_WAIT`.
pub fn search(
    db: &Database,
    user: &str,
    query: &str,
    limit: Option<usize>,
) -> Result<Vec<Event>, ChatError> {
    check_name(NameOf::User, user)?;
    let limit = check_limit("search", limit, SEARCH_LIMIT_DEFAULT, SEARCH_LIMIT_MAX)?;
    if query.len() > SEARCH_QUERY_BYTES_MAX {
        return Err(ChatError::Invalid(format!(
            "a search query is at most {SEARCH_QUERY_BYTES_MAX} bytes; this one has {}",
            query.len()
        )));
    }
    let Some(fts) = fts_query(query) else {
        return Err(ChatError::Invalid(
            "a search query needs at least one word".into(),
        ));
    };
    let durable = db.durable_lsn();
    db.wait_followed(SEARCH.name, durable, SEARCH_WAIT)?;
    let columns = EVENT_COLUMNS
        .split(", ")
        .map(|c| format!("e.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let events = read(db, |c| {
        c.rows(
            &format!(
                "SELECT {columns} FROM search.events_fts f \
                 JOIN events e ON e.id = f.rowid \
                 JOIN rooms r ON r.name = e.room \
                 WHERE events_fts MATCH ?1 AND e.kind = 'message' AND e.lsn <= ?2 \
                 AND (r.privacy = 'open' OR EXISTS \
                      (SELECT 1 FROM members m WHERE m.room = e.room AND m.user = ?3)) \
                 ORDER BY f.rowid DESC LIMIT ?4"
            ),
            (fts.as_str(), lsn_param(durable), user, limit as i64),
            event_row,
        )
    })?;
    debug_assert!(events.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    Ok(events)
}

/// The FTS5 query for the user's words: each piece separated by white space (or NUL, which
/// would end FTS5's parsing) as an FTS5 string (double quotes, inner quotes doubled), all
/// required. `None` when there is no piece.
fn fts_query(query: &str) -> Option<String> {
    let pieces: Vec<String> = query
        .split(|c: char| c.is_whitespace() || c == '\0')
        .filter(|w| !w.is_empty())
        .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
        .collect();
    if pieces.is_empty() {
        return None;
    }
    Some(pieces.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Privacy;
    use crate::test_support::{mgc, new_room};
    use crate::{add_member, create_room, post};

    fn texts(events: &[Event]) -> Vec<&str> {
        events.iter().map(|e| e.text.as_str()).collect()
    }

    #[test]
    fn search_finds_only_messages_of_readable_rooms_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let db = mgc(dir.path());
        create_room(&db, "alice", &new_room("open", Privacy::Open)).unwrap();
        create_room(&db, "alice", &new_room("closed", Privacy::Closed)).unwrap();
        create_room(&db, "alice", &new_room("secret", Privacy::Secret)).unwrap();
        post(&db, "alice", "open", "the deploy went fine", None).unwrap();
        post(
            &db,
            "alice",
            "closed",
            "the deploy is closed business",
            None,
        )
        .unwrap();
        post(
            &db,
            "alice",
            "secret",
            "the deploy is secret business",
            None,
        )
        .unwrap();
        post(&db, "alice", "open", "Deploy again tomorrow", None).unwrap();

        let all = search(&db, "alice", "deploy", None).unwrap();
        assert_eq!(
            texts(&all),
            [
                "Deploy again tomorrow",
                "the deploy is secret business",
                "the deploy is closed business",
                "the deploy went fine",
            ]
        );
        let bob = search(&db, "bob", "deploy", None).unwrap();
        assert_eq!(
            texts(&bob),
            ["Deploy again tomorrow", "the deploy went fine"]
        );
        assert!(search(&db, "bob", "business", None).unwrap().is_empty());
        // Every word must occur; room events ("alice created …") are not messages.
        assert_eq!(
            texts(&search(&db, "alice", "deploy business secret", None).unwrap()),
            ["the deploy is secret business"]
        );
        assert!(search(&db, "alice", "created", None).unwrap().is_empty());
        assert_eq!(search(&db, "alice", "deploy", Some(1)).unwrap().len(), 1);

        add_member(&db, "alice", "closed", "bob", false).unwrap();
        assert_eq!(search(&db, "bob", "business", None).unwrap().len(), 1);
    }

    #[test]
    fn any_input_is_a_valid_query() {
        let dir = tempfile::tempdir().unwrap();
        let db = mgc(dir.path());
        create_room(&db, "alice", &new_room("r", Privacy::Open)).unwrap();
        let nasty = [
            "\"",
            "\"\"",
            "\"a",
            "AND OR NOT (",
            "*",
            "a*",
            "NEAR(",
            "NEAR(a b",
            "a NEAR/2 b",
            "^",
            "^a",
            "col:a",
            "text:deploy",
            "-a",
            "+",
            "(",
            ")",
            "{a b}:c",
            "a\"b",
            "'",
            "a\0b",
            "\0",
            "AND",
            "OR",
            "NOT",
            "🦀",
            "a OR",
            "\"deploy\" OR \"x",
        ];
        for q in nasty.iter().filter(|q| !q.contains('\0')) {
            post(&db, "alice", "r", &format!("note {q} end"), None).unwrap();
        }
        for q in nasty {
            match search(&db, "alice", q, None) {
                Ok(_) => {}
                // NUL separates words like white space: alone, it is an empty query.
                Err(ChatError::Invalid(_)) if q == "\0" => {}
                Err(e) => panic!("{q:?}: {e} ({})", e.code()),
            }
        }
        assert_eq!(
            texts(&search(&db, "alice", "a\0b", None).unwrap()),
            [
                "note a\"b end",
                "note {a b}:c end",
                "note a NEAR/2 b end",
                "note NEAR(a b end"
            ]
        );
        // Operators are words: "AND" finds the message that holds the word.
        assert_eq!(
            texts(&search(&db, "alice", "AND", None).unwrap()),
            ["note AND end", "note AND OR NOT ( end"]
        );
        assert_eq!(search(&db, "alice", "NEAR(", None).unwrap().len(), 3);
        for empty in ["", " ", "\n\t"] {
            assert_eq!(
                search(&db, "alice", empty, None).unwrap_err().code(),
                "invalid"
            );
        }
        let long = "a ".repeat(SEARCH_QUERY_BYTES_MAX);
        assert_eq!(
            search(&db, "alice", &long, None).unwrap_err().code(),
            "invalid"
        );
        assert_eq!(
            search(&db, "alice", "a", Some(0)).unwrap_err().code(),
            "invalid"
        );
        assert_eq!(
            search(&db, "alice", "a", Some(SEARCH_LIMIT_MAX + 1))
                .unwrap_err()
                .code(),
            "invalid"
        );
    }

    /// Runs FTS5's own check of the index's structure, and checks it holds one document per
    /// message and none for room events.
    fn fts_integrity(db: &Database) {
        db.wait_followed(SEARCH.name, db.durable_lsn(), SEARCH_WAIT)
            .unwrap();
        let conn =
            tandem_store::rusqlite::Connection::open(db.dir().join("follow-search.db")).unwrap();
        conn.execute(
            "INSERT INTO events_fts (events_fts) VALUES ('integrity-check')",
            [],
        )
        .unwrap();
        conn.execute(
            "ATTACH DATABASE ?1 AS source",
            [db.dir().join(tandem_store::DB_FILE).to_string_lossy()],
        )
        .unwrap();
        let ids = |sql: &str| -> Vec<i64> {
            let mut stmt = conn.prepare(sql).unwrap();
            stmt.query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        assert_eq!(
            ids("SELECT id FROM events_fts_docsize ORDER BY id"),
            ids("SELECT id FROM source.events WHERE kind = 'message' ORDER BY id")
        );
    }

    #[test]
    fn the_index_reads_events_columns_where_the_schema_puts_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = mgc(dir.path());
        let columns: Vec<String> = db
            .read(|c| {
                let mut stmt = c.prepare("SELECT name FROM pragma_table_info('events')")?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .unwrap();
        assert_eq!(columns[EVENT_ID], "id");
        assert_eq!(columns[EVENT_KIND], "kind");
        assert_eq!(columns[EVENT_TEXT], "text");
    }

    #[test]
    fn a_message_is_found_once_its_post_is_answered_and_edits_and_deletes_reach_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let db = mgc(dir.path());
        create_room(&db, "alice", &new_room("r", Privacy::Open)).unwrap();
        for i in 0..60 {
            let e = post(&db, "alice", "r", &format!("needle {i}"), None).unwrap();
            // No wait but the search's own.
            let found = search(&db, "alice", &format!("needle {i}"), Some(1)).unwrap();
            assert_eq!(found.first().map(|f| f.id), Some(e.id), "post {i}");
        }
        // Edits and deletes come through the journal like any write (chat makes none yet).
        let (edited, deleted) = (5, 6);
        let ids = |q: &str| -> Vec<i64> {
            search(&db, "alice", q, Some(SEARCH_LIMIT_MAX))
                .unwrap()
                .iter()
                .map(|e| e.id)
                .collect()
        };
        let before = ids("needle");
        let mut edit: Vec<Value> = db
            .read(|c| {
                Ok(c.query_row(
                    &format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = ?1"),
                    [before[edited]],
                    |r| (0..9).map(|i| r.get::<_, Value>(i)).collect(),
                )?)
            })
            .unwrap();
        edit[EVENT_TEXT] = Value::Text("haystack".into());
        let gone = before[deleted];
        db.write(move |tx: &mut tandem_store::Tx<'_>| {
            // An updated event carries the LSN of its update.
            let mut edit = edit.clone();
            edit[8] = Value::Integer(tx.lsn() as i64);
            tx.update("events", edit)?;
            tx.delete("events", vec![Value::Integer(gone)])
        })
        .unwrap();
        assert_eq!(ids("haystack"), [before[edited]]);
        let after = ids("needle");
        assert_eq!(after.len(), before.len() - 2);
        assert!(!after.contains(&before[edited]) && !after.contains(&before[deleted]));
        fts_integrity(&db);
    }

    #[test]
    fn a_copy_that_replays_the_journal_searches_like_the_primary() {
        let dir = tempfile::tempdir().unwrap();
        let db = mgc(dir.path());
        crate::add_category(&db, "alice", "eng", Some("builders")).unwrap();
        create_room(&db, "alice", &new_room("open", Privacy::Open)).unwrap();
        create_room(&db, "alice", &new_room("closed", Privacy::Closed)).unwrap();
        create_room(&db, "alice", &new_room("secret", Privacy::Secret)).unwrap();
        add_member(&db, "alice", "secret", "bob", false).unwrap();
        add_member(&db, "carol", "open", "carol", false).unwrap();
        let mut first = None;
        for i in 0..60 {
            let (room, who) = [
                ("open", "alice"),
                ("closed", "alice"),
                ("secret", "bob"),
                ("open", "carol"),
            ][i % 4];
            let text = format!("release {i} of the {room} build by {who}: \"quoted\" AND (parens)");
            let reply_to = if room == "open" { first } else { None };
            let e = post(&db, who, room, &text, reply_to).unwrap();
            if first.is_none() {
                first = Some(e.id);
            }
        }
        crate::update_room(
            &db,
            "alice",
            "closed",
            &crate::RoomUpdate {
                category: Some("eng".into()),
                privacy: Some(Privacy::Open),
                ..crate::RoomUpdate::default()
            },
        )
        .unwrap();
        crate::remove_member(&db, "bob", "secret", "bob").unwrap();
        crate::mark_read(&db, "carol", "open", 10).unwrap();

        // Small batches: the index follows the copy's journal across batch boundaries.
        let copy = crate::test_support::replayed(&db, dir.path(), 7);

        let queries = [
            "release",
            "build",
            "secret build",
            "\"quoted\"",
            "AND (",
            "bob",
            "nothing",
        ];
        for user in ["alice", "bob", "carol", "dave"] {
            for q in queries {
                let on_primary = search(&db, user, q, Some(SEARCH_LIMIT_MAX)).unwrap();
                let on_copy = search(&copy, user, q, Some(SEARCH_LIMIT_MAX)).unwrap();
                assert_eq!(on_copy, on_primary, "{user} searching {q:?}");
            }
            assert_eq!(
                crate::rooms(&copy, user).unwrap(),
                crate::rooms(&db, user).unwrap()
            );
            assert_eq!(
                crate::unread(&copy, user, "open").unwrap(),
                crate::unread(&db, user, "open").unwrap()
            );
        }
        assert_eq!(
            search(&copy, "alice", "release", Some(SEARCH_LIMIT_MAX))
                .unwrap()
                .len(),
            60
        );
        assert_eq!(
            search(&copy, "dave", "release", Some(SEARCH_LIMIT_MAX))
                .unwrap()
                .len(),
            45,
            "secret stays secret"
        );
        assert_eq!(
            crate::feed(&copy, 0, u64::MAX, crate::FEED_LIMIT_MAX).unwrap(),
            crate::feed(&db, 0, u64::MAX, crate::FEED_LIMIT_MAX).unwrap()
        );
        fts_integrity(&db);
        fts_integrity(&copy);
    }

    #[test]
    fn the_query_quotes_every_piece() {
        assert_eq!(fts_query("  "), None);
        assert_eq!(fts_query("a b").as_deref(), Some("\"a\" \"b\""));
        assert_eq!(
            fts_query("say \"hi\"").as_deref(),
            Some("\"say\" \"\"\"hi\"\"\"")
        );
    }
}
