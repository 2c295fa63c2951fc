//! `tandem`: the command line. One file per command group; each prints a human report, or one
//! JSON document with `--json`. Exit 0 on success; otherwise one clear line on stderr.

mod bench;
mod chat;
mod chat_dr;
mod cms;
mod db;
mod db_online;
mod demo;
mod deployment;
mod init;
mod log_shipping;
mod mirror;
mod output;
mod runbook;
mod serve;
mod status;
mod up;
mod user;

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
    /// The deployment's topology.
    #[arg(
        long,
        global = true,
        env = "TANDEM_TOPOLOGY",
        default_value = "topology.toml"
    )]
    topology: std::path::PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a two-site example deployment (DESIGN.md §3) on 127.0.0.1 into DIR.
    Init(init::InitArgs),
    /// Start the deployment's nodes that are not running, as child processes, and wait until they
    /// are ready.
    Up(up::UpArgs),
    /// Stop the deployment's nodes.
    Down(up::DownArgs),
    /// Run one node in the foreground.
    Serve(serve::ServeArgs),
    /// Every node, database copy, the CMS and the pool states.
    Status,
    /// Kill the chat database's primary under load, then its whole site: failover, failback,
    /// every acknowledged post checked, RPO and RTO reported.
    Demo(demo::DemoArgs),
    /// Users: add (prints a token), list, remove.
    #[command(subcommand)]
    User(user::UserCommand),
    /// Chat as a user: categories, rooms, members, posts, history, search.
    #[command(subcommand)]
    Chat(chat::ChatCommand),
    /// The Central Management Store: status, failover to the other site.
    #[command(subcommand)]
    Cms(cms::CmsCommand),
    /// Database copies and backup files.
    #[command(subcommand)]
    Db(db::DbCommand),
    /// Measure throughput and latency against the budgets of DESIGN.md §8.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// Parses the command line; a usage error is one line on stderr (DESIGN.md §5), exit 2 as
/// clap's own. Help and version print as clap prints them.
fn parse() -> Cli {
    use clap::error::ErrorKind;
    match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            e.exit()
        }
        Err(e) => {
            // clap's first paragraph (the error, and the arguments it names), on one line.
            let text = e.render().to_string();
            let first: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let first = first.join(" ");
            let first = first.strip_prefix("error: ").unwrap_or(&first);
            eprintln!("tandem: {first} (--help lists the arguments)");
            std::process::exit(2);
        }
    }
}

fn main() {
    let cli = parse();
    let out = output::Output { json: cli.json };
    let topology = cli.topology;
    let deployment = || deployment::Deployment::load(&topology);
    let result = match cli.command {
        Command::Init(a) => init::run(a, &out),
        Command::Up(a) => deployment().and_then(|d| up::up(&d, a, &out)),
        Command::Down(a) => match deployment() {
            Ok(d) => up::down(&d, a, &out),
            Err(e) => up::down_without_topology(&topology, e, a, &out),
        },
        Command::Serve(a) => deployment().and_then(|d| serve::run(d, a)),
        Command::Status => deployment().and_then(|d| status::run(&d, &out)),
        Command::Demo(a) => demo::run(a, &out),
        Command::User(c) => deployment().and_then(|d| user::run(&d, c, &out)),
        Command::Chat(c) => deployment().and_then(|d| chat::run(&d, c, &out)),
        Command::Cms(c) => deployment().and_then(|d| cms::run(&d, c, &out)),
        Command::Db(db::DbCommand::Mirror(c)) => {
            deployment().and_then(|d| mirror::run(&d, c, &out))
        }
        Command::Db(db::DbCommand::LogShipping(c)) => {
            deployment().and_then(|d| log_shipping::run(&d, c, &out))
        }
        Command::Db(c) if c.online() => deployment().and_then(|d| db_online::run(&d, c, &out)),
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

#[cfg(test)]
mod tests {
    #[test]
    fn every_command_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
