//! SIGKILL under load. A child process (this test binary, running `crash_child`) writes from
//! several threads and reports every acknowledged commit on stdout; the parent kills it with
//! SIGKILL at a random moment, again and again, in the same database directory. After each kill
//! the database must open and pass SQLite's integrity check, hold every acknowledged message
//! with its text at the LSN it was acknowledged at, keep a journal contiguous from LSN 1 whose
//! recomputed chain is the copy's chain, and never rewrite what a previous reopen saw.
//!
//! The kill delays come from a PRNG whose seed is printed; rerun with `TANDEM_CRASH_SEED=<seed>`
//! to replay the same schedule (the kills still land wherever the scheduler puts the child).

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};
use tandem_store::{
    Chain, Committed, Database, Identity, Lsn, Op, Options, Record, StoreError, Tx, Value,
};

/// Set in the child's environment: the database directory it writes to.
const CHILD_DIR_ENV: &str = "TANDEM_CRASH_CHILD_DIR";
/// Set in the child's environment: the round number, which makes every message text unique.
const CHILD_RUN_ENV: &str = "TANDEM_CRASH_CHILD_RUN";
/// Replays a kill schedule.
const SEED_ENV: &str = "TANDEM_CRASH_SEED";

const KILLS: u64 = 24;
const WRITER_THREADS: u64 = 8;
const KILL_DELAY_MS_MIN: u64 = 20;
const KILL_DELAY_MS_MAX: u64 = 300;
/// Kills timed from the child's start: early, so that some land while it starts and opens.
const START_KILL_DELAY_MS_MAX: u64 = 60;
/// A child that nobody kills stops by itself after this long (so no orphan writes forever).
const CHILD_LIFETIME_MS: u64 = 20_000;
/// Bound on the child's start: exec, test harness, opening the database.
const CHILD_READY_TIMEOUT_MS: u64 = 20_000;
/// Bound on the child's death after SIGKILL and on reading the rest of its output.
const CHILD_EXIT_TIMEOUT_MS: u64 = 10_000;
/// Every this many transactions a writer thread rolls one back on purpose.
const ABORT_EVERY: u64 = 7;
const EXTRA_BYTES_MAX: u64 = 3_000;
const JOURNAL_PAGE_RECORDS: usize = 500;
const STDERR_TAIL_BYTES: usize = 8 * 1024;
/// Below this many acknowledged writes over all rounds the test has not tested anything.
const ACKS_MIN: usize = 200;

/// xorshift64: enough randomness for kill delays, and reproducible from its seed.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        XorShift(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform enough in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// One commit the child acknowledged: `write` returned Ok before the line was printed.
#[derive(Clone, Debug)]
struct Ack {
    lsn: Lsn,
    id: i64,
    text: String,
}

enum Event {
    /// The child opened the database, at this LSN.
    Ready(Lsn),
    Ack(Ack),
}

fn parse_line(line: &str) -> Option<Event> {
    let mut words = line.split_whitespace();
    match words.next()? {
        "ready" => Some(Event::Ready(words.next()?.parse().ok()?)),
        "ack" => {
            let lsn = words.next()?.parse().ok()?;
            let id = words.next()?.parse().ok()?;
            let text = words.next()?.to_string();
            Some(Event::Ack(Ack { lsn, id, text }))
        }
        _ => None,
    }
}

/// Inserts one message with the next id (chosen inside the transaction); with `abort`, rolls the
/// transaction back after the insert. The closure may run more than once (the writer re-runs a
/// group when one of its transactions fails after changing rows): it decides from the database
/// and its captures only.
fn post_message(
    db: &Database,
    room: i64,
    text: String,
    extra: Vec<u8>,
    abort: bool,
) -> Result<Committed<i64>, StoreError> {
    db.write(move |tx: &mut Tx<'_>| {
        let id = tx
            .query_row("SELECT COALESCE(MAX(id), 0) + 1 FROM messages", [], |r| {
                r.get::<_, i64>(0)
            })?
            .expect("an aggregate returns one row");
        let time_ms = tx.time_ms();
        tx.insert(
            "messages",
            vec![
                Value::Integer(id),
                Value::Integer(room),
                Value::Text("crash".into()),
                Value::Integer(time_ms),
                Value::Text(text.clone()),
                Value::Blob(extra.clone()),
            ],
        )?;
        if abort {
            return Err(StoreError::Invalid("rolled back on purpose".into()));
        }
        Ok(id)
    })
}

/// The child's side: a no-op unless the parent started this binary to be killed.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let run: u64 = std::env::var(CHILD_RUN_ENV)
        .expect("the parent sets the run number")
        .parse()
        .expect("a run number");
    let db =
        Arc::new(Database::open(Path::new(&dir), Options::default()).expect("the database opens"));
    {
        let mut out = std::io::stdout().lock();
        // The harness has printed "test crash_child ... " without a newline: end its line.
        writeln!(out, "\nready {}", db.identity().lsn).expect("stdout");
        out.flush().expect("stdout");
    }
    let deadline = Instant::now() + Duration::from_millis(CHILD_LIFETIME_MS);
    let writers: Vec<_> = (0..WRITER_THREADS)
        .map(|w| {
            let db = db.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let extra = vec![w as u8; ((n * 37 + w * 101) % EXTRA_BYTES_MAX) as usize];
                    if n % ABORT_EVERY == ABORT_EVERY - 1 {
                        let text = format!("x{run}-w{w}-{n}");
                        let r = post_message(&db, w as i64, text, extra, true);
                        assert!(
                            matches!(r, Err(StoreError::Invalid(_))),
                            "a rolled-back write: {r:?}"
                        );
                    } else {
                        let text = format!("r{run}-w{w}-{n}");
                        let c = post_message(&db, w as i64, text.clone(), extra, false)
                            .expect("a write on a healthy primary");
                        // Only now is the write acknowledged.
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "ack {} {} {text}", c.lsn, c.value).expect("stdout");
                        out.flush().expect("stdout");
                    }
                    n += 1;
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("a writer thread");
    }
}

/// Kills and reaps the child whatever happens to the parent's assertions.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tail(bytes: &[u8]) -> String {
    let from = bytes.len().saturating_sub(STDERR_TAIL_BYTES);
    String::from_utf8_lossy(&bytes[from..]).into_owned()
}

/// What one child did before it was killed.
struct Round {
    opened_at: Option<Lsn>,
    acks: Vec<Ack>,
}

/// Starts a child on `dir`, kills it with SIGKILL `delay` after its start (or after it opened
/// the database, with `after_ready`), and returns what it acknowledged.
fn run_and_kill(dir: &Path, run: u64, delay: Duration, after_ready: bool) -> Round {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "crash_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_RUN_ENV, run.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the child");
    let started = Instant::now();
    let stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let mut guard = ChildGuard(child);

    let (events_tx, events) = mpsc::channel::<Event>();
    std::thread::spawn(move || {
        let mut input = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            match input.read_line(&mut line) {
                // A line cut by the kill was never fully reported: it does not count.
                Ok(0) | Err(_) => break,
                Ok(_) if !line.ends_with('\n') => break,
                Ok(_) => {
                    if let Some(e) = parse_line(&line)
                        && events_tx.send(e).is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    let (stderr_tx, stderr_rx) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = stderr.read_to_end(&mut all);
        let _ = stderr_tx.send(all);
    });

    let mut round = Round {
        opened_at: None,
        acks: Vec::new(),
    };
    let mut kill_at = if after_ready {
        started + Duration::from_millis(CHILD_READY_TIMEOUT_MS)
    } else {
        started + delay
    };
    let mut exited_early = false;
    loop {
        let now = Instant::now();
        if now >= kill_at {
            break;
        }
        match events.recv_timeout(kill_at - now) {
            Ok(Event::Ready(lsn)) => {
                round.opened_at = Some(lsn);
                if after_ready {
                    kill_at = Instant::now() + delay;
                }
            }
            Ok(Event::Ack(a)) => round.acks.push(a),
            Err(RecvTimeoutError::Timeout) => break,
            Err(RecvTimeoutError::Disconnected) => {
                exited_early = true;
                break;
            }
        }
    }
    let never_ready = after_ready && round.opened_at.is_none() && !exited_early;
    let _ = guard.0.kill();
    let exit_deadline = Instant::now() + Duration::from_millis(CHILD_EXIT_TIMEOUT_MS);
    let status = loop {
        if let Some(status) = guard.0.try_wait().expect("wait for the child") {
            break status;
        }
        assert!(
            Instant::now() < exit_deadline,
            "run {run}: the child outlived SIGKILL by {CHILD_EXIT_TIMEOUT_MS} ms"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    // The rest of what it printed before it died.
    loop {
        let left = exit_deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(Event::Ready(lsn)) => round.opened_at = Some(lsn),
            Ok(Event::Ack(a)) => round.acks.push(a),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                panic!("run {run}: the child's stdout stayed open after its death")
            }
        }
    }
    let left = exit_deadline.saturating_duration_since(Instant::now());
    let err = stderr_rx.recv_timeout(left).unwrap_or_default();
    assert!(
        !never_ready,
        "run {run}: the child did not open the database within {CHILD_READY_TIMEOUT_MS} ms; its \
         stderr:\n{}",
        tail(&err)
    );
    assert_eq!(
        status.signal(),
        Some(9),
        "run {run}: the child ended by itself ({status}) before it was killed; its stderr:\n{}",
        tail(&err)
    );
    round
}

/// Everything that must hold in the database after a kill. Returns the copy's identity.
fn check_after_kill(
    dir: &Path,
    acked: &HashMap<i64, Ack>,
    before: &(Lsn, Chain),
    run: u64,
) -> Identity {
    let db = Database::open(dir, Options::default())
        .unwrap_or_else(|e| panic!("run {run}: the database does not open after SIGKILL: {e}"));
    db.integrity_check()
        .unwrap_or_else(|e| panic!("run {run}: {e}"));
    let id = db.identity();
    assert!(
        id.lsn >= before.0,
        "run {run}: LSN went back from {} to {}",
        before.0,
        id.lsn
    );
    assert_eq!(
        db.journal_stats().oldest_lsn,
        Some(1),
        "run {run}: nothing prunes the journal in this test"
    );

    // The journal: LSNs contiguous from 1 to the copy's LSN, the chain recomputed from genesis.
    let mut chain = Chain::genesis(&id.database_id);
    let mut inserted_at: HashMap<i64, Lsn> = HashMap::new();
    let mut next: Lsn = 1;
    while next <= id.lsn {
        let batch = db
            .read_journal(next, JOURNAL_PAGE_RECORDS, 1 << 20)
            .unwrap_or_else(|e| panic!("run {run}: read the journal at LSN {next}: {e}"));
        assert!(
            !batch.records.is_empty(),
            "run {run}: the journal ends at LSN {} but the copy is at LSN {}",
            next - 1,
            id.lsn
        );
        assert_eq!(
            batch.chain_before, chain,
            "run {run}: chain before LSN {next}"
        );
        for bytes in &batch.records {
            let record = Record::decode(bytes)
                .unwrap_or_else(|e| panic!("run {run}: record LSN {next}: {e}"));
            assert_eq!(record.lsn, next, "run {run}: journal LSNs are contiguous");
            for op in &record.ops {
                if let Op::Insert { table, row } = op
                    && table == "messages"
                    && let Some(Value::Integer(message)) = row.first()
                {
                    assert!(
                        inserted_at.insert(*message, record.lsn).is_none(),
                        "run {run}: message {message} inserted twice"
                    );
                }
            }
            chain = chain.next(bytes);
            if next == before.0 {
                assert_eq!(
                    chain, before.1,
                    "run {run}: the chain at LSN {next} changed since the previous reopen"
                );
            }
            next += 1;
        }
    }
    assert_eq!(chain, id.chain, "run {run}: recomputed chain");
    assert!(
        db.read_journal(id.lsn + 1, 10, 1 << 20)
            .unwrap()
            .records
            .is_empty(),
        "run {run}: the journal holds records past the copy's LSN {}",
        id.lsn
    );

    // The rows: every acknowledged message, with its text, at its LSN; nothing rolled back.
    let rows: HashMap<i64, String> = db
        .read(|c| {
            let mut stmt = c.prepare("SELECT id, body FROM messages")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<HashMap<i64, String>>>()?)
        })
        .unwrap();
    for (message, ack) in acked {
        assert_eq!(
            rows.get(message),
            Some(&ack.text),
            "run {run}: acknowledged message {message} ({}, LSN {})",
            ack.text,
            ack.lsn
        );
        assert_eq!(
            inserted_at.get(message),
            Some(&ack.lsn),
            "run {run}: acknowledged message {message} was inserted at another LSN"
        );
    }
    assert_eq!(
        rows.len() as u64,
        id.lsn - 1,
        "run {run}: one message per record after the migrations"
    );
    assert_eq!(rows.len(), inserted_at.len(), "run {run}: rows and journal");
    let mut texts = HashSet::new();
    for (message, text) in &rows {
        assert!(
            text.starts_with('r'),
            "run {run}: message {message} ({text}) was rolled back yet is there"
        );
        assert!(texts.insert(text), "run {run}: {text} committed twice");
        assert!(
            inserted_at.contains_key(message),
            "run {run}: row {message}"
        );
    }
    id
}

#[test]
fn sigkill_under_load_loses_no_acknowledged_write() {
    let seed = match std::env::var(SEED_ENV) {
        Ok(s) => s.parse().expect("a numeric seed"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the clock is past 1970")
            .as_nanos() as u64,
    };
    println!("crash test seed {seed}: rerun with {SEED_ENV}={seed}");
    let mut rng = XorShift::new(seed);
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("db");
    let created = common::create(&dir);
    let mut before = (created.identity().lsn, created.identity().chain);
    drop(created);

    let started = Instant::now();
    let mut acked: HashMap<i64, Ack> = HashMap::new();
    let mut rounds_with_acks = 0;
    for run in 0..KILLS {
        // One kill in four is timed from the child's start, early, so some land while it opens.
        let after_ready = rng.range(0, 3) != 0;
        let delay = Duration::from_millis(if after_ready {
            rng.range(KILL_DELAY_MS_MIN, KILL_DELAY_MS_MAX)
        } else {
            rng.range(0, START_KILL_DELAY_MS_MAX)
        });
        let round = run_and_kill(&dir, run, delay, after_ready);
        if let Some(opened) = round.opened_at {
            assert_eq!(
                opened, before.0,
                "run {run}: the child opened at another LSN than the parent closed"
            );
        }
        for a in &round.acks {
            assert!(
                a.lsn > before.0,
                "run {run}: acknowledged LSN {} not past {}",
                a.lsn,
                before.0
            );
        }
        if !round.acks.is_empty() {
            rounds_with_acks += 1;
        }
        let n = round.acks.len();
        for a in round.acks {
            assert!(
                acked.insert(a.id, a.clone()).is_none(),
                "run {run}: message id {} acknowledged twice",
                a.id
            );
        }
        let id = check_after_kill(&dir, &acked, &before, run);
        println!(
            "run {run}: killed {} ms after {}, {n} acknowledged, LSN {} -> {}",
            delay.as_millis(),
            if after_ready { "opening" } else { "start" },
            before.0,
            id.lsn
        );
        before = (id.lsn, id.chain);
    }
    println!(
        "{KILLS} kills, {} acknowledged writes, {} s",
        acked.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        acked.len() >= ACKS_MIN && rounds_with_acks >= KILLS / 2,
        "too little load to test anything: {} acknowledged writes in {rounds_with_acks} rounds",
        acked.len()
    );
}
