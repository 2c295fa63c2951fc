//! `tandem bench mirror`: what mirroring costs, and how fast a mirror takes over (DESIGN.md §8).
//!
//! (1) In this process, one run, the same rows and the same number of concurrent writers for
//!     each mode, a fresh database each: commits/s and commit latency with no mirror, with an
//!     asynchronous mirror and with a synchronous one, in two placements. **Split**, as in a
//!     deployment where the mirror is another server: the primary's threads (its writer and
//!     syncers, the writers' tasks, the handler of the mirror's reports) run on one half of the
//!     CPUs this process may use, the mirror's (its writer and syncers, the replication loop)
//!     on the other half, and with no mirror the primary keeps its half only — the same CPUs
//!     in the three modes. **Shared**: both copies on every CPU, so the mirror's work is taken
//!     from the primary's. The mirror is a copy in another directory
//!     fed by a replication thread that does what the node's transport does, without HTTP: it
//!     pulls (`serve_pull`), carries the answer through its binary wire form
//!     (`encode_answer`/`decode_answer`), applies it (`apply_pipelined` returns once the batch
//!     is committed on the mirror, which fsyncs it while the next batch is pulled and applied)
//!     and, in sync mode, a reporter tells the primary's gate what the mirror hardened as soon as
//!     its durable LSN moves, as the node's mirror does beside its pulls; with nothing new the
//!     loop waits on the primary's committed LSN. Each mirrored run ends with the mirror's chain
//!     compared with the primary's; the bench fails when they differ.
//! (2) Real processes: the example deployment of `tandem init`, posts through atl-fe's user API
//!     without pause, kill -9 of the node holding the primary of `mgc`; measured: from the kill
//!     to the first post sent after it and acknowledged (its mirror took over). The killed node
//!     is restarted and waited for until it mirrors again, synchronized, before the next round
//!     kills the new primary. Every node is stopped at the end, also on error.

use super::Latency;
use super::chat::RawPoster;
use super::store::{Rows, SCHEMA};
use crate::deployment::Deployment;
use crate::output::{Output, count};
use anyhow::{Context, bail, ensure};
use clap::Args;
use serde::Serialize;
use serde_json::json;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tandem_store::replication::{
    CopyPosition, PullAnswer, PullRequest, decode_answer, encode_answer, serve_pull,
};
use tandem_store::{Database, Lsn, Options, Role, StoreError, Tx};
use tandem_topology::DATABASE_CMS;

#[derive(Args)]
pub struct MirrorArgs {
    /// Seconds each of the three modes writes.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=120))]
    seconds: u64,
    /// Concurrent writers, one row per commit (the same for the three modes).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=4096))]
    writers: u64,
    /// Kills of the primary measured with real processes (0 skips that part).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(0..=10))]
    failovers: u64,
    /// Where the copies run: split (a half of the CPUs each, as two servers), shared (both on
    /// every CPU), or both, split first.
    #[arg(long, value_enum, default_value_t = Placements::Both)]
    placement: Placements,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Placements {
    Split,
    Shared,
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Placement {
    Split,
    Shared,
}

impl Placement {
    fn label(self) -> &'static str {
        match self {
            Placement::Split => "split",
            Placement::Shared => "shared",
        }
    }
}

/// The CPUs this thread may run on (`sched_getaffinity`).
fn allowed_cpus() -> anyhow::Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is an empty set; the kernel fills at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    ensure!(
        r == 0,
        "cannot read this process's CPUs (sched_getaffinity): {}",
        std::io::Error::last_os_error()
    );
    Ok((0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// Runs this thread — and so every thread it starts from now on — on `cpus` only.
fn run_on(cpus: &[usize]) -> anyhow::Result<()> {
    // SAFETY: as above; CPU_SET on indices below CPU_SETSIZE (they came from the kernel).
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    ensure!(
        r == 0,
        "cannot run on CPUs {cpus:?} (sched_setaffinity): {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// The CPUs of each copy in one placement.
struct Cpus {
    primary: Vec<usize>,
    mirror: Vec<usize>,
}

impl Cpus {
    /// Split: the first half of `all` for the primary, the next as many for the mirror (with an
    /// odd count the last CPU is left out, so both have the same). None with fewer than two.
    fn of(placement: Placement, all: &[usize]) -> Option<Cpus> {
        match placement {
            Placement::Shared => Some(Cpus {
                primary: all.to_vec(),
                mirror: all.to_vec(),
            }),
            Placement::Split if all.len() < 2 => None,
            Placement::Split => {
                let half = all.len() / 2;
                Some(Cpus {
                    primary: all[..half].to_vec(),
                    mirror: all[half..2 * half].to_vec(),
                })
            }
        }
    }
}

/// How long the replication loop waits on the committed LSN before it pulls again anyway.
const PULL_WAIT_MS: u64 = 100;
/// How long the mirror may take to apply what was left when the writers stopped.
const CATCH_UP_WAIT_MS: u64 = 60_000;
/// Budgets of DESIGN.md §8.
const SYNC_TO_NONE_MIN: f64 = 0.70;
const FAILOVER_BUDGET_MS: f64 = 5_000.0;
/// The database whose primary is killed, and the user's room in it.
const DATABASE: &str = "mgc";
const ROOM: &str = "failover";
const USER: &str = "bench";
const POOL: &str = "pool-atl";
const FRONTEND: &str = "atl-fe";
/// Concurrent posting connections, and their pause after an answer (ms).
const POSTERS: usize = 4;
const POST_PAUSE_MS: u64 = 2;
const POST_ERROR_PAUSE_MS: u64 = 10;
/// A post not answered within this is counted as failed and its connection replaced.
const POST_TIMEOUT_MS: u64 = 2_000;
/// Posting before the kill, so that the kill lands in a steady flow.
const STEADY_MS: u64 = 1_000;
/// The first acknowledged post after a kill must come within this, or the round fails.
const FAILOVER_WAIT_MS: u64 = 30_000;
/// Every mirrored copy of the pair must report synchronized within this.
const SYNCHRONIZED_WAIT_MS: u64 = 120_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Mode {
    NoMirror,
    Async,
    Sync,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::NoMirror => "no mirror",
            Mode::Async => "async mirror",
            Mode::Sync => "sync mirror",
        }
    }
}

/// What the replication loop did, and where its time went.
#[derive(Debug, Default, Serialize)]
struct Replication {
    /// Pull answers that carried records (each applied as one mirror transaction and fsync).
    batches: u64,
    records: u64,
    records_per_batch: f64,
    /// Reading the primary's journal (`serve_pull`).
    pull_ms: f64,
    /// Encoding and decoding the answer.
    codec_ms: f64,
    /// Applying on the mirror, its fsync included.
    apply_ms: f64,
    /// Waiting for new commits.
    wait_ms: f64,
    /// Most records the mirror lacked when a pull answered.
    lag_max_records: u64,
    /// Records the mirror lacked when the writers stopped.
    lag_at_end_records: u64,
    /// From the writers' stop until the mirror had every record.
    catch_up_ms: f64,
    /// The mirror's LSN and chain at the end; the primary's are the same (checked).
    lsn: Lsn,
    chain: String,
}

#[derive(Serialize)]
struct Run {
    mode: Mode,
    writers: u64,
    commits: u64,
    seconds: f64,
    per_second: f64,
    latency: Latency,
    /// Average transactions per SQLite commit on the primary.
    group_commit_avg: f64,
    replication: Option<Replication>,
}

#[derive(Serialize)]
struct Round {
    killed: String,
    new_primary: String,
    epoch: u64,
    /// From the SIGKILL to the answer of the first post sent after it and acknowledged.
    kill_to_first_ack_ms: f64,
    /// Posts acknowledged before the kill in this round, and posts sent after it that failed.
    acknowledged_before_kill: u64,
    failed_after_kill: u64,
    /// From the restart of the killed node until every copy of the pair was synchronized.
    rejoin_ms: f64,
}

#[derive(Serialize)]
struct Failover {
    rounds: Vec<Round>,
    max_ms: f64,
    budget_ms: f64,
}

/// The three modes in one placement.
#[derive(Serialize)]
struct Placed {
    placement: Placement,
    primary_cpus: Vec<usize>,
    mirror_cpus: Vec<usize>,
    runs: Vec<Run>,
    sync_to_no_mirror: f64,
    async_to_no_mirror: f64,
}

#[derive(Serialize)]
struct Report {
    writers: u64,
    seconds_each: u64,
    placements: Vec<Placed>,
    /// Placements asked for that this machine cannot give, and why.
    skipped: Vec<String>,
    failover: Option<Failover>,
}

pub fn run(a: MirrorArgs, out: &Output) -> anyhow::Result<()> {
    let scratch = tempfile::Builder::new()
        .prefix("tandem-bench-mirror-")
        .tempdir()?;
    // Made before any clock starts; ids beyond reuse them (`Rows`).
    let rows = Arc::new(Rows::make(u64::MAX));
    let all = allowed_cpus()?;
    let wanted = match a.placement {
        Placements::Split => vec![Placement::Split],
        Placements::Shared => vec![Placement::Shared],
        Placements::Both => vec![Placement::Split, Placement::Shared],
    };
    let (mut placements, mut skipped) = (Vec::new(), Vec::new());
    for placement in wanted {
        let Some(cpus) = Cpus::of(placement, &all) else {
            skipped.push(format!(
                "{} needs two CPUs; this process may use {all:?}",
                placement.label()
            ));
            continue;
        };
        let placed = run_on(&cpus.primary).and_then(|_| {
            // The writers' tasks run as a node's request handlers do; the runtime's threads
            // inherit this thread's CPUs (the primary's).
            let rt = tandem_node::runtime()?;
            let mut runs = Vec::new();
            for mode in [Mode::NoMirror, Mode::Async, Mode::Sync] {
                out.progress(&format!(
                    "{}, {}: {} writers, {} s…",
                    placement.label(),
                    mode.label(),
                    a.writers,
                    a.seconds
                ));
                let dir = scratch
                    .path()
                    .join(format!("{}-{mode:?}", placement.label()));
                runs.push(commits(
                    &rt, &dir, &rows, mode, a.writers, a.seconds, &cpus,
                )?);
                std::fs::remove_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
            }
            Ok(Placed {
                placement,
                sync_to_no_mirror: runs[2].per_second / runs[0].per_second,
                async_to_no_mirror: runs[1].per_second / runs[0].per_second,
                primary_cpus: cpus.primary,
                mirror_cpus: cpus.mirror,
                runs,
            })
        });
        // Every CPU again, also after an error: the nodes of the failovers start from here.
        run_on(&all)?;
        placements.push(placed?);
    }
    let failover = match a.failovers {
        0 => None,
        n => Some(failovers(&tandem_node::runtime()?, n, out)?),
    };
    let report = Report {
        writers: a.writers,
        seconds_each: a.seconds,
        placements,
        skipped,
        failover,
    };
    out.emit(&report, || human(&report))
}

// ---- (1) commits with no, an asynchronous and a synchronous mirror ----

/// One mode: a fresh primary in `dir/primary` (and its mirror in `dir/mirror`), `writers`
/// concurrent tasks committing one row each for `seconds`. The calling thread runs on
/// `cpus.primary` (as `rt`'s threads do); the primary's threads start from it, the mirror's
/// and the replication loop from it moved to `cpus.mirror` for the while.
fn commits(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    rows: &Arc<Rows>,
    mode: Mode,
    writers: u64,
    seconds: u64,
    cpus: &Cpus,
) -> anyhow::Result<Run> {
    let primary = Database::create(&dir.join("primary"), "bench", Options::default())?;
    primary.migrate(SCHEMA)?;
    run_on(&cpus.mirror)?;
    let mirror = mirrored(dir, &primary, mode, rt);
    run_on(&cpus.primary)?;
    let (mirror, replicator) = mirror?;
    let (stop_at, replicator) = match replicator {
        Some((stop_at, thread)) => (Some(stop_at), Some(thread)),
        None => (None, None),
    };

    let before = primary.writer_stats();
    let (samples, elapsed) = write_for(rt, &primary, rows, writers, seconds)?;
    let after = primary.writer_stats();

    let replication = match (replicator, &mirror, stop_at) {
        (Some(thread), Some(m), Some(stop_at)) => {
            let end = primary.identity();
            let stopped = Instant::now();
            let lag = end.lsn.saturating_sub(m.identity().lsn);
            stop_at.send_replace(end.lsn);
            let mut r = thread.join().expect("replication thread")?;
            r.catch_up_ms = stopped.elapsed().as_secs_f64() * 1000.0;
            r.lag_at_end_records = lag;
            primary.gate().set_sync(false, 0);
            let mine = m.identity();
            ensure!(
                mine.lsn == end.lsn && mine.chain == end.chain,
                "{} run: the mirror is at LSN {} chain {}, the primary at LSN {} chain {}: the \
                 copies differ",
                mode.label(),
                mine.lsn,
                mine.chain,
                end.lsn,
                end.chain
            );
            r.lsn = mine.lsn;
            r.chain = mine.chain.to_hex();
            Some(r)
        }
        _ => None,
    };
    let commits = samples.len() as u64;
    Ok(Run {
        mode,
        writers,
        commits,
        seconds: elapsed,
        per_second: commits as f64 / elapsed,
        latency: Latency::of(samples),
        group_commit_avg: (after.records - before.records) as f64
            / (after.sqlite_commits - before.sqlite_commits).max(1) as f64,
        replication,
    })
}

/// The replication loop's thread, and what tells it where to stop.
type Replicator = (
    tokio::sync::watch::Sender<Lsn>,
    std::thread::JoinHandle<anyhow::Result<Replication>>,
);

/// The mirror of `mode` (none, async or sync) and its replication loop, started from the
/// calling thread (their threads run on its CPUs).
fn mirrored(
    dir: &Path,
    primary: &Database,
    mode: Mode,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<(Option<Database>, Option<Replicator>)> {
    let mirror = match mode {
        Mode::NoMirror => None,
        Mode::Async | Mode::Sync => Some(Database::create_copy(
            &dir.join("mirror"),
            "bench",
            primary.identity().database_id,
            Role::Mirror,
            Options::default(),
        )?),
    };
    let (stop_at, stopping) = tokio::sync::watch::channel(Lsn::MAX);
    let replicator = mirror.as_ref().map(|m| {
        if mode == Mode::Sync {
            primary.gate().set_sync(true, m.identity().lsn);
        }
        let (p, m, stopping, handle) = (
            primary.clone(),
            m.clone(),
            stopping.clone(),
            rt.handle().clone(),
        );
        std::thread::Builder::new()
            .name("replication".into())
            .spawn(move || {
                let r = replicate(&p, &m, mode == Mode::Sync, stopping, &handle);
                if let Err(e) = &r {
                    // Writers waiting for this mirror would wait forever: they fail instead.
                    p.gate()
                        .fence(&format!("the bench's replication stopped: {e:#}"));
                }
                r
            })
    });
    let replicator = replicator.transpose()?;
    Ok((mirror, replicator.map(|thread| (stop_at, thread))))
}

/// `writers` concurrent tasks (as the node's request handlers are) commit one row each until
/// `seconds` have passed; every commit's latency in µs, and the time taken.
fn write_for(
    rt: &tokio::runtime::Runtime,
    db: &Database,
    rows: &Arc<Rows>,
    writers: u64,
    seconds: u64,
) -> anyhow::Result<(Vec<u32>, f64)> {
    let next_id = Arc::new(AtomicU64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let samples = rt.block_on(async {
        let tasks: Vec<_> = (0..writers)
            .map(|_| {
                let (db, next_id, stop, rows) =
                    (db.clone(), next_id.clone(), stop.clone(), rows.clone());
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let id = next_id.fetch_add(1, Ordering::Relaxed);
                        // The transaction (re-runnable) writes the row from a borrow.
                        let row = rows.get(id);
                        let t0 = Instant::now();
                        db.write_async(move |tx: &mut Tx<'_>| tx.insert("rows", row.values()))
                            .await?;
                        lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    }
                    Ok::<_, StoreError>(lat)
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let mut samples = Vec::new();
        for t in tasks {
            samples.extend(t.await.expect("writer task")?);
        }
        Ok::<_, StoreError>(samples)
    })?;
    Ok((samples, started.elapsed().as_secs_f64()))
}

/// The mirror's side of mirroring, in process: pull, through the wire form, apply, harden.
/// Runs until the mirror reaches the LSN `stop_at` is set to (`Lsn::MAX` while writes go on).
fn replicate(
    primary: &Database,
    mirror: &Database,
    sync: bool,
    mut stop_at: tokio::sync::watch::Receiver<Lsn>,
    handle: &tokio::runtime::Handle,
) -> anyhow::Result<Replication> {
    let mut r = Replication::default();
    let mut committed = primary.subscribe_committed();
    // What the mirror hardened goes back as soon as its fsync ends, not with the next pull:
    // the node's mirror reports it the same way, beside its pulls.
    let _reporter = AbortOnDrop(sync.then(|| {
        let (gate_of, mut durable) = (primary.clone(), mirror.subscribe());
        handle.spawn(async move {
            loop {
                let lsn = *durable.borrow_and_update();
                gate_of.gate().hardened(lsn);
                if durable.changed().await.is_err() {
                    return;
                }
            }
        })
    }));
    let mut deadline = None;
    loop {
        let hardened = mirror.durable_lsn();
        let stop = *stop_at.borrow_and_update();
        if hardened >= stop {
            break;
        }
        if stop != Lsn::MAX {
            let d = *deadline
                .get_or_insert_with(|| Instant::now() + Duration::from_millis(CATCH_UP_WAIT_MS));
            ensure!(
                Instant::now() < d,
                "the mirror did not catch up within {} s (at LSN {hardened}, the primary at {stop})",
                CATCH_UP_WAIT_MS / 1000
            );
        }
        // Marked seen before the pull: a commit after it ends the wait below at once.
        committed.borrow_and_update();
        let t0 = Instant::now();
        let answer = serve_pull(
            primary,
            &PullRequest {
                copy: Some(CopyPosition::of(mirror)),
                hardened,
            },
        )?;
        let t1 = Instant::now();
        let answer = decode_answer(&encode_answer(&answer))?;
        let t2 = Instant::now();
        r.pull_ms += ms(t1 - t0);
        r.codec_ms += ms(t2 - t1);
        let PullAnswer::Records { lsn, batch, .. } = answer else {
            bail!("the primary answered its own mirror's pull with {answer:?}");
        };
        if batch.records.is_empty() {
            let abandoned = handle.block_on(async {
                tokio::select! {
                    _ = committed.changed() => false,
                    changed = stop_at.changed() => changed.is_err(),
                    _ = tokio::time::sleep(Duration::from_millis(PULL_WAIT_MS)) => false,
                }
            });
            ensure!(
                !abandoned,
                "the run ended before the mirror was told where to stop"
            );
            r.wait_ms += ms(t2.elapsed());
            continue;
        }
        r.lag_max_records = r.lag_max_records.max(lsn.saturating_sub(hardened));
        r.batches += 1;
        r.records += batch.records.len() as u64;
        // Committed on the mirror, fsynced while the next batch is pulled and applied.
        mirror.apply_pipelined(batch)?;
        r.apply_ms += ms(t2.elapsed());
    }
    r.records_per_batch = r.records as f64 / r.batches.max(1) as f64;
    Ok(r)
}

/// A task that ends with the scope holding it, also on an error.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            t.abort();
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---- (2) kill -9 of the primary, real processes ----

/// The deployment's nodes, stopped (every one of the topology) when this goes, also on error.
struct Nodes<'a> {
    d: &'a Deployment,
    children: Vec<(String, std::process::Child)>,
}

impl Drop for Nodes<'_> {
    fn drop(&mut self) {
        let names: Vec<String> = self
            .d
            .topology
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .collect();
        crate::up::stop_all(self.d, &names);
        for (_, c) in &mut self.children {
            let _ = c.wait();
        }
    }
}

fn failovers(rt: &tokio::runtime::Runtime, rounds: u64, out: &Output) -> anyhow::Result<Failover> {
    let tmp = tempfile::Builder::new()
        .prefix("tandem-bench-failover-")
        .tempdir()?;
    let file = crate::init::write(tmp.path(), None)?.topology;
    let d = Deployment::load(&file)?;
    let result = (|| -> anyhow::Result<Failover> {
        let mut nodes = Nodes {
            d: &d,
            children: Vec::new(),
        };
        out.progress("failover: starting the example deployment (six nodes)…");
        nodes.children = crate::up::start(&d, &d.select(&[])?)?;
        measure(rt, &mut nodes, rounds, out)
    })();
    // The nodes are stopped by now; on error their logs stay for the operator.
    result.map_err(|e| {
        let kept = tmp.keep();
        e.context(format!(
            "failover bench (deployment and logs kept in {})",
            kept.display()
        ))
    })
}

fn measure(
    rt: &tokio::runtime::Runtime,
    nodes: &mut Nodes<'_>,
    rounds: u64,
    out: &Output,
) -> anyhow::Result<Failover> {
    let d = nodes.d;
    let pair: Vec<String> = tandem_node::locator::candidates(&d.topology, DATABASE, false)
        .into_iter()
        .map(|n| n.name)
        .collect();
    ensure!(
        pair.len() == 2,
        "the example places {DATABASE} on {} nodes, not a primary and its mirror",
        pair.len()
    );
    out.progress(&format!(
        "failover: waiting for the mirrors on {} to synchronize…",
        pair.join(" and ")
    ));
    wait_synchronized(rt, d, &pair)?;
    let fe = d
        .topology
        .node(FRONTEND)
        .with_context(|| format!("the example has no node {FRONTEND}"))?
        .address
        .clone();
    let token = add_user(rt, d)?;
    rt.block_on(tandem_node::UserApi::new(&fe, &token).request(
        tandem_node::Method::POST,
        "/api/v1/rooms",
        Some(&json!({ "name": ROOM, "privacy": "open" })),
    ))
    .context("creating the room")?;

    let mut done = Vec::new();
    for round in 1..=rounds {
        let (primary, epoch) = primary_of(rt, d, &pair)?;
        let mirror = pair
            .iter()
            .find(|n| **n != primary)
            .expect("a pair")
            .clone();
        out.progress(&format!(
            "failover {round}/{rounds}: posting, then kill -9 of {primary} (primary of {DATABASE}, epoch {epoch})…"
        ));
        let pid = d
            .running_pid(&primary)
            .with_context(|| format!("{primary} is not running"))?;
        let killed_at = Arc::new(OnceLock::new());
        let stop = Arc::new(AtomicBool::new(false));
        let (acked, mut first) = tokio::sync::mpsc::unbounded_channel();
        let posters: Vec<_> = (0..POSTERS)
            .map(|k| {
                rt.spawn(post_loop(
                    fe.clone(),
                    token.clone(),
                    k,
                    killed_at.clone(),
                    stop.clone(),
                    acked.clone(),
                ))
            })
            .collect();
        drop(acked);
        std::thread::sleep(Duration::from_millis(STEADY_MS));
        let at = Instant::now();
        killed_at.set(at).expect("set once");
        crate::deployment::signal(pid, libc::SIGKILL);
        let first_ack = rt.block_on(async {
            tokio::time::timeout(Duration::from_millis(FAILOVER_WAIT_MS), first.recv()).await
        });
        stop.store(true, Ordering::SeqCst);
        let mut tally = Tally::default();
        for p in posters {
            tally.add(rt.block_on(p).expect("poster task"));
        }
        if let Some(i) = nodes.children.iter().position(|(n, _)| *n == primary) {
            let (_, mut child) = nodes.children.remove(i);
            let _ = child.wait();
        }
        ensure!(
            tally.before > 0,
            "no post was acknowledged in the {STEADY_MS} ms before the kill: posting does not work"
        );
        let Ok(Some(acked_at)) = first_ack else {
            bail!(
                "no post was acknowledged within {} s of the kill of {primary}",
                FAILOVER_WAIT_MS / 1000
            );
        };
        let kill_to_first_ack_ms = ms(acked_at - at);
        let (now_primary, new_epoch) = primary_of(rt, d, &pair)?;
        ensure!(
            now_primary == mirror && new_epoch > epoch,
            "after the kill of {primary} the primary of {DATABASE} is {now_primary} at epoch \
             {new_epoch}; expected {mirror} at an epoch above {epoch}"
        );
        out.progress(&format!(
            "failover {round}/{rounds}: {mirror} took over (epoch {new_epoch}); first post \
             acknowledged {kill_to_first_ack_ms:.0} ms after the kill; restarting {primary}…"
        ));
        let restarted = Instant::now();
        nodes
            .children
            .extend(crate::up::start(d, std::slice::from_ref(&primary))?);
        wait_synchronized(rt, d, &pair)?;
        done.push(Round {
            killed: primary,
            new_primary: mirror,
            epoch: new_epoch,
            kill_to_first_ack_ms,
            acknowledged_before_kill: tally.before,
            failed_after_kill: tally.failed_after,
            rejoin_ms: ms(restarted.elapsed()),
        });
    }
    Ok(Failover {
        max_ms: done
            .iter()
            .map(|r| r.kill_to_first_ack_ms)
            .fold(0.0, f64::max),
        rounds: done,
        budget_ms: FAILOVER_BUDGET_MS,
    })
}

/// Adds the bench's user, homed on `POOL`, through the primaries of the CMS and the pool's
/// user database; its bearer token.
fn add_user(rt: &tokio::runtime::Runtime, d: &Deployment) -> anyhow::Result<String> {
    let users_db = d
        .topology
        .pool(POOL)
        .with_context(|| format!("the example has no pool {POOL}"))?
        .users_database();
    let (_, cms) = d.primary_address(DATABASE_CMS)?;
    let (_, users) = d.primary_address(&users_db)?;
    let client = d.client();
    rt.block_on(async {
        client
            .call::<serde_json::Value, _>(
                &cms,
                DATABASE_CMS,
                "cms.set_home",
                &json!({ "user": USER, "pool": POOL }),
            )
            .await?;
        let added = client
            .call::<tandem_pool::users::NewUser, _>(
                &users,
                &users_db,
                "users.add",
                &json!({ "name": USER, "pool": POOL, "password": null }),
            )
            .await?;
        Ok(tandem_node::user_token(USER, &added.result.token))
    })
}

/// The node of `pair` whose copy of `DATABASE` is primary (of the highest epoch), and its epoch.
fn primary_of(
    rt: &tokio::runtime::Runtime,
    d: &Deployment,
    pair: &[String],
) -> anyhow::Result<(String, u64)> {
    let client = d.client();
    let mut best: Option<(String, u64)> = None;
    for n in pair {
        let addr = &d.topology.node(n).expect("in the topology").address;
        let Ok(status) = rt.block_on(client.status(addr, Duration::from_secs(2))) else {
            continue;
        };
        for db in status.databases {
            if db.database == DATABASE
                && db.role.as_deref() == Some("primary")
                && best
                    .as_ref()
                    .is_none_or(|(_, e)| db.epoch.unwrap_or(0) > *e)
            {
                best = Some((n.clone(), db.epoch.unwrap_or(0)));
            }
        }
    }
    best.with_context(|| format!("no node of {} holds a primary {DATABASE}", pair.join(", ")))
}

/// Waits until every mirrored copy on the nodes of `pair` reports synchronized: the primary's
/// side `synchronized` (the witness knows), the mirror's `mirror: synchronized`.
fn wait_synchronized(
    rt: &tokio::runtime::Runtime,
    d: &Deployment,
    pair: &[String],
) -> anyhow::Result<()> {
    let client = d.client();
    let deadline = Instant::now() + Duration::from_millis(SYNCHRONIZED_WAIT_MS);
    loop {
        let mut pending = Vec::new();
        for n in pair {
            let addr = &d.topology.node(n).expect("in the topology").address;
            match rt.block_on(client.status(addr, Duration::from_secs(2))) {
                Ok(status) => {
                    let links: Vec<_> = status
                        .databases
                        .iter()
                        .filter_map(|db| db.mirroring.as_ref().map(|m| (&db.database, m)))
                        .collect();
                    if links.is_empty() {
                        pending.push(format!("{n}: no mirrored copy yet"));
                    }
                    for (db, m) in links {
                        if m.state != "synchronized" && m.state != "mirror: synchronized" {
                            pending.push(format!("{db} on {n}: {}", m.state));
                        }
                    }
                }
                Err(e) => pending.push(format!("{n}: {e}")),
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the mirrors did not synchronize within {} s: {}",
                SYNCHRONIZED_WAIT_MS / 1000,
                pending.join("; ")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What one posting connection saw in a round.
#[derive(Default)]
struct Tally {
    /// Acknowledged posts sent before the kill.
    before: u64,
    /// Posts sent after the kill that failed (refused, unanswered, or cut).
    failed_after: u64,
}

impl Tally {
    fn add(&mut self, o: Tally) {
        self.before += o.before;
        self.failed_after += o.failed_after;
    }
}

/// Posts into `ROOM` without pause until `stop`; each acknowledgment of a post sent after the
/// kill goes to `acked` with the time it came.
async fn post_loop(
    addr: String,
    token: String,
    k: usize,
    killed_at: Arc<OnceLock<Instant>>,
    stop: Arc<AtomicBool>,
    acked: tokio::sync::mpsc::UnboundedSender<Instant>,
) -> Tally {
    let mut tally = Tally::default();
    let mut conn: Option<RawPoster> = None;
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        let after_kill = killed_at.get().is_some_and(|k| sent >= *k);
        let poster = match conn.as_mut() {
            Some(p) => p,
            None => match RawPoster::connect(&addr, &token).await {
                Ok(p) => conn.insert(p),
                Err(_) => {
                    tally.failed_after += after_kill as u64;
                    tokio::time::sleep(Duration::from_millis(POST_ERROR_PAUSE_MS)).await;
                    continue;
                }
            },
        };
        i += 1;
        let text = format!("poster {k} post {i}");
        let answer = tokio::time::timeout(
            Duration::from_millis(POST_TIMEOUT_MS),
            poster.post(ROOM, &text),
        )
        .await;
        let pause = match answer {
            Ok(Ok(201)) => {
                if after_kill {
                    let _ = acked.send(Instant::now());
                } else {
                    tally.before += 1;
                }
                POST_PAUSE_MS
            }
            Ok(Ok(_)) => {
                tally.failed_after += after_kill as u64;
                POST_ERROR_PAUSE_MS
            }
            Ok(Err(_)) | Err(_) => {
                tally.failed_after += after_kill as u64;
                conn = None;
                POST_ERROR_PAUSE_MS
            }
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    tally
}

// ---- the report ----

fn human(r: &Report) -> String {
    let mut s = format!(
        "tandem bench mirror — {} concurrent writers, one row (~150 bytes) per commit, {} s per mode\n\n",
        r.writers, r.seconds_each
    );
    for p in &r.placements {
        s.push_str(&match p.placement {
            Placement::Split => format!(
                "split, as two servers: the primary on CPU {:?}, the mirror on CPU {:?}\n",
                p.primary_cpus, p.mirror_cpus
            ),
            Placement::Shared => format!(
                "shared: both copies on CPU {:?} (the mirror's work taken from the primary's)\n",
                p.primary_cpus
            ),
        });
        human_runs(&mut s, p);
    }
    for why in &r.skipped {
        s.push_str(&format!("not measured: {why}\n"));
    }
    if let Some(last) = r
        .placements
        .iter()
        .flat_map(|p| &p.runs)
        .filter_map(|x| x.replication.as_ref())
        .next_back()
    {
        s.push_str(&format!(
            "mirrors and primaries end at the same chain (last: LSN {}, chain {})\n",
            last.lsn, last.chain
        ));
    }
    if let Some(f) = &r.failover {
        s.push_str(
            "\nautomatic failover, kill -9 of the primary → first post acknowledged after it\n",
        );
        for (i, x) in f.rounds.iter().enumerate() {
            s.push_str(&format!(
                "  {}. kill {:<8} → {:<8} epoch {:<3} {:>6.0} ms   ({} posts failed meanwhile; rejoined as mirror in {:.1} s)\n",
                i + 1,
                x.killed,
                x.new_primary,
                x.epoch,
                x.kill_to_first_ack_ms,
                x.failed_after_kill,
                x.rejoin_ms / 1000.0
            ));
        }
        s.push_str(&format!(
            "  max {:.0} ms   (target < {:.0} ms)\n",
            f.max_ms, f.budget_ms
        ));
    }
    s
}

/// One placement's three runs and its ratios.
fn human_runs(s: &mut String, p: &Placed) {
    for run in &p.runs {
        s.push_str(&format!(
            "{:<14}{:>12} commits/s   p50 {:.2} ms  p99 {:.2} ms  {:.0} per SQLite commit\n",
            run.mode.label(),
            count(run.per_second),
            run.latency.p50_ms,
            run.latency.p99_ms,
            run.group_commit_avg
        ));
        if let Some(m) = &run.replication {
            s.push_str(&format!(
                "{:<14}{:>12} batches of {:.0} records; lag max {} records, at the end {} (caught up in {:.0} ms); \
                 loop time: pull {:.0} ms, codec {:.0} ms, apply {:.0} ms, wait {:.0} ms\n",
                "",
                count(m.batches as f64),
                m.records_per_batch,
                count(m.lag_max_records as f64),
                count(m.lag_at_end_records as f64),
                m.catch_up_ms,
                m.pull_ms,
                m.codec_ms,
                m.apply_ms,
                m.wait_ms
            ));
        }
    }
    s.push_str(&format!(
        "sync / no mirror  {:>5.0} %   {}\nasync / no mirror {:>5.0} %\n\n",
        p.sync_to_no_mirror * 100.0,
        match p.placement {
            Placement::Split => format!("(target ≥ {:.0} %)", SYNC_TO_NONE_MIN * 100.0),
            Placement::Shared => "(the target is for two servers: split)".to_string(),
        },
        p.async_to_no_mirror * 100.0
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every commit a writer saw acknowledged is on the mirror at the end, in both modes (the
    /// bench itself refuses a chain that differs): one LSN per commit, and one for the schema.
    #[test]
    fn every_acknowledged_commit_reaches_the_mirror() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        for mode in [Mode::Async, Mode::Sync] {
            let rows = Arc::new(Rows::make(1_000));
            let all = allowed_cpus().unwrap();
            let run = commits(
                &rt,
                &dir.path().join(format!("{mode:?}")),
                &rows,
                mode,
                8,
                1,
                &Cpus::of(Placement::Shared, &all).unwrap(),
            )
            .unwrap();
            assert!(run.commits > 0, "{mode:?}: no commit");
            let r = run.replication.expect("a mirrored run");
            assert_eq!(r.lsn, run.commits + 1, "{mode:?}");
            assert_eq!(r.records, run.commits + 1, "{mode:?}");
            if mode == Mode::Sync {
                assert_eq!(
                    r.lag_at_end_records, 0,
                    "an acknowledged commit was not on the mirror"
                );
            }
        }
    }
}
