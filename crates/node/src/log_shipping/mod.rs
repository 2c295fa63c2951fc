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

mod api;
mod chain;
mod jobs;
mod monitor;
mod secondary;
mod share;

pub use api::*;
pub(crate) use chain::*;
pub(crate) use jobs::*;
pub use monitor::*;
pub use secondary::*;
pub(crate) use share::share_claimed_by;
pub(crate) use share::*;
pub use share::{OWNER_FILE, deployment_of, share_ours, share_present, share_room};

/// Where a node remembers the share it found claimed (`share::share_claimed_by`).
const SHARE_MEMORY_FILE: &str = "share-claim.json";

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
/// Default window of point-in-time restore: the backups that a restore to any moment of the
/// last day needs are kept — those the chain no longer needs in `archive/` beside it, where
/// the jobs' listings do not read them (SQL Server's log shipping deletes its files after three
/// days by default). 0 keeps only the chain the secondary needs, as before session 30.
pub const RETENTION_MS_DEFAULT: u64 = 86_400_000;
const RETENTION_MS_MAX: u64 = 366 * 86_400_000;
/// Where the retention keeps the backups of the window that the chain no longer needs.
pub const ARCHIVE_DIR: &str = "archive";

fn retention_default() -> u64 {
    RETENTION_MS_DEFAULT
}

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
    /// Keep what a restore to any moment of this window needs (`RETENTION_MS_DEFAULT`).
    #[serde(default = "retention_default")]
    pub retention_ms: u64,
    /// Alert when the backup job has not run for this long.
    pub backup_alert_ms: u64,
    /// Alert when the secondary lags the primary by more than this (records' commit times),
    /// or its jobs have not run for this long.
    pub restore_alert_ms: u64,
    pub updated_ms: i64,
    /// When the backup job wrote this configuration again, from the topology's defaults,
    /// because the share had backups but no configuration (deleted, or a share replaced): an
    /// operator's options may be lost. Cleared by `configure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recreated_ms: Option<i64>,
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
            retention_ms: RETENTION_MS_DEFAULT,
            backup_alert_ms: BACKUP_ALERT_INTERVALS * BACKUP_INTERVAL_MS_DEFAULT,
            restore_alert_ms: RESTORE_ALERT_MS_DEFAULT,
            updated_ms: now_ms(),
            recreated_ms: None,
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
    /// On a primary: log shipping has no secondary, so no copy in another site follows it.
    #[serde(default)]
    pub unshipped: Option<String>,
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
        (s.backup.is_some()
            || s.copy.is_some()
            || s.restore.is_some()
            || s.state.is_some()
            || s.unshipped.is_some())
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

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_store::{Migration, Options, Value};

    static SCHEMA: &[Migration] = &[Migration {
        version: 1,
        name: "rows",
        sql: "CREATE TABLE rows (id INTEGER PRIMARY KEY, v TEXT NOT NULL);",
    }];

    #[test]
    fn the_room_on_a_share_is_measured_and_a_missing_one_named() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(share_room(tmp.path()).unwrap() > 0);
        let gone = tmp.path().join("not-mounted");
        let e = share_room(&gone).unwrap_err();
        assert!(e.starts_with(&format!("{}: ", gone.display())), "{e}");
    }

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
    fn the_lag_is_the_age_of_the_oldest_record_the_secondary_lacks() {
        let tmp = tempfile::tempdir().unwrap();
        let share = tmp.path().join("share");
        let a = create(&tmp.path().join("a"));
        write(&a, 0, 3);
        let full = tandem_store::full_backup(&a, &share).unwrap();
        let before_idle = a.identity().last_time_ms;
        // Idle, then two posts: the secondary, at the full backup, lacks only them.
        std::thread::sleep(std::time::Duration::from_millis(300));
        write(&a, 3, 2);
        let logs = tandem_store::log_backup(&a, &share).unwrap();
        let header = match &logs[0] {
            tandem_store::BackupFile::Log { header, .. } => header.clone(),
            other => panic!("{other:?}"),
        };
        assert!(header.first_time_ms >= before_idle + 300);
        let listing = Listing::read(&share).unwrap();
        assert_eq!(
            monitor::oldest_missing_time(&share, &listing, full.lsn() + 1),
            Some(header.first_time_ms),
            "the first record after the idle spell, not the last one before it"
        );
        assert_eq!(
            monitor::oldest_missing_time(&share, &listing, header.last_lsn + 1),
            None,
            "past the share's last record"
        );
    }

    #[test]
    fn a_full_backup_taken_between_log_backups_leaves_the_log_chain_where_it_was() {
        let tmp = tempfile::tempdir().unwrap();
        let share = tmp.path().join("share");
        let a = create(&tmp.path().join("a"));
        write(&a, 0, 5);
        let f1 = tandem_store::full_backup(&a, &share).unwrap();
        // Written, then a full backup on demand (`tandem db backup`) before any log backup.
        write(&a, 5, 4);
        let f2 = tandem_store::full_backup(&a, &share).unwrap();
        assert!(f2.lsn() > f1.lsn());
        let (state, _) = ensure_chain(&a, &share, false).unwrap();
        assert_eq!(state, ChainState::Continues);
        assert_eq!(
            consumer_lsn(&a).unwrap(),
            Some(f1.lsn()),
            "the cursor stays"
        );
        // While no log backup marks where the chain goes on, retention keeps every full backup.
        let mut config = Config::new("mgc", "atl", Some("dal-db1".into()));
        config.seed = Some(f1.name());
        let p = SecondaryProgress {
            node: "dal-db1".into(),
            seed: Some(f1.name()),
            lsn: f1.lsn(),
            ..Default::default()
        };
        write_json(&share.join(secondary_file("dal-db1")), &p, false).unwrap();
        assert!(retention(&share, &config).unwrap().is_empty());
        // The next log backup holds the records the second full backup also holds, and then
        // another full backup between two log backups changes nothing either.
        let logs = tandem_store::log_backup(&a, &share).unwrap();
        let first = |f: &tandem_store::BackupFile| match f {
            tandem_store::BackupFile::Log { header, .. } => header.first_lsn,
            other => panic!("{other:?}"),
        };
        assert_eq!(first(&logs[0]), f1.lsn() + 1);
        write(&a, 9, 2);
        tandem_store::full_backup(&a, &share).unwrap();
        write(&a, 11, 2);
        ensure_chain(&a, &share, false).unwrap();
        let more = tandem_store::log_backup(&a, &share).unwrap();
        assert_eq!(first(&more[0]), logs.last().unwrap().lsn() + 1);
        // The first full backup and the log backups restore every record.
        let files: Vec<PathBuf> = [&f1]
            .into_iter()
            .chain(logs.iter().chain(&more))
            .map(|f| f.path().to_path_buf())
            .collect();
        let options = RestoreOptions {
            recovery: Recovery::NoRecovery,
            ..Default::default()
        };
        let target = tmp.path().join("r");
        tandem_store::restore_new(&target, &files, &options, false).unwrap();
        let r = Database::open(&target, Options::default()).unwrap();
        assert_eq!(
            (r.identity().lsn, r.identity().chain),
            (a.identity().lsn, a.identity().chain)
        );
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
        // No window: what the chain no longer needs is removed at once.
        config.retention_ms = 0;
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

    /// With a retention window, what the chain no longer needs goes to `archive/`, where it
    /// stays while a restore to a moment of the window needs it: such a restore reads the
    /// chain's directory and the archive together.
    #[test]
    fn the_retention_window_keeps_in_the_archive_what_a_restore_to_a_moment_of_it_needs() {
        let tmp = tempfile::tempdir().unwrap();
        let share = tmp.path().join("share");
        let archive = share.join(ARCHIVE_DIR);
        let a = create(&tmp.path().join("a"));
        write(&a, 0, 5);
        let f1 = tandem_store::full_backup(&a, &share).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        write(&a, 5, 5);
        let l1 = tandem_store::log_backup(&a, &share).unwrap().remove(0);
        let between = a.identity().last_time_ms;
        std::thread::sleep(Duration::from_millis(5));
        write(&a, 10, 5);
        let l2 = tandem_store::log_backup(&a, &share).unwrap().remove(0);
        std::thread::sleep(Duration::from_millis(5));
        let f2 = tandem_store::full_backup(&a, &share).unwrap();
        write(&a, 15, 3);
        let l3 = tandem_store::log_backup(&a, &share).unwrap().remove(0);
        let mut config = Config::new("mgc", "atl", Some("dal-db1".into()));
        assert_eq!(config.retention_ms, RETENTION_MS_DEFAULT);
        config.seed = Some(f1.name());
        let p = SecondaryProgress {
            node: "dal-db1".into(),
            seed: Some(f1.name()),
            lsn: l3.lsn(),
            ..Default::default()
        };
        write_json(&share.join(secondary_file("dal-db1")), &p, false).unwrap();
        // The secondary has it all: the chain keeps its newest full backup and what follows;
        // the rest is archived, all of it inside the window.
        let moved = retention(&share, &config).unwrap();
        assert_eq!(moved, vec![f1.name(), l1.name(), l2.name()]);
        assert_eq!(names(&share), vec![f2.name(), l3.name()]);
        assert_eq!(names(&archive), vec![f1.name(), l1.name(), l2.name()]);
        // A moment before f2 is restored from the archive and the chain's directory together.
        let stop = RestoreOptions {
            stop_at: Some(tandem_store::StopAt::TimeMs(between)),
            ..Default::default()
        };
        let from = [share.clone(), archive.clone()];
        let r = tandem_store::restore_new(&tmp.path().join("r"), &from, &stop, false).unwrap();
        assert_eq!(r.lsn, l1.lsn());
        // Pruned as the window moves: with its start before f1 was taken, nothing goes; once
        // f1 is the newest full backup taken by its start, the rest stays; once f2 is, the
        // archive holds nothing a restore needs any more.
        let created = |f: &BackupFile| match tandem_store::parse_file_name(&f.name()) {
            Some(FileName::Full { created_ms, .. }) => created_ms,
            other => panic!("{other:?}"),
        };
        let live = Listing::read(&share).unwrap();
        assert!(
            prune_archive(&share, created(&f1) - 1, &live)
                .unwrap()
                .is_empty()
        );
        assert!(
            prune_archive(&share, created(&f1), &live)
                .unwrap()
                .is_empty()
        );
        let pruned = prune_archive(&share, created(&f2), &live).unwrap();
        let archived = |f: &BackupFile| format!("{ARCHIVE_DIR}/{}", f.name());
        assert_eq!(pruned, vec![archived(&f1), archived(&l1), archived(&l2)]);
        assert!(names(&archive).is_empty());
        // A chain that restarts takes its archive along with it.
        std::fs::create_dir_all(&archive).unwrap();
        std::fs::write(archive.join("log-old.tlb"), b"old chain").unwrap();
        let b = create(&tmp.path().join("b"));
        write(&b, 0, 2);
        let (state, _) = ensure_chain(&b, &share, true).unwrap();
        let ChainState::Restarted { superseded } = state else {
            panic!("{state:?}");
        };
        assert!(!archive.exists() && superseded.join(ARCHIVE_DIR).join("log-old.tlb").exists());
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
        let copied = copy_new(&share, &local, lsn, 2).unwrap().files;
        assert_eq!(copied.len(), 2, "bounded per round");
        assert_eq!(copy_new(&share, &local, lsn, 10).unwrap().files.len(), 1);
        assert!(copy_new(&share, &local, lsn, 10).unwrap().files.is_empty());
        let second = local.join(&copied[1].0);
        let mut bytes = std::fs::read(&second).unwrap();
        let at = bytes.len() - 60;
        bytes[at] ^= 1;
        std::fs::write(&second, &bytes).unwrap();
        // The files before the damaged one are applied, and the step says where it stopped.
        let first = restore_copied(&r, &local, 100, false).unwrap();
        assert_eq!(first.files_applied, vec![copied[0].0.clone()]);
        assert_eq!(first.lsn, copied[0].1);
        assert!(
            first
                .stopped
                .as_deref()
                .is_some_and(|s| s.contains(&copied[1].0)),
            "{:?}",
            first.stopped
        );
        let lsn = first.lsn;
        // A failover's step meeting it first says so, and applies nothing.
        let step = restore_copied(&r, &local, 100, true).unwrap();
        assert!(step.files_applied.is_empty() && step.lsn == lsn);
        assert!(step.stopped.is_some_and(|s| s.contains(&copied[1].0)));
        // The jobs' round meeting it first is refused, the file named.
        let err = restore_copied(&r, &local, 100, false).unwrap_err();
        let e = err.to_string();
        assert!(e.contains(&copied[1].0), "{e}");
        // The monitor's line says how to go on: the secondary seeded again.
        let shown = secondary::with_remedy(&err, "mgc", "dal-db1");
        assert!(
            shown.starts_with(&e)
                && shown
                    .ends_with("`tandem db log-shipping configure --db mgc --secondary dal-db1`"),
            "{shown}"
        );
        assert_eq!(r.identity().lsn, lsn, "nothing applied");
        // The file copied again from the share: everything applies, the copies go.
        std::fs::copy(share.join(&copied[1].0), &second).unwrap();
        let done = restore_copied(&r, &local, 100, false).unwrap();
        assert_eq!(done.lsn, a.identity().lsn);
        assert_eq!(done.files_applied.len(), 2);
        assert!(unapplied(&local, done.lsn).unwrap().is_empty());
        assert!(Listing::read(&local).unwrap().files.is_empty());
    }
}
