//! Where a commit's time goes, from the caller's submission to its answer: counted by the
//! writer (waiting for a group, the group) and by the acknowledgment stage (waiting for a
//! syncer, the fsync, the answers), summed over every write transaction, so that a mean per
//! stage can be read at any time (`Database::writer_stats`).

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// The stages' running sums (nanoseconds) and how many transactions each counts.
#[derive(Default, Debug)]
pub(crate) struct StageCounters {
    grouped: AtomicU64,
    queued_ns: AtomicU64,
    group_ns: AtomicU64,
    synced: AtomicU64,
    to_syncer_ns: AtomicU64,
    fsync_ns: AtomicU64,
    answered: AtomicU64,
    answer_ns: AtomicU64,
}

fn ns(from: Instant, to: Instant) -> u64 {
    to.saturating_duration_since(from).as_nanos() as u64
}

impl StageCounters {
    /// A group of write transactions committed: each was submitted at one of `submitted`, the
    /// group began at `began` and its SQLite commit returned at `committed`.
    pub(crate) fn grouped(
        &self,
        submitted: impl Iterator<Item = Instant>,
        began: Instant,
        committed: Instant,
    ) {
        let (mut n, mut queued) = (0u64, 0u64);
        for s in submitted {
            n += 1;
            queued += ns(s, began);
        }
        self.grouped.fetch_add(n, Relaxed);
        self.queued_ns.fetch_add(queued, Relaxed);
        self.group_ns.fetch_add(ns(began, committed) * n, Relaxed);
    }

    /// `n` transactions committed at `committed`, taken by a syncer at `taken`, durable at
    /// `synced`.
    pub(crate) fn synced(&self, n: u64, committed: Instant, taken: Instant, synced: Instant) {
        self.synced.fetch_add(n, Relaxed);
        self.to_syncer_ns
            .fetch_add(ns(committed, taken) * n, Relaxed);
        self.fsync_ns.fetch_add(ns(taken, synced) * n, Relaxed);
    }

    /// A syncer's answers, counted once they are all given.
    pub(crate) fn answered(&self, a: Answers) {
        if a.n > 0 {
            self.answered.fetch_add(a.n, Relaxed);
            self.answer_ns.fetch_add(a.ns, Relaxed);
        }
    }

    pub(crate) fn snapshot(&self) -> CommitStages {
        CommitStages {
            grouped: self.grouped.load(Relaxed),
            queued_ns: self.queued_ns.load(Relaxed),
            group_ns: self.group_ns.load(Relaxed),
            synced: self.synced.load(Relaxed),
            to_syncer_ns: self.to_syncer_ns.load(Relaxed),
            fsync_ns: self.fsync_ns.load(Relaxed),
            answered: self.answered.load(Relaxed),
            answer_ns: self.answer_ns.load(Relaxed),
        }
    }
}

/// A syncer's answers to one batch, summed as they go (each timed before it is given: after
/// it, the syncer may be descheduled while the caller already runs) and added to the shared
/// counters once, not per answer.
#[derive(Default)]
pub(crate) struct Answers {
    n: u64,
    ns: u64,
}

impl Answers {
    /// A transaction about to be answered at `at`, its fsync having ended at `synced`.
    pub(crate) fn push(&mut self, synced: Instant, at: Instant) {
        self.n += 1;
        self.ns += ns(synced, at);
    }
}

/// The sums of `StageCounters` at one moment; `since` gives those of an interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CommitStages {
    /// Transactions committed in a group, and the time they waited for their group to begin
    /// and the time their group took, up to its SQLite commit.
    pub grouped: u64,
    pub queued_ns: u64,
    pub group_ns: u64,
    /// Transactions made durable by the acknowledgment stage's fsync, the time from their
    /// group's commit until a syncer took it, and the fsync's.
    pub synced: u64,
    pub to_syncer_ns: u64,
    pub fsync_ns: u64,
    /// Transactions answered by a syncer, and the time from the end of the fsync.
    pub answered: u64,
    pub answer_ns: u64,
}

/// Mean microseconds a transaction spent in each stage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct StageMeans {
    pub queued_us: f64,
    pub group_us: f64,
    pub to_syncer_us: f64,
    pub fsync_us: f64,
    pub answer_us: f64,
}

impl CommitStages {
    /// What happened between `earlier` and this snapshot.
    pub fn since(&self, earlier: &CommitStages) -> CommitStages {
        CommitStages {
            grouped: self.grouped - earlier.grouped,
            queued_ns: self.queued_ns - earlier.queued_ns,
            group_ns: self.group_ns - earlier.group_ns,
            synced: self.synced - earlier.synced,
            to_syncer_ns: self.to_syncer_ns - earlier.to_syncer_ns,
            fsync_ns: self.fsync_ns - earlier.fsync_ns,
            answered: self.answered - earlier.answered,
            answer_ns: self.answer_ns - earlier.answer_ns,
        }
    }

    pub fn means(&self) -> StageMeans {
        let mean = |ns: u64, n: u64| ns as f64 / n.max(1) as f64 / 1000.0;
        StageMeans {
            queued_us: mean(self.queued_ns, self.grouped),
            group_us: mean(self.group_ns, self.grouped),
            to_syncer_us: mean(self.to_syncer_ns, self.synced),
            fsync_us: mean(self.fsync_ns, self.synced),
            answer_us: mean(self.answer_ns, self.answered),
        }
    }
}

impl StageMeans {
    /// The sum of the means: the part of a commit's round trip the store counts.
    pub fn total_us(&self) -> f64 {
        self.queued_us + self.group_us + self.to_syncer_us + self.fsync_us + self.answer_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn means_per_stage_over_an_interval() {
        let c = StageCounters::default();
        let t0 = Instant::now();
        let at = |us: u64| t0 + Duration::from_micros(us);
        let before = c.snapshot();
        // Two transactions submitted at 0 and 10 µs, their group from 20 to 120 µs.
        c.grouped([at(0), at(10)].into_iter(), at(20), at(120));
        c.synced(2, at(120), at(150), at(350));
        let mut answers = Answers::default();
        answers.push(at(350), at(360));
        answers.push(at(350), at(380));
        c.answered(answers);
        let m = c.snapshot().since(&before).means();
        assert_eq!(m.queued_us, 15.0);
        assert_eq!(m.group_us, 100.0);
        assert_eq!(m.to_syncer_us, 30.0);
        assert_eq!(m.fsync_us, 200.0);
        assert_eq!(m.answer_us, 20.0);
        assert_eq!(m.total_us(), 365.0);
        assert_eq!(
            c.snapshot().since(&c.snapshot()).means(),
            StageMeans::default()
        );
    }
}
