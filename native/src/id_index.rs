//! The join's index: prediction id -> slot.
//!
//! A hash table of slot numbers alone: each slot keeps its id and the id's hash (`Keys`), which the
//! caller computes once per step. A bucket is 4 bytes rather than an id's pointer and length as well
//! (24 bytes): at 500,000 entries in memory the table is 5 MB instead of 25, and far more of it stays
//! in the CPU's cache. A lookup compares the id of the slot a bucket names (a step reads that slot
//! anyway); dropping an entry finds its bucket by hash and slot number, without reading the id.
//!
//! Ids come from producers: a seeded hash keeps crafted ids from colliding on purpose (Python's dict has
//! the same protection with its randomized str hash).

use ahash::RandomState;
use hashbrown::HashTable;

use crate::prefetch::prefetch;

/// What the index reads of the table's slots: the id of each indexed slot and the hash it was indexed
/// by. Every slot in the index must answer both until it is removed.
pub trait Keys {
    fn id(&self, slot: u32) -> &str;
    fn hash(&self, slot: u32) -> u64;
}

#[derive(Default)]
pub struct IdIndex {
    table: HashTable<u32>,
    hasher: RandomState,
    /// Where the table's control bytes were at the last insert (0: none yet), for `prefetch`; stale after
    /// a reallocation until the next insert, which only makes prefetches miss.
    ctrl: usize,
}

impl IdIndex {
    pub fn hash(&self, id: &str) -> u64 {
        self.hasher.hash_one(id)
    }

    pub fn get(&self, id: &str, keys: &(impl Keys + ?Sized)) -> Option<u32> {
        self.get_hashed(id, self.hash(id), keys)
    }

    /// `hash` is `self.hash(id)`.
    pub fn get_hashed(&self, id: &str, hash: u64, keys: &(impl Keys + ?Sized)) -> Option<u32> {
        self.table.find(hash, |&s| keys.id(s) == id).copied()
    }

    /// Adds a slot whose id is not in the index; `hash` is `self.hash` of its id, which `keys` gives too.
    pub fn insert_new(&mut self, hash: u64, slot: u32, keys: &(impl Keys + ?Sized)) {
        let entry = self.table.insert_unique(hash, slot, |&s| keys.hash(s));
        self.ctrl = entry.get() as *const u32 as usize + (entry.bucket_index() + 1) * BUCKET;
    }

    /// Removes the entry of `slot`, whose id hashed to `hash`.
    pub fn remove(&mut self, hash: u64, slot: u32) {
        if let Ok(bucket) = self.table.find_entry(hash, |&s| s == slot) {
            bucket.remove();
        }
    }

    pub fn reserve(&mut self, additional: usize, keys: &(impl Keys + ?Sized)) {
        self.table.reserve(additional, |&s| keys.hash(s));
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The slots, in no particular order.
    pub fn slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.table.iter().copied()
    }

    /// Asks the CPU for the memory a lookup of `hash` reads first: the control bytes at its first probe
    /// position and the group of buckets beside them. hashbrown keeps bucket i just below its control
    /// bytes, at `ctrl - (i + 1) * 4` (`RawTable::data_end`), so the control bytes' address follows from
    /// the bucket an insert took. That layout is hashbrown's, not its API: a test checks it, and were it
    /// to change, these prefetches would load the wrong lines and nothing else would differ.
    pub fn prefetch(&self, hash: u64) {
        if self.ctrl == 0 {
            return;
        }
        let ctrl = self.ctrl as *const u8;
        let i = hash as usize & (self.table.num_buckets() - 1);
        prefetch(ctrl.wrapping_add(i));
        prefetch(ctrl.wrapping_sub((i + 1) * BUCKET));
        prefetch(ctrl.wrapping_sub((i + GROUP) * BUCKET));
    }
}

/// A bucket's size, and the control bytes a lookup reads at once (hashbrown's SSE2 group).
const BUCKET: usize = std::mem::size_of::<u32>();
const GROUP: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    struct Ids(Vec<(&'static str, u64)>);

    impl Keys for Ids {
        fn id(&self, slot: u32) -> &str {
            self.0[slot as usize].0
        }
        fn hash(&self, slot: u32) -> u64 {
            self.0[slot as usize].1
        }
    }

    #[test]
    fn finds_inserts_and_removes_by_slot() {
        let mut index = IdIndex::default();
        let mut ids = Ids(Vec::new());
        for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
            ids.0.push((id, index.hash(id)));
            index.insert_new(index.hash(id), i as u32, &ids);
        }
        assert_eq!(index.get("b", &ids), Some(1));
        let h = index.hash("b");
        index.remove(h, 7); // not b's slot: nothing happens
        assert_eq!(index.get("b", &ids), Some(1));
        index.remove(h, 1);
        assert_eq!((index.get("b", &ids), index.get("a", &ids), index.get("c", &ids)), (None, Some(0), Some(2)));
        let mut slots: Vec<u32> = index.slots().collect();
        slots.sort_unstable();
        assert_eq!((slots, index.len()), (vec![0, 2], 2));
        // Growing rehashes by the hashes the slots keep: everything is still found.
        for i in 3..1000u32 {
            let id: &'static str = Box::leak(format!("id-{i}").into_boxed_str());
            ids.0.push((id, index.hash(id)));
            index.insert_new(index.hash(id), i, &ids);
        }
        assert!((3..1000u32).all(|i| index.get(ids.0[i as usize].0, &ids) == Some(i)));
    }

    #[test]
    fn buckets_lie_below_the_control_bytes_as_prefetch_assumes() {
        let mut index = IdIndex::default();
        let mut ids = Ids(Vec::new());
        for i in 0..5000u32 {
            let id: &'static str = Box::leak(format!("id-{i}").into_boxed_str());
            ids.0.push((id, index.hash(id)));
            index.insert_new(index.hash(id), i, &ids);
        }
        let table = &index.table;
        for j in table.iter_buckets() {
            assert_eq!(table.get_bucket(j).unwrap() as *const u32 as usize, index.ctrl - (j + 1) * BUCKET);
        }
        index.prefetch(index.hash("id-7")); // a hint only: nothing to observe but that it runs
    }
}
