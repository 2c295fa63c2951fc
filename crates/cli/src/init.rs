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
struct Report {
    topology: PathBuf,
    base_port: u16,
    nodes: Vec<(String, String)>,
}

/// Writes the example topology into `dir` (created if needed) on six ports from `base_port`
/// (default: six free ones), and its share; returns the topology file, the topology and the
/// base port.
pub(crate) fn write(
    dir: &Path,
    base_port: Option<u16>,
) -> anyhow::Result<(PathBuf, tandem_topology::Topology, u16)> {
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
    Ok((file, topology, base))
}

pub fn run(a: InitArgs, out: &Output) -> anyhow::Result<()> {
    let (file, topology, base) = write(&a.dir, a.base_port)?;
    let report = Report {
        topology: file.clone(),
        base_port: base,
        nodes: topology
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.address.clone()))
            .collect(),
    };
    out.emit(&report, || {
        format!(
            "wrote {} — two sites, {} nodes on 127.0.0.1:{}..{}\nnext: cd {} && tandem up --detach && tandem status\n",
            file.display(),
            report.nodes.len(),
            base,
            base + PORTS - 1,
            a.dir.display()
        )
    })
}
