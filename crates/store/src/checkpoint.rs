//! The checkpointer: folds the WAL back into the database file from its own connection and
//! thread, so the writer does not stall on the bulk of a checkpoint (SQLite's automatic
//! checkpoint is off on the write connection). Passive checkpoints never block the writer or
//! readers — but beside a busy writer one never backfills every frame, and SQLite restarts the
//! WAL from its beginning only after that: the WAL would grow without bound and every commit
//! would append (an fsync after an append costs about twice one after an overwrite here). So
//! after each bulk pass the writer, between two groups, runs a short checkpoint of the tail;
//! with no writer beside it, it completes, and the next commit starts the WAL over.

use rusqlite::{Connection, OpenFlags};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

/// A checkpoint runs at least this often while the database is open. Checkpoints fsync the
/// database file on the same disk as the WAL fsyncs that callers wait for: running them rarely
/// (with a larger WAL in between) keeps commit latency low under load (bench store: 256
/// writers went from about 200k to about 270k commits/s when this went from 200 ms and 64
/// commits to 1 s and 4096).
const CHECKPOINT_INTERVAL_MS: u64 = 1000;
/// The writer asks for a checkpoint after this many commits.
pub(crate) const CHECKPOINT_COMMITS: u64 = 4096;

pub(crate) struct Checkpointer {
    /// Set after each bulk pass: the writer then finishes the checkpoint between two groups.
    passed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    nudge: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    pub(crate) fn start(db_file: PathBuf) -> Checkpointer {
        let (nudge, rx) = sync_channel(1);
        let passed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = passed.clone();
        let thread = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || run(db_file, rx, flag))
            .ok();
        Checkpointer {
            passed,
            nudge: Some(nudge),
            thread,
        }
    }

    /// True once after each bulk pass of the checkpointer.
    pub(crate) fn take_passed(&self) -> bool {
        self.passed.swap(false, std::sync::atomic::Ordering::AcqRel)
    }

    /// Asks for a checkpoint soon; never blocks.
    pub(crate) fn nudge(&self) {
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

fn run(db_file: PathBuf, rx: Receiver<()>, passed: std::sync::Arc<std::sync::atomic::AtomicBool>) {
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
    while let Ok(()) | Err(RecvTimeoutError::Timeout) =
        rx.recv_timeout(Duration::from_millis(CHECKPOINT_INTERVAL_MS))
    {
        let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        passed.store(true, std::sync::atomic::Ordering::Release);
    }
}
