//! `tandem init [DIR]`: writes the two-site example deployment of DESIGN.md §3 on 127.0.0.1,
//! with free ports and a fresh cluster secret, ready for `tandem up`.

use crate::output::Output;
use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct InitArgs {
    /// The deployment directory (created if needed).
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// First of the six consecutive ports the nodes listen on (default: six free ones).
    #[arg(long)]
    base_port: Option<u16>,
}

/// Ports one deployment uses: one per node.
const PORTS: u16 = 6;

fn free(base: u16) -> bool {
    (0..PORTS).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok())
}

/// The first port the kernel hands out as the local end of outgoing connections (Linux:
/// `ip_local_port_range`; 32768 elsewhere, its usual value).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// Six free consecutive ports below the ephemeral range: inside it, a connection's local end
/// (a node's own calls, any client's) could take a node's port between `init` and `up` — seen
/// once in the tests as "Address already in use".
fn pick_base_port() -> anyhow::Result<u16> {
    const LOW: u16 = 10_000;
    let high = ephemeral_low().saturating_sub(PORTS).max(LOW + 1_000);
    for _ in 0..200 {
        let mut b = [0u8; 2];
        getrandom::fill(&mut b)?;
        let base = LOW + (u16::from_le_bytes(b) % (high - LOW));
        if free(base) {
            return Ok(base);
        }
    }
    bail!("found no {PORTS} consecutive free ports on 127.0.0.1; pass --base-port")
}

#[derive(Serialize)]
pub(crate) struct Report {
    pub(crate) topology: PathBuf,
    pub(crate) base_port: u16,
    nodes: Vec<(String, String)>,
}

pub fn run(a: InitArgs, out: &Output) -> anyhow::Result<()> {
    let report = write(&a.dir, a.base_port)?;
    out.emit(&report, || {
        format!(
            "wrote {} — two sites, {} nodes on 127.0.0.1:{}..{}\nnext: cd {} && tandem up --detach && tandem status\n",
            report.topology.display(),
            report.nodes.len(),
            report.base_port,
            report.base_port + PORTS - 1,
            a.dir.display()
        )
    })
}

/// Writes the example deployment into `dir` (its `topology.toml` and share directory); the
/// topology file is `dir/topology.toml`.
pub(crate) fn write(dir: &Path, base_port: Option<u16>) -> anyhow::Result<Report> {
    let file = dir.join("topology.toml");
    if file.exists() {
        bail!(
            "{} exists: init writes a new deployment into an empty place",
            file.display()
        );
    }
    let base = match base_port {
        Some(b) if b.checked_add(PORTS - 1).is_none() || b < 1024 => {
            bail!("--base-port {b}: the six ports must lie between 1024 and 65535")
        }
        Some(b) => b,
        None => pick_base_port()?,
    };
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret)?;
    let text = tandem_topology::example(base, &hex::encode(secret));
    if dir.exists() && !dir.is_dir() {
        bail!(
            "{} is a file: init writes a deployment into a directory",
            dir.display()
        );
    }
    // What an earlier deployment leaves beside its topology: the new one would take its
    // databases, pid files and share for its own (until session 32 it did, silently).
    let left: Vec<&str> = ["data", "run", "logs", "share", ".tandem", "audit.log"]
        .into_iter()
        .filter(|n| std::fs::symlink_metadata(dir.join(n)).is_ok())
        .collect();
    if !left.is_empty() {
        bail!(
            "{} holds {} of an earlier deployment: init writes a new deployment into an empty \
             place; choose another directory, or remove them",
            dir.display(),
            left.join(", ")
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(&file, &text).with_context(|| format!("cannot write {}", file.display()))?;
    let topology = tandem_topology::Topology::load(&file)?;
    std::fs::create_dir_all(&topology.share)?;
    Ok(Report {
        topology: file,
        base_port: base,
        nodes: topology
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.address.clone()))
            .collect(),
    })
}
