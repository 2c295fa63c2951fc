//! The tables of the `mgc` database, and the one way this crate reads them — from a reader
//! connection or from inside a write transaction, with the same SQL.
//!
//! Every table has a declared primary key (the store addresses rows by it on every copy). The
//! full-text index `events_fts` is an external-content FTS5 table kept by triggers, which fire
//! identically when a copy replays the journal: search on a mirror, a standby or a restored copy
//! answers as on the primary.

use crate::ChatError;
use tandem_store::rusqlite::{Connection, OptionalExtension, Params, Row};
use tandem_store::{Database, Migration, Tx};

/// The schema of the chat database `mgc`. Apply it with `db.migrate(MGC_SCHEMA)`.
pub static MGC_SCHEMA: &[Migration] = &[
    Migration {
        version: 1,
        name: "categories, rooms, members, events, read positions, search",
        sql: "CREATE TABLE categories (
              name TEXT PRIMARY KEY,
              description TEXT NOT NULL,
              created_by TEXT NOT NULL,
              created_ms INTEGER NOT NULL
          ) WITHOUT ROWID;
          CREATE TABLE rooms (
              name TEXT PRIMARY KEY,
              category TEXT,
              description TEXT NOT NULL,
              privacy TEXT NOT NULL CHECK (privacy IN ('open', 'closed', 'secret')),
              created_by TEXT NOT NULL,
              created_ms INTEGER NOT NULL
          ) WITHOUT ROWID;
          CREATE INDEX rooms_category ON rooms (category);
          CREATE TABLE members (
              room TEXT NOT NULL,
              user TEXT NOT NULL,
              manager INTEGER NOT NULL CHECK (manager IN (0, 1)),
              joined_ms INTEGER NOT NULL,
              PRIMARY KEY (room, user)
          ) WITHOUT ROWID;
          CREATE INDEX members_user ON members (user);
          CREATE TABLE events (
              id INTEGER PRIMARY KEY,
              room TEXT NOT NULL,
              kind TEXT NOT NULL CHECK (kind IN
                  ('message', 'room_created', 'room_updated', 'member_added', 'member_removed')),
              sender TEXT NOT NULL,
              time_ms INTEGER NOT NULL,
              text TEXT NOT NULL,
              subject TEXT,
              reply_to INTEGER,
              lsn INTEGER NOT NULL
          );
          CREATE INDEX events_room ON events (room, id);
          CREATE TABLE read_positions (
              user TEXT NOT NULL,
              room TEXT NOT NULL,
              event_id INTEGER NOT NULL,
              PRIMARY KEY (user, room)
          ) WITHOUT ROWID;
          CREATE VIRTUAL TABLE events_fts USING fts5 (text, content='events', content_rowid='id');
          CREATE INDEX events_lsn ON events (lsn);
          CREATE TRIGGER events_fts_delete AFTER DELETE ON events WHEN old.kind = 'message' BEGIN
              INSERT INTO events_fts (events_fts, rowid, text) VALUES ('delete', old.id, old.text);
          END;
          CREATE TRIGGER events_fts_update AFTER UPDATE ON events WHEN old.kind = 'message' BEGIN
              INSERT INTO events_fts (events_fts, rowid, text) VALUES ('delete', old.id, old.text);
          END;",
    },
    Migration {
        version: 2,
        name: "search index merged between groups",
        // FTS5's own merging, off: `SEARCH_MERGE` merges a bounded amount per group instead.
        sql: "INSERT INTO events_fts (events_fts, rank) VALUES ('automerge', 0);",
    },
];

/// Indexes the messages committed at LSNs `?1..=?2` for search, in one statement per group
/// commit (and per applied batch on every copy). Registered by [`prepare`]. (A trigger per
/// inserted message made SQLite open a statement savepoint per post, and FTS5 flushes its
/// pending index at every savepoint: one index segment per post. Deletes and updates, rare,
/// remove the old entry by trigger; an updated event carries the LSN of its update, so this
/// statement indexes its new text.)
pub static SEARCH_INDEX: tandem_store::Derived = tandem_store::Derived {
    name: "search index",
    sql: "INSERT INTO events_fts (rowid, text) \
          SELECT id, text FROM events WHERE lsn BETWEEN ?1 AND ?2 AND kind = 'message'",
};

/// Merges the search index's segments a bounded amount per group: 16 pages and one more per 8
/// records (the index grows with the group), each level's segments 4 at a time. FTS5's own
/// automatic merging, turned off by migration 2, does 64 × (levels) pages at once every 64
/// pages written, plus a whole level's segments once 16 pile up: inside one group's commit,
/// which held the group's posts, and every post behind it, for 10–50 ms (`bench chat`: about
/// 80 groups over 10 ms a run, 20 over 20 ms; now about 27 and 10 — what remains is one
/// term's whole list of occurrences, which a merge copies in one piece). Run on every copy:
/// a mirror's index stays as compact as the primary's.
pub static SEARCH_MERGE: tandem_store::Derived = tandem_store::Derived {
    name: "search index merge",
    sql: "INSERT INTO events_fts (events_fts, rank) SELECT 'merge', 16 + (?2 - ?1) / 8",
};

/// Makes `db` ready to hold chat: applies `MGC_SCHEMA` (a primary) and registers
/// `SEARCH_INDEX` and `SEARCH_MERGE` (every copy, before it commits or applies anything).
pub fn prepare(db: &Database) -> Result<(), ChatError> {
    if db.identity().role == tandem_store::Role::Primary {
        db.migrate(MGC_SCHEMA)?;
    }
    db.derive(SEARCH_INDEX)?;
    db.derive(SEARCH_MERGE)?;
    Ok(())
}

/// Read-only queries, the same on a reader connection and inside a write transaction, so that
/// the rules (who may see a room, what a row means) are written once.
pub(crate) trait Query {
    /// At most one row.
    fn row<T, P: Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnOnce(&Row<'_>) -> tandem_store::rusqlite::Result<T>,
    ) -> Result<Option<T>, ChatError>;

    /// Every row.
    fn rows<T, P: Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnMut(&Row<'_>) -> tandem_store::rusqlite::Result<T>,
    ) -> Result<Vec<T>, ChatError>;
}

impl Query for Connection {
    fn row<T, P: Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnOnce(&Row<'_>) -> tandem_store::rusqlite::Result<T>,
    ) -> Result<Option<T>, ChatError> {
        Ok(self.prepare_cached(sql)?.query_row(params, f).optional()?)
    }

    fn rows<T, P: Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnMut(&Row<'_>) -> tandem_store::rusqlite::Result<T>,
    ) -> Result<Vec<T>, ChatError> {
        let mut stmt = self.prepare_cached(sql)?;
        let rows = stmt.query_map(params, f)?;
        Ok(rows.collect::<Result<Vec<T>, _>>()?)
    }
}

impl Query for Tx<'_> {
    fn row<T, P: Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnOnce(&Row<'_>) -> tandem_store::rusqlite::Result<T>,
    ) -> Result<Option<T>, ChatError> {
        Ok(self.query_row(sql, params, f)?)
    }

    fn rows<T, P: Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnMut(&Row<'_>) -> tandem_store::rusqlite::Result<T>,
    ) -> Result<Vec<T>, ChatError> {
        Ok(self.query(sql, params, f)?)
    }
}

/// Runs `f` on a reader connection inside one read transaction: every statement of `f` sees
/// the same committed state.
pub(crate) fn read<T>(
    db: &Database,
    f: impl FnOnce(&Connection) -> Result<T, ChatError>,
) -> Result<T, ChatError> {
    db.read(|conn| {
        let snapshot = conn.unchecked_transaction()?;
        let r = f(&snapshot);
        // Dropping the transaction rolls it back: a reader changes nothing.
        drop(snapshot);
        Ok(r)
    })?
}

/// An LSN as SQLite stores it (a signed 64-bit integer); LSNs past `i64::MAX` do not occur.
pub(crate) fn lsn_param(lsn: u64) -> i64 {
    i64::try_from(lsn).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_store::{Options, StoreError, Value};

    fn event(id: i64, kind: &str, text: &str, lsn: u64) -> Vec<Value> {
        vec![
            Value::Integer(id),
            Value::Text("lobby".into()),
            Value::Text(kind.into()),
            Value::Text("alice".into()),
            Value::Integer(0),
            Value::Text(text.into()),
            Value::Null,
            Value::Null,
            Value::Integer(lsn as i64),
        ]
    }

    fn hits(db: &Database, word: &'static str) -> Vec<i64> {
        read(db, |c| {
            c.rows(
                "SELECT rowid FROM events_fts WHERE events_fts MATCH ?1 ORDER BY rowid",
                [word],
                |r| r.get(0),
            )
        })
        .unwrap()
    }

    #[test]
    fn the_search_index_is_merged_a_little_per_group_not_by_fts5_inside_a_commit() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(&dir.path().join("mgc"), "mgc", Options::default()).unwrap();
        crate::prepare(&db).unwrap();
        for id in 1..=300 {
            db.write(move |tx: &mut Tx<'_>| {
                tx.insert(
                    "events",
                    event(id, "message", &format!("hello {id}"), tx.lsn()),
                )
            })
            .unwrap();
        }
        let (automerge, leaves) = read(&db, |c| {
            let automerge: Option<i64> = c.row(
                "SELECT v FROM events_fts_config WHERE k = 'automerge'",
                [],
                |r| r.get(0),
            )?;
            // Rows of the index's pages (the structure and averages rows included).
            let leaves: Option<i64> =
                c.row("SELECT count(*) FROM events_fts_data", [], |r| r.get(0))?;
            Ok((automerge, leaves.unwrap()))
        })
        .unwrap();
        assert_eq!(automerge, Some(0), "FTS5 merges nothing inside a commit");
        // 300 groups flushed 300 one-page segments. Merged as they come: 5 rows here; left to
        // FTS5's crisis merges (16 segments a level) alone: 17.
        assert!(leaves < 10, "{leaves} rows: the segments were not merged");
        assert_eq!(hits(&db, "hello").len(), 300);
    }

    #[test]
    fn the_schema_applies_once_and_the_triggers_index_only_messages() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(&dir.path().join("mgc"), "mgc", Options::default()).unwrap();
        crate::prepare(&db).unwrap();
        assert_eq!(db.migrations().unwrap().len(), MGC_SCHEMA.len());
        assert!(db.migrate(MGC_SCHEMA).unwrap().is_empty(), "applied once");
        db.write(|tx: &mut Tx<'_>| {
            tx.insert(
                "events",
                event(1, "room_created", "alice created lobby", tx.lsn()),
            )?;
            tx.insert("events", event(2, "message", "hello lobby", tx.lsn()))?;
            Ok::<_, StoreError>(())
        })
        .unwrap();
        assert_eq!(hits(&db, "lobby"), [2], "room events are not searchable");

        // Updates and deletes keep the index exact, whatever the kinds before and after.
        db.write(|tx: &mut Tx<'_>| {
            tx.update("events", event(2, "message", "goodbye", tx.lsn()))?;
            tx.update("events", event(1, "message", "lobby renamed", tx.lsn()))
        })
        .unwrap();
        assert_eq!(hits(&db, "lobby"), [1]);
        assert_eq!(hits(&db, "goodbye"), [2]);
        db.write(|tx: &mut Tx<'_>| {
            tx.update(
                "events",
                event(1, "room_updated", "lobby renamed", tx.lsn()),
            )?;
            tx.delete("events", vec![Value::Integer(2)])
        })
        .unwrap();
        assert!(hits(&db, "lobby").is_empty());
        assert!(hits(&db, "goodbye").is_empty());
        let conn =
            tandem_store::rusqlite::Connection::open(db.dir().join(tandem_store::DB_FILE)).unwrap();
        conn.execute(
            "INSERT INTO events_fts (events_fts) VALUES ('integrity-check')",
            [],
        )
        .unwrap();

        // A kind outside the list is refused by the table itself.
        let e = db
            .write(|tx: &mut Tx<'_>| tx.insert("events", event(3, "gossip", "x", tx.lsn())))
            .unwrap_err();
        assert!(e.to_string().contains("CHECK"), "{e}");
    }
}
