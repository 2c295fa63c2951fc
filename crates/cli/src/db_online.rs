//! `tandem db backup|restore|recover --db DB --instance NODE`: the same operations as the
//! offline forms, on a running node's copy. The node does the work (its copy is closed,
//! restored, reopened); the command checks what it can first and reports what the node did.

use crate::db::{BackupArgs, DbCommand, RecoverArgs, RestoreArgs};
use crate::deployment::{Deployment, runtime};
use crate::output::{Output, time};
use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::time::Duration;
use tandem_node::Method;
use tandem_store::BackupFile;

/// Deadline of a backup, restore or recover request: they move whole databases.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(3_600);

pub fn run(d: &Deployment, cmd: DbCommand, out: &Output) -> anyhow::Result<()> {
    match cmd {
        DbCommand::Backup(a) => backup(d, a, out),
        DbCommand::Restore(a) => restore(d, a, out),
        DbCommand::Recover(a) => recover(d, a, out),
        _ => unreachable!("main runs the offline forms and the other groups"),
    }
}

/// Every database the topology places somewhere.
pub(crate) fn databases(d: &Deployment) -> Vec<String> {
    let mut all: Vec<String> = d
        .topology
        .nodes
        .iter()
        .flat_map(|n| d.topology.databases_on(&n.name))
        .map(|p| p.database)
        .collect();
    all.sort();
    all.dedup();
    all
}

/// Refuses a database the topology does not know.
pub(crate) fn known_database(d: &Deployment, db: &str) -> anyhow::Result<()> {
    let all = databases(d);
    if !all.iter().any(|x| x == db) {
        bail!(
            "no database named {db} in the topology (databases: {})",
            all.join(", ")
        );
    }
    Ok(())
}

/// The db node named `name`, or an error that lists the db nodes.
pub(crate) fn db_node(d: &Deployment, name: &str) -> anyhow::Result<tandem_topology::Node> {
    let known = || {
        d.topology
            .nodes_with(tandem_topology::Role::Db)
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let n = d
        .topology
        .node(name)
        .with_context(|| format!("no node named {name} (db nodes: {})", known()))?;
    if !n.has(tandem_topology::Role::Db) {
        bail!("{name} is not a db node (db nodes: {})", known());
    }
    Ok(n.clone())
}

fn post(
    d: &Deployment,
    node: &tandem_topology::Node,
    path: &str,
    body: Value,
) -> anyhow::Result<Value> {
    let client = d.client();
    runtime()?
        .block_on(client.json::<Value>(
            &node.address,
            Method::POST,
            path,
            Some(&body),
            OPERATION_TIMEOUT,
        ))
        .map_err(|e| {
            // Sent and then no answer (the node died or hung mid-way): whether it was done is
            // not known — said, with what to do (it said only "connection closed").
            let unknown = matches!(e, tandem_node::ClientError::Unreachable { sent: true, .. });
            let e = anyhow::Error::new(e).context(node.name.clone());
            if unknown {
                e.context(format!(
                    "{} did not answer: whether the operation was done is not known; see \
                     `tandem status` (where the database's primary is now) and run it again",
                    node.name
                ))
            } else {
                e
            }
        })
}

fn backup(d: &Deployment, a: BackupArgs, out: &Output) -> anyhow::Result<()> {
    let db = a.db.expect("online form");
    let node = db_node(d, a.instance.as_deref().expect("clap requires --instance"))?;
    known_database(d, &db)?;
    let ask = match &a.to {
        None => json!({ "log": a.log }),
        Some(_) if a.log => bail!(
            "--to with --db --log: a log backup continues the log chain on the share; leave \
             out --to (or take a full backup there)"
        ),
        // The node writes the file: the path as this command sees it.
        Some(to) => json!({ "to": std::path::absolute(to)? }),
    };
    let report = post(d, &node, &format!("/internal/v1/db/{db}/backup"), ask)?;
    out.emit(&report, || {
        let files: Vec<BackupFile> =
            serde_json::from_value(report["files"].clone()).unwrap_or_default();
        if files.is_empty() {
            return "nothing committed since the last log backup: no file written\n".into();
        }
        files
            .iter()
            .map(crate::db::describe_file)
            .collect::<Vec<_>>()
            .join("\n")
    })
}

fn restore(d: &Deployment, a: RestoreArgs, out: &Output) -> anyhow::Result<()> {
    let db = a.db.clone().expect("online form");
    let node = db_node(d, a.instance.as_deref().expect("clap requires --instance"))?;
    known_database(d, &db)?;
    // The node reads the files: paths as this command sees them.
    let mut from = Vec::new();
    for f in &a.from {
        if !f.exists() {
            bail!("{}: no such file or directory", f.display());
        }
        from.push(std::path::absolute(f)?);
    }
    let recovery = if a.norecovery {
        "norecovery"
    } else if a.standby {
        "standby"
    } else {
        "recover"
    };
    let stop_at_time_ms = match &a.stop_at_time {
        Some(t) => Some(crate::db::parse_time(t)?),
        None => None,
    };
    let report = post(
        d,
        &node,
        &format!("/internal/v1/db/{db}/restore"),
        json!({
            "from": from,
            "replace": a.replace,
            "recovery": recovery,
            "stop_at_lsn": a.stop_at_lsn,
            "stop_at_time_ms": stop_at_time_ms,
            "force": a.force,
        }),
    )?;
    out.emit(&report, || {
        let mut s = String::new();
        if let Some(f) = report["full_backup"].as_str() {
            s.push_str(&format!("full backup  {f}\n"));
        }
        s.push_str(&format!(
            "log backups  {} applied, {} records{}\nrestored     {db} on {} at LSN {}, epoch {}, role {}{}\nlast commit  {}\n",
            report["logs_applied"].as_array().map(|a| a.len()).unwrap_or(0),
            report["records_applied"],
            crate::db::skipped_words(report["logs_skipped"].as_array().map_or(0, Vec::len)),
            node.name,
            report["lsn"],
            report["epoch"],
            report["role"].as_str().unwrap_or("?"),
            crate::db::stop_words(report["stopped"] == true, report["stop_not_reached"] == true),
            time(report["last_time_ms"].as_i64().unwrap_or(0)),
        ));
        s
    })
}

fn recover(d: &Deployment, a: RecoverArgs, out: &Output) -> anyhow::Result<()> {
    let node = db_node(d, &a.instance)?;
    known_database(d, &a.db)?;
    let report = post(
        d,
        &node,
        &format!("/internal/v1/db/{}/recover", a.db),
        json!({ "force": a.force }),
    )?;
    out.emit(&report, || {
        format!(
            "{} on {}: {} → primary of epoch {}, writable, at LSN {}\n",
            a.db,
            node.name,
            report["previous_role"].as_str().unwrap_or("?"),
            report["epoch"],
            report["lsn"],
        )
    })
}
