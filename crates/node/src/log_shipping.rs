//! Log shipping (DESIGN.md §2 and §4, seed `003_…`): per log-shipped database (`mgc`, whose
//! secondary is the topology's `[chat] backup`), three jobs through the share.
//!
//! - The **backup job** runs on whichever node holds the primary copy now, in the configured
//!   primary site (a mirror failover moves it to the mirror, and the chain goes on): every
//!   `backup_interval_ms` a log backup of what was acknowledged since the last one, a full
//!   backup every `full_backup_interval_ms`, and the share's retention.
//! - The **copy job** on the secondary copies every log backup it has not copied from the share
//!   to its own directory (`DATA/log-shipping/<db>/`).
//! - The **restore job** on the secondary applies the copied files in LSN order to its
//!   `restoring` copy, which it first seeds from the newest full backup on the share.
//!
//! Everything both sites must see lives on the share, in `SHARE/<db>/`: the configuration
//! (`log-shipping.json`), the backup files, and each job's progress (`primary.json`,
//! `secondary-<node>.json`). So any node — the secondary alone, once the primary site is lost —
//! can run the monitor and every step of a failover. Writers of the share take its lock file
//! (`.lock`) so that a mirror failover never has two primaries cutting the same records.

use crate::error::ApiError;
use crate::server::{NodeState, Shared};
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tandem_store::{
    BackupFile, Database, FileName, LOG_BACKUP_CONSUMER, Lsn, Recovery, RestoreOptions, Role,
};
use tandem_topology::{PlacementRole, Topology};

/// The configuration file in `SHARE/<db>/`.
pub const CONFIG_FILE: &str = "log-shipping.json";
/// The backup job's progress, in `SHARE/<db>/`.
pub const PRIMARY_FILE: &str = "primary.json";
/// The lock file writers of `SHARE/<db>/` hold.
const LOCK_FILE: &str = ".lock";
/// The secondary's own record of the full backup it was seeded from, in its local directory.
const STATE_FILE: &str = "state.json";

/// Default interval between two log backups (and two rounds of the copy and restore jobs).
pub const BACKUP_INTERVAL_MS_DEFAULT: u64 = 1_000;
const BACKUP_INTERVAL_MS_MIN: u64 = 100;
const BACKUP_INTERVAL_MS_MAX: u64 = 3_600_000;
/// Default interval between two rounds of the secondary (copy, then restore): half the backup
/// interval, so a log backup waits half an interval on average before it is applied.
pub const COPY_INTERVAL_MS_DEFAULT: u64 = 500;

fn copy_interval_default() -> u64 {
    COPY_INTERVAL_MS_DEFAULT
}

/// Default interval between two scheduled full backups. The log backups after the newest full
/// backup stay on the share (about one per second under load): an hour keeps a restore chain,
/// and the listings every job reads each round, to a few thousand files.
pub const FULL_BACKUP_INTERVAL_MS_DEFAULT: u64 = 3_600_000;
const FULL_BACKUP_INTERVAL_MS_MIN: u64 = 10_000;
/// The backup alert fires when the backup job has not run for this many intervals.
const BACKUP_ALERT_INTERVALS: u64 = 5;
/// Default restore alert: the secondary lags the primary by more than this (records' times).
pub const RESTORE_ALERT_MS_DEFAULT: u64 = 10_000;
/// How often the backup job applies the share's retention.
const RETENTION_EVERY_MS: u64 = 10_000;
/// Log backups one round of the copy or restore job takes on (the next round takes the rest).
const LOG_FILES_PER_ROUND_MAX: usize = 1_000;
/// Log backups one `restore` step applies at most (checked as one chain before any is applied).
const LOG_FILES_PER_RESTORE_MAX: usize = 100_000;
/// Temporary files (`.partial-…`, `.snapshot-…`) older than this on the share are leftovers
/// of a crash and removed by the retention.
const TEMP_FILE_AGE_MS_MAX: u64 = 3_600_000;

/// The log shipping of one database, as configured on the share.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub database: String,
    /// The site whose primary copy backs up: the copy that is primary in that site now.
    pub primary_site: String,
    /// The node whose copy copies and restores the log backups; `None` once removed.
    pub secondary: Option<String>,
    /// The full backup that started the secondary's chain: when it changes the secondary is
    /// seeded again, from the newest full backup on the share.
    pub seed: Option<String>,
    pub backup_interval_ms: u64,
    /// Interval of the secondary's rounds (copy, then restore).
    #[serde(default = "copy_interval_default")]
    pub copy_interval_ms: u64,
    pub full_backup_interval_ms: u64,
    /// Alert when the backup job has not run for this long.
    pub backup_alert_ms: u64,
    /// Alert when the secondary lags the primary by more than this (records' commit times),
    /// or its jobs have not run for this long.
    pub restore_alert_ms: u64,
    pub updated_ms: i64,
}

impl Config {
    fn new(database: &str, primary_site: &str, secondary: Option<String>) -> Config {
        Config {
            database: database.to_string(),
            primary_site: primary_site.to_string(),
            secondary,
            seed: None,
            backup_interval_ms: BACKUP_INTERVAL_MS_DEFAULT,
            copy_interval_ms: COPY_INTERVAL_MS_DEFAULT,
            full_backup_interval_ms: FULL_BACKUP_INTERVAL_MS_DEFAULT,
            backup_alert_ms: BACKUP_ALERT_INTERVALS * BACKUP_INTERVAL_MS_DEFAULT,
            restore_alert_ms: RESTORE_ALERT_MS_DEFAULT,
            updated_ms: now_ms(),
        }
    }
}

/// One job's last work.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    /// The last file the job wrote, copied or applied, the last LSN in it, and when.
    pub last_file: Option<String>,
    pub last_lsn: Option<Lsn>,
    pub last_file_ms: Option<i64>,
    /// When the job last ran, with or without anything to do (ms since the Unix epoch).
    pub ran_ms: Option<i64>,
    /// Why its last run failed, if it did.
    pub error: Option<String>,
}

impl JobStatus {
    fn ran(&mut self, result: Result<Option<(String, Lsn)>, String>) {
        let now = now_ms();
        self.ran_ms = Some(now);
        match result {
            Ok(Some((file, lsn))) => {
                self.last_file = Some(file);
                self.last_lsn = Some(lsn);
                self.last_file_ms = Some(now);
                self.error = None;
            }
            Ok(None) => self.error = None,
            Err(e) => self.error = Some(e),
        }
    }
}

/// The backup job's progress, on the share.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PrimaryProgress {
    pub node: String,
    pub epoch: u64,
    /// The primary's LSN and the commit time of its last record.
    pub lsn: Lsn,
    pub last_time_ms: i64,
    pub backup: JobStatus,
    /// The newest full backup the job took.
    pub full: Option<String>,
    pub updated_ms: i64,
}

/// The secondary's progress, on the share.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SecondaryProgress {
    pub node: String,
    /// The configuration's seed this copy was seeded for.
    pub seed: Option<String>,
    pub role: Option<String>,
    pub epoch: Option<u64>,
    /// The copy's LSN and the commit time of its last record.
    pub lsn: Lsn,
    pub last_time_ms: i64,
    pub copy: JobStatus,
    pub restore: JobStatus,
    pub updated_ms: i64,
}

/// What `status` shows of the log-shipping jobs that ran on this node for one copy.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CopyJobs {
    pub backup: Option<JobStatus>,
    pub copy: Option<JobStatus>,
    pub restore: Option<JobStatus>,
    /// A condition of the jobs: stale primary, seeding, not the secondary, …
    pub state: Option<String>,
}

#[derive(Default)]
struct Jobs {
    status: CopyJobs,
    retention_at: Option<Instant>,
}

/// This node's log-shipping jobs.
#[derive(Default)]
pub(crate) struct LogShipping {
    jobs: Mutex<BTreeMap<String, Arc<Mutex<Jobs>>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl LogShipping {
    fn jobs(&self, database: &str) -> Arc<Mutex<Jobs>> {
        self.jobs
            .lock()
            .expect("jobs lock")
            .entry(database.to_string())
            .or_default()
            .clone()
    }

    fn update(&self, database: &str, f: impl FnOnce(&mut CopyJobs)) {
        let jobs = self.jobs(database);
        f(&mut jobs.lock().expect("jobs lock").status);
    }

    /// The jobs that ran here for `database`, if any.
    pub(crate) fn status(&self, database: &str) -> Option<CopyJobs> {
        let jobs = self
            .jobs
            .lock()
            .expect("jobs lock")
            .get(database)
            .cloned()?;
        let s = jobs.lock().expect("jobs lock").status.clone();
        (s.backup.is_some() || s.copy.is_some() || s.restore.is_some() || s.state.is_some())
            .then_some(s)
    }
}

/// The databases the topology log-ships: those it places a backup copy of.
pub(crate) fn shipped(topology: &Topology) -> Vec<String> {
    let mut out: Vec<String> = topology
        .nodes
        .iter()
        .flat_map(|n| topology.databases_on(&n.name))
        .filter(|p| p.role == PlacementRole::Backup)
        .map(|p| p.database)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The node the topology places `database`'s copy of `role` on.
fn placed(
    topology: &Topology,
    database: &str,
    role: PlacementRole,
) -> Option<tandem_topology::Node> {
    topology
        .nodes
        .iter()
        .find(|n| {
            topology
                .databases_on(&n.name)
                .iter()
                .any(|p| p.database == database && p.role == role)
        })
        .cloned()
}

pub(crate) fn share_dir(topology: &Topology, database: &str) -> PathBuf {
    topology.share.join(database)
}

fn local_dir(node: &NodeState, database: &str) -> PathBuf {
    node.me().data_dir.join("log-shipping").join(database)
}

fn secondary_file(node: &str) -> String {
    format!("secondary-{node}.json")
}

/// Milliseconds since the Unix epoch (the times of the jobs and the monitor).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(e.to_string()))
}

// ---- files on the share ----

/// Writes `value` as JSON under a temporary name, then renames it: readers see the old or the
/// new document, never a part. `durable` also fsyncs the file and the directory.
fn write_json<T: Serialize>(path: &FsPath, value: &T, durable: bool) -> Result<(), String> {
    let dir = path.parent().expect("a file in a directory");
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let name = path.file_name().expect("a file name").to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let bytes = serde_json::to_vec_pretty(value).expect("serializes");
    let r = (|| {
        std::fs::write(&tmp, &bytes)?;
        if durable {
            std::fs::File::open(&tmp)?.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if durable {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok::<_, std::io::Error>(())
    })();
    r.map_err(|e| format!("{}: {e}", path.display()))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &FsPath) -> Result<Option<T>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

pub(crate) fn read_config(dir: &FsPath) -> Result<Option<Config>, String> {
    read_json(&dir.join(CONFIG_FILE))
}

fn write_config(dir: &FsPath, config: &Config) -> Result<(), String> {
    let mut c = config.clone();
    c.updated_ms = now_ms();
    write_json(&dir.join(CONFIG_FILE), &c, true)
}

/// The share directory's lock, held while a node writes backups or the configuration there.
struct ShareLock(#[allow(dead_code)] std::fs::File);

impl ShareLock {
    fn acquire(dir: &FsPath) -> Result<ShareLock, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join(LOCK_FILE);
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        f.lock().map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(ShareLock(f))
    }
}

/// The backup files of a directory, from their names, in LSN order.
#[derive(Debug, Default)]
struct Listing {
    files: Vec<(String, FileName)>,
}

impl Listing {
    fn read(dir: &FsPath) -> Result<Listing, String> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Listing::default()),
            Err(e) => return Err(format!("{}: {e}", dir.display())),
        };
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(parsed) = tandem_store::parse_file_name(&name) {
                files.push((name, parsed));
            }
        }
        files.sort_by_key(|(name, f)| (order(f), name.clone()));
        Ok(Listing { files })
    }

    fn logs(&self) -> impl Iterator<Item = (&str, Lsn, Lsn)> {
        self.files.iter().filter_map(|(n, f)| match f {
            FileName::Log {
                first_lsn,
                last_lsn,
            } => Some((n.as_str(), *first_lsn, *last_lsn)),
            _ => None,
        })
    }

    /// The newest full backup: highest LSN, then latest taken.
    fn newest_full(&self) -> Option<(&str, Lsn)> {
        self.files
            .iter()
            .filter_map(|(n, f)| match f {
                FileName::Full {
                    lsn, created_ms, ..
                } => Some((n.as_str(), *lsn, *created_ms)),
                _ => None,
            })
            .max_by_key(|(_, lsn, created)| (*lsn, *created))
            .map(|(n, lsn, _)| (n, lsn))
    }

    /// The file that holds the highest LSN (a log backup over a full backup of the same LSN).
    fn newest(&self) -> Option<(&str, Lsn)> {
        self.files.last().map(|(n, f)| (n.as_str(), f.lsn()))
    }
}

/// Sort key: by last LSN; a full backup before a log backup that ends at the same LSN.
fn order(f: &FileName) -> (Lsn, u8, i64) {
    match f {
        FileName::Full {
            lsn, created_ms, ..
        } => (*lsn, 0, *created_ms),
        FileName::Log { last_lsn, .. } => (*last_lsn, 1, 0),
    }
}

// ---- the backup job: the chain on the share ----

/// How the primary's copy stands against the chain on the share.
#[derive(Debug, PartialEq, Eq)]
enum ChainState {
    /// The log-backup cursor is at the share's last LSN: the next log backup follows it.
    Continues,
    /// No backup file on the share: a full backup starts the chain.
    Empty,
    /// The share's chain is not this copy's history and this copy is of a newer epoch: the old
    /// files were moved to `superseded` and a full backup starts a new chain.
    Restarted { superseded: PathBuf },
}

fn consumer_lsn(db: &Database) -> Result<Option<Lsn>, String> {
    Ok(db
        .consumers()
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|c| c.name == LOG_BACKUP_CONSUMER)
        .map(|c| c.lsn))
}

/// Puts the log-backup cursor at `lsn` (the consumer is local to a copy: a copy that became
/// primary by a mirror failover has none, or an old one).
fn set_cursor(db: &Database, lsn: Lsn) -> Result<(), String> {
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
fn ensure_chain(
    db: &Database,
    dir: &FsPath,
    restart: bool,
) -> Result<(ChainState, Listing), String> {
    let listing = Listing::read(dir)?;
    let Some((name, lsn)) = listing.newest() else {
        return Ok((ChainState::Empty, listing));
    };
    let path = dir.join(name);
    let file = tandem_store::read_header(&path).map_err(|e| e.to_string())?;
    let (epoch, chain) = match &file {
        BackupFile::Full { header, .. } => (header.epoch, header.chain),
        BackupFile::Log { header, .. } => (header.epoch, header.chain_after),
    };
    let id = db.identity();
    let same_database = file.database_id() == id.database_id.to_hex();
    if same_database && epoch > id.epoch {
        return Err(format!(
            "the share's chain is at epoch {epoch} ({name}), past this copy's epoch {}: \
             another copy is primary; this one backs up nothing",
            id.epoch
        ));
    }
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
}

/// What a round of the backup job is asked to do.
struct BackupAsk {
    node: String,
    site: String,
    /// The configuration to write when the share has none (a deployment's first start).
    initial: Option<Config>,
    /// A new configuration (the `configure` step): written, with a full backup that seeds the
    /// secondary.
    configure: Option<Config>,
    full: bool,
    retention: bool,
}

/// One round of the backup job, under the share's lock: the chain, a full backup when due or
/// asked, a log backup, the retention, the progress file.
fn backup_round(db: &Database, dir: &FsPath, ask: BackupAsk) -> Result<BackupRound, String> {
    let _lock = ShareLock::acquire(dir)?;
    let r = backup_round_locked(db, dir, &ask);
    if let Err(e) = &r {
        // The monitor shows the failure, unless another node backs up now.
        let path = dir.join(PRIMARY_FILE);
        if let Ok(Some(mut p)) = read_json::<PrimaryProgress>(&path)
            && p.node == ask.node
        {
            p.backup.ran(Err(e.clone()));
            p.updated_ms = now_ms();
            let _ = write_json(&path, &p, false);
        }
    }
    r
}

fn backup_round_locked(
    db: &Database,
    dir: &FsPath,
    ask: &BackupAsk,
) -> Result<BackupRound, String> {
    let existing = read_config(dir)?;
    let mut config = match (&ask.configure, existing.clone(), &ask.initial) {
        (Some(c), _, _) => c.clone(),
        (None, Some(c), _) => c,
        (None, None, Some(c)) => c.clone(),
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
    if starts_chain || ask.full || full_due || ask.configure.is_some() {
        let full = tandem_store::full_backup(db, dir).map_err(|e| e.to_string())?;
        tracing::info!(database = %config.database, file = %full.name(), lsn = full.lsn(), "full backup on the share");
        if starts_chain || ask.configure.is_some() {
            config.seed = Some(full.name());
        }
        round.full = Some(full);
    }
    round.logs = tandem_store::log_backup(db, dir).map_err(|e| e.to_string())?;
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
    if let Some(f) = &round.full {
        progress.full = Some(f.name());
    }
    progress.updated_ms = now_ms();
    write_json(&dir.join(PRIMARY_FILE), &progress, false)?;
    round.config = Some(config);
    Ok(round)
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

/// Removes from the share what no restore needs any more: files before the newest full backup
/// (the newest restorable chain is that backup and every log after it) that the secondary has
/// applied, and, once the secondary has applied that backup, the chains set aside in
/// `superseded-MS` before it was taken. Without a secondary nothing is removed. Leftover
/// temporary files go too.
fn retention(dir: &FsPath, config: &Config) -> Result<Vec<String>, String> {
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
    let keep_upto = newest_lsn.min(applied);
    let newest_created = listing.files.iter().find_map(|(n, f)| match f {
        FileName::Full { created_ms, .. } if n == newest => Some(*created_ms),
        _ => None,
    });
    if let Some(created) = newest_created
        && applied >= newest_lsn
    {
        removed.extend(remove_superseded_before(dir, created)?);
    }
    for (name, f) in &listing.files {
        let unneeded = match f {
            FileName::Log { last_lsn, .. } => *last_lsn <= keep_upto,
            FileName::Full { lsn, .. } => name != newest && *lsn <= keep_upto,
        };
        if unneeded {
            let path = dir.join(name);
            std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            removed.push(name.clone());
        }
    }
    Ok(removed)
}

/// Removes every `superseded-MS` directory of `dir` set aside before `before_ms`.
fn remove_superseded_before(dir: &FsPath, before_ms: i64) -> Result<Vec<String>, String> {
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

// ---- the secondary: seed, copy, restore ----

#[derive(Default, Serialize, Deserialize)]
struct LocalState {
    seed: Option<String>,
}

/// Copies every log backup of the share after `after` that is not in `local` yet, at most
/// `files_max`, each under a temporary name renamed once durable. The files copied: name,
/// last LSN.
fn copy_new(
    share: &FsPath,
    local: &FsPath,
    after: Lsn,
    files_max: usize,
) -> Result<Vec<(String, Lsn)>, String> {
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
    for (name, _, last) in listing.logs() {
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
            std::fs::rename(&tmp, &dst)
        })();
        if let Err(e) = r {
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
    Ok(copied)
}

/// The copied log backups a copy at `lsn` has not applied, in LSN order.
fn unapplied(local: &FsPath, lsn: Lsn) -> Result<Vec<PathBuf>, String> {
    Ok(Listing::read(local)?
        .logs()
        .filter(|(_, _, last)| *last > lsn)
        .map(|(name, _, _)| local.join(name))
        .collect())
}

/// Removes the copied log backups a copy at `lsn` has applied.
fn drop_applied(local: &FsPath, lsn: Lsn) {
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
}

/// Applies copied log backups to `db`, at most `files_max`, checked as one chain first: on any
/// refusal (a gap, a damaged file — named) nothing is applied.
fn restore_copied(
    db: &Database,
    local: &FsPath,
    files_max: usize,
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
    let recovery = if id.role == Role::Standby {
        Recovery::Standby
    } else {
        Recovery::NoRecovery
    };
    let options = RestoreOptions {
        recovery,
        ..Default::default()
    };
    let report = tandem_store::restore_logs(db, &files, &options)?;
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

/// Seeds the secondary's copy from the newest full backup on the share (the copy it replaces
/// closes first; on any error it is put back as it was). Refuses to replace a mirror, or a
/// primary that is not older than the backup.
fn seed(node: &NodeState, database: &str, share: &FsPath, local: &FsPath) -> Result<Lsn, String> {
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
enum Steps {
    /// The jobs: seed when needed, copy, restore.
    Jobs,
    /// The `copy` step alone: every log backup not copied yet.
    Copy,
    /// The `restore` step alone: every copied log backup not applied yet.
    Restore,
}

#[derive(Default)]
struct SecondaryRound {
    copied: Vec<(String, Lsn)>,
    restored: Option<Result<Restored, tandem_store::StoreError>>,
    state: Option<String>,
}

/// One round on the secondary (blocking; the caller holds the copy's operations lock).
fn secondary_round(
    node: &NodeState,
    database: &str,
    config: Option<&Config>,
    steps: Steps,
) -> Result<SecondaryRound, String> {
    let share = share_dir(&node.topology, database);
    let local = local_dir(node, database);
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
        let mut r = restore_copied(&db, &local, max);
        if let Ok(r) = &mut r {
            r.node = node.name.clone();
        }
        round.restored = Some(r);
    }
    Ok(round)
}

/// Records a secondary round in the node's status and in the progress file on the share.
fn record_secondary(
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
                copy.ran(Ok(r.copied.last().cloned()));
            }
            match &r.restored {
                Some(Ok(x)) => restore.ran(Ok(x.files_applied.last().map(|f| (f.clone(), x.lsn)))),
                Some(Err(e)) => restore.ran(Err(e.to_string())),
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

// ---- the jobs ----

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

async fn run(node: std::sync::Weak<NodeState>, database: String) {
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
async fn tick(node: &Shared, database: &str) -> u64 {
    let share = share_dir(&node.topology, database);
    let config = {
        let s = share.clone();
        blocking(move || read_config(&s)).await
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
    } else if secondary {
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
fn initial_config(node: &NodeState, database: &str) -> Option<Config> {
    let backup = placed(&node.topology, database, PlacementRole::Backup)?;
    let primary = placed(&node.topology, database, PlacementRole::Primary)?;
    let site = &node.me().site;
    (primary.site == *site && backup.site != *site)
        .then(|| Config::new(database, site, Some(backup.name)))
}

async fn backup_tick(node: &Shared, database: &str, config: Option<&Config>) {
    let ops = node.host.operations(database);
    let _guard = ops.lock().await;
    let Some(db) = node.local_primary(database) else {
        return;
    };
    if config.is_some_and(|c| c.primary_site != node.me().site) {
        node.log_shipping.update(database, |s| {
            s.backup = None;
            s.state = config.map(|c| {
                format!(
                    "log shipping is configured from site {}: no backup job here",
                    c.primary_site
                )
            });
        });
        return;
    }
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

fn record_backup(node: &NodeState, database: &str, r: &Result<BackupRound, String>) {
    if let Ok(round) = r
        && !round.removed.is_empty()
    {
        tracing::debug!(
            database,
            files = round.removed.len(),
            "retention removed files from the share"
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
                s.state = None;
            }
            Err(e) => job.ran(Err(e.clone())),
        }
    });
}

// ---- the monitor ----

/// A file on the share: its name, last LSN, and age.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShareFile {
    pub name: String,
    pub lsn: Lsn,
    pub age_ms: Option<u64>,
}

/// The log-shipping monitor of one database (SQL Server's log-shipping monitor): read from the
/// share, so any node answers it, the secondary alone included.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Monitor {
    pub database: String,
    pub share: PathBuf,
    pub config: Option<Config>,
    pub full_backups: usize,
    pub log_backups: usize,
    pub newest_full: Option<ShareFile>,
    pub newest_log: Option<ShareFile>,
    /// The backup job's progress, and the secondary's (the configured one, or the last one
    /// that reported after its removal).
    pub primary: Option<PrimaryProgress>,
    pub secondary: Option<SecondaryProgress>,
    /// Records the secondary lacks, and how far behind its last record is (commit times).
    pub lag_records: Option<u64>,
    pub lag_ms: Option<u64>,
    /// Conditions past a threshold, each one line.
    pub alerts: Vec<String>,
    pub now_ms: i64,
}

fn age(ms: i64, now: i64) -> u64 {
    (now - ms).max(0) as u64
}

fn file_age(path: &FsPath) -> Option<u64> {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .map(|d| d.as_millis() as u64)
}

/// Builds the monitor from the share.
pub(crate) fn monitor(topology: &Topology, database: &str) -> Result<Monitor, String> {
    let dir = share_dir(topology, database);
    let now = now_ms();
    let config = read_config(&dir)?;
    let listing = Listing::read(&dir)?;
    let primary: Option<PrimaryProgress> = read_json(&dir.join(PRIMARY_FILE))?;
    let secondary: Option<SecondaryProgress> =
        match config.as_ref().and_then(|c| c.secondary.clone()) {
            Some(s) => read_json(&dir.join(secondary_file(&s)))?,
            None => {
                // The last secondary that reported (a failover removed it from the configuration).
                let mut newest: Option<SecondaryProgress> = None;
                if let Ok(entries) = std::fs::read_dir(&dir) {
                    for e in entries.flatten() {
                        let name = e.file_name().to_string_lossy().into_owned();
                        if name.starts_with("secondary-")
                            && name.ends_with(".json")
                            && let Ok(Some(p)) = read_json::<SecondaryProgress>(&e.path())
                            && newest.as_ref().is_none_or(|n| n.updated_ms < p.updated_ms)
                        {
                            newest = Some(p);
                        }
                    }
                }
                newest
            }
        };
    let newest_full = listing.newest_full().map(|(name, lsn)| ShareFile {
        name: name.to_string(),
        lsn,
        age_ms: file_age(&dir.join(name)),
    });
    let newest_log = listing.logs().last().map(|(name, _, last)| ShareFile {
        name: name.to_string(),
        lsn: last,
        age_ms: file_age(&dir.join(name)),
    });
    let (lag_records, lag_ms) = match (&primary, &secondary) {
        // A secondary recovered (primary now) lags nothing: it left the chain.
        (Some(p), Some(s))
            if s.seed.is_some() && matches!(s.role.as_deref(), Some("restoring" | "standby")) =>
        {
            let records = p.lsn.saturating_sub(s.lsn);
            let ms = if records == 0 {
                0
            } else {
                (p.last_time_ms - s.last_time_ms).max(0) as u64
            };
            (Some(records), Some(ms))
        }
        _ => (None, None),
    };
    let mut alerts = Vec::new();
    if let Some(c) = &config {
        match &primary {
            None => alerts.push("backup job: no progress on the share yet".to_string()),
            Some(p) => {
                let ran = p.backup.ran_ms.unwrap_or(p.updated_ms);
                if age(ran, now) > c.backup_alert_ms {
                    alerts.push(format!(
                        "backup job on {}: last ran {:.1} s ago (threshold {:.1} s)",
                        p.node,
                        age(ran, now) as f64 / 1000.0,
                        c.backup_alert_ms as f64 / 1000.0
                    ));
                }
                if let Some(e) = &p.backup.error {
                    alerts.push(format!("backup job on {}: {e}", p.node));
                }
            }
        }
        if let Some(name) = &c.secondary {
            match &secondary {
                None => alerts.push(format!("secondary {name}: no progress on the share yet")),
                Some(s) => {
                    if s.seed != c.seed {
                        alerts.push(format!(
                            "secondary {name}: not seeded from {} yet",
                            c.seed.as_deref().unwrap_or("-")
                        ));
                    }
                    if age(s.updated_ms, now) > c.restore_alert_ms {
                        alerts.push(format!(
                            "copy and restore jobs on {name}: last ran {:.1} s ago (threshold {:.1} s)",
                            age(s.updated_ms, now) as f64 / 1000.0,
                            c.restore_alert_ms as f64 / 1000.0
                        ));
                    }
                    for (job, st) in [("copy", &s.copy), ("restore", &s.restore)] {
                        if let Some(e) = &st.error {
                            alerts.push(format!("{job} job on {name}: {e}"));
                        }
                    }
                    if let Some(ms) = lag_ms
                        && ms > c.restore_alert_ms
                    {
                        alerts.push(format!(
                            "restore lag on {name}: {:.1} s behind the primary ({} records; \
                             threshold {:.1} s)",
                            ms as f64 / 1000.0,
                            lag_records.unwrap_or(0),
                            c.restore_alert_ms as f64 / 1000.0
                        ));
                    }
                }
            }
        }
    }
    Ok(Monitor {
        database: database.to_string(),
        share: dir,
        config,
        full_backups: listing
            .files
            .iter()
            .filter(|(_, f)| matches!(f, FileName::Full { .. }))
            .count(),
        log_backups: listing.logs().count(),
        newest_full,
        newest_log,
        primary,
        secondary,
        lag_records,
        lag_ms,
        alerts,
        now_ms: now,
    })
}

// ---- the internal API ----

fn shipped_or_refuse(node: &NodeState, database: &str) -> Result<(), ApiError> {
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
    secondary: String,
    backup_interval_ms: Option<u64>,
    copy_interval_ms: Option<u64>,
    full_backup_interval_ms: Option<u64>,
    backup_alert_ms: Option<u64>,
    restore_alert_ms: Option<u64>,
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
    body: Result<Json<Configure>, JsonRejection>,
) -> Result<Json<Configured>, ApiError> {
    let Json(req) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
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
    let mut config = Config::new(&database, &me.site, Some(secondary.name.clone()));
    let bounded = |v: Option<u64>, default: u64, min: u64, max: u64, what: &str| match v {
        None => Ok(default),
        Some(v) if (min..=max).contains(&v) => Ok(v),
        Some(v) => Err(ApiError::bad_request(format!(
            "{what} {v} is out of range ({min}..={max})"
        ))),
    };
    config.backup_interval_ms = bounded(
        req.backup_interval_ms,
        BACKUP_INTERVAL_MS_DEFAULT,
        BACKUP_INTERVAL_MS_MIN,
        BACKUP_INTERVAL_MS_MAX,
        "backup_interval_ms",
    )?;
    config.copy_interval_ms = bounded(
        req.copy_interval_ms,
        COPY_INTERVAL_MS_DEFAULT,
        BACKUP_INTERVAL_MS_MIN,
        BACKUP_INTERVAL_MS_MAX,
        "copy_interval_ms",
    )?;
    config.full_backup_interval_ms = bounded(
        req.full_backup_interval_ms,
        FULL_BACKUP_INTERVAL_MS_DEFAULT,
        FULL_BACKUP_INTERVAL_MS_MIN,
        u64::MAX / 2,
        "full_backup_interval_ms",
    )?;
    config.backup_alert_ms = bounded(
        req.backup_alert_ms,
        BACKUP_ALERT_INTERVALS * config.backup_interval_ms,
        config.backup_interval_ms,
        u64::MAX / 2,
        "backup_alert_ms",
    )?;
    config.restore_alert_ms = bounded(
        req.restore_alert_ms,
        RESTORE_ALERT_MS_DEFAULT,
        config.backup_interval_ms,
        u64::MAX / 2,
        "restore_alert_ms",
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
    let ops = node.host.operations(&database);
    let _guard = ops.lock().await;
    let dir = share_dir(&node.topology, &database);
    let ask = BackupAsk {
        node: node.name.clone(),
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
    // A round of this node's jobs in progress ends first.
    let ops = node.host.operations(&database);
    let _guard = ops.lock().await;
    let dir = share_dir(&node.topology, &database);
    let removed = blocking(move || {
        let _lock = ShareLock::acquire(&dir)?;
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
async fn step_config(node: &NodeState, database: &str) -> Result<Option<Config>, ApiError> {
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
        files_copied: round.copied.into_iter().map(|(n, _)| n).collect(),
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
    let db = node.host.get(database).ok_or_else(|| {
        ApiError::not_found(format!(
            "node {} holds no open copy of {database}",
            node.name
        ))
    })?;
    let dir = share_dir(&node.topology, database);
    let id = db.identity();
    if id.role != Role::Primary {
        if log {
            return Err(ApiError::conflict(format!(
                "{database} on {} is {}: log backups are taken on the primary",
                node.name, id.role
            )));
        }
        let file =
            blocking(move || tandem_store::seed_backup(&db, &dir).map_err(|e| e.to_string()))
                .await
                .map_err(ApiError::unavailable)?;
        return Ok(vec![file]);
    }
    let site = node.me().site.clone();
    let name = node.name.clone();
    let r = blocking(move || {
        let _lock = ShareLock::acquire(&dir)?;
        let (state, _) = ensure_chain(&db, &dir, !log)?;
        if log {
            if state == ChainState::Empty {
                return Err(format!(
                    "no full backup of {} in {}: take a full backup first (it starts the chain)",
                    db.identity().name,
                    dir.display()
                ));
            }
            return tandem_store::log_backup(&db, &dir).map_err(|e| e.to_string());
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

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_store::{Migration, Options, Value};

    static SCHEMA: &[Migration] = &[Migration {
        version: 1,
        name: "rows",
        sql: "CREATE TABLE rows (id INTEGER PRIMARY KEY, v TEXT NOT NULL);",
    }];

    fn create(dir: &FsPath) -> Database {
        let db = Database::create(dir, "mgc", Options::default()).unwrap();
        db.migrate(SCHEMA).unwrap();
        db
    }

    fn write(db: &Database, from: i64, n: i64) {
        for i in from..from + n {
            db.write(move |tx: &mut tandem_store::Tx<'_>| {
                tx.insert(
                    "rows",
                    vec![Value::Integer(i), Value::Text(format!("row {i}"))],
                )
            })
            .unwrap();
        }
    }

    /// A copy restored from every file of `share`, `restoring`.
    fn restored(share: &FsPath, target: &FsPath) -> Database {
        let files: Vec<PathBuf> = Listing::read(share)
            .unwrap()
            .files
            .iter()
            .map(|(n, _)| share.join(n))
            .collect();
        let options = RestoreOptions {
            recovery: Recovery::NoRecovery,
            ..Default::default()
        };
        tandem_store::restore_new(target, &files, &options, false).unwrap();
        Database::open(target, Options::default()).unwrap()
    }

    fn names(dir: &FsPath) -> Vec<String> {
        Listing::read(dir)
            .unwrap()
            .files
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    }

    #[test]
    fn a_copy_that_holds_the_shares_last_lsn_continues_the_chain() {
        let tmp = tempfile::tempdir().unwrap();
        let share = tmp.path().join("share");
        let a = create(&tmp.path().join("a"));
        write(&a, 0, 5);
        tandem_store::full_backup(&a, &share).unwrap();
        write(&a, 5, 5);
        tandem_store::log_backup(&a, &share).unwrap();
        // Another copy of the same history takes over (as a mirror would): it has no cursor.
        let b = restored(&share, &tmp.path().join("b"));
        b.recover(None).unwrap();
        assert!(consumer_lsn(&b).unwrap().is_none());
        let (state, _) = ensure_chain(&b, &share, false).unwrap();
        assert_eq!(state, ChainState::Continues);
        assert_eq!(consumer_lsn(&b).unwrap(), Some(a.identity().lsn));
        write(&b, 10, 3);
        let files = tandem_store::log_backup(&b, &share).unwrap();
        assert_eq!(files.len(), 1);
        let chain = tandem_store::verify_chain(std::slice::from_ref(&share)).unwrap();
        assert_eq!(chain.last_lsn, b.identity().lsn);
        // The old primary, of the older epoch, writes nothing there any more.
        let e = ensure_chain(&a, &share, true).unwrap_err();
        assert!(e.contains("past this copy's epoch 1"), "{e}");
        assert_eq!(names(&share).len(), 3);
    }

    #[test]
    fn a_newer_epoch_off_the_chain_starts_a_new_one_and_keeps_the_old_files() {
        let tmp = tempfile::tempdir().unwrap();
        let share = tmp.path().join("share");
        let a = create(&tmp.path().join("a"));
        write(&a, 0, 5);
        tandem_store::full_backup(&a, &share).unwrap();
        // A copy from the full backup alone, recovered, then written: another history.
        let c = restored(&share, &tmp.path().join("c"));
        write(&a, 5, 5);
        tandem_store::log_backup(&a, &share).unwrap();
        c.recover(None).unwrap();
        write(&c, 100, 2);
        let before = names(&share);
        let e = ensure_chain(&c, &share, false).unwrap_err();
        assert!(e.contains("take a full backup first"), "{e}");
        assert_eq!(names(&share), before, "a refusal moves nothing");
        let (state, listing) = ensure_chain(&c, &share, true).unwrap();
        let ChainState::Restarted { superseded } = state else {
            panic!("{state:?}")
        };
        assert!(listing.files.is_empty());
        assert!(names(&share).is_empty());
        assert_eq!(names(&superseded), before);
        // The same epoch with another history is an operator's question, not a restart.
        let d = restored(&superseded, &tmp.path().join("d"));
        d.recover(None).unwrap();
        tandem_store::full_backup(&c, &share).unwrap();
        write(&c, 200, 1);
        tandem_store::log_backup(&c, &share).unwrap();
        write(&d, 300, 2);
        let e = ensure_chain(&d, &share, true).unwrap_err();
        assert!(e.contains("another history"), "{e}");
    }

    #[test]
    fn retention_keeps_the_newest_chain_and_what_the_secondary_lacks() {
        let tmp = tempfile::tempdir().unwrap();
        let share = tmp.path().join("share");
        let a = create(&tmp.path().join("a"));
        write(&a, 0, 5);
        let f1 = tandem_store::full_backup(&a, &share).unwrap();
        write(&a, 5, 5);
        let l1 = tandem_store::log_backup(&a, &share).unwrap().remove(0);
        let f2 = tandem_store::full_backup(&a, &share).unwrap();
        write(&a, 10, 3);
        let l2 = tandem_store::log_backup(&a, &share).unwrap().remove(0);
        let mut config = Config::new("mgc", "atl", Some("dal-db1".into()));
        config.seed = Some(f1.name());
        let progress = |lsn: Lsn, seed: &str| {
            let p = SecondaryProgress {
                node: "dal-db1".into(),
                seed: Some(seed.to_string()),
                lsn,
                ..Default::default()
            };
            write_json(&share.join(secondary_file("dal-db1")), &p, false).unwrap();
        };
        // The secondary is behind the first log backup: only the older full backup may go.
        progress(f1.lsn(), &f1.name());
        let removed = retention(&share, &config).unwrap();
        assert_eq!(removed, vec![f1.name()]);
        // Past it: the log before the newest full backup goes, never the newest chain.
        progress(l2.lsn(), &f1.name());
        let removed = retention(&share, &config).unwrap();
        assert_eq!(removed, vec![l1.name()]);
        assert_eq!(names(&share), vec![f2.name(), l2.name()]);
        // A chain set aside before the newest full backup goes once the secondary has applied
        // that backup; one set aside after it stays.
        let f2_created = match Listing::read(&share)
            .unwrap()
            .files
            .iter()
            .find(|(n, _)| *n == f2.name())
        {
            Some((_, FileName::Full { created_ms, .. })) => *created_ms,
            other => panic!("{other:?}"),
        };
        let before = format!("superseded-{}", f2_created - 1);
        let after = format!("superseded-{}", f2_created + 1);
        for d in [&before, &after] {
            std::fs::create_dir_all(share.join(d)).unwrap();
            std::fs::write(share.join(d).join("log-old.tlb"), b"old chain").unwrap();
        }
        progress(f2.lsn() - 1, &f1.name());
        assert!(
            retention(&share, &config).unwrap().is_empty(),
            "the secondary has not applied the newest full backup yet"
        );
        progress(l2.lsn(), &f1.name());
        assert_eq!(retention(&share, &config).unwrap(), vec![before.clone()]);
        assert!(!share.join(&before).exists() && share.join(&after).exists());
        std::fs::remove_dir_all(share.join(&after)).unwrap();
        // A secondary seeded for another configuration, or none, removes nothing.
        write(&a, 13, 1);
        tandem_store::full_backup(&a, &share).unwrap();
        progress(a.identity().lsn, "full-of-another-seed.tfb");
        assert!(retention(&share, &config).unwrap().is_empty());
        config.secondary = None;
        assert!(retention(&share, &config).unwrap().is_empty());
    }

    #[test]
    fn a_damaged_copied_file_refuses_the_restore_and_applies_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let share = tmp.path().join("share");
        let local = tmp.path().join("local");
        let a = create(&tmp.path().join("a"));
        write(&a, 0, 3);
        tandem_store::full_backup(&a, &share).unwrap();
        let r = restored(&share, &tmp.path().join("r"));
        for i in 0..3 {
            write(&a, 10 + i * 10, 4);
            tandem_store::log_backup(&a, &share).unwrap();
        }
        let lsn = r.identity().lsn;
        let copied = copy_new(&share, &local, lsn, 2).unwrap();
        assert_eq!(copied.len(), 2, "bounded per round");
        assert_eq!(copy_new(&share, &local, lsn, 10).unwrap().len(), 1);
        assert!(copy_new(&share, &local, lsn, 10).unwrap().is_empty());
        let second = local.join(&copied[1].0);
        let mut bytes = std::fs::read(&second).unwrap();
        let at = bytes.len() - 60;
        bytes[at] ^= 1;
        std::fs::write(&second, &bytes).unwrap();
        let e = restore_copied(&r, &local, 100).unwrap_err().to_string();
        assert!(e.contains(&copied[1].0), "{e}");
        assert_eq!(r.identity().lsn, lsn, "nothing applied");
        // The file copied again from the share: everything applies, the copies go.
        std::fs::copy(share.join(&copied[1].0), &second).unwrap();
        let done = restore_copied(&r, &local, 100).unwrap();
        assert_eq!(done.lsn, a.identity().lsn);
        assert_eq!(done.files_applied.len(), 3);
        assert!(unapplied(&local, done.lsn).unwrap().is_empty());
        assert!(Listing::read(&local).unwrap().files.is_empty());
    }
}
