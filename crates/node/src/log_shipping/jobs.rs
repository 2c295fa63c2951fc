//! The jobs: the loop that runs the backup job on the primary and the copy and restore jobs
//! on the secondary.

use super::*;

/// Starts the jobs of every log-shipped database on a db node.
pub(crate) fn start(node: &Shared) {
    if !node.me().has(tandem_topology::Role::Db) {
        return;
    }
    for database in shipped(&node.topology) {
        let task = tokio::spawn(run(Arc::downgrade(node), database));
        node.log_shipping
            .tasks
            .lock()
            .expect("tasks lock")
            .push(task);
    }
}

/// Stops the jobs (the node is stopping).
pub(crate) fn stop(node: &NodeState) {
    for t in node
        .log_shipping
        .tasks
        .lock()
        .expect("tasks lock")
        .drain(..)
    {
        t.abort();
    }
}

pub(super) async fn run(node: std::sync::Weak<NodeState>, database: String) {
    loop {
        let Some(node) = node.upgrade() else { return };
        if *node.stopping.borrow() {
            return;
        }
        let interval = tick(&node, &database).await;
        drop(node);
        tokio::time::sleep(Duration::from_millis(interval)).await;
    }
}

/// One round of whichever jobs this node runs for `database`; the time to the next round.
pub(super) async fn tick(node: &Shared, database: &str) -> u64 {
    let share = share_dir(&node.topology, database);
    let config = {
        let (s, topology) = (share.clone(), node.topology.clone());
        let memory = node.me().data_dir.join(SHARE_MEMORY_FILE);
        blocking(move || {
            share_claimed_by(&topology, &memory)?;
            read_config(&s)
        })
        .await
    };
    let interval = match config.as_ref().ok().and_then(|c| c.as_ref()) {
        Some(c) if c.secondary.as_deref() == Some(node.name.as_str()) => c.copy_interval_ms,
        Some(c) => c.backup_interval_ms,
        None => BACKUP_INTERVAL_MS_DEFAULT,
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            node.log_shipping
                .update(database, |s| s.state = Some(format!("configuration: {e}")));
            return interval;
        }
    };
    let secondary = config
        .as_ref()
        .and_then(|c| c.secondary.as_deref())
        .is_some_and(|s| s == node.name);
    if !secondary && node.local_primary(database).is_some() {
        backup_tick(node, database, config.as_ref()).await;
    } else if !secondary {
        // Neither the primary nor the secondary (a copy left restoring by a removed mirror, a
        // mirror, an old secondary): no job runs here, and what one showed before is stale.
        node.log_shipping
            .update(database, |s| *s = CopyJobs::default());
    } else {
        let ops = node.host.operations(database);
        let _guard = ops.lock().await;
        let (n, d) = (node.clone(), database.to_string());
        let round = blocking(move || {
            // Read again under the lock: a `remove-secondary` that held it has the last word.
            let c = read_config(&share_dir(&n.topology, &d))?;
            if c.as_ref().and_then(|c| c.secondary.as_deref()) != Some(n.name.as_str()) {
                return Ok(());
            }
            let r = secondary_round(&n, &d, c.as_ref(), Steps::Jobs);
            record_secondary(&n, &d, &r, Steps::Jobs);
            Ok(())
        })
        .await;
        if let Err(e) = round {
            tracing::warn!(database, error = %e, "log-shipping round failed");
        }
    }
    interval
}

/// The configuration a primary writes when the share has none: log shipping to the topology's
/// backup copy, from the topology's primary site (a deployment's first start).
pub(super) fn initial_config(node: &NodeState, database: &str) -> Option<Config> {
    let backup = placed(&node.topology, database, PlacementRole::Backup)?;
    let primary = placed(&node.topology, database, PlacementRole::Primary)?;
    let site = &node.me().site;
    (primary.site == *site && backup.site != *site)
        .then(|| Config::new(database, site, Some(backup.name)))
}

pub(super) async fn backup_tick(node: &Shared, database: &str, config: Option<&Config>) {
    let ops = node.host.operations(database);
    let _guard = ops.lock().await;
    let Some(db) = node.local_primary(database) else {
        return;
    };
    let unshipped = config.filter(|c| c.secondary.is_none()).map(|_| {
        format!(
            "log shipping has no secondary: no copy of {database} in another site follows this \
             primary, and losing its site loses the database (`tandem db log-shipping \
             configure --db {database} --secondary NODE`; `tandem chat failback` does it for mgc)"
        )
    });
    if config.is_some_and(|c| c.primary_site != node.me().site) {
        node.log_shipping.update(database, |s| {
            // A recovered secondary's copy and restore jobs ended with its recovery.
            *s = CopyJobs::default();
            s.state = config.map(|c| {
                format!(
                    "log shipping is configured from site {}: no backup job here",
                    c.primary_site
                )
            });
            s.unshipped = unshipped;
        });
        return;
    }
    node.log_shipping
        .update(database, |s| s.unshipped = unshipped.clone());
    let jobs = node.log_shipping.jobs(database);
    let retention = {
        let mut j = jobs.lock().expect("jobs lock");
        let due = j
            .retention_at
            .is_none_or(|t| t.elapsed() > Duration::from_millis(RETENTION_EVERY_MS));
        if due {
            j.retention_at = Some(Instant::now());
        }
        due
    };
    let ask = BackupAsk {
        node: node.name.clone(),
        deployment: deployment_of(&node.topology),
        site: node.me().site.clone(),
        initial: if config.is_none() {
            initial_config(node, database)
        } else {
            None
        },
        configure: None,
        full: false,
        retention,
    };
    if config.is_none() && ask.initial.is_none() {
        return;
    }
    let dir = share_dir(&node.topology, database);
    let r = blocking(move || backup_round(&db, &dir, ask)).await;
    record_backup(node, database, &r);
}

pub(super) fn record_backup(node: &NodeState, database: &str, r: &Result<BackupRound, String>) {
    if let Ok(round) = r
        && !round.removed.is_empty()
    {
        tracing::debug!(
            database,
            files = round.removed.len(),
            "retention took files out of the chain on the share"
        );
    }
    if let Err(e) = r {
        tracing::warn!(database, error = %e, "log backup failed");
    }
    node.log_shipping.update(database, |s| {
        let job = s.backup.get_or_insert_with(Default::default);
        match r {
            Ok(round) => {
                job.ran(Ok(round.logs.last().map(|f| (f.name(), f.lsn()))));
                job.error = round.full_failed.clone();
                s.state = None;
            }
            Err(e) => job.ran(Err(e.clone())),
        }
    });
}
