//! The secondary: seed, copy, restore.

use super::*;

#[derive(Default, Serialize, Deserialize)]
pub(super) struct LocalState {
    pub(super) seed: Option<String>,
}

/// What a copy step did: the files copied (name, last LSN), and those it left on the share
/// because they do not read as the log backups their names say.
#[derive(Debug, Default)]
pub(super) struct CopyStep {
    pub(super) files: Vec<(String, Lsn)>,
    pub(super) refused: Vec<String>,
}

/// Copies every log backup of the share after `after` that is not in `local` yet, at most
/// `files_max`, each under a temporary name renamed once durable. A file that does not read
/// as the log backup its name says is left where it is and named (until session 32 a stray
/// file named like one was copied, and the restore then refused the local copy even once the
/// share's was gone): the restore, which checks every record before it applies any, meets a
/// gap there instead — and seeds the copy again from a newer full backup, if there is one.
pub(super) fn copy_new(
    share: &FsPath,
    local: &FsPath,
    after: Lsn,
    files_max: usize,
) -> Result<CopyStep, String> {
    std::fs::create_dir_all(local).map_err(|e| format!("{}: {e}", local.display()))?;
    let have = Listing::read(local)?;
    let from = have
        .logs()
        .map(|(_, _, last)| last)
        .max()
        .unwrap_or(0)
        .max(after);
    let listing = Listing::read(share)?;
    let mut copied = Vec::new();
    let mut refused = Vec::new();
    for (name, first, last) in listing.logs() {
        if last <= from || local.join(name).exists() {
            continue;
        }
        if copied.len() >= files_max {
            break;
        }
        let (src, dst) = (share.join(name), local.join(name));
        let tmp = local.join(format!(".{name}.part"));
        let r = (|| {
            std::fs::copy(&src, &tmp)?;
            std::fs::File::open(&tmp)?.sync_all()?;
            Ok::<_, std::io::Error>(())
        })();
        if let Err(e) = r {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!("copying {}: {e}", src.display()));
        }
        let header = match tandem_store::read_header(&tmp) {
            Ok(BackupFile::Log { header, .. })
                if header.first_lsn == first && header.last_lsn == last =>
            {
                Ok(())
            }
            Ok(_) => Err("its header is not the log backup its name says".to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(why) = header {
            let _ = std::fs::remove_file(&tmp);
            refused.push(format!(
                "{}: not copied: {why}; move it out of {}",
                src.display(),
                share.display()
            ));
            continue;
        }
        if let Err(e) = std::fs::rename(&tmp, &dst) {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!("copying {}: {e}", src.display()));
        }
        copied.push((name.to_string(), last));
    }
    if !copied.is_empty() {
        std::fs::File::open(local)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("{}: {e}", local.display()))?;
    }
    Ok(CopyStep {
        files: copied,
        refused,
    })
}

/// The copied log backups a copy at `lsn` has not applied, in LSN order.
pub(super) fn unapplied(local: &FsPath, lsn: Lsn) -> Result<Vec<PathBuf>, String> {
    Ok(Listing::read(local)?
        .logs()
        .filter(|(_, _, last)| *last > lsn)
        .map(|(name, _, _)| local.join(name))
        .collect())
}

/// Removes the copied log backups a copy at `lsn` has applied.
pub(super) fn drop_applied(local: &FsPath, lsn: Lsn) {
    if let Ok(listing) = Listing::read(local) {
        for (name, _, last) in listing.logs() {
            if last <= lsn {
                let _ = std::fs::remove_file(local.join(name));
            }
        }
    }
}

/// What a restore step did: the copy's position after it is the data-loss point of a failover.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Restored {
    pub database: String,
    pub node: String,
    pub files_applied: Vec<String>,
    pub records_applied: u64,
    /// The last LSN applied, the commit time of its record, and the copy's epoch and role.
    pub lsn: Lsn,
    pub last_time_ms: i64,
    pub epoch: u64,
    pub role: String,
    /// Copied log backups left to apply (more than one step takes).
    pub files_left: usize,
    /// Why the files after `lsn` were not applied, when the step applied those before a gap
    /// or a damaged file and stopped there: what a failover recovers stops at `lsn`.
    #[serde(default)]
    pub stopped: Option<String>,
}

/// Applies copied log backups to `db`, at most `files_max`, checked as one chain first: those
/// before the first gap or damaged file, or, when that is the first one, none — refused, the
/// problem named, or with `ended_ok` (a failover's restore step: nothing more can be had)
/// answered with the copy as it is and why it stops there.
pub(super) fn restore_copied(
    db: &Database,
    local: &FsPath,
    files_max: usize,
    ended_ok: bool,
) -> Result<Restored, tandem_store::StoreError> {
    let id = db.identity();
    let mut files = unapplied(local, id.lsn).map_err(tandem_store::StoreError::Invalid)?;
    let left = files.len().saturating_sub(files_max);
    files.truncate(files_max);
    let mut out = Restored {
        database: id.name.clone(),
        lsn: id.lsn,
        last_time_ms: id.last_time_ms,
        epoch: id.epoch,
        role: id.role.to_string(),
        files_left: left,
        ..Default::default()
    };
    if files.is_empty() {
        return Ok(out);
    }
    // The files that follow the copy with no gap, by their names, then whole: applied up to the
    // first that does not (until session 32 a damaged or missing log backup made the step apply
    // nothing, and a failover could not recover what came before it). The restore reads every
    // file end to end before it applies any; only when it finds one damaged is each read alone,
    // to apply those before it. With none to apply, the whole list goes to the restore, whose
    // refusal names the problem.
    let (usable, mut stopped) = following(&files, id.lsn);
    let recovery = if id.role == Role::Standby {
        Recovery::Standby
    } else {
        Recovery::NoRecovery
    };
    let options = RestoreOptions {
        recovery,
        ..Default::default()
    };
    let mut restored = None;
    if usable > 0 {
        let first = tandem_store::restore_logs(db, &files[..usable], &options);
        match first {
            Err(e) if e.is_damage() => {
                let damaged = files[..usable]
                    .iter()
                    .enumerate()
                    .find_map(|(i, f)| tandem_store::verify_file(f).err().map(|why| (i, why)));
                match damaged {
                    Some((good, why)) => {
                        stopped = Some(why.to_string());
                        if good > 0 {
                            restored =
                                Some(tandem_store::restore_logs(db, &files[..good], &options)?);
                        }
                    }
                    // Every file reads whole: the refusal is the copy's own.
                    None => return Err(e),
                }
            }
            r => restored = Some(r?),
        }
    }
    let report = match (restored, &stopped) {
        (Some(report), Some(_)) => {
            out.files_left = 0;
            report
        }
        (Some(report), None) => report,
        (None, Some(_)) if ended_ok => {
            out.stopped = stopped;
            return Ok(out);
        }
        (None, _) => tandem_store::restore_logs(db, &files, &options)?,
    };
    out.stopped = stopped;
    out.files_applied = report
        .logs_applied
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    out.records_applied = report.records_applied;
    out.lsn = report.lsn;
    out.last_time_ms = report.last_time_ms;
    out.epoch = report.epoch;
    out.role = report.role.to_string();
    drop_applied(local, report.lsn);
    Ok(out)
}

/// How many of `files` (in LSN order) follow a copy at `lsn` with no gap, by their names, and
/// the gap after them, if one stops them.
fn following(files: &[PathBuf], lsn: Lsn) -> (usize, Option<String>) {
    let mut next = lsn + 1;
    for (i, f) in files.iter().enumerate() {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let Some(tandem_store::FileName::Log {
            first_lsn,
            last_lsn,
        }) = tandem_store::parse_file_name(name)
        else {
            return (i, None);
        };
        if first_lsn > next {
            return (
                i,
                Some(format!(
                    "a gap: no log backup holds LSN {next} (the next one, {name}, starts at LSN \
                     {first_lsn})"
                )),
            );
        }
        next = next.max(last_lsn + 1);
    }
    (files.len(), None)
}

/// Seeds the secondary's copy from the newest full backup on the share (the copy it replaces
/// closes first; on any error it is put back as it was). Refuses to replace a mirror, or a
/// primary that is not older than the backup.
pub(super) fn seed(
    node: &NodeState,
    database: &str,
    share: &FsPath,
    local: &FsPath,
) -> Result<Lsn, String> {
    let listing = Listing::read(share)?;
    let (full, _) = listing.newest_full().ok_or_else(|| {
        format!(
            "no full backup of {database} in {}: the primary takes one when log shipping is \
             configured",
            share.display()
        )
    })?;
    let full = share.join(full);
    let header = tandem_store::read_header(&full).map_err(|e| e.to_string())?;
    let BackupFile::Full { header: fh, .. } = &header else {
        unreachable!("a .tfb name is a full backup")
    };
    if let Some(copy) = node.host.get(database) {
        let id = copy.identity();
        if id.role == Role::Mirror {
            return Err(format!(
                "{database} on {} is a mirror: a log-shipping secondary is not a mirror",
                node.name
            ));
        }
        if id.role == Role::Primary && id.epoch >= fh.epoch {
            return Err(format!(
                "{database} on {} is primary (epoch {}), not older than the full backup {} \
                 (epoch {}): it is not replaced by a secondary",
                node.name,
                id.epoch,
                header.name(),
                fh.epoch
            ));
        }
    }
    tracing::info!(database, full = %header.name(), lsn = fh.lsn, "seeding the log-shipping secondary");
    let existed = node.host.get(database).is_some();
    node.host.replace(database, None);
    let target = node.host.path_of(database);
    let options = RestoreOptions {
        recovery: Recovery::NoRecovery,
        ..Default::default()
    };
    let restored = tandem_store::restore_new(&target, std::slice::from_ref(&full), &options, true);
    if let Err(e) = restored {
        if existed && let Ok(db) = node.host.reopen(database, &node.topology) {
            node.host.replace(database, Some(db));
        }
        return Err(format!("seeding from {}: {e}", header.name()));
    }
    let db = node.host.reopen(database, &node.topology)?;
    let lsn = db.identity().lsn;
    node.host.replace(database, Some(db));
    // Copied files belong to the chain the copy had: the new one starts from the full backup.
    if let Ok(listing) = Listing::read(local) {
        for (name, _) in &listing.files {
            let _ = std::fs::remove_file(local.join(name));
        }
    }
    Ok(lsn)
}

/// What one round of the secondary does.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Steps {
    /// The jobs: seed when needed, copy, restore.
    Jobs,
    /// The `copy` step alone: every log backup not copied yet.
    Copy,
    /// The `restore` step alone: every copied log backup not applied yet.
    Restore,
}

#[derive(Default)]
pub(super) struct SecondaryRound {
    pub(super) copied: CopyStep,
    pub(super) restored: Option<Result<Restored, tandem_store::StoreError>>,
    pub(super) state: Option<String>,
}

/// One round on the secondary (blocking; the caller holds the copy's operations lock).
pub(super) fn secondary_round(
    node: &NodeState,
    database: &str,
    config: Option<&Config>,
    steps: Steps,
) -> Result<SecondaryRound, String> {
    let share = share_dir(&node.topology, database);
    let local = local_dir(node, database);
    // This node's own directory for the copied files and its state (not on the share).
    std::fs::create_dir_all(&local).map_err(|e| format!("{}: {e}", local.display()))?;
    let mut round = SecondaryRound::default();
    let state_file = local.join(STATE_FILE);
    if steps == Steps::Jobs
        && let Some(config) = config
        && config.seed.is_some()
    {
        let state: LocalState = read_json(&state_file)?.unwrap_or_default();
        let exists = node
            .host
            .path_of(database)
            .join(tandem_store::DB_FILE)
            .exists();
        if state.seed != config.seed || !exists {
            node.log_shipping.update(database, |s| {
                s.state = Some(format!("seeding from {}", share.display()))
            });
            let lsn = seed(node, database, &share, &local)?;
            write_json(
                &state_file,
                &LocalState {
                    seed: config.seed.clone(),
                },
                true,
            )?;
            round.state = Some(format!("seeded at LSN {lsn}"));
        }
    }
    // A damaged copy (found by a scrub, or by applying): seeded again from the newest full
    // backup, whose chain the share keeps, and brought on by the log backups after it.
    if steps == Steps::Jobs
        && let Some(damage) = node.host.get(database).and_then(|d| {
            matches!(d.identity().role, Role::Restoring | Role::Standby)
                .then(|| d.damage())
                .flatten()
        })
    {
        tracing::warn!(database, %damage, "the copy is damaged: seeding it again from the newest full backup");
        let lsn = seed(node, database, &share, &local)?;
        round.state = Some(format!(
            "seeded again at LSN {lsn}: the copy was damaged ({damage})"
        ));
    }
    let copy = node.host.get(database);
    let copy_role = copy.as_ref().map(|d| d.identity().role);
    if copy_role == Some(Role::Primary) {
        round.state = Some("recovered: the copy is primary; no log backup is applied".into());
    }
    if steps != Steps::Restore {
        let after = copy.as_ref().map(|d| d.identity().lsn).unwrap_or(0);
        let max = if steps == Steps::Copy {
            LOG_FILES_PER_RESTORE_MAX
        } else {
            LOG_FILES_PER_ROUND_MAX
        };
        round.copied = copy_new(&share, &local, after, max)?;
    }
    if steps != Steps::Copy
        && let Some(db) = copy
        && matches!(copy_role, Some(Role::Restoring | Role::Standby))
    {
        let max = if steps == Steps::Restore {
            LOG_FILES_PER_RESTORE_MAX
        } else {
            LOG_FILES_PER_ROUND_MAX
        };
        let mut r = restore_copied(&db, &local, max, steps == Steps::Restore);
        if let Ok(r) = &mut r {
            r.node = node.name.clone();
            // The share holds the log backups: the copy's own journal keeps no more records
            // than a primary keeps for a mirror (without this it kept every one it applied).
            let keep = node.topology.mirroring.journal_records_max;
            if r.records_applied > 0
                && let Err(e) = db.retain_from((r.lsn + 1).saturating_sub(keep))
            {
                tracing::warn!(database, error = %e, "journal retention");
            }
        }
        round.restored = Some(r);
    }
    // A chain that cannot go on from the copy — a log backup gone from the share (its retention
    // keeps the newest full backup's chain: a secondary stopped longer than a full backup's
    // interval finds a gap), a damaged one, or a chain that diverged — while the share holds a full backup past
    // the copy: the jobs seed the copy again from it, as `configure` would, with no operator
    // (the failover's own steps apply what there is and name the gap instead).
    if steps == Steps::Jobs
        && let Some(Err(
            tandem_store::StoreError::Sequence(why) | tandem_store::StoreError::Corrupt(why),
        )) = &round.restored
    {
        let at = node.host.get(database).map_or(0, |d| d.identity().lsn);
        let past = Listing::read(&share)
            .ok()
            .and_then(|l| l.newest_full().map(|(_, lsn)| lsn))
            .is_some_and(|lsn| lsn > at);
        if past {
            tracing::warn!(database, at, why = %why, "the chain cannot go on from the copy: seeding it again from the newest full backup");
            let lsn = seed(node, database, &share, &local)?;
            round.state = Some(format!(
                "seeded again at LSN {lsn}: the chain could not go on from LSN {at} ({why})"
            ));
            round.restored = None;
        }
    }
    Ok(round)
}

/// A restore refusal as the monitor shows it: a chain that cannot go on from the copy (a log
/// backup missing or damaged, a chain that diverged) waits for nothing — it says how to seed
/// the secondary again.
pub(super) fn with_remedy(e: &tandem_store::StoreError, database: &str, node: &str) -> String {
    use tandem_store::StoreError::{Corrupt, Sequence};
    match e {
        Sequence(_) | Corrupt(_) => format!(
            "{e}; the secondary cannot go on from its copy: seed it again from a new full \
             backup with `tandem db log-shipping configure --db {database} --secondary {node}`"
        ),
        _ => e.to_string(),
    }
}

/// Records a secondary round in the node's status and in the progress file on the share.
pub(super) fn record_secondary(
    node: &NodeState,
    database: &str,
    round: &Result<SecondaryRound, String>,
    steps: Steps,
) {
    let share = share_dir(&node.topology, database);
    let path = share.join(secondary_file(&node.name));
    let mut progress: SecondaryProgress = read_json(&path).ok().flatten().unwrap_or_default();
    let mut status = node.log_shipping.status(database).unwrap_or_default();
    let mut copy = status.copy.take().unwrap_or(progress.copy.clone());
    let mut restore = status.restore.take().unwrap_or(progress.restore.clone());
    match round {
        Ok(r) => {
            if steps != Steps::Restore {
                copy.ran(Ok(r.copied.files.last().cloned()));
                if !r.copied.refused.is_empty() {
                    copy.error = Some(r.copied.refused.join("; "));
                }
            }
            match &r.restored {
                Some(Ok(x)) => {
                    restore.ran(Ok(x.files_applied.last().map(|f| (f.clone(), x.lsn))));
                    // Stopped short of what was copied: the monitor says where and why.
                    if let Some(why) = &x.stopped {
                        restore.error = Some(format!("stopped at LSN {}: {why}", x.lsn));
                    }
                }
                Some(Err(e)) => restore.ran(Err(with_remedy(e, database, &node.name))),
                None => {}
            }
            status.state = r.state.clone();
        }
        Err(e) => {
            if steps == Steps::Restore {
                restore.ran(Err(e.clone()));
            } else {
                copy.ran(Err(e.clone()));
            }
            status.state = None;
        }
    }
    let id = node.host.get(database).map(|d| d.identity());
    let state: LocalState = read_json(&local_dir(node, database).join(STATE_FILE))
        .ok()
        .flatten()
        .unwrap_or_default();
    progress = SecondaryProgress {
        node: node.name.clone(),
        seed: state.seed,
        role: id.as_ref().map(|i| i.role.to_string()),
        epoch: id.as_ref().map(|i| i.epoch),
        lsn: id.as_ref().map(|i| i.lsn).unwrap_or(0),
        last_time_ms: id.as_ref().map(|i| i.last_time_ms).unwrap_or(0),
        copy: copy.clone(),
        restore: restore.clone(),
        updated_ms: now_ms(),
    };
    if let Err(e) = write_json(&path, &progress, false) {
        tracing::warn!(database, error = %e, "cannot write the secondary's progress to the share");
    }
    status.copy = Some(copy);
    status.restore = Some(restore);
    node.log_shipping.update(database, |s| *s = status);
}
