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
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use tandem_node::{Method, UserApi};
use tandem_topology::DATABASE_MGC;

/// Stages announced here: users and posting, kill, CMS failover, chat failover, posting in the
/// backup site, restart, failback, check.
pub(super) const STAGES: usize = 8;
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
const CHAT_FAILOVER_TIMEOUT_MS: u64 = 60_000;
const CHAT_FAILBACK_TIMEOUT_MS: u64 = 60_000;
const COMMAND_TIMEOUT_MS: u64 = 10_000;

/// What the stages need from the demo.
pub(super) struct Context<'a> {
    pub(super) d: &'a Deployment,
    pub(super) children: &'a Mutex<Vec<Child>>,
    pub(super) stages: &'a Stages,
    /// The mirror stages' room and what was acknowledged in it: checked again at the end.
    pub(super) earlier: (&'a str, &'a Log),
}

#[derive(Serialize)]
pub(super) struct Report {
    /// The site lost, and its nodes as they were killed.
    site: String,
    killed: Vec<Killed>,
    killed_at_s: f64,
    pool: String,
    room: String,
    clients: usize,
    /// Posts acknowledged through the primary site before its loss, through the backup site
    /// while failed over, and through the primary site again after the failback.
    acknowledged_before: u64,
    acknowledged_failed_over: u64,
    acknowledged_after: u64,
    failed_attempts: u64,
    failures: BTreeMap<String, u64>,
    /// Failed attempts the history holds anyway (committed, but the answer was lost).
    failed_but_stored: u64,
    rpo: Rpo,
    rto: Rto,
    /// Acknowledged posts (of both rooms) missing from the final history, or there with another
    /// text, apart from the RPO loss; and those whose text is there more than once.
    pub(super) lost: u64,
    pub(super) duplicated: u64,
    /// Events of both rooms read back at the end.
    history_events: u64,
    /// Where things stand at the end.
    chat_state: String,
    active_servers: Vec<String>,
    primary_after: String,
    epoch_after: u64,
    /// The procedures' own JSON documents.
    cms_failover: Value,
    chat_failover: Value,
    chat_failback: Value,
}

impl Report {
    /// Whether the run lost or doubled an acknowledged post beyond the RPO it reported.
    pub(super) fn failed(&self) -> bool {
        self.lost > 0
            || self.duplicated > 0
            || self.rpo.lost_in_backup_site > 0
            || self.rpo.missing_found > 0
    }
}

#[derive(Serialize)]
struct Killed {
    node: String,
    pid: i32,
}

/// The data loss of the site failover.
#[derive(Serialize)]
struct Rpo {
    /// The last LSN the failover recovered (`data_loss.last_lsn`) and its commit time.
    last_lsn: u64,
    last_write: String,
    /// Posts acknowledged in the lost site with an LSN up to `last_lsn`, read back in the
    /// backup site right after the failover; those not there (must be 0).
    present_in_backup_site: u64,
    lost_in_backup_site: u64,
    /// Posts acknowledged in the lost site past `last_lsn`: the loss.
    missing: u64,
    /// Of those, any the history holds after all (must be 0: the LSN reported would be wrong).
    missing_found: u64,
    /// When the first and the last of them were acknowledged (since the demo began), the time
    /// between, and from the first to the kill.
    missing_first_ack_s: Option<f64>,
    missing_last_ack_s: Option<f64>,
    missing_span_ms: u64,
    missing_to_kill_ms: u64,
}

/// The time each procedure took to give users their service back.
#[derive(Serialize)]
struct Rto {
    /// From the start of `tandem cms failover --force` to the first post accepted in the
    /// backup site (the CMS failover, then the chat failover).
    cms_failover_ms: u64,
    /// From the start of `tandem chat failover` to the first post accepted in the backup site.
    chat_failover_ms: u64,
    /// From the start of `tandem chat failback` to the first post accepted in the primary site.
    chat_failback_ms: u64,
    /// The commands alone, start to exit.
    cms_failover_command_ms: u64,
    chat_failover_command_ms: u64,
    chat_failback_command_ms: u64,
    /// From the kill to the first post accepted in the backup site (the operator's commands
    /// follow one another at once here).
    outage_ms: u64,
}

pub(super) async fn run(c: Context<'_>, client: &tandem_node::Client) -> anyhow::Result<Report> {
    let Context {
        d,
        children,
        stages,
        earlier,
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
    tokio::time::timeout(ms(SETUP_TIMEOUT_MS), async {
        clients[0][home_at]
            .request(
                Method::POST,
                "/api/v1/rooms",
                Some(&json!({ "name": ROOM, "privacy": "open" })),
            )
            .await
            .with_context(|| format!("creating room {ROOM} on {home}"))?;
        for (apis, name) in clients.iter().zip(USERS).skip(1) {
            apis[home_at]
                .request(
                    Method::POST,
                    &format!("/api/v1/rooms/{ROOM}/members"),
                    Some(&json!({ "user": name })),
                )
                .await
                .with_context(|| format!("{name} joining room {ROOM}"))?;
        }
        anyhow::Ok(())
    })
    .await
    .map_err(|_| anyhow!("creating room {ROOM}: no answer within {SETUP_TIMEOUT_MS} ms"))??;
    let reader = clients[0].clone();
    let per_client: Vec<Vec<UserApi>> = (0..super::CLIENTS)
        .map(|k| clients[k % clients.len()].clone())
        .collect();
    let workload = Workload::start(ROOM, "s", per_client, clock);
    let warm_from = std::time::Instant::now();
    until(
        &format!("the first post acknowledged through {home}"),
        FIRST_POST_TIMEOUT_MS,
        async || match workload.progress.acked.load(Ordering::SeqCst) {
            0 => Err(format!(
                "{} attempts failed",
                workload.progress.failed.load(Ordering::SeqCst)
            )),
            n => Ok(n),
        },
    )
    .await?;
    tokio::time::sleep(ms(WARMUP_MS).saturating_sub(warm_from.elapsed())).await;
    // Every post of the earlier room is on the secondary before the site is lost (so the RPO
    // figures are this room's alone).
    let earlier_lsn = earlier.1.acks.iter().map(|a| a.lsn).max().unwrap_or(0);
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
    workload.progress.mark(chat_from);
    let failover = tandem(d, &["chat", "failover"], CHAT_FAILOVER_TIMEOUT_MS).await?;
    let failover_command_ms = clock.ms() - chat_from;
    let last_lsn = failover["data_loss"]["last_lsn"]
        .as_u64()
        .with_context(|| format!("`tandem chat failover` reported no data loss: {failover}"))?;
    let last_write = failover["data_loss"]["last_write"]
        .as_str()
        .unwrap_or("-")
        .to_string();
    let first_away_ms = first_post(&workload, away_at, &away).await?;
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
    let earlier_in_backup = read(&reader[away_at], earlier.0).await?;
    let earlier_lost = check(&earlier.1.acks, &[], &earlier_in_backup).lost;
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
        match earlier_lost {
            0 => format!(", and every post of room {}", earlier.0),
            n => format!(", but {n} posts of room {} are missing", earlier.0),
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
    stages.say(&format!(
        "restarted {} (tandem up --nodes {}): ready in {:.1} s",
        site_nodes.join(", "),
        site_nodes.join(","),
        (clock.ms() - restart_from) as f64 / 1000.0
    ));

    // The failback.
    let back_from = clock.ms();
    workload.progress.mark(back_from);
    let failback = tandem(d, &["chat", "failback"], CHAT_FAILBACK_TIMEOUT_MS).await?;
    let failback_command_ms = clock.ms() - back_from;
    let first_home_ms = first_post(&workload, home_at, &home).await?;
    stages.say(&format!(
        "tandem chat failback: {} primary again in {:.1} s; first post accepted through {home} \
         {:.1} s after its start",
        chat.primary,
        failback_command_ms as f64 / 1000.0,
        (first_home_ms - back_from) as f64 / 1000.0
    ));

    // The check, in the primary site again.
    tokio::time::sleep(ms(AFTER_FAILBACK_MS)).await;
    let log = workload.stop().await?;
    let history = read(&reader[home_at], ROOM).await?;
    let earlier_history = read(&reader[home_at], earlier.0).await?;
    let state = tandem(d, &["chat", "state", "show"], COMMAND_TIMEOUT_MS).await?;
    let (primary_after, epoch_after) = super::writable_copy(d, client)
        .await
        .map_err(|e| anyhow!("after the failback: {e}"))?;
    let expected = log
        .acks
        .iter()
        .filter(|a| a.server != home_at || a.lsn <= last_lsn || a.acked_ms >= restart_from);
    let mut checked = check(expected, &log.failures, &history);
    let earlier_checked = check(&earlier.1.acks, &[], &earlier_history);
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
        "posting stopped; history read back (rooms {ROOM} and {}, {} events): {}; chat pool \
         {chat_state}, active {}, {DATABASE_MGC} primary {primary_after} (epoch {epoch_after})",
        earlier.0,
        count((history.events + earlier_history.events) as f64),
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
        site,
        killed,
        killed_at_s: killed_ms as f64 / 1000.0,
        pool,
        room: ROOM.into(),
        clients: super::CLIENTS,
        acknowledged_before: before.len() as u64,
        acknowledged_failed_over: log.acks.iter().filter(|a| a.server == away_at).count() as u64,
        acknowledged_after,
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
        history_events: history.events + earlier_history.events,
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

/// Awaits the first post acknowledged through `server` since the workload's last mark.
async fn first_post(workload: &Workload, server: usize, name: &str) -> anyhow::Result<u64> {
    until(
        &format!("a post accepted through {name}"),
        FIRST_POST_TIMEOUT_MS,
        async || {
            workload.progress.first_after(server).ok_or_else(|| {
                format!(
                    "{} attempts failed so far",
                    workload.progress.failed.load(Ordering::SeqCst)
                )
            })
        },
    )
    .await
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
pub(super) fn human(r: &Report) -> String {
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
    s.push_str(&format!(
        "  RPO                  {} acknowledged posts lost (LSN > {}, last write recovered {}), \
         acknowledged over {:.2} s ({:.2} s before the kill to the kill); every post up to LSN {} \
         was in {}'s history after the failover{}\n",
        count(p.missing as f64),
        count(p.last_lsn as f64),
        p.last_write,
        p.missing_span_ms as f64 / 1000.0,
        p.missing_to_kill_ms as f64 / 1000.0,
        count(p.last_lsn as f64),
        r.chat_failover["new_primary"]
            .as_str()
            .unwrap_or("the backup site"),
        if p.lost_in_backup_site > 0 || p.missing_found > 0 {
            format!(
                " — except {} (and {} past it were found)",
                p.lost_in_backup_site, p.missing_found
            )
        } else {
            String::new()
        }
    ));
    let t = &r.rto;
    let sec = |ms: u64| format!("{:.2} s", ms as f64 / 1000.0);
    s.push_str(&format!(
        "  RTO                  cms failover {} and chat failover {} to the first post accepted \
         in the backup site (the commands: {}, {}); chat failback {} to the first post accepted \
         in {} again (the command: {}); {} from the kill to the first post in the backup site\n",
        sec(t.cms_failover_ms),
        sec(t.chat_failover_ms),
        sec(t.cms_failover_command_ms),
        sec(t.chat_failover_command_ms),
        sec(t.chat_failback_ms),
        r.site,
        sec(t.chat_failback_command_ms),
        sec(t.outage_ms)
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

    fn ack(lsn: u64, acked_ms: u64) -> Ack {
        Ack {
            id: lsn as i64,
            lsn,
            text: format!("s0-{lsn}"),
            server: 0,
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
}
