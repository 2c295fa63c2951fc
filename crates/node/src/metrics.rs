//! Prometheus metrics at `/metrics`: counters recorded where things happen, and the position of
//! every hosted database read when scraped.

use crate::server::NodeState;
use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The answer time of a request, in seconds: the buckets of its histogram.
const REQUEST_SECONDS_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often the histograms' samples are folded into their buckets between scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the process-wide recorder (once), and its upkeep: the recorder keeps each
/// histogram sample until a scrape or an upkeep folds it into the buckets, so a node nobody
/// scraped grew by every request it answered (a chat node posting 40,000 messages a second:
/// about 0.8 MB a second, without bound).
pub(crate) fn install() {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("tandem_http_request_seconds".into()),
                REQUEST_SECONDS_BUCKETS,
            )
            .expect("buckets are given")
            .build_recorder();
        let handle = recorder.handle();
        let _ = metrics::set_global_recorder(recorder);
        let upkeep = handle.clone();
        let _ = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                }
            });
        handle
    });
}

pub(crate) fn render(node: &NodeState) -> String {
    for name in node.host.names() {
        let Some(db) = node.host.get(&name) else {
            continue;
        };
        let id = db.identity();
        let stats = db.writer_stats();
        let labels = [("database", name.clone())];
        metrics::gauge!("tandem_database_lsn", &labels).set(id.lsn as f64);
        metrics::gauge!("tandem_database_durable_lsn", &labels).set(db.durable_lsn() as f64);
        metrics::gauge!("tandem_database_epoch", &labels).set(id.epoch as f64);
        metrics::gauge!("tandem_database_journal_bytes", &labels)
            .set(db.journal_stats().bytes as f64);
        metrics::gauge!("tandem_database_commits", &labels).set(stats.sqlite_commits as f64);
        metrics::gauge!("tandem_database_records", &labels).set(stats.records as f64);
        if let Some(link) = node.mirroring.status(node, &name) {
            let primary = id.role == tandem_store::Role::Primary;
            // A mirrored primary serving without a synchronized mirror: one copy from loss.
            let unprotected = primary && link.state.starts_with("unprotected");
            metrics::gauge!("tandem_database_unprotected", &labels).set(if unprotected {
                1.0
            } else {
                0.0
            });
            metrics::gauge!("tandem_database_mirror_lag_records", &labels)
                .set(link.lag_records as f64);
        }
    }
    metrics::gauge!("tandem_node_uptime_seconds").set(node.started.elapsed().as_secs_f64());
    HANDLE.get().map(|h| h.render()).unwrap_or_default()
}

/// Counts each request a route of the public API answers, by route (its template, so that
/// names in paths do not make new series), method and status — `tandem_http_requests_total` —
/// and times it: `tandem_http_request_seconds`. A WebSocket counts once, as it is upgraded
/// (101); `tandem_websocket_sessions` counts the open ones. The internal API between nodes is
/// left out: its traffic shows in the databases' gauges.
pub(crate) async fn record_request(req: Request, next: Next) -> Response {
    let Some(route) = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .filter(|r| !r.starts_with("/internal/"))
    else {
        return next.run(req).await;
    };
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(req).await;
    let seconds = started.elapsed().as_secs_f64();
    let status = response.status().as_str().to_owned();
    metrics::histogram!(
        "tandem_http_request_seconds",
        &[("route", route.clone()), ("method", method.clone())]
    )
    .record(seconds);
    metrics::counter!(
        "tandem_http_requests_total",
        &[("route", route), ("method", method), ("status", status)]
    )
    .increment(1);
    response
}

/// An open WebSocket session, counted in `tandem_websocket_sessions` while it lives.
pub(crate) struct SessionCount;

impl SessionCount {
    pub(crate) fn open() -> SessionCount {
        metrics::gauge!("tandem_websocket_sessions").increment(1.0);
        SessionCount
    }
}

impl Drop for SessionCount {
    fn drop(&mut self) {
        metrics::gauge!("tandem_websocket_sessions").decrement(1.0);
    }
}
