//! Restore: a full backup, then log backups in LSN order — checked as a whole chain before
//! anything is applied — ending as `restoring` (more logs may follow), `standby` (read-only
//! between restores) or recovered (writable, new epoch), optionally at a point in time.

use crate::backup::{
    BackupFile, FullHeader, LogHeader, extract_full, read_header, read_log_records, verify_file,
};
use crate::database::{Database, Identity, Options, Role};
use crate::error::{Result, StoreError};
use crate::record::{Chain, Epoch, Lsn};
use crate::writer::{StopAt, time_text};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How a restore leaves the copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Recovery {
    /// `restoring`: more log backups may be applied; no reads.
    NoRecovery,
    /// `standby`: read-only; more log backups may be applied.
    Standby,
    /// Writable primary of a new epoch; no log of the old chain may follow.
    Recover,
}

#[derive(Clone, Debug)]
pub struct RestoreOptions {
    pub recovery: Recovery,
    pub stop_at: Option<StopAt>,
    pub database: Options,
    /// How long a restore that replaces a copy waits for a handle still open on it to close
    /// (`restore_new`); then it refuses, the copy as it was.
    pub replace_wait: std::time::Duration,
    /// With `Recover`: the new epoch is at least this (and above the copy's). A deployment
    /// passes the time in ms, as its disaster-recovery moves do, so that the epoch is above any
    /// a copy of the database used meanwhile: the backup's epoch plus one may already be
    /// another copy's (a mirror that took over after the backup), two histories under one
    /// epoch.
    pub recover_epoch_floor: Option<Epoch>,
}

impl Default for RestoreOptions {
    fn default() -> RestoreOptions {
        RestoreOptions {
            recovery: Recovery::Recover,
            stop_at: None,
            database: Options::default(),
            replace_wait: REPLACE_WAIT,
            recover_epoch_floor: None,
        }
    }
}

/// What a restore did.
#[derive(Clone, Debug, Serialize)]
pub struct RestoreReport {
    pub database_id: String,
    pub full_backup: Option<PathBuf>,
    pub logs_applied: Vec<PathBuf>,
    /// Log backups given that end at or before where the restore started: their records are
    /// in the copy already (or in the full backup), so they were not applied.
    pub logs_skipped: Vec<PathBuf>,
    pub records_applied: u64,
    pub lsn: Lsn,
    pub chain: Chain,
    pub epoch: Epoch,
    pub role: Role,
    /// Commit time of the last applied record (ms since the Unix epoch).
    pub last_time_ms: i64,
    /// True when a stop point ended the restore before the end of the chain.
    pub stopped: bool,
    /// True when the stop point lies past every record of the files: the copy is left to take
    /// the later log backups that reach it. Never with `Recover`, which refuses instead.
    pub stop_not_reached: bool,
    /// Time spent applying log records.
    pub apply_ms: u64,
}

/// Expands directories into the backup files they hold (`*.tfb`, `*.tlb`) and reads every header.
pub fn collect(inputs: &[PathBuf]) -> Result<Vec<BackupFile>> {
    let mut paths = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let entries = std::fs::read_dir(input).map_err(|e| StoreError::io(input, e))?;
            let mut found: Vec<PathBuf> = Vec::new();
            for entry in entries {
                let p = entry.map_err(|e| StoreError::io(input, e))?.path();
                let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
                if (ext == "tfb" || ext == "tlb") && p.is_file() {
                    found.push(p);
                }
            }
            found.sort();
            paths.extend(found);
        } else if input.exists() {
            paths.push(input.clone());
        } else {
            return Err(StoreError::Invalid(format!(
                "{}: no such file or directory",
                input.display()
            )));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for p in &paths {
        let canon = p.canonicalize().map_err(|e| StoreError::io(p, e))?;
        if !seen.insert(canon) {
            return Err(StoreError::Invalid(format!(
                "{} is listed twice",
                p.display()
            )));
        }
    }
    paths.iter().map(|p| read_header(p)).collect()
}

/// The refusal when the inputs hold no backup file at all (an empty directory, say).
fn none_found(inputs: &[PathBuf]) -> StoreError {
    let named: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
    StoreError::Invalid(format!(
        "no backup files (*.tfb, *.tlb) in {}",
        named.join(", ")
    ))
}

struct Start {
    database_id: String,
    lsn: Lsn,
    chain: Chain,
    epoch: Epoch,
    /// Commit time of the record at `lsn`.
    time_ms: i64,
}

/// The files a restore will apply, in order, checked as a chain.
struct Plan {
    full: Option<(PathBuf, FullHeader)>,
    logs: Vec<(PathBuf, LogHeader)>,
    /// The log backups wholly behind the start (`RestoreReport::logs_skipped`).
    skipped: Vec<PathBuf>,
    /// When the stop point lies past every record of the files: where they end, in words.
    stop_not_reached: Option<String>,
}

fn name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

/// The files to apply, checked as a chain against where the copy starts and the stop point.
/// Recovering short of the stop point is refused here, before anything is applied: the records
/// up to it may be in a log backup not given (SQL Server leaves such a restore `restoring`).
fn plan(
    files: &[BackupFile],
    existing: Option<&Identity>,
    options: &RestoreOptions,
) -> Result<Plan> {
    let stop = options.stop_at;
    // Whether a record at `lsn`, committed at `time_ms`, lies past the stop point.
    let past = |lsn: Lsn, time_ms: i64| stop.is_some_and(|s| s.reached(lsn, time_ms));
    let (full, start) = match existing {
        Some(id) => {
            if id.role == Role::Primary {
                let since = id.history.0.last().map(|e| e.first_lsn).unwrap_or(0);
                return Err(StoreError::Role(format!(
                    "the target is primary (recovered at epoch {}, since LSN {since}): no log \
                     backup may be applied after recover; restore a full backup with --replace",
                    id.epoch
                )));
            }
            if let Some(stop) = stop
                && past(id.lsn, id.last_time_ms)
            {
                return Err(StoreError::Sequence(format!(
                    "the copy is at LSN {} (last record committed at {}), past the stop point \
                     ({stop}): a restore cannot go back; restore a full backup taken before the \
                     stop point, with --replace",
                    id.lsn,
                    time_text(id.last_time_ms)
                )));
            }
            let start = Start {
                database_id: id.database_id.to_hex(),
                lsn: id.lsn,
                chain: id.chain,
                epoch: id.epoch,
                time_ms: id.last_time_ms,
            };
            (None, start)
        }
        None => {
            let mut fulls: Vec<(&PathBuf, &FullHeader)> = files
                .iter()
                .filter_map(|f| match f {
                    BackupFile::Full { path, header } => Some((path, header)),
                    _ => None,
                })
                .collect();
            if fulls.is_empty() {
                return Err(StoreError::Invalid(
                    "no full backup among the files: a restore starts from one".into(),
                ));
            }
            fulls.sort_by_key(|(_, h)| (h.lsn, h.created_ms));
            // The newest at or before the stop point.
            let Some(&(path, header)) = fulls
                .iter()
                .rev()
                .find(|(_, h)| !past(h.lsn, h.last_time_ms))
            else {
                let (file, earliest) = fulls[0];
                let stop = stop.expect("only a stop point leaves out a full backup");
                return Err(StoreError::Invalid(format!(
                    "no full backup at or before the stop point ({stop}): the earliest, {}, is at \
                     LSN {} (its last record committed at {})",
                    file.display(),
                    earliest.lsn,
                    time_text(earliest.last_time_ms)
                )));
            };
            let start = Start {
                database_id: header.database_id.clone(),
                lsn: header.lsn,
                chain: header.chain,
                epoch: header.epoch,
                time_ms: header.last_time_ms,
            };
            (Some((path.clone(), header.clone())), start)
        }
    };
    for f in files {
        if f.database_id() != start.database_id {
            let of = files
                .iter()
                .find(|s| s.database_id() == start.database_id)
                .map(|s| s.database())
                .unwrap_or_else(|| start.database_id.clone());
            return Err(StoreError::Invalid(format!(
                "{} belongs to database {}, not {of}: files of another database cannot be applied",
                f.path().display(),
                f.database()
            )));
        }
    }
    // Files wholly behind the start are not applied; one that ends at it must agree with it.
    for f in files {
        if let BackupFile::Log { path, header } = f
            && header.last_lsn == start.lsn
            && header.chain_after != start.chain
        {
            return Err(StoreError::Sequence(format!(
                "log backup {} ends at LSN {} with chain {}, but the {} has chain {} there: it \
                 belongs to another history (or was altered)",
                name(path),
                header.last_lsn,
                header.chain_after,
                if existing.is_some() {
                    "copy"
                } else {
                    "full backup"
                },
                start.chain
            )));
        }
    }
    let mut logs: Vec<(&PathBuf, &LogHeader)> = files
        .iter()
        .filter_map(|f| match f {
            BackupFile::Log { path, header } if header.last_lsn > start.lsn => Some((path, header)),
            _ => None,
        })
        .collect();
    logs.sort_by_key(|(_, h)| (h.first_lsn, h.last_lsn));
    let mut chosen: Vec<(PathBuf, LogHeader)> = Vec::new();
    let (mut lsn, mut chain, mut epoch) = (start.lsn, start.chain, start.epoch);
    let mut time_ms = start.time_ms;
    // True once a file holds a record past the stop point.
    let mut reached = false;
    for (path, h) in logs {
        // The stop point lies before this file. It is reached only if nothing is missing
        // before it: records of a missing log may lie before the stop point (the gap below).
        let next_past = match stop {
            Some(StopAt::Lsn(n)) => lsn >= n,
            _ => h.first_lsn <= lsn + 1,
        };
        if past(h.first_lsn, h.first_time_ms) && next_past {
            reached = true;
            break;
        }
        if let Some((prev, ph)) = chosen.last()
            && h.first_lsn <= ph.last_lsn
        {
            return Err(StoreError::Sequence(format!(
                "{} and {} both hold LSN {}: overlapping or duplicated log backups",
                name(prev),
                name(path),
                h.first_lsn
            )));
        }
        if h.first_lsn > lsn + 1 {
            return Err(StoreError::Sequence(format!(
                "log backup {} starts at LSN {} but the chain is at LSN {lsn}: gap of {} records; \
                 a log backup is missing",
                name(path),
                h.first_lsn,
                h.first_lsn - lsn - 1
            )));
        }
        if h.first_lsn == lsn + 1 && h.chain_before != chain {
            return Err(StoreError::Sequence(format!(
                "log backup {} continues chain {} but the chain after LSN {lsn} is {chain}: it \
                 belongs to another history (or was altered)",
                name(path),
                h.chain_before
            )));
        }
        if h.epoch < epoch {
            return Err(StoreError::Sequence(format!(
                "log backup {} is of epoch {} but the copy is already at epoch {epoch}: a log of \
                 an epoch the target has passed",
                name(path),
                h.epoch
            )));
        }
        lsn = h.last_lsn;
        chain = h.chain_after;
        epoch = h.epoch;
        time_ms = h.last_time_ms;
        chosen.push((path.clone(), h.clone()));
    }
    reached |= match stop {
        Some(StopAt::Lsn(n)) => lsn >= n,
        Some(StopAt::TimeMs(t)) => time_ms > t,
        None => true,
    };
    let stop_not_reached = match stop {
        Some(stop) if !reached => Some(format!(
            "the files end at LSN {lsn} (last record committed at {}), before the stop point \
             ({stop})",
            time_text(time_ms)
        )),
        _ => None,
    };
    if let (Some(ends), Recovery::Recover) = (&stop_not_reached, options.recovery) {
        return Err(StoreError::Sequence(format!(
            "{ends}: a later log backup may hold the records up to it. Restore with --norecovery \
             (or --standby) and apply the later log backups with the same stop point, or give no \
             stop point to recover everything the files hold"
        )));
    }
    let mut skipped: Vec<PathBuf> = files
        .iter()
        .filter_map(|f| match f {
            BackupFile::Log { path, header } if header.last_lsn <= start.lsn => Some(path.clone()),
            _ => None,
        })
        .collect();
    skipped.sort();
    Ok(Plan {
        full,
        logs: chosen,
        skipped,
        stop_not_reached,
    })
}

/// Reads every file of the plan end to end (checksums, records, chain) before anything is applied.
fn verify_plan(plan: &Plan) -> Result<()> {
    if let Some((path, _)) = &plan.full {
        verify_file(path)?;
    }
    for (path, _) in &plan.logs {
        verify_file(path)?;
    }
    Ok(())
}

/// Records applied per batch (one SQLite transaction each).
const APPLY_BATCH_RECORDS: usize = 4096;

fn apply_logs(
    db: &Database,
    plan: &Plan,
    stop: Option<StopAt>,
) -> Result<(Vec<PathBuf>, u64, bool, u64)> {
    let started = Instant::now();
    let mut applied_files = Vec::new();
    let mut records = 0u64;
    let mut stopped = false;
    for (path, header) in &plan.logs {
        let after = db.identity().lsn;
        read_log_records(path, header, after, APPLY_BATCH_RECORDS, |batch| {
            let a = db.apply(batch, stop).map_err(|e| match e {
                StoreError::Sequence(m) => StoreError::Sequence(format!("{}: {m}", name(path))),
                other => other,
            })?;
            records += a.records;
            stopped |= a.stopped;
            Ok(!a.stopped)
        })?;
        applied_files.push(path.clone());
        if stopped {
            break;
        }
    }
    Ok((
        applied_files,
        records,
        stopped,
        started.elapsed().as_millis() as u64,
    ))
}

fn finish(db: &Database, options: &RestoreOptions) -> Result<Identity> {
    match options.recovery {
        Recovery::Recover => {
            let next = db.identity().epoch + 1;
            db.recover(Some(
                options.recover_epoch_floor.map_or(next, |f| f.max(next)),
            ))?;
        }
        Recovery::Standby => db.set_role(Role::Standby)?,
        Recovery::NoRecovery => db.set_role(Role::Restoring)?,
    }
    Ok(db.identity())
}

fn report(
    id: &Identity,
    full: Option<PathBuf>,
    applied: (Vec<PathBuf>, u64, bool, u64),
    plan: &Plan,
) -> RestoreReport {
    RestoreReport {
        database_id: id.database_id.to_hex(),
        full_backup: full,
        logs_applied: applied.0,
        logs_skipped: plan.skipped.clone(),
        records_applied: applied.1,
        lsn: id.lsn,
        chain: id.chain,
        epoch: id.epoch,
        role: id.role,
        last_time_ms: id.last_time_ms,
        stopped: applied.2,
        stop_not_reached: plan.stop_not_reached.is_some(),
        apply_ms: applied.3,
    }
}

/// Restores a new copy into `target` from a full backup and the log backups that follow it.
/// `target` must not exist unless `replace` is set. Everything happens in a sibling directory
/// that replaces `target` only once the restore succeeded, and once no handle is open on
/// `target` (waiting up to `options.replace_wait` for one to close): on any error `target` is
/// as it was.
pub fn restore_new(
    target: &Path,
    inputs: &[PathBuf],
    options: &RestoreOptions,
    replace: bool,
) -> Result<RestoreReport> {
    check_target(target, inputs, replace)?;
    let files = collect(inputs)?;
    if files.is_empty() {
        return Err(none_found(inputs));
    }
    let plan = plan(&files, None, options)?;
    verify_plan(&plan)?;
    let (full_path, full_header) = plan
        .full
        .clone()
        .expect("a new copy starts from a full backup");
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // The directories made for the target's parent go again should the restore fail.
    let made = Made::dirs(&parent)?;
    let leaf = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    clear_interrupted_restores(target);
    // Unique per process and call: two restores of one target at once must not share it.
    static RESTORES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = RESTORES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let work = beside(&parent, &leaf, WORK, n);
    let _ = std::fs::remove_dir_all(&work);
    let result = (|| -> Result<RestoreReport> {
        extract_full(&full_path, &full_header, &work)?;
        let db = Database::open(&work, options.database.clone())?;
        if db.identity().role != Role::Restoring {
            db.set_role(Role::Restoring)?;
        }
        db.reset_journal()?;
        let applied = apply_logs(&db, &plan, options.stop_at)?;
        let id = finish(&db, options)?;
        drop(db);
        Ok(report(&id, Some(full_path.clone()), applied, &plan))
    })();
    let swapped = result.and_then(|r| {
        if target.exists() {
            // The old copy's handle, if one is open, closes first: a connection of it that
            // read for the first time after the swap would open the new copy's WAL and shared
            // memory by their paths.
            let _old_lock = crate::database::lock_dir_when_closed(target, options.replace_wait)?;
            if exchange(&work, target)? {
                // `work` holds the old copy now. A crash before the directory reaches the disk
                // brings the old copy back, as if the restore had not run: never no copy.
                let _ = std::fs::File::open(&parent).and_then(|d| d.sync_all());
                let _ = std::fs::remove_dir_all(&work);
                return Ok(r);
            }
            // Where the file system cannot exchange: two renames, and the old copy set aside
            // between them is put back by `clear_interrupted_restores` after a crash.
            let old = beside(&parent, &leaf, REPLACED, n);
            std::fs::rename(target, &old).map_err(|e| StoreError::io(target, e))?;
            if let Err(e) = std::fs::rename(&work, target) {
                let _ = std::fs::rename(&old, target);
                return Err(StoreError::io(target, e));
            }
            let _ = std::fs::remove_dir_all(&old);
        } else {
            std::fs::rename(&work, target).map_err(|e| StoreError::io(target, e))?;
        }
        Ok(r)
    });
    match swapped {
        Ok(r) => {
            made.keep();
            Ok(r)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&work);
            Err(e)
        }
    }
}

/// What a new copy may be restored into: a path that does not exist, an empty directory, or
/// — with `replace` — a directory holding a tandem database, none of whose backup files is
/// inside it. Anything else is refused before a file is read: a restore never removes a
/// directory that is not a database.
fn check_target(target: &Path, inputs: &[PathBuf], replace: bool) -> Result<()> {
    // `components` drops a trailing `.`: the text is looked at too.
    let text = target.to_string_lossy();
    let dots = [".", ".."]
        .iter()
        .any(|d| text == *d || text.ends_with(&format!("/{d}")));
    if dots
        || !matches!(
            target.components().next_back(),
            Some(std::path::Component::Normal(_))
        )
    {
        return Err(StoreError::Invalid(format!(
            "{}: name the directory to restore into by its own name (not ., .. or /)",
            target.display()
        )));
    }
    if !target.exists() {
        return Ok(());
    }
    if !target.is_dir() {
        return Err(StoreError::Invalid(format!(
            "{} exists and is not a directory: a database is a directory; choose a new one",
            target.display()
        )));
    }
    let empty = std::fs::read_dir(target)
        .map_err(|e| StoreError::io(target, e))?
        .next()
        .is_none();
    if empty {
        return Ok(());
    }
    if !target.join(crate::database::DB_FILE).exists() {
        return Err(StoreError::Invalid(format!(
            "{} exists and holds no tandem database: a restore replaces only a database; \
             choose a new or an empty directory",
            target.display()
        )));
    }
    match crate::database::check_tandem_file(target) {
        // A damaged copy is what a restore replaces.
        Err(e) if !e.is_damage() => return Err(e),
        _ => {}
    }
    if !replace {
        return Err(StoreError::Invalid(format!(
            "{} holds a database: pass --replace to overwrite it (or restore only log backups \
             into a restoring copy)",
            target.display()
        )));
    }
    let inside = target
        .canonicalize()
        .map_err(|e| StoreError::io(target, e))?;
    for input in inputs {
        if input.canonicalize().is_ok_and(|p| p.starts_with(&inside)) {
            return Err(StoreError::Invalid(format!(
                "{} is inside {}, which the restore would replace: move the backup files out \
                 first",
                input.display(),
                target.display()
            )));
        }
    }
    Ok(())
}

/// Directories created for a path, removed again (if still empty) unless kept.
struct Made(Vec<PathBuf>);

impl Made {
    /// Creates `dir` and its missing ancestors.
    fn dirs(dir: &Path) -> Result<Made> {
        let missing: Vec<PathBuf> = dir
            .ancestors()
            .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
            .map(Path::to_path_buf)
            .collect();
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        Ok(Made(missing))
    }

    fn keep(mut self) {
        self.0.clear();
    }
}

impl Drop for Made {
    fn drop(&mut self) {
        // Deepest first; one that something else filled meanwhile stays.
        for d in &self.0 {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// The kinds of directory a restore of `NAME` keeps beside it, as `.NAME.KIND-PID-N`: the copy
/// it restores, and the old copy it sets aside where directories cannot be exchanged.
const WORK: &str = "restoring";
const REPLACED: &str = "replaced";

/// `.LEAF.KIND-PID-N` in `parent`, for this process's `n`th restore.
fn beside(parent: &Path, leaf: &str, kind: &str, n: u64) -> PathBuf {
    parent.join(format!(".{leaf}.{kind}-{}-{n}", std::process::id()))
}

/// Swaps `work` and `target` in one step (Linux's `renameat2` with `RENAME_EXCHANGE`): a crash
/// leaves one of the two copies at `target`, never none. False where the file system cannot.
#[allow(unsafe_code)]
fn exchange(work: &Path, target: &Path) -> Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| StoreError::io(p, std::io::Error::from(std::io::ErrorKind::InvalidInput)))
    };
    let (from, to) = (c_path(work)?, c_path(target)?);
    // SAFETY: both paths are NUL-terminated C strings that live across the call.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => Ok(false),
        _ => Err(StoreError::io(target, e)),
    }
}

/// Clears what restores of `target` left beside it when their process died (`beside`): their
/// work directories (a copy half restored) and old copies set aside by a swap. Should `target`
/// be missing while an old copy is set aside — a crash between the two renames of a swap where
/// the file system cannot exchange — that copy is put back first. What belongs to a running process is left alone. Returns what it removed or
/// put back; best effort (what cannot be removed stays, to be tried again next time).
pub fn clear_interrupted_restores(target: &Path) -> Vec<PathBuf> {
    let (Some(parent), Some(leaf)) = (target.parent(), target.file_name()) else {
        return Vec::new();
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let prefix = format!(".{}.", leaf.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut left: Vec<(PathBuf, bool)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let rest = name.strip_prefix(&prefix)?;
            let (replaced, ids) = match rest.split_once('-')? {
                (WORK, ids) => (false, ids),
                (REPLACED, ids) => (true, ids),
                _ => return None,
            };
            let pid: u32 = ids.split_once('-')?.0.parse().ok()?;
            let running = pid == std::process::id() || process_running(pid);
            (!running).then(|| (e.path(), replaced))
        })
        .collect();
    let mut done = Vec::new();
    if !target.exists()
        && let Some(i) = left.iter().position(|(_, replaced)| *replaced)
    {
        let (old, _) = left.remove(i);
        if std::fs::rename(&old, target).is_ok() {
            done.push(target.to_path_buf());
        }
    }
    for (path, _) in left {
        if std::fs::remove_dir_all(&path).is_ok() {
            done.push(path);
        }
    }
    done
}

/// Whether process `pid` runs: it exists and is not a zombie (a process killed a moment ago
/// stays one until its parent reaps it).
pub fn process_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the command's name, which is in parentheses and may hold any.
        let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
        !matches!(state.and_then(|s| s.chars().next()), Some('Z' | 'X') | None)
    })
}

/// How long a restore that replaces a copy waits by default for a handle still open on it to
/// close: a node's requests let go of a copy put away within a second or so.
const REPLACE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Applies log backups to an open `restoring` or `standby` copy. The chain is checked in full
/// before the first record is applied.
pub fn restore_logs(
    db: &Database,
    inputs: &[PathBuf],
    options: &RestoreOptions,
) -> Result<RestoreReport> {
    let files = collect(inputs)?;
    let id = db.identity();
    let plan = plan(&files, Some(&id), options)?;
    verify_plan(&plan)?;
    let applied = apply_logs(db, &plan, options.stop_at)?;
    let id = finish(db, options)?;
    Ok(report(&id, None, applied, &plan))
}

/// What `verify_chain` found.
#[derive(Clone, Debug, Serialize)]
pub struct ChainReport {
    pub database_id: String,
    pub files: Vec<BackupFile>,
    /// LSNs a restore from these files can reach: from the oldest full backup to the last log.
    pub first_lsn: Lsn,
    pub last_lsn: Lsn,
}

/// Checks each file and the chain across them: one database, log backups contiguous with
/// continuing chains, no overlap, and every full backup joined to the logs that follow it.
pub fn verify_chain(inputs: &[PathBuf]) -> Result<ChainReport> {
    let headers = collect(inputs)?;
    if headers.is_empty() {
        return Err(none_found(inputs));
    }
    let mut files = Vec::with_capacity(headers.len());
    for h in &headers {
        files.push(verify_file(h.path())?);
    }
    let id = files[0].database_id().to_string();
    for f in &files {
        if f.database_id() != id {
            return Err(StoreError::Invalid(format!(
                "{} belongs to database {}, {} to database {}",
                f.path().display(),
                f.database(),
                files[0].path().display(),
                files[0].database()
            )));
        }
    }
    let mut logs: Vec<(&PathBuf, &LogHeader)> = files
        .iter()
        .filter_map(|f| match f {
            BackupFile::Log { path, header } => Some((path, header)),
            _ => None,
        })
        .collect();
    logs.sort_by_key(|(_, h)| (h.first_lsn, h.last_lsn));
    for pair in logs.windows(2) {
        let ((pa, a), (pb, b)) = (pair[0], pair[1]);
        if b.first_lsn <= a.last_lsn {
            return Err(StoreError::Sequence(format!(
                "{} and {} both hold LSN {}: overlapping or duplicated log backups",
                name(pa),
                name(pb),
                b.first_lsn
            )));
        }
        if b.first_lsn != a.last_lsn + 1 {
            return Err(StoreError::Sequence(format!(
                "log backup {} starts at LSN {} but {} ends at LSN {}: gap of {} records; a log \
                 backup is missing",
                name(pb),
                b.first_lsn,
                name(pa),
                a.last_lsn,
                b.first_lsn - a.last_lsn - 1
            )));
        }
        if b.chain_before != a.chain_after {
            return Err(StoreError::Sequence(format!(
                "log backup {} does not continue the chain of {} (chain {} after LSN {}, {} \
                 expected): another history, or an altered file",
                name(pb),
                name(pa),
                b.chain_before,
                a.last_lsn,
                a.chain_after
            )));
        }
        if b.epoch < a.epoch {
            return Err(StoreError::Sequence(format!(
                "log backup {} is of epoch {} after {} of epoch {}",
                name(pb),
                b.epoch,
                name(pa),
                a.epoch
            )));
        }
    }
    let mut first_lsn = Lsn::MAX;
    let mut last_lsn = logs.last().map(|(_, h)| h.last_lsn).unwrap_or(0);
    for f in &files {
        let BackupFile::Full { path, header } = f else {
            continue;
        };
        first_lsn = first_lsn.min(header.lsn);
        last_lsn = last_lsn.max(header.lsn);
        let Some((first_log, fh)) = logs.first() else {
            continue;
        };
        if header.lsn + 1 < fh.first_lsn {
            return Err(StoreError::Sequence(format!(
                "full backup {} ends at LSN {} but the first log backup {} starts at LSN {}: gap \
                 of {} records",
                name(path),
                header.lsn,
                name(first_log),
                fh.first_lsn,
                fh.first_lsn - header.lsn - 1
            )));
        }
        if let Some((log, lh)) = logs
            .iter()
            .find(|(_, h)| h.last_lsn > header.lsn && h.epoch < header.epoch)
        {
            return Err(StoreError::Sequence(format!(
                "log backup {} is of epoch {} but full backup {} is at epoch {} (LSN {}): its \
                 records past LSN {} belong to a history the full backup left",
                name(log),
                lh.epoch,
                name(path),
                header.epoch,
                header.lsn,
                header.lsn
            )));
        }
        if let Some(chain) = chain_in_logs(&logs, header.lsn)?
            && chain != header.chain
        {
            return Err(StoreError::Sequence(format!(
                "full backup {} has chain {} at LSN {} but the log backups have {chain} there: \
                 they belong to another history",
                name(path),
                header.chain,
                header.lsn
            )));
        }
    }
    if first_lsn == Lsn::MAX {
        first_lsn = logs.first().map(|(_, h)| h.first_lsn - 1).unwrap_or(0);
    }
    Ok(ChainReport {
        database_id: id,
        files,
        first_lsn,
        last_lsn,
    })
}

/// The chain just after `lsn` according to the log backups, when they cover it.
fn chain_in_logs(logs: &[(&PathBuf, &LogHeader)], lsn: Lsn) -> Result<Option<Chain>> {
    for (path, h) in logs {
        if h.first_lsn == lsn + 1 {
            return Ok(Some(h.chain_before));
        }
        if h.last_lsn == lsn {
            return Ok(Some(h.chain_after));
        }
        if h.first_lsn <= lsn && lsn < h.last_lsn {
            let mut found = None;
            read_log_records(path, h, lsn, 1, |batch| {
                found = Some(batch.chain_before);
                Ok(false)
            })?;
            return Ok(found);
        }
    }
    Ok(None)
}
