//! `tandem bench mirror` through the binary: a short run of the three modes and one kill -9
//! of a primary with real processes. No time is asserted (DESIGN.md §8): only that each part
//! measured what it says and that no node outlives the bench.

mod common;

#[test]
fn bench_mirror_measures_three_modes_and_a_failover_then_stops_every_node() {
    let t = tempfile::tempdir().unwrap();
    let r = common::bench(
        t.path(),
        &[
            "mirror",
            "--seconds",
            "1",
            "--writers",
            "16",
            "--failovers",
            "1",
        ],
    );
    // Split (a half of the CPUs each) then shared, or shared alone on a machine of one CPU.
    let placements = r["placements"].as_array().unwrap();
    let names: Vec<&str> = placements
        .iter()
        .map(|p| p["placement"].as_str().unwrap())
        .collect();
    let cpus = |p: &serde_json::Value, of: &str| -> Vec<u64> {
        p[of]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap())
            .collect()
    };
    let every = cpus(placements.last().unwrap(), "primary_cpus");
    if every.len() >= 2 {
        assert_eq!(names, ["split", "shared"]);
        let shared = &placements[1];
        assert_eq!(
            every,
            cpus(shared, "mirror_cpus"),
            "shared: every CPU for both"
        );
        let (primary, mirror) = (
            cpus(&placements[0], "primary_cpus"),
            cpus(&placements[0], "mirror_cpus"),
        );
        assert_eq!(primary.len(), every.len() / 2);
        assert_eq!(mirror.len(), every.len() / 2);
        assert!(
            primary.iter().chain(&mirror).all(|c| every.contains(c))
                && primary.iter().all(|c| !mirror.contains(c)),
            "split gives each copy its own CPUs of {every:?}: {primary:?} and {mirror:?}"
        );
    } else {
        assert_eq!(names, ["shared"]);
        assert_eq!(r["skipped"].as_array().unwrap().len(), 1);
    }
    for p in placements {
        check_runs(p);
    }
    let rounds = r["failover"]["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 1);
    assert_eq!(rounds[0]["killed"], "atl-db1");
    assert_eq!(rounds[0]["new_primary"], "atl-db2");
    assert_eq!(rounds[0]["epoch"], 2);
    assert!(rounds[0]["kill_to_first_ack_ms"].as_f64().unwrap() > 0.0);
    assert!(rounds[0]["acknowledged_before_kill"].as_u64().unwrap() > 0);

    // Every node was stopped (they run in their own process groups: nothing else would).
    let left = common::processes_of(t.path());
    assert!(left.is_empty(), "nodes left running: {left:?}");
}

/// One placement: the three modes in order, each with commits; the mirrored ones saw every
/// commit (the bench fails when a mirror's chain differs), the synchronous one lagged by none.
fn check_runs(p: &serde_json::Value) {
    let runs = p["runs"].as_array().unwrap();
    let modes: Vec<&str> = runs.iter().map(|x| x["mode"].as_str().unwrap()).collect();
    assert_eq!(modes, ["no_mirror", "async", "sync"], "{p}");
    for run in runs {
        assert!(run["commits"].as_u64().unwrap() > 0, "{run}");
        assert_eq!(run["writers"], 16);
        let mirrored = run["mode"] != "no_mirror";
        assert_eq!(run["replication"].is_object(), mirrored, "{run}");
        if mirrored {
            // The bench fails when the mirror's chain differs; here: it saw every commit.
            assert_eq!(
                run["replication"]["lsn"].as_u64().unwrap(),
                run["commits"].as_u64().unwrap() + 1,
                "{run}"
            );
            assert_eq!(run["replication"]["chain"].as_str().unwrap().len(), 32);
        }
    }
    assert_eq!(runs[2]["replication"]["lag_at_end_records"], 0, "{p}");
}
