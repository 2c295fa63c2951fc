//! The demo's site-loss stages (issue 6): users of the pool in the backup site post into a room
//! from several clients through the active chat server; every node of the chat database's
//! primary site is SIGKILLed under that load; the operator's procedures run as they would from
//! a shell — `tandem cms failover --force`, `tandem chat failover`, later `tandem chat
//! failback` once the site is restarted — each as a subprocess of this executable with `--json`
//! (the procedures are blocking runbooks that print their own report); the clients go on
//! through whichever chat server is active.
//!
//! It measures the RPO — acknowledged posts missing after the site failover: exactly those
//! whose LSN is past the last LSN the failover recovered (`data_loss.last_lsn`), read back in
//! the backup site right after the failover, every post up to that LSN there — and the RTO of
//! each procedure, from its start to the first post accepted again. At the end every post
//! acknowledged before, during and after (of this room and of the mirror stages' room) must be
//! in the history exactly once, apart from the RPO loss.

use super::workload::{Ack, History, Log, Workload, check, read_history, texts};
use super::{Stages, count, ms, until};
use crate::deployment::{Deployment, signal};
use crate::{up, user};
use anyhow::{Context as _, anyhow, bail};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use tandem_node::UserApi;
use tandem_topology::DATABASE_MGC;

/// Stages announced here: users and posting, kill, CMS failover, chat failover, posting in the
/// backup site, restart, failback, check.
pub(crate) const STAGES: usize = 8;
/// Users of the pool in the backup site (their user database survives the loss).
const USERS: [&str; 4] = ["erin", "frank", "grace", "heidi"];
const ROOM: &str = "sites";
/// Posting through the primary site before it is lost.
const WARMUP_MS: u64 = 3_000;
/// Posting in the backup site before the primary site restarts.
const FAILED_OVER_MS: u64 = 3_000;
/// Posting in the primary site after the failback.
const AFTER_FAILBACK_MS: u64 = 2_000;
/// Deadlines of the stages.
const SETUP_TIMEOUT_MS: u64 = 20_000;
const FIRST_POST_TIMEOUT_MS: u64 = 20_000;
const SHIPPED_TIMEOUT_MS: u64 = 20_000;
const CMS_FAILOVER_TIMEOUT_MS: u64 = 30_000;
const CHAT_FAILOVER_TIMEOUT_MS: u64 = 120_000;
const CHAT_FAILBACK_TIMEOUT_MS: u64 = 300_000;
const COMMAND_TIMEOUT_MS: u64 = 10_000;
/// The restarted site's copies may be reseeded from the backup site (a full copy).
const REBUILT_TIMEOUT_MS: u64 = 300_000;

/// What the stages need from the demo.
pub(crate) struct Context<'a> {
    pub(crate) d: &'a Deployment,
    pub(crate) children: &'a Mutex<Vec<Child>>,
    pub(crate) stages: &'a Stages,
    /// The mirror stages' room and what was acknowledged in it: checked again at the end.
    pub(crate) earlier: Option<(&'a str, &'a Log)>,
    pub(crate) kill: KillAt,
}

/// When the site is killed, after the posting has warmed up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum KillAt {
    /// At once: anywhere in the log backup interval (a typical loss).
    Now,
    /// Just before the primary's next log backup is due: the most that log shipping can lose
    /// (a worst case, for the bench).
    BeforeLogBackup,
}

#[derive(Serialize)]
pub(crate) struct Report {
    /// The site lost, and its nodes as they were killed.
    pub(crate) site: String,
    pub(crate) backup_site: String,
    pub(crate) killed: Vec<Killed>,
    /// When in the log backup interval the site was killed.
    pub(crate) kill_at: KillAt,
    pub(crate) killed_at_s: f64,
    pub(crate) pool: String,
    pub(crate) room: String,
    pub(crate) clients: usize,
    /// Posts acknowledged through the primary site before its loss, through the backup site
    /// while failed over, and through the primary site again after the failback.
    pub(crate) acknowledged_before: u64,
    pub(crate) acknowledged_failed_over: u64,
    pub(crate) acknowledged_after: u64,
    /// Posts acknowledged through the chat server of one site and committed by the primary
    /// copy in the other around the failback: a chat server that had not heard yet that it was
    /// no longer (or not yet) active served them (must be 0: DESIGN.md §6, invariant 5).
    pub(crate) cross_site: u64,
    pub(crate) failed_attempts: u64,
    pub(crate) failures: BTreeMap<String, u64>,
    /// Failed attempts the history holds anyway (committed, but the answer was lost).
    pub(crate) failed_but_stored: u64,
    pub(crate) rpo: Rpo,
    pub(crate) rto: Rto,
    /// Acknowledged posts (of both rooms) missing from the final history, or there with another
    /// text, apart from the RPO loss; and those whose text is there more than once.
    pub(crate) lost: u64,
    pub(crate) duplicated: u64,
    /// Events of both rooms read back at the end.
    pub(crate) history_events: u64,
    /// Where things stand at the end.
    pub(crate) chat_state: String,
    pub(crate) active_servers: Vec<String>,
    pub(crate) primary_after: String,
    pub(crate) epoch_after: u64,
    /// The procedures' own JSON documents.
    pub(crate) cms_failover: Value,
    pub(crate) chat_failover: Value,
    pub(crate) chat_failback: Value,
}

impl Report {
    /// Whether the run lost or doubled an acknowledged post beyond the RPO it reported.
    pub(crate) fn failed(&self) -> bool {
        self.lost > 0
            || self.duplicated > 0
            || self.rpo.lost_in_backup_site > 0
            || self.rpo.missing_found > 0
            || self.cross_site > 0
    }
}

#[derive(Serialize)]
pub(crate) struct Killed {
    node: String,
    pid: i32,
}

/// The data loss of the site failover.
#[derive(Serialize)]
pub(crate) struct Rpo {
    /// The last LSN the failover recovered (`data_loss.last_lsn`) and its commit time.
    pub(crate) last_lsn: u64,
    pub(crate) last_write: String,
    /// Posts acknowledged in the lost site with an LSN up to `last_lsn`, read back in the
    /// backup site right after the failover; those not there (must be 0).
    pub(crate) present_in_backup_site: u64,
    pub(crate) lost_in_backup_site: u64,
    /// Posts acknowledged in the lost site past `last_lsn`: the loss.
    pub(crate) missing: u64,
    /// Of those, any the history holds after all (must be 0: the LSN reported would be wrong).
    pub(crate) missing_found: u64,
    /// When the first and the last of them were acknowledged (since the demo began), the time
    /// between, and from the first to the kill.
    pub(crate) missing_first_ack_s: Option<f64>,
    pub(crate) missing_last_ack_s: Option<f64>,
    pub(crate) missing_span_ms: u64,
    pub(crate) missing_to_kill_ms: u64,
}

/// The time each procedure took to give users their service back.
#[derive(Serialize)]
pub(crate) struct Rto {
    /// From the start of `tandem cms failover --force` to the first post accepted in the
    /// backup site (the CMS failover, then the chat failover).
    pub(crate) cms_failover_ms: u64,
    /// From the start of `tandem chat failover` to the first post accepted in the backup site.
    pub(crate) chat_failover_ms: u64,
    /// From the start of `tandem chat failback` to the first post accepted in the primary site.
    pub(crate) chat_failback_ms: u64,
    /// The commands alone, start to exit.
    pub(crate) cms_failover_command_ms: u64,
    pub(crate) chat_failover_command_ms: u64,
    pub(crate) chat_failback_command_ms: u64,
    /// From the kill to the first post accepted in the backup site (the operator's commands
    /// follow one another at once here).
    pub(crate) outage_ms: u64,
}

pub(crate) async fn run(c: Context<'_>, client: &tandem_node::Client) -> anyhow::Result<Report> {
    let Context {
        d,
        children,
        stages,
        earlier,
        kill,
    } = c;
    let clock = stages.clock;
    let t = &d.topology;
    let chat = t.chat.as_ref().context("the topology has no chat pool")?;
    let backup = chat
        .backup
        .clone()
        .context("the chat pool has no log-shipping secondary ([chat] backup)")?;
    let site = t.site_of(&chat.primary).unwrap_or_default().to_string();
    let backup_site = t.site_of(&backup).unwrap_or_default().to_string();
    let pool = t
        .pools
        .iter()
        .find(|p| p.site == backup_site)
        .with_context(|| format!("no pool in site {backup_site}"))?
        .name
        .clone();
    // The chat servers: the active one of the primary site first (clients start there), then
    // one of the backup site.
    let home = chat
        .active
        .first()
        .context("the chat pool has no active server")?
        .clone();
    let away = chat
        .servers
        .iter()
        .find(|s| t.site_of(s) == Some(backup_site.as_str()))
        .with_context(|| format!("no chat server in site {backup_site}"))?
        .clone();
    let (home_at, away_at) = (0, 1);
    let servers = [super::address(d, &home), super::address(d, &away)];
    let site_nodes: Vec<String> = t
        .nodes
        .iter()
        .filter(|n| n.site == site)
        .map(|n| n.name.clone())
        .collect();

    // Users of the backup site's pool, a room, the clients; log shipping carries it all.
    let mut clients = Vec::new();
    for name in USERS {
        let added = tokio::time::timeout(ms(SETUP_TIMEOUT_MS), user::add(d, name, &pool, None))
            .await
            .map_err(|_| anyhow!("adding user {name}: no answer within {SETUP_TIMEOUT_MS} ms"))?
            .with_context(|| format!("adding user {name}"))?;
        clients.push(
            servers
                .iter()
                .map(|s| UserApi::new(s, &added.token))
                .collect::<Vec<_>>(),
        );
    }
    let at_home: Vec<&UserApi> = clients.iter().map(|apis| &apis[home_at]).collect();
    super::open_room(&at_home, &USERS, ROOM, &home).await?;
    let reader = clients[0].clone();
    let per_client: Vec<Vec<UserApi>> = (0..super::CLIENTS)
        .map(|k| clients[k % clients.len()].clone())
        .collect();
    let workload = Workload::start(ROOM, "s", per_client, clock);
    workload
        .warm_up(
            &format!("the first post acknowledged through {home}"),
            FIRST_POST_TIMEOUT_MS,
            WARMUP_MS,
        )
        .await?;
    // Every post of the earlier room is on the secondary before the site is lost (so the RPO
    // figures are this room's alone).
    let earlier_lsn = earlier
        .and_then(|(_, log)| log.acks.iter().map(|a| a.lsn).max())
        .unwrap_or(0);
    let backup_addr = super::address(d, &backup);
    let shipped = until(
        &format!("{DATABASE_MGC} restored on {backup} up to LSN {earlier_lsn}"),
        SHIPPED_TIMEOUT_MS,
        async || match client
            .copy_role(&backup_addr, DATABASE_MGC, ms(super::STATUS_TIMEOUT_MS))
            .await
        {
            Ok(r) if r.lsn >= earlier_lsn => Ok(r.lsn),
            Ok(r) => Err(format!("{} at LSN {}", r.role, r.lsn)),
            Err(e) => Err(e.to_string()),
        },
    )
    .await?;
    stages.say(&format!(
        "{} users in {pool} ({}); open room {ROOM}; {} clients posting through {home}: {} posts \
         acknowledged; log shipping has {backup} at LSN {}",
        USERS.len(),
        USERS.join(", "),
        super::CLIENTS,
        count(workload.progress.acked.load(Ordering::SeqCst) as f64),
        count(shipped as f64)
    ));

    if kill == KillAt::BeforeLogBackup {
        before_log_backup(d).await?;
    }

    // The loss of the site: SIGKILL of each of its nodes, as close together as can be.
    let pids: Vec<(String, i32)> = site_nodes
        .iter()
        .map(|n| {
            d.running_pid(n)
                .map(|p| (n.clone(), p))
                .with_context(|| format!("{n} is not running"))
        })
        .collect::<anyhow::Result<_>>()?;
    let killed_ms = clock.ms();
    for (_, pid) in &pids {
        signal(*pid, libc::SIGKILL);
    }
    for (n, pid) in &pids {
        until(
            &format!("{n} (pid {pid}) gone after SIGKILL"),
            super::REAP_TIMEOUT_MS,
            async || super::reap(children, *pid),
        )
        .await?;
        let _ = std::fs::remove_file(d.pid_file(n));
    }
    let killed: Vec<Killed> = pids
        .iter()
        .map(|(node, pid)| Killed {
            node: node.clone(),
            pid: *pid,
        })
        .collect();
    stages.say(&format!(
        "site {site} lost: killed {} at {:.1} s, under load",
        pids.iter()
            .map(|(n, p)| format!("{n} ({p})"))
            .collect::<Vec<_>>()
            .join(", "),
        killed_ms as f64 / 1000.0
    ));

    // The CMS, then the chat pool, to the backup site: the operator's two commands.
    let cms_from = clock.ms();
    let cms = tandem(d, &["cms", "failover", "--force"], CMS_FAILOVER_TIMEOUT_MS).await?;
    let cms_command_ms = clock.ms() - cms_from;
    stages.say(&format!(
        "tandem cms failover --force: {} CMS master (epoch {}) in {:.1} s; the standby had LSN {} \
         (last write {})",
        cms["to"].as_str().unwrap_or("?"),
        cms["epoch"],
        cms_command_ms as f64 / 1000.0,
        cms["lost"]["standby_lsn"],
        cms["lost"]["standby_last_write"].as_str().unwrap_or("?")
    ));
    let chat_from = clock.ms();
    let failover = tandem(d, &["chat", "failover"], CHAT_FAILOVER_TIMEOUT_MS).await?;
    let failover_command_ms = clock.ms() - chat_from;
    let last_lsn = failover["data_loss"]["last_lsn"]
        .as_u64()
        .with_context(|| format!("`tandem chat failover` reported no data loss: {failover}"))?;
    let last_write = failover["data_loss"]["last_write"]
        .as_str()
        .unwrap_or("-")
        .to_string();
    // The first post accepted in the backup site: sent through its chat server after the
    // command started, committed past the recovered LSN (by the recovered copy).
    let first_away_ms = first_committed(&workload, away_at, chat_from, last_lsn, &away).await?;
    stages.say(&format!(
        "tandem chat failover: {backup} primary in {:.1} s, recovered up to LSN {} (last write \
         {last_write}); first post accepted through {away} {:.1} s after its start",
        failover_command_ms as f64 / 1000.0,
        count(last_lsn as f64),
        (first_away_ms - chat_from) as f64 / 1000.0
    ));

    // Posting goes on in the backup site; the RPO, read there: every post acknowledged in the
    // lost site up to the recovered LSN is in the history, those after it are not.
    tokio::time::sleep(ms(FAILED_OVER_MS)).await;
    let in_backup = read(&reader[away_at], ROOM).await?;
    let before: Vec<Ack> = workload
        .progress
        .acks()
        .into_iter()
        .filter(|a| a.server == home_at)
        .collect();
    let (kept, missing): (Vec<&Ack>, Vec<&Ack>) = before.iter().partition(|a| a.lsn <= last_lsn);
    let lost_in_backup_site = check(kept.iter().copied(), &[], &in_backup).lost;
    let earlier_lost = check_again(&reader[away_at], earlier).await?.lost;
    let span = Span::of(&missing, killed_ms);
    let found = match lost_in_backup_site {
        0 => format!("every one of the {} posts", count(kept.len() as f64)),
        n => format!(
            "{} of the {} posts",
            count((kept.len() - n as usize) as f64),
            count(kept.len() as f64)
        ),
    };
    stages.say(&format!(
        "{} posts accepted through {away}; {backup_site}'s history holds {found} acknowledged in \
         {site} up to LSN {}{}; the {} after it are lost: acknowledged in the last {:.2} s \
         before the loss",
        count(workload.progress.acked_by(away_at) as f64),
        count(last_lsn as f64),
        match (earlier, earlier_lost) {
            (None, _) => String::new(),
            (Some((room, _)), 0) => format!(", and every post of room {room}"),
            (Some((room, _)), n) => format!(", but {n} posts of room {room} are missing"),
        },
        count(missing.len() as f64),
        span.to_kill_ms as f64 / 1000.0
    ));

    // The primary site rebuilt: its nodes start again (`tandem up --nodes …`).
    let restart_from = clock.ms();
    let mut restarted = up::spawn(d, &site_nodes)?;
    let ready = up::wait_ready(d, &mut restarted, ms(super::READY_TIMEOUT_MS)).await;
    children
        .lock()
        .expect("children")
        .extend(restarted.into_iter().map(|(_, c)| c));
    ready?;
    let ready_ms = clock.ms() - restart_from;
    // The site is rebuilt once it knows what happened meanwhile. Its old primary copies step
    // down (they see the newer epoch in the backup site) and follow the new primary as
    // standbys, reseeded when they diverged; a restarted chat server starts from its own
    // snapshot of the CMS, taken before the loss (the pool normal, itself active), until it
    // hears from the CMS master in the backup site (its epoch).
    let cms_epoch = cms["epoch"]
        .as_u64()
        .with_context(|| format!("`tandem cms failover` reported no epoch: {cms}"))?;
    let restarted_servers: Vec<(String, String)> = site_nodes
        .iter()
        .filter(|n| chat.servers.contains(n))
        .map(|n| (n.clone(), super::address(d, n)))
        .collect();
    let restarted_copies: Vec<(String, String)> = site_nodes
        .iter()
        .filter(|n| t.databases_on(n).iter().any(|p| p.database == DATABASE_MGC))
        .map(|n| (n.clone(), super::address(d, n)))
        .collect();
    until(
        "the restarted site following the backup site's primaries",
        REBUILT_TIMEOUT_MS,
        async || {
            let new = client
                .copy_role(&backup_addr, DATABASE_MGC, ms(super::STATUS_TIMEOUT_MS))
                .await
                .map_err(|e| format!("{backup}: {e}"))?;
            for (n, addr) in &restarted_copies {
                // Mirrors wait for their partner; a standby (an old primary) has caught up with
                // the new primary's history.
                match client
                    .copy_role(addr, DATABASE_MGC, ms(super::STATUS_TIMEOUT_MS))
                    .await
                {
                    Ok(r) if r.role == "mirror" && !r.writable => {}
                    Ok(r) if r.role == "standby" && r.epoch == new.epoch => {}
                    Ok(r) => {
                        return Err(format!(
                            "{n}: {DATABASE_MGC} {} of epoch {} (the new primary's: {})",
                            r.role, r.epoch, new.epoch
                        ));
                    }
                    Err(e) => return Err(format!("{n}: {e}")),
                }
            }
            for (n, addr) in &restarted_servers {
                let s = client
                    .status(addr, ms(super::STATUS_TIMEOUT_MS))
                    .await
                    .map_err(|e| e.to_string())?;
                match s.cms {
                    Some(c) if c.source == "live" && c.epoch == cms_epoch => {}
                    Some(c) => {
                        return Err(format!(
                            "{n} follows a {} CMS snapshot of epoch {}",
                            c.source, c.epoch
                        ));
                    }
                    None => return Err(format!("{n} has no CMS snapshot")),
                }
            }
            Ok(())
        },
    )
    .await?;
    stages.say(&format!(
        "restarted {} (tandem up --nodes {}): ready in {:.1} s, following the backup site's primaries {:.1} s after the restart",
        site_nodes.join(", "),
        site_nodes.join(","),
        ready_ms as f64 / 1000.0,
        (clock.ms() - restart_from) as f64 / 1000.0
    ));

    // The failback.
    let back_from = clock.ms();
    let failback = tandem(d, &["chat", "failback"], CHAT_FAILBACK_TIMEOUT_MS).await?;
    let failback_command_ms = clock.ms() - back_from;
    // The first post accepted in the primary site again: sent through its chat server after
    // the command started, committed past the full backup the primary was restored from.
    let restored_lsn = backup_lsn(&failback)?;
    let first_home_ms = first_committed(&workload, home_at, back_from, restored_lsn, &home).await?;
    let cross = cross_site(
        &workload.progress.acks(),
        (home_at, away_at),
        restart_from,
        restored_lsn,
    );
    stages.say(&format!(
        "tandem chat failback: {} primary again in {:.1} s; first post accepted through {home} \
         {:.1} s after its start{}",
        chat.primary,
        failback_command_ms as f64 / 1000.0,
        (first_home_ms - back_from) as f64 / 1000.0,
        match cross {
            0 => String::new(),
            n => format!(" ({n} posts committed in the other site than their chat server's)"),
        }
    ));

    // The check, in the primary site again.
    tokio::time::sleep(ms(AFTER_FAILBACK_MS)).await;
    let log = workload.stop().await?;
    let history = read(&reader[home_at], ROOM).await?;
    let earlier_checked = check_again(&reader[home_at], earlier).await?;
    let state = tandem(d, &["chat", "state", "show"], COMMAND_TIMEOUT_MS).await?;
    let (primary_after, epoch_after) = super::writable_copy(d, client)
        .await
        .map_err(|e| anyhow!("after the failback: {e}"))?;
    let expected = log
        .acks
        .iter()
        .filter(|a| a.server != home_at || a.lsn <= last_lsn || a.acked_ms >= restart_from);
    let mut checked = check(expected, &log.failures, &history);
    checked.lost += earlier_checked.lost;
    checked.duplicated += earlier_checked.duplicated;
    let present = texts(&history);
    let missing_found = missing
        .iter()
        .filter(|a| present.contains_key(a.text.as_str()))
        .count() as u64;
    let active: Vec<String> = state["active"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    let chat_state = state["state"].as_str().unwrap_or("?").to_string();
    let acknowledged_after = log
        .acks
        .iter()
        .filter(|a| a.server == home_at && a.acked_ms >= restart_from)
        .count() as u64;
    stages.say(&format!(
        "posting stopped; history read back (room {ROOM}{}, {} events): {}; chat pool \
         {chat_state}, active {}, {DATABASE_MGC} primary {primary_after} (epoch {epoch_after})",
        earlier
            .map(|(room, _)| format!(" and room {room}"))
            .unwrap_or_default(),
        count((history.events + earlier_checked.events) as f64),
        if checked.lost == 0 && checked.duplicated == 0 && missing_found == 0 {
            format!(
                "every post acknowledged before, during and after there once, but the {} the \
                 site failover lost",
                missing.len()
            )
        } else {
            format!(
                "{} lost beyond the RPO, {} duplicated, {} past LSN {last_lsn} found",
                checked.lost, checked.duplicated, missing_found
            )
        },
        active.join(", ")
    ));
    let mut failures = BTreeMap::new();
    for f in &log.failures {
        *failures.entry(f.reason.clone()).or_insert(0) += 1;
    }
    Ok(Report {
        kill_at: kill,
        backup_site,
        site,
        killed,
        killed_at_s: killed_ms as f64 / 1000.0,
        pool,
        room: ROOM.into(),
        clients: super::CLIENTS,
        acknowledged_before: before.len() as u64,
        acknowledged_failed_over: log.acks.iter().filter(|a| a.server == away_at).count() as u64,
        acknowledged_after,
        cross_site: cross,
        failed_attempts: log.failures.len() as u64,
        failures,
        failed_but_stored: checked.failed_but_stored,
        rpo: Rpo {
            last_lsn,
            last_write,
            present_in_backup_site: kept.len() as u64 - lost_in_backup_site,
            lost_in_backup_site: lost_in_backup_site + earlier_lost,
            missing: missing.len() as u64,
            missing_found,
            missing_first_ack_s: span.first_ms.map(|t| t as f64 / 1000.0),
            missing_last_ack_s: span.last_ms.map(|t| t as f64 / 1000.0),
            missing_span_ms: span.span_ms,
            missing_to_kill_ms: span.to_kill_ms,
        },
        rto: Rto {
            cms_failover_ms: first_away_ms - cms_from,
            chat_failover_ms: first_away_ms - chat_from,
            chat_failback_ms: first_home_ms - back_from,
            cms_failover_command_ms: cms_command_ms,
            chat_failover_command_ms: failover_command_ms,
            chat_failback_command_ms: failback_command_ms,
            outage_ms: first_away_ms - killed_ms,
        },
        lost: checked.lost,
        duplicated: checked.duplicated,
        history_events: history.events + earlier_checked.events,
        chat_state,
        active_servers: active,
        primary_after,
        epoch_after,
        cms_failover: cms,
        chat_failover: failover,
        chat_failback: failback,
    })
}

/// The time the acknowledgments of the lost posts cover.
#[derive(Debug, PartialEq)]
struct Span {
    first_ms: Option<u64>,
    last_ms: Option<u64>,
    span_ms: u64,
    to_kill_ms: u64,
}

impl Span {
    fn of(missing: &[&Ack], killed_ms: u64) -> Span {
        let first = missing.iter().map(|a| a.acked_ms).min();
        let last = missing.iter().map(|a| a.acked_ms).max();
        Span {
            first_ms: first,
            last_ms: last,
            span_ms: match (first, last) {
                (Some(f), Some(l)) => l - f,
                _ => 0,
            },
            to_kill_ms: first.map(|f| killed_ms.saturating_sub(f)).unwrap_or(0),
        }
    }
}

/// How long before a log backup is due the site is killed (`KillAt::BeforeLogBackup`).
const KILL_BEFORE_BACKUP_MS: u64 = 30;
/// How long a round of the backup job may take to show on the share.
const BACKUP_ROUND_TIMEOUT_MS: u64 = 10_000;

/// Returns just before the primary's next log backup is due: the backup job rounds every
/// `backup_interval_ms` (from its configuration on the share) after the end of the last one,
/// whose time its progress file on the share holds.
async fn before_log_backup(d: &Deployment) -> anyhow::Result<()> {
    use tandem_node::log_shipping::{CONFIG_FILE, Config, PRIMARY_FILE, PrimaryProgress};
    let share = d.topology.share.join(DATABASE_MGC);
    let read = |file: &str| std::fs::read(share.join(file)).map_err(|e| e.to_string());
    let config: Config = read(CONFIG_FILE)
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| anyhow!("{}: {e}", share.join(CONFIG_FILE).display()))?;
    let ran = || -> Result<i64, String> {
        let p: PrimaryProgress =
            serde_json::from_slice(&read(PRIMARY_FILE)?).map_err(|e| e.to_string())?;
        p.backup
            .ran_ms
            .ok_or_else(|| "the backup job has not run".into())
    };
    let last = ran().map_err(|e| anyhow!("{}: {e}", share.join(PRIMARY_FILE).display()))?;
    // The next round's end: a fresh time to count from.
    let ran_ms = until(
        "a round of the log backup job",
        BACKUP_ROUND_TIMEOUT_MS,
        async || match ran() {
            Ok(t) if t > last => Ok(t),
            Ok(_) => Err("no new round".into()),
            Err(e) => Err(e),
        },
    )
    .await?;
    let due_ms = ran_ms + config.backup_interval_ms as i64 - KILL_BEFORE_BACKUP_MS as i64;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.as_millis() as i64)
        .unwrap_or(0);
    tokio::time::sleep(ms(due_ms.saturating_sub(now_ms).max(0) as u64)).await;
    Ok(())
}

/// Awaits the first post sent through `server` at or after `from_ms` that committed past
/// `lsn`: when it was acknowledged.
async fn first_committed(
    workload: &Workload,
    server: usize,
    from_ms: u64,
    lsn: u64,
    name: &str,
) -> anyhow::Result<u64> {
    until(
        &format!("a post accepted through {name} (past LSN {lsn})"),
        FIRST_POST_TIMEOUT_MS,
        async || {
            first_past(&workload.progress.acks(), server, from_ms, lsn).ok_or_else(|| {
                format!(
                    "{} attempts failed so far",
                    workload.progress.failed.load(Ordering::SeqCst)
                )
            })
        },
    )
    .await
}

/// When the first post sent through `server` at or after `from_ms` with an LSN past `lsn` was
/// acknowledged.
fn first_past(acks: &[Ack], server: usize, from_ms: u64, lsn: u64) -> Option<u64> {
    acks.iter()
        .filter(|a| a.server == server && a.sent_ms >= from_ms && a.lsn > lsn)
        .map(|a| a.acked_ms)
        .min()
}

/// Posts acknowledged through the chat server of one site but committed by the primary copy
/// in the other, around the failback (a server that did not know yet that it was no longer,
/// or not yet, active): through the backup site's server past the restored LSN, or through the
/// restarted primary site's server up to it.
fn cross_site(acks: &[Ack], (home, away): (usize, usize), restart_ms: u64, lsn: u64) -> u64 {
    acks.iter()
        .filter(|a| {
            (a.server == away && a.lsn > lsn)
                || (a.server == home && a.sent_ms >= restart_ms && a.lsn <= lsn)
        })
        .count() as u64
}

/// The LSN of the full backup a failback restored (its backup step's report).
fn backup_lsn(failback: &Value) -> anyhow::Result<u64> {
    failback["run"]["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| !s["report"]["backup"].is_null())
        .and_then(|s| s["report"]["lsn"].as_u64())
        .with_context(|| format!("`tandem chat failback` reported no backup LSN: {failback}"))
}

/// An earlier room's posts checked against its history, read through `api`.
struct Again {
    lost: u64,
    duplicated: u64,
    events: u64,
}

async fn check_again(api: &UserApi, earlier: Option<(&str, &Log)>) -> anyhow::Result<Again> {
    let Some((room, log)) = earlier else {
        return Ok(Again {
            lost: 0,
            duplicated: 0,
            events: 0,
        });
    };
    let history = read(api, room).await?;
    let c = check(&log.acks, &[], &history);
    Ok(Again {
        lost: c.lost,
        duplicated: c.duplicated,
        events: history.events,
    })
}

async fn read(api: &UserApi, room: &str) -> anyhow::Result<History> {
    tokio::time::timeout(ms(super::VERIFY_TIMEOUT_MS), read_history(api, room))
        .await
        .map_err(|_| {
            anyhow!(
                "reading room {room}'s history: not done within {} ms",
                super::VERIFY_TIMEOUT_MS
            )
        })?
}

/// Runs `tandem ARGS --json` against the deployment, as an operator would from a shell; its
/// JSON document, or its one-line error. The subprocess is killed if the demo stops first.
async fn tandem(d: &Deployment, args: &[&str], timeout_ms: u64) -> anyhow::Result<Value> {
    let exe = std::env::current_exe().context("the tandem executable")?;
    let child = tokio::process::Command::new(exe)
        .args(args)
        .arg("--json")
        .arg("--topology")
        .arg(&d.file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("running tandem {}", args.join(" ")))?;
    let out = tokio::time::timeout(ms(timeout_ms), child.wait_with_output())
        .await
        .map_err(|_| {
            anyhow!(
                "`tandem {}` did not finish within {:.0} s",
                args.join(" "),
                timeout_ms as f64 / 1000.0
            )
        })??;
    if !out.status.success() {
        bail!(
            "`tandem {}`: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .trim_start_matches("tandem: ")
        );
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("`tandem {}` printed no JSON document", args.join(" ")))
}

/// The report's lines for humans.
pub(crate) fn human(r: &Report) -> String {
    let names: Vec<&str> = r.killed.iter().map(|k| k.node.as_str()).collect();
    let mut s = format!(
        "\nsite {} lost — {} killed under load ({} clients of {} posting)\n\n",
        r.site,
        names.join(", "),
        r.clients,
        r.pool
    );
    s.push_str(&format!(
        "  posts acknowledged   {} before the loss, {} while failed over, {} after the failback\n",
        count(r.acknowledged_before as f64),
        count(r.acknowledged_failed_over as f64),
        count(r.acknowledged_after as f64)
    ));
    let p = &r.rpo;
    let pad = " ".repeat(23);
    let new_primary = r.chat_failover["new_primary"]
        .as_str()
        .unwrap_or("the backup site");
    s.push_str(&format!(
        "  RPO                  {} acknowledged posts lost: those past LSN {}, the last the \
         failover recovered\n{pad}(written {}), acknowledged over {:.2} s up to the kill\n{pad}{}\n",
        count(p.missing as f64),
        count(p.last_lsn as f64),
        p.last_write,
        p.missing_to_kill_ms as f64 / 1000.0,
        if p.lost_in_backup_site > 0 || p.missing_found > 0 {
            format!(
                "{} posts up to that LSN missing in {new_primary}'s history after the failover, \
                 {} past it found",
                p.lost_in_backup_site, p.missing_found
            )
        } else {
            format!("every post up to that LSN was in {new_primary}'s history after the failover")
        }
    ));
    let t = &r.rto;
    let sec = |ms: u64| format!("{:>5.2} s", ms as f64 / 1000.0);
    s.push_str(&format!(
        "  RTO                  cms failover  {}  from the start of each command to the first \
         post accepted in {}\n{pad}chat failover {}\n{pad}chat failback {}  from its start to \
         the first post accepted in {} again\n{pad}(the commands alone: {}, {}, {}; from the kill \
         to the first post in {}: {})\n",
        sec(t.cms_failover_ms),
        r.backup_site,
        sec(t.chat_failover_ms),
        sec(t.chat_failback_ms),
        r.site,
        sec(t.cms_failover_command_ms).trim(),
        sec(t.chat_failover_command_ms).trim(),
        sec(t.chat_failback_command_ms).trim(),
        r.backup_site,
        sec(t.outage_ms).trim()
    ));
    s.push_str(&format!(
        "  posts lost           {} beyond the RPO{}\n",
        r.lost,
        if r.lost == 0 && r.duplicated == 0 {
            " (every other acknowledged post, of both rooms, is in the history once)".to_string()
        } else {
            format!(" ({} duplicated)", r.duplicated)
        }
    ));
    if r.cross_site > 0 {
        s.push_str(&format!(
            "  cross-site posts     {} acknowledged through a chat server of one site, committed \
             in the other (a server that did not know it was no longer active)\n",
            r.cross_site
        ));
    }
    let failures: Vec<String> = r
        .failures
        .iter()
        .map(|(k, n)| format!("{n} × {k}"))
        .collect();
    s.push_str(&format!(
        "  failed attempts      {} (not acknowledged{}); {} of them stored anyway\n",
        r.failed_attempts,
        if failures.is_empty() {
            String::new()
        } else {
            format!(": {}", failures.join(", "))
        },
        r.failed_but_stored
    ));
    s.push_str(&format!(
        "  chat pool            {}, active {}; {DATABASE_MGC} primary {} (epoch {})\n",
        r.chat_state,
        r.active_servers.join(", "),
        r.primary_after,
        r.epoch_after
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ack(lsn: u64, acked_ms: u64) -> Ack {
        Ack {
            id: lsn as i64,
            lsn,
            text: format!("s0-{lsn}"),
            server: 0,
            sent_ms: acked_ms,
            acked_ms,
        }
    }

    #[test]
    fn the_span_of_the_loss_is_between_its_first_and_last_acknowledgment() {
        let (a, b, c) = (ack(10, 1_200), ack(11, 1_900), ack(12, 1_500));
        assert_eq!(
            Span::of(&[&a, &b, &c], 2_000),
            Span {
                first_ms: Some(1_200),
                last_ms: Some(1_900),
                span_ms: 700,
                to_kill_ms: 800
            }
        );
        assert_eq!(
            Span::of(&[], 2_000),
            Span {
                first_ms: None,
                last_ms: None,
                span_ms: 0,
                to_kill_ms: 0
            }
        );
    }

    #[test]
    fn the_first_post_counted_is_the_first_sent_after_the_start_and_committed_past_the_lsn() {
        let mut acks = vec![ack(10, 900), ack(11, 1_100), ack(13, 1_300), ack(12, 1_250)];
        // 11 committed before (LSN ≤ 11); 12 and 13 after: the earliest acknowledgment wins.
        assert_eq!(first_past(&acks, 0, 1_000, 11), Some(1_250));
        acks[3].sent_ms = 500;
        assert_eq!(first_past(&acks, 0, 1_000, 11), Some(1_300));
        assert_eq!(first_past(&acks, 0, 1_000, 13), None);
        // Through another server: not counted.
        acks[2].server = 1;
        assert_eq!(first_past(&acks, 0, 1_000, 11), None);
        assert_eq!(first_past(&acks, 1, 1_000, 11), Some(1_300));
    }

    #[test]
    fn a_post_committed_in_the_other_site_than_its_server_is_counted() {
        let mut acks = vec![ack(5, 100), ack(20, 3_000), ack(21, 3_100), ack(8, 2_100)];
        // Restart at 2,000 ms, restored at LSN 10: 20 (through the backup site's server, 1)
        // and 8 (through the restarted server, 0) crossed; 5 (before the restart) and 21
        // (through the restarted server, past it) did not.
        acks[1].server = 1;
        assert_eq!(cross_site(&acks, (0, 1), 2_000, 10), 2);
    }

    #[test]
    fn the_restored_lsn_is_the_backup_steps() {
        let failback = json!({ "run": { "steps": [
            { "step": 1, "report": { "active": [] } },
            { "step": 3, "report": { "backup": { "file": "x.tfb" }, "lsn": 4_321 } },
        ] } });
        assert_eq!(backup_lsn(&failback).unwrap(), 4_321);
        assert!(backup_lsn(&json!({ "run": { "steps": [] } })).is_err());
    }
}
