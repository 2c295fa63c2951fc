//! The store end to end: writes, journal replay, backups, restore and every refusal.

mod common;

use common::{
    SCHEMA, backup_dir_with_writes, create, dump, files_in, logs_in, post, post_concurrently,
};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tandem_store::*;

#[test]
fn concurrent_writes_get_contiguous_lsns_and_survive_reopen() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("db");
    let db = Arc::new(create(&dir));
    let base = db.identity().lsn;
    assert_eq!(base, 1, "the migrations are one record");
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let db = db.clone();
            std::thread::spawn(move || {
                (0..50)
                    .map(|k| post(&db, i, &format!("m{i}-{k}")).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut ids: Vec<i64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        (1..=800).collect::<Vec<_>>(),
        "every commit has its own id"
    );
    let id = db.identity();
    assert_eq!(id.lsn, base + 800);
    let chain = id.chain;
    drop(db);
    let db = Database::open(&dir, Options::default()).unwrap();
    assert_eq!(db.identity().lsn, base + 800);
    assert_eq!(db.identity().chain, chain);
    db.integrity_check().unwrap();
    // The journal holds every record, in order.
    let batch = db.read_journal(1, 10_000, 1 << 30).unwrap();
    assert_eq!(batch.records.len(), 801);
    for (i, r) in batch.records.iter().enumerate() {
        assert_eq!(peek_header(r).unwrap().lsn, i as u64 + 1);
    }
}

#[test]
fn failed_transaction_leaves_nothing_and_takes_no_lsn() {
    let t = tempfile::tempdir().unwrap();
    let db = create(&t.path().join("db"));
    post(&db, 1, "one").unwrap();
    let before = db.identity();
    let r = db.write(|tx: &mut Tx<'_>| -> Result<(), StoreError> {
        tx.insert(
            "members",
            vec![
                Value::Integer(1),
                Value::Text("bob".into()),
                Value::Integer(0),
            ],
        )?;
        // Same key again: a constraint error; the whole transaction must roll back.
        tx.insert(
            "members",
            vec![
                Value::Integer(1),
                Value::Text("bob".into()),
                Value::Integer(1),
            ],
        )?;
        Ok(())
    });
    assert!(r.is_err());
    assert_eq!(db.identity().lsn, before.lsn);
    assert_eq!(db.identity().chain, before.chain);
    let n: i64 = db
        .read(|c| Ok(c.query_row("SELECT COUNT(*) FROM members", [], |r| r.get(0))?))
        .unwrap();
    assert_eq!(n, 0);
    // A write smuggled through the read path is refused.
    let r = db.write(|tx: &mut Tx<'_>| {
        tx.query("DELETE FROM messages", [], |_| Ok(()))?;
        Ok::<_, StoreError>(())
    });
    assert!(matches!(r, Err(StoreError::Invalid(m)) if m.contains("reads only")));
    // An unknown table and a short row are refused with their names.
    let r = db.write(|tx: &mut Tx<'_>| tx.insert("nope", vec![Value::Null]));
    assert!(matches!(r, Err(StoreError::Invalid(m)) if m.contains("nope")));
    let r = db.write(|tx: &mut Tx<'_>| tx.insert("members", vec![Value::Null]));
    assert!(matches!(r, Err(StoreError::Invalid(m)) if m.contains("needs 3")));
    assert_eq!(db.identity().lsn, before.lsn);
}

#[test]
fn a_write_that_does_not_end_is_reported_as_the_disk_not_answering() {
    let t = tempfile::tempdir().unwrap();
    let db = Arc::new(create(&t.path().join("db")));
    // A transaction that holds the writer, as a write the disk does not answer would.
    let stuck = std::time::Duration::from_millis(IO_STALL_REPORTED_MS as u64 + 500);
    let started = std::time::Instant::now();
    let d = db.clone();
    let writer = std::thread::spawn(move || {
        d.write(move |_: &mut Tx<'_>| -> Result<(), StoreError> {
            std::thread::sleep(stuck);
            Ok(())
        })
    });
    let deadline = started + stuck * 4;
    let warning = loop {
        let health = db.health().unwrap();
        if let Some(w) = health
            .into_iter()
            .find(|w| w.starts_with("the disk has not answered"))
        {
            break w;
        }
        assert!(std::time::Instant::now() < deadline, "no warning");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(started.elapsed() >= std::time::Duration::from_millis(IO_STALL_REPORTED_MS as u64));
    assert!(
        warning.contains("the writer's write to the database in progress"),
        "{warning}"
    );
    let stall = db.io_stall().expect("in progress");
    assert_eq!(stall.what, "the writer's write to the database");
    writer.join().unwrap().unwrap();
    // Once the write and its fsync end, nothing is in progress.
    while db.io_stall().is_some() {
        assert!(std::time::Instant::now() < deadline, "still in progress");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(db.health().unwrap().is_empty());
}

#[test]
fn a_database_is_opened_once() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("db");
    let _db = create(&dir);
    assert!(matches!(
        Database::open(&dir, Options::default()),
        Err(StoreError::Locked(_))
    ));
}

#[test]
fn journal_replay_gives_identical_rows_and_chain() {
    let t = tempfile::tempdir().unwrap();
    let db = create(&t.path().join("primary"));
    for i in 0..300 {
        post(&db, i % 7, &format!("hello {i}")).unwrap();
    }
    db.write(|tx: &mut Tx<'_>| {
        tx.update(
            "messages",
            vec![
                Value::Integer(5),
                Value::Integer(0),
                Value::Text("alice".into()),
                Value::Integer(0),
                Value::Text("edited".into()),
                Value::Blob(vec![1, 2]),
            ],
        )?;
        tx.delete("messages", vec![Value::Integer(6)])
    })
    .unwrap();
    let id = db.identity();
    let copy_dir = t.path().join("copy");
    let copy = Database::create_copy(
        &copy_dir,
        "test",
        id.database_id,
        Role::Mirror,
        Options::default(),
    )
    .unwrap();
    let mut from = 1;
    while from <= id.lsn {
        let batch = db.read_journal(from, 64, 1 << 20).unwrap();
        assert_eq!(batch.chain_before, db.chain_at(from - 1).unwrap().unwrap());
        let a = copy.apply(batch, None).unwrap();
        from = a.lsn + 1;
    }
    assert_eq!(copy.identity().lsn, id.lsn);
    assert_eq!(copy.identity().chain, id.chain);
    assert_eq!(copy.identity().history, id.history);
    assert_eq!(dump(&copy_dir), dump(&t.path().join("primary")));
    assert_eq!(
        compare(&copy.position(), &db.position(), |_| None),
        Comparison::InSync
    );
    // The copy searches like the primary: the triggers ran on replay.
    let hits: i64 = copy
        .read(|c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM messages_fts WHERE messages_fts MATCH 'edited'",
                [],
                |r| r.get(0),
            )?)
        })
        .unwrap();
    assert_eq!(hits, 1);
    // A copy accepts no writes and no batch that does not follow it.
    assert!(matches!(post(&copy, 1, "x"), Err(StoreError::Role(_))));
    let again = db.read_journal(id.lsn, 10, 1 << 20).unwrap();
    assert!(matches!(
        copy.apply(again, None),
        Err(StoreError::Sequence(_))
    ));
}

#[test]
fn damaged_pages_are_found_as_the_copy_opens_or_as_it_is_scrubbed() {
    // The first pages past the middle (the journal's, which opening reads, among them): the
    // copy does not open, and says why.
    let (t, dir) = damaged_copy(false, |_| true);
    let e = Database::open(&dir, Options::default()).unwrap_err();
    assert!(e.is_damage(), "{e}");
    drop(t);
    // Pages of the rows alone (the journal emptied and the file compacted first), which
    // opening does not read: it opens, and scrubbing finds them.
    let (_t, dir) = damaged_copy(true, |page| page[0] == 0x0d && cells(page) >= 10);
    let db = Database::open(&dir, Options::default()).unwrap();
    let found = db.scrub().unwrap().expect("scrubbing finds the damage");
    assert!(found.contains("in database main"), "{found}");
    assert_eq!(db.damage().as_deref(), Some(found.as_str()));
    let health = db.health().unwrap();
    assert!(
        health.iter().any(|w| w.starts_with("the copy is damaged")),
        "{health:?}"
    );
}

#[test]
fn damaged_pages_met_by_a_read_or_a_write_mark_the_copy_damaged() {
    // Pages of the rows alone, which opening does not read.
    let rows = |page: &[u8]| page[0] == 0x0d && cells(page) >= 10;
    let (_t, dir) = damaged_copy(true, rows);
    let db = Database::open(&dir, Options::default()).unwrap();
    assert_eq!(db.damage(), None);
    let e = db
        .read(|c| {
            Ok(
                c.query_row("SELECT SUM(LENGTH(body)) FROM messages", [], |r| {
                    r.get::<_, i64>(0)
                })?,
            )
        })
        .unwrap_err();
    assert!(e.is_page_damage(), "{e}");
    let damage = db.damage().expect("the read's damage is kept");
    assert!(
        damage.starts_with("a read met damaged pages: sqlite:"),
        "{damage}"
    );
    assert!(
        db.health()
            .unwrap()
            .iter()
            .any(|w| w.starts_with("the copy is damaged (a read met")),
        "{:?}",
        db.health()
    );
    // A refusal is not damage: another copy's bytes or a bad argument leave the copy sound.
    let (_t, dir) = damaged_copy(true, rows);
    let db = Database::open(&dir, Options::default()).unwrap();
    let e = db
        .read(|c| Ok(c.query_row("SELECT nonsense FROM messages", [], |_| Ok(()))?))
        .unwrap_err();
    assert!(!e.is_page_damage(), "{e}");
    assert_eq!(db.damage(), None);
    // A write whose own error type hides SQLite's: the writer's connection tells.
    #[derive(Debug)]
    struct Refused(String);
    impl From<StoreError> for Refused {
        fn from(e: StoreError) -> Refused {
            Refused(e.to_string())
        }
    }
    let r = db.write(|tx: &mut Tx<'_>| {
        tx.query_row("SELECT SUM(LENGTH(body)) FROM messages", [], |r| {
            r.get::<_, i64>(0)
        })
        .map_err(|e| Refused(format!("could not count: {e}")))
    });
    let Refused(why) = r.unwrap_err();
    assert!(why.starts_with("could not count"), "{why}");
    let damage = db.damage().expect("the write's damage is kept");
    assert!(
        damage.starts_with("a write met damaged pages: "),
        "{damage}"
    );
    // The write connection serves on: a transaction that does not touch those pages commits.
    post(&db, 2, "still writable").unwrap();
}

/// Cells on a b-tree page (its header's count).
fn cells(page: &[u8]) -> u16 {
    u16::from_be_bytes([page[3], page[4]])
}

/// A database of 3,000 posts (its journal emptied and the file compacted with `compact`), its
/// WAL folded in (as a checkpoint does), then the first four pages past the middle of the file
/// that `pick` chooses damaged.
fn damaged_copy(compact: bool, pick: impl Fn(&[u8]) -> bool) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("db");
    let db = create(&dir);
    for i in 0..3000 {
        post(&db, 1, &format!("message {i} {}", "w".repeat(100))).unwrap();
    }
    assert_eq!(db.scrub().unwrap(), None);
    assert_eq!(db.damage(), None);
    if compact {
        db.register_consumer("reader", db.identity().lsn).unwrap();
        db.prune_journal().unwrap();
    }
    drop(db);
    let file = dir.join(DB_FILE);
    let c = rusqlite::Connection::open(&file).unwrap();
    if compact {
        c.execute_batch("VACUUM").unwrap();
    }
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    drop(c);
    let mut bytes = std::fs::read(&file).unwrap();
    let pages: Vec<usize> = (bytes.len() / 8192..bytes.len() / 4096)
        .filter(|&p| pick(&bytes[p * 4096..(p + 1) * 4096]))
        .take(4)
        .collect();
    assert_eq!(pages.len(), 4, "no such pages");
    for p in pages {
        for b in &mut bytes[p * 4096 + 8..(p + 1) * 4096] {
            *b ^= 0x5a;
        }
    }
    std::fs::write(&file, &bytes).unwrap();
    (t, dir)
}

/// A primary in `t/p` with `posts` posts, and an empty mirror of it in `t/c`.
fn primary_and_empty_mirror(t: &tempfile::TempDir, posts: usize) -> (Database, Database) {
    let db = create(&t.path().join("p"));
    for i in 0..posts {
        post(&db, 1, &format!("m{i}")).unwrap();
    }
    let copy = Database::create_copy(
        &t.path().join("c"),
        "test",
        db.identity().database_id,
        Role::Mirror,
        Options::default(),
    )
    .unwrap();
    (db, copy)
}

#[test]
fn apply_refuses_gaps_foreign_chains_and_stale_epochs() {
    let t = tempfile::tempdir().unwrap();
    let (db, copy) = primary_and_empty_mirror(&t, 20);
    let gap = db.read_journal(3, 5, 1 << 20).unwrap();
    let e = copy.apply(gap, None).unwrap_err().to_string();
    assert!(e.contains("gap of 2 records"), "{e}");
    let mut bad = db.read_journal(1, 5, 1 << 20).unwrap();
    bad.chain_before = Chain([9; 16]);
    assert!(
        copy.apply(bad, None)
            .unwrap_err()
            .to_string()
            .contains("diverged")
    );
    // Fencing: once the copy has seen epoch 2 (it was recovered), records of epoch 1 are refused.
    copy.apply(db.read_journal(1, 10, 1 << 20).unwrap(), None)
        .unwrap();
    copy.recover(None).unwrap();
    assert_eq!(copy.identity().epoch, 2);
    copy.set_role(Role::Mirror).unwrap();
    let stale = db.read_journal(11, 5, 1 << 20).unwrap();
    assert!(matches!(
        copy.apply(stale, None),
        Err(StoreError::StaleEpoch { got: 1, current: 2 })
    ));
    assert_eq!(copy.identity().lsn, 10);
    // And the history comparison says the old primary diverged at the fork.
    assert_eq!(
        compare(&db.position(), &copy.position(), |_| None),
        Comparison::Diverged { at: 11 }
    );
}

#[test]
fn consumers_bound_the_journal_and_a_pruned_reader_is_told_to_reseed() {
    let t = tempfile::tempdir().unwrap();
    let db = create(&t.path().join("p"));
    for i in 0..50 {
        post(&db, 1, &format!("m{i}")).unwrap();
    }
    assert_eq!(
        db.prune_journal().unwrap(),
        0,
        "no consumer: nothing is dropped"
    );
    db.register_consumer("mirror", 0).unwrap();
    db.register_consumer("log-backup", 0).unwrap();
    db.advance_consumer("mirror", 40).unwrap();
    assert_eq!(
        db.journal_stats().oldest_lsn,
        Some(1),
        "log-backup still needs everything"
    );
    db.advance_consumer("log-backup", 30).unwrap();
    // The writer removes them after the cursor moved, between its groups.
    let stats = pruned_past(&db, 1);
    assert!(
        stats.oldest_lsn.unwrap() <= 31 && stats.oldest_lsn.unwrap() > 1,
        "{stats:?}"
    );
    assert!(matches!(
        db.read_journal(1, 10, 1 << 20),
        Err(StoreError::JournalPruned { needed: 1, .. })
    ));
    assert!(
        db.advance_consumer("mirror", 10).is_err(),
        "cursors never move back"
    );
    assert!(db.health().unwrap().is_empty());
}

#[test]
fn a_copy_keeps_what_its_primary_keeps_and_forgets_its_own_old_cursors() {
    let t = tempfile::tempdir().unwrap();
    let (db, copy) = primary_and_empty_mirror(&t, 60);
    let id = db.identity();
    // Applied in batches of 10: a segment each.
    for from in (1..=id.lsn).step_by(10) {
        copy.apply(db.read_journal(from, 10, 1 << 20).unwrap(), None)
            .unwrap();
    }
    assert!(
        db.retain_from(30).is_err(),
        "a primary keeps what its consumers need"
    );
    // Without a cursor it kept every record; following its primary's (which keeps from 31):
    // the records before 31 go, the one cursor is just before it.
    assert_eq!(copy.journal_stats().oldest_lsn, Some(1));
    copy.retain_from(31).unwrap();
    let stats = pruned_past(&copy, 30);
    assert_eq!(stats.oldest_lsn, Some(31), "{stats:?}");
    let names = |d: &Database| -> Vec<(String, Lsn)> {
        d.consumers()
            .unwrap()
            .into_iter()
            .map(|c| (c.name, c.lsn))
            .collect()
    };
    assert_eq!(names(&copy), [(UPSTREAM_CONSUMER.to_string(), 30)]);
    // Never back; and past the copy's own LSN it keeps none (its cursor at its LSN).
    copy.retain_from(5).unwrap();
    assert_eq!(names(&copy), [(UPSTREAM_CONSUMER.to_string(), 30)]);
    copy.retain_from(1_000).unwrap();
    assert_eq!(names(&copy), [(UPSTREAM_CONSUMER.to_string(), id.lsn)]);
    pruned_past(&copy, id.lsn - 1);
    // Recovered, it is primary: the upstream's cursor goes, its own consumers decide.
    copy.recover(None).unwrap();
    assert!(names(&copy).is_empty());
    copy.register_consumer("log-backup", id.lsn).unwrap();
    // A primary that steps down forgets its cursors as soon as it follows another.
    copy.set_role(Role::Mirror).unwrap();
    copy.retain_from(id.lsn + 1).unwrap();
    assert_eq!(names(&copy), [(UPSTREAM_CONSUMER.to_string(), id.lsn)]);
    // Through a reopen, the same.
    let lsn = copy.identity().lsn;
    drop(copy);
    let copy = Database::open(&t.path().join("c"), Options::default()).unwrap();
    assert_eq!(copy.identity().lsn, lsn);
    assert_eq!(names(&copy), [(UPSTREAM_CONSUMER.to_string(), id.lsn)]);
    copy.integrity_check().unwrap();
}

#[test]
fn full_and_log_backups_restore_to_the_same_lsn_and_chain() {
    let t = tempfile::tempdir().unwrap();
    let (db, backups) = backup_dir_with_writes(&t);
    assert!(
        log_backup(&db, &backups).unwrap().is_empty(),
        "nothing new: no file"
    );
    let id = db.identity();
    let report = verify_chain(std::slice::from_ref(&backups)).unwrap();
    assert_eq!(report.last_lsn, id.lsn);
    let target = t.path().join("restored");
    let r = restore_new(
        &target,
        std::slice::from_ref(&backups),
        &RestoreOptions::default(),
        false,
    )
    .unwrap();
    assert_eq!((r.lsn, r.chain), (id.lsn, id.chain));
    assert_eq!(r.epoch, 2, "recover starts a new epoch");
    assert_eq!(dump(&target), dump(&t.path().join("p")));
    let (restored, _, _) = inspect(&target).unwrap();
    assert_eq!(restored.role, Role::Primary);
    assert_eq!(restored.lsn, id.lsn);
    // The restored copy takes writes of its new epoch.
    let copy = Database::open(&target, Options::default()).unwrap();
    post(&copy, 1, "after").unwrap();
    assert_eq!(
        copy.identity().history.0.last().unwrap().first_lsn,
        id.lsn + 1
    );
}

/// A restore over a copy swaps the two directories in one step and leaves nothing beside the
/// copy; what a restore killed mid-way left (its work directory, or the old copy set aside
/// between two renames with no copy in place) is cleared, or put back, by the next restore or
/// `clear_interrupted_restores` — except what a running process owns.
#[test]
fn a_restore_over_a_copy_leaves_nothing_beside_it_and_an_interrupted_one_is_cleared() {
    let t = tempfile::tempdir().unwrap();
    let (db, backups) = backup_dir_with_writes(&t);
    let (lsn, chain) = (db.identity().lsn, db.identity().chain);
    let parent = t.path().join("copies");
    let target = parent.join("mgc");
    let opts = RestoreOptions {
        recovery: Recovery::NoRecovery,
        ..Default::default()
    };
    let beside = || {
        let mut names: Vec<String> = std::fs::read_dir(&parent)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    restore_new(&target, std::slice::from_ref(&backups), &opts, false).unwrap();
    restore_new(&target, std::slice::from_ref(&backups), &opts, true).unwrap();
    assert_eq!(beside(), ["mgc"]);

    // A process that died mid-restore: its pid is no one's now.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let work = parent.join(format!(".mgc.restoring-{dead}-0"));
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("half"), b"half a copy").unwrap();
    let mine = parent.join(format!(".mgc.restoring-{}-99", std::process::id()));
    std::fs::create_dir_all(&mine).unwrap();
    // Killed between the two renames: the copy set aside, none in its place.
    let aside = parent.join(format!(".mgc.replaced-{dead}-1"));
    std::fs::rename(&target, &aside).unwrap();
    let done = clear_interrupted_restores(&target);
    assert!(done.contains(&target) && done.contains(&work), "{done:?}");
    let mut left = beside();
    left.sort();
    let mine_name = mine.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(
        left,
        [mine_name.as_str(), "mgc"],
        "a running process's work stays"
    );
    let copy = Database::open(&target, Options::default()).unwrap();
    assert_eq!((copy.identity().lsn, copy.identity().chain), (lsn, chain));
    drop(copy);
    // The next restore clears what it finds too.
    std::fs::create_dir_all(&work).unwrap();
    std::fs::remove_dir_all(&mine).unwrap();
    restore_new(&target, std::slice::from_ref(&backups), &opts, true).unwrap();
    assert_eq!(beside(), ["mgc"]);
}

#[test]
fn norecovery_then_more_logs_then_standby_then_recover() {
    let t = tempfile::tempdir().unwrap();
    let (db, backups) = backup_dir_with_writes(&t);
    let target = t.path().join("secondary");
    let opts = RestoreOptions {
        recovery: Recovery::NoRecovery,
        ..Default::default()
    };
    restore_new(&target, std::slice::from_ref(&backups), &opts, false).unwrap();
    let copy = Database::open(&target, Options::default()).unwrap();
    assert_eq!(copy.identity().role, Role::Restoring);
    for i in 0..10 {
        post(&db, 3, &format!("later {i}")).unwrap();
    }
    log_backup(&db, &backups).unwrap();
    let opts = RestoreOptions {
        recovery: Recovery::Standby,
        ..Default::default()
    };
    // Already-applied files in the directory are skipped, and named; the new one is applied.
    let before = logs_in(&backups);
    let r = restore_logs(&copy, std::slice::from_ref(&backups), &opts).unwrap();
    assert_eq!(r.records_applied, 10);
    assert_eq!(r.logs_applied.len(), 1);
    assert_eq!(
        r.logs_skipped.len(),
        before.len() - 1,
        "{:?}",
        r.logs_skipped
    );
    assert!(!r.logs_skipped.contains(&r.logs_applied[0]));
    assert_eq!(copy.identity().role, Role::Standby);
    assert_eq!(copy.identity().chain, db.identity().chain);
    copy.recover(None).unwrap();
    let e = restore_logs(&copy, std::slice::from_ref(&backups), &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("after recover"), "{e}");
}

#[test]
fn point_in_time_restore_stops_at_the_lsn() {
    let t = tempfile::tempdir().unwrap();
    let (_db, backups) = backup_dir_with_writes(&t);
    let target = t.path().join("pit");
    let opts = RestoreOptions {
        stop_at: Some(StopAt::Lsn(60)),
        ..Default::default()
    };
    let r = restore_new(&target, &[backups], &opts, false).unwrap();
    assert_eq!(r.lsn, 60);
    assert!(r.stopped);
    let n: i64 = rusqlite::Connection::open(target.join(DB_FILE))
        .unwrap()
        .query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 59, "LSN 1 is the migrations");
}

#[test]
fn a_stop_point_before_every_full_backup_is_refused_in_the_operators_words() {
    let t = tempfile::tempdir().unwrap();
    let (_db, backups) = backup_dir_with_writes(&t);
    let target = t.path().join("pit");
    for (stop, said) in [
        (StopAt::Lsn(10), "(LSN 10)"),
        (StopAt::TimeMs(1_000), "(1970-01-01T00:00:01.000Z)"),
    ] {
        let opts = RestoreOptions {
            stop_at: Some(stop),
            ..Default::default()
        };
        let e = restore_new(&target, std::slice::from_ref(&backups), &opts, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains(said), "names the stop point: {e}");
        assert!(
            e.contains("full-") && e.contains("LSN 41"),
            "names the earliest: {e}"
        );
        assert!(!target.exists());
    }
    assert_eq!(StopAt::TimeMs(-5).to_string(), "-5 ms since the Unix epoch");
}

#[test]
fn a_stop_point_past_the_files_is_not_recovered_short_of_it() {
    let t = tempfile::tempdir().unwrap();
    let (db, backups) = backup_dir_with_writes(&t);
    let end = db.identity().lsn;
    assert_eq!(end, 116, "a migration, 40 posts, 3 × 25");
    let target = t.path().join("pit");
    let stop = StopAt::Lsn(end + 10);
    let with = |recovery| RestoreOptions {
        recovery,
        stop_at: Some(stop),
        ..Default::default()
    };
    // Recovering now would end the chain before the stop point: refused, nothing made.
    let e = restore_new(
        &target,
        std::slice::from_ref(&backups),
        &with(Recovery::Recover),
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("the files end at LSN 116"), "{e}");
    assert!(e.contains("(LSN 126)") && e.contains("--norecovery"), "{e}");
    assert!(!target.exists());
    // The same time stop past the last record: refused too.
    let later = StopAt::TimeMs(db.identity().last_time_ms + 60_000);
    let e = restore_new(
        &target,
        std::slice::from_ref(&backups),
        &RestoreOptions {
            stop_at: Some(later),
            ..Default::default()
        },
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains(&format!("({later})")), "{e}");
    assert!(!target.exists());

    // Left restoring, the copy says the stop point is still ahead…
    let r = restore_new(
        &target,
        std::slice::from_ref(&backups),
        &with(Recovery::NoRecovery),
        false,
    )
    .unwrap();
    assert_eq!((r.lsn, r.stopped, r.stop_not_reached), (116, false, true));
    // …and the next log backup reaches it: recovered exactly there.
    for i in 0..20 {
        post(&db, 3, &format!("after {i}")).unwrap();
    }
    log_backup(&db, &backups).unwrap();
    let copy = Database::open(&target, Options::default()).unwrap();
    let r = restore_logs(
        &copy,
        std::slice::from_ref(&backups),
        &with(Recovery::Recover),
    )
    .unwrap();
    assert_eq!((r.lsn, r.stopped, r.stop_not_reached), (126, true, false));
    assert_eq!(copy.identity().role, Role::Primary);
}

#[test]
fn a_copy_past_the_stop_point_is_refused_and_left_as_it_was() {
    let t = tempfile::tempdir().unwrap();
    let (_db, backups) = backup_dir_with_writes(&t);
    let target = t.path().join("copy");
    let restoring = RestoreOptions {
        recovery: Recovery::NoRecovery,
        ..Default::default()
    };
    restore_new(&target, std::slice::from_ref(&backups), &restoring, false).unwrap();
    let copy = Database::open(&target, Options::default()).unwrap();
    let before = copy.identity();
    let e = restore_logs(
        &copy,
        std::slice::from_ref(&backups),
        &RestoreOptions {
            stop_at: Some(StopAt::Lsn(50)),
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("the copy is at LSN 116") && e.contains("(LSN 50)"),
        "{e}"
    );
    let after = copy.identity();
    assert_eq!(
        (after.lsn, after.role, after.epoch),
        (before.lsn, before.role, before.epoch)
    );
}

#[test]
fn restore_refuses_a_missing_log_and_leaves_no_target() {
    let t = tempfile::tempdir().unwrap();
    let (_db, backups) = backup_dir_with_writes(&t);
    let missing = logs_in(&backups)[1].clone();
    std::fs::remove_file(&missing).unwrap();
    let target = t.path().join("r");
    let e = restore_new(
        &target,
        std::slice::from_ref(&backups),
        &RestoreOptions::default(),
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("gap of 25 records"), "{e}");
    assert!(e.contains("log-"), "names the file: {e}");
    assert!(!target.exists());
    assert!(verify_chain(&[backups]).is_err());
}

#[test]
fn restore_refuses_a_damaged_file_and_leaves_the_target_as_it_was() {
    let t = tempfile::tempdir().unwrap();
    let (_db, backups) = backup_dir_with_writes(&t);
    let victim = logs_in(&backups)[2].clone();
    let mut bytes = std::fs::read(&victim).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x40;
    std::fs::write(&victim, bytes).unwrap();
    let e = verify_file(&victim).unwrap_err().to_string();
    assert!(
        e.contains(&victim.file_name().unwrap().to_string_lossy().to_string()),
        "{e}"
    );
    // Replacing an existing database: refused, and the existing one is untouched.
    let target = t.path().join("existing");
    let old = create(&target);
    post(&old, 1, "keep me").unwrap();
    drop(old);
    let before = dump(&target);
    let e = restore_new(
        &target,
        std::slice::from_ref(&backups),
        &RestoreOptions::default(),
        true,
    )
    .unwrap_err();
    assert!(matches!(e, StoreError::Corrupt(_)), "{e}");
    assert_eq!(dump(&target), before);
}

#[test]
fn restore_refuses_files_of_another_database() {
    let t = tempfile::tempdir().unwrap();
    let (_db, backups) = backup_dir_with_writes(&t);
    let other = create(&t.path().join("other"));
    post(&other, 1, "x").unwrap();
    let other_dir = t.path().join("other-backups");
    full_backup(&other, &other_dir).unwrap();
    post(&other, 1, "y").unwrap();
    let foreign = log_backup(&other, &other_dir).unwrap().remove(0);
    let mut inputs = logs_in(&backups);
    inputs.push(files_in(&backups, "tfb").remove(0));
    inputs.push(foreign.path().to_path_buf());
    let e = restore_new(
        &t.path().join("r"),
        &inputs,
        &RestoreOptions::default(),
        false,
    )
    .unwrap_err()
    .to_string();
    // Named as people know it, with the id that tells two of one name apart.
    assert!(
        e.contains(&format!("belongs to database {}", foreign.database())),
        "{e}"
    );
    assert!(e.contains(&format!("({})", foreign.database_id())), "{e}");
}

#[test]
fn a_full_backup_taken_during_writes_is_consistent() {
    let t = tempfile::tempdir().unwrap();
    let db = Arc::new(create(&t.path().join("p")));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|i| {
            let (db, stop) = (db.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    post(&db, i, "busy").unwrap();
                }
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let f = full_backup(&db, &t.path().join("b")).unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let BackupFile::Full { header, .. } = f else {
        panic!()
    };
    let r = restore_new(
        &t.path().join("r"),
        &[t.path().join("b")],
        &RestoreOptions::default(),
        false,
    )
    .unwrap();
    assert_eq!(r.lsn, header.lsn);
    assert_eq!(Some(r.chain), db.chain_at(header.lsn).unwrap());
    let rows: i64 = rusqlite::Connection::open(t.path().join("r").join(DB_FILE))
        .unwrap()
        .query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        rows as u64,
        header.lsn - 1,
        "one row per record after the migrations"
    );
}

#[test]
fn migrations_are_checked_against_what_was_applied() {
    let t = tempfile::tempdir().unwrap();
    let db = create(&t.path().join("p"));
    assert!(db.migrate(SCHEMA).unwrap().is_empty(), "already applied");
    static CHANGED: &[Migration] = &[Migration {
        version: 1,
        name: "messages",
        sql: "CREATE TABLE other (id INTEGER PRIMARY KEY);",
    }];
    let e = db.migrate(CHANGED).unwrap_err().to_string();
    assert!(e.contains("differs"), "{e}");
    static NO_KEY: &[Migration] = &[
        SCHEMA[0],
        SCHEMA[1],
        Migration {
            version: 3,
            name: "keyless",
            sql: "CREATE TABLE keyless (a TEXT);",
        },
    ];
    let e = db.migrate(NO_KEY).unwrap_err().to_string();
    assert!(e.contains("no primary key"), "{e}");
    assert_eq!(db.migrations().unwrap().len(), 2);
}

#[test]
fn a_transaction_failing_after_changes_undoes_only_itself() {
    // Many concurrent transactions, so that groups mix ones that fail after inserting a row
    // (forcing the writer to roll the group back and run the others again) with ones that succeed.
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("p");
    let db = Arc::new(create(&dir));
    let runs = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let committed = commits_from_threads(32, 40, {
        let (db, runs) = (db.clone(), runs.clone());
        move |w, k| {
            let key = w * 1000 + k;
            let fail = k % 3 == 0;
            let runs = runs.clone();
            let r = db.write(move |tx: &mut Tx<'_>| {
                runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tx.insert(
                    "members",
                    vec![
                        Value::Integer(key),
                        Value::Text("u".into()),
                        Value::Integer(0),
                    ],
                )?;
                if fail {
                    return Err(StoreError::Invalid(format!("refused {key}")));
                }
                Ok(key)
            });
            match (fail, r) {
                (false, Ok(c)) => Some((c.value, c.lsn)),
                (true, Err(StoreError::Invalid(m))) => {
                    assert_eq!(m, format!("refused {key}"));
                    None
                }
                (f, r) => panic!("key {key} fail={f}: {r:?}"),
            }
        }
    });
    assert_exactly_committed(&db, &committed);
    assert_eq!(
        db.writer_stats().aborted,
        32 * 14,
        "each refused transaction counted once"
    );
    // 32 writers keep the writer's groups mixed: some group had a failure after changes, and
    // the transactions that had succeeded in it ran again.
    let runs = runs.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        runs > 32 * 40,
        "the re-run path was not exercised ({runs} runs)"
    );
    // A replay of the journal gives the same rows: nothing of the failed ones was recorded.
    assert_journal_replays_to_the_same(&db, &dir, &t.path().join("copy"));
}

#[test]
fn a_transaction_over_the_record_bound_is_refused_and_its_group_commits_without_it() {
    // Concurrent small transactions beside a few whose record exceeds the bound: each of those
    // is refused and undone after it was encoded into the group's segment, and the group's
    // others run again; what commits replays to the same rows and chain.
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("p");
    let db = Arc::new(create(&dir));
    let big = Arc::new("x".repeat(tandem_store::RECORD_BYTES_MAX + 1));
    let committed = commits_from_threads(16, 20, {
        let db = db.clone();
        move |w, k| {
            let key = w * 1000 + k;
            let oversized = w < 2 && k % 10 == 5;
            let big = big.clone();
            let r = db.write(move |tx: &mut Tx<'_>| {
                let name = if oversized {
                    big.as_str().to_string()
                } else {
                    format!("u{key}")
                };
                tx.insert(
                    "members",
                    vec![Value::Integer(key), Value::Text(name), Value::Integer(0)],
                )?;
                Ok::<_, StoreError>(key)
            });
            match (oversized, r) {
                (false, Ok(c)) => Some((c.value, c.lsn)),
                (true, Err(StoreError::Invalid(m))) => {
                    assert!(m.contains("record bound"), "{m}");
                    None
                }
                (o, r) => panic!("key {key} oversized={o}: {:?}", r.map(|c| c.value)),
            }
        }
    });
    assert_exactly_committed(&db, &committed);
    assert_eq!(
        db.writer_stats().aborted,
        4,
        "each oversized one refused once"
    );
    assert_journal_replays_to_the_same(&db, &dir, &t.path().join("copy"));
}

/// `writers` threads, each calling `write(w, k)` for k in `0..per_writer`; the (key, LSN) of
/// every call that committed, sorted.
fn commits_from_threads(
    writers: i64,
    per_writer: i64,
    write: impl Fn(i64, i64) -> Option<(i64, u64)> + Send + Sync + 'static,
) -> Vec<(i64, u64)> {
    let write = Arc::new(write);
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let write = write.clone();
            std::thread::spawn(move || {
                (0..per_writer)
                    .filter_map(|k| write(w, k))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut committed: Vec<(i64, u64)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    committed.sort();
    committed
}

/// `members` holds exactly the committed keys, and the commits took one LSN each, contiguous
/// after the schema's.
fn assert_exactly_committed(db: &Database, committed: &[(i64, u64)]) {
    let keys: Vec<i64> = db
        .read(|c| {
            let mut s = c.prepare("SELECT room FROM members ORDER BY room")?;
            let rows = s.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<i64>>>()?)
        })
        .unwrap();
    assert_eq!(
        keys,
        committed.iter().map(|c| c.0).collect::<Vec<_>>(),
        "exactly the successful rows"
    );
    let mut lsns: Vec<u64> = committed.iter().map(|c| c.1).collect();
    lsns.sort();
    assert_eq!(
        lsns,
        (2..2 + committed.len() as u64).collect::<Vec<_>>(),
        "one LSN each, contiguous"
    );
}

/// A copy in `copy_dir` that applies `db`'s whole journal (at `dir`) ends at its chain, with
/// its rows.
fn assert_journal_replays_to_the_same(
    db: &Database,
    dir: &std::path::Path,
    copy_dir: &std::path::Path,
) {
    let copy = Database::create_copy(
        copy_dir,
        "t",
        db.identity().database_id,
        Role::Mirror,
        Options::default(),
    )
    .unwrap();
    copy.apply(db.read_journal(1, 100_000, 1 << 30).unwrap(), None)
        .unwrap();
    assert_eq!(copy.identity().chain, db.identity().chain);
    assert_eq!(dump(copy_dir), dump(dir));
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

#[test]
fn a_log_backup_whose_cursor_move_was_lost_is_adopted_not_overlapped() {
    // The state a crash leaves between the rename of a log backup and the move of its cursor:
    // the file is on the share, the database does not know it.
    let t = tempfile::tempdir().unwrap();
    let (p, crashed, share) = (
        t.path().join("p"),
        t.path().join("crashed"),
        t.path().join("share"),
    );
    let db = create(&p);
    full_backup(&db, &share).unwrap();
    for i in 0..5 {
        post(&db, 1, &format!("m{i}")).unwrap();
    }
    drop(db);
    copy_dir(&p, &crashed);
    let db = Database::open(&p, Options::default()).unwrap();
    assert_eq!(log_backup(&db, &share).unwrap().len(), 1);
    drop(db);
    let db = Database::open(&crashed, Options::default()).unwrap();
    // Nothing new: the file on the share is taken as this run's.
    let adopted = log_backup(&db, &share).unwrap();
    assert_eq!(adopted.len(), 1);
    post(&db, 1, "after").unwrap();
    log_backup(&db, &share).unwrap();
    let report = verify_chain(std::slice::from_ref(&share)).unwrap();
    assert_eq!(report.last_lsn, db.identity().lsn);
    let r = restore_new(
        &t.path().join("r"),
        &[share],
        &RestoreOptions::default(),
        false,
    )
    .unwrap();
    assert_eq!(r.chain, db.identity().chain);
}

#[test]
fn a_foreign_log_backup_in_the_way_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let share = t.path().join("share");
    let (a, b) = (create(&t.path().join("a")), create(&t.path().join("b")));
    for db in [&a, &b] {
        full_backup(db, &share).unwrap();
        post(db, 1, "x").unwrap();
    }
    log_backup(&a, &share).unwrap();
    let e = log_backup(&b, &share).unwrap_err().to_string();
    assert!(e.contains("does not match this database"), "{e}");
}

#[test]
fn a_create_interrupted_before_its_rename_leaves_nothing_in_the_way() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("db");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{DB_FILE}.creating")), b"").unwrap();
    assert!(
        Database::open(&dir, Options::default())
            .unwrap_err()
            .to_string()
            .contains("not a tandem database")
    );
    let db = create(&dir);
    post(&db, 1, "ok").unwrap();
    assert!(!dir.join(format!("{DB_FILE}.creating")).exists());
}

#[test]
fn a_transaction_knows_the_lsn_it_commits_at() {
    let t = tempfile::tempdir().unwrap();
    let db = Arc::new(create(&t.path().join("p")));
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let db = db.clone();
            std::thread::spawn(move || {
                (0..30)
                    .map(|k| {
                        let c = db
                            .write(move |tx: &mut Tx<'_>| {
                                let lsn = tx.lsn();
                                tx.insert(
                                    "members",
                                    vec![
                                        Value::Integer(i * 100 + k),
                                        Value::Text(lsn.to_string()),
                                        Value::Integer(0),
                                    ],
                                )?;
                                Ok::<_, StoreError>(lsn)
                            })
                            .unwrap();
                        assert_eq!(c.value, c.lsn);
                        c.lsn
                    })
                    .count()
            })
        })
        .collect();
    assert_eq!(
        threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum::<usize>(),
        240
    );
}

/// A follower that keeps `bodies (id, body)` from the test schema's `messages`, and counts its
/// rebuilds in the counter it is made with.
struct Bodies {
    rebuilds: &'static AtomicUsize,
    /// Milliseconds each operation takes to apply (a slow follower).
    slow_ms: u64,
}

impl Follower for Bodies {
    fn create(&mut self, conn: &rusqlite::Connection) -> Result<(), StoreError> {
        conn.execute_batch("CREATE TABLE bodies (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")?;
        Ok(())
    }

    fn apply(&mut self, conn: &rusqlite::Connection, op: &Op) -> Result<(), StoreError> {
        std::thread::sleep(std::time::Duration::from_millis(self.slow_ms));
        match op {
            Op::Insert { table, row } | Op::Update { table, row } if table == "messages" => {
                conn.execute(
                    "INSERT OR REPLACE INTO bodies (id, body) VALUES (?1, ?2)",
                    rusqlite::params![row[0], row[4]],
                )?;
            }
            Op::Delete { table, key } if table == "messages" => {
                conn.execute("DELETE FROM bodies WHERE id = ?1", [&key[0]])?;
            }
            _ => {}
        }
        Ok(())
    }

    fn rebuild(&mut self, conn: &rusqlite::Connection) -> Result<(), StoreError> {
        self.rebuilds.fetch_add(1, Ordering::SeqCst);
        let has_messages: bool = conn.query_row(
            "SELECT count(*) > 0 FROM source.sqlite_master WHERE name = 'messages'",
            [],
            |r| r.get(0),
        )?;
        if has_messages {
            conn.execute_batch("INSERT INTO bodies SELECT id, body FROM source.messages")?;
        }
        Ok(())
    }
}

/// A `Follow` of `Bodies` counting in `$counter`, at `$version`, each operation `$slow_ms` long.
macro_rules! bodies {
    ($counter:ident, $version:expr, $slow_ms:expr) => {{
        static $counter: AtomicUsize = AtomicUsize::new(0);
        fn make() -> Box<dyn Follower> {
            Box::new(Bodies {
                rebuilds: &$counter,
                slow_ms: $slow_ms,
            })
        }
        (
            Follow {
                name: "bodies",
                version: $version,
                make,
            },
            &$counter,
        )
    }};
}

const FOLLOW_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Rows of `(id, body)`.
type IdBodies = Vec<(i64, String)>;

/// The follower's rows and the database's, which must be equal.
fn bodies_and_messages(db: &Database) -> (IdBodies, IdBodies) {
    let lsn = db.identity().lsn;
    db.wait_followed("bodies", lsn, FOLLOW_WAIT).unwrap();
    db.read(|c| {
        let rows = |sql: &str| -> rusqlite::Result<Vec<(i64, String)>> {
            let mut s = c.prepare(sql)?;
            let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        };
        Ok((
            rows("SELECT id, body FROM bodies.bodies ORDER BY id")?,
            rows("SELECT id, body FROM messages ORDER BY id")?,
        ))
    })
    .unwrap()
}

fn assert_followed(db: &Database) {
    let (derived, rows) = bodies_and_messages(db);
    assert_eq!(derived, rows);
}

#[test]
fn a_follower_derives_its_file_behind_the_commits_on_the_primary_and_on_a_copy() {
    let (follow, rebuilds) = bodies!(PRIMARY_AND_COPY, 1, 0);
    let t = tempfile::tempdir().unwrap();
    let db = Arc::new(create(&t.path().join("p")));
    // A reader pooled before the follower starts attaches its file when next used.
    db.read(|c| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?))
        .unwrap();
    let chain_before = db.identity().chain;
    db.follow(follow).unwrap();
    db.follow(follow).unwrap();
    assert_eq!(
        db.identity().chain,
        chain_before,
        "following writes no record"
    );
    post_concurrently(&db, 8, 25, "m");
    db.write(|tx: &mut Tx<'_>| {
        tx.update(
            "messages",
            vec![
                Value::Integer(7),
                Value::Integer(0),
                Value::Text("alice".into()),
                Value::Integer(0),
                Value::Text("edited".into()),
                Value::Null,
            ],
        )?;
        tx.delete("messages", vec![Value::Integer(9)])
    })
    .unwrap();
    let (derived, rows) = bodies_and_messages(&db);
    assert_eq!(derived.len(), 199);
    assert!(derived.contains(&(7, "edited".into())));
    assert_eq!(derived, rows);
    assert_eq!(db.followed_lsn("bodies").unwrap(), db.identity().lsn);
    assert_eq!(rebuilds.load(Ordering::SeqCst), 1, "built once, when new");
    assert!(db.health().unwrap().is_empty());

    // A copy follows the records it applies, from its first (the migrations).
    let copy = Database::create_copy(
        &t.path().join("c"),
        "test",
        db.identity().database_id,
        Role::Mirror,
        Options::default(),
    )
    .unwrap();
    copy.follow(follow).unwrap();
    let lsn = db.identity().lsn;
    let mut from = 1;
    while from <= lsn {
        from = copy
            .apply(db.read_journal(from, 7, 1 << 20).unwrap(), None)
            .unwrap()
            .lsn
            + 1;
    }
    assert_followed(&copy);
    assert_eq!(copy.identity().chain, db.identity().chain);
    assert!(
        db.wait_followed("nothing", 1, FOLLOW_WAIT)
            .unwrap_err()
            .to_string()
            .contains("no follower named nothing")
    );
}

#[test]
fn a_follower_resumes_its_file_and_rebuilds_one_that_does_not_match_its_database() {
    let (follow, rebuilds) = bodies!(RESUMES, 1, 0);
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("p");
    let file = dir.join("follow-bodies.db");
    let reopen = || {
        let db = Database::open(&dir, Options::default()).unwrap();
        db.follow(follow).unwrap();
        db
    };
    {
        let db = create(&dir);
        db.follow(follow).unwrap();
        for k in 0..50 {
            post(&db, 1, &format!("a{k}")).unwrap();
        }
        assert_followed(&db);
    }
    assert_eq!(rebuilds.load(Ordering::SeqCst), 1);
    {
        // More than a batch written while nothing follows: still in the journal.
        let db = Arc::new(Database::open(&dir, Options::default()).unwrap());
        post_concurrently(&db, 8, 1100, "unfollowed ");
    }
    {
        let db = reopen();
        post(&db, 1, "after reopening").unwrap();
        assert_followed(&db);
        assert_eq!(bodies_and_messages(&db).0.len(), 50 + 8800 + 1);
    }
    assert_eq!(rebuilds.load(Ordering::SeqCst), 1, "resumed where it was");

    // Another database's file, of the same follower: rebuilt from this database's rows.
    {
        let other = create(&t.path().join("other"));
        other.follow(follow).unwrap();
        post(&other, 1, "another database").unwrap();
        assert_followed(&other);
    }
    std::fs::copy(t.path().join("other/follow-bodies.db"), &file).unwrap();
    let _ = std::fs::remove_file(dir.join("follow-bodies.db-wal"));
    assert_eq!(rebuilds.load(Ordering::SeqCst), 2);
    {
        let db = reopen();
        assert_followed(&db);
        assert_eq!(bodies_and_messages(&db).0.len(), 8851);
    }
    assert_eq!(rebuilds.load(Ordering::SeqCst), 3);

    // A damaged file is replaced.
    std::fs::write(&file, b"not a database at all, just bytes").unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.join(format!("follow-bodies.db{suffix}")));
    }
    {
        let db = reopen();
        assert_followed(&db);
    }
    assert_eq!(rebuilds.load(Ordering::SeqCst), 4);

    // Another version of the follower starts over.
    let (follow2, rebuilds2) = bodies!(RESUMES_V2, 2, 0);
    {
        let db = Database::open(&dir, Options::default()).unwrap();
        db.follow(follow2).unwrap();
        assert_followed(&db);
    }
    assert_eq!(rebuilds2.load(Ordering::SeqCst), 1);
}

#[test]
fn a_follower_rebuilds_when_the_journal_no_longer_reaches_its_position() {
    let (follow, rebuilds) = bodies!(PRUNED, 1, 0);
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("p");
    let followed = {
        let db = create(&dir);
        db.follow(follow).unwrap();
        post(&db, 1, "followed").unwrap();
        assert_followed(&db);
        db.identity().lsn
    };
    {
        // Written and pruned while nothing follows.
        let db = Database::open(&dir, Options::default()).unwrap();
        db.register_consumer("log-backup", 0).unwrap();
        for k in 0..20 {
            post(&db, 1, &format!("unfollowed {k}")).unwrap();
        }
        db.advance_consumer("log-backup", db.identity().lsn - 1)
            .unwrap();
        db.prune_journal().unwrap();
        assert!(db.journal_stats().oldest_lsn.unwrap() > followed + 1);
    }
    let db = Database::open(&dir, Options::default()).unwrap();
    db.follow(follow).unwrap();
    assert_followed(&db);
    assert_eq!(bodies_and_messages(&db).0.len(), 21);
    assert_eq!(rebuilds.load(Ordering::SeqCst), 2);
}

#[test]
fn waiting_for_a_slow_follower_ends_with_catching_up_and_leaves_it_going() {
    let (follow, _) = bodies!(SLOW, 1, 20);
    let t = tempfile::tempdir().unwrap();
    let db = create(&t.path().join("p"));
    db.follow(follow).unwrap();
    for k in 0..10 {
        post(&db, 1, &format!("slow {k}")).unwrap();
    }
    let lsn = db.identity().lsn;
    let e = db
        .wait_followed("bodies", lsn, std::time::Duration::from_millis(10))
        .unwrap_err();
    assert!(matches!(e, StoreError::CatchingUp(_)), "{e}");
    assert!(
        e.to_string().contains("the bodies index is catching up"),
        "{e}"
    );
    assert_followed(&db);
}

#[test]
fn the_gate_holds_answers_for_the_mirror_refuses_without_a_lease_and_fails_once_fenced() {
    use std::time::{Duration, Instant};
    let t = tempfile::tempdir().unwrap();
    let db = Arc::new(create(&t.path().join("db")));
    let lsn = db.identity().lsn;
    db.gate().set_sync(true, lsn);
    let waiting = {
        let db = db.clone();
        std::thread::spawn(move || post(&db, 1, "held"))
    };
    // Committed and durable here, but not acknowledged: the mirror has not hardened it.
    while db.identity().lsn == lsn {
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(50));
    assert!(!waiting.is_finished(), "answered before the mirror had it");
    assert_eq!(
        db.durable_lsn(),
        lsn,
        "nothing past the mirror leaves the copy"
    );
    assert_eq!(db.gate().status().held, 1);
    db.gate().hardened(lsn + 1);
    assert!(waiting.join().unwrap().is_ok());
    assert_eq!(db.durable_lsn(), lsn + 1);

    // A lease is required and has run out: writes are refused, nothing is written.
    db.gate().set_sync(false, 0);
    db.gate().require_lease(true);
    let err = post(&db, 1, "no lease").unwrap_err();
    assert!(err.to_string().contains("lease"), "{err}");
    assert_eq!(db.identity().lsn, lsn + 1);
    db.gate()
        .renew_lease(Instant::now() + Duration::from_secs(60));
    post(&db, 1, "leased").unwrap();

    // Held answers fail once the copy is fenced, and every later write is refused.
    db.gate().set_sync(true, lsn + 2);
    let waiting = {
        let db = db.clone();
        std::thread::spawn(move || post(&db, 1, "never acknowledged"))
    };
    while db.gate().status().held == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    db.gate().fence("epoch 2 has another primary");
    let err = waiting.join().unwrap().unwrap_err();
    assert!(err.to_string().contains("not acknowledged"), "{err}");
    assert!(post(&db, 1, "after").is_err());
}

#[test]
fn chain_at_answers_every_lsn_across_segments_and_nothing_past_the_end() {
    let t = tempfile::tempdir().unwrap();
    let db = Arc::new(create(&t.path().join("db")));
    // Concurrent writers make segments of several records; single ones make segments of one.
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let db = db.clone();
            std::thread::spawn(move || {
                for k in 0..40 {
                    post(&db, i, &format!("m{i}-{k}")).unwrap();
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    for k in 0..5 {
        post(&db, 1, &format!("alone {k}")).unwrap();
    }
    let id = db.identity();
    let batch = db.read_journal(1, 10_000, 1 << 30).unwrap();
    let mut chain = Chain::genesis(&id.database_id);
    assert_eq!(db.chain_at(0).unwrap(), Some(chain));
    for (i, r) in batch.records.iter().enumerate() {
        chain = chain.next(r);
        assert_eq!(
            db.chain_at(i as u64 + 1).unwrap(),
            Some(chain),
            "LSN {}",
            i + 1
        );
    }
    assert_eq!(chain, id.chain);
    assert_eq!(db.chain_at(id.lsn + 1).unwrap(), None);
    assert_eq!(db.chain_at(id.lsn + 100).unwrap(), None);
}

/// The journal's stats once its oldest record is past `lsn` (the writer prunes in the
/// background); fails after a deadline.
fn pruned_past(db: &Database, lsn: Lsn) -> tandem_store::JournalStats {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let stats = db.journal_stats();
        if stats.oldest_lsn.is_none_or(|o| o > lsn) {
            return stats;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the journal still starts at LSN {:?}",
            stats.oldest_lsn
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn a_large_journal_is_pruned_in_slices_while_writes_go_on_and_the_position_survives() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("p");
    let db = create(&dir);
    db.register_consumer("log-backup", 0).unwrap();
    // One segment per commit: far more than one slice.
    for i in 0..300 {
        post(&db, 1, &format!("m{i}")).unwrap();
    }
    let cut = db.identity().lsn;
    let bytes_before = db.journal_stats().bytes;
    db.advance_consumer("log-backup", cut).unwrap();
    // Writes go on meanwhile; their records stay (the cursor is behind them).
    let writer = {
        let db = db.clone();
        std::thread::spawn(move || {
            for i in 0..100 {
                post(&db, 2, &format!("n{i}")).unwrap();
            }
        })
    };
    let stats = pruned_past(&db, cut);
    writer.join().unwrap();
    let stats_after = db.journal_stats();
    // Empty when the removal ended before the first of the new writes committed.
    assert!(stats.oldest_lsn.is_none_or(|o| o == cut + 1), "{stats:?}");
    assert_eq!(stats_after.oldest_lsn, Some(cut + 1));
    assert_eq!(stats_after.records, 100);
    assert!(stats_after.bytes < bytes_before / 2, "{stats_after:?}");
    let id = db.identity();
    assert_eq!(
        db.read_journal(cut + 1, 1000, usize::MAX)
            .unwrap()
            .records
            .len(),
        100
    );
    drop(db);
    let db = Database::open(&dir, Options::default()).unwrap();
    assert_eq!(db.identity(), id);
    assert_eq!(db.journal_stats(), stats_after);
    db.integrity_check().unwrap();
}

#[test]
fn the_position_survives_a_journal_pruned_to_nothing_and_the_writes_after_it() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("p");
    let db = create(&dir);
    for i in 0..20 {
        post(&db, 1, &format!("m{i}")).unwrap();
    }
    let before = db.identity();
    db.register_consumer("log-backup", 0).unwrap();
    db.advance_consumer("log-backup", before.lsn).unwrap();
    db.prune_journal().unwrap();
    assert_eq!(db.journal_stats().records, 0, "every record was consumed");
    drop(db);
    let db = Database::open(&dir, Options::default()).unwrap();
    let id = db.identity();
    assert_eq!((id.lsn, id.chain), (before.lsn, before.chain));
    assert_eq!(id.last_time_ms, before.last_time_ms);
    post(&db, 1, "after").unwrap();
    let after = db.identity();
    drop(db);
    let db = Database::open(&dir, Options::default()).unwrap();
    let id = db.identity();
    assert_eq!((id.lsn, id.chain), (before.lsn + 1, after.chain));
    assert_eq!(id.last_time_ms, after.last_time_ms);
    db.integrity_check().unwrap();
}

/// Commits of `n` threads queued behind a transaction that holds the writer: how many SQLite
/// commits (groups) they take once it lets go, the holder's own included.
fn groups_of_queued_commits(db: &Arc<Database>, n: usize) -> u64 {
    use std::sync::{Barrier, Mutex, mpsc};
    use std::time::Duration;
    let before = db.writer_stats().sqlite_commits;
    let (entered, in_writer) = mpsc::channel::<()>();
    let (go, hold) = mpsc::channel::<()>();
    let hold = Mutex::new(hold);
    let holder = {
        let db = db.clone();
        std::thread::spawn(move || {
            db.write(move |_tx: &mut Tx<'_>| {
                let _ = entered.send(());
                let _ = hold.lock().unwrap().recv_timeout(Duration::from_secs(30));
                Ok::<_, StoreError>(())
            })
            .unwrap()
        })
    };
    in_writer.recv().unwrap();
    let ready = Arc::new(Barrier::new(n + 1));
    let posters: Vec<_> = (0..n)
        .map(|i| {
            let (db, ready) = (db.clone(), ready.clone());
            std::thread::spawn(move || {
                ready.wait();
                post(&db, i as i64, "queued").unwrap()
            })
        })
        .collect();
    ready.wait();
    // Each poster submits within microseconds of the barrier; the margin is for a loaded machine.
    std::thread::sleep(Duration::from_millis(200));
    go.send(()).unwrap();
    holder.join().unwrap();
    for p in posters {
        p.join().unwrap();
    }
    db.writer_stats().sqlite_commits - before
}

#[test]
fn groups_are_smaller_while_answers_wait_for_a_synchronous_mirror() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let options = Options {
        sync_batch_records_max: 3,
        ..Options::default()
    };
    let t = tempfile::tempdir().unwrap();
    let db = Arc::new(Database::create(&t.path().join("alone"), "test", options.clone()).unwrap());
    db.migrate(SCHEMA).unwrap();
    // Without a mirror, the twelve go in one group after the holder's.
    let groups = groups_of_queued_commits(&db, 12);
    assert!(groups <= 3, "{groups} groups");

    let db = Arc::new(Database::create(&t.path().join("sync"), "test", options).unwrap());
    db.migrate(SCHEMA).unwrap();
    db.gate().set_sync(true, db.identity().lsn);
    let stop = Arc::new(AtomicBool::new(false));
    let mirror = {
        // The mirror, hardening whatever the copy committed.
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                db.gate().hardened(db.identity().lsn);
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        })
    };
    // With one, at most three a group: the twelve take four at least, the holder's one more.
    let groups = groups_of_queued_commits(&db, 12);
    stop.store(true, Ordering::Relaxed);
    mirror.join().unwrap();
    assert!(groups >= 5, "{groups} groups");
}

/// A copy replaced by renaming its directory away by hand (a restore waits for the handle to
/// close) while its old handle is still open: the old handle opens nothing of the new copy's, and closing it later leaves the
/// new copy's files alone. (SQLite deletes a WAL, its shared memory index and a follower's WAL
/// by path when their last connection closes; it means to skip that for a file that moved,
/// but a traced failback showed an old writer's close unlink the new copy's.)
#[test]
fn a_handle_closing_after_its_directory_was_replaced_leaves_the_new_copy_whole() {
    let (follow, _) = bodies!(REPLACED, 1, 0);
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("db");
    // The old copy is not read from: its follower's connection is the last one on its file.
    let old = Arc::new(create(&dir));
    old.follow(follow).unwrap();
    post(&old, 1, "old").unwrap();
    old.wait_followed("bodies", old.identity().lsn, FOLLOW_WAIT)
        .unwrap();
    std::fs::rename(&dir, t.path().join("old")).unwrap();

    let new = Arc::new(create(&dir));
    new.follow(follow).unwrap();
    post_concurrently(&new, 4, 25, "new");
    new.wait_followed("bodies", new.identity().lsn, FOLLOW_WAIT)
        .unwrap();
    // The old handle has no reader yet: it would open the new copy's file by its path.
    let refused = old
        .read(|c| Ok(c.query_row("SELECT count(*) FROM messages", [], |r| r.get::<_, i64>(0))?))
        .unwrap_err()
        .to_string();
    assert!(refused.contains("was replaced or removed"), "{refused}");
    let (other, _) = bodies!(REPLACED_OTHER, 1, 0);
    let refused = old
        .follow(Follow {
            name: "other",
            ..other
        })
        .unwrap_err()
        .to_string();
    assert!(refused.contains("was replaced or removed"), "{refused}");
    drop(old);
    for file in [DB_FILE, "follow-bodies.db"] {
        for suffix in ["-wal", "-shm"] {
            let f = dir.join(format!("{file}{suffix}"));
            assert!(f.exists(), "{} was deleted", f.display());
        }
    }
    // A connection opened now sees every commit.
    let c = rusqlite::Connection::open(dir.join(DB_FILE)).unwrap();
    assert_eq!(
        c.query_row("SELECT count(*) FROM messages", [], |r| r.get::<_, i64>(0))
            .unwrap(),
        100
    );
    drop(c);
    // The new copy goes on writing and reading, and has it all after a reopen.
    post_concurrently(&new, 4, 25, "after");
    assert_followed(&new);
    let (lsn, chain) = (new.identity().lsn, new.identity().chain);
    drop(new);
    let new = Database::open(&dir, Options::default()).unwrap();
    assert_eq!((new.identity().lsn, new.identity().chain), (lsn, chain));
    assert_eq!(
        new.read(|c| Ok(c.query_row("SELECT count(*) FROM messages", [], |r| r.get::<_, i64>(0))?))
            .unwrap(),
        200
    );
    new.integrity_check().unwrap();
    new.follow(follow).unwrap();
    assert_followed(&new);
}

/// No close deletes a copy's files by path: the main WAL and shared memory index are kept by
/// the writer's connection, the follower's by its own. (Before: the writer's connection, last to
/// close, deleted them; after a replacement those paths are the new copy's.)
#[test]
fn closing_a_copy_deletes_none_of_its_files_and_it_reopens_whole() {
    let (follow, _) = bodies!(CLOSED, 1, 0);
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("db");
    let db = create(&dir);
    db.follow(follow).unwrap();
    post(&db, 1, "one").unwrap();
    db.wait_followed("bodies", db.identity().lsn, FOLLOW_WAIT)
        .unwrap();
    drop(db);
    for file in [DB_FILE, "follow-bodies.db"] {
        for suffix in ["-wal", "-shm"] {
            let f = dir.join(format!("{file}{suffix}"));
            assert!(f.exists(), "{} was deleted", f.display());
        }
    }
    let db = Database::open(&dir, Options::default()).unwrap();
    db.follow(follow).unwrap();
    post(&db, 1, "two").unwrap();
    assert_followed(&db);
    db.integrity_check().unwrap();
}

/// A restore over a copy whose old handle is still in use (a node's request threads, its jobs,
/// after the node put the handle away) swaps the directories only once the last user closed
/// it: a connection of the old copy reading for the first time after the swap would open the
/// new copy's WAL and shared memory by their paths (a failback's node died of a SIGBUS so).
/// The new copy then serves at once — backups, reads through its follower's file, writes —
/// round after round.
#[test]
fn a_copy_restored_over_a_handle_still_in_use_is_swapped_in_once_it_closes() {
    use std::sync::atomic::AtomicBool;
    let (follow, _) = bodies!(RESTORED_LIVE, 1, 0);
    let t = tempfile::tempdir().unwrap();
    let src = Arc::new(create(&t.path().join("src")));
    post_concurrently(&src, 4, 50, "src");
    let full = full_backup(&src, &t.path().join("full")).unwrap();
    drop(src);
    let dir = t.path().join("db");
    let opts = RestoreOptions::default();
    restore_new(&dir, &[full.path().to_path_buf()], &opts, false).unwrap();
    let mut current = Database::open(&dir, Options::default()).unwrap();
    current.follow(follow).unwrap();
    for round in 0..20 {
        // The last users of the old handle: this one thread, which lets go after its work.
        let closing = Arc::new(AtomicBool::new(false));
        let user = {
            let (old, closing) = (current, closing.clone());
            std::thread::spawn(move || {
                for k in 0..40 {
                    let _ = post(&old, 1, &format!("old {k}"));
                    let _ = old.read(|c| {
                        Ok(c.query_row("SELECT count(*) FROM bodies.bodies", [], |r| {
                            r.get::<_, i64>(0)
                        })?)
                    });
                }
                closing.store(true, Ordering::SeqCst);
                drop(old);
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(round % 7));
        restore_new(&dir, &[full.path().to_path_buf()], &opts, true).unwrap();
        assert!(
            closing.load(Ordering::SeqCst),
            "round {round}: swapped while the old handle was open"
        );
        current = Database::open(&dir, Options::default()).unwrap();
        current.follow(follow).unwrap();
        let backups = t.path().join(format!("backups-{round}"));
        full_backup(&current, &backups).unwrap();
        post(&current, 2, "new").unwrap();
        log_backup(&current, &backups).unwrap();
        user.join().unwrap();
        post(&current, 2, "after").unwrap();
        assert_followed(&current);
        log_backup(&current, &backups).unwrap();
    }
    current.integrity_check().unwrap();
}

/// A restore over a copy that stays open (another process serves it, or a user never lets go)
/// refuses once its wait is over, naming the copy, and leaves it as it was, open and whole.
#[test]
fn a_restore_over_a_copy_that_stays_open_refuses_and_leaves_it_as_it_was() {
    let t = tempfile::tempdir().unwrap();
    let src = create(&t.path().join("src"));
    post(&src, 3, "src").unwrap();
    let full = full_backup(&src, &t.path().join("full")).unwrap();
    drop(src);
    let dir = t.path().join("db");
    let open = create(&dir);
    post(&open, 5, "kept").unwrap();
    let before = (open.identity().database_id, open.identity().lsn);
    for (round, wait) in [
        std::time::Duration::ZERO,
        std::time::Duration::from_millis(300),
    ]
    .into_iter()
    .enumerate()
    {
        let opts = RestoreOptions {
            replace_wait: wait,
            ..Default::default()
        };
        let err = restore_new(&dir, &[full.path().to_path_buf()], &opts, true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("still open") && err.contains(&dir.display().to_string()),
            "{err}"
        );
        assert_eq!(
            (open.identity().database_id, open.identity().lsn),
            (before.0, before.1 + round as u64)
        );
        post(&open, 1, "still writing").unwrap();
        assert_eq!(
            open.read(|c| Ok(
                c.query_row("SELECT count(*) FROM messages", [], |r| r.get::<_, i64>(0))?
            ))
            .unwrap(),
            2 + round as i64
        );
    }
    // No work directory is left beside it.
    let left: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("restoring") || n.contains("replaced"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    drop(open);
    let reopened = Database::open(&dir, Options::default()).unwrap();
    assert_eq!(reopened.identity().database_id, before.0);
    assert_eq!(reopened.identity().lsn, before.1 + 2);
}

/// A database created where another one's WAL was left (closes keep it; its database file was
/// removed by hand) starts empty: the old WAL's frames are not replayed into it.
#[test]
fn a_database_created_beside_a_leftover_wal_starts_empty() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("db");
    let old = create(&dir);
    post(&old, 1, "old").unwrap();
    drop(old);
    assert!(dir.join(format!("{DB_FILE}-wal")).exists());
    std::fs::remove_file(dir.join(DB_FILE)).unwrap();
    let new = Database::create(&dir, "other", Options::default()).unwrap();
    assert_eq!(new.identity().lsn, 0);
    assert_eq!(new.identity().name, "other");
    new.integrity_check().unwrap();
    drop(new);
    let new = Database::open(&dir, Options::default()).unwrap();
    assert_eq!(
        (new.identity().lsn, new.identity().name.as_str()),
        (0, "other")
    );
    new.integrity_check().unwrap();
}

/// A follower's file removed by hand, its WAL left beside it: the follower builds a new file
/// from the rows, not one made of the old WAL's pages.
#[test]
fn a_followers_file_removed_by_hand_is_built_again_from_the_rows() {
    let (follow, rebuilds) = bodies!(REMOVED_BY_HAND, 1, 0);
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("db");
    let db = Arc::new(create(&dir));
    db.follow(follow).unwrap();
    post_concurrently(&db, 4, 25, "m");
    assert_followed(&db);
    drop(db);
    assert!(dir.join("follow-bodies.db-wal").exists());
    std::fs::remove_file(dir.join("follow-bodies.db")).unwrap();
    let db = Database::open(&dir, Options::default()).unwrap();
    db.follow(follow).unwrap();
    post(&db, 1, "after").unwrap();
    assert_followed(&db);
    assert_eq!(
        rebuilds.load(Ordering::SeqCst),
        2,
        "built when new, and again"
    );
    assert!(db.health().unwrap().is_empty());
}
