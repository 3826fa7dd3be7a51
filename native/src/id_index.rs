//! The join's index: prediction id -> slot.
//!
//! A hash table of (id, slot) whose hash the caller computes once per step and keeps in the slot, so a
//! step hashes its id once (a new entry used to hash it again to insert), and dropping an entry finds its
//! bucket by hash and slot number, without hashing or comparing the id.
//!
//! Ids come from producers: a seeded hash keeps crafted ids from colliding on purpose (Python's dict has
//! the same protection with its randomized str hash).

use std::sync::Arc;

use ahash::RandomState;
use hashbrown::HashTable;

#[derive(Default)]
pub struct IdIndex {
    table: HashTable<(Arc<str>, u32)>,
    hasher: RandomState,
}

impl IdIndex {
    pub fn hash(&self, id: &str) -> u64 {
        self.hasher.hash_one(id)
    }

    pub fn get(&self, id: &str) -> Option<u32> {
        self.get_hashed(id, self.hash(id))
    }

    /// `hash` is `self.hash(id)`.
    pub fn get_hashed(&self, id: &str, hash: u64) -> Option<u32> {
        self.table.find(hash, |(k, _)| **k == *id).map(|&(_, s)| s)
    }

    /// Adds an id that is not in the index; `hash` is `self.hash(&id)`.
    pub fn insert_new(&mut self, hash: u64, id: Arc<str>, slot: u32) {
        let hasher = &self.hasher;
        self.table.insert_unique(hash, (id, slot), |(k, _)| hasher.hash_one(&**k));
    }

    /// Removes the entry of `slot`, whose id hashed to `hash`.
    pub fn remove(&mut self, hash: u64, slot: u32) {
        if let Ok(bucket) = self.table.find_entry(hash, |&(_, s)| s == slot) {
            bucket.remove();
        }
    }

    pub fn reserve(&mut self, additional: usize) {
        let hasher = &self.hasher;
        self.table.reserve(additional, |(k, _)| hasher.hash_one(&**k));
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The slots, in no particular order.
    pub fn slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.table.iter().map(|&(_, s)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_inserts_and_removes_by_slot() {
        let mut index = IdIndex::default();
        for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
            index.insert_new(index.hash(id), Arc::from(id), i as u32);
        }
        assert_eq!(index.get("b"), Some(1));
        let h = index.hash("b");
        index.remove(h, 7); // not b's slot: nothing happens
        assert_eq!(index.get("b"), Some(1));
        index.remove(h, 1);
        assert_eq!((index.get("b"), index.get("a"), index.get("c")), (None, Some(0), Some(2)));
        let mut slots: Vec<u32> = index.slots().collect();
        slots.sort_unstable();
        assert_eq!((slots, index.len()), (vec![0, 2], 2));
    }
}
