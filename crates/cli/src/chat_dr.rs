//! `tandem chat failover|failback` (DESIGN.md §4, seed 003): the persistent chat pool moved to
//! the backup site when the primary site is lost, and back once it is rebuilt. Each step is a
//! command of its own (run here as the operator would run it), checked before — skipped when
//! already done — and verified after; see `runbook` for resume and audit.

use crate::deployment::Deployment;
use crate::output::{Output, time};
use crate::runbook::{RunState, Runbook, Step, command};
use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::time::Duration;
use tandem_node::Method;
use tandem_node::log_shipping::{share_ours, share_room};
use tandem_topology::{DATABASE_MGC, Topology};

const TIMEOUT: Duration = Duration::from_millis(1_500);
/// How long a failback waits for the primary site's copy of mgc to open (it is being reseeded).
const COPY_BACK_WAIT: Duration = Duration::from_secs(60);

/// Where the chat pool's databases are placed, from the topology.
struct Places {
    primary: String,
    mirror: Option<String>,
    backup: String,
    backup_mirror: Option<String>,
    /// Chat servers of each site.
    primary_servers: Vec<String>,
    backup_servers: Vec<String>,
    primary_site: String,
}

/// Refuses a failback whose two full backups of mgc (steps 4 and 6: the copy moved back, then
/// the secondary's seed), of a copy whose file holds `file_bytes`, and a fifth more for the
/// log backups meanwhile, do not fit in the `room` left on `share`.
fn room_for_two_full_backups(
    share: &std::path::Path,
    room: u64,
    file_bytes: u64,
    serving: &str,
) -> anyhow::Result<()> {
    let mib = |b: u64| b as f64 / 1048576.0;
    if room < file_bytes * 2 + file_bytes / 5 {
        bail!(
            "the share {} has {:.1} MiB free: the failback writes two full backups of mgc \
             there (steps 4 and 6, about {:.1} MiB each, and log backups meanwhile): make room \
             and run it again; the pool serves from {serving} meanwhile",
            share.display(),
            mib(room),
            mib(file_bytes),
        );
    }
    Ok(())
}

/// Refuses when the primary site's copy of mgc (its primary or its mirror) is a writable
/// primary: a failover then loses what log shipping has not carried yet.
fn healthy_primary_site(d: &Deployment, p: &Places) -> anyhow::Result<()> {
    if let Some((n, r)) = writable_primary_site(d, p) {
        bail!(
            "the primary site {} is healthy ({n} is primary of mgc, epoch {}): a failover would lose what log shipping has not carried yet; pass --force to fail over anyway (a drill: its primary is paused and its last writes shipped first)",
            p.primary_site,
            r.epoch
        );
    }
    Ok(())
}

/// The primary site's copy of mgc (its primary or its mirror) that answers as a writable
/// primary, if one does.
fn writable_primary_site(d: &Deployment, p: &Places) -> Option<(String, tandem_node::CopyRole)> {
    writable_among(d, [Some(&p.primary), p.mirror.as_ref()]).ok()
}

/// The first of `copies` whose mgc answers as a writable primary, or what each one is.
fn writable_among<'a>(
    d: &Deployment,
    copies: impl IntoIterator<Item = Option<&'a String>>,
) -> Result<(String, tandem_node::CopyRole), Vec<String>> {
    // Asked at once: each node of a hung site (it takes the question and does not answer)
    // costs a whole deadline, and asked one after the other they added up at every step.
    let copies: Vec<&String> = copies.into_iter().flatten().collect();
    let roles = std::thread::scope(|scope| {
        let asked: Vec<_> = copies
            .iter()
            .map(|n| scope.spawn(move || role(d, n)))
            .collect();
        asked
            .into_iter()
            .map(|a| a.join().expect("a role probe"))
            .collect::<Vec<_>>()
    });
    let mut seen = Vec::new();
    for (n, r) in copies.into_iter().zip(roles) {
        match r {
            Some(r) if r.role == "primary" && r.writable => return Ok((n.clone(), r)),
            Some(r) => seen.push(format!("{n}: {}", r.role)),
            None => seen.push(format!("{n}: no answer")),
        }
    }
    Err(seen)
}

/// A drill (the primary site answers; the failover forced): the primary there stops taking
/// writes and what it acknowledged goes to the share, before log shipping stops — else every
/// post acknowledged there during the run would be lost. Null when no copy there answers as a
/// writable primary (the site is lost: what log shipping carried is what the failover
/// recovers).
fn last_log_backup(d: &Deployment, p: &Places) -> anyhow::Result<Value> {
    let Some(primary) = writable_primary_site(d, p) else {
        return Ok(Value::Null);
    };
    // Checked again here, before the pause (the preconditions checked it before the run).
    share_for_a_drill(d, p, &primary)?;
    let node = primary.0;
    let paused = pause(
        d,
        &node,
        Some(&format!(
            "the chat pool is failing over to {}: post through its chat servers",
            p.backup
        )),
    )?;
    if paused["settled"] != json!(true) {
        bail!(
            "{node} is paused at LSN {}, but its records up to it are not all acknowledged yet \
             (acknowledged: LSN {}; its mirror slow?): run the failover again",
            paused["lsn"],
            paused["durable_lsn"]
        );
    }
    let backup = command(
        d,
        &["db", "backup", "--db", "mgc", "--instance", &node, "--log"],
    )?;
    Ok(json!({ "paused": node, "lsn": paused["lsn"], "backup": backup }))
}

/// Refuses a failover while the primary site's `primary` answers as a writable primary (a
/// drill, forced) and the share is not there: that primary's last writes reach the secondary
/// only as a log backup on the share (step 1), so the failover would drop what it acknowledged
/// since the last log backup the secondary copied — a loss only a lost site may cost (its
/// copies of mgc do not answer: the failover then goes on without the share, DESIGN.md §4).
/// Until session 34 the drill paused it, skipped steps 1 and 2, lost those writes and said
/// "nothing acknowledged is lost".
fn share_for_a_drill(
    d: &Deployment,
    p: &Places,
    (node, r): &(String, tandem_node::CopyRole),
) -> anyhow::Result<()> {
    let Err(why) = share_ours(&d.topology) else {
        return Ok(());
    };
    let applied = role(d, &p.backup).map_or_else(|| "?".to_string(), |b| b.lsn.to_string());
    bail!(
        "{why}: {node}'s last writes cannot reach {backup}: a forced failover while {node} \
         answers as the primary of mgc (a drill) pauses it and ships what it acknowledged \
         through the share before {backup} is recovered ({node} is at LSN {lsn}, {backup} has \
         applied up to LSN {applied}). Bring the share back and run the failover again; \
         without it, only the loss of site {site} (its copies of mgc not answering) lets the \
         failover go on, losing what log shipping had not carried",
        backup = p.backup,
        lsn = r.lsn,
        site = p.primary_site,
    )
}

/// Refuses to set the chat pool `state` (`normal`, `failed-over`) when no copy of mgc in its
/// site (the primary and its mirror, or the backup and its mirror) answers as a writable
/// primary: its chat servers would refuse every post. The procedures set it once one does.
pub fn state_has_a_primary(d: &Deployment, state: &str) -> anyhow::Result<()> {
    let p = places(&d.topology)?;
    let (copies, site) = match state {
        "failed-over" => (
            [Some(&p.backup), p.backup_mirror.as_ref()],
            d.topology.site_of(&p.backup).unwrap_or_default(),
        ),
        _ => (
            [Some(&p.primary), p.mirror.as_ref()],
            p.primary_site.as_str(),
        ),
    };
    let Err(seen) = writable_among(d, copies) else {
        return Ok(());
    };
    bail!(
        "no copy of mgc in {site} is a writable primary ({}): the chat pool {state} would refuse \
         every post; `tandem chat {}` does every step, or pass --force",
        seen.join("; "),
        if state == "failed-over" {
            "failover"
        } else {
            "failback"
        }
    )
}

fn places(t: &Topology) -> anyhow::Result<Places> {
    let chat = t.chat.as_ref().context("the topology has no chat pool")?;
    let backup = chat
        .backup
        .clone()
        .context("the chat pool has no backup database in another site ([chat] backup)")?;
    let site = |n: &str| t.site_of(n).unwrap_or_default().to_string();
    let primary_site = site(&chat.primary);
    let backup_site = site(&backup);
    let servers_in = |s: &str| -> Vec<String> {
        chat.servers
            .iter()
            .filter(|n| site(n) == s)
            .cloned()
            .collect()
    };
    Ok(Places {
        primary: chat.primary.clone(),
        mirror: chat.mirror.clone(),
        backup_mirror: chat.backup_mirror.clone(),
        primary_servers: if chat.active.is_empty() {
            servers_in(&primary_site)
        } else {
            chat.active.clone()
        },
        backup_servers: servers_in(&backup_site),
        backup,
        primary_site,
    })
}

/// The role, epoch, LSN and last write time of `node`'s copy of mgc; None when unreachable.
fn role(d: &Deployment, node: &str) -> Option<tandem_node::CopyRole> {
    role_or_why(d, node).ok()
}

/// Why a node's mgc copy has no role to show.
enum NoRole {
    /// The node does not answer. `lost`: it cannot even be connected to (its process or its
    /// host is gone), as opposed to one that accepts the connection and does not answer (hung,
    /// or busy).
    Silent { lost: bool },
    /// It answers, without a copy to show (one being reseeded, say): what it said.
    Said(String),
}

/// Whether `node` is lost: see `NoRole::Silent`.
fn lost(d: &Deployment, node: &str) -> bool {
    matches!(role_or_why(d, node), Err(NoRole::Silent { lost: true }))
}

/// Nodes found hung (they take the question and do not answer) by this process, and when: each
/// probe of one waited its whole deadline, and a procedure asks the same nodes at each step — a
/// failover of a hung site (SIGSTOP, not killed) took 21 s where a lost one took 1 s.
static HUNG: std::sync::Mutex<Vec<(String, std::time::Instant)>> =
    std::sync::Mutex::new(Vec::new());

/// How long a node found hung is taken as hung without asking again.
const HUNG_FOR: Duration = Duration::from_secs(5);

/// The role of `node`'s mgc copy, or why it cannot be had.
fn role_or_why(d: &Deployment, node: &str) -> Result<tandem_node::CopyRole, NoRole> {
    let Some(n) = d.topology.node(node) else {
        return Err(NoRole::Said(format!("no node {node} in the topology")));
    };
    {
        let mut hung = HUNG.lock().expect("hung nodes");
        hung.retain(|(_, at)| at.elapsed() < HUNG_FOR);
        if hung.iter().any(|(h, _)| h == node) {
            return Err(NoRole::Silent { lost: false });
        }
    }
    let rt = crate::deployment::runtime().map_err(|e| NoRole::Said(e.to_string()))?;
    rt.block_on(d.client().copy_role(&n.address, DATABASE_MGC, TIMEOUT))
        .map_err(|e| match e {
            tandem_node::ClientError::Unreachable { sent, message, .. } => {
                // Only a deadline passed says hung (a reset connection is a node that died).
                if sent && message == tandem_node::NO_ANSWER {
                    let mut hung = HUNG.lock().expect("hung nodes");
                    hung.push((node.to_string(), std::time::Instant::now()));
                }
                NoRole::Silent { lost: !sent }
            }
            other => NoRole::Said(other.to_string()),
        })
}

fn chat_state(d: &Deployment) -> anyhow::Result<(String, Vec<String>)> {
    let s = command(d, &["chat", "state", "show"])?;
    let active = s["active"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Ok((s["state"].as_str().unwrap_or("").to_string(), active))
}

/// The last step of both procedures: the chat pool in `state` with `servers` (comma-separated)
/// active, once the servers themselves know it.
fn set_active_servers<'a>(d: &'a Deployment, servers: String, state: &'static str) -> Step<'a> {
    Step {
        title: format!("set the active servers: {servers}"),
        command: format!("tandem chat active-servers set {servers}"),
        check: Box::new({
            let servers = servers.clone();
            move |_| {
                let (now, active) = chat_state(d)?;
                Ok((now == state
                    && active.join(",") == servers
                    && wait_for(|| servers_follow(d, &servers, state)))
                .then(|| json!({ "active": active })))
            }
        }),
        run: Box::new(move |_| command(d, &["chat", "active-servers", "set", &servers])),
        verify: true,
        recheck: false,
    }
}

/// The mirroring state of `node`'s mgc copy, from its status.
fn link_state(d: &Deployment, node: &str) -> Option<String> {
    let addr = d.topology.node(node)?.address.clone();
    let rt = crate::deployment::runtime().ok()?;
    let s = rt.block_on(d.client().status(&addr, TIMEOUT)).ok()?;
    s.databases
        .iter()
        .find(|c| c.database == DATABASE_MGC)
        .and_then(|c| c.mirroring.as_ref().map(|m| m.state.clone()))
}

/// Whether every server in `servers` has heard from the CMS that it is active in `state`: the
/// moment users can post through it.
fn servers_follow(d: &Deployment, servers: &str, state: &str) -> bool {
    let Ok(rt) = crate::deployment::runtime() else {
        return false;
    };
    servers.split(',').filter(|s| !s.is_empty()).all(|name| {
        let Some(n) = d.topology.node(name) else {
            return false;
        };
        rt.block_on(d.client().status(&n.address, TIMEOUT))
            .ok()
            .and_then(|s| s.cms)
            .is_some_and(|c| {
                c.chat_state.as_deref() == Some(state) && c.chat_active.iter().any(|a| a == name)
            })
    })
}

/// Whether no chat server of the pool serves any more: each that answers has heard from the CMS
/// that it is not active (one that does not answer serves nobody). Until then a server that
/// still counts itself active may call `mgc` — and, when its primary is paused, the locator
/// sends the call on to any other writable copy.
fn servers_quiet(d: &Deployment) -> bool {
    let Ok(rt) = crate::deployment::runtime() else {
        return false;
    };
    let Some(chat) = d.topology.chat.as_ref() else {
        return true;
    };
    chat.servers.iter().all(|name| {
        let Some(n) = d.topology.node(name) else {
            return true;
        };
        match rt.block_on(d.client().status(&n.address, TIMEOUT)) {
            Err(_) => true,
            Ok(s) => s
                .cms
                .is_some_and(|c| c.source == "live" && !c.chat_active.iter().any(|a| a == name)),
        }
    })
}

/// Polls `cond` for a few seconds (the chat servers follow the CMS every 300 ms).
fn wait_for(cond: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Refuses, naming each copy and `tandem cms failover --force`, when no copy of the CMS
/// answers as its master.
pub(crate) fn cms_reachable(d: &Deployment) -> anyhow::Result<()> {
    // Asked three times: a master slow to answer on a busy machine is not a lost one.
    let mut seen = Value::Null;
    for attempt in 0..3 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(300));
        }
        seen = command(d, &["cms", "status"])?;
        if !seen["master"].is_null() {
            return Ok(());
        }
    }
    let copies: Vec<String> = seen["copies"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let node = c["node"].as_str().unwrap_or("?");
            match (c["reachable"].as_bool(), c["role"].as_str()) {
                (Some(true), Some(role)) => format!("{node}: {role}"),
                (Some(true), None) => format!("{node}: no copy open"),
                _ => format!(
                    "{node}: unreachable: {}",
                    c["error"].as_str().unwrap_or("no answer")
                ),
            }
        })
        .collect();
    bail!(
        "the CMS is unreachable, no copy is its master ({}): if its master's site is down, run \
         `tandem cms failover --force` first",
        copies.join("; ")
    )
}

fn pause(d: &Deployment, node: &str, reason: Option<&str>) -> anyhow::Result<Value> {
    let addr = d
        .topology
        .node(node)
        .context("a topology node")?
        .address
        .clone();
    let rt = crate::deployment::runtime()?;
    Ok(rt.block_on(d.client().json::<Value>(
        &addr,
        Method::POST,
        &format!("/internal/v1/db/{DATABASE_MGC}/pause"),
        Some(&json!({ "reason": reason })),
        TIMEOUT,
    ))?)
}

pub fn failover(d: &Deployment, dry_run: bool, force: bool, out: &Output) -> anyhow::Result<()> {
    let p = places(&d.topology)?;
    let backup = p.backup.clone();
    let backup_servers = p.backup_servers.join(",");
    let mut steps: Vec<Step> = Vec::new();
    let recovered = |d: &Deployment| role(d, &p.backup).filter(|r| r.role == "primary");
    steps.push(Step {
        title: format!(
            "stop log shipping to {backup} (the primary site's primary, if one answers, paused \
             and its last log backup taken first)"
        ),
        command: "tandem db log-shipping remove-secondary --db mgc".into(),
        check: Box::new(|_| Ok(recovered(d).map(|r| json!({ "epoch": r.epoch })))),
        // The share may be lost with the primary site: the configuration on it cannot change,
        // and the secondary's jobs, which read it there, do nothing meanwhile.
        run: Box::new(|_| {
            let last = last_log_backup(d, &p)?;
            if let Err(why) = share_ours(&d.topology) {
                return Ok(json!({
                    "last_log_backup": last,
                    "skipped": format!(
                        "{why}: its configuration cannot change, and {backup}'s jobs wait for it"
                    ),
                }));
            }
            let removed = command(
                d,
                &["db", "log-shipping", "remove-secondary", "--db", "mgc"],
            )?;
            Ok(json!({ "last_log_backup": last, "removed": removed }))
        }),
        verify: false,
        recheck: false,
    });
    steps.push(Step {
        title: format!("copy every log backup {backup} lacks from the share"),
        command: "tandem db log-shipping copy --db mgc".into(),
        check: Box::new(|_| Ok(recovered(d).map(|r| json!({ "epoch": r.epoch })))),
        run: Box::new(|_| {
            if let Err(why) = share_ours(&d.topology) {
                return Ok(json!({
                    "skipped": format!(
                        "{why}: nothing more to copy; the next step applies what {backup} \
                         copied before"
                    ),
                }));
            }
            command(d, &["db", "log-shipping", "copy", "--db", "mgc"])
        }),
        verify: false,
        recheck: false,
    });
    steps.push(Step {
        title: "apply every unapplied log backup in LSN order".into(),
        command: "tandem db log-shipping restore --db mgc".into(),
        // Recovered before this run (its steps run by hand): the data-loss point is where its
        // epoch began.
        check: Box::new(|_| {
            Ok(recovered(d).map(|r| {
                json!({
                    "epoch": r.epoch,
                    "last_lsn": r.epoch_first_lsn.map(|f| f.saturating_sub(1)),
                    "recovered_before_this_run": true,
                })
            }))
        }),
        run: Box::new(|_| {
            let r = command(d, &["db", "log-shipping", "restore", "--db", "mgc"])?;
            let c = role(d, &backup).context("the secondary stopped answering")?;
            Ok(json!({
                "restore": r,
                "last_lsn": c.lsn,
                "last_time_ms": c.last_time_ms,
                "last_write": time(c.last_time_ms),
            }))
        }),
        verify: false,
        recheck: false,
    });
    steps.push(Step {
        title: format!("end every connection to {backup} and recover it (new epoch, writable)"),
        // Forced with the primary site healthy (a drill): its primary steps down to the new
        // epoch, which `db recover` refuses to bring about unless told.
        command: format!(
            "tandem db recover --db mgc --instance {backup}{}",
            if force { " --force" } else { "" }
        ),
        check: Box::new(|_| Ok(recovered(d).map(|r| json!({ "epoch": r.epoch, "lsn": r.lsn })))),
        run: Box::new(|_| {
            let mut args = vec!["db", "recover", "--db", "mgc", "--instance", &backup];
            if force {
                args.push("--force");
            }
            command(d, &args)
        }),
        verify: true,
        recheck: false,
    });
    steps.push(Step {
        title: "set the chat pool state failed-over (the active list cleared first)".into(),
        command: "tandem chat active-servers clear; tandem chat state set failed-over".into(),
        check: Box::new(|_| {
            let (state, active) = chat_state(d)?;
            Ok((state == "failed-over").then(|| json!({ "state": state, "active": active })))
        }),
        run: Box::new(|_| {
            command(d, &["chat", "active-servers", "clear"])?;
            command(d, &["chat", "state", "set", "failed-over"])
        }),
        verify: true,
        recheck: false,
    });
    if let Some(bm) = p.backup_mirror.clone() {
        let (bm2, bm3) = (bm.clone(), bm.clone());
        let (b1, b2, b3) = (backup.clone(), backup.clone(), backup.clone());
        steps.push(Step {
            title: format!("install a mirror of the new primary on {bm}"),
            command: format!("tandem db mirror install --db mgc --primary {backup} --mirror {bm}"),
            check: Box::new(move |_| {
                Ok((link_state(d, &b1).as_deref() == Some("synchronized"))
                    .then(|| json!({ "mirror": bm2 })))
            }),
            // The backup site's mirror node lost too, before the install or during it: the
            // new primary serves alone rather than the chat pool staying down until that node
            // is back (the install gives up within seconds once its mirror is lost).
            run: Box::new(move |_| {
                let skipped = |when: &str| {
                    json!({
                        "skipped": format!(
                            "{bm3} is unreachable{when}; mgc on {b3} serves without a mirror: \
                             run `tandem db mirror install --db mgc --primary {b3} --mirror \
                             {bm3}` once {bm3} is back"
                        ),
                    })
                };
                if lost(d, &bm3) {
                    return Ok(skipped(""));
                }
                let installed = command(
                    d,
                    &[
                        "db",
                        "mirror",
                        "install",
                        "--db",
                        "mgc",
                        "--primary",
                        &b2,
                        "--mirror",
                        &bm,
                    ],
                );
                match installed {
                    Err(_) if lost(d, &bm3) => Ok(skipped(" (lost during the install)")),
                    other => other,
                }
            }),
            verify: true,
            recheck: false,
        });
    }
    steps.push(set_active_servers(d, backup_servers, "failed-over"));
    let failed_over_step = 5;
    let servers_step = steps.len();
    let book = Runbook {
        procedure: "chat-failover",
        deployment: d,
        steps,
        // Between step 5 (the active servers cleared) and the last one, nothing serves.
        stopped: Box::new(|s: &RunState| {
            let done = |n: usize| s.steps.iter().any(|r| r.step == n);
            (done(failed_over_step) && !done(servers_step)).then(|| {
                format!(
                    "the chat pool serves nobody meanwhile (failed-over, no active servers): \
                     once the cause is fixed, `tandem chat failover` finishes it; `tandem chat \
                     active-servers set {}` serves from {} at once, without the steps left",
                    p.backup_servers.join(","),
                    p.backup
                )
            })
        }),
    };
    let p = places(&d.topology)?;
    let preconditions = |resuming: Option<&RunState>| -> anyhow::Result<()> {
        if resuming.is_some() {
            // Half-way, until the secondary is recovered: a run started with --force (or while
            // the site was lost) is not finished without either once the site is back.
            let recovered = role(d, &p.backup).is_some_and(|r| r.role == "primary");
            if !recovered && !force {
                healthy_primary_site(d, &p)?;
            }
            if !recovered && let Some(primary) = writable_primary_site(d, &p) {
                share_for_a_drill(d, &p, &primary)?;
            }
            // Every step acts on the secondary (or what it recovered); steps 5 and 7 on the
            // CMS.
            if role(d, &p.backup).is_none() {
                bail!(
                    "the secondary {} does not answer: the failover's steps left act on its \
                     copy of mgc; {}, and run the failover again",
                    p.backup,
                    d.revive_advice(&p.backup)
                );
            }
            return cms_reachable(d);
        }
        cms_reachable(d)?;
        let (state, _) = chat_state(d)?;
        if state == "failed-over" {
            bail!("the chat pool is already failed over; `tandem chat failback` brings it home");
        }
        match role(d, &p.backup) {
            None => bail!(
                "the secondary {} does not answer or holds no copy of mgc (log shipping has not seeded it): nothing to fail over to",
                p.backup
            ),
            Some(r) if r.role == "primary" => {}
            Some(r) if r.role == "restoring" || r.role == "standby" => {}
            Some(r) => bail!(
                "the copy of mgc on {} is {}: it is not a log-shipping secondary",
                p.backup,
                r.role
            ),
        }
        if !force {
            healthy_primary_site(d, &p)?;
        }
        if let Some(primary) = writable_primary_site(d, &p) {
            share_for_a_drill(d, &p, &primary)?;
        }
        Ok(())
    };
    if dry_run {
        return dry_run_report(&book, preconditions, out);
    }
    let (outcome, loss) = book.run(out, preconditions, |s: &RunState| {
        let r = s.report_of(3).cloned().unwrap_or(Value::Null);
        let drained = s
            .report_of(1)
            .map(|r| r["last_log_backup"].clone())
            .unwrap_or_default();
        json!({
            "last_lsn": r["last_lsn"],
            "last_write": r["last_write"],
            "last_time_ms": r["last_time_ms"],
            // A gap or a damaged log backup on the share ended the restore short of it.
            "stopped": r["restore"]["stopped"],
            // A drill: the primary site's primary paused at this LSN, its last writes shipped.
            "paused": drained["paused"],
            "paused_lsn": drained["lsn"],
        })
    })?;
    let drained = loss["paused"].as_str().zip(loss["paused_lsn"].as_u64());
    let report = json!({ "run": outcome, "data_loss": loss, "new_primary": p.backup });
    out.emit(&report, || {
        format!(
            "chat pool failed over to {} in {:.1} s; data recovered up to LSN {} ({}): {}\n",
            p.backup,
            report["run"]["seconds"].as_f64().unwrap_or(0.0),
            loss["last_lsn"],
            match loss["last_write"].as_str() {
                Some(t) => format!("last message written {t}"),
                None => "recovered before this run".to_string(),
            },
            what_is_lost(drained, loss["last_lsn"].as_u64(), &p.backup),
        ) + &match loss["stopped"].as_str() {
            Some(why) => format!("the restore stopped there, short of the share's end: {why}\n"),
            None => String::new(),
        }
    })
}

/// What a failover lost, for its report. A drill (`drained`: the primary site's primary, paused
/// at that LSN with its last writes shipped) lost nothing only when the copy recovered reaches
/// that LSN, and says how much it lost otherwise (the last log backup taken but not copied, say:
/// the share lost after step 1); without a drill, what the lost site acknowledged after the
/// recovered LSN is lost, how much unknown.
fn what_is_lost(drained: Option<(&str, u64)>, last_lsn: Option<u64>, backup: &str) -> String {
    match (drained, last_lsn) {
        (Some((node, paused)), Some(last)) if last >= paused => format!(
            "nothing acknowledged is lost ({node} was paused at LSN {paused} and its last writes \
             shipped first)"
        ),
        (Some((node, paused)), Some(last)) => format!(
            "{} transactions {node} acknowledged are lost (LSN {} to {paused}: {node} was paused \
             there, and its last writes did not all reach {backup})",
            paused - last,
            last + 1
        ),
        _ => "anything acknowledged after it in the lost site is lost".to_string(),
    }
}

/// Whether `primary`'s copy of mgc is the chat's primary again (the failback restored it and
/// brought it online): a primary of a newer epoch than the backup site's copy, which began
/// after every record that copy holds. Checked that way, a copy brought online by a failback
/// that was then abandoned (`--abort`) is not taken for home once the backup site wrote more.
fn home_copy(d: &Deployment, p: &Places) -> Option<tandem_node::CopyRole> {
    let b = role(d, &p.backup);
    role(d, &p.primary).filter(|r| {
        r.role == "primary"
            && b.as_ref().is_none_or(|b| {
                b.role != "primary"
                    || (r.epoch > b.epoch && r.epoch_first_lsn.is_none_or(|f| f > b.lsn))
            })
    })
}

pub fn failback(d: &Deployment, dry_run: bool, abort: bool, out: &Output) -> anyhow::Result<()> {
    let p = places(&d.topology)?;
    let primary = p.primary.clone();
    let backup = p.backup.clone();
    let servers = p.primary_servers.join(",");
    let mut steps: Vec<Step> = Vec::new();
    let home = |d: &Deployment| home_copy(d, &p);
    if let Some(bm) = p.backup_mirror.clone() {
        // While failed over, the backup site's primary may have moved to its mirror (an
        // automatic failover). The failback starts from the copy the topology names: a
        // planned mirror failover moves it back, with nothing lost, before anything else.
        steps.push(Step {
            title: format!("make {backup} the primary of mgc again (from {bm}, nothing lost)"),
            command: "tandem db mirror failover --db mgc".into(),
            check: Box::new(|_| {
                Ok(role(d, &p.backup)
                    .filter(|r| r.role == "primary")
                    .map(|r| json!({ "epoch": r.epoch })))
            }),
            run: Box::new(|_| command(d, &["db", "mirror", "failover", "--db", "mgc"])),
            verify: true,
            recheck: false,
        });
    }
    let clear_step = steps.len() + 1;
    steps.push(Step {
        title: "clear the active server list".into(),
        command: "tandem chat active-servers clear".into(),
        // Done once every chat server knows: none may use mgc while it is moved.
        check: Box::new(|_| {
            let (_, active) = chat_state(d)?;
            Ok((active.is_empty() && wait_for(|| servers_quiet(d)))
                .then(|| json!({ "active": [] })))
        }),
        run: Box::new(|_| command(d, &["chat", "active-servers", "clear"])),
        verify: true,
        // An operator may set them again while the run is stopped (to serve meanwhile).
        recheck: true,
    });
    let mut unmirror_step = None;
    if let Some(bm) = p.backup_mirror.clone() {
        let b = backup.clone();
        unmirror_step = Some(steps.len() + 1);
        steps.push(Step {
            title: format!("remove mirroring on the {} copies", backup),
            command: format!("tandem db mirror remove --db mgc --instance {bm}"),
            check: Box::new(|_| Ok(link_state(d, &p.backup).is_none().then(|| json!({})))),
            run: Box::new(move |_| {
                if !lost(d, &bm) {
                    return command(
                        d,
                        &["db", "mirror", "remove", "--db", "mgc", "--instance", &bm],
                    );
                }
                // The mirror's node is lost: the primary's side is what the failback needs
                // gone; the mirror's side goes when its node is back.
                let removed = command(
                    d,
                    &["db", "mirror", "remove", "--db", "mgc", "--instance", &b],
                );
                if removed.is_ok() || link_state(d, &b).is_some() {
                    return removed;
                }
                Ok(json!({
                    "removed_on": b,
                    "note": format!(
                        "{bm} is unreachable: run `tandem db mirror remove --db mgc --instance \
                         {bm}` once it is back"
                    ),
                }))
            }),
            verify: true,
            // An operator may mirror the copy again while the run is stopped.
            recheck: true,
        });
    }
    let backup_step = steps.len() + 1;
    steps.push(Step {
        title: format!("full backup of {backup}'s mgc (writes paused first)"),
        command: format!("tandem db backup --db mgc --instance {backup}"),
        check: Box::new(|_| Ok(home(d).map(|r| json!({ "epoch": r.epoch })))),
        run: Box::new(|_| {
            pause(d, &p.backup, Some("the chat pool is failing back"))?;
            let r = command(d, &["db", "backup", "--db", "mgc", "--instance", &p.backup])?;
            let c = role(d, &p.backup).context("the backup site's primary stopped answering")?;
            Ok(json!({ "backup": r, "lsn": c.lsn }))
        }),
        verify: false,
        // The pause is lost when its node restarts, and the backup is stale once writes
        // resumed: until the restore is done, both are done again.
        recheck: true,
    });
    let restore_step = steps.len() + 1;
    steps.push(Step {
        title: format!("restore it over {primary}, replacing it, and bring it online"),
        command: format!(
            "tandem db mirror remove --db mgc --instance {primary}; tandem db restore --db mgc --instance {primary} --from FULL-BACKUP-OF-STEP-{backup_step} --replace"
        ),
        check: Box::new(|_| Ok(home(d).map(|r| json!({ "epoch": r.epoch, "lsn": r.lsn })))),
        run: Box::new(|s| {
            let file = s
                .report_of(backup_step)
                .and_then(|r| find_path(&r["backup"]))
                .with_context(|| {
                    format!("step {backup_step} left no full backup file to restore from")
                })?;
            // A mirrored copy is not restored over: its mirroring goes first (the next step
            // installs it again, seeding the mirror from the restored primary).
            if link_state(d, &p.primary).is_some() {
                command(
                    d,
                    &["db", "mirror", "remove", "--db", "mgc", "--instance", &p.primary],
                )?;
            }
            command(
                d,
                &[
                    "db",
                    "restore",
                    "--db",
                    "mgc",
                    "--instance",
                    &p.primary,
                    "--from",
                    &file,
                    "--replace",
                ],
            )
        }),
        verify: true,
        recheck: false,
    });
    let ship_step = steps.len() + 1;
    steps.push(Step {
        title: format!(
            "log shipping {primary} → {backup} again, and the mirror in the primary site"
        ),
        command: format!("tandem db log-shipping configure --db mgc --secondary {backup}"),
        check: Box::new(|_| Ok(None)),
        run: Box::new(|_| {
            // The secondary lost (its node gone) once mgc is home: the pool serves from the
            // primary site without a copy in the other one, rather than stay down until that
            // node is back; the command that configures it then is said.
            let later = format!(
                "{} is unreachable: mgc on {} has no log-shipping secondary (no copy in another \
                 site) until `tandem db log-shipping configure --db mgc --secondary {}` is run \
                 once {} is back",
                p.backup, p.primary, p.backup, p.backup
            );
            let ls = if lost(d, &p.backup) {
                json!({ "skipped": later })
            } else {
                match command(
                    d,
                    &[
                        "db",
                        "log-shipping",
                        "configure",
                        "--db",
                        "mgc",
                        "--secondary",
                        &p.backup,
                    ],
                ) {
                    Ok(ls) => ls,
                    Err(_) if lost(d, &p.backup) => json!({ "skipped": later }),
                    Err(e) => return Err(e),
                }
            };
            let mirror = match &p.mirror {
                Some(m) => command(
                    d,
                    &[
                        "db",
                        "mirror",
                        "install",
                        "--db",
                        "mgc",
                        "--primary",
                        &p.primary,
                        "--mirror",
                        m,
                    ],
                )?,
                None => Value::Null,
            };
            let mut report = json!({ "log_shipping": ls, "mirror": mirror });
            if ls["skipped"].is_string() {
                report["note"] = json!(later);
            }
            Ok(report)
        }),
        verify: false,
        recheck: false,
    });
    let normal_step = steps.len() + 1;
    steps.push(Step {
        title: "set the chat pool state normal".into(),
        command: "tandem chat state set normal".into(),
        check: Box::new(|_| {
            let (state, _) = chat_state(d)?;
            Ok((state == "normal").then(|| json!({ "state": state })))
        }),
        run: Box::new(|_| command(d, &["chat", "state", "set", "normal"])),
        verify: true,
        recheck: false,
    });
    steps.push(set_active_servers(d, servers, "normal"));
    let servers_step = steps.len();
    let book = Runbook {
        procedure: "chat-failback",
        deployment: d,
        steps,
        // From the active servers cleared to the last step, nothing serves: what brings the
        // chat back depends on whether mgc is home yet.
        stopped: Box::new(|s: &RunState| {
            let done = |n: usize| s.steps.iter().any(|r| r.step == n);
            if !done(clear_step) || done(servers_step) {
                return None;
            }
            // The pool serves from the primary site (another operator's run finished the
            // failback): this run leaves nobody without service, whatever its record says (a
            // resume refused then said "the chat pool serves nobody", until session 34).
            if chat_state(d).is_ok_and(|(state, active)| state == "normal" && !active.is_empty()) {
                return None;
            }
            Some(match home(d) {
                // The restore took effect and its copy then went silent: only forward.
                None if role(d, &p.backup).is_some_and(|r| r.role == "standby") => format!(
                    "the chat pool serves nobody meanwhile (no active servers); mgc on {} \
                     stepped down to the copy the restore brought online on {}, which does not \
                     answer: {}, then `tandem chat failback` finishes it",
                    p.backup,
                    p.primary,
                    d.revive_advice(&p.primary)
                ),
                None => format!(
                    "the chat pool serves nobody meanwhile (failed-over, no active servers{}): \
                     `tandem chat failback --abort` serves again from {} at once (the failback \
                     abandoned, nothing lost); or, once the cause is fixed, `tandem chat \
                     failback` goes on",
                    if done(backup_step) {
                        format!(", {}'s writes paused", p.backup)
                    } else {
                        String::new()
                    },
                    p.backup
                ),
                Some(r) => format!(
                    "the chat pool serves nobody meanwhile (no active servers); mgc is primary \
                     on {} now (epoch {}), so the failback only goes forward: once the cause is \
                     fixed, `tandem chat failback` finishes it",
                    p.primary, r.epoch
                ),
            })
        }),
    };
    if abort {
        return abort_failback(d, &book, &p, dry_run, out);
    }
    let p = places(&d.topology)?;
    // What the steps still to do need: all of them for a fresh run; for a resumed one those
    // not recorded, and the last recorded (checked again, and done again if it did not hold).
    let preconditions = |resuming: Option<&RunState>| -> anyhow::Result<()> {
        let todo = |n: usize| {
            resuming.is_none_or(|s| {
                !s.steps.iter().any(|r| r.step == n) || s.steps.last().map(|r| r.step) == Some(n)
            })
        };
        cms_reachable(d)?;
        // The failback's full backup goes through the share (step 4 to step 5), and so does
        // the secondary's seed.
        if todo(backup_step) || todo(restore_step) || todo(ship_step) {
            share_ours(&d.topology)
                .map_err(|why| anyhow::anyhow!("{why}: the failback moves mgc through it"))?;
        }
        let (state, _) = chat_state(d)?;
        match resuming {
            None if state != "failed-over" => {
                bail!("the chat pool is {state}, not failed over: nothing to fail back")
            }
            // A run that stopped before its restore, with the pool normal since: another run
            // finished the failback, and resuming this one would clear the active servers of a
            // serving pool and move mgc again.
            Some(run)
                if state == "normal" && run.steps.last().map_or(0, |r| r.step) < restore_step =>
            {
                bail!(
                    "the chat pool is normal already, and run {} stopped after step {}, before \
                     its restore: the failback was finished by other means (another operator's \
                     run?). Check the deployment (`tandem status`), then remove {} — nothing is \
                     left to resume",
                    run.run_id,
                    run.steps.last().map_or(0, |r| r.step),
                    book.state_file().display()
                )
            }
            _ => {}
        }
        // The copy the pool failed over to, or its mirror once primary (step 1 moves it back).
        let mirror_primary = || {
            p.backup_mirror
                .as_deref()
                .and_then(|m| role(d, m))
                .is_some_and(|r| r.role == "primary")
        };
        // Once the restore took effect (a run stopped right after it), the backup site's copy
        // has stepped down to the restored one: steps 4 and 5 hold, and are not asked of it
        // (a resume was refused, the chat down, until session 33).
        if todo(backup_step) && home(d).is_none() {
            match role(d, &p.backup) {
                Some(r) if r.role == "primary" => {}
                Some(r) if r.role == "mirror" && mirror_primary() => {}
                Some(r) => bail!(
                    "mgc on {} is {}, not the primary the pool failed over to",
                    p.backup,
                    r.role
                ),
                None if mirror_primary() => bail!(
                    "{} does not answer, and the failed-over data is on its mirror {}, primary \
                     now: {} (it rejoins as its mirror), and run the failback again",
                    p.backup,
                    p.backup_mirror.as_deref().unwrap_or("-"),
                    d.revive_advice(&p.backup)
                ),
                None => bail!(
                    "{} does not answer: its mgc holds the failed-over data; {}",
                    p.backup,
                    d.revive_advice(&p.backup)
                ),
            }
        }
        // Step 3 removes mirroring on the backup site's copies: a mirror node that accepts
        // connections and does not answer (stopped, hung) would hold it there, the active
        // servers cleared. One that is gone is done without (the step says what is left).
        if let Some(bm) = &p.backup_mirror
            && unmirror_step.is_some_and(todo)
            && matches!(role_or_why(d, bm), Err(NoRole::Silent { lost: false }))
        {
            bail!(
                "{bm}, the backup site's mirror of mgc, accepts connections but does not \
                 answer: {}, and run the failback again",
                d.revive_advice(bm)
            );
        }
        // A copy being reseeded from the backup site (a restarted site's copies are) is closed
        // for a moment: it is waited for, up to `COPY_BACK_WAIT`, but not by a dry run.
        if todo(restore_step) || todo(ship_step) || todo(normal_step) {
            let deadline = std::time::Instant::now() + COPY_BACK_WAIT;
            loop {
                match role_or_why(d, &p.primary) {
                    Ok(_) => break,
                    Err(NoRole::Silent { .. }) => bail!(
                        "{} does not answer: the primary site {} must be rebuilt and up before \
                         a failback ({})",
                        p.primary,
                        p.primary_site,
                        d.revive_advice(&p.primary)
                    ),
                    Err(NoRole::Said(_)) if !dry_run && std::time::Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(250));
                    }
                    Err(NoRole::Said(why)) => bail!(
                        "{} answers but shows no copy of mgc ({why}){}: a copy being reseeded \
                         from {} comes back by itself; run the failback again once `tandem \
                         status` shows it",
                        p.primary,
                        if dry_run {
                            String::new()
                        } else {
                            format!(" after {} s", COPY_BACK_WAIT.as_secs())
                        },
                        p.backup
                    ),
                }
            }
        }
        // Steps 4 and 6 each write a full backup of mgc on the share (the copy moved back,
        // then the secondary's seed): a share without room for them would stop the failback at
        // step 4, the active servers cleared.
        if todo(backup_step)
            && let Some(r) = role(d, &p.backup)
        {
            let room = share_room(&d.topology.share).map_err(|e| anyhow::anyhow!(e))?;
            room_for_two_full_backups(&d.topology.share, room, r.file_bytes, &p.backup)?;
        }
        // The failback installs the primary site's mirror once the primary is restored: a
        // mirror node that does not answer would stop it there, the active servers cleared.
        if todo(ship_step)
            && let Some(m) = &p.mirror
            && let Err(NoRole::Silent { .. }) = role_or_why(d, m)
        {
            bail!(
                "{m}, the mirror in the primary site {}, does not answer: {}, and run the \
                 failback again",
                p.primary_site,
                d.revive_advice(m)
            );
        }
        // ... and that mirror synchronizes only with its site's witness: one that does not
        // answer would hold the failback at step 6 for minutes, the chat down.
        if todo(ship_step)
            && p.mirror.is_some()
            && let Some(w) = d.topology.witnesses.get(&p.primary_site)
            && let Some(node) = d.topology.node(w)
        {
            let rt = crate::deployment::runtime()?;
            if rt
                .block_on(d.client().status(&node.address, TIMEOUT))
                .is_err()
            {
                bail!(
                    "{w}, the witness of the primary site {}, does not answer: the mirror \
                     installed there needs it; {}, and run the failback again",
                    p.primary_site,
                    d.revive_advice(w)
                );
            }
        }
        Ok(())
    };
    if dry_run {
        return dry_run_report(&book, preconditions, out);
    }
    let (outcome, extra) = book.run(
        out,
        preconditions,
        |s: &RunState| json!({ "steps_done": s.steps.len() }),
    )?;
    // The CMS fails over on its own (`tandem cms failover`); a master left in the backup site
    // is worth saying, not moving behind the operator's back.
    let cms_master = command(d, &["cms", "status"])
        .ok()
        .and_then(|s| s["master"].as_str().map(str::to_string));
    let cms_elsewhere = cms_master.filter(|m| {
        d.topology
            .site_of(m)
            .is_some_and(|site| site != p.primary_site)
    });
    let report = json!({
        "run": outcome,
        "report": extra,
        "primary": p.primary,
        "cms_master_elsewhere": cms_elsewhere,
    });
    out.emit(&report, || {
        let mut text = format!(
            "chat pool back on {} in {:.1} s; state normal, active servers {}\n",
            p.primary,
            report["run"]["seconds"].as_f64().unwrap_or(0.0),
            p.primary_servers.join(", ")
        );
        if let Some(m) = &cms_elsewhere {
            text.push_str(&format!(
                "the CMS master is still {m}, outside site {}: `tandem cms failover` moves it \
                 back, nothing lost\n",
                p.primary_site
            ));
        }
        text
    })
}

/// The first string field that names a backup file (`…tfb`) in a command's report.
fn find_path(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if s.ends_with(".tfb") => Some(s.clone()),
        Value::Object(m) => m.values().find_map(find_path),
        Value::Array(a) => a.iter().find_map(find_path),
        _ => None,
    }
}

/// `--dry-run`: the preconditions' verdict (those of the steps still to do, when a run is in
/// progress) and each step with its command and state.
fn dry_run_report(
    book: &Runbook,
    preconditions: impl FnOnce(Option<&RunState>) -> anyhow::Result<()>,
    out: &Output,
) -> anyhow::Result<()> {
    let run = book.in_progress();
    let refused = preconditions(run.as_ref()).err();
    let checks = match &refused {
        None => json!("every precondition holds"),
        Some(e) => json!(format!("refused: {e:#}")),
    };
    let report = json!({
        "procedure": book.procedure,
        "preconditions": checks,
        "plan": book.plan(refused.is_some()),
    });
    out.emit(&report, || plan_text(&report))?;
    // The plan is printed either way; the exit status says whether the run would start
    // (until session 32 a refused dry run exited 0, as if it would).
    match refused {
        None => Ok(()),
        Some(e) => Err(e.context(format!("{} would be refused", book.procedure))),
    }
}

/// `tandem chat failback --abort`: a failback stopped half-way (the primary site's node lost
/// during it, say) is abandoned and the chat pool serves again from the backup site — its
/// copy's pause lifted, its chat servers active, the pool left failed-over. Refused once the
/// primary site's copy is the chat's primary (the restore brought it online): from there a
/// failback only goes forward, and two writable primaries are never made.
fn abort_failback(
    d: &Deployment,
    book: &Runbook,
    p: &Places,
    dry_run: bool,
    out: &Output,
) -> anyhow::Result<()> {
    let _lock = if dry_run {
        None
    } else {
        Some(crate::runbook::procedure_lock(d, "chat-failback")?)
    };
    let servers = p.backup_servers.join(",");
    let serving = (|| -> anyhow::Result<(String, tandem_node::CopyRole)> {
        cms_reachable(d)?;
        let (state, active) = chat_state(d)?;
        if state != "failed-over" {
            bail!(
                "the chat pool is {state}: no failback is half-way (it finished, or none \
                 started); nothing to abort"
            );
        }
        // The backup site's copy, asked once.
        let backup = role(d, &p.backup);
        // No run to abandon, and nothing a run would have left: the chat already served as
        // the failover left it (an abort said "failback abandoned" and logged a run).
        if book.in_progress().is_none()
            && active == p.backup_servers
            && backup
                .as_ref()
                .is_some_and(|r| r.role == "primary" && r.paused.is_none())
        {
            bail!(
                "no failback in progress, and the chat pool serves from {} with {} active: \
                 nothing to abort",
                p.backup,
                p.backup_servers.join(",")
            );
        }
        if let Some(r) = home_copy(d, p) {
            bail!(
                "mgc on {} is the chat's primary already (epoch {}, brought online by the \
                 failback's restore): from there a failback goes only forward; `tandem chat \
                 failback` finishes it",
                p.primary,
                r.epoch
            );
        }
        let mut seen = Vec::new();
        // Its mirror is asked only when the copy itself is not primary.
        let copies = std::iter::once((&p.backup, backup.clone()))
            .chain(p.backup_mirror.iter().map(|m| (m, role(d, m))));
        for (n, r) in copies {
            match r {
                Some(r) if r.role == "primary" => return Ok((n.clone(), r)),
                Some(r) => seen.push(format!("{n}: {}", r.role)),
                None => seen.push(format!("{n}: no answer")),
            }
        }
        // Stepped down: a newer primary exists — the primary site's copy the failback's
        // restore brought online, which does not answer now. The failback goes only forward.
        if backup.as_ref().is_some_and(|r| r.role == "standby") {
            bail!(
                "mgc on {} stepped down to a newer primary: the copy the failback's restore \
                 brought online on {}, which does not answer now; the failback goes only \
                 forward: {}, then `tandem chat failback` finishes it",
                p.backup,
                p.primary,
                d.revive_advice(&p.primary)
            );
        }
        bail!(
            "no copy of mgc in the backup site answers as primary ({}): {}, and run the abort \
             again",
            seen.join("; "),
            d.revive_advice(&p.backup)
        )
    })();
    let plan = json!([
        format!("lift the pause on the backup site's primary of mgc"),
        format!("tandem chat active-servers set {servers}"),
    ]);
    if dry_run {
        let checks = match &serving {
            Ok((n, _)) => format!("every precondition holds: the pool would serve from {n}"),
            Err(e) => format!("refused: {e:#}"),
        };
        let report =
            json!({ "procedure": "chat-failback --abort", "preconditions": checks, "plan": plan });
        out.emit(&report, || {
            format!(
                "chat-failback --abort: {checks}\n  1. lift the pause on the backup site's \
                 primary of mgc\n  2. tandem chat active-servers set {servers}\n"
            )
        })?;
        return serving
            .map(|_| ())
            .map_err(|e| e.context("chat-failback --abort would be refused"));
    }
    let (node, r) = serving?;
    let resumed = match &r.paused {
        Some(_) => Some(pause(d, &node, None)?),
        None => None,
    };
    command(d, &["chat", "active-servers", "set", &servers])?;
    let following = wait_for(|| servers_follow(d, &servers, "failed-over"));
    let mut notes = Vec::new();
    if !following {
        notes.push(format!(
            "the chat servers {servers} have not all heard of it yet: `tandem chat state show` \
             and `tandem status` show where they are"
        ));
    }
    if let Some(bm) = &p.backup_mirror
        && bm != &node
        && link_state(d, &node).is_none()
    {
        notes.push(format!(
            "mgc on {node} serves without a mirror (the failback removed it): `tandem db mirror \
             install --db mgc --primary {node} --mirror {bm}` mirrors it again"
        ));
    }
    if role(d, &p.primary).is_none() {
        notes.push(format!(
            "{} does not answer: once it is back, `tandem chat failback` starts the failback \
             again (its copy is replaced; no chat server uses it meanwhile)",
            p.primary
        ));
    }
    let report = json!({
        "aborted": book.in_progress().map(|s| s.run_id),
        "serving": node,
        "unpaused": resumed.is_some(),
        "active": servers,
        "notes": notes,
    });
    book.abandon(&report);
    out.emit(&report, || {
        let mut text = format!(
            "failback abandoned: the chat pool serves from {node} again (failed-over; active \
             servers {servers})\n"
        );
        for n in &notes {
            text.push_str(&format!("{n}\n"));
        }
        text
    })
}

fn plan_text(r: &Value) -> String {
    let mut s = format!(
        "{}: {}\n",
        r["procedure"].as_str().unwrap_or(""),
        r["preconditions"].as_str().unwrap_or("")
    );
    for step in r["plan"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "  {}. {} [{}]\n     {}\n",
            step["step"],
            step["title"].as_str().unwrap_or(""),
            step["state"].as_str().unwrap_or(""),
            step["command"].as_str().unwrap_or("")
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::{room_for_two_full_backups, what_is_lost};
    use std::path::Path;

    #[test]
    fn a_drill_says_nothing_is_lost_only_when_the_recovered_copy_reaches_the_pause() {
        assert_eq!(
            what_is_lost(Some(("atl-db1", 22)), Some(22), "dal-db1"),
            "nothing acknowledged is lost (atl-db1 was paused at LSN 22 and its last writes \
             shipped first)"
        );
        assert_eq!(
            what_is_lost(Some(("atl-db1", 22)), Some(12), "dal-db1"),
            "10 transactions atl-db1 acknowledged are lost (LSN 13 to 22: atl-db1 was paused \
             there, and its last writes did not all reach dal-db1)"
        );
        for (drained, last) in [(None, Some(12)), (Some(("atl-db1", 22)), None)] {
            assert_eq!(
                what_is_lost(drained, last, "dal-db1"),
                "anything acknowledged after it in the lost site is lost"
            );
        }
    }

    #[test]
    fn a_failback_needs_room_for_two_full_backups_and_a_fifth_more() {
        let share = Path::new("/mnt/share");
        let mib = 1 << 20;
        assert!(room_for_two_full_backups(share, 22 * mib, 10 * mib, "dal-db1").is_ok());
        let e = room_for_two_full_backups(share, 22 * mib - 1, 10 * mib, "dal-db1")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("the share /mnt/share has 22.0 MiB free")
                && e.contains("about 10.0 MiB each")
                && e.ends_with("the pool serves from dal-db1 meanwhile"),
            "{e}"
        );
    }
}
