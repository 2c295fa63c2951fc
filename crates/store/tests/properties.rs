//! Properties of the store's two ways of moving a database:
//!
//! - random transactions — inserts, updates and deletes in `messages` and `members`, some rolled
//!   back, submitted concurrently so that group commits mix them — leave the primary equal to a
//!   model, and both a mirror fed by `read_journal` + `apply` in random batches and a copy
//!   restored from a full backup plus log backups taken at random points end with the primary's
//!   rows and `(lsn, chain)`;
//! - any damage to a backup chain (a flipped byte anywhere, a truncation, a missing, duplicated
//!   or swapped log) is refused by `verify_chain` and by `restore_new`, which leaves no target.

mod common;

use common::{create, dump};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tandem_store::*;

const MESSAGE_IDS_MAX: i64 = 16;
const ROOMS_MAX: i64 = 3;
const USERS: [&str; 4] = ["ann", "bob", "cy", "dee"];
/// A message id no transaction ever inserts: updating it fails.
const GHOST_ID: i64 = 1_000_000;
/// Past the magic (8), the version (4) and the header slot (4096): the first frame.
const FRAMES_OFFSET: usize = 8 + 4 + 4096;
/// The end frame (8), the end magic (8) and the file checksum (32).
const TRAILER_BYTES: usize = 48;

// ---------------------------------------------------------------------------------------------
// Random transactions
// ---------------------------------------------------------------------------------------------

/// One row change, decided against the row's presence when it runs: absent, the row is
/// inserted; present, it is deleted (`delete`) or replaced by these values.
#[derive(Clone, Debug)]
enum RowOp {
    Message {
        id: i64,
        room: i64,
        body: String,
        extra: Value,
        delete: bool,
    },
    Member {
        room: i64,
        user: &'static str,
        manager: bool,
        delete: bool,
    },
}

/// How a transaction ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    Commit,
    /// The transaction returns an error of its own after its changes.
    ReturnErr,
    /// The store refuses an update of a row that does not exist.
    UpdateMissing,
    /// SQLite refuses a second insert of the same key (the first one succeeded).
    DuplicateKey,
}

#[derive(Clone, Debug)]
struct Txn {
    ops: Vec<RowOp>,
    ending: Ending,
}

#[derive(Clone, Debug)]
enum Step {
    /// Transactions submitted at once from their own threads (one or a few group commits).
    Group(Vec<Txn>),
    FullBackup,
    LogBackup,
    /// The mirror applies everything the primary has committed.
    CatchUpMirror,
}

fn extra() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::Integer),
        (-1000i32..1000).prop_map(|x| Value::Real(x as f64 / 8.0)),
        "\\PC{0,8}".prop_map(Value::Text),
        proptest::collection::vec(any::<u8>(), 0..32).prop_map(Value::Blob),
    ]
}

fn row_op() -> impl Strategy<Value = RowOp> {
    prop_oneof![
        3 => (1..=MESSAGE_IDS_MAX, 0..ROOMS_MAX, "[a-z ]{0,12}|\\PC{0,6}", extra(), prop::bool::weighted(0.3))
            .prop_map(|(id, room, body, extra, delete)| RowOp::Message { id, room, body, extra, delete }),
        2 => (0..ROOMS_MAX, prop::sample::select(USERS.to_vec()), any::<bool>(), prop::bool::weighted(0.3))
            .prop_map(|(room, user, manager, delete)| RowOp::Member { room, user, manager, delete }),
    ]
}

fn txn() -> impl Strategy<Value = Txn> {
    let ending = prop_oneof![
        6 => Just(Ending::Commit),
        1 => Just(Ending::ReturnErr),
        1 => Just(Ending::UpdateMissing),
        1 => Just(Ending::DuplicateKey),
    ];
    (proptest::collection::vec(row_op(), 0..5), ending)
        .prop_map(|(ops, ending)| Txn { ops, ending })
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        6 => proptest::collection::vec(txn(), 1..6).prop_map(Step::Group),
        2 => Just(Step::LogBackup),
        1 => Just(Step::FullBackup),
        2 => Just(Step::CatchUpMirror),
    ];
    // At least one full backup, at any point: before the first transaction too (LSN 1).
    (proptest::collection::vec(step, 1..40), any::<Index>()).prop_map(|(mut steps, at)| {
        let at = at.index(steps.len() + 1);
        steps.insert(at, Step::FullBackup);
        steps
    })
}

fn message_row(id: i64, room: i64, time_ms: i64, body: &str, extra: &Value) -> Vec<Value> {
    vec![
        Value::Integer(id),
        Value::Integer(room),
        Value::Text("prop".into()),
        Value::Integer(time_ms),
        Value::Text(body.to_string()),
        extra.clone(),
    ]
}

fn member_row(room: i64, user: &str, manager: bool) -> Vec<Value> {
    vec![
        Value::Integer(room),
        Value::Text(user.to_string()),
        Value::Integer(manager as i64),
    ]
}

fn run_row_op(tx: &mut Tx<'_>, op: &RowOp) -> Result<(), StoreError> {
    match op {
        RowOp::Message {
            id,
            room,
            body,
            extra,
            delete,
        } => {
            let exists = tx
                .query_row("SELECT 1 FROM messages WHERE id = ?1", [id], |_| Ok(()))?
                .is_some();
            let row = message_row(*id, *room, tx.time_ms(), body, extra);
            match (exists, delete) {
                (false, _) => tx.insert("messages", row),
                (true, true) => tx.delete("messages", vec![Value::Integer(*id)]),
                (true, false) => tx.update("messages", row),
            }
        }
        RowOp::Member {
            room,
            user,
            manager,
            delete,
        } => {
            let exists = tx
                .query_row(
                    "SELECT 1 FROM members WHERE room = ?1 AND user = ?2",
                    rusqlite::params![room, user],
                    |_| Ok(()),
                )?
                .is_some();
            match (exists, delete) {
                (false, _) => tx.insert("members", member_row(*room, user, *manager)),
                (true, true) => tx.delete(
                    "members",
                    vec![Value::Integer(*room), Value::Text(user.to_string())],
                ),
                (true, false) => tx.update("members", member_row(*room, user, *manager)),
            }
        }
    }
}

fn run_txn(db: &Database, txn: Txn) -> Result<Committed<()>, StoreError> {
    db.write(move |tx: &mut Tx<'_>| {
        for op in &txn.ops {
            run_row_op(tx, op)?;
        }
        match txn.ending {
            Ending::Commit => Ok(()),
            Ending::ReturnErr => Err(StoreError::Invalid("rolled back on purpose".into())),
            Ending::UpdateMissing => tx.update(
                "messages",
                message_row(GHOST_ID, 0, 0, "ghost", &Value::Null),
            ),
            Ending::DuplicateKey => {
                tx.insert("members", member_row(ROOMS_MAX, "dup", false))?;
                tx.insert("members", member_row(ROOMS_MAX, "dup", true))
            }
        }
    })
}

/// The rows a primary must hold: messages without their commit time, members.
#[derive(Default, Debug, PartialEq)]
struct Model {
    messages: BTreeMap<i64, (i64, String, String)>,
    members: BTreeMap<(i64, String), bool>,
}

impl Model {
    fn apply(&mut self, op: &RowOp) {
        match op {
            RowOp::Message {
                id,
                room,
                body,
                extra,
                delete,
            } => {
                let exists = self.messages.contains_key(id);
                if exists && *delete {
                    self.messages.remove(id);
                } else {
                    self.messages
                        .insert(*id, (*room, body.clone(), format!("{extra:?}")));
                }
            }
            RowOp::Member {
                room,
                user,
                manager,
                delete,
            } => {
                let key = (*room, user.to_string());
                if self.members.contains_key(&key) && *delete {
                    self.members.remove(&key);
                } else {
                    self.members.insert(key, *manager);
                }
            }
        }
    }

    fn read(db: &Database) -> Model {
        db.read(|c| {
            let mut model = Model::default();
            let mut stmt = c.prepare("SELECT id, room, body, extra FROM messages")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let extra: Value = r.get(3)?;
                model
                    .messages
                    .insert(r.get(0)?, (r.get(1)?, r.get(2)?, format!("{extra:?}")));
            }
            let mut stmt = c.prepare("SELECT room, user, manager FROM members")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                model.members.insert((r.get(0)?, r.get(1)?), r.get(2)?);
            }
            Ok(model)
        })
        .unwrap()
    }
}

/// Brings the mirror to the primary's LSN through `read_journal` + `apply`, in batches whose
/// bounds come from `batches` in turn; the mirror's journal consumer follows it.
fn catch_up(
    primary: &Database,
    mirror: &Database,
    batches: &[(usize, usize)],
    turn: &mut usize,
) -> Result<(), TestCaseError> {
    let target = primary.identity().lsn;
    loop {
        let at = mirror.identity();
        if at.lsn >= target {
            prop_assert_eq!(at.lsn, target, "the mirror is never ahead");
            return Ok(());
        }
        let (records_max, bytes_max) = batches[*turn % batches.len()];
        *turn += 1;
        let batch = primary
            .read_journal(at.lsn + 1, records_max, bytes_max)
            .map_err(|e| TestCaseError::fail(format!("read_journal({}): {e}", at.lsn + 1)))?;
        let n = batch.records.len() as u64;
        prop_assert!(n >= 1 && n as usize <= records_max, "{} records", n);
        prop_assert_eq!(batch.chain_before, at.chain);
        prop_assert_eq!(Some(batch.chain_before), primary.chain_at(at.lsn).unwrap());
        let applied = mirror
            .apply(batch, None)
            .map_err(|e| TestCaseError::fail(format!("apply after LSN {}: {e}", at.lsn)))?;
        prop_assert_eq!(applied.records, n);
        prop_assert_eq!(applied.lsn, at.lsn + n);
        prop_assert_eq!(Some(applied.chain), primary.chain_at(applied.lsn).unwrap());
        primary.advance_consumer("mirror", applied.lsn).unwrap();
    }
}

fn check_history(
    steps: Vec<Step>,
    batches: Vec<(usize, usize)>,
    recovery: Recovery,
) -> Result<(), TestCaseError> {
    let t = tempfile::tempdir().unwrap();
    let primary_dir = t.path().join("primary");
    let db = create(&primary_dir);
    // The journal keeps what the mirror has not applied, whatever the log backups prune.
    db.register_consumer("mirror", 0).unwrap();
    let mirror_dir = t.path().join("mirror");
    let mirror = Database::create_copy(
        &mirror_dir,
        "test",
        db.identity().database_id,
        Role::Mirror,
        Options::default(),
    )
    .unwrap();
    let backups = t.path().join("backups");
    let mut model = Model::default();
    let mut chain_started = false;
    let mut turn = 0;
    for step in steps {
        match step {
            Step::Group(txns) => {
                let before = db.identity().lsn;
                let results: Vec<(Txn, Result<Committed<()>, StoreError>)> =
                    std::thread::scope(|s| {
                        let handles: Vec<_> = txns
                            .into_iter()
                            .map(|txn| {
                                let db = &db;
                                s.spawn(move || (txn.clone(), run_txn(db, txn)))
                            })
                            .collect();
                        handles.into_iter().map(|h| h.join().unwrap()).collect()
                    });
                let mut committed: Vec<(Lsn, Txn)> = Vec::new();
                for (txn, result) in results {
                    match (txn.ending, result) {
                        (Ending::Commit, Ok(c)) => {
                            if !txn.ops.is_empty() {
                                committed.push((c.lsn, txn));
                            }
                        }
                        (Ending::Commit, Err(e)) => {
                            return Err(TestCaseError::fail(format!("{txn:?} failed: {e}")));
                        }
                        (_, Ok(c)) => {
                            return Err(TestCaseError::fail(format!(
                                "{txn:?} committed at LSN {} instead of rolling back",
                                c.lsn
                            )));
                        }
                        (_, Err(_)) => {}
                    }
                }
                // The model applies the committed transactions in LSN order, as the writer did.
                committed.sort_by_key(|(lsn, _)| *lsn);
                let lsns: Vec<Lsn> = committed.iter().map(|(lsn, _)| *lsn).collect();
                let expected: Vec<Lsn> = (before + 1..=before + lsns.len() as u64).collect();
                prop_assert_eq!(&lsns, &expected, "one LSN per committed transaction");
                prop_assert_eq!(db.identity().lsn, before + lsns.len() as u64);
                for (_, txn) in &committed {
                    for op in &txn.ops {
                        model.apply(op);
                    }
                }
            }
            Step::FullBackup => {
                full_backup(&db, &backups).unwrap();
                chain_started = true;
            }
            Step::LogBackup => {
                let r = log_backup(&db, &backups);
                if chain_started {
                    r.unwrap();
                } else {
                    prop_assert!(r.is_err(), "a log backup before any full backup");
                }
            }
            Step::CatchUpMirror => catch_up(&db, &mirror, &batches, &mut turn)?,
        }
    }
    prop_assert!(chain_started);
    log_backup(&db, &backups).unwrap();
    catch_up(&db, &mirror, &batches, &mut turn)?;
    prop_assert!(log_backup(&db, &backups).unwrap().is_empty());

    let id = db.identity();
    let rows = dump(&primary_dir);
    prop_assert_eq!(Model::read(&db), model, "the primary holds what committed");

    // The mirror: same rows, same position, same history.
    let m = mirror.identity();
    prop_assert_eq!((m.lsn, m.chain), (id.lsn, id.chain));
    prop_assert_eq!(&m.history, &id.history);
    prop_assert_eq!(m.role, Role::Mirror);
    prop_assert_eq!(&dump(&mirror_dir), &rows);
    drop(mirror);

    // The restore: same rows, same position.
    let report = verify_chain(std::slice::from_ref(&backups))
        .map_err(|e| TestCaseError::fail(format!("verify_chain: {e}")))?;
    prop_assert_eq!(report.last_lsn, id.lsn);
    let restored = t.path().join("restored");
    let r = restore_new(
        &restored,
        std::slice::from_ref(&backups),
        &RestoreOptions {
            recovery,
            ..Default::default()
        },
        false,
    )
    .map_err(|e| TestCaseError::fail(format!("restore_new: {e}")))?;
    prop_assert_eq!((r.lsn, r.chain), (id.lsn, id.chain));
    let (rid, _, _) = inspect(&restored).unwrap();
    prop_assert_eq!((rid.lsn, rid.chain), (id.lsn, id.chain));
    prop_assert_eq!(&dump(&restored), &rows);
    Ok(())
}

proptest! {
    // No failure persistence: it cannot find this crate's source root from tests/; a failure
    // prints its shrunk input.
    #![proptest_config(ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn mirror_and_restore_reach_the_primary(
        steps in steps(),
        batches in proptest::collection::vec((1usize..8, 1usize..4096), 1..6),
        recovery in prop_oneof![
            Just(Recovery::Recover),
            Just(Recovery::Standby),
            Just(Recovery::NoRecovery),
        ],
    ) {
        check_history(steps, batches, recovery)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Damaged chains
// ---------------------------------------------------------------------------------------------

/// A backup directory holding a full backup and `LOGS` log backups of a small database.
struct Pristine {
    _dir: tempfile::TempDir,
    backups: PathBuf,
    full: PathBuf,
    /// Sorted by name, that is by LSN.
    logs: Vec<PathBuf>,
}

const LOGS: usize = 4;

fn pristine() -> Pristine {
    let dir = tempfile::tempdir().unwrap();
    let db = create(&dir.path().join("primary"));
    for i in 0..10 {
        common::post(&db, i % 3, &format!("before the full backup {i}")).unwrap();
    }
    let backups = dir.path().join("backups");
    let full = full_backup(&db, &backups).unwrap().path().to_path_buf();
    let mut logs = Vec::new();
    for (round, posts) in [1, 3, 7, 12].into_iter().enumerate() {
        for i in 0..posts {
            common::post(&db, 1, &format!("round {round} post {i}")).unwrap();
        }
        if round == 2 {
            db.write(|tx: &mut Tx<'_>| {
                tx.update(
                    "messages",
                    message_row(2, 5, 0, "edited", &Value::Blob(vec![1, 2, 3])),
                )?;
                tx.delete("messages", vec![Value::Integer(3)])
            })
            .unwrap();
        }
        let files = log_backup(&db, &backups).unwrap();
        assert_eq!(files.len(), 1);
        logs.push(files[0].path().to_path_buf());
    }
    assert_eq!(logs.len(), LOGS);
    Pristine {
        _dir: dir,
        backups,
        full,
        logs,
    }
}

/// One way to damage a chain of backups.
#[derive(Clone, Debug)]
enum Damage {
    /// XOR one byte of one file (the full backup or a log) with a non-zero value.
    FlipByte { file: Index, at: Index, xor: u8 },
    /// The same, in the first bytes: magic, version, header slot (its padding too).
    FlipHeaderByte { file: Index, at: usize, xor: u8 },
    /// The same, in the last bytes: end frame, end magic, file checksum.
    FlipTrailerByte { file: Index, back: usize, xor: u8 },
    /// Cut one file short.
    Truncate { file: Index, len: Index },
    /// Remove a log that another log follows (removing the last one only shortens the chain).
    DeleteLog { which: Index },
    /// A log's content under a log name of another range.
    CopyUnderOtherRange { which: Index, shift: u64 },
    /// A log's content again, in the directory under a name outside the log pattern.
    CopyUnderOtherName { which: Index },
    /// A log's content again, in another directory, passed beside the backup directory.
    CopyPassedTwice { which: Index },
    /// The same log file passed a second time by another path (a symlink in the directory).
    SameFileTwice { which: Index },
    /// Two logs trade contents: names no longer match headers.
    SwapLogs { a: Index, b: Index },
}

fn damage() -> impl Strategy<Value = Damage> {
    let xor = 1u8..=255;
    prop_oneof![
        4 => (any::<Index>(), any::<Index>(), xor.clone())
            .prop_map(|(file, at, xor)| Damage::FlipByte { file, at, xor }),
        2 => (any::<Index>(), 0..FRAMES_OFFSET + 16, xor.clone())
            .prop_map(|(file, at, xor)| Damage::FlipHeaderByte { file, at, xor }),
        1 => (any::<Index>(), 1..=TRAILER_BYTES + 16, xor)
            .prop_map(|(file, back, xor)| Damage::FlipTrailerByte { file, back, xor }),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(file, len)| Damage::Truncate { file, len }),
        1 => any::<Index>().prop_map(|which| Damage::DeleteLog { which }),
        1 => (any::<Index>(), 1u64..50).prop_map(|(which, shift)| Damage::CopyUnderOtherRange { which, shift }),
        1 => any::<Index>().prop_map(|which| Damage::CopyUnderOtherName { which }),
        1 => any::<Index>().prop_map(|which| Damage::CopyPassedTwice { which }),
        1 => any::<Index>().prop_map(|which| Damage::SameFileTwice { which }),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Damage::SwapLogs { a, b }),
    ]
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// Copies the pristine backups into `work/backups`, damages them, and returns the inputs a
/// restore is given.
fn apply_damage(p: &Pristine, work: &Path, damage: &Damage) -> Vec<PathBuf> {
    let dir = work.join("backups");
    std::fs::create_dir_all(&dir).unwrap();
    for f in std::iter::once(&p.full).chain(&p.logs) {
        std::fs::copy(f, dir.join(file_name(f))).unwrap();
    }
    let full = dir.join(file_name(&p.full));
    let logs: Vec<PathBuf> = p.logs.iter().map(|l| dir.join(file_name(l))).collect();
    let all: Vec<PathBuf> = std::iter::once(full).chain(logs.iter().cloned()).collect();
    let pick = |i: &Index| all[i.index(all.len())].clone();
    let pick_log = |i: &Index| logs[i.index(logs.len())].clone();
    let flip = |path: &Path, at: usize, xor: u8| {
        let mut bytes = std::fs::read(path).unwrap();
        let at = at.min(bytes.len() - 1);
        bytes[at] ^= xor;
        std::fs::write(path, bytes).unwrap();
    };
    let mut inputs = vec![dir.clone()];
    match damage {
        Damage::FlipByte { file, at, xor } => {
            let path = pick(file);
            let len = std::fs::metadata(&path).unwrap().len() as usize;
            flip(&path, at.index(len), *xor);
        }
        Damage::FlipHeaderByte { file, at, xor } => flip(&pick(file), *at, *xor),
        Damage::FlipTrailerByte { file, back, xor } => {
            let path = pick(file);
            let len = std::fs::metadata(&path).unwrap().len() as usize;
            flip(&path, len - back, *xor);
        }
        Damage::Truncate { file, len } => {
            let path = pick(file);
            let size = std::fs::metadata(&path).unwrap().len() as usize;
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.set_len(len.index(size) as u64).unwrap();
        }
        Damage::DeleteLog { which } => {
            std::fs::remove_file(&logs[which.index(logs.len() - 1)]).unwrap();
        }
        Damage::CopyUnderOtherRange { which, shift } => {
            let src = pick_log(which);
            let h = match read_header(&src).unwrap() {
                BackupFile::Log { header, .. } => header,
                other => panic!("not a log: {other:?}"),
            };
            let name = log_file_name(h.first_lsn + shift, h.last_lsn + shift);
            std::fs::copy(&src, dir.join(name)).unwrap();
        }
        Damage::CopyUnderOtherName { which } => {
            let src = pick_log(which);
            std::fs::copy(&src, dir.join(format!("copy-of-{}", file_name(&src)))).unwrap();
        }
        Damage::CopyPassedTwice { which } => {
            let src = pick_log(which);
            let other = work.join("elsewhere");
            std::fs::create_dir_all(&other).unwrap();
            let copy = other.join(file_name(&src));
            std::fs::copy(&src, &copy).unwrap();
            inputs.push(copy);
        }
        Damage::SameFileTwice { which } => {
            let src = pick_log(which);
            std::os::unix::fs::symlink(&src, dir.join("alias.tlb")).unwrap();
        }
        Damage::SwapLogs { a, b } => {
            let a = a.index(logs.len());
            // Another log than `a`.
            let b = (a + 1 + b.index(logs.len() - 1)) % logs.len();
            let (ba, bb) = (
                std::fs::read(&logs[a]).unwrap(),
                std::fs::read(&logs[b]).unwrap(),
            );
            std::fs::write(&logs[a], bb).unwrap();
            std::fs::write(&logs[b], ba).unwrap();
        }
    }
    inputs
}

/// Nothing of a refused restore stays: not the target, not its work directory.
fn assert_no_target(work: &Path, target: &Path) -> Result<(), TestCaseError> {
    prop_assert!(!target.exists(), "{} exists", target.display());
    let leaf = file_name(target);
    for entry in std::fs::read_dir(work).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        prop_assert!(
            !name.contains(&leaf),
            "{name} is left beside a refused restore"
        );
    }
    Ok(())
}

fn check_damage(p: &Pristine, damage: &Damage) -> Result<(), TestCaseError> {
    let work = tempfile::tempdir().unwrap();
    let inputs = apply_damage(p, work.path(), damage);
    if let Ok(report) = verify_chain(&inputs) {
        return Err(TestCaseError::fail(format!(
            "verify_chain accepted the damaged chain: LSN {}..={} in {} files",
            report.first_lsn,
            report.last_lsn,
            report.files.len()
        )));
    }
    let target = work.path().join("restored");
    if let Ok(r) = restore_new(&target, &inputs, &RestoreOptions::default(), false) {
        return Err(TestCaseError::fail(format!(
            "restore_new accepted the damaged chain and reached LSN {}",
            r.lsn
        )));
    }
    assert_no_target(work.path(), &target)
}

#[test]
fn damaged_chains_are_refused_before_anything_is_applied() {
    let p = pristine();
    // The undamaged chain restores, and so does a chain without its last log (only shorter):
    // the property below could not fail otherwise.
    let full_lsn = match read_header(&p.full).unwrap() {
        BackupFile::Full { header, .. } => header.lsn,
        other => panic!("not a full backup: {other:?}"),
    };
    let last_lsn_of = |log: &Path| match read_header(log).unwrap() {
        BackupFile::Log { header, .. } => header.last_lsn,
        other => panic!("not a log: {other:?}"),
    };
    {
        let work = tempfile::tempdir().unwrap();
        let r = restore_new(
            &work.path().join("r"),
            std::slice::from_ref(&p.backups),
            &RestoreOptions::default(),
            false,
        )
        .unwrap();
        assert_eq!(r.lsn, last_lsn_of(&p.logs[LOGS - 1]));
        assert!(r.lsn > full_lsn);
        let shorter = work.path().join("shorter");
        std::fs::create_dir_all(&shorter).unwrap();
        for f in std::iter::once(&p.full).chain(&p.logs[..LOGS - 1]) {
            std::fs::copy(f, shorter.join(file_name(f))).unwrap();
        }
        verify_chain(std::slice::from_ref(&shorter)).unwrap();
        let r = restore_new(
            &work.path().join("r2"),
            &[shorter],
            &RestoreOptions::default(),
            false,
        )
        .unwrap();
        assert_eq!(r.lsn, last_lsn_of(&p.logs[LOGS - 2]));
    }
    let mut runner = TestRunner::new(Config {
        cases: 128,
        failure_persistence: None,
        ..Config::default()
    });
    match runner.run(&damage(), |d| check_damage(&p, &d)) {
        Ok(()) => {}
        Err(TestError::Fail(reason, damage)) => panic!("{damage:?}: {reason}"),
        Err(e) => panic!("{e}"),
    }
}

/// Every single byte of a log backup, and every byte of a full backup's header, its first frame
/// head and its trailer, is covered by a checksum: flipping any one of them is refused.
#[test]
fn every_byte_of_a_backup_file_is_checked() {
    let p = pristine();
    let work = tempfile::tempdir().unwrap();
    let smallest = p
        .logs
        .iter()
        .min_by_key(|l| std::fs::metadata(l).unwrap().len())
        .unwrap();
    let full = std::fs::read(&p.full).unwrap();
    let cases: [(&Path, Vec<usize>); 2] = [
        (
            smallest,
            (0..std::fs::metadata(smallest).unwrap().len() as usize).collect(),
        ),
        (
            &p.full,
            (0..FRAMES_OFFSET + 8)
                .chain(full.len() - TRAILER_BYTES..full.len())
                .collect(),
        ),
    ];
    let mut undetected = Vec::new();
    for (src, offsets) in cases {
        let pristine = std::fs::read(src).unwrap();
        let copy = work.path().join(file_name(src));
        for at in offsets {
            let mut bytes = pristine.clone();
            bytes[at] ^= 0x01;
            std::fs::write(&copy, &bytes).unwrap();
            if verify_file(&copy).is_ok() {
                undetected.push(format!("{} byte {at}", file_name(src)));
            }
        }
    }
    assert!(undetected.is_empty(), "flips not detected: {undetected:?}");
}
