//! Prometheus metrics at `/metrics`: counters recorded where things happen, and the position of
//! every hosted database read when scraped.

use crate::server::NodeState;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder (once).
pub(crate) fn install() {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let _ = metrics::set_global_recorder(recorder);
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
            let unprotected = primary && link.state == "unprotected";
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
