//! `tandem demo`: the chat database's primary dies under load and no acknowledged post is lost
//! (issue 5); then the whole primary site is lost and the chat pool fails over to the other
//! site and back (issue 6), end to end on this machine.
//!
//! It writes the two-site example deployment, starts its six nodes, creates users and an open
//! room, and posts from concurrent clients through the active chat node, recording every
//! acknowledged post. Then it SIGKILLs the node that holds the primary copy of `mgc`; the
//! mirror becomes primary of a new epoch (the witness grants it) and the chat node follows it.
//! The killed node restarts and rejoins as a mirror, and the room's history is read back: every
//! acknowledged post must be in it once, with its text. The site-loss stages follow
//! (`site_loss`).
//!
//! One line per stage (stdout for humans; stderr with `--json`, whose stdout holds only the
//! report). Every stage has a deadline. Every node is stopped at the end, on an error, on a
//! panic and on Ctrl-C or SIGTERM (the nodes are in their own process groups, so the
//! terminal's Ctrl-C reaches them only through this command).

pub(crate) mod site_loss;
pub(crate) mod workload;

use crate::deployment::{Deployment, signal};
use crate::output::{Output, count};
use crate::{init, up, user};
use anyhow::{Context, anyhow, bail};
use clap::Args;
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Child;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tandem_node::{DatabaseStatus, Method, UserApi};
use tandem_topology::DATABASE_MGC;
use workload::{Workload, check, longest_gap, read_history};

#[derive(Args)]
pub struct DemoArgs {
    /// Keep the deployment (topology, data, logs) in DIR, which must not hold one yet; by
    /// default a temporary directory, removed at the end.
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Clients posting at once, each on its own connection.
const CLIENTS: usize = 8;
/// Users the clients post as (client k is user k mod USERS).
const USERS: [&str; 4] = ["alice", "bob", "carol", "dave"];
const POOL: &str = "pool-atl";
const ROOM: &str = "demo";
/// Posting before the kill.
const WARMUP_MS: u64 = 3_000;
/// Posting on the new primary before the killed node restarts.
const AFTER_FAILOVER_MS: u64 = 3_000;
/// Deadlines of the stages.
const READY_TIMEOUT_MS: u64 = 30_000;
const SYNCHRONIZED_TIMEOUT_MS: u64 = 20_000;
const SETUP_TIMEOUT_MS: u64 = 20_000;
const FIRST_POST_TIMEOUT_MS: u64 = 10_000;
const REAP_TIMEOUT_MS: u64 = 5_000;
const FAILOVER_TIMEOUT_MS: u64 = 20_000;
const REJOIN_TIMEOUT_MS: u64 = 30_000;
const VERIFY_TIMEOUT_MS: u64 = 60_000;
/// Deadline of one status question to a node.
const STATUS_TIMEOUT_MS: u64 = 1_000;
/// Pause between two looks at a condition awaited.
const POLL_MS: u64 = 50;
/// Stages announced: init, up, users, posting, kill, failover, restart, rejoin, check; the
/// site-loss stages (`site_loss::STAGES`); down.
const STAGES: usize = 10 + site_loss::STAGES;

#[derive(Serialize)]
struct Report {
    /// The deployment directory, and whether it was kept.
    dir: PathBuf,
    kept: bool,
    clients: usize,
    /// Posts the chat node answered 201 to.
    acknowledged: u64,
    /// Acknowledged posts missing from the history, or there with another text.
    lost: u64,
    /// Acknowledged posts whose text the history holds more than once.
    duplicated: u64,
    /// Posts that were not acknowledged (no answer, or an error), by reason.
    failed_attempts: u64,
    failures: BTreeMap<String, u64>,
    /// Failed attempts the history holds anyway (committed, but the answer was lost).
    failed_but_stored: u64,
    /// The longest time without an acknowledged post, and when it began.
    longest_gap_ms: u64,
    longest_gap_from_s: f64,
    killed: String,
    killed_pid: i32,
    killed_at_s: f64,
    /// From the kill to the first post acknowledged by the new primary (a post sent after the
    /// killed process was gone).
    failover_ms: u64,
    epoch_before: u64,
    epoch_after: u64,
    primary_before: String,
    primary_after: String,
    restarted_at_s: f64,
    /// From the restart to the restarted copy being a synchronized mirror.
    rejoin_ms: u64,
    /// Events of the room read back (messages and the room's own events).
    history_events: u64,
    /// The loss of the whole primary site, the chat pool's failover and failback.
    site_loss: site_loss::Report,
    seconds: f64,
}

/// Time since the demo began.
#[derive(Clone, Copy)]
pub(crate) struct Clock(pub(crate) Instant);

impl Clock {
    pub(crate) fn ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }

    pub(crate) fn s(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }
}

/// The stage lines: `[k/N]  12.3 s  what happened` (stdout for humans; stderr with `--json`).
pub(crate) struct Stages {
    json: bool,
    clock: Clock,
    done: AtomicUsize,
    total: usize,
}

impl Stages {
    pub(crate) fn new(json: bool, clock: Clock, total: usize) -> Stages {
        Stages {
            json,
            clock,
            done: AtomicUsize::new(0),
            total,
        }
    }

    pub(crate) fn say(&self, what: &str) {
        let k = self.done.fetch_add(1, Ordering::SeqCst) + 1;
        let line = format!(
            "{:<7} {:>5.1} s  {what}",
            format!("[{k}/{}]", self.total),
            self.clock.s()
        );
        if self.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }

    /// A line that is not a stage (Ctrl-C, the error path).
    pub(crate) fn note(&self, what: &str) {
        let line = format!("{:<7} {:>5.1} s  {what}", "", self.clock.s());
        if self.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
}

/// Why the scenario ended early.
pub(crate) enum Stop {
    Failed(anyhow::Error),
    Signal(&'static str),
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Failed(e) => write!(f, "{e:#}"),
            Stop::Signal(s) => f.write_str(s),
        }
    }
}

/// Stops every node of the deployment (by its pid file) and reaps the children this process
/// started: on the normal path, on an error, on Ctrl-C and when a panic unwinds.
pub(crate) struct Cleanup<'a> {
    d: &'a Deployment,
    children: &'a Mutex<Vec<Child>>,
    done: bool,
}

impl<'a> Cleanup<'a> {
    pub(crate) fn new(d: &'a Deployment, children: &'a Mutex<Vec<Child>>) -> Cleanup<'a> {
        Cleanup {
            d,
            children,
            done: false,
        }
    }

    pub(crate) fn run(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        let names = self.d.select(&[]).expect("every node");
        up::stop_all(self.d, &names);
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        for c in children.iter_mut() {
            // A child without a pid file (it could not be written) is stopped here.
            if matches!(c.try_wait(), Ok(None)) {
                crate::deployment::stop(c.id() as i32, Duration::from_millis(5_000));
            }
            let _ = c.wait();
        }
        children.clear();
    }
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        self.run();
    }
}

/// The runtime of a command that runs a deployment, and its Ctrl-C and SIGTERM streams.
pub(crate) fn runtime_with_signals() -> anyhow::Result<(
    tokio::runtime::Runtime,
    tokio::signal::unix::Signal,
    tokio::signal::unix::Signal,
)> {
    use tokio::signal::unix::{SignalKind, signal};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (interrupt, terminate) = {
        let _in_runtime = rt.enter();
        (
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        )
    };
    Ok((rt, interrupt, terminate))
}

pub fn run(a: DemoArgs, out: &Output) -> anyhow::Result<()> {
    let clock = Clock(Instant::now());
    // From here on, Ctrl-C and SIGTERM are this command's to handle: it stops the nodes first.
    let (rt, mut interrupt, mut terminate) = crate::demo::runtime_with_signals()?;
    let (tmp, dir) = match &a.dir {
        Some(d) => (None, d.clone()),
        None => {
            let t = tempfile::Builder::new().prefix("tandem-demo-").tempdir()?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    let stages = Stages::new(out.json, clock, STAGES);
    let written = init::write(&dir, None)?;
    let d = Deployment::load(&written.topology)?;
    stages.say(&format!(
        "wrote the two-site example deployment in {} (six nodes on 127.0.0.1:{}..)",
        dir.display(),
        written.base_port
    ));
    let children = Mutex::new(Vec::new());
    let mut cleanup = Cleanup::new(&d, &children);
    let ended = rt.block_on(async {
        tokio::select! {
            r = scenario(&d, &children, &stages) => r.map_err(Stop::Failed),
            _ = interrupt.recv() => Err(Stop::Signal("interrupted (Ctrl-C)")),
            _ = terminate.recv() => Err(Stop::Signal("terminated (SIGTERM)")),
        }
    });
    match &ended {
        Err(Stop::Signal(s)) => stages.note(&format!("{s}: stopping every node…")),
        Err(Stop::Failed(_)) => stages.note("failed: stopping every node…"),
        Ok(_) => {}
    }
    // The workload's tasks end with the runtime; the nodes before them.
    cleanup.run();
    rt.shutdown_timeout(Duration::from_millis(1_000));
    let (mut report, tmp) = stopped(&d, ended, tmp, &dir)?;
    stages.say("every node stopped");
    let failed = report.lost > 0 || report.duplicated > 0 || report.site_loss.failed();
    // A run that lost a post keeps its deployment for inspection.
    report.kept = kept(tmp, failed, &dir)?;
    report.seconds = clock.s();
    out.emit(&report, || human(&report))?;
    if failed {
        bail!(
            "the mirror failover lost {} acknowledged posts and duplicated {}; the site loss lost \
             {} beyond its reported RPO and duplicated {}; the deployment is kept in {}",
            report.lost,
            report.duplicated,
            report.site_loss.lost,
            report.site_loss.duplicated,
            dir.display()
        );
    }
    Ok(())
}

/// Every stage after init; the report, not yet printed.
async fn scenario(
    d: &Deployment,
    children: &Mutex<Vec<Child>>,
    stages: &Stages,
) -> anyhow::Result<Report> {
    let clock = stages.clock;
    let chat = d
        .topology
        .chat
        .as_ref()
        .context("the topology has no chat pool")?;
    let victim = chat.primary.clone();
    let mirror = chat
        .mirror
        .clone()
        .context("the topology gives mgc no mirror: nothing would take over")?;
    let server = chat
        .active
        .first()
        .context("the topology's chat pool has no active server")?;
    let server_addr = d.topology.node(server).expect("validated").address.clone();
    let client = d.client();

    // Up: every node, then the chat database's primary synchronized with its mirror (the
    // witness allows an automatic failover only then).
    let (_, up_s) = start_all(d, children, READY_TIMEOUT_MS).await?;
    let victim_addr = address(d, &victim);
    let (epoch_before, _) = until(
        &format!("{DATABASE_MGC} primary on {victim}, synchronized with {mirror}"),
        SYNCHRONIZED_TIMEOUT_MS,
        async || primary_synchronized(&client, &victim_addr).await,
    )
    .await?;
    stages.say(&format!(
        "six nodes ready in {up_s:.1} s; {DATABASE_MGC} primary on {victim} (epoch {epoch_before}), \
         synchronized with {mirror}"
    ));

    // Users and an open room that they all join.
    let mut apis = Vec::new();
    for name in USERS {
        let added = tokio::time::timeout(ms(SETUP_TIMEOUT_MS), user::add(d, name, POOL, None))
            .await
            .map_err(|_| anyhow!("adding user {name}: no answer within {SETUP_TIMEOUT_MS} ms"))?
            .with_context(|| format!("adding user {name}"))?;
        apis.push(UserApi::new(&server_addr, &added.token));
    }
    let by_user: Vec<&UserApi> = apis.iter().collect();
    open_room(&by_user, &USERS, ROOM, server).await?;
    stages.say(&format!(
        "{} users in {POOL} ({}); open room {ROOM}, joined by all",
        USERS.len(),
        USERS.join(", ")
    ));

    // The workload, and the time it has before the kill.
    let clients = (0..CLIENTS)
        .map(|k| vec![apis[k % apis.len()].clone()])
        .collect();
    let workload = Workload::start(ROOM, "c", clients, clock);
    workload
        .warm_up(
            "the first post acknowledged",
            FIRST_POST_TIMEOUT_MS,
            WARMUP_MS,
        )
        .await?;
    let (epoch_now, _) = until(
        &format!("{DATABASE_MGC} on {victim} still synchronized with {mirror} under load"),
        SYNCHRONIZED_TIMEOUT_MS,
        async || primary_synchronized(&client, &victim_addr).await,
    )
    .await?;
    if epoch_now != epoch_before {
        bail!("{DATABASE_MGC} changed epoch ({epoch_before} → {epoch_now}) before the kill");
    }
    stages.say(&format!(
        "{CLIENTS} clients posting through {server}: {} posts acknowledged, {} attempts failed",
        count(workload.progress.acked.load(Ordering::SeqCst) as f64),
        workload.progress.failed.load(Ordering::SeqCst)
    ));

    // The kill: SIGKILL of the process in run/VICTIM.pid, awaited until it is gone.
    let pid = d.running_pid(&victim).with_context(|| {
        format!(
            "{victim} is not running (no live process in {})",
            d.pid_file(&victim).display()
        )
    })?;
    let killed_ms = clock.ms();
    signal(pid, libc::SIGKILL);
    until(
        &format!("{victim} (pid {pid}) gone after SIGKILL"),
        REAP_TIMEOUT_MS,
        async || reap(children, pid),
    )
    .await?;
    let _ = std::fs::remove_file(d.pid_file(&victim));
    // A post sent from now on can only be acknowledged by another copy.
    workload.progress.mark(clock.ms());
    stages.say(&format!(
        "killed {victim} (pid {pid}) at {:.1} s",
        killed_ms as f64 / 1000.0
    ));

    // The failover, as the clients see it: the first post acknowledged by the new primary.
    let first_ms = until(
        "a post acknowledged after the kill",
        FAILOVER_TIMEOUT_MS,
        async || {
            workload.progress.first_after(0).ok_or_else(|| {
                format!(
                    "{} attempts failed so far",
                    workload.progress.failed.load(Ordering::SeqCst)
                )
            })
        },
    )
    .await?;
    let failover_ms = first_ms - killed_ms;
    let (primary_after, epoch_after) = until(
        &format!("one writable copy of {DATABASE_MGC}"),
        FAILOVER_TIMEOUT_MS,
        async || writable_copy(d, &client).await,
    )
    .await?;
    stages.say(&format!(
        "{primary_after} primary of {DATABASE_MGC} (epoch {epoch_after}): first post acknowledged \
         {:.2} s after the kill",
        failover_ms as f64 / 1000.0
    ));

    // The restart, once the new primary has served a while.
    tokio::time::sleep(ms(AFTER_FAILOVER_MS)).await;
    let restarted_ms = clock.ms();
    let mut restarted = up::spawn(d, std::slice::from_ref(&victim))?;
    let ready = up::wait_ready(d, &mut restarted, ms(READY_TIMEOUT_MS)).await;
    let new_pid = restarted.first().map(|(_, c)| c.id()).unwrap_or(0);
    children
        .lock()
        .expect("children")
        .extend(restarted.into_iter().map(|(_, c)| c));
    ready?;
    stages.say(&format!(
        "restarted {victim} (pid {new_pid}) at {:.1} s",
        restarted_ms as f64 / 1000.0
    ));

    // The rejoin: the restarted copy a mirror of the new primary, with every record.
    let primary_addr = address(d, &primary_after);
    until(
        &format!("{DATABASE_MGC} on {victim} a synchronized mirror of {primary_after}"),
        REJOIN_TIMEOUT_MS,
        async || rejoined(&client, &victim_addr, &primary_addr, epoch_after).await,
    )
    .await?;
    let rejoin_ms = clock.ms() - restarted_ms;
    stages.say(&format!(
        "{victim} rejoined: mirror of {DATABASE_MGC}, synchronized with {primary_after}, {:.1} s \
         after its restart",
        rejoin_ms as f64 / 1000.0
    ));

    // The check: every acknowledged post in the history, once, with its text.
    let log = workload.stop().await?;
    let history = tokio::time::timeout(ms(VERIFY_TIMEOUT_MS), read_history(&apis[0], ROOM))
        .await
        .map_err(|_| {
            anyhow!("reading room {ROOM}'s history: not done within {VERIFY_TIMEOUT_MS} ms")
        })??;
    let check = check(&log.acks, &log.failures, &history);
    let (longest_gap_ms, gap_from_ms) = longest_gap(&log.acks);
    let (final_primary, final_epoch) = writable_copy(d, &client)
        .await
        .map_err(|e| anyhow!("after the rejoin: {e}"))?;
    if (final_primary.as_str(), final_epoch) != (primary_after.as_str(), epoch_after) {
        bail!(
            "{DATABASE_MGC} moved again after the failover: primary {final_primary} epoch \
             {final_epoch}, was {primary_after} epoch {epoch_after}"
        );
    }
    stages.say(&format!(
        "posting stopped; history read back ({} events): {} posts acknowledged, {} lost, {} \
         attempts not acknowledged",
        count(history.events as f64),
        count(log.acks.len() as f64),
        check.lost,
        log.failures.len()
    ));
    let mut failures = BTreeMap::new();
    for f in &log.failures {
        *failures.entry(f.reason.clone()).or_insert(0) += 1;
    }

    // The whole primary site lost: the chat pool to the other site and back.
    let site_loss = site_loss::run(
        site_loss::Context {
            d,
            children,
            stages,
            earlier: Some((ROOM, &log)),
            kill: site_loss::KillAt::Now,
        },
        &client,
    )
    .await?;
    Ok(Report {
        dir: d.dir().to_path_buf(),
        kept: false,
        clients: CLIENTS,
        acknowledged: log.acks.len() as u64,
        lost: check.lost,
        duplicated: check.duplicated,
        failed_attempts: log.failures.len() as u64,
        failures,
        failed_but_stored: check.failed_but_stored,
        longest_gap_ms,
        longest_gap_from_s: gap_from_ms as f64 / 1000.0,
        killed: victim,
        killed_pid: pid,
        killed_at_s: killed_ms as f64 / 1000.0,
        failover_ms,
        epoch_before,
        epoch_after,
        primary_before: chat.primary.clone(),
        primary_after,
        restarted_at_s: restarted_ms as f64 / 1000.0,
        rejoin_ms,
        history_events: history.events,
        site_loss,
        seconds: 0.0,
    })
}

/// After a run whose nodes were stopped: fails, naming the deployment (kept), when a node is
/// still running; fails with the run's error when it ended in one, naming its logs (a failed run
/// keeps a temporary deployment for them, an interrupted one does not). Otherwise the run's
/// result, and the temporary deployment back.
pub(crate) fn stopped<T>(
    d: &Deployment,
    ended: Result<T, Stop>,
    tmp: Option<tempfile::TempDir>,
    dir: &std::path::Path,
) -> anyhow::Result<(T, Option<tempfile::TempDir>)> {
    let left: Vec<String> = d
        .select(&[])?
        .into_iter()
        .filter(|n| d.running_pid(n).is_some())
        .collect();
    if !left.is_empty() {
        let dir = tmp.map(|t| t.keep()).unwrap_or_else(|| dir.to_path_buf());
        bail!("{} did not stop; see {}", left.join(", "), dir.display());
    }
    match ended {
        Ok(r) => Ok((r, tmp)),
        Err(e) => {
            let logs = match (tmp, &e) {
                (Some(_), Stop::Signal(_)) => String::new(),
                (Some(t), Stop::Failed(_)) => {
                    format!("; logs kept in {}", t.keep().join("logs").display())
                }
                (None, _) => format!("; logs in {}", dir.join("logs").display()),
            };
            bail!("{e}; every node stopped{logs}");
        }
    }
}

/// Whether the deployment at `dir` is kept after a run: one given by the user always is; a
/// temporary one only when the run `failed` (for inspection), else it is removed.
pub(crate) fn kept(
    tmp: Option<tempfile::TempDir>,
    failed: bool,
    dir: &std::path::Path,
) -> anyhow::Result<bool> {
    Ok(match tmp {
        None => true,
        Some(t) if failed => {
            let _ = t.keep();
            true
        }
        Some(t) => {
            t.close()
                .with_context(|| format!("cannot remove {}", dir.display()))?;
            false
        }
    })
}

/// Starts every node of `d`, its processes kept in `children` (to be stopped whatever happens),
/// and waits up to `ready_ms` until all are ready: their names, and the seconds it took.
pub(crate) async fn start_all(
    d: &Deployment,
    children: &Mutex<Vec<Child>>,
    ready_ms: u64,
) -> anyhow::Result<(Vec<String>, f64)> {
    let names = d.select(&[])?;
    let from = Instant::now();
    let mut started = up::spawn(d, &names)?;
    let ready = up::wait_ready(d, &mut started, ms(ready_ms)).await;
    children
        .lock()
        .expect("children")
        .extend(started.into_iter().map(|(_, c)| c));
    ready?;
    Ok((names, from.elapsed().as_secs_f64()))
}

pub(crate) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub(crate) fn address(d: &Deployment, node: &str) -> String {
    d.topology
        .node(node)
        .expect("in the topology")
        .address
        .clone()
}

/// Awaits `probe` until it answers `Ok`, looking every `POLL_MS`; past `timeout_ms`, an error
/// that names `what` and the last thing the probe saw.
pub(crate) async fn until<T>(
    what: &str,
    timeout_ms: u64,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + ms(timeout_ms);
    loop {
        let seen = match probe().await {
            Ok(t) => return Ok(t),
            Err(seen) => seen,
        };
        if Instant::now() >= deadline {
            bail!(
                "{what}: not within {:.1} s (last seen: {seen})",
                timeout_ms as f64 / 1000.0
            );
        }
        tokio::time::sleep(ms(POLL_MS)).await;
    }
}

/// The node's copy of `mgc`, as its status tells.
async fn mgc_copy(client: &tandem_node::Client, addr: &str) -> Result<DatabaseStatus, String> {
    let status = client
        .status(addr, ms(STATUS_TIMEOUT_MS))
        .await
        .map_err(|e| e.to_string())?;
    status
        .databases
        .into_iter()
        .find(|c| c.database == DATABASE_MGC)
        .ok_or_else(|| format!("{} holds no copy of {DATABASE_MGC}", status.node))
}

fn describe(c: &DatabaseStatus) -> String {
    format!(
        "role {}, epoch {}, mirroring {}",
        c.role.as_deref().unwrap_or("-"),
        c.epoch.map(|e| e.to_string()).unwrap_or("-".into()),
        c.mirroring
            .as_ref()
            .map(|m| format!("{} with {}", m.state, m.partner))
            .unwrap_or("none".into())
    )
}

/// The copy at `addr` is primary and its mirror synchronized: its epoch and LSN.
async fn primary_synchronized(
    client: &tandem_node::Client,
    addr: &str,
) -> Result<(u64, u64), String> {
    let c = mgc_copy(client, addr).await?;
    let synchronized = c
        .mirroring
        .as_ref()
        .is_some_and(|m| m.state == "synchronized");
    match (c.role.as_deref(), c.epoch, c.lsn) {
        (Some("primary"), Some(e), Some(l)) if synchronized => Ok((e, l)),
        _ => Err(describe(&c)),
    }
}

/// The copy at `mirror_addr` is a mirror of epoch `epoch` that has every record of its
/// primary, and the primary at `primary_addr` counts it synchronized again (its witness may
/// allow the next automatic failover).
async fn rejoined(
    client: &tandem_node::Client,
    mirror_addr: &str,
    primary_addr: &str,
    epoch: u64,
) -> Result<(), String> {
    let m = mgc_copy(client, mirror_addr).await?;
    let mirror_synchronized = m
        .mirroring
        .as_ref()
        .is_some_and(|l| l.state == "mirror: synchronized");
    if m.role.as_deref() != Some("mirror") || m.epoch != Some(epoch) || !mirror_synchronized {
        return Err(format!("the restarted copy: {}", describe(&m)));
    }
    let p = mgc_copy(client, primary_addr).await?;
    let synchronized = p
        .mirroring
        .as_ref()
        .is_some_and(|l| l.state == "synchronized");
    if p.role.as_deref() != Some("primary") || !synchronized {
        return Err(format!("the primary: {}", describe(&p)));
    }
    Ok(())
}

/// The one copy of `mgc` that accepts writes now: its node and epoch.
async fn writable_copy(
    d: &Deployment,
    client: &tandem_node::Client,
) -> Result<(String, u64), String> {
    let candidates = tandem_node::locator::candidates(&d.topology, DATABASE_MGC, false);
    let answers = futures_util::future::join_all(
        candidates
            .iter()
            .map(|n| client.copy_role(&n.address, DATABASE_MGC, ms(STATUS_TIMEOUT_MS))),
    )
    .await;
    let mut seen = Vec::new();
    let mut writable = Vec::new();
    for (n, a) in candidates.iter().zip(answers) {
        match a {
            Ok(r) if r.writable => writable.push((n.name.clone(), r.epoch)),
            Ok(r) => seen.push(format!("{} {} epoch {}", n.name, r.role, r.epoch)),
            Err(e) => seen.push(format!("{}: {e}", n.name)),
        }
    }
    match writable.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(seen.join("; ")),
        many => Err(format!("more than one writable copy: {many:?}")),
    }
}

/// Reaps the child `pid` once it has exited; an error while it runs.
pub(crate) fn reap(children: &Mutex<Vec<Child>>, pid: i32) -> Result<(), String> {
    let mut children = children.lock().expect("children");
    let Some(at) = children.iter().position(|c| c.id() as i32 == pid) else {
        // Not a child of this process: gone once no process has the pid.
        return match crate::deployment::alive(pid) {
            true => Err("still running".into()),
            false => Ok(()),
        };
    };
    match children[at].try_wait() {
        Ok(Some(_)) => {
            // Reaped by try_wait; wait returns its status at once.
            let _ = children.remove(at).wait();
            Ok(())
        }
        Ok(None) => Err("still running".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn human(r: &Report) -> String {
    let failures = if r.failures.is_empty() {
        String::new()
    } else {
        let by: Vec<String> = r
            .failures
            .iter()
            .map(|(k, n)| format!("{n} × {k}"))
            .collect();
        format!(": {}", by.join(", "))
    };
    let mut s = format!(
        "\ntandem demo — {} killed under load ({} clients posting through the chat node)\n\n",
        r.killed, r.clients
    );
    s.push_str(&format!(
        "  posts acknowledged   {}\n",
        count(r.acknowledged as f64)
    ));
    s.push_str(&format!(
        "  posts lost           {}{}\n",
        r.lost,
        if r.lost == 0 && r.duplicated == 0 {
            " (every acknowledged post is in the room's history, once, with its text)".to_string()
        } else {
            format!(" ({} duplicated)", r.duplicated)
        }
    ));
    s.push_str(&format!(
        "  failed attempts      {} (not acknowledged{failures}); {} of them stored anyway\n",
        r.failed_attempts, r.failed_but_stored
    ));
    s.push_str(&format!(
        "  longest gap          {:.2} s without an acknowledged post (from {:.1} s)\n",
        r.longest_gap_ms as f64 / 1000.0,
        r.longest_gap_from_s
    ));
    s.push_str(&format!(
        "  failover             {:.2} s from the kill of {} to the first post acknowledged by {}\n",
        r.failover_ms as f64 / 1000.0,
        r.killed,
        r.primary_after
    ));
    s.push_str(&format!(
        "  {DATABASE_MGC:<20} epoch {} → {}, primary {} → {}\n",
        r.epoch_before, r.epoch_after, r.primary_before, r.primary_after
    ));
    s.push_str(&format!(
        "  rejoin               {:.2} s from the restart of {} to a synchronized mirror\n",
        r.rejoin_ms as f64 / 1000.0,
        r.killed
    ));
    s.push_str(&site_loss::human(&r.site_loss));
    s.push_str(&format!(
        "\n  deployment           {} ({})\n",
        r.dir.display(),
        if r.kept { "kept" } else { "removed" }
    ));
    s.push_str(&format!("  total                {:.1} s\n", r.seconds));
    s
}

/// The first user creates the open room `room` through the first API, each other user joins it
/// through their own; all within the setup timeout. `server` names where for the errors.
async fn open_room(
    apis: &[&UserApi],
    users: &[&str],
    room: &str,
    server: &str,
) -> anyhow::Result<()> {
    tokio::time::timeout(ms(SETUP_TIMEOUT_MS), async {
        apis[0]
            .request(
                Method::POST,
                "/api/v1/rooms",
                Some(&json!({ "name": room, "privacy": "open" })),
            )
            .await
            .with_context(|| format!("creating room {room} on {server}"))?;
        for (api, name) in apis.iter().zip(users).skip(1) {
            api.request(
                Method::POST,
                &format!("/api/v1/rooms/{room}/members"),
                Some(&json!({ "user": name })),
            )
            .await
            .with_context(|| format!("{name} joining room {room}"))?;
        }
        anyhow::Ok(())
    })
    .await
    .map_err(|_| anyhow!("creating room {room}: no answer within {SETUP_TIMEOUT_MS} ms"))?
}
