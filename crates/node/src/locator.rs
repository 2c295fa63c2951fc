//! Finding the copy of a database that writes now. The topology says where copies are placed;
//! failovers move the primary among them at run time. A caller asks the copy it last found (or
//! the topology's primary) and, when that copy is unreachable before the request left or
//! refuses because it is not primary, asks every candidate where it stands, takes the primary
//! of the highest epoch, and retries there once: a client sees at most a retry.

use crate::client::{CallAnswer, Client, ClientError, CopyRole};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tandem_topology::{Node, PlacementRole, Topology};

/// How long a probe of one candidate may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1_000);

/// The nodes that may hold the writable copy of `database`. For the chat databases, `backup`
/// picks the copies in the backup site (the chat pool failed over) instead of the primary's.
pub fn candidates(topology: &Topology, database: &str, backup: bool) -> Vec<Node> {
    let wanted: &[PlacementRole] = if backup {
        &[PlacementRole::Backup, PlacementRole::BackupMirror]
    } else {
        // The CMS standby is promoted in place by a CMS failover.
        &[
            PlacementRole::Primary,
            PlacementRole::Mirror,
            PlacementRole::Standby,
        ]
    };
    let mut found = Vec::new();
    for role in wanted {
        for n in &topology.nodes {
            if topology
                .databases_on(&n.name)
                .iter()
                .any(|p| p.database == database && p.role == *role)
            {
                found.push(n.clone());
            }
        }
    }
    found
}

#[derive(Default)]
pub struct Locator {
    /// Database (and site choice) → the node last found primary.
    found: Mutex<HashMap<(String, bool), String>>,
}

impl Locator {
    pub fn new() -> Locator {
        Locator::default()
    }

    /// The node to ask first.
    pub fn current(&self, database: &str, backup: bool, candidates: &[Node]) -> Option<Node> {
        let found = self.found.lock().expect("locator lock");
        let name = found.get(&(database.to_string(), backup));
        name.and_then(|n| candidates.iter().find(|c| &c.name == n))
            .or_else(|| candidates.first())
            .cloned()
    }

    /// Asks every candidate where it stands; remembers and returns the primary of the highest
    /// epoch that accepts writes (or, when none does yet, of the highest epoch).
    pub async fn probe(
        &self,
        client: &Client,
        database: &str,
        backup: bool,
        candidates: &[Node],
    ) -> Option<Node> {
        let answers = futures_util::future::join_all(
            candidates
                .iter()
                .map(|n| client.copy_role(&n.address, database, PROBE_TIMEOUT)),
        )
        .await;
        let best = candidates
            .iter()
            .zip(answers)
            .filter_map(|(n, a)| a.ok().map(|r: CopyRole| (n, r)))
            .filter(|(_, r)| r.role == "primary")
            .max_by_key(|(_, r)| (r.epoch, r.writable))
            .map(|(n, _)| n.clone());
        if let Some(n) = &best {
            let mut found = self.found.lock().expect("locator lock");
            let key = (database.to_string(), backup);
            if found.get(&key) != Some(&n.name) {
                tracing::info!(database, node = %n.name, "found the primary");
                found.insert(key, n.name.clone());
            }
        }
        best
    }

    /// Runs a procedure on the primary of `database`, following it if it moved.
    pub async fn call<T: DeserializeOwned, A: Serialize>(
        &self,
        client: &Client,
        database: &str,
        backup: bool,
        candidates: &[Node],
        procedure: &str,
        args: &A,
    ) -> Result<CallAnswer<T>, ClientError> {
        let first =
            self.current(database, backup, candidates)
                .ok_or_else(|| ClientError::Unreachable {
                    addr: database.to_string(),
                    message: format!("the topology places no copy of {database}"),
                    sent: false,
                })?;
        match client.call(&first.address, database, procedure, args).await {
            Err(e) if e.retry_elsewhere() => {
                let Some(next) = self.probe(client, database, backup, candidates).await else {
                    return Err(e);
                };
                client.call(&next.address, database, procedure, args).await
            }
            r => r,
        }
    }
}
