//! `tandem bench dr`: the disaster-recovery targets of issue 6 (DESIGN.md §8), measured in one
//! run on the two-site example of `tandem init`, with `mgc` preloaded before the nodes start
//! (default 1,000,000 messages, written through the chat domain as `bench chat` does):
//! - RPO: with the default 1 s log backup interval and a steady post load, the acknowledged
//!   posts missing after a site-loss failover span at most 2 s of traffic;
//! - RTO: from `tandem chat failover` to the first post accepted in the backup site, < 10 s;
//! - failback: from `tandem chat failback` to the first post accepted in the primary site,
//!   < 60 s.
//!
//! The nodes seed the mirror (`atl-db2`, a streamed full backup) and the log-shipping secondary
//! (`dal-db1`, from the full backup the primary writes on the share when the chain starts) from
//! the preloaded copy; the bench waits until both are current, then runs the demo's site-loss
//! stages (`demo::site_loss`: a steady load from 8 clients, every node of the primary site
//! SIGKILLed, `cms failover --force`, `chat failover`, the site restarted, `chat failback`,
//! everything acknowledged checked). Every node is stopped at the end, on an error and on
//! Ctrl-C. No test asserts a time: the figures go to README.

use crate::demo::site_loss::{self, Report as SiteLoss};
use crate::demo::{Cleanup, Clock, Stages, Stop, ms, until};
use crate::deployment::Deployment;
use crate::init;
use crate::output::{Output, bytes, count};
use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;
use tandem_topology::DATABASE_MGC;

#[derive(Args)]
pub struct DrArgs {
    /// Messages in `mgc` before the nodes start.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1_000..=20_000_000))]
    messages: u64,
    /// Keep the deployment (topology, data, logs) in DIR, which must not hold one yet; by
    /// default a temporary directory, removed at the end.
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// The targets (issue 6).
const RPO_SPAN_MS_MAX: u64 = 2_000;
const FAILOVER_MS_MAX: u64 = 10_000;
const FAILBACK_MS_MAX: u64 = 60_000;
/// Deadlines of the stages before the site loss.
const READY_TIMEOUT_MS: u64 = 120_000;
const SEEDED_TIMEOUT_MS: u64 = 600_000;
const STATUS_TIMEOUT_MS: u64 = 2_000;
/// Stages announced: preload, up, seeded, the site-loss stages, down.
const STAGES: usize = 3 + site_loss::STAGES + 1;

#[derive(Serialize)]
struct Report {
    messages: u64,
    /// The preloaded database file, and the time the preload took.
    mgc_bytes: u64,
    preload_seconds: f64,
    /// From the start of the nodes to every node ready, then to the mirror synchronized and the
    /// log-shipping secondary at the primary's LSN.
    ready_seconds: f64,
    seeded_seconds: f64,
    rpo: Target,
    failover: Target,
    failback: Target,
    /// The procedures' steps and their times (`run.steps[].ms`).
    failover_steps: Vec<StepTime>,
    failback_steps: Vec<StepTime>,
    /// Acknowledged posts lost beyond the RPO, or doubled (both must be 0).
    lost: u64,
    duplicated: u64,
    /// The whole site-loss report (as `tandem demo --json` gives it).
    site_loss: SiteLoss,
    dir: PathBuf,
    kept: bool,
    seconds: f64,
}

/// One target and what was measured.
#[derive(Serialize)]
struct Target {
    what: String,
    target_ms: u64,
    measured_ms: u64,
    met: bool,
}

impl Target {
    fn of(what: String, target_ms: u64, measured_ms: u64) -> Target {
        Target {
            what,
            target_ms,
            measured_ms,
            met: measured_ms <= target_ms,
        }
    }
}

#[derive(Serialize)]
struct StepTime {
    step: u64,
    title: String,
    ms: u64,
}

fn steps(procedure: &Value) -> Vec<StepTime> {
    procedure["run"]["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| StepTime {
            step: s["step"].as_u64().unwrap_or(0),
            title: s["title"].as_str().unwrap_or("").to_string(),
            ms: s["ms"].as_u64().unwrap_or(0),
        })
        .collect()
}

pub fn run(a: DrArgs, out: &Output) -> anyhow::Result<()> {
    let clock = Clock(Instant::now());
    // From here on, Ctrl-C and SIGTERM are this command's to handle: it stops the nodes first.
    let (rt, mut interrupt, mut terminate) = crate::demo::runtime_with_signals()?;
    let (tmp, dir) = match &a.dir {
        Some(d) => (None, d.clone()),
        None => {
            let t = tempfile::Builder::new()
                .prefix("tandem-bench-dr-")
                .tempdir()?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    let stages = Stages::new(out.json, clock, STAGES);
    let written = init::write(&dir, None)?;
    let d = Deployment::load(&written.topology)?;
    let chat = d
        .topology
        .chat
        .clone()
        .context("the example topology has no chat pool")?;
    let primary = d
        .topology
        .node(&chat.primary)
        .expect("validated")
        .data_dir
        .join("databases")
        .join(DATABASE_MGC);
    // The nodes are not running yet: the preload writes the primary copy they will open.
    let preload_seconds = super::chat::preload(&primary, a.messages, out)?;
    let mgc_bytes = std::fs::metadata(primary.join(tandem_store::DB_FILE))
        .map(|m| m.len())
        .unwrap_or(0);
    stages.say(&format!(
        "wrote the two-site example in {}; {} messages in {DATABASE_MGC} on {} ({}) in {:.1} s",
        dir.display(),
        count(a.messages as f64),
        chat.primary,
        bytes(mgc_bytes),
        preload_seconds
    ));
    let children = Mutex::new(Vec::new());
    let mut cleanup = Cleanup::new(&d, &children);
    let ended = rt.block_on(async {
        tokio::select! {
            r = measure(&d, &children, &stages) => r.map_err(Stop::Failed),
            _ = interrupt.recv() => Err(Stop::Signal("interrupted (Ctrl-C)")),
            _ = terminate.recv() => Err(Stop::Signal("terminated (SIGTERM)")),
        }
    });
    if ended.is_err() {
        stages.note("stopping every node…");
    }
    cleanup.run();
    rt.shutdown_timeout(ms(1_000));
    let ((ready_seconds, seeded_seconds, site_loss), tmp) =
        crate::demo::stopped(&d, ended, tmp, &dir)?;
    stages.say("every node stopped");
    let failed = site_loss.failed();
    let kept = crate::demo::kept(tmp, failed, &dir)?;
    let report = Report {
        messages: a.messages,
        mgc_bytes,
        preload_seconds,
        ready_seconds,
        seeded_seconds,
        rpo: Target::of(
            "RPO: time spanned by the lost posts".into(),
            RPO_SPAN_MS_MAX,
            site_loss.rpo.missing_span_ms,
        ),
        failover: Target::of(
            format!(
                "RTO: chat failover → first post in {}",
                site_loss.backup_site
            ),
            FAILOVER_MS_MAX,
            site_loss.rto.chat_failover_ms,
        ),
        failback: Target::of(
            format!("chat failback → first post in {}", site_loss.site),
            FAILBACK_MS_MAX,
            site_loss.rto.chat_failback_ms,
        ),
        failover_steps: steps(&site_loss.chat_failover),
        failback_steps: steps(&site_loss.chat_failback),
        lost: site_loss.lost + site_loss.rpo.lost_in_backup_site,
        duplicated: site_loss.duplicated,
        site_loss,
        dir: dir.clone(),
        kept,
        seconds: clock.s(),
    };
    out.emit(&report, || human(&report))?;
    if failed {
        bail!(
            "{} acknowledged posts lost beyond the reported RPO, {} duplicated; the deployment is \
             kept in {}",
            report.lost,
            report.duplicated,
            dir.display()
        );
    }
    Ok(())
}

/// Up, seeded, the site loss: (ready s, seeded s, the site-loss report).
async fn measure(
    d: &Deployment,
    children: &Mutex<Vec<std::process::Child>>,
    stages: &Stages,
) -> anyhow::Result<(f64, f64, SiteLoss)> {
    let chat = d.topology.chat.as_ref().expect("checked by run");
    let backup = chat
        .backup
        .clone()
        .context("the chat pool has no log-shipping secondary")?;
    let client = d.client();
    let from = Instant::now();
    let (names, ready_seconds) = crate::demo::start_all(d, children, READY_TIMEOUT_MS).await?;
    stages.say(&format!(
        "{} nodes ready in {ready_seconds:.1} s",
        names.len()
    ));
    // Both other copies seeded from the preloaded one, and current.
    let (primary_addr, backup_addr) = (
        crate::demo::address(d, &chat.primary),
        crate::demo::address(d, &backup),
    );
    let lsn = until(
        &format!(
            "{DATABASE_MGC} on {} synchronized with its mirror, and {backup} at its LSN",
            chat.primary
        ),
        SEEDED_TIMEOUT_MS,
        async || {
            let p = client
                .status(&primary_addr, ms(STATUS_TIMEOUT_MS))
                .await
                .map_err(|e| e.to_string())?;
            let c = p
                .databases
                .iter()
                .find(|c| c.database == DATABASE_MGC)
                .ok_or("no mgc on the primary")?;
            let state = c.mirroring.as_ref().map(|m| m.state.clone());
            if state.as_deref() != Some("synchronized") {
                return Err(format!("the mirror: {}", state.unwrap_or("none".into())));
            }
            let lsn = c.lsn.unwrap_or(0);
            let b = client
                .copy_role(&backup_addr, DATABASE_MGC, ms(STATUS_TIMEOUT_MS))
                .await
                .map_err(|e| format!("{backup}: {e}"))?;
            if b.lsn < lsn {
                return Err(format!("{backup} {} at LSN {} of {lsn}", b.role, b.lsn));
            }
            Ok(lsn)
        },
    )
    .await?;
    let seeded_seconds = from.elapsed().as_secs_f64() - ready_seconds;
    stages.say(&format!(
        "{DATABASE_MGC} at LSN {}: mirror synchronized and {backup} restored to it {:.1} s after \
         the nodes were ready",
        count(lsn as f64),
        seeded_seconds
    ));
    let site_loss = site_loss::run(
        site_loss::Context {
            d,
            children,
            stages,
            earlier: None,
            kill: site_loss::KillAt::BeforeLogBackup,
        },
        &client,
    )
    .await?;
    Ok((ready_seconds, seeded_seconds, site_loss))
}

fn human(r: &Report) -> String {
    let s_ = |ms: u64| format!("{:.2} s", ms as f64 / 1000.0);
    let row = |t: &Target, detail: String| {
        format!(
            "{:<40} {:>9}  {:>8}  {}  {detail}\n",
            t.what,
            format!("≤ {}", s_(t.target_ms)),
            s_(t.measured_ms),
            if t.met { "met    " } else { "NOT MET" }
        )
    };
    let sl = &r.site_loss;
    let mut s = format!(
        "\ntandem bench dr — the two-site example, {DATABASE_MGC} of {} messages ({}), {} clients \
         posting\n\n",
        count(r.messages as f64),
        bytes(r.mgc_bytes),
        sl.clients
    );
    s.push_str(&format!(
        "{:<40} {:>9}  {:>8}\n",
        "what", "target", "measured"
    ));
    s.push_str(&row(
        &r.rpo,
        format!(
            "{} posts past LSN {} lost, the first {} before the kill",
            count(sl.rpo.missing as f64),
            count(sl.rpo.last_lsn as f64),
            s_(sl.rpo.missing_to_kill_ms)
        ),
    ));
    s.push_str(&row(
        &r.failover,
        format!("the command {}", s_(sl.rto.chat_failover_command_ms)),
    ));
    s.push_str(&row(
        &r.failback,
        format!("the command {}", s_(sl.rto.chat_failback_command_ms)),
    ));
    s.push_str(&format!(
        "\n  cms failover --force   {} (the command)\n  lost beyond the RPO    {} ({} duplicated)\n",
        s_(sl.rto.cms_failover_command_ms),
        r.lost,
        r.duplicated
    ));
    let line = |steps: &[StepTime]| {
        steps
            .iter()
            .map(|t| format!("    {}. {:<70} {:>8}\n", t.step, t.title, s_(t.ms)))
            .collect::<String>()
    };
    s.push_str(&format!(
        "\n  chat failover steps\n{}  chat failback steps\n{}",
        line(&r.failover_steps),
        line(&r.failback_steps)
    ));
    s.push_str(&format!(
        "\n  preload {:.1} s, nodes ready {:.1} s, mirror and secondary seeded {:.1} s later; \
         total {:.1} s; deployment {} ({})\n",
        r.preload_seconds,
        r.ready_seconds,
        r.seeded_seconds,
        r.seconds,
        r.dir.display(),
        if r.kept { "kept" } else { "removed" }
    ));
    s
}
