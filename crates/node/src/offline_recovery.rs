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
        let serving = peers
            .iter()
            .zip(answers)
            .filter_map(|(n, a)| a.ok().map(|r| (n.name.clone(), r)))
            .find(|(_, r)| r.role == Role::Primary.to_string());
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
                    "a copy restored offline is primary: no other copy of its database answers as primary"
                );
            }
            Some((other, r)) => {
                let (o, dn, (epoch, lsn), (their_epoch, their_lsn)) = (
                    other.clone(),
                    database.clone(),
                    (id.epoch, id.lsn),
                    (r.epoch, r.lsn),
                );
                let why = move |aside: &Path| {
                    format!(
                        "the copy restored offline as primary (epoch {epoch}, LSN {lsn}) was not served: \
                         {o} is primary of {dn} (epoch {their_epoch}, LSN {their_lsn}), and \
                         this copy would have dropped what it acknowledged after the backup. Its \
                         files are kept in {}; the copy is made again from its partner or \
                         source. To put a backup's data in place of a serving database, restore \
                         it online: tandem db restore --db {dn} --instance NODE --from FILE \
                         --replace",
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
                        tracing::error!(database, epoch = id.epoch, primary = other, primary_epoch = r.epoch, aside = %aside.display(), "a copy restored offline as primary was set aside, not served: another copy is primary");
                    }
                    Err(e) => {
                        tracing::error!(database, error = %e, "a copy restored offline as primary could not be set aside: it is not served");
                    }
                }
            }
        }
    }
}
