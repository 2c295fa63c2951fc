//! Finding the copy of a database that writes now. The topology says where copies are placed;
//! failovers move the primary among them at run time. A caller asks the copy it last found (or
//! the topology's primary) and, when that copy is unreachable before the request left or
//! refuses because it is not primary, asks every candidate where it stands, takes the primary
//! of the highest epoch, and retries there once: a client sees at most a retry.
//!
//! A copy that does not answer at all (stopped, hung: it takes connections and says nothing)
//! costs a call, not every call until it comes back: a call unanswered for `SLOW_CALL` asks the
//! other copies, and is given up (`Unreachable { sent: true }`: it may have been done) once one
//! answers primary at a newer epoch — the witness raised it, so the silent copy can no longer
//! acknowledge anything; the node it went to is then suspected, and the next call to any
//! database last found there asks every copy first.

use crate::client::{CallAnswer, Client, ClientError, CopyRole};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::{HashMap, HashSet};
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

/// How long a call may go unanswered before the caller asks the database's other copies
/// whether one took over: calls answer in milliseconds (bench chat: p99 under 10 ms at 5,000
/// posts/s); a mirror takes over after `FAILOVER_MS` (1.5 s) of its primary's silence.
const SLOW_CALL: Duration = Duration::from_millis(500);
/// How often, past `SLOW_CALL`, the other copies are asked again; concurrent calls share an
/// answer this recent.
const TAKEOVER_CHECK: Duration = Duration::from_millis(250);

/// Where a database's primary was found, and at which epoch.
#[derive(Clone)]
struct Found {
    node: String,
    epoch: u64,
}

/// The primary of the highest epoch among the copies other than the one called, as last asked.
type Elsewhere = (std::time::Instant, Option<(Node, u64)>);

#[derive(Default)]
pub struct Locator {
    /// Database (and site choice) → the node last found primary.
    found: Mutex<HashMap<(String, bool), Found>>,
    /// Nodes that left a call unanswered (a deadline passed, a connection failed, or the call
    /// was given up because another copy took over) and have not answered since: the next call
    /// to a database last found there asks every copy where it stands first. One hung node
    /// holds several primaries (`mgc`, `users-…`, `cms`): each database's first call after the
    /// hang no longer waits out its own deadline there.
    suspected: Mutex<HashSet<String>>,
    /// (database, site choice, node called) → the other copies' primary, as last asked while a
    /// call to that node was slow.
    elsewhere: Mutex<HashMap<(String, bool, String), Elsewhere>>,
}

impl Locator {
    pub fn new() -> Locator {
        Locator::default()
    }

    /// The node to ask first.
    pub fn current(&self, database: &str, backup: bool, candidates: &[Node]) -> Option<Node> {
        self.current_found(database, backup, candidates)
            .map(|(n, _)| n)
    }

    /// The node to ask first and the epoch it was found primary at (none: the topology's
    /// placement, never probed).
    fn current_found(
        &self,
        database: &str,
        backup: bool,
        candidates: &[Node],
    ) -> Option<(Node, Option<u64>)> {
        let found = self.found.lock().expect("locator lock");
        let known = found.get(&(database.to_string(), backup));
        known
            .and_then(|f| {
                candidates
                    .iter()
                    .find(|c| c.name == f.node)
                    .map(|n| (n.clone(), Some(f.epoch)))
            })
            .or_else(|| candidates.first().map(|n| (n.clone(), None)))
    }

    /// True when `node` left a call unanswered and has not answered since.
    pub fn suspected(&self, node: &str) -> bool {
        self.suspected.lock().expect("locator lock").contains(node)
    }

    fn suspect(&self, node: &str) {
        if self
            .suspected
            .lock()
            .expect("locator lock")
            .insert(node.to_string())
        {
            tracing::warn!(
                node,
                "a node left a call unanswered: the primaries there are looked for again before the next call"
            );
        }
    }

    /// A node that answers is no longer suspected: where it stands decides.
    fn heard(&self, answers: &[(&Node, Option<CopyRole>)]) {
        let mut suspected = self.suspected.lock().expect("locator lock");
        for (n, a) in answers {
            if a.is_some() && suspected.remove(&n.name) {
                tracing::info!(node = %n.name, "a suspected node answers again");
            }
        }
    }

    fn remember(&self, database: &str, backup: bool, node: &Node, epoch: u64) {
        let mut found = self.found.lock().expect("locator lock");
        let key = (database.to_string(), backup);
        if found.get(&key).map(|f| f.node.as_str()) != Some(node.name.as_str()) {
            tracing::info!(database, node = %node.name, epoch, "found the primary");
        }
        found.insert(
            key,
            Found {
                node: node.name.clone(),
                epoch,
            },
        );
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
        self.locate(client, database, backup, candidates)
            .await
            .map(|(n, _)| n)
    }

    /// `probe_or_why`, with the epoch the primary answered.
    async fn locate(
        &self,
        client: &Client,
        database: &str,
        backup: bool,
        candidates: &[Node],
    ) -> Result<(Node, u64), String> {
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
        self.heard(&answers);
        let Some((n, epoch)) = best_primary(&answers) else {
            return Err(no_primary(database, &answers));
        };
        self.remember(database, backup, &n, epoch);
        Ok((n, epoch))
    }

    /// Runs a procedure on the primary of `database`, following it if it moved. A call that
    /// surely did nothing (unsent, or refused by a copy that is not primary) is sent again, once,
    /// to the primary the candidates name; a call that may have been done (sent, no answer) is
    /// not, but the next call looks for the primary before it goes (see `suspected`), and a call
    /// left unanswered while another copy took over at a newer epoch is given up at once rather
    /// than at its deadline.
    pub async fn call<T: DeserializeOwned, A: Serialize>(
        &self,
        client: &Client,
        database: &str,
        backup: bool,
        candidates: &[Node],
        procedure: &str,
        args: &A,
    ) -> Result<CallAnswer<T>, ClientError> {
        let (mut first, mut epoch) = self
            .current_found(database, backup, candidates)
            .ok_or_else(|| ClientError::Unreachable {
                addr: database.to_string(),
                message: format!("the topology places no copy of {database}"),
                sent: false,
            })?;
        if self.suspected(&first.name) {
            // Where is the primary now? The other copies first (they answer at once, a hung
            // node only at the probe's deadline): one took over at a newer epoch, or else every
            // copy is asked. When none says (the takeover is not done, or every copy is silent),
            // the suspected node is called all the same: it may only be slow.
            let others: Vec<Node> = candidates
                .iter()
                .filter(|c| c.name != first.name)
                .cloned()
                .collect();
            let newer = self
                .primary_elsewhere(client, database, backup, &first, &others)
                .await
                .filter(|(_, e)| epoch.is_none_or(|known| *e > known));
            if let Some((n, e)) = newer {
                self.remember(database, backup, &n, e);
                (first, epoch) = (n, Some(e));
            } else if let Ok((n, e)) = self.locate(client, database, backup, candidates).await {
                (first, epoch) = (n, Some(e));
            }
        }
        let r = self
            .call_watched(
                client, database, backup, candidates, &first, epoch, procedure, args,
            )
            .await;
        if let Err(ClientError::Unreachable { .. }) = &r {
            self.suspect(&first.name);
        }
        match r {
            Err(e) if e.retry_elsewhere() => {
                match self.locate(client, database, backup, candidates).await {
                    Ok((next, epoch)) => {
                        let r = self
                            .call_watched(
                                client,
                                database,
                                backup,
                                candidates,
                                &next,
                                Some(epoch),
                                procedure,
                                args,
                            )
                            .await;
                        if let Err(ClientError::Unreachable { .. }) = &r {
                            self.suspect(&next.name);
                        }
                        r
                    }
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
            // done, so it is not sent again; the node is suspected, so the next call looks
            // where the primary is now — its mirror once it took over — before it goes.
            r => r,
        }
    }

    /// `client.call` to `node` (found primary at `epoch`, when known), given up as soon as
    /// another candidate answers primary at a newer epoch: a copy that took over. The call
    /// may have been done by `node` (it was sent), so it is answered `Unreachable { sent:
    /// true }`, not sent again; the new primary is remembered for the next calls. A primary
    /// that is only slow keeps its call until the client's deadline: no other copy is newer.
    #[allow(clippy::too_many_arguments)]
    async fn call_watched<T: DeserializeOwned, A: Serialize>(
        &self,
        client: &Client,
        database: &str,
        backup: bool,
        candidates: &[Node],
        node: &Node,
        epoch: Option<u64>,
        procedure: &str,
        args: &A,
    ) -> Result<CallAnswer<T>, ClientError> {
        let started = std::time::Instant::now();
        let call = client.call(&node.address, database, procedure, args);
        let others: Vec<Node> = candidates
            .iter()
            .filter(|c| c.name != node.name)
            .cloned()
            .collect();
        let took_over = async {
            if others.is_empty() {
                return std::future::pending().await;
            }
            tokio::time::sleep(SLOW_CALL).await;
            loop {
                if let Some((n, e)) = self
                    .primary_elsewhere(client, database, backup, node, &others)
                    .await
                    .filter(|(_, e)| epoch.is_none_or(|known| *e > known))
                {
                    return (n, e);
                }
                tokio::time::sleep(TAKEOVER_CHECK).await;
            }
        };
        tokio::select! {
            biased;
            r = call => r,
            (n, e) = took_over => {
                self.remember(database, backup, &n, e);
                Err(ClientError::Unreachable {
                    addr: node.address.clone(),
                    message: format!(
                        "no answer from {} after {} ms, and {} took over ({database} primary \
                         at epoch {e}): the call may have been done",
                        node.name,
                        started.elapsed().as_millis(),
                        n.name
                    ),
                    sent: true,
                })
            }
        }
    }

    /// The primary of the highest epoch among `others` (the candidates but `called`), asked
    /// at most once per `TAKEOVER_CHECK` however many calls to `called` are slow at once.
    async fn primary_elsewhere(
        &self,
        client: &Client,
        database: &str,
        backup: bool,
        called: &Node,
        others: &[Node],
    ) -> Option<(Node, u64)> {
        let key = (database.to_string(), backup, called.name.clone());
        if let Some((at, best)) = self.elsewhere.lock().expect("locator lock").get(&key)
            && at.elapsed() < TAKEOVER_CHECK
        {
            return best.clone();
        }
        let answers = futures_util::future::join_all(
            others
                .iter()
                .map(|n| client.copy_role(&n.address, database, PROBE_TIMEOUT)),
        )
        .await;
        let answers: Vec<(&Node, Option<CopyRole>)> = others
            .iter()
            .zip(answers.into_iter().map(Result::ok))
            .collect();
        self.heard(&answers);
        let best = best_primary(&answers);
        self.elsewhere
            .lock()
            .expect("locator lock")
            .insert(key, (std::time::Instant::now(), best.clone()));
        best
    }
}

/// The copy that answers primary at the highest epoch (a writable one first), and its epoch.
fn best_primary(answers: &[(&Node, Option<CopyRole>)]) -> Option<(Node, u64)> {
    answers
        .iter()
        .filter_map(|(n, a)| a.as_ref().map(|r| (*n, r)))
        .filter(|(_, r)| r.role == "primary")
        .max_by_key(|(_, r)| (r.epoch, r.writable))
        .map(|(n, r)| (n.clone(), r.epoch))
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::routing::{get, post};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Instant;

    /// A node of the example topology, renamed and moved to `address`.
    fn node(name: &str, address: String) -> Node {
        let text = tandem_topology::example(20_000, &"ab".repeat(32));
        let topology = Topology::parse(&text, std::path::Path::new("/t/topology.toml")).unwrap();
        let mut n = topology.nodes[0].clone();
        (n.name, n.address) = (name.into(), address);
        n
    }

    /// A node that takes connections and never answers (stopped, hung).
    async fn hung() -> Node {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        node("hung", addr)
    }

    /// A node whose copies answer primary at the epoch in `epoch` (mirror while it is 0), and
    /// whose calls answer its name after `call_ms`.
    async fn answering(name: &str, epoch: Arc<AtomicU64>, call_ms: u64) -> Node {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let me = name.to_string();
        let role = move |axum::extract::Path(database): axum::extract::Path<String>| {
            let (me, e) = (me.clone(), epoch.load(Ordering::SeqCst));
            async move {
                axum::Json(CopyRole {
                    node: me,
                    database,
                    role: if e == 0 { "mirror" } else { "primary" }.into(),
                    epoch: e.max(1),
                    lsn: 1,
                    last_time_ms: 0,
                    writable: e > 0,
                    epoch_first_lsn: None,
                    paused: None,
                    file_bytes: 0,
                })
            }
        };
        let me = name.to_string();
        let call = move || {
            let me = me.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(call_ms)).await;
                axum::Json(serde_json::json!({ "result": me, "lsn": 1 }))
            }
        };
        let app = Router::new()
            .route("/internal/v1/db/{database}/role", get(role))
            .route("/internal/v1/db/{database}/call", post(call));
        tokio::spawn(async move { axum::serve(listener, app).await });
        node(name, addr)
    }

    async fn call(
        locator: &Locator,
        database: &str,
        candidates: &[Node],
    ) -> (Result<String, ClientError>, Duration) {
        let started = Instant::now();
        let r = locator
            .call::<String, _>(
                &Client::new("secret"),
                database,
                false,
                candidates,
                "x.y",
                &serde_json::json!({}),
            )
            .await
            .map(|a| a.result);
        (r, started.elapsed())
    }

    /// A call to a primary that stopped answering is given up once its mirror took over (not
    /// at the 5 s deadline), answered as possibly done; the next call goes to the new primary,
    /// and so does the first call to another database of the silent node, without waiting
    /// there again.
    #[tokio::test]
    async fn a_call_to_a_silent_primary_is_given_up_once_another_copy_took_over() {
        let epoch = Arc::new(AtomicU64::new(0));
        let candidates = vec![hung().await, answering("mirror", epoch.clone(), 0).await];
        let locator = Locator::new();
        let takeover = {
            let epoch = epoch.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(700)).await;
                epoch.store(2, Ordering::SeqCst);
            })
        };
        let (r, took) = call(&locator, "mgc", &candidates).await;
        takeover.await.unwrap();
        match r {
            Err(ClientError::Unreachable { sent, message, .. }) => {
                assert!(sent, "it may have been done: {message}");
                assert!(message.contains("mirror took over"), "{message}");
            }
            r => panic!("{r:?}"),
        }
        assert!(took < Duration::from_millis(3_000), "{took:?}");
        assert!(locator.suspected("hung"));
        let (r, took) = call(&locator, "mgc", &candidates).await;
        assert_eq!(r.unwrap(), "mirror");
        assert!(took < Duration::from_millis(2_500), "{took:?}");
        // Another database last found (here: placed) on the silent node.
        let (r, took) = call(&locator, "users", &candidates).await;
        assert_eq!(r.unwrap(), "mirror");
        assert!(took < Duration::from_millis(2_500), "{took:?}");
    }

    /// A primary that is only slow keeps its call: no other copy is primary.
    #[tokio::test]
    async fn a_slow_primary_keeps_its_call() {
        let candidates = vec![
            answering("primary", Arc::new(AtomicU64::new(1)), 1_500).await,
            answering("mirror", Arc::new(AtomicU64::new(0)), 0).await,
        ];
        let locator = Locator::new();
        let (r, took) = call(&locator, "mgc", &candidates).await;
        assert_eq!(r.unwrap(), "primary");
        assert!(took >= Duration::from_millis(1_500), "{took:?}");
        assert!(!locator.suspected("primary"));
    }
}
