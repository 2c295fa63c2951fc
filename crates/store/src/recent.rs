//! The newest journal records, kept in memory as the writer commits them. What a mirror or a
//! standby pulls is almost always what was just committed; reading it back from SQLite — a
//! query, a segment's LZ4 block, the chain recomputed from the segment's start, for the pull and
//! again for the chain at the puller's position — cost the primary's replication about a
//! seventh of a core under load (`bench mirror`). A read that starts before what is kept here, or
//! before the oldest record the journal still holds, goes to SQLite as before: the answer is the
//! same either way, records and chains byte for byte.

use crate::journal::{RecordBatch, Segment};
use crate::record::{Chain, Lsn};
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// Bytes of records kept (oldest dropped first).
const RECENT_BYTES_MAX: usize = 8 << 20;

#[derive(Default)]
pub(crate) struct Recent {
    ring: Mutex<Ring>,
}

#[derive(Default)]
struct Ring {
    /// LSN of `records[0]`.
    first: Lsn,
    /// The chain just before `records[0]`.
    chain_before: Chain,
    /// Each record with the chain just after it.
    records: VecDeque<Kept>,
    /// Bytes of the records (their groups' buffers may hold a little more).
    bytes: usize,
}

/// A record: where it is in its group's buffer (a segment's plain body, shared by the group's
/// records: a read takes its records' buffers under the lock and copies the records after, so
/// a large pull never holds the writer up), and the chain just after it.
struct Kept {
    group: Arc<Vec<u8>>,
    span: Range<usize>,
    chain: Chain,
}

impl Ring {
    fn last(&self) -> Option<(Lsn, Chain)> {
        self.records
            .back()
            .map(|k| (self.first + self.records.len() as u64 - 1, k.chain))
    }
}

impl Recent {
    /// The records of `segment`, just committed from LSN `first` on. A push that does not
    /// continue what is kept (another position after a restore, a reseed, a rollback) starts
    /// over from it.
    pub(crate) fn push(&self, first: Lsn, segment: Segment) {
        let (group, spans, chain_before, chains) = segment.into_parts();
        if spans.is_empty() {
            return;
        }
        let group = Arc::new(group);
        let mut ring = self.ring.lock().expect("recent lock");
        let continues = ring
            .last()
            .is_some_and(|(lsn, chain)| lsn + 1 == first && chain == chain_before);
        if !continues {
            *ring = Ring {
                first,
                chain_before,
                ..Ring::default()
            };
        }
        for (span, chain) in spans.into_iter().zip(chains) {
            ring.bytes += span.len();
            ring.records.push_back(Kept {
                group: group.clone(),
                span,
                chain,
            });
        }
        while ring.bytes > RECENT_BYTES_MAX && ring.records.len() > 1 {
            let kept = ring.records.pop_front().expect("more than one");
            ring.bytes -= kept.span.len();
            ring.chain_before = kept.chain;
            ring.first += 1;
        }
    }

    /// Forgets everything (the journal was emptied).
    pub(crate) fn clear(&self) {
        *self.ring.lock().expect("recent lock") = Ring::default();
    }

    /// Records from `from` on, as `journal::read` gives them (at most `records_max`, about
    /// `bytes_max` bytes, at least one), when every one of them is kept here and `from` is not
    /// older than `oldest`, the journal's oldest record.
    pub(crate) fn read(
        &self,
        from: Lsn,
        records_max: usize,
        bytes_max: usize,
        oldest: Option<Lsn>,
    ) -> Option<RecordBatch> {
        if oldest.is_none_or(|o| from < o) || records_max == 0 {
            return None;
        }
        let (chain_before, taken) = {
            let ring = self.ring.lock().expect("recent lock");
            let (last, _) = ring.last()?;
            if from < ring.first || from > last {
                return None;
            }
            let start = (from - ring.first) as usize;
            let chain_before = match start {
                0 => ring.chain_before,
                i => ring.records[i - 1].chain,
            };
            let mut taken: Vec<(Arc<Vec<u8>>, Range<usize>)> = Vec::new();
            let mut bytes = 0;
            for kept in ring.records.range(start..) {
                if taken.len() >= records_max || (bytes >= bytes_max && !taken.is_empty()) {
                    break;
                }
                bytes += kept.span.len();
                taken.push((kept.group.clone(), kept.span.clone()));
            }
            (chain_before, taken)
        };
        Some(RecordBatch {
            chain_before,
            records: taken
                .iter()
                .map(|(g, span)| g[span.clone()].to_vec())
                .collect(),
        })
    }

    /// The chain just after `lsn`, when it is kept here.
    pub(crate) fn chain_at(&self, lsn: Lsn) -> Option<Chain> {
        let ring = self.ring.lock().expect("recent lock");
        let (last, _) = ring.last()?;
        if lsn + 1 == ring.first {
            return Some(ring.chain_before);
        }
        if lsn < ring.first || lsn > last {
            return None;
        }
        Some(ring.records[(lsn - ring.first) as usize].chain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pushes records as the writer does: one group's segment, which chains them.
    fn push(recent: &Recent, first: Lsn, before: Chain, records: Vec<(Vec<u8>, Chain)>) {
        let mut segment = Segment::with_capacity(before, records.len(), 0);
        for (r, _) in &records {
            segment.push(r);
        }
        recent.push(first, segment);
    }

    fn chained(first: Lsn, n: usize, before: Chain) -> Vec<(Vec<u8>, Chain)> {
        let mut chain = before;
        (0..n)
            .map(|i| {
                let bytes = format!("record {}", first + i as u64).into_bytes();
                chain = chain.next(&bytes);
                (bytes, chain)
            })
            .collect()
    }

    #[test]
    fn reads_what_was_pushed_with_the_chain_before_each_start() {
        let recent = Recent::default();
        let genesis = Chain::from_slice(&[7u8; 16]).expect("16 bytes");
        let a = chained(1, 3, genesis);
        let b = chained(4, 2, a[2].1);
        push(&recent, 1, genesis, a.clone());
        push(&recent, 4, a[2].1, b.clone());
        let batch = recent.read(2, 10, 1 << 20, Some(1)).expect("kept");
        assert_eq!(batch.chain_before, a[0].1);
        assert_eq!(batch.records.len(), 4);
        assert_eq!(batch.records[3], b[1].0);
        assert_eq!(
            recent
                .read(1, 2, 1 << 20, Some(1))
                .expect("kept")
                .records
                .len(),
            2
        );
        // At least one record, however small the byte budget.
        assert_eq!(
            recent.read(3, 10, 1, Some(1)).expect("kept").records.len(),
            1
        );
        assert_eq!(recent.chain_at(0), Some(genesis));
        assert_eq!(recent.chain_at(5), Some(b[1].1));
        assert_eq!(recent.chain_at(6), None);
        assert!(recent.read(6, 10, 1 << 20, Some(1)).is_none());
    }

    #[test]
    fn a_read_before_the_journal_s_oldest_record_goes_to_the_journal() {
        let recent = Recent::default();
        let genesis = Chain::from_slice(&[1u8; 16]).expect("16 bytes");
        push(&recent, 1, genesis, chained(1, 5, genesis));
        assert!(recent.read(2, 10, 1 << 20, Some(3)).is_none());
        assert!(recent.read(3, 10, 1 << 20, Some(3)).is_some());
        assert!(recent.read(3, 10, 1 << 20, None).is_none());
    }

    #[test]
    fn a_push_that_does_not_continue_starts_over() {
        let recent = Recent::default();
        let genesis = Chain::from_slice(&[2u8; 16]).expect("16 bytes");
        let a = chained(1, 3, genesis);
        push(&recent, 1, genesis, a);
        let other = Chain::from_slice(&[3u8; 16]).expect("16 bytes");
        push(&recent, 4, other, chained(4, 2, other));
        assert!(recent.read(1, 10, 1 << 20, Some(1)).is_none());
        assert_eq!(
            recent
                .read(4, 10, 1 << 20, Some(1))
                .expect("kept")
                .chain_before,
            other
        );
        recent.clear();
        assert!(recent.read(4, 10, 1 << 20, Some(1)).is_none());
    }

    #[test]
    fn the_oldest_records_go_first_beyond_the_byte_bound() {
        let recent = Recent::default();
        let genesis = Chain::from_slice(&[4u8; 16]).expect("16 bytes");
        let big: Vec<(Vec<u8>, Chain)> = {
            let mut chain = genesis;
            (0..3)
                .map(|_| {
                    let bytes = vec![0u8; RECENT_BYTES_MAX / 2];
                    chain = chain.next(&bytes);
                    (bytes, chain)
                })
                .collect()
        };
        push(&recent, 1, genesis, big.clone());
        assert!(recent.read(1, 10, usize::MAX, Some(1)).is_none());
        let kept = recent.read(2, 10, usize::MAX, Some(1)).expect("kept");
        assert_eq!(kept.chain_before, big[0].1);
        assert_eq!(kept.records.len(), 2);
    }
}
