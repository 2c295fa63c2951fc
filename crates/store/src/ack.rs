//! The acknowledgment stage. The writer commits a batch to SQLite (its WAL frames written, not
//! yet fsynced: `synchronous=NORMAL`) and goes on with the next batch; this stage fsyncs the WAL
//! and only then answers the batch's callers and publishes the acknowledged LSN. One fsync
//! covers every batch committed before it began, so a slow disk makes groups larger, not the
//! writer idle.
//!
//! The [`Gate`] is where mirroring plugs in (DESIGN.md §2, mirroring and the witness): with a
//! synchronous mirror, callers are answered only once the mirror has hardened their LSN too;
//! with a lease, only while the lease runs; once fenced, never (their transactions were not
//! acknowledged, and the copy will be reseeded or rejoin behind the new primary).

use crate::database::Published;
use crate::error::{Result, StoreError};
use crate::record::Lsn;
use crate::writer::Completion;
use serde::Serialize;
use std::collections::VecDeque;
use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Batches committed but not yet answered, at most.
const PENDING_BATCHES_MAX: usize = 1024;
/// While answers are held by the lease, how often the stage looks at the clock.
const LEASE_POLL_MS: u64 = 20;
/// Threads that fsync and answer (see `run`).
pub(crate) const SYNCERS: usize = 2;

/// A committed batch waiting to be durable: its last LSN and its callers.
pub(crate) struct Pending {
    pub(crate) lsn: Lsn,
    pub(crate) replies: Vec<(Completion, Lsn)>,
    /// Answered once durable here, whatever the gate says: the writer's own control jobs
    /// (consumer cursors, roles), which hold no caller's data.
    pub(crate) local_only: bool,
    /// When the batch's SQLite commit returned (`stages`).
    pub(crate) committed: Instant,
}

enum Msg {
    Pending(Pending),
    /// The gate changed: look at the held answers again.
    Wake,
}

/// What holds acknowledgments back beyond the local fsync.
#[derive(Debug, Default)]
struct GateState {
    /// Answers wait for the mirror's hardened LSN.
    sync: bool,
    /// The highest LSN the mirror has durably applied.
    hardened: Lsn,
    /// When a lease is required: until when it runs.
    lease: Option<Instant>,
    lease_required: bool,
    /// Set when the copy learned of a newer epoch: nothing more is answered or accepted.
    fenced: Option<String>,
    /// Set while new writes wait (a planned failover drains the copy); held answers still go.
    paused: Option<String>,
}

/// Where a copy's acknowledgments stand, for status and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct GateStatus {
    pub sync: bool,
    pub hardened_lsn: Lsn,
    pub lease_required: bool,
    /// Milliseconds the lease still runs (0 when expired or not required).
    pub lease_left_ms: u64,
    pub fenced: Option<String>,
    /// Why new writes are refused for now (a planned failover pauses its primary), if they are.
    pub paused: Option<String>,
    /// Durable commits whose callers are still waiting.
    pub held: usize,
}

/// The acknowledgment gate of a copy (see the module documentation).
#[derive(Default)]
pub struct Gate {
    state: Mutex<GateState>,
    wake: Mutex<Option<SyncSender<Msg>>>,
    held: std::sync::atomic::AtomicUsize,
    /// The durable LSN and the answers it holds: the syncers add to them, and whoever moves
    /// the gate's limit — a syncer after its fsync, the mirror's hardened LSN as it arrives —
    /// answers what the limit lets go.
    answering: Mutex<Answering>,
    /// Where the durable LSN is shown; set once the acknowledgment stage starts.
    published: std::sync::OnceLock<Arc<Published>>,
}

impl Gate {
    fn update(&self, f: impl FnOnce(&mut GateState)) {
        f(&mut self.state.lock().expect("gate lock"));
        if let Some(w) = self.wake.lock().expect("wake lock").as_ref() {
            let _ = w.try_send(Msg::Wake);
        }
    }

    /// Answers wait for the mirror (`true`) or only for the local disk.
    pub fn set_sync(&self, sync: bool, hardened: Lsn) {
        self.update(|s| {
            s.sync = sync;
            s.hardened = s.hardened.max(hardened);
        });
    }

    /// The mirror has durably applied every record up to `lsn`. The answers this lets go are
    /// given here, by the caller's thread, not handed to a syncer to give (one thread hand-off
    /// less on a synchronous commit's round trip).
    pub fn hardened(&self, lsn: Lsn) {
        {
            let mut s = self.state.lock().expect("gate lock");
            if lsn <= s.hardened {
                return;
            }
            s.hardened = lsn;
        }
        let answers = self.release(&mut self.answering.lock().expect("answering lock"));
        for (reply, result) in answers {
            reply.give(result);
        }
    }

    /// Whether answers now wait for a synchronous mirror.
    pub(crate) fn waits_for_mirror(&self) -> bool {
        self.state.lock().expect("gate lock").sync
    }

    /// With `true`, writes are accepted and answered only while a lease runs.
    pub fn require_lease(&self, required: bool) {
        self.update(|s| {
            s.lease_required = required;
            if !required {
                s.lease = None;
            }
        });
    }

    /// The lease runs until `until` (never shortened).
    pub fn renew_lease(&self, until: Instant) {
        let mut s = self.state.lock().expect("gate lock");
        let was_running = s.lease.is_some_and(|l| l > Instant::now());
        if s.lease.is_none_or(|l| l < until) {
            s.lease = Some(until);
        }
        drop(s);
        if !was_running {
            self.update(|_| {});
        }
    }

    /// Whether the lease runs now (or none is required): what `status` shows as a lease left,
    /// without the rest of the status.
    pub fn lease_running(&self) -> bool {
        let s = self.state.lock().expect("gate lock");
        !s.lease_required || s.lease.is_some_and(|l| l > Instant::now())
    }

    /// The copy learned of a newer epoch: every held answer fails, no write is accepted.
    pub fn fence(&self, reason: &str) {
        self.update(|s| {
            s.fenced = Some(reason.to_string());
            s.sync = false;
        });
    }

    /// Why the copy was fenced, if it was (one lock; `status` computes every field).
    pub fn fenced(&self) -> Option<String> {
        self.state.lock().expect("gate lock").fenced.clone()
    }

    /// Refuses new writes with `reason` (or accepts them again with `None`); commits already
    /// made are still answered as the mirror hardens them.
    pub fn pause_writes(&self, reason: Option<&str>) {
        self.update(|s| s.paused = reason.map(str::to_string));
    }

    /// A copy made primary again (recover) starts unfenced, without a mirror or a lease.
    pub fn reset(&self) {
        self.update(|s| *s = GateState::default());
    }

    /// Why the copy accepts no write now, if it does not.
    pub(crate) fn refusal(&self) -> Option<String> {
        let s = self.state.lock().expect("gate lock");
        if let Some(f) = s.fenced.as_ref().or(s.paused.as_ref()) {
            return Some(f.clone());
        }
        if s.lease_required && s.lease.is_none_or(|l| l <= Instant::now()) {
            return Some(
                "this primary has heard from neither its mirror nor its witness within its \
                 lease: it accepts no write until one answers (no split brain)"
                    .into(),
            );
        }
        None
    }

    pub fn status(&self) -> GateStatus {
        let s = self.state.lock().expect("gate lock");
        let now = Instant::now();
        GateStatus {
            sync: s.sync,
            hardened_lsn: s.hardened,
            lease_required: s.lease_required,
            lease_left_ms: s
                .lease
                .filter(|_| s.lease_required)
                .map(|l| l.saturating_duration_since(now).as_millis() as u64)
                .unwrap_or(0),
            fenced: s.fenced.clone(),
            paused: s.paused.clone(),
            held: self.held.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Publishes the durable LSN the gate lets be shown and takes out the held answers it lets
    /// go (all of them, failed, once fenced): the caller gives them, after the lock.
    fn release(&self, a: &mut Answering) -> Vec<(Completion, Result<Lsn>)> {
        let Some(published) = self.published.get() else {
            // No acknowledgment stage yet: nothing is durable through it, nothing is held.
            return Vec::new();
        };
        let mut answers = Vec::new();
        let limit = self.limit(a.local);
        // Published before anyone is answered: a caller reads what it waited for.
        publish_durable(limit.as_ref().ok().copied().flatten(), published, a.local);
        match limit {
            Ok(Some(limit)) => {
                while a.held.front().is_some_and(|(_, lsn)| *lsn <= limit) {
                    let (reply, lsn) = a.held.pop_front().expect("checked");
                    answers.push((reply, Ok(lsn)));
                }
            }
            Ok(None) => {}
            Err(reason) => {
                answers.extend(a.held.drain(..).map(|(r, _)| {
                    (
                        r,
                        Err(StoreError::Role(format!("not acknowledged: {reason}"))),
                    )
                }));
            }
        }
        self.held
            .store(a.held.len(), std::sync::atomic::Ordering::Relaxed);
        answers
    }

    /// Up to which LSN answers may go, given the local durable LSN; `Err` when they must fail.
    fn limit(&self, local: Lsn) -> std::result::Result<Option<Lsn>, String> {
        let s = self.state.lock().expect("gate lock");
        if let Some(f) = &s.fenced {
            return Err(f.clone());
        }
        if s.lease_required && s.lease.is_none_or(|l| l <= Instant::now()) {
            return Ok(None);
        }
        Ok(Some(if s.sync { local.min(s.hardened) } else { local }))
    }
}

pub(crate) struct AckStage {
    queue: Option<SyncSender<Msg>>,
    wal: PathBuf,
    /// The WAL as the writer's thread sees it, for `start_writeback`.
    writeback: Mutex<Option<File>>,
    threads: Vec<JoinHandle<()>>,
    failure: Arc<Mutex<Option<String>>>,
    gate: Arc<Gate>,
}

impl AckStage {
    pub(crate) fn start(
        wal: PathBuf,
        published: Arc<Published>,
        gate: Arc<Gate>,
    ) -> Result<AckStage> {
        let (queue, rx) = sync_channel(PENDING_BATCHES_MAX);
        *gate.wake.lock().expect("wake lock") = Some(queue.clone());
        let _ = gate.published.set(published);
        let failure = Arc::new(Mutex::new(None));
        let shared = Arc::new(Shared {
            wal: wal.clone(),
            rx: Mutex::new(rx),
            failure: failure.clone(),
            gate: gate.clone(),
        });
        let mut stage = AckStage {
            queue: Some(queue),
            wal,
            writeback: Mutex::new(None),
            threads: Vec::with_capacity(SYNCERS),
            failure,
            gate,
        };
        for i in 0..SYNCERS {
            let shared = shared.clone();
            let thread = std::thread::Builder::new()
                .name(format!("ack-{i}"))
                .spawn(move || run(&shared, crate::stall::WRITER + 1 + i))
                .map_err(|e| {
                    StoreError::Closed(format!("cannot start the acknowledgment thread: {e}"))
                })?;
            stage.threads.push(thread);
        }
        Ok(stage)
    }

    /// Hands a committed batch over; its callers are answered once it is durable.
    pub(crate) fn submit(&self, pending: Pending) {
        self.start_wal_writeback();
        let queue = self.queue.as_ref().expect("open while the writer runs");
        if let Err(e) = queue.send(Msg::Pending(pending))
            && let Msg::Pending(p) = e.0
        {
            for (reply, _) in p.replies {
                reply.give(Err(StoreError::Closed(
                    "the acknowledgment thread stopped".into(),
                )));
            }
        }
    }

    /// Starts writing the batch's WAL frames to disk now, without waiting: the syncer's
    /// fdatasync then finds them on their way instead of starting them, after a thread hand-off
    /// (bench store, 256 writers: 268,000 → 286,000 commits/s on average over six alternating
    /// pairs, p50 lower in five). Errors are the fdatasync's to report.
    fn start_wal_writeback(&self) {
        let mut wal = self.writeback.lock().expect("writeback lock");
        if let Ok(Some(f)) = opened(&mut wal, &self.wal) {
            start_writeback(f);
        }
    }

    /// Blocks until everything committed up to `lsn` is durable on this copy.
    pub(crate) fn wait_durable(&self, lsn: Lsn) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        let reply = Completion::Other(Box::new(move |r| {
            let _ = tx.send(r);
        }));
        self.submit(Pending {
            lsn,
            replies: vec![(reply, lsn)],
            local_only: true,
            committed: Instant::now(),
        });
        rx.recv()
            .map_err(|_| StoreError::Closed("the acknowledgment thread stopped".into()))?
            .map(|_| ())
    }

    pub(crate) fn gate(&self) -> &Gate {
        &self.gate
    }

    /// Set once an fsync failed: from then on the database accepts no write.
    pub(crate) fn failure(&self) -> Option<String> {
        self.failure.lock().expect("failure lock").clone()
    }
}

impl Drop for AckStage {
    fn drop(&mut self) {
        // The gate's handle on the queue goes first, or the thread would wait forever.
        self.gate.wake.lock().expect("wake lock").take();
        drop(self.queue.take());
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Starts writing a file's dirty pages to disk, without waiting for them (Linux; elsewhere
/// nothing): a later fsync finds them on their way. Errors are that fsync's to report.
#[cfg(target_os = "linux")]
pub(crate) fn start_writeback(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid descriptor; the call only schedules writeback of its dirty pages.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn start_writeback(_: &File) {}

/// The WAL, opened the first time it exists (there is none before the first write through it).
fn opened<'a>(wal: &'a mut Option<File>, path: &PathBuf) -> std::io::Result<Option<&'a File>> {
    if wal.is_none() {
        match File::open(path) {
            Ok(f) => *wal = Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Ok(wal.as_ref())
}

fn sync(wal: &mut Option<File>, path: &PathBuf) -> std::io::Result<()> {
    match opened(wal, path)? {
        Some(f) => f.sync_data(),
        // No WAL yet: nothing was written through it.
        None => Ok(()),
    }
}

/// The durable LSN a copy shows: on a primary what its callers may be told (`limit`, the
/// gate's); on any other copy — a mirror applying pipelined batches, a primary that stepped
/// down and keeps its old gate — what is on its disk, which a mirror reports as hardened.
fn publish_durable(limit: Option<Lsn>, published: &Published, local: Lsn) {
    let shown = if published.role() == crate::database::Role::Primary {
        limit
    } else {
        Some(local)
    };
    if let Some(shown) = shown {
        published.set_durable(shown);
    }
}

/// What the syncers share: the queue of committed batches, and the answers.
struct Shared {
    wal: PathBuf,
    /// One syncer at a time takes every batch waiting; the other is then free to sync the
    /// next ones while the first one's fsync runs.
    rx: Mutex<Receiver<Msg>>,
    failure: Arc<Mutex<Option<String>>>,
    gate: Arc<Gate>,
}

#[derive(Default)]
struct Answering {
    /// Every LSN up to this one is durable here.
    local: Lsn,
    /// Durable here, waiting for the gate: in LSN order.
    held: VecDeque<(Completion, Lsn)>,
}

/// Takes what the writer committed, fsyncs it, answers it. Two of these run: an fsync
/// covers every write made before it began, so a batch committed while one fsync runs need not
/// wait for it to end before its own begins (on this machine's disk, two overlapping fsyncs
/// give about 1.6 times the fsyncs per second of one, for a quarter more latency each).
fn run(shared: &Shared, slot: usize) {
    let mut wal: Option<File> = None;
    loop {
        let mut batch = Vec::new();
        {
            let rx = shared.rx.lock().expect("queue lock");
            // While answers are held, the clock is looked at now and then (a lease); with none
            // held, nothing but a message wakes the syncer. A gate change sends one, so answers
            // the other syncer holds meanwhile are not left waiting.
            let idle = shared
                .gate
                .answering
                .lock()
                .expect("answering lock")
                .held
                .is_empty();
            let first = if idle {
                rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
            } else {
                rx.recv_timeout(Duration::from_millis(LEASE_POLL_MS))
            };
            match first {
                Ok(Msg::Pending(p)) => batch.push(p),
                Ok(Msg::Wake) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while let Ok(m) = rx.try_recv() {
                if let Msg::Pending(p) = m {
                    batch.push(p);
                }
            }
        }
        let taken = Instant::now();
        let synced = if batch.is_empty() {
            Ok(())
        } else {
            let failed = shared.failure.lock().expect("failure lock").clone();
            match failed {
                Some(f) => Err(f),
                None => {
                    let _busy = shared.gate.published.get().map(|p| p.io.busy(slot));
                    sync(&mut wal, &shared.wal)
                }
                .map_err(|e| {
                    let msg = format!(
                        "fsync of {} failed ({e}); the database accepts no more writes: restart \
                         the node after checking the disk",
                        shared.wal.display()
                    );
                    *shared.failure.lock().expect("failure lock") = Some(msg.clone());
                    msg
                }),
            }
        };
        let synced_at = Instant::now();
        let stages = shared.gate.published.get().map(|p| &p.counters.stages);
        if let (Ok(()), Some(s)) = (&synced, stages) {
            for p in batch.iter().filter(|p| !p.local_only) {
                s.synced(p.replies.len() as u64, p.committed, taken, synced_at);
            }
        }
        let mut answers: Vec<(Completion, Result<Lsn>)> = Vec::new();
        {
            let mut a = shared.gate.answering.lock().expect("answering lock");
            match synced {
                Ok(()) => {
                    if let Some(last) = batch.iter().map(|p| p.lsn).max() {
                        a.local = a.local.max(last);
                    }
                    let back = a.held.back().map(|(_, lsn)| *lsn);
                    let mut lowest = Lsn::MAX;
                    for p in batch {
                        if p.local_only {
                            answers.extend(p.replies.into_iter().map(|(r, lsn)| (r, Ok(lsn))));
                        } else {
                            // A batch's replies are in LSN order.
                            if let Some((_, first)) = p.replies.first() {
                                lowest = lowest.min(*first);
                            }
                            a.held.extend(p.replies);
                        }
                    }
                    // The other syncer may have held later LSNs already.
                    if back.is_some_and(|b| b > lowest) {
                        a.held.make_contiguous().sort_by_key(|(_, lsn)| *lsn);
                    }
                }
                Err(msg) => {
                    for p in batch {
                        answers.extend(
                            p.replies
                                .into_iter()
                                .map(|(r, _)| (r, Err(StoreError::Closed(msg.clone())))),
                        );
                    }
                }
            }
            answers.extend(shared.gate.release(&mut a));
        }
        let mut timed = crate::stages::Answers::default();
        for (reply, result) in answers {
            if stages.is_some() && matches!(reply, Completion::Job(..)) && result.is_ok() {
                timed.push(synced_at, Instant::now());
            }
            reply.give(result);
        }
        if let Some(s) = stages {
            s.answered(timed);
        }
    }
    let held: Vec<_> = shared
        .gate
        .answering
        .lock()
        .expect("answering lock")
        .held
        .drain(..)
        .collect();
    for (reply, _) in held {
        reply.give(Err(StoreError::Closed(
            "the database closed before the commit was acknowledged".into(),
        )));
    }
}
