//! Full-text search over messages, through the search index: an FTS5 index of each message's
//! text in a file of its own beside `mgc` (`follow-search.db`), which a follower thread keeps
//! behind the acknowledged commits on every copy (`tandem_store::Follow`). Posts never wait for
//! it; a search waits until it holds every acknowledged message, so a message is found once
//! its post is answered, on the primary as on a mirror, a standby or a restored copy.
//!
//! The user's words are searched as words, never parsed as FTS5 syntax: each white-space
//! separated piece becomes a quoted FTS5 string of its words (`search_words`: NFKC, each CJK
//! character a word, punctuation and symbols between words), and the pieces must all occur.
//! Any input is a valid query or refused as invalid, naming the piece that holds no word; never
//! an FTS5 syntax error.

use crate::ChatError;
use crate::events::{EVENT_COLUMNS, Event, event_row};
use crate::messages::check_limit;
use crate::names::{NameOf, check_name};
use crate::schema::{Query, lsn_param, read};
use crate::search_words::{indexed, phrase};
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
    // 2: text indexed as `search_words` makes it (NFKC, CJK characters one by one).
    version: 2,
    make: || Box::new(SearchIndex),
};

/// Where `events`' columns are in a journaled row (checked against the schema by a test).
const EVENT_ID: usize = 0;
const EVENT_KIND: usize = 2;
const EVENT_TEXT: usize = 5;

/// Keeps `events_fts`: contentless (the text is in `events`; the index holds its words as
/// `search_words::indexed` writes them), with deletes.
struct SearchIndex;

impl SearchIndex {
    fn index(conn: &Connection, row: &[Value]) -> Result<(), StoreError> {
        if matches!(&row[EVENT_KIND], Value::Text(k) if k == "message") {
            let Value::Text(text) = &row[EVENT_TEXT] else {
                return Err(StoreError::Invalid(format!(
                    "message {:?}'s text is not text: {:?}",
                    row[EVENT_ID], row[EVENT_TEXT]
                )));
            };
            Self::insert(conn, &row[EVENT_ID], text)?;
        }
        Ok(())
    }

    fn insert(conn: &Connection, id: &Value, text: &str) -> Result<(), StoreError> {
        conn.prepare_cached("INSERT INTO events_fts (rowid, text) VALUES (?1, ?2)")?
            .execute((id, indexed(text).as_ref()))?;
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
            let mut messages =
                conn.prepare("SELECT id, text FROM source.events WHERE kind = 'message'")?;
            let mut rows = messages.query([])?;
            while let Some(row) = rows.next()? {
                let id: Value = row.get(0)?;
                let text = row.get_ref(1)?.as_str().map_err(|e| {
                    StoreError::Invalid(format!("message {id:?}'s text is not text: {e}"))
                })?;
                Self::insert(conn, &id, text)?;
            }
        }
        Ok(())
    }
}

/// Messages that contain every piece of `query` (its white-space separated pieces, each a word
/// or the words a piece holds, adjacent: see `search_words`), in rooms `user` may read (open
/// rooms, and the rooms `user` is a member of), newest first, with an id below `before` when
/// given, at most `limit` (1 to `SEARCH_LIMIT_MAX`; `SEARCH_LIMIT_DEFAULT` when none): taking
/// the last id of each page as `before` for the next visits every match exactly once, and a
/// page shorter than `limit` is the last. Invalid for a query with no piece, one over
/// `SEARCH_QUERY_BYTES_MAX` bytes, or one with a piece that holds no word (only punctuation,
/// symbols or emoji, which are not indexed: searched, they would match anything). Whatever
/// else the query holds — quotes, operators, parentheses — it is searched as words, never
/// refused as syntax. Refused as catching up (`StoreError::CatchingUp`) when the index does
/// not hold every acknowledged message within `SEARCH_WAIT`.
pub fn search(
    db: &Database,
    user: &str,
    query: &str,
    before: Option<i64>,
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
    let fts = fts_query(query)?;
    let before = before.unwrap_or(i64::MAX);
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
                 WHERE events_fts MATCH ?1 AND f.rowid < ?5 \
                 AND e.kind = 'message' AND e.lsn <= ?2 \
                 AND (r.privacy = 'open' OR EXISTS \
                      (SELECT 1 FROM members m WHERE m.room = e.room AND m.user = ?3)) \
                 ORDER BY f.rowid DESC LIMIT ?4"
            ),
            (fts.as_str(), lsn_param(durable), user, limit as i64, before),
            event_row,
        )
    })?;
    debug_assert!(events.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    debug_assert!(events.iter().all(|e| e.id < before), "below the cursor");
    Ok(events)
}

/// The FTS5 query for the user's words: each piece separated by white space (or NUL) as the
/// FTS5 string of its words (`search_words::phrase`), all required. Invalid when there is no
/// piece, or a piece holds no word: FTS5 would drop it from the query and find messages
/// without it.
fn fts_query(query: &str) -> Result<String, ChatError> {
    let pieces = query
        .split(|c: char| c.is_whitespace() || c == '\0')
        .filter(|w| !w.is_empty())
        .map(|w| {
            phrase(w).ok_or_else(|| {
                ChatError::Invalid(format!(
                    "search finds words (letters and digits); {w:?} holds none: punctuation, \
                     symbols and emoji are not indexed"
                ))
            })
        })
        .collect::<Result<Vec<String>, ChatError>>()?;
    if pieces.is_empty() {
        return Err(ChatError::Invalid(
            "a search query needs at least one word".into(),
        ));
    }
    Ok(pieces.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Privacy;
    use crate::test_support::{mgc, new_room};
    use crate::{add_member, create_room, post};
    use tandem_store::rusqlite::Connection;

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

        let all = search(&db, "alice", "deploy", None, None).unwrap();
        assert_eq!(
            texts(&all),
            [
                "Deploy again tomorrow",
                "the deploy is secret business",
                "the deploy is closed business",
                "the deploy went fine",
            ]
        );
        let bob = search(&db, "bob", "deploy", None, None).unwrap();
        assert_eq!(
            texts(&bob),
            ["Deploy again tomorrow", "the deploy went fine"]
        );
        assert!(
            search(&db, "bob", "business", None, None)
                .unwrap()
                .is_empty()
        );
        // Every word must occur; room events ("alice created …") are not messages.
        assert_eq!(
            texts(&search(&db, "alice", "deploy business secret", None, None).unwrap()),
            ["the deploy is secret business"]
        );
        assert!(
            search(&db, "alice", "created", None, None)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            search(&db, "alice", "deploy", None, Some(1)).unwrap().len(),
            1
        );

        add_member(&db, "alice", "closed", "bob", false).unwrap();
        assert_eq!(search(&db, "bob", "business", None, None).unwrap().len(), 1);
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
        // Pieces that hold no word are refused, named; every other query is searched.
        let wordless = ["\"", "\"\"", "(", "*", "^", "+", "(", ")", "'", "🦀"];
        for q in nasty {
            match search(&db, "alice", q, None, None) {
                Ok(_) => {}
                // NUL separates words like white space: alone, it is an empty query.
                Err(ChatError::Invalid(_)) if q == "\0" => {}
                Err(ChatError::Invalid(m))
                    if q.split_whitespace().any(|p| wordless.contains(&p)) =>
                {
                    let piece = q.split_whitespace().find(|p| wordless.contains(p));
                    assert!(m.contains(&format!("{:?}", piece.unwrap())), "{q:?}: {m}");
                }
                Err(e) => panic!("{q:?}: {e} ({})", e.code()),
            }
        }
        assert_eq!(
            texts(&search(&db, "alice", "a\0b", None, None).unwrap()),
            [
                "note a\"b end",
                "note {a b}:c end",
                "note a NEAR/2 b end",
                "note NEAR(a b end"
            ]
        );
        // Operators are words: "AND" finds the message that holds the word.
        assert_eq!(
            texts(&search(&db, "alice", "AND", None, None).unwrap()),
            ["note AND end", "note AND OR NOT ( end"]
        );
        assert_eq!(search(&db, "alice", "NEAR(", None, None).unwrap().len(), 3);
        for empty in ["", " ", "\n\t"] {
            assert_eq!(
                search(&db, "alice", empty, None, None).unwrap_err().code(),
                "invalid"
            );
        }
        let long = "a ".repeat(SEARCH_QUERY_BYTES_MAX);
        assert_eq!(
            search(&db, "alice", &long, None, None).unwrap_err().code(),
            "invalid"
        );
        assert_eq!(
            search(&db, "alice", "a", None, Some(0)).unwrap_err().code(),
            "invalid"
        );
        assert_eq!(
            search(&db, "alice", "a", None, Some(SEARCH_LIMIT_MAX + 1))
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
            let found = search(&db, "alice", &format!("needle {i}"), None, Some(1)).unwrap();
            assert_eq!(found.first().map(|f| f.id), Some(e.id), "post {i}");
        }
        // Edits and deletes come through the journal like any write (chat makes none yet).
        let (edited, deleted) = (5, 6);
        let ids = |q: &str| -> Vec<i64> {
            search(&db, "alice", q, None, Some(SEARCH_LIMIT_MAX))
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
            "AND (parens)",
            "bob",
            "nothing",
        ];
        for user in ["alice", "bob", "carol", "dave"] {
            for q in queries {
                let on_primary = search(&db, user, q, None, Some(SEARCH_LIMIT_MAX)).unwrap();
                let on_copy = search(&copy, user, q, None, Some(SEARCH_LIMIT_MAX)).unwrap();
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
            search(&copy, "alice", "release", None, Some(SEARCH_LIMIT_MAX))
                .unwrap()
                .len(),
            60
        );
        assert_eq!(
            search(&copy, "dave", "release", None, Some(SEARCH_LIMIT_MAX))
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
        assert_eq!(fts_query("  ").unwrap_err().code(), "invalid");
        assert_eq!(fts_query("a b").unwrap(), "\"a\" \"b\"");
        assert_eq!(fts_query("say \"hi\"").unwrap(), "\"say\" \"hi\"");
        assert_eq!(fts_query("東京 a-b").unwrap(), "\"東 京\" \"a b\"");
        let e = fts_query("party 🎉").unwrap_err();
        assert!(e.to_string().contains("\"🎉\""), "{e}");
    }

    /// Posts `texts` to an open room `r` and returns the ids of the messages, by text.
    fn post_all(db: &Database, texts: &[&str]) -> std::collections::HashMap<String, i64> {
        create_room(db, "alice", &new_room("r", Privacy::Open)).unwrap();
        texts
            .iter()
            .map(|t| (t.to_string(), post(db, "alice", "r", t, None).unwrap().id))
            .collect()
    }

    /// The texts found for `q`, newest first.
    fn found(db: &Database, q: &str) -> Vec<String> {
        search(db, "bob", q, None, Some(SEARCH_LIMIT_MAX))
            .unwrap_or_else(|e| panic!("{q:?}: {e}"))
            .into_iter()
            .map(|e| e.text)
            .collect()
    }

    const CJK_TEXTS: [&str; 7] = [
        "東京タワーに行きました",
        "我爱北京天安门",
        "北方的京城",
        "한국어 문장입니다",
        "Tokyoタワー is tall",
        "京都の寺",
        "the tower of Tokyo",
    ];

    /// What the CJK texts above answer, on any copy.
    fn check_cjk(db: &Database) {
        let cases: [(&str, &[&str]); 12] = [
            ("東京タワー", &["東京タワーに行きました"]),
            ("北京", &["我爱北京天安门"]),
            ("天安门 我爱", &["我爱北京天安门"]),
            ("北京天安门广场", &[]),
            (
                "京",
                &[
                    "京都の寺",
                    "北方的京城",
                    "我爱北京天安门",
                    "東京タワーに行きました",
                ],
            ),
            ("문장", &["한국어 문장입니다"]),
            ("문장입니다", &["한국어 문장입니다"]),
            ("タワー", &["Tokyoタワー is tall", "東京タワーに行きました"]),
            ("Tokyoタワー", &["Tokyoタワー is tall"]),
            ("tokyo", &["the tower of Tokyo", "Tokyoタワー is tall"]),
            // Halfwidth katakana is NFKC's fullwidth.
            ("ﾀﾜｰ", &["Tokyoタワー is tall", "東京タワーに行きました"]),
            ("行き。", &["東京タワーに行きました"]),
        ];
        for (q, want) in cases {
            assert_eq!(found(db, q), want, "{q:?}");
        }
    }

    #[test]
    fn cjk_text_is_found_by_any_run_of_its_characters() {
        let dir = tempfile::tempdir().unwrap();
        let db = mgc(dir.path());
        post_all(&db, &CJK_TEXTS);
        check_cjk(&db);
        let copy = crate::test_support::replayed(&db, dir.path(), 3);
        check_cjk(&copy);
        fts_integrity(&db);
    }

    #[test]
    fn an_index_of_an_earlier_version_is_rebuilt_from_the_rows_as_this_one_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let db = mgc(dir.path());
        post_all(&db, &CJK_TEXTS);
        post(&db, "alice", "r", "ﬁle ＡＢＣ", None).unwrap();
        db.wait_followed(SEARCH.name, db.durable_lsn(), SEARCH_WAIT)
            .unwrap();
        let path = db.dir().to_path_buf();
        drop(db);
        // The file as version 1 left it: its words as unicode61 made them from the text.
        {
            let conn = Connection::open(path.join("follow-search.db")).unwrap();
            conn.execute_batch("DELETE FROM events_fts; UPDATE _tandem_follow SET version = 1")
                .unwrap();
        }
        let db = Database::open(&path, tandem_store::Options::default()).unwrap();
        crate::prepare(&db).unwrap();
        check_cjk(&db);
        assert_eq!(found(&db, "file abc"), ["ﬁle ＡＢＣ"]);
        fts_integrity(&db);
    }

    #[test]
    fn compatibility_forms_and_case_are_searched_as_their_plain_letters() {
        let dir = tempfile::tempdir().unwrap();
        let db = mgc(dir.path());
        post_all(
            &db,
            &[
                "the ﬁle is ready",
                "ＡＢＣ Corp",
                "a plain file",
                "cafe\u{301} au lait",
                "Ⅻ chapters",
                "nothing here",
            ],
        );
        assert_eq!(found(&db, "file"), ["a plain file", "the ﬁle is ready"]);
        assert_eq!(found(&db, "ﬁle"), ["a plain file", "the ﬁle is ready"]);
        assert_eq!(found(&db, "FILE ready"), ["the ﬁle is ready"]);
        assert_eq!(found(&db, "abc"), ["ＡＢＣ Corp"]);
        assert_eq!(found(&db, "ａｂｃ corp"), ["ＡＢＣ Corp"]);
        // Decomposed or composed, with its accent or without (unicode61 drops diacritics).
        assert_eq!(found(&db, "café"), ["cafe\u{301} au lait"]);
        assert_eq!(found(&db, "cafe"), ["cafe\u{301} au lait"]);
        assert_eq!(found(&db, "xii"), ["Ⅻ chapters"]);
    }

    #[test]
    fn a_piece_with_no_word_is_refused_and_named_not_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let db = mgc(dir.path());
        post_all(
            &db,
            &["party 🎉 tonight", "party later", "C++ and C#", "🦀 rust"],
        );
        for (q, piece) in [
            ("🎉", "🎉"),
            ("party 🎉", "🎉"),
            ("🦀", "🦀"),
            ("party ✅", "✅"),
            ("c ++", "++"),
            ("what ?", "?"),
            ("👍🏽", "👍🏽"),
        ] {
            let e = search(&db, "bob", q, None, None).unwrap_err();
            assert_eq!(e.code(), "invalid", "{q:?}");
            assert!(e.to_string().contains(&format!("{piece:?}")), "{q:?}: {e}");
        }
        // Symbols and punctuation inside a piece separate its words, as in the text.
        assert_eq!(found(&db, "party🎉"), ["party later", "party 🎉 tonight"]);
        assert_eq!(found(&db, "C++"), ["C++ and C#"]);
        assert_eq!(found(&db, "rust"), ["🦀 rust"]);
    }

    #[test]
    fn search_pages_before_an_id_visit_every_match_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = mgc(dir.path());
        create_room(&db, "alice", &new_room("open", Privacy::Open)).unwrap();
        create_room(&db, "alice", &new_room("secret", Privacy::Secret)).unwrap();
        let mut want = Vec::new();
        for i in 0..250 {
            let e = post(&db, "alice", "open", &format!("needle {i}"), None).unwrap();
            want.push(e.id);
            if i % 7 == 0 {
                post(&db, "alice", "open", "haystack", None).unwrap();
                post(&db, "alice", "secret", "needle secret", None).unwrap();
            }
        }
        want.reverse();
        for limit in [SEARCH_LIMIT_MAX, 7, 1] {
            let mut seen = Vec::new();
            let mut before = None;
            loop {
                let page = search(&db, "bob", "needle", before, Some(limit)).unwrap();
                assert!(page.len() <= limit);
                seen.extend(page.iter().map(|e| e.id));
                if page.len() < limit {
                    break;
                }
                before = page.last().map(|e| e.id);
            }
            assert_eq!(seen, want, "limit {limit}: every match once, newest first");
        }
        assert_eq!(
            search(&db, "bob", "needle", Some(want[0]), Some(2))
                .unwrap()
                .iter()
                .map(|e| e.id)
                .collect::<Vec<_>>(),
            want[1..3]
        );
        for before in [want[want.len() - 1], 0, -5, i64::MIN] {
            assert!(
                search(&db, "bob", "needle", Some(before), None)
                    .unwrap()
                    .is_empty()
            );
        }
        // The secret room's matches stay out of every page: bob reads none of it.
        assert_eq!(
            search(&db, "alice", "needle secret", Some(i64::MAX), None)
                .unwrap()
                .len(),
            20
        );
    }
}
