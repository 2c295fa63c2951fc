//! A journal record: the row changes of one committed transaction, in the binary form that every
//! replication path (mirroring, log backups, the backup service) carries unchanged.
//!
//! Layout (little-endian), documented in `docs/formats.md`:
//! `lsn u64 | epoch u64 | time_ms i64 | op_count u32 | op*` where
//! `op = kind u8 | ...` and values are `tag u8 | payload`.

use crate::error::StoreError;
use rusqlite::types::{ToSqlOutput, Value, ValueRef};

/// Log sequence number: one per committed transaction, contiguous from 1.
pub type Lsn = u64;
/// Raised every time a copy is made writable.
pub type Epoch = u64;

/// Upper bound on one encoded record; a transaction larger than this is refused.
pub const RECORD_BYTES_MAX: usize = 16 * 1024 * 1024;

const OP_INSERT: u8 = 1;
const OP_UPDATE: u8 = 2;
const OP_DELETE: u8 = 3;
const OP_MIGRATE: u8 = 4;

const VALUE_NULL: u8 = 0;
const VALUE_INTEGER: u8 = 1;
const VALUE_REAL: u8 = 2;
const VALUE_TEXT: u8 = 3;
const VALUE_BLOB: u8 = 4;

/// One row change. Rows are complete (every column, in declaration order) so that replay decides
/// nothing: no clock, no random id, no default value is evaluated on a copy.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Insert {
        table: String,
        row: Vec<Value>,
    },
    Update {
        table: String,
        row: Vec<Value>,
    },
    Delete {
        table: String,
        key: Vec<Value>,
    },
    Migrate {
        version: u32,
        name: String,
        sql: String,
    },
}

/// What a row operation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RowKind {
    Insert,
    Update,
    Delete,
}

/// An operation read in place from its encoded record (`visit_ops`): its strings and values
/// borrow the record's bytes, its values a buffer reused from one operation to the next.
pub(crate) enum OpRef<'a, 'v> {
    Row {
        kind: RowKind,
        table: &'a str,
        /// The row (insert, update) or the key (delete).
        values: &'v [ToSqlOutput<'a>],
    },
    Migrate {
        version: u32,
        name: &'a str,
        sql: &'a str,
    },
}

impl OpRef<'_, '_> {
    /// The operation with its own strings and values.
    fn to_owned(&self) -> Op {
        match *self {
            OpRef::Row {
                kind,
                table,
                values,
            } => {
                let table = table.to_string();
                let row = values
                    .iter()
                    .map(|v| match v {
                        ToSqlOutput::Borrowed(v) => owned(*v),
                        _ => unreachable!("read values are borrowed"),
                    })
                    .collect();
                match kind {
                    RowKind::Insert => Op::Insert { table, row },
                    RowKind::Update => Op::Update { table, row },
                    RowKind::Delete => Op::Delete { table, key: row },
                }
            }
            OpRef::Migrate { version, name, sql } => Op::Migrate {
                version,
                name: name.to_string(),
                sql: sql.to_string(),
            },
        }
    }
}

/// A value with its own text or bytes (text read from a record was checked to be UTF-8).
pub(crate) fn owned(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

/// Reads an encoded record's operations in place and hands each to `f`, in order, with the
/// checks of [`Record::decode`]; `values` is the buffer their values go into. A copy applies
/// records this way: without an allocation per string and value. An error in the record is
/// found when its operation is reached: the caller's transaction is then rolled back.
pub(crate) fn visit_ops<'a>(
    bytes: &'a [u8],
    values: &mut Vec<ToSqlOutput<'a>>,
    f: impl FnMut(OpRef<'a, '_>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    read(bytes, values, f).map(|_| ())
}

/// Checks a whole encoded record, as [`Record::decode`] does, without making anything of its
/// operations; returns its header.
pub(crate) fn check(bytes: &[u8]) -> Result<RecordHeader, StoreError> {
    read(bytes, &mut Vec::new(), |_| Ok(()))
}

/// The one reader of an encoded record: its header, then each operation handed to `f`.
fn read<'a>(
    bytes: &'a [u8],
    values: &mut Vec<ToSqlOutput<'a>>,
    f: impl FnMut(OpRef<'a, '_>) -> Result<(), StoreError>,
) -> Result<RecordHeader, StoreError> {
    let mut r = Reader { bytes, at: 0 };
    let lsn = r.u64()?;
    let epoch = r.u64()?;
    let time_ms = r.u64()? as i64;
    r.ops(values, f)?;
    Ok(RecordHeader {
        lsn,
        epoch,
        time_ms,
    })
}

/// One committed transaction.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub lsn: Lsn,
    pub epoch: Epoch,
    /// Commit time decided by the primary's writer, milliseconds since the Unix epoch.
    pub time_ms: i64,
    pub ops: Vec<Op>,
}

/// The fixed-size prefix of an encoded record, readable without decoding the operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub lsn: Lsn,
    pub epoch: Epoch,
    pub time_ms: i64,
}

pub(crate) const RECORD_HEADER_BYTES: usize = 8 + 8 + 8 + 4;

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out
    }

    /// Bytes of the encoded record.
    pub fn encoded_len(&self) -> usize {
        RECORD_HEADER_BYTES + self.ops.iter().map(op_len).sum::<usize>()
    }

    /// Appends the encoded record to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        encode_header(
            out,
            self.lsn,
            self.epoch,
            self.time_ms,
            self.ops.len() as u32,
        );
        for op in &self.ops {
            encode_op(out, op);
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Record, StoreError> {
        let mut ops = Vec::new();
        let header = read(bytes, &mut Vec::new(), |op| {
            ops.push(op.to_owned());
            Ok(())
        })?;
        Ok(Record {
            lsn: header.lsn,
            epoch: header.epoch,
            time_ms: header.time_ms,
            ops,
        })
    }
}

/// Reads the header of an encoded record without decoding its operations.
pub fn peek_header(bytes: &[u8]) -> Result<RecordHeader, StoreError> {
    if bytes.len() < RECORD_HEADER_BYTES {
        return Err(StoreError::Corrupt(format!(
            "record of {} bytes is shorter than its {RECORD_HEADER_BYTES}-byte header",
            bytes.len()
        )));
    }
    let u = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    Ok(RecordHeader {
        lsn: u(0),
        epoch: u(8),
        time_ms: u(16) as i64,
    })
}

/// The encoded size of an operation, so that a record is written into one allocation.
fn op_len(op: &Op) -> usize {
    let values = |v: &[Value]| -> usize {
        v.iter()
            .map(|v| match v {
                Value::Null => 1,
                Value::Integer(_) | Value::Real(_) => 9,
                Value::Text(s) => 5 + s.len(),
                Value::Blob(b) => 5 + b.len(),
            })
            .sum()
    };
    match op {
        Op::Insert { table, row } | Op::Update { table, row } => 7 + table.len() + values(row),
        Op::Delete { table, key } => 7 + table.len() + values(key),
        Op::Migrate { name, sql, .. } => 13 + name.len() + sql.len(),
    }
}

/// Appends a record's header; its `ops` operations follow, encoded by [`encode_row_op`] and
/// [`encode_migrate`] (a transaction encodes each as it runs, then its header and them).
pub(crate) fn encode_header(out: &mut Vec<u8>, lsn: Lsn, epoch: Epoch, time_ms: i64, ops: u32) {
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&epoch.to_le_bytes());
    out.extend_from_slice(&time_ms.to_le_bytes());
    out.extend_from_slice(&ops.to_le_bytes());
}

fn encode_op(out: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Insert { table, row } => encode_row_op(out, RowKind::Insert, table, row),
        Op::Update { table, row } => encode_row_op(out, RowKind::Update, table, row),
        Op::Delete { table, key } => encode_row_op(out, RowKind::Delete, table, key),
        Op::Migrate { version, name, sql } => encode_migrate(out, *version, name, sql),
    }
}

pub(crate) fn encode_migrate(out: &mut Vec<u8>, version: u32, name: &str, sql: &str) {
    out.push(OP_MIGRATE);
    out.extend_from_slice(&version.to_le_bytes());
    put_bytes(out, name.as_bytes());
    put_bytes(out, sql.as_bytes());
}

pub(crate) fn encode_row_op(out: &mut Vec<u8>, kind: RowKind, table: &str, values: &[Value]) {
    out.push(match kind {
        RowKind::Insert => OP_INSERT,
        RowKind::Update => OP_UPDATE,
        RowKind::Delete => OP_DELETE,
    });
    put_bytes(out, table.as_bytes());
    out.extend_from_slice(&(values.len() as u16).to_le_bytes());
    for v in values {
        encode_value(out, v);
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn encode_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.push(VALUE_NULL),
        Value::Integer(i) => {
            out.push(VALUE_INTEGER);
            out.extend_from_slice(&i.to_le_bytes());
        }
        Value::Real(f) => {
            out.push(VALUE_REAL);
            out.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        Value::Text(s) => {
            out.push(VALUE_TEXT);
            put_bytes(out, s.as_bytes());
        }
        Value::Blob(b) => {
            out.push(VALUE_BLOB);
            put_bytes(out, b);
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn bad(&self, what: String) -> StoreError {
        StoreError::Corrupt(format!("record byte {}: {what}", self.at))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.bytes.len() - self.at < n {
            return Err(self.bad(format!(
                "needs {n} more bytes, has {}",
                self.bytes.len() - self.at
            )));
        }
        let bytes: &'a [u8] = self.bytes;
        let s = &bytes[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, StoreError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32, StoreError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, StoreError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn str(&mut self) -> Result<&'a str, StoreError> {
        let n = self.u32()? as usize;
        let b = self.take(n)?;
        std::str::from_utf8(b).map_err(|_| self.bad("text is not UTF-8".into()))
    }

    fn value_ref(&mut self) -> Result<ValueRef<'a>, StoreError> {
        Ok(match self.u8()? {
            VALUE_NULL => ValueRef::Null,
            VALUE_INTEGER => ValueRef::Integer(self.u64()? as i64),
            VALUE_REAL => ValueRef::Real(f64::from_bits(self.u64()?)),
            VALUE_TEXT => ValueRef::Text(self.str()?.as_bytes()),
            VALUE_BLOB => {
                let n = self.u32()? as usize;
                ValueRef::Blob(self.take(n)?)
            }
            tag => return Err(self.bad(format!("unknown value tag {tag}"))),
        })
    }

    /// The operations after the header, each handed to `f` as it is read (its values in
    /// `values`), then the check that nothing trails them.
    fn ops(
        &mut self,
        values: &mut Vec<ToSqlOutput<'a>>,
        mut f: impl FnMut(OpRef<'a, '_>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let op_count = self.u32()? as usize;
        // Each op takes at least 4 bytes, which bounds the allocation by the input size.
        if op_count > self.bytes.len() / 4 {
            return Err(self.bad(format!("{op_count} operations cannot fit")));
        }
        for _ in 0..op_count {
            let kind = match self.u8()? {
                OP_INSERT => RowKind::Insert,
                OP_UPDATE => RowKind::Update,
                OP_DELETE => RowKind::Delete,
                OP_MIGRATE => {
                    let version = self.u32()?;
                    let name = self.str()?;
                    let sql = self.str()?;
                    f(OpRef::Migrate { version, name, sql })?;
                    continue;
                }
                kind => return Err(self.bad(format!("unknown operation kind {kind}"))),
            };
            let table = self.str()?;
            values.clear();
            for _ in 0..self.u16()? {
                values.push(ToSqlOutput::Borrowed(self.value_ref()?));
            }
            f(OpRef::Row {
                kind,
                table,
                values,
            })?;
        }
        if self.at != self.bytes.len() {
            return Err(self.bad(format!("{} trailing bytes", self.bytes.len() - self.at)));
        }
        Ok(())
    }
}

/// Rolling checksum over a copy's records: `chain(n) = xxh3_128(chain(n-1) || record(n))`,
/// starting from a value derived from the `database_id`. Equal `(lsn, chain)` means equal data.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Chain(pub [u8; 16]);

impl Chain {
    pub fn genesis(database_id: &crate::DatabaseId) -> Chain {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(b"tandem-chain-v1");
        h.update(&database_id.0);
        Chain(h.digest128().to_le_bytes())
    }

    /// The chain after appending one encoded record.
    pub fn next(&self, record: &[u8]) -> Chain {
        // One-shot over `chain || record` (the streaming hasher gives the same value, but sets
        // up a 500-byte state per call). Records are small; larger ones stream.
        let mut buf = [0u8; 512];
        if record.len() <= buf.len() - 16 {
            buf[..16].copy_from_slice(&self.0);
            buf[16..16 + record.len()].copy_from_slice(record);
            return Chain(xxhash_rust::xxh3::xxh3_128(&buf[..16 + record.len()]).to_le_bytes());
        }
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&self.0);
        h.update(record);
        Chain(h.digest128().to_le_bytes())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Result<Chain, StoreError> {
        let bytes = hex::decode(s).map_err(|e| StoreError::Invalid(format!("chain {s:?}: {e}")))?;
        let arr: [u8; 16] = bytes
            .try_into()
            .map_err(|_| StoreError::Invalid(format!("chain {s:?} is not 16 bytes")))?;
        Ok(Chain(arr))
    }

    pub fn from_slice(b: &[u8]) -> Result<Chain, StoreError> {
        let arr: [u8; 16] = b
            .try_into()
            .map_err(|_| StoreError::Corrupt(format!("chain of {} bytes, expected 16", b.len())))?;
        Ok(Chain(arr))
    }
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Chain({})", self.to_hex())
    }
}

impl std::fmt::Display for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::Integer),
            any::<f64>().prop_map(Value::Real),
            ".{0,40}".prop_map(Value::Text),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Blob),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        let values = || proptest::collection::vec(value(), 0..6);
        prop_oneof![
            ("[a-z]{1,8}", values()).prop_map(|(table, row)| Op::Insert { table, row }),
            ("[a-z]{1,8}", values()).prop_map(|(table, row)| Op::Update { table, row }),
            ("[a-z]{1,8}", values()).prop_map(|(table, key)| Op::Delete { table, key }),
            (any::<u32>(), "[a-z]{0,8}", ".{0,60}").prop_map(|(version, name, sql)| Op::Migrate {
                version,
                name,
                sql
            }),
        ]
    }

    proptest! {
        #[test]
        fn records_round_trip(lsn: u64, epoch: u64, time_ms: i64, ops in proptest::collection::vec(op(), 0..8)) {
            let r = Record { lsn, epoch, time_ms, ops };
            let bytes = r.encode();
            let back = Record::decode(&bytes).unwrap();
            // NaN != NaN, so compare encodings.
            prop_assert_eq!(back.encode(), bytes.clone());
            prop_assert_eq!(peek_header(&bytes).unwrap(), RecordHeader { lsn, epoch, time_ms });
        }

        #[test]
        fn truncated_records_never_decode(ops in proptest::collection::vec(op(), 1..4), cut in 1usize..64) {
            let bytes = Record { lsn: 1, epoch: 1, time_ms: 0, ops }.encode();
            let cut = cut.min(bytes.len());
            prop_assert!(Record::decode(&bytes[..bytes.len() - cut]).is_err());
        }
    }

    #[test]
    fn encoded_size_is_known_before_encoding() {
        let ops = vec![
            Op::Insert {
                table: "t".into(),
                row: vec![
                    Value::Null,
                    Value::Integer(-3),
                    Value::Real(1.5),
                    Value::Text("héllo".into()),
                    Value::Blob(vec![1, 2, 3]),
                ],
            },
            Op::Update {
                table: "rooms".into(),
                row: vec![Value::Integer(1)],
            },
            Op::Delete {
                table: "x".into(),
                key: vec![Value::Text(String::new())],
            },
            Op::Migrate {
                version: 2,
                name: "two".into(),
                sql: "CREATE TABLE y (a INTEGER PRIMARY KEY)".into(),
            },
        ];
        let record = Record {
            lsn: 9,
            epoch: 2,
            time_ms: 5,
            ops,
        };
        let bytes = record.encode();
        assert_eq!(
            bytes.len(),
            28 + record.ops.iter().map(op_len).sum::<usize>()
        );
        assert_eq!(bytes.capacity(), bytes.len());
    }

    #[test]
    fn chain_is_the_hash_of_chain_then_record_for_any_record_size() {
        let g = Chain::genesis(&crate::DatabaseId([7; 16]));
        for len in [0, 1, 200, 495, 496, 497, 4000] {
            let record: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let mut whole = g.0.to_vec();
            whole.extend_from_slice(&record);
            let want = xxhash_rust::xxh3::xxh3_128(&whole).to_le_bytes();
            assert_eq!(g.next(&record).0, want, "record of {len} bytes");
        }
    }

    #[test]
    fn chain_depends_on_order_and_content() {
        let id = crate::DatabaseId([7; 16]);
        let g = Chain::genesis(&id);
        assert_ne!(g.next(b"a").next(b"b"), g.next(b"b").next(b"a"));
        assert_eq!(g.next(b"a"), g.next(b"a"));
        assert_ne!(Chain::genesis(&crate::DatabaseId([8; 16])), g);
    }
}
