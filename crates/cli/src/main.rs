//! `tandem`: the command line. One file per command group; each prints a human report, or one
//! JSON document with `--json`. Exit 0 on success; otherwise one clear line on stderr.

mod bench;
mod db;
mod output;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tandem",
    version,
    about = "Persistent group chat that survives the loss of a server or a site"
)]
struct Cli {
    /// Print one JSON document on stdout instead of a human report.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Database copies and backup files.
    #[command(subcommand)]
    Db(db::DbCommand),
    /// Measure throughput and latency against the budgets of DESIGN.md §8.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() {
    let cli = Cli::parse();
    let out = output::Output { json: cli.json };
    let result = match cli.command {
        Command::Db(c) => db::run(c, &out),
        Command::Bench(c) => bench::run(c, &out),
    };
    if let Err(e) = result {
        // One line: the chain of causes, joined.
        let msg = format!("{e:#}").replace('\n', " ");
        eprintln!("tandem: {msg}");
        std::process::exit(1);
    }
}
