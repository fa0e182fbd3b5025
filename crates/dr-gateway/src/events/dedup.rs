//! The in-memory log's dedup index: the ids of appended events and their sequence
//! numbers, forgotten oldest first.
//!
//! why: one copy of each id. The pruning order remembers an entry by its sequence
//! number and the id's hash, which find the entry again without the id: a second
//! copy of every id (an allocation per delivery, ~50 bytes per remembered id) was
//! what the order cost before (`cargo bench --bench event_memory`).

use std::collections::VecDeque;
use std::hash::BuildHasher;

use chrono::{DateTime, Utc};
use hashbrown::HashTable;

use super::log::Sequence;

/// Ids → sequence numbers, with the order they were added in.
#[derive(Default)]
pub struct DedupIndex {
    /// why: foldhash, not SipHash: every delivery hashes its id here up to three
    /// times. The ids come from DR (signed webhooks, backfill), not from callers,
    /// and the hasher is still seeded at random per index.
    hasher: foldhash::fast::RandomState,
    entries: HashTable<(Box<str>, Sequence)>,
    /// (added at, sequence, the id's hash), oldest first.
    order: VecDeque<(DateTime<Utc>, Sequence, u64)>,
}

impl std::fmt::Debug for DedupIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DedupIndex")
            .field("ids", &self.len())
            .finish_non_exhaustive()
    }
}

impl DedupIndex {
    /// The sequence number `id` was appended with, if it is remembered.
    pub fn get(&self, id: &str) -> Option<Sequence> {
        let hash = self.hasher.hash_one(id);
        self.entries
            .find(hash, |(known, _)| **known == *id)
            .map(|&(_, seq)| seq)
    }

    /// Remembers `id` as appended with `seq` at `at`. The caller has checked that
    /// `id` is not remembered ([`get`](Self::get)) and appends in sequence order.
    pub fn insert(&mut self, id: String, seq: Sequence, at: DateTime<Utc>) {
        let hash = self.hasher.hash_one(id.as_str());
        let hasher = &self.hasher;
        self.entries
            .insert_unique(hash, (id.into_boxed_str(), seq), |(known, _)| {
                hasher.hash_one(&**known)
            });
        self.order.push_back((at, seq, hash));
    }

    /// When the oldest remembered id was added, and its sequence number.
    pub fn oldest(&self) -> Option<(DateTime<Utc>, Sequence)> {
        self.order.front().map(|&(at, seq, _)| (at, seq))
    }

    /// Forgets the oldest remembered id.
    pub fn forget_oldest(&mut self) {
        if let Some((_, seq, hash)) = self.order.pop_front() {
            // why: sequence numbers are unique, so the entry is found without its id.
            if let Ok(entry) = self.entries.find_entry(hash, |&(_, known)| known == seq) {
                entry.remove();
            }
        }
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True when no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap_or_default()
    }

    #[test]
    fn ids_are_found_until_they_are_forgotten_oldest_first() {
        let mut index = DedupIndex::default();
        assert!(index.is_empty() && index.get("evt-1").is_none());
        for (seq, id) in ["evt-1", "evt-2", "evt-3"].into_iter().enumerate() {
            index.insert(id.to_owned(), seq as Sequence + 1, at(seq as i64));
        }
        assert_eq!(index.len(), 3);
        assert_eq!(
            ["evt-1", "evt-2", "evt-3", "evt-4"].map(|id| index.get(id)),
            [Some(1), Some(2), Some(3), None]
        );
        assert_eq!(index.oldest(), Some((at(0), 1)));
        index.forget_oldest();
        assert_eq!(index.get("evt-1"), None);
        assert_eq!((index.get("evt-2"), index.get("evt-3")), (Some(2), Some(3)));
        assert_eq!((index.len(), index.oldest()), (2, Some((at(1), 2))));
        index.forget_oldest();
        index.forget_oldest();
        index.forget_oldest();
        assert!(index.is_empty() && index.oldest().is_none() && index.get("evt-3").is_none());
    }

    #[test]
    fn random_appends_and_forgets_agree_with_a_map_and_a_queue() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        use std::collections::HashMap;
        let mut rng = StdRng::seed_from_u64(19);
        let mut index = DedupIndex::default();
        let mut model: (HashMap<String, Sequence>, VecDeque<String>) = Default::default();
        let mut next_seq = 1;
        for _ in 0..20_000 {
            // Ids from a small space, so redeliveries of remembered and of
            // forgotten ids both happen.
            let id = format!("evt-{}", rng.random_range(0..3_000));
            if rng.random_ratio(2, 3) {
                assert_eq!(index.get(&id), model.0.get(&id).copied(), "{id}");
                if index.get(&id).is_none() {
                    index.insert(id.clone(), next_seq, at(next_seq as i64));
                    model.0.insert(id.clone(), next_seq);
                    model.1.push_back(id);
                    next_seq += 1;
                }
            } else {
                index.forget_oldest();
                if let Some(oldest) = model.1.pop_front() {
                    model.0.remove(&oldest);
                }
            }
            assert_eq!(index.len(), model.1.len());
            let oldest = model.1.front().map(|id| model.0[id]);
            assert_eq!(index.oldest().map(|(_, seq)| seq), oldest);
        }
        assert!((0..3_000)
            .map(|n| format!("evt-{n}"))
            .all(|id| index.get(&id) == model.0.get(&id).copied()));
    }

    #[test]
    fn many_ids_survive_the_table_growing_and_forgetting_half() {
        let mut index = DedupIndex::default();
        let id = |n: u64| format!("{n:08x}-0b2e-43f7-8d9a-362047aa975a");
        for n in 1..=10_000 {
            index.insert(id(n), n, at(0));
        }
        for _ in 0..5_000 {
            index.forget_oldest();
        }
        assert_eq!(index.len(), 5_000);
        assert!((1..=5_000).all(|n| index.get(&id(n)).is_none()));
        assert!((5_001..=10_000).all(|n| index.get(&id(n)) == Some(n)));
    }
}
