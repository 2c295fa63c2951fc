//! Scrubbing: every copy on this node is read whole (SQLite's `quick_check`, `Database::scrub`)
//! shortly after the node starts and then every `SCRUB_EVERY`, one copy at a time, on a
//! reader. Damage is reported in the copy's health (`status` warnings); a damaged mirror or
//! standby is made again from its primary by its own loop (`mirroring.rs`, `standby.rs`), the
//! way a copy that diverged is: the primary holds the sound pages. A damaged log-shipping
//! secondary is seeded again from the newest full backup on the share (`log_shipping`), and a
//! damaged primary hands over to its synchronized mirror (`mirroring.rs`'s `disk_fails`).
//! Without it, a bit flipped on a mirror's disk stayed unseen until the mirror, primary after a
//! failover, read that page. (Reads and writes that meet damaged pages between two passes mark
//! the copy damaged too: `Database::damage`.)

use crate::server::NodeState;
use std::time::Duration;

/// The first pass, after the node started: its copies open, its mirrors seeded.
const FIRST_PASS_AFTER: Duration = Duration::from_secs(2);
/// Then each copy every 6 hours.
const SCRUB_EVERY: Duration = Duration::from_secs(6 * 3600);

pub(crate) fn start(node: &crate::server::Shared) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(std::sync::Arc::downgrade(node)))
}

async fn run(node: std::sync::Weak<NodeState>) {
    tokio::time::sleep(FIRST_PASS_AFTER).await;
    loop {
        let Some(names) = node.upgrade().map(|n| n.host.names()) else {
            return;
        };
        for name in names {
            let Some(db) = node.upgrade().and_then(|n| n.host.get(&name)) else {
                continue;
            };
            let found =
                crate::mirroring::blocking(move || db.scrub().map_err(|e| e.to_string())).await;
            match found {
                Ok(None) => {}
                Ok(Some(damage)) => {
                    tracing::error!(database = %name, %damage, "scrub: the copy is damaged")
                }
                Err(e) => tracing::warn!(database = %name, error = %e, "scrub failed"),
            }
        }
        tokio::time::sleep(SCRUB_EVERY).await;
    }
}
