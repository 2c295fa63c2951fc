//! The journal: every committed record, kept in the database file itself, written in the same
//! SQLite transaction as the rows it describes.
//!
//! Records are stored in **segments**, one per group commit: a row of `_tandem_journal` holding
//! records `first_lsn..=last_lsn` as `(len u32, record)*`, with the chain before and after. A
//! reader gets records one by one; segment boundaries mean nothing outside this file.
//! A segment's body starts with a format byte: 0, the records as they are — what this build
//! writes — or 1, one LZ4 block of them, which earlier builds wrote when it was smaller and
//! which is still read. Compressing took the writer thread about a tenth of its time, more than
//! the smaller WAL gave back, on every commit and every mirror's apply; the price is a journal
//! about twice as big while kept, and bigger full copies (docs/performance-log.md). Records
//! themselves — what the chain covers, what backups and mirrors carry — are never compressed.
//! Records leave the journal only when every registered consumer (log backup, mirror, backup
//! service) has a durable cursor past them.

use crate::error::{Result, StoreError};
use crate::record::{Chain, Lsn, peek_header};
use rusqlite::{Connection, OptionalExtension, params};
use std::ops::Range;

/// Records read from a journal or a log backup, ready to apply on another copy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecordBatch {
    /// The chain just before the first record.
    pub chain_before: Chain,
    /// Encoded records, in LSN order, contiguous.
    pub records: Vec<Vec<u8>>,
}

/// Size and reach of a journal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct JournalStats {
    /// Oldest LSN still in the journal, if any record is.
    pub oldest_lsn: Option<Lsn>,
    pub records: u64,
    pub bytes: u64,
}

/// A segment's plain body as it is built, record by record: the format byte, then
/// `(len u32, record)*`, with the chain after each record. The writer encodes each record
/// straight into it, and the same buffer then goes, whole, to the newest records kept in memory
/// (`recent.rs`): one allocation per group, not two per record.
pub(crate) struct Segment {
    plain: Vec<u8>,
    /// Where each record is in `plain`.
    spans: Vec<Range<usize>>,
    /// The chain before the first record, and after each.
    chain_before: Chain,
    chains: Vec<Chain>,
}

impl Segment {
    /// An empty segment continuing `chain_before`, room made for `records` of `bytes` in all.
    pub(crate) fn with_capacity(chain_before: Chain, records: usize, bytes: usize) -> Segment {
        let mut plain = Vec::with_capacity(1 + bytes + 4 * records);
        plain.push(SEGMENT_PLAIN);
        Segment {
            plain,
            spans: Vec::with_capacity(records),
            chain_before,
            chains: Vec::with_capacity(records),
        }
    }

    /// Appends the record that `write` writes, and its chain; returns the record.
    pub(crate) fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) -> &[u8] {
        let at = self.plain.len();
        self.plain.extend_from_slice(&[0; 4]);
        write(&mut self.plain);
        let len = self.plain.len() - at - 4;
        self.plain[at..at + 4].copy_from_slice(&(len as u32).to_le_bytes());
        self.spans.push(at + 4..self.plain.len());
        let record = &self.plain[at + 4..];
        self.chains.push(self.chain().next(record));
        record
    }

    pub(crate) fn push(&mut self, record: &[u8]) {
        self.push_with(|out| out.extend_from_slice(record));
    }

    /// Empty again, continuing the same chain.
    pub(crate) fn clear(&mut self) {
        self.plain.truncate(1);
        self.spans.clear();
        self.chains.clear();
    }

    /// The chain after the last record (before the first when there is none).
    pub(crate) fn chain(&self) -> Chain {
        self.chains.last().copied().unwrap_or(self.chain_before)
    }

    /// Records in the segment.
    pub(crate) fn len(&self) -> usize {
        self.spans.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The body to store: the format byte (plain), then the records.
    pub(crate) fn body(&self) -> &[u8] {
        &self.plain
    }

    /// The plain body, where each record is in it, the chain before the first and after each.
    pub(crate) fn into_parts(self) -> (Vec<u8>, Vec<Range<usize>>, Chain, Vec<Chain>) {
        (self.plain, self.spans, self.chain_before, self.chains)
    }
}

#[cfg(test)]
pub(crate) fn encode_segment(records: &[&[u8]]) -> Vec<u8> {
    let mut segment = Segment::with_capacity(
        Chain::default(),
        records.len(),
        records.iter().map(|r| r.len()).sum(),
    );
    for r in records {
        segment.push(r);
    }
    segment.body().to_vec()
}

/// A plain segment body as earlier builds stored it when LZ4 made it smaller.
#[cfg(test)]
pub(crate) fn compress_segment(plain: &[u8]) -> Vec<u8> {
    assert_eq!(plain[0], SEGMENT_PLAIN);
    let records = &plain[1..];
    let mut body = vec![SEGMENT_LZ4];
    body.extend_from_slice(&(records.len() as u32).to_le_bytes());
    body.extend_from_slice(&lz4_flex::block::compress(records));
    body
}

/// A segment body's first byte: its records as they are, or LZ4-compressed (then a `u32`
/// length of the records uncompressed, then one LZ4 block; written by earlier builds).
pub(crate) const SEGMENT_PLAIN: u8 = 0;

/// The cursor of a copy that is not primary: its journal keeps what its upstream keeps
/// (`Database::retain_from`).
pub const UPSTREAM_CONSUMER: &str = "upstream";
const SEGMENT_LZ4: u8 = 1;

/// The `(len u32, record)*` bytes of a segment body.
pub(crate) fn unpack_segment(body: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>> {
    match body.split_first() {
        Some((&SEGMENT_PLAIN, rest)) => Ok(std::borrow::Cow::Borrowed(rest)),
        Some((&SEGMENT_LZ4, rest)) if rest.len() >= 4 => {
            let (len, block) = rest.split_at(4);
            let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
            // LZ4 expands at most 255-fold: a larger claim is damage, not data to allocate for.
            if len > block.len().saturating_mul(255) {
                return Err(StoreError::Corrupt(format!(
                    "journal segment claims {len} bytes from a {}-byte LZ4 block",
                    block.len()
                )));
            }
            let plain = lz4_flex::block::decompress(block, len).map_err(|e| {
                StoreError::Corrupt(format!("journal segment does not decompress: {e}"))
            })?;
            if plain.len() != len {
                return Err(StoreError::Corrupt(format!(
                    "journal segment decompresses to {} bytes, {len} expected",
                    plain.len()
                )));
            }
            Ok(std::borrow::Cow::Owned(plain))
        }
        Some((format, _)) => Err(StoreError::Corrupt(format!(
            "journal segment of unknown format {format} (or truncated)"
        ))),
        None => Err(StoreError::Corrupt("journal segment is empty".into())),
    }
}

/// Splits a segment's records (its body unpacked) into records.
pub(crate) fn decode_segment(body: &[u8]) -> Result<Vec<&[u8]>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < body.len() {
        if body.len() - at < 4 {
            return Err(StoreError::Corrupt(format!(
                "journal segment truncated at byte {at}"
            )));
        }
        let n = u32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes")) as usize;
        at += 4;
        if body.len() - at < n {
            return Err(StoreError::Corrupt(format!(
                "journal segment record at byte {at} claims {n} bytes, {} remain",
                body.len() - at
            )));
        }
        out.push(&body[at..at + n]);
        at += n;
    }
    Ok(out)
}

pub(crate) fn insert_segment(
    conn: &Connection,
    first: Lsn,
    last: Lsn,
    chain_before: &Chain,
    chain_after: &Chain,
    body: &[u8],
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO _tandem_journal (first_lsn, last_lsn, chain_before, chain_after, body) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        first as i64,
        last as i64,
        &chain_before.0[..],
        &chain_after.0[..],
        body
    ])?;
    Ok(())
}

/// Reads records `from..` (at most `records_max` records and about `bytes_max` bytes, at least
/// one record when there is one). Checks contiguity and the chain of every segment it touches.
pub(crate) fn read(
    conn: &Connection,
    from: Lsn,
    records_max: usize,
    bytes_max: usize,
) -> Result<RecordBatch> {
    assert!(from >= 1, "LSNs start at 1");
    let oldest: Option<i64> = conn
        .query_row("SELECT MIN(first_lsn) FROM _tandem_journal", [], |r| {
            r.get(0)
        })
        .optional()?
        .flatten();
    let mut stmt = conn.prepare_cached(
        // A seek on the primary key to the segment holding `from` (last_lsn has no index: a
        // scan of the whole journal per read made every mirror pull slower as it grew).
        "SELECT first_lsn, last_lsn, chain_before, chain_after, body FROM _tandem_journal \
         WHERE first_lsn >= COALESCE((SELECT MAX(first_lsn) FROM _tandem_journal \
         WHERE first_lsn <= ?1), 0) AND last_lsn >= ?1 ORDER BY first_lsn",
    )?;
    let mut rows = stmt.query(params![from as i64])?;
    let mut batch = RecordBatch::default();
    let mut expect = from;
    let mut bytes = 0usize;
    let mut first_segment = true;
    'segments: while let Some(row) = rows.next()? {
        let first = row.get::<_, i64>(0)? as Lsn;
        let last = row.get::<_, i64>(1)? as Lsn;
        let before = Chain::from_slice(&row.get::<_, Vec<u8>>(2)?)?;
        let after = Chain::from_slice(&row.get::<_, Vec<u8>>(3)?)?;
        if first_segment && first > from {
            return Err(StoreError::JournalPruned {
                needed: from,
                oldest: oldest.map(|o| o as Lsn).unwrap_or(first),
            });
        }
        if !first_segment && first != expect {
            return Err(StoreError::Corrupt(format!(
                "journal gap: segment starts at LSN {first}, expected {expect}"
            )));
        }
        first_segment = false;
        let body: Vec<u8> = row.get(4)?;
        let plain = unpack_segment(&body)?;
        let records = decode_segment(&plain)?;
        if records.len() as u64 != last - first + 1 {
            return Err(StoreError::Corrupt(format!(
                "journal segment {first}..={last} holds {} records",
                records.len()
            )));
        }
        let mut chain = before;
        for (i, rec) in records.iter().enumerate() {
            let lsn = first + i as u64;
            let header = peek_header(rec)?;
            if header.lsn != lsn {
                return Err(StoreError::Corrupt(format!(
                    "journal segment {first}..={last}: record {i} has LSN {}, expected {lsn}",
                    header.lsn
                )));
            }
            if lsn == from {
                batch.chain_before = chain;
            }
            chain = chain.next(rec);
            if lsn >= from && lsn == expect {
                let full = batch.records.len() >= records_max
                    || (bytes >= bytes_max && !batch.records.is_empty());
                if full {
                    break 'segments;
                }
                bytes += rec.len();
                batch.records.push(rec.to_vec());
                expect += 1;
            }
        }
        if chain != after {
            return Err(StoreError::Corrupt(format!(
                "journal segment {first}..={last}: chain {chain} recomputed, {after} stored"
            )));
        }
    }
    Ok(batch)
}

/// The chain just after `lsn`, if the journal still holds that record (or `lsn` is the start of
/// a segment's chain).
pub(crate) fn chain_at(conn: &Connection, lsn: Lsn) -> Result<Option<Chain>> {
    // A seek on the primary key: the last segment starting at or before `lsn + 1` holds `lsn`
    // or starts just after it (a range condition on last_lsn, which has no index, would scan
    // the journal from its start: every mirror pull compares a position).
    let row: Option<(i64, i64, Vec<u8>, Vec<u8>)> = conn
        .prepare_cached(
            "SELECT first_lsn, last_lsn, chain_before, chain_after FROM _tandem_journal \
             WHERE first_lsn = (SELECT MAX(first_lsn) FROM _tandem_journal \
             WHERE first_lsn <= ?1 + 1)",
        )?
        .query_row(params![lsn as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let Some((first, last, before, after)) = row else {
        return Ok(None);
    };
    let (first, last) = (first as Lsn, last as Lsn);
    if first == lsn + 1 {
        return Chain::from_slice(&before).map(Some);
    }
    if last < lsn {
        return Ok(None);
    }
    if last == lsn {
        return Chain::from_slice(&after).map(Some);
    }
    let body: Vec<u8> = conn
        .prepare_cached("SELECT body FROM _tandem_journal WHERE first_lsn = ?1")?
        .query_row(params![first as i64], |r| r.get(0))?;
    let mut chain = Chain::from_slice(&before)?;
    for (i, rec) in decode_segment(&unpack_segment(&body)?)?.iter().enumerate() {
        chain = chain.next(rec);
        if first + i as u64 == lsn {
            return Ok(Some(chain));
        }
    }
    Ok(None)
}

pub(crate) fn stats(conn: &Connection) -> Result<JournalStats> {
    let (oldest, newest, bytes): (Option<i64>, Option<i64>, Option<i64>) = conn.query_row(
        "SELECT MIN(first_lsn), MAX(last_lsn), SUM(length(body)) FROM _tandem_journal",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    Ok(JournalStats {
        oldest_lsn: oldest.map(|o| o as Lsn),
        records: match (oldest, newest) {
            (Some(o), Some(n)) => (n - o + 1) as u64,
            _ => 0,
        },
        bytes: bytes.unwrap_or(0) as u64,
    })
}

/// Where the newest segment ends: the copy's position.
pub(crate) struct Newest {
    pub(crate) last_lsn: Lsn,
    pub(crate) chain_after: Chain,
    /// The time of its last record.
    pub(crate) time_ms: i64,
}

/// The last LSN of the newest segment, if any: a seek on the primary key.
pub(crate) fn newest_lsn(conn: &Connection) -> Result<Option<Lsn>> {
    Ok(conn
        .query_row(
            "SELECT last_lsn FROM _tandem_journal ORDER BY first_lsn DESC LIMIT 1",
            [],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
        .map(|l| l as Lsn))
}

pub(crate) fn newest(conn: &Connection) -> Result<Option<Newest>> {
    let row: Option<(i64, Vec<u8>, Vec<u8>)> = conn
        .query_row(
            "SELECT last_lsn, chain_after, body FROM _tandem_journal \
             ORDER BY first_lsn DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((last_lsn, chain_after, body)) = row else {
        return Ok(None);
    };
    let plain = unpack_segment(&body)?;
    let records = decode_segment(&plain)?;
    let last = records.last().ok_or_else(|| {
        StoreError::Corrupt(format!("journal segment ending at LSN {last_lsn} is empty"))
    })?;
    let header = peek_header(last)?;
    if header.lsn != last_lsn as Lsn {
        return Err(StoreError::Corrupt(format!(
            "journal segment ending at LSN {last_lsn} ends with a record of LSN {}",
            header.lsn
        )));
    }
    Ok(Some(Newest {
        last_lsn: last_lsn as Lsn,
        chain_after: Chain::from_slice(&chain_after)?,
        time_ms: header.time_ms,
    }))
}

/// What pruning removed.
#[derive(Default)]
pub(crate) struct Removed {
    pub(crate) segments: usize,
    pub(crate) records: u64,
    pub(crate) bytes: u64,
}

/// Removes the oldest `segments` segments whose records are all at or below `upto`.
pub(crate) fn prune_some(conn: &Connection, upto: Lsn, segments: usize) -> Result<Removed> {
    // `first_lsn <= ?1` bounds the scan on the primary key (segments never overlap).
    const SLICE: &str = "SELECT first_lsn FROM _tandem_journal \
                         WHERE first_lsn <= ?1 AND last_lsn <= ?1 ORDER BY first_lsn LIMIT ?2";
    let limit = i64::try_from(segments).unwrap_or(i64::MAX);
    let (count, records, bytes): (i64, Option<i64>, Option<i64>) = conn
        .prepare_cached(&format!(
            "SELECT COUNT(*), SUM(last_lsn - first_lsn + 1), SUM(length(body)) \
             FROM _tandem_journal WHERE first_lsn IN ({SLICE})"
        ))?
        .query_row(params![upto as i64, limit], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    if count > 0 {
        conn.prepare_cached(&format!(
            "DELETE FROM _tandem_journal WHERE first_lsn IN ({SLICE})"
        ))?
        .execute(params![upto as i64, limit])?;
    }
    Ok(Removed {
        segments: count as usize,
        records: records.unwrap_or(0) as u64,
        bytes: bytes.unwrap_or(0) as u64,
    })
}

/// The first LSN of the oldest segment, if any: a seek on the primary key.
pub(crate) fn oldest_lsn(conn: &Connection) -> Result<Option<Lsn>> {
    Ok(conn
        .query_row("SELECT MIN(first_lsn) FROM _tandem_journal", [], |r| {
            r.get::<_, Option<i64>>(0)
        })?
        .map(|l| l as Lsn))
}

/// A named reader of the journal with a durable cursor: the last LSN it no longer needs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Consumer {
    pub name: String,
    pub lsn: Lsn,
}

pub(crate) fn consumers(conn: &Connection) -> Result<Vec<Consumer>> {
    let mut stmt = conn.prepare_cached("SELECT name, lsn FROM _tandem_consumers ORDER BY name")?;
    let rows = stmt.query_map([], |r| {
        Ok(Consumer {
            name: r.get(0)?,
            lsn: r.get::<_, i64>(1)? as Lsn,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(text: &str, n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("{i}: {text}").into_bytes())
            .collect()
    }

    fn read_back(body: &[u8]) -> Vec<Vec<u8>> {
        let plain = unpack_segment(body).expect("unpacks");
        decode_segment(&plain)
            .expect("decodes")
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect()
    }

    fn segment(records: &[Vec<u8>]) -> Vec<u8> {
        encode_segment(&records.iter().map(|r| r.as_slice()).collect::<Vec<_>>())
    }

    #[test]
    fn a_segment_is_stored_as_its_records_and_reads_back_the_same() {
        let recs = records("the room said the same thing again and again", 64);
        let body = segment(&recs);
        assert_eq!(body[0], SEGMENT_PLAIN);
        assert_eq!(
            body.len(),
            1 + recs.iter().map(|r| 4 + r.len()).sum::<usize>()
        );
        assert_eq!(read_back(&body), recs);
    }

    #[test]
    fn a_compressed_segment_of_an_earlier_build_reads_back_the_same() {
        let recs = records("the room said the same thing again and again", 64);
        let body = compress_segment(&segment(&recs));
        assert_eq!(body[0], SEGMENT_LZ4);
        assert!(body.len() < recs.iter().map(Vec::len).sum::<usize>() / 2);
        assert_eq!(read_back(&body), recs);
    }

    #[test]
    fn a_damaged_segment_is_corrupt_not_a_panic_or_a_huge_allocation() {
        let recs = records("compressible compressible compressible", 32);
        let body = compress_segment(&segment(&recs));
        let mut cases: Vec<(Vec<u8>, &str)> = Vec::new();
        let mut unknown = body.clone();
        unknown[0] = 7;
        cases.push((unknown, "unknown format 7"));
        let mut huge = body.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        cases.push((huge, "claims"));
        let mut short = body.clone();
        short[1..5].copy_from_slice(&1u32.to_le_bytes());
        cases.push((short, "decompress"));
        cases.push((body[..body.len() / 2].to_vec(), "decompress"));
        cases.push((Vec::new(), "empty"));
        for (bad, says) in cases {
            let e = unpack_segment(&bad).expect_err("damage is found");
            assert!(
                matches!(&e, StoreError::Corrupt(m) if m.contains(says)),
                "{e} should say {says}"
            );
        }
    }
}
