//! `tandem db …`: database copies and backup files, offline (no server needed). The online
//! forms (`--db DB --instance NODE`) are in `db_online.rs`, mirroring in `mirror.rs`, log
//! shipping in `log_shipping.rs`.

use crate::output::{Output, bytes, time};
use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;
use std::path::{Path, PathBuf};
use tandem_store::{
    BackupFile, ChainReport, Consumer, Database, Identity, JournalStats, Options, Recovery,
    RestoreOptions, RestoreReport, StopAt,
};

#[derive(Subcommand)]
pub enum DbCommand {
    /// Show a database copy's identity (id, role, epoch, LSN, chain, history) or a backup file's header.
    Inspect {
        /// A database directory, or a backup file (.tfb, .tlb).
        path: PathBuf,
    },
    /// Check backup files — each one, and the chain across them. Non-zero exit on the first problem.
    Verify {
        /// Backup files, or directories holding them.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Take a full backup (default) or a log backup: of a database directory (--path, offline),
    /// or of a node's copy into the share (--db, --instance).
    Backup(BackupArgs),
    /// Restore a full backup and the log backups after it, or apply more log backups to a
    /// restoring/standby copy: into a database directory (--path, offline), or into a node's
    /// copy (--db, --instance), which the node closes, restores and reopens.
    Restore(RestoreArgs),
    /// Bring a node's restoring, standby, mirror or replica copy online: every connection to
    /// it ended, primary of a new epoch, writable. Refused on a primary and a mirrored copy.
    Recover(RecoverArgs),
    /// Mirroring between db nodes: install, remove, planned failover (against the nodes).
    #[command(subcommand)]
    Mirror(crate::mirror::MirrorCommand),
    /// Log shipping to the secondary in the other site: configure, remove-secondary, and the
    /// failover steps copy and restore, one at a time; status (the monitor).
    #[command(subcommand)]
    LogShipping(crate::log_shipping::LogShippingCommand),
}

impl DbCommand {
    /// True for the forms that work against the running nodes.
    pub fn online(&self) -> bool {
        match self {
            DbCommand::Backup(a) => a.db.is_some(),
            DbCommand::Restore(a) => a.db.is_some(),
            DbCommand::Recover(_) | DbCommand::Mirror(_) | DbCommand::LogShipping(_) => true,
            DbCommand::Inspect { .. } | DbCommand::Verify { .. } => false,
        }
    }
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("copy").required(true).args(["path", "db"])))]
pub struct BackupArgs {
    /// The database directory (offline: no node may have it open).
    #[arg(long, requires = "to", conflicts_with_all = ["db", "instance"])]
    pub(crate) path: Option<PathBuf>,
    /// The directory the backup file is written to: required with --path; with --db, a full
    /// backup goes there instead of the share (a copy-only backup: the log chain is not
    /// touched).
    #[arg(long)]
    pub(crate) to: Option<PathBuf>,
    /// The database whose copy on --instance is backed up, online, into the share
    /// (SHARE/<db>/) unless --to names another directory.
    #[arg(long, requires = "instance")]
    pub(crate) db: Option<String>,
    /// The db node holding the copy (with --db).
    #[arg(long, requires = "db")]
    pub(crate) instance: Option<String>,
    /// Back up the journal records since the previous log backup instead of the whole database.
    #[arg(long)]
    pub(crate) log: bool,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("copy").required(true).args(["path", "db"])))]
pub struct RestoreArgs {
    /// The database directory to create (or, when it holds a restoring or standby copy, to
    /// apply log backups to); offline.
    #[arg(long, conflicts_with_all = ["db", "instance"])]
    pub(crate) path: Option<PathBuf>,
    /// The database whose copy on --instance is restored, online.
    #[arg(long, requires = "instance")]
    pub(crate) db: Option<String>,
    /// The db node holding the copy (with --db).
    #[arg(long, requires = "db")]
    pub(crate) instance: Option<String>,
    /// Backup files, or directories holding them.
    #[arg(long, num_args = 1.., required = true)]
    pub(crate) from: Vec<PathBuf>,
    /// Leave the copy restoring: more log backups may follow; no reads.
    #[arg(long, conflicts_with = "standby")]
    pub(crate) norecovery: bool,
    /// Leave the copy read-only: more log backups may follow.
    #[arg(long)]
    pub(crate) standby: bool,
    /// Stop after this LSN.
    #[arg(long, conflicts_with = "stop_at_time", allow_negative_numbers = true)]
    pub(crate) stop_at_lsn: Option<u64>,
    /// Stop after the last record committed at or before this time (RFC 3339, e.g.
    /// 2026-11-23T10:00:00Z, or milliseconds since the Unix epoch).
    #[arg(long)]
    pub(crate) stop_at_time: Option<String>,
    /// Replace an existing database (or copy) with the restored one.
    #[arg(long)]
    pub(crate) replace: bool,
    /// With --db: recover the restored copy even though another copy of the database is a
    /// writable primary (a disaster-recovery drill; that primary steps down to the new epoch
    /// and drops what it wrote since the backup).
    #[arg(long, requires = "db")]
    pub(crate) force: bool,
}

#[derive(Args)]
pub struct RecoverArgs {
    /// The database whose copy on --instance is brought online.
    #[arg(long)]
    pub(crate) db: String,
    /// The db node holding the copy.
    #[arg(long)]
    pub(crate) instance: String,
    /// Recover even though another copy of the database is a writable primary (a
    /// disaster-recovery drill; that primary steps down to the new epoch and drops what log
    /// shipping had not carried).
    #[arg(long)]
    pub(crate) force: bool,
}

pub fn run(cmd: DbCommand, out: &Output) -> anyhow::Result<()> {
    match cmd {
        DbCommand::Inspect { path } => inspect(&path, out),
        DbCommand::Verify { files } => verify(&files, out),
        DbCommand::Backup(a) => backup(a, out),
        DbCommand::Restore(a) => restore(a, out),
        DbCommand::Recover(_) | DbCommand::Mirror(_) | DbCommand::LogShipping(_) => {
            unreachable!("run with the deployment by main")
        }
    }
}

#[derive(Serialize)]
struct InspectDatabase {
    kind: &'static str,
    path: PathBuf,
    #[serde(flatten)]
    identity: Identity,
    journal: JournalStats,
    consumers: Vec<Consumer>,
}

fn inspect(path: &Path, out: &Output) -> anyhow::Result<()> {
    if path.is_file() && !path.ends_with(tandem_store::DB_FILE) {
        let file = tandem_store::read_header(path)?;
        return out.emit(&file, || describe_file(&file));
    }
    let (identity, journal, consumers) = tandem_store::inspect(path)?;
    let report = InspectDatabase {
        kind: "database",
        path: path.to_path_buf(),
        identity,
        journal,
        consumers,
    };
    out.emit(&report, || {
        let id = &report.identity;
        let history: Vec<String> = id
            .history
            .0
            .iter()
            .map(|e| format!("epoch {} from LSN {}", e.epoch, e.first_lsn))
            .collect();
        let consumers: Vec<String> = report
            .consumers
            .iter()
            .map(|c| format!("{} at LSN {}", c.name, c.lsn))
            .collect();
        let journal = match report.journal.oldest_lsn {
            Some(o) => format!(
                "LSN {o}..={} ({} records, {})",
                id.lsn,
                report.journal.records,
                bytes(report.journal.bytes)
            ),
            None => "empty".into(),
        };
        format!(
            "database     {}\nid           {}\nrole         {}\nepoch        {}\nlsn          {}\nchain        {}\nhistory      {}\nlast commit  {}\njournal      {}\nconsumers    {}\n",
            id.name,
            id.database_id,
            id.role,
            id.epoch,
            id.lsn,
            id.chain,
            if history.is_empty() { "none".into() } else { history.join("; ") },
            time(id.last_time_ms),
            journal,
            if consumers.is_empty() { "none".into() } else { consumers.join(", ") },
        )
    })
}

pub(crate) fn describe_file(file: &BackupFile) -> String {
    match file {
        BackupFile::Full { path, header } => format!(
            "full backup  {}\ndatabase     {} (id {})\nepoch        {}\nlsn          {}\nchain        {}\nlast commit  {}\ntaken        {}\nsize         {}\n",
            path.display(),
            header.name,
            header.database_id,
            header.epoch,
            header.lsn,
            header.chain,
            time(header.last_time_ms),
            time(header.created_ms),
            bytes(header.payload_bytes)
        ),
        BackupFile::Log { path, header } => format!(
            "log backup   {}\ndatabase     {} (id {})\nepoch        {}\nlsn          {}..={} ({} records)\nchain        {} -> {}\ncommits      {} .. {}\ntaken        {}\n",
            path.display(),
            header.name,
            header.database_id,
            header.epoch,
            header.first_lsn,
            header.last_lsn,
            header.records,
            header.chain_before,
            header.chain_after,
            time(header.first_time_ms),
            time(header.last_time_ms),
            time(header.created_ms)
        ),
    }
}

fn verify(files: &[PathBuf], out: &Output) -> anyhow::Result<()> {
    let report: ChainReport = tandem_store::verify_chain(files)?;
    out.emit(&report, || {
        let mut s = String::new();
        for f in &report.files {
            match f {
                BackupFile::Full { header, .. } => {
                    s.push_str(&format!("ok  {}  full at LSN {}\n", f.name(), header.lsn))
                }
                BackupFile::Log { header, .. } => s.push_str(&format!(
                    "ok  {}  LSN {}..={}\n",
                    f.name(),
                    header.first_lsn,
                    header.last_lsn
                )),
            }
        }
        s.push_str(&format!(
            "chain ok: {} files of database {}, restorable from LSN {} to LSN {}\n",
            report.files.len(),
            report
                .files
                .first()
                .map(|f| f.database())
                .unwrap_or_else(|| report.database_id.clone()),
            report.first_lsn,
            report.last_lsn
        ));
        s
    })
}

fn backup(a: BackupArgs, out: &Output) -> anyhow::Result<()> {
    let (path, to) = (
        a.path.expect("clap requires --path or --db"),
        a.to.expect("clap requires --to with --path"),
    );
    let db = Database::open(&path, Options::default())
        .with_context(|| format!("cannot open the database {}", path.display()))?;
    let files = if a.log {
        tandem_store::log_backup(&db, &to)
    } else {
        tandem_store::full_backup(&db, &to).map(|f| vec![f])
    }
    .with_context(|| format!("backup of {} into {}", path.display(), to.display()))?;
    drop(db);
    out.emit(&files, || {
        if files.is_empty() {
            return "nothing committed since the last log backup: no file written\n".into();
        }
        files
            .iter()
            .map(describe_file)
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// What a restore's report says of its stop point, after the copy's role.
/// ", N more skipped: already in the copy" for log backups given that end where the restore
/// started or before (a restore said only "0 applied" for them).
pub(crate) fn skipped_words(n: usize) -> String {
    match n {
        0 => String::new(),
        n => format!(
            "; {n} skipped: they end at or before where the restore started (already in the \
             copy, or of an epoch it has passed)"
        ),
    }
}

pub(crate) fn stop_words(stopped: bool, not_reached: bool) -> &'static str {
    match (stopped, not_reached) {
        (true, _) => ", stopped at the stop point",
        (false, true) => ", stop point not reached yet: apply the later log backups",
        (false, false) => "",
    }
}

/// Parses `--stop-at-time`: RFC 3339, or milliseconds since the Unix epoch.
pub(crate) fn parse_time(s: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let bad = || {
        format!(
            "--stop-at-time {s:?} is neither RFC 3339 (2026-11-23T10:00:00Z, \
             2026-11-23T11:00:00+01:00) nor milliseconds"
        )
    };
    // humantime reads a time in UTC (`Z` or no zone) and would pass over a `+hh:mm` after a
    // fraction of a second: the offset is taken off here.
    let (local, offset_ms) = split_offset(s).with_context(bad)?;
    let t = humantime::parse_rfc3339_weak(local).with_context(bad)?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64 - offset_ms)
}

/// Splits an RFC 3339 time's numeric offset (`+01:00`, `-05:30`) from it: the time without
/// it, and the offset in milliseconds (0 for `Z` or none). None for an offset out of range.
fn split_offset(s: &str) -> Option<(&str, i64)> {
    // The offset follows the time of day, which follows the date's `T` (or a space).
    let time_at = s.find(['T', 't', ' ']).unwrap_or(s.len());
    let Some(at) = s[time_at..].rfind(['+', '-']).map(|i| time_at + i) else {
        return Some((s, 0));
    };
    let (sign, hh_mm) = (&s[at..at + 1], &s[at + 1..]);
    let (h, m) = hh_mm.split_once(':')?;
    let two_digits = |d: &str| {
        (d.len() == 2 && d.bytes().all(|b| b.is_ascii_digit()))
            .then(|| d.parse::<i64>().ok())
            .flatten()
    };
    let (h, m) = (two_digits(h)?, two_digits(m)?);
    if h > 23 || m > 59 {
        return None;
    }
    let ms = (h * 60 + m) * 60_000;
    Some((&s[..at], if sign == "-" { -ms } else { ms }))
}

fn restore(a: RestoreArgs, out: &Output) -> anyhow::Result<()> {
    let path = a.path.clone().expect("clap requires --path or --db");
    let recovery = if a.norecovery {
        Recovery::NoRecovery
    } else if a.standby {
        Recovery::Standby
    } else {
        Recovery::Recover
    };
    let stop_at = match (a.stop_at_lsn, &a.stop_at_time) {
        (Some(n), _) => Some(StopAt::Lsn(n)),
        (None, Some(t)) => Some(StopAt::TimeMs(parse_time(t)?)),
        (None, None) => None,
    };
    let options = RestoreOptions {
        recovery,
        stop_at,
        // A copy another process has open (a node serving it) is not replaced from here.
        replace_wait: std::time::Duration::ZERO,
        // Above any epoch a copy of the database used since the backup, as the online
        // recoveries' (the backup's plus one was a mirror's takeover epoch, two histories).
        recover_epoch_floor: Some(tandem_node::standby::cross_site_epoch(0)),
        ..Default::default()
    };
    // A directory holding a database takes log backups; anything else gets a new copy, which
    // `restore_new` puts only where no other data is.
    let holds_database = path.is_dir() && path.join(tandem_store::DB_FILE).exists();
    let report: RestoreReport = if holds_database && !a.replace {
        let db = Database::open(&path, Options::default())
            .with_context(|| format!("cannot open the database {}", path.display()))?;
        tandem_store::restore_logs(&db, &a.from, &options)
            .with_context(|| format!("restore into {}", path.display()))?
    } else {
        tandem_store::restore_new(&path, &a.from, &options, a.replace).map_err(|e| {
            // A log-shipping directory keeps its older backups in `archive/`, which a
            // directory given alone does not include.
            let left_out: Vec<String> = a
                .from
                .iter()
                .map(|d| d.join(tandem_node::log_shipping::ARCHIVE_DIR))
                .filter(|arch| arch.is_dir() && !a.from.contains(arch))
                .map(|arch| arch.display().to_string())
                .collect();
            match e {
                tandem_store::StoreError::Invalid(m)
                    if m.starts_with("no full backup at or before") && !left_out.is_empty() =>
                {
                    anyhow::anyhow!(
                        "{m}; older backups of the retention window are in {}: add it to --from",
                        left_out.join(", ")
                    )
                }
                e => e.into(),
            }
        })
        .with_context(|| format!("restore into {}", path.display()))?
    };
    let marked = report.role == tandem_store::Role::Primary;
    if marked {
        tandem_node::offline_recovery::mark(&path, report.epoch)
            .map_err(|e| anyhow::anyhow!("restore into {}: {e}", path.display()))?;
    }
    out.emit(&report, || {
        let mut s = String::new();
        if let Some(f) = &report.full_backup {
            s.push_str(&format!("full backup  {}\n", f.display()));
        }
        s.push_str(&format!(
            "log backups  {} applied, {} records{}\n",
            report.logs_applied.len(),
            report.records_applied,
            skipped_words(report.logs_skipped.len())
        ));
        s.push_str(&format!(
            "restored     {} at LSN {} (chain {}), epoch {}, role {}{}\nlast commit  {}\n",
            path.display(),
            report.lsn,
            report.chain,
            report.epoch,
            report.role,
            stop_words(report.stopped, report.stop_not_reached),
            time(report.last_time_ms)
        ));
        if marked {
            s.push_str(
                "made primary offline: a node that starts with this copy serves it only if no \
                 other copy of its database is primary, holds records past it, or takes \
                 connections without answering (otherwise the copy is set aside and made again \
                 from its partner). To rebuild a database from its backups, stop the nodes of its \
                 other copies, start this one first, then the others (they follow it); to put a \
                 backup in place of a serving database, use tandem db restore --db DB --instance \
                 NODE --from FILE --replace\n",
            );
        }
        s
    })
}

#[cfg(test)]
mod tests {
    use super::parse_time;

    #[test]
    fn stop_times_parse_or_say_why() {
        assert_eq!(parse_time("1000").unwrap(), 1000);
        assert_eq!(parse_time("1970-01-01T00:00:01Z").unwrap(), 1000);
        let e = parse_time("yesterday").unwrap_err().to_string();
        assert!(e.contains("RFC 3339"), "{e}");
        // One instant, in any zone, with or without a fraction.
        let utc = parse_time("2026-12-07T15:35:37.297Z").unwrap();
        for same in [
            "2026-12-07T16:35:37.297+01:00",
            "2026-12-07T10:05:37.297-05:30",
            "2026-12-07T15:35:37.297+00:00",
            "2026-12-07T15:35:37.297",
        ] {
            assert_eq!(parse_time(same).unwrap(), utc, "{same}");
        }
        assert_eq!(parse_time("2026-12-07T16:35:37+01:00").unwrap(), utc - 297);
        for bad in [
            "2026-12-07T15:35:37+1:00",
            "2026-12-07T15:35:37+24:00",
            "2026-12-07T15:35:37+01",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }
}
