//! Log shipping of `mgc` from `atl` to `dal-db1`, as real processes (the two-site example): out
//! of the box after `up`; the failover steps after the loss of every `atl` node (copy, restore,
//! recover: every post up to the reported LSN is in `dal`); a damaged or missing log backup
//! stops the restore step with the file named; a damaged secondary is seeded again; the chain
//! goes on across a mirror failover; the online backup, restore and recover and their refusals.

mod common;

use common::{Acked, Deployment, Load, http, json, ok, post, tandem, user_and_room};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

impl Deployment {
    /// The example deployment, all six nodes up, `mgc` mirrored and shipped to `dal-db1`.
    fn up() -> Deployment {
        let d = Deployment::start(|t| t);
        d.wait_status("dal-db1 applying the first full backup", |m| {
            m["secondary"]["node"] == "dal-db1"
                && m["secondary"]["role"] == "restoring"
                && m["secondary"]["seed"] == m["config"]["seed"]
        });
        d
    }

    fn share(&self) -> PathBuf {
        self.dir.join("share").join("mgc")
    }

    fn kill(&self, node: &str) {
        let pid: i32 = std::fs::read_to_string(self.dir.join("run").join(format!("{node}.pid")))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // SAFETY: a node this test started.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }

    fn log(&self, node: &str) -> String {
        let text =
            std::fs::read_to_string(self.dir.join(format!("logs/{node}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// `tandem db log-shipping status --db mgc --json`.
    fn status(&self) -> Value {
        json(&self.dir, &["db", "log-shipping", "status", "--db", "mgc"])
    }

    /// Waits, with a deadline, until the monitor satisfies `cond`.
    fn wait_status(&self, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = tandem(
                &self.dir,
                &["db", "log-shipping", "status", "--db", "mgc", "--json"],
            );
            let m: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            if cond(&m) {
                return m;
            }
            if Instant::now() > deadline {
                panic!(
                    "log shipping: {what}; last: {m:#}\n{}\n--- atl-db1 ---\n{}\n--- dal-db1 ---\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    self.log("atl-db1"),
                    self.log("dal-db1")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the secondary applied `lsn`.
    fn wait_applied(&self, lsn: u64) -> Value {
        self.wait_status(&format!("dal-db1 at LSN {lsn}"), |m| {
            m["secondary"]["lsn"].as_u64() >= Some(lsn)
        })
    }

    /// The status line of `db` on `node` in `tandem status`.
    fn copy(&self, db: &str, node: &str) -> Value {
        let s = json(&self.dir, &["status"]);
        s["databases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["database"] == db && c["node"] == node)
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// Waits, with a deadline, until the log-shipping state of `mgc` on `node` says `what`.
    fn wait_jobs_state(&self, node: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let c = self.copy("mgc", node);
            if c["log_shipping"]["state"]
                .as_str()
                .is_some_and(|s| s.contains(what))
            {
                return;
            }
            assert!(Instant::now() < deadline, "{node} never said {what:?}: {c}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A command that must fail; its one line on stderr.
    fn refused(&self, args: &[&str], expect: &str) -> String {
        self.refused_with(args, &[expect])
    }

    /// Refused with one of `expected` (when which one depends on a race the test does not
    /// control, both answers being right).
    fn refused_with(&self, args: &[&str], expected: &[&str]) -> String {
        let out = tandem(&self.dir, args);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            !out.status.success(),
            "{args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(expected.iter().any(|e| err.contains(e)), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        err
    }

    /// A procedure on `node`'s copy of `mgc`, through the internal API.
    fn call(&self, node: &str, procedure: &str, args: Value) -> (u16, Value) {
        let secret = self.secret();
        let body = json!({ "procedure": procedure, "args": args }).to_string();
        let (code, body) = http(
            &self.address(node),
            "POST",
            "/internal/v1/db/mgc/call",
            &[
                ("x-tandem-secret", secret.as_str()),
                ("content-type", "application/json"),
            ],
            body,
        );
        (code, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    /// Every message of the room `lobby` in `node`'s copy: id → (text, lsn).
    fn history_on(&self, node: &str) -> Vec<(i64, String, u64)> {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let (code, v) = self.call(
                node,
                "chat.history",
                json!({ "user": "alice", "room": "lobby", "query": { "after": after, "limit": 500 } }),
            );
            assert_eq!(code, 200, "{v}");
            let page = v["result"]["events"].as_array().unwrap().clone();
            if page.is_empty() {
                return all;
            }
            for m in page {
                after = m["id"].as_i64().unwrap();
                all.push((
                    after,
                    m["text"].as_str().unwrap_or("").to_string(),
                    m["lsn"].as_u64().unwrap(),
                ));
            }
        }
    }
}

/// Posts `n` messages; the last one's LSN.
fn posts(d: &Deployment, token: &str, prefix: &str, n: usize) -> Vec<Acked> {
    let fe = d.address("atl-fe");
    (0..n)
        .map(|i| post(&fe, token, &format!("{prefix} {i}")).expect("acknowledged"))
        .collect()
}

/// `rounds` times five posts, each round in a log backup of its own on the share.
fn posts_in_log_backups(d: &Deployment, token: &str, rounds: usize) -> Vec<Acked> {
    let mut sent = Vec::new();
    for round in 0..rounds {
        sent.extend(posts(d, token, &format!("round {round}"), 5));
        let lsn = sent.last().unwrap().lsn;
        d.wait_status("the share past the posts", |m| {
            m["newest_log"]["lsn"].as_u64() >= Some(lsn)
        });
    }
    sent
}

/// The log backups in `dir`, sorted by name (LSN order).
fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "tlb"))
        .collect();
    v.sort();
    v
}

/// The LSN range a log backup's name says.
/// `tandem db restore` of mgc on `node` from `from`, with `extra` options.
fn restore_mgc<'a>(node: &'a str, from: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "db",
        "restore",
        "--db",
        "mgc",
        "--instance",
        node,
        "--from",
        from,
    ];
    args.extend_from_slice(extra);
    args
}

fn range(p: &Path) -> (u64, u64) {
    let name = p.file_name().unwrap().to_str().unwrap();
    let mut it = name
        .trim_start_matches("log-")
        .trim_end_matches(".tlb")
        .split('-')
        .map(|h| u64::from_str_radix(h, 16).unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

/// `db log-shipping configure` of `mgc` to `dal-db1`.
const CONFIGURE_MGC: [&str; 7] = [
    "db",
    "log-shipping",
    "configure",
    "--db",
    "mgc",
    "--secondary",
    "dal-db1",
];

/// `CONFIGURE_MGC` with `options`: its JSON report.
fn configure_mgc(d: &Deployment, options: &[&str]) -> Value {
    json(&d.dir, &[&CONFIGURE_MGC[..], options].concat())
}

#[test]
fn after_up_posts_reach_the_secondary_within_seconds() {
    let d = Deployment::up();
    let token = user_and_room(&d);
    let sent = posts(&d, &token, "hello", 30);
    let last = sent.last().unwrap().lsn;
    let m = d.wait_applied(last);
    assert_eq!(m["config"]["secondary"], "dal-db1", "{m:#}");
    assert_eq!(m["config"]["primary_site"], "atl", "{m:#}");
    assert_eq!(m["primary"]["node"], "atl-db1", "{m:#}");
    // The files are on the share, and the secondary's position is the primary's.
    let m = d.wait_status("no lag and no alert", |m| {
        m["lag_records"] == 0 && m["alerts"].as_array().is_some_and(|a| a.is_empty())
    });
    assert!(m["full_backups"].as_u64() >= Some(1), "{m:#}");
    assert!(m["log_backups"].as_u64() >= Some(1), "{m:#}");
    assert!(!log_files(&d.share()).is_empty());
    assert_eq!(m["lag_ms"], 0, "{m:#}");
    // tandem status shows the jobs on each copy; the human monitor names them.
    let c = d.copy("mgc", "dal-db1");
    assert_eq!(c["role"], "restoring", "{c}");
    let human = ok(&d.dir, &["db", "log-shipping", "status", "--db", "mgc"]);
    for word in [
        "backup   atl-db1",
        "copy     dal-db1",
        "restore  dal-db1",
        "alerts     none",
    ] {
        assert!(human.contains(word), "{word}: {human}");
    }
    // Reconfigured (a shorter interval): the secondary is seeded again and applies.
    let r = configure_mgc(
        &d,
        &["--backup-interval-ms", "500", "--retention-ms", "60000"],
    );
    assert_eq!(r["secondary"], "dal-db1", "{r}");
    assert_eq!(r["config"]["backup_interval_ms"], 500, "{r}");
    assert_eq!(r["config"]["retention_ms"], 60000, "{r}");
    assert!(r["applied_lsn"].as_u64() >= r["lsn"].as_u64(), "{r}");
    let more = posts(&d, &token, "after reconfigure", 10);
    d.wait_applied(more.last().unwrap().lsn);
    // A timeout of 0 is refused before anything changes (the configuration was rewritten and a
    // full backup taken, then the command failed).
    let before = d.status()["config"].clone();
    d.refused(
        &[
            "db",
            "log-shipping",
            "configure",
            "--db",
            "mgc",
            "--secondary",
            "dal-db1",
            "--timeout",
            "0",
        ],
        "invalid value '0' for '--timeout <TIMEOUT>'",
    );
    assert_eq!(d.status()["config"], before);
    // Configured again with no option (as a failback does): the options stay.
    let r = configure_mgc(&d, &[]);
    assert_eq!(r["config"]["backup_interval_ms"], 500, "{r}");
    assert_eq!(r["config"]["retention_ms"], 60000, "{r}");
    let human = ok(&d.dir, &["db", "log-shipping", "status", "--db", "mgc"]);
    assert!(
        human.contains("log backups every 0.5 s")
            && human.contains("any moment of the last 60.0 s needs is kept"),
        "{human}"
    );

    // The share goes missing (unmounted, say): no node makes a new one (a new log chain in a
    // local directory the other site never sees); the monitor and the primary's status say
    // why; once it is back, shipping goes on where it was, nothing missed.
    let share_root = d.dir.join("share");
    let away = d.dir.join("share-unmounted");
    std::fs::rename(&share_root, &away).unwrap();
    let missing = posts(&d, &token, "while the share is missing", 3);
    d.wait_jobs_state("atl-db1", "is missing (not mounted?");
    d.refused(
        &["db", "log-shipping", "status", "--db", "mgc"],
        "is missing (not mounted?",
    );
    assert!(!share_root.exists(), "a node made the share again");
    // An empty directory at its path (a mount point with nothing mounted): not taken for a new
    // share (the nodes claimed it, began a chain there and seeded the secondary from it).
    std::fs::create_dir(&share_root).unwrap();
    d.wait_jobs_state("atl-db1", "not mounted?");
    let unmounted = posts(&d, &token, "while unmounted", 2);
    std::thread::sleep(Duration::from_secs(2));
    let made: Vec<_> = std::fs::read_dir(&share_root).unwrap().flatten().collect();
    assert!(
        made.is_empty(),
        "written into the empty directory: {made:?}"
    );
    std::fs::remove_dir(&share_root).unwrap();
    std::fs::rename(&away, &share_root).unwrap();
    d.wait_applied(
        unmounted
            .last()
            .unwrap()
            .lsn
            .max(missing.last().unwrap().lsn),
    );
}

#[test]
fn after_the_loss_of_atl_the_steps_recover_every_post_up_to_the_reported_lsn() {
    let d = Deployment::up();
    let token = user_and_room(&d);
    let load = Load::start(&d.address("atl-fe"), &token, 4);
    let deadline = Instant::now() + Duration::from_secs(30);
    while load.count() < 200 {
        assert!(Instant::now() < deadline, "the load did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Shipping under the load, then a moment more of it before the disaster.
    let lsn = load.nth(100).expect("200 acknowledged").lsn;
    d.wait_applied(lsn);
    std::thread::sleep(Duration::from_millis(700));
    // The whole site at once.
    for node in ["atl-fe", "atl-db1", "atl-db2"] {
        d.kill(node);
    }
    let killed = Instant::now();
    let acked = load.stop();

    // Step 1: stop log shipping to the secondary.
    let r = json(
        &d.dir,
        &["db", "log-shipping", "remove-secondary", "--db", "mgc"],
    );
    assert_eq!(r["removed"], "dal-db1", "{r}");
    // Step 2: copy what the secondary has not copied.
    let c = json(&d.dir, &["db", "log-shipping", "copy", "--db", "mgc"]);
    assert_eq!(c["copied_lsn"], c["share_lsn"], "{c}");
    // Step 3: apply it; the answer is the data-loss point.
    let r = json(&d.dir, &["db", "log-shipping", "restore", "--db", "mgc"]);
    let lsn = r["lsn"].as_u64().unwrap();
    assert_eq!(lsn, c["share_lsn"].as_u64().unwrap(), "{r} {c}");
    assert!(r["last_time_ms"].as_i64() > Some(0), "{r}");
    assert_eq!(r["role"], "restoring", "{r}");
    // Step 4: bring it online.
    let rec = json(
        &d.dir,
        &["db", "recover", "--db", "mgc", "--instance", "dal-db1"],
    );
    assert_eq!(rec["role"], "primary", "{rec}");
    assert_eq!(rec["lsn"], lsn, "{rec}");
    assert!(rec["epoch"].as_u64() > r["epoch"].as_u64(), "{rec} {r}");

    // Every acknowledged post up to that LSN is in dal, once, with its text.
    let history = d.history_on("dal-db1");
    let mut by_id = std::collections::HashMap::new();
    for (id, text, l) in &history {
        assert!(
            by_id.insert(*id, (text.clone(), *l)).is_none(),
            "id {id} twice"
        );
        assert!(
            *l <= lsn,
            "event {id} at LSN {l} past the restored LSN {lsn}"
        );
    }
    let (kept, lost): (Vec<_>, Vec<_>) = acked.iter().partition(|(a, _)| a.lsn <= lsn);
    assert!(!kept.is_empty(), "nothing acknowledged was shipped");
    for (a, _) in &kept {
        assert_eq!(
            by_id.get(&a.id).map(|(t, _)| t.as_str()),
            Some(a.text.as_str()),
            "acknowledged post {} (LSN {}) is missing in dal",
            a.id,
            a.lsn
        );
    }
    // What the failover lost: posts acknowledged after the last shipped LSN (measured, shown).
    let last_kept = kept.iter().map(|(_, t)| *t).max().unwrap();
    let last_acked = acked.iter().map(|(_, t)| *t).max().unwrap();
    eprintln!(
        "site loss: {} posts acknowledged, {} recovered up to LSN {lsn}, {} lost, spanning {:.2} s of traffic (kill {:.2} s after the last acknowledged post)",
        acked.len(),
        kept.len(),
        lost.len(),
        last_acked.duration_since(last_kept).as_secs_f64(),
        killed.duration_since(last_acked).as_secs_f64()
    );
    // The recovered copy takes writes, of a new epoch.
    let (code, v) = d.call(
        "dal-db1",
        "chat.post",
        json!({ "user": "alice", "room": "lobby", "text": "in dal" }),
    );
    assert_eq!(code, 200, "{v}");
    assert!(v["result"]["lsn"].as_u64() > Some(lsn), "{v}");
    // The steps refuse what no longer makes sense.
    d.refused(
        &["db", "log-shipping", "restore", "--db", "mgc"],
        "is primary",
    );
    d.refused(
        &["db", "recover", "--db", "mgc", "--instance", "dal-db1"],
        "already primary",
    );
}

#[test]
fn a_damaged_or_missing_log_backup_stops_the_restore_step_there_with_the_file_named() {
    let d = Deployment::up();
    let token = user_and_room(&d);
    let first = posts(&d, &token, "shipped", 5);
    d.wait_applied(first.last().unwrap().lsn);
    // The secondary's jobs stop; the primary goes on writing log backups to the share.
    ok(
        &d.dir,
        &["db", "log-shipping", "remove-secondary", "--db", "mgc"],
    );
    let at = d.status()["secondary"]["lsn"].as_u64().unwrap();
    posts_in_log_backups(&d, &token, 3);
    let pending: Vec<PathBuf> = log_files(&d.share())
        .into_iter()
        .filter(|p| range(p).1 > at)
        .collect();
    assert!(pending.len() >= 2, "{pending:?}");
    // A flipped byte in the first record of the first file the secondary needs.
    let damaged = &pending[0];
    let mut bytes = std::fs::read(damaged).unwrap();
    bytes[4108 + 20] ^= 0x40;
    std::fs::write(damaged, &bytes).unwrap();
    let c = json(&d.dir, &["db", "log-shipping", "copy", "--db", "mgc"]);
    assert!(
        c["files_copied"].as_array().unwrap().len() >= pending.len(),
        "{c}"
    );
    // The step applies what comes before it (nothing here), and says where and why it
    // stops: what comes after it is what a failover loses.
    let name = damaged.file_name().unwrap().to_str().unwrap();
    let r = json(&d.dir, &["db", "log-shipping", "restore", "--db", "mgc"]);
    let stopped = r["stopped"].as_str().unwrap_or("");
    assert!(
        stopped.contains(name) && (stopped.contains("corrupt") || stopped.contains("checksum")),
        "{r}"
    );
    assert_eq!(r["lsn"], at, "{r}");
    assert_eq!(d.copy("mgc", "dal-db1")["lsn"], at, "the copy moved");
    // Missing instead: the next file does not follow the copy's LSN.
    let local = d.dir.join("data/dal-db1/log-shipping/mgc");
    std::fs::remove_file(local.join(name)).unwrap();
    std::fs::remove_file(damaged).unwrap();
    let next = pending[1].file_name().unwrap().to_str().unwrap();
    let out = ok(&d.dir, &["db", "log-shipping", "restore", "--db", "mgc"]);
    assert!(
        out.contains(&format!("stopped at LSN {at}: a gap")) && out.contains(next),
        "{out}"
    );
    assert_eq!(d.copy("mgc", "dal-db1")["lsn"], at, "the copy moved");
    let m = d.status();
    let e = m["secondary"]["restore"]["error"].as_str().unwrap_or("");
    assert!(e.contains(next), "{m:#}");
}

#[test]
fn a_secondary_that_cannot_go_on_from_its_copy_is_seeded_again_from_a_newer_full_backup() {
    seeded_again_after(|lost| std::fs::remove_file(lost).unwrap());
}

#[test]
fn a_secondary_that_meets_a_damaged_log_backup_is_seeded_again_from_a_newer_full_backup() {
    // Until session 32 a missing log backup made it seed itself again, a damaged one did not.
    seeded_again_after(truncate_half);
}

/// Cuts `file` to half its length: a damaged backup file.
fn truncate_half(file: &Path) {
    let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.set_len(f.metadata().unwrap().len() / 2).unwrap();
}

/// The example deployment with posts shipped and applied, then its secondary (dal-db1) frozen
/// (SIGSTOP; the caller continues it, or the deployment kills it) while `rounds` rounds of posts
/// each reach a log backup of their own on the share: the token, dal-db1's pid, and the log
/// backups on the share past the LSN it applied.
fn secondary_frozen_behind(rounds: usize) -> (Deployment, String, i32, Vec<PathBuf>) {
    let d = Deployment::up();
    let token = user_and_room(&d);
    let first = posts(&d, &token, "shipped", 5);
    d.wait_applied(first.last().unwrap().lsn);
    let at = d.status()["secondary"]["lsn"].as_u64().unwrap();
    let pid = common::pid(&d.dir, "dal-db1");
    // SAFETY: a node this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    posts_in_log_backups(&d, &token, rounds);
    let behind = log_files(&d.share())
        .into_iter()
        .filter(|p| range(p).0 > at)
        .collect();
    (d, token, pid, behind)
}

/// The secondary stopped while log backups are written, one of those it needs `spoil`ed on the
/// share, and a full backup taken past it: once back, the secondary seeds itself again from
/// that full backup and goes on.
fn seeded_again_after(spoil: fn(&Path)) {
    // The secondary stopped (its node frozen) while the primary writes log backups; one it
    // needs is spoiled on the share, and a full backup is taken past it.
    let (d, token, pid, behind) = secondary_frozen_behind(2);
    let lost = behind.first().expect("a log backup past the secondary");
    spoil(lost);
    ok(
        &d.dir,
        &["db", "backup", "--db", "mgc", "--instance", "atl-db1"],
    );
    let after = posts(&d, &token, "after", 5);
    let last = after.last().unwrap().lsn;
    d.wait_status("the share past the last posts", |m| {
        m["newest_log"]["lsn"].as_u64() >= Some(last)
    });
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    // Back, its jobs find the gap, seed the copy again from the newer full backup, and go on.
    let m = d.wait_applied(last);
    assert_eq!(m["alerts"], json!([]), "{m:#}");
    assert!(
        d.log("dal-db1")
            .contains("the chain cannot go on from the copy: seeding it again"),
        "{}",
        d.log("dal-db1")
    );
}

#[test]
fn a_stray_file_named_like_a_log_backup_is_named_the_lag_grows_and_once_moved_shipping_goes_on() {
    let d = Deployment::up();
    let token = user_and_room(&d);
    let first = posts(&d, &token, "shipped", 5);
    d.wait_applied(first.last().unwrap().lsn);
    // Not a backup, named like one past every LSN: the end of the share's chain.
    let stray = d.share().join("log-0000000000100000-0000000000100010.tlb");
    std::fs::write(&stray, vec![7u8; 3000]).unwrap();
    let during = posts(&d, &token, "during", 20);
    let last = during.last().unwrap().lsn;
    // The backup job names the file and what to do; the monitor shows the primary where it is,
    // and the lag it makes (until session 32 it showed the last round that went through: a
    // lag of a few records); the secondary copies nothing of it.
    let m = d.wait_status("the lag of the posts since", |m| {
        m["primary"]["lsn"].as_u64() >= Some(last)
            && m["lag_records"].as_u64() >= Some(20)
            && m["alerts"].as_array().is_some_and(|a| {
                a.iter().any(|a| {
                    a.as_str()
                        .unwrap()
                        .contains(&format!("move it out of {}", d.share().display()))
                })
            })
    });
    let local = d.dir.join("data/dal-db1/log-shipping/mgc");
    assert!(
        !local.join(stray.file_name().unwrap()).exists(),
        "copied: {m:#}"
    );
    // Moved away, shipping goes on.
    std::fs::rename(&stray, d.dir.join("stray.tlb")).unwrap();
    let m = d.wait_applied(last);
    let after = d.wait_status("no alert", |m| m["alerts"] == json!([]));
    assert_eq!(after["lag_records"], json!(0), "{m:#}");
}

/// A backup job that cannot write the primary's position to the share (full, say) leaves an
/// old one there: the monitor counts the lag from the primary's own answer, and says why
/// (until session 33 it showed a lag of 0 while the secondary fell behind).
#[test]
fn the_lag_is_counted_from_the_primary_when_the_share_holds_an_old_position() {
    let d = Deployment::up();
    let token = user_and_room(&d);
    let first = posts(&d, &token, "shipped", 5);
    d.wait_applied(first.last().unwrap().lsn);
    // The job writes the position under a temporary name first: a directory there makes
    // every write of it fail, the old position left in place.
    let tmp = d.share().join(format!(
        ".primary.json.tmp-{}",
        common::pid(&d.dir, "atl-db1")
    ));
    std::fs::create_dir(&tmp).unwrap();
    let pid = common::pid(&d.dir, "dal-db1");
    // SAFETY: a node this test started; the deployment kills it at the end.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let during = posts(&d, &token, "during", 20);
    let last = during.last().unwrap().lsn;
    let m = d.wait_status("the lag from the primary's own position", |m| {
        m["primary"]["lsn"].as_u64() >= Some(last)
            && m["lag_records"].as_u64() >= Some(20)
            && m["alerts"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|a| a.as_str().unwrap().contains("cannot write to the share"))
            })
    });
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    std::fs::remove_dir(&tmp).unwrap();
    d.wait_applied(last);
    drop(m);
}

#[test]
fn a_failovers_restore_step_recovers_up_to_a_damaged_log_backup_and_says_so() {
    // The secondary frozen while three rounds of log backups are written; the second of them
    // damaged on the share; then the primary site lost.
    let (d, _, pid, files) = secondary_frozen_behind(3);
    assert!(files.len() >= 3, "{files:?}");
    truncate_half(&files[1]);
    for node in ["atl-fe", "atl-db1", "atl-db2"] {
        d.kill(node);
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    ok(
        &d.dir,
        &["db", "log-shipping", "remove-secondary", "--db", "mgc"],
    );
    // The secondary's jobs, continued, may have copied what they could first: the damaged
    // file is never copied.
    ok(&d.dir, &["db", "log-shipping", "copy", "--db", "mgc"]);
    let local = d.dir.join("data/dal-db1/log-shipping/mgc");
    assert!(!local.join(files[1].file_name().unwrap()).exists());
    // Everything before the damaged file is applied, and the step says where and why it
    // stops (until session 32 it applied nothing and refused: the failover could not go on).
    let r = json(&d.dir, &["db", "log-shipping", "restore", "--db", "mgc"]);
    assert_eq!(r["lsn"].as_u64(), Some(range(&files[0]).1), "{r}");
    assert!(
        r["stopped"]
            .as_str()
            .is_some_and(|s| s.contains(&format!("no log backup holds LSN {}", range(&files[1]).0))),
        "{r}"
    );
}

#[test]
fn two_configures_at_once_keep_each_others_options() {
    let d = Deployment::up();
    // Whichever runs second keeps the option the other gave (until session 32 the one without
    // it could write back the value read before the other wrote).
    let spawn = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
            .args([&CONFIGURE_MGC[..], extra].concat())
            .current_dir(&d.dir)
            .env_remove("TANDEM_TOPOLOGY")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut a = spawn(&[]);
    let mut b = spawn(&["--backup-interval-ms", "500"]);
    assert!(a.wait().unwrap().success() && b.wait().unwrap().success());
    assert_eq!(d.status()["config"]["backup_interval_ms"], json!(500));
}

#[test]
fn a_configuration_lost_from_the_share_is_written_again_and_said() {
    let d = Deployment::up();
    configure_mgc(&d, &["--backup-interval-ms", "2000"]);
    std::fs::remove_file(d.share().join("log-shipping.json")).unwrap();
    // Written again from the defaults (the option given lost): said until the next configure,
    // and the secondary is not taken for one still to seed (until session 32: silently, and
    // "not seeded from - yet").
    let m = d.wait_status("the configuration written again", |m| {
        m["config"]["recreated_ms"].is_i64()
    });
    assert_eq!(m["config"]["backup_interval_ms"], json!(1000), "{m:#}");
    let alerts = m["alerts"].as_array().unwrap();
    assert!(
        alerts.len() == 1
            && alerts[0]
                .as_str()
                .unwrap()
                .starts_with("the configuration was missing from the share"),
        "{m:#}"
    );
    configure_mgc(&d, &["--backup-interval-ms", "2000"]);
    let m = d.wait_status("no alert once configured", |m| m["alerts"] == json!([]));
    assert!(m["config"]["recreated_ms"].is_null(), "{m:#}");
}

#[test]
fn a_damaged_secondary_is_seeded_again_from_the_newest_full_backup_and_goes_on() {
    let d = Deployment::up();
    let token = user_and_room(&d);
    let first = posts(&d, &token, "shipped", 400);
    d.wait_applied(first.last().unwrap().lsn);
    // Pages of the oldest posts damaged in the secondary's file while its node is down (its
    // WAL folded in first, as a checkpoint does): it opens, and its scrub, 2 s after the start,
    // finds them.
    ok(&d.dir, &["down", "--nodes", "dal-db1"]);
    let file = d.dir.join("data/dal-db1/databases/mgc/tandem.db");
    let sqlite = |f: &Path| tandem_store::rusqlite::Connection::open(f).unwrap();
    sqlite(&file)
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    common::damage_oldest_rows(&file);
    ok(&d.dir, &["up", "--detach", "--nodes", "dal-db1"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !d
        .log("dal-db1")
        .contains("the copy is damaged: seeding it again from the newest full backup")
    {
        assert!(Instant::now() < deadline, "{}", d.log("dal-db1"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = posts(&d, &token, "after", 5);
    let m = d.wait_applied(after.last().unwrap().lsn);
    assert_eq!(m["alerts"], json!([]), "{m:#}");
    let copy = d.copy("mgc", "dal-db1");
    assert_eq!(copy["warnings"], json!([]), "{copy:#}");
    assert_eq!(copy["role"], "restoring", "{copy:#}");
    ok(&d.dir, &["down", "--nodes", "dal-db1"]);
    let check: String = sqlite(&file)
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

#[test]
fn the_chain_continues_across_a_mirror_failover() {
    let d = Deployment::up();
    let token = user_and_room(&d);
    let before = posts(&d, &token, "before", 200);
    d.wait_applied(before.last().unwrap().lsn);
    // The log backups let the primary drop its records, and the mirror drops them as well:
    // its journal keeps what the primary's keeps (it kept every record it applied).
    let journal_bytes = |node: &str| -> u64 {
        let (_, metrics) = http(&d.address(node), "GET", "/metrics", &[], "");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("tandem_database_journal_bytes{database=\"mgc\"} "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while journal_bytes("atl-db2") > 4 << 10 {
        assert!(
            Instant::now() < deadline,
            "the mirror's journal holds {} bytes (the primary's {})",
            journal_bytes("atl-db2"),
            journal_bytes("atl-db1")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = json(&d.dir, &["db", "mirror", "failover", "--db", "mgc"]);
    assert_eq!(r["new_primary"], "atl-db2", "{r}");
    // Posts go to atl-db2 now; its backup job continues the same chain.
    let fe = d.address("atl-fe");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut after = Vec::new();
    while after.len() < 10 {
        assert!(Instant::now() < deadline, "no post after the failover");
        match post(&fe, &token, &format!("after {}", after.len())) {
            Some(a) => after.push(a),
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    let m = d.wait_applied(after.last().unwrap().lsn);
    assert_eq!(m["primary"]["node"], "atl-db2", "{m:#}");
    assert_eq!(m["secondary"]["epoch"], 2, "{m:#}");
    assert!(m["secondary"]["restore"]["error"].is_null(), "{m:#}");
    // No new full backup was needed: one chain from the first full backup, no gap.
    let out = ok(&d.dir, &["db", "verify", d.share().to_str().unwrap()]);
    assert!(out.contains("chain ok"), "{out}");
    let m = d.status();
    assert_eq!(m["full_backups"], 1, "{m:#}");
    assert_eq!(
        m["config"]["seed"], m["secondary"]["seed"],
        "the secondary was not seeded again: {m:#}"
    );
    let mut history = d.history_on("atl-db2");
    history.retain(|(_, t, _)| t.starts_with("before") || t.starts_with("after"));
    assert_eq!(history.len(), 210);
}

#[test]
fn online_backup_restore_and_recover_and_their_refusals() {
    let d = Deployment::up();
    let token = user_and_room(&d);
    let sent = posts(&d, &token, "kept", 5);
    d.wait_applied(sent.last().unwrap().lsn);

    // Bad names: nothing runs.
    d.refused(
        &["db", "backup", "--db", "nosuch", "--instance", "atl-db1"],
        "no database named nosuch",
    );
    d.refused(
        &["db", "backup", "--db", "mgc", "--instance", "nosuch"],
        "no node named nosuch",
    );
    d.refused(
        &["db", "backup", "--db", "mgc", "--instance", "atl-fe"],
        "not a db node",
    );
    d.refused(
        &["db", "backup", "--db", "mgc", "--instance", "dal-db2"],
        "holds no open copy",
    );
    d.refused(
        &[
            "db",
            "backup",
            "--db",
            "mgc",
            "--instance",
            "atl-db2",
            "--log",
        ],
        "backups on the share are the primary's (log backups continue its chain)",
    );
    d.refused(
        &["db", "backup", "--db", "mgc", "--instance", "atl-db2"],
        "a full backup of this copy goes elsewhere: `--to DIR`",
    );
    // Online and offline forms do not mix (clap's usage error).
    for (args, expect) in [
        (&["db", "backup", "--db", "mgc"][..], "--instance"),
        (
            &[
                "db",
                "backup",
                "--db",
                "mgc",
                "--instance",
                "atl-db1",
                "--path",
                "x",
            ][..],
            "cannot be used with",
        ),
    ] {
        let out = tandem(&d.dir, args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{args:?}: {err}");
    }

    // A full backup of the primary's copy, and one of the cms, on the share.
    let b = json(
        &d.dir,
        &["db", "backup", "--db", "mgc", "--instance", "atl-db1"],
    );
    let full = PathBuf::from(b["files"][0]["path"].as_str().unwrap());
    assert!(full.starts_with(d.share()), "{b}");
    let lsn = b["files"][0]["header"]["lsn"].as_u64().unwrap();
    assert!(lsn >= sent.last().unwrap().lsn, "{b}");
    json(
        &d.dir,
        &[
            "db",
            "backup",
            "--db",
            "mgc",
            "--instance",
            "atl-db1",
            "--log",
        ],
    );
    let cms = json(
        &d.dir,
        &["db", "backup", "--db", "cms", "--instance", "atl-db1"],
    );
    let cms_full = cms["files"][0]["path"].as_str().unwrap().to_string();
    let full_s = full.to_str().unwrap();

    // --to: a copy-only full backup into another directory, of any copy; the share and its
    // log chain are left alone. A log backup there, or a file in the way, is refused.
    let elsewhere = d.dir.join("elsewhere");
    let elsewhere_s = elsewhere.to_str().unwrap();
    for node in ["atl-db1", "atl-db2"] {
        let b = json(
            &d.dir,
            &[
                "db",
                "backup",
                "--db",
                "mgc",
                "--instance",
                node,
                "--to",
                elsewhere_s,
            ],
        );
        let path = PathBuf::from(b["files"][0]["path"].as_str().unwrap());
        assert!(path.starts_with(&elsewhere), "{b}");
        assert!(
            b["files"][0]["header"]["lsn"].as_u64().unwrap() >= lsn,
            "{b}"
        );
        assert!(
            !d.share().join(path.file_name().unwrap()).exists(),
            "a backup with --to also went to the share"
        );
        ok(&d.dir, &["db", "verify", path.to_str().unwrap()]);
    }
    d.refused(
        &[
            "db",
            "backup",
            "--db",
            "mgc",
            "--instance",
            "atl-db1",
            "--to",
            elsewhere_s,
            "--log",
        ],
        "continues the log chain on the share",
    );
    let topology = d.dir.join("topology.toml");
    d.refused(
        &[
            "db",
            "backup",
            "--db",
            "mgc",
            "--instance",
            "atl-db1",
            "--to",
            topology.to_str().unwrap(),
        ],
        "not a directory",
    );

    // Recover refuses a primary, a mirrored copy, a node without the copy.
    d.refused(
        &["db", "recover", "--db", "mgc", "--instance", "atl-db1"],
        "already primary",
    );
    d.refused(
        &["db", "recover", "--db", "mgc", "--instance", "atl-db2"],
        "mirrored with atl-db1",
    );
    d.refused(
        &["db", "recover", "--db", "cms", "--instance", "dal-db2"],
        "holds no copy",
    );
    // Restore refuses a file of another database, a copy without --replace, a missing file.
    let at = d.copy("mgc", "dal-db1")["lsn"].clone();
    d.refused(
        &restore_mgc("dal-db1", &cms_full, &["--replace", "--norecovery"]),
        "a backup of database cms, not mgc",
    );
    d.refused(
        &restore_mgc("dal-db1", full_s, &["--norecovery"]),
        "--replace",
    );
    d.refused(&restore_mgc("dal-db1", "/no/such.tfb", &[]), "no such file");
    d.refused(&restore_mgc("atl-db2", full_s, &["--replace"]), "mirrored");
    // Through the API, two stop points at once: refused, not one of them picked.
    let secret = d.secret();
    let headers = [
        ("x-tandem-secret", secret.as_str()),
        ("content-type", "application/json"),
    ];
    let ask = json!({"from": [full_s], "replace": true, "stop_at_lsn": 5, "stop_at_time_ms": 1});
    let (code, body) = http(
        &d.address("dal-db1"),
        "POST",
        "/internal/v1/db/mgc/restore",
        &headers,
        ask.to_string(),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("both given"), "{body}");
    let c = d.copy("mgc", "dal-db1");
    assert_eq!(
        (c["role"].clone(), c["lsn"].clone()),
        (json!("restoring"), at)
    );

    // Log-shipping refusals.
    d.refused(
        &["db", "log-shipping", "status", "--db", "cms"],
        "not log-shipped",
    );
    d.refused(
        &[
            "db",
            "log-shipping",
            "configure",
            "--db",
            "mgc",
            "--secondary",
            "atl-db2",
        ],
        "another site",
    );
    d.refused(
        &[
            "db",
            "log-shipping",
            "configure",
            "--db",
            "mgc",
            "--secondary",
            "nosuch",
        ],
        "no node named nosuch",
    );
    d.refused(
        &[
            "db",
            "log-shipping",
            "copy",
            "--db",
            "mgc",
            "--instance",
            "dal-db2",
        ],
        "goes to dal-db1, not dal-db2",
    );

    // Restored online with --norecovery: the secondary's copy replaced, and shipping goes on.
    let r = json(
        &d.dir,
        &restore_mgc("dal-db1", full_s, &["--replace", "--norecovery"]),
    );
    assert_eq!(r["role"], "restoring", "{r}");
    assert_eq!(r["lsn"], lsn, "{r}");
    let more = posts(&d, &token, "after the restore", 5);
    d.wait_applied(more.last().unwrap().lsn);

    // Recovering a copy while atl-db1 is a writable primary would make a second primary (of a
    // newer epoch, which atl-db1 would step down to): refused, restore and recover alike,
    // leaving both copies as they were.
    let before = d.copy("mgc", "dal-db1");
    for args in [
        &restore_mgc("dal-db1", full_s, &["--replace"]),
        &["db", "recover", "--db", "mgc", "--instance", "dal-db1"][..],
        // dal-db2 holds no copy (the backup site's mirror comes with a failover): a restore
        // there would create a primary.
        &restore_mgc("dal-db2", full_s, &[]),
    ] {
        d.refused(args, "a writable primary on atl-db1");
    }
    // The node checks, not the command: through the API too, and `force` is what lets it by.
    for (path, ask) in [
        ("/internal/v1/db/mgc/recover", json!({})),
        (
            "/internal/v1/db/mgc/restore",
            json!({"from": [full_s], "replace": true}),
        ),
    ] {
        let (code, body) = http(
            &d.address("dal-db1"),
            "POST",
            path,
            &headers,
            ask.to_string(),
        );
        assert_eq!(code, 409, "{path}: {body}");
        assert!(body.contains("a writable primary on atl-db1"), "{body}");
    }
    assert_ne!(d.copy("mgc", "dal-db2")["open"], true);
    let after = d.copy("mgc", "dal-db1");
    assert_eq!(
        (&after["role"], &after["epoch"], &after["lsn"]),
        (&before["role"], &before["epoch"], &before["lsn"])
    );
    let primary = d.copy("mgc", "atl-db1");
    assert_eq!(
        (&primary["role"], &primary["epoch"]),
        (&json!("primary"), &json!(1))
    );

    // Restored and recovered with --force (a drill): a primary of a new epoch, that no log
    // backup and no reconfiguration may touch.
    let r = json(
        &d.dir,
        &restore_mgc("dal-db1", full_s, &["--replace", "--force"]),
    );
    assert_eq!(r["role"], "primary", "{r}");
    // Above any epoch a copy used since the backup (the backup's plus one could be another
    // copy's): the time in ms, as every disaster-recovery move's.
    assert!(r["epoch"].as_u64() > Some(1_700_000_000_000), "{r}");
    d.refused(
        &["db", "recover", "--db", "mgc", "--instance", "dal-db1"],
        "already primary",
    );
    // Asked of atl-db1, still primary of epoch 1 until it sees dal-db1's epoch 2 (it checks
    // twice a second) and steps down: either it refuses a secondary not older than itself, or
    // it already stepped down and refuses any configuration.
    d.refused_with(&CONFIGURE_MGC, &["not older than", "ask its primary"]);
    let h = d.history_on("dal-db1");
    assert!(h.iter().any(|(_, t, _)| t == "kept 4"), "{h:?}");
    assert!(!h.iter().any(|(_, t, _)| t.starts_with("after the restore")));
}

/// Two deployments given one share (a copied topology, a mistyped path) each took the other's
/// backups for a stale chain and set them aside, again and again, and a secondary was seeded
/// with the other deployment's database (until session 34). The share is its first user's.
#[test]
fn a_second_deployment_given_the_same_share_is_refused_and_the_first_ships_on() {
    let a = Deployment::up();
    let token = user_and_room(&a);
    let first = posts(&a, &token, "before b", 5);
    a.wait_applied(first.last().unwrap().lsn);
    let share = a.dir.join("share");
    let b = Deployment::start(|t| {
        t.replace(
            "share = \"share\"",
            &format!("share = \"{}\"", share.display()),
        )
    });
    b.wait_jobs_state("atl-db1", "belongs to another deployment");
    b.refused(
        &["db", "log-shipping", "status", "--db", "mgc"],
        "belongs to another deployment",
    );
    // The first deployment ships on, its chain untouched.
    let more = posts(&a, &token, "after b", 5);
    a.wait_applied(more.last().unwrap().lsn);
    let superseded = std::fs::read_dir(a.share())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("superseded"))
        .count();
    assert_eq!(superseded, 0, "a chain set aside");
    let m = a.wait_status("no alert", |m| {
        m["alerts"].as_array().is_some_and(|a| a.is_empty())
    });
    assert_eq!(m["primary"]["node"], "atl-db1", "{m:#}");
}
