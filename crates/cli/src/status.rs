//! `tandem status`: every node (up or down, roles, site, version), every database copy (node,
//! role, epoch, LSN), the CMS and the pool and chat pool states. Nodes are asked in parallel,
//! each with a deadline, so a lost site costs one deadline, not one per node.

use crate::deployment::{Deployment, runtime};
use crate::output::Output;
use serde::Serialize;
use std::time::Duration;
use tandem_node::NodeStatus;
use tandem_pool::cms::CmsSnapshot;

/// Deadline for each node's answer (all nodes are asked at once).
const NODE_TIMEOUT_MS: u64 = 1_200;

#[derive(Serialize)]
struct NodeLine {
    node: String,
    site: String,
    roles: Vec<String>,
    address: String,
    up: bool,
    /// Not answering while its process is alive.
    silent: bool,
    version: Option<String>,
    pid: Option<u32>,
    uptime_ms: Option<u64>,
    error: Option<String>,
    warnings: Vec<String>,
}

#[derive(Serialize)]
struct CopyLine {
    database: String,
    node: String,
    placement: String,
    state: String,
    role: Option<String>,
    epoch: Option<u64>,
    lsn: Option<u64>,
    /// The copy's mirroring: partner, state (synchronized, unprotected, …), lag, witness.
    mirroring: Option<tandem_node::mirroring::LinkStatus>,
    /// The log-shipping jobs that run on this copy: backup (primary), copy and restore
    /// (secondary).
    log_shipping: Option<tandem_node::log_shipping::CopyJobs>,
    /// The copy's followers (the chat's search index) and the LSN each has reached.
    followers: std::collections::BTreeMap<String, u64>,
    warnings: Vec<String>,
    /// Why the copy refuses new writes for now, if it does (a planned failover's pause).
    paused: Option<String>,
}

#[derive(Serialize)]
struct CmsLine {
    /// The CMS copy that writes now; none when no copy answers as primary.
    master: Option<String>,
    reachable: bool,
    /// Where the configuration below was read: the master, or the freshest node snapshot.
    source: String,
    snapshot: Option<CmsSnapshot>,
}

#[derive(Serialize)]
struct Report {
    deployment: String,
    nodes: Vec<NodeLine>,
    databases: Vec<CopyLine>,
    cms: CmsLine,
}

pub fn run(d: &Deployment, out: &Output) -> anyhow::Result<()> {
    let client = d.client();
    let timeout = Duration::from_millis(NODE_TIMEOUT_MS);
    let rt = runtime()?;
    let (answers, master, snapshot) = rt.block_on(async {
        let asks = d.topology.nodes.iter().map(|n| {
            let c = client.clone();
            let addr = n.address.clone();
            async move { c.status(&addr, timeout).await }
        });
        // The CMS copy that writes now (a mirror failover or a CMS failover moves it).
        let snap = async {
            let master = d.locate(tandem_topology::DATABASE_CMS).await?;
            let snap = client
                .cms_snapshot(&master.address, timeout)
                .await
                .map_err(|e| e.to_string());
            Ok::<_, String>((master, snap))
        };
        let (answers, found) = tokio::join!(futures_util::future::join_all(asks), snap);
        match found {
            Ok((master, snap)) => (answers, Some(master.name), snap),
            Err(why) => (answers, None, Err(why)),
        }
    });
    let mut nodes = Vec::new();
    let mut databases = Vec::new();
    let mut statuses: Vec<&NodeStatus> = Vec::new();
    for (n, answer) in d.topology.nodes.iter().zip(&answers) {
        let roles = n.roles.iter().map(|r| r.as_str().to_string()).collect();
        match answer {
            Ok(s) => {
                statuses.push(s);
                nodes.push(NodeLine {
                    node: n.name.clone(),
                    site: n.site.clone(),
                    roles,
                    address: n.address.clone(),
                    up: true,
                    silent: false,
                    version: Some(s.version.clone()),
                    pid: Some(s.pid),
                    uptime_ms: Some(s.uptime_ms),
                    error: None,
                    warnings: s.warnings.clone(),
                });
                for db in &s.databases {
                    databases.push(CopyLine {
                        database: db.database.clone(),
                        node: n.name.clone(),
                        placement: db.placement.clone(),
                        state: if db.open { "open" } else { "absent" }.into(),
                        role: db.role.clone(),
                        epoch: db.epoch,
                        lsn: db.lsn,
                        mirroring: db.mirroring.clone(),
                        log_shipping: db.log_shipping.clone(),
                        followers: db.followers.clone(),
                        warnings: db.warnings.clone(),
                        paused: db.paused.clone(),
                    });
                }
            }
            Err(e) => {
                // Its process alive (started here by `tandem up`): hung or overloaded, not down.
                let pid = d.running_pid(&n.name);
                nodes.push(NodeLine {
                    node: n.name.clone(),
                    site: n.site.clone(),
                    roles,
                    address: n.address.clone(),
                    up: false,
                    silent: pid.is_some(),
                    version: None,
                    pid: pid.map(|p| p as u32),
                    uptime_ms: None,
                    error: Some(match pid {
                        Some(p) => format!("{e}; its process, pid {p}, is alive"),
                        None => e.to_string(),
                    }),
                    // The site's witness silent: nothing there fails over by itself, and
                    // nothing else in the table says so.
                    warnings: d
                        .topology
                        .witnesses
                        .iter()
                        .filter(|(_, w)| **w == n.name)
                        .map(|(site, _)| {
                            format!(
                                "the witness of site {site} does not answer: no mirror in {site} \
                                 takes over from a lost primary by itself meanwhile"
                            )
                        })
                        .collect(),
                });
                for p in d.topology.databases_on(&n.name) {
                    databases.push(CopyLine {
                        database: p.database.clone(),
                        node: n.name.clone(),
                        placement: p.role.as_str().to_string(),
                        state: "node down".into(),
                        role: None,
                        epoch: None,
                        lsn: None,
                        mirroring: None,
                        log_shipping: None,
                        followers: Default::default(),
                        warnings: vec![],
                        paused: None,
                    });
                }
            }
        }
    }
    databases.sort_by(|a, b| (&a.database, &a.node).cmp(&(&b.database, &b.node)));
    let cms = match snapshot {
        Ok(s) => CmsLine {
            master: master.clone(),
            reachable: true,
            source: "reachable; the configuration below is its own".into(),
            snapshot: Some(s),
        },
        Err(e) => {
            // The freshest copy a node holds of the CMS tells what the deployment last knew.
            let freshest = statuses
                .iter()
                .filter_map(|s| s.cms.as_ref().map(|c| (c.lsn, s.node.clone())))
                .max();
            CmsLine {
                master: master.clone(),
                reachable: false,
                source: {
                    // No master found: the error already says what each copy answered.
                    let why = match master {
                        Some(_) => format!("unreachable ({e})"),
                        None => e,
                    };
                    match freshest {
                        Some((lsn, node)) => {
                            format!("{why}; node {node} holds a snapshot at LSN {lsn}")
                        }
                        None => format!("{why}; no node holds a snapshot"),
                    }
                },
                snapshot: None,
            }
        }
    };
    let report = Report {
        deployment: d.topology.name.clone(),
        nodes,
        databases,
        cms,
    };
    out.emit(&report, || human(&report))
}

/// One line under a copy: its log-shipping jobs (the monitor is `tandem db log-shipping status`).
/// Mirroring states in which a link's last error is history, not news.
const HEALTHY_LINK: &[&str] = &[
    "synchronized",
    "synchronizing",
    "mirror: synchronized",
    "async: mirror following",
];

fn log_shipping_line(l: &tandem_node::log_shipping::CopyJobs) -> String {
    let now = tandem_node::log_shipping::now_ms();
    let job = |name: &str, j: &tandem_node::log_shipping::JobStatus| match (&j.error, j.last_lsn) {
        (Some(e), _) => format!("{name} failed: {e}"),
        (None, Some(lsn)) => format!(
            "{name} at LSN {lsn} ({:.1} s ago)",
            (now - j.last_file_ms.unwrap_or(now)).max(0) as f64 / 1000.0
        ),
        (None, None) => format!("{name}: nothing yet"),
    };
    let mut parts = Vec::new();
    for (name, j) in [
        ("backup", &l.backup),
        ("copy", &l.copy),
        ("restore", &l.restore),
    ] {
        if let Some(j) = j {
            parts.push(job(name, j));
        }
    }
    if let Some(state) = &l.state {
        parts.push(state.clone());
    }
    format!("    log shipping: {}\n", parts.join("; "))
}

fn human(r: &Report) -> String {
    let mut s = format!(
        "deployment {}\n\nNODE       SITE  STATE  ROLES                    ADDRESS\n",
        r.deployment
    );
    for n in &r.nodes {
        s.push_str(&format!(
            "{:<10} {:<5} {:<6} {:<24} {}{}\n",
            n.node,
            n.site,
            match (n.up, n.silent) {
                (true, _) => "up",
                (false, true) => "silent",
                (false, false) => "down",
            },
            n.roles.join(","),
            n.address,
            n.error
                .as_ref()
                .map(|e| format!("  ({e})"))
                .unwrap_or_default()
        ));
        for w in &n.warnings {
            s.push_str(&format!("    warning: {w}\n"));
        }
    }
    s.push_str(
        "\nDATABASE        NODE       PLACEMENT      STATE      ROLE       EPOCH         LSN       MIRRORING\n",
    );
    for c in &r.databases {
        let mirroring = c
            .mirroring
            .as_ref()
            .map(|m| {
                // A primary whose mirror has not pulled since it started knows no position of
                // it: its "behind" would be its own LSN.
                let primary_side = !m.state.starts_with("mirror");
                let lag = match m.partner_heard_ms {
                    None if primary_side => ", not heard from".to_string(),
                    _ if m.lag_records == 0 => String::new(),
                    Some(ms) if ms >= 5_000 => format!(
                        ", {} behind, last heard from {:.0} s ago",
                        m.lag_records,
                        ms as f64 / 1000.0
                    ),
                    _ => format!(", {} behind", m.lag_records),
                };
                format!("{} with {} ({}{lag})", m.state, m.partner, m.mode)
            })
            .unwrap_or_default();
        s.push_str(&format!(
            "{:<15} {:<10} {:<14} {:<10} {:<10} {:<13} {:<9} {}\n",
            c.database,
            c.node,
            c.placement,
            c.state,
            c.role.as_deref().unwrap_or("-"),
            c.epoch.map(|e| e.to_string()).unwrap_or("-".into()),
            c.lsn.map(|e| e.to_string()).unwrap_or("-".into()),
            mirroring
        ));
        if let Some(m) = &c.mirroring
            && let Some(e) = &m.last_error
            && !HEALTHY_LINK.contains(&m.state.as_str())
        {
            s.push_str(&format!("    mirroring: last error: {e}\n"));
        }
        if let Some(l) = &c.log_shipping {
            s.push_str(&log_shipping_line(l));
        }
        if let Some(why) = &c.paused {
            s.push_str(&format!("    writes paused: {why}\n"));
        }
        for w in &c.warnings {
            s.push_str(&format!("    warning: {w}\n"));
        }
    }
    s.push_str(&match &r.cms.master {
        Some(m) => format!("\nCMS master {m}: {}\n", r.cms.source),
        None => format!("\nCMS: {}\n", r.cms.source),
    });
    if let Some(snap) = &r.cms.snapshot {
        if let Some(chat) = &snap.chat {
            s.push_str(&format!(
                "chat pool  {}, active servers: {}\n",
                chat.state.as_str(),
                if chat.active.is_empty() {
                    "none".to_string()
                } else {
                    chat.active.join(", ")
                }
            ));
        }
        for p in &snap.pools {
            s.push_str(&format!(
                "pool       {:<9} site {:<4} {:<11} served by {}{}\n",
                p.name,
                p.site,
                p.mode.as_str(),
                p.served_by,
                p.pair
                    .as_ref()
                    .map(|x| format!(", paired with {x}"))
                    .unwrap_or_default()
            ));
        }
        s.push_str(&format!("users      {} homed\n", snap.homes.len()));
    }
    s
}
