//! What a restore may replace and what it must refuse before touching anything: targets that
//! are not databases, stop points behind a missing log, files that disagree with the copy or
//! with each other; and what interrupted backups leave behind.

mod common;

use common::{backup_dir_with_writes, create, dump, files_in, logs_in, post};
use std::path::{Path, PathBuf};
use tandem_store::*;

fn recover_all() -> RestoreOptions {
    RestoreOptions::default()
}

fn no_recovery() -> RestoreOptions {
    RestoreOptions {
        recovery: Recovery::NoRecovery,
        ..Default::default()
    }
}

/// Every file below `dir` with a hash of its bytes; not SQLite's shared-memory index, whose
/// read marks any reader moves.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u64)> {
    use std::hash::{Hash, Hasher};
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(snapshot(&p));
        } else if !p.to_string_lossy().ends_with("-shm") {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            std::fs::read(&p).unwrap().hash(&mut h);
            out.push((p.clone(), h.finish()));
        }
    }
    out.sort();
    out
}

fn log_header(path: &Path) -> LogHeader {
    match read_header(path).unwrap() {
        BackupFile::Log { header, .. } => header,
        other => panic!("not a log backup: {other:?}"),
    }
}

/// A directory that holds no database is never replaced, however the restore is asked: not
/// one holding other files, not one holding the backups themselves, not another program's
/// SQLite file named like ours; an empty one is used as a new one and, like the parents made
/// for a target, is left as it was by a restore that fails.
#[test]
fn a_restore_replaces_only_a_database() {
    let t = tempfile::tempdir().unwrap();
    let (_db, backups) = backup_dir_with_writes(&t);
    let from = std::slice::from_ref(&backups);

    let docs = t.path().join("docs");
    std::fs::create_dir_all(docs.join("sub")).unwrap();
    std::fs::write(docs.join("notes.txt"), "precious").unwrap();
    let before = snapshot(&docs);
    for replace in [false, true] {
        let e = restore_new(&docs, from, &recover_all(), replace)
            .unwrap_err()
            .to_string();
        assert!(e.contains("holds no tandem database"), "{e}");
        assert_eq!(snapshot(&docs), before);
    }

    // The backup directory itself, as the target of its own restore.
    let before = snapshot(&backups);
    let e = restore_new(&backups, from, &recover_all(), true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("holds no tandem database"), "{e}");
    assert_eq!(snapshot(&backups), before);

    // A database directory the backups were put into.
    let holder = t.path().join("holder");
    restore_new(&holder, from, &recover_all(), false).unwrap();
    let inside = holder.join("backups");
    std::fs::create_dir(&inside).unwrap();
    for f in std::fs::read_dir(&backups).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, inside.join(f.file_name().unwrap())).unwrap();
    }
    let before = snapshot(&holder);
    let e = restore_new(&holder, std::slice::from_ref(&inside), &recover_all(), true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("inside"), "{e}");
    assert_eq!(snapshot(&holder), before);

    // Another program's SQLite file called tandem.db: neither replaced nor opened for writing.
    let foreign = t.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    {
        let c = rusqlite::Connection::open(foreign.join(DB_FILE)).unwrap();
        c.execute_batch("CREATE TABLE theirs (a); INSERT INTO theirs VALUES (1);")
            .unwrap();
    }
    let before = snapshot(&foreign);
    let e = restore_new(&foreign, from, &recover_all(), true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("another program's SQLite file"), "{e}");
    let Err(e) = Database::open(&foreign, Options::default()) else {
        panic!("another program's file opened as a database");
    };
    let e = e.to_string();
    assert!(e.contains("another program's SQLite file"), "{e}");
    assert_eq!(
        snapshot(&foreign),
        before,
        "no WAL, no lock file, same bytes"
    );

    // An empty directory: a failed restore leaves it; a good one fills it.
    let empty = t.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let log_only = vec![logs_in(&backups)[0].clone()];
    assert!(restore_new(&empty, &log_only, &recover_all(), false).is_err());
    assert!(empty.is_dir(), "the empty target is still there");
    let r = restore_new(&empty, from, &recover_all(), false).unwrap();
    assert_eq!(inspect(&empty).unwrap().0.lsn, r.lsn);

    // Parents made for a target that fails go again; one that existed stays.
    let deep = t.path().join("made/a/b/r");
    assert!(restore_new(&deep, &log_only, &recover_all(), false).is_err());
    assert!(!t.path().join("made").exists());
    assert!(t.path().is_dir());

    // A target named `.` (or `..`) has no name to restore beside.
    let e = restore_new(&t.path().join("."), from, &recover_all(), true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("by its own name"), "{e}");
}

/// A stop point that falls where a log is missing is not "reached" by the log after the gap:
/// the missing records may lie before it. The restore is refused as a gap, nothing made.
#[test]
fn a_stop_point_beyond_a_missing_log_is_a_gap_not_a_recovery() {
    let t = tempfile::tempdir().unwrap();
    let (_db, backups) = backup_dir_with_writes(&t);
    let logs = logs_in(&backups);
    let missing = log_header(&logs[1]);
    std::fs::remove_file(&logs[1]).unwrap();
    let full = files_in(&backups, "tfb");
    let from: Vec<PathBuf> = full
        .iter()
        .chain(&[logs[0].clone(), logs[2].clone()])
        .cloned()
        .collect();
    let stops = [
        StopAt::Lsn(missing.first_lsn + 3),
        // The missing log's first record's time: past the log before it (or equal to its end).
        StopAt::TimeMs(missing.first_time_ms),
    ];
    for stop in stops {
        for recovery in [Recovery::Recover, Recovery::NoRecovery] {
            let target = t.path().join("r");
            let options = RestoreOptions {
                recovery,
                stop_at: Some(stop),
                ..Default::default()
            };
            let e = restore_new(&target, &from, &options, false)
                .unwrap_err()
                .to_string();
            assert!(e.contains("gap of"), "{stop:?} {recovery:?}: {e}");
            assert!(!target.exists());
        }
    }
    // Continuing a restoring copy past the gap: refused too, the copy as it was.
    let target = t.path().join("c");
    let at_first = RestoreOptions {
        recovery: Recovery::NoRecovery,
        stop_at: Some(StopAt::Lsn(missing.first_lsn - 1)),
        ..Default::default()
    };
    let from_first: Vec<PathBuf> = full.iter().chain(&[logs[0].clone()]).cloned().collect();
    restore_new(&target, &from_first, &at_first, false).unwrap();
    let before = dump(&target);
    let db = Database::open(&target, Options::default()).unwrap();
    let options = RestoreOptions {
        stop_at: Some(StopAt::Lsn(missing.first_lsn + 3)),
        ..Default::default()
    };
    let e = restore_logs(&db, &[logs[2].clone()], &options)
        .unwrap_err()
        .to_string();
    assert!(e.contains("gap of"), "{e}");
    assert_eq!(db.identity().role, Role::Restoring);
    drop(db);
    assert_eq!(dump(&target), before);
    // With the stop point at the end of what is there, the gap after it does not matter.
    let exact = RestoreOptions {
        stop_at: Some(StopAt::Lsn(missing.first_lsn - 1)),
        ..Default::default()
    };
    let r = restore_new(&t.path().join("exact"), &from, &exact, false).unwrap();
    assert_eq!(r.lsn, missing.first_lsn - 1);
}

/// A full backup of a copy recovered at LSN n (epoch 2) and the old history's logs past n:
/// `verify_chain` refuses them as restore does, instead of calling the chain good.
#[test]
fn verify_refuses_logs_of_an_epoch_a_full_backup_left() {
    let t = tempfile::tempdir().unwrap();
    let (_db, backups) = backup_dir_with_writes(&t);
    let logs = logs_in(&backups);
    let mid = log_header(&logs[1]).first_lsn + 5;
    let recovered = t.path().join("recovered");
    let options = RestoreOptions {
        stop_at: Some(StopAt::Lsn(mid)),
        ..Default::default()
    };
    restore_new(&recovered, std::slice::from_ref(&backups), &options, false).unwrap();
    let newer = t.path().join("newer");
    {
        let db = Database::open(&recovered, Options::default()).unwrap();
        full_backup(&db, &newer).unwrap();
    }
    let mut files: Vec<PathBuf> = vec![newer.clone()];
    files.extend(logs[1..].iter().cloned());
    let e = verify_chain(&files).unwrap_err().to_string();
    assert!(e.contains("epoch 1") && e.contains("epoch 2"), "{e}");
    let e = restore_new(&t.path().join("r"), &files, &recover_all(), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("epoch"), "{e}");
}

/// A log of another history that ends exactly where the copy is would add nothing, but it
/// says the operator has the wrong files: refused, not skipped as already applied.
#[test]
fn a_log_ending_where_the_copy_is_must_agree_with_it() {
    let t = tempfile::tempdir().unwrap();
    let (primary, backups) = backup_dir_with_writes(&t);
    let logs = logs_in(&backups);
    let last = log_header(logs.last().unwrap());
    // A branch: recovered from the first two logs, then as many records as the third log holds.
    let branch = t.path().join("branch");
    let upto = RestoreOptions {
        stop_at: Some(StopAt::Lsn(log_header(&logs[1]).last_lsn)),
        ..Default::default()
    };
    restore_new(&branch, std::slice::from_ref(&backups), &upto, false).unwrap();
    let branch_logs = t.path().join("branch-logs");
    {
        let b = Database::open(&branch, Options::default()).unwrap();
        full_backup(&b, &branch_logs).unwrap();
        while b.identity().lsn < last.last_lsn {
            post(&b, 3, "on the branch").unwrap();
        }
        assert_eq!(log_backup(&b, &branch_logs).unwrap().len(), 1);
    }
    drop(primary);
    // A copy restoring the primary's history up to the end of its third log.
    let copy = t.path().join("copy");
    restore_new(&copy, std::slice::from_ref(&backups), &no_recovery(), false).unwrap();
    let before = dump(&copy);
    let db = Database::open(&copy, Options::default()).unwrap();
    assert_eq!(db.identity().lsn, last.last_lsn);
    let e = restore_logs(&db, &logs_in(&branch_logs), &no_recovery())
        .unwrap_err()
        .to_string();
    assert!(e.contains("another history"), "{e}");
    drop(db);
    assert_eq!(dump(&copy), before);
}

/// A full backup's name says its LSN, epoch and time (log shipping picks the newest by name):
/// a file renamed to another's name is refused as it is read.
#[test]
fn a_full_backup_under_another_name_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let (_db, backups) = backup_dir_with_writes(&t);
    let full = files_in(&backups, "tfb").remove(0);
    let renamed = t.path().join("full-00000000000003e8-e1-1796658133380.tfb");
    std::fs::copy(&full, &renamed).unwrap();
    let e = verify_chain(std::slice::from_ref(&renamed))
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected name full-"), "{e}");
    // Any other name is only a name.
    let plain = t.path().join("monday.tfb");
    std::fs::copy(&full, &plain).unwrap();
    verify_chain(std::slice::from_ref(&plain)).unwrap();
}

/// A backup killed mid-way leaves its file being written and its snapshot, as large as the
/// database: the next backup into the directory removes them — not a running process's.
#[test]
fn what_a_killed_backup_left_is_cleared_by_the_next() {
    let t = tempfile::tempdir().unwrap();
    let db = create(&t.path().join("p"));
    post(&db, 1, "one").unwrap();
    let dir = t.path().join("backups");
    std::fs::create_dir(&dir).unwrap();
    let dead = {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    };
    let left = [
        format!(".partial-{dead}-0"),
        format!(".snapshot-{dead}-1796658309027-0.db"),
        format!(".snapshot-{dead}-1796658309027-0.db-journal"),
    ];
    let ours = format!(".partial-{}-999", std::process::id());
    for name in left.iter().chain([&ours]) {
        std::fs::write(dir.join(name), b"half a backup").unwrap();
    }
    full_backup(&db, &dir).unwrap();
    for name in &left {
        assert!(!dir.join(name).exists(), "{name} cleared");
    }
    assert!(dir.join(&ours).exists(), "a running process's file stays");
}
