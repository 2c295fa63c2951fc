//! The internal API: configure, remove the secondary, the failover steps, status.

use super::*;
use crate::json_body::{BodyRejection, Object};

pub(super) fn shipped_or_refuse(node: &NodeState, database: &str) -> Result<(), ApiError> {
    if shipped(&node.topology).iter().any(|d| d == database) {
        return Ok(());
    }
    Err(ApiError::not_found(format!(
        "{database} is not log-shipped: the topology places no backup copy of it (log-shipped: {})",
        shipped(&node.topology).join(", ")
    )))
}

/// `GET /internal/v1/log-shipping/{db}/status`: the monitor.
pub(crate) async fn status_route(
    State(node): State<Shared>,
    Path(database): Path<String>,
) -> Result<Json<Monitor>, ApiError> {
    shipped_or_refuse(&node, &database)?;
    let topology = node.topology.clone();
    let m = blocking(move || monitor(&topology, &database))
        .await
        .map_err(ApiError::unavailable)?;
    Ok(Json(m))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Configure {
    pub(super) secondary: String,
    pub(super) backup_interval_ms: Option<u64>,
    pub(super) copy_interval_ms: Option<u64>,
    pub(super) full_backup_interval_ms: Option<u64>,
    pub(super) retention_ms: Option<u64>,
    pub(super) backup_alert_ms: Option<u64>,
    pub(super) restore_alert_ms: Option<u64>,
}

/// What `configure` answers: the full backup that seeds the secondary.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Configured {
    pub database: String,
    pub primary: String,
    pub secondary: String,
    pub seed: String,
    pub lsn: Lsn,
    pub config: Config,
}

/// `PUT /internal/v1/log-shipping/{db}` on the primary: ship `db` to `secondary` from now on.
/// Takes a full backup that the secondary seeds itself from (replacing its copy).
pub(crate) async fn configure(
    State(node): State<Shared>,
    Path(database): Path<String>,
    body: Result<Object<Configure>, BodyRejection>,
) -> Result<Json<Configured>, ApiError> {
    let Object(req) = body.map_err(ApiError::json)?;
    shipped_or_refuse(&node, &database)?;
    let db = node.host.get(&database).ok_or_else(|| {
        ApiError::not_found(format!("node {} holds no copy of {database}", node.name))
    })?;
    crate::server::require_primary(&node, &database, &db)?;
    let me = node.me().clone();
    let secondary = node.topology.node(&req.secondary).cloned().ok_or_else(|| {
        ApiError::bad_request(format!("the topology has no node named {}", req.secondary))
    })?;
    if !secondary.has(tandem_topology::Role::Db) {
        return Err(ApiError::bad_request(format!(
            "{} is not a db node",
            secondary.name
        )));
    }
    if secondary.site == me.site {
        return Err(ApiError::bad_request(format!(
            "{} is in site {}, the primary's: a log-shipping secondary is in another site",
            secondary.name, me.site
        )));
    }
    // One configure at a time, from reading what is configured to writing it: two at once
    // each kept the options they were not given as read before the other wrote (until session
    // 32 one's options were lost, both answering as if they held). Only the primary
    // configures, so its lock on the database's operations is enough.
    let ops = node.host.operations(&database);
    let _guard = ops.lock().await;
    let mut config = Config::new(&database, &me.site, Some(secondary.name.clone()));
    // What is not asked for stays as configured before (a failback configures log shipping
    // again with no option: the operator's intervals and window stay).
    let before = read_config(&share_dir(&node.topology, &database))
        .ok()
        .flatten()
        .unwrap_or_else(|| config.clone());
    let bounded = |v: Option<u64>, default: u64, min: u64, max: u64, what: &str| match v {
        None => Ok(default),
        Some(v) if (min..=max).contains(&v) => Ok(v),
        Some(v) => Err(ApiError::bad_request(format!(
            "{what} {v} is out of range ({min}..={max})"
        ))),
    };
    config.backup_interval_ms = bounded(
        req.backup_interval_ms,
        before.backup_interval_ms,
        BACKUP_INTERVAL_MS_MIN,
        BACKUP_INTERVAL_MS_MAX,
        "--backup-interval-ms",
    )?;
    config.copy_interval_ms = bounded(
        req.copy_interval_ms,
        before.copy_interval_ms,
        BACKUP_INTERVAL_MS_MIN,
        BACKUP_INTERVAL_MS_MAX,
        "--copy-interval-ms",
    )?;
    config.full_backup_interval_ms = bounded(
        req.full_backup_interval_ms,
        before.full_backup_interval_ms,
        FULL_BACKUP_INTERVAL_MS_MIN,
        u64::MAX / 2,
        "--full-backup-interval-ms",
    )?;
    config.retention_ms = bounded(
        req.retention_ms,
        before.retention_ms,
        0,
        RETENTION_MS_MAX,
        "--retention-ms",
    )?;
    config.backup_alert_ms = bounded(
        req.backup_alert_ms,
        if before.backup_interval_ms == config.backup_interval_ms {
            before.backup_alert_ms
        } else {
            BACKUP_ALERT_INTERVALS * config.backup_interval_ms
        },
        config.backup_interval_ms,
        u64::MAX / 2,
        "--backup-alert-ms",
    )?;
    config.restore_alert_ms = bounded(
        req.restore_alert_ms,
        before.restore_alert_ms.max(config.backup_interval_ms),
        config.backup_interval_ms,
        u64::MAX / 2,
        "--restore-alert-ms",
    )?;
    // The secondary's copy must be one a secondary may replace.
    let epoch = db.identity().epoch;
    match node
        .client
        .copy_role(&secondary.address, &database, Duration::from_secs(5))
        .await
    {
        Ok(r) if r.role == "mirror" => {
            return Err(ApiError::conflict(format!(
                "{database} on {} is a mirror: a log-shipping secondary is not a mirror",
                secondary.name
            )));
        }
        Ok(r) if r.role == "primary" && r.epoch >= epoch => {
            return Err(ApiError::conflict(format!(
                "{database} on {} is primary at epoch {}, not older than this primary's epoch \
                 {epoch}: it cannot become a log-shipping secondary",
                secondary.name, r.epoch
            )));
        }
        Ok(_) => {}
        Err(crate::ClientError::Api { status: 404, .. }) => {}
        Err(e) => {
            return Err(ApiError::unavailable(format!(
                "cannot reach the secondary {}: {e}",
                secondary.name
            )));
        }
    }
    let dir = share_dir(&node.topology, &database);
    let ask = BackupAsk {
        node: node.name.clone(),
        deployment: deployment_of(&node.topology),
        site: me.site.clone(),
        initial: None,
        configure: Some(config),
        full: true,
        retention: false,
    };
    let d = db.clone();
    let r = blocking(move || backup_round(&d, &dir, ask)).await;
    record_backup(&node, &database, &r);
    let round = r.map_err(ApiError::conflict)?;
    let full = round.full.expect("configure takes a full backup");
    let config = round.config.expect("configure writes the configuration");
    tracing::info!(database, secondary = %secondary.name, seed = %full.name(), "log shipping configured");
    Ok(Json(Configured {
        database,
        primary: node.name.clone(),
        secondary: secondary.name,
        seed: full.name(),
        lsn: full.lsn(),
        config,
    }))
}

/// `DELETE /internal/v1/log-shipping/{db}/secondary`: the secondary's configuration removed
/// (its jobs stop; its copy and every file stay). Any node may do it: the configuration is on
/// the share.
pub(crate) async fn remove_secondary(
    State(node): State<Shared>,
    Path(database): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    shipped_or_refuse(&node, &database)?;
    // A round of this node's jobs in progress ends first — within a bound, as the share's lock
    // is waited for: a round stuck on that lock would hold this for as long.
    let ops = node.host.operations(&database);
    let _guard = tokio::time::timeout(std::time::Duration::from_secs(10), ops.lock())
        .await
        .map_err(|_| {
            ApiError::unavailable(format!(
                "a round of {}'s log-shipping jobs for {database} has held its operations for \
                 over 10 s (waiting for the share's lock?): try another node, or again",
                node.name
            ))
        })?;
    let dir = share_dir(&node.topology, &database);
    let (holder, deployment) = (node.name.clone(), deployment_of(&node.topology));
    let removed = blocking(move || {
        let _lock = ShareLock::acquire(&dir, &holder, &deployment)?;
        let Some(mut config) = read_config(&dir)? else {
            return Err(format!(
                "log shipping of {} is not configured ({} has no {CONFIG_FILE})",
                dir.file_name().unwrap_or_default().to_string_lossy(),
                dir.display()
            ));
        };
        let removed = config.secondary.take();
        if removed.is_some() {
            write_config(&dir, &config)?;
        }
        Ok(removed)
    })
    .await
    .map_err(ApiError::conflict)?;
    if let Some(s) = &removed {
        tracing::warn!(database, secondary = %s, "log-shipping secondary removed");
    }
    node.log_shipping.update(&database, |s| s.state = None);
    Ok(Json(serde_json::json!({
        "database": database,
        "removed": removed,
        "already": removed.is_none(),
    })))
}

/// The configuration, refusing a step on a node that is not the secondary of a configured
/// log shipping (after `remove-secondary`, any node may run the steps).
pub(super) async fn step_config(
    node: &NodeState,
    database: &str,
) -> Result<Option<Config>, ApiError> {
    let dir = share_dir(&node.topology, database);
    let config = blocking(move || read_config(&dir))
        .await
        .map_err(ApiError::unavailable)?;
    if let Some(s) = config.as_ref().and_then(|c| c.secondary.as_deref())
        && s != node.name
    {
        return Err(ApiError::conflict(format!(
            "log shipping of {database} goes to {s}, not {}",
            node.name
        )));
    }
    Ok(config)
}

/// What the `copy` step answers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Copied {
    pub database: String,
    pub node: String,
    pub files_copied: Vec<String>,
    /// The last LSN of the copied files (what the restore step can reach), and of the share.
    pub copied_lsn: Lsn,
    pub share_lsn: Lsn,
    /// Files left on the share: they do not read as the log backups their names say.
    #[serde(default)]
    pub files_refused: Vec<String>,
}

/// `POST /internal/v1/log-shipping/{db}/copy` on the secondary: copy now every log backup of
/// the share it has not copied. Needs only the share and this node.
pub(crate) async fn copy_route(
    State(node): State<Shared>,
    Path(database): Path<String>,
) -> Result<Json<Copied>, ApiError> {
    shipped_or_refuse(&node, &database)?;
    let config = step_config(&node, &database).await?;
    let ops = node.host.operations(&database);
    let _guard = ops.lock().await;
    let (n, d) = (node.clone(), database.clone());
    let (round, copied_lsn, share_lsn) = blocking(move || {
        let r = secondary_round(&n, &d, config.as_ref(), Steps::Copy);
        record_secondary(&n, &d, &r, Steps::Copy);
        let r = r?;
        let local = Listing::read(&local_dir(&n, &d))?;
        let share = Listing::read(&share_dir(&n.topology, &d))?;
        let copy_lsn = n.host.get(&d).map(|c| c.identity().lsn).unwrap_or(0);
        let copied = local
            .logs()
            .map(|(_, _, l)| l)
            .max()
            .unwrap_or(0)
            .max(copy_lsn);
        let share_lsn = share.logs().map(|(_, _, l)| l).max().unwrap_or(0);
        Ok((r, copied, share_lsn))
    })
    .await
    .map_err(ApiError::unavailable)?;
    Ok(Json(Copied {
        database,
        node: node.name.clone(),
        files_copied: round.copied.files.into_iter().map(|(n, _)| n).collect(),
        files_refused: round.copied.refused,
        copied_lsn,
        share_lsn,
    }))
}

/// `POST /internal/v1/log-shipping/{db}/restore` on the secondary: apply now every copied log
/// backup not applied yet, in LSN order, checked as one chain first. The answer's LSN and time
/// are the data-loss point of a failover. A gap or a damaged file refuses it, the file named,
/// and nothing is applied.
pub(crate) async fn restore_route(
    State(node): State<Shared>,
    Path(database): Path<String>,
) -> Result<Json<Restored>, ApiError> {
    shipped_or_refuse(&node, &database)?;
    let config = step_config(&node, &database).await?;
    let ops = node.host.operations(&database);
    let _guard = ops.lock().await;
    let db = node.host.get(&database).ok_or_else(|| {
        ApiError::not_found(format!(
            "node {} holds no copy of {database}: configure log shipping to it first (that \
             seeds it)",
            node.name
        ))
    })?;
    let id = db.identity();
    if !matches!(id.role, Role::Restoring | Role::Standby) {
        return Err(ApiError::conflict(format!(
            "{database} on {} is {} (epoch {}): log backups are applied only to a restoring or \
             standby copy{}",
            node.name,
            id.role,
            id.epoch,
            if id.role == Role::Primary {
                "; none may be applied after recover"
            } else {
                ""
            }
        )));
    }
    let (n, d) = (node.clone(), database.clone());
    let round = blocking(move || {
        let r = secondary_round(&n, &d, config.as_ref(), Steps::Restore);
        record_secondary(&n, &d, &r, Steps::Restore);
        r
    })
    .await
    .map_err(ApiError::unavailable)?;
    match round.restored {
        Some(Ok(r)) => Ok(Json(r)),
        Some(Err(e)) => Err(ApiError::conflict(e.to_string())),
        None => Err(ApiError::unavailable("the restore step did not run")),
    }
}

/// Takes a backup of this node's copy of `database` into the share now (`tandem db backup`):
/// on the primary a full backup (which starts a new chain when the share holds none of this
/// copy's history) or a log backup; on another copy a full backup that starts no chain.
pub(crate) async fn backup_now(
    node: &Shared,
    database: &str,
    log: bool,
) -> Result<Vec<BackupFile>, ApiError> {
    let ops = node.host.operations(database);
    let _guard = ops.lock().await;
    let db = node.open_copy(database)?;
    let dir = share_dir(&node.topology, database);
    let id = db.identity();
    if id.role != Role::Primary {
        // The share holds the primary's chain: another copy's full backup there became the
        // newest one, which secondaries seed from and retention keeps (until session 32 it was
        // written, and the retention removed the configured seed).
        return Err(ApiError::conflict(format!(
            "{database} on {} is {}: backups on the share are the primary's ({}); a full \
             backup of this copy goes elsewhere: `--to DIR` (a copy-only backup)",
            node.name,
            id.role,
            if log {
                "log backups continue its chain"
            } else {
                "its chain starts at its full backups"
            }
        )));
    }
    let site = node.me().site.clone();
    let (name, deployment) = (node.name.clone(), deployment_of(&node.topology));
    let r = blocking(move || {
        let _lock = ShareLock::acquire(&dir, &name, &deployment)?;
        let (state, _) = ensure_chain(&db, &dir, !log)?;
        if log {
            if state == ChainState::Empty {
                return Err(format!(
                    "no full backup of {} in {}: take a full backup first (it starts the chain)",
                    db.identity().name,
                    dir.display()
                ));
            }
            return tandem_store::log_backup_of_primary(&db, &dir).map_err(|e| e.to_string());
        }
        let full = tandem_store::full_backup(&db, &dir).map_err(|e| e.to_string())?;
        // A new chain reseeds the secondary of a log shipping configured from here.
        if state != ChainState::Continues
            && let Some(mut c) = read_config(&dir)?
            && c.primary_site == site
        {
            c.seed = Some(full.name());
            write_config(&dir, &c)?;
        }
        tracing::info!(database = %db.identity().name, node = %name, file = %full.name(), "full backup on demand");
        Ok(vec![full])
    })
    .await
    .map_err(ApiError::conflict)?;
    Ok(r)
}
