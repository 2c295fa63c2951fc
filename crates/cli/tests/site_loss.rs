//! The other site: the CMS standby and its failover, planned and forced after the loss of the
//! master's whole site; the old master never writes again.

mod common;

use common::{http, json, ok, tandem};
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};

struct Deployment {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        common::stop_all(&self.dir);
    }
}

impl Deployment {
    fn up() -> Deployment {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        ok(tmp.path(), &["init", dir.to_str().unwrap()]);
        let d = Deployment { _tmp: tmp, dir };
        ok(&d.dir, &["up", "--detach"]);
        d.wait_cms("the standby current", |s| {
            copy(s, "dal-db1")["role"] == "standby" && copy(s, "dal-db1")["lag_records"] == 0
        });
        d
    }

    fn address(&self, node: &str) -> String {
        common::address(&self.dir, node)
    }

    fn secret(&self) -> String {
        common::secret(&self.dir)
    }

    fn kill_site(&self, site: &str) {
        for node in ["fe", "db1", "db2"] {
            common::kill(&self.dir, &format!("{site}-{node}"));
        }
    }

    fn wait_cms(&self, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = json(&self.dir, &["cms", "status"]);
            if cond(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "CMS: {what}; last: {s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn copy<'a>(s: &'a Value, node: &str) -> &'a Value {
    s["copies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["node"] == node)
        .unwrap()
}

#[test]
fn a_planned_cms_failover_and_back_loses_nothing_and_nodes_follow() {
    let d = Deployment::up();
    ok(&d.dir, &["user", "add", "alice", "--pool", "pool-atl"]);
    let r = json(&d.dir, &["cms", "failover", "--dry-run"]);
    assert_eq!(r["kind"], "planned", "{r}");
    assert_eq!(r["to"], "dal-db1", "{r}");
    let r = json(&d.dir, &["cms", "failover"]);
    assert_eq!(r["to"], "dal-db1", "{r}");
    assert!(r["lost"].is_null(), "{r}");
    let s = d.wait_cms("the old master a standby", |s| {
        s["master"] == "dal-db1" && copy(s, "atl-db1")["role"] == "standby"
    });
    assert_eq!(
        copy(&s, "dal-db1")["lsn"],
        copy(&s, "atl-db1")["lsn"],
        "{s}"
    );
    // Writes go to the new master; every node follows it.
    ok(&d.dir, &["user", "add", "bob", "--pool", "pool-dal"]);
    let lsn = d.wait_cms("bob replicated back", |s| {
        copy(s, "atl-db1")["lag_records"] == 0
    })["copies"][2]["lsn"]
        .clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    for node in ["atl-fe", "dal-fe"] {
        loop {
            let (code, body) = http(
                &d.address(node),
                "GET",
                "/internal/v1/status",
                &[("x-tandem-secret", d.secret().as_str())],
                "",
            );
            assert_eq!(code, 200);
            let v: Value = serde_json::from_str(&body).unwrap();
            if v["cms"]["lsn"] == lsn {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{node} does not follow the new master: {v}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // And back: the old master, a standby since, takes over again with nothing lost.
    let r = json(&d.dir, &["cms", "failover"]);
    assert_eq!(r["to"], "atl-db1", "{r}");
    let s = d.wait_cms("atl-db1 master, dal-db1 standby", |s| {
        s["master"] == "atl-db1"
            && copy(s, "dal-db1")["role"] == "standby"
            && copy(s, "dal-db1")["lag_records"] == 0
    });
    assert!(copy(&s, "atl-db1")["lsn"].as_u64() >= lsn.as_u64(), "{s}");
    let users = json(&d.dir, &["user", "list"]);
    let text = users.to_string();
    assert!(text.contains("alice") && text.contains("bob"), "{text}");
}

#[test]
fn a_forced_cms_failover_after_the_site_is_lost_and_the_old_master_never_writes() {
    let d = Deployment::up();
    ok(&d.dir, &["user", "add", "alice", "--pool", "pool-dal"]);
    d.wait_cms("alice at the standby", |s| {
        copy(s, "dal-db1")["lag_records"] == 0
    });
    d.kill_site("atl");
    // Without --force the command says what it would lose and changes nothing.
    let out = tandem(&d.dir, &["cms", "failover"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--force") && err.contains("dal-db1"), "{err}");
    let r = json(&d.dir, &["cms", "failover", "--force"]);
    assert_eq!(r["kind"], "forced", "{r}");
    assert_eq!(r["to"], "dal-db1", "{r}");
    assert!(r["lost"]["standby_lsn"].as_u64().is_some(), "{r}");
    // The CMS serves from dal: a user is added, the chat pool's state is read.
    ok(&d.dir, &["user", "add", "carol", "--pool", "pool-dal"]);
    ok(&d.dir, &["chat", "active-servers", "show"]);
    // The lost site comes back: its old master learns of the newer epoch, steps down, follows.
    ok(
        &d.dir,
        &["up", "--detach", "--nodes", "atl-fe,atl-db1,atl-db2"],
    );
    let s = d.wait_cms("the old master a current standby", |s| {
        s["master"] == "dal-db1"
            && copy(s, "atl-db1")["role"] == "standby"
            && copy(s, "atl-db1")["lag_records"] == 0
    });
    assert_eq!(copy(&s, "dal-db1")["role"], "primary");
    let (code, body) = http(
        &d.address("atl-db1"),
        "POST",
        "/internal/v1/db/cms/call",
        &[
            ("x-tandem-secret", d.secret().as_str()),
            ("content-type", "application/json"),
        ],
        r#"{"procedure":"cms.set_home","args":{"user":"mallory","pool":"pool-atl"}}"#,
    );
    assert_eq!(code, 503, "the old master accepted a write: {body}");
    assert!(body.contains("not_primary"), "{body}");
    let users = json(&d.dir, &["user", "list"]).to_string();
    assert!(
        users.contains("carol") && !users.contains("mallory"),
        "{users}"
    );
}
