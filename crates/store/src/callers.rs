//! The threads that submit transactions — a node's request handlers — and a database's own
//! pipeline (its writer, its syncers) share the machine's CPUs. Every commit is handed from a
//! caller to the writer, from the writer to a syncer, and from the syncer back to each caller;
//! a syncer answers a whole group of callers at once. If each caller woken by those answers
//! took the CPU from the thread that woke it, or from the writer in the middle of its group,
//! the pipeline would stall behind the callers it serves.
//!
//! [`defer_to_databases`] marks a caller's thread so that its wake-ups preempt nobody (Linux's
//! `SCHED_BATCH`: the same share of the CPU as any other thread, but a woken batch thread waits
//! for the running one's slice to end instead of preempting it). The database's threads keep
//! the default policy: a writer woken by a caller's job still runs at once. Measured with
//! `tandem bench store`, whose writers stand for a node's handlers: 256 writers 308,000 →
//! 349,000 and 312,000 → 362,000 commits/s on average over two series of twelve alternating
//! pairs; a lone writer's commits start later (docs/performance-log.md, session 15).

/// Marks the calling thread as one that submits transactions to databases (see the module
/// documentation): its wake-ups no longer preempt running threads. Call it at the start of
/// each thread of a runtime that serves requests (`on_thread_start`). Best effort: where the
/// policy cannot be set (another OS, a sandbox refusing it), the thread stays as it was.
pub fn defer_to_databases() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid sched_param; pid 0 is the calling thread. SCHED_BATCH is a
        // normal (non real-time) policy that any thread may take for itself.
        unsafe {
            libc::sched_setscheduler(0, libc::SCHED_BATCH, &param);
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_caller_thread_takes_the_batch_policy_and_others_keep_theirs() {
        // SAFETY: pid 0 is the calling thread.
        let policy = || unsafe { libc::sched_getscheduler(0) };
        // Whatever this process was started with (a test runner may run under any policy).
        let inherited = policy();
        let marked = std::thread::spawn(move || {
            defer_to_databases();
            policy()
        })
        .join()
        .unwrap();
        assert_eq!(marked, libc::SCHED_BATCH);
        // Only the calling thread changes: this one, and a thread started after, keep theirs.
        assert_eq!(policy(), inherited);
        assert_eq!(std::thread::spawn(policy).join().unwrap(), inherited);
    }
}
