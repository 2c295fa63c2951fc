//! `tandem serve --node NAME`: one node in the foreground, logging one line per event on
//! stderr (stdout is for reports, `--json` ones too), until SIGTERM or Ctrl-C.

use crate::deployment::Deployment;
use anyhow::bail;
use clap::Args;

#[derive(Args)]
pub struct ServeArgs {
    /// The node of the topology to run.
    #[arg(long)]
    node: String,
}

async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: stopping"),
    }
}

fn sqlite_log(code: i32, message: &str) {
    if tandem_store::sqlite_log_is_failure(code) {
        tracing::warn!(code, "sqlite: {message}");
    } else {
        tracing::debug!(code, "sqlite: {message}");
    }
}

pub fn run(d: Deployment, a: ServeArgs) -> anyhow::Result<()> {
    // The node's name first: a wrong one is refused before anything starts or logs.
    if d.topology.node(&a.node).is_none() {
        bail!(
            "the topology has no node named {} (nodes: {})",
            a.node,
            d.topology
                .nodes
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TANDEM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(false)
        .with_target(false)
        .init();
    // Before any database opens: SQLite's log names the file and errno of an I/O error.
    if let Err(e) = tandem_store::log_sqlite_to(sqlite_log) {
        tracing::warn!("{e}");
    }
    // Every session and connection is an open file: a chat node may need thousands.
    match crate::deployment::raise_open_files() {
        Ok(n) => tracing::info!("open files: up to {n}"),
        Err(e) => tracing::warn!("cannot raise the limit on open files: {e}"),
    }
    // A file grown past the process's size limit (`ulimit -f`) fails that write (EFBIG, as a
    // full disk fails with ENOSPC), which a commit reports and survives; the signal's default
    // would kill the node instead (PostgreSQL ignores it for the same reason).
    // SAFETY: sets a signal's disposition to "ignore", before any other thread runs.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let rt = tandem_node::runtime()?;
    let span = tracing::info_span!("node", name = %a.node);
    let result = rt.block_on(tracing::Instrument::instrument(
        tandem_node::serve(d.topology, &a.node, stop_signal()),
        span,
    ));
    if let Err(e) = result {
        bail!(e);
    }
    Ok(())
}
