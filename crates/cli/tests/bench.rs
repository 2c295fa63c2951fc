//! `tandem bench dr` through the binary, on a small `mgc`: it runs end to end and reports every
//! figure (no time is asserted: the figures go to README), and leaves no process behind.

mod common;

#[test]
fn bench_dr_reports_every_figure_and_loses_nothing_beyond_the_rpo() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dr");
    let r = common::bench(
        tmp.path(),
        &["dr", "--messages", "2000", "--dir", dir.to_str().unwrap()],
    );
    assert_eq!(r["messages"], 2000, "{r:#}");
    assert!(r["mgc_bytes"].as_u64().unwrap() > 0, "{r:#}");
    for (target, ms) in [("rpo", 2_000), ("failover", 10_000), ("failback", 60_000)] {
        assert_eq!(r[target]["target_ms"], ms, "{target}: {r:#}");
        assert!(
            r[target]["measured_ms"].as_u64().is_some(),
            "{target}: {r:#}"
        );
        assert!(r[target]["met"].is_boolean(), "{target}: {r:#}");
    }
    let s = &r["site_loss"];
    assert_eq!(
        r["rpo"]["measured_ms"], s["rpo"]["missing_span_ms"],
        "{r:#}"
    );
    assert_eq!(
        r["failover"]["measured_ms"], s["rto"]["chat_failover_ms"],
        "{r:#}"
    );
    assert_eq!(
        r["failback"]["measured_ms"], s["rto"]["chat_failback_ms"],
        "{r:#}"
    );
    assert_eq!(s["kill_at"], "before_log_backup", "{r:#}");
    assert_eq!(r["failover_steps"].as_array().unwrap().len(), 7, "{r:#}");
    assert_eq!(r["failback_steps"].as_array().unwrap().len(), 8, "{r:#}");
    assert_eq!(r["lost"], 0, "{r:#}");
    assert_eq!(r["duplicated"], 0, "{r:#}");
    assert_eq!(s["cross_site"], 0, "{r:#}");
    assert_eq!(s["chat_state"], "normal", "{r:#}");
    // Every node stopped: no pid file left, none of the nodes' processes alive.
    assert!(
        std::fs::read_dir(dir.join("run")).unwrap().next().is_none(),
        "a pid file left"
    );
    let left = common::processes_of(&dir);
    assert!(left.is_empty(), "{left:?}");
}
