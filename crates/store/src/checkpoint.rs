//! The checkpointer: folds the WAL back into the database file from its own connection and
//! thread, so the writer does not stall on the bulk of a checkpoint (SQLite's automatic
//! checkpoint is off on the write connection). Passive checkpoints never block the writer or
//! readers — but beside a busy writer one never backfills every frame, and SQLite restarts the
//! WAL from its beginning only after that: the WAL would grow without bound and every commit
//! would append (an fsync after an append costs about twice one after an overwrite here). So
//! after each bulk pass the writer, between two groups, runs a short checkpoint of the tail;
//! with no writer beside it, it completes, and the next commit starts the WAL over.
//!
//! SQLite fsyncs the database file only when a checkpoint completes — that is, in the writer's
//! tail, which then also wrote every page of the bulk pass (bench store, 256 writers, a
//! throwaway trace: tails of 4.8 ms on average, 10 % of the writer's time). So the checkpointer
//! fdatasyncs the database file itself after each pass that copied pages, off the writer's
//! path, and the tail's fsync finds only its own pages to write (1.6 ms, 4 %).
//!
//! While a pass copies pages, a `checkpoint-writeback` thread starts their writeback every
//! `PASS_WRITEBACK_INTERVAL`. Left in the page cache until the pass's fdatasync, a pass's 4 MB
//! went to the disk at once, and the WAL fsyncs that acknowledge commits waited behind them
//! (bench store, 256 writers: commits of over 2 ms took a quarter of all commit time); started
//! as they are copied, they reach the disk in pieces between those fsyncs (seven alternating
//! pairs: p99 4.8 → 3.8 ms on average, lower in every pair; commits/s within the noise).
//! Starting it from the checkpointer's own thread every 64 KiB copied, through its VFS, was
//! tried too: no clearer gain, and more code.
//!
//! When: as soon as the WAL holds `CHECKPOINT_FRAMES` frames after a commit of the writer — a
//! primary's group or a copy's applied batch (SQLite's WAL hook tells their number) — and at
//! least every `CHECKPOINT_INTERVAL`. A short WAL, started over often, is overwritten in place
//! in pages the OS already caches: bench store, 256 writers, 140–182k commits/s with a
//! checkpoint asked every 4096 commits (the WAL then grew to tens of MB each second, every
//! page of it new to the page cache) and 180–246k with one asked at 1000 frames
//! (docs/performance-log.md).

use rusqlite::{Connection, OpenFlags};
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

/// A checkpoint runs at least this often while the database is open: a WAL that stays short
/// is still folded into the database file.
pub(crate) const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(1000);
/// The writer asks for a checkpoint once the WAL holds this many frames: about 4 MB, SQLite's
/// own bound for its automatic checkpoint (`wal_autocheckpoint`, which the raw baseline of
/// bench store runs with).
const CHECKPOINT_FRAMES: u64 = 1000;
/// While a pass runs, how often the writeback of the pages it copied is started.
const PASS_WRITEBACK_INTERVAL: Duration = Duration::from_micros(250);

pub(crate) struct Checkpointer {
    /// Set after each bulk pass: the writer then finishes the checkpoint between two groups.
    passed: Arc<AtomicBool>,
    nudge: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Frames in the WAL after the writer's last commit (`watch`).
    frames: Arc<AtomicU64>,
    /// A checkpoint was asked for since the WAL last started over.
    asked: bool,
    /// Writebacks started during passes (`PassWriteback`); read by the tests.
    #[cfg_attr(not(test), allow(dead_code))]
    writebacks: Arc<AtomicU64>,
}

impl Checkpointer {
    /// Starts the thread; it checkpoints when nudged and at least every `interval`.
    pub(crate) fn start(db_file: PathBuf, interval: Duration) -> Checkpointer {
        let (nudge, rx) = sync_channel(1);
        let passed = Arc::new(AtomicBool::new(false));
        let flag = passed.clone();
        let writebacks = Arc::new(AtomicU64::new(0));
        let started = writebacks.clone();
        let thread = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || run(db_file, rx, flag, interval, started))
            .ok();
        Checkpointer {
            passed,
            nudge: Some(nudge),
            thread,
            frames: Default::default(),
            asked: false,
            writebacks,
        }
    }

    /// Follows the WAL's length through the writer's connection. Set after any change to
    /// `wal_autocheckpoint`, which replaces the connection's WAL hook.
    pub(crate) fn watch(&self, conn: &mut Connection) -> rusqlite::Result<()> {
        let frames = self.frames.clone();
        conn.wal_hook(Some(
            move |_: &mut rusqlite::hooks::Wal, n: std::ffi::c_int| {
                frames.store(n.max(0) as u64, Ordering::Relaxed);
                Ok(())
            },
        ))
    }

    /// After each of the writer's commits: asks for a checkpoint, once per lap of the WAL, when
    /// the WAL is long.
    pub(crate) fn after_commit(&mut self) {
        let long = self.frames.load(Ordering::Relaxed) >= CHECKPOINT_FRAMES;
        if long && !self.asked {
            self.nudge();
        }
        self.asked = long;
    }

    /// True once after each bulk pass of the checkpointer.
    pub(crate) fn take_passed(&self) -> bool {
        self.passed.swap(false, Ordering::AcqRel)
    }

    /// Asks for a checkpoint soon; never blocks.
    fn nudge(&self) {
        if let Some(n) = &self.nudge {
            let _ = n.try_send(());
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.nudge.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The thread that starts the writeback of a pass's pages while the pass runs (see the module
/// documentation); parked between passes.
struct PassWriteback {
    shared: Arc<PassShared>,
    thread: Option<JoinHandle<()>>,
}

struct PassShared {
    db: Arc<File>,
    /// A pass is running: start writebacks.
    running: AtomicBool,
    stop: AtomicBool,
    started: Arc<AtomicU64>,
}

impl PassWriteback {
    fn start(db: Arc<File>, started: Arc<AtomicU64>) -> Option<PassWriteback> {
        let shared = Arc::new(PassShared {
            db,
            running: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            started,
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("checkpoint-writeback".into())
            .spawn(move || {
                while !s.stop.load(Ordering::Acquire) {
                    if !s.running.load(Ordering::Acquire) {
                        std::thread::park();
                        continue;
                    }
                    std::thread::sleep(PASS_WRITEBACK_INTERVAL);
                    crate::ack::start_writeback(&s.db);
                    s.started.fetch_add(1, Ordering::Relaxed);
                }
            })
            .ok()?;
        Some(PassWriteback {
            shared,
            thread: Some(thread),
        })
    }

    /// Runs `pass` with writebacks started every `PASS_WRITEBACK_INTERVAL` meanwhile.
    fn during<T>(&self, pass: impl FnOnce() -> T) -> T {
        self.shared.running.store(true, Ordering::Release);
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
        let out = pass();
        self.shared.running.store(false, Ordering::Release);
        out
    }
}

impl Drop for PassWriteback {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

fn run(
    db_file: PathBuf,
    rx: Receiver<()>,
    passed: Arc<AtomicBool>,
    interval: Duration,
    started: Arc<AtomicU64>,
) {
    let conn = match Connection::open_with_flags(
        &db_file,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) {
        Ok(c) => c,
        // Without a checkpointer the WAL grows until the database is closed; nothing is lost.
        Err(_) => return,
    };
    let _ = conn.busy_timeout(Duration::from_millis(100));
    // Closing must not delete the WAL under the writer's feet.
    let _ = conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    );
    // The pass's pages made durable here (see the module documentation), when it copied any: an
    // idle database's pass copies none, and an fsync flushes the disk's cache all the same. An
    // error is not reported from here: Linux reports a writeback error to every open
    // description of the file, so the fsync that completes the checkpoint, SQLite's, sees it.
    let db = File::open(&db_file).ok().map(Arc::new);
    let writeback = db
        .as_ref()
        .and_then(|db| PassWriteback::start(db.clone(), started));
    // SQLite's answer to the last pass: the WAL's frames, and how many are in the database file.
    let mut last = (0i64, 0i64);
    while let Ok(()) | Err(RecvTimeoutError::Timeout) = rx.recv_timeout(interval) {
        let run_pass = || {
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
            })
        };
        let pass = match &writeback {
            Some(w) => w.during(run_pass),
            None => run_pass(),
        };
        if let (Ok(now), Some(f)) = (pass, &db)
            && now.1 > 0
            && now != last
        {
            last = now;
            let _ = f.sync_data();
        }
        passed.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(c: &Checkpointer) -> u64 {
        c.frames.load(Ordering::Relaxed)
    }

    /// A WAL that reaches `CHECKPOINT_FRAMES` gets a checkpoint asked for (no interval could
    /// have run it: an hour); after it and the writer's tail checkpoint, the next commit starts
    /// the WAL over from its beginning.
    #[test]
    fn a_long_wal_is_checkpointed_and_the_next_commit_starts_it_over() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("db");
        let mut conn = Connection::open(&file).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "synchronous", "OFF").unwrap();
        conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB)")
            .unwrap();
        let mut c = Checkpointer::start(file, Duration::from_secs(3600));
        c.watch(&mut conn).unwrap();
        let mut id = 0;
        let mut insert = |conn: &Connection| {
            id += 1;
            conn.execute("INSERT INTO t VALUES (?1, zeroblob(3000))", [id])
                .unwrap();
        };
        while frames(&c) < CHECKPOINT_FRAMES {
            insert(&conn);
            c.after_commit();
            assert!(!c.take_passed(), "a checkpoint ran below the bound");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !c.take_passed() {
            assert!(std::time::Instant::now() < deadline, "no checkpoint ran");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(frames(&c) >= CHECKPOINT_FRAMES);
        // The pass copied about 4 MB, a page per write: their writeback was started meanwhile.
        let started = c.writebacks.load(Ordering::Relaxed);
        assert!(started >= 1, "no writeback started during the pass");
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            .unwrap();
        insert(&conn);
        c.after_commit();
        assert!(
            frames(&c) < 10,
            "the WAL did not start over: {} frames",
            frames(&c)
        );
        assert!(!c.asked, "the next lap asks again");
    }
}
