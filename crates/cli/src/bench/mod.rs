//! `tandem bench …`: measurements against the budgets of DESIGN.md §8. Figures go to README's
//! performance table; no test asserts a time.

mod chat;
mod dr;
mod mirror;
mod sessions;
mod store;

use crate::output::Output;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// The store: raw SQLite against group commit with 1, 16 and 256 writers (or `--writers`);
    /// backups; restore.
    Store(store::StoreArgs),
    /// Chat posts and history through the HTTP API of real nodes.
    Chat(chat::ChatArgs),
    /// Commits with no, an asynchronous and a synchronous mirror; kill -9 of a primary to the
    /// first write its mirror acknowledges.
    Mirror(mirror::MirrorArgs),
    /// Disaster recovery on the two-site example: RPO of a site loss, RTO of the chat
    /// failover and of the failback, with mgc preloaded (default 1,000,000 messages).
    Dr(dr::DrArgs),
}

pub fn run(cmd: BenchCommand, out: &Output) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Store(a) => store::run(a, out),
        BenchCommand::Chat(a) => chat::run(a, out),
        BenchCommand::Mirror(a) => mirror::run(a, out),
        BenchCommand::Dr(a) => dr::run(a, out),
    }
}

/// Latency percentiles of a set of samples, in milliseconds.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(mut samples_us: Vec<u32>) -> Latency {
        if samples_us.is_empty() {
            return Latency::default();
        }
        samples_us.sort_unstable();
        let at = |q: f64| {
            samples_us[((samples_us.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0
        };
        Latency {
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Latency;

    #[test]
    fn percentiles() {
        let l = Latency::of((1..=100).map(|i| i * 1000).collect());
        assert_eq!(l.p50_ms, 51.0);
        assert_eq!(l.p99_ms, 99.0);
        assert_eq!(l.max_ms, 100.0);
    }
}
