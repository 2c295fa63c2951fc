//! The single writer of a database: one thread owns the SQLite write connection and
//! group-commits — many pending transactions, each with its own LSN, in one SQLite transaction
//! and one fsync. A caller is answered only once its transaction is durable.

use crate::database::{Identity, Published, Role, State};
use crate::error::{Result, StoreError};
use crate::journal::{self, RecordBatch};
use crate::record::{
    Chain, Epoch, Lsn, RECORD_BYTES_MAX, RowKind, encode_header, encode_migrate, encode_row_op,
    peek_header, visit_ops,
};
use crate::schema::{RowStatements, Statements, Tables, apply_op_ref, apply_row, migrate};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Params, Row, params};
use std::fs::File;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::mpsc::Receiver;

/// Answers a caller once its transaction's fate is known: its LSN once durable, or an error.
pub(crate) enum Completion {
    /// A write job's answer and the value its transaction returned, kept as they are (no
    /// closure allocated around them per commit).
    Job(Box<dyn FnOnce(Answer) + Send>, Value_),
    /// Anything else that waits for durability (`AckStage::wait_durable`).
    Other(Box<dyn FnOnce(Result<Lsn>) + Send>),
}

impl Completion {
    pub(crate) fn give(self, r: Result<Lsn>) {
        match self {
            Completion::Job(answer, value) => answer(match r {
                Ok(lsn) => Answer::Committed(value, lsn),
                Err(e) => Answer::Failed(e),
            }),
            Completion::Other(f) => f(r),
        }
    }
}

/// A transaction's own result, kept until the caller is answered.
pub(crate) type Value_ = Box<dyn std::any::Any + Send>;

/// How a write job ended.
pub(crate) enum Answer {
    /// Committed and durable at this LSN; the value the job returned.
    Committed(Value_, Lsn),
    /// The job returned an error: everything it did was undone.
    Aborted(Value_),
    /// The job was not run, or its commit failed.
    Failed(StoreError),
}

/// A write transaction. `run` may be called more than once (the writer re-runs the earlier
/// transactions of a group when a later one fails after changing rows: no savepoint is paid for
/// the common case); it must decide from the database and its captures alone.
pub(crate) type RunFn = Box<dyn FnMut(&mut Tx<'_>) -> std::result::Result<Value_, Value_> + Send>;

pub(crate) struct WriteJob {
    /// When the caller handed it over (`stages`).
    pub(crate) submitted: std::time::Instant,
    pub(crate) run: RunFn,
    pub(crate) answer: Box<dyn FnOnce(Answer) + Send>,
}

/// SQLite's message when the last call on `conn` failed on damaged pages (`SQLITE_CORRUPT` or
/// `SQLITE_NOTADB`, extended codes included): a transaction's own error type does not say so,
/// the connection does.
fn met_page_damage(conn: &Connection) -> Option<String> {
    use rusqlite::ffi;
    // SAFETY: the handle is valid for the life of `conn`; the calls only read its last error,
    // and the message is copied before any other call on it.
    unsafe {
        let db = conn.handle();
        let code = ffi::sqlite3_extended_errcode(db) & 0xff;
        if code != ffi::SQLITE_CORRUPT && code != ffi::SQLITE_NOTADB {
            return None;
        }
        let msg = ffi::sqlite3_errmsg(db);
        Some(if msg.is_null() {
            format!("SQLite error code {code}")
        } else {
            std::ffi::CStr::from_ptr(msg).to_string_lossy().into_owned()
        })
    }
}

fn refuse_all(jobs: Vec<WriteJob>, err: &StoreError) {
    for job in jobs {
        (job.answer)(Answer::Failed(match err {
            StoreError::Role(m) => StoreError::Role(m.clone()),
            StoreError::Closed(m) => StoreError::Closed(m.clone()),
            StoreError::CommitFailed(m) => StoreError::CommitFailed(m.clone()),
            other => StoreError::Closed(other.to_string()),
        }));
    }
}

/// A job that ran and is part of the open SQLite transaction.
struct Kept {
    job: WriteJob,
    value: Value_,
    lsn: Lsn,
}

pub(crate) type ControlJob = Box<dyn FnOnce(&mut Writer) + Send>;

pub(crate) enum Job {
    Write(WriteJob),
    Control(ControlJob),
}

/// Where a replay stops early (point-in-time restore).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopAt {
    /// Apply records up to and including this LSN.
    Lsn(Lsn),
    /// Apply records committed at or before this time (ms since the Unix epoch).
    TimeMs(i64),
}

/// As an operator writes it: `LSN 60`, or a time as `time_text` writes it.
impl std::fmt::Display for StopAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            StopAt::Lsn(n) => write!(f, "LSN {n}"),
            StopAt::TimeMs(t) => f.write_str(&time_text(t)),
        }
    }
}

/// A commit time (ms since the Unix epoch) in RFC 3339, `2026-11-23T10:00:00.000Z`; a time
/// before 1970 or past the year 9999, which no record carries, as its milliseconds.
pub fn time_text(ms: i64) -> String {
    use std::time::{Duration, UNIX_EPOCH};
    const YEAR_10000_S: u64 = 253_402_300_800;
    match u64::try_from(ms) {
        Ok(ms) if ms / 1000 < YEAR_10000_S => {
            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
        }
        _ => format!("{ms} ms since the Unix epoch"),
    }
}

impl StopAt {
    pub(crate) fn reached(&self, lsn: Lsn, time_ms: i64) -> bool {
        match *self {
            StopAt::Lsn(n) => lsn > n,
            StopAt::TimeMs(t) => time_ms > t,
        }
    }
}

/// When an apply returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Once the records are durable on this copy.
    Wait,
    /// Once they are committed (readable); the durable LSN (`Database::subscribe`) reaches
    /// them after the fsync, while the next batch is applied.
    Publish,
}

/// What an apply did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub records: u64,
    pub lsn: Lsn,
    pub chain: Chain,
    /// True when a stop point was reached before the end of the batch.
    pub stopped: bool,
}

/// A write transaction on the primary. Row changes go through `insert`, `update` and `delete`,
/// which both change the rows and record the change in the journal; reads go through `query*`,
/// which refuse any statement that would write.
pub struct Tx<'c> {
    conn: &'c Connection,
    stmts: &'c dyn RowStatements,
    tables: &'c mut Tables,
    /// The operations done so far, encoded as the journal records them (no copy of the rows is
    /// kept: a transaction may write from values it only borrows).
    ops: &'c mut Vec<u8>,
    op_count: u32,
    time_ms: i64,
    lsn: Lsn,
    schema_changed: bool,
    /// Set before an operation that can leave effects behind even when it fails (a migration
    /// is several statements): a failure after it must roll the SQLite transaction back.
    dirty: bool,
}

impl Tx<'_> {
    /// The commit time of this transaction (ms since the Unix epoch), decided once and recorded,
    /// so that every copy stores the same value.
    pub fn time_ms(&self) -> i64 {
        self.time_ms
    }

    /// The LSN this transaction commits at if it changes anything — decided by the writer and,
    /// like every value written, recorded: storing it in a row gives every copy the same row.
    /// Readers use it to stop at a durable (or, with a mirror, hardened) LSN.
    pub fn lsn(&self) -> Lsn {
        self.lsn
    }

    /// Inserts a complete row (every column, in declaration order).
    pub fn insert(&mut self, table: &str, row: impl AsRef<[Value]>) -> Result<()> {
        self.row(RowKind::Insert, table, row.as_ref())
    }

    /// Replaces the row with the same primary key by this complete row.
    pub fn update(&mut self, table: &str, row: impl AsRef<[Value]>) -> Result<()> {
        self.row(RowKind::Update, table, row.as_ref())
    }

    /// Deletes the row with this primary key (values in key order).
    pub fn delete(&mut self, table: &str, key: impl AsRef<[Value]>) -> Result<()> {
        self.row(RowKind::Delete, table, key.as_ref())
    }

    /// A single statement that fails leaves nothing (SQLite statement atomicity).
    fn row(&mut self, kind: RowKind, table: &str, values: &[Value]) -> Result<()> {
        apply_row(self.stmts, self.tables, kind, table, values)?;
        encode_row_op(self.ops, kind, table, values);
        self.op_count += 1;
        Ok(())
    }

    pub(crate) fn migrate(&mut self, version: u32, name: &str, sql: &str) -> Result<()> {
        // Several statements: a failure part-way may leave effects behind.
        self.dirty = true;
        migrate(self.stmts, version, name, sql)?;
        self.schema_changed = true;
        self.stmts.clear();
        *self.tables = Tables::load(self.conn)?;
        encode_migrate(self.ops, version, name, sql);
        self.op_count += 1;
        Ok(())
    }

    /// Runs a read-only query and maps every row.
    pub fn query<T, P: Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        if !stmt.readonly() {
            return Err(StoreError::Invalid(format!(
                "Tx::query runs reads only; write through insert/update/delete: {sql}"
            )));
        }
        Ok(stmt
            .query_map(params, f)?
            .collect::<rusqlite::Result<Vec<T>>>()?)
    }

    /// Runs a read-only query that returns at most one row.
    pub fn query_row<T, P: Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Option<T>> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        if !stmt.readonly() {
            return Err(StoreError::Invalid(format!(
                "Tx::query_row runs reads only; write through insert/update/delete: {sql}"
            )));
        }
        Ok(stmt.query_row(params, f).optional()?)
    }
}

/// Most transactions one group commit takes (`Options::batch_records_max` and
/// `Options::sync_batch_records_max`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct GroupMax {
    pub(crate) alone: usize,
    /// While answers wait for a synchronous mirror.
    pub(crate) sync: usize,
}

pub(crate) struct Writer {
    pub(crate) conn: Connection,
    pub(crate) state: State,
    tables: Tables,
    published: Arc<Published>,
    group_max: GroupMax,
    ack: crate::ack::AckStage,
    checkpointer: crate::checkpoint::Checkpointer,
    commits: u64,
    /// Set when a consumer's cursor moved: the records every consumer is past are removed a
    /// slice at a time, between groups (`prune_slice`).
    prune_due: bool,
    /// The last group commit failed (`Published::commit_failure` says how).
    failing: bool,
    /// Held for the life of the writer: one process, one handle per database directory.
    _lock: File,
}

/// A group commit that could not be made: `refused` transactions rolled back. Published (the
/// copy's health says so) until a commit goes through again.
fn commit_failed(
    published: &Published,
    failing: &mut bool,
    error: String,
    refused: usize,
) -> StoreError {
    *failing = true;
    let mut f = published
        .commit_failure
        .lock()
        .expect("commit failure lock");
    let f = f.get_or_insert_with(|| crate::database::CommitFailure {
        since_ms: now_ms(),
        refused: 0,
        error: String::new(),
    });
    f.refused += refused as u64;
    f.error.clone_from(&error);
    StoreError::CommitFailed(error)
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Writer {
    pub(crate) fn new(
        conn: Connection,
        state: State,
        published: Arc<Published>,
        group_max: GroupMax,
        lock: File,
        ack: crate::ack::AckStage,
        checkpointer: crate::checkpoint::Checkpointer,
    ) -> Result<Writer> {
        let tables = Tables::load(&conn)?;
        Ok(Writer {
            conn,
            state,
            tables,
            published,
            group_max,
            ack,
            checkpointer,
            commits: 0,
            prune_due: false,
            failing: false,
            _lock: lock,
        })
    }

    /// The writer's loop: runs until every handle is dropped.
    pub(crate) fn run(mut self, jobs: Receiver<Job>) {
        use std::sync::mpsc::TryRecvError;
        let mut next: Option<Job> = None;
        loop {
            let job = match next.take() {
                Some(j) => j,
                // With records to remove and nothing to do, a slice of them.
                None if self.prune_due => match jobs.try_recv() {
                    Ok(j) => j,
                    Err(TryRecvError::Empty) => {
                        self.published.io.start(crate::stall::WRITER);
                        self.prune_slice();
                        self.published.io.end(crate::stall::WRITER);
                        continue;
                    }
                    Err(TryRecvError::Disconnected) => return,
                },
                None => match jobs.recv() {
                    Ok(j) => j,
                    Err(_) => return,
                },
            };
            self.published.io.start(crate::stall::WRITER);
            match job {
                Job::Control(f) => f(&mut self),
                Job::Write(first) => {
                    let mut batch = vec![first];
                    let max = if self.ack.gate().waits_for_mirror() {
                        self.group_max.sync
                    } else {
                        self.group_max.alone
                    };
                    while batch.len() < max {
                        match jobs.try_recv() {
                            Ok(Job::Write(w)) => batch.push(w),
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.commit_batch(batch);
                    // Under a load that never leaves the queue empty, pruning still goes on.
                    if self.prune_due && self.commits.is_multiple_of(PRUNE_EVERY_GROUPS) {
                        self.prune_slice();
                    }
                }
            }
            self.published.io.end(crate::stall::WRITER);
        }
    }

    fn exec(&self, sql: &str) -> Result<()> {
        self.conn.prepare_cached(sql)?.execute([])?;
        Ok(())
    }

    /// One SQLite transaction for a batch of write jobs, each with its own LSN; one fsync for
    /// all of them (in the acknowledgment stage); then every caller is answered.
    fn commit_batch(&mut self, batch: Vec<WriteJob>) {
        let began = std::time::Instant::now();
        if let Some(failure) = self.ack.failure() {
            return refuse_all(batch, &StoreError::Closed(failure));
        }
        if self.state.role != Role::Primary {
            return refuse_all(
                batch,
                &StoreError::Role(format!(
                    "this copy is {} (epoch {}): it accepts no writes",
                    self.state.role, self.state.epoch
                )),
            );
        }
        if let Some(reason) = self.ack.gate().refusal() {
            return refuse_all(batch, &StoreError::Role(reason));
        }
        if let Err(e) = self.exec("BEGIN IMMEDIATE") {
            let err = commit_failed(
                &self.published,
                &mut self.failing,
                format!("cannot begin a transaction: {e}"),
                batch.len(),
            );
            return refuse_all(batch, &err);
        }
        let time_ms = now_ms().max(self.state.last_time_ms);
        let mut queue: std::collections::VecDeque<WriteJob> = batch.into();
        let mut kept: Vec<Kept> = Vec::with_capacity(queue.len());
        // The group's records, encoded straight into its journal segment, which chains them.
        let mut segment =
            journal::Segment::with_capacity(self.state.chain, queue.len(), queue.len() * 256);
        let mut schema_changed = false;
        let stmts = Statements::new(&self.conn);
        // Each transaction's operations, encoded as it runs.
        let mut ops = Vec::with_capacity(1024);
        while let Some(mut job) = queue.pop_front() {
            let changes_before = self.conn.total_changes();
            ops.clear();
            let mut tx = Tx {
                conn: &self.conn,
                stmts: &stmts,
                tables: &mut self.tables,
                ops: &mut ops,
                op_count: 0,
                time_ms,
                lsn: self.state.lsn + segment.len() as u64 + 1,
                schema_changed: false,
                dirty: false,
            };
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| (job.run)(&mut tx)));
            let (op_count, dirty) = (tx.op_count, tx.dirty);
            schema_changed |= tx.schema_changed;
            // Pair check: anything SQLite changed is either recorded or forces the undo below.
            let changed = op_count > 0 || dirty || self.conn.total_changes() != changes_before;
            let lsn = self.state.lsn + segment.len() as u64;
            let undo = match outcome {
                Ok(Ok(value)) if !changed => {
                    kept.push(Kept { job, value, lsn });
                    false
                }
                Ok(Ok(value)) => {
                    let epoch = self.state.epoch;
                    let bytes = segment.push_with(|out| {
                        encode_header(out, lsn + 1, epoch, time_ms, op_count);
                        out.extend_from_slice(&ops);
                    });
                    if bytes.len() > RECORD_BYTES_MAX {
                        // Out of the segment with the undo below.
                        let len = bytes.len();
                        // Counted before the answer: a caller reading the stats sees it.
                        self.count(0, 0, 1);
                        (job.answer)(Answer::Failed(StoreError::Invalid(format!(
                            "transaction of {len} bytes exceeds the {RECORD_BYTES_MAX}-byte record bound"
                        ))));
                        true
                    } else {
                        kept.push(Kept {
                            job,
                            value,
                            lsn: lsn + 1,
                        });
                        false
                    }
                }
                Ok(Err(e)) => {
                    if let Some(m) = met_page_damage(&self.conn) {
                        self.published
                            .note_damage(|| format!("a write met damaged pages: {m}"));
                    }
                    self.count(0, 0, 1);
                    (job.answer)(Answer::Aborted(e));
                    changed
                }
                Err(_) => {
                    self.count(0, 0, 1);
                    (job.answer)(Answer::Failed(StoreError::Invalid(
                        "the transaction panicked".into(),
                    )));
                    true
                }
            };
            if undo {
                // A transaction failed after changing rows: undo the whole SQLite transaction and
                // run again the ones that had succeeded (same state, same time: same result).
                if let Err(e) = self
                    .exec("ROLLBACK")
                    .and_then(|_| self.exec("BEGIN IMMEDIATE"))
                {
                    let err = commit_failed(
                        &self.published,
                        &mut self.failing,
                        format!("cannot restart a transaction: {e}"),
                        kept.len() + queue.len(),
                    );
                    refuse_all(kept.into_iter().map(|k| k.job).chain(queue).collect(), &err);
                    let _ = self.exec("ROLLBACK");
                    stmts.clear();
                    reload_tables(&self.conn, &mut self.tables);
                    return;
                }
                if schema_changed {
                    stmts.clear();
                    reload_tables(&self.conn, &mut self.tables);
                    schema_changed = false;
                }
                segment.clear();
                for k in kept.drain(..).rev() {
                    queue.push_front(k.job);
                }
            }
        }
        drop(stmts);
        let lsn = self.state.lsn + segment.len() as u64;
        let chain = segment.chain();
        if !segment.is_empty() {
            let first = self.state.lsn + 1;
            let body = segment.body();
            // The segment is also the copy's position (`read_state`).
            let r =
                journal::insert_segment(&self.conn, first, lsn, &self.state.chain, &chain, body);
            if let Err(e) = r {
                return self.fail_batch(kept, e, schema_changed);
            }
        }
        if let Err(e) = self.exec("COMMIT") {
            return self.fail_batch(kept, e, schema_changed);
        }
        let committed = std::time::Instant::now();
        if !segment.is_empty() {
            self.state.journal_bytes += segment.body().len() as u64;
            self.state.journal_oldest.get_or_insert(self.state.lsn + 1);
        }
        self.commits_go_through();
        self.published.counters.stages.grouped(
            kept.iter().map(|k| k.job.submitted),
            began,
            committed,
        );
        let records = segment.len() as u64;
        // Kept for pulls before the LSN is published: a puller that sees it finds them.
        self.published.recent.push(self.state.lsn + 1, segment);
        self.state.lsn = lsn;
        self.state.chain = chain;
        if records > 0 {
            // The time of the last record: a group that wrote nothing leaves it.
            self.state.last_time_ms = time_ms;
        }
        self.publish();
        self.count(1, records, 0);
        self.commits += 1;
        let replies = kept
            .into_iter()
            .map(|k| (Completion::Job(k.job.answer, k.value), k.lsn))
            .collect();
        self.ack.submit(crate::ack::Pending {
            lsn,
            replies,
            local_only: false,
            committed,
        });
        // After the group is handed over: a checkpoint's tail (a millisecond or more, with
        // SQLite's fsyncs) delays the next group, not the fsync of this one.
        self.checkpoint_if_due();
    }

    /// After each commit, a primary's or a copy's: a checkpoint asked for once the WAL is long,
    /// and the tail of one that passed since, which the next commit then restarts the WAL after.
    fn checkpoint_if_due(&mut self) {
        self.checkpointer.after_commit();
        if self.checkpointer.take_passed() {
            // The tail since the bulk pass; with no writer beside it, it backfills every frame.
            let _ = self
                .conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        }
    }

    /// A commit went through, or the copy changed role (a primary whose commits failed and
    /// that stepped down is not failing as a primary any more): the failure is history.
    fn commits_go_through(&mut self) {
        if self.failing {
            self.failing = false;
            *self
                .published
                .commit_failure
                .lock()
                .expect("commit failure lock") = None;
        }
    }

    fn fail_batch(&mut self, kept: Vec<Kept>, e: StoreError, schema_changed: bool) {
        self.published.note_error("a commit", &e);
        let _ = self.exec("ROLLBACK");
        if schema_changed {
            self.reload_tables();
        }
        let err = commit_failed(
            &self.published,
            &mut self.failing,
            e.to_string(),
            kept.len(),
        );
        refuse_all(kept.into_iter().map(|k| k.job).collect(), &err);
    }

    fn reload_tables(&mut self) {
        reload_tables(&self.conn, &mut self.tables);
    }

    /// Copies the position into the identity row, before segments are removed: while the
    /// journal holds any, its newest segment is the position (a group commit writes no other
    /// row for it).
    fn persist_position(&self) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE _tandem_state SET lsn = ?1, chain = ?2, last_time_ms = ?3 WHERE id = 1",
            )?
            .execute(params![
                self.state.lsn as i64,
                &self.state.chain.0[..],
                self.state.last_time_ms
            ])?;
        Ok(())
    }

    pub(crate) fn wait_durable(&self) -> Result<()> {
        self.ack.wait_durable(self.state.lsn)
    }

    fn count(&self, commits: u64, records: u64, aborted: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.published.counters;
        c.sqlite_commits.fetch_add(commits, Relaxed);
        c.records.fetch_add(records, Relaxed);
        c.aborted.fetch_add(aborted, Relaxed);
    }

    pub(crate) fn publish(&self) {
        self.published.set(&self.state);
    }

    /// Applies records from another copy (mirroring, log backup, backup service): contiguous,
    /// of an epoch not older than this copy's, continuing its chain — all in one transaction.
    pub(crate) fn apply(
        &mut self,
        batch: &RecordBatch,
        stop: Option<StopAt>,
        durability: Durability,
    ) -> Result<Applied> {
        if self.state.role == Role::Primary {
            return Err(StoreError::Role(format!(
                "this copy is primary (epoch {}, since LSN {}): it applies no records from \
                 another copy; after recover no log backup of the old chain may be applied",
                self.state.epoch,
                self.state
                    .history
                    .0
                    .last()
                    .map(|e| e.first_lsn)
                    .unwrap_or(0)
            )));
        }
        let Some(first) = batch.records.first() else {
            return Ok(self.applied(0, false));
        };
        let first_lsn = peek_header(first)?.lsn;
        if first_lsn != self.state.lsn + 1 {
            return Err(StoreError::Sequence(format!(
                "records start at LSN {first_lsn} but this copy is at LSN {}: {}",
                self.state.lsn,
                if first_lsn > self.state.lsn + 1 {
                    format!("gap of {} records", first_lsn - self.state.lsn - 1)
                } else {
                    "they overlap what it already applied".to_string()
                }
            )));
        }
        if batch.chain_before != self.state.chain {
            return Err(StoreError::Sequence(format!(
                "records continue chain {} but this copy's chain at LSN {} is {}: the copies diverged",
                batch.chain_before, self.state.lsn, self.state.chain
            )));
        }
        self.exec("BEGIN IMMEDIATE")?;
        let saved_history = self.state.history.clone();
        let saved_epoch = self.state.epoch;
        let r = self.apply_in_tx(batch, stop);
        match r {
            Ok((stopped, time_ms, body_len, segment)) => {
                let (applied, chain) = (segment.len() as u64, segment.chain());
                if let Err(e) = self.exec("COMMIT") {
                    self.published.note_error("applying records", &e);
                    let _ = self.exec("ROLLBACK");
                    self.state.history = saved_history;
                    self.state.epoch = saved_epoch;
                    self.reload_tables();
                    return Err(e);
                }
                if applied > 0 {
                    self.state.journal_oldest.get_or_insert(self.state.lsn + 1);
                }
                self.published.recent.push(self.state.lsn + 1, segment);
                self.state.lsn += applied;
                self.state.chain = chain;
                self.state.last_time_ms = time_ms;
                self.state.journal_bytes += body_len;
                self.publish();
                self.count(1, applied, 0);
                self.checkpoint_if_due();
                match durability {
                    // A copy says it has records only once they are durable.
                    Durability::Wait => self.wait_durable()?,
                    // The acknowledgment stage fsyncs them and publishes the durable LSN.
                    Durability::Publish => self.ack.submit(crate::ack::Pending {
                        lsn: self.state.lsn,
                        replies: Vec::new(),
                        local_only: true,
                        committed: std::time::Instant::now(),
                    }),
                }
                Ok(self.applied(applied, stopped))
            }
            Err(e) => {
                self.published.note_error("applying records", &e);
                let _ = self.exec("ROLLBACK");
                self.state.history = saved_history;
                self.state.epoch = saved_epoch;
                self.reload_tables();
                Err(e)
            }
        }
    }

    fn applied(&self, records: u64, stopped: bool) -> Applied {
        Applied {
            records,
            lsn: self.state.lsn,
            chain: self.state.chain,
            stopped,
        }
    }

    fn apply_in_tx(
        &mut self,
        batch: &RecordBatch,
        stop: Option<StopAt>,
    ) -> Result<(bool, i64, u64, journal::Segment)> {
        let mut expect = self.state.lsn + 1;
        let mut time_ms = self.state.last_time_ms;
        let mut stopped = false;
        let mut segment = journal::Segment::with_capacity(
            self.state.chain,
            batch.records.len(),
            batch.records.iter().map(Vec::len).sum(),
        );
        let mut history_changed = false;
        let stmts = Statements::new(&self.conn);
        // The values of the operation being applied, read in place from its record.
        let mut values = Vec::new();
        for bytes in &batch.records {
            let record = peek_header(bytes)?;
            if record.lsn != expect {
                return Err(StoreError::Sequence(format!(
                    "record LSN {} where {expect} was expected: records must be contiguous",
                    record.lsn
                )));
            }
            if stop.is_some_and(|s| s.reached(record.lsn, record.time_ms)) {
                stopped = true;
                break;
            }
            if record.epoch < self.state.epoch {
                return Err(StoreError::StaleEpoch {
                    got: record.epoch,
                    current: self.state.epoch,
                });
            }
            if record.epoch > self.state.epoch {
                self.state.history.push(record.epoch, record.lsn);
                self.state.epoch = record.epoch;
                history_changed = true;
            }
            let (tables, conn) = (&mut self.tables, &self.conn);
            visit_ops(bytes, &mut values, |op| {
                if apply_op_ref(&stmts, tables, &op).map_err(|e| {
                    StoreError::Corrupt(format!("replay of LSN {} failed: {e}", record.lsn))
                })? {
                    stmts.clear();
                    *tables = Tables::load(conn)?;
                }
                Ok(())
            })?;
            time_ms = record.time_ms;
            segment.push(bytes);
            expect += 1;
        }
        let applied = segment.len() as u64;
        let mut body_len = 0;
        if applied > 0 {
            let body = segment.body();
            body_len = body.len() as u64;
            journal::insert_segment(
                &self.conn,
                self.state.lsn + 1,
                expect - 1,
                &self.state.chain,
                &segment.chain(),
                body,
            )?;
            if history_changed {
                self.persist_identity()?;
            }
        }
        Ok((stopped, time_ms, body_len, segment))
    }

    /// Writes epoch, role and history (rarely changed) durably.
    pub(crate) fn persist_identity(&self) -> Result<()> {
        self.conn.execute(
            "UPDATE _tandem_state SET epoch = ?1, role = ?2 WHERE id = 1",
            params![self.state.epoch as i64, self.state.role.as_str()],
        )?;
        self.conn.execute("DELETE FROM _tandem_history", [])?;
        for e in &self.state.history.0 {
            self.conn.execute(
                "INSERT INTO _tandem_history (epoch, first_lsn) VALUES (?1, ?2)",
                params![e.epoch as i64, e.first_lsn as i64],
            )?;
        }
        Ok(())
    }

    /// Runs `f` in a transaction; on error nothing it did stays, in SQLite or in memory.
    pub(crate) fn transact<T>(&mut self, f: impl FnOnce(&mut Writer) -> Result<T>) -> Result<T> {
        let v = self.committed(f)?;
        self.publish();
        self.wait_durable()?;
        Ok(v)
    }

    /// `f` in one SQLite transaction, committed (not waited durable, not published); on an
    /// error rolled back, the writer's state as before.
    fn committed<T>(&mut self, f: impl FnOnce(&mut Writer) -> Result<T>) -> Result<T> {
        let saved = self.state.clone();
        self.exec("BEGIN IMMEDIATE")?;
        let done = f(self).and_then(|v| self.exec("COMMIT").map(|()| v));
        if done.is_err() {
            let _ = self.exec("ROLLBACK");
            self.state = saved;
        }
        done
    }

    /// Makes a non-primary copy the primary of a new epoch.
    pub(crate) fn recover(&mut self, epoch: Option<Epoch>) -> Result<Identity> {
        if self.state.role == Role::Primary {
            return Err(StoreError::Role(format!(
                "this copy is already primary (epoch {})",
                self.state.epoch
            )));
        }
        let new_epoch = epoch.unwrap_or(self.state.epoch + 1);
        if new_epoch <= self.state.epoch {
            return Err(StoreError::StaleEpoch {
                got: new_epoch,
                current: self.state.epoch,
            });
        }
        self.transact(|w| {
            let next = w.state.lsn + 1;
            w.state.history.push(new_epoch, next);
            w.state.epoch = new_epoch;
            w.state.role = Role::Primary;
            // A primary keeps what its own consumers need, not what its upstream kept.
            w.conn.execute(
                "DELETE FROM _tandem_consumers WHERE name = ?1",
                [journal::UPSTREAM_CONSUMER],
            )?;
            w.persist_identity()
        })?;
        self.ack.gate().reset();
        Ok(self.published.identity())
    }

    pub(crate) fn set_role(&mut self, role: Role) -> Result<()> {
        if role == Role::Primary {
            return Err(StoreError::Role(
                "a copy becomes primary only through recover (new epoch)".into(),
            ));
        }
        self.transact(|w| {
            w.state.role = role;
            w.persist_identity()
        })?;
        self.commits_go_through();
        Ok(())
    }

    /// A copy that is not primary keeps the journal records from `from` on (what its upstream
    /// keeps) and none before: one cursor, `UPSTREAM_CONSUMER`, just before it, which never
    /// moves back; the cursors of its days as a primary go (they would hold every record
    /// since). Nothing is written when that is already so.
    pub(crate) fn retain_from(&mut self, from: Lsn) -> Result<()> {
        if self.state.role == Role::Primary {
            return Err(StoreError::Role(
                "a primary keeps what its own consumers need".into(),
            ));
        }
        let cursor = from.saturating_sub(1).min(self.state.lsn);
        let consumers = journal::consumers(&self.conn)?;
        let upstream = consumers
            .iter()
            .find(|c| c.name == journal::UPSTREAM_CONSUMER)
            .map(|c| c.lsn);
        if consumers.len() == usize::from(upstream.is_some())
            && upstream.is_some_and(|u| u >= cursor)
        {
            return Ok(());
        }
        let cursor = cursor.max(upstream.unwrap_or(0));
        self.transact(|w| {
            w.conn.execute(
                "DELETE FROM _tandem_consumers WHERE name != ?1",
                [journal::UPSTREAM_CONSUMER],
            )?;
            w.conn.execute(
                "INSERT INTO _tandem_consumers (name, lsn) VALUES (?1, ?2) \
                 ON CONFLICT(name) DO UPDATE SET lsn = excluded.lsn",
                params![journal::UPSTREAM_CONSUMER, cursor as i64],
            )?;
            Ok(())
        })?;
        self.prune_soon();
        Ok(())
    }

    pub(crate) fn set_consumer(&mut self, name: &str, lsn: Lsn, create: bool) -> Result<()> {
        if lsn > self.state.lsn {
            return Err(StoreError::Invalid(format!(
                "consumer {name}: LSN {lsn} is past this copy's LSN {}",
                self.state.lsn
            )));
        }
        let current: Option<i64> = self
            .conn
            .query_row(
                "SELECT lsn FROM _tandem_consumers WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?;
        match (current, create) {
            (Some(_), true) => {
                return Err(StoreError::Invalid(format!(
                    "consumer {name} is already registered"
                )));
            }
            (None, false) => {
                return Err(StoreError::Invalid(format!("no consumer named {name}")));
            }
            (Some(cur), false) if (lsn as i64) < cur => {
                return Err(StoreError::Invalid(format!(
                    "consumer {name} is at LSN {cur}; its cursor never moves back (asked {lsn})"
                )));
            }
            _ => {}
        }
        self.conn.execute(
            "INSERT INTO _tandem_consumers (name, lsn) VALUES (?1, ?2) \
             ON CONFLICT(name) DO UPDATE SET lsn = excluded.lsn",
            params![name, lsn as i64],
        )?;
        Ok(())
    }

    pub(crate) fn remove_consumer(&mut self, name: &str) -> Result<bool> {
        Ok(self
            .conn
            .execute("DELETE FROM _tandem_consumers WHERE name = ?1", [name])?
            > 0)
    }

    /// Removes the records every registered consumer is past. With no consumer registered,
    /// nothing is removed: a record nobody has said it is done with is kept.
    pub(crate) fn prune_journal(&mut self) -> Result<u64> {
        self.prune_due = false;
        let removed = self.prune_some(usize::MAX)?;
        if removed.segments > 0 {
            self.wait_durable()?;
        }
        Ok(removed.records)
    }

    /// A consumer's cursor moved: the records every consumer is past go, a slice at a time.
    pub(crate) fn prune_soon(&mut self) {
        self.prune_due = true;
    }

    /// Removes the oldest `PRUNE_SLICE_SEGMENTS` segments every consumer is past, in a
    /// transaction of its own which no caller waits for (a removal lost in a crash is done
    /// again); clears `prune_due` once none is left. Removing a large journal at once held
    /// every commit back meanwhile (a log backup of 200,000 records: about 30 ms).
    fn prune_slice(&mut self) {
        let removed = self.prune_some(PRUNE_SLICE_SEGMENTS);
        // Done when fewer than a slice were left; on an error the records stay, and the next
        // cursor move tries again.
        if !removed.is_ok_and(|r| r.segments == PRUNE_SLICE_SEGMENTS) {
            self.prune_due = false;
        }
    }

    /// Removes the oldest `segments` segments every consumer is past (all of them with
    /// `usize::MAX`), in a transaction of its own, not waited for.
    fn prune_some(&mut self, segments: usize) -> Result<journal::Removed> {
        let min: Option<i64> =
            self.conn
                .query_row("SELECT MIN(lsn) FROM _tandem_consumers", [], |r| r.get(0))?;
        let Some(upto) = min else {
            return Ok(journal::Removed::default());
        };
        let removed = self.committed(|w| {
            // The newest segment may go: the identity row keeps the position.
            w.persist_position()?;
            journal::prune_some(&w.conn, upto as Lsn, segments)
        })?;
        if removed.segments > 0 {
            self.state.journal_bytes = self.state.journal_bytes.saturating_sub(removed.bytes);
            self.state.journal_oldest = journal::oldest_lsn(&self.conn)?;
            self.publish();
        }
        Ok(removed)
    }

    /// Empties the journal and the consumer list: for a copy just made from a full backup,
    /// whose journal belongs to the source's consumers.
    pub(crate) fn reset_journal(&mut self) -> Result<()> {
        self.transact(|w| {
            w.persist_position()?;
            w.conn.execute("DELETE FROM _tandem_journal", [])?;
            w.conn.execute("DELETE FROM _tandem_consumers", [])?;
            w.state.journal_bytes = 0;
            w.state.journal_oldest = None;
            Ok(())
        })?;
        self.published.recent.clear();
        Ok(())
    }
}

/// Segments removed per slice of pruning (`Writer::prune_slice`): as many as about 32 group
/// commits wrote, so a slice costs the writer about what writing them did, not more.
const PRUNE_SLICE_SEGMENTS: usize = 32;
/// While pruning is due, a slice after every this many groups even if the queue never empties.
const PRUNE_EVERY_GROUPS: u64 = 4;

fn reload_tables(conn: &Connection, tables: &mut Tables) {
    match Tables::load(conn) {
        Ok(t) => *tables = t,
        Err(e) => panic!("cannot reload the table cache after a rollback: {e}"),
    }
}
