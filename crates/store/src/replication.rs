//! The replication protocol between a primary and its mirror, without the transport: what a
//! mirror asks, what the primary answers, and the binary form of both (the journal's own
//! records, in batches — not JSON). The node carries these over HTTP; a benchmark may carry them
//! in process. Every answer is decided by `compare` on the two copies' positions, so catch-up,
//! reseed and fencing follow one rule set.

use crate::database::{Database, Role};
use crate::error::{Result, StoreError};
use crate::history::{Comparison, Position, compare};
use crate::journal::RecordBatch;
use crate::record::{Chain, Epoch, Lsn};
use serde::{Deserialize, Serialize};

/// Records one pull answer carries at most.
pub const PULL_RECORDS_MAX: usize = 8192;
/// Bytes one pull answer carries, about.
pub const PULL_BYTES_MAX: usize = 4 << 20;

const MAGIC: &[u8; 4] = b"TPL1";
const HEADER_BYTES_MAX: usize = 64 << 10;

/// What a mirror sends its primary: where it stands and what it has made durable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PullRequest {
    /// The mirror's copy (`None`: it has none yet and must be seeded).
    pub copy: Option<CopyPosition>,
    /// Every record up to this LSN is durable on the mirror.
    pub hardened: Lsn,
}

/// A copy's identity and position, as replication compares them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CopyPosition {
    pub database_id: String,
    pub role: Role,
    pub position: Position,
}

impl CopyPosition {
    pub fn of(db: &Database) -> CopyPosition {
        let id = db.identity();
        CopyPosition {
            database_id: id.database_id.to_hex(),
            role: id.role,
            position: id.position(),
        }
    }

    pub fn epoch(&self) -> Epoch {
        self.position.history.last_epoch()
    }
}

/// The primary's answer to a pull.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PullAnswer {
    /// The records that follow the mirror's LSN (maybe none yet).
    Records {
        epoch: Epoch,
        /// The primary's committed LSN.
        lsn: Lsn,
        /// The oldest record the primary's journal keeps (past its LSN when it keeps none):
        /// what the mirror keeps too (`Database::retain_from`). Absent from older nodes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kept_from: Option<Lsn>,
        #[serde(skip)]
        batch: RecordBatch,
    },
    /// The mirror cannot continue from where it stands: it must be seeded from a full backup.
    Reseed { reason: String },
    /// The asked copy is not primary.
    NotPrimary { role: Role, epoch: Epoch },
    /// The asker holds a newer epoch: the asked copy is a stale primary and must stop writing.
    Fenced { epoch: Epoch },
}

/// The primary's side of a pull: decides from the two positions what the mirror gets.
pub fn serve_pull(db: &Database, req: &PullRequest) -> Result<PullAnswer> {
    let me = db.identity();
    // A copy of a newer epoch learns nothing here, but tells this one it is stale, whatever
    // its role; a copy that is not primary serves nothing else, a seed included.
    if let Some(copy) = &req.copy
        && copy.database_id == me.database_id.to_hex()
        && copy.epoch() > me.epoch
    {
        return Ok(PullAnswer::Fenced {
            epoch: copy.epoch(),
        });
    }
    if me.role != Role::Primary {
        return Ok(PullAnswer::NotPrimary {
            role: me.role,
            epoch: me.epoch,
        });
    }
    let Some(copy) = &req.copy else {
        return Ok(PullAnswer::Reseed {
            reason: "the mirror holds no copy yet".into(),
        });
    };
    if copy.database_id != me.database_id.to_hex() {
        return Ok(PullAnswer::Reseed {
            reason: format!(
                "the mirror holds database {} and the primary {}",
                copy.database_id, me.database_id
            ),
        });
    }
    let leader = me.position();
    let comparison = compare(&copy.position, &leader, |lsn| {
        db.chain_at(lsn).ok().flatten()
    });
    match comparison {
        Comparison::InSync | Comparison::Behind { .. } => {}
        Comparison::Ahead { records } => {
            return Ok(PullAnswer::Reseed {
                reason: format!(
                    "the mirror holds {records} records past the primary's LSN {}",
                    leader.lsn
                ),
            });
        }
        Comparison::Diverged { at } => {
            return Ok(PullAnswer::Reseed {
                reason: format!("the mirror's history diverged from the primary's at LSN {at}"),
            });
        }
    }
    let from = copy.position.lsn + 1;
    let batch = if from > leader.lsn {
        RecordBatch {
            chain_before: leader.chain,
            records: Vec::new(),
        }
    } else {
        // Capped at the LSN compared above: a record committed since is for the next pull.
        let max = PULL_RECORDS_MAX.min((leader.lsn - from + 1) as usize);
        match db.read_journal(from, max, PULL_BYTES_MAX) {
            Ok(b) if !b.records.is_empty() => b,
            Ok(_) => {
                return Ok(PullAnswer::Reseed {
                    reason: format!("the primary's journal no longer holds LSN {from}"),
                });
            }
            Err(StoreError::JournalPruned { needed, oldest }) => {
                return Ok(PullAnswer::Reseed {
                    reason: format!(
                        "the primary's journal no longer holds LSN {needed} (oldest kept: {oldest})"
                    ),
                });
            }
            Err(e) => return Err(e),
        }
    };
    Ok(PullAnswer::Records {
        epoch: me.epoch,
        lsn: leader.lsn,
        kept_from: Some(db.journal_stats().oldest_lsn.unwrap_or(leader.lsn + 1)),
        batch,
    })
}

/// Encodes an answer: magic, a JSON header, then the records as length-prefixed frames.
pub fn encode_answer(answer: &PullAnswer) -> Vec<u8> {
    let header = serde_json::to_vec(answer).expect("the answer serializes");
    let empty = RecordBatch::default();
    let batch = match answer {
        PullAnswer::Records { batch, .. } => batch,
        _ => &empty,
    };
    let body: usize = batch.records.iter().map(|r| r.len() + 4).sum();
    let mut out = Vec::with_capacity(4 + 4 + header.len() + 16 + 4 + body);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&batch.chain_before.0);
    out.extend_from_slice(&(batch.records.len() as u32).to_le_bytes());
    for r in &batch.records {
        out.extend_from_slice(&(r.len() as u32).to_le_bytes());
        out.extend_from_slice(r);
    }
    out
}

/// Decodes what `encode_answer` wrote; refuses anything else with what is wrong.
pub fn decode_answer(bytes: &[u8]) -> Result<PullAnswer> {
    let mut at = 0usize;
    let mut take = |n: usize, what: &str| -> Result<&[u8]> {
        if bytes.len() < at + n {
            return Err(StoreError::Corrupt(format!(
                "replication answer truncated in its {what} ({} bytes)",
                bytes.len()
            )));
        }
        let s = &bytes[at..at + n];
        at += n;
        Ok(s)
    };
    if take(4, "magic")? != MAGIC {
        return Err(StoreError::Corrupt("not a replication answer".into()));
    }
    let u32_at = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize;
    let header_len = u32_at(take(4, "header length")?);
    if header_len > HEADER_BYTES_MAX {
        return Err(StoreError::Corrupt(format!(
            "replication answer header of {header_len} bytes"
        )));
    }
    let mut answer: PullAnswer = serde_json::from_slice(take(header_len, "header")?)
        .map_err(|e| StoreError::Corrupt(format!("replication answer header: {e}")))?;
    let chain_before = Chain::from_slice(take(16, "chain")?)?;
    let n = u32_at(take(4, "record count")?);
    if n > PULL_RECORDS_MAX {
        return Err(StoreError::Corrupt(format!(
            "replication answer with {n} records (at most {PULL_RECORDS_MAX})"
        )));
    }
    let mut records = Vec::with_capacity(n);
    for _ in 0..n {
        let len = u32_at(take(4, "record length")?);
        records.push(take(len, "records")?.to_vec());
    }
    if at != bytes.len() {
        return Err(StoreError::Corrupt(format!(
            "replication answer has {} bytes after its records",
            bytes.len() - at
        )));
    }
    if let PullAnswer::Records { batch, .. } = &mut answer {
        *batch = RecordBatch {
            chain_before,
            records,
        };
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::database::Options;
    use crate::schema::Migration;
    use rusqlite::types::Value;

    const SCHEMA: &[Migration] = &[Migration {
        version: 1,
        name: "t",
        sql: "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)",
    }];

    fn put(db: &Database, id: i64) {
        db.write(move |tx| tx.insert("t", vec![Value::Integer(id), Value::Text("v".into())]))
            .unwrap();
    }

    /// A primary in `dir/p` with `rows` rows, one commit each.
    fn primary_with(dir: &std::path::Path, rows: i64) -> Database {
        let primary = Database::create(&dir.join("p"), "d", Options::default()).unwrap();
        primary.migrate(SCHEMA).unwrap();
        for i in 0..rows {
            put(&primary, i);
        }
        primary
    }

    /// An empty mirror of `primary` in `dir/m`.
    fn empty_mirror_of(dir: &std::path::Path, primary: &Database) -> Database {
        let id = primary.identity();
        Database::create_copy(
            &dir.join("m"),
            "d",
            id.database_id,
            Role::Mirror,
            Options::default(),
        )
        .unwrap()
    }

    fn pull(primary: &Database, mirror: Option<&Database>) -> PullAnswer {
        let req = PullRequest {
            copy: mirror.map(CopyPosition::of),
            hardened: mirror.map(|m| m.identity().lsn).unwrap_or(0),
        };
        decode_answer(&encode_answer(&serve_pull(primary, &req).unwrap())).unwrap()
    }

    /// What `read_journal` and `chain_at` answer from the newest records kept in memory is
    /// what the journal in SQLite answers, on a primary (its commits) and on a mirror (what it
    /// applied); before the journal's oldest record, both refuse alike.
    #[test]
    fn the_records_kept_in_memory_read_as_the_journal_does() {
        let dir = tempfile::tempdir().unwrap();
        let primary = primary_with(dir.path(), 40);
        let id = primary.identity();
        let mirror = empty_mirror_of(dir.path(), &primary);
        for (from, n) in [(1, 7), (8, 20), (28, 14)] {
            let batch = primary.read_journal(from, n, usize::MAX).unwrap();
            mirror.apply(batch, None).unwrap();
        }
        assert_eq!(mirror.identity().chain, id.chain);
        for db in [&primary, &mirror] {
            let last = db.identity().lsn;
            assert!(db.recent().chain_at(last).is_some(), "kept");
            for from in 1..=last {
                for (max, bytes) in [(1, usize::MAX), (5, usize::MAX), (100, 1), (100, 300)] {
                    let kept = db.read_journal(from, max, bytes).unwrap();
                    let sql = db
                        .read(|c| crate::journal::read(c, from, max, bytes))
                        .unwrap();
                    assert_eq!(kept, sql, "from {from}, {max} records, {bytes} bytes");
                }
                let sql = db.read(|c| crate::journal::chain_at(c, from)).unwrap();
                assert_eq!(db.chain_at(from).unwrap(), sql, "chain at {from}");
            }
        }
    }

    #[test]
    fn a_mirror_catches_up_and_a_diverged_or_stale_copy_is_told_so() {
        let dir = tempfile::tempdir().unwrap();
        let primary = primary_with(dir.path(), 10);
        assert!(matches!(pull(&primary, None), PullAnswer::Reseed { .. }));
        let mirror = empty_mirror_of(dir.path(), &primary);
        // An empty copy continues from LSN 1 while the journal holds it.
        let PullAnswer::Records { batch, lsn, .. } = pull(&primary, Some(&mirror)) else {
            panic!("records expected");
        };
        assert_eq!(lsn, 11);
        mirror.apply(batch, None).unwrap();
        assert_eq!(mirror.identity().chain, primary.identity().chain);
        let PullAnswer::Records { batch, .. } = pull(&primary, Some(&mirror)) else {
            panic!("records expected");
        };
        assert!(batch.records.is_empty());

        // The mirror takes over (new epoch) and writes; the old primary is fenced by its pull.
        mirror.recover(None).unwrap();
        put(&mirror, 100);
        assert_eq!(
            pull(&primary, Some(&mirror)),
            PullAnswer::Fenced { epoch: 2 }
        );
        // The old primary wrote past the fork meanwhile: it diverged and must be reseeded.
        put(&primary, 200);
        primary.set_role(Role::Mirror).unwrap();
        let PullAnswer::Reseed { reason } = pull(&mirror, Some(&primary)) else {
            panic!("reseed expected");
        };
        assert!(reason.contains("diverged"), "{reason}");
        // Asked by the newer copy, the old one keeps saying it is stale, whatever its role.
        assert_eq!(
            pull(&primary, Some(&mirror)),
            PullAnswer::Fenced { epoch: 2 }
        );
        // A copy of the same epoch that is not primary says so.
        let other = Database::create_copy(
            &dir.path().join("o"),
            "d",
            primary.identity().database_id,
            Role::Mirror,
            Options::default(),
        )
        .unwrap();
        other
            .apply(primary.read_journal(1, 5, 1 << 20).unwrap(), None)
            .unwrap();
        assert_eq!(
            pull(&primary, Some(&other)),
            PullAnswer::NotPrimary {
                role: Role::Mirror,
                epoch: 1
            }
        );
        // A copy that is not primary seeds nothing: asked by a node without a copy, it says
        // what it is; the primary answers that one with a reseed.
        assert_eq!(
            pull(&primary, None),
            PullAnswer::NotPrimary {
                role: Role::Mirror,
                epoch: 1
            }
        );
        let PullAnswer::Reseed { reason } = pull(&mirror, None) else {
            panic!("reseed expected");
        };
        assert!(reason.contains("no copy"), "{reason}");
    }

    #[test]
    fn damaged_answers_are_refused() {
        let answer = PullAnswer::Records {
            epoch: 1,
            lsn: 2,
            kept_from: Some(1),
            batch: RecordBatch {
                chain_before: Chain([7; 16]),
                records: vec![vec![1, 2, 3], vec![4]],
            },
        };
        let bytes = encode_answer(&answer);
        assert_eq!(decode_answer(&bytes).unwrap(), answer);
        for cut in 0..bytes.len() {
            assert!(decode_answer(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_answer(&longer).is_err());
    }
}
