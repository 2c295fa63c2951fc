//! `tandem cms status|failover`: the Central Management Store's copies — the master, its mirror
//! in the same site, the standby in the paired pool's site — and the move of the master to the
//! other site (seed: Invoke-CsManagementServerFailover).

use crate::deployment::{Deployment, runtime};
use crate::output::{Output, time};
use anyhow::{Context, bail};
use clap::Subcommand;
use serde::Serialize;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tandem_node::{Method, NodeStatus};
use tandem_topology::DATABASE_CMS;

const STATUS_TIMEOUT: Duration = Duration::from_millis(1_500);

#[derive(Subcommand)]
pub enum CmsCommand {
    /// The master, its mirror and the standby: roles, epochs, positions, the standby's lag.
    Status,
    /// Make the copy in the other site the master. Planned (master reachable): no loss. With
    /// --force, when the master is unreachable: promotes the standby and reports what may be
    /// lost.
    Failover {
        /// The master is unreachable: promote the standby anyway.
        #[arg(long)]
        force: bool,
        /// Print the plan and the checks; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Clone, Debug, Serialize)]
struct CopyView {
    node: String,
    site: String,
    placement: String,
    reachable: bool,
    role: Option<String>,
    epoch: Option<u64>,
    lsn: Option<u64>,
    last_time_ms: Option<i64>,
    /// For a standby: records behind the master, and seconds of traffic.
    lag_records: Option<u64>,
    lag_seconds: Option<f64>,
    state: Option<String>,
    /// Why the copy refuses new writes for now (a planned failover pauses the master).
    paused: Option<String>,
    /// Why its node is unreachable, when it is.
    error: Option<String>,
}

#[derive(Serialize)]
struct CmsStatus {
    master: Option<String>,
    copies: Vec<CopyView>,
}

fn copies(d: &Deployment) -> anyhow::Result<CmsStatus> {
    let client = d.client();
    let rt = runtime()?;
    let nodes: Vec<_> = d
        .topology
        .nodes
        .iter()
        .filter_map(|n| {
            d.topology
                .databases_on(&n.name)
                .into_iter()
                .find(|p| p.database == DATABASE_CMS)
                .map(|p| (n.clone(), p.role.as_str().to_string()))
        })
        .collect();
    let answers: Vec<Result<NodeStatus, _>> = rt.block_on(futures_util::future::join_all(
        nodes
            .iter()
            .map(|(n, _)| client.status(&n.address, STATUS_TIMEOUT)),
    ));
    let mut views: Vec<CopyView> = nodes
        .iter()
        .zip(answers)
        .map(|((n, placement), a)| {
            let copy = a
                .as_ref()
                .ok()
                .and_then(|s| s.databases.iter().find(|c| c.database == DATABASE_CMS));
            CopyView {
                node: n.name.clone(),
                site: n.site.clone(),
                placement: placement.clone(),
                reachable: a.is_ok(),
                role: copy.and_then(|c| c.role.clone()),
                epoch: copy.and_then(|c| c.epoch),
                lsn: copy.and_then(|c| c.lsn),
                last_time_ms: copy.and_then(|c| c.last_time_ms),
                lag_records: None,
                lag_seconds: None,
                state: copy.and_then(|c| {
                    c.mirroring
                        .as_ref()
                        .map(|m| m.state.clone())
                        .or_else(|| c.standby.as_ref().map(|s| s.state.clone()))
                }),
                paused: copy.and_then(|c| c.paused.clone()),
                error: a.as_ref().err().map(|e| e.to_string()),
            }
        })
        .collect();
    let master = views
        .iter()
        .filter(|v| v.role.as_deref() == Some("primary"))
        .max_by_key(|v| v.epoch)
        .cloned();
    if let Some(m) = &master {
        for v in &mut views {
            if v.role.as_deref() == Some("standby") || v.role.as_deref() == Some("mirror") {
                v.lag_records = Some(m.lsn.unwrap_or(0).saturating_sub(v.lsn.unwrap_or(0)));
                v.lag_seconds = Some(
                    (m.last_time_ms.unwrap_or(0) - v.last_time_ms.unwrap_or(0)).max(0) as f64
                        / 1000.0,
                );
            }
        }
    }
    Ok(CmsStatus {
        master: master.map(|m| m.node),
        copies: views,
    })
}

pub fn run(d: &Deployment, cmd: CmsCommand, out: &Output) -> anyhow::Result<()> {
    match cmd {
        CmsCommand::Status => {
            let s = copies(d)?;
            out.emit(&s, || human(&s))
        }
        CmsCommand::Failover { force, dry_run } => failover(d, force, dry_run, out),
    }
}

fn human(s: &CmsStatus) -> String {
    let mut t = format!(
        "CMS master: {}\n\nNODE       SITE  PLACEMENT  ROLE        EPOCH         LSN       LAST WRITE                LAG\n",
        s.master.as_deref().unwrap_or("none reachable")
    );
    for c in &s.copies {
        let lag = match (c.lag_records, c.lag_seconds) {
            (Some(r), Some(sec)) => format!("{r} records, {sec:.1} s"),
            _ => String::new(),
        };
        t.push_str(&format!(
            // Room for "unreachable" and for an epoch of the clock in ms (13 digits).
            "{:<10} {:<5} {:<10} {:<11} {:<13} {:<9} {:<25} {}{}\n",
            c.node,
            c.site,
            c.placement,
            if c.reachable {
                c.role.as_deref().unwrap_or("absent")
            } else {
                "unreachable"
            },
            c.epoch.map(|e| e.to_string()).unwrap_or("-".into()),
            c.lsn.map(|e| e.to_string()).unwrap_or("-".into()),
            time(c.last_time_ms.unwrap_or(0)),
            lag,
            c.state
                .as_ref()
                .map(|s| format!("  ({s})"))
                .unwrap_or_default()
        ));
        if let Some(why) = &c.paused {
            t.push_str(&format!(
                "           writes paused: {why}; `tandem cms failover` run again finishes it\n"
            ));
        }
    }
    t
}

fn failover(d: &Deployment, force: bool, dry_run: bool, out: &Output) -> anyhow::Result<()> {
    // One procedure at a time on a deployment (`procedure_lock`).
    let _lock = (!dry_run)
        .then(|| crate::runbook::procedure_lock(d, "cms-failover"))
        .transpose()?;
    let s = copies(d)?;
    let master = s
        .master
        .as_ref()
        .and_then(|m| s.copies.iter().find(|c| &c.node == m))
        .cloned();
    // The copy to promote: a standby in another site than the master's (or than the lost site).
    let lost_site = master
        .as_ref()
        .map(|m| m.site.clone())
        .or_else(|| {
            s.copies
                .iter()
                .find(|c| !c.reachable)
                .map(|c| c.site.clone())
        })
        .context("no CMS copy answers and none is unreachable: nothing to fail over")?;
    let target = s
        .copies
        .iter()
        .filter(|c| c.site != lost_site && c.reachable && c.role.as_deref() == Some("standby"))
        .max_by_key(|c| c.lsn)
        .cloned()
        .with_context(|| {
            let others: Vec<String> = s
                .copies
                .iter()
                .filter(|c| c.site != lost_site)
                .map(|c| match (&c.role, c.reachable) {
                    (_, false) => format!("{} does not answer", c.node),
                    (Some(role), true) => format!("{} is {role}", c.node),
                    (None, true) => format!("{} holds no copy", c.node),
                })
                .collect();
            let from = match &master {
                Some(m) => format!("the CMS master is {} (site {lost_site}), reachable", m.node),
                None => format!("the CMS master's site is {lost_site}"),
            };
            format!(
                "{from}: a failover promotes a standby copy in another site, and there is none \
                 to promote ({}); start that site's nodes, or, if the master is where it should \
                 be, there is nothing to fail over",
                if others.is_empty() {
                    "no copy outside the site".to_string()
                } else {
                    others.join("; ")
                }
            )
        })?;
    let planned = master.is_some();
    if !planned && !force {
        bail!(
            "the CMS master is unreachable: `tandem cms failover --force` promotes {} (LSN {}, last write {}); records the master wrote after that are lost",
            target.node,
            target.lsn.unwrap_or(0),
            time(target.last_time_ms.unwrap_or(0))
        );
    }
    let plan = json!({
        "kind": if planned { "planned" } else { "forced" },
        "from": master.as_ref().map(|m| m.node.clone()),
        "to": target.node,
        "steps": if planned {
            vec!["pause writes on the master", "wait until the standby has every record", "promote the standby (new epoch)", "the old master steps down to a standby of the new one"]
        } else {
            vec!["promote the standby (new epoch); the master's site is unreachable"]
        },
    });
    if dry_run {
        return out.emit(&plan, || {
            format!(
                "would fail the CMS over {} from {} to {}:\n{}\n",
                plan["kind"].as_str().unwrap_or(""),
                plan["from"].as_str().unwrap_or("(unreachable)"),
                target.node,
                plan["steps"]
                    .as_array()
                    .map(|a| a
                        .iter()
                        .map(|s| format!("  - {}", s.as_str().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join("\n"))
                    .unwrap_or_default()
            )
        });
    }
    let client = d.client();
    let rt = runtime()?;
    let started = Instant::now();
    let started_ms = crate::runbook::now_ms();
    let addr = |n: &str| d.topology.node(n).expect("a topology node").address.clone();
    let result: anyhow::Result<Value> = rt.block_on(async {
        let t_addr = addr(&target.node);
        let mut lost = json!(null);
        let epoch_base;
        if let Some(m) = &master {
            let m_addr = addr(&m.node);
            let paused: Value = client
                .json(
                    &m_addr,
                    Method::POST,
                    &format!("/internal/v1/db/{DATABASE_CMS}/pause"),
                    Some(&json!({ "reason": format!("the CMS is failing over to {}", target.node) })),
                    STATUS_TIMEOUT,
                )
                .await
                .with_context(|| format!("pausing the CMS master on {}", m.node))?;
            let want = paused["lsn"].as_u64().unwrap_or(0);
            out.progress(&format!(
                "master {} paused at LSN {want}; waiting for {}",
                m.node, target.node
            ));
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let r = client.copy_role(&t_addr, DATABASE_CMS, STATUS_TIMEOUT).await;
                if r.as_ref().is_ok_and(|r| r.lsn >= want) {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = client
                        .json::<Value>(
                            &m_addr,
                            Method::POST,
                            &format!("/internal/v1/db/{DATABASE_CMS}/pause"),
                            Some(&json!({ "reason": null })),
                            STATUS_TIMEOUT,
                        )
                        .await;
                    bail!(
                        "{} did not reach LSN {want} within 30 s; the master serves again",
                        target.node
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            epoch_base = m.epoch.unwrap_or(0).max(target.epoch.unwrap_or(0));
        } else {
            lost = json!({
                "standby_lsn": target.lsn,
                "standby_last_write": time(target.last_time_ms.unwrap_or(0)),
                "note": "the master was unreachable: whatever it wrote after the standby's last write is lost",
            });
            epoch_base = target.epoch.unwrap_or(0);
        }
        let epoch = tandem_node::standby::cross_site_epoch(epoch_base);
        let promoted = client
            .json::<Value>(
                &t_addr,
                Method::POST,
                &format!("/internal/v1/db/{DATABASE_CMS}/promote"),
                Some(&json!({ "epoch": epoch })),
                Duration::from_secs(30),
            )
            .await;
        let promoted = match promoted {
            Ok(p) => (p["lsn"].clone(), p["last_time_ms"].as_i64().unwrap_or(0)),
            Err(e) => {
                // Whether the promotion took effect decides what the paused master may do: the
                // target itself says (an answer lost after the copy took over must not leave
                // two masters).
                let now = client.copy_role(&t_addr, DATABASE_CMS, STATUS_TIMEOUT).await;
                let view = now.as_ref().ok().map(|r| (r.role.as_str(), r.epoch));
                match after_failed_promote(&e, view, epoch) {
                    Promotion::TookEffect => {
                        let r = now.expect("answered");
                        (json!(r.lsn), r.last_time_ms)
                    }
                    Promotion::DidNot => {
                        let resumed = match &master {
                            Some(m) => client
                                .json::<Value>(
                                    &addr(&m.node),
                                    Method::POST,
                                    &format!("/internal/v1/db/{DATABASE_CMS}/pause"),
                                    Some(&json!({ "reason": null })),
                                    STATUS_TIMEOUT,
                                )
                                .await
                                .map(|_| format!("; the master {} serves again", m.node))
                                .unwrap_or_else(|e| {
                                    format!(
                                        "; the master {} could not be told to serve again ({e}): \
                                         run `tandem cms failover` again",
                                        m.node
                                    )
                                }),
                            None => String::new(),
                        };
                        bail!(
                            "promoting the CMS copy on {} failed: {e}; it is still a standby, \
                             nothing changed{resumed}",
                            target.node
                        );
                    }
                    Promotion::Unknown => bail!(
                        "promoting the CMS copy on {}: {e}; whether it took over (epoch {epoch}) \
                         is not known ({}){}. Once {} answers, run `tandem cms failover` again: \
                         if it took over, the old master steps down to its standby by itself; if \
                         not, the failover is run again",
                        target.node,
                        match view {
                            Some((role, at)) => format!(
                                "it is {role} at epoch {at} now, and may still be taking over"
                            ),
                            None => "it does not answer now".to_string(),
                        },
                        master
                            .as_ref()
                            .map(|m| format!(
                                ": the master {} stays paused so that the CMS never has two masters",
                                m.node
                            ))
                            .unwrap_or_default(),
                        target.node
                    ),
                }
            }
        };
        out.progress(&format!(
            "{} is the CMS master (epoch {epoch})",
            target.node
        ));
        // The old master, paused, steps down; one that does not hear it now does so by itself
        // once it hears from the new master (`standby`), and takes no write meanwhile.
        let mut warning = Value::Null;
        if let Some(m) = &master
            && let Err(e) = client
                .json::<Value>(
                    &addr(&m.node),
                    Method::POST,
                    &format!("/internal/v1/db/{DATABASE_CMS}/step-down"),
                    Some(&json!({ "reason": format!("the CMS failed over to {} (epoch {epoch})", target.node) })),
                    STATUS_TIMEOUT,
                )
                .await
        {
            warning = json!(format!(
                "the old master {} was not told to step down ({e}): it stays paused and steps \
                 down by itself once it hears from {}",
                m.node, target.node
            ));
        }
        let (lsn, last_time_ms) = promoted;
        Ok(json!({
            "kind": plan["kind"],
            "from": master.as_ref().map(|m| m.node.clone()),
            "to": target.node,
            "epoch": epoch,
            "lsn": lsn,
            "last_write": time(last_time_ms),
            "lost": lost,
            "warning": warning,
            "seconds": started.elapsed().as_secs_f64(),
        }))
    });
    // Recorded as the runbooks' runs are, with what it lost when forced.
    let error = result.as_ref().err().map(|e| format!("{e:#}"));
    crate::runbook::append_audit(
        d,
        &crate::runbook::AuditLine {
            run_id: &format!("cms-failover-{started_ms}"),
            procedure: "cms-failover",
            user: &crate::runbook::operator(),
            started_ms,
            ended_ms: crate::runbook::now_ms(),
            result: if result.is_ok() { "ok" } else { "failed" },
            error: error.as_deref(),
            resumed: 0,
            steps: &plan["steps"],
            report: result.as_ref().unwrap_or(&Value::Null),
        },
    );
    let report = result?;
    out.emit(&report, || {
        format!(
            "CMS master is now {} (epoch {}, LSN {}), {} failover in {:.1} s{}\n",
            report["to"].as_str().unwrap_or(""),
            report["epoch"],
            report["lsn"],
            report["kind"].as_str().unwrap_or(""),
            report["seconds"].as_f64().unwrap_or(0.0),
            if report["lost"].is_null() {
                "; nothing lost".to_string()
            } else {
                format!(
                    "; the master was unreachable: writes after {} are lost",
                    report["lost"]["standby_last_write"].as_str().unwrap_or("?")
                )
            }
        ) + &report["warning"]
            .as_str()
            .map(|w| format!("warning: {w}\n"))
            .unwrap_or_default()
    })
}

/// What a promotion that failed did, from its error and the target's role and epoch asked
/// right after (None: it did not answer).
#[derive(Debug, PartialEq)]
enum Promotion {
    TookEffect,
    DidNot,
    Unknown,
}

fn after_failed_promote(
    e: &tandem_node::ClientError,
    now: Option<(&str, u64)>,
    epoch: u64,
) -> Promotion {
    use tandem_node::ClientError::{Api, Unreachable};
    match (e, now) {
        (_, Some(("primary", at))) if at == epoch => Promotion::TookEffect,
        // It answered the promotion with an error and is not primary of that epoch: the
        // promotion ran and failed, or was refused.
        (Api { .. }, Some(_)) => Promotion::DidNot,
        // The request surely never reached it.
        (Unreachable { sent: false, .. }, _) => Promotion::DidNot,
        // No answer to a request it may have received (it may still be promoting), or none now.
        _ => Promotion::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_node::ClientError;

    fn unreachable(sent: bool) -> ClientError {
        ClientError::Unreachable {
            addr: "127.0.0.1:1".into(),
            message: "connection refused".into(),
            sent,
        }
    }

    #[test]
    fn a_failed_promotion_is_judged_by_what_the_target_says_after_it() {
        let lost_answer = unreachable(true);
        let refused = ClientError::Api {
            status: 503,
            body: tandem_node::ErrorBody {
                code: "unavailable".into(),
                message: "sqlite: disk I/O error".into(),
            },
        };
        // Primary of the epoch asked for, whatever the error said: it took over.
        for e in [&lost_answer, &refused] {
            assert_eq!(
                after_failed_promote(e, Some(("primary", 9)), 9),
                Promotion::TookEffect
            );
        }
        // It answered with an error and is still a standby: the promotion failed.
        assert_eq!(
            after_failed_promote(&refused, Some(("standby", 1)), 9),
            Promotion::DidNot
        );
        // The request never left: nothing happened, whatever it says now.
        assert_eq!(
            after_failed_promote(&unreachable(false), None, 9),
            Promotion::DidNot
        );
        // No answer to a request it may have got: it may still be promoting.
        assert_eq!(
            after_failed_promote(&lost_answer, Some(("standby", 1)), 9),
            Promotion::Unknown
        );
        assert_eq!(
            after_failed_promote(&lost_answer, None, 9),
            Promotion::Unknown
        );
    }
}
