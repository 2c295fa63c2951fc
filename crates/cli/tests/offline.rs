//! The offline commands, driven as an operator would: through the `tandem` binary.

mod common;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tandem(args: &[&str]) -> Output {
    common::output_within_deadline(Command::new(env!("CARGO_BIN_EXE_tandem")).args(args))
}

fn ok_json(args: &[&str]) -> Value {
    let out = tandem(args);
    assert!(
        out.status.success(),
        "tandem {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "tandem {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn fails(args: &[&str]) -> String {
    let out = tandem(args);
    assert!(!out.status.success(), "tandem {args:?} should have failed");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line on stderr: {err}"
    );
    err
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `bench store --dir` into a temporary directory: the directory, `DIR/bench`, the report and
/// its LSN.
fn bench_dir(rows: &str) -> (tempfile::TempDir, PathBuf, Value, u64) {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("bench");
    let report = ok_json(&["bench", "store", "--dir", s(&d), "--rows", rows, "--json"]);
    let lsn = report["lsn"].as_u64().unwrap();
    (t, d, report, lsn)
}

#[test]
fn bench_leaves_backups_that_verify_restore_and_inspect() {
    let (t, d, report, lsn) = bench_dir("2000");
    assert_eq!(report["store"][2]["writers"].as_u64(), Some(256));
    assert_eq!(report["store_256_to_raw"], report["store_to_raw"]);
    let chain = report["chain"].as_str().unwrap().to_string();
    assert!(lsn > 2000);
    // Where each phase's commits spent their time: every stage counted, and together no more
    // than the round trip the writers measured (the stages are parts of it, each counted once).
    for phase in report["store"].as_array().unwrap() {
        let st = &phase["stages"];
        let us = |k: &str| st[k].as_f64().unwrap();
        let stages = [
            "queued_us",
            "group_us",
            "to_syncer_us",
            "fsync_us",
            "answer_us",
        ];
        assert!(us("group_us") > 0.0 && us("fsync_us") > 0.0, "{phase}");
        let sum: f64 = stages.iter().map(|k| us(k)).sum();
        let mean = phase["mean_us"].as_f64().unwrap();
        assert!(
            sum <= mean + 2.0,
            "stages {sum} µs of a {mean} µs commit: {phase}"
        );
    }

    let source = ok_json(&["db", "inspect", s(&d.join("db")), "--json"]);
    assert_eq!(source["lsn"].as_u64(), Some(lsn));
    assert_eq!(source["chain"].as_str(), Some(chain.as_str()));

    let backups = d.join("backups");
    let verified = ok_json(&["db", "verify", s(&backups), "--json"]);
    assert_eq!(verified["last_lsn"].as_u64(), Some(lsn));
    let files: Vec<_> = std::fs::read_dir(&backups)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        files
            .iter()
            .filter(|p| p.extension().unwrap() == "tfb")
            .count(),
        1
    );
    // Three log backups while the 16 writers wrote, however short the run, then the last one
    // after the writes ended.
    assert_eq!(report["log_backups_during_writes"], 3);
    assert_eq!(
        files
            .iter()
            .filter(|p| p.extension().unwrap() == "tlb")
            .count(),
        4
    );

    let restored = t.path().join("restored");
    let r = ok_json(&[
        "db",
        "restore",
        "--path",
        s(&restored),
        "--from",
        s(&backups),
        "--json",
    ]);
    assert_eq!(r["lsn"].as_u64(), Some(lsn));
    let inspected = ok_json(&["db", "inspect", s(&restored), "--json"]);
    assert_eq!(inspected["lsn"].as_u64(), Some(lsn));
    assert_eq!(inspected["chain"].as_str(), Some(chain.as_str()));
    assert_eq!(inspected["role"].as_str(), Some("primary"));

    // A damaged copy of the backups: verify and restore refuse, naming the file.
    let damaged = t.path().join("damaged");
    std::fs::create_dir(&damaged).unwrap();
    let mut victim = None;
    for f in &files {
        let to = damaged.join(f.file_name().unwrap());
        std::fs::copy(f, &to).unwrap();
        if f.extension().unwrap() == "tlb" {
            victim = Some(to);
        }
    }
    let victim = victim.unwrap();
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = 4200 + (bytes.len() - 4200) / 2;
    bytes[mid] ^= 1;
    std::fs::write(&victim, bytes).unwrap();
    let name = victim.file_name().unwrap().to_str().unwrap().to_string();
    let err = fails(&["db", "verify", s(&damaged)]);
    assert!(err.contains(&name), "{err}");
    let target = t.path().join("from-damaged");
    let err = fails(&["db", "restore", "--path", s(&target), "--from", s(&damaged)]);
    assert!(err.contains(&name), "{err}");
    assert!(!target.exists(), "a refused restore leaves nothing behind");
}

/// `--writers` sets the last run's concurrency; the ratio at the target's load (256) is only
/// reported when that load ran, and a count out of range is refused before anything runs.
#[test]
fn bench_store_writers_sets_the_last_run() {
    let report = ok_json(&[
        "bench",
        "store",
        "--rows",
        "1000",
        "--writers",
        "32",
        "--json",
    ]);
    let phases = report["store"].as_array().unwrap();
    let writers: Vec<_> = phases
        .iter()
        .map(|p| p["writers"].as_u64().unwrap())
        .collect();
    assert_eq!(writers, [1, 16, 32]);
    let ratio = report["store_to_raw"].as_f64().unwrap();
    let raw = report["raw_batched_inserts"]["per_second"]
        .as_f64()
        .unwrap();
    let last = phases[2]["per_second"].as_f64().unwrap();
    assert!((ratio - last / raw).abs() < 1e-9, "{report}");
    assert!(report.get("store_256_to_raw").is_none(), "{report}");
    for bad in ["0", "4097", "many"] {
        let out = tandem(&["bench", "store", "--writers", bad]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--writers {bad} was accepted");
        assert!(
            err.contains(&format!("invalid value '{bad}' for '--writers")),
            "{err}"
        );
    }
    // A negative number is a wrong value, not an unknown flag ("unexpected argument '-1'").
    for args in [
        &["chat", "history", "lobby", "--limit", "-1", "--as", "alice"][..],
        &[
            "db",
            "restore",
            "--path",
            "x",
            "--from",
            "y",
            "--stop-at-lsn",
            "-1",
        ][..],
    ] {
        let out = tandem(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("invalid value '-1' for '--"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn restore_in_steps_norecovery_then_standby_then_recover() {
    let (t, d, _, lsn) = bench_dir("1000");
    let backups = d.join("backups");
    let mut logs: Vec<_> = std::fs::read_dir(&backups)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().unwrap() == "tlb")
        .collect();
    logs.sort();
    let full = std::fs::read_dir(&backups)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().unwrap() == "tfb")
        .unwrap();
    let last = logs.pop().unwrap();
    let target = t.path().join("secondary");
    let mut args = vec![
        "db",
        "restore",
        "--path",
        s(&target),
        "--norecovery",
        "--json",
        "--from",
        s(&full),
    ];
    args.extend(logs.iter().map(|p| s(p)));
    let r = ok_json(&args);
    assert_eq!(r["role"].as_str(), Some("restoring"));
    let r = ok_json(&[
        "db",
        "restore",
        "--path",
        s(&target),
        "--standby",
        "--json",
        "--from",
        s(&last),
    ]);
    assert_eq!(
        (r["role"].as_str(), r["lsn"].as_u64()),
        (Some("standby"), Some(lsn))
    );
    let r = ok_json(&[
        "db",
        "restore",
        "--path",
        s(&target),
        "--json",
        "--from",
        s(&backups),
    ]);
    assert_eq!(
        (r["role"].as_str(), r["records_applied"].as_u64()),
        (Some("primary"), Some(0))
    );
    // After recover, no log of the old chain is applied.
    let err = fails(&["db", "restore", "--path", s(&target), "--from", s(&last)]);
    assert!(err.contains("after recover"), "{err}");
    // Point in time into a new copy.
    let pit = t.path().join("pit");
    let stop = (lsn - 50).to_string();
    let r = ok_json(&[
        "db",
        "restore",
        "--path",
        s(&pit),
        "--from",
        s(&backups),
        "--stop-at-lsn",
        &stop,
        "--json",
    ]);
    assert_eq!(r["lsn"].as_u64(), Some(lsn - 50));
    assert_eq!(r["stopped"].as_bool(), Some(true));
    // A stop point past the files: not recovered short of it, and said so in one line.
    let past = (lsn + 1).to_string();
    let short = t.path().join("short");
    let args = [
        "db",
        "restore",
        "--path",
        s(&short),
        "--from",
        s(&backups),
        "--stop-at-lsn",
        &past,
    ];
    let err = fails(&args);
    assert!(
        err.contains(&format!("the files end at LSN {lsn}")) && err.contains("--norecovery"),
        "{err}"
    );
    assert!(!short.exists());
    let r = ok_json(&[&args[..], &["--norecovery", "--json"]].concat());
    assert_eq!(r["stop_not_reached"].as_bool(), Some(true));
    assert_eq!(r["role"].as_str(), Some("restoring"));
    // A log-shipping directory with its older backups in `archive/`: a stop point before its
    // newest full backup, with the directory given alone, is refused with the archive named.
    let shipped = t.path().join("shipped");
    let archive = shipped.join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    for f in std::fs::read_dir(&backups).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, archive.join(f.file_name().unwrap())).unwrap();
    }
    ok_json(&[
        "db",
        "backup",
        "--path",
        s(&d.join("db")),
        "--to",
        s(&shipped),
        "--json",
    ]);
    let early = t.path().join("early");
    let err = fails(&[
        "db",
        "restore",
        "--path",
        s(&early),
        "--from",
        s(&shipped),
        "--stop-at-lsn",
        &stop,
    ]);
    assert!(
        err.contains("no full backup at or before the stop point")
            && err.contains(&format!("{}: add it to --from", s(&archive))),
        "{err}"
    );
    let r = ok_json(&[
        "db",
        "restore",
        "--path",
        s(&early),
        "--from",
        s(&shipped),
        s(&archive),
        "--stop-at-lsn",
        &stop,
        "--json",
    ]);
    assert_eq!(r["lsn"].as_u64(), Some(lsn - 50));
    // Paths that are files where a directory belongs: named, and left as they were.
    let file = t.path().join("a-file");
    std::fs::write(&file, b"keep").unwrap();
    let err = fails(&["db", "restore", "--path", s(&file), "--from", s(&backups)]);
    assert!(
        err.contains("a-file exists and is not a directory"),
        "{err}"
    );
    let err = fails(&["db", "backup", "--path", s(&d.join("db")), "--to", s(&file)]);
    assert!(err.contains("a-file: "), "{err}");
    assert_eq!(err.matches("os error").count(), 1, "said once: {err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep");
}

#[test]
fn bad_arguments_get_one_clear_line() {
    let t = tempfile::tempdir().unwrap();
    let err = fails(&["db", "inspect", s(&t.path().join("nothing"))]);
    assert!(err.contains("nothing does not exist"), "{err}");
    let err = fails(&["db", "inspect", s(t.path())]);
    assert!(err.contains("is not a tandem database (no "), "{err}");
    let text = t.path().join("notes.txt");
    std::fs::write(&text, "not a database at all, but long enough to look at").unwrap();
    let err = fails(&["db", "inspect", s(&text)]);
    assert!(
        err.contains("notes.txt") && err.contains("not a tandem backup file"),
        "{err}"
    );
    let err = fails(&["db", "verify", s(t.path())]);
    assert!(
        err.contains("no backup files") && err.contains(s(t.path())),
        "{err}"
    );
    let x = t.path().join("x");
    let restore = |more: &[&str]| {
        let mut args = vec!["db", "restore", "--path", s(&x), "--from", s(t.path())];
        args.extend_from_slice(more);
        fails(&args)
    };
    let err = restore(&[]);
    assert!(
        err.contains("no backup files") && err.contains(s(t.path())),
        "{err}"
    );
    assert!(!x.exists(), "a refused restore leaves nothing");
    let junk = t.path().join("junk.tlb");
    std::fs::write(&junk, b"hello").unwrap();
    let err = fails(&["db", "verify", s(&junk)]);
    assert!(
        err.contains("junk.tlb") && err.contains("too short"),
        "{err}"
    );
    let err = restore(&["--stop-at-time", "yesterday"]);
    assert!(err.contains("RFC 3339"), "{err}");
    // A usage error is one line too (clap's own would be a paragraph), with clap's exit code.
    let out = tandem(&[
        "db",
        "restore",
        "--path",
        "y",
        "--from",
        "z",
        "--norecovery",
        "--standby",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("'--norecovery' cannot be used with '--standby'"),
        "{err}"
    );
    let err = fails(&["db", "verify", "--no-such-flag"]);
    assert!(err.contains("--no-such-flag"), "{err}");
    // `--replace` never removes a directory that holds no database.
    let docs = t.path().join("docs");
    std::fs::create_dir(&docs).unwrap();
    std::fs::write(docs.join("notes.txt"), "precious").unwrap();
    let err = fails(&[
        "db",
        "restore",
        "--path",
        s(&docs),
        "--from",
        s(t.path()),
        "--replace",
    ]);
    assert!(err.contains("holds no tandem database"), "{err}");
    assert_eq!(
        std::fs::read_to_string(docs.join("notes.txt")).unwrap(),
        "precious"
    );
    // init: into a file, or over a deployment.
    let err = fails(&["init", s(&text)]);
    assert!(err.contains("notes.txt is a file"), "{err}");
    let dir = t.path().join("d");
    assert!(tandem(&["init", s(&dir)]).status.success());
    let err = fails(&["init", s(&dir)]);
    assert!(err.contains("topology.toml exists"), "{err}");
    // Its topology gone, what it left is not taken for a new deployment's.
    std::fs::remove_file(dir.join("topology.toml")).unwrap();
    let err = fails(&["init", s(&dir)]);
    assert!(
        err.contains("holds share of an earlier deployment"),
        "{err}"
    );
    assert!(!dir.join("topology.toml").exists());
}

/// `db restore --replace` over a copy another process has open (a node serving it) refuses at
/// once, naming it, and leaves it as it was; once closed, the same command replaces it.
#[test]
fn a_restore_does_not_replace_a_copy_that_is_open() {
    let (_dir, d, _, lsn) = bench_dir("1000");
    let (db, backups) = (d.join("db"), d.join("backups"));
    let open = tandem_store::Database::open(&db, tandem_store::Options::default()).unwrap();
    let args = [
        "db",
        "restore",
        "--path",
        s(&db),
        "--replace",
        "--from",
        s(&backups),
    ];
    let err = fails(&args);
    assert!(
        err.contains("still open") && err.contains(s(&db)) && err.contains("as it was"),
        "{err}"
    );
    assert_eq!(open.identity().lsn, lsn);
    let mut args_json = args.to_vec();
    args_json.push("--json");
    drop(open);
    let r = ok_json(&args_json);
    assert_eq!(r["lsn"].as_u64(), Some(lsn));
    let leftovers: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
