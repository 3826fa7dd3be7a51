//! The join's expiry order: entries leave in `(expires, id)` order, as from the Python table's heap of
//! tuples, and the queue yields its items in exactly that order.
//!
//! Every entry of a table has the same TTL and event time mostly grows, so most new expiries are the
//! largest yet. Those go to the back of a run (a deque kept in ascending order: O(1), sequential memory);
//! only an item smaller than the run's back goes to a binary heap. The smallest item is the smaller of the
//! run's front and the heap's top. On a time-ordered replay nearly every item takes the run, where a heap
//! of 500k items paid a cache miss per level on every pop.
//!
//! Items may be stale (their entry was rescheduled, dropped or moved to the store): the table checks each
//! item it takes against the slot it names (`Item::slot`, `Arc::ptr_eq` on the id, equal expiry).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;

pub struct Item {
    pub expires: f64,
    pub id: Arc<str>,
    /// The slot the entry had when the item was pushed; the id's allocation says whether it still does.
    pub slot: u32,
}

impl Item {
    /// `(expires, id)` order. Rust orders `str` by UTF-8 bytes, which is Python's code point order. Float
    /// `==` as in a Python tuple compare (expiry times are finite: timestamps within 2000-2100 plus a
    /// finite TTL).
    fn key_cmp(&self, other: &Self) -> Ordering {
        self.expires.partial_cmp(&other.expires).unwrap_or(Ordering::Equal).then_with(|| self.id.cmp(&other.id))
    }
}

/// The heap's order: reversed, so std's max-heap pops the smallest.
struct Reversed(Item);

impl PartialEq for Reversed {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Reversed {}

impl PartialOrd for Reversed {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Reversed {
    fn cmp(&self, other: &Self) -> Ordering {
        other.0.key_cmp(&self.0)
    }
}

#[derive(Default)]
pub struct ExpiryQueue {
    run: VecDeque<Item>,
    heap: BinaryHeap<Reversed>,
}

impl ExpiryQueue {
    /// A queue of items in any order (a restore): they go to the heap, which orders them in linear time.
    pub fn from_items(items: Vec<Item>) -> Self {
        ExpiryQueue { run: VecDeque::new(), heap: items.into_iter().map(Reversed).collect() }
    }

    pub fn push(&mut self, item: Item) {
        match self.run.back() {
            Some(last) if item.key_cmp(last) == Ordering::Less => self.heap.push(Reversed(item)),
            _ => self.run.push_back(item),
        }
    }

    /// Whether the smallest item is the run's front (None: the queue is empty).
    fn run_first(&self) -> Option<bool> {
        match (self.run.front(), self.heap.peek()) {
            (None, None) => None,
            (Some(_), None) => Some(true),
            (None, Some(_)) => Some(false),
            (Some(r), Some(h)) => Some(r.key_cmp(&h.0) != Ordering::Greater),
        }
    }

    pub fn peek(&self) -> Option<&Item> {
        if self.run_first()? {
            self.run.front()
        } else {
            self.heap.peek().map(|h| &h.0)
        }
    }

    pub fn pop(&mut self) -> Option<Item> {
        if self.run_first()? {
            self.run.pop_front()
        } else {
            self.heap.pop().map(|h| h.0)
        }
    }

    /// The run's `k`-th item: most often what the `k`-th pop from now returns (a hint for prefetching,
    /// never for order).
    pub fn run_ahead(&self, k: usize) -> Option<&Item> {
        self.run.get(k)
    }

    pub fn len(&self) -> usize {
        self.run.len() + self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.run.is_empty() && self.heap.is_empty()
    }

    /// Keeps the items `keep` accepts (the run stays in order, the heap is re-ordered in linear time).
    pub fn retain(&mut self, mut keep: impl FnMut(&Item) -> bool) {
        self.run.retain(&mut keep);
        self.heap.retain(|h| keep(&h.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(expires: f64, id: &str) -> Item {
        Item { expires, id: Arc::from(id), slot: 0 }
    }

    #[test]
    fn pops_in_key_order_whatever_the_push_order() {
        // Ascending runs, ties on the expiry broken by id, and pushes below the run's back, interleaved
        // with pops: the queue must yield what a sort of everything pushed yields.
        let mut q = ExpiryQueue::default();
        let mut expected: Vec<(f64, String)> = Vec::new();
        let mut popped: Vec<(f64, String)> = Vec::new();
        let mut x: u64 = 12345;
        for i in 0..5000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let late = (x >> 33) % 7 == 0;
            let expires = if late { (i / 3) as f64 - ((x >> 40) % 50) as f64 } else { (i / 3) as f64 };
            let id = format!("id{}", (x >> 20) % 1000);
            q.push(item(expires, &id));
            expected.push((expires, id));
            if i % 5 == 4 {
                let it = q.pop().expect("not empty");
                popped.push((it.expires, it.id.to_string()));
            }
        }
        while let Some(it) = q.pop() {
            popped.push((it.expires, it.id.to_string()));
        }
        // What a heap would yield: at each pop, the smallest of what had been pushed and not yet popped.
        let mut pending: Vec<(f64, String)> = Vec::new();
        let mut want = Vec::new();
        for (i, e) in expected.into_iter().enumerate() {
            pending.push(e);
            if i % 5 == 4 {
                let at = (0..pending.len())
                    .min_by(|&a, &b| pending[a].partial_cmp(&pending[b]).expect("finite"))
                    .expect("not empty");
                want.push(pending.remove(at));
            }
        }
        pending.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
        want.extend(pending);
        assert_eq!(popped, want);
    }

    #[test]
    fn retain_keeps_the_order() {
        let mut q = ExpiryQueue::default();
        for (e, id) in [(3.0, "c"), (1.0, "a"), (5.0, "e"), (2.0, "b"), (4.0, "d"), (6.0, "f")] {
            q.push(item(e, id));
        }
        q.retain(|it| &*it.id != "b" && &*it.id != "e");
        let ids: Vec<String> = std::iter::from_fn(|| q.pop()).map(|it| it.id.to_string()).collect();
        assert_eq!(ids, ["a", "c", "d", "f"]);
        assert!(q.is_empty());
    }
}
