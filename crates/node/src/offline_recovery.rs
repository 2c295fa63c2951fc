//! Copies made primary offline. `tandem db restore --path DIR` (no server) recovers the copy it
//! restores: primary of the backup's epoch plus one. Put in a node's data directory and
//! started while another copy of its database serves, such a copy outranked that primary —
//! the witness and the other copies take any newer epoch for a disaster-recovery move — and
//! every write acknowledged since the backup was dropped (they were, until session 34).
//!
//! So the offline restore leaves a marker in the copy's directory, and a node that starts with
//! a marked primary copy asks the other copies of its database first, before it serves or
//! replicates: when one answers as primary, the marked copy is set aside (its files kept in
//! `<databases>/.offline-restored/`) and made again from its partner or source, as a missing
//! copy is; when none does (the whole database is being rebuilt from backups), the copy is
//! primary and its epoch is marked on the share, as an online recovery's is.

use crate::server::Shared;
use serde::{Deserialize, Serialize};
use std::path::Path;
use tandem_store::Role;

/// The marker's file in a copy's directory.
pub const MARKER_FILE: &str = "recovered-offline.json";
/// Where a node keeps the files of a marked copy it did not serve.
const ASIDE_DIR: &str = ".offline-restored";
/// How long each other copy is given to answer: one that does not is taken as not serving,
/// so this is longer than the fence's probe.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    epoch: u64,
    at_ms: i64,
}

/// Marks the copy in `dir`, just made primary of `epoch` by an offline restore.
pub fn mark(dir: &Path, epoch: u64) -> Result<(), String> {
    let marker = Marker {
        epoch,
        at_ms: crate::log_shipping::now_ms(),
    };
    crate::log_shipping::write_json(&dir.join(MARKER_FILE), &marker, true)
}

fn unmark(dir: &Path) {
    let p = dir.join(MARKER_FILE);
    if let Err(e) = std::fs::remove_file(&p)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %p.display(), error = %e, "cannot remove the offline restore's marker");
    }
}

/// Run once when the node starts, before it serves: each copy here that an offline restore
/// made primary is served only when no other copy of its database answers as primary.
pub(crate) async fn settle(node: &Shared) {
    for database in node.host.names() {
        let dir = node.host.path_of(&database);
        let marker: Option<Marker> = match crate::log_shipping::read_json(&dir.join(MARKER_FILE)) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(database, error = %e, "the offline restore's marker cannot be read: taken as there");
                Some(Marker { epoch: 0, at_ms: 0 })
            }
        };
        let Some(marker) = marker else { continue };
        let Some(db) = node.local_primary(&database) else {
            // Stepped down or made again since: nothing to decide.
            unmark(&dir);
            continue;
        };
        let id = db.identity();
        if marker.epoch != 0 && marker.epoch != id.epoch {
            unmark(&dir);
            continue;
        }
        let peers = crate::standby::peers(&node.topology, &database, &node.name);
        let answers = futures_util::future::join_all(
            peers
                .iter()
                .map(|n| node.client.copy_role(&n.address, &database, PROBE_TIMEOUT)),
        )
        .await;
        let serving = peers.iter().zip(answers).find_map(|(n, a)| {
            kept_out_by(&n.name, &database, (id.epoch, id.lsn), a).map(|why| (n.name.clone(), why))
        });
        drop(db);
        match serving {
            None => {
                let (topology, d, me) =
                    (node.topology.clone(), database.clone(), node.name.clone());
                let _ = tokio::task::spawn_blocking(move || {
                    crate::epoch_mark::record_or_warn(&topology, &d, &me, id.epoch)
                })
                .await;
                unmark(&dir);
                tracing::warn!(
                    database,
                    epoch = id.epoch,
                    lsn = id.lsn,
                    "a copy restored offline is primary: no other copy of its database is primary, ahead of it or hung"
                );
            }
            Some((other, why_not)) => {
                let (dn, (epoch, lsn), why_not_shown) =
                    (database.clone(), (id.epoch, id.lsn), why_not.clone());
                let why = move |aside: &Path| {
                    format!(
                        "the copy restored offline as primary (epoch {epoch}, LSN {lsn}) was not \
                         served: {why_not_shown}. Its files are kept in {}; the copy is made \
                         again from its partner or source. To put a backup's data in place of a \
                         serving database, restore it online: tandem db restore --db {dn} \
                         --instance NODE --from FILE --replace",
                        aside.display()
                    )
                };
                let (n, d) = (node.clone(), database.clone());
                let aside =
                    tokio::task::spawn_blocking(move || n.host.set_aside(&d, ASIDE_DIR, why))
                        .await
                        .unwrap_or_else(|e| Err(e.to_string()));
                match aside {
                    Ok(aside) => {
                        unmark(&aside);
                        tracing::error!(database, epoch = id.epoch, other, why = why_not, aside = %aside.display(), "a copy restored offline as primary was set aside, not served: another copy is primary, ahead of it or hung");
                    }
                    Err(e) => {
                        tracing::error!(database, error = %e, "a copy restored offline as primary could not be set aside: it is not served");
                    }
                }
            }
        }
    }
}

/// Why the answer of `other` about its copy of `database` keeps a copy restored offline (`id`)
/// from serving: a copy that is primary (other than one restored alongside, at the same epoch
/// and position: the witness picks one of those), one holding records past it (acknowledged
/// after the backup: the mirror of a primary that stopped), or a node that takes the question
/// and does not answer (hung: it may be serving). A node that refuses connections is gone, and
/// keeps nothing out.
fn kept_out_by(
    other: &str,
    database: &str,
    (epoch, lsn): (u64, u64),
    answer: Result<crate::client::CopyRole, crate::client::ClientError>,
) -> Option<String> {
    match answer {
        Ok(r) if r.role == Role::Primary.to_string() && (r.epoch, r.lsn) != (epoch, lsn) => {
            Some(format!(
                "{other} is primary of {database} (epoch {}, LSN {}), and this copy would drop \
                 what it acknowledged after the backup",
                r.epoch, r.lsn
            ))
        }
        Ok(r) if r.lsn > lsn => Some(format!(
            "{other}'s copy of {database} ({}, epoch {}) holds LSN {}, past this copy's {}: \
             records acknowledged after the backup, which this copy would drop",
            r.role, r.epoch, r.lsn, lsn
        )),
        Err(crate::client::ClientError::Unreachable {
            sent: true,
            message,
            ..
        }) => Some(format!(
            "{other} takes connections but does not answer ({message}): it may be serving \
             {database}"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{ClientError, CopyRole};

    fn copy(role: &str, epoch: u64, lsn: u64) -> Result<CopyRole, ClientError> {
        Ok(serde_json::from_value(serde_json::json!({
            "node": "atl-db1", "database": "mgc", "role": role, "epoch": epoch, "lsn": lsn,
            "writable": role == "primary",
        }))
        .unwrap())
    }

    fn unreachable(sent: bool) -> Result<CopyRole, ClientError> {
        Err(ClientError::Unreachable {
            addr: "127.0.0.1:1".into(),
            message: "timed out".into(),
            sent,
        })
    }

    /// The restored copy is at epoch 2, LSN 22.
    #[test]
    fn a_copy_restored_offline_is_kept_out_by_a_primary_a_copy_ahead_or_a_hung_node() {
        let kept = |a| kept_out_by("atl-db1", "mgc", (2, 22), a);
        assert!(
            kept(copy("primary", 1, 42))
                .unwrap()
                .contains("atl-db1 is primary of mgc")
        );
        assert!(
            kept(copy("primary", 1, 10)).is_some(),
            "a primary behind it too"
        );
        // A mirror whose primary stopped holds what was acknowledged after the backup.
        let ahead = kept(copy("mirror", 1, 42)).unwrap();
        assert!(
            ahead.contains("holds LSN 42, past this copy's 22"),
            "{ahead}"
        );
        // A node that takes the question and says nothing may be serving (SIGSTOP).
        assert!(kept(unreachable(true)).unwrap().contains("does not answer"));
        // Gone, behind, or restored alongside (same epoch and position): nothing keeps it out.
        assert_eq!(kept(unreachable(false)), None);
        assert_eq!(kept(copy("mirror", 1, 22)), None);
        assert_eq!(kept(copy("restoring", 1, 5)), None);
        assert_eq!(kept(copy("primary", 2, 22)), None);
    }
}
