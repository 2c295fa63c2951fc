//! A copy's history: the `(epoch, first_lsn)` at which each epoch began, as PostgreSQL's
//! timeline history. Comparing two histories tells whether one copy can follow another.

use crate::record::{Chain, Epoch, Lsn};
use serde::{Deserialize, Serialize};

/// Epochs in increasing order, each with the first LSN written under it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History(pub Vec<HistoryEntry>);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub epoch: Epoch,
    pub first_lsn: Lsn,
}

impl History {
    pub fn last_epoch(&self) -> Epoch {
        self.0.last().map(|e| e.epoch).unwrap_or(0)
    }

    /// Appends an epoch that begins at `first_lsn`. Epochs only grow; an epoch that begins where
    /// the previous one began replaces it (it wrote nothing).
    pub(crate) fn push(&mut self, epoch: Epoch, first_lsn: Lsn) {
        if let Some(last) = self.0.last() {
            assert!(
                epoch > last.epoch,
                "history epochs must grow: {epoch} after {}",
                last.epoch
            );
            assert!(first_lsn >= last.first_lsn, "history LSNs must not go back");
            if last.first_lsn == first_lsn {
                self.0.pop();
            }
        }
        self.0.push(HistoryEntry { epoch, first_lsn });
    }
}

/// Where a copy stands: enough to compare it with another copy of the same database.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub history: History,
    pub lsn: Lsn,
    pub chain: Chain,
}

/// How a follower stands against a leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Comparison {
    /// Same records.
    InSync,
    /// The follower lacks the leader's last `records` records and can catch up.
    Behind { records: u64 },
    /// The follower has `records` records the leader lacks, on the same history.
    Ahead { records: u64 },
    /// The follower holds records from LSN `at` on that the leader does not: reseed it.
    Diverged { at: Lsn },
}

impl std::fmt::Display for Comparison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Comparison::InSync => f.write_str("in sync"),
            Comparison::Behind { records } => write!(f, "behind by {records}"),
            Comparison::Ahead { records } => write!(f, "ahead by {records}"),
            Comparison::Diverged { at } => write!(f, "diverged at LSN {at} — reseed"),
        }
    }
}

/// Compares a follower with a leader. `leader_chain_at` answers the leader's chain at an LSN
/// when it still knows it (its journal); it is used to check the follower's last record.
pub fn compare(
    follower: &Position,
    leader: &Position,
    leader_chain_at: impl Fn(Lsn) -> Option<Chain>,
) -> Comparison {
    // The first LSN whose epoch the two histories disagree on.
    let (f, l) = (&follower.history.0, &leader.history.0);
    let mut fork = Lsn::MAX;
    for i in 0..f.len().max(l.len()) {
        match (f.get(i), l.get(i)) {
            (Some(a), Some(b)) if a == b => continue,
            (a, b) => {
                fork = a
                    .map_or(Lsn::MAX, |e| e.first_lsn)
                    .min(b.map_or(Lsn::MAX, |e| e.first_lsn));
                break;
            }
        }
    }
    let common = follower.lsn.min(leader.lsn);
    if follower.lsn >= fork && fork <= follower.lsn.max(1) && follower.lsn > 0 {
        return Comparison::Diverged { at: fork };
    }
    let chain_at_common = if common == follower.lsn {
        Some(follower.chain)
    } else {
        None
    };
    let leader_at_common = if common == leader.lsn {
        Some(leader.chain)
    } else {
        leader_chain_at(common)
    };
    if let (Some(a), Some(b)) = (chain_at_common, leader_at_common)
        && a != b
    {
        return Comparison::Diverged { at: common.max(1) };
    }
    match follower.lsn.cmp(&leader.lsn) {
        std::cmp::Ordering::Equal => Comparison::InSync,
        std::cmp::Ordering::Less => Comparison::Behind {
            records: leader.lsn - follower.lsn,
        },
        std::cmp::Ordering::Greater => Comparison::Ahead {
            records: follower.lsn - leader.lsn,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(entries: &[(Epoch, Lsn)]) -> History {
        History(
            entries
                .iter()
                .map(|&(epoch, first_lsn)| HistoryEntry { epoch, first_lsn })
                .collect(),
        )
    }

    fn pos(entries: &[(Epoch, Lsn)], lsn: Lsn, chain: u8) -> Position {
        Position {
            history: h(entries),
            lsn,
            chain: Chain([chain; 16]),
        }
    }

    #[test]
    fn same_history_compares_by_lsn() {
        let leader = pos(&[(1, 1)], 100, 9);
        assert_eq!(
            compare(&pos(&[(1, 1)], 100, 9), &leader, |_| None),
            Comparison::InSync
        );
        assert_eq!(
            compare(&pos(&[(1, 1)], 60, 3), &leader, |_| None),
            Comparison::Behind { records: 40 }
        );
        assert_eq!(
            compare(&pos(&[(1, 1)], 60, 3), &leader, |_| Some(Chain([3; 16]))),
            Comparison::Behind { records: 40 }
        );
        assert_eq!(
            compare(&leader, &pos(&[(1, 1)], 60, 3), |_| None),
            Comparison::Ahead { records: 40 }
        );
    }

    #[test]
    fn follower_behind_the_failover_point_can_catch_up() {
        let leader = pos(&[(1, 1), (2, 101)], 150, 9);
        assert_eq!(
            compare(&pos(&[(1, 1)], 100, 1), &leader, |_| None),
            Comparison::Behind { records: 50 }
        );
        assert_eq!(
            compare(&pos(&[(1, 1)], 90, 1), &leader, |_| None),
            Comparison::Behind { records: 60 }
        );
    }

    #[test]
    fn old_primary_that_wrote_past_the_failover_diverged() {
        let leader = pos(&[(1, 1), (2, 101)], 150, 9);
        assert_eq!(
            compare(&pos(&[(1, 1)], 105, 1), &leader, |_| None),
            Comparison::Diverged { at: 101 }
        );
        // Even when the new primary has not written yet.
        let fresh = pos(&[(1, 1), (2, 101)], 100, 9);
        assert_eq!(
            compare(&pos(&[(1, 1)], 101, 1), &fresh, |_| None),
            Comparison::Diverged { at: 101 }
        );
    }

    #[test]
    fn equal_lsn_other_chain_diverged() {
        assert_eq!(
            compare(&pos(&[(1, 1)], 10, 1), &pos(&[(1, 1)], 10, 2), |_| None),
            Comparison::Diverged { at: 10 }
        );
        assert_eq!(
            compare(&pos(&[(1, 1)], 5, 1), &pos(&[(1, 1)], 10, 2), |_| Some(
                Chain([4; 16])
            )),
            Comparison::Diverged { at: 5 }
        );
    }

    #[test]
    fn empty_follower_is_behind() {
        assert_eq!(
            compare(&pos(&[], 0, 0), &pos(&[(1, 1), (3, 50)], 70, 2), |_| None),
            Comparison::Behind { records: 70 }
        );
    }
}
