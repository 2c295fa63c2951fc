//! Online operations on this node's copy of a database (`tandem db backup|restore|recover
//! --db DB --instance NODE`): a backup into the share (or a copy-only one into a directory); a
//! restore into the copy, which is closed, restored and reopened; recover, which puts every
//! handle of the copy away and brings it online as the primary of a new epoch. Each holds the
//! copy's operations lock, so log shipping's jobs never run beside it, and leaves the copy as it
//! was when it fails.

use crate::error::ApiError;
use crate::json_body::{BodyRejection, Object};
use crate::server::{NodeState, Shared};
use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;
use tandem_store::{BackupFile, Recovery, RestoreOptions, Role, StopAt, StoreError};

/// Backup files one restore reads at most.
const RESTORE_FILES_MAX: usize = 100_000;

/// How long each other copy has to say what it is before a recovery goes on without it.
const ROLE_TIMEOUT: Duration = Duration::from_millis(1_500);

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(ApiError::unavailable(e.to_string())))
}

/// A restore refused or failed: the store's sentence (it names the file and the LSN).
fn refused(e: StoreError) -> ApiError {
    match e {
        StoreError::Io { .. } | StoreError::Closed(_) | StoreError::Sqlite(_) => {
            ApiError::unavailable(e.to_string())
        }
        other => ApiError::conflict(other.to_string()),
    }
}

/// The copy must be placed (or installed) on this node and not mirrored: replacing or
/// recovering a mirrored copy would fight its mirroring.
fn check_copy(node: &NodeState, database: &str, what: &str) -> Result<(), ApiError> {
    if node.host.hosted(database).is_none() {
        return Err(ApiError::not_found(format!(
            "node {} holds no copy of {database}",
            node.name
        )));
    }
    if let Some(link) = node.mirroring.link(database) {
        return Err(ApiError::conflict(format!(
            "{database} on {} is mirrored with {}: {what} a mirrored copy is refused; remove its \
             mirroring first (tandem db mirror remove), or use tandem db mirror failover",
            node.name,
            link.partner()
        )));
    }
    Ok(())
}

/// What would make this node's copy a primary.
#[derive(Clone, Copy, PartialEq, Eq)]
enum MakesPrimary {
    /// A restore without `norecovery` or `standby`.
    Restore,
    /// `recover`.
    Recover,
}

/// Refuses to make `database`'s copy on this node a primary while another copy of it is a
/// primary that accepts writes: the newer epoch would make that one step down and drop what it
/// wrote since (DESIGN.md §6, invariant 2). A copy that does not answer (a lost site), that is
/// paused (a failback hands over) or fenced is no obstacle; `force` (a disaster-recovery drill)
/// skips the check.
async fn no_other_writable_primary(
    node: &NodeState,
    database: &str,
    how: MakesPrimary,
) -> Result<(), ApiError> {
    let answers = node
        .client
        .copy_role_answers(&node.topology, database, Some(&node.name), ROLE_TIMEOUT)
        .await;
    let Some(p) = answers
        .iter()
        .filter_map(|(_, a)| a.as_ref().ok())
        .find(|r| r.role == "primary" && r.writable && r.paused.is_none())
    else {
        let silent: Vec<&str> = answers
            .iter()
            .filter(|(_, a)| {
                matches!(
                    a,
                    Err(crate::client::ClientError::Unreachable { sent: true, .. })
                )
            })
            .map(|(n, _)| n.as_str())
            .collect();
        return no_silent_copy_in_this_site(node, database, &silent).await;
    };
    Err(ApiError::conflict(format!(
        "{database} has a writable primary on {} (epoch {}, LSN {}): {} the copy on {} would \
         make a second primary, of a newer epoch, and {} would step down to it and drop what \
         it wrote since: {}fail the database over, or pass --force for a disaster-recovery drill",
        p.node,
        p.epoch,
        p.lsn,
        match how {
            MakesPrimary::Restore => "restoring and recovering",
            MakesPrimary::Recover => "recovering",
        },
        node.name,
        p.node,
        match how {
            MakesPrimary::Restore =>
                "restore with --norecovery or --standby for a copy that follows, ",
            MakesPrimary::Recover => "",
        }
    )))
}

/// Refuses while a node of this node's site whose copy of `database` may be a primary accepts
/// connections and does not answer: a stopped or hung process, which may acknowledge writes
/// again when it resumes — writes the newer epoch then drops. The copy that may be primary is
/// the one the site's witness names; without its word (no mirroring, or the witness silent),
/// the copies the topology places as primary or mirror. A node that refuses connections (its
/// process is gone) is no obstacle, nor one of another site (a lost site: its chat servers are
/// no longer active, DESIGN.md §4). `silent`: the nodes that took the role question and gave
/// no answer.
async fn no_silent_copy_in_this_site(
    node: &NodeState,
    database: &str,
    silent: &[&str],
) -> Result<(), ApiError> {
    use tandem_topology::PlacementRole;
    let site = &node.me().site;
    let in_site: Vec<&str> = silent
        .iter()
        .copied()
        .filter(|n| node.topology.node(n).is_some_and(|n| n.site == *site))
        .collect();
    if in_site.is_empty() {
        return Ok(());
    }
    let witness = node
        .topology
        .witnesses
        .get(site)
        .and_then(|w| node.topology.node(w));
    let named = match witness {
        Some(w) => node
            .client
            .status(&w.address, ROLE_TIMEOUT)
            .await
            .ok()
            .and_then(|s| s.witness)
            .and_then(|records| records.into_iter().find(|r| r.database == database))
            .map(|r| r.primary),
        None => None,
    };
    let silent: Vec<&str> = in_site
        .into_iter()
        .filter(|n| match &named {
            Some(primary) => n == primary,
            None => node.topology.databases_on(n).iter().any(|p| {
                p.database == database
                    && matches!(p.role, PlacementRole::Primary | PlacementRole::Mirror)
            }),
        })
        .collect();
    match silent.as_slice() {
        [] => Ok(()),
        nodes => Err(ApiError::conflict(format!(
            "{} accepts connections and does not answer (a stopped or hung process): its copy \
             of {database} may be a primary that acknowledges writes again when it resumes, \
             which the new epoch would then drop; stop it first (`tandem down --nodes {}`) and \
             run this again, or pass --force",
            nodes.join(", "),
            nodes.join(",")
        ))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BackupAsk {
    #[serde(default)]
    log: bool,
    /// A directory of this node's (absolute) to write a full backup into instead of the share:
    /// a copy-only backup, which starts and moves no log chain.
    #[serde(default)]
    to: Option<PathBuf>,
}

/// What `backup` answers.
#[derive(Serialize)]
struct BackedUp {
    database: String,
    node: String,
    files: Vec<BackupFile>,
}

/// `POST /internal/v1/db/{db}/backup`: a full backup (or, with `log`, a log backup) of this
/// node's copy into the share's directory of the database, or, with `to`, a full backup into
/// that directory.
pub(crate) async fn backup(
    State(node): State<Shared>,
    Path(database): Path<String>,
    body: Result<Object<BackupAsk>, BodyRejection>,
) -> Result<Json<Value>, ApiError> {
    let Object(req) = body.map_err(ApiError::json)?;
    let files = match req.to {
        None => crate::log_shipping::backup_now(&node, &database, req.log).await?,
        Some(to) => vec![copy_only_backup(&node, &database, req.log, to).await?],
    };
    let answer = BackedUp {
        database,
        node: node.name.clone(),
        files,
    };
    Ok(Json(serde_json::to_value(answer).expect("serializes")))
}

/// A full backup of this node's copy, whatever its role, into `to`: it leaves the share and
/// the log-backup cursor alone.
async fn copy_only_backup(
    node: &Shared,
    database: &str,
    log: bool,
    to: PathBuf,
) -> Result<BackupFile, ApiError> {
    if log {
        return Err(ApiError::bad_request(format!(
            "a log backup continues the log chain on the share: it is not written to {}; \
             leave out the directory",
            to.display()
        )));
    }
    if !to.is_absolute() {
        return Err(ApiError::bad_request(format!(
            "{}: the backup directory is a path on node {}, and an absolute one",
            to.display(),
            node.name
        )));
    }
    if to.exists() && !to.is_dir() {
        return Err(ApiError::bad_request(format!(
            "{}: not a directory (on node {})",
            to.display(),
            node.name
        )));
    }
    let ops = node.host.operations(database);
    let _guard = ops.lock().await;
    let db = node.open_copy(database)?;
    blocking(move || {
        tandem_store::seed_backup(&db, &to).map_err(|e| match e {
            StoreError::Io { .. } => ApiError::bad_request(e.to_string()),
            other => ApiError::unavailable(other.to_string()),
        })
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RestoreAsk {
    from: Vec<PathBuf>,
    #[serde(default)]
    replace: bool,
    /// `recover` (the default), `norecovery` or `standby`.
    #[serde(default)]
    recovery: Option<String>,
    stop_at_lsn: Option<u64>,
    stop_at_time_ms: Option<i64>,
    /// Recover even while another copy is a writable primary (a disaster-recovery drill).
    #[serde(default)]
    force: bool,
}

/// `POST /internal/v1/db/{db}/restore`: restores backup files (paths this node reads) into its
/// copy. A full backup replaces the copy (`replace` required when one exists): the copy closes,
/// the restore runs beside it and takes its place only once it succeeded, and the new copy
/// opens `restoring`, `standby` or as the primary of a new epoch. Log backups alone are applied
/// to a restoring or standby copy. On any refusal the copy is as it was.
pub(crate) async fn restore(
    State(node): State<Shared>,
    Path(database): Path<String>,
    body: Result<Object<RestoreAsk>, BodyRejection>,
) -> Result<Json<Value>, ApiError> {
    let Object(req) = body.map_err(ApiError::json)?;
    check_copy(&node, &database, "restoring over")?;
    if req.from.is_empty() {
        return Err(ApiError::bad_request("no backup file to restore from"));
    }
    let recovery = match req.recovery.as_deref().unwrap_or("recover") {
        "recover" => Recovery::Recover,
        "norecovery" => Recovery::NoRecovery,
        "standby" => Recovery::Standby,
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown recovery {other:?} (recover, norecovery, standby)"
            )));
        }
    };
    let stop_at = match (req.stop_at_lsn, req.stop_at_time_ms) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "stop_at_lsn and stop_at_time_ms both given: a restore stops at one point",
            ));
        }
        (Some(n), None) => Some(StopAt::Lsn(n)),
        (None, Some(t)) => Some(StopAt::TimeMs(t)),
        (None, None) => None,
    };
    if recovery == Recovery::Recover && !req.force {
        no_other_writable_primary(&node, &database, MakesPrimary::Restore).await?;
    }
    let options = RestoreOptions {
        recovery,
        stop_at,
        // A restore that recovers is a disaster-recovery move, as `recover` is: its epoch is
        // above any a copy of the database used since the backup.
        recover_epoch_floor: Some(crate::standby::cross_site_epoch(0)),
        ..Default::default()
    };
    let from = req.from.clone();
    let files = blocking(move || tandem_store::collect(&from).map_err(refused)).await?;
    if files.len() > RESTORE_FILES_MAX {
        return Err(ApiError::bad_request(format!(
            "{} backup files: one restore reads at most {RESTORE_FILES_MAX}",
            files.len()
        )));
    }
    for f in &files {
        let name = match f {
            BackupFile::Full { header, .. } => &header.name,
            BackupFile::Log { header, .. } => &header.name,
        };
        if *name != database {
            return Err(ApiError::bad_request(format!(
                "{} is a backup of database {name}, not {database}",
                f.path().display()
            )));
        }
    }
    if files.is_empty() {
        return Err(ApiError::bad_request(
            "no backup file (.tfb, .tlb) among the paths given",
        ));
    }
    let has_full = files.iter().any(|f| matches!(f, BackupFile::Full { .. }));
    let ops = node.host.operations(&database);
    let _guard = ops.lock().await;
    tracing::info!(
        database,
        files = files.len(),
        replace = req.replace,
        "restoring the copy"
    );
    let path = node.host.path_of(&database);
    let exists = path.join(tandem_store::DB_FILE).exists();
    let n = node.clone();
    let d = database.clone();
    let from = req.from.clone();
    let replace = req.replace;
    let report = blocking(move || {
        if exists && !replace {
            if has_full {
                return Err(ApiError::conflict(format!(
                    "{d} exists on {}: pass --replace to overwrite it with the full backup (or \
                     give only log backups, to apply to a restoring copy)",
                    n.name
                )));
            }
            let db = n.host.get(&d).ok_or_else(|| {
                ApiError::unavailable(format!("the copy of {d} on {} is not open", n.name))
            })?;
            return tandem_store::restore_logs(&db, &from, &options).map_err(refused);
        }
        if !has_full {
            return Err(ApiError::bad_request(format!(
                "no full backup among the files: {d} on {} {} from one",
                n.name,
                if exists {
                    "is replaced only"
                } else {
                    "has no copy yet; a new copy starts"
                }
            )));
        }
        let existed = n.host.get(&d).is_some();
        // Every handle put away: the copy closes once its last user lets go.
        n.host.replace(&d, None);
        let restored = tandem_store::restore_new(&path, &from, &options, path.exists());
        let report = match restored {
            Ok(r) => r,
            Err(e) => {
                if existed && let Ok(db) = n.host.reopen(&d, &n.topology) {
                    n.host.replace(&d, Some(db));
                }
                return Err(refused(e));
            }
        };
        let db = n
            .host
            .reopen(&d, &n.topology)
            .map_err(ApiError::unavailable)?;
        n.host.replace(&d, Some(db));
        Ok(report)
    })
    .await?;
    tracing::warn!(database, lsn = report.lsn, epoch = report.epoch, role = %report.role, "copy restored");
    let (n, d) = (node.clone(), database.clone());
    let made_primary = report.role == Role::Primary;
    let epoch = report.epoch;
    let _ = tokio::task::spawn_blocking(move || {
        if made_primary {
            crate::epoch_mark::record_or_warn(&n.topology, &d, &n.name, epoch);
        }
        crate::log_shipping::refresh_progress(&n, &d)
    })
    .await;
    let mut v = serde_json::to_value(&report).expect("serializes");
    v["database"] = json!(database);
    v["node"] = json!(node.name);
    Ok(Json(v))
}

fn already_primary(node: &NodeState, database: &str, epoch: u64) -> ApiError {
    ApiError::conflict(format!(
        "{database} on {} is already primary (epoch {epoch}): recover brings a restoring, \
         standby, mirror or replica copy online",
        node.name
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RecoverAsk {
    /// Recover even while another copy is a writable primary (a disaster-recovery drill).
    #[serde(default)]
    force: bool,
}

/// `POST /internal/v1/db/{db}/recover`: every handle of this node's copy is put away (the copy
/// closes), then it opens again and becomes the primary of a new epoch, writable. Refused on a
/// primary, on a mirrored copy, and while another copy is a writable primary (unless `force`).
pub(crate) async fn recover(
    State(node): State<Shared>,
    Path(database): Path<String>,
    body: Result<Object<RecoverAsk>, BodyRejection>,
) -> Result<Json<Value>, ApiError> {
    let Object(req) = body.map_err(ApiError::json)?;
    if let Some(db) = node.host.get(&database) {
        let id = db.identity();
        if id.role == Role::Primary {
            return Err(already_primary(&node, &database, id.epoch));
        }
    }
    check_copy(&node, &database, "recovering")?;
    let has_copy = node.host.get(&database).is_some()
        || node
            .host
            .path_of(&database)
            .join(tandem_store::DB_FILE)
            .exists();
    // Without a copy the node refuses below, with its own reason.
    if has_copy && !req.force {
        no_other_writable_primary(&node, &database, MakesPrimary::Recover).await?;
    }
    let ops = node.host.operations(&database);
    let _guard = ops.lock().await;
    let n = node.clone();
    let d = database.clone();
    let (before, id) = blocking(move || {
        let db = match n.host.get(&d) {
            Some(db) => db,
            None => n.host.reopen(&d, &n.topology).map_err(|e| {
                ApiError::not_found(format!(
                    "node {} has no copy of {d} to recover: {e}",
                    n.name
                ))
            })?,
        };
        let before = db.identity();
        if before.role == Role::Primary {
            n.host.replace(&d, Some(db));
            return Err(already_primary(&n, &d, before.epoch));
        }
        n.host.replace(&d, None);
        drop(db);
        let db = n
            .host
            .reopen(&d, &n.topology)
            .map_err(|e| ApiError::unavailable(format!("{e}; run the command again")))?;
        // Recovering a copy is a disaster-recovery move (its primary may be in a lost site that
        // cannot be asked): the new epoch is above anything that site could have counted to.
        let epoch = crate::standby::cross_site_epoch(db.identity().epoch);
        if let Err(e) = db.recover(Some(epoch)) {
            n.host.replace(&d, Some(db));
            return Err(refused(e));
        }
        let prepared = crate::db_host::prepare(&db, &d, &n.topology);
        let id = db.identity();
        crate::epoch_mark::record_or_warn(&n.topology, &d, &n.name, id.epoch);
        n.host.replace(&d, Some(db));
        prepared.map_err(ApiError::unavailable)?;
        Ok((before, id))
    })
    .await?;
    tracing::warn!(
        database,
        epoch = id.epoch,
        lsn = id.lsn,
        "copy recovered: primary of a new epoch"
    );
    let (n, d) = (node.clone(), database.clone());
    let _ =
        tokio::task::spawn_blocking(move || crate::log_shipping::refresh_progress(&n, &d)).await;
    Ok(Json(json!({
        "database": database,
        "node": node.name,
        "previous_role": before.role.to_string(),
        "role": id.role.to_string(),
        "epoch": id.epoch,
        "lsn": id.lsn,
        "last_time_ms": id.last_time_ms,
    })))
}
