//! A deployment as real processes: init, up, status, users, kill -9, down — through the binary.

mod common;

use common::{http, http_with_head, json, ok, tandem};
use serde_json::{Value, json};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// A deployment in a temporary directory; every node it started is stopped when it goes,
/// also when the test fails.
struct Deployment {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Deployment {
    fn init() -> Deployment {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        ok(tmp.path(), &["init", dir.to_str().unwrap()]);
        Deployment { _tmp: tmp, dir }
    }

    fn pid(&self, node: &str) -> i32 {
        common::pid(&self.dir, node)
    }

    fn pids(&self) -> Vec<i32> {
        common::pids(&self.dir)
    }

    fn address(&self, node: &str) -> String {
        common::address(&self.dir, node)
    }

    fn status(&self) -> Value {
        json(&self.dir, &["status"])
    }

    /// Waits (with a deadline) until `cond` holds on `tandem status`.
    fn wait_status(&self, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.status();
            if cond(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within 10 s; last status {s:#}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        common::stop_all(&self.dir);
    }
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.split_whitespace().next().unwrap_or("").to_string())
        })
        .is_some_and(|state| state != "Z" && state != "X")
}

fn node<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == name)
        .unwrap()
}

#[test]
fn up_status_users_kill_and_down() {
    let d = Deployment::init();
    let up = json(&d.dir, &["up", "--detach"]);
    assert_eq!(up.as_array().unwrap().len(), 6);
    let s = d.status();
    for n in s["nodes"].as_array().unwrap() {
        assert_eq!(n["up"], true, "{n}");
    }
    assert_eq!(s["cms"]["reachable"], true);
    assert_eq!(
        s["cms"]["snapshot"]["chat"]["active"],
        serde_json::json!(["atl-fe"])
    );
    let cms = s["databases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["database"] == "cms" && c["node"] == "atl-db1")
        .unwrap();
    assert_eq!(
        (cms["role"].as_str(), cms["epoch"].as_u64()),
        (Some("primary"), Some(1))
    );

    assert_eq!(
        ok(&d.dir, &["user", "list", "--pool", "pool-dal"]),
        "no users in pool-dal\n"
    );
    let err = tandem(&d.dir, &["user", "list", "--pool", "nosuch"]);
    assert!(
        String::from_utf8_lossy(&err.stderr)
            .contains("no pool named nosuch (pools: pool-atl, pool-dal)"),
        "{err:?}"
    );
    let token = ok(
        &d.dir,
        &[
            "user",
            "add",
            "alice",
            "--pool",
            "pool-atl",
            "--password",
            "pw-alice",
        ],
    );
    assert!(token.trim().starts_with("alice."), "{token}");
    let tokens: Value =
        serde_json::from_slice(&std::fs::read(d.dir.join(".tandem/tokens.json")).unwrap()).unwrap();
    assert_eq!(tokens["alice"].as_str(), Some(token.trim()));
    let err = tandem(&d.dir, &["user", "add", "alice", "--pool", "pool-dal"]);
    assert!(String::from_utf8_lossy(&err.stderr).contains("already homed on pool-atl"));
    // A user the pool refuses (an empty password) leaves no home behind in the CMS.
    let err = tandem(
        &d.dir,
        &[
            "user",
            "add",
            "carol",
            "--pool",
            "pool-atl",
            "--password",
            "",
        ],
    );
    assert!(!err.status.success());
    let homes = &d.status()["cms"]["snapshot"]["homes"];
    assert!(
        homes.get("alice").is_some() && homes.get("carol").is_none(),
        "{homes}"
    );

    // Sign in over HTTP at the other site's frontend, then use the token.
    let fe = d.address("dal-fe");
    let (code, body) = http(
        &fe,
        "POST",
        "/api/v1/login",
        &[("content-type", "application/json")],
        r#"{"user":"alice","password":"pw-alice"}"#,
    );
    assert_eq!(code, 200, "{body}");
    let t: Value = serde_json::from_str(&body).unwrap();
    let bearer = format!("Bearer {}", t["token"].as_str().unwrap());
    let (code, body) = http(&fe, "GET", "/api/v1/me", &[("authorization", &bearer)], "");
    assert_eq!((code, body.contains("pool-atl")), (200, true), "{body}");
    let (code, _) = http(
        &fe,
        "POST",
        "/api/v1/login",
        &[("content-type", "application/json")],
        r#"{"user":"alice","password":"wrong"}"#,
    );
    assert_eq!(code, 401);
    // Guessing is slowed: after 5 failures for alice from this address, the next try waits,
    // even with the right password; other names go on, and so does the other frontend.
    let login = |fe: &str, user: &str, password: &str| {
        let body = json!({ "user": user, "password": password }).to_string();
        http_with_head(
            fe,
            "POST",
            "/api/v1/login",
            &[("content-type", "application/json")],
            body,
        )
    };
    for _ in 0..4 {
        assert_eq!(login(&fe, "alice", "wrong").0, 401);
    }
    let (code, head, body) = login(&fe, "alice", "pw-alice");
    assert_eq!(code, 429, "{body}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1\r\n")
            && body.contains("too_many_attempts")
            && body.contains("try again in 1 s"),
        "{head}\n{body}"
    );
    assert_eq!(login(&fe, "nobody", "wrong").0, 401);
    assert_eq!(login(&d.address("atl-fe"), "alice", "pw-alice").0, 200);
    std::thread::sleep(Duration::from_millis(1100));
    let (code, _, body) = login(&fe, "alice", "pw-alice");
    assert_eq!(code, 200, "{body}");

    // kill -9 of atl-db2: seen as down within 5 s, the others unaffected.
    let victim = d.pid("atl-db2");
    let killed = Instant::now();
    // SAFETY: a node process this test started.
    unsafe {
        libc::kill(victim, libc::SIGKILL);
    }
    let s = d.wait_status("atl-db2 down", |s| node(s, "atl-db2")["up"] == false);
    assert!(killed.elapsed() < Duration::from_secs(5));
    for n in ["atl-fe", "atl-db1", "dal-fe", "dal-db1", "dal-db2"] {
        assert_eq!(node(&s, n)["up"], true, "{n}");
    }
    // `up` again brings up what is down, and only that; a running node named is refused.
    let before = d.pid("atl-fe");
    let up = json(&d.dir, &["up", "--detach"]);
    let names: Vec<&str> = up
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["atl-db2"], "{up}");
    assert_eq!(d.pid("atl-fe"), before);
    let s = d.status();
    assert!(
        s["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["up"] == true),
        "{s}"
    );
    let again = ok(&d.dir, &["up", "--detach"]);
    assert!(again.contains("none started"), "{again}");
    let err = tandem(&d.dir, &["up", "--detach", "--nodes", "atl-fe"]);
    assert!(!err.status.success());
    assert!(
        String::from_utf8_lossy(&err.stderr).contains("atl-fe is already running"),
        "{err:?}"
    );

    let pids = d.pids();
    ok(&d.dir, &["down"]);
    for pid in pids {
        assert!(!alive(pid), "pid {pid} survived `tandem down`");
    }
    assert!(d.pids().is_empty(), "down removes the pid files");
}

/// Runs `tandem ARGS` in `dir` for every one of `runs` at once, as a shell's `&` does; their
/// outputs, in the order given.
fn at_once(dir: &Path, runs: &[Vec<String>]) -> Vec<Output> {
    let start = Arc::new(Barrier::new(runs.len()));
    let threads: Vec<_> = runs
        .iter()
        .map(|args| {
            let (dir, args, start) = (dir.to_path_buf(), args.clone(), start.clone());
            std::thread::spawn(move || {
                let mut cmd = Command::new(env!("CARGO_BIN_EXE_tandem"));
                cmd.args(&args)
                    .current_dir(&dir)
                    .env_remove("TANDEM_TOPOLOGY");
                start.wait();
                common::output_within_deadline(&mut cmd)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

fn args(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// `tandem user add` run many times at once: every user created keeps its token (the tokens
/// file was read, changed and written back unlocked, through one temporary name: commands
/// failed with "No such file or directory" and tokens were lost), and of two commands adding
/// one name to two pools exactly one wins, the other refused with nothing left behind (both
/// used to succeed, each pool holding the user and one printed token signing in nobody).
#[test]
fn users_added_at_once_keep_every_token_and_each_name_one_home() {
    let d = Deployment::init();
    ok(&d.dir, &["up", "--detach"]);
    let tokens = || -> Value {
        serde_json::from_slice(&std::fs::read(d.dir.join(".tandem/tokens.json")).unwrap()).unwrap()
    };

    let runs: Vec<_> = (0..8)
        .map(|i| args(&["user", "add", &format!("tok{i}"), "--pool", "pool-atl"]))
        .collect();
    let outs = at_once(&d.dir, &runs);
    let kept = tokens();
    for (i, out) in outs.iter().enumerate() {
        assert!(out.status.success(), "tok{i}: {}", stderr(out));
        let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(
            kept[format!("tok{i}")].as_str(),
            Some(printed.as_str()),
            "{kept}"
        );
    }
    let temporary: Vec<_> = std::fs::read_dir(d.dir.join(".tandem"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(temporary.is_empty(), "{temporary:?}");

    // Four names, each added to both pools at once: eight commands racing.
    let names = 4;
    let pools = ["pool-atl", "pool-dal"];
    let runs: Vec<_> = (0..names)
        .flat_map(|i| {
            pools.map(|pool| {
                args(&[
                    "user",
                    "add",
                    &format!("zed{i}"),
                    "--pool",
                    pool,
                    "--password",
                    &format!("pw-{pool}"),
                ])
            })
        })
        .collect();
    let outs = at_once(&d.dir, &runs);
    let homes = d.status()["cms"]["snapshot"]["homes"].clone();
    let users = json(&d.dir, &["user", "list"]);
    let kept = tokens();
    let fe = d.address("dal-fe");
    for i in 0..names {
        let name = format!("zed{i}");
        let pair = &outs[2 * i..2 * i + 2];
        let won: Vec<usize> = (0..2).filter(|&k| pair[k].status.success()).collect();
        assert_eq!(
            won.len(),
            1,
            "{name}: exactly one add succeeds: {} | {}",
            stderr(&pair[0]),
            stderr(&pair[1])
        );
        let (pool, other) = (pools[won[0]], pools[1 - won[0]]);
        let lost = stderr(&pair[1 - won[0]]);
        assert!(
            lost.contains(&format!("user {name} is already homed on {pool}"))
                && lost.contains("nothing changed"),
            "{name}: {lost}"
        );
        assert_eq!(homes[&name].as_str(), Some(pool), "{homes}");
        let rows: Vec<&str> = users
            .as_array()
            .unwrap()
            .iter()
            .filter(|u| u["name"] == name.as_str())
            .map(|u| u["pool"].as_str().unwrap())
            .collect();
        assert_eq!(
            rows,
            [pool],
            "{name} is a user of its home pool only, not of {other}"
        );
        let token = String::from_utf8_lossy(&pair[won[0]].stdout)
            .trim()
            .to_string();
        assert_eq!(kept[&name].as_str(), Some(token.as_str()), "{kept}");
        let bearer = format!("Bearer {token}");
        let (code, body) = http(&fe, "GET", "/api/v1/me", &[("authorization", &bearer)], "");
        assert_eq!((code, body.contains(pool)), (200, true), "{name}: {body}");
    }

    // Removed, a name leaves no row in either pool and may be given to the other pool.
    for i in 0..names {
        ok(&d.dir, &["user", "remove", &format!("zed{i}")]);
    }
    let users = json(&d.dir, &["user", "list"]);
    assert!(
        users
            .as_array()
            .unwrap()
            .iter()
            .all(|u| !u["name"].as_str().unwrap().starts_with("zed")),
        "{users}"
    );
    let homes = d.status()["cms"]["snapshot"]["homes"].clone();
    assert!(
        (0..names).all(|i| homes.get(format!("zed{i}")).is_none()),
        "{homes}"
    );
    let kept = tokens();
    assert!(
        (0..names).all(|i| kept.get(format!("zed{i}")).is_none()),
        "{kept}"
    );
    ok(&d.dir, &["user", "add", "zed0", "--pool", "pool-dal"]);

    // A home whose user the pool never created (what an add leaves when its pool does not say
    // whether it created the user) is removed by `user remove`, and the name is free again.
    let secret = common::secret(&d.dir);
    let (code, body) = http(
        &d.address("atl-db1"),
        "POST",
        "/internal/v1/db/cms/call",
        &[
            ("x-tandem-secret", secret.as_str()),
            ("content-type", "application/json"),
        ],
        r#"{"procedure":"cms.claim_home","args":{"user":"half","pool":"pool-atl"}}"#,
    );
    assert_eq!((code, body.contains("\"claimed\"")), (200, true), "{body}");
    let removed = ok(&d.dir, &["user", "remove", "half"]);
    assert!(removed.contains("pool-atl held no such user"), "{removed}");
    ok(&d.dir, &["user", "add", "half", "--pool", "pool-dal"]);
}

/// A node raises its soft limit on open files to the hard one: every session and connection is
/// an open file, a chat node may hold thousands, and `ulimit -n` is often 1,024.
#[test]
fn a_node_raises_its_open_files_limit_to_the_hard_one() {
    let d = Deployment::init();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -Sn 256 && exec "$0" up --nodes atl-db1 --detach"#)
        .arg(env!("CARGO_BIN_EXE_tandem"))
        .current_dir(&d.dir)
        .env_remove("TANDEM_TOPOLOGY")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "up: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.pid("atl-db1"))).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    // "Max open files   SOFT   HARD   files"
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words[3], words[4], "{line}");
}

#[test]
fn the_internal_api_refuses_requests_without_the_secret() {
    let d = Deployment::init();
    ok(&d.dir, &["up", "--detach", "--nodes", "atl-db1"]);
    let addr = d.address("atl-db1");
    let (code, body) = http(&addr, "GET", "/internal/v1/status", &[], "");
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("cluster secret"), "{body}");
    let (code, _) = http(
        &addr,
        "GET",
        "/internal/v1/status",
        &[("x-tandem-secret", "00")],
        "",
    );
    assert_eq!(code, 401);
    let call = r#"{"procedure":"users.list","args":{}}"#;
    let (code, _) = http(
        &addr,
        "POST",
        "/internal/v1/db/users-pool-atl/call",
        &[("content-type", "application/json")],
        call,
    );
    assert_eq!(code, 401);
    // Without the secret, no internal path tells whether it exists: a wrong method, an
    // unknown path, are 401 too (they were 405 and 404).
    for (method, path) in [
        ("DELETE", "/internal/v1/status"),
        ("GET", "/internal/v1/db/users-pool-atl/call"),
        ("GET", "/internal/v1/nothing"),
    ] {
        let (code, body) = http(&addr, method, path, &[], "");
        assert_eq!(code, 401, "{method} {path}: {body}");
    }
    let secret = common::secret(&d.dir);
    let (code, _) = http(
        &addr,
        "DELETE",
        "/internal/v1/status",
        &[("x-tandem-secret", &secret)],
        "",
    );
    assert_eq!(
        code, 405,
        "with the secret, a wrong method is a wrong method"
    );
    let log = std::fs::read_to_string(d.dir.join("logs/atl-db1.log")).unwrap();
    assert!(
        log.contains("internal request refused"),
        "refusals are logged: {log}"
    );
    // The health check and the metrics need no secret.
    assert_eq!(http(&addr, "GET", "/health", &[], "").0, 200);
    let (code, metrics) = http(&addr, "GET", "/metrics", &[], "");
    assert_eq!(code, 200);
    assert!(metrics.contains("tandem_database_lsn"), "{metrics}");
    assert!(
        metrics.contains("tandem_internal_requests_refused_total"),
        "{metrics}"
    );
}

#[test]
fn cms_changes_reach_every_node_and_a_node_starts_from_its_snapshot() {
    let d = Deployment::init();
    ok(&d.dir, &["up", "--detach"]);
    ok(
        &d.dir,
        &[
            "user",
            "add",
            "bob",
            "--pool",
            "pool-dal",
            "--password",
            "pw-bob",
        ],
    );
    let cms_lsn = d.status()["cms"]["snapshot"]["lsn"].as_u64().unwrap();
    // Every node follows the CMS (they poll it; within about a second).
    let started = Instant::now();
    let nodes = [
        "atl-fe", "atl-db1", "atl-db2", "dal-fe", "dal-db1", "dal-db2",
    ];
    for n in nodes {
        let status_of = |n: &str| {
            let secret_line = std::fs::read_to_string(d.dir.join("topology.toml")).unwrap();
            let secret = secret_line
                .lines()
                .find(|l| l.starts_with("secret"))
                .unwrap()
                .split('"')
                .nth(1)
                .unwrap()
                .to_string();
            let (_, body) = http(
                &d.address(n),
                "GET",
                "/internal/v1/status",
                &[("x-tandem-secret", &secret)],
                "",
            );
            serde_json::from_str::<Value>(&body).unwrap()
        };
        loop {
            if status_of(n)["cms"]["lsn"].as_u64() == Some(cms_lsn) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{n} did not follow the CMS to LSN {cms_lsn}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // The CMS goes down (master and mirror: with one of them up it would serve); a frontend
    // restarted meanwhile starts from its own snapshot and still signs in users of a pool
    // whose database is up.
    ok(&d.dir, &["down", "--nodes", "atl-db1,atl-db2,dal-fe"]);
    ok(&d.dir, &["up", "--detach", "--nodes", "dal-fe"]);
    let s = d.status();
    assert_eq!(s["cms"]["reachable"], false);
    let fe = d.address("dal-fe");
    let (code, body) = http(
        &fe,
        "POST",
        "/api/v1/login",
        &[("content-type", "application/json")],
        r#"{"user":"bob","password":"pw-bob"}"#,
    );
    assert_eq!(code, 200, "{body}");
    let log = std::fs::read_to_string(d.dir.join("logs/dal-fe.log")).unwrap();
    assert!(
        log.contains("starting from the local CMS snapshot"),
        "{log}"
    );
}

#[test]
fn a_broken_topology_is_refused_with_its_line_and_rule() {
    let d = Deployment::init();
    let file = d.dir.join("topology.toml");
    let good = std::fs::read_to_string(&file).unwrap();
    let cases = [
        ("pair = \"pool-dal\"", "pair = \"pool-atl\"", "pair"),
        (
            "active = [\"atl-fe\"]",
            "active = [\"dal-fe\"]",
            "site of the chat primary",
        ),
        ("mirror = \"atl-db2\"", "mirror = \"dal-db2\"", "site"),
        ("primary = \"atl-db1\"", "primary = \"nowhere\"", "nowhere"),
    ];
    for (from, to, expect) in cases {
        let bad = good.replacen(from, to, 1);
        assert_ne!(bad, good, "{from} is in the example");
        std::fs::write(&file, &bad).unwrap();
        let line = bad.lines().position(|l| l.contains(to)).unwrap() + 1;
        let out = tandem(&d.dir, &["status"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains(&format!("topology.toml:{line}")),
            "{from} -> {to}: {err}"
        );
        assert!(err.contains(expect), "{from} -> {to}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    std::fs::write(&file, good).unwrap();
    let out = tandem(&d.dir, &["status", "--topology", "nothing.toml"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("tandem init"));
}

#[test]
fn chat_pool_state_and_active_servers_keep_every_active_server_in_the_database_site() {
    let d = Deployment::init();
    // The CMS primary and its witness: without mirror or witness a primary writes nothing.
    ok(&d.dir, &["up", "--detach", "--nodes", "atl-db1,atl-fe"]);
    // dal's witness is down: status says what that means.
    let s = json(&d.dir, &["status"]);
    assert!(
        node(&s, "dal-fe")["warnings"][0]
            .as_str()
            .is_some_and(|w| w.starts_with("the witness of site dal does not answer")),
        "{s}"
    );
    assert_eq!(node(&s, "atl-fe")["warnings"], serde_json::json!([]), "{s}");
    // pool-dal's users database does not answer: pool-atl's users are listed all the same,
    // and the command says which pool is missing.
    let out = tandem(&d.dir, &["user", "list", "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("not listed: pool pool-dal"), "{err}");
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed, serde_json::json!([]));
    let fails = |args: &[&str]| {
        let out = tandem(&d.dir, args);
        assert!(!out.status.success(), "{args:?} should be refused");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let state = |s: &Value| {
        (
            s["state"].as_str().unwrap().to_string(),
            s["active"].clone(),
        )
    };
    assert_eq!(
        state(&json(&d.dir, &["chat", "state", "show"])),
        ("normal".into(), serde_json::json!(["atl-fe"]))
    );
    // dal-db1 is not up: failed over, the pool would have no copy of mgc to write to.
    let err = fails(&["chat", "state", "set", "failed-over"]);
    assert!(
        err.contains("no copy of mgc in dal is a writable primary (dal-db1: no answer")
            && err.contains("tandem chat failover"),
        "{err}"
    );
    // Forced, it is still refused while atl-fe is active: it would be outside the backup's site.
    let err = fails(&["chat", "state", "set", "failed-over", "--force"]);
    assert!(
        err.contains("atl-fe") && err.contains("active-servers clear"),
        "{err}"
    );
    // The seed's order: clear, set the state, then the servers of the new site.
    ok(&d.dir, &["chat", "active-servers", "clear"]);
    ok(&d.dir, &["chat", "state", "set", "failed-over", "--force"]);
    let err = fails(&["chat", "active-servers", "set", "atl-fe"]);
    assert!(err.contains("site"), "{err}");
    let s = json(&d.dir, &["chat", "active-servers", "set", "dal-fe"]);
    assert_eq!(
        state(&s),
        ("failed-over".into(), serde_json::json!(["dal-fe"]))
    );
    assert!(fails(&["chat", "state", "set", "normal"]).contains("dal-fe"));
    assert!(fails(&["chat", "active-servers", "set", "dal-fe,dal-fe"]).contains("twice"));
    assert!(fails(&["chat", "active-servers", "set", "atl-db2"]).contains("not a server"));
    ok(&d.dir, &["chat", "active-servers", "clear"]);
    ok(&d.dir, &["chat", "state", "set", "normal"]);
    let s = json(&d.dir, &["chat", "active-servers", "set", "atl-fe"]);
    assert_eq!(state(&s), ("normal".into(), serde_json::json!(["atl-fe"])));
}

/// A `tandem up` in the foreground, killed when this goes (also when a test fails).
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `tandem up --nodes NODES` in the foreground, once past its start (where a node that dies
/// makes `up` stop them all) and supervising: the process, its pid and its stderr.
fn up_in_the_foreground(d: &Deployment, nodes: &str) -> (Reap, i32, std::process::ChildStderr) {
    let mut up = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["up", "--nodes", nodes])
        .current_dir(&d.dir)
        .env_remove("TANDEM_TOPOLOGY")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = up.id() as i32;
    let stderr = up.stderr.take().unwrap();
    let stdout = up.stdout.take().unwrap();
    let up = Reap(up);
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    loop {
        let line = lines.next().expect("up reports the nodes ready").unwrap();
        // "1 node ready", "2 nodes ready".
        if line.contains(" ready in ") {
            break;
        }
    }
    (up, pid, stderr)
}

#[test]
fn up_in_the_foreground_reports_a_dead_node_and_stops_them_all_on_ctrl_c() {
    let d = Deployment::init();
    let (mut up, pid, mut up_stderr) = up_in_the_foreground(&d, "atl-db1,atl-db2");
    // A node dies: up reports it and keeps supervising the other.
    let victim = d.pid("atl-db2");
    // SAFETY: a node process this test started.
    unsafe {
        libc::kill(victim, libc::SIGKILL);
    }
    let survivor = d.pid("atl-db1");
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.dir.join("run/atl-db2.pid").exists() {
        assert!(
            Instant::now() < deadline,
            "up did not notice atl-db2's death"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(alive(survivor));
    // Ctrl-C: every node stops, and up with them.
    // SAFETY: the `tandem up` process this test started.
    unsafe {
        libc::kill(pid, libc::SIGINT);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while up.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "up did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(survivor), "the nodes stop with up");
    assert!(d.pids().is_empty(), "no pid file left");
    let mut err = String::new();
    up_stderr.read_to_string(&mut err).unwrap();
    assert!(err.contains("atl-db2 exited"), "{err}");
}

#[test]
fn up_in_the_foreground_stops_its_nodes_on_sigterm_and_sighup() {
    for signal in [libc::SIGTERM, libc::SIGHUP] {
        let d = Deployment::init();
        // Its stderr kept open: `up` says what it does there as it stops.
        let (mut up, pid, _stderr) = up_in_the_foreground(&d, "atl-db1");
        let node = d.pid("atl-db1");
        // SAFETY: the `tandem up` process this test started.
        unsafe { libc::kill(pid, signal) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while up.0.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = up.0.kill();
                panic!("up did not stop on signal {signal}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!alive(node), "signal {signal}: the node outlived up");
    }
}

#[test]
fn a_copied_deployment_does_not_take_the_others_nodes_for_its_own() {
    let d = Deployment::init();
    ok(&d.dir, &["up", "--detach", "--nodes", "atl-db1"]);
    let node = d.pid("atl-db1");
    // A copy of the directory, its pid files with it (`cp -a` of a running deployment).
    let copy = d.dir.with_file_name("copy");
    std::fs::create_dir_all(copy.join("run")).unwrap();
    std::fs::copy(d.dir.join("topology.toml"), copy.join("topology.toml")).unwrap();
    std::fs::copy(d.dir.join("run/atl-db1.pid"), copy.join("run/atl-db1.pid")).unwrap();
    let out = ok(&copy, &["down"]);
    assert!(!out.contains("stopped"), "{out}");
    assert!(alive(node), "down in the copy stopped the original's node");
}

#[test]
fn down_stops_the_nodes_of_a_topology_broken_or_renamed_while_they_run() {
    let d = Deployment::init();
    let file = d.dir.join("topology.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    // Renamed while it runs: its pid file (of the old name) says it runs.
    ok(&d.dir, &["up", "--detach", "--nodes", "atl-db2"]);
    let renamed = d.pid("atl-db2");
    std::fs::write(&file, text.replace("atl-db2", "atl-db9")).unwrap();
    let out = ok(&d.dir, &["down"]);
    assert!(out.contains("atl-db2    stopped"), "{out}");
    assert!(!alive(renamed));
    // Broken while it runs: the pid files name the nodes to stop.
    std::fs::write(&file, &text).unwrap();
    ok(&d.dir, &["up", "--detach", "--nodes", "atl-db1"]);
    let node = d.pid("atl-db1");
    std::fs::write(&file, format!("{text}\nbogus = 1\n")).unwrap();
    assert!(!tandem(&d.dir, &["status"]).status.success());
    let out = tandem(&d.dir, &["down"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("the topology does not load"), "{err}");
    assert!(!alive(node), "down left the node running");
    std::fs::write(&file, &text).unwrap();
}
