//! The writer's WAL kept written ahead of it: a thread fills the file with zeros, written to
//! disk and synced, beyond the point the writer has reached, so that a commit's frames overwrite
//! blocks the file system already allocated, inside the file's size.
//!
//! Appended past the end of a file, a commit's frames make ext4 allocate blocks when they are
//! written back and grow the file's size, and the commit's fdatasync must then also write the
//! allocation and the inode. Overwriting allocated, written blocks, the fdatasync writes the
//! frames and flushes: bench store, 256 writers, fsync median 190 → 70 µs and the WAL's
//! pwrite a third cheaper with a WAL zeroed in advance (docs/performance-log.md). PostgreSQL
//! fills new WAL segments with zeros for the same reason (`wal_init_zero`).
//!
//! A WAL only grows until it is checkpointed and restarted from its beginning; SQLite never
//! shrinks it (no `journal_size_limit` is set). So the zeros are written once, while a database
//! is young, and a WAL in its steady state is overwritten in place with none written.
//!
//! SQLite reads a WAL's frames from its start and stops at the first that is not valid — a
//! zeroed frame has neither the WAL's salts nor its checksums — so zeros past the last frame are
//! what a restarted WAL's old frames already are: nothing.
//!
//! How the two never write the same bytes: the thread writes only at or past `zeroed` (the end
//! of the zeros written so far), under `front`'s lock, and publishes the new `zeroed` once its
//! write is done. A write of the writer that ends at or before `zeroed` is below anything the
//! thread may be writing; one that ends past it takes the lock, so no zeros are being written
//! meanwhile, and records how far the writer got (`written`), which the thread starts past.
//! How much is kept ahead doubles with the WAL (at least `LEAD_MIN`, at most `LEAD_MAX`): a
//! small database's WAL gets little, and disk space is never more than the WAL's largest size
//! plus `LEAD_MAX`.
//!
//! Zeros are an optimisation only: when writing them fails (a full disk), the thread stops and
//! the WAL grows as before.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// The least kept zeroed past the writer's furthest write.
const LEAD_MIN: i64 = 256 << 10;
/// The most: a bound on the disk space zeros take beyond the WAL's own largest size.
const LEAD_MAX: i64 = 64 << 20;
/// Zeros written per write and per writeback; synced every `SYNC_EVERY` bytes.
const PIECE: i64 = 1 << 20;
const SYNC_EVERY: i64 = 8 << 20;
const BLOCK: i64 = 4096;

/// How far the zeros should reach once the writer has written up to `written`.
fn target(written: i64) -> i64 {
    written + written.clamp(LEAD_MIN, LEAD_MAX)
}

/// The first block boundary at or past `at` (`at` ≥ 0).
fn block_end(at: i64) -> i64 {
    (at + BLOCK - 1) / BLOCK * BLOCK
}

struct Shared {
    front: Mutex<Front>,
    cv: Condvar,
    /// The end of the zeros written (a copy of `Front::zeroed`, read without the lock).
    zeroed: AtomicI64,
    /// The end of the writer's furthest write since the file was opened.
    written: AtomicI64,
    /// Set when the thread was asked to write more and has not yet looked.
    asked: AtomicBool,
}

struct Front {
    zeroed: i64,
    stop: bool,
}

/// One WAL's thread; stopped (and waited for) when dropped.
pub(crate) struct Ahead {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Ahead {
    /// Starts keeping the WAL at `path` zeroed ahead of its writer; `None` when it cannot be
    /// opened or the thread cannot start (the WAL then simply grows).
    pub(crate) fn start(path: &Path) -> Option<Ahead> {
        let file = std::fs::OpenOptions::new().write(true).open(path).ok()?;
        // What the file holds already (a WAL left by a process that died: frames, and the zeros
        // written after them) is allocated and the writer's: zeros go past it, and only once
        // this writer's own writes come near its end — not a lead on top of it at every start.
        let size = file.metadata().ok()?.len() as i64;
        let shared = Arc::new(Shared {
            front: Mutex::new(Front {
                zeroed: size,
                stop: false,
            }),
            cv: Condvar::new(),
            zeroed: AtomicI64::new(size),
            written: AtomicI64::new(0),
            asked: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("wal-ahead".into())
            .spawn(move || run(&s, &file))
            .ok()?;
        let ahead = Ahead {
            shared,
            thread: Some(thread),
        };
        ahead.ask();
        Some(ahead)
    }

    /// Makes the writer's write of `offset..end`, `w`: without the lock when the zeros reach
    /// `end` already, under it otherwise.
    pub(crate) fn write<R>(&self, offset: i64, end: i64, w: impl FnOnce() -> R) -> R {
        debug_assert!(offset <= end);
        let s = &self.shared;
        // Past the zeros, under the lock: no zeros are being written meanwhile.
        let front = (end > s.zeroed.load(Ordering::Acquire))
            .then(|| s.front.lock().expect("wal-ahead lock"));
        let r = w();
        s.written.fetch_max(end, Ordering::Relaxed);
        drop(front);
        if target(s.written.load(Ordering::Relaxed)) > s.zeroed.load(Ordering::Acquire) {
            self.ask();
        }
        r
    }

    /// Makes the writer's truncation of the WAL to `size`, `t`; both ends then start again from
    /// the new size.
    pub(crate) fn truncate<R>(&self, size: i64, t: impl FnOnce() -> R) -> R {
        let s = &self.shared;
        let mut front = s.front.lock().expect("wal-ahead lock");
        let r = t();
        front.zeroed = front.zeroed.min(size);
        s.zeroed.store(front.zeroed, Ordering::Release);
        s.written.store(size, Ordering::Relaxed);
        r
    }

    /// Wakes the thread, once until it has looked.
    fn ask(&self) {
        let s = &self.shared;
        if !s.asked.swap(true, Ordering::AcqRel) {
            // Under the lock: the thread is either past its check or waiting.
            let _front = s.front.lock().expect("wal-ahead lock");
            s.cv.notify_one();
        }
    }

    /// The end of the zeros written so far.
    #[cfg(test)]
    pub(crate) fn zeroed(&self) -> i64 {
        self.shared.zeroed.load(Ordering::Acquire)
    }
}

impl Drop for Ahead {
    fn drop(&mut self) {
        self.shared.front.lock().expect("wal-ahead lock").stop = true;
        self.shared.cv.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(s: &Shared, file: &File) {
    let zeros = vec![0u8; PIECE as usize];
    let mut unsynced = 0i64;
    loop {
        let mut front = s.front.lock().expect("wal-ahead lock");
        loop {
            if front.stop {
                return;
            }
            s.asked.store(false, Ordering::Release);
            if target(s.written.load(Ordering::Relaxed)) > front.zeroed {
                break;
            }
            if unsynced > 0 {
                // Caught up: the allocation and the size made durable before sleeping.
                drop(front);
                if file.sync_data().is_err() {
                    return;
                }
                unsynced = 0;
                front = s.front.lock().expect("wal-ahead lock");
                continue;
            }
            front = s.cv.wait(front).expect("wal-ahead lock");
        }
        // Past the writer's furthest write, from a block boundary: the block it ends in is its.
        let from = front
            .zeroed
            .max(block_end(s.written.load(Ordering::Relaxed)));
        if file.write_all_at(&zeros, from as u64).is_err() {
            return;
        }
        front.zeroed = from + PIECE;
        s.zeroed.store(front.zeroed, Ordering::Release);
        drop(front);
        // Written to disk now, not by the next commit's fdatasync.
        if write_range(file, from, PIECE).is_err() {
            return;
        }
        unsynced += PIECE;
        if unsynced >= SYNC_EVERY {
            if file.sync_data().is_err() {
                return;
            }
            unsynced = 0;
        }
    }
}

/// Writes a range's dirty pages to disk and waits for them (Linux; elsewhere the next fsync).
#[cfg(target_os = "linux")]
fn write_range(file: &File, from: i64, len: i64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: a valid descriptor; the call only writes back the range's dirty pages.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), from, len, flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn write_range(_: &File, _: i64, _: i64) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ok() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn empty_file(dir: &Path) -> (std::path::PathBuf, File) {
        let path = dir.join("w");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        (path, f)
    }

    /// Writes `len` bytes of `byte` at `at` through `ahead`, as the writer's VFS does.
    fn put(f: &File, ahead: &Ahead, at: i64, len: usize, byte: u8) {
        let data = vec![byte; len];
        ahead
            .write(at, at + len as i64, || f.write_all_at(&data, at as u64))
            .unwrap();
    }

    #[test]
    fn zeros_go_ahead_of_the_writer_and_never_over_what_it_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let (path, f) = empty_file(dir.path());
        let ahead = Ahead::start(&path).unwrap();
        // An empty file gets the least lead at once.
        wait_until("the first zeros", || ahead.zeroed() >= LEAD_MIN);
        // Appends of odd sizes (as frames are), racing the thread past what it has zeroed:
        // every byte written must read back, whoever wrote near it.
        let mut at = 0i64;
        let mut k = 0u8;
        while at < 24 << 20 {
            let len = 4120 * (1 + (k as usize % 29));
            put(&f, &ahead, at, len, k | 1);
            at += len as i64;
            k = k.wrapping_add(1);
        }
        wait_until("the lead to double", || ahead.zeroed() >= 2 * at);
        let mut at = 0i64;
        let mut k = 0u8;
        while at < 24 << 20 {
            let len = 4120 * (1 + (k as usize % 29));
            let mut got = vec![0u8; len];
            f.read_exact_at(&mut got, at as u64).unwrap();
            assert!(got.iter().all(|b| *b == k | 1), "bytes at {at} overwritten");
            at += len as i64;
            k = k.wrapping_add(1);
        }
        // Past the writer: zeros, in a file that holds them.
        let len = f.metadata().unwrap().len() as i64;
        assert!(len >= 2 * at, "file of {len} bytes for {at} written");
        let mut tail = vec![1u8; 8192];
        f.read_exact_at(&mut tail, block_end(at) as u64).unwrap();
        assert!(tail.iter().all(|b| *b == 0));
        // A truncation starts both ends again from the new size.
        ahead.truncate(0, || f.set_len(0)).unwrap();
        put(&f, &ahead, 0, 4120, 7);
        wait_until("zeros after the truncation", || ahead.zeroed() >= LEAD_MIN);
        let mut got = vec![0u8; 4120];
        f.read_exact_at(&mut got, 0).unwrap();
        assert!(got.iter().all(|b| *b == 7));
        drop(ahead);
    }

    #[test]
    fn a_wal_left_by_a_dead_process_gets_no_lead_on_top_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let (path, f) = empty_file(dir.path());
        f.write_all_at(&vec![5u8; 8 << 20], 0).unwrap();
        let ahead = Ahead::start(&path).unwrap();
        // A restarted WAL's writes, far from the file's end: nothing to zero.
        put(&f, &ahead, 0, 100 * 1024, 9);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(f.metadata().unwrap().len(), 8 << 20);
        assert_eq!(ahead.zeroed(), 8 << 20);
        // Near the end, zeros go past it again.
        put(&f, &ahead, 7 << 20, 1 << 20, 9);
        wait_until("zeros past the old end", || ahead.zeroed() >= 16 << 20);
        let mut got = vec![0u8; 4096];
        f.read_exact_at(&mut got, (8 << 20) - 4096).unwrap();
        assert!(got.iter().all(|b| *b == 9));
    }
}
