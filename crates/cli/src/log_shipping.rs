//! `tandem db log-shipping configure|remove-secondary|copy|restore|status`: the seed's log
//! shipping (backup, copy and restore jobs; the monitor), against the nodes. The steps of a
//! chat failover are commands of their own here: remove the secondary, copy, restore — each
//! needs only the share and the secondary, so they work with the primary's site gone.

use crate::db_online::{db_node, known_database};
use crate::deployment::{Deployment, runtime};
use crate::output::{Output, count, time};
use anyhow::{Context, bail};
use clap::Subcommand;
use serde::Serialize;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tandem_node::Method;
use tandem_node::log_shipping::{Configured, Copied, JobStatus, Monitor, Restored};
use tandem_topology::PlacementRole;

/// Deadline of a status request to one node.
const STATUS_TIMEOUT: Duration = Duration::from_millis(1_500);
/// Deadline of a step (a copy or a restore of many files).
const STEP_TIMEOUT: Duration = Duration::from_secs(3_600);

#[derive(Subcommand)]
pub enum LogShippingCommand {
    /// (Re)configure log shipping of DB to --secondary: the primary takes a full backup on the
    /// share, the secondary restores it (replacing its copy) and applies the log backups; waits
    /// until it does. An option left out keeps its configured value (its default the first
    /// time).
    Configure {
        /// The database, as `tandem status` names it.
        #[arg(long)]
        db: String,
        /// The db node, in another site than the primary, that copies and restores.
        #[arg(long)]
        secondary: String,
        /// Interval of the log backups.
        #[arg(long)]
        backup_interval_ms: Option<u64>,
        /// Interval of the secondary's rounds: copy, then restore.
        #[arg(long)]
        copy_interval_ms: Option<u64>,
        /// Interval of the scheduled full backups.
        #[arg(long)]
        full_backup_interval_ms: Option<u64>,
        /// Keep the backups a restore to any moment of this window needs (default: a day; 0
        /// keeps only the chain the secondary needs).
        #[arg(long)]
        retention_ms: Option<u64>,
        /// Alert when the backup job has not run for this long (default: 5 intervals).
        #[arg(long)]
        backup_alert_ms: Option<u64>,
        /// Alert when the secondary lags the primary by more than this (records' times).
        #[arg(long)]
        restore_alert_ms: Option<u64>,
        /// Give up waiting for the secondary after this many seconds (at least 1).
        #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
        timeout: u64,
    },
    /// Remove the secondary from the configuration: its copy and restore jobs stop; its copy
    /// and every file stay (chat failover, step 1).
    RemoveSecondary {
        /// The database, as `tandem status` names it.
        #[arg(long)]
        db: String,
    },
    /// Copy now, to the secondary, every log backup on the share it has not copied (chat
    /// failover, step 2). Needs only the share and the secondary.
    Copy {
        /// The database, as `tandem status` names it.
        #[arg(long)]
        db: String,
        /// The secondary (default: the node the topology places DB's backup copy on).
        #[arg(long)]
        instance: Option<String>,
    },
    /// Apply now every copied log backup not applied yet, in LSN order, checked as one chain
    /// first; print the last LSN applied and the commit time of its record: the data-loss
    /// point of a failover (chat failover, step 3). A missing or damaged file refuses it, named.
    Restore {
        /// The database, as `tandem status` names it.
        #[arg(long)]
        db: String,
        /// The secondary (default: the node the topology places DB's backup copy on).
        #[arg(long)]
        instance: Option<String>,
    },
    /// The monitor: each job's last file, LSN and age, the secondary's lag, the alerts.
    Status {
        /// The database, as `tandem status` names it.
        #[arg(long)]
        db: String,
    },
}

pub fn run(d: &Deployment, cmd: LogShippingCommand, out: &Output) -> anyhow::Result<()> {
    match cmd {
        LogShippingCommand::Configure {
            db,
            secondary,
            backup_interval_ms,
            copy_interval_ms,
            full_backup_interval_ms,
            retention_ms,
            backup_alert_ms,
            restore_alert_ms,
            timeout,
        } => configure(
            d,
            &db,
            &secondary,
            json!({
                "secondary": secondary,
                "backup_interval_ms": backup_interval_ms,
                "copy_interval_ms": copy_interval_ms,
                "full_backup_interval_ms": full_backup_interval_ms,
                "retention_ms": retention_ms,
                "backup_alert_ms": backup_alert_ms,
                "restore_alert_ms": restore_alert_ms,
            }),
            timeout,
            out,
        ),
        LogShippingCommand::RemoveSecondary { db } => remove_secondary(d, &db, out),
        LogShippingCommand::Copy { db, instance } => copy(d, &db, instance.as_deref(), out),
        LogShippingCommand::Restore { db, instance } => restore(d, &db, instance.as_deref(), out),
        LogShippingCommand::Status { db } => status(d, &db, out),
    }
}

/// The node the topology places `db`'s backup copy on.
fn topology_secondary(d: &Deployment, db: &str) -> Option<tandem_topology::Node> {
    d.topology
        .nodes
        .iter()
        .find(|n| {
            d.topology
                .databases_on(&n.name)
                .iter()
                .any(|p| p.database == db && p.role == PlacementRole::Backup)
        })
        .cloned()
}

/// The secondary a step runs on: `--instance`, else the topology's backup copy.
fn secondary(
    d: &Deployment,
    db: &str,
    instance: Option<&str>,
) -> anyhow::Result<tandem_topology::Node> {
    known_database(d, db)?;
    match instance {
        Some(name) => db_node(d, name),
        None => topology_secondary(d, db).with_context(|| {
            format!("the topology places no backup copy of {db}: it is not log-shipped")
        }),
    }
}

/// The monitor, from the first db node that answers (the topology's secondary first: it is
/// in the site that is left after a disaster).
async fn monitor(d: &Deployment, db: &str) -> anyhow::Result<(String, Monitor)> {
    let client = d.client();
    let mut nodes: Vec<tandem_topology::Node> = topology_secondary(d, db).into_iter().collect();
    for n in d.topology.nodes_with(tandem_topology::Role::Db) {
        if !nodes.iter().any(|x| x.name == n.name) {
            nodes.push(n.clone());
        }
    }
    let path = format!("/internal/v1/log-shipping/{db}/status");
    let answers = futures_util::future::join_all(
        nodes
            .iter()
            .map(|n| client.json::<Monitor>(&n.address, Method::GET, &path, None, STATUS_TIMEOUT)),
    )
    .await;
    let mut errors = Vec::new();
    for (n, a) in nodes.iter().zip(answers) {
        match a {
            Ok(mut m) => {
                live_primary(d, db, &mut m).await;
                return Ok((n.name.clone(), m));
            }
            Err(tandem_node::ClientError::Api { body, .. }) => bail!("{}", body.message),
            Err(e) => errors.push(format!("{}: {e}", n.name)),
        }
    }
    bail!("no db node answers: {}", errors.join("; "))
}

/// The monitor is read from the share, where the backup job writes the primary's position
/// after each round: a round that cannot write there (a full share) leaves an old position, and
/// the lag showed 0 while the secondary fell behind by tens of thousands of records. The
/// primary, when it answers, says where it is: the lag is counted from that, with an alert.
async fn live_primary(d: &Deployment, db: &str, m: &mut Monitor) {
    let Some(p) = m.primary.as_mut() else { return };
    let Some(node) = d.topology.node(&p.node) else {
        return;
    };
    let Ok(live) = d
        .client()
        .copy_role(&node.address, db, STATUS_TIMEOUT)
        .await
    else {
        return;
    };
    // Written once a round: behind the primary between two rounds is the normal case (it
    // raised a false alert under any load), an old position is not.
    let age_ms = m.now_ms.saturating_sub(p.updated_ms).max(0) as u64;
    let stale_ms = m
        .config
        .as_ref()
        .map_or(0, |c| 3 * c.backup_interval_ms)
        .max(3_000);
    if live.role != "primary" || live.epoch != p.epoch || live.lsn <= p.lsn || age_ms < stale_ms {
        return;
    }
    m.alerts.push(format!(
        "the share holds {}'s position at LSN {} (written {:.1} s ago); it is at LSN {} now: \
         the backup job cannot write to the share",
        p.node,
        p.lsn,
        age_ms as f64 / 1000.0,
        live.lsn
    ));
    (p.lsn, p.last_time_ms) = (live.lsn, live.last_time_ms);
    if let (Some(records), Some(s)) = (m.lag_records.as_mut(), m.secondary.as_ref()) {
        *records = live.lsn.saturating_sub(s.lsn);
        m.lag_ms = Some((live.last_time_ms - s.last_time_ms).max(0) as u64);
    }
}

#[derive(Serialize)]
struct ConfigureReport {
    #[serde(flatten)]
    configured: Configured,
    applied_lsn: u64,
    seconds: f64,
}

fn configure(
    d: &Deployment,
    db: &str,
    secondary: &str,
    body: Value,
    timeout: u64,
    out: &Output,
) -> anyhow::Result<()> {
    known_database(d, db)?;
    let s = db_node(d, secondary)?;
    let client = d.client();
    let rt = runtime()?;
    let started = Instant::now();
    let configured: Configured = rt.block_on(async {
        let (name, address) = d.find_primary(db).await?;
        client
            .json::<Configured>(
                &address,
                Method::PUT,
                &format!("/internal/v1/log-shipping/{db}"),
                Some(&body),
                STEP_TIMEOUT,
            )
            .await
            .with_context(|| format!("configuring log shipping of {db} on {name}"))
    })?;
    out.progress(&format!(
        "{db}: primary {}; full backup {} (LSN {}) on the share; {} seeds its copy from it",
        configured.primary, configured.seed, configured.lsn, s.name
    ));
    let deadline = started + Duration::from_secs(timeout);
    let path = format!("/internal/v1/log-shipping/{db}/status");
    let mut last = String::new();
    loop {
        let m = rt.block_on(client.json::<Monitor>(
            &s.address,
            Method::GET,
            &path,
            None,
            STATUS_TIMEOUT,
        ));
        let (line, done, applied) = match &m {
            Ok(m) => match &m.secondary {
                Some(p) if p.node == s.name => {
                    // Another configure since this one (two at once) put its own seed on the
                    // share: the secondary seeds from that one, and this one waits for it
                    // (it waited for its own, which never came, until its deadline).
                    let seed = m
                        .config
                        .as_ref()
                        .and_then(|c| c.seed.as_deref())
                        .unwrap_or(configured.seed.as_str());
                    let seeded = p.seed.as_deref() == Some(seed);
                    let error = p.restore.error.clone().or(p.copy.error.clone());
                    let line = match (&error, seeded) {
                        (Some(e), _) => format!("{}: {e}", s.name),
                        (None, false) => format!("{}: seeding", s.name),
                        (None, true) => format!(
                            "{}: {} at LSN {}",
                            s.name,
                            p.role.as_deref().unwrap_or("?"),
                            p.lsn
                        ),
                    };
                    let applying = seeded
                        && error.is_none()
                        && p.role.as_deref() == Some("restoring")
                        && p.lsn >= configured.lsn;
                    (line, applying, p.lsn)
                }
                _ => (format!("{}: waiting for its first round", s.name), false, 0),
            },
            Err(e) => (format!("{}: {e}", s.name), false, 0),
        };
        if line != last {
            out.progress(&line);
            last = line;
        }
        if done {
            let report = ConfigureReport {
                configured,
                applied_lsn: applied,
                seconds: started.elapsed().as_secs_f64(),
            };
            return out.emit(&report, || {
                format!(
                    "log shipping of {db}: {} → {}, every {} ms; {} seeded from {} and applying (LSN {}), {:.1} s\n",
                    report.configured.primary,
                    report.configured.secondary,
                    report.configured.config.backup_interval_ms,
                    report.configured.secondary,
                    report.configured.seed,
                    report.applied_lsn,
                    report.seconds
                )
            });
        }
        if Instant::now() > deadline {
            bail!(
                "the secondary {} is not applying log backups of {db} after {timeout} s: {last}",
                s.name
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn remove_secondary(d: &Deployment, db: &str, out: &Output) -> anyhow::Result<()> {
    known_database(d, db)?;
    let client = d.client();
    let rt = runtime()?;
    // Any db node can: the configuration is on the share. The secondary first (its jobs stop
    // once the command returns), then the others.
    let mut nodes: Vec<tandem_topology::Node> = topology_secondary(d, db).into_iter().collect();
    if let Ok((_, m)) = rt.block_on(monitor(d, db))
        && let Some(s) = m.config.as_ref().and_then(|c| c.secondary.clone())
        && let Some(n) = d.topology.node(&s)
    {
        nodes.retain(|x| x.name != n.name);
        nodes.insert(0, n.clone());
    }
    for n in d.topology.nodes_with(tandem_topology::Role::Db) {
        if !nodes.iter().any(|x| x.name == n.name) {
            nodes.push(n.clone());
        }
    }
    let mut errors = Vec::new();
    for n in nodes {
        let r = rt.block_on(client.json::<Value>(
            &n.address,
            Method::DELETE,
            &format!("/internal/v1/log-shipping/{db}/secondary"),
            None,
            Duration::from_secs(30),
        ));
        match r {
            Ok(v) => {
                return out.emit(&v, || match v["removed"].as_str() {
                    Some(s) => format!(
                        "log shipping of {db}: secondary {s} removed (its jobs stop; its copy and the files stay)\n"
                    ),
                    None => format!("log shipping of {db}: no secondary configured (nothing to remove)\n"),
                });
            }
            // Busy (its jobs' round holds the database): another node may do it.
            Err(tandem_node::ClientError::Api { status: 503, body }) => {
                errors.push(format!("{}: {}", n.name, body.message));
            }
            Err(tandem_node::ClientError::Api { body, .. }) => bail!("{}", body.message),
            Err(e) => errors.push(format!("{}: {e}", n.name)),
        }
    }
    bail!("no db node could remove it: {}", errors.join("; "))
}

fn copy(d: &Deployment, db: &str, instance: Option<&str>, out: &Output) -> anyhow::Result<()> {
    let s = secondary(d, db, instance)?;
    let client = d.client();
    let report: Copied = runtime()?
        .block_on(client.json::<Copied>(
            &s.address,
            Method::POST,
            &format!("/internal/v1/log-shipping/{db}/copy"),
            None,
            STEP_TIMEOUT,
        ))
        .with_context(|| s.name.clone())?;
    out.emit(&report, || {
        let mut s = format!(
            "{db} on {}: {} log backups copied; copied up to LSN {} (the share holds up to LSN {})\n",
            report.node,
            report.files_copied.len(),
            report.copied_lsn,
            report.share_lsn
        );
        for refused in &report.files_refused {
            s.push_str(&format!("  {refused}\n"));
        }
        s
    })
}

fn restore(d: &Deployment, db: &str, instance: Option<&str>, out: &Output) -> anyhow::Result<()> {
    let s = secondary(d, db, instance)?;
    let client = d.client();
    let report: Restored = runtime()?
        .block_on(client.json::<Restored>(
            &s.address,
            Method::POST,
            &format!("/internal/v1/log-shipping/{db}/restore"),
            None,
            STEP_TIMEOUT,
        ))
        .with_context(|| s.name.clone())?;
    out.emit(&report, || {
        let mut line = format!(
            "{db} on {}: {} log backups applied ({} records); last LSN {}, committed {} — what a failover now recovers up to\n",
            report.node,
            report.files_applied.len(),
            count(report.records_applied as f64),
            report.lsn,
            time(report.last_time_ms)
        );
        if report.files_left > 0 {
            line.push_str(&format!(
                "{} copied log backups left: run the step again\n",
                report.files_left
            ));
        }
        if let Some(why) = &report.stopped {
            line.push_str(&format!(
                "stopped at LSN {}: {why}; what comes after it cannot be applied\n",
                report.lsn
            ));
        }
        line
    })
}

fn ago(ms: Option<i64>, now: i64) -> String {
    match ms {
        Some(t) if t > 0 => format!("{:.1} s", (now - t).max(0) as f64 / 1000.0),
        _ => "-".into(),
    }
}

fn job_line(job: &str, node: &str, j: &JobStatus, now: i64) -> String {
    format!(
        "{:<8} {:<9} {:<42} {:<9} {:<8} {:<8} {}\n",
        job,
        node,
        j.last_file.as_deref().unwrap_or("-"),
        j.last_lsn.map(|l| l.to_string()).unwrap_or("-".into()),
        ago(j.last_file_ms, now),
        ago(j.ran_ms, now),
        j.error.as_deref().unwrap_or("ok")
    )
}

fn status(d: &Deployment, db: &str, out: &Output) -> anyhow::Result<()> {
    known_database(d, db)?;
    let (_, m) = runtime()?.block_on(monitor(d, db))?;
    out.emit(&m, || human(&m))
}

/// A duration for people: seconds, minutes or hours.
fn span(ms: u64) -> String {
    match ms {
        0..120_000 => format!("{:.1} s", ms as f64 / 1000.0),
        120_000..7_200_000 => format!("{:.0} min", ms as f64 / 60_000.0),
        _ => format!("{:.1} h", ms as f64 / 3_600_000.0),
    }
}

fn human(m: &Monitor) -> String {
    let now = m.now_ms;
    let Some(c) = &m.config else {
        return format!(
            "log shipping of {}: not configured ({} holds no configuration)\n",
            m.database,
            m.share.display()
        );
    };
    let window = if c.retention_ms == 0 {
        "no point-in-time window: only the chain is kept".to_string()
    } else {
        format!(
            "what a restore to any moment of the last {} needs is kept (older parts in {}/)",
            span(c.retention_ms),
            tandem_node::log_shipping::ARCHIVE_DIR
        )
    };
    let mut s = format!(
        "log shipping of {}: from site {} to {}, log backups every {} (copy and restore every {}), full backups every {}; {window}\n",
        m.database,
        c.primary_site,
        c.secondary.as_deref().unwrap_or("no secondary (removed)"),
        span(c.backup_interval_ms),
        span(c.copy_interval_ms),
        span(c.full_backup_interval_ms)
    );
    s.push_str(&format!(
        "share    {}: full backups {} (newest {}), log backups {} (newest {})\n\n",
        m.share.display(),
        m.full_backups,
        m.newest_full
            .as_ref()
            .map(|f| format!("{} at LSN {}", f.name, f.lsn))
            .unwrap_or("-".into()),
        m.log_backups,
        m.newest_log
            .as_ref()
            .map(|f| format!("LSN {}", f.lsn))
            .unwrap_or("-".into()),
    ));
    s.push_str("JOB      NODE      LAST FILE                                  LSN       AGE      RAN      STATE\n");
    if let Some(p) = &m.primary {
        s.push_str(&job_line("backup", &p.node, &p.backup, now));
    }
    if let Some(p) = &m.secondary {
        s.push_str(&job_line("copy", &p.node, &p.copy, now));
        s.push_str(&job_line("restore", &p.node, &p.restore, now));
    }
    s.push('\n');
    if let Some(p) = &m.primary {
        s.push_str(&format!(
            "primary    {:<9} LSN {} (epoch {}), last commit {}\n",
            p.node,
            p.lsn,
            p.epoch,
            time(p.last_time_ms)
        ));
    }
    if let Some(p) = &m.secondary {
        s.push_str(&format!(
            "secondary  {:<9} LSN {} ({}, epoch {}), last commit {}\n",
            p.node,
            p.lsn,
            p.role.as_deref().unwrap_or("no copy"),
            p.epoch.map(|e| e.to_string()).unwrap_or("-".into()),
            time(p.last_time_ms)
        ));
    }
    if let (Some(r), Some(ms)) = (m.lag_records, m.lag_ms) {
        s.push_str(&format!(
            "lag        {} records, {:.1} s\n",
            count(r as f64),
            ms as f64 / 1000.0
        ));
    }
    if m.alerts.is_empty() {
        s.push_str("alerts     none\n");
    } else {
        for a in &m.alerts {
            s.push_str(&format!("ALERT      {a}\n"));
        }
    }
    s
}
