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

/// Nice value of a follower's thread (`follow.rs`): derived structures, even a whole rebuild
/// of one, take the CPU the commits and the operator's procedures leave (a tenth of it, at
/// least, against default threads); they never hold a commit back.
const FOLLOWER_NICE: libc::c_int = 10;

/// Lowers the calling thread's priority to a follower's (`FOLLOWER_NICE`), unless it is lower
/// already. Best effort, like `defer_to_databases`.
pub(crate) fn yield_to_commits() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid takes no argument; getpriority and setpriority with PRIO_PROCESS and a
        // thread id read and set that one thread's nice value on Linux, and a thread may always
        // lower its own.
        unsafe {
            let tid = libc::gettid() as libc::id_t;
            if libc::getpriority(libc::PRIO_PROCESS, tid) < FOLLOWER_NICE {
                libc::setpriority(libc::PRIO_PROCESS, tid, FOLLOWER_NICE);
            }
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

    #[test]
    fn a_follower_thread_lowers_its_own_priority_only() {
        // SAFETY: getpriority of the calling thread (its id); errno is not looked at, as nice
        // values here are never -1.
        let nice =
            || unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
        let inherited = nice();
        let lowered = std::thread::spawn(move || {
            yield_to_commits();
            nice()
        })
        .join()
        .unwrap();
        assert_eq!(lowered, FOLLOWER_NICE.max(inherited));
        assert_eq!(nice(), inherited);
    }
}
