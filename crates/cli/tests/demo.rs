//! `tandem demo` through the binary: the chat database's primary killed under load, no
//! acknowledged post lost, the mirror primary of a new epoch; then the primary site lost, the
//! chat pool failed over and back, the RPO and RTO reported, nothing lost beyond the RPO, the
//! pool normal again; and no process left behind — after a whole run and after a Ctrl-C in the
//! middle of one (in the mirror stages, and while a procedure runs).

mod common;

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The demos of this file, one at a time: each runs six nodes and a load on a small machine.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Live processes whose command line names `dir` (`--topology DIR/…`), the demo itself aside:
/// the nodes, and the procedures the demo runs as subprocesses.
fn processes_of(dir: &Path) -> Vec<(i32, String)> {
    common::processes_of(dir)
        .into_iter()
        .filter(|(_, c)| !c.split(' ').any(|a| a == "demo"))
        .collect()
}

/// SIGKILL to whatever a failed test left, so that one failure does not leave six nodes.
struct Sweep<'a>(&'a Path);

impl Drop for Sweep<'_> {
    fn drop(&mut self) {
        for (pid, _) in processes_of(self.0) {
            // SAFETY: processes of this test's deployment directory.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

#[test]
fn the_demo_loses_no_acknowledged_post_and_leaves_no_node() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let _sweep = Sweep(&dir);
    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["demo", "--json", "--dir", dir.to_str().unwrap()])
        .env_remove("TANDEM_TOPOLOGY")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tandem demo failed: {stderr}");
    // stdout is one JSON document and nothing else; the stages went to stderr.
    let r: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert!(stderr.contains("[18/18]"), "{stderr}");
    assert_eq!(r["lost"], 0, "{r:#}");
    assert_eq!(r["duplicated"], 0, "{r:#}");
    assert!(r["acknowledged"].as_u64().unwrap() > 0, "{r:#}");
    assert!(
        r["epoch_after"].as_u64().unwrap() > r["epoch_before"].as_u64().unwrap(),
        "{r:#}"
    );
    assert_eq!(r["primary_before"], "atl-db1", "{r:#}");
    assert_eq!(r["primary_after"], "atl-db2", "{r:#}");
    assert_eq!(r["killed"], "atl-db1", "{r:#}");
    // The failover took time, and the gap in posts covers it.
    let failover = r["failover_ms"].as_u64().unwrap();
    assert!(failover > 0, "{r:#}");
    assert!(
        r["longest_gap_ms"].as_u64().unwrap() >= failover.min(500),
        "{r:#}"
    );
    // The site loss: nothing lost beyond the RPO it reports, the RPO and RTO figures there.
    let s = &r["site_loss"];
    assert_eq!(s["site"], "atl", "{s:#}");
    assert_eq!(s["killed"].as_array().unwrap().len(), 3, "{s:#}");
    assert_eq!(s["lost"], 0, "{s:#}");
    assert_eq!(s["duplicated"], 0, "{s:#}");
    assert_eq!(s["cross_site"], 0, "{s:#}");
    assert_eq!(s["kill_at"], "now", "{s:#}");
    for phase in [
        "acknowledged_before",
        "acknowledged_failed_over",
        "acknowledged_after",
    ] {
        assert!(s[phase].as_u64().unwrap() > 0, "{phase}: {s:#}");
    }
    let rpo = &s["rpo"];
    assert_eq!(
        rpo["last_lsn"], s["chat_failover"]["data_loss"]["last_lsn"],
        "{s:#}"
    );
    assert!(rpo["last_lsn"].as_u64().unwrap() > 0, "{s:#}");
    assert!(rpo["last_write"].as_str().is_some(), "{s:#}");
    assert!(rpo["present_in_backup_site"].as_u64().unwrap() > 0, "{s:#}");
    assert_eq!(rpo["lost_in_backup_site"], 0, "{s:#}");
    assert_eq!(rpo["missing_found"], 0, "{s:#}");
    let missing = rpo["missing"].as_u64().unwrap();
    assert!(
        missing + rpo["present_in_backup_site"].as_u64().unwrap()
            == s["acknowledged_before"].as_u64().unwrap(),
        "{s:#}"
    );
    assert!(rpo["missing_span_ms"].as_u64().is_some(), "{s:#}");
    assert_eq!(rpo["missing_first_ack_s"].is_null(), missing == 0, "{s:#}");
    for rto in [
        "cms_failover_ms",
        "chat_failover_ms",
        "chat_failback_ms",
        "outage_ms",
    ] {
        assert!(s["rto"][rto].as_u64().unwrap() > 0, "{rto}: {s:#}");
    }
    // Back to normal, in the primary site.
    assert_eq!(s["chat_state"], "normal", "{s:#}");
    assert_eq!(s["active_servers"], serde_json::json!(["atl-fe"]), "{s:#}");
    assert_eq!(s["primary_after"], "atl-db1", "{s:#}");
    assert_eq!(r["kept"], true, "{r:#}");
    assert!(dir.join("topology.toml").exists());
    assert!(processes_of(&dir).is_empty(), "{:?}", processes_of(&dir));
    assert!(
        std::fs::read_dir(dir.join("run")).unwrap().next().is_none(),
        "no pid file left"
    );
}

#[test]
fn ctrl_c_in_the_middle_of_the_demo_stops_every_node() {
    // Just after the kill, while the clients post into the failover.
    let nodes = nodes(interrupt_after("[5/18]"));
    assert_eq!(nodes.len(), 5, "every node but the killed one: {nodes:?}");
    assert!(
        !nodes.iter().any(|(_, c)| c.contains("atl-db1")),
        "{nodes:?}"
    );
}

#[test]
fn ctrl_c_while_a_procedure_runs_stops_it_and_every_node() {
    // Just after the CMS failover: `tandem chat failover` runs as a subprocess.
    let nodes = nodes(interrupt_after("[12/18]"));
    assert_eq!(nodes.len(), 3, "the atl nodes are down: {nodes:?}");
    assert!(
        nodes.iter().all(|(_, c)| c.contains("dal-")),
        "the atl nodes are down: {nodes:?}"
    );
}

/// The `tandem serve` processes among `processes`.
fn nodes(processes: Vec<(i32, String)>) -> Vec<(i32, String)> {
    processes
        .into_iter()
        .filter(|(_, c)| c.split(' ').any(|a| a == "serve"))
        .collect()
}

/// Runs the demo, sends it SIGINT once it printed the stage line that starts with `line`,
/// checks that it stops every process it started and prints no report; the processes that ran
/// at the interrupt.
fn interrupt_after(line_start: &str) -> Vec<(i32, String)> {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let _sweep = Sweep(&dir);
    let mut demo = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["demo", "--json", "--dir", dir.to_str().unwrap()])
        .env_remove("TANDEM_TOPOLOGY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Ctrl-C: SIGINT to the demo alone (the nodes are in their own process groups, as under a
    // terminal).
    let mut lines = BufReader::new(demo.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("the demo ended before {line_start}: {seen}"))
            .unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.starts_with(line_start) {
            break;
        }
    }
    let nodes = processes_of(&dir);
    // SAFETY: the demo process this test started.
    unsafe {
        libc::kill(demo.id() as i32, libc::SIGINT);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = demo.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the demo did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    };
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let rest = rest.join("\n");
    assert!(!status.success(), "an interrupted demo fails");
    assert!(rest.contains("interrupted (Ctrl-C)"), "{rest}");
    assert!(processes_of(&dir).is_empty(), "{:?}", processes_of(&dir));
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut demo.stdout.take().unwrap(), &mut stdout).unwrap();
    assert!(stdout.is_empty(), "no report on stdout: {stdout}");
    nodes
}
