//! `tandem db mirror install|remove|failover`: the seed's Install-CsMirrorDatabase and its
//! companions, against the running nodes. Each asks the nodes to change their mirroring links;
//! the nodes do the work (seeding, streaming, the witness's epochs).

use crate::db_online::db_node;
use crate::deployment::{Deployment, runtime};
use crate::output::Output;
use anyhow::{Context, bail};
use clap::Subcommand;
use serde::Serialize;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tandem_node::{Method, NodeStatus};

const STATUS_TIMEOUT: Duration = Duration::from_millis(1_500);
/// How long an install waits on a mirror node that nothing answers at any more (its process or
/// host gone: connections refused) before it gives up, rather than wait out its --timeout.
const MIRROR_LOST_MS_MAX: u64 = 3_000;

#[derive(Subcommand)]
pub enum MirrorCommand {
    /// Seed a mirror of DB on --mirror from its primary on --primary, then mirror it.
    Install {
        /// The database, as `tandem status` names it.
        #[arg(long)]
        db: String,
        /// The db node holding its primary copy.
        #[arg(long)]
        primary: String,
        /// The db node that gets the mirror copy.
        #[arg(long)]
        mirror: String,
        /// `sync`: a commit is acknowledged once the mirror has it (automatic failover with a
        /// witness); `async`: the mirror follows, acknowledgments do not wait.
        #[arg(long, default_value = "sync")]
        mode: String,
        /// Give up waiting for the mirror to be synchronized after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Stop mirroring DB between NODE and its partner. The primary serves on alone; a mirror
    /// copy stays on its node, `restoring`.
    Remove {
        /// The database, as `tandem status` names it.
        #[arg(long)]
        db: String,
        /// Either node of the partnership.
        #[arg(long, value_name = "NODE")]
        instance: String,
    },
    /// Planned failover: the mirror takes over once it has every record (no loss); the old
    /// primary becomes its mirror.
    Failover {
        /// The database, as `tandem status` names it.
        #[arg(long)]
        db: String,
    },
}

pub fn run(d: &Deployment, cmd: MirrorCommand, out: &Output) -> anyhow::Result<()> {
    let (MirrorCommand::Install { db, .. }
    | MirrorCommand::Remove { db, .. }
    | MirrorCommand::Failover { db }) = &cmd;
    crate::db_online::known_database(d, db)?;
    match cmd {
        MirrorCommand::Install {
            db,
            primary,
            mirror,
            mode,
            timeout,
        } => install(d, &db, &primary, &mirror, &mode, timeout, out),
        MirrorCommand::Remove { db, instance } => remove(d, &db, &instance, out),
        MirrorCommand::Failover { db } => failover(d, &db, out),
    }
}

fn link_of(s: &NodeStatus, db: &str) -> Option<tandem_node::mirroring::LinkStatus> {
    s.databases
        .iter()
        .find(|c| c.database == db)
        .and_then(|c| c.mirroring.clone())
}

fn role_of(s: &NodeStatus, db: &str) -> Option<String> {
    s.databases
        .iter()
        .find(|c| c.database == db)
        .and_then(|c| c.role.clone())
}

#[derive(Serialize)]
struct Installed {
    database: String,
    primary: String,
    mirror: String,
    mode: String,
    state: String,
    epoch: Option<u64>,
    lsn: Option<u64>,
    seconds: f64,
}

fn install(
    d: &Deployment,
    db: &str,
    primary: &str,
    mirror: &str,
    mode: &str,
    timeout: u64,
    out: &Output,
) -> anyhow::Result<()> {
    tandem_node::mirroring::Mode::parse(mode).map_err(anyhow::Error::msg)?;
    let (p, m) = (db_node(d, primary)?, db_node(d, mirror)?);
    if p.name == m.name {
        bail!("the mirror must be another node than the primary");
    }
    if p.site != m.site {
        bail!(
            "{} is in site {} and {} in site {}: a mirror is in its primary's site",
            p.name,
            p.site,
            m.name,
            m.site
        );
    }
    let client = d.client();
    let rt = runtime()?;
    let started = Instant::now();
    rt.block_on(async {
        let role = client
            .copy_role(&p.address, db, STATUS_TIMEOUT)
            .await
            .with_context(|| format!("{db} on {}", p.name))?;
        if role.role != "primary" {
            bail!(
                "{db} on {} is {} (epoch {}): install the mirror on the copy that is primary",
                p.name,
                role.role,
                role.epoch
            );
        }
        // The mirror's node must answer before the primary gets its link: a link on the
        // primary alone leaves it serving unprotected, with a mirror that never comes.
        if !client.healthy(&m.address, STATUS_TIMEOUT).await {
            bail!(
                "{} does not answer at {}: {}, and run the install again; nothing was changed",
                m.name,
                m.address,
                d.revive_advice(&m.name)
            );
        }
        for (node, partner) in [(&p, &m), (&m, &p)] {
            client
                .json::<Value>(
                    &node.address,
                    Method::PUT,
                    &format!("/internal/v1/mirroring/{db}"),
                    Some(&json!({ "partner": partner.name, "mode": mode })),
                    STATUS_TIMEOUT,
                )
                .await
                .with_context(|| format!("mirroring {db} on {}", node.name))?;
        }
        out.progress(&format!(
            "mirroring of {db} installed on {} and {}; seeding and catching up",
            p.name, m.name
        ));
        Ok(())
    })?;
    let want_primary = if mode == "sync" {
        "synchronized"
    } else {
        "async: mirror following"
    };
    let mut last = String::new();
    let deadline = started + Duration::from_secs(timeout);
    let mut mirror_lost_since: Option<Instant> = None;
    loop {
        let (ps, ms) = rt.block_on(async {
            tokio::join!(
                client.status(&p.address, STATUS_TIMEOUT),
                client.status(&m.address, STATUS_TIMEOUT)
            )
        });
        let pl = ps.as_ref().ok().and_then(|s| link_of(s, db));
        let ml = ms.as_ref().ok().and_then(|s| link_of(s, db));
        let state = format!(
            "primary {}: {}; mirror {}: {}",
            p.name,
            pl.as_ref()
                .map(|l| l.state.as_str())
                .unwrap_or("unreachable"),
            m.name,
            ml.as_ref()
                .map(|l| l.state.as_str())
                .unwrap_or("unreachable")
        );
        if state != last {
            out.progress(&state);
            last = state;
        }
        let done = pl.as_ref().is_some_and(|l| l.state == want_primary)
            && ml
                .as_ref()
                .is_some_and(|l| l.state == "mirror: synchronized");
        if done {
            let s = ps.ok();
            let copy = s
                .as_ref()
                .and_then(|s| s.databases.iter().find(|c| c.database == db));
            let report = Installed {
                database: db.into(),
                primary: p.name.clone(),
                mirror: m.name.clone(),
                mode: mode.into(),
                state: want_primary.into(),
                epoch: copy.and_then(|c| c.epoch),
                lsn: copy.and_then(|c| c.lsn),
                seconds: started.elapsed().as_secs_f64(),
            };
            return out.emit(&report, || {
                format!(
                    "{db}: {} mirrored on {} ({mode}), {} at LSN {} after {:.1} s\n",
                    report.primary,
                    report.mirror,
                    report.state,
                    report.lsn.unwrap_or(0),
                    report.seconds
                )
            });
        }
        // A mirror whose node is gone will not synchronize: said within seconds (the chat
        // failover, which waits on this, serves without it then), not after --timeout.
        let lost = matches!(
            ms,
            Err(tandem_node::ClientError::Unreachable { sent: false, .. })
        );
        let since = match (lost, mirror_lost_since) {
            (false, _) => None,
            (true, None) => Some(Instant::now()),
            (true, since) => since,
        };
        mirror_lost_since = since;
        if since.is_some_and(|t| t.elapsed() >= Duration::from_millis(MIRROR_LOST_MS_MAX)) {
            bail!(
                "{} is unreachable (nothing accepts connections at {} for {} s): the mirror of \
                 {db} is lost, {} serves without it ({last}); {}, and run the install again",
                m.name,
                m.address,
                MIRROR_LOST_MS_MAX / 1000,
                p.name,
                d.revive_advice(&m.name)
            );
        }
        if Instant::now() > deadline {
            bail!("the mirror of {db} is not synchronized after {timeout} s: {last}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn remove(d: &Deployment, db: &str, instance: &str, out: &Output) -> anyhow::Result<()> {
    let n = db_node(d, instance)?;
    let client = d.client();
    let rt = runtime()?;
    let status = rt
        .block_on(client.status(&n.address, STATUS_TIMEOUT))
        .with_context(|| n.name.clone())?;
    let link = link_of(&status, db).with_context(|| format!("{} does not mirror {db}", n.name))?;
    let partner = db_node(d, &link.partner)?;
    let mut removed = Vec::new();
    let mut errors = Vec::new();
    let mut missed = Vec::new();
    for node in [&n, &partner] {
        let role = if node.name == n.name {
            role_of(&status, db)
        } else {
            None
        };
        match rt.block_on(client.json::<Value>(
            &node.address,
            Method::DELETE,
            &format!("/internal/v1/mirroring/{db}"),
            None,
            Duration::from_secs(10),
        )) {
            Ok(v) => removed.push(json!({
                "node": node.name,
                "role": v["role"].as_str().map(str::to_string).or(role),
            })),
            Err(e) => {
                errors.push(format!("{}: {e}", node.name));
                missed.push(node.name.clone());
            }
        }
    }
    if !errors.is_empty() {
        // Asked again of the same node, the command would find no link there any more: the
        // node still to do is the one to name (the advice said "run the command again").
        let again: Vec<String> = missed
            .iter()
            .map(|m| format!("`tandem db mirror remove --db {db} --instance {m}`"))
            .collect();
        bail!(
            "mirroring of {db} removed on {} but not on: {} (run {} once it answers)",
            if removed.is_empty() {
                "no node".to_string()
            } else {
                removed
                    .iter()
                    .map(|r| r["node"].as_str().unwrap_or("").to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            errors.join("; "),
            again.join(" and ")
        );
    }
    let report = json!({ "database": db, "removed": removed });
    out.emit(&report, || {
        format!(
            "mirroring of {db} removed between {} and {}\n",
            n.name, partner.name
        )
    })
}

/// The node whose copy of `db` is primary (highest epoch) among every db node.
async fn find_primary(d: &Deployment, db: &str) -> anyhow::Result<tandem_topology::Node> {
    let roles = d.copy_roles(db, STATUS_TIMEOUT).await;
    let primary = roles
        .iter()
        .filter(|r| r.role == "primary")
        .max_by_key(|r| r.epoch)
        .and_then(|r| d.topology.node(&r.node));
    if let Some(p) = primary {
        return Ok(p.clone());
    }
    // A planned failover needs the primary. Without it, what to do depends on why the mirror
    // has not taken over by itself — what it was last told (until session 32 the advice was
    // the same in every case, and wrong in most).
    let Some(m) = roles.iter().find(|r| r.role == "mirror") else {
        bail!("no node answers as primary of {db}");
    };
    let link = match d.topology.node(&m.node) {
        Some(n) => d
            .client()
            .status(&n.address, STATUS_TIMEOUT)
            .await
            .ok()
            .and_then(|s| s.databases.into_iter().find(|c| c.database == db))
            .and_then(|c| c.mirroring),
        None => None,
    };
    let partner = link.as_ref().map(|l| l.partner.clone());
    let told = link
        .as_ref()
        .and_then(|l| l.last_error.clone())
        .unwrap_or_default();
    let (node, lsn) = (&m.node, m.lsn);
    let forced = format!(
        "`tandem db mirror remove --db {db} --instance {node}` then `tandem db recover --db {db} \
         --instance {node}` bring it online (forced service: whatever the primary acknowledged \
         past LSN {lsn}, if it ran unmirrored, is lost)"
    );
    let back = |p: &str| format!("bring {p} back ({})", d.revive_advice(p));
    // The witness's own record says whether the mirror was synchronized when the primary went:
    // the mirror's last error alternates between the witness's refusal and its pulls' failures,
    // and the advice read from it changed from one moment to the next.
    let unsynchronized = match d
        .topology
        .node(&m.node)
        .and_then(|n| d.topology.witnesses.get(&n.site))
        .and_then(|w| d.topology.node(w))
    {
        Some(w) => d
            .client()
            .witness(
                &w.address,
                &tandem_node::witness::WitnessRequest::Get {
                    database: db.to_string(),
                },
            )
            .await
            .ok()
            .and_then(|a| a.record)
            .is_some_and(|r| !r.synchronized && r.primary != m.node),
        None => false,
    };
    if unsynchronized || told.contains("not synchronized") {
        let primary = partner.as_deref().unwrap_or("the primary");
        bail!(
            "no node answers as primary of {db}: a planned failover needs it. Its mirror on \
             {node} (LSN {lsn}) is not synchronized — it may lack records the primary \
             acknowledged alone — so it does not take over by itself: {}, and it serves again \
             with everything; only if it is lost for good, {forced}",
            back(primary)
        );
    }
    if told.starts_with("witness:") {
        bail!(
            "no node answers as primary of {db}: a planned failover needs it. Its mirror on \
             {node} (LSN {lsn}) cannot reach its witness ({told}), which must agree before it \
             takes over: bring the witness back; with the witness lost too, {forced}"
        );
    }
    bail!(
        "no node answers as primary of {db}: a planned failover needs it. Its mirror on {node} \
         (LSN {lsn}) takes over by itself once the witness finds the primary silent too{}; \
         run `tandem status` in a moment",
        if told.is_empty() {
            String::new()
        } else {
            format!(" (last told: {told})")
        }
    )
}

fn failover(d: &Deployment, db: &str, out: &Output) -> anyhow::Result<()> {
    let client = d.client();
    let rt = runtime()?;
    let started = Instant::now();
    let report: Value = rt.block_on(async {
        let p = find_primary(d, db).await?;
        out.progress(&format!(
            "{db}: primary {}; waiting for its mirror to have every record",
            p.name
        ));
        client
            .json::<Value>(
                &p.address,
                Method::POST,
                &format!("/internal/v1/mirroring/{db}/failover"),
                None,
                Duration::from_secs(60),
            )
            .await
            .with_context(|| format!("failover of {db} on {}", p.name))
    })?;
    let mut report = report;
    report["seconds"] = json!(started.elapsed().as_secs_f64());
    out.emit(&report, || {
        format!(
            "{db}: {} is primary (epoch {}), {} its mirror; nothing lost (LSN {}), {:.1} s\n",
            report["new_primary"].as_str().unwrap_or("?"),
            report["epoch"],
            report["old_primary"].as_str().unwrap_or("?"),
            report["lsn"],
            report["seconds"].as_f64().unwrap_or(0.0)
        )
    })
}
