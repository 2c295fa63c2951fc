//! The newest epoch a database was made primary at across sites, marked on the share
//! (`<share>/<database>/epoch.json`), which both sites reach (DESIGN.md §3).
//!
//! A copy made primary by a disaster-recovery move — `db recover`, a restore that recovers, a
//! cross-site promotion (`cms failover`) — marks its new epoch there. A primary that cannot hear
//! from every other copy of its database (its site was lost and came back cut off from the
//! other) reads the mark before it acknowledges anything more: a newer epoch there means the
//! database failed over while this copy was away, and the copy steps down. Without the mark such
//! a copy went on taking writes under its old epoch — a second writable primary whose posts the
//! failback then dropped.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use tandem_topology::Topology;

/// The mark's file in the database's directory of the share.
const MARK_FILE: &str = "epoch.json";

/// Which copy was made primary at which epoch, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Mark {
    pub(crate) database: String,
    pub(crate) epoch: u64,
    pub(crate) node: String,
    pub(crate) at_ms: i64,
}

fn path(topology: &Topology, database: &str) -> PathBuf {
    crate::log_shipping::share_dir(topology, database).join(MARK_FILE)
}

/// The mark of `database`, if the share holds one.
pub(crate) fn read(topology: &Topology, database: &str) -> Result<Option<Mark>, String> {
    crate::log_shipping::share_ours(topology)?;
    crate::log_shipping::read_json(&path(topology, database))
}

/// Marks `node` primary of `database` at `epoch`, unless the share already holds a newer
/// epoch. Written whole and durably; a share that is not there (lost with a site) is not made
/// again — the procedures tell a missing share from an empty one. A share that cannot be
/// written is reported, not fatal: the copy is primary either way.
pub(crate) fn record(
    topology: &Topology,
    database: &str,
    node: &str,
    epoch: u64,
) -> Result<(), String> {
    crate::log_shipping::share_ours(topology)?;
    if read(topology, database)
        .ok()
        .flatten()
        .is_some_and(|m| m.epoch >= epoch)
    {
        return Ok(());
    }
    let mark = Mark {
        database: database.to_string(),
        epoch,
        node: node.to_string(),
        at_ms: crate::log_shipping::now_ms(),
    };
    crate::log_shipping::write_json(&path(topology, database), &mark, true)
}

/// Marks the copy as [`record`] does, logging a share that cannot be written.
pub(crate) fn record_or_warn(topology: &Topology, database: &str, node: &str, epoch: u64) {
    if let Err(e) = record(topology, database, node, epoch) {
        tracing::warn!(database, epoch, error = %e, "could not mark the new epoch on the share: a copy of the old epoch that comes back cut off from this one will not know of it");
    }
}

/// Why a copy of `database` at `epoch` on `node` may not be primary, when the share marks
/// another copy primary at a newer epoch: the node that copy is on, and the reason. A share
/// that cannot be read says nothing.
pub(crate) async fn newer_elsewhere(
    node: &crate::server::NodeState,
    database: &str,
    epoch: u64,
) -> Option<(String, String)> {
    let (topology, d) = (node.topology.clone(), database.to_string());
    let mark = tokio::task::spawn_blocking(move || crate::epoch_mark::read(&topology, &d))
        .await
        .ok()?;
    match mark {
        Ok(Some(m)) if m.epoch > epoch && m.node != node.name => {
            let reason = format!(
                "{} was made primary of {database} at epoch {}, newer than this copy's {epoch} \
                 (marked on the share)",
                m.node, m.epoch
            );
            Some((m.node, reason))
        }
        Ok(_) => None,
        Err(e) => {
            tracing::debug!(database, error = %e, "the share's epoch mark cannot be read");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path as FsPath;

    fn topology(share: &FsPath) -> Topology {
        let text = tandem_topology::example(41000, &"ab".repeat(32));
        let mut t = Topology::parse(&text, &share.join("topology.toml")).unwrap();
        t.share = share.to_path_buf();
        // Claimed as a node's jobs claim it (a share that is not there stays unclaimed).
        let _ = crate::log_shipping::share_claimed_by(&t, &share.join("share-claim.json"));
        t
    }

    #[test]
    fn a_mark_is_kept_only_when_newer() {
        let tmp = tempfile::tempdir().unwrap();
        let t = topology(tmp.path());
        assert_eq!(read(&t, "mgc").unwrap(), None);
        record(&t, "mgc", "dal-db1", 1_000).unwrap();
        record(&t, "mgc", "atl-db1", 999).unwrap();
        let m = read(&t, "mgc").unwrap().unwrap();
        assert_eq!((m.node.as_str(), m.epoch), ("dal-db1", 1_000));
        record(&t, "mgc", "atl-db1", 2_000).unwrap();
        let m = read(&t, "mgc").unwrap().unwrap();
        assert_eq!((m.node.as_str(), m.epoch), ("atl-db1", 2_000));
        // Another database's mark is its own.
        assert_eq!(read(&t, "cms").unwrap(), None);
    }

    #[test]
    fn a_share_that_is_not_there_is_not_made_again() {
        let tmp = tempfile::tempdir().unwrap();
        let t = topology(&tmp.path().join("lost"));
        assert!(record(&t, "mgc", "dal-db1", 1_000).is_err());
        assert!(!tmp.path().join("lost").exists());
    }

    #[test]
    fn a_damaged_mark_is_an_error_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let t = topology(tmp.path());
        std::fs::create_dir_all(tmp.path().join("mgc")).unwrap();
        std::fs::write(tmp.path().join("mgc").join(MARK_FILE), b"{").unwrap();
        let e = read(&t, "mgc").unwrap_err();
        assert!(e.contains("epoch.json"), "{e}");
    }
}
