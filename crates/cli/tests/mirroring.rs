//! Mirroring with a witness, as real processes (the two-site example): SIGKILL of the primary
//! under a load of chat posts, again and again; a primary cut off from its mirror and witness;
//! a mirror away past the journal, reseeded. Every acknowledged post must survive, once.

mod common;

use common::{Deployment, Load, history, http, json, ok, post, tandem, user_and_room};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};

impl Deployment {
    /// The example deployment, all six nodes up; `edit` may change the topology first.
    fn up(edit: impl FnOnce(String) -> String) -> Deployment {
        let d = Deployment::start(edit);
        // Mirrors are seeded from their primaries at the first start.
        for db in ["cms", "mgc", "mgccomp", "users-pool-atl"] {
            d.wait_mirror(db, "atl-db2");
            // The seed and the primary's tick both register the mirror's cursor: whichever
            // comes second is no error.
            let c = d.copy(db, "atl-db1");
            assert!(
                !c["mirroring"]["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("already registered")),
                "{c}"
            );
        }
        d
    }

    fn kill(&self, node: &str) {
        common::kill(&self.dir, node)
    }

    /// The status line of `node` itself.
    fn node(&self, node: &str) -> Value {
        json(&self.dir, &["status"])["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == node)
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// The status line of `db` on `node`.
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

    /// Waits, with a deadline, until `cond` holds for the status line of `db` on `node`.
    fn wait_copy(&self, db: &str, node: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let c = self.copy(db, node);
            if cond(&c) {
                return c;
            }
            if Instant::now() > deadline {
                let log = |n: &str| {
                    let text = std::fs::read_to_string(self.dir.join(format!("logs/{n}.log")))
                        .unwrap_or_default();
                    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
                    lines[lines.len().saturating_sub(30)..].join("\n")
                };
                panic!(
                    "{db} on {node}: {what}; last: {c}\n--- atl-db1 ---\n{}\n--- atl-db2 ---\n{}\n--- atl-fe ---\n{}",
                    log("atl-db1"),
                    log("atl-db2"),
                    log("atl-fe")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `node` holds a mirror of `db` that its primary counts as synchronized.
    fn wait_mirror(&self, db: &str, node: &str) -> Value {
        let c = self.wait_copy(db, node, "a synchronized mirror", |c| {
            c["role"] == "mirror" && c["mirroring"]["state"] == "mirror: synchronized"
        });
        let partner = c["mirroring"]["partner"].as_str().unwrap().to_string();
        self.wait_copy(db, &partner, "a primary with a synchronized mirror", |p| {
            p["role"] == "primary" && p["mirroring"]["state"] == "synchronized"
        });
        c
    }
}

/// What `check_history` compares: each acknowledged post's id and text.
/// `tandem db mirror remove` of mgc, asked of `node`.
fn remove_mgc_mirroring(node: &str) -> [&str; 7] {
    ["db", "mirror", "remove", "--db", "mgc", "--instance", node]
}

fn ids_and_texts(acked: Vec<(common::Acked, Instant)>) -> Vec<(i64, String)> {
    acked.into_iter().map(|(a, _)| (a.id, a.text)).collect()
}

/// Every acknowledged post is in the history once, with its text; ids are unique.
fn check_history(acked: &[(i64, String)], history: &[(i64, String)]) {
    let mut seen: HashMap<i64, &str> = HashMap::new();
    let mut texts: HashMap<&str, usize> = HashMap::new();
    for (id, text) in history {
        assert!(
            seen.insert(*id, text).is_none(),
            "id {id} twice in the history"
        );
        *texts.entry(text).or_default() += 1;
    }
    for (id, text) in acked {
        assert_eq!(
            seen.get(id).copied(),
            Some(text.as_str()),
            "acknowledged post {id} ({text}) is missing or changed"
        );
        assert_eq!(texts[text.as_str()], 1, "{text} is in the history twice");
    }
}

#[test]
fn the_primary_killed_under_load_again_and_again_loses_no_acknowledged_post() {
    let d = Deployment::up(|t| t);
    let token = user_and_room(&d);
    let fe = d.address("atl-fe");
    let load = Load::start(&fe, &token, 4);
    let mut primary = "atl-db1";
    let mut epochs = Vec::new();
    for round in 0..3u64 {
        let mirror = if primary == "atl-db1" {
            "atl-db2"
        } else {
            "atl-db1"
        };
        d.wait_mirror("mgc", mirror);
        // A moment of load, different in each round, then the kill.
        std::thread::sleep(Duration::from_millis(300 + 400 * round));
        let before = d.copy("mgc", primary)["epoch"].as_u64().unwrap();
        let killed = Instant::now();
        d.kill(primary);
        load.wait_acked_since(killed, &format!("after {primary} was killed"));
        let now = d.wait_copy("mgc", mirror, "primary of a newer epoch", |c| {
            c["role"] == "primary" && c["epoch"].as_u64() > Some(before)
        });
        epochs.push(now["epoch"].as_u64().unwrap());
        // The old primary comes back as the mirror of the new one.
        ok(&d.dir, &["up", "--detach", "--nodes", primary]);
        d.wait_mirror("mgc", primary);
        primary = mirror;
    }
    let acked = ids_and_texts(load.stop());
    assert!(acked.len() > 50, "only {} posts acknowledged", acked.len());
    assert!(epochs.windows(2).all(|w| w[1] > w[0]), "{epochs:?}");
    check_history(&acked, &history(&fe, &token));
    // Every mirrored database followed: the CMS and the pool's users too.
    for db in ["cms", "users-pool-atl", "mgccomp"] {
        d.wait_copy(db, primary, "primary", |c| c["role"] == "primary");
    }
}

#[test]
fn a_stopped_primary_is_taken_over_from_and_posts_go_on_while_it_stays_stopped() {
    let d = Deployment::up(|t| t);
    let token = user_and_room(&d);
    let fe = d.address("atl-fe");
    d.wait_mirror("mgc", "atl-db2");
    let load = Load::start(&fe, &token, 4);
    std::thread::sleep(Duration::from_millis(500));
    let atl_db1 = common::pid(&d.dir, "atl-db1");
    let stopped = Instant::now();
    // SAFETY: a node this test started.
    unsafe { libc::kill(atl_db1, libc::SIGSTOP) };
    // The mirror takes over after 1.5 s of silence, and the chat node follows it while atl-db1
    // stays stopped: posts are acknowledged again well within 10 s of the stop, and go on. (Until
    // session 32 the chat node kept sending to the stopped node: no post until it was
    // continued. Until session 34 each database's calls waited out their 5 s deadline there in
    // turn — mgc's, then, the token checked again after the CMS moved, the users database's —
    // and a probe's second: the first post 12 s after the stop.)
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // Once atl-db2 took over (an answer in flight as the stop came may be acknowledged at
        // once: it does not count).
        d.wait_copy("mgc", "atl-db2", "the new primary", |c| {
            c["role"] == "primary"
        });
        let since = Instant::now();
        let left = (stopped + Duration::from_secs(10)).saturating_duration_since(since);
        assert!(
            !left.is_zero(),
            "atl-db2 took over over 10 s after the stop"
        );
        let first = since.duration_since(stopped)
            + load.wait_acked_within(
                since,
                left,
                "within 10 s of atl-db1's stop, while it stays stopped",
            );
        // And the posts after it are not sent to the stopped node again: 40 more, in 10 s
        // at most (4 clients post about 100 a second between failovers).
        let n = load.count();
        let deadline = Instant::now() + Duration::from_secs(10);
        while load.count() < n + 40 {
            assert!(
                Instant::now() < deadline,
                "{} posts acknowledged in the 10 s after the first, atl-db1 stopped",
                load.count() - n
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        first
    }));
    // SAFETY: as above.
    unsafe { libc::kill(atl_db1, libc::SIGCONT) };
    let first = match waited {
        Ok(t) => t,
        Err(e) => std::panic::resume_unwind(e),
    };
    eprintln!("first post acknowledged {first:?} after atl-db1 was stopped");
    // Continued, it finds the newer epoch and follows as the mirror; nothing acknowledged is
    // lost.
    d.wait_mirror("mgc", "atl-db1");
    let acked = ids_and_texts(load.stop());
    check_history(&acked, &history(&fe, &token));
}

#[test]
fn a_primary_cut_off_from_mirror_and_witness_stops_writing_and_rejoins() {
    let d = Deployment::up(|t| t);
    let token = user_and_room(&d);
    let fe = d.address("atl-fe");
    assert!(post(&fe, &token, "before the cut").is_some());
    let db1 = d.address("atl-db1");
    let secret = d.secret();
    let headers = [
        ("x-tandem-secret", secret.as_str()),
        ("content-type", "application/json"),
    ];
    let call = |body: &str| http(&db1, "POST", "/internal/v1/db/mgc/call", &headers, body);
    let write =
        r#"{"procedure":"chat.post","args":{"user":"alice","room":"lobby","text":"cut off"}}"#;
    let (code, body) = http(
        &db1,
        "POST",
        "/internal/v1/fault",
        &headers,
        r#"{"isolated":true}"#,
    );
    assert_eq!(code, 200, "{body}");
    // Past its lease, the cut-off primary accepts no write (a client beside it still reaches it).
    std::thread::sleep(Duration::from_millis(1_600));
    let (code, body) = call(write);
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("lease") || body.contains("not_primary"),
        "{body}"
    );
    // And says so.
    let c = d.copy("mgc", "atl-db1");
    assert_eq!(
        c["mirroring"]["state"], "isolated: accepts no writes",
        "{c}"
    );
    // The mirror and the witness agree it is gone: the mirror takes over, users post there.
    d.wait_copy("mgc", "atl-db2", "primary of epoch 2", |c| {
        c["role"] == "primary" && c["epoch"] == 2
    });
    let after = post(&fe, &token, "after the cut")
        .expect("posts go to the new primary")
        .id;
    // The cut heals: the old primary learns of epoch 2, accepts nothing, rejoins as mirror.
    let (code, _) = http(
        &db1,
        "POST",
        "/internal/v1/fault",
        &headers,
        r#"{"isolated":false}"#,
    );
    assert_eq!(code, 200);
    d.wait_mirror("mgc", "atl-db1");
    let (code, body) = call(write);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not_primary"), "{body}");
    let h = history(&fe, &token);
    assert!(h.iter().any(|(id, t)| *id == after && t == "after the cut"));
    assert!(
        !h.iter().any(|(_, t)| t == "cut off"),
        "a write of the cut-off primary survived"
    );
    let c = d.copy("mgc", "atl-db1");
    assert_eq!(c["epoch"], 2, "{c}");
}

#[test]
fn with_the_primary_and_the_witness_lost_the_operator_forces_service_on_the_mirror() {
    let d = Deployment::up(|t| t);
    let token = user_and_room(&d);
    assert!(post(&d.address("atl-fe"), &token, "before").is_some());
    let lsn = d.copy("mgc", "atl-db1")["lsn"].clone();
    d.wait_copy("mgc", "atl-db2", "the mirror at the primary's LSN", |c| {
        c["lsn"] == lsn
    });
    d.kill("atl-fe");
    d.kill("atl-db1");
    // No witness to grant it: the mirror stays a mirror, and a planned failover, which needs
    // the primary, says how to force service instead.
    std::thread::sleep(Duration::from_millis(2_000));
    assert_eq!(d.copy("mgc", "atl-db2")["role"], "mirror");
    let out = tandem(&d.dir, &["db", "mirror", "failover", "--db", "mgc"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("Its mirror on atl-db2 (LSN {lsn})"))
            && err.contains("`tandem db mirror remove --db mgc --instance atl-db2`")
            && err.contains("`tandem db recover --db mgc --instance atl-db2`"),
        "{err}"
    );
    // The two commands it names: the first removes the mirror's side (the primary's is left
    // for when it answers, and it says so), the second brings the copy online.
    let out = tandem(&d.dir, &remove_mgc_mirroring("atl-db2"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("removed on atl-db2 but not on: atl-db1")
            && err.contains(
                "(run `tandem db mirror remove --db mgc --instance atl-db1` once it answers)"
            ),
        "{err}"
    );
    ok(
        &d.dir,
        &["db", "recover", "--db", "mgc", "--instance", "atl-db2"],
    );
    let c = d.copy("mgc", "atl-db2");
    assert_eq!(
        (&c["role"], &c["lsn"]),
        (&serde_json::json!("primary"), &lsn),
        "{c}"
    );
    // atl-db1 back, the command the refusal named finishes the removal (until session 32 it
    // said "run the command again", which found no link on atl-db2 any more).
    ok(&d.dir, &["up", "--detach", "--nodes", "atl-db1"]);
    ok(&d.dir, &remove_mgc_mirroring("atl-db1"));
    // It finds the newer epoch and steps down: one primary.
    d.wait_copy("mgc", "atl-db1", "stepped down", |c| {
        c["role"] == "restoring"
    });
    assert_eq!(d.copy("mgc", "atl-db2")["role"], "primary");
}

#[test]
fn a_recover_is_refused_while_a_copy_of_its_site_is_stopped_and_goes_through_once_it_is_gone() {
    let d = Deployment::up(|t| t);
    let token = user_and_room(&d);
    // Unmirrored, atl-db1 serves alone; stopped (SIGSTOP), it does not answer, and would
    // acknowledge posts again once continued: a copy made primary meanwhile would drop them
    // (until session 32 the recover went through, exit 0).
    ok(&d.dir, &remove_mgc_mirroring("atl-db2"));
    let atl_db1 = common::pid(&d.dir, "atl-db1");
    // SAFETY: a node this test started.
    unsafe { libc::kill(atl_db1, libc::SIGSTOP) };
    let out = tandem(
        &d.dir,
        &["db", "recover", "--db", "mgc", "--instance", "atl-db2"],
    );
    // SAFETY: as above.
    unsafe { libc::kill(atl_db1, libc::SIGCONT) };
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("atl-db1 accepts connections and does not answer")
            && err.contains("`tandem down --nodes atl-db1`"),
        "{err}"
    );
    assert_eq!(d.copy("mgc", "atl-db2")["role"], "restoring");
    assert!(post(&d.address("atl-fe"), &token, "still served").is_some());
    // Gone (its process killed), it is no obstacle: the recover goes through.
    d.kill("atl-db1");
    ok(
        &d.dir,
        &["db", "recover", "--db", "mgc", "--instance", "atl-db2"],
    );
    let c = d.copy("mgc", "atl-db2");
    assert_eq!(c["role"], "primary");
    // It serves alone, and says so.
    assert!(
        c["warnings"][0]
            .as_str()
            .is_some_and(|w| w.starts_with("not mirrored: the topology places a copy on atl-db1")),
        "{c}"
    );
}

#[test]
fn with_the_primary_lost_after_it_served_alone_the_advice_is_to_bring_it_back() {
    let d = Deployment::up(|t| t);
    let token = user_and_room(&d);
    // The mirror lost, the primary acknowledges alone; then the primary is lost and the mirror
    // comes back: it lacks those posts, so it does not take over, and the advice says to bring
    // the primary back (until session 32: "takes over by itself once the witness answers").
    d.kill("atl-db2");
    d.wait_copy("mgc", "atl-db1", "serving unprotected", |c| {
        c["mirroring"]["state"]
            .as_str()
            .is_some_and(|s| s.contains("unprotected"))
    });
    assert!(post(&d.address("atl-fe"), &token, "alone").is_some());
    d.kill("atl-db1");
    ok(&d.dir, &["up", "--detach", "--nodes", "atl-db2"]);
    d.wait_copy("mgc", "atl-db2", "told it may not take over", |c| {
        c["mirroring"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("not synchronized"))
    });
    let out = tandem(&d.dir, &["db", "mirror", "failover", "--db", "mgc"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("is not synchronized")
            && err.contains("bring atl-db1 back (start it (`tandem up --detach --nodes atl-db1`))"),
        "{err}"
    );
    // Followed, the advice works: atl-db1 is primary again, with the post.
    ok(&d.dir, &["up", "--detach", "--nodes", "atl-db1"]);
    d.wait_copy("mgc", "atl-db1", "primary again", |c| {
        c["role"] == "primary"
    });
    let h = history(&d.address("atl-fe"), &token);
    assert!(h.iter().any(|(_, t)| t == "alone"), "{h:?}");
}

#[test]
fn a_primary_restarted_without_its_mirror_tells_the_witness_before_it_answers() {
    let d = Deployment::up(|t| t);
    let token = user_and_room(&d);
    let fe = d.address("atl-fe");
    let mut acked = Vec::new();
    let post_all = |prefix: &str, acked: &mut Vec<(i64, String)>| {
        for i in 0..20 {
            let text = format!("{prefix} {i}");
            let a = post(&fe, &token, &text).expect("acknowledged");
            acked.push((a.id, text));
        }
    };
    post_all("both up", &mut acked);
    d.wait_mirror("mgc", "atl-db2");
    // Both copies go down while synchronized (the witness holds "synchronized"); the primary
    // comes back alone and serves. What it acknowledges now is on no other copy: the witness
    // must know that before the first answer.
    d.kill("atl-db1");
    d.kill("atl-db2");
    for node in ["atl-db1", "atl-db2"] {
        d.wait_copy("mgc", node, "its node down", |c| c["state"] == "node down");
    }
    ok(&d.dir, &["up", "--detach", "--nodes", "atl-db1"]);
    d.wait_copy("mgc", "atl-db1", "serving alone", |c| {
        c["mirroring"]["state"] == "unprotected"
    });
    post_all("alone", &mut acked);
    // The primary is lost and its mirror comes back: no automatic failover to a copy that
    // lacks acknowledged posts.
    d.kill("atl-db1");
    d.wait_copy("mgc", "atl-db1", "its node down", |c| {
        c["state"] == "node down"
    });
    ok(&d.dir, &["up", "--detach", "--nodes", "atl-db2"]);
    let c = d.wait_copy("mgc", "atl-db2", "refused by the witness", |c| {
        c["mirroring"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("not synchronized"))
    });
    // Twice the witness's failover delay and more: still a mirror.
    std::thread::sleep(Duration::from_millis(4_000));
    let c2 = d.copy("mgc", "atl-db2");
    assert_eq!(c2["role"], "mirror", "{c}\n{c2}");
    // The primary back: the mirror catches up, and every acknowledged post is there.
    ok(&d.dir, &["up", "--detach", "--nodes", "atl-db1"]);
    d.wait_mirror("mgc", "atl-db2");
    post_all("again", &mut acked);
    check_history(&acked, &history(&fe, &token));
}

#[test]
fn a_witness_that_lost_its_state_is_told_again_and_the_mirror_can_still_take_over() {
    let d = Deployment::up(|t| t);
    let token = user_and_room(&d);
    let fe = d.address("atl-fe");
    let a = post(&fe, &token, "before").expect("acknowledged");
    // The witness's node comes back with an empty disk: it knows no primary, no epoch, and
    // no synchronized mirror. The primaries' next rounds tell it again.
    d.kill("atl-fe");
    d.wait_copy("mgc", "atl-fe", "its node down", |c| {
        c.is_null() || c["state"] == "node down"
    });
    std::fs::remove_dir_all(d.dir.join("data/atl-fe/witness")).unwrap();
    ok(&d.dir, &["up", "--detach", "--nodes", "atl-fe"]);
    let b = post(&fe, &token, "witness back").expect("acknowledged");
    d.wait_mirror("mgc", "atl-db2");
    // The primary's next round registers it again, and says its mirror is synchronized.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = http(
            &fe,
            "GET",
            "/internal/v1/status",
            &[("x-tandem-secret", d.secret().as_str())],
            "",
        );
        assert_eq!(code, 200, "{body}");
        let s: Value = serde_json::from_str(&body).unwrap();
        let mgc = s["witness"]
            .as_array()
            .and_then(|w| w.iter().find(|r| r["database"] == "mgc").cloned());
        if mgc.as_ref().is_some_and(|r| r["synchronized"] == true) {
            break;
        }
        assert!(Instant::now() < deadline, "the witness holds {mgc:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    d.kill("atl-db1");
    d.wait_copy("mgc", "atl-db2", "primary after the failover", |c| {
        c["role"] == "primary"
    });
    let c = post(&fe, &token, "after").expect("acknowledged");
    check_history(
        &[
            (a.id, "before".into()),
            (b.id, "witness back".into()),
            (c.id, "after".into()),
        ],
        &history(&fe, &token),
    );
}

#[test]
fn a_second_failover_needs_no_write_after_the_first() {
    let d = Deployment::up(|t| t);
    let token = user_and_room(&d);
    let fe = d.address("atl-fe");
    let dbs = ["cms", "mgc", "mgccomp", "users-pool-atl"];
    // atl-db1 lost: atl-db2 takes every database over (epoch 2), atl-db1 comes back as its
    // mirror. Nothing is written to mgccomp nor to the pool's users since: those mirrors hold
    // no record of epoch 2, only every record there is.
    d.kill("atl-db1");
    for db in dbs {
        d.wait_copy(db, "atl-db2", "primary after the first failover", |c| {
            c["role"] == "primary"
        });
    }
    ok(&d.dir, &["up", "--detach", "--nodes", "atl-db1"]);
    for db in dbs {
        d.wait_mirror(db, "atl-db1");
    }
    let a = post(&fe, &token, "between").expect("acknowledged");
    // atl-db2 lost in turn: every database fails over back to atl-db1.
    d.kill("atl-db2");
    for db in dbs {
        let c = d.wait_copy(db, "atl-db1", "primary after the second failover", |c| {
            c["role"] == "primary"
        });
        assert!(c["epoch"].as_u64().unwrap() >= 3, "{c}");
    }
    let b = post(&fe, &token, "after").expect("acknowledged");
    check_history(
        &[(a.id, "between".into()), (b.id, "after".into())],
        &history(&fe, &token),
    );
}

#[test]
fn a_mirror_that_cannot_write_no_longer_holds_the_primarys_answers_nor_takes_over() {
    let d = Deployment::up(|t| t);
    let token = user_and_room(&d);
    let fe = d.address("atl-fe");
    // atl-db2 again, under a file-size limit (SIGXFSZ ignored, so a write past it fails, as on
    // a full disk): its copies grow into the limit as posts come.
    ok(&d.dir, &["down", "--nodes", "atl-db2"]);
    let started = common::output_within_deadline(
        std::process::Command::new("bash")
            .args([
                "-c",
                "trap '' XFSZ; ulimit -f 3072; exec \"$0\" up --detach --nodes atl-db2",
                env!("CARGO_BIN_EXE_tandem"),
            ])
            .current_dir(&d.dir)
            .env_remove("TANDEM_TOPOLOGY"),
    );
    assert!(started.status.success(), "{started:?}");
    d.wait_mirror("mgc", "atl-db2");
    // Every post is acknowledged, before the mirror's writes fail and after: the primary stops
    // waiting for a mirror that takes nothing.
    let filler = "x".repeat(1_500);
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let post_one = |acked: &mut Vec<(i64, String)>| {
        let text = format!("{} {filler}", acked.len());
        let id = post(&fe, &token, &text)
            .unwrap_or_else(|| panic!("post {} not acknowledged", acked.len()))
            .id;
        acked.push((id, text));
    };
    while d.copy("mgc", "atl-db2")["mirroring"]["state"] != "mirror: cannot apply" {
        assert!(
            Instant::now() < deadline,
            "the mirror never ran out of room"
        );
        for _ in 0..50 {
            post_one(&mut acked);
        }
    }
    let c = d.wait_copy("mgc", "atl-db1", "unprotected: mirror stalled", |c| {
        c["mirroring"]["state"] == "unprotected: mirror stalled"
    });
    assert!(
        c["mirroring"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("atl-db2 hardened nothing past LSN")),
        "{c}"
    );
    let c = d.copy("mgc", "atl-db2");
    assert!(
        c["mirroring"]["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("apply: ")),
        "{c}"
    );
    for _ in 0..20 {
        post_one(&mut acked);
    }
    // The witness was told: with the primary lost, the mirror, which lacks acknowledged posts,
    // does not take over.
    d.kill("atl-db1");
    d.wait_copy("mgc", "atl-db2", "no failover: not synchronized", |c| {
        c["mirroring"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("no failover") && e.contains("not synchronized"))
    });
    assert_eq!(d.copy("mgc", "atl-db2")["role"], "mirror");
    // Both back, the mirror without the limit: it catches up and is synchronized again, and
    // every acknowledged post is there.
    ok(&d.dir, &["up", "--detach", "--nodes", "atl-db1"]);
    ok(&d.dir, &["down", "--nodes", "atl-db2"]);
    ok(&d.dir, &["up", "--detach", "--nodes", "atl-db2"]);
    let mirror = d.wait_mirror("mgc", "atl-db2");
    post_one(&mut acked);
    let primary = d.copy("mgc", "atl-db1");
    assert_eq!(primary["epoch"], 1, "{primary}");
    d.wait_copy("mgc", "atl-db2", "the primary's LSN", |c| {
        c["lsn"] == primary["lsn"]
    });
    assert_eq!(mirror["epoch"], 1);
    check_history(&acked, &history(&fe, &token));
}

/// Sets the soft limit on the size of the files `pid` writes (`ulimit -S -f`): a write past it
/// fails (the node ignores SIGXFSZ), as on a full disk.
fn limit_file_size(pid: i32, bytes: u64) {
    let limit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a plain system call on a valid struct; no old value asked for.
    let r = unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, &limit, std::ptr::null_mut()) };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
}

#[test]
fn a_primary_that_cannot_write_hands_over_to_its_mirror_and_follows_it_once_it_can() {
    let d = Deployment::up(|t| t);
    let token = user_and_room(&d);
    let fe = d.address("atl-fe");
    let mut acked = vec![];
    let text = |i: usize| format!("{i} {}", "y".repeat(1_500));
    let first = post(&fe, &token, &text(0)).expect("a post before").id;
    acked.push((first, text(0)));
    // atl-db1 may write its files up to 128 KiB past its database file's size: once its WAL
    // reaches that, commits fail, and so do the checkpoints that would start the WAL over.
    // Posts are refused, each with the reason.
    let file = d.dir.join("data/atl-db1/databases/mgc/tandem.db");
    let size = std::fs::metadata(&file).unwrap().len();
    let pid = common::pid(&d.dir, "atl-db1");
    limit_file_size(pid, size + (128 << 10));
    let deadline = Instant::now() + Duration::from_secs(60);
    let refusal = loop {
        assert!(Instant::now() < deadline, "no post refused");
        let t = text(acked.len());
        let (code, body) = common::post_answer(&fe, &token, &t);
        if code != 201 {
            break (code, body);
        }
        let v: Value = serde_json::from_str(&body).unwrap();
        acked.push((v["id"].as_i64().unwrap(), t));
    };
    assert_eq!(refusal.0, 503, "{refusal:?}");
    assert!(
        refusal
            .1
            .contains("commit failed, rolled back: sqlite: disk I/O error"),
        "{refusal:?}"
    );
    // The mirror, which has every record, takes over within seconds, and posts go through
    // again (the clients go on posting; a refused one is not acknowledged).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut attempt = acked.len();
    while d.copy("mgc", "atl-db2")["role"] != "primary" {
        assert!(
            Instant::now() < deadline,
            "the mirror did not take over: {} {}\n{}",
            d.copy("mgc", "atl-db1"),
            d.copy("mgc", "atl-db2"),
            std::fs::read_to_string(d.dir.join("logs/atl-db1.log"))
                .unwrap()
                .lines()
                .filter(|l| !l.contains(" INFO "))
                .collect::<Vec<_>>()
                .join("\n")
        );
        attempt += 1;
        let t = text(attempt);
        let (code, body) = common::post_answer(&fe, &token, &t);
        if code == 201 {
            let v: Value = serde_json::from_str(&body).unwrap();
            acked.push((v["id"].as_i64().unwrap(), t));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let t = text(attempt + 1);
    let id = post(&fe, &token, &t).expect("a post on the new primary").id;
    acked.push((id, t));
    assert_eq!(d.copy("mgc", "atl-db2")["epoch"], 2);
    let log = std::fs::read_to_string(d.dir.join("logs/atl-db1.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("handing over to the mirror")
                && l.contains("commits failed here for")),
        "{log}"
    );
    // Room again: the old primary follows the new one as its mirror, with every post, and
    // warns of nothing any more — its failed commits were a primary's (its search follower,
    // retried every second, catches up too).
    limit_file_size(pid, libc::RLIM_INFINITY);
    let primary = d.copy("mgc", "atl-db2");
    d.wait_copy(
        "mgc",
        "atl-db1",
        "a mirror with the primary's LSN, no warning",
        |m| {
            m["role"] == "mirror"
                && m["lsn"].as_u64() >= primary["lsn"].as_u64()
                && m["warnings"] == serde_json::json!([])
        },
    );
    check_history(&acked, &history(&fe, &token));
}

#[test]
fn a_damaged_mirror_is_found_and_made_again_from_its_primary() {
    let d = Deployment::up(|t| t);
    let token = user_and_room(&d);
    let fe = d.address("atl-fe");
    let mut acked = Vec::new();
    for i in 0..1_500 {
        let text = format!("{i} {}", "z".repeat(200));
        acked.push((post(&fe, &token, &text).expect("a post").id, text));
    }
    let lsn = d.copy("mgc", "atl-db1")["lsn"].clone();
    d.wait_copy("mgc", "atl-db2", "the primary's LSN", |c| c["lsn"] == lsn);
    ok(&d.dir, &["down", "--nodes", "atl-db2"]);
    // Pages a third of the way into the mirror's file damaged (its WAL folded in first, as a
    // checkpoint does): SQLite opens it, and appends at its end go through.
    let file = d.dir.join("data/atl-db2/databases/mgc/tandem.db");
    let sqlite = |f: &std::path::Path| tandem_store::rusqlite::Connection::open(f).unwrap();
    fold_wal(&file);
    let mut bytes = std::fs::read(&file).unwrap();
    let pages = bytes.len() / 4096;
    for page in pages / 3..pages / 3 + 4 {
        for b in &mut bytes[page * 4096 + 8..(page + 1) * 4096] {
            *b ^= 0x5a;
        }
    }
    std::fs::write(&file, &bytes).unwrap();
    // Back: the damage is found — as the copy opens (the pages it reads then), or by scrubbing
    // within seconds — and the mirror is made again from the primary; the node serves its
    // other copies meanwhile.
    ok(&d.dir, &["up", "--detach", "--nodes", "atl-db2"]);
    let log = || std::fs::read_to_string(d.dir.join("logs/atl-db2.log")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let repaired = || {
        let log = log();
        log.find("the copy is damaged")
            .is_some_and(|at| log[at..].contains("copy reseeded database=\"mgc\""))
    };
    while !repaired() {
        assert!(Instant::now() < deadline, "no reseed of the damaged copy");
        std::thread::sleep(Duration::from_millis(100));
    }
    d.wait_mirror("mgc", "atl-db2");
    let id = post(&fe, &token, "after the repair").expect("a post").id;
    acked.push((id, "after the repair".to_string()));
    let lsn = d.copy("mgc", "atl-db1")["lsn"].clone();
    let c = d.wait_copy("mgc", "atl-db2", "the primary's LSN", |c| c["lsn"] == lsn);
    assert_eq!(c["warnings"], serde_json::json!([]), "{c}");
    check_history(&acked, &history(&fe, &token));
    ok(&d.dir, &["down", "--nodes", "atl-db2"]);
    let check: String = sqlite(&file)
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

#[test]
fn a_primary_that_meets_damaged_pages_hands_over_to_its_mirror_and_is_made_again_from_it() {
    let d = Deployment::up(|t| t);
    let token = user_and_room(&d);
    let fe = d.address("atl-fe");
    let mut acked = Vec::new();
    let mut posted = |text: String| {
        let id = post(&fe, &token, &text).expect("a post").id;
        acked.push((id, text));
    };
    for i in 0..1_500 {
        posted(format!("{i} {}", "z".repeat(200)));
    }
    d.wait_mirror("mgc", "atl-db2");
    // The pages of the oldest posts, damaged in the running primary's file. It reads them
    // from there once its WAL has started over past them (a checkpoint each second, the WAL
    // started over at the next commit); until then its WAL's copies hide the damage and the
    // next checkpoint writes over it, so: again, until a read of the oldest posts meets it.
    let file = d.dir.join("data/atl-db1/databases/mgc/tandem.db");
    let bearer = format!("Bearer {token}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut round = 0;
    loop {
        assert!(Instant::now() < deadline, "no read met the damaged pages");
        std::thread::sleep(Duration::from_millis(1_500));
        for _ in 0..2 {
            round += 1;
            posted(format!("settling {round}"));
        }
        common::damage_oldest_rows(&file);
        // A commit after the damage: the primary's readers drop the pages they cached.
        round += 1;
        posted(format!("settling {round}"));
        let (code, body) = http(
            &fe,
            "GET",
            "/api/v1/rooms/lobby/messages?after=0&limit=500",
            &[("authorization", &bearer)],
            "",
        );
        if code != 200 {
            assert!(body.contains("malformed"), "{code} {body}");
            break;
        }
    }
    // The mirror, whose pages are its own and sound, takes over with every post; the damaged
    // copy is made again from it and follows it as its mirror.
    d.wait_copy("mgc", "atl-db2", "the new primary", |c| {
        c["role"] == "primary"
    });
    let log = || std::fs::read_to_string(d.dir.join("logs/atl-db1.log")).unwrap();
    assert!(
        log()
            .lines()
            .any(|l| l.contains("handing over to the mirror")
                && l.contains("the copy is damaged here (a read met damaged pages")),
        "{}",
        log()
    );
    d.wait_copy("mgc", "atl-db1", "a synchronized mirror, no warning", |c| {
        c["role"] == "mirror"
            && c["mirroring"]["state"] == "mirror: synchronized"
            && c["warnings"] == serde_json::json!([])
    });
    let log = log();
    let at = log.find("handing over to the mirror").unwrap();
    assert!(
        log[at..].contains("copy reseeded database=\"mgc\""),
        "{log}"
    );
    posted("after the repair".to_string());
    check_history(&acked, &history(&fe, &token));
    ok(&d.dir, &["down", "--nodes", "atl-db1"]);
    let check: String = tandem_store::rusqlite::Connection::open(&file)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

#[test]
fn a_primary_whose_copy_is_too_damaged_to_open_comes_back_and_is_made_again_as_the_mirror() {
    let d = Deployment::up(|t| t);
    let token = user_and_room(&d);
    let fe = d.address("atl-fe");
    let mut acked = Vec::new();
    for i in 0..200 {
        let text = format!("{i}");
        acked.push((post(&fe, &token, &text).expect("a post").id, text));
    }
    d.wait_mirror("mgc", "atl-db2");
    // The primary's node stops; its mirror takes over. Its copy's journal damaged meanwhile
    // (read as the copy opens): the node used to refuse to start, with every copy it holds.
    ok(&d.dir, &["down", "--nodes", "atl-db1"]);
    d.wait_copy("mgc", "atl-db2", "the new primary", |c| {
        c["role"] == "primary"
    });
    damage_journal(&d, "atl-db1");
    ok(&d.dir, &["up", "--detach", "--nodes", "atl-db1"]);
    // Its other copies serve; the damaged one is set aside and made again from atl-db2.
    d.wait_mirror("mgc", "atl-db1");
    d.wait_mirror("cms", "atl-db1");
    let log = std::fs::read_to_string(d.dir.join("logs/atl-db1.log")).unwrap();
    assert!(
        log.contains("the copy is damaged and cannot be opened: moved aside"),
        "{log}"
    );
    let aside = std::fs::read_dir(d.dir.join("data/atl-db1/databases/.damaged"))
        .unwrap()
        .count();
    assert_eq!(aside, 1, "the damaged files are kept");
    let text = "after the repair".to_string();
    acked.push((post(&fe, &token, &text).expect("a post").id, text));
    check_history(&acked, &history(&fe, &token));
}

#[test]
fn a_primary_too_damaged_to_open_with_writes_its_mirror_lacks_is_set_aside_and_not_replaced() {
    let d = Deployment::up(|t| t);
    let token = user_and_room(&d);
    let fe = d.address("atl-fe");
    d.wait_mirror("mgc", "atl-db2");
    // The mirror away, the primary answers alone; then it stops with its journal damaged.
    ok(&d.dir, &["down", "--nodes", "atl-db2"]);
    d.wait_copy("mgc", "atl-db1", "unprotected", |c| {
        c["mirroring"]["state"] == "unprotected"
    });
    post(&fe, &token, "only on atl-db1").expect("a post");
    ok(&d.dir, &["down", "--nodes", "atl-db1"]);
    damage_journal(&d, "atl-db1");
    ok(&d.dir, &["up", "--detach", "--nodes", "atl-db1,atl-db2"]);
    // The node serves its other copies; the damaged one is set aside and says so, and the
    // mirror, which lacks the last post, does not take over: the operator decides.
    let c = d.wait_copy("mgc", "atl-db1", "the copy set aside", |c| {
        c["warnings"][0]
            .as_str()
            .is_some_and(|w| w.starts_with("the copy was too damaged to open"))
    });
    assert_eq!(c["state"], "absent", "{c}");
    d.wait_copy("cms", "atl-db1", "the CMS served", |c| {
        c["role"] == "primary" && c["mirroring"]["state"] == "synchronized"
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(d.copy("mgc", "atl-db2")["role"], "mirror");
    assert_eq!(d.copy("mgc", "atl-db1")["state"], "absent");
}

#[test]
fn a_witness_whose_database_is_damaged_is_left_out_and_its_node_serves_on() {
    let d = Deployment::up(|t| t);
    let token = user_and_room(&d);
    let fe = d.address("atl-fe");
    d.wait_mirror("mgc", "atl-db2");
    ok(&d.dir, &["down", "--nodes", "atl-fe"]);
    // The witness's file, its WAL folded in, then its header overwritten: not a database.
    let file = d.dir.join("data/atl-fe/witness/tandem.db");
    fold_wal(&file);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[..100].fill(0x5a);
    std::fs::write(&file, &bytes).unwrap();
    // The node comes up (it refused to start, chat and front end with it) and says why it is
    // no witness; the chat goes on through it, the mirror still hardening each post.
    ok(&d.dir, &["up", "--detach", "--nodes", "atl-fe"]);
    let node = d.node("atl-fe");
    let warning = node["warnings"][0].as_str().unwrap_or_default();
    assert!(
        warning.starts_with("the witness's database in")
            && warning.contains("serves without the witness role"),
        "{node}"
    );
    let id = post(&fe, &token, "without the witness").expect("a post").id;
    check_history(
        &[(id, "without the witness".to_string())],
        &history(&fe, &token),
    );
    let m = d.copy("mgc", "atl-db1");
    assert_eq!(m["mirroring"]["state"], "synchronized", "{m}");
}

#[test]
fn a_planned_failover_the_witness_cannot_record_is_refused_and_the_primary_serves_on() {
    let d = Deployment::up(|t| t);
    let token = user_and_room(&d);
    let fe = d.address("atl-fe");
    d.wait_mirror("mgc", "atl-db2");
    // The witness's node may write no file past 4 KiB: its database's commits fail.
    let pid = common::pid(&d.dir, "atl-fe");
    limit_file_size(pid, 4096);
    let out = tandem(&d.dir, &["db", "mirror", "failover", "--db", "mgc"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("the witness on atl-fe did not record the handover")
            && err.contains("atl-db1 serves on as primary"),
        "{err}"
    );
    post(&fe, &token, "after the refusal").expect("the primary serves on");
    assert_eq!(d.copy("mgc", "atl-db1")["role"], "primary");
    let node = d.node("atl-fe");
    assert!(
        node["warnings"].as_array().unwrap().iter().any(|w| w
            .as_str()
            .unwrap()
            .starts_with("the witness's database: commits fail")),
        "{node}"
    );
    // Room again: the same failover goes through.
    limit_file_size(pid, libc::RLIM_INFINITY);
    ok(&d.dir, &["db", "mirror", "failover", "--db", "mgc"]);
    assert_eq!(d.copy("mgc", "atl-db2")["role"], "primary");
}

/// Folds the WAL of the SQLite file `file`, whose node is stopped, into it (as a checkpoint
/// does): its pages are read from the file then.
fn fold_wal(file: &std::path::Path) {
    tandem_store::rusqlite::Connection::open(file)
        .unwrap()
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
}

/// Damages the first pages of the journal of `mgc` on `node`, stopped (its WAL folded in
/// first, as a checkpoint does): the copy does not open.
fn damage_journal(d: &Deployment, node: &str) {
    let file = d.dir.join(format!("data/{node}/databases/mgc/tandem.db"));
    fold_wal(&file);
    common::damage_pages(
        &file,
        "SELECT pageno FROM dbstat WHERE name = '_tandem_journal' ORDER BY path LIMIT 3",
    );
}

#[test]
fn a_mirror_away_past_the_journal_is_reseeded_and_ends_with_the_same_chain() {
    let d =
        Deployment::up(|t| t.replace("journal_records_max = 1000000", "journal_records_max = 100"));
    let token = user_and_room(&d);
    let fe = d.address("atl-fe");
    d.wait_mirror("mgc", "atl-db2");
    d.kill("atl-db2");
    // Unprotected while the mirror is away, and says so.
    d.wait_copy("mgc", "atl-db1", "unprotected", |c| {
        c["mirroring"]["state"] == "unprotected"
    });
    let (code, metrics) = http(&d.address("atl-db1"), "GET", "/metrics", &[], "");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("tandem_database_unprotected{database=\"mgc\"} 1"),
        "{metrics}"
    );
    let mut acked = Vec::new();
    for i in 0..400 {
        let text = format!("while away {i}");
        acked.push((
            post(&fe, &token, &text)
                .expect("the primary serves alone")
                .id,
            text,
        ));
    }
    // The primary moves the mirror's journal cursor once a second; let it drop the old records.
    std::thread::sleep(Duration::from_millis(1_500));
    let line = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("mgc ") && l.contains("atl-db1"))
            .unwrap_or_default()
            .to_string()
    };
    let text = ok(&d.dir, &["status"]);
    assert!(line(&text).contains(" behind"), "{text}");
    // Restarted while its mirror is away, the primary serves alone and knows no position of the
    // mirror: status says so rather than counting its whole journal as the mirror's lag.
    d.kill("atl-db1");
    d.wait_copy("mgc", "atl-db1", "its node down", |c| {
        c["state"] == "node down"
    });
    ok(&d.dir, &["up", "--detach", "--nodes", "atl-db1"]);
    d.wait_copy("mgc", "atl-db1", "unprotected after a restart", |c| {
        c["mirroring"]["state"] == "unprotected"
    });
    let text = ok(&d.dir, &["status"]);
    assert!(
        line(&text).contains("unprotected with atl-db2 (sync, not heard from)"),
        "{text}"
    );
    ok(&d.dir, &["up", "--detach", "--nodes", "atl-db2"]);
    let mirror = d.wait_mirror("mgc", "atl-db2");
    let log = std::fs::read_to_string(d.dir.join("logs/atl-db2.log")).unwrap();
    assert!(log.contains("reseeding the copy"), "no reseed in the log");
    let primary = d.copy("mgc", "atl-db1");
    assert_eq!(mirror["lsn"], primary["lsn"]);
    // Same LSN and chain: the offline inspection of both copies, once the nodes are down.
    check_history(&acked, &history(&fe, &token));
    ok(&d.dir, &["down"]);
    let inspect = |node: &str| {
        let path = d.dir.join(format!("data/{node}/databases/mgc"));
        json(&d.dir, &["db", "inspect", path.to_str().unwrap()])
    };
    let (a, b) = (inspect("atl-db1"), inspect("atl-db2"));
    assert_eq!(a["lsn"], b["lsn"]);
    assert_eq!(a["chain"], b["chain"]);
    let out = tandem(&d.dir, &["status"]);
    assert!(out.status.success());
}

/// What `node`'s log says after its first `from` bytes.
fn log_since(d: &Deployment, node: &str, from: usize) -> String {
    let text = std::fs::read_to_string(d.dir.join(format!("logs/{node}.log"))).unwrap_or_default();
    text.get(from..).unwrap_or_default().to_string()
}

fn log_len(d: &Deployment, node: &str) -> usize {
    std::fs::metadata(d.dir.join(format!("logs/{node}.log"))).map_or(0, |m| m.len() as usize)
}

/// A copy that was primary comes back after a takeover, away for longer than the new primary
/// takes to write a few records and move its journal's cursors — killed (its mirror took over),
/// or killed at once after a planned failover, under load: it catches up from the new
/// primary's journal, which kept every record after the takeover for it; no reseed. (Until
/// session 33 the new primary could let go of them at once: a planned failover counted the
/// writes answered in its takeover's last step as the old primary's, and moved its cursor past
/// them — "the primary's journal no longer holds LSN …", a full reseed.)
#[test]
fn a_former_primary_back_after_a_takeover_catches_up_from_the_journal() {
    let d = Deployment::up(|t| t);
    let token = user_and_room(&d);
    let fe = d.address("atl-fe");
    assert!(post(&fe, &token, "before").is_some());
    d.wait_mirror("mgc", "atl-db2");
    let back_without_reseed = |node: &str, from: usize| {
        d.wait_mirror("mgc", node);
        for db in ["cms", "mgccomp", "users-pool-atl"] {
            d.wait_copy(db, node, "a mirror", |c| c["role"] == "mirror");
        }
        let log = log_since(&d, node, from);
        assert!(
            !log.contains("reseeding the copy"),
            "{node} was reseeded:\n{log}"
        );
    };

    // Killed: the mirror takes over.
    d.kill("atl-db1");
    d.wait_copy("mgc", "atl-db2", "primary of epoch 2", |c| {
        c["role"] == "primary" && c["epoch"] == 2
    });
    let mut acked = Vec::new();
    for i in 0..40 {
        let text = format!("while atl-db1 is away {i}");
        // The chat node finds the new primary on its own: the first posts may be refused.
        let deadline = Instant::now() + Duration::from_secs(30);
        let id = loop {
            if let Some(a) = post(&fe, &token, &text) {
                break a.id;
            }
            assert!(Instant::now() < deadline, "atl-db2 does not serve");
            std::thread::sleep(Duration::from_millis(100));
        };
        acked.push((id, text));
    }
    // The primary moves its journal's cursors once a second.
    std::thread::sleep(Duration::from_millis(2_500));
    let from = log_len(&d, "atl-db1");
    ok(&d.dir, &["up", "--detach", "--nodes", "atl-db1"]);
    back_without_reseed("atl-db1", from);

    // A planned failover back under load, the old primary killed as soon as it is done.
    let load = Load::start(&fe, &token, 4);
    std::thread::sleep(Duration::from_millis(500));
    let r = json(&d.dir, &["db", "mirror", "failover", "--db", "mgc"]);
    assert_eq!(r["new_primary"], "atl-db1", "{r}");
    d.kill("atl-db2");
    let killed = Instant::now();
    load.wait_acked_since(killed, "with atl-db2 killed after the planned failover");
    std::thread::sleep(Duration::from_millis(2_500));
    let from = log_len(&d, "atl-db2");
    ok(&d.dir, &["up", "--detach", "--nodes", "atl-db2"]);
    back_without_reseed("atl-db2", from);
    acked.extend(ids_and_texts(load.stop()));
    check_history(&acked, &history(&fe, &token));
}

/// A mirror whose reseed keeps failing (here: where it receives the seed is taken by a file)
/// tries again less and less often, logs the failure once, and its status says that it fails
/// and why; once the cause is gone it is reseeded. (Until session 33 it tried again every
/// 100 ms, logging twice each time — against a primary whose disk the seed filled, 1,110
/// times in two minutes.)
#[test]
fn a_reseed_that_keeps_failing_is_tried_less_and_less_often_and_status_says_why() {
    let d =
        Deployment::up(|t| t.replace("journal_records_max = 1000000", "journal_records_max = 100"));
    let token = user_and_room(&d);
    let fe = d.address("atl-fe");
    d.wait_mirror("mgc", "atl-db2");
    d.kill("atl-db2");
    d.wait_copy("mgc", "atl-db2", "its node down", |c| {
        c["state"] == "node down"
    });
    for i in 0..300 {
        post(&fe, &token, &format!("while away {i}")).expect("the primary serves alone");
    }
    // The primary moves the mirror's journal cursor once a second; let it drop the old records.
    std::thread::sleep(Duration::from_millis(1_500));
    let scratch = d.dir.join("data/atl-db2/databases/.seed");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::write(&scratch, "in the way").unwrap();
    let from = log_len(&d, "atl-db2");
    ok(&d.dir, &["up", "--detach", "--nodes", "atl-db2"]);
    let failing = |c: &Value| {
        c["mirroring"]["state"]
            .as_str()
            .is_some_and(|s| s.starts_with("mirror: reseed failing"))
    };
    let c = d.wait_copy("mgc", "atl-db2", "its reseed failing", failing);
    let state = c["mirroring"]["state"].as_str().unwrap().to_string();
    assert!(state.contains(".seed"), "{state}");
    // About 6 s: tries at 0, 0.5, 1.5, 3.5 s (then 7.5 s): not 60.
    std::thread::sleep(Duration::from_secs(6));
    let c = d.wait_copy("mgc", "atl-db2", "its reseed failing", failing);
    let state = c["mirroring"]["state"].as_str().unwrap();
    let in_a_row: u64 = state
        .split_once('(')
        .and_then(|(_, r)| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{state}"));
    assert!((3..=6).contains(&in_a_row), "{state}");
    let log = log_since(&d, "atl-db2", from);
    assert_eq!(log.matches("reseed failed").count(), 1, "{log}");
    assert_eq!(log.matches("reseeding the copy").count(), 1, "{log}");
    // The cause gone, the next try reseeds it.
    std::fs::remove_file(&scratch).unwrap();
    d.wait_mirror("mgc", "atl-db2");
}

/// The same for a standby (the CMS's, in the other site): a reseed that keeps failing is tried
/// less and less often and logged once (until session 33 a standby tried again every 200 ms,
/// logging each time).
#[test]
fn a_standbys_reseed_that_keeps_failing_is_tried_less_and_less_often() {
    let d =
        Deployment::up(|t| t.replace("journal_records_max = 1000000", "journal_records_max = 100"));
    // The standby's state, as `cms status` shows it; waited for until `cond` holds.
    let wait_standby = |what: &str, cond: &dyn Fn(&str) -> bool| -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = json(&d.dir, &["cms", "status"]);
            let state = s["copies"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["node"] == "dal-db1"))
                .and_then(|c| c["state"].as_str())
                .unwrap_or("")
                .to_string();
            if cond(&state) {
                return state;
            }
            assert!(Instant::now() < deadline, "{what}: {s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let current = |s: &str| s == "standby: current";
    wait_standby("the CMS standby current", &current);
    d.kill("dal-db1");
    // More CMS records than its cursor keeps for it: the active servers cleared and set.
    let (cms, secret) = (d.address("atl-db1"), d.secret());
    for i in 0..150 {
        let nodes = if i % 2 == 0 {
            serde_json::json!([])
        } else {
            serde_json::json!(["atl-fe"])
        };
        let (code, body) = http(
            &cms,
            "POST",
            "/internal/v1/db/cms/call",
            &[
                ("x-tandem-secret", secret.as_str()),
                ("content-type", "application/json"),
            ],
            serde_json::json!({ "procedure": "cms.set_chat_active", "args": { "nodes": nodes } })
                .to_string(),
        );
        assert_eq!(code, 200, "{body}");
    }
    // The primary moves the standby's journal cursor once a second.
    std::thread::sleep(Duration::from_millis(1_500));
    let scratch = d.dir.join("data/dal-db1/databases/.seed");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::write(&scratch, "in the way").unwrap();
    let from = log_len(&d, "dal-db1");
    ok(&d.dir, &["up", "--detach", "--nodes", "dal-db1"]);
    let failing = |s: &str| s.starts_with("standby: reseed failing");
    wait_standby("its reseed failing", &failing);
    // About 6 s: tries at 0, 0.5, 1.5, 3.5 s (then 7.5 s): not 30.
    std::thread::sleep(Duration::from_secs(6));
    let state = wait_standby("its reseed failing", &failing);
    let in_a_row: u64 = state
        .split_once('(')
        .and_then(|(_, r)| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{state}"));
    assert!((3..=6).contains(&in_a_row), "{state}");
    let log = log_since(&d, "dal-db1", from);
    assert_eq!(log.matches("reseed failed").count(), 1, "{log}");
    // The cause gone, the next try reseeds it.
    std::fs::remove_file(&scratch).unwrap();
    wait_standby("the CMS standby current again", &current);
}

#[test]
fn a_planned_failover_to_a_mirror_that_is_gone_is_refused_and_the_primary_serves_on() {
    let d = Deployment::up(|t| t);
    let token = user_and_room(&d);
    let fe = d.address("atl-fe");
    assert!(post(&fe, &token, "before").is_some());
    d.wait_mirror("mgc", "atl-db2");
    // The mirror had every record when it died: its hardened LSN says so, but it can take
    // nothing over. Handing it the role would leave mgc without a primary.
    d.kill("atl-db2");
    d.wait_copy("mgc", "atl-db2", "its node down", |c| {
        c["state"] == "node down"
    });
    let out = tandem(&d.dir, &["db", "mirror", "failover", "--db", "mgc"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        // Not pulling for a second, or not answering before that.
        err.contains("the mirror on atl-db2")
            && err.contains("a planned failover needs it")
            && err.contains("atl-db1 serves on as primary"),
        "{err}"
    );
    let c = d.copy("mgc", "atl-db1");
    assert_eq!(c["role"], "primary", "{c}");
    assert!(post(&fe, &token, "after the refusal").is_some());
}

#[test]
fn mirror_commands_fail_over_without_loss_remove_and_install_again() {
    let d = Deployment::up(|t| t);
    let token = user_and_room(&d);
    let fe = d.address("atl-fe");
    let load = Load::start(&fe, &token, 2);
    std::thread::sleep(Duration::from_millis(300));

    // Planned failover: the mirror takes over with every record; the old primary mirrors it.
    let r = json(&d.dir, &["db", "mirror", "failover", "--db", "mgc"]);
    assert_eq!(r["old_primary"], "atl-db1", "{r}");
    assert_eq!(r["new_primary"], "atl-db2", "{r}");
    assert_eq!(r["epoch"], 2, "{r}");
    let switched = Instant::now();
    load.wait_acked_since(switched, "after the planned failover");
    d.wait_mirror("mgc", "atl-db1");

    // Installing on a copy that is not primary, or across sites, is refused with the reason.
    let refused = |args: &[&str], expect: &str| {
        let out = tandem(&d.dir, args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{args:?}: {err}");
    };
    let install = ["db", "mirror", "install", "--db", "mgc", "--primary"];
    refused(
        &[&install[..], &["atl-db1", "--mirror", "atl-db2"]].concat(),
        "is mirror",
    );
    refused(
        &[&install[..], &["atl-db2", "--mirror", "dal-db1"]].concat(),
        "site",
    );
    refused(
        &["db", "mirror", "failover", "--db", "nosuch"],
        "no database named nosuch in the topology",
    );

    // Removed: the primary serves alone (no lease needed), the mirror copy stays restoring.
    let r = json(&d.dir, &remove_mgc_mirroring("atl-db1"));
    assert_eq!(r["removed"].as_array().unwrap().len(), 2, "{r}");
    d.wait_copy("mgc", "atl-db1", "restoring", |c| {
        c["role"] == "restoring" && c["mirroring"].is_null()
    });
    let removed = Instant::now();
    load.wait_acked_since(removed, "after the mirror was removed");
    assert!(d.copy("mgc", "atl-db2")["mirroring"].is_null());

    // An install whose mirror node does not answer changes nothing (the primary would
    // otherwise hold a link to a mirror that never comes, serving unprotected).
    d.kill("atl-db1");
    d.wait_copy("mgc", "atl-db1", "its node down", |c| {
        c["state"] == "node down"
    });
    refused(
        &[&install[..], &["atl-db2", "--mirror", "atl-db1"]].concat(),
        "atl-db1 does not answer",
    );
    assert!(d.copy("mgc", "atl-db2")["mirroring"].is_null());
    ok(&d.dir, &["up", "--detach", "--nodes", "atl-db1"]);

    // Installed again: the restoring copy catches up and mirrors; sync again.
    let r = json(
        &d.dir,
        &[&install[..], &["atl-db2", "--mirror", "atl-db1"]].concat(),
    );
    assert_eq!(r["state"], "synchronized", "{r}");
    d.wait_mirror("mgc", "atl-db1");

    // Asynchronous: the mirror follows, acknowledgments do not wait for it.
    ok(&d.dir, &remove_mgc_mirroring("atl-db2"));
    let r = json(
        &d.dir,
        &[
            &install[..],
            &["atl-db2", "--mirror", "atl-db1", "--mode", "async"],
        ]
        .concat(),
    );
    assert_eq!(r["mode"], "async", "{r}");
    let p = d.copy("mgc", "atl-db2");
    assert_eq!(p["mirroring"]["state"], "async: mirror following", "{p}");
    assert_eq!(p["mirroring"]["gate"]["sync"], false, "{p}");
    let async_at = Instant::now();
    load.wait_acked_since(async_at, "with an asynchronous mirror");
    let acked = ids_and_texts(load.stop());
    check_history(&acked, &history(&fe, &token));
}

/// A WebSocket session on room `lobby` through the user API at `fe`, from the message after
/// `after` (or from now), with the runtime that drives it.
struct Session {
    rt: tokio::runtime::Runtime,
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl Session {
    fn open(fe: &str, token: &str, after: Option<i64>) -> Session {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let from = after.map(|a| format!("&after={a}")).unwrap_or_default();
        let url = format!("ws://{fe}/api/v1/events?rooms=lobby&token={token}{from}");
        let (ws, _) = rt
            .block_on(tokio_tungstenite::connect_async(url))
            .expect("websocket");
        Session { rt, ws }
    }

    /// The ids of the message events it delivers, up to `last`.
    fn messages_until(&mut self, last: i64) -> Vec<i64> {
        use futures_util::StreamExt;
        let mut seen = Vec::new();
        while !seen.contains(&last) {
            let m = self
                .rt
                .block_on(async {
                    tokio::time::timeout(Duration::from_secs(20), self.ws.next()).await
                })
                .unwrap_or_else(|_| panic!("live events stopped; got {seen:?}"))
                .unwrap()
                .unwrap();
            let Ok(text) = m.to_text() else { continue };
            let v: Value = serde_json::from_str(text).unwrap();
            if v["type"] == "event" && v["event"]["kind"] == "message" {
                seen.push(v["event"]["id"].as_i64().unwrap());
            }
        }
        seen
    }
}

#[test]
fn live_events_keep_coming_across_a_failover_in_order_and_once() {
    let d = Deployment::up(|t| t);
    let token = user_and_room(&d);
    let fe = d.address("atl-fe");
    let mut session = Session::open(&fe, &token, None);
    let before = post(&fe, &token, "before the failover").unwrap().id;
    d.kill("atl-db1");
    let killed = Instant::now();
    let after = loop {
        if let Some(a) = post(&fe, &token, "after the failover") {
            break a.id;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no post accepted"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // The socket, opened before the kill, delivers both messages, in order, each once.
    assert_eq!(
        session.messages_until(after),
        vec![before, after],
        "in order, once"
    );
    // The chat node's metrics count its requests by route template and status (the posts
    // refused during the failover among them), time them, and count the open session.
    let (code, metrics) = http(&fe, "GET", "/metrics", &[], "");
    assert_eq!(code, 200);
    for line in [
        r#"tandem_http_requests_total{route="/api/v1/rooms/{room}/messages",method="POST",status="201"}"#,
        r#"tandem_http_request_seconds_count{route="/api/v1/rooms/{room}/messages",method="POST"}"#,
        "tandem_websocket_sessions 1",
    ] {
        assert!(metrics.contains(line), "{line}: {metrics}");
    }
}

/// A chat node follows the feed only while it has a session: the first session comes while
/// posts go on, and gets every message after the one it names, in order, each once — none lost
/// between its backlog and the moment the node starts following again.
#[test]
fn a_session_opened_while_posts_go_on_gets_every_later_message_once() {
    let d = Deployment::up(|t| t);
    let token = user_and_room(&d);
    let fe = d.address("atl-fe");
    let load = Load::start(&fe, &token, 4);
    load.wait_acked_since(Instant::now(), "before the session");
    let from = post(&fe, &token, "the session starts after this")
        .unwrap()
        .id;
    let mut session = Session::open(&fe, &token, Some(from));
    load.wait_acked_since(Instant::now(), "after the session began");
    let acked = load.stop();
    let last = post(&fe, &token, "the last one").unwrap().id;
    let seen = session.messages_until(last);
    let expected: Vec<i64> = history(&fe, &token)
        .into_iter()
        .map(|(id, _)| id)
        .filter(|id| *id > from && *id <= last)
        .collect();
    assert!(
        acked.iter().any(|(a, _)| a.id > from),
        "posts went on during the session's start"
    );
    assert_eq!(seen, expected, "every message after {from}, in order, once");
}

/// An offline restore recovers the copy it makes: primary of the backup's epoch plus one. Put
/// in a mirror's directory while the primary served, it outranked that primary, which stepped
/// down and was reseeded from it: every post acknowledged after the backup was gone (until
/// session 34). Such a copy is now set aside — beside a primary, or a copy holding records past
/// it — and served only when no other copy is primary or ahead of it.
#[test]
fn a_copy_restored_offline_as_primary_is_served_only_when_no_other_copy_is_primary() {
    let d = Deployment::up(|t| t);
    let token = user_and_room(&d);
    let fe = d.address("atl-fe");
    let mut acked = Vec::new();
    let post_some = |what: &str, acked: &mut Vec<(i64, String)>| {
        for i in 0..20 {
            let text = format!("{what} {i}");
            acked.push((post(&fe, &token, &text).expect("a post").id, text));
        }
    };
    post_some("before the backup", &mut acked);
    let backups = d.dir.join("backups");
    let backups = backups.to_str().unwrap();
    ok(
        &d.dir,
        &[
            "db",
            "backup",
            "--db",
            "mgc",
            "--instance",
            "atl-db1",
            "--to",
            backups,
        ],
    );
    let in_backup = acked.clone();
    post_some("after the backup", &mut acked);
    d.wait_mirror("mgc", "atl-db2");
    let restore_into = |node: &str| {
        let copy = d.dir.join(format!("data/{node}/databases/mgc"));
        ok(
            &d.dir,
            &[
                "db",
                "restore",
                "--path",
                copy.to_str().unwrap(),
                "--from",
                backups,
                "--replace",
            ],
        )
    };

    // Into the mirror's directory, the primary serving: set aside, the mirror made again.
    ok(&d.dir, &["down", "--nodes", "atl-db2"]);
    let said = restore_into("atl-db2");
    assert!(said.contains("made primary offline"), "{said}");
    ok(&d.dir, &["up", "--detach", "--nodes", "atl-db2"]);
    d.wait_mirror("mgc", "atl-db2");
    assert_eq!(d.copy("mgc", "atl-db1")["role"], "primary");
    let log = std::fs::read_to_string(d.dir.join("logs/atl-db2.log")).unwrap();
    assert!(
        log.contains("a copy restored offline as primary was set aside, not served"),
        "{log}"
    );
    let aside = d.dir.join("data/atl-db2/databases/.offline-restored");
    assert_eq!(std::fs::read_dir(&aside).unwrap().count(), 1, "kept");
    post_some("after the set-aside", &mut acked);
    check_history(&acked, &history(&fe, &token));

    // Into the primary's directory while its mirror, its primary and witness stopped, holds
    // what was acknowledged after the backup: set aside too (it was served, and the mirror
    // reseeded from it).
    ok(&d.dir, &["down", "--nodes", "atl-fe,atl-db1"]);
    let said = restore_into("atl-db1");
    assert!(said.contains("made primary offline"), "{said}");
    ok(&d.dir, &["up", "--detach", "--nodes", "atl-db1"]);
    let c = d.wait_copy("mgc", "atl-db1", "the restored copy set aside", |c| {
        c["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("records acknowledged after the backup"))
    });
    assert_eq!(c["state"], "absent", "{c}");
    ok(&d.dir, &["up", "--detach", "--nodes", "atl-fe"]);
    d.wait_mirror("mgc", "atl-db1");
    post_some("after the second set-aside", &mut acked);
    check_history(&acked, &history(&fe, &token));

    // A database rebuilt from its backups: every node of its copies stopped, the restored one
    // started first — served, its epoch marked on the share — then the others, which follow
    // it (the mirror made again from it).
    ok(&d.dir, &["down", "--nodes", "atl-db1,atl-db2,dal-db1"]);
    let said = restore_into("atl-db1");
    assert!(said.contains("made primary offline"), "{said}");
    ok(&d.dir, &["up", "--detach", "--nodes", "atl-db1"]);
    let c = d.wait_copy("mgc", "atl-db1", "the restored primary", |c| {
        c["role"] == "primary"
    });
    ok(&d.dir, &["up", "--detach", "--nodes", "atl-db2,dal-db1"]);
    let mark: Value =
        serde_json::from_slice(&std::fs::read(d.dir.join("share/mgc/epoch.json")).unwrap())
            .unwrap();
    assert_eq!(
        (&mark["node"], &mark["epoch"]),
        (&json!("atl-db1"), &c["epoch"])
    );
    d.wait_mirror("mgc", "atl-db2");
    // The room's creation, then the posts the backup holds, and none after them.
    assert_eq!(history(&fe, &token)[1..], in_backup[..]);
}
