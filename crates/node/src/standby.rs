//! Copies in another site, and fencing across sites (DESIGN.md §2, roles; §4, the CMS standby).
//!
//! A `standby` copy follows the primary of its database wherever it is now — found by asking
//! every node the topology places a copy on — with the mirroring protocol, asynchronously: it
//! pulls, applies, and is reseeded from a streamed full backup when it cannot continue. The CMS
//! standby of the paired pool's site is one (`[cms] standby`); so is an old primary fenced by a
//! newer one in another site, which keeps following until an operator fails back.
//!
//! Fencing: every primary copy asks, twice a second, where the other copies of its database
//! stand; one that is primary of a newer epoch makes it step down at once — to the mirror of
//! its link partner when that is the newer primary, else to a standby of the newer primary.

use crate::mirroring::blocking;
use crate::server::{NodeState, Shared};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tandem_store::replication::{CopyPosition, PullAnswer, PullRequest};
use tandem_store::{Database, Lsn, Role};
use tandem_topology::{Node, PlacementRole, Topology};

/// How often a primary checks the other copies' epochs.
const FENCE_CHECK_MS: u64 = 500;
/// How long one such check may take per copy.
const FENCE_PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a standby's pull waits for new records.
const PULL_WAIT_MS: u64 = 250;

/// Whether the topology places a copy of `database` on `node`.
pub(crate) fn places(topology: &Topology, database: &str, node: &str) -> bool {
    topology
        .databases_on(node)
        .iter()
        .any(|p| p.database == database)
}

/// Every other node the topology places a copy of `database` on.
pub(crate) fn peers(topology: &Topology, database: &str, me: &str) -> Vec<Node> {
    topology
        .nodes
        .iter()
        .filter(|n| n.name != me && places(topology, database, &n.name))
        .cloned()
        .collect()
}

/// What a primary saw of the standbys that pull from it, and what a standby saw of its primary.
#[derive(Default)]
pub(crate) struct Standby {
    /// (database, standby node) → (its hardened LSN, when).
    pulled: Mutex<BTreeMap<(String, String), (Lsn, Instant)>>,
    /// database → the standby's own view.
    following: Mutex<BTreeMap<String, FollowState>>,
}

#[derive(Clone, Default)]
struct FollowState {
    primary: Option<String>,
    primary_lsn: Lsn,
    contact: Option<Instant>,
    state: String,
    last_error: Option<String>,
}

/// What `status` shows of a standby (on the standby's node).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StandbyStatus {
    /// The primary it follows now.
    pub primary: Option<String>,
    pub state: String,
    pub lag_records: u64,
    pub primary_heard_ms: Option<u64>,
    pub last_error: Option<String>,
}

/// A standby as its primary saw it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReplicaSeen {
    pub node: String,
    pub hardened_lsn: Lsn,
    pub heard_ms: u64,
}

impl Standby {
    /// The primary's side: a standby pulled.
    pub(crate) fn seen(&self, database: &str, node: &str, req: &PullRequest) {
        let hardened = req
            .hardened
            .min(req.copy.as_ref().map(|c| c.position.lsn).unwrap_or(0));
        self.pulled.lock().expect("pulled lock").insert(
            (database.to_string(), node.to_string()),
            (hardened, Instant::now()),
        );
    }

    /// The standbys that pulled `database` from this node.
    pub(crate) fn replicas(&self, database: &str) -> Vec<ReplicaSeen> {
        self.pulled
            .lock()
            .expect("pulled lock")
            .iter()
            .filter(|((d, _), _)| d == database)
            .map(|((_, n), (lsn, at))| ReplicaSeen {
                node: n.clone(),
                hardened_lsn: *lsn,
                heard_ms: at.elapsed().as_millis() as u64,
            })
            .collect()
    }

    pub(crate) fn status(&self, database: &str, lsn: Lsn) -> Option<StandbyStatus> {
        let f = self
            .following
            .lock()
            .expect("following lock")
            .get(database)
            .cloned()?;
        Some(StandbyStatus {
            primary: f.primary,
            state: f.state,
            lag_records: f.primary_lsn.saturating_sub(lsn),
            primary_heard_ms: f.contact.map(|t| t.elapsed().as_millis() as u64),
            last_error: f.last_error,
        })
    }

    fn update(&self, database: &str, f: impl FnOnce(&mut FollowState)) {
        f(self
            .following
            .lock()
            .expect("following lock")
            .entry(database.to_string())
            .or_default());
    }
}

/// Starts the follow task of every database this node may hold a standby of, and fencing.
pub(crate) fn start(node: &Shared) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for p in node.topology.databases_on(&node.name) {
        tasks.push(tokio::spawn(follow(
            std::sync::Arc::downgrade(node),
            p.database,
        )));
    }
    tasks.push(tokio::spawn(fence(std::sync::Arc::downgrade(node))));
    tasks
}

/// Whether this node's copy of `database` is a standby to keep current (a standby copy, or the
/// topology's standby placement not yet seeded).
fn should_follow(node: &NodeState, database: &str) -> bool {
    match node.host.get(database) {
        Some(d) => d.identity().role == Role::Standby,
        None => node
            .topology
            .databases_on(&node.name)
            .iter()
            .any(|p| p.database == database && p.role == PlacementRole::Standby),
    }
}

async fn follow(node: std::sync::Weak<NodeState>, database: String) {
    let mut target: Option<Node> = None;
    // When this copy's journal retention last followed the primary's.
    let mut retained: Option<Instant> = None;
    // The reseeds that failed in a row: the next waits (as a mirror's do).
    let mut reseed_failed: Option<crate::mirroring::ReseedRetry> = None;
    loop {
        let Some(node) = node.upgrade() else { return };
        if *node.stopping.borrow() {
            return;
        }
        if !should_follow(&node, &database) {
            drop(node);
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        let peers = peers(&node.topology, &database, &node.name);
        if target.is_none() {
            target = node
                .locator
                .probe(&node.client, &database, true, &peers)
                .await;
            if target.is_none() {
                node.standby.update(&database, |f| {
                    f.state = "standby: no primary answers".into();
                });
                drop(node);
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        }
        let primary = target.clone().expect("set above");
        let db = node.host.get(&database);
        let req = PullRequest {
            copy: db.as_ref().map(CopyPosition::of),
            hardened: db.as_ref().map(|d| d.identity().lsn).unwrap_or(0),
        };
        let answer = match db.as_ref().and_then(|d| d.damage()) {
            // Scrubbing found it damaged: made again from the primary, as one that diverged.
            Some(damage) => Ok(PullAnswer::Reseed {
                reason: format!("the copy is damaged: {damage}"),
            }),
            None => {
                node.client
                    .pull(&primary.address, &database, &req, PULL_WAIT_MS)
                    .await
            }
        };
        let pause = match answer {
            Ok(PullAnswer::Records {
                lsn,
                batch,
                kept_from,
                ..
            }) => {
                node.standby.update(&database, |f| {
                    f.primary = Some(primary.name.clone());
                    f.primary_lsn = lsn;
                    f.contact = Some(Instant::now());
                });
                if let Some(d) = &db
                    && crate::mirroring::retention_due(&mut retained)
                    && let Err(e) = crate::mirroring::retain_like_primary(d, kept_from).await
                {
                    node.standby.update(&database, |f| f.last_error = Some(e));
                }
                match db {
                    Some(d) if !batch.records.is_empty() => {
                        let d2 = d.clone();
                        let r = blocking(move || d2.apply(batch, None).map_err(|e| e.to_string()))
                            .await;
                        let caught_up = d.identity().lsn >= lsn;
                        node.standby.update(&database, |f| {
                            f.state = if caught_up {
                                "standby: current".into()
                            } else {
                                "standby: catching up".into()
                            };
                            f.last_error = r.err();
                        });
                        false
                    }
                    Some(d) => {
                        let caught_up = d.identity().lsn >= lsn;
                        node.standby.update(&database, |f| {
                            if caught_up {
                                f.state = "standby: current".into();
                            }
                        });
                        false
                    }
                    None => true,
                }
            }
            Ok(PullAnswer::Reseed { reason }) => {
                // The copy is replaced only once every handle on it is closed, this one first.
                drop(db);
                // One replacement of the copy at a time: a restore over it (a failback) that
                // came first has made it something else than a standby to keep current.
                let ops = node.host.operations(&database);
                let _one = ops.lock().await;
                if crate::mirroring::ReseedRetry::due(reseed_failed.as_ref())
                    && should_follow(&node, &database)
                {
                    node.standby.update(&database, |f| {
                        f.state = format!("standby: reseeding ({reason})");
                    });
                    if reseed_failed.is_none() {
                        tracing::warn!(database = %database, from = %primary.name, reason, "reseeding the copy");
                    }
                    match crate::mirroring::seed_copy(
                        &node,
                        &database,
                        &primary,
                        Role::Standby,
                        &reason,
                    )
                    .await
                    {
                        Ok(()) => reseed_failed = None,
                        Err(e) => {
                            let retry = crate::mirroring::ReseedRetry::failed(
                                reseed_failed.as_ref(),
                                &e,
                                &database,
                            );
                            node.standby.update(&database, |f| {
                                f.state = format!(
                                    "standby: reseed failing ({} in a row): {e}",
                                    retry.failures
                                );
                                f.last_error = Some(e);
                            });
                            reseed_failed = Some(retry);
                        }
                    }
                }
                true
            }
            Ok(_) => {
                target = None;
                true
            }
            Err(e) => {
                node.standby
                    .update(&database, |f| f.last_error = Some(e.to_string()));
                target = None;
                true
            }
        };
        drop(node);
        if pause {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Makes this primary copy step down: `reason` names the newer primary. To the mirror of its
/// link partner when that partner is the newer primary (the link takes over), else to a standby
/// of the newer primary. The site's witness forgets the database, so this site's mirror does not
/// take over either.
pub(crate) async fn step_down(node: &NodeState, database: &str, db: &Database, reason: &str) {
    step_down_to(node, database, db, reason, Role::Standby).await
}

async fn step_down_to(node: &NodeState, database: &str, db: &Database, reason: &str, role: Role) {
    tracing::warn!(database, reason, role = %role, "fenced: a newer primary exists; this copy steps down");
    db.gate().fence(reason);
    let d = db.clone();
    if let Err(e) = blocking(move || d.set_role(role).map_err(|e| e.to_string())).await {
        tracing::warn!(database, error = %e, "could not step down");
        return;
    }
    if role == Role::Standby
        && let Some(w) = node
            .topology
            .witnesses
            .get(&node.me().site)
            .and_then(|w| node.topology.node(w))
    {
        let _ = node
            .client
            .witness(
                &w.address,
                &crate::witness::WitnessRequest::Forget {
                    database: database.to_string(),
                },
            )
            .await;
    }
}

/// Twice a second: every primary copy here asks the other copies of its database whether one
/// is primary of a newer epoch; and moves the standbys' journal cursors.
async fn fence(node: std::sync::Weak<NodeState>) {
    let mut cursors_moved = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(FENCE_CHECK_MS)).await;
        let Some(node) = node.upgrade() else { return };
        if *node.stopping.borrow() {
            return;
        }
        fence_once(&node).await;
        if cursors_moved.elapsed() > Duration::from_secs(1) {
            cursors_moved = Instant::now();
            move_cursors(&node).await;
        }
    }
}

/// Every primary copy here that another copy of its database outranks (primary of a newer
/// epoch) steps down. Also run once when the node starts, before it serves anything: a primary
/// that comes back after its site was lost and its database failed over to another site must
/// not acknowledge a single write under its old epoch (those writes would be dropped when the
/// site fails back).
pub(crate) async fn fence_once(node: &NodeState) {
    for database in node.host.names() {
        let Some(db) = node.local_primary(&database) else {
            continue;
        };
        let epoch = db.identity().epoch;
        let peers = peers(&node.topology, &database, &node.name);
        let answers = futures_util::future::join_all(peers.iter().map(|n| {
            node.client
                .copy_role(&n.address, &database, FENCE_PROBE_TIMEOUT)
        }))
        .await;
        let silent = answers.iter().any(|a| a.is_err());
        let newer = peers
            .iter()
            .zip(answers)
            .filter_map(|(n, a)| a.ok().map(|r| (n, r)))
            .filter(|(_, r)| r.role == "primary" && r.epoch > epoch)
            .max_by_key(|(_, r)| r.epoch)
            .map(|(n, r)| {
                let reason = format!(
                    "{} is primary of {database} at epoch {}, newer than this copy's {epoch}",
                    n.name, r.epoch
                );
                (n.name.clone(), reason)
            });
        // A copy that does not answer may be the newer primary: the share says whether one was
        // made primary at a newer epoch meanwhile.
        let newer = match newer {
            Some(newer) => Some(newer),
            None if silent => crate::epoch_mark::newer_elsewhere(node, &database, epoch).await,
            None => None,
        };
        if let Some((newer_node, reason)) = newer {
            let partner = node
                .mirroring
                .link(&database)
                .map(|l| l.partner().to_string());
            let role = if partner.as_deref() == Some(newer_node.as_str()) {
                Role::Mirror
            } else {
                Role::Standby
            };
            step_down_to(node, &database, &db, &reason, role).await;
        }
    }
}

/// The name of a standby's journal cursor on the primary it follows.
pub(crate) fn consumer_name(standby: &str) -> String {
    format!("standby-{standby}")
}

/// Each standby's journal cursor on this primary: at what it hardened, never keeping more than
/// the topology's bound for it. A cursor a seed backup registered for a standby that has not
/// pulled yet (or never will) is held to the same bound; the cursor of a node the topology no
/// longer places a copy on is removed.
async fn move_cursors(node: &NodeState) {
    let keep = node.topology.mirroring.journal_records_max;
    let pulled: BTreeMap<(String, String), Lsn> = node
        .standby
        .pulled
        .lock()
        .expect("pulled lock")
        .iter()
        .map(|(k, (lsn, _))| (k.clone(), *lsn))
        .collect();
    for database in node.host.names() {
        let Some(db) = node.local_primary(&database) else {
            continue;
        };
        let hardened: Vec<(String, Lsn)> = pulled
            .iter()
            .filter(|((d, _), _)| *d == database)
            .map(|((_, standby), lsn)| (standby.clone(), *lsn))
            .collect();
        // The other nodes the topology places a copy on (only these may keep a cursor).
        let holders: Vec<String> = peers(&node.topology, &database, &node.name)
            .into_iter()
            .map(|n| n.name)
            .collect();
        let _ = blocking(move || {
            let consumers = db.consumers().map_err(|e| e.to_string())?;
            let placed = |standby: &str| holders.iter().any(|h| h == standby);
            for m in cursor_moves(&consumers, &hardened, db.identity().lsn, keep, placed) {
                match m {
                    CursorMove::Register(name, lsn) => db.register_consumer(&name, lsn),
                    CursorMove::Advance(name, lsn) => db.advance_consumer(&name, lsn),
                    CursorMove::Remove(name) => {
                        tracing::info!(
                            database = %database,
                            consumer = %name,
                            "journal cursor removed: the topology places no copy of the \
                             database on that node any more"
                        );
                        db.remove_consumer(&name).map(|_| ())
                    }
                }
                .map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(())
        })
        .await;
    }
}

/// What `move_cursors` does to one standby's journal cursor.
#[derive(Debug, PartialEq, Eq)]
enum CursorMove {
    Register(String, Lsn),
    Advance(String, Lsn),
    Remove(String),
}

/// The cursor moves on a primary at `lsn`: each standby's cursor (`consumer_name`) at what it
/// hardened (`hardened`: standby node, LSN), or one that has not pulled at `lsn - keep`, never
/// keeping more than `keep` records for it nor moving back; the cursor of a node on which
/// `placed` says the topology puts no copy any more is removed.
fn cursor_moves(
    consumers: &[tandem_store::Consumer],
    hardened: &[(String, Lsn)],
    lsn: Lsn,
    keep: u64,
    placed: impl Fn(&str) -> bool,
) -> Vec<CursorMove> {
    let prefix = consumer_name("");
    let silent = consumers
        .iter()
        .filter_map(|c| c.name.strip_prefix(&prefix))
        .filter(|standby| !hardened.iter().any(|(n, _)| n == standby))
        .map(|standby| (standby.to_string(), 0));
    let mut moves = Vec::new();
    for (standby, hardened) in hardened.iter().cloned().chain(silent) {
        let name = consumer_name(&standby);
        let current = consumers.iter().find(|c| c.name == name);
        if !placed(&standby) {
            if current.is_some() {
                moves.push(CursorMove::Remove(name));
            }
            continue;
        }
        let target = hardened.max(lsn.saturating_sub(keep)).min(lsn);
        match current {
            None => moves.push(CursorMove::Register(name, target)),
            Some(c) if c.lsn < target => moves.push(CursorMove::Advance(name, target)),
            Some(_) => {}
        }
    }
    moves
}

/// An epoch for a promotion in another site: above anything the old site could have reached by
/// counting (mirror failovers add one each), because the old site cannot be asked. The clock in
/// milliseconds: two promotions the same second (a planned CMS failover, then a forced one back
/// before the standby heard of the first's epoch) took the same epoch until session 32, and
/// left two masters that each took the other for no newer.
pub fn cross_site_epoch(current: u64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    (current + 1).max(now)
}

// ---- the internal API ----

use crate::error::ApiError;
use crate::json_body::{BodyRejection, Object};
use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

fn hosted(node: &NodeState, database: &str) -> Result<Database, ApiError> {
    node.host.get(database).ok_or_else(|| {
        ApiError::not_found(format!("node {} holds no copy of {database}", node.name))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Pause {
    reason: Option<String>,
}

/// How long a pause waits for what was committed before it to be acknowledged.
const PAUSE_SETTLE: Duration = Duration::from_secs(10);

/// `POST /internal/v1/db/{db}/pause`: new writes refused with the reason (or accepted again).
/// A pause answers once no write taken before it can still commit, and what was committed is
/// acknowledged (`settled`): a backup taken then holds every write ever acknowledged here.
pub(crate) async fn pause(
    State(node): State<Shared>,
    Path(database): Path<String>,
    body: Result<Object<Pause>, BodyRejection>,
) -> Result<Json<Value>, ApiError> {
    let Object(p) = body.map_err(ApiError::json)?;
    let db = hosted(&node, &database)?;
    db.gate().pause_writes(p.reason.as_deref());
    let settled = match p.reason {
        Some(_) if db.identity().role == Role::Primary => settle(&db).await,
        _ => true,
    };
    let id = db.identity();
    Ok(Json(json!({
        "node": node.name, "database": database, "paused": p.reason.is_some(),
        "role": id.role, "epoch": id.epoch, "lsn": id.lsn, "last_time_ms": id.last_time_ms,
        "durable_lsn": db.durable_lsn(), "settled": settled,
    })))
}

/// Waits, on a primary just paused, until the writer has finished every transaction it took
/// before the pause (a write queued after them is refused: the one writer takes them in
/// order) and every record committed is acknowledged (on disk, and on a synchronous mirror),
/// up to `PAUSE_SETTLE`. False when the records are not all acknowledged by then: some may
/// still be, later.
async fn settle(db: &Database) -> bool {
    let _ = db
        .write_async(|_| Err::<(), _>(tandem_store::StoreError::Invalid("a barrier".into())))
        .await;
    let lsn = db.identity().lsn;
    let mut acked = db.subscribe();
    tokio::time::timeout(PAUSE_SETTLE, acked.wait_for(|&a| a >= lsn))
        .await
        .is_ok_and(|r| r.is_ok())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Promote {
    epoch: u64,
}

/// `POST /internal/v1/db/{db}/promote`: this copy (a standby) becomes the primary of `epoch`.
pub(crate) async fn promote(
    State(node): State<Shared>,
    Path(database): Path<String>,
    body: Result<Object<Promote>, BodyRejection>,
) -> Result<Json<Value>, ApiError> {
    let Object(p) = body.map_err(ApiError::json)?;
    let db = hosted(&node, &database)?;
    let id = db.identity();
    if id.role == Role::Primary {
        if id.epoch == p.epoch {
            return Ok(Json(
                json!({ "epoch": id.epoch, "lsn": id.lsn, "already": true }),
            ));
        }
        return Err(ApiError::conflict(format!(
            "{database} on {} is already primary (epoch {})",
            node.name, id.epoch
        )));
    }
    if p.epoch <= id.epoch {
        return Err(ApiError::conflict(format!(
            "epoch {} is not newer than the copy's {}",
            p.epoch, id.epoch
        )));
    }
    let (d, name, topology) = (db.clone(), database.clone(), node.topology.clone());
    let me = node.name.clone();
    blocking(move || {
        d.recover(Some(p.epoch)).map_err(|e| e.to_string())?;
        crate::epoch_mark::record_or_warn(&topology, &name, &me, p.epoch);
        crate::db_host::prepare(&d, &name, &topology)
    })
    .await
    .map_err(ApiError::unavailable)?;
    let id = db.identity();
    tracing::warn!(
        database,
        epoch = id.epoch,
        lsn = id.lsn,
        "promoted: this copy is primary"
    );
    Ok(Json(json!({
        "node": node.name, "epoch": id.epoch, "lsn": id.lsn, "last_time_ms": id.last_time_ms,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StepDown {
    reason: String,
}

/// `POST /internal/v1/db/{db}/step-down`: this primary becomes a standby of the newer primary.
pub(crate) async fn step_down_route(
    State(node): State<Shared>,
    Path(database): Path<String>,
    body: Result<Object<StepDown>, BodyRejection>,
) -> Result<Json<Value>, ApiError> {
    let Object(s) = body.map_err(ApiError::json)?;
    let db = hosted(&node, &database)?;
    if db.identity().role == Role::Primary {
        step_down(&node, &database, &db, &s.reason).await;
    }
    let id = db.identity();
    Ok(Json(
        json!({ "node": node.name, "role": id.role, "epoch": id.epoch, "lsn": id.lsn }),
    ))
}

#[cfg(test)]
mod tests {
    use super::{CursorMove, consumer_name, cursor_moves};
    use tandem_store::Consumer;

    fn cursor(standby: &str, lsn: u64) -> Consumer {
        Consumer {
            name: consumer_name(standby),
            lsn,
        }
    }

    #[test]
    fn a_cursor_follows_its_standby_within_the_bound_and_never_moves_back() {
        let placed = |_: &str| true;
        let consumers = [cursor("b", 500), cursor("c", 900)];
        let hardened = [("a".to_string(), 700), ("b".to_string(), 800)];
        let moves = cursor_moves(&consumers, &hardened, 1_000, 100, placed);
        assert_eq!(
            moves,
            [
                // Not registered yet: at most `keep` records kept for it.
                CursorMove::Register(consumer_name("a"), 900),
                CursorMove::Advance(consumer_name("b"), 900),
                // c has not pulled since the node started: held to the bound, already there.
            ]
        );
        let hardened = [("b".to_string(), 950)];
        let moves = cursor_moves(&[cursor("b", 980)], &hardened, 1_000, 100, placed);
        assert!(moves.is_empty(), "a cursor never moves back: {moves:?}");
    }

    #[test]
    fn the_cursor_of_a_node_the_topology_no_longer_places_a_copy_on_is_removed() {
        let placed = |standby: &str| standby != "gone";
        let consumers = [
            cursor("gone", 10),
            cursor("kept", 10),
            Consumer {
                name: "mirror".into(),
                lsn: 10,
            },
        ];
        let hardened = [("gone".to_string(), 990)];
        let moves = cursor_moves(&consumers, &hardened, 1_000, 100, placed);
        assert_eq!(
            moves,
            [
                CursorMove::Remove(consumer_name("gone")),
                CursorMove::Advance(consumer_name("kept"), 900),
            ]
        );
        // Without a cursor, nothing is registered for it either.
        let moves = cursor_moves(&[], &hardened, 1_000, 100, placed);
        assert!(moves.is_empty(), "{moves:?}");
    }
}
