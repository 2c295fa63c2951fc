//! `tandem up` starts the deployment's nodes that are not running as child processes
//! (`run/NODE.pid`, `logs/NODE.log`), waits until each answers its health check, and either
//! returns (`--detach`) or supervises them until Ctrl-C; `tandem down` stops them.

use crate::deployment::{Deployment, alive, runtime, stop};
use crate::output::Output;
use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a node may take to answer its first health check.
const READY_TIMEOUT_MS: u64 = 30_000;
/// How long a node may take to stop after SIGTERM before it is killed.
const STOP_GRACE_MS: u64 = 10_000;

#[derive(Args)]
pub struct UpArgs {
    /// Only these nodes (comma-separated; one that runs already is refused); default every
    /// node that is not running.
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<String>,
    /// Return once every node is ready, leaving them running.
    #[arg(long)]
    detach: bool,
}

#[derive(Args)]
pub struct DownArgs {
    /// Only these nodes (comma-separated); default every node.
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<String>,
}

#[derive(Serialize)]
struct Started {
    node: String,
    site: String,
    address: String,
    pid: i32,
    log: String,
}

fn last_lines(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

pub fn up(d: &Deployment, a: UpArgs, out: &Output) -> anyhow::Result<()> {
    // Held until the nodes are ready: two `up`s at once would each start the nodes the other
    // had not written a pid file for yet, the second set failing on the first's ports and
    // left without a pid file that `down` would find.
    let starting = starting_lock(d)?;
    let mut names = d.select(&a.nodes)?;
    // Without `--nodes`, `up` brings up whatever is down (a node named on purpose that runs
    // already is refused, in `spawn`).
    let mut running = Vec::new();
    if a.nodes.is_empty() {
        names.retain(|n| match d.running_pid(n) {
            Some(pid) => {
                running.push((n.clone(), pid));
                false
            }
            None => true,
        });
    }
    let started = Instant::now();
    let interrupted = if a.detach {
        None
    } else {
        Some(stop_signals()?)
    };
    let mut children = spawn(d, &names)?;
    let ready = runtime()?.block_on(wait_ready(
        d,
        &mut children,
        Duration::from_millis(READY_TIMEOUT_MS),
    ));
    if let Err(e) = ready {
        stop_all(d, &names);
        return Err(e);
    }
    drop(starting);
    let report: Vec<Started> = children
        .iter()
        .map(|(n, c)| {
            let node = d.topology.node(n).expect("selected");
            Started {
                node: n.clone(),
                site: node.site.clone(),
                address: node.address.clone(),
                pid: c.id() as i32,
                log: d.log_file(n).display().to_string(),
            }
        })
        .collect();
    out.emit(&report, || {
        let mut s = String::new();
        for (n, pid) in &running {
            s.push_str(&format!("{n:<10} already running, pid {pid}\n"));
        }
        for r in &report {
            s.push_str(&format!(
                "{:<10} {:<5} http://{:<22} pid {}\n",
                r.node, r.site, r.address, r.pid
            ));
        }
        if report.is_empty() {
            s.push_str("every node was running already: none started\n");
            return s;
        }
        s.push_str(&format!(
            "{} ready in {:.1} s{}\n",
            match report.len() {
                1 => "1 node".to_string(),
                n => format!("{n} nodes"),
            },
            started.elapsed().as_secs_f64(),
            match (a.detach, report.len()) {
                (true, 1) => "; `tandem down` stops it",
                (true, _) => "; `tandem down` stops them",
                (false, 1) => "; Ctrl-C stops it",
                (false, _) => "; Ctrl-C stops them",
            }
        ));
        s
    })?;
    match interrupted {
        Some(interrupted) if !report.is_empty() => supervise(d, children, interrupted, out),
        _ => Ok(()),
    }
}

/// This deployment's lock for starting nodes (`DIR/.tandem/starting.lock`); refused while
/// another `tandem up` holds it.
fn starting_lock(d: &Deployment) -> anyhow::Result<std::fs::File> {
    let path = d.dir().join(".tandem").join("starting.lock");
    match crate::deployment::try_lock(&path)? {
        Some(file) => Ok(file),
        None => bail!(
            "another `tandem up` is starting nodes of this deployment ({}): wait until it \
             ends, then run `tandem status`",
            d.dir().display()
        ),
    }
}

/// Starts each of `names` as a `tandem serve` child process in its own process group, with
/// `run/NODE.pid` and `logs/NODE.log` (appended to). Returns at once, without waiting for the
/// nodes to be ready. Refuses a node that is already running; on an error, stops the nodes it
/// started.
pub(crate) fn spawn(
    d: &Deployment,
    names: &[String],
) -> anyhow::Result<Vec<(String, std::process::Child)>> {
    for n in names {
        if let Some(pid) = d.running_pid(n) {
            bail!("{n} is already running (pid {pid}); `tandem down --nodes {n}` first");
        }
    }
    std::fs::create_dir_all(d.dir().join("run"))?;
    std::fs::create_dir_all(d.dir().join("logs"))?;
    let exe = std::env::current_exe().context("cannot find the tandem executable")?;
    let mut children = Vec::new();
    for n in names {
        match spawn_one(d, &exe, n) {
            Ok(child) => children.push((n.clone(), child)),
            Err(e) => {
                let started: Vec<String> = children.iter().map(|(n, _)| n.clone()).collect();
                stop_all(d, &started);
                for (_, c) in &mut children {
                    let _ = c.wait();
                }
                return Err(e);
            }
        }
    }
    Ok(children)
}

fn spawn_one(
    d: &Deployment,
    exe: &std::path::Path,
    n: &str,
) -> anyhow::Result<std::process::Child> {
    let log_path = d.log_file(n);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let mut child = Command::new(exe)
        .args(["serve", "--node", n, "--topology"])
        .arg(&d.file)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C meant for `up` reaches the nodes through `up`.
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {n}"))?;
    if let Err(e) = std::fs::write(d.pid_file(n), format!("{}\n", child.id())) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e).with_context(|| format!("cannot write {}", d.pid_file(n).display()));
    }
    Ok(child)
}

/// Waits until every one of `children` answers its health check. An error names the node
/// when one exits first (with the end of its log) or when `timeout` passes; it stops nothing.
pub(crate) async fn wait_ready(
    d: &Deployment,
    children: &mut [(String, std::process::Child)],
    timeout: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let client = d.client();
    let mut pending: Vec<String> = children.iter().map(|(n, _)| n.clone()).collect();
    loop {
        for (n, child) in children.iter_mut() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{n} exited ({status}) before it was ready: {}",
                    last_lines(&d.log_file(n), 2)
                );
            }
        }
        let checks = pending.iter().map(|n| {
            let addr = d.topology.node(n).expect("selected").address.clone();
            let client = client.clone();
            async move { client.healthy(&addr, Duration::from_millis(500)).await }
        });
        let ready = futures_util::future::join_all(checks).await;
        pending = pending
            .into_iter()
            .zip(ready)
            .filter(|(_, ok)| !ok)
            .map(|(n, _)| n)
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        if started.elapsed() > timeout {
            bail!(
                "{} did not answer its health check within {} s; see {}",
                pending.join(", "),
                timeout.as_secs(),
                d.log_file(&pending[0]).display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for Ctrl-C (then stops every node) or for every node to exit, reporting each exit.
/// Set once `up` is asked to stop: Ctrl-C, and what a service manager, `timeout` or a closed
/// terminal sends (SIGTERM, SIGHUP) — every node then stops with `up` (until session 32 only
/// Ctrl-C stopped them; the others left the nodes running unsupervised). The handlers are in
/// place when this returns.
fn stop_signals() -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut signals = {
        let _in = rt.enter();
        [
            SignalKind::interrupt(),
            SignalKind::terminate(),
            SignalKind::hangup(),
        ]
        .map(signal)
        .into_iter()
        .collect::<std::io::Result<Vec<_>>>()?
    };
    let interrupted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = interrupted.clone();
    std::thread::spawn(move || {
        rt.block_on(async {
            let [int, term, hup] = &mut signals[..] else {
                return;
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
                _ = hup.recv() => {}
            }
        });
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    Ok(interrupted)
}

fn supervise(
    d: &Deployment,
    mut children: Vec<(String, std::process::Child)>,
    interrupted: std::sync::Arc<std::sync::atomic::AtomicBool>,
    out: &Output,
) -> anyhow::Result<()> {
    let names: Vec<String> = children.iter().map(|(n, _)| n.clone()).collect();
    loop {
        if interrupted.load(std::sync::atomic::Ordering::SeqCst) {
            out.progress("stopping every node…");
            stop_all(d, &names);
            for (_, c) in &mut children {
                let _ = c.wait();
            }
            return Ok(());
        }
        children.retain_mut(|(n, c)| match c.try_wait() {
            Ok(Some(status)) => {
                out.progress(&format!(
                    "{n} exited ({status}); see {}",
                    d.log_file(n).display()
                ));
                let _ = std::fs::remove_file(d.pid_file(n));
                false
            }
            _ => true,
        });
        if children.is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops the running nodes among `names` (SIGTERM, then SIGKILL after the grace period), all at
/// once, and removes their pid files.
/// Starts `names` and waits until each answers its health check; on failure stops them all.
pub(crate) fn start(
    d: &Deployment,
    names: &[String],
) -> anyhow::Result<Vec<(String, std::process::Child)>> {
    let mut children = spawn(d, names)?;
    let ready = runtime()?.block_on(wait_ready(
        d,
        &mut children,
        Duration::from_millis(READY_TIMEOUT_MS),
    ));
    if let Err(e) = ready {
        stop_all(d, names);
        return Err(e);
    }
    Ok(children)
}

pub(crate) fn stop_all(d: &Deployment, names: &[String]) {
    let handles: Vec<_> = names
        .iter()
        .filter_map(|n| d.running_pid(n).map(|pid| (n.clone(), pid)))
        .map(|(n, pid)| {
            std::thread::spawn(move || (n, stop(pid, Duration::from_millis(STOP_GRACE_MS))))
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    for n in names {
        let _ = std::fs::remove_file(d.pid_file(n));
    }
}

#[derive(Serialize)]
struct Stopped {
    node: String,
    pid: Option<i32>,
    /// `stopped` (SIGTERM), `killed` (SIGKILL after the grace period) or `not running`.
    how: &'static str,
}

pub fn down(d: &Deployment, a: DownArgs, out: &Output) -> anyhow::Result<()> {
    let mut names = d.select(&a.nodes)?;
    if a.nodes.is_empty() {
        // A node renamed in the topology while it runs is still stopped: its pid file (of the
        // old name) says so (until session 32 it was left running, "not running" said).
        for n in pid_file_nodes(&d.dir().join("run")) {
            if !names.contains(&n) {
                names.push(n);
            }
        }
    }
    stop_named(&d.dir().join("run"), &d.file, &names, out)
}

/// `down` when the topology does not load (a typo made while the nodes run): the nodes its
/// directory's pid files name that serve this topology file are stopped all the same — they
/// could not be stopped by tandem at all until session 32. `why`: the topology's error.
pub fn down_without_topology(
    file: &std::path::Path,
    why: anyhow::Error,
    a: DownArgs,
    out: &Output,
) -> anyhow::Result<()> {
    let Ok(file) = file.canonicalize() else {
        return Err(why);
    };
    let run = file
        .parent()
        .unwrap_or(std::path::Path::new("/"))
        .join("run");
    let mut names = pid_file_nodes(&run);
    if !a.nodes.is_empty() {
        names.retain(|n| a.nodes.contains(n));
    }
    if names.is_empty() {
        return Err(why);
    }
    out.progress(&format!(
        "the topology does not load ({why:#}): stopping the nodes {} lists",
        run.display()
    ));
    stop_named(&run, &file, &names, out)
}

/// The node names of the pid files in `run`.
fn pid_file_nodes(run: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(run)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".pid"))
                .map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

/// Stops each of `names` whose pid file in `run` names a live `tandem serve` of that node
/// serving the topology `file`, and removes the pid files.
fn stop_named(
    run: &std::path::Path,
    file: &std::path::Path,
    names: &[String],
    out: &Output,
) -> anyhow::Result<()> {
    let handles: Vec<_> = names
        .iter()
        .map(|n| {
            let pid = crate::deployment::running_pid_in(run, file, n);
            let n = n.clone();
            std::thread::spawn(move || {
                let how = match pid {
                    None => "not running",
                    Some(p) if stop(p, Duration::from_millis(STOP_GRACE_MS)) => "stopped",
                    Some(p) if alive(p) => "still running",
                    Some(_) => "killed",
                };
                Stopped { node: n, pid, how }
            })
        })
        .collect();
    let report: Vec<Stopped> = handles
        .into_iter()
        .map(|h| h.join().expect("stopper"))
        .collect();
    for r in &report {
        let _ = std::fs::remove_file(run.join(format!("{}.pid", r.node)));
    }
    out.emit(&report, || {
        report
            .iter()
            .map(|r| match r.pid {
                Some(p) => format!("{:<10} {} (pid {p})\n", r.node, r.how),
                None => format!("{:<10} {}\n", r.node, r.how),
            })
            .collect()
    })?;
    if let Some(r) = report.iter().find(|r| r.how == "still running") {
        bail!("{} (pid {}) did not stop", r.node, r.pid.unwrap_or(0));
    }
    Ok(())
}
