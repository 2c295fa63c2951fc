//! Shared helpers of the store's integration tests.
#![allow(dead_code)]

use rusqlite::Connection;
use std::path::{Path, PathBuf};
use tandem_store::{Database, Migration, Options, StoreError, Tx, Value};

/// A schema like chat's: a table with an integer key, one with a composite key, and an FTS5
/// index kept by triggers (so replay must fire the same triggers).
pub static SCHEMA: &[Migration] = &[
    Migration {
        version: 1,
        name: "messages",
        sql: "CREATE TABLE messages (id INTEGER PRIMARY KEY, room INTEGER NOT NULL, sender TEXT NOT NULL, \
              time_ms INTEGER NOT NULL, body TEXT NOT NULL, extra BLOB);
              CREATE INDEX messages_room ON messages (room, id);",
    },
    Migration {
        version: 2,
        name: "members and search",
        sql: "CREATE TABLE members (room INTEGER NOT NULL, user TEXT NOT NULL, manager INTEGER NOT NULL, \
              PRIMARY KEY (room, user)) WITHOUT ROWID;
              CREATE VIRTUAL TABLE messages_fts USING fts5 (body, content='messages', content_rowid='id');
              CREATE TRIGGER messages_ai AFTER INSERT ON messages BEGIN
                INSERT INTO messages_fts (rowid, body) VALUES (new.id, new.body); END;
              CREATE TRIGGER messages_ad AFTER DELETE ON messages BEGIN
                INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.id, old.body); END;
              CREATE TRIGGER messages_au AFTER UPDATE ON messages BEGIN
                INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.id, old.body);
                INSERT INTO messages_fts (rowid, body) VALUES (new.id, new.body); END;",
    },
];

pub fn create(dir: &Path) -> Database {
    let db = Database::create(dir, "test", Options::default()).unwrap();
    db.migrate(SCHEMA).unwrap();
    db
}

/// Inserts one message with the next id; returns the id.
pub fn post(db: &Database, room: i64, body: &str) -> Result<i64, StoreError> {
    let body = body.to_string();
    db.write(move |tx: &mut Tx<'_>| {
        let id = tx
            .query_row("SELECT COALESCE(MAX(id), 0) + 1 FROM messages", [], |r| {
                r.get::<_, i64>(0)
            })?
            .unwrap();
        let t = tx.time_ms();
        tx.insert(
            "messages",
            vec![
                Value::Integer(id),
                Value::Integer(room),
                Value::Text("alice".into()),
                Value::Integer(t),
                Value::Text(body.clone()),
                Value::Null,
            ],
        )?;
        Ok::<_, StoreError>(id)
    })
    .map(|c| c.value)
}

/// Posts `each` messages from each of `threads` threads at once, the k-th of each thread's with
/// body `{prefix}{k}`, in room = the thread's index.
pub fn post_concurrently(db: &std::sync::Arc<Database>, threads: i64, each: usize, prefix: &str) {
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let (db, prefix) = (db.clone(), prefix.to_string());
            std::thread::spawn(move || {
                for k in 0..each {
                    post(&db, i, &format!("{prefix}{k}")).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

/// Every row of every table but the store's own, as text, sorted: equal dumps mean equal data.
pub fn dump(dir: &Path) -> Vec<String> {
    let conn = Connection::open_with_flags(
        dir.join(tandem_store::DB_FILE),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    dump_conn(&conn)
}

pub fn dump_conn(conn: &Connection) -> Vec<String> {
    let mut tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '_tandem_%' AND sql NOT LIKE 'CREATE VIRTUAL%' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    tables.sort();
    let mut out = Vec::new();
    for t in tables {
        let mut stmt = conn.prepare(&format!("SELECT * FROM \"{t}\"")).unwrap();
        let n = stmt.column_count();
        let mut rows: Vec<String> = stmt
            .query_map([], |r| {
                let mut s = format!("{t}:");
                for i in 0..n {
                    let v: Value = r.get(i)?;
                    s.push_str(&format!(" {v:?}"));
                }
                Ok(s)
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        rows.sort();
        out.extend(rows);
    }
    out
}

/// A primary in `t/p` with 40 posts, a full backup in `t/backups`, then three rounds of 25 posts
/// each followed by a log backup.
pub fn backup_dir_with_writes(t: &tempfile::TempDir) -> (Database, PathBuf) {
    use tandem_store::{full_backup, log_backup};
    let db = create(&t.path().join("p"));
    for i in 0..40 {
        post(&db, 1, &format!("before full {i}")).unwrap();
    }
    let backups = t.path().join("backups");
    full_backup(&db, &backups).unwrap();
    for round in 0..3 {
        for i in 0..25 {
            post(&db, 2, &format!("round {round} {i}")).unwrap();
        }
        assert_eq!(log_backup(&db, &backups).unwrap().len(), 1);
    }
    (db, backups)
}

/// The backup files in `dir` with extension `ext` (`tlb`, `tfb`), sorted by name: in LSN order.
pub fn files_in(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

/// The log backups in `dir`, in LSN order.
pub fn logs_in(dir: &Path) -> Vec<PathBuf> {
    files_in(dir, "tlb")
}
