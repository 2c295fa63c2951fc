//! `tandem bench chat` through the binary, small: a chat node and a db node as processes, every
//! part of the run measured and reported, WebSocket sessions too. No time is asserted
//! (DESIGN.md §8): only that each part measured what it says and that no node outlives the
//! bench.

mod common;

#[test]
fn bench_chat_measures_posts_and_history_then_stops_both_nodes() {
    let t = tempfile::tempdir().unwrap();
    let r = common::bench(
        t.path(),
        &[
            "chat",
            "--history-messages",
            "1000",
            "--seconds",
            "1",
            "--clients",
            "8",
            "--rate",
            "200",
            "--rate-seconds",
            "1",
            "--websockets",
            "50",
        ],
    );
    for (run, rooms) in [("one_room", 1), ("many_rooms", 8)] {
        let x = &r[run];
        assert_eq!(x["clients"], 8, "{run}: {r:#}");
        // Eight clients, each in a room of its own when the run spreads them.
        assert_eq!(x["rooms"], rooms, "{run}: {r:#}");
        assert!(x["posts"].as_u64().unwrap() > 0, "{run}: {r:#}");
        assert_eq!(x["errors"], 0, "{run}: {r:#}");
        assert!(x["per_second"].as_f64().unwrap() > 0.0, "{run}: {r:#}");
        assert!(
            x["latency"]["p99_ms"].as_f64().unwrap() > 0.0,
            "{run}: {r:#}"
        );
    }
    // The open loop sends every post it schedules: rate × seconds of them, each answered.
    let paced = &r["paced"];
    assert_eq!(paced["offered_per_second"], 200, "{r:#}");
    assert_eq!(
        paced["posts"].as_u64().unwrap() + paced["errors"].as_u64().unwrap(),
        200,
        "{r:#}"
    );
    assert_eq!(paced["errors"], 0, "{r:#}");
    let history = &r["history"];
    assert_eq!(history["room_messages"], 1000, "{r:#}");
    assert_eq!(history["page_size"], 100, "{r:#}");
    assert!(history["pages"].as_u64().unwrap() > 0, "{r:#}");
    assert!(r["load_seconds"].as_f64().unwrap() > 0.0, "{r:#}");
    // What the load left in the nodes' memory, with every post it counted.
    let m = &r["memory"];
    assert_eq!(
        m["posts"].as_u64().unwrap(),
        ["one_room", "many_rooms", "paced"]
            .iter()
            .map(|run| r[run]["posts"].as_u64().unwrap())
            .sum::<u64>(),
        "{r:#}"
    );
    assert!(m["chat_node_mb"].as_f64().unwrap() > 0.0, "{r:#}");
    assert!(m["db_node_mb"].as_f64().unwrap() > 0.0, "{r:#}");
    // Every session opened, and the one post reached each of them (the bench fails otherwise).
    let w = &r["sessions"];
    assert_eq!(w["sessions"], 50, "{r:#}");
    assert_eq!(w["room"], "room-0", "{r:#}");
    assert!(w["chat_node_rss_mb"].as_f64().unwrap() > 0.0, "{r:#}");
    assert!(w["fanout"]["max_ms"].as_f64().unwrap() > 0.0, "{r:#}");

    // Both nodes were stopped.
    let left = common::processes_of(t.path());
    assert!(left.is_empty(), "nodes left running: {left:?}");
}
