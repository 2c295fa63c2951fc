//! The tables of the `mgc` database, and the one way this crate reads them — from a reader
//! connection or from inside a write transaction, with the same SQL.
//!
//! Every table has a declared primary key (the store addresses rows by it on every copy). The
//! full-text index is not in `mgc`: it is the search follower's file (`search.rs`), which every
//! copy keeps from its own journal, so search on a mirror, a standby or a restored copy answers
//! as on the primary.

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
        // FTS5's own merging, off: until migration 3 the writer merged a bounded amount per
        // group instead.
        sql: "INSERT INTO events_fts (events_fts, rank) VALUES ('automerge', 0);",
    },
    Migration {
        version: 3,
        name: "search index moved to its own file, behind the commits",
        // The index of migration 1, updated in each group's transaction, made every post wait
        // for it and for the merges of its segments (the chat latency tail). `search::SEARCH`
        // keeps it now, in a file of its own, on every copy.
        sql: "DROP TRIGGER events_fts_delete;
          DROP TRIGGER events_fts_update;
          DROP TABLE events_fts;",
    },
    Migration {
        version: 4,
        name: "post keys: a client's retry of a post is answered with the message it made",
        // A client that got no answer (its chat node died, a failover refused it) sends the
        // post again with the same key: the first message is the answer, not a second one.
        sql: "CREATE TABLE post_keys (
              sender TEXT NOT NULL,
              key TEXT NOT NULL,
              event_id INTEGER NOT NULL,
              PRIMARY KEY (sender, key)
          );",
    },
];

/// Makes `db` ready to hold chat: applies `MGC_SCHEMA` (a primary) and starts the search
/// index's follower (every copy).
pub fn prepare(db: &Database) -> Result<(), ChatError> {
    if db.identity().role == tandem_store::Role::Primary {
        db.migrate(MGC_SCHEMA)?;
    }
    db.follow(crate::search::SEARCH)?;
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
        match r {
            // Damaged pages are the store's to know of (the copy's health, a handover).
            Err(ChatError::Store(e)) if e.is_page_damage() => Err(e),
            r => Ok(r),
        }
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
        db.wait_followed("search", db.durable_lsn(), crate::SEARCH_WAIT)
            .unwrap();
        read(db, |c| {
            c.rows(
                "SELECT rowid FROM search.events_fts WHERE events_fts MATCH ?1 ORDER BY rowid",
                [word],
                |r| r.get(0),
            )
        })
        .unwrap()
    }

    #[test]
    fn the_schema_applies_once_and_the_index_holds_only_messages() {
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

        assert!(
            read(&db, |c| c.row(
                "SELECT 1 FROM sqlite_master WHERE name LIKE 'events_fts%'",
                [],
                |r| r.get::<_, i64>(0)
            ))
            .unwrap()
            .is_none(),
            "no index inside mgc"
        );

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
            tandem_store::rusqlite::Connection::open(db.dir().join("follow-search.db")).unwrap();
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
