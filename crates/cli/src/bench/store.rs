//! `tandem bench store`: in one run, on the same rows,
//! (a) raw rusqlite batched inserts — the machine's limit with the same durability (WAL,
//!     synchronous=FULL) and the store's group size, only the inserts and commits timed;
//! (b) store commits/s with 1, 16 and 256 concurrent writers (`--writers` sets the last), one
//!     row per commit, the rows made before the clock starts as the baseline's are (`Rows`),
//!     and where a commit's time went (the store's `stages`, and the share of the commits over
//!     2 ms);
//! (c) log backup and full backup MB/s; (d) restore apply records/s.
//! With `--dir DIR` the database stays in `DIR/db` and its backups in `DIR/backups`: one full
//! backup, three log backups taken while the 16 writers wrote (`Midway`: however short the
//! run), and a last one after the writes ended.

use super::Latency;
use crate::output::{Output, count};
use anyhow::{Context, bail, ensure};
use clap::Args;
use rusqlite::params_from_iter;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tandem_store::{
    BackupFile, Database, Migration, Options, RestoreOptions, StoreError, Tx, Value,
};

#[derive(Args)]
pub struct StoreArgs {
    /// Keep the database in DIR/db and its backups in DIR/backups (DIR must not hold them yet).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Rows of the raw baseline and of the last run (the 16-writer run writes a tenth).
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1_000..=50_000_000))]
    rows: u64,
    /// Concurrent writers of the last run, one row per commit: how the store's throughput grows
    /// with the load (the target is set at 256).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=4096))]
    writers: u64,
}

pub(super) static SCHEMA: &[Migration] = &[Migration {
    version: 1,
    name: "bench rows",
    sql: "CREATE TABLE rows (id INTEGER PRIMARY KEY, room INTEGER NOT NULL, sender TEXT NOT NULL, \
          time_ms INTEGER NOT NULL, body TEXT NOT NULL)",
}];

const INSERT: &str =
    "INSERT INTO rows (id, room, sender, time_ms, body) VALUES (?1, ?2, ?3, ?4, ?5)";
/// Rows per transaction of the raw baseline: the store's largest group commit.
const RAW_BATCH_ROWS: usize = 1024;
/// How often the log backup thread looks whether its next backup is due.
const MIDWAY_POLL_US: u64 = 100;

/// Words of the rows' bodies: common English first, some of the trade's own.
const WORDS: &[&str] = &[
    "the", "to", "and", "a", "I", "you", "it", "is", "of", "that", "in", "we", "for", "on", "this",
    "be", "have", "not", "with", "do", "are", "can", "just", "but", "so", "if", "at", "was", "my",
    "me", "will", "what", "there", "all", "it's", "get", "know", "think", "about", "up", "out",
    "now", "one", "like", "your", "from", "no", "yes", "ok", "thanks", "good", "they", "time",
    "see", "still", "need", "should", "then", "when", "how", "go", "would", "back", "today",
    "tomorrow", "meeting", "check", "look", "build", "test", "release", "fixed", "broken",
    "deploy", "server", "site", "pool", "backup", "restore", "mirror", "failover", "witness",
    "epoch", "journal", "log", "disk", "node", "room", "message", "again", "after", "before",
    "because", "could", "did", "done", "down", "first", "going", "here", "right", "some", "sure",
    "than", "them", "these", "those", "way", "which", "who", "why", "work", "working", "issue",
    "ticket", "review", "merge", "branch", "commit", "customer", "call", "later", "soon", "please",
    "morning", "lunch", "week", "friday",
];

/// 1024 word indices, log-uniform over the ranks (Zipf's law with exponent 1): a row's word
/// is one of them, drawn uniformly.
fn zipf_ranks() -> &'static [usize; 1024] {
    static RANKS: std::sync::OnceLock<[usize; 1024]> = std::sync::OnceLock::new();
    RANKS.get_or_init(|| {
        let n = WORDS.len() as f64 + 1.0;
        std::array::from_fn(|j| (n.powf(j as f64 / 1024.0) as usize).clamp(1, WORDS.len()) - 1)
    })
}

/// Row `i`: the same for the baseline and the store (and the mirror bench). About 150
/// bytes; the body is words drawn as in running text (a few frequent, many rare: rank r with
/// weight about 1/r), so it compresses about as much as chat does — neither random bytes nor
/// one word repeated.
pub(super) fn row(i: u64) -> Vec<Value> {
    let mut body = format!("message {i}:");
    let mut h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    while body.len() < 100 {
        // splitmix64: a fixed sequence per row.
        h = h.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = h;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        body.push(' ');
        body.push_str(WORDS[zipf_ranks()[(z >> 54) as usize]]);
    }
    vec![
        Value::Integer(i as i64),
        Value::Integer((i % 64) as i64),
        Value::Text(format!("user{}", i % 1000)),
        Value::Integer(1_700_000_000_000 + i as i64),
        Value::Text(body),
    ]
}

/// Rows made before a clock starts, as the raw baseline's are (making a row — its `format!`s
/// and words — costs about what committing it does, on the same two cores): row `i` for `i`
/// below `ROWS_MADE_MAX`; beyond, the row of `i % ROWS_MADE_MAX` with `i` as its id.
pub(super) struct Rows(Vec<Vec<Value>>);

/// About 80 MB of rows.
const ROWS_MADE_MAX: u64 = 1 << 18;

impl Rows {
    /// Rows for ids up to `ids` (at most `ROWS_MADE_MAX` made).
    pub(super) fn make(ids: u64) -> Rows {
        Rows((0..ids.clamp(1, ROWS_MADE_MAX)).map(row).collect())
    }

    /// Row `id` for a transaction: the row made for it, which the transaction borrows (as the
    /// raw baseline binds its rows without copying them), or beyond those a copy of one with
    /// `id` as its id, made here, by the caller.
    pub(super) fn get(self: &Arc<Rows>, id: u64) -> Row {
        let at = (id % self.0.len() as u64) as usize;
        if id < self.0.len() as u64 {
            return Row::Made(self.clone(), at);
        }
        let mut values = self.0[at].clone();
        values[0] = Value::Integer(id as i64);
        Row::Copied(values)
    }
}

/// A row handed to a transaction (`Rows::get`).
pub(super) enum Row {
    Made(Arc<Rows>, usize),
    Copied(Vec<Value>),
}

impl Row {
    pub(super) fn values(&self) -> &[Value] {
        match self {
            Row::Made(rows, at) => &rows.0[*at],
            Row::Copied(values) => values,
        }
    }
}

#[derive(Serialize)]
struct Rate {
    rows: u64,
    seconds: f64,
    per_second: f64,
}

#[derive(Serialize)]
struct Phase {
    writers: usize,
    commits: u64,
    seconds: f64,
    per_second: f64,
    latency: Latency,
    /// Average transactions per SQLite commit (one fsync each).
    group_commit_avg: f64,
    /// Mean of a commit's round trip, as the writers saw it.
    mean_us: f64,
    /// Where it went, by the store's count (`WriterStats::stages`); the rest of the mean is
    /// the caller's own wake-up after its answer.
    stages: tandem_store::StageMeans,
    /// Commits that took over 2 ms: their share of the commits and of all commit time.
    over_2ms_commits: f64,
    over_2ms_time: f64,
}

#[derive(Serialize)]
struct Throughput {
    files: usize,
    bytes: u64,
    seconds: f64,
    mb_per_second: f64,
}

#[derive(Serialize)]
struct Restore {
    records: u64,
    apply_seconds: f64,
    records_per_second: f64,
    total_seconds: f64,
}

#[derive(Serialize)]
struct Report {
    rows: u64,
    raw_batched_inserts: Rate,
    store: Vec<Phase>,
    /// The last run's commits/s over the raw baseline's rows/s.
    store_to_raw: f64,
    /// The same, when the last run had 256 writers (the target's load).
    #[serde(skip_serializing_if = "Option::is_none")]
    store_256_to_raw: Option<f64>,
    log_backup: Throughput,
    log_backups_during_writes: usize,
    full_backup: Throughput,
    restore: Restore,
    lsn: u64,
    chain: String,
    dir: Option<PathBuf>,
}

fn raw(dir: &Path, rows: u64) -> anyhow::Result<Rate> {
    let conn = rusqlite::Connection::open(dir.join("raw.db"))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(SCHEMA[0].sql)?;
    // Only the inserts and commits are timed: each batch's rows are made before its clock starts.
    let mut timed = Duration::ZERO;
    let mut next = 1u64;
    while next <= rows {
        let batch: Vec<Vec<Value>> = (next..(next + RAW_BATCH_ROWS as u64).min(rows + 1))
            .map(row)
            .collect();
        let started = Instant::now();
        let tx = conn.unchecked_transaction()?;
        {
            let mut stmt = tx.prepare_cached(INSERT)?;
            for values in batch {
                stmt.execute(params_from_iter(values))?;
            }
        }
        tx.commit()?;
        timed += started.elapsed();
        next += RAW_BATCH_ROWS as u64;
    }
    let seconds = timed.as_secs_f64();
    Ok(Rate {
        rows,
        seconds,
        per_second: rows as f64 / seconds,
    })
}

/// `writers` concurrent tasks (as the node's request handlers are) commit one row each until
/// `commits` rows are written.
fn phase(
    rt: &tokio::runtime::Runtime,
    db: &Database,
    rows: &Arc<Rows>,
    writers: usize,
    commits: u64,
    next_id: &Arc<AtomicU64>,
    midway: Option<&Arc<Midway>>,
) -> anyhow::Result<Phase> {
    let end = next_id.load(Ordering::SeqCst) + commits;
    let before = db.writer_stats();
    let started = Instant::now();
    let samples = rt.block_on(async {
        let tasks: Vec<_> = (0..writers)
            .map(|_| {
                let (db, next_id, rows) = (db.clone(), next_id.clone(), rows.clone());
                let midway = midway.cloned();
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    loop {
                        let id = next_id.fetch_add(1, Ordering::SeqCst);
                        if id >= end {
                            return Ok::<_, StoreError>(lat);
                        }
                        if let Some(m) = &midway {
                            m.wait_at(id).await?;
                        }
                        // The transaction (re-runnable) writes the row from a borrow.
                        let row = rows.get(id);
                        let t0 = Instant::now();
                        db.write_async(move |tx: &mut Tx<'_>| tx.insert("rows", row.values()))
                            .await?;
                        lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    }
                })
            })
            .collect();
        let mut samples = Vec::with_capacity(commits as usize);
        for t in tasks {
            samples.extend(t.await.expect("writer task")?);
        }
        Ok::<_, StoreError>(samples)
    })?;
    let seconds = started.elapsed().as_secs_f64();
    next_id.store(end, Ordering::SeqCst);
    let after = db.writer_stats();
    let total_us: f64 = samples.iter().map(|&us| us as f64).sum();
    let (over_n, over_us) = samples
        .iter()
        .filter(|&&us| us > 2_000)
        .fold((0u64, 0f64), |(n, t), &us| (n + 1, t + us as f64));
    let n = samples.len().max(1) as f64;
    Ok(Phase {
        writers,
        commits,
        seconds,
        per_second: commits as f64 / seconds,
        mean_us: total_us / n,
        stages: after.stages.since(&before.stages).means(),
        over_2ms_commits: over_n as f64 / n,
        over_2ms_time: over_us / total_us.max(1.0),
        latency: Latency::of(samples),
        group_commit_avg: (after.records - before.records) as f64
            / (after.sqlite_commits - before.sqlite_commits).max(1) as f64,
    })
}

/// Log backups taken while writers write, however short their phase: one when a quarter, a
/// half and three quarters of the phase's ids are drawn. The writer that draws such an id
/// waits for that backup before it commits (its latency is timed after the wait), so the phase
/// cannot end before the three are taken, while the other writers go on committing.
struct Midway {
    at: [u64; 3],
    /// How many of the three are taken; None once the thread failed.
    taken: tokio::sync::watch::Sender<Option<usize>>,
    /// Set when the phase ended, also on an error: the thread stops waiting for ids.
    ended: AtomicBool,
}

impl Midway {
    fn new(first_id: u64, commits: u64) -> Arc<Midway> {
        let at = [1, 2, 3].map(|q| first_id + commits * q / 4);
        Arc::new(Midway {
            at,
            taken: tokio::sync::watch::channel(Some(0)).0,
            ended: AtomicBool::new(false),
        })
    }

    /// Waits, if `id` is one of the three, for its backup.
    async fn wait_at(&self, id: u64) -> Result<(), StoreError> {
        let Some(k) = self.at.iter().position(|&a| a == id) else {
            return Ok(());
        };
        let mut taken = self.taken.subscribe();
        match taken.wait_for(|n| n.is_none_or(|n| n > k)).await.as_deref() {
            Ok(Some(_)) => Ok(()),
            _ => Err(StoreError::Closed(
                "the log backups during the writes stopped".into(),
            )),
        }
    }

    /// The thread taking the three backups: each once its id is drawn (its writer waits) and
    /// a record past the previous backup is durable (so none is empty: the writer released by
    /// the previous one commits after it). Returns the files.
    fn take(
        self: Arc<Midway>,
        db: Database,
        dir: PathBuf,
        next_id: Arc<AtomicU64>,
    ) -> std::thread::JoinHandle<anyhow::Result<Vec<BackupFile>>> {
        // Read here, before the phase starts: read in the thread, which a busy machine may
        // start only once every writer but the three waiting ones has committed, it would
        // already hold the last record, and the first backup would wait for good for another.
        let mut covered = db.durable_lsn();
        std::thread::spawn(move || {
            let mut files = Vec::new();
            for (k, &at) in self.at.iter().enumerate() {
                while next_id.load(Ordering::SeqCst) <= at || db.durable_lsn() <= covered {
                    if self.ended.load(Ordering::SeqCst) {
                        // The phase failed before this id: its error is the one to report.
                        return Ok(files);
                    }
                    std::thread::sleep(Duration::from_micros(MIDWAY_POLL_US));
                }
                let made = match tandem_store::log_backup(&db, &dir) {
                    Ok(made) => made,
                    Err(e) => {
                        self.taken.send_replace(None);
                        return Err(e.into());
                    }
                };
                for f in &made {
                    if let BackupFile::Log { header, .. } = f {
                        covered = covered.max(header.last_lsn);
                    }
                }
                files.extend(made);
                self.taken.send_replace(Some(k + 1));
            }
            Ok(files)
        })
    }
}

fn size_of(files: &[BackupFile]) -> anyhow::Result<u64> {
    let mut total = 0;
    for f in files {
        total += std::fs::metadata(f.path())?.len();
    }
    Ok(total)
}

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / d.as_secs_f64().max(1e-9)
}

pub fn run(a: StoreArgs, out: &Output) -> anyhow::Result<()> {
    let scratch = tempfile::Builder::new().prefix("tandem-bench-").tempdir()?;
    let root = match &a.dir {
        Some(d) => {
            for sub in ["db", "backups"] {
                if d.join(sub).exists() {
                    bail!(
                        "{} exists: give --dir a directory without db/ and backups/",
                        d.join(sub).display()
                    );
                }
            }
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            d.clone()
        }
        None => scratch.path().to_path_buf(),
    };
    let (db_dir, backups) = (root.join("db"), root.join("backups"));

    out.progress(&format!(
        "raw SQLite: {} rows in batches of {RAW_BATCH_ROWS}…",
        a.rows
    ));
    let raw = raw(scratch.path(), a.rows)?;

    let single = (a.rows / 100).clamp(200, 2_000);
    let rows = Arc::new(Rows::make(single + a.rows / 10 + a.rows + 1));
    let db = Database::create(&db_dir, "bench", Options::default())?;
    db.migrate(SCHEMA)?;
    let next_id = Arc::new(AtomicU64::new(1));
    // The writers' tasks stand for a node's request handlers: they run as those do.
    let rt = tandem_node::runtime()?;
    let mut phases = Vec::new();
    out.progress(&format!("store: 1 writer, {single} commits…"));
    phases.push(phase(&rt, &db, &rows, 1, single, &next_id, None)?);

    tandem_store::full_backup(&db, &backups)?;
    // Three log backups while the 16 writers write; the 256 writers' records then go into one
    // last log backup taken after the writes ended, which is the one timed.
    let midway = Midway::new(next_id.load(Ordering::SeqCst), a.rows / 10);
    let logger = midway
        .clone()
        .take(db.clone(), backups.clone(), next_id.clone());
    out.progress(&format!(
        "store: 16 writers, {} commits, three log backups meanwhile…",
        a.rows / 10
    ));
    let sixteen = phase(&rt, &db, &rows, 16, a.rows / 10, &next_id, Some(&midway));
    midway.ended.store(true, Ordering::SeqCst);
    // The thread's own error first: the writers waiting for it only know that it stopped.
    let during = logger.join().expect("log backup thread")?.len();
    phases.push(sixteen?);
    let writers = a.writers as usize;
    out.progress(&format!("store: {writers} writers, {} commits…", a.rows));
    phases.push(phase(&rt, &db, &rows, writers, a.rows, &next_id, None)?);
    out.progress(&format!("log backup of the {writers} writers' records…"));
    let t0 = Instant::now();
    let last = tandem_store::log_backup(&db, &backups)?;
    let log_time = t0.elapsed();
    ensure!(!last.is_empty(), "the last log backup wrote no file");
    let log_bytes = size_of(&last)?;
    let log_files = last.len();
    if during < 3 {
        out.progress(&format!(
            "note: only {during} log backups were taken during the writes"
        ));
    }

    out.progress("full backup…");
    let t0 = Instant::now();
    let full = tandem_store::full_backup(&db, &scratch.path().join("full"))?;
    let full_time = t0.elapsed();
    let full_bytes = size_of(std::slice::from_ref(&full))?;

    let id = db.identity();
    drop(db);
    out.progress("restore from the full backup and the log backups…");
    let t0 = Instant::now();
    let restored = tandem_store::restore_new(
        &scratch.path().join("restored"),
        std::slice::from_ref(&backups),
        &RestoreOptions::default(),
        false,
    )?;
    let restore_time = t0.elapsed();
    ensure!(
        restored.lsn == id.lsn && restored.chain == id.chain,
        "the restored copy is at LSN {} chain {}, the source at LSN {} chain {}",
        restored.lsn,
        restored.chain,
        id.lsn,
        id.chain
    );

    let store_to_raw = phases[2].per_second / raw.per_second;
    let report = Report {
        rows: a.rows,
        store_to_raw,
        store_256_to_raw: (writers == 256).then_some(store_to_raw),
        raw_batched_inserts: raw,
        store: phases,
        log_backup: Throughput {
            files: log_files,
            bytes: log_bytes,
            seconds: log_time.as_secs_f64(),
            mb_per_second: mb_per_s(log_bytes, log_time),
        },
        log_backups_during_writes: during,
        full_backup: Throughput {
            files: 1,
            bytes: full_bytes,
            seconds: full_time.as_secs_f64(),
            mb_per_second: mb_per_s(full_bytes, full_time),
        },
        restore: Restore {
            records: restored.records_applied,
            apply_seconds: restored.apply_ms as f64 / 1000.0,
            records_per_second: restored.records_applied as f64
                / (restored.apply_ms.max(1) as f64 / 1000.0),
            total_seconds: restore_time.as_secs_f64(),
        },
        lsn: id.lsn,
        chain: id.chain.to_hex(),
        dir: a.dir.clone(),
    };
    out.emit(&report, || human(&report))
}

fn human(r: &Report) -> String {
    let mut s = format!(
        "tandem bench store — {} rows of ~150 bytes, WAL fsynced before each answer, one row per commit\n\n",
        count(r.rows as f64)
    );
    s.push_str(&format!(
        "{:<34}{:>14} rows/s\n",
        format!("raw SQLite, batches of {RAW_BATCH_ROWS}"),
        count(r.raw_batched_inserts.per_second)
    ));
    for p in &r.store {
        s.push_str(&format!(
            "{:<34}{:>14} commits/s   p50 {:.2} ms  p99 {:.2} ms  {:.0} per SQLite commit\n",
            format!(
                "store, {} writer{}",
                p.writers,
                if p.writers == 1 { "" } else { "s" }
            ),
            count(p.per_second),
            p.latency.p50_ms,
            p.latency.p99_ms,
            p.group_commit_avg
        ));
    }
    let p = &r.store[2];
    let st = &p.stages;
    let rest = p.mean_us - st.total_us();
    s.push_str(&format!(
        "  a commit of the {} writers, {:.0} µs on average: waiting for its group {:.0}, its group \
         {:.0}, waiting for a syncer {:.0}, the fsync {:.0}, the answers {:.0}, the caller's \
         wake-up {:.0}\n  commits over 2 ms: {:.1} % of them, {:.0} % of all commit time\n",
        p.writers,
        p.mean_us,
        st.queued_us,
        st.group_us,
        st.to_syncer_us,
        st.fsync_us,
        st.answer_us,
        rest.max(0.0),
        p.over_2ms_commits * 100.0,
        p.over_2ms_time * 100.0
    ));
    s.push_str(&format!(
        "{:<34}{:>14.0} %           (target ≥ 50 % with 256 writers)\n",
        format!("store {} writers / raw", p.writers),
        r.store_to_raw * 100.0
    ));
    s.push_str(&format!(
        "{:<34}{:>14.0} MB/s        ({} in one file; {} log backups during writes; target ≥ 200)\n",
        "log backup",
        r.log_backup.mb_per_second,
        crate::output::bytes(r.log_backup.bytes),
        r.log_backups_during_writes
    ));
    s.push_str(&format!(
        "{:<34}{:>14.0} MB/s        (target ≥ 200)\n",
        "full backup", r.full_backup.mb_per_second
    ));
    s.push_str(&format!(
        "{:<34}{:>14} records/s   (target ≥ 200,000; whole restore {:.2} s)\n",
        "restore apply",
        count(r.restore.records_per_second),
        r.restore.total_seconds
    ));
    s.push_str(&format!(
        "\nsource and restored copy: LSN {}, chain {}\n",
        r.lsn, r.chain
    ));
    if let Some(d) = &r.dir {
        s.push_str(&format!(
            "kept: {0}/db and {0}/backups — try `tandem db verify {0}/backups`\n",
            d.display()
        ));
    }
    s
}
