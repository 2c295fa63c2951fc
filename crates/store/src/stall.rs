//! The disk operations in progress, and since when: the writer's job (a group commit, an
//! applied batch, a role change — each writes the WAL) and each syncer's fsync. A disk that
//! stops answering (a failing device, a frozen file system) leaves one of them in progress
//! for good: `Database::io_stall` says which and since when, so that the copy's health reports
//! it and a primary can hand over to its mirror. Two clock reads per group and per fsync.

use std::sync::atomic::{AtomicI64, Ordering::Relaxed};

/// The writer's slot; the syncers' follow it.
pub(crate) const WRITER: usize = 0;
const SLOTS: usize = 1 + crate::ack::SYNCERS;

/// When each slot's operation started (ms since the Unix epoch; 0: none in progress).
#[derive(Default)]
pub(crate) struct IoWatch {
    started: [AtomicI64; SLOTS],
}

/// An operation in progress; it ends when this is dropped.
pub(crate) struct Busy<'a>(&'a AtomicI64);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.store(0, Relaxed);
    }
}

impl IoWatch {
    /// Marks `slot`'s operation started now, until `end`.
    pub(crate) fn start(&self, slot: usize) {
        self.started[slot].store(crate::writer::now_ms().max(1), Relaxed);
    }

    pub(crate) fn end(&self, slot: usize) {
        self.started[slot].store(0, Relaxed);
    }

    /// `start`, and `end` when the guard is dropped.
    pub(crate) fn busy(&self, slot: usize) -> Busy<'_> {
        self.start(slot);
        Busy(&self.started[slot])
    }

    /// The operation in progress for the longest, if any.
    pub(crate) fn oldest(&self) -> Option<IoStall> {
        (0..SLOTS)
            .filter_map(|i| {
                let since_ms = self.started[i].load(Relaxed);
                (since_ms > 0).then_some(IoStall {
                    since_ms,
                    what: if i == WRITER {
                        "the writer's write to the database"
                    } else {
                        "an fsync of the WAL"
                    },
                })
            })
            .min_by_key(|s| s.since_ms)
    }
}

/// A disk operation in progress: since when (ms since the Unix epoch), and which.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoStall {
    pub since_ms: i64,
    pub what: &'static str,
}

impl IoStall {
    /// How long it has been in progress, in ms.
    pub fn age_ms(&self) -> i64 {
        crate::writer::now_ms() - self.since_ms
    }
}
