//! The monitor: read from the share, so any node answers.

use super::*;

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
    /// Records the secondary lacks, and the age of the oldest of them (its commit time, from
    /// the log backup that holds it).
    pub lag_records: Option<u64>,
    pub lag_ms: Option<u64>,
    /// Conditions past a threshold, each one line.
    pub alerts: Vec<String>,
    pub now_ms: i64,
}

pub(super) fn age(ms: i64, now: i64) -> u64 {
    (now - ms).max(0) as u64
}

pub(super) fn file_age(path: &FsPath) -> Option<u64> {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .map(|d| d.as_millis() as u64)
}

/// The commit time of the oldest record the secondary lacks (LSN `next`), from the header of
/// the log backup on the share that holds it: its first record's time, exact when the file
/// starts at `next` (the usual case: a secondary applies whole files), an upper bound of the
/// age otherwise. The lag is that record's age: how much traffic a loss of the primary site
/// would lose now — small after an idle spell, growing while the secondary is stuck (the two
/// last commit times, compared instead, showed a lag as long as any idle spell before a post).
pub(super) fn oldest_missing_time(dir: &FsPath, listing: &Listing, next: Lsn) -> Option<i64> {
    let (name, _, _) = listing
        .logs()
        .find(|(_, first, last)| *first <= next && next <= *last)?;
    match tandem_store::read_header(&dir.join(name)).ok()? {
        tandem_store::BackupFile::Log { header, .. } => Some(header.first_time_ms),
        _ => None,
    }
}

/// Builds the monitor from the share.
pub(crate) fn monitor(topology: &Topology, database: &str) -> Result<Monitor, String> {
    share_ours(topology)?;
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
                match oldest_missing_time(&dir, &listing, s.lsn + 1) {
                    Some(t) => age(t, now),
                    // Not on the share any more: the two copies' last commit times.
                    None => (p.last_time_ms - s.last_time_ms).max(0) as u64,
                }
            };
            (Some(records), Some(ms))
        }
        _ => (None, None),
    };
    let mut alerts = Vec::new();
    if let Some(t) = config.as_ref().and_then(|c| c.recreated_ms) {
        alerts.push(format!(
            "the configuration was missing from the share and was written again from the \
             topology's defaults {:.0} s ago: options given before (intervals, retention) may \
             be lost; `tandem db log-shipping configure` sets them (and clears this)",
            age(t, now) as f64 / 1000.0
        ));
    }
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
