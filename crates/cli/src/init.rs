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

fn pick_base_port() -> anyhow::Result<u16> {
    for _ in 0..200 {
        let mut b = [0u8; 2];
        getrandom::fill(&mut b)?;
        let base = 20_000 + (u16::from_le_bytes(b) % 40_000);
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
