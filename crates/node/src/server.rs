//! One node: binds its address, opens what the topology places on it, follows the CMS, and
//! serves the HTTP API until told to stop.

use crate::client::Client;
use crate::cms_follower::{CMS_FOLLOW_INTERVAL_MS, CMS_REQUEST_TIMEOUT_MS, CmsFollower};
use crate::db_host::DbHost;
use crate::error::ApiError;
use crate::procedures;
use crate::status::NodeStatus;
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::routing::{get, post};
use axum::{Router, middleware};
use serde_json::{Value, json};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_topology::{DATABASE_CMS, PlacementRole, Role, Topology};

/// After the stop signal, how long open requests may go on before the node closes them.
const STOP_GRACE_MS: u64 = 2_000;

/// Largest request body the API reads.
pub const REQUEST_BYTES_MAX: usize = 1024 * 1024;

pub(crate) struct NodeState {
    pub(crate) topology: Topology,
    pub(crate) name: String,
    pub(crate) started: Instant,
    pub(crate) host: DbHost,
    pub(crate) cms: CmsFollower,
    pub(crate) client: Client,
    /// Present on nodes with the chat role.
    pub(crate) chat: Option<crate::chat_api::ChatRole>,
    /// Turns true when the node is asked to stop: long polls answer at once.
    pub(crate) stopping: tokio::sync::watch::Receiver<bool>,
}

pub(crate) type Shared = Arc<NodeState>;

impl NodeState {
    pub(crate) fn me(&self) -> &tandem_topology::Node {
        self.topology.node(&self.name).expect("checked at start")
    }

    /// The node the topology names as primary of `database`.
    pub(crate) fn primary_of(&self, database: &str) -> Option<&tandem_topology::Node> {
        self.topology.nodes.iter().find(|n| {
            self.topology
                .databases_on(&n.name)
                .iter()
                .any(|p| p.database == database && p.role == PlacementRole::Primary)
        })
    }

    /// Runs a procedure on the primary of `database`, here or on the node that holds it.
    pub(crate) async fn call_db(
        &self,
        database: &str,
        procedure: &str,
        args: Value,
    ) -> Result<Value, ApiError> {
        if let Some(db) = self.host.get(database).cloned() {
            if let Some(r) = crate::chat_procedures::run_async(&db, procedure, &args).await {
                return r;
            }
            let (name, call) = (
                database.to_string(),
                procedures::Call {
                    procedure: procedure.to_string(),
                    args,
                },
            );
            let topology = self.topology.clone();
            return tokio::task::spawn_blocking(move || {
                procedures::run(&name, &db, call, &topology)
            })
            .await
            .map_err(|e| ApiError::unavailable(format!("procedure failed: {e}")))?;
        }
        let node = self
            .primary_of(database)
            .ok_or_else(|| ApiError::not_found(format!("no node holds database {database}")))?;
        let answer = self
            .client
            .call::<Value, _>(&node.address, database, procedure, &args)
            .await?;
        Ok(answer.result)
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
            databases: self.host.status(),
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
    body: Result<Json<procedures::Call>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(call) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let db = node.host.get(&database).cloned().ok_or_else(|| {
        ApiError::not_found(format!(
            "node {} holds no open copy of database {database}",
            node.name
        ))
    })?;
    if crate::db_host::kind_of(&database) == crate::db_host::Kind::Chat
        && let Some(r) = crate::chat_procedures::run_async(&db, &call.procedure, &call.args).await
    {
        return Ok(Json(json!({ "result": r?, "lsn": db.identity().lsn })));
    }
    let name = database.clone();
    let topology = node.topology.clone();
    let result = tokio::task::spawn_blocking(move || {
        let r = procedures::run(&name, &db, call, &topology);
        r.map(|v| (v, db.identity().lsn))
    })
    .await
    .map_err(|e| ApiError::unavailable(format!("procedure failed: {e}")))??;
    Ok(Json(json!({ "result": result.0, "lsn": result.1 })))
}

async fn cms_snapshot(
    State(node): State<Shared>,
) -> Result<Json<tandem_pool::cms::CmsSnapshot>, ApiError> {
    let db =
        node.host.get(DATABASE_CMS).cloned().ok_or_else(|| {
            ApiError::not_found(format!("node {} does not hold the CMS", node.name))
        })?;
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

fn router(node: Shared) -> Router {
    let internal = Router::new()
        .route("/internal/v1/status", get(status))
        .route("/internal/v1/db/{database}/call", post(call))
        .route("/internal/v1/cms/snapshot", get(cms_snapshot))
        .route(
            "/internal/v1/db/{database}/feed",
            get(crate::chat_feed::serve_feed),
        )
        .layer(middleware::from_fn_with_state(
            node.clone(),
            crate::auth::require_secret,
        ));
    let mut app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_page))
        .merge(internal);
    if node.me().has(Role::Frontend) || node.me().has(Role::Chat) {
        app = app.merge(crate::frontend::routes());
    }
    if node.chat.is_some() {
        app = app.merge(crate::chat_api::routes());
    }
    app = app.route("/openapi.json", get(crate::openapi::document));
    app.fallback(not_found)
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
        let snap = if let Some(db) = node.host.get(DATABASE_CMS).cloned() {
            tokio::task::spawn_blocking(move || {
                tandem_pool::cms::snapshot(&db).map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
        } else if let Some(master) = node.topology.node(&node.topology.cms.primary) {
            node.client
                .cms_snapshot(
                    &master.address,
                    Duration::from_millis(CMS_REQUEST_TIMEOUT_MS),
                )
                .await
                .map_err(|e| e.to_string())
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
    let (topo, node_name, data_dir) = (topology.clone(), name.to_string(), me.data_dir.clone());
    let host = tokio::task::spawn_blocking(move || DbHost::open(&topo, &node_name, data_dir))
        .await
        .map_err(|e| e.to_string())??;
    let (stop_tx, stopping) = tokio::sync::watch::channel(false);
    let state = Arc::new(NodeState {
        stopping: stopping.clone(),
        chat: me.has(Role::Chat).then(crate::chat_api::ChatRole::new),
        client: Client::new(&topology.secret),
        cms: CmsFollower::load(&me.data_dir),
        topology,
        name: name.to_string(),
        started: Instant::now(),
        host,
    });
    tracing::info!(node = name, address = %me.address, databases = ?state.host.copies.keys().collect::<Vec<_>>(), data = %state.host.dir().display(), "serving");
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
    let app = router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut graceful = stopping.clone();
    let mut hard = stopping.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = graceful.wait_for(|s| *s).await;
    });
    let result = tokio::select! {
        r = server => r,
        _ = async move {
            let _ = hard.wait_for(|s| *s).await;
            tokio::time::sleep(Duration::from_millis(STOP_GRACE_MS)).await;
        } => {
            tracing::warn!("requests still open {STOP_GRACE_MS} ms after the stop signal: closing them");
            Ok(())
        }
    };
    follower.abort();
    let _ = follower.await;
    if let Some(f) = feed {
        f.abort();
        let _ = f.await;
    }
    // Close every database (their writers finish what is queued) before returning.
    tokio::task::spawn_blocking(move || drop(state)).await.ok();
    tracing::info!(node = name, "stopped");
    result.map_err(|e| format!("{name}: {e}"))
}
