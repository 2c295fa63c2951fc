//! Structures derived from the journaled rows — the chat's search index — each kept in a file of
//! its own beside the database by a thread that follows the journal behind the acknowledged
//! commits.
//!
//! The writer never waits for them: a group commit holds its rows and its journal segment only.
//! (The search index, updated inside each group's transaction until session 19, made every post
//! wait for it, and for the merges of its segments: the chat latency tail.) Every copy —
//! primary, mirror, standby — follows its own journal, so each answers from its own rows.
//!
//! A follower's file, `follow-NAME.db`, is not part of the database: backups and copies leave it
//! behind, and the store rebuilds it from the rows whenever it does not match the database it
//! sits beside — another `database_id`, another version of the follower, a position the
//! database's history does not pass through, a journal that no longer reaches back to it. Its
//! position (LSN and chain) is written in the same transaction as what it derived, so a crash
//! loses at most work the follower redoes. Readers see the file attached as schema `NAME`.

use crate::database::{DatabaseId, Published, open_reader_connection, remove_sqlite_files};
use crate::error::{Result, StoreError};
use crate::journal::{self, RecordBatch};
use crate::record::{Chain, Lsn, Record};
use rusqlite::{Connection, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// What keeps one derived structure: its tables in the follower's file, and how each journaled
/// operation changes them.
pub trait Follower: Send + 'static {
    /// Creates the follower's tables, empty, in its file (schema `main` of `conn`). Whatever an
    /// earlier version left there has been dropped.
    fn create(&mut self, conn: &Connection) -> Result<()>;
    /// Applies one operation of a journaled record, inside the follower's transaction.
    /// Operations on tables it does not derive from are ignored.
    fn apply(&mut self, conn: &Connection, op: &crate::record::Op) -> Result<()>;
    /// Fills the tables just created from the database's rows, attached to `conn` as schema
    /// `source` and read in the same transaction as the position they stand for. The tables it
    /// reads may not exist yet (a copy before its first migration).
    fn rebuild(&mut self, conn: &Connection) -> Result<()>;
}

/// A follower to run on a copy: `Database::follow`.
#[derive(Clone, Copy)]
pub struct Follow {
    /// Names its file (`follow-NAME.db`) and the schema readers see it as: a lowercase SQL
    /// identifier.
    pub name: &'static str,
    /// The version of what the follower keeps: a file of another version is rebuilt.
    pub version: u32,
    pub make: fn() -> Box<dyn Follower>,
}

impl std::fmt::Debug for Follow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follow")
            .field("name", &self.name)
            .field("version", &self.version)
            .finish()
    }
}

/// Records applied in one transaction of the follower's file, at most.
const FOLLOW_RECORDS_MAX: usize = 8192;
/// Bytes of records read in one batch, about.
const FOLLOW_BYTES_MAX: usize = 8 << 20;
/// Pause after a batch: commits gather meanwhile, and the next batch derives them in one
/// transaction (a transaction per group commit would, for the search index, flush one small
/// index segment per group and merge them again: about twice the CPU time the same index took
/// inside the groups). A caller that waits for the follower (`Progress::wait`) ends the pause;
/// a follower behind by more than a batch takes none.
const FOLLOW_PAUSE: Duration = Duration::from_millis(100);
/// Pause after a failure before the follower tries again, from a checked position.
const FOLLOW_RETRY: Duration = Duration::from_secs(1);
/// Bytes of WAL the follower's file keeps after a checkpoint.
const FOLLOW_WAL_BYTES_KEPT: i64 = 4 << 20;
/// Page cache of the follower's connections.
const FOLLOW_CACHE_KIB: i64 = 4 * 1024;

const POSITION_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS _tandem_follow (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL,
    database_id BLOB NOT NULL,
    lsn INTEGER NOT NULL,
    chain BLOB NOT NULL
)";

/// The file a follower named `name` keeps in the database directory `dir`.
pub(crate) fn file_of(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("follow-{name}.db"))
}

/// Where a follower stands, for the callers that wait for it.
#[derive(Default)]
pub(crate) struct Progress {
    state: Mutex<ProgressState>,
    changed: Condvar,
    /// Set by a caller that waits: the follower skips its pause.
    hurry: AtomicBool,
    /// The follower's thread, to wake from its pause.
    thread: std::sync::OnceLock<std::thread::Thread>,
}

#[derive(Default)]
struct ProgressState {
    /// Every acknowledged record up to this LSN is in the follower's file.
    lsn: Lsn,
    /// Why the follower is rebuilding from the rows, while it is (the LSN above is then the
    /// last one before).
    rebuilding: Option<String>,
    /// The last failure, until the follower gets going again.
    failure: Option<String>,
}

impl Progress {
    fn update(&self, f: impl FnOnce(&mut ProgressState)) {
        f(&mut self.state.lock().expect("progress lock"));
        self.changed.notify_all();
    }

    pub(crate) fn lsn(&self) -> Lsn {
        self.state.lock().expect("progress lock").lsn
    }

    pub(crate) fn failure(&self) -> Option<String> {
        self.state.lock().expect("progress lock").failure.clone()
    }

    /// Waits until the follower has everything up to `lsn`, for at most `timeout`.
    pub(crate) fn wait(&self, name: &str, lsn: Lsn, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut s = self.state.lock().expect("progress lock");
        if s.lsn < lsn {
            self.hurry.store(true, Ordering::Release);
            if let Some(t) = self.thread.get() {
                t.unpark();
            }
        }
        while s.lsn < lsn {
            let now = Instant::now();
            if now >= deadline {
                let why = match (&s.failure, &s.rebuilding) {
                    (Some(f), _) => format!(", after a failure: {f}"),
                    (None, Some(r)) => format!(", rebuilding from the rows: {r}"),
                    (None, None) => String::new(),
                };
                return Err(StoreError::CatchingUp(format!(
                    "the {name} index is catching up: at LSN {} of {lsn} after {} ms{why}; \
                     try again shortly",
                    s.lsn,
                    timeout.as_millis()
                )));
            }
            s = self
                .changed
                .wait_timeout(s, deadline - now)
                .expect("progress lock")
                .0;
        }
        Ok(())
    }
}

/// A running follower, as its database handle holds it.
pub(crate) struct Running {
    pub(crate) follow: Follow,
    pub(crate) file: PathBuf,
    pub(crate) progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
    /// Ends the statement the follower is running (a rebuild of a large database takes
    /// seconds).
    interrupt: rusqlite::InterruptHandle,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    /// Stops the follower's thread and waits for it: whatever batch or rebuild it was running is
    /// rolled back, to be done again next time.
    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.interrupt.interrupt();
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// Opens (or makes) `follow`'s file beside the database in `dir` and starts its thread. A file
/// SQLite cannot use is replaced by an empty one.
pub(crate) fn start(
    dir: &Path,
    copy: &crate::database::CopyFile,
    cache_kib: u32,
    follow: Follow,
    published: Arc<Published>,
) -> Result<Running> {
    if follow.name.is_empty()
        || !follow
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c == '_')
    {
        return Err(StoreError::Invalid(format!(
            "a follower's name is lowercase letters and underscores: {:?}",
            follow.name
        )));
    }
    let file = file_of(dir, follow.name);
    if !file.exists() {
        // A WAL left without its file (closes keep it) would be replayed into the new one.
        remove_sqlite_files(&file, &["-wal", "-shm"])?;
    }
    let side = match open_side(&file) {
        Ok(c) => c,
        Err(_) => {
            // Derived, so never precious: a damaged file is made again from the rows.
            remove_sqlite_files(&file, &["", "-wal", "-shm"])?;
            open_side(&file)?
        }
    };
    let source = open_reader_connection(dir, cache_kib)?;
    let interrupt = side.get_interrupt_handle();
    let progress = Arc::new(Progress::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut following = Following {
        follow,
        follower: (follow.make)(),
        db_file: copy.clone(),
        side,
        source,
        database_id: published.identity().database_id,
        published,
        progress: progress.clone(),
        stop: stop.clone(),
        at: None,
    };
    let thread = std::thread::Builder::new()
        .name(format!("follow {}", follow.name))
        .spawn(move || following.run())
        .map_err(|e| StoreError::io(dir, e))?;
    let _ = progress.thread.set(thread.thread().clone());
    Ok(Running {
        follow,
        file,
        progress,
        stop,
        interrupt,
        thread: Some(thread),
    })
}

fn open_side(file: &Path) -> Result<Connection> {
    let conn = Connection::open(file)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // Rebuildable: an fsync at each checkpoint is enough to keep the file whole.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "cache_size", -FOLLOW_CACHE_KIB)?;
    // A rebuild is one transaction (40 MiB of WAL for 1,000,000 messages' search index): the
    // WAL goes back to this size once checkpointed.
    conn.pragma_update(None, "journal_size_limit", FOLLOW_WAL_BYTES_KEPT)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    // Closing deletes no file by path: neither this WAL nor the source's attached for a
    // rebuild (the directory may have been replaced meanwhile, `wal_vfs::keep_wal_on_close`).
    // Its checkpoints are SQLite's automatic ones while it runs.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )?;
    conn.execute_batch(POSITION_SCHEMA)?;
    Ok(conn)
}

/// The follower's thread and what it works with.
struct Following {
    follow: Follow,
    follower: Box<dyn Follower>,
    /// The copy's database file, attached by path for a rebuild.
    db_file: crate::database::CopyFile,
    /// The follower's file.
    side: Connection,
    /// A reader of the database, for the journal records no longer in memory.
    source: Connection,
    published: Arc<Published>,
    /// The copy's, fixed for the life of its handle.
    database_id: DatabaseId,
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
    /// The position the file is known to hold (LSN, chain after it); `None` until checked.
    at: Option<(Lsn, Chain)>,
}

/// How one step of the follower ended.
enum Step {
    /// Applied records, or checked or rebuilt the file: go on after a pause.
    Applied,
    /// Applied a full batch short of the acknowledged LSN: go on at once.
    Behind,
    /// Nothing to apply before the acknowledged LSN moves.
    Idle,
}

impl Following {
    fn run(&mut self) {
        let mut durable = self.published.subscribe_durable();
        while !self.stopping() {
            let target = *durable.borrow_and_update();
            match self.step(target) {
                Ok(Step::Applied) => self.pause(FOLLOW_PAUSE),
                Ok(Step::Behind) => {}
                Ok(Step::Idle) => {
                    if !wait_changed(&mut durable, &self.stop) {
                        return;
                    }
                }
                Err(e) => {
                    let failure = e.to_string();
                    self.progress.update(|p| {
                        p.rebuilding = None;
                        p.failure = Some(failure);
                    });
                    self.at = None;
                    self.pause(FOLLOW_RETRY);
                }
            }
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Sleeps for `d`, or until stopped or hurried.
    fn pause(&self, d: Duration) {
        let until = Instant::now() + d;
        while !self.stopping() && !self.progress.hurry.swap(false, Ordering::AcqRel) {
            let now = Instant::now();
            if now >= until {
                return;
            }
            std::thread::park_timeout(until - now);
        }
    }

    /// Brings the file up to `durable`, one batch at a time.
    fn step(&mut self, durable: Lsn) -> Result<Step> {
        let (lsn, chain) = match self.at {
            Some(at) => at,
            None => {
                let at = self.check_or_rebuild()?;
                self.at = Some(at);
                self.progress.update(|p| {
                    p.lsn = at.0;
                    p.failure = None;
                });
                return Ok(Step::Applied);
            }
        };
        if lsn >= durable {
            return Ok(Step::Idle);
        }
        let from = lsn + 1;
        let batch = match self.read_journal(from) {
            Ok(b) if b.records.is_empty() => {
                // Acknowledged records the journal does not hold: it was reset (a restore).
                return self.restart("the journal holds none of the records to follow");
            }
            Ok(b) => b,
            Err(StoreError::JournalPruned { .. }) => {
                return self.restart("the journal no longer reaches back to the file's position");
            }
            Err(e) => return Err(e),
        };
        if batch.chain_before != chain {
            return self.restart("the database's history changed under the file");
        }
        let take = batch.records.len().min((durable - lsn) as usize);
        let tx = self.side.unchecked_transaction()?;
        let mut chain = chain;
        for (i, bytes) in batch.records[..take].iter().enumerate() {
            let record = Record::decode(bytes)?;
            if record.lsn != from + i as u64 {
                return Err(StoreError::Sequence(format!(
                    "follower {}: record {} where {} was expected",
                    self.follow.name,
                    record.lsn,
                    from + i as u64
                )));
            }
            for op in &record.ops {
                self.follower.apply(&tx, op)?;
            }
            chain = chain.next(bytes);
        }
        let last = lsn + take as u64;
        write_position(&tx, self.follow.version, &self.database_id, last, &chain)?;
        tx.commit()?;
        self.at = Some((last, chain));
        self.progress.update(|p| {
            p.lsn = last;
            p.failure = None;
        });
        Ok(if last < durable {
            Step::Behind
        } else {
            Step::Applied
        })
    }

    fn read_journal(&self, from: Lsn) -> Result<RecordBatch> {
        self.published
            .read_journal(from, FOLLOW_RECORDS_MAX, FOLLOW_BYTES_MAX, || {
                journal::read(&self.source, from, FOLLOW_RECORDS_MAX, FOLLOW_BYTES_MAX)
            })
    }

    /// Rebuilds the file from the rows: its position can no longer be followed.
    fn restart(&mut self, why: &str) -> Result<Step> {
        self.at = Some(self.rebuild(why)?);
        Ok(Step::Applied)
    }

    /// The file's position when the database's history passes through it; otherwise the file
    /// rebuilt from the rows, and the position it was rebuilt at.
    fn check_or_rebuild(&mut self) -> Result<(Lsn, Chain)> {
        let id = self.published.identity();
        let stored: Option<(u32, Vec<u8>, i64, Vec<u8>)> = self
            .side
            .query_row(
                "SELECT version, database_id, lsn, chain FROM _tandem_follow WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        if let Some((version, database_id, lsn, chain)) = &stored
            && *version == self.follow.version
            && database_id[..] == self.database_id.0[..]
            && let Ok(chain) = Chain::from_slice(chain)
            && let Ok(lsn) = Lsn::try_from(*lsn)
            && lsn <= id.lsn
            && self
                .published
                .chain_at(lsn, || journal::chain_at(&self.source, lsn))?
                == Some(chain)
        {
            return Ok((lsn, chain));
        }
        let why = match stored {
            None => "the file is new",
            Some(_) => "the file does not match the database",
        };
        self.rebuild(why)
    }

    /// Empties the file and derives it again from the rows, at the LSN of one read snapshot.
    fn rebuild(&mut self, why: &str) -> Result<(Lsn, Chain)> {
        self.progress
            .update(|p| p.rebuilding = Some(why.to_string()));
        self.side.execute(
            "ATTACH DATABASE ?1 AS source",
            [self.db_file.path.to_string_lossy()],
        )?;
        let r = self.db_file.check().and_then(|()| self.rebuild_attached());
        let detached = self.side.execute_batch("DETACH DATABASE source");
        let at = r?;
        detached?;
        self.progress.update(|p| {
            p.rebuilding = None;
            p.lsn = at.0;
        });
        Ok(at)
    }

    fn rebuild_attached(&mut self) -> Result<(Lsn, Chain)> {
        let tx = self.side.unchecked_transaction()?;
        // The snapshot of the rows starts with this read: the position is theirs.
        let (database_id, lsn, chain): (Vec<u8>, i64, Vec<u8>) = tx.query_row(
            "SELECT database_id, lsn, chain FROM source._tandem_state WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        if database_id != self.database_id.0 {
            return Err(StoreError::Invalid(format!(
                "follower {}: the database file changed identity",
                self.follow.name
            )));
        }
        // The position is the journal's newest segment, the identity row only when the journal
        // is empty (as `read_state` reads it); the source's tables are the only ones of their
        // names on this connection.
        let (lsn, chain) = match journal::newest(&tx)? {
            Some(newest) => (newest.last_lsn, newest.chain_after),
            None => (lsn as Lsn, Chain::from_slice(&chain)?),
        };
        let tables: Vec<(String, String)> = {
            let mut stmt = tx.prepare(
                "SELECT name, sql FROM main.sqlite_master WHERE type = 'table' \
                 AND name <> '_tandem_follow' AND sql IS NOT NULL",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        // Virtual tables first: dropping one drops its shadow tables.
        let (virtuals, plain): (Vec<_>, Vec<_>) = tables
            .into_iter()
            .partition(|(_, sql)| sql.starts_with("CREATE VIRTUAL"));
        for (name, _) in virtuals {
            tx.execute_batch(&format!("DROP TABLE main.{}", crate::schema::quote(&name)))?;
        }
        for (name, _) in plain {
            let exists: bool = tx.query_row(
                "SELECT count(*) > 0 FROM main.sqlite_master WHERE type = 'table' AND name = ?1",
                [&name],
                |r| r.get(0),
            )?;
            if exists {
                tx.execute_batch(&format!("DROP TABLE main.{}", crate::schema::quote(&name)))?;
            }
        }
        self.follower.create(&tx)?;
        self.follower.rebuild(&tx)?;
        write_position(&tx, self.follow.version, &self.database_id, lsn, &chain)?;
        tx.commit()?;
        Ok((lsn, chain))
    }
}

fn write_position(
    conn: &Connection,
    version: u32,
    database_id: &DatabaseId,
    lsn: Lsn,
    chain: &Chain,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO main._tandem_follow (id, version, database_id, lsn, chain) \
         VALUES (1, ?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        version,
        &database_id.0[..],
        lsn as i64,
        &chain.0[..]
    ])?;
    Ok(())
}

/// Wakes the thread that polls a future.
struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Waits on this thread until the acknowledged LSN moves. False when the database is closing
/// (stopped, or the sender is gone).
fn wait_changed(rx: &mut watch::Receiver<Lsn>, stop: &AtomicBool) -> bool {
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut changed = std::pin::pin!(rx.changed());
    loop {
        if let Poll::Ready(r) = changed.as_mut().poll(&mut cx) {
            return r.is_ok();
        }
        if stop.load(Ordering::Acquire) {
            return false;
        }
        std::thread::park();
    }
}
