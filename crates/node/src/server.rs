//! One node: binds its address, opens what the topology places on it, follows the CMS, and
//! serves the HTTP API until told to stop.

use crate::client::Client;
use crate::cms_follower::{CMS_FOLLOW_INTERVAL_MS, CMS_REQUEST_TIMEOUT_MS, CmsFollower};
use crate::db_host::DbHost;
use crate::error::ApiError;
use crate::json_body::{BodyRejection, Object};
use crate::procedures;
use crate::status::NodeStatus;
use axum::Json;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Router, middleware};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_topology::{DATABASE_CMS, Role, Topology};

/// After the stop signal, how long open requests may go on before the node closes them.
const STOP_GRACE_MS: u64 = 2_000;

/// Largest request body the API reads.
pub const REQUEST_BYTES_MAX: usize = 1024 * 1024;

/// Worker threads of the runtime a node serves from.
const RUNTIME_WORKERS: usize = 2;

/// The runtime a node serves from (`serve` runs in it). Its threads submit transactions to the
/// node's databases, so each is marked `tandem_store::defer_to_databases`: a handler woken by
/// its commit's answer does not preempt the database's writer or syncers mid-step.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(RUNTIME_WORKERS)
        .on_thread_start(tandem_store::defer_to_databases)
        .enable_all()
        .build()
}

pub(crate) struct NodeState {
    pub(crate) topology: Topology,
    pub(crate) name: String,
    pub(crate) started: Instant,
    pub(crate) host: DbHost,
    pub(crate) cms: CmsFollower,
    pub(crate) client: Client,
    /// Present on nodes with the chat role.
    pub(crate) chat: Option<crate::chat_api::ChatRole>,
    /// This node's mirroring links.
    pub(crate) mirroring: crate::mirroring::Mirroring,
    /// This node's log-shipping jobs.
    pub(crate) log_shipping: crate::log_shipping::LogShipping,
    /// Present on nodes with the witness role.
    pub(crate) witness: Option<crate::witness::Witness>,
    /// Why a node with the witness role serves without it (its database is damaged).
    pub(crate) witness_failure: Option<String>,
    /// Where the primaries of the databases this node calls are now.
    pub(crate) locator: crate::locator::Locator,
    /// Standbys: what this node's primaries saw of theirs, what its standbys follow.
    pub(crate) standby: crate::standby::Standby,
    /// Turns true when the node is asked to stop: long polls answer at once.
    pub(crate) stopping: tokio::sync::watch::Receiver<bool>,
    /// Sign-ins at once and failed ones per client address (frontends).
    pub(crate) sign_ins: crate::sign_in::SignIns,
}

pub(crate) type Shared = Arc<NodeState>;

/// The addresses the deployment's nodes (and operators on them) connect from, which the
/// per-client connection bound leaves out: the loopback and every node's host, as the topology
/// names it (a name that does not resolve at start is left out of the exemption).
fn node_addresses(topology: &Topology) -> std::collections::HashSet<std::net::IpAddr> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, ToSocketAddrs};
    let mut exempt: std::collections::HashSet<IpAddr> = [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ]
    .into();
    for n in &topology.nodes {
        match n.address.to_socket_addrs() {
            Ok(addrs) => exempt.extend(addrs.map(|a| a.ip())),
            Err(e) => {
                tracing::warn!(node = n.name, address = n.address, error = %e, "a node's address does not resolve: its connections are counted as a client's")
            }
        }
    }
    exempt
}

impl NodeState {
    pub(crate) fn me(&self) -> &tandem_topology::Node {
        self.topology.node(&self.name).expect("checked at start")
    }

    /// Another node of this node's site on which the topology places a copy of `database`: the
    /// mirror a primary here would have (a mirror, or the backup site's mirror).
    fn mirror_placed(&self, database: &str) -> Option<String> {
        let site = &self.me().site;
        self.topology
            .nodes
            .iter()
            .filter(|n| n.name != self.name && n.site == *site)
            .find(|n| {
                self.topology
                    .databases_on(&n.name)
                    .iter()
                    .any(|p| p.database == database)
            })
            .map(|n| n.name.clone())
    }

    /// The local copy of `database`, open; 404 naming this node when it holds none.
    pub(crate) fn open_copy(&self, database: &str) -> Result<tandem_store::Database, ApiError> {
        self.host.get(database).ok_or_else(|| {
            ApiError::not_found(format!(
                "node {} holds no open copy of {database}",
                self.name
            ))
        })
    }

    /// The local copy of `database` when it is the primary.
    pub(crate) fn local_primary(&self, database: &str) -> Option<tandem_store::Database> {
        self.host
            .get(database)
            .filter(|d| d.identity().role == tandem_store::Role::Primary)
    }

    /// Runs a procedure on the primary of `database`, here or on the node that holds it.
    pub(crate) async fn call_db(
        &self,
        database: &str,
        procedure: &str,
        args: Value,
    ) -> Result<Value, ApiError> {
        self.call_on(database, false, procedure, &args).await
    }

    /// Runs a procedure on the primary of `database` among the copies of the primary site, or
    /// with `backup` of the backup site (the chat pool failed over). The arguments go as JSON
    /// and the answer is read into `T` (`Box<RawValue>` passes it on as its JSON text).
    pub(crate) async fn call_on<T: DeserializeOwned>(
        &self,
        database: &str,
        backup: bool,
        procedure: &str,
        args: &(impl Serialize + Sync),
    ) -> Result<T, ApiError> {
        let candidates = crate::locator::candidates(&self.topology, database, backup);
        let here = candidates.iter().any(|n| n.name == self.name);
        if let Some(db) = self.local_primary(database).filter(|_| here) {
            await_lease(&db).await;
            let args = procedures::args_to_json(args)?;
            let undecodable =
                |e: serde_json::Error| ApiError::unavailable(format!("{procedure}: answer: {e}"));
            if let Some(r) = crate::chat_procedures::run_async(&db, procedure, &args).await {
                return serde_json::from_str(r?.get()).map_err(undecodable);
            }
            let (name, call) = (
                database.to_string(),
                procedures::Call {
                    procedure: procedure.to_string(),
                    args,
                },
            );
            let topology = self.topology.clone();
            let v =
                tokio::task::spawn_blocking(move || procedures::run(&name, &db, call, &topology))
                    .await
                    .map_err(|e| ApiError::unavailable(format!("procedure failed: {e}")))??;
            return serde_json::from_value(v).map_err(undecodable);
        }
        if candidates.is_empty() {
            return Err(ApiError::not_found(format!(
                "no node holds database {database}"
            )));
        }
        let answer = self
            .locator
            .call::<T, _>(&self.client, database, backup, &candidates, procedure, args)
            .await?;
        Ok(answer.result)
    }

    /// The data directory's disk, when it has less room than its largest copy takes plus what a
    /// primary keeps free when it serves a seed (`room_short`).
    fn room_warning(&self) -> Option<String> {
        let copies: Vec<(String, u64)> = self
            .host
            .names()
            .into_iter()
            .map(|d| {
                let dir = self.host.path_of(&d);
                let bytes = ["", "-wal"]
                    .iter()
                    .filter_map(|suffix| {
                        let file = format!("{}{suffix}", tandem_store::DB_FILE);
                        std::fs::metadata(dir.join(file)).ok().map(|m| m.len())
                    })
                    .sum();
                (d, bytes)
            })
            .collect();
        let free = tandem_store::free_bytes(self.host.dir()).ok()?;
        room_short(free, &copies)
    }

    fn status(&self) -> NodeStatus {
        let me = self.me();
        NodeStatus {
            node: self.name.clone(),
            site: me.site.clone(),
            roles: me.roles.iter().map(|r| r.as_str().to_string()).collect(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            databases: self
                .host
                .status()
                .into_iter()
                .map(|mut d| {
                    d.mirroring = self.mirroring.status(self, &d.database);
                    if d.role.as_deref() == Some("standby") {
                        d.standby = self.standby.status(&d.database, d.lsn.unwrap_or(0));
                    }
                    if d.role.as_deref() == Some("primary") {
                        d.replicas = self.standby.replicas(&d.database);
                    }
                    d.log_shipping = self.log_shipping.status(&d.database);
                    if d.role.as_deref() == Some("primary")
                        && d.mirroring.is_none()
                        && let Some(other) = self.mirror_placed(&d.database)
                    {
                        // Mirroring removed (or never installed by a failover): it serves
                        // alone, and its status looked like any healthy primary's.
                        d.warnings.push(format!(
                            "not mirrored: the topology places a copy on {other}, in this site; \
                             losing this node loses what it acknowledged since (`tandem db \
                             mirror install --db {} --primary {} --mirror {other}`)",
                            d.database, self.name
                        ));
                    }
                    if d.role.as_deref() == Some("primary")
                        && let Some(w) = d.log_shipping.as_ref().and_then(|l| l.unshipped.clone())
                    {
                        d.warnings.push(w);
                    }
                    // A secondary's jobs say something from their first round on; before it,
                    // the topology's backup copy is taken for the secondary it is by default.
                    let applying = d.mirroring.is_some()
                        || d.placement == tandem_topology::PlacementRole::Backup.as_str()
                        || d.log_shipping.as_ref().is_some_and(|l| {
                            l.copy.is_some() || l.restore.is_some() || l.state.is_some()
                        });
                    if d.role.as_deref() == Some("restoring") && !applying {
                        // As a mirror's copy is left once its mirroring is removed (a failback
                        // leaves the backup site's mirror so): it looks like a copy kept
                        // current, and is not.
                        // The backup site's mirror is left so by every failback, by design:
                        // the advice for it is to do nothing (it was told to install a mirror
                        // whose primary, a log-shipping secondary, cannot have one).
                        let advice = if d.placement
                            == tandem_topology::PlacementRole::BackupMirror.as_str()
                        {
                            "as a failback leaves the backup site's mirror; nothing to do now: \
                             the next chat failover makes it the mirror of the new primary"
                        } else {
                            "`tandem db mirror install` (or a chat failover) makes it a mirror \
                             again; `tandem db restore` applies log backups to it by hand"
                        };
                        d.warnings.push(format!(
                            "restoring, and nothing applies to it: no mirroring, no log-shipping \
                             restore job; it falls behind, {advice}"
                        ));
                    }
                    d
                })
                .collect(),
            witness: self.witness.as_ref().map(|w| w.records()),
            warnings: self
                .witness_failure
                .iter()
                .cloned()
                .chain(self.witness.iter().flat_map(|w| w.health()))
                .chain(self.room_warning())
                .collect(),
            cms: self.cms.view(),
        }
    }
}

/// 200 once the node can serve its roles, 503 while it starts: a chat or frontend node needs a
/// CMS snapshot (from the CMS, or its own file) to know the active servers and user homes.
async fn health(State(node): State<Shared>) -> (axum::http::StatusCode, Json<Value>) {
    let me = node.me();
    let needs_cms = me.has(Role::Chat) || me.has(Role::Frontend);
    let ready = !needs_cms || node.cms.has_snapshot();
    let status = if ready {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": if ready { "ok" } else { "starting: waiting for a first CMS snapshot" },
            "node": node.name,
            "version": env!("CARGO_PKG_VERSION"),
        })),
    )
}

async fn status(State(node): State<Shared>) -> Json<NodeStatus> {
    Json(node.status())
}

async fn call(
    State(node): State<Shared>,
    Path(database): Path<String>,
    body: Result<Object<procedures::Call>, BodyRejection>,
) -> Result<Response, ApiError> {
    let Object(call) = body.map_err(ApiError::json)?;
    let db = node.host.get(&database).ok_or_else(|| {
        ApiError::not_found(format!(
            "node {} holds no open copy of database {database}",
            node.name
        ))
    })?;
    require_primary(&node, &database, &db)?;
    await_lease(&db).await;
    if crate::db_host::kind_of(&database) == crate::db_host::Kind::Chat
        && let Some(r) = crate::chat_procedures::run_async(&db, &call.procedure, &call.args).await
    {
        let result = r?;
        let lsn = db.identity().lsn;
        return Ok(Json(crate::client::CallAnswer { result, lsn }).into_response());
    }
    let name = database.clone();
    let topology = node.topology.clone();
    let (result, lsn) = tokio::task::spawn_blocking(move || {
        let r = procedures::run(&name, &db, call, &topology);
        r.map(|v| (v, db.identity().lsn))
    })
    .await
    .map_err(|e| ApiError::unavailable(format!("procedure failed: {e}")))??;
    Ok(Json(crate::client::CallAnswer { result, lsn }).into_response())
}

/// Refuses a client's request on a copy that is not primary (mirrors serve no reads), or is a
/// primary fenced by a newer one that could not step down yet (its disk refusing the role
/// change): the caller then looks for the primary of the newer epoch.
pub(crate) fn require_primary(
    node: &NodeState,
    database: &str,
    db: &tandem_store::Database,
) -> Result<(), ApiError> {
    let id = db.identity();
    let fenced = match id.role {
        tandem_store::Role::Primary => match db.gate().fenced() {
            None => return Ok(()),
            Some(why) => format!(" fenced ({why})"),
        },
        _ => String::new(),
    };
    Err(ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "not_primary",
        format!(
            "{database} on {} is {}{fenced} (epoch {}): ask its primary",
            node.name, id.role, id.epoch
        ),
    ))
}

/// A primary waiting for its lease (just started, or its witness silent a moment) is given up
/// to one lease time before its writes are refused: a caller sees a delay, not an error.
pub(crate) async fn await_lease(db: &tandem_store::Database) {
    let deadline = Instant::now() + Duration::from_millis(crate::witness::LEASE_MS);
    loop {
        let g = db.gate().status();
        if !g.lease_required
            || g.lease_left_ms > 0
            || g.fenced.is_some()
            || Instant::now() > deadline
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET /internal/v1/db/{db}/role`: where this node's copy stands.
async fn copy_role(
    State(node): State<Shared>,
    Path(database): Path<String>,
) -> Result<Json<crate::client::CopyRole>, ApiError> {
    let db = node.host.get(&database).ok_or_else(|| {
        ApiError::not_found(format!(
            "node {} holds no open copy of database {database}",
            node.name
        ))
    })?;
    let id = db.identity();
    let gate = db.gate().status();
    let file_bytes = std::fs::metadata(node.host.path_of(&database).join(tandem_store::DB_FILE))
        .map(|m| m.len())
        .unwrap_or(0);
    Ok(Json(crate::client::CopyRole {
        node: node.name.clone(),
        database,
        role: id.role.to_string(),
        epoch: id.epoch,
        lsn: id.lsn,
        last_time_ms: id.last_time_ms,
        writable: id.role == tandem_store::Role::Primary && gate.fenced.is_none(),
        paused: gate.paused,
        file_bytes,
        epoch_first_lsn: id
            .history
            .0
            .iter()
            .find(|e| e.epoch == id.epoch)
            .map(|e| e.first_lsn),
    }))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Fault {
    isolated: bool,
}

/// `POST /internal/v1/fault`: cuts this node off from every other node (its requests to them
/// fail, theirs to it are refused) or heals the cut — a network partition for tests and demos.
async fn fault(
    State(node): State<Shared>,
    body: Result<Object<Fault>, BodyRejection>,
) -> Result<Json<Value>, ApiError> {
    let Object(f) = body.map_err(ApiError::json)?;
    node.client.set_isolated(f.isolated);
    tracing::warn!(
        isolated = f.isolated,
        "fault injection: network cut {}",
        if f.isolated { "on" } else { "healed" }
    );
    Ok(Json(json!({ "node": node.name, "isolated": f.isolated })))
}

async fn cms_snapshot(
    State(node): State<Shared>,
) -> Result<Json<tandem_pool::cms::CmsSnapshot>, ApiError> {
    let db = node
        .host
        .get(DATABASE_CMS)
        .ok_or_else(|| ApiError::not_found(format!("node {} does not hold the CMS", node.name)))?;
    require_primary(&node, DATABASE_CMS, &db)?;
    let snap = tokio::task::spawn_blocking(move || tandem_pool::cms::snapshot(&db))
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))??;
    Ok(Json(snap))
}

async fn metrics_page(State(node): State<Shared>) -> String {
    crate::metrics::render(&node)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route; the API is described at /openapi.json")
}

/// A route that exists, asked with a method it does not take (axum adds the `Allow` header).
async fn method_not_allowed(
    method: axum::http::Method,
    uri: axum::extract::OriginalUri,
) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{method} is not a method of {}: the Allow header lists its methods; the API is \
             described at /openapi.json",
            uri.path()
        ),
    )
}

fn router(node: Shared) -> Router {
    // What changes a copy, a role, a configuration or the witness's records runs to its end
    // even when its caller goes away (`http_serve::to_completion`): an operator's CLI killed
    // mid-step leaves no operation half-done behind a lock it no longer holds.
    let operations = Router::new()
        // The witness decides one request at a time: a decision's write that outlived its
        // request would be unseen by the next decision, taken under the lock it released.
        .route("/internal/v1/witness", post(crate::witness::serve))
        .route(
            "/internal/v1/db/{database}/pause",
            post(crate::standby::pause),
        )
        .route(
            "/internal/v1/db/{database}/promote",
            post(crate::standby::promote),
        )
        .route(
            "/internal/v1/db/{database}/step-down",
            post(crate::standby::step_down_route),
        )
        .route(
            "/internal/v1/mirroring/{database}",
            axum::routing::put(crate::mirroring::install).delete(crate::mirroring::remove),
        )
        .route(
            "/internal/v1/mirroring/{database}/failover",
            post(crate::mirroring::planned_failover),
        )
        .route(
            "/internal/v1/mirroring/{database}/promote",
            post(crate::mirroring::promote_route),
        )
        .route(
            "/internal/v1/db/{database}/backup",
            post(crate::db_ops::backup),
        )
        .route(
            "/internal/v1/db/{database}/restore",
            post(crate::db_ops::restore),
        )
        .route(
            "/internal/v1/db/{database}/recover",
            post(crate::db_ops::recover),
        )
        .route(
            "/internal/v1/log-shipping/{database}",
            axum::routing::put(crate::log_shipping::configure),
        )
        .route(
            "/internal/v1/log-shipping/{database}/secondary",
            axum::routing::delete(crate::log_shipping::remove_secondary),
        )
        .route(
            "/internal/v1/log-shipping/{database}/copy",
            post(crate::log_shipping::copy_route),
        )
        .route(
            "/internal/v1/log-shipping/{database}/restore",
            post(crate::log_shipping::restore_route),
        )
        .route_layer(middleware::from_fn(crate::http_serve::to_completion));
    let internal = Router::new()
        .route("/internal/v1/status", get(status))
        .route("/internal/v1/db/{database}/call", post(call))
        .route("/internal/v1/cms/snapshot", get(cms_snapshot))
        .route("/internal/v1/db/{database}/role", get(copy_role))
        .route("/internal/v1/fault", post(fault))
        .route(
            "/internal/v1/mirroring/{database}/pull",
            post(crate::mirroring::serve_pull_route),
        )
        .route(
            "/internal/v1/mirroring/{database}/hardened",
            post(crate::mirroring::hardened_route),
        )
        .route(
            "/internal/v1/mirroring/{database}/seed",
            get(crate::mirroring::serve_seed),
        )
        .route(
            "/internal/v1/db/{database}/feed",
            get(crate::chat_feed::serve_feed),
        )
        .route(
            "/internal/v1/log-shipping/{database}/status",
            get(crate::log_shipping::status_route),
        )
        .merge(operations);
    let mut app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_page))
        .merge(internal);
    if node.me().has(Role::Frontend) || node.me().has(Role::Chat) {
        app = app.merge(crate::frontend::routes());
    }
    if node.chat.is_some() {
        app = app.merge(crate::chat_api::routes(&node));
    }
    app = app
        .route("/openapi.json", get(crate::openapi::document))
        .route_layer(middleware::from_fn(crate::metrics::record_request));
    // The secret is checked before routing, so that without it an internal path answers 401
    // whatever the path or method (a 404 or 405 would tell which routes exist).
    app.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            node.clone(),
            crate::auth::require_secret,
        ))
        .layer(DefaultBodyLimit::max(REQUEST_BYTES_MAX))
        .with_state(node)
}

/// Asks the CMS for changes until the node stops.
async fn follow_cms(node: Shared) {
    let mut unreachable_logged = false;
    let mut first = true;
    loop {
        if !first {
            // Until a first snapshot arrives, ask more often: the node is not ready without one.
            let wait = if node.cms.has_snapshot() {
                CMS_FOLLOW_INTERVAL_MS
            } else {
                CMS_FOLLOW_INTERVAL_MS / 6
            };
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        first = false;
        let candidates = crate::locator::candidates(&node.topology, DATABASE_CMS, false);
        let snap = if let Some(db) = node.local_primary(DATABASE_CMS) {
            tokio::task::spawn_blocking(move || {
                tandem_pool::cms::snapshot(&db).map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
        } else if let Some(master) = node.locator.current(DATABASE_CMS, false, &candidates) {
            let timeout = Duration::from_millis(CMS_REQUEST_TIMEOUT_MS);
            match node.client.cms_snapshot(&master.address, timeout).await {
                Err(e)
                    if e.retry_elsewhere()
                        || matches!(e, crate::ClientError::Unreachable { .. }) =>
                {
                    match node
                        .locator
                        .probe(&node.client, DATABASE_CMS, false, &candidates)
                        .await
                    {
                        Some(m) if m.name != master.name => node
                            .client
                            .cms_snapshot(&m.address, timeout)
                            .await
                            .map_err(|e| e.to_string()),
                        _ => Err(e.to_string()),
                    }
                }
                r => r.map_err(|e| e.to_string()),
            }
        } else {
            Err("the topology names no CMS node".into())
        };
        match snap {
            Ok(s) => {
                unreachable_logged = false;
                node.cms.heard(s);
            }
            Err(e) if !unreachable_logged => {
                unreachable_logged = true;
                tracing::warn!(error = %e, "the CMS does not answer; serving from the last snapshot");
            }
            Err(_) => {}
        }
    }
}

/// Runs the node `name` of `topology` until `shutdown` completes. Errors are one line for the
/// operator: the address in use, a database another process holds open, an unknown node.
pub async fn serve(
    topology: Topology,
    name: &str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let me = topology
        .node(name)
        .ok_or_else(|| format!("the topology has no node named {name}"))?
        .clone();
    let addr: SocketAddr = tokio::net::lookup_host(&me.address)
        .await
        .map_err(|e| format!("{name}: cannot resolve {}: {e}", me.address))?
        .next()
        .ok_or_else(|| format!("{name}: {} resolves to no address", me.address))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("{name} cannot listen on {}: {e}", me.address))?;
    std::fs::create_dir_all(&me.data_dir)
        .map_err(|e| format!("{name}: cannot create {}: {e}", me.data_dir.display()))?;
    crate::metrics::install();
    let (mirroring, first_start) =
        crate::mirroring::Mirroring::load(&me.data_dir, &topology, name)?;
    // A missing primary copy is created on the node's first start, or when no mirror could
    // hold it; otherwise it comes back from its mirror (reseed), never empty.
    let mirrored: Vec<String> = topology
        .databases_on(name)
        .into_iter()
        .map(|p| p.database)
        .filter(|d| mirroring.has(d))
        .collect();
    let (topo, node_name, data_dir) = (topology.clone(), name.to_string(), me.data_dir.clone());
    let host = tokio::task::spawn_blocking(move || {
        DbHost::open(&topo, &node_name, data_dir, |db| {
            first_start || !mirrored.iter().any(|m| m == db)
        })
    })
    .await
    .map_err(|e| e.to_string())??;
    let (witness, witness_failure) = if me.has(Role::Witness) {
        let dir = me.data_dir.clone();
        match tokio::task::spawn_blocking(move || crate::witness::Witness::open(&dir))
            .await
            .map_err(|e| e.to_string())??
        {
            Ok(w) => (Some(w), None),
            Err(why) => {
                tracing::error!(%why, "the witness cannot serve");
                (None, Some(why))
            }
        }
    } else {
        (None, None)
    };
    let (stop_tx, stopping) = tokio::sync::watch::channel(false);
    let state = Arc::new(NodeState {
        stopping: stopping.clone(),
        sign_ins: Default::default(),
        chat: me.has(Role::Chat).then(crate::chat_api::ChatRole::new),
        client: Client::for_node(&topology.secret, name),
        mirroring,
        log_shipping: Default::default(),
        witness,
        witness_failure,
        locator: crate::locator::Locator::new(),
        standby: Default::default(),
        cms: CmsFollower::load(&me.data_dir),
        topology,
        name: name.to_string(),
        started: Instant::now(),
        host,
    });
    // A primary copy outranked by a copy of a newer epoch (its database failed over to another
    // site while this node was down) steps down before the node serves or replicates anything.
    crate::offline_recovery::settle(&state).await;
    crate::standby::fence_once(&state).await;
    tracing::info!(node = name, address = %me.address, databases = ?state.host.names(), data = %state.host.dir().display(), "serving");
    crate::mirroring::start(&state);
    let standby_tasks = crate::standby::start(&state);
    crate::log_shipping::start(&state);
    let scrub = crate::scrub::start(&state);
    let expiry = crate::expiry::start(&state);
    if let Some(chat) = &state.chat {
        let _ = chat
            .posts
            .set(crate::post_batcher::PostBatcher::start(Arc::downgrade(
                &state,
            )));
    }
    let follower = tokio::spawn(follow_cms(state.clone()));
    let feed = state
        .chat
        .as_ref()
        .map(|c| tokio::spawn(crate::chat_feed::follow(state.clone(), c.events.clone())));
    let app = router(state.clone());
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut hard = stopping.clone();
    let server = crate::http_serve::serve_exempting(
        listener,
        app,
        crate::http_serve::NODE_BOUNDS,
        node_addresses(&state.topology),
        stopping.clone(),
    );
    tokio::select! {
        () = server => {}
        () = async move {
            crate::http_serve::stopped(&mut hard).await;
            tokio::time::sleep(Duration::from_millis(STOP_GRACE_MS)).await;
        } => {
            tracing::warn!("requests still open {STOP_GRACE_MS} ms after the stop signal: closing them");
        }
    }
    crate::mirroring::stop(&state);
    for t in standby_tasks {
        t.abort();
    }
    crate::log_shipping::stop(&state);
    scrub.abort();
    expiry.abort();
    follower.abort();
    let _ = follower.await;
    if let Some(f) = feed {
        f.abort();
        let _ = f.await;
    }
    // Close every database (their writers finish what is queued) before returning.
    tokio::task::spawn_blocking(move || drop(state)).await.ok();
    tracing::info!(node = name, "stopped");
    Ok(())
}

/// Says so when `free` bytes on a data directory's disk are fewer than its largest copy (file
/// and WAL) plus `SEED_KEEP_FREE_BYTES`: a reseed needs a copy's room on either side (a primary
/// refuses to serve one that would leave it less than that bound), a WAL grows while a mirror
/// catches up, and once the disk is full every commit fails. Until session 33 nothing said so
/// before commits failed.
fn room_short(free: u64, copies: &[(String, u64)]) -> Option<String> {
    let (name, largest) = copies.iter().max_by_key(|(_, b)| *b)?;
    let need = largest + crate::mirroring::SEED_KEEP_FREE_BYTES;
    (free < need).then(|| {
        format!(
            "the data directory's disk has {} MiB free, less than its largest copy ({name}, {} \
             MiB with its WAL) and {} MiB more: a reseed from or to this node needs that room, \
             and commits fail once the disk is full — give it room",
            free >> 20,
            largest >> 20,
            crate::mirroring::SEED_KEEP_FREE_BYTES >> 20
        )
    })
}

#[cfg(test)]
mod room_tests {
    use super::*;

    #[test]
    fn a_disk_short_of_a_copy_and_the_seed_bound_is_said() {
        let mib = |n: u64| n << 20;
        let copies = vec![("cms".to_string(), mib(1)), ("mgc".to_string(), mib(161))];
        let w = room_short(mib(104), &copies).unwrap();
        assert!(
            w.contains("104 MiB free") && w.contains("mgc, 161 MiB"),
            "{w}"
        );
        assert_eq!(room_short(mib(161 + 256), &copies), None);
        assert!(room_short(mib(161 + 255), &copies).is_some());
        assert_eq!(room_short(mib(1), &[]), None, "no copy here");
    }
}
