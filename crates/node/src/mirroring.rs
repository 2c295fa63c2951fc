//! Mirroring between two db nodes (DESIGN.md §2): per mirrored database, a link to the partner
//! copy. The copy that is primary serves pulls, tells its witness it is alive, and gates its
//! acknowledgments (synchronous mode: a commit is answered once the mirror has it durably); the
//! copy that is not pulls records, applies them, is reseeded from a streamed full backup when it
//! cannot continue, and takes over — new epoch, granted by the witness — when the primary has
//! been silent too long. Which copy is primary is the copies' own business (their role and
//! epoch), so after a failover the same link runs the other way.

use crate::error::ApiError;
use crate::json_body::{BodyRejection, Object};
use crate::server::{NodeState, Shared};
use crate::witness::{FAILOVER_MS, LEASE_MS, Verdict, WitnessRequest};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tandem_store::replication::{CopyPosition, PullAnswer, PullRequest, serve_pull};
use tandem_store::{Database, GateStatus, Lsn, Role};
use tandem_topology::{PlacementRole, Topology};

/// How often a primary tells its witness it is alive.
const HEARTBEAT_MS: u64 = 200;
/// How long a pull waits for new records before answering with none.
pub(crate) const PULL_WAIT_MS: u64 = 250;
/// A primary whose mirror has not pulled for this long serves without it (after telling the
/// witness the mirror is not synchronized).
const MIRROR_TIMEOUT_MS: u64 = 1_000;
/// A synchronous primary whose mirror pulls but hardens nothing for this long while it lacks
/// records (its disk is full, its apply fails) serves without it too: answers no longer wait
/// for a mirror that cannot take them. It is taken back once it hardens more.
const MIRROR_STALL_MS: u64 = 2_000;
/// A mirror this close to the primary starts gating acknowledgments (synchronizing).
const SYNC_CATCH_UP_RECORDS: u64 = 2_000;
/// Room a primary keeps free on its disk when it serves a seed (a copy's snapshot takes room
/// there while it streams): the WAL, the journal and the checkpoints of its own commits need
/// it, and a seed that took it failed every commit of the node (its WAL could not restart).
pub(crate) const SEED_KEEP_FREE_BYTES: u64 = 256 << 20;
/// Pieces (about 1 MiB each) a seed is read ahead of the connection that sends it.
const SEED_CHUNKS_AHEAD: usize = 4;
/// The journal consumer that keeps records for the mirror.
const MIRROR_CONSUMER: &str = "mirror";
/// How often the primary moves the mirror's journal cursor (a durable write), and a copy that
/// follows a primary its journal's retention.
const CONSUMER_EVERY_MS: u64 = 1_000;

/// Whether a copy that follows a primary moves its journal's retention now (once a second:
/// a durable write); `last` is when it last did.
pub(crate) fn retention_due(last: &mut Option<Instant>) -> bool {
    let due = last.is_none_or(|t| t.elapsed() > Duration::from_millis(CONSUMER_EVERY_MS));
    if due {
        *last = Some(Instant::now());
    }
    due
}

/// A copy that follows a primary keeps in its journal what the primary keeps (`kept_from`, of
/// a pull's answer): it then has what the primary's consumers need if it takes over, and no
/// more — without it a mirror's or standby's journal kept every record it ever applied.
pub(crate) async fn retain_like_primary(
    db: &Database,
    kept_from: Option<Lsn>,
) -> Result<(), String> {
    let Some(from) = kept_from else { return Ok(()) };
    let d = db.clone();
    let r = tokio::task::spawn_blocking(move || d.retain_from(from))
        .await
        .map_err(|e| e.to_string())?;
    match r {
        // It became primary meanwhile: its own consumers decide now.
        Ok(()) | Err(tandem_store::StoreError::Role(_)) => Ok(()),
        Err(e) => Err(format!("journal retention: {e}")),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// A commit is acknowledged once the mirror has it durably.
    Sync,
    /// The mirror follows as fast as it can; acknowledgments do not wait (no automatic failover).
    Async,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Mode, String> {
        match s {
            "sync" => Ok(Mode::Sync),
            "async" => Ok(Mode::Async),
            other => Err(format!("unknown mirroring mode {other:?} (sync, async)")),
        }
    }
}

/// One database's mirroring, as configured on this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partnership {
    pub partner: String,
    pub mode: Mode,
}

/// What `status` shows of a link.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LinkStatus {
    pub partner: String,
    pub mode: String,
    /// `synchronized`, `synchronizing`, `unprotected` (primary without its mirror),
    /// `unprotected: mirror stalled` (the mirror pulls and hardens nothing), `isolated: accepts
    /// no writes` (its lease ran out: neither mirror nor witness heard from),
    /// `fenced: stepping down` (a primary that learned of a newer epoch, until it is a mirror),
    /// `mirror: synchronized`, `mirror: catching up`, `mirror: reseeding …`, `mirror: reseed
    /// failing (…)` (the last reseeds failed: how many in a row, when the next, why), `mirror:
    /// no primary`, `mirror: cannot apply` (its last batch failed: a full disk, say);
    /// `last_error` says why.
    pub state: String,
    /// Primary: the mirror's hardened LSN. Mirror: its own LSN.
    pub mirror_lsn: Lsn,
    /// Records the mirror lacks (as last seen).
    pub lag_records: u64,
    /// Since the partner was last heard from.
    pub partner_heard_ms: Option<u64>,
    pub witness: Option<String>,
    pub witness_heard_ms: Option<u64>,
    pub gate: Option<GateStatus>,
    pub last_error: Option<String>,
}

/// A mirror's reseeds that failed in a row: what the last one said, and when the next may
/// start. The wait doubles from `RESEED_RETRY_FIRST_MS` up to `RESEED_RETRY_MAX_MS`: a reseed
/// that cannot succeed (the primary's disk has no room for its snapshot, say) is not asked for
/// ten times a second.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ReseedRetry {
    pub(crate) error: String,
    pub(crate) failures: u32,
    pub(crate) next: Instant,
}

const RESEED_RETRY_FIRST_MS: u64 = 500;
const RESEED_RETRY_MAX_MS: u64 = 30_000;

impl ReseedRetry {
    /// Whether a reseed may start now, after the failures `last`.
    pub(crate) fn due(last: Option<&ReseedRetry>) -> bool {
        last.is_none_or(|r| Instant::now() >= r.next)
    }

    /// After the failures `last`, a reseed of `database` failed with `error` now: when the
    /// next may start. The error is logged when it is news.
    pub(crate) fn failed(last: Option<&ReseedRetry>, error: &str, database: &str) -> ReseedRetry {
        let (retry, news) = ReseedRetry::after(last, error.to_string(), Instant::now());
        if news {
            tracing::warn!(
                database,
                error,
                failures = retry.failures,
                "reseed failed; retrying, less and less often (up to every {} s)",
                RESEED_RETRY_MAX_MS / 1000
            );
        }
        retry
    }

    /// After `last` (none: the first failure), a reseed failed with `error` at `now`: when the
    /// next may start, and whether the error is news (the log tells each new one once).
    pub(crate) fn after(
        last: Option<&ReseedRetry>,
        error: String,
        now: Instant,
    ) -> (ReseedRetry, bool) {
        let failures = last.map_or(1, |r| r.failures.saturating_add(1));
        let wait = RESEED_RETRY_FIRST_MS
            .saturating_mul(1u64 << (failures - 1).min(16))
            .min(RESEED_RETRY_MAX_MS);
        let news = last.is_none_or(|r| r.error != error);
        let retry = ReseedRetry {
            error,
            failures,
            next: now + Duration::from_millis(wait),
        };
        (retry, news)
    }
}

#[derive(Default)]
struct LinkState {
    // The primary's side.
    /// The share was read since the lease last ran out, and names no newer primary: the
    /// mirror's pulls and the witness may renew it again (`lease_may_renew`).
    lease_checked: bool,
    last_pull: Option<Instant>,
    hardened: Lsn,
    /// The witness was told the mirror is synchronized.
    synchronized: bool,
    /// The gate waits for the mirror; the witness is told once the mirror reaches this LSN.
    synchronizing_from: Option<Lsn>,
    consumer_moved: Option<Instant>,
    /// Since when the mirror has lacked records without hardening any more, and its hardened
    /// LSN then.
    behind: Option<(Instant, Lsn)>,
    /// The mirror stalled at this hardened LSN and answers stopped waiting for it; they wait
    /// again once it hardens past it.
    stalled: Option<Lsn>,
    /// When this primary last tried to hand over to its mirror because of its disk.
    handover_tried: Option<Instant>,
    // The mirror's side.
    last_contact: Option<Instant>,
    primary_lsn: Lsn,
    /// The primary's epoch, as its last answer said.
    primary_epoch: u64,
    /// The last pull left this copy with every record the primary had.
    caught_up: bool,
    reseeding: Option<String>,
    /// The last reseeds failed: the next is not tried before its time.
    reseed_failed: Option<ReseedRetry>,
    /// Why the last batch could not be applied (cleared by one that is).
    apply_failed: Option<String>,
    /// When its journal's retention last followed the primary's.
    retained: Option<Instant>,
    /// What the witness last said of the mirror (its record's `synchronized`), from a
    /// heartbeat's answer or a report it took: a primary serves without its mirror only once
    /// the witness holds `false`.
    witness_synchronized: Option<bool>,
    // Both.
    witness_heard: Option<Instant>,
    last_error: Option<String>,
    /// Errors so far: a primary's tick that adds none, and finds its mirror not stalled,
    /// clears `last_error` (it is history then).
    errors: u64,
}

pub(crate) struct Link {
    database: String,
    partnership: Partnership,
    state: Mutex<LinkState>,
    /// The link's loop, and the mirror's hardened-LSN reporter.
    task: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// A move of the mirror's journal cursor is in progress (`primary_tick` starts it and does
    /// not wait for it; the move clears this when it ends).
    consumer_moving: Arc<std::sync::atomic::AtomicBool>,
}

/// `POST /internal/v1/mirroring/{db}/hardened`: a mirror's hardened LSN, sent when its fsync
/// ends. A synchronous primary answers its writers from it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HardenedReport {
    pub database_id: String,
    pub epoch: u64,
    pub hardened: Lsn,
}

impl Link {
    /// The node this link mirrors with.
    pub(crate) fn partner(&self) -> &str {
        &self.partnership.partner
    }

    fn st(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.state.lock().expect("link lock")
    }

    fn error(&self, e: impl std::fmt::Display) {
        let mut st = self.st();
        st.last_error = Some(e.to_string());
        st.errors += 1;
    }
}

/// Every link of this node, and the file that keeps their configuration.
pub(crate) struct Mirroring {
    file: PathBuf,
    links: Mutex<BTreeMap<String, Arc<Link>>>,
}

/// The partnerships the topology sets up on `node`: each primary with its mirror.
pub(crate) fn initial(topology: &Topology, node: &str) -> BTreeMap<String, Partnership> {
    let holder = |database: &str, role: PlacementRole| {
        topology.nodes.iter().find(|n| {
            topology
                .databases_on(&n.name)
                .iter()
                .any(|p| p.database == database && p.role == role)
        })
    };
    let mut out = BTreeMap::new();
    for p in topology.databases_on(node) {
        let partner = match p.role {
            PlacementRole::Primary => holder(&p.database, PlacementRole::Mirror),
            PlacementRole::Mirror => holder(&p.database, PlacementRole::Primary),
            _ => None,
        };
        if let Some(partner) = partner {
            out.insert(
                p.database,
                Partnership {
                    partner: partner.name.clone(),
                    mode: Mode::Sync,
                },
            );
        }
    }
    out
}

impl Mirroring {
    /// Reads the node's links (`DATA/mirroring.json`), or on a first start those of the
    /// topology. Returns whether this is the node's first start.
    pub(crate) fn load(
        data_dir: &std::path::Path,
        topology: &Topology,
        node: &str,
    ) -> Result<(Mirroring, bool), String> {
        let file = data_dir.join("mirroring.json");
        let (config, first) = match std::fs::read(&file) {
            Ok(bytes) => (
                serde_json::from_slice::<BTreeMap<String, Partnership>>(&bytes).map_err(|e| {
                    format!(
                        "{}: {e}: the node's record of its mirroring links (kept by `tandem db \
                         mirror install|remove`) is unreadable; mend it, or move it aside: the \
                         node then starts from the topology's links, as on its first start",
                        file.display()
                    )
                })?,
                false,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (initial(topology, node), true),
            Err(e) => return Err(format!("{}: {e}", file.display())),
        };
        let m = Mirroring {
            file,
            links: Mutex::new(
                config
                    .into_iter()
                    .map(|(db, p)| (db.clone(), new_link(db, p)))
                    .collect(),
            ),
        };
        if first {
            m.save()?;
        }
        Ok((m, first))
    }

    fn save(&self) -> Result<(), String> {
        let config: BTreeMap<String, Partnership> = self
            .links
            .lock()
            .expect("links lock")
            .iter()
            .map(|(k, l)| (k.clone(), l.partnership.clone()))
            .collect();
        let tmp = self.file.with_extension("json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(&config).expect("serializes"),
        )
        .and_then(|_| std::fs::File::open(&tmp).and_then(|f| f.sync_all()))
        .and_then(|_| std::fs::rename(&tmp, &self.file))
        .map_err(|e| format!("{}: {e}", self.file.display()))
    }

    pub(crate) fn link(&self, database: &str) -> Option<Arc<Link>> {
        self.links
            .lock()
            .expect("links lock")
            .get(database)
            .cloned()
    }

    pub(crate) fn has(&self, database: &str) -> bool {
        self.link(database).is_some()
    }

    pub(crate) fn status(&self, node: &NodeState, database: &str) -> Option<LinkStatus> {
        let link = self.link(database)?;
        let db = node.host.get(database);
        let id = db.as_ref().map(|d| d.identity());
        let primary = id.as_ref().is_some_and(|i| i.role == Role::Primary);
        let st = link.st();
        let ms = |t: Option<Instant>| t.map(|t| t.elapsed().as_millis() as u64);
        let lsn = id.as_ref().map(|i| i.lsn).unwrap_or(0);
        let (state, mirror_lsn, lag, heard) = if primary {
            let alive = st
                .last_pull
                .is_some_and(|t| t.elapsed() < Duration::from_millis(MIRROR_TIMEOUT_MS));
            let gate = db.as_ref().map(|d| d.gate().status());
            let fenced = gate.as_ref().is_some_and(|g| g.fenced.is_some());
            // Its lease ran out: neither mirror nor witness heard from lately.
            let isolated = gate
                .as_ref()
                .is_some_and(|g| g.lease_required && g.lease_left_ms == 0);
            let state = if fenced {
                // Between the fence and the role change of `demote`: it answers and accepts
                // nothing, whatever the link said a moment ago.
                "fenced: stepping down"
            } else if link.partnership.mode == Mode::Async {
                if alive {
                    "async: mirror following"
                } else {
                    "unprotected"
                }
            } else if isolated {
                "isolated: accepts no writes"
            } else if st.synchronized && alive {
                "synchronized"
            } else if st.synchronizing_from.is_some() && alive {
                "synchronizing"
            } else if st.stalled.is_some() {
                "unprotected: mirror stalled"
            } else {
                "unprotected"
            };
            (
                state.to_string(),
                st.hardened,
                lsn.saturating_sub(st.hardened),
                ms(st.last_pull),
            )
        } else {
            // A write that does not end: the pull that waits for it hears nothing meanwhile.
            let stuck = db.as_ref().and_then(|d| d.disk_not_answering());
            let state = if let Some(r) = &st.reseeding {
                format!("mirror: reseeding ({r})")
            } else if let Some(f) = &st.reseed_failed {
                format!(
                    "mirror: reseed failing ({} in a row; next try in {:.0} s): {}",
                    f.failures,
                    f.next
                        .saturating_duration_since(Instant::now())
                        .as_secs_f64(),
                    f.error
                )
            } else if stuck.is_some() {
                "mirror: cannot apply (its disk does not answer)".to_string()
            } else if st
                .last_contact
                .is_none_or(|t| t.elapsed() > Duration::from_millis(MIRROR_TIMEOUT_MS))
            {
                "mirror: no primary".to_string()
            } else if st.apply_failed.is_some() {
                "mirror: cannot apply".to_string()
            } else if st.caught_up && lsn >= st.primary_lsn {
                "mirror: synchronized".to_string()
            } else {
                "mirror: catching up".to_string()
            };
            (
                state,
                lsn,
                st.primary_lsn.saturating_sub(lsn),
                ms(st.last_contact),
            )
        };
        Some(LinkStatus {
            partner: link.partnership.partner.clone(),
            mode: match link.partnership.mode {
                Mode::Sync => "sync",
                Mode::Async => "async",
            }
            .into(),
            state,
            mirror_lsn,
            lag_records: lag,
            partner_heard_ms: heard,
            witness: witness_of(node).map(|w| w.name),
            witness_heard_ms: ms(st.witness_heard),
            gate: db.map(|d| d.gate().status()),
            last_error: st.last_error.clone(),
        })
    }
}

fn new_link(database: String, partnership: Partnership) -> Arc<Link> {
    Arc::new(Link {
        database,
        partnership,
        state: Mutex::new(LinkState::default()),
        task: Mutex::new(Vec::new()),
        consumer_moving: Default::default(),
    })
}

/// The witness of this node's site.
fn witness_of(node: &NodeState) -> Option<tandem_topology::Node> {
    node.topology
        .witnesses
        .get(&node.me().site)
        .and_then(|w| node.topology.node(w))
        .cloned()
}

/// Starts the task of every configured link.
pub(crate) fn start(node: &Shared) {
    let links: Vec<Arc<Link>> = node
        .mirroring
        .links
        .lock()
        .expect("links lock")
        .values()
        .cloned()
        .collect();
    let witness = witness_of(node).is_some();
    for link in links {
        // A primary that comes back writes nothing until its witness or mirror confirms it:
        // another copy may have taken over meanwhile.
        if let Some(db) = node.host.get(&link.database)
            && db.identity().role == Role::Primary
            && link.partnership.mode == Mode::Sync
            && witness
        {
            db.gate().require_lease(true);
        }
        // A primary that comes back answers only what its mirror hardened, until its first
        // round has told the witness whether the mirror is synchronized: the witness may
        // still hold "synchronized" from before, and a mirror it lets take over must have
        // every answered record.
        if let Some(db) = node.host.get(&link.database)
            && db.identity().role == Role::Primary
            && link.partnership.mode == Mode::Sync
        {
            db.gate().set_sync(true, 0);
        }
        spawn(node, link);
    }
}

fn spawn(node: &Shared, link: Arc<Link>) {
    let tasks = vec![
        tokio::spawn(run(Arc::downgrade(node), link.clone())),
        tokio::spawn(report_hardened(Arc::downgrade(node), link.clone())),
    ];
    *link.task.lock().expect("task lock") = tasks;
}

/// Stops every link's tasks (the node is stopping).
pub(crate) fn stop(node: &NodeState) {
    for link in node.mirroring.links.lock().expect("links lock").values() {
        for t in link.task.lock().expect("task lock").drain(..) {
            t.abort();
        }
    }
}

/// The mirror's side: tells the primary what this copy hardened each time its durable LSN
/// moves (the mirror applies a batch, then pulls the next while the acknowledgment stage
/// fsyncs it). One report in flight at a time, carrying the latest LSN. Only a synchronous
/// primary waits for it; an asynchronous one learns it from the pulls.
async fn report_hardened(node: std::sync::Weak<NodeState>, link: Arc<Link>) {
    if link.partnership.mode != Mode::Sync {
        return;
    }
    let mut reported: Option<(u64, Lsn)> = None;
    loop {
        let Some(n) = node.upgrade() else { return };
        if *n.stopping.borrow() {
            return;
        }
        let db = n
            .host
            .get(&link.database)
            .filter(|d| d.identity().role == Role::Mirror);
        let partner = n.topology.node(&link.partnership.partner).cloned();
        let (Some(db), Some(partner)) = (db, partner) else {
            drop(n);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut durable = db.subscribe();
        let id = db.identity();
        let hardened = (*durable.borrow_and_update()).min(id.lsn);
        if reported != Some((id.epoch, hardened)) && hardened > 0 {
            let report = HardenedReport {
                database_id: id.database_id.to_hex(),
                epoch: id.epoch,
                hardened,
            };
            match n
                .client
                .hardened(&partner.address, &link.database, &report)
                .await
            {
                Ok(()) => reported = Some((id.epoch, hardened)),
                Err(_) => {
                    // The pulls report it too, and say what is wrong with the partner.
                    drop(n);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        drop(n);
        tokio::select! {
            _ = durable.changed() => {}
            // A reseed replaces the copy: look it up again now and then.
            _ = tokio::time::sleep(Duration::from_millis(PULL_WAIT_MS)) => {}
        }
    }
}

async fn run(node: std::sync::Weak<NodeState>, link: Arc<Link>) {
    link.st().last_contact = Some(Instant::now());
    loop {
        let Some(node) = node.upgrade() else { return };
        if *node.stopping.borrow() {
            return;
        }
        let db = node.host.get(&link.database);
        let primary = db
            .as_ref()
            .is_some_and(|d| d.identity().role == Role::Primary);
        if let (true, Some(db)) = (primary, db.clone()) {
            primary_tick(&node, &link, db).await;
            drop(node);
            tokio::time::sleep(Duration::from_millis(HEARTBEAT_MS)).await;
        } else {
            let pause = mirror_step(&node, &link, db).await;
            drop(node);
            if pause {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(e.to_string()))
}

/// The primary's round: heartbeat to the witness (the lease), the synchronization state, the
/// mirror's journal cursor.
async fn primary_tick(node: &NodeState, link: &Arc<Link>, db: Database) {
    let errors_before = link.st().errors;
    let gate = db.gate();
    let witness = witness_of(node);
    let sync_mode = link.partnership.mode == Mode::Sync;
    gate.require_lease(witness.is_some() && sync_mode);
    let id = db.identity();
    if !lease_may_renew(link, &db) {
        // The lease ran out: the share says whether another site made a copy primary at a
        // newer epoch meanwhile, before the mirror or the witness renews it.
        if let Some((_, reason)) =
            crate::epoch_mark::newer_elsewhere(node, &link.database, id.epoch).await
        {
            crate::standby::step_down(node, &link.database, &db, &reason).await;
            return;
        }
        link.st().lease_checked = true;
    }
    if let Some(w) = &witness {
        let req = WitnessRequest::Heartbeat {
            database: link.database.clone(),
            node: node.name.clone(),
            database_id: id.database_id.to_hex(),
            epoch: id.epoch,
        };
        match node.client.witness(&w.address, &req).await {
            Ok(a) if a.verdict == Verdict::Ok => {
                if lease_may_renew(link, &db) {
                    gate.renew_lease(Instant::now() + Duration::from_millis(LEASE_MS));
                }
                let mut st = link.st();
                st.witness_heard = Some(Instant::now());
                if let Some(r) = &a.record {
                    st.witness_synchronized = Some(r.synchronized);
                    // A witness that lost its state (or a new one) knows no synchronized
                    // mirror: it is told again below, once the mirror has every answer.
                    if !r.synchronized {
                        st.synchronized = false;
                    }
                }
            }
            Ok(a) => {
                let reason = a.reason.unwrap_or_else(|| "fenced by the witness".into());
                demote(&db, link, &reason).await;
                return;
            }
            Err(e) => link.error(format!("witness: {e}")),
        }
    }
    let (alive, hardened, synchronized, from) = {
        let st = link.st();
        (
            st.last_pull
                .is_some_and(|t| t.elapsed() < Duration::from_millis(MIRROR_TIMEOUT_MS)),
            st.hardened,
            st.synchronized,
            st.synchronizing_from,
        )
    };
    let (stalled_now, stalled_at) = {
        let mut st = link.st();
        if hardened >= id.lsn {
            st.behind = None;
        } else if st.behind.is_none_or(|(_, h)| h != hardened) {
            st.behind = Some((Instant::now(), hardened));
        }
        let stalled_now = st
            .behind
            .is_some_and(|(t, _)| t.elapsed() > Duration::from_millis(MIRROR_STALL_MS));
        (stalled_now, st.stalled)
    };
    if sync_mode {
        // Answers wait for the mirror (a round set it, or the node started so).
        let waiting = gate.status().sync;
        let close = hardened + SYNC_CATCH_UP_RECORDS >= id.lsn;
        if alive && !stalled_now && (from.is_some() || close || !waiting) {
            if from.is_none() && close && stalled_at.is_none_or(|at| hardened > at) {
                // From here on answers wait for the mirror; the witness hears "synchronized"
                // once the mirror has what was answered before.
                gate.set_sync(true, hardened);
                let mut st = link.st();
                st.synchronizing_from = Some(db.identity().lsn);
                st.stalled = None;
            } else if let Some(from) = from
                && !synchronized
                && hardened >= from
                && tell_witness(node, link, &db, witness.as_ref(), true).await
            {
                tracing::info!(database = %link.database, mirror = %link.partnership.partner, "mirror synchronized");
                link.st().synchronized = true;
            }
        } else if from.is_some() || waiting {
            // The mirror is gone, takes nothing, or (at a start) is far behind: tell the
            // witness before answering anything it lacks — unless its answer this round said
            // it knows.
            let known = witness.is_none() || link.st().witness_synchronized == Some(false);
            // Before answering without the mirror, the share says whether another site made a
            // copy primary at a newer epoch meanwhile: a site frozen (SIGSTOP, a hung host)
            // while its database failed over wakes with its mirror silent and its own witness
            // willing — and answered the posts queued at its chat node, which the failback then
            // dropped (until session 34), in the milliseconds before its fence read the mark.
            let epoch = db.identity().epoch;
            if let Some((_, reason)) =
                crate::epoch_mark::newer_elsewhere(node, &link.database, epoch).await
            {
                crate::standby::step_down(node, &link.database, &db, &reason).await;
                return;
            }
            if known || tell_witness(node, link, &db, witness.as_ref(), false).await {
                if stalled_now {
                    tracing::warn!(database = %link.database, mirror = %link.partnership.partner, hardened, "mirror stalled (it pulls and hardens nothing): serving unprotected");
                    link.error(format!(
                        "{} hardened nothing past LSN {hardened} for {} s while answers waited \
                         (its status says why): serving without it until it does",
                        link.partnership.partner,
                        MIRROR_STALL_MS / 1000
                    ));
                } else if synchronized {
                    tracing::warn!(database = %link.database, mirror = %link.partnership.partner, "mirror lost: serving unprotected");
                }
                gate.set_sync(false, 0);
                let mut st = link.st();
                st.synchronized = false;
                st.synchronizing_from = None;
                if stalled_now {
                    st.stalled = Some(hardened);
                }
            }
        }
    }
    // A disk that refuses writes here (commits that keep failing: full, failing), stops
    // answering (a write or an fsync in progress for long) or holds damaged pages while the
    // mirror has every record:
    // the mirror takes over, as in a planned failover, and nothing acknowledged is lost; this
    // copy, fenced, becomes its mirror once its disk takes writes again.
    let (ready, tried) = {
        let st = link.st();
        (
            witness.is_some() && sync_mode && alive && st.synchronized,
            st.handover_tried,
        )
    };
    if let Some(why) = disk_fails(&db, ready, tried) {
        link.st().handover_tried = Some(Instant::now());
        tracing::error!(database = %link.database, mirror = %link.partnership.partner, why, "handing over to the mirror");
        match hand_over(node, link, &db, &why, false).await {
            Ok(_) => return,
            Err(e) => link.error(format!(
                "{why}, and handing over to {} failed: {}",
                link.partnership.partner, e.message
            )),
        }
    }
    let due = link
        .st()
        .consumer_moved
        .is_none_or(|t| t.elapsed() > Duration::from_millis(CONSUMER_EVERY_MS));
    let moving = &link.consumer_moving;
    if due && !moving.load(Ordering::Acquire) {
        link.st().consumer_moved = Some(Instant::now());
        let keep = node.topology.mirroring.journal_records_max;
        let d = db.clone();
        // A write through the writer, not awaited here: a disk that stops answering must not
        // stop the heartbeats and the checks above. One move at a time; it reports its error.
        moving.store(true, Ordering::Release);
        let l = link.clone();
        tokio::spawn(async move {
            if let Err(e) = blocking(move || move_consumer(&d, hardened, keep)).await {
                l.error(format!("mirror journal cursor: {e}"));
            }
            l.consumer_moving.store(false, Ordering::Release);
        });
        // Every check of a tick ran (the cursor's move once a second): none failed, and the
        // mirror takes what it is sent, so an older error is history.
        let mut st = link.st();
        if st.errors == errors_before && st.stalled.is_none() {
            st.last_error = None;
        }
    }
}

/// A disk operation in progress this long means the disk stopped answering: twice the time a
/// silent primary is waited for, so that a disk's hiccup of a second does not move the primary
/// (the write in progress then diverges this copy from the new primary, which reseeds it).
const IO_STALL_HANDOVER_MS: i64 = 2 * FAILOVER_MS as i64;

/// Whether a primary hands over to its mirror now because of its disk, and why: its copy is
/// damaged (a scrub, a read or a write met damaged pages: the mirror's own pages are sound, and
/// this copy is then made again from them), commits have failed for `FAILOVER_MS` (as long as
/// a primary that stopped answering is waited for), or a write or fsync has been in progress
/// for `IO_STALL_HANDOVER_MS` — with a synchronized mirror (`mirror_ready`: and a witness), and
/// no attempt in the last `FAILOVER_MS`.
fn disk_fails(db: &Database, mirror_ready: bool, tried: Option<Instant>) -> Option<String> {
    if !mirror_ready || tried.is_some_and(|t| t.elapsed() < Duration::from_millis(FAILOVER_MS)) {
        return None;
    }
    if let Some(damage) = db.damage() {
        return Some(format!("the copy is damaged here ({damage})"));
    }
    if let Some(f) = db.commit_failure()
        && f.age_ms() >= FAILOVER_MS as i64
    {
        return Some(format!(
            "commits failed here for {:.1} s ({})",
            f.age_ms() as f64 / 1000.0,
            f.error
        ));
    }
    db.io_stall()
        .filter(|s| s.age_ms() >= IO_STALL_HANDOVER_MS)
        .map(|s| {
            format!(
                "the disk has not answered here for {:.1} s ({} in progress)",
                s.age_ms() as f64 / 1000.0,
                s.what
            )
        })
}

/// The mirror's journal cursor: at what it hardened, but never keeping more than `keep`
/// records for it.
/// Whether `db`'s journal has a cursor named `name` (one registered meanwhile by another
/// task — a seed and the primary's tick register the mirror's — included).
fn has_consumer(db: &Database, name: &str) -> bool {
    db.consumers()
        .is_ok_and(|c| c.iter().any(|c| c.name == name))
}

fn move_consumer(db: &Database, hardened: Lsn, keep: u64) -> Result<(), String> {
    let lsn = db.identity().lsn;
    let target = hardened.max(lsn.saturating_sub(keep)).min(lsn);
    let consumers = db.consumers().map_err(|e| e.to_string())?;
    match consumers.iter().find(|c| c.name == MIRROR_CONSUMER) {
        None => match db.register_consumer(MIRROR_CONSUMER, target) {
            // A seed of the mirror registered it meanwhile: it moves on the next round.
            Err(_) if has_consumer(db, MIRROR_CONSUMER) => Ok(()),
            r => r.map_err(|e| e.to_string()),
        },
        Some(c) if c.lsn < target => db
            .advance_consumer(MIRROR_CONSUMER, target)
            .map_err(|e| e.to_string()),
        Some(_) => Ok(()),
    }
}

/// Tells the witness whether the mirror is synchronized; true once it agreed. A witness that
/// names another primary fences this copy.
async fn tell_witness(
    node: &NodeState,
    link: &Link,
    db: &Database,
    witness: Option<&tandem_topology::Node>,
    synchronized: bool,
) -> bool {
    let Some(w) = witness else { return true };
    let req = WitnessRequest::Synchronized {
        database: link.database.clone(),
        node: node.name.clone(),
        epoch: db.identity().epoch,
        synchronized,
    };
    match node.client.witness(&w.address, &req).await {
        Ok(a) if a.verdict == Verdict::Ok => {
            let mut st = link.st();
            st.witness_heard = Some(Instant::now());
            st.witness_synchronized = Some(synchronized);
            true
        }
        Ok(a) => {
            demote(db, link, &a.reason.unwrap_or_default()).await;
            false
        }
        Err(e) => {
            link.error(format!("witness: {e}"));
            false
        }
    }
}

/// This copy learned that another is primary of a newer epoch: it stops at once (answers held
/// for the mirror fail: they were never acknowledged) and becomes a mirror.
async fn demote(db: &Database, link: &Link, reason: &str) {
    tracing::warn!(database = %link.database, reason, "fenced: this copy is no longer primary");
    db.gate().fence(reason);
    let fresh = || LinkState {
        last_contact: Some(Instant::now()),
        ..LinkState::default()
    };
    // The primary side's state goes with the fence, before the role change (which waits for
    // the writer): status never shows a fenced copy as synchronized.
    *link.st() = fresh();
    let d = db.clone();
    let changed = blocking(move || d.set_role(Role::Mirror).map_err(|e| e.to_string())).await;
    // And again after it: whatever the primary side set meanwhile (a pull served during the
    // role change) does not carry over to the mirror.
    *link.st() = fresh();
    if let Err(e) = changed {
        link.error(format!("demote: {e}"));
    }
}

/// One pull of the mirror. Returns true when the caller should pause before the next.
async fn mirror_step(node: &NodeState, link: &Link, db: Option<Database>) -> bool {
    let Some(partner) = node.topology.node(&link.partnership.partner).cloned() else {
        link.error(format!(
            "no node {} in the topology",
            link.partnership.partner
        ));
        return true;
    };
    if let Some(d) = db.clone()
        && d.identity().role == Role::Restoring
    {
        // A copy left restoring (its mirroring was removed) mirrors again.
        if let Err(e) = blocking(move || d.set_role(Role::Mirror).map_err(|e| e.to_string())).await
        {
            link.error(format!("role: {e}"));
            return true;
        }
    }
    if let Some(damage) = db.as_ref().and_then(|d| d.damage()) {
        // Scrubbing found it damaged: made again from the primary, which holds the sound pages.
        drop(db);
        reseed_or_retry(
            node,
            link,
            &partner,
            &format!("the copy is damaged: {damage}"),
        )
        .await;
        return true;
    }
    let req = PullRequest {
        copy: db.as_ref().map(CopyPosition::of),
        hardened: db
            .as_ref()
            .map(|d| d.durable_lsn().min(d.identity().lsn))
            .unwrap_or(0),
    };
    let pull = node
        .client
        .pull(&partner.address, &link.database, &req, PULL_WAIT_MS);
    tokio::pin!(pull);
    // A primary that accepts the pull and does not answer (stopped, hung) holds it up to the
    // request's deadline, 5 s: meanwhile, once it has been silent `FAILOVER_MS`, the witness is
    // asked (it grants a takeover only when the primary is silent to it too). Until session
    // 32 a stopped primary was taken over from after 5.4 s, a killed one after 1.5 s.
    let answer = loop {
        tokio::select! {
            a = &mut pull => break a,
            _ = tokio::time::sleep(Duration::from_millis(FAILOVER_MS)) => {
                maybe_take_over(node, link, db.as_ref()).await;
                if db.as_ref().is_some_and(|d| d.identity().role == Role::Primary) {
                    return true;
                }
            }
        }
    };
    match answer {
        Ok(PullAnswer::Records {
            epoch,
            lsn,
            batch,
            kept_from,
        }) => {
            let retain = {
                let mut st = link.st();
                st.last_contact = Some(Instant::now());
                st.primary_lsn = lsn;
                st.primary_epoch = epoch;
                st.reseeding = None;
                st.reseed_failed = None;
                retention_due(&mut st.retained)
            };
            let Some(db) = db else { return true };
            if retain && let Err(e) = retain_like_primary(&db, kept_from).await {
                link.error(e);
            }
            if db.identity().role == Role::Standby {
                // A copy that stepped down to follow another site's primary mirrors its
                // partner again once the partner is primary.
                let d = db.clone();
                if let Err(e) =
                    blocking(move || d.set_role(Role::Mirror).map_err(|e| e.to_string())).await
                {
                    link.error(format!("role: {e}"));
                    return true;
                }
            }
            if batch.records.is_empty() {
                link.st().caught_up = db.identity().lsn >= lsn;
                return false;
            }
            let d = db.clone();
            // Committed here, then fsynced while the next batch is pulled; the reporter tells
            // the primary once it is durable.
            match blocking(move || d.apply_pipelined(batch).map_err(|e| e.to_string())).await {
                Ok(_) => {
                    let mut st = link.st();
                    st.last_error = None;
                    st.apply_failed = None;
                    st.caught_up = db.identity().lsn >= lsn;
                    false
                }
                Err(e) => {
                    let mut st = link.st();
                    if st.apply_failed.is_none() {
                        tracing::warn!(database = %link.database, error = %e, "mirror cannot apply; retrying");
                    }
                    st.caught_up = false;
                    st.apply_failed = Some(e.clone());
                    st.last_error = Some(format!("apply: {e}"));
                    true
                }
            }
        }
        Ok(PullAnswer::Reseed { reason }) => {
            {
                let mut st = link.st();
                st.last_contact = Some(Instant::now());
                st.caught_up = false;
            }
            // The copy is replaced only once every handle on it is closed, this one first.
            drop(db);
            reseed_or_retry(node, link, &partner, &reason).await;
            true
        }
        Ok(PullAnswer::NotPrimary { .. }) | Ok(PullAnswer::Fenced { .. }) => {
            // The partner answers but does not write: maybe this copy was named primary.
            maybe_take_over(node, link, db.as_ref()).await;
            true
        }
        Err(e) => {
            link.error(format!("{}: {e}", partner.name));
            maybe_take_over(node, link, db.as_ref()).await;
            true
        }
    }
}

/// Asks the witness to make this copy primary when the primary has been silent past
/// `FAILOVER_MS`; the witness grants it only to a synchronized mirror (or already did, for a
/// planned failover whose last message was lost).
async fn maybe_take_over(node: &NodeState, link: &Link, db: Option<&Database>) {
    let Some(db) = db else { return };
    if link.partnership.mode != Mode::Sync {
        return;
    }
    let silent = link
        .st()
        .last_contact
        .is_none_or(|t| t.elapsed() >= Duration::from_millis(FAILOVER_MS));
    if !silent {
        return;
    }
    let Some(w) = witness_of(node) else { return };
    let id = db.identity();
    // A mirror that had every record of its primary mirrors that primary's epoch, even when
    // no record of that epoch reached it yet (a failover, then no write): its copy's own
    // epoch is still the one before, which the witness would refuse.
    let epoch = {
        let st = link.st();
        if st.caught_up && id.lsn >= st.primary_lsn {
            id.epoch.max(st.primary_epoch)
        } else {
            id.epoch
        }
    };
    // A copy of another site was made primary while this site was away (a chat failover, a
    // forced CMS failover): this site's history is the older one, and a takeover here would
    // make a second primary — whose writes the failback drops (a restarted site took writes so
    // for a second, until its fence read the same mark).
    if let Some((_, reason)) = crate::epoch_mark::newer_elsewhere(node, &link.database, epoch).await
    {
        link.st().last_error = Some(format!("no failover: {reason}"));
        return;
    }
    let req = WitnessRequest::Failover {
        database: link.database.clone(),
        node: node.name.clone(),
        database_id: id.database_id.to_hex(),
        epoch,
    };
    let answer = match node.client.witness(&w.address, &req).await {
        Ok(a) => a,
        Err(e) => {
            link.error(format!("witness: {e}"));
            return;
        }
    };
    link.st().witness_heard = Some(Instant::now());
    match (answer.verdict, answer.record) {
        (Verdict::Ok, Some(r)) if r.primary == node.name && r.epoch > id.epoch => {
            promote(node, link, db, r.epoch, false).await;
        }
        (_, _) => {
            if let Some(reason) = answer.reason {
                link.st().last_error = Some(format!("no failover: {reason}"));
            }
        }
    }
}

/// Makes this copy the primary of `epoch` (the witness recorded it first). With
/// `old_primary_follows` (a planned failover) answers wait for the old primary from the first
/// write (`expect_old_primary`).
async fn promote(
    node: &NodeState,
    link: &Link,
    db: &Database,
    epoch: u64,
    old_primary_follows: bool,
) {
    let (d, topology, name) = (db.clone(), node.topology.clone(), link.database.clone());
    let r = blocking(move || {
        if d.identity().role != Role::Primary {
            take_over(&d, epoch, old_primary_follows)?;
        }
        crate::db_host::prepare(&d, &name, &topology)
    })
    .await;
    match r {
        Ok(()) => {
            tracing::warn!(database = %link.database, epoch, "took over as primary");
            db.gate().require_lease(true);
            db.gate()
                .renew_lease(Instant::now() + Duration::from_millis(LEASE_MS));
            // The former primary had every record up to the takeover (more, diverged, when
            // some were never acknowledged): its cursor keeps the journal from there.
            *link.st() = LinkState {
                hardened: takeover_lsn(db),
                ..LinkState::default()
            };
            if old_primary_follows {
                expect_old_primary(link, db);
            }
        }
        Err(e) => link.error(format!("recover: {e}")),
    }
}

/// The LSN this primary took over at: the last record of the epochs before its own, the last
/// one the copy it took over from surely has too.
fn takeover_lsn(db: &Database) -> Lsn {
    let id = db.identity();
    id.position()
        .history
        .0
        .last()
        .map_or(id.lsn, |e| e.first_lsn.saturating_sub(1))
        .min(id.lsn)
}

/// The store's part of a takeover: this copy becomes primary of `epoch`, and — before a write
/// can follow — its journal keeps every record after the takeover for the former primary
/// (the mirror's cursor at the takeover LSN), which then catches up from it when it comes back
/// rather than being reseeded; and with `old_primary_follows` answers wait for it. The cursor
/// moves on as any mirror's (`move_consumer`): with what the former primary hardens, and past
/// `journal_records_max` records kept for it should it not come back.
fn take_over(db: &Database, epoch: u64, old_primary_follows: bool) -> Result<(), String> {
    let at = db.identity().lsn;
    db.recover(Some(epoch)).map_err(|e| e.to_string())?;
    if old_primary_follows {
        db.gate().set_sync(true, at);
    }
    debug_assert_eq!(takeover_lsn(db), at);
    // A copy that followed a primary has no cursor but its upstream's (gone with the
    // recover): any other consumer registered from now on, a standby's or log shipping's,
    // would otherwise be alone to say what the journal keeps. Should this fail, the takeover
    // stands: the primary's round registers the cursor (where the bound allows).
    let kept = db
        .consumers()
        .and_then(|c| match c.iter().find(|c| c.name == MIRROR_CONSUMER) {
            Some(c) if c.lsn <= at => Ok(()),
            Some(_) => db
                .remove_consumer(MIRROR_CONSUMER)
                .and_then(|_| db.register_consumer(MIRROR_CONSUMER, at)),
            None => db.register_consumer(MIRROR_CONSUMER, at),
        });
    if let Err(e) = kept {
        tracing::warn!(error = %e, at, "the journal is not kept from the takeover for the former primary");
    }
    Ok(())
}

/// A primary promoted by a planned failover: the old primary, with every record up to this
/// copy's LSN, follows as its mirror at once. Answers wait for it from the first write, as they
/// waited for this copy before — so that an acknowledged write survives the loss of either copy
/// across the failover too (else the new primary answered alone until the old one's first pull
/// and its round's "synchronizing"). Counted as just heard from: should it not pull within
/// `MIRROR_TIMEOUT_MS`, the round tells the witness and serves without it, as for a lost mirror.
/// What the old primary holds is what this copy held when it took over: the writes answered
/// since (before this ran) are not counted as its (until session 33 they were, so they were
/// answered alone and the journal let go of what the old primary lacked).
fn expect_old_primary(link: &Link, db: &Database) {
    let at = takeover_lsn(db);
    let mut st = link.st();
    st.last_pull = Some(Instant::now());
    st.hardened = st.hardened.max(at);
    db.gate().set_sync(true, at);
}

/// Replaces this node's copy by one restored from a full backup streamed by the primary:
/// `reseed`, once the wait after the last failed one is over (`ReseedRetry`). A failure is
/// noted (the status says it and why) and logged when it says something new.
async fn reseed_or_retry(
    node: &NodeState,
    link: &Link,
    partner: &tandem_topology::Node,
    reason: &str,
) {
    let last = link.st().reseed_failed.clone();
    if !ReseedRetry::due(last.as_ref()) {
        return;
    }
    if last.is_none() {
        tracing::warn!(database = %link.database, from = %partner.name, reason, "reseeding the copy");
    }
    match reseed(node, link, partner, reason).await {
        Ok(()) => link.st().reseed_failed = None,
        Err(e) => {
            let retry = ReseedRetry::failed(last.as_ref(), &e, &link.database);
            let mut st = link.st();
            st.reseed_failed = Some(retry);
            st.reseeding = None;
            st.last_error = Some(format!("reseed: {e}"));
            st.errors += 1;
        }
    }
}

async fn reseed(
    node: &NodeState,
    link: &Link,
    partner: &tandem_topology::Node,
    reason: &str,
) -> Result<(), String> {
    // One replacement of the copy at a time (a restore, a standby's or a secondary's seed hold
    // the same lock): the second would replace what the first just put in place.
    let ops = node.host.operations(&link.database);
    let _one = ops.lock().await;
    // Whatever held the lock may have removed this link, or made the copy a primary (a restore
    // in a failback): neither is replaced by a seed.
    let current = node
        .mirroring
        .link(&link.database)
        .is_some_and(|l| std::ptr::eq(Arc::as_ptr(&l), link));
    if !current {
        return Err("not reseeded: mirroring of this copy was removed meanwhile".into());
    }
    if node
        .host
        .get(&link.database)
        .is_some_and(|d| d.identity().role == Role::Primary)
    {
        return Err("not reseeded: the copy was made primary meanwhile".into());
    }
    link.st().reseeding = Some(format!("downloading: {reason}"));
    seed_copy(node, &link.database, partner, Role::Mirror, reason).await?;
    link.st().reseeding = None;
    Ok(())
}

/// Replaces this node's copy of `database` by one restored from a full backup that `source`
/// (its primary) streams, left in `role` (mirror or standby). The old copy's handle is put away
/// first, and the restore puts the new copy in its place once the old one's last users closed
/// it (`restore_new`). The caller holds the copy's operations lock, and no handle on the copy.
pub(crate) async fn seed_copy(
    node: &NodeState,
    database: &str,
    source: &tandem_topology::Node,
    role: Role,
    reason: &str,
) -> Result<(), String> {
    tracing::debug!(database, from = %source.name, reason, role = %role, "seeding the copy");
    let dir = node.host.dir().join(".seed");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let file = dir.join(format!("{database}.tfb"));
    let started = Instant::now();
    let bytes = node
        .client
        .seed(&source.address, database, &file)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(
        database,
        bytes,
        ms = started.elapsed().as_millis() as u64,
        "seed backup received; restoring"
    );
    let (target, name, topology) = (
        node.host.path_of(database),
        database.to_string(),
        node.topology.clone(),
    );
    node.host.replace(database, None);
    let f = file.clone();
    let db = blocking(move || {
        let options = tandem_store::RestoreOptions {
            recovery: tandem_store::Recovery::NoRecovery,
            ..Default::default()
        };
        tandem_store::restore_new(&target, std::slice::from_ref(&f), &options, true)
            .map_err(|e| e.to_string())?;
        let db =
            Database::open(&target, tandem_store::Options::default()).map_err(|e| e.to_string())?;
        db.set_role(role).map_err(|e| e.to_string())?;
        crate::db_host::prepare(&db, &name, &topology)?;
        Ok(db)
    })
    .await;
    let _ = std::fs::remove_file(&file);
    let db = db?;
    let id = db.identity();
    tracing::info!(
        database,
        lsn = id.lsn,
        epoch = id.epoch,
        ms = started.elapsed().as_millis() as u64,
        "copy reseeded"
    );
    node.host.replace(database, Some(db));
    Ok(())
}

// ---- the internal API ----

#[derive(Deserialize)]
pub(crate) struct PullQuery {
    #[serde(default)]
    wait_ms: u64,
}

fn peer(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get(crate::client::NODE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn linked(node: &NodeState, database: &str, from: Option<&str>) -> Result<Arc<Link>, ApiError> {
    let link = node.mirroring.link(database).ok_or_else(|| {
        ApiError::conflict(format!("node {} does not mirror {database}", node.name))
    })?;
    if from.is_some_and(|f| f != link.partnership.partner) {
        return Err(ApiError::conflict(format!(
            "{database} on {} is mirrored with {}, not {}",
            node.name,
            link.partnership.partner,
            from.unwrap_or_default()
        )));
    }
    Ok(link)
}

/// `POST /internal/v1/mirroring/{db}/pull`: the mirror's position in, records out (binary).
pub(crate) async fn serve_pull_route(
    State(node): State<Shared>,
    Path(database): Path<String>,
    Query(q): Query<PullQuery>,
    headers: axum::http::HeaderMap,
    body: Result<Object<PullRequest>, BodyRejection>,
) -> Result<Response, ApiError> {
    let Object(req) = body.map_err(ApiError::json)?;
    let from = peer(&headers);
    // The mirror (its link), or a standby: a node the topology places a copy of `database` on.
    let link = match (node.mirroring.link(&database), from.as_deref()) {
        (Some(l), Some(f)) if l.partnership.partner == f => Some(l),
        (_, Some(f)) if crate::standby::places(&node.topology, &database, f) => None,
        _ => Some(linked(&node, &database, from.as_deref())?),
    };
    let db = node.host.get(&database).ok_or_else(|| {
        ApiError::not_found(format!("node {} holds no copy of {database}", node.name))
    })?;
    let seen = |db: &Database| match &link {
        Some(l) => on_pull(l, db, &req),
        None => node
            .standby
            .seen(&database, from.as_deref().unwrap_or_default(), &req),
    };
    let caught_up = req
        .copy
        .as_ref()
        .is_some_and(|c| c.position.lsn >= db.identity().lsn);
    if caught_up && db.identity().role == Role::Primary {
        let mut committed = db.subscribe_committed();
        committed.borrow_and_update();
        let mut stopping = node.stopping.clone();
        let wait = Duration::from_millis(q.wait_ms.min(PULL_WAIT_MS * 4));
        // Tell the gate what the mirror hardened before waiting for more — a copy with this
        // primary's records only: a former primary with records it never had (diverged, to be
        // reseeded) hardened none of this primary's, and its cursor must not move past them.
        let id = db.identity();
        if req
            .copy
            .as_ref()
            .is_some_and(|c| c.position.lsn == id.lsn && c.position.chain == id.chain)
        {
            seen(&db);
        }
        tokio::select! {
            _ = committed.changed() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = stopping.wait_for(|s| *s) => {}
        }
    }
    let d = db.clone();
    let r = req.clone();
    let answer = blocking(move || serve_pull(&d, &r).map_err(|e| e.to_string()))
        .await
        .map_err(ApiError::unavailable)?;
    // A copy that is no longer primary was fenced already: the newer copy's every pull says
    // so again, and changes nothing.
    let primary = db.identity().role == Role::Primary;
    match (&answer, &link) {
        (PullAnswer::Records { .. }, _) => seen(&db),
        (PullAnswer::Fenced { .. }, _) if !primary => {}
        (PullAnswer::Fenced { epoch }, Some(link)) => {
            let reason = format!("the mirror holds epoch {epoch}, newer than this copy's");
            demote(&db, link, &reason).await;
        }
        (PullAnswer::Fenced { epoch }, None) => {
            let reason = format!(
                "{} holds epoch {epoch}, newer than this copy's",
                from.as_deref().unwrap_or("a copy")
            );
            crate::standby::step_down(&node, &database, &db, &reason).await;
        }
        _ => {}
    }
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        tandem_store::replication::encode_answer(&answer),
    )
        .into_response())
}

/// `POST /internal/v1/mirroring/{db}/hardened`, on the primary: its mirror's report.
pub(crate) async fn hardened_route(
    State(node): State<Shared>,
    Path(database): Path<String>,
    headers: axum::http::HeaderMap,
    body: Result<Object<HardenedReport>, BodyRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Object(report) = body.map_err(ApiError::json)?;
    let from = peer(&headers);
    let link = linked(&node, &database, from.as_deref())?;
    let db = node.host.get(&database).ok_or_else(|| {
        ApiError::not_found(format!("node {} holds no copy of {database}", node.name))
    })?;
    let me = db.identity();
    if me.role != Role::Primary
        || report.database_id != me.database_id.to_hex()
        || report.epoch != me.epoch
    {
        // Not this primary's mirror any more (a failover, a reseed): its pulls sort it out.
        return Ok(Json(serde_json::json!({ "taken": false })));
    }
    heard_from_mirror(&link, &db, report.hardened.min(me.lsn));
    Ok(Json(serde_json::json!({ "taken": true })))
}

/// The primary heard from its mirror: what it hardened, and a lease.
fn on_pull(link: &Link, db: &Database, req: &PullRequest) {
    let hardened = req
        .hardened
        .min(req.copy.as_ref().map(|c| c.position.lsn).unwrap_or(0));
    heard_from_mirror(link, db, hardened);
}

fn heard_from_mirror(link: &Link, db: &Database, hardened: Lsn) {
    {
        let mut st = link.st();
        st.last_pull = Some(Instant::now());
        st.hardened = st.hardened.max(hardened);
    }
    db.gate().hardened(hardened);
    if db.identity().role == Role::Primary && lease_may_renew(link, db) {
        db.gate()
            .renew_lease(Instant::now() + Duration::from_millis(LEASE_MS));
    }
}

/// Whether the primary's lease may be renewed now: while it runs, or once the share was read
/// since it ran out. A primary whose lease ran out (a node frozen — SIGSTOP, a hung host —
/// longer than the lease) may wake after its database failed over to another site: its mirror
/// and its witness, frozen with it, renewed the lease at once and the posts queued at its chat
/// node were answered, then dropped by the failback (until session 34). `primary_tick` reads
/// the share's epoch mark first.
fn lease_may_renew(link: &Link, db: &Database) -> bool {
    let running = db.gate().lease_running();
    let mut st = link.st();
    if running {
        // The next time it runs out, the share is read again.
        st.lease_checked = false;
        return true;
    }
    st.lease_checked
}

/// `GET /internal/v1/mirroring/{db}/seed`: a full backup of the primary, streamed.
pub(crate) async fn serve_seed(
    State(node): State<Shared>,
    Path(database): Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let from = peer(&headers);
    let partner = node
        .mirroring
        .link(&database)
        .map(|l| l.partner().to_string());
    // The cursor that keeps, for the copy made from this backup, the journal that follows it:
    // the mirror's, or the standby's (a copy in another site). Without it the journal may be
    // pruned past the backup before the new copy first pulls, and it is reseeded again.
    let consumer = match from.as_deref() {
        Some(f)
            if partner.as_deref() != Some(f)
                && crate::standby::places(&node.topology, &database, f) =>
        {
            crate::standby::consumer_name(f)
        }
        _ => {
            linked(&node, &database, from.as_deref())?;
            MIRROR_CONSUMER.to_string()
        }
    };
    let db = node.host.get(&database).ok_or_else(|| {
        ApiError::not_found(format!("node {} holds no copy of {database}", node.name))
    })?;
    if db.identity().role != Role::Primary {
        return Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "not_primary",
            format!("{database} on {} is not primary", node.name),
        ));
    }
    // The snapshot the seed is read from takes room here while it streams (never a backup
    // file beside it): refused when that would leave less than `SEED_KEEP_FREE_BYTES`.
    let dir = node.host.dir().join(".seed-out").join(&database);
    let d = db.clone();
    let name = node.name.clone();
    let db_name = database.clone();
    let mut stream = blocking(move || {
        // The journal keeps, for the new copy, what follows the backup (a cursor registered
        // before is at or before the snapshot: it keeps that too).
        if !has_consumer(&d, &consumer)
            && let Err(e) = d.register_consumer(&consumer, d.identity().lsn)
            && !has_consumer(&d, &consumer)
        {
            return Err(e.to_string());
        }
        tandem_store::seed_stream(&d, &dir, SEED_KEEP_FREE_BYTES).map_err(|e| match e {
            tandem_store::StoreError::NoSpace { .. } => format!(
                "{name} has no room for a seed of {db_name}: {e}; not seeded (a seed never \
                 takes the room the primary's commits need) — free space on {name}'s disk"
            ),
            e => format!("a seed of {db_name} on {name}: {e}"),
        })
    })
    .await
    .map_err(|e| ApiError::new(axum::http::StatusCode::INSUFFICIENT_STORAGE, "no_space", e))?;
    tracing::info!(
        database,
        lsn = stream.header().lsn,
        bytes = stream.header().payload_bytes,
        "streaming a seed backup"
    );
    // Read by a blocking thread, a few pieces ahead of the connection; it stops once the
    // receiver goes (the peer hung up), and the snapshot's room is freed with the stream.
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(SEED_CHUNKS_AHEAD);
    tokio::task::spawn_blocking(move || {
        loop {
            let piece = match stream.next_chunk() {
                Ok(Some(piece)) => Ok(piece),
                Ok(None) => return,
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            let failed = piece.is_err();
            if tx.blocking_send(piece).is_err() || failed {
                return;
            }
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|piece| (piece, rx))
    });
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(body),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Install {
    partner: String,
    #[serde(default = "default_mode")]
    mode: Mode,
}

fn default_mode() -> Mode {
    Mode::Sync
}

/// `PUT /internal/v1/mirroring/{db}`: mirror `db` with `partner` from now on.
pub(crate) async fn install(
    State(node): State<Shared>,
    Path(database): Path<String>,
    body: Result<Object<Install>, BodyRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Object(req) = body.map_err(ApiError::json)?;
    let partner = node.topology.node(&req.partner).ok_or_else(|| {
        ApiError::bad_request(format!("the topology has no node named {}", req.partner))
    })?;
    if partner.name == node.name {
        return Err(ApiError::bad_request("a copy cannot mirror itself"));
    }
    if !partner.has(tandem_topology::Role::Db) {
        return Err(ApiError::bad_request(format!(
            "{} is not a db node",
            partner.name
        )));
    }
    if node.topology.site_of(&partner.name) != Some(node.me().site.as_str()) {
        return Err(ApiError::bad_request(format!(
            "{} is in another site than {}: a mirror is in its primary's site",
            partner.name, node.name
        )));
    }
    let partnership = Partnership {
        partner: partner.name.clone(),
        mode: req.mode,
    };
    if let Some(existing) = node.mirroring.link(&database) {
        if existing.partnership == partnership {
            return Ok(Json(
                serde_json::json!({ "installed": false, "already": true }),
            ));
        }
        return Err(ApiError::conflict(format!(
            "{database} on {} is already mirrored with {}: remove that mirroring first",
            node.name, existing.partnership.partner
        )));
    }
    if node.host.get(&database).is_none() && node.host.hosted(&database).is_none() {
        node.host.replace(&database, None);
    }
    let link = new_link(database.clone(), partnership);
    node.mirroring
        .links
        .lock()
        .expect("links lock")
        .insert(database.clone(), link.clone());
    node.mirroring.save().map_err(ApiError::unavailable)?;
    spawn(&node, link);
    tracing::info!(database, partner = %req.partner, "mirroring installed");
    Ok(Json(serde_json::json!({ "installed": true })))
}

/// `DELETE /internal/v1/mirroring/{db}`: stop mirroring `db`. A primary serves on alone (no
/// lease, no witness record); a mirror copy stays, `restoring`, until reseeded or dropped.
pub(crate) async fn remove(
    State(node): State<Shared>,
    Path(database): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(link) = node
        .mirroring
        .links
        .lock()
        .expect("links lock")
        .remove(&database)
    else {
        return Ok(Json(serde_json::json!({ "removed": false })));
    };
    node.mirroring.save().map_err(ApiError::unavailable)?;
    for t in link.task.lock().expect("task lock").drain(..) {
        t.abort();
    }
    let mut role = None;
    if let Some(db) = node.host.get(&database) {
        let r = db.identity().role;
        role = Some(r.to_string());
        if r == Role::Primary {
            db.gate().set_sync(false, 0);
            db.gate().require_lease(false);
            let d = db.clone();
            let _ = blocking(move || {
                d.remove_consumer(MIRROR_CONSUMER)
                    .map_err(|e| e.to_string())
            })
            .await;
            if let Some(w) = witness_of(&node) {
                let _ = node
                    .client
                    .witness(
                        &w.address,
                        &WitnessRequest::Forget {
                            database: database.clone(),
                        },
                    )
                    .await;
            }
        } else if r == Role::Mirror {
            let d = db.clone();
            blocking(move || d.set_role(Role::Restoring).map_err(|e| e.to_string()))
                .await
                .map_err(ApiError::unavailable)?;
        }
    }
    tracing::info!(database, partner = %link.partnership.partner, "mirroring removed");
    Ok(Json(serde_json::json!({ "removed": true, "role": role })))
}

/// `POST /internal/v1/mirroring/{db}/failover` on the primary: planned, no loss. New writes
/// wait; once the mirror has every record the witness names it primary of the next epoch, it
/// recovers, and this copy becomes its mirror.
pub(crate) async fn planned_failover(
    State(node): State<Shared>,
    Path(database): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let link = linked(&node, &database, None)?;
    let db = node.host.get(&database).ok_or_else(|| {
        ApiError::not_found(format!("node {} holds no copy of {database}", node.name))
    })?;
    hand_over(&node, &link, &db, "planned failover", true)
        .await
        .map(Json)
}

/// The primary hands over to its mirror with nothing lost (`why` says why, in the reason the
/// copy is fenced with): a planned failover, or a disk that fails here (`disk_fails`). With
/// `follows` (a planned failover: this copy's disk is sound), this copy follows the new primary
/// as its mirror at once, and the new primary's answers wait for it from its first write.
async fn hand_over(
    node: &NodeState,
    link: &Link,
    db: &Database,
    why: &str,
    follows: bool,
) -> Result<serde_json::Value, ApiError> {
    let database = link.database.clone();
    let id = db.identity();
    if id.role != Role::Primary {
        return Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "not_primary",
            format!(
                "{database} on {} is {}: ask its primary",
                node.name, id.role
            ),
        ));
    }
    let partner = node
        .topology
        .node(&link.partnership.partner)
        .cloned()
        .ok_or_else(|| ApiError::unavailable("the partner is not in the topology"))?;
    // The mirror must be there to take over: its hardened LSN alone is as old as its last
    // pull (a mirror killed after it had everything would be handed a primary role it cannot
    // take, and the database left without a primary).
    let last_pull = link.st().last_pull;
    if last_pull.is_none_or(|t| t.elapsed() > Duration::from_millis(MIRROR_TIMEOUT_MS)) {
        return Err(ApiError::unavailable(format!(
            "the mirror on {} is not pulling (last heard from {}): a planned failover needs it; \
             {} serves on as primary — see {}'s copy in `tandem status` (down: `tandem up \
             --detach --nodes {}`; its disk not answering: it says so) and run it again",
            partner.name,
            last_pull.map_or("never since this node started".to_string(), |t| {
                format!("{:.1} s ago", t.elapsed().as_secs_f64())
            }),
            node.name,
            partner.name,
            partner.name
        )));
    }
    db.gate().pause_writes(Some(
        "a failover to the mirror is in progress: retry in a moment",
    ));
    let result = async {
        let deadline = Instant::now() + Duration::from_secs(30);
        let lsn = loop {
            let lsn = db.identity().lsn;
            if link.st().hardened >= lsn {
                // And it answers now, a mirror of this database at that LSN.
                let role = node
                    .client
                    .copy_role(&partner.address, &database, Duration::from_secs(2))
                    .await;
                match role {
                    Ok(r) if r.role == "mirror" && r.lsn >= lsn => break lsn,
                    Ok(r) => {
                        return Err(ApiError::unavailable(format!(
                            "{database} on {} is {} at LSN {}, not a mirror at LSN {lsn}: no \
                             planned failover to it; {} serves on as primary",
                            partner.name, r.role, r.lsn, node.name
                        )));
                    }
                    Err(e) => {
                        return Err(ApiError::unavailable(format!(
                            "the mirror on {} does not answer ({e}): a planned failover needs \
                             it; {} serves on as primary",
                            partner.name, node.name
                        )));
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(ApiError::unavailable(format!(
                    "the mirror on {} did not catch up within 30 s (it has LSN {}, the primary {lsn})",
                    partner.name,
                    link.st().hardened
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let epoch = match witness_of(node) {
            Some(w) => {
                let a = node
                    .client
                    .witness(
                        &w.address,
                        &WitnessRequest::Handover {
                            database: database.clone(),
                            node: node.name.clone(),
                            to: partner.name.clone(),
                            epoch: id.epoch,
                        },
                    )
                    .await
                    .map_err(|e| {
                        ApiError::unavailable(format!(
                            "the witness on {} did not record the handover ({e}): no failover; \
                             {} serves on as primary",
                            w.name, node.name
                        ))
                    })?;
                match (a.verdict, a.record) {
                    (Verdict::Ok, Some(r)) => r.epoch,
                    (_, _) => {
                        return Err(ApiError::conflict(format!(
                            "the witness refused the handover: {}",
                            a.reason.unwrap_or_default()
                        )));
                    }
                }
            }
            None => id.epoch + 1,
        };
        // From here the partner is primary of `epoch`: this copy takes no write (the fence, in
        // memory: a disk that stopped answering must not hold the partner back), the partner is
        // told, and this copy becomes a mirror (its role written to its disk).
        let reason = format!("{why} to {} (epoch {epoch})", partner.name);
        db.gate().fence(&reason);
        // The fence refuses every write from here; the pause would only say so twice.
        db.gate().pause_writes(None);
        let promoted: Result<serde_json::Value, _> = node
            .client
            .json(
                &partner.address,
                reqwest::Method::POST,
                &format!("/internal/v1/mirroring/{database}/promote"),
                Some(&serde_json::json!({ "epoch": epoch, "mirror_follows": follows })),
                Duration::from_secs(30),
            )
            .await;
        if let Err(e) = promoted {
            // The partner takes over on its own once it hears the witness named it.
            tracing::warn!(database, error = %e, "the new primary did not confirm; it will learn from the witness");
        }
        demote(db, link, &reason).await;
        Ok(serde_json::json!({
            "database": database,
            "old_primary": node.name,
            "new_primary": partner.name,
            "epoch": epoch,
            "lsn": lsn,
        }))
    }
    .await;
    db.gate().pause_writes(None);
    result
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Promote {
    epoch: u64,
    /// The old primary follows as the mirror at once (a planned failover): answers wait for it
    /// from the first write, as they did for this copy (`expect_old_primary`).
    #[serde(default)]
    mirror_follows: bool,
}

/// `POST /internal/v1/mirroring/{db}/promote` on the mirror, after the witness named it.
pub(crate) async fn promote_route(
    State(node): State<Shared>,
    Path(database): Path<String>,
    body: Result<Object<Promote>, BodyRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Object(req) = body.map_err(ApiError::json)?;
    let link = linked(&node, &database, None)?;
    let db = node.host.get(&database).ok_or_else(|| {
        ApiError::not_found(format!("node {} holds no copy of {database}", node.name))
    })?;
    let id = db.identity();
    if id.role == Role::Primary && id.epoch >= req.epoch {
        return Ok(Json(serde_json::json!({ "epoch": id.epoch })));
    }
    if req.epoch <= id.epoch {
        return Err(ApiError::conflict(format!(
            "epoch {} is not newer than this copy's {}",
            req.epoch, id.epoch
        )));
    }
    if let Some(w) = witness_of(&node) {
        let a = node
            .client
            .witness(
                &w.address,
                &WitnessRequest::Get {
                    database: database.clone(),
                },
            )
            .await?;
        let named = a
            .record
            .as_ref()
            .is_some_and(|r| r.primary == node.name && r.epoch == req.epoch);
        if !named {
            return Err(ApiError::conflict(format!(
                "the witness does not name {} primary of {database} at epoch {}",
                node.name, req.epoch
            )));
        }
    }
    // Everything the old primary wrote must be here first.
    let deadline = Instant::now() + Duration::from_secs(10);
    while link.st().primary_lsn > db.identity().lsn && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    promote(&node, &link, &db, req.epoch, req.mirror_follows).await;
    let id = db.identity();
    if id.role != Role::Primary {
        return Err(ApiError::unavailable(
            link.st().last_error.clone().unwrap_or_default(),
        ));
    }
    Ok(Json(
        serde_json::json!({ "epoch": id.epoch, "lsn": id.lsn }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_store::{Options, StoreError, Tx};

    #[test]
    fn a_disk_that_stops_answering_moves_the_primary_only_with_a_mirror_ready() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(&dir.path().join("db"), "db", Options::default()).unwrap();
        assert_eq!(disk_fails(&db, true, None), None);
        // The writer held past the bound, as by a write the disk does not answer.
        let held = Duration::from_millis(IO_STALL_HANDOVER_MS as u64 + 300);
        let d = db.clone();
        let writer = std::thread::spawn(move || {
            d.write(move |_: &mut Tx<'_>| -> Result<(), StoreError> {
                std::thread::sleep(held);
                Ok(())
            })
        });
        let started = Instant::now();
        let why = loop {
            if let Some(why) = disk_fails(&db, true, None) {
                break why;
            }
            assert!(started.elapsed() < held * 2, "never judged failing");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(started.elapsed() >= Duration::from_millis(IO_STALL_HANDOVER_MS as u64 - 100));
        assert!(
            why.starts_with("the disk has not answered here for")
                && why.contains("the writer's write to the database in progress"),
            "{why}"
        );
        // Not without a synchronized mirror, nor again right after an attempt.
        assert_eq!(disk_fails(&db, false, None), None);
        assert_eq!(disk_fails(&db, true, Some(Instant::now())), None);
        writer.join().unwrap().unwrap();
    }

    static SCHEMA: &[tandem_store::Migration] = &[tandem_store::Migration {
        version: 1,
        name: "t",
        sql: "CREATE TABLE t (id INTEGER PRIMARY KEY)",
    }];

    fn put(db: &Database, id: i64) -> Lsn {
        db.write(move |tx: &mut Tx<'_>| tx.insert("t", [tandem_store::Value::Integer(id)]))
            .unwrap()
            .lsn
    }

    /// A copy with ten records that followed a primary (the mirror, before a takeover).
    fn mirror_with_records(dir: &std::path::Path) -> Database {
        let db = Database::create(&dir.join("db"), "db", Options::default()).unwrap();
        db.migrate(SCHEMA).unwrap();
        for i in 0..10 {
            put(&db, i);
        }
        db.set_role(Role::Mirror).unwrap();
        db
    }

    fn old_primary_link() -> Arc<Link> {
        new_link(
            "db".into(),
            Partnership {
                partner: "old-primary".into(),
                mode: Mode::Sync,
            },
        )
    }

    /// A standby's cursor at the head, as its pulls put it: alone, it would let every record
    /// before go.
    fn standby_at_head(db: &Database) {
        db.register_consumer("standby-x", db.identity().lsn)
            .unwrap();
        db.prune_journal().unwrap();
    }

    #[test]
    fn after_a_planned_failover_the_new_primary_answers_once_the_old_one_has_the_write() {
        let dir = tempfile::tempdir().unwrap();
        let db = mirror_with_records(dir.path());
        let at = db.identity().lsn;
        db.recover(Some(2)).unwrap();
        // Answered before the takeover's last step ran (the chat found the new primary at
        // once): the old primary does not have it.
        let early = put(&db, 100);
        assert_eq!(early, at + 1);
        let link = old_primary_link();
        expect_old_primary(&link, &db);
        assert!(
            link.st()
                .last_pull
                .is_some_and(|t| t.elapsed() < Duration::from_millis(MIRROR_TIMEOUT_MS)),
            "the old primary counts as just heard from"
        );
        // It holds what this copy held at the takeover, no more: the gate and the cursor that
        // keeps the journal for it say so.
        assert_eq!(link.st().hardened, at);
        assert_eq!(db.gate().status().hardened_lsn, at);
        move_consumer(&db, link.st().hardened, 1_000_000).unwrap();
        standby_at_head(&db);
        let kept = db.read_journal(at + 1, 10, 1 << 20).unwrap();
        assert_eq!(
            kept.records.len(),
            1,
            "the journal let go of what the old primary lacks"
        );

        let (tx, rx) = std::sync::mpsc::channel();
        let d = db.clone();
        std::thread::spawn(move || {
            let _ = tx.send(put(&d, 101));
        });
        // Committed here, but not answered before the old primary hardened it.
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "answered alone"
        );
        assert_eq!(db.identity().lsn, at + 2);
        db.gate().hardened(at + 1);
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "answered before the old primary had it"
        );
        db.gate().hardened(at + 2);
        let lsn = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(lsn, at + 2);
    }

    /// A takeover keeps the journal from its LSN for the former primary before any write, so
    /// that another consumer (a standby's, log shipping's) moving first lets nothing after it
    /// go; the cursor then moves as any mirror's: with what the former primary hardens, and
    /// on past `journal_records_max` records should it not come back.
    #[test]
    fn a_takeover_keeps_the_journal_for_the_former_primary_within_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let db = mirror_with_records(dir.path());
        let at = db.identity().lsn;
        take_over(&db, 2, false).unwrap();
        assert_eq!(takeover_lsn(&db), at);
        assert!(!db.gate().status().sync, "no mirror to wait for");
        for i in 100..120 {
            put(&db, i);
        }
        standby_at_head(&db);
        let kept = db.read_journal(at + 1, 100, 1 << 20).unwrap();
        assert_eq!(kept.records.len(), 20);
        // The former primary stays away past the bound: the journal is not kept for it.
        let keep = 5;
        move_consumer(&db, at, keep).unwrap();
        db.prune_journal().unwrap();
        let gone = db.read_journal(at + 1, 100, 1 << 20);
        assert!(
            !gone.is_ok_and(|b| !b.records.is_empty()),
            "kept past the bound"
        );
        let lsn = db.identity().lsn;
        let kept = db.read_journal(lsn - keep + 1, 100, 1 << 20).unwrap();
        assert_eq!(kept.records.len() as u64, keep);

        // A planned failover: answers wait for the old primary from the first write.
        let dir = tempfile::tempdir().unwrap();
        let db = mirror_with_records(dir.path());
        let at = db.identity().lsn;
        take_over(&db, 2, true).unwrap();
        let status = db.gate().status();
        assert!(status.sync && status.hardened_lsn == at, "{status:?}");
    }

    #[test]
    fn a_failing_reseed_is_tried_less_and_less_often_and_logged_once_per_error() {
        let now = Instant::now();
        let mut last: Option<ReseedRetry> = None;
        let mut waits = Vec::new();
        let mut news = Vec::new();
        for i in 0..10 {
            let error = if i < 7 {
                "no room on atl-db1"
            } else {
                "atl-db1 unreachable"
            };
            let (r, n) = ReseedRetry::after(last.as_ref(), error.to_string(), now);
            waits.push(r.next.duration_since(now).as_millis() as u64);
            news.push(n);
            last = Some(r);
        }
        assert_eq!(
            waits,
            [
                500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000, 30_000
            ]
        );
        assert_eq!(
            news,
            [
                true, false, false, false, false, false, false, true, false, false
            ]
        );
        assert_eq!(last.unwrap().failures, 10);
    }
}
