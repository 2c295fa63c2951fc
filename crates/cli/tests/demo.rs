//! `tandem demo` through the binary: the chat database's primary killed under load, no
//! acknowledged post lost, the mirror primary of a new epoch, and no node left behind — after a
//! whole run and after a Ctrl-C in the middle of one.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The demos of this file, one at a time: each runs six nodes and a load on a small machine.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Live `tandem serve` processes whose command line names `dir` (`--topology DIR/…`).
fn processes_of(dir: &Path) -> Vec<(i32, String)> {
    let dir = dir.to_str().unwrap().as_bytes();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        let serve = cmdline.split(|b| *b == 0).any(|a| a == b"serve");
        if !zombie && serve && cmdline.windows(dir.len()).any(|w| w == dir) {
            found.push((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
        }
    }
    found
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
    assert!(stderr.contains("[10/10]"), "{stderr}");
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
    // Just after the kill, while the clients post into the failover: Ctrl-C (SIGINT to the
    // demo alone: the nodes are in their own process groups, as under a terminal).
    let mut lines = BufReader::new(demo.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("the demo ended before the kill: {seen}"))
            .unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.starts_with("[5/10]") {
            break;
        }
    }
    let nodes = processes_of(&dir);
    assert_eq!(nodes.len(), 5, "every node but the killed one: {nodes:?}");
    assert!(
        !nodes.iter().any(|(_, c)| c.contains("atl-db1")),
        "{nodes:?}"
    );
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
}
