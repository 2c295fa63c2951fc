//! A database: one directory holding one SQLite file in WAL mode (`tandem.db`) and a lock file.
//! Its identity — `database_id`, `epoch` with its history, `lsn`, `chain`, role — lives in the
//! same file as the rows, so it is always consistent with them.

use crate::error::{Result, StoreError};
use crate::history::{History, HistoryEntry, Position};
use crate::journal::{self, Consumer, JournalStats, RecordBatch};
use crate::record::{Chain, Epoch, Lsn};
use crate::schema::{Migration, pending_migrations};
use crate::writer::{Answer, Applied, Durability, Job, StopAt, Tx, WriteJob, Writer};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use tokio::sync::{oneshot, watch};

/// The SQLite file inside a database directory.
pub const DB_FILE: &str = "tandem.db";
const LOCK_FILE: &str = "LOCK";
/// Version of the on-disk layout of `tandem.db`'s internal tables. 2: journal segment bodies
/// start with a format byte (plain or LZ4); a format-1 database is upgraded in place when it is
/// opened for writing (`upgrade_format`).
pub const FORMAT_VERSION: i64 = 2;

/// Fixed when a database is created; kept by every copy, backup and restore.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DatabaseId(pub [u8; 16]);

impl DatabaseId {
    pub fn random() -> DatabaseId {
        let mut b = [0u8; 16];
        getrandom::fill(&mut b).expect("the operating system's random source");
        DatabaseId(b)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Debug for DatabaseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseId({})", self.to_hex())
    }
}

impl std::fmt::Display for DatabaseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// What a copy may do (DESIGN.md §2, copy roles).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads and writes.
    Primary,
    /// Applies the synchronous stream; no client reads.
    Mirror,
    /// Applies log backups; no reads.
    Restoring,
    /// Read-only between restores.
    Standby,
    /// Backup-service copy of a paired pool's database; read-only.
    Replica,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Mirror => "mirror",
            Role::Restoring => "restoring",
            Role::Standby => "standby",
            Role::Replica => "replica",
        }
    }

    pub fn parse(s: &str) -> Result<Role> {
        Ok(match s {
            "primary" => Role::Primary,
            "mirror" => Role::Mirror,
            "restoring" => Role::Restoring,
            "standby" => Role::Standby,
            "replica" => Role::Replica,
            other => {
                return Err(StoreError::Invalid(format!(
                    "unknown role {other:?} (primary, mirror, restoring, standby, replica)"
                )));
            }
        })
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Settings of an open database. Every one has a bound and a unit.
#[derive(Clone, Debug)]
pub struct Options {
    /// Most transactions one group commit takes.
    pub batch_records_max: usize,
    /// Most transactions one group commit takes while its answers wait for a synchronous
    /// mirror: they wait for the mirror's round trip too, and a group that took every waiting
    /// caller would leave the writer idle during it; with smaller groups the mirror applies
    /// one while the next is built.
    pub sync_batch_records_max: usize,
    /// Most write jobs waiting for the writer; callers past it wait.
    pub jobs_queued_max: usize,
    /// Journal size past which `health` warns (records are never dropped for size).
    pub journal_bytes_max: u64,
    /// SQLite page cache per connection.
    pub cache_kib: u32,
    /// Reader connections kept open for reuse.
    pub readers_max: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            batch_records_max: 1024,
            sync_batch_records_max: 128,
            jobs_queued_max: 8192,
            journal_bytes_max: 1 << 30,
            cache_kib: 16 * 1024,
            readers_max: 8,
        }
    }
}

/// The writer's authoritative view of the copy.
#[derive(Clone, Debug)]
pub(crate) struct State {
    pub(crate) name: String,
    pub(crate) database_id: DatabaseId,
    pub(crate) epoch: Epoch,
    pub(crate) lsn: Lsn,
    pub(crate) chain: Chain,
    pub(crate) role: Role,
    pub(crate) history: History,
    pub(crate) last_time_ms: i64,
    pub(crate) journal_bytes: u64,
    pub(crate) journal_oldest: Option<Lsn>,
}

/// Where a copy stands, as of its last commit.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Identity {
    pub name: String,
    pub database_id: DatabaseId,
    pub epoch: Epoch,
    pub lsn: Lsn,
    pub chain: Chain,
    pub role: Role,
    pub history: History,
    /// Commit time of the last record (ms since the Unix epoch), 0 before any.
    pub last_time_ms: i64,
}

impl Serialize for DatabaseId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl Serialize for Chain {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Chain {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Chain, D::Error> {
        let s = String::deserialize(d)?;
        Chain::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

impl Identity {
    pub fn position(&self) -> Position {
        Position {
            history: self.history.clone(),
            lsn: self.lsn,
            chain: self.chain,
        }
    }
}

/// Counters of the writer since the database was opened.
#[derive(Default, Debug)]
pub struct WriterCounters {
    /// SQLite transactions committed (one fsync each): group commits and applied batches.
    pub sqlite_commits: std::sync::atomic::AtomicU64,
    /// Records committed or applied.
    pub records: std::sync::atomic::AtomicU64,
    /// Write transactions refused or rolled back.
    pub aborted: std::sync::atomic::AtomicU64,
    /// Where the write transactions' time went.
    pub(crate) stages: crate::stages::StageCounters,
}

/// A snapshot of `WriterCounters`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WriterStats {
    pub sqlite_commits: u64,
    pub records: u64,
    pub aborted: u64,
    pub stages: crate::stages::CommitStages,
}

/// What the writer publishes after each commit, for readers of the handle.
pub(crate) struct Published {
    pub(crate) counters: WriterCounters,
    identity: Mutex<Identity>,
    journal: Mutex<(u64, Option<Lsn>)>,
    /// The acknowledged LSN: everything up to it survives a power loss (and, with a
    /// synchronous mirror, the loss of this copy).
    committed: watch::Sender<Lsn>,
    /// The committed LSN: visible to readers, maybe not yet acknowledged.
    written: watch::Sender<Lsn>,
    /// The newest records, for pulls (see `recent.rs`).
    pub(crate) recent: crate::recent::Recent,
    /// Commits fail (since the last one that went through).
    pub(crate) commit_failure: Mutex<Option<CommitFailure>>,
    /// The damage found in this copy, if any: by the last `scrub`, or by a read, a write or an
    /// apply that met damaged pages since.
    damage: Mutex<Option<String>>,
    /// The disk operations in progress (`stall.rs`).
    pub(crate) io: crate::stall::IoWatch,
}

impl Published {
    /// A read, a write or an apply met damaged pages (`StoreError::is_page_damage`,
    /// `writer::met_page_damage`): the copy is damaged from now on, as if a scrub had found it.
    /// The first damage met is kept (a scrub replaces it with its whole report).
    pub(crate) fn note_damage(&self, damage: impl FnOnce() -> String) {
        self.damage
            .lock()
            .expect("damage lock")
            .get_or_insert_with(damage);
    }

    /// `note_damage` when `e` is damaged pages met by `what`.
    pub(crate) fn note_error(&self, what: &str, e: &StoreError) {
        if e.is_page_damage() {
            self.note_damage(|| format!("{what} met damaged pages: {e}"));
        }
    }
}

/// A disk operation in progress for this long is reported in the copy's health.
pub const IO_STALL_REPORTED_MS: i64 = 1_000;

/// Commits failing now: since when (ms since the Unix epoch), how many transactions were
/// refused, and the last failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitFailure {
    pub since_ms: i64,
    pub refused: u64,
    pub error: String,
}

impl CommitFailure {
    /// How long commits have been failing, in ms.
    pub fn age_ms(&self) -> i64 {
        crate::writer::now_ms() - self.since_ms
    }
}

impl Published {
    pub(crate) fn set(&self, s: &State) {
        {
            let mut id = self.identity.lock().expect("identity lock");
            id.epoch = s.epoch;
            id.lsn = s.lsn;
            id.chain = s.chain;
            id.role = s.role;
            id.last_time_ms = s.last_time_ms;
            if id.history != s.history {
                id.history = s.history.clone();
            }
        }
        *self.journal.lock().expect("journal lock") = (s.journal_bytes, s.journal_oldest);
        self.written.send_if_modified(|w| {
            let changed = *w != s.lsn;
            *w = s.lsn;
            changed
        });
    }

    pub(crate) fn set_durable(&self, lsn: Lsn) {
        self.committed.send_if_modified(|d| {
            let newer = lsn > *d;
            if newer {
                *d = lsn;
            }
            newer
        });
    }

    pub(crate) fn identity(&self) -> Identity {
        self.identity.lock().expect("identity lock").clone()
    }

    /// The acknowledged LSN, updated as commits are acknowledged.
    pub(crate) fn subscribe_durable(&self) -> watch::Receiver<Lsn> {
        self.committed.subscribe()
    }

    /// The oldest LSN the journal holds, if any.
    fn journal_oldest(&self) -> Option<Lsn> {
        self.journal.lock().expect("journal lock").1
    }

    /// Journal records from `from` on, from memory when the newest records hold them, else
    /// from `on_disk` (the journal table, on whatever connection the caller reads with).
    pub(crate) fn read_journal(
        &self,
        from: Lsn,
        records_max: usize,
        bytes_max: usize,
        on_disk: impl FnOnce() -> Result<RecordBatch>,
    ) -> Result<RecordBatch> {
        match self
            .recent
            .read(from, records_max, bytes_max, self.journal_oldest())
        {
            Some(batch) => Ok(batch),
            None => on_disk(),
        }
    }

    /// The chain just after `lsn`, when the journal still holds it (or `lsn` is the current LSN
    /// or 0), from memory or else from `on_disk`.
    pub(crate) fn chain_at(
        &self,
        lsn: Lsn,
        on_disk: impl FnOnce() -> Result<Option<Chain>>,
    ) -> Result<Option<Chain>> {
        let id = self.identity();
        if lsn == id.lsn {
            return Ok(Some(id.chain));
        }
        if lsn == 0 {
            return Ok(Some(Chain::genesis(&id.database_id)));
        }
        // As the journal answers: only for an LSN it still holds.
        if self.journal_oldest().is_some_and(|o| lsn >= o)
            && let Some(chain) = self.recent.chain_at(lsn)
        {
            return Ok(Some(chain));
        }
        on_disk()
    }

    pub(crate) fn role(&self) -> Role {
        self.identity.lock().expect("identity lock").role
    }
}

struct Inner {
    dir: PathBuf,
    /// The file this handle opened: what it opens by path later must be the same.
    file: CopyFile,
    jobs: Option<SyncSender<Job>>,
    published: Arc<Published>,
    /// Idle reader connections, each with how many followers' files it has attached.
    readers: Mutex<Vec<(Connection, usize)>>,
    /// The followers running on this copy, in the order they were started (readers attach
    /// their files in that order).
    follows: RwLock<Vec<crate::follow::Running>>,
    thread: Option<JoinHandle<()>>,
    options: Options,
    gate: Arc<crate::ack::Gate>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for f in self.follows.get_mut().expect("follows lock").iter_mut() {
            f.stop();
        }
        // Every connection closes before the writer, whose end lets go of the directory's lock.
        self.readers.get_mut().expect("readers lock").clear();
        // Closing the queue ends the writer's loop once it has answered every queued job.
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A handle to an open database. Cheap to clone; the database closes when the last handle goes.
#[derive(Clone)]
pub struct Database {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let id = self.identity();
        f.debug_struct("Database")
            .field("dir", &self.inner.dir)
            .field("name", &id.name)
            .field("role", &id.role)
            .field("epoch", &id.epoch)
            .field("lsn", &id.lsn)
            .finish()
    }
}

/// The result of a committed write: the caller's value and the LSN it committed at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed<R> {
    pub value: R,
    /// The transaction's LSN (the current LSN for a transaction that changed nothing).
    pub lsn: Lsn,
}

/// Prepared statements kept per connection: the store's own and a domain's (rusqlite keeps 16
/// by default, and a statement evicted is parsed again on its next use).
const STATEMENTS_CACHED_MAX: usize = 256;

/// Statements keep their plan whatever is bound to them. Without this, a statement whose plan
/// looked at a bound value (a `LIMIT ?`, a comparison the planner folded) is parsed and planned
/// again at each new binding: a third of the chat database writer's time went to re-preparing
/// cached statements.
fn stable_plans(conn: &Connection) -> Result<()> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

fn configure(conn: &Connection, options: &Options) -> Result<()> {
    conn.set_prepared_statement_cache_capacity(STATEMENTS_CACHED_MAX);
    stable_plans(conn)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // The WAL is fsynced by the acknowledgment stage before any caller is answered.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "cache_size", -(options.cache_kib as i64))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(())
}

const INTERNAL_SCHEMA: &str = "
CREATE TABLE _tandem_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    format_version INTEGER NOT NULL,
    database_id BLOB NOT NULL,
    name TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    lsn INTEGER NOT NULL,
    chain BLOB NOT NULL,
    role TEXT NOT NULL,
    last_time_ms INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE _tandem_history (epoch INTEGER PRIMARY KEY, first_lsn INTEGER NOT NULL);
CREATE TABLE _tandem_journal (
    first_lsn INTEGER PRIMARY KEY,
    last_lsn INTEGER NOT NULL,
    chain_before BLOB NOT NULL,
    chain_after BLOB NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE _tandem_consumers (name TEXT PRIMARY KEY, lsn INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE _tandem_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, sql TEXT NOT NULL);
";

fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .read(true)
        .open(&path)
        .map_err(|e| StoreError::io(&path, e))?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            return Err(StoreError::Locked(format!(
                "database {} is already open ({}); a copy is opened by one process once",
                dir.display(),
                holder.trim()
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(StoreError::io(&path, e)),
    }
    f.set_len(0).map_err(|e| StoreError::io(&path, e))?;
    let _ = write!(f, "pid {}", std::process::id());
    Ok(f)
}

/// Refuses a directory whose database file is not a tandem database (another program's SQLite
/// file, or no SQLite file at all), reading it only: nothing in `dir` changes.
pub(crate) fn check_tandem_file(dir: &Path) -> Result<()> {
    // A damaged file is damage (`is_damage`), whatever SQLite's error says.
    let tables: i64 =
        Connection::open_with_flags(dir.join(DB_FILE), OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|conn| {
                conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '_tandem_state'",
            [],
            |r| r.get(0),
        )
            })
            .map_err(|e| damage_behind(dir, e.into()))?;
    if tables == 0 {
        return Err(StoreError::Invalid(format!(
            "{} is not a tandem database: its {DB_FILE} is another program's SQLite file (no \
             _tandem_state table)",
            dir.display()
        )));
    }
    Ok(())
}

/// What an open's failure `e` is: damage when SQLite's own check of the file finds any. A
/// damaged page does not always read as damage: a length field flipped reads as a value too
/// big (`SQLITE_TOOBIG`), a page number as out of range. The check runs on a failed open
/// alone, read-only.
fn damage_behind(dir: &Path, e: StoreError) -> StoreError {
    let StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) = &e else {
        return e;
    };
    if e.is_page_damage()
        || matches!(
            f.code,
            rusqlite::ErrorCode::DatabaseBusy
                | rusqlite::ErrorCode::DatabaseLocked
                | rusqlite::ErrorCode::SystemIoFailure
                | rusqlite::ErrorCode::DiskFull
                | rusqlite::ErrorCode::CannotOpen
                | rusqlite::ErrorCode::PermissionDenied
                | rusqlite::ErrorCode::ReadOnly
                | rusqlite::ErrorCode::OutOfMemory
        )
    {
        return e;
    }
    match first_problem(&dir.join(DB_FILE)) {
        Some(problem) => StoreError::Corrupt(format!(
            "{} is damaged: {problem} (opening it: {e})",
            dir.display()
        )),
        None => e,
    }
}

/// The first problem SQLite's `quick_check` finds in `file`, read-only; `None` when it finds
/// none or cannot run.
fn first_problem(file: &Path) -> Option<String> {
    let conn = Connection::open_with_flags(file, OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    match conn.query_row("PRAGMA quick_check(1)", [], |r| r.get::<_, String>(0)) {
        Ok(first) if first == "ok" => None,
        Ok(first) => Some(first),
        // The check itself met the damage.
        Err(e) => Some(StoreError::from(e).to_string()),
    }
}

/// Takes `dir`'s lock once no handle holds it, waiting up to `wait` for an open one to close:
/// what replaces a copy's directory must not do so under a handle still open on it (SQLite
/// opens a connection's WAL and shared memory by path, the first time it reads).
pub(crate) fn lock_dir_when_closed(dir: &Path, wait: std::time::Duration) -> Result<File> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        match lock_dir(dir) {
            Err(StoreError::Locked(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(StoreError::Locked(_)) => {
                let holder = std::fs::read_to_string(dir.join(LOCK_FILE)).unwrap_or_default();
                let waited = if wait.is_zero() {
                    String::new()
                } else {
                    format!(" after {} s", wait.as_secs_f64())
                };
                return Err(StoreError::Locked(format!(
                    "database {} is still open ({}){waited}: it is replaced only once closed, \
                     and is as it was",
                    dir.display(),
                    holder.trim(),
                )));
            }
            r => return r,
        }
    }
}

/// The database file a handle opened, by device and inode. A restore replaces a copy only once
/// its handle is closed (`lock_dir_when_closed`), but a directory renamed or replaced by hand
/// under an open handle must not lead it to the new copy: what it opens by path afterwards (a
/// reader, a follower's file to attach) is refused. (Nor does its closing delete the new copy's
/// files: `wal_vfs::keep_wal_on_close`.)
#[derive(Clone, Debug)]
pub(crate) struct CopyFile {
    pub(crate) path: PathBuf,
    dev: u64,
    ino: u64,
}

impl CopyFile {
    fn of(path: PathBuf) -> Result<CopyFile> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&path).map_err(|e| StoreError::io(&path, e))?;
        Ok(CopyFile {
            dev: m.dev(),
            ino: m.ino(),
            path,
        })
    }

    /// Whether the path still names the file the handle opened: called after opening by path.
    pub(crate) fn check(&self) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == (self.dev, self.ino) => Ok(()),
            _ => Err(StoreError::Closed(format!(
                "{} was replaced or removed since this handle opened it (by hand: a restore \
                 waits for the handle to close): the handle no longer reaches its copy",
                self.path.display()
            ))),
        }
    }
}

/// Removes the files `file` + each suffix ("" for the SQLite file itself, "-wal", "-shm") that
/// exist.
pub(crate) fn remove_sqlite_files(file: &Path, suffixes: &[&str]) -> Result<()> {
    for suffix in suffixes {
        let f = PathBuf::from(format!("{}{suffix}", file.display()));
        match std::fs::remove_file(&f) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(StoreError::io(&f, e));
            }
            _ => {}
        }
    }
    Ok(())
}

/// A read-only connection to the database in `dir`, as readers use it.
pub(crate) fn open_reader_connection(dir: &Path, cache_kib: u32) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        dir.join(DB_FILE),
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.pragma_update(None, "cache_size", -(cache_kib as i64))?;
    conn.pragma_update(None, "query_only", true)?;
    conn.set_prepared_statement_cache_capacity(STATEMENTS_CACHED_MAX);
    stable_plans(&conn)?;
    // A reader closing while no other connection holds a lock would otherwise checkpoint
    // the whole WAL and delete it, on the caller's path; checkpoints are the checkpointer's.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(conn)
}

/// Reads the identity stored in a database file (used by open and by backups of a snapshot).
/// The identity a connection sees — `database_id`, epoch, LSN — in its own read transaction:
/// with the rows read in the same transaction, exactly the state they are of.
pub fn identity_in(conn: &Connection) -> Result<(DatabaseId, Epoch, Lsn)> {
    let (id, epoch, lsn): (Vec<u8>, i64, i64) = conn.query_row(
        "SELECT database_id, epoch, lsn FROM _tandem_state WHERE id = 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let database_id = DatabaseId(
        id.try_into()
            .map_err(|_| StoreError::Corrupt("database_id is not 16 bytes".into()))?,
    );
    // The journal's newest segment is the position; the row only when the journal is empty.
    let lsn = journal::newest_lsn(conn)?.unwrap_or(0).max(lsn as Lsn);
    Ok((database_id, epoch as Epoch, lsn))
}

/// Format 1 → 2: every journal segment body gains the plain-format byte, in one transaction,
/// when a format-1 database is opened for writing. Any other format is left to `read_state`.
fn upgrade_format(conn: &Connection) -> Result<()> {
    let version: Option<i64> = conn
        .query_row(
            "SELECT format_version FROM _tandem_state WHERE id = 1",
            [],
            |r| r.get(0),
        )
        .optional()
        .ok()
        .flatten();
    if version != Some(1) {
        return Ok(());
    }
    let tx = conn.unchecked_transaction()?;
    let firsts: Vec<i64> = {
        let mut stmt = tx.prepare("SELECT first_lsn FROM _tandem_journal ORDER BY first_lsn")?;
        stmt.query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?
    };
    for first in firsts {
        let old: Vec<u8> = tx.query_row(
            "SELECT body FROM _tandem_journal WHERE first_lsn = ?1",
            [first],
            |r| r.get(0),
        )?;
        let mut body = Vec::with_capacity(old.len() + 1);
        body.push(journal::SEGMENT_PLAIN);
        body.extend_from_slice(&old);
        tx.execute(
            "UPDATE _tandem_journal SET body = ?1 WHERE first_lsn = ?2",
            params![body, first],
        )?;
    }
    tx.execute(
        "UPDATE _tandem_state SET format_version = ?1 WHERE id = 1",
        [FORMAT_VERSION],
    )?;
    tx.commit()?;
    Ok(())
}

pub(crate) fn read_state(conn: &Connection) -> Result<State> {
    let (version, id, name, epoch, lsn, chain, role, last_time_ms): (
        i64,
        Vec<u8>,
        String,
        i64,
        i64,
        Vec<u8>,
        String,
        i64,
    ) = conn
        .query_row(
            "SELECT format_version, database_id, name, epoch, lsn, chain, role, last_time_ms \
             FROM _tandem_state WHERE id = 1",
            [],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ))
            },
        )
        .map_err(|e| {
            StoreError::Corrupt(format!("not a tandem database (no identity row): {e}"))
        })?;
    if version == 1 {
        return Err(StoreError::Invalid(format!(
            "database format 1; this program reads format {FORMAT_VERSION}: open it for writing \
             once with this program (`tandem db backup`, or a node that holds it) to upgrade it \
             in place"
        )));
    }
    if version != FORMAT_VERSION {
        return Err(StoreError::Invalid(format!(
            "database format {version}; this program reads format {FORMAT_VERSION}"
        )));
    }
    let database_id = DatabaseId(
        id.try_into()
            .map_err(|_| StoreError::Corrupt("database_id is not 16 bytes".into()))?,
    );
    let mut history = History::default();
    {
        let mut stmt =
            conn.prepare("SELECT epoch, first_lsn FROM _tandem_history ORDER BY epoch")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (epoch, first_lsn) = row?;
            history.0.push(HistoryEntry {
                epoch: epoch as Epoch,
                first_lsn: first_lsn as Lsn,
            });
        }
    }
    let stats = journal::stats(conn)?;
    // The position: the journal's newest segment, written in the same SQLite transaction as
    // the rows; the identity row only when the journal is empty (the writer copies the
    // position there before it removes segments, not at every group commit).
    let (mut lsn, mut chain, mut last_time_ms) =
        (lsn as Lsn, Chain::from_slice(&chain)?, last_time_ms);
    if let Some(newest) = journal::newest(conn)? {
        if newest.last_lsn < lsn {
            return Err(StoreError::Corrupt(format!(
                "the journal ends at LSN {} but the copy is at LSN {lsn}",
                newest.last_lsn
            )));
        }
        (lsn, chain, last_time_ms) = (newest.last_lsn, newest.chain_after, newest.time_ms);
    }
    if history.last_epoch() != epoch as Epoch {
        return Err(StoreError::Corrupt(format!(
            "the history ends at epoch {} but the copy is at epoch {epoch}",
            history.last_epoch()
        )));
    }
    Ok(State {
        name,
        database_id,
        epoch: epoch as Epoch,
        lsn,
        chain,
        role: Role::parse(&role)?,
        history,
        last_time_ms,
        journal_bytes: stats.bytes,
        journal_oldest: stats.oldest_lsn,
    })
}

impl Database {
    /// Creates a new database — a primary at epoch 1 — in `dir`, which must not exist or be empty.
    pub fn create(dir: &Path, name: &str, options: Options) -> Result<Database> {
        let id = DatabaseId::random();
        let mut history = History::default();
        history.push(1, 1);
        Self::init(dir, name, id, Role::Primary, history, options)
    }

    /// Creates an empty copy of the database `database_id` (LSN 0, no epoch yet) that can apply
    /// that database's records from LSN 1 — its migrations included.
    pub fn create_copy(
        dir: &Path,
        name: &str,
        database_id: DatabaseId,
        role: Role,
        options: Options,
    ) -> Result<Database> {
        if role == Role::Primary {
            return Err(StoreError::Role(
                "an empty copy cannot be primary; recover it".into(),
            ));
        }
        Self::init(dir, name, database_id, role, History::default(), options)
    }

    fn init(
        dir: &Path,
        name: &str,
        id: DatabaseId,
        role: Role,
        history: History,
        options: Options,
    ) -> Result<Database> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        let lock = lock_dir(dir)?;
        if dir.join(DB_FILE).exists() {
            return Err(StoreError::Invalid(format!(
                "{} already holds a database",
                dir.display()
            )));
        }
        // A WAL and shared-memory file without their database (closes keep them) belong to no
        // database: SQLite would replay the WAL's frames into the new file.
        remove_sqlite_files(&dir.join(DB_FILE), &["-wal", "-shm"])?;
        // Built under another name and renamed once its identity is committed: a crash while
        // creating leaves no half-made database behind.
        let partial = dir.join(format!("{DB_FILE}.creating"));
        let _ = std::fs::remove_file(&partial);
        {
            let conn = Connection::open(&partial)?;
            let tx = conn.unchecked_transaction()?;
            tx.execute_batch(INTERNAL_SCHEMA)?;
            tx.execute(
                "INSERT INTO _tandem_state (id, format_version, database_id, name, epoch, lsn, chain, \
                 role, last_time_ms, created_ms) VALUES (1, ?1, ?2, ?3, ?4, 0, ?5, ?6, 0, ?7)",
                params![
                    FORMAT_VERSION,
                    &id.0[..],
                    name,
                    history.last_epoch() as i64,
                    &Chain::genesis(&id).0[..],
                    role.as_str(),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis() as i64)
                        .unwrap_or(0)
                ],
            )?;
            for e in &history.0 {
                tx.execute(
                    "INSERT INTO _tandem_history (epoch, first_lsn) VALUES (?1, ?2)",
                    params![e.epoch as i64, e.first_lsn as i64],
                )?;
            }
            tx.commit()?;
        }
        File::open(&partial)
            .and_then(|f| f.sync_all())
            .map_err(|e| StoreError::io(&partial, e))?;
        std::fs::rename(&partial, dir.join(DB_FILE)).map_err(|e| StoreError::io(dir, e))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StoreError::io(dir, e))?;
        Self::open_locked(dir, lock, options)
    }

    /// Opens an existing database.
    pub fn open(dir: &Path, options: Options) -> Result<Database> {
        let file = dir.join(DB_FILE);
        if !file.exists() {
            return Err(StoreError::Invalid(format!(
                "{} is not a tandem database (no {DB_FILE})",
                dir.display()
            )));
        }
        // Before anything writes to the directory: a foreign SQLite file is left as it was
        // (the writer's connection would switch it to WAL mode and add its files).
        let opened = check_tandem_file(dir)
            .and_then(|()| lock_dir(dir))
            .and_then(|lock| Self::open_locked(dir, lock, options));
        opened.map_err(|e| damage_behind(dir, e))
    }

    fn open_locked(dir: &Path, lock: File, options: Options) -> Result<Database> {
        // The writer's connection: its WAL writes gathered, one per commit (`wal_vfs`); used by
        // the writer's thread alone, so without SQLite's per-connection mutex.
        let conn = Connection::open_with_flags_and_vfs(
            dir.join(DB_FILE),
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            crate::wal_vfs::name()?,
        )?;
        configure(&conn, &options)?;
        crate::wal_vfs::keep_wal_on_close(&conn)?;
        Self::start(dir, conn, lock, options)
    }

    fn start(dir: &Path, mut conn: Connection, lock: File, options: Options) -> Result<Database> {
        upgrade_format(&conn)?;
        let file = CopyFile::of(dir.join(DB_FILE))?;
        let state = read_state(&conn)?;
        let (committed, _) = watch::channel(state.lsn);
        let (written, _) = watch::channel(state.lsn);
        let published = Arc::new(Published {
            counters: WriterCounters::default(),
            identity: Mutex::new(Identity {
                name: state.name.clone(),
                database_id: state.database_id,
                epoch: state.epoch,
                lsn: state.lsn,
                chain: state.chain,
                role: state.role,
                history: state.history.clone(),
                last_time_ms: state.last_time_ms,
            }),
            journal: Mutex::new((state.journal_bytes, state.journal_oldest)),
            committed,
            written,
            commit_failure: Mutex::new(None),
            damage: Mutex::new(None),
            io: Default::default(),
            recent: Default::default(),
        });
        let gate = Arc::new(crate::ack::Gate::default());
        let ack = crate::ack::AckStage::start(
            dir.join(format!("{DB_FILE}-wal")),
            published.clone(),
            gate.clone(),
        )?;
        // What the file holds now may sit in the page cache after a crash: make it durable.
        ack.wait_durable(state.lsn)?;
        // Checkpoints run on their own connection, off the writer's path.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let checkpointer = crate::checkpoint::Checkpointer::start(
            dir.join(DB_FILE),
            crate::checkpoint::CHECKPOINT_INTERVAL,
        );
        checkpointer.watch(&mut conn)?;
        let writer = Writer::new(
            conn,
            state,
            published.clone(),
            crate::writer::GroupMax {
                alone: options.batch_records_max,
                sync: options.sync_batch_records_max,
            },
            lock,
            ack,
            checkpointer,
        )?;
        let (jobs, rx) = sync_channel(options.jobs_queued_max);
        let thread = std::thread::Builder::new()
            .name(format!("writer {}", dir.display()))
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::io(dir, e))?;
        Ok(Database {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                file,
                jobs: Some(jobs),
                published,
                readers: Mutex::new(Vec::new()),
                follows: RwLock::new(Vec::new()),
                thread: Some(thread),
                options,
                gate,
            }),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Whether `other` is a handle of this same opening of the copy (not of a copy opened
    /// again, or restored, in the same directory).
    pub fn same_handle(&self, other: &Database) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Identity as of the last commit.
    pub fn identity(&self) -> Identity {
        self.inner.published.identity()
    }

    pub fn position(&self) -> Position {
        self.identity().position()
    }

    /// What the writer did since the database was opened.
    pub fn writer_stats(&self) -> WriterStats {
        let c = &self.inner.published.counters;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        WriterStats {
            sqlite_commits: get(&c.sqlite_commits),
            records: get(&c.records),
            aborted: get(&c.aborted),
            stages: c.stages.snapshot(),
        }
    }

    /// The acknowledged LSN: every record up to it is on disk, and with a synchronous mirror
    /// on the mirror too (callers are answered only then). What leaves the copy — live events,
    /// log backups — stops there.
    pub fn durable_lsn(&self) -> Lsn {
        *self.inner.published.committed.borrow()
    }

    /// The acknowledged LSN, updated as commits are acknowledged.
    pub fn subscribe(&self) -> watch::Receiver<Lsn> {
        self.inner.published.committed.subscribe()
    }

    /// The committed LSN (readable, maybe not yet acknowledged), updated at each commit: what
    /// a mirror may be sent.
    pub fn subscribe_committed(&self) -> watch::Receiver<Lsn> {
        self.inner.published.written.subscribe()
    }

    /// The acknowledgment gate: synchronous mirroring, the lease, fencing.
    pub fn gate(&self) -> &crate::ack::Gate {
        &self.inner.gate
    }

    fn send(&self, job: Job) -> Result<()> {
        self.inner
            .jobs
            .as_ref()
            .expect("the queue lives as long as the handle")
            .send(job)
            .map_err(|_| StoreError::Closed("writer thread ended".into()))
    }

    fn submit<R, E, F>(&self, f: F) -> Result<oneshot::Receiver<Result<Committed<R>, E>>, E>
    where
        F: Fn(&mut Tx<'_>) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel::<Result<Committed<R>, E>>();
        let job = WriteJob {
            submitted: std::time::Instant::now(),
            run: Box::new(move |tx: &mut Tx<'_>| match f(tx) {
                Ok(v) => Ok(Box::new(v) as Box<dyn std::any::Any + Send>),
                Err(e) => Err(Box::new(e) as Box<dyn std::any::Any + Send>),
            }),
            answer: Box::new(move |a: Answer| {
                let r = match a {
                    Answer::Committed(v, lsn) => Ok(Committed {
                        value: *v.downcast::<R>().expect("the job's own value type"),
                        lsn,
                    }),
                    Answer::Aborted(e) => {
                        Err(*e.downcast::<E>().expect("the job's own error type"))
                    }
                    Answer::Failed(e) => Err(E::from(e)),
                };
                let _ = reply.send(r);
            }),
        };
        self.send(Job::Write(job)).map_err(E::from)?;
        Ok(rx)
    }

    /// Runs `f` as one write transaction on the primary and returns once it is durable.
    /// An error from `f` undoes everything `f` did. `f` may run more than once (when a
    /// transaction grouped with it fails after changing rows, the group is run again): it must
    /// decide from the database and its captured values only — `tx.time_ms()` for the time.
    /// Blocking: call from a plain thread.
    pub fn write<R, E, F>(&self, f: F) -> Result<Committed<R>, E>
    where
        F: Fn(&mut Tx<'_>) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        self.submit(f)?
            .blocking_recv()
            .unwrap_or_else(|_| Err(E::from(StoreError::Closed("the writer stopped".into()))))
    }

    /// `write` for async callers.
    pub async fn write_async<R, E, F>(&self, f: F) -> Result<Committed<R>, E>
    where
        F: Fn(&mut Tx<'_>) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        self.submit(f)?
            .await
            .unwrap_or_else(|_| Err(E::from(StoreError::Closed("the writer stopped".into()))))
    }

    /// Applies the migrations this database has not applied yet, as one journaled record.
    /// Returns the versions applied. A migration that differs from one already applied is refused.
    pub fn migrate(&self, migrations: &'static [Migration]) -> Result<Vec<u32>> {
        let done = self.write(move |tx: &mut Tx<'_>| -> Result<Vec<u32>> {
            let applied = tx.query(
                "SELECT version, sql FROM _tandem_migrations ORDER BY version",
                [],
                |r| Ok((r.get::<_, u32>(0)?, r.get::<_, String>(1)?)),
            )?;
            let pending = pending_migrations(&applied, migrations)?;
            for m in &pending {
                tx.migrate(m.version, m.name, m.sql)?;
            }
            Ok(pending.iter().map(|m| m.version).collect())
        })?;
        Ok(done.value)
    }

    /// Starts `follow` on this copy, once per name: from now on its thread keeps its file up to
    /// date behind the acknowledged commits, and readers see the file as schema `follow.name`.
    pub fn follow(&self, follow: crate::follow::Follow) -> Result<()> {
        let mut follows = self.inner.follows.write().expect("follows lock");
        if follows.iter().any(|f| f.follow.name == follow.name) {
            return Ok(());
        }
        let mut running = crate::follow::start(
            &self.inner.dir,
            &self.inner.file,
            self.inner.options.cache_kib,
            follow,
            self.inner.published.clone(),
        )?;
        if let Err(e) = self.inner.file.check() {
            running.stop();
            return Err(e);
        }
        follows.push(running);
        Ok(())
    }

    /// Waits until the follower `name` holds every acknowledged record up to `lsn`, for at most
    /// `timeout`: `StoreError::CatchingUp` when it does not by then.
    pub fn wait_followed(&self, name: &str, lsn: Lsn, timeout: std::time::Duration) -> Result<()> {
        let progress = self.progress_of(name)?;
        progress.wait(name, lsn, timeout)
    }

    /// The LSN up to which the follower `name` holds every acknowledged record.
    pub fn followed_lsn(&self, name: &str) -> Result<Lsn> {
        Ok(self.progress_of(name)?.lsn())
    }

    /// Every follower running on this copy, with the LSN up to which it holds every
    /// acknowledged record.
    pub fn followers(&self) -> Vec<(&'static str, Lsn)> {
        let follows = self.inner.follows.read().expect("follows lock");
        follows
            .iter()
            .map(|f| (f.follow.name, f.progress.lsn()))
            .collect()
    }

    fn progress_of(&self, name: &str) -> Result<Arc<crate::follow::Progress>> {
        let follows = self.inner.follows.read().expect("follows lock");
        follows
            .iter()
            .find(|f| f.follow.name == name)
            .map(|f| f.progress.clone())
            .ok_or_else(|| StoreError::Invalid(format!("no follower named {name} on this copy")))
    }

    /// Runs `f` in the writer thread, with exclusive access to the write connection.
    fn control<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Writer) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Control(Box::new(move |w: &mut Writer| {
            let _ = reply.send(f(w));
        })))?;
        rx.blocking_recv().unwrap_or_else(|_| {
            Err(StoreError::Closed(
                "writer stopped during a control job".into(),
            ))
        })
    }

    /// Applies records read from another copy of this database. Refused on a primary, on a gap
    /// or overlap, on a chain that does not continue this copy's, on an older epoch.
    pub fn apply(&self, batch: RecordBatch, stop: Option<StopAt>) -> Result<Applied> {
        self.control(move |w| w.apply(&batch, stop, Durability::Wait))
    }

    /// Applies records as [`apply`](Self::apply) does, but returns once they are committed on
    /// this copy, before they are durable: a mirror applies its next batch while this one is
    /// fsynced, and reports as hardened what [`durable_lsn`](Self::durable_lsn) says.
    pub fn apply_pipelined(&self, batch: RecordBatch) -> Result<Applied> {
        self.control(move |w| w.apply(&batch, None, Durability::Publish))
    }

    /// Makes this copy the primary of a new epoch (`epoch`, or the next one). After this, no
    /// record of the old chain is applied.
    pub fn recover(&self, epoch: Option<Epoch>) -> Result<Identity> {
        self.control(move |w| w.recover(epoch))
    }

    /// Changes the role of a non-primary copy (or demotes a primary).
    pub fn set_role(&self, role: Role) -> Result<()> {
        self.control(move |w| w.set_role(role))
    }

    /// Registers a journal consumer whose cursor starts at `lsn`.
    pub fn register_consumer(&self, name: &str, lsn: Lsn) -> Result<()> {
        let name = name.to_string();
        self.control(move |w| w.set_consumer(&name, lsn, true))
    }

    /// Moves a consumer's cursor forward, durably. The records no consumer needs any more are
    /// then removed by the writer a slice at a time between its groups, not before this returns
    /// (`prune_journal` removes them at once).
    pub fn advance_consumer(&self, name: &str, lsn: Lsn) -> Result<()> {
        let name = name.to_string();
        self.control(move |w| {
            w.set_consumer(&name, lsn, false)?;
            w.wait_durable()?;
            w.prune_soon();
            Ok(())
        })
    }

    /// On a copy that is not primary: keep the journal's records from `from` on — what the
    /// primary it follows keeps, so that it has what the primary's consumers need if it takes
    /// over — and remove the others a slice at a time. Its cursors from days as a primary go.
    /// Refused on a primary.
    pub fn retain_from(&self, from: Lsn) -> Result<()> {
        self.control(move |w| w.retain_from(from))
    }

    pub fn remove_consumer(&self, name: &str) -> Result<bool> {
        let name = name.to_string();
        self.control(move |w| w.remove_consumer(&name))
    }

    pub fn consumers(&self) -> Result<Vec<Consumer>> {
        self.read(journal::consumers)
    }

    /// Removes the journal records that every registered consumer is past.
    pub fn prune_journal(&self) -> Result<u64> {
        self.control(|w| w.prune_journal())
    }

    pub(crate) fn reset_journal(&self) -> Result<()> {
        self.control(|w| w.reset_journal())
    }

    pub fn journal_stats(&self) -> JournalStats {
        let (bytes, oldest) = *self.inner.published.journal.lock().expect("journal lock");
        let lsn = self.identity().lsn;
        JournalStats {
            oldest_lsn: oldest,
            records: oldest.map(|o| lsn + 1 - o).unwrap_or(0),
            bytes,
        }
    }

    /// Commits failing now (none went through since they started to), if they are.
    pub fn commit_failure(&self) -> Option<CommitFailure> {
        self.inner
            .published
            .commit_failure
            .lock()
            .expect("commit failure lock")
            .clone()
    }

    /// The disk operation in progress for the longest (the writer's, or an fsync), if any: one
    /// that started long ago says the disk stopped answering (`stall.rs`).
    pub fn io_stall(&self) -> Option<crate::stall::IoStall> {
        self.inner.published.io.oldest()
    }

    /// `io_stall`, once it has lasted `IO_STALL_REPORTED_MS`: the disk is reported as not
    /// answering (the copy's health, its mirroring state).
    pub fn disk_not_answering(&self) -> Option<crate::stall::IoStall> {
        self.io_stall()
            .filter(|s| s.age_ms() >= IO_STALL_REPORTED_MS)
    }

    /// Reads every page of the copy (SQLite's `quick_check`, on a reader: no commit waits for
    /// it): `None` when it is sound, else the damage found, which `damage` and the copy's
    /// health report from then on. A copy made again from another (a reseed) starts sound.
    pub fn scrub(&self) -> Result<Option<String>> {
        let report: Vec<String> = self.read(|c| {
            let mut stmt = c.prepare("PRAGMA quick_check(10)")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
        })?;
        let found = (report != ["ok"]).then(|| {
            format!(
                "SQLite's quick_check: {}",
                report.join("\n").replace('\n', "; ")
            )
        });
        found.clone_into(&mut self.inner.published.damage.lock().expect("damage lock"));
        Ok(found)
    }

    /// The damage found in this copy, if any: by the last `scrub`, or by a read, a write or an
    /// apply that met damaged pages since (then the error it met).
    pub fn damage(&self) -> Option<String> {
        self.inner
            .published
            .damage
            .lock()
            .expect("damage lock")
            .clone()
    }

    /// Conditions an operator should know about; empty when healthy.
    pub fn health(&self) -> Result<Vec<String>> {
        let stats = self.journal_stats();
        let mut warnings = Vec::new();
        if let Some(d) = self.damage() {
            warnings.push(format!(
                "the copy is damaged ({d}): a mirror or standby is made again from its primary, \
                 and a log-shipping secondary from the newest full backup, by itself; a primary \
                 hands over by itself to its mirror once that one is synchronized (with a \
                 witness), and is then made again as the mirror — a primary without a mirror \
                 is restored from its backups (`tandem db restore`)"
            ));
        }
        if let Some(s) = self.disk_not_answering() {
            let then = if self.identity().role == Role::Primary {
                "writes wait; with a synchronized mirror, this primary hands over to it"
            } else {
                "the copy applies nothing meanwhile"
            };
            warnings.push(format!(
                "the disk has not answered for {:.1} s ({} in progress): {then}",
                s.age_ms() as f64 / 1000.0,
                s.what
            ));
        }
        // A primary's: a copy that handed over (or never took writes) reports what it cannot
        // apply through its own state; the failure of its last days as a primary is history.
        if let Some(f) = self.commit_failure()
            && self.identity().role == Role::Primary
        {
            warnings.push(format!(
                "commits fail, rolled back, for {} s ({} transactions refused): {}; they go \
                 through again once the cause is mended (a full disk: give it room)",
                f.age_ms().max(0) / 1000,
                f.refused,
                f.error
            ));
        }
        if stats.bytes > self.inner.options.journal_bytes_max {
            let lsn = self.identity().lsn;
            let laggards: Vec<String> = self
                .consumers()?
                .into_iter()
                .map(|c| format!("{} at LSN {} ({} behind)", c.name, c.lsn, lsn - c.lsn))
                .collect();
            warnings.push(format!(
                "journal holds {} MiB, over its bound of {} MiB; records are kept until every \
                 consumer is past them: {}",
                stats.bytes >> 20,
                self.inner.options.journal_bytes_max >> 20,
                if laggards.is_empty() {
                    "no consumer is registered".to_string()
                } else {
                    laggards.join(", ")
                }
            ));
        }
        for f in self.inner.follows.read().expect("follows lock").iter() {
            if let Some(failure) = f.progress.failure() {
                warnings.push(format!(
                    "the {} follower (file {}) is stopped at LSN {} by a failure, retried every \
                     second: {failure}",
                    f.follow.name,
                    f.file.display(),
                    f.progress.lsn()
                ));
            }
        }
        Ok(warnings)
    }

    /// Runs `f` on a reader connection (WAL: it sees the last commit and does not block writes).
    /// The followers' files are attached to it, each as the schema of its name.
    pub fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let idle = self.inner.readers.lock().expect("readers lock").pop();
        let (conn, mut attached) = match idle {
            Some(c) => c,
            None => (self.open_reader()?, 0),
        };
        {
            let follows = self.inner.follows.read().expect("follows lock");
            if attached < follows.len() {
                for follow in &follows[attached..] {
                    conn.execute(
                        &format!("ATTACH DATABASE ?1 AS {}", follow.follow.name),
                        [follow.file.to_string_lossy()],
                    )?;
                    attached += 1;
                }
                // Attached by path: the files must still be this copy's (dropped otherwise).
                self.inner.file.check()?;
            }
        }
        let r = f(&conn);
        if let Err(e) = &r {
            self.inner.published.note_error("a read", e);
        }
        let mut pool = self.inner.readers.lock().expect("readers lock");
        if pool.len() < self.inner.options.readers_max {
            pool.push((conn, attached));
        }
        r
    }

    /// A new reader connection, opened by path: refused once the copy was replaced.
    pub(crate) fn open_reader(&self) -> Result<Connection> {
        let conn = open_reader_connection(&self.inner.dir, self.inner.options.cache_kib)?;
        self.inner.file.check()?;
        Ok(conn)
    }

    /// Reads journal records from `from` on: at most `records_max`, about `bytes_max` bytes.
    pub fn read_journal(
        &self,
        from: Lsn,
        records_max: usize,
        bytes_max: usize,
    ) -> Result<RecordBatch> {
        self.inner
            .published
            .read_journal(from, records_max, bytes_max, || {
                self.read(|c| journal::read(c, from, records_max, bytes_max))
            })
    }

    #[cfg(test)]
    pub(crate) fn recent(&self) -> &crate::recent::Recent {
        &self.inner.published.recent
    }

    /// The chain just after `lsn`, when the journal still holds it (or `lsn` is the current LSN).
    pub fn chain_at(&self, lsn: Lsn) -> Result<Option<Chain>> {
        self.inner
            .published
            .chain_at(lsn, || self.read(|c| journal::chain_at(c, lsn)))
    }

    /// Every applied migration: version, name.
    pub fn migrations(&self) -> Result<Vec<(u32, String)>> {
        self.read(|c| {
            let mut stmt =
                c.prepare("SELECT version, name FROM _tandem_migrations ORDER BY version")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// Runs SQLite's integrity check; Ok(()) when it says "ok".
    pub fn integrity_check(&self) -> Result<()> {
        let report: Vec<String> = self.read(|c| {
            let mut stmt = c.prepare("PRAGMA integrity_check")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
        })?;
        if report == ["ok"] {
            Ok(())
        } else {
            Err(StoreError::Corrupt(format!(
                "integrity check: {}",
                report.join("; ")
            )))
        }
    }
}

/// Reads a database directory's identity without opening it for writing (no lock taken):
/// for `tandem db inspect` and for backups of a snapshot file.
pub fn inspect(path: &Path) -> Result<(Identity, JournalStats, Vec<Consumer>)> {
    let file = if path.is_dir() {
        path.join(DB_FILE)
    } else {
        path.to_path_buf()
    };
    if !path.exists() {
        return Err(StoreError::Invalid(format!(
            "{} does not exist",
            path.display()
        )));
    }
    if !file.exists() {
        return Err(StoreError::Invalid(format!(
            "{} is not a tandem database (no {DB_FILE} in it)",
            path.display()
        )));
    }
    let conn = Connection::open_with_flags(&file, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let state = read_state(&conn).map_err(|e| match e {
        StoreError::Corrupt(m) => StoreError::Corrupt(format!("{}: {m}", path.display())),
        StoreError::Invalid(m) => StoreError::Invalid(format!("{}: {m}", path.display())),
        e => e,
    })?;
    let consumers = journal::consumers(&conn)?;
    let stats = journal::stats(&conn)?;
    let _: Option<i64> = conn.query_row("SELECT 1", [], |r| r.get(0)).optional()?;
    Ok((
        Identity {
            name: state.name,
            database_id: state.database_id,
            epoch: state.epoch,
            lsn: state.lsn,
            chain: state.chain,
            role: state.role,
            history: state.history,
            last_time_ms: state.last_time_ms,
        },
        stats,
        consumers,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::types::Value;

    static SCHEMA: &[Migration] = &[Migration {
        version: 1,
        name: "t",
        sql: "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)",
    }];

    /// A database written by the previous format (segment bodies without their format byte)
    /// opens, is upgraded, and reads back the same records and chain.
    #[test]
    fn a_format_1_database_is_upgraded_when_opened_for_writing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let before = {
            let db = Database::create(&path, "d", Options::default()).unwrap();
            db.migrate(SCHEMA).unwrap();
            for i in 0..20i64 {
                let v = "the same words again and again ".repeat(1 + i as usize % 4);
                db.write(move |tx| tx.insert("t", vec![Value::Integer(i), Value::Text(v.clone())]))
                    .unwrap();
            }
            (db.identity(), db.read_journal(1, 1000, usize::MAX).unwrap())
        };
        // Back to format 1: every body as its records, without the format byte.
        {
            let conn = Connection::open(path.join(DB_FILE)).unwrap();
            let rows: Vec<(i64, Vec<u8>)> = conn
                .prepare("SELECT first_lsn, body FROM _tandem_journal")
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            for (first, body) in rows {
                let plain = journal::unpack_segment(&body).unwrap().into_owned();
                conn.execute(
                    "UPDATE _tandem_journal SET body = ?1 WHERE first_lsn = ?2",
                    params![plain, first],
                )
                .unwrap();
            }
            conn.execute("UPDATE _tandem_state SET format_version = 1", [])
                .unwrap();
        }
        let e = inspect(&path).map(|_| ()).unwrap_err();
        assert!(e.to_string().contains("format 1"), "{e}");
        let db = Database::open(&path, Options::default()).unwrap();
        let id = db.identity();
        assert_eq!((id.lsn, id.chain), (before.0.lsn, before.0.chain));
        assert_eq!(db.read_journal(1, 1000, usize::MAX).unwrap(), before.1);
        let version: i64 = db
            .read(
                |c| Ok(c.query_row("SELECT format_version FROM _tandem_state", [], |r| r.get(0))?),
            )
            .unwrap();
        assert_eq!(version, FORMAT_VERSION);
    }

    /// A failed open whose error does not say "damage" (a flipped length field reads as a value
    /// too big) is damage when SQLite's check of the file finds some; on a sound file, or for a
    /// failing system, the error stays what it was.
    #[test]
    fn an_open_failing_on_a_damaged_file_says_damage() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("db");
        let db = Database::create(&dir, "d", Options::default()).unwrap();
        db.migrate(SCHEMA).unwrap();
        for i in 0..400i64 {
            let v = format!("row {i} {}", "v".repeat(200));
            db.write(move |tx| tx.insert("t", vec![Value::Integer(i), Value::Text(v.clone())]))
                .unwrap();
        }
        drop(db);
        let failure = |code| {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(code),
                Some("string or blob too big".into()),
            ))
        };
        let e = damage_behind(&dir, failure(rusqlite::ffi::SQLITE_TOOBIG));
        assert!(!e.is_damage(), "a sound file: {e}");
        let file = dir.join(DB_FILE);
        let c = Connection::open(&file).unwrap();
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        drop(c);
        let mut bytes = std::fs::read(&file).unwrap();
        let middle = bytes.len() / 2 / 4096 * 4096;
        for b in &mut bytes[middle + 8..middle + 4096] {
            *b ^= 0x5a;
        }
        std::fs::write(&file, &bytes).unwrap();
        let e = damage_behind(&dir, failure(rusqlite::ffi::SQLITE_TOOBIG));
        assert!(e.is_damage(), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("is damaged: ") && text.contains("too big"),
            "{text}"
        );
        let e = damage_behind(&dir, failure(rusqlite::ffi::SQLITE_IOERR));
        assert!(!e.is_damage(), "a failing system is not damage: {e}");
    }
}
