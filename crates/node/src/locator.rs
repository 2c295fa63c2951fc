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
        self.probe_or_why(client, database, backup, candidates)
            .await
            .ok()
    }

    /// `probe`, or why no candidate is primary: each one's answer, e.g. "no copy answers as
    /// primary (atl-db1 at 127.0.0.1:27495: no answer; atl-db2: mirror, epoch 2)".
    pub async fn probe_or_why(
        &self,
        client: &Client,
        database: &str,
        backup: bool,
        candidates: &[Node],
    ) -> Result<Node, String> {
        let answers = futures_util::future::join_all(
            candidates
                .iter()
                .map(|n| client.copy_role(&n.address, database, PROBE_TIMEOUT)),
        )
        .await;
        let answers: Vec<(&Node, Option<CopyRole>)> = candidates
            .iter()
            .zip(answers.into_iter().map(Result::ok))
            .collect();
        let best = answers
            .iter()
            .filter_map(|(n, a)| a.as_ref().map(|r| (*n, r)))
            .filter(|(_, r)| r.role == "primary")
            .max_by_key(|(_, r)| (r.epoch, r.writable))
            .map(|(n, _)| n.clone());
        let Some(n) = best else {
            return Err(no_primary(database, &answers));
        };
        let mut found = self.found.lock().expect("locator lock");
        let key = (database.to_string(), backup);
        if found.get(&key) != Some(&n.name) {
            tracing::info!(database, node = %n.name, "found the primary");
            found.insert(key, n.name.clone());
        }
        Ok(n)
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
                match self
                    .probe_or_why(client, database, backup, candidates)
                    .await
                {
                    Ok(next) => client.call(&next.address, database, procedure, args).await,
                    // Unreachable: say what every copy answered, not just the first one's
                    // address. A copy's own refusal (not primary, stale epoch) stays as it is.
                    Err(why) => Err(match e {
                        ClientError::Unreachable { .. } => ClientError::Unreachable {
                            addr: database.to_string(),
                            message: why,
                            sent: false,
                        },
                        e => e,
                    }),
                }
            }
            // Sent, and no answer (a hung or stopped primary): the request may have been
            // done, so it is not sent again, but the next one goes where the primary is now —
            // its mirror once it took over — rather than to the silent copy again and again.
            Err(e @ ClientError::Unreachable { sent: true, .. }) => {
                let _ = self.probe(client, database, backup, candidates).await;
                Err(e)
            }
            r => r,
        }
    }
}

/// "no copy answers as primary (…)", each candidate's answer in the topology's order.
fn no_primary(database: &str, answers: &[(&Node, Option<CopyRole>)]) -> String {
    let each: Vec<String> = answers
        .iter()
        .map(|(n, a)| match a {
            None => format!("{} at {}: no answer", n.name, n.address),
            Some(r) => format!("{}: {}, epoch {}", n.name, r.role, r.epoch),
        })
        .collect();
    if each.is_empty() {
        return format!("the topology places no copy of {database}");
    }
    format!("no copy answers as primary ({})", each.join("; "))
}
