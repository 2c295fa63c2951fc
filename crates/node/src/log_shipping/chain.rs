//! The backup job: the chain on the share (continued, or restarted), log and full backups,
//! the retention.

use super::*;

/// How the primary's copy stands against the chain on the share.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ChainState {
    /// The log-backup cursor is at the share's last LSN: the next log backup follows it.
    Continues,
    /// No backup file on the share: a full backup starts the chain.
    Empty,
    /// The share's chain is not this copy's history and this copy is of a newer epoch: the old
    /// files were moved to `superseded` and a full backup starts a new chain.
    Restarted { superseded: PathBuf },
}

pub(super) fn consumer_lsn(db: &Database) -> Result<Option<Lsn>, String> {
    Ok(db
        .consumers()
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|c| c.name == LOG_BACKUP_CONSUMER)
        .map(|c| c.lsn))
}

/// Puts the log-backup cursor at `lsn` (the consumer is local to a copy: a copy that became
/// primary by a mirror failover has none, or an old one).
pub(super) fn set_cursor(db: &Database, lsn: Lsn) -> Result<(), String> {
    let e = |e: tandem_store::StoreError| e.to_string();
    match consumer_lsn(db)? {
        Some(c) if c == lsn => Ok(()),
        Some(c) if c < lsn => db.advance_consumer(LOG_BACKUP_CONSUMER, lsn).map_err(e),
        Some(_) => {
            db.remove_consumer(LOG_BACKUP_CONSUMER).map_err(e)?;
            db.register_consumer(LOG_BACKUP_CONSUMER, lsn).map_err(e)
        }
        None => db.register_consumer(LOG_BACKUP_CONSUMER, lsn).map_err(e),
    }
}

/// Makes the primary's log backups continue the chain on the share: its cursor goes to the
/// share's last LSN when its journal holds that LSN with the same chain. A copy of an older
/// epoch than the share's chain is refused (another copy is primary); a copy of a newer epoch
/// whose history left the chain starts a new one when `restart` allows it.
pub(super) fn ensure_chain(
    db: &Database,
    dir: &FsPath,
    restart: bool,
) -> Result<(ChainState, Listing), String> {
    let listing = Listing::read(dir)?;
    let (Some((newest, _)), Some((name, lsn))) = (listing.newest(), listing.chain_end()) else {
        return Ok((ChainState::Empty, listing));
    };
    let header = |name: &str| {
        let file = tandem_store::read_header(&dir.join(name)).map_err(|e| {
            format!(
                "{e}: the backup job reads the newest files of the chain, and cannot read this \
                 one; move it out of {} (log shipping goes on from the files before it, or \
                 starts a new chain)",
                dir.display()
            )
        })?;
        let (epoch, chain) = match &file {
            BackupFile::Full { header, .. } => (header.epoch, header.chain),
            BackupFile::Log { header, .. } => (header.epoch, header.chain_after),
        };
        Ok::<_, String>((file.database_id().to_string(), epoch, chain))
    };
    let id = db.identity();
    let (newest_id, newest_epoch, _) = header(newest)?;
    if newest_id == id.database_id.to_hex() && newest_epoch > id.epoch {
        return Err(format!(
            "the share's chain is at epoch {newest_epoch} ({newest}), past this copy's epoch {}: \
             another copy is primary; this one backs up nothing",
            id.epoch
        ));
    }
    let (database_id, epoch, chain) = header(name)?;
    let same_database = database_id == id.database_id.to_hex();
    let ours = if same_database {
        db.chain_at(lsn).map_err(|e| e.to_string())?
    } else {
        None
    };
    if ours == Some(chain) {
        set_cursor(db, lsn)?;
        return Ok((ChainState::Continues, listing));
    }
    // Not provably the same history: a newer epoch (this copy recovered or failed over past
    // the chain), or the same epoch with the LSN no longer in the journal, starts a new chain;
    // anything else is a divergence an operator must look at.
    let newer = !same_database || epoch < id.epoch || (ours.is_none() && id.lsn >= lsn);
    if !newer {
        return Err(format!(
            "the share's chain ends at LSN {lsn} ({name}) with another history than this copy \
             (epoch {}, LSN {}): move the files of {} away, or reconfigure log shipping",
            id.epoch,
            id.lsn,
            dir.display()
        ));
    }
    if !restart {
        return Err(format!(
            "no log backup chain of this copy on the share ({name} is of another history): \
             take a full backup first"
        ));
    }
    let superseded = dir.join(format!("superseded-{}", now_ms()));
    std::fs::create_dir_all(&superseded).map_err(|e| format!("{}: {e}", superseded.display()))?;
    for (name, _) in &listing.files {
        let (from, to) = (dir.join(name), superseded.join(name));
        std::fs::rename(&from, &to).map_err(|e| format!("{}: {e}", from.display()))?;
    }
    // The old chain's archive goes with it: it is of the old history too.
    let archive = dir.join(ARCHIVE_DIR);
    if archive.exists() {
        let to = superseded.join(ARCHIVE_DIR);
        std::fs::rename(&archive, &to).map_err(|e| format!("{}: {e}", archive.display()))?;
    }
    if consumer_lsn(db)?.is_some() {
        db.remove_consumer(LOG_BACKUP_CONSUMER)
            .map_err(|e| e.to_string())?;
    }
    tracing::warn!(database = %id.name, superseded = %superseded.display(), "the share's chain is not this copy's history: a new chain starts with a full backup");
    Ok((ChainState::Restarted { superseded }, Listing::default()))
}

/// What one round of the backup job did.
#[derive(Debug, Default)]
pub(crate) struct BackupRound {
    pub(crate) full: Option<BackupFile>,
    pub(crate) logs: Vec<BackupFile>,
    pub(crate) removed: Vec<String>,
    pub(crate) config: Option<Config>,
    /// A full backup that was due and failed (the log backups went on).
    pub(crate) full_failed: Option<String>,
}

/// What a round of the backup job is asked to do.
pub(super) struct BackupAsk {
    pub(super) node: String,
    /// The deployment the share must belong to (`deployment_of`).
    pub(super) deployment: String,
    pub(super) site: String,
    /// The configuration to write when the share has none (a deployment's first start).
    pub(super) initial: Option<Config>,
    /// A new configuration (the `configure` step): written, with a full backup that seeds the
    /// secondary.
    pub(super) configure: Option<Config>,
    pub(super) full: bool,
    pub(super) retention: bool,
}

/// One round of the backup job, under the share's lock: the chain, a full backup when due or
/// asked, a log backup, the retention, the progress file.
pub(super) fn backup_round(
    db: &Database,
    dir: &FsPath,
    ask: BackupAsk,
) -> Result<BackupRound, String> {
    let _lock = ShareLock::acquire(dir, &ask.node, &ask.deployment)?;
    let r = backup_round_locked(db, dir, &ask);
    if let Err(e) = &r {
        // The monitor shows the failure, and the primary's position: the lag it shows grows
        // while nothing is backed up (until session 32 it showed the position of the last
        // round that went through: a lag of a few records while the secondary fell behind by
        // hundreds of thousands). Unless another node backs up now.
        let path = dir.join(PRIMARY_FILE);
        if let Ok(Some(mut p)) = read_json::<PrimaryProgress>(&path)
            && p.node == ask.node
        {
            let id = db.identity();
            p.epoch = id.epoch;
            p.lsn = id.lsn;
            p.last_time_ms = id.last_time_ms;
            p.backup.ran(Err(e.clone()));
            p.updated_ms = now_ms();
            let _ = write_json(&path, &p, false);
        }
    }
    r
}

pub(super) fn backup_round_locked(
    db: &Database,
    dir: &FsPath,
    ask: &BackupAsk,
) -> Result<BackupRound, String> {
    let existing = read_config(dir)?;
    let mut config = match (&ask.configure, existing.clone(), &ask.initial) {
        (Some(c), _, _) => c.clone(),
        (None, Some(c), _) => c,
        (None, None, Some(c)) => recreated(dir, c.clone())?,
        (None, None, None) => return Ok(BackupRound::default()),
    };
    if config.primary_site != ask.site {
        return Ok(BackupRound::default());
    }
    let mut round = BackupRound::default();
    let (state, listing) = ensure_chain(db, dir, true)?;
    let full_due = listing.newest_full().is_none_or(|(name, _)| {
        let created = match tandem_store::parse_file_name(name) {
            Some(FileName::Full { created_ms, .. }) => created_ms,
            _ => 0,
        };
        now_ms() - created >= config.full_backup_interval_ms as i64
    });
    let starts_chain = state != ChainState::Continues;
    let needed = starts_chain || ask.full || ask.configure.is_some();
    let mut full_failed = None;
    if needed || full_due {
        match tandem_store::full_backup(db, dir) {
            Ok(full) => {
                tracing::info!(database = %config.database, file = %full.name(), lsn = full.lsn(), "full backup on the share");
                if starts_chain || ask.configure.is_some() {
                    config.seed = Some(full.name());
                }
                round.full = Some(full);
            }
            Err(e) => {
                let e = format!(
                    "full backup into {}: {e} (it needs room for about twice the database's \
                     file: a snapshot, then the backup)",
                    dir.display()
                );
                if needed {
                    return Err(e);
                }
                // Only due: the log backups go on meanwhile (until session 32 a full backup
                // that did not fit stopped them too), and the next round tries it again.
                tracing::warn!(database = %config.database, error = %e, "full backup failed; log backups go on");
                full_failed = Some(e);
            }
        }
    }
    round.logs = tandem_store::log_backup_of_primary(db, dir).map_err(|e| e.to_string())?;
    if existing.as_ref() != Some(&config) {
        write_config(dir, &config)?;
    }
    if ask.retention {
        round.removed = retention(dir, &config)?;
    }
    let id = db.identity();
    let mut progress: PrimaryProgress = read_json(&dir.join(PRIMARY_FILE))
        .ok()
        .flatten()
        .filter(|p: &PrimaryProgress| p.node == ask.node)
        .unwrap_or_default();
    progress.node = ask.node.clone();
    progress.epoch = id.epoch;
    progress.lsn = id.lsn;
    progress.last_time_ms = id.last_time_ms;
    progress
        .backup
        .ran(Ok(round.logs.last().map(|f| (f.name(), f.lsn()))));
    progress.backup.error = full_failed.clone();
    round.full_failed = full_failed;
    if let Some(f) = &round.full {
        progress.full = Some(f.name());
    }
    progress.updated_ms = now_ms();
    write_json(&dir.join(PRIMARY_FILE), &progress, false)?;
    round.config = Some(config);
    Ok(round)
}

/// The topology's default configuration `c`, for a share without one. On a share that holds
/// backups already, that is not a first start: the configuration was lost (deleted, or the
/// share replaced), and with it the options an operator gave — said in the log and,
/// until the next `configure`, in the monitor's alerts (until session 32 it was rebuilt
/// silently). The secondary keeps the seed it has, so it is not taken for one still to seed.
fn recreated(dir: &FsPath, mut c: Config) -> Result<Config, String> {
    if Listing::read(dir)?.files.is_empty() && !dir.join(PRIMARY_FILE).exists() {
        return Ok(c);
    }
    tracing::warn!(database = %c.database, share = %dir.display(), "the share holds backups but no log-shipping configuration: written again from the topology's defaults");
    c.recreated_ms = Some(now_ms());
    if let Some(s) = &c.secondary
        && let Ok(Some(p)) = read_json::<SecondaryProgress>(&dir.join(secondary_file(s)))
    {
        c.seed = p.seed;
    }
    Ok(c)
}

/// Rewrites this node's progress on the share after its copy changed outside the jobs (it was
/// recovered, or restored): the monitor shows the copy as it is.
pub(crate) fn refresh_progress(node: &NodeState, database: &str) {
    let path = share_dir(&node.topology, database).join(secondary_file(&node.name));
    let Ok(Some(mut p)) = read_json::<SecondaryProgress>(&path) else {
        return;
    };
    if let Some(id) = node.host.get(database).map(|d| d.identity()) {
        p.role = Some(id.role.to_string());
        p.epoch = Some(id.epoch);
        p.lsn = id.lsn;
        p.last_time_ms = id.last_time_ms;
        p.updated_ms = now_ms();
        let _ = write_json(&path, &p, false);
    }
}

/// Takes out of the chain's directory what neither the secondary nor the chain needs: files
/// before the newest full backup (the newest restorable chain is that backup and every log
/// after it) that the secondary has applied. They go to `archive/` while a restore to a moment
/// of the retention window (`retention_ms`) may need them, and are removed from there once it
/// cannot (`prune_archive`); with no window they are removed at once. Once the secondary has
/// applied the newest full backup, the chains set aside in `superseded-MS` before it was taken,
/// and before the window began, are removed. Without a secondary nothing is taken out.
/// Leftover temporary files go too.
pub(super) fn retention(dir: &FsPath, config: &Config) -> Result<Vec<String>, String> {
    let mut removed = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let temp = name.starts_with(".partial-") || name.starts_with(".snapshot-");
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_millis(TEMP_FILE_AGE_MS_MAX));
            if temp && old && std::fs::remove_file(entry.path()).is_ok() {
                removed.push(name);
            }
        }
    }
    let Some(secondary) = &config.secondary else {
        return Ok(removed);
    };
    let Some(progress) = read_json::<SecondaryProgress>(&dir.join(secondary_file(secondary)))?
    else {
        return Ok(removed);
    };
    if progress.seed != config.seed || config.seed.is_none() {
        return Ok(removed);
    }
    let applied = progress.lsn;
    let listing = Listing::read(dir)?;
    let Some((newest, newest_lsn)) = listing.newest_full() else {
        return Ok(removed);
    };
    // The newest log backup marks where the log chain goes on (`Listing::chain_end`): it stays,
    // and without one every full backup stays too (the chain's first among them).
    let Some((newest_log, _)) = listing.newest_log() else {
        return Ok(removed);
    };
    let keep_upto = newest_lsn.min(applied);
    let newest_created = listing.files.iter().find_map(|(n, f)| match f {
        FileName::Full { created_ms, .. } if n == newest => Some(*created_ms),
        _ => None,
    });
    let window_start = now_ms().saturating_sub(config.retention_ms as i64);
    if let Some(created) = newest_created
        && applied >= newest_lsn
    {
        removed.extend(remove_superseded_before(dir, created.min(window_start))?);
    }
    let archive = dir.join(ARCHIVE_DIR);
    for (name, f) in &listing.files {
        let unneeded = match f {
            FileName::Log { last_lsn, .. } => *last_lsn <= keep_upto && name != newest_log,
            FileName::Full { lsn, .. } => name != newest && *lsn <= keep_upto,
        };
        if unneeded {
            let path = dir.join(name);
            let gone = if config.retention_ms == 0 {
                std::fs::remove_file(&path)
            } else {
                std::fs::create_dir_all(&archive)
                    .and_then(|()| std::fs::rename(&path, archive.join(name)))
            };
            gone.map_err(|e| format!("{}: {e}", path.display()))?;
            removed.push(name.clone());
        }
    }
    removed.extend(prune_archive(dir, window_start, &listing)?);
    Ok(removed)
}

/// Removes from `archive/` what no restore to a moment at or after `window_start` needs: a
/// restore to such a moment starts from the newest full backup taken by then (in the archive
/// or in the chain's directory, whose listing is `live` — read before the retention moved
/// files out of it, which it then names twice, harmlessly), so whatever that backup holds
/// already goes. With no full backup taken by then, everything stays. Names are returned as
/// `archive/NAME`.
pub(super) fn prune_archive(
    dir: &FsPath,
    window_start: i64,
    live: &Listing,
) -> Result<Vec<String>, String> {
    let archive = dir.join(ARCHIVE_DIR);
    let archived = Listing::read(&archive)?;
    if archived.files.is_empty() {
        return Ok(Vec::new());
    }
    let full = |f: &FileName| match f {
        FileName::Full {
            lsn, created_ms, ..
        } => Some((*lsn, *created_ms)),
        _ => None,
    };
    // The restore point of the window's start: the newest full backup taken by then.
    let Some(base) = archived
        .files
        .iter()
        .chain(&live.files)
        .filter_map(|(_, f)| full(f))
        .filter(|(_, created)| *created <= window_start)
        .max()
    else {
        return Ok(Vec::new());
    };
    let mut removed = Vec::new();
    for (name, f) in &archived.files {
        let unneeded = match f {
            FileName::Log { last_lsn, .. } => *last_lsn <= base.0,
            FileName::Full { .. } => full(f).is_some_and(|b| b < base),
        };
        if unneeded {
            let path = archive.join(name);
            std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            removed.push(format!("{ARCHIVE_DIR}/{name}"));
        }
    }
    Ok(removed)
}

/// Removes every `superseded-MS` directory of `dir` set aside before `before_ms`.
pub(super) fn remove_superseded_before(
    dir: &FsPath,
    before_ms: i64,
) -> Result<Vec<String>, String> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(removed);
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(ms) = name
            .strip_prefix("superseded-")
            .and_then(|m| m.parse::<i64>().ok())
        else {
            continue;
        };
        if ms < before_ms {
            let path = entry.path();
            std::fs::remove_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            removed.push(name);
        }
    }
    removed.sort();
    Ok(removed)
}
