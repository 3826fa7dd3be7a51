//! The symmetric prediction / ground-truth join: `monitor.engine.join.JoinTable` together with the
//! duplicate check of `ModelState.add_prediction`, step for step, so that the Python table stays the
//! specification and the two can be compared output row by output row.
//!
//! Entries live in slots (their label vectors in flat arrays with a stride of `n_labels`) so a step
//! allocates nothing but a new entry's id. Python's dict keeps insertion order and checkpoints list
//! entries in it; `born` reproduces that order for `export`.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use ahash::RandomState;

use crate::expiry::{ExpiryQueue, Item};
use crate::id_index::{IdIndex, Keys};
use crate::prefetch::prefetch;
use crate::restore::{entry_expires, entry_width, ChangelogEntry};
use crate::store::{expiry_bytes, ColdStore, EPOCH_ENTRIES};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Side {
    Prediction,
    GroundTruth,
    Joined,
}

#[derive(Default, Debug, Clone, PartialEq)]
pub struct Counters {
    pub pending_prediction: i64,
    pub pending_ground_truth: i64,
    pub expired_prediction: i64,
    pub expired_ground_truth: i64,
    pub evicted_prediction: i64,
    pub evicted_ground_truth: i64,
    pub evicted_joined: i64,
    pub duplicates_prediction: i64,
    pub duplicates_ground_truth: i64,
    pub corrections: i64,
    pub joined: i64,
}

/// What the steps produced since the last drain (the sink calls of the Python table, as columns).
#[derive(Default, Debug)]
pub struct Output {
    pub unpend_version: Vec<i64>,
    pub unpend_ts: Vec<f64>,
    pub unpend_scores: Vec<f64>,
    pub unpend_predicted: Vec<bool>,
    pub join_version: Vec<i64>,
    pub join_obs: Vec<f64>,
    pub join_scores: Vec<f64>,
    pub join_predicted: Vec<bool>,
    pub join_known: Vec<bool>,
    pub join_actual: Vec<bool>,
    pub join_full: Vec<bool>,
    pub join_sign: Vec<f64>,
    pub delay: Vec<f64>,
}

struct Slot {
    id: Arc<str>,
    /// The id's hash in the index (set when the slot is placed).
    hash: u64,
    born: u64,
    expires: f64,
    has_pred: bool,
    pred_ts: f64,
    pred_version: i64,
    has_truth: bool,
    truth_ts: f64,
    truth_seq: i64,
    full: bool,
    /// The table's `generation` when the entry last changed while changes were tracked (0: not since the
    /// slot was filled). A mark in the slot, which a step reads anyway, rather than a set of ids to hash
    /// and probe at every change: with hundreds of thousands of entries in memory that was two cache
    /// misses per event.
    changed: u32,
}

impl Keys for [Slot] {
    fn id(&self, slot: u32) -> &str {
        &self[slot as usize].id
    }

    fn hash(&self, slot: u32) -> u64 {
        self[slot as usize].hash
    }
}

/// A prediction or a ground truth as a step hands it over.
pub struct PredIn<'a> {
    pub ts: f64,
    pub version: i64,
    pub scores: &'a [f64],
    pub predicted: &'a [bool],
}

pub struct TruthIn<'a> {
    pub ts: f64,
    pub known: &'a [bool],
    pub actual: &'a [bool],
    pub full: bool,
}

pub struct JoinTable {
    pub ttl: f64,
    pub max_entries: usize,
    pub n_labels: usize,
    pub watermark: f64,
    pub seq: i64,
    pub counters: Counters,
    pub out: Output,
    index: IdIndex,
    slots: Vec<Slot>,
    free: Vec<u32>,
    scores: Vec<f64>,
    predicted: Vec<bool>,
    known: Vec<bool>,
    actual: Vec<bool>,
    /// Expiry order; may hold stale items (`current` tells).
    expiry: ExpiryQueue,
    /// The id of a free slot: one shared allocation, so freeing a slot allocates nothing.
    vacant: Arc<str>,
    births: u64,
    /// Ids whose entry changed (or left) since `clear_changes`, when tracking: the changelog writes
    /// only these, so a checkpoint costs what changed, not the table's size. An id is listed when its
    /// slot is first marked with the current `generation`; one that left the table and came back may be
    /// listed twice (`changes` reads each once).
    dirty: Option<Vec<Arc<str>>>,
    /// Slots whose `changed` equals it changed since `clear_changes` (hot entries; a changed entry that
    /// moved to the store is in `Cold::changed`): starting afresh is one increment, not a pass over slots.
    generation: u32,
    /// With a memory budget: the entries beyond it. The table is the union of the slots (hot) and the
    /// store (cold); an id is in one of them at most. Moving an entry between them changes nothing a
    /// caller can see.
    cold: Option<Cold>,
}

struct Cold {
    store: ColdStore,
    budget: usize,
    /// Changed entries that moved to the store before the changelog took them (id -> encoded value), so
    /// `changes` reads memory, not the store: a checkpoint's cost stays what changed, at memory speed.
    /// An entry is hot whenever it changes, so a changed id is hot, here, or gone.
    changed: HashMap<Arc<str>, (f64, Vec<u8>), RandomState>,
    /// A spill's entries on their way to the store, kept between spills for its buffers.
    spills: Spills,
}

/// A cold entry decoded: its slot and label vectors.
struct Loaded {
    slot: Slot,
    scores: Vec<f64>,
    predicted: Vec<bool>,
    known: Vec<bool>,
    actual: Vec<bool>,
}

/// Where a checkpoint row comes from.
enum Src {
    Hot(u32),
    Cold(Box<Loaded>),
}

fn side_of(slot: &Slot) -> Side {
    match (slot.has_pred, slot.has_truth) {
        (true, true) => Side::Joined,
        (true, false) => Side::Prediction,
        _ => Side::GroundTruth,
    }
}

/// An entry's value in the store (its id and expiry are the key), exact and small, since every spilled
/// entry is written to disk: born, version and sequence as LEB128 varints (the signed ones zigzagged), a
/// flags byte, the two times bit for bit (a time whose bits are all zero only as a flag: a pending
/// prediction has no ground-truth time), the scores bit for bit, and the three label vectors as bits.
/// Under 70 bytes for a pending 6-label prediction, against 107 with fixed-width fields and a byte a label.
fn encode_entry(slot: &Slot, scores: &[f64], predicted: &[bool], known: &[bool], actual: &[bool]) -> Vec<u8> {
    let mut v = Vec::with_capacity(48 + scores.len() * 9);
    encode_entry_into(&mut v, slot, scores, [predicted, known, actual]);
    v
}

/// `encode_entry`, appended to `v`; `vectors` are predicted, known and actual.
fn encode_entry_into(v: &mut Vec<u8>, slot: &Slot, scores: &[f64], vectors: [&[bool]; 3]) {
    let flags = slot.has_pred as u8 | (slot.has_truth as u8) << 1 | (slot.full as u8) << 2;
    let fields = (slot.pred_ts, slot.pred_version, slot.truth_ts, slot.truth_seq);
    encode_fields_into(v, slot.born, flags, fields, scores, vectors);
}

/// `encode_entry` of an entry read from the changelog, appended to `v`.
fn encode_loaded_into(v: &mut Vec<u8>, born: u64, e: &ChangelogEntry) {
    let flags = e.has_pred as u8 | (e.has_truth as u8) << 1 | (e.full as u8) << 2;
    let fields = (e.pred_ts, e.pred_version, e.truth_ts, e.seq);
    encode_fields_into(v, born, flags, fields, &e.scores, [&e.predicted, &e.known, &e.actual]);
}

/// Flag bits of a stored value beyond has_pred, has_truth and full: which time is left out (all bits 0).
const NO_PRED_TS: u8 = 8;
const NO_TRUTH_TS: u8 = 16;

fn put_varint(v: &mut Vec<u8>, mut x: u64) {
    while x >= 0x80 {
        v.push(x as u8 | 0x80);
        x >>= 7;
    }
    v.push(x as u8);
}

fn zigzag(x: i64) -> u64 {
    ((x << 1) ^ (x >> 63)) as u64
}

fn unzigzag(x: u64) -> i64 {
    (x >> 1) as i64 ^ -((x & 1) as i64)
}

/// The store's value layout (`encode_entry`), appended to `v`.
fn encode_fields_into(
    v: &mut Vec<u8>,
    born: u64,
    flags: u8,
    fields: (f64, i64, f64, i64),
    scores: &[f64],
    vectors: [&[bool]; 3],
) {
    let (pred_ts, pred_version, truth_ts, truth_seq) = fields;
    let flags = flags
        | if pred_ts.to_bits() == 0 { NO_PRED_TS } else { 0 }
        | if truth_ts.to_bits() == 0 { NO_TRUTH_TS } else { 0 };
    put_varint(v, born);
    v.push(flags);
    if flags & NO_PRED_TS == 0 {
        v.extend_from_slice(&pred_ts.to_le_bytes());
    }
    put_varint(v, zigzag(pred_version));
    if flags & NO_TRUTH_TS == 0 {
        v.extend_from_slice(&truth_ts.to_le_bytes());
    }
    put_varint(v, zigzag(truth_seq));
    for x in scores {
        v.extend_from_slice(&x.to_le_bytes());
    }
    let mut byte = 0u8;
    for (k, &b) in vectors.iter().flat_map(|bools| bools.iter()).enumerate() {
        byte |= (b as u8) << (k % 8);
        if k % 8 == 7 {
            v.push(byte);
            byte = 0;
        }
    }
    if (3 * scores.len()) % 8 != 0 {
        v.push(byte);
    }
}

/// Reads `encode_entry`'s layout front to back.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().expect("a stored value cut short");
        self.0 = rest;
        b
    }

    fn varint(&mut self) -> u64 {
        let (mut x, mut shift) = (0u64, 0);
        loop {
            let b = self.byte();
            x |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return x;
            }
            shift += 7;
        }
    }

    fn f64(&mut self) -> f64 {
        let (bytes, rest) = self.0.split_at(8);
        self.0 = rest;
        f64::from_le_bytes(bytes.try_into().expect("8 bytes"))
    }
}

/// A stored value back into a slot and label vectors (`encode_entry`'s layout).
fn decode(id: Arc<str>, expires: f64, v: &[u8], n: usize) -> Loaded {
    let mut r = Reader(v);
    let born = r.varint();
    let flags = r.byte();
    let pred_ts = if flags & NO_PRED_TS == 0 { r.f64() } else { 0.0 };
    let pred_version = unzigzag(r.varint());
    let truth_ts = if flags & NO_TRUTH_TS == 0 { r.f64() } else { 0.0 };
    let truth_seq = unzigzag(r.varint());
    let slot = Slot {
        id,
        hash: 0,
        born,
        expires,
        has_pred: flags & 1 != 0,
        pred_ts,
        pred_version,
        has_truth: flags & 2 != 0,
        truth_ts,
        truth_seq,
        full: flags & 4 != 0,
        changed: 0,
    };
    let scores = (0..n).map(|_| r.f64()).collect();
    let bits = r.0;
    let bit = |k: usize| bits[k / 8] & (1 << (k % 8)) != 0;
    let bools = |vector: usize| (0..n).map(|j| bit(vector * n + j)).collect();
    Loaded { slot, scores, predicted: bools(0), known: bools(1), actual: bools(2) }
}

/// How many entries ahead of the one it moves a spill asks for the entry's index bucket; it asks for the
/// entry's slot, label vectors and id (`JoinTable::prefetch_entry`) twice as far ahead, since the bucket's
/// address comes from the slot.
const SPILL_AHEAD: usize = 8;

/// Python's `max(a, b)`: `b` only when strictly greater.
fn py_max(a: f64, b: f64) -> f64 {
    if b > a {
        b
    } else {
        a
    }
}

impl JoinTable {
    pub fn new(ttl: f64, max_entries: usize, n_labels: usize) -> Self {
        JoinTable {
            ttl,
            max_entries,
            n_labels,
            watermark: f64::NEG_INFINITY,
            seq: 0,
            counters: Counters::default(),
            out: Output::default(),
            index: IdIndex::default(),
            slots: Vec::new(),
            free: Vec::new(),
            scores: Vec::new(),
            predicted: Vec::new(),
            known: Vec::new(),
            actual: Vec::new(),
            expiry: ExpiryQueue::default(),
            vacant: Arc::from(""),
            births: 0,
            dirty: None,
            generation: 1,
            cold: None,
        }
    }

    /// A table that keeps at most `memory_entries` entries in memory (briefly one more within a step)
    /// and the rest in a store under `dir` (the system temp directory when None).
    pub fn with_budget(
        ttl: f64,
        max_entries: usize,
        n_labels: usize,
        memory_entries: usize,
        dir: Option<&Path>,
    ) -> Result<Self, String> {
        let mut t = JoinTable::new(ttl, max_entries, n_labels);
        let store = ColdStore::open(dir)?;
        t.cold =
            Some(Cold { store, budget: memory_entries.max(1), changed: HashMap::default(), spills: Spills::default() });
        Ok(t)
    }

    pub fn len(&self) -> usize {
        self.index.len() + self.cold.as_ref().map_or(0, |c| c.store.len())
    }

    /// Entries in memory (all of them without a budget).
    pub fn hot_len(&self) -> usize {
        self.index.len()
    }

    /// The store's directory, with a budget.
    pub fn store_dir(&self) -> Option<&Path> {
        self.cold.as_ref().and_then(|c| c.store.dir())
    }

    /// The hash a step and a prefetch take with `id` (the index's, seeded per table).
    pub fn hash(&self, id: &str) -> u64 {
        self.index.hash(id)
    }

    /// A prediction step: the duplicate check of `ModelState.add_prediction`, then
    /// `JoinTable.add_prediction`; `hash` is `self.hash(id)`. True when the prediction was accepted
    /// (counted by the model).
    pub fn add_prediction(&mut self, id: &str, hash: u64, p: &PredIn) -> bool {
        let accepted = self.prediction_step(id, hash, p);
        self.enforce_budget();
        accepted
    }

    fn prediction_step(&mut self, id: &str, hash: u64, p: &PredIn) -> bool {
        let found = self.find(id, hash);
        if let Some(s) = found {
            let slot = &self.slots[s as usize];
            if slot.has_pred && slot.expires >= py_max(self.watermark, p.ts) {
                self.counters.duplicates_prediction += 1;
                return false;
            }
        }
        self.watermark = py_max(self.watermark, p.ts);
        let s = match self.live(found) {
            None => self.insert(id, hash),
            Some(s) if self.slots[s as usize].has_pred => {
                // Unreachable after the check above (an entry that survived `live` passed it), kept
                // so the table alone behaves as the Python one.
                self.counters.duplicates_prediction += 1;
                return true;
            }
            Some(s) => s,
        };
        let n = self.n_labels;
        let at = s as usize * n;
        self.scores[at..at + n].copy_from_slice(p.scores);
        self.predicted[at..at + n].copy_from_slice(p.predicted);
        let slot = &mut self.slots[s as usize];
        slot.has_pred = true;
        slot.pred_ts = p.ts;
        slot.pred_version = p.version;
        if !slot.has_truth {
            self.counters.pending_prediction += 1;
        } else {
            self.counters.pending_ground_truth -= 1;
            self.counters.joined += 1;
            self.emit_unpend(s);
            self.emit_delay(s);
            self.emit_join(s, 1.0);
        }
        self.schedule(s, p.ts + self.ttl);
        self.enforce_cap();
        true
    }

    /// Asks the CPU for what a step for `id` reads first: its bucket in the index and, when it is not
    /// there, its bits in the store's filter (`crate::prefetch`). For a step a few events ahead; `hash`
    /// is `self.hash(id)`.
    pub fn prefetch(&self, id: &str, hash: u64) {
        self.index.prefetch(hash);
        if let Some(cold) = &self.cold {
            cold.store.prefetch(id.as_bytes());
        }
    }

    /// A ground-truth step: `JoinTable.add_ground_truth`; `hash` is `self.hash(id)`.
    pub fn add_ground_truth(&mut self, id: &str, hash: u64, g: &TruthIn) {
        self.truth_step(id, hash, g);
        self.enforce_budget();
    }

    fn truth_step(&mut self, id: &str, hash: u64, g: &TruthIn) {
        self.watermark = py_max(self.watermark, g.ts);
        self.seq += 1;
        let seq = self.seq;
        let n = self.n_labels;
        let found = self.find(id, hash);
        let Some(s) = self.live(found) else {
            let s = self.insert(id, hash);
            self.set_truth(s, g, seq);
            self.counters.pending_ground_truth += 1;
            self.schedule(s, g.ts + self.ttl);
            self.enforce_cap();
            return;
        };
        let slot = &self.slots[s as usize];
        let at = s as usize * n;
        if slot.has_truth {
            // (ts, seq) > (old ts, old seq); a newer truth with the same labels and time is a re-send.
            let supersedes = g.ts > slot.truth_ts || (g.ts == slot.truth_ts && seq > slot.truth_seq);
            let same = self.known[at..at + n] == *g.known && self.actual[at..at + n] == *g.actual;
            if !supersedes || (g.ts == slot.truth_ts && same) {
                self.counters.duplicates_ground_truth += 1;
                return;
            }
        }
        let (had_truth, has_pred) = (slot.has_truth, slot.has_pred);
        if !has_pred {
            self.set_truth(s, g, seq);
            self.schedule(s, g.ts + self.ttl);
            return;
        }
        if !had_truth {
            self.counters.pending_prediction -= 1;
            self.counters.joined += 1;
            self.set_truth(s, g, seq);
            self.emit_unpend(s);
            self.emit_delay(s);
        } else {
            self.counters.corrections += 1;
            self.emit_join(s, -1.0);
            self.set_truth(s, g, seq);
        }
        self.emit_join(s, 1.0);
    }

    /// Drops everything whose TTL passed at the current watermark.
    pub fn expire(&mut self) {
        if self.cold.is_none() {
            while self.expiry.peek().is_some_and(|top| top.expires < self.watermark) {
                self.pop();
            }
            return;
        }
        while self.min_expires().is_some_and(|e| e < self.watermark) {
            self.pop_min();
        }
        self.enforce_budget();
    }

    fn enforce_cap(&mut self) {
        if self.cold.is_none() {
            while self.index.len() > self.max_entries && !self.expiry.is_empty() {
                if let Some(side) = self.pop() {
                    self.count_eviction(side);
                }
            }
            return;
        }
        while self.len() > self.max_entries {
            match self.pop_min() {
                Some(side) => self.count_eviction(side),
                None => break,
            }
        }
    }

    fn count_eviction(&mut self, side: Side) {
        match side {
            Side::Prediction => self.counters.evicted_prediction += 1,
            Side::GroundTruth => self.counters.evicted_ground_truth += 1,
            Side::Joined => self.counters.evicted_joined += 1,
        }
    }

    // --- the two tiers -------------------------------------------------------------------------------

    /// The entry's slot, loading it from the store when it is cold; `hash` is the index's hash of `id`.
    fn find(&mut self, id: &str, hash: u64) -> Option<u32> {
        if let Some(s) = self.index.get_hashed(id, hash, &*self.slots) {
            return Some(s);
        }
        let cold = self.cold.as_mut()?;
        let (expires, value) = cold.store.take(id.as_bytes()).unwrap_or_else(|e| panic!("{e}"))?;
        Some(self.load(Arc::from(id), expires, &value, true))
    }

    /// Puts a decoded cold entry into a slot (keeping its birth, so `export` keeps Python's dict order);
    /// `schedule` is false for an entry about to be dropped.
    fn load(&mut self, id: Arc<str>, expires: f64, value: &[u8], schedule: bool) -> u32 {
        let was_changed = self.cold.as_mut().is_some_and(|cold| cold.changed.remove(&*id).is_some());
        let e = decode(id.clone(), expires, value, self.n_labels);
        let s = self.place(e.slot, &e.scores, [&e.predicted, &e.known, &e.actual]);
        if was_changed {
            // Listed already: the mark moves with the entry.
            self.slots[s as usize].changed = self.generation;
        }
        if schedule {
            self.expiry.push(Item { expires, id, slot: s });
        }
        s
    }

    /// Whether an expiry item still describes its entry: the entry holds the slot the item names (the id's
    /// allocation lives as long as the item does, so no other entry can have it) with that expiry. Items of
    /// entries rescheduled, gone, or moved to the store are stale.
    fn current(slots: &[Slot], item: &Item) -> bool {
        let slot = &slots[item.slot as usize];
        Arc::ptr_eq(&slot.id, &item.id) && slot.expires == item.expires
    }

    /// Drops the stale items at the front of the expiry order.
    fn settle_expiry(&mut self) {
        while let Some(top) = self.expiry.peek() {
            if Self::current(&self.slots, top) {
                return;
            }
            self.expiry.pop();
        }
    }

    /// Whether the smallest `(expires, id)` of the table is in the store (None: the table is empty).
    fn min_is_cold(&mut self) -> Option<bool> {
        self.settle_expiry();
        let cold = self.cold.as_mut().expect("a budget");
        let c = cold.store.first().unwrap_or_else(|e| panic!("{e}"));
        Some(match (self.expiry.peek(), c) {
            (None, None) => return None,
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (Some(h), Some((ce, cid))) => {
                let by_time = ce.partial_cmp(&h.expires).unwrap_or(Ordering::Equal);
                by_time.then_with(|| cid.cmp(h.id.as_bytes())) == Ordering::Less
            }
        })
    }

    fn min_expires(&mut self) -> Option<f64> {
        if self.min_is_cold()? {
            let cold = self.cold.as_mut().expect("a budget");
            cold.store.first().unwrap_or_else(|e| panic!("{e}")).map(|(e, _)| e)
        } else {
            self.expiry.peek().map(|h| h.expires)
        }
    }

    /// Drops the table's smallest entry across both tiers; returns what it held.
    fn pop_min(&mut self) -> Option<Side> {
        if self.min_is_cold()? {
            let cold = self.cold.as_mut().expect("a budget");
            let (id, expires, value) = cold.store.pop_first().unwrap_or_else(|e| panic!("{e}"))?;
            let id: Arc<str> = Arc::from(std::str::from_utf8(&id).expect("ids are UTF-8"));
            let s = self.load(id, expires, &value, false);
            let side = side_of(&self.slots[s as usize]);
            self.drop_entry(s);
            Some(side)
        } else {
            self.pop()
        }
    }

    /// Moves the smallest hot entries to the store until the slots are within the budget (less a
    /// sixteenth, so spills go in batches). Runs between steps only: a step's slot never moves.
    fn enforce_budget(&mut self) {
        let Some(cold) = &self.cold else {
            return;
        };
        let budget = cold.budget;
        if self.index.len() <= budget {
            return;
        }
        let target = budget - budget / 16;
        // Written end to end into buffers kept between spills: two allocations per entry (its id and
        // value) were a tenth of the cost of a new prediction with the table over its budget.
        let mut out = std::mem::take(&mut self.cold.as_mut().expect("a budget").spills);
        while self.index.len() > target {
            self.settle_expiry();
            if let Some(ahead) = self.expiry.run_ahead(2 * SPILL_AHEAD) {
                self.prefetch_entry(ahead);
            }
            if let Some(slot) = self.expiry.run_ahead(SPILL_AHEAD).and_then(|a| self.slots.get(a.slot as usize)) {
                // Asked for SPILL_AHEAD entries ago: its hash is likely at hand.
                self.index.prefetch(slot.hash);
            }
            let Some(item) = self.expiry.pop() else {
                break;
            };
            let s = item.slot;
            self.index.remove(self.slots[s as usize].hash, s);
            let start = out.values.data.len();
            self.encode_into(s, &mut out.values.data);
            out.values.ends.push(out.values.data.len());
            if self.dirty.is_some() && self.slots[s as usize].changed == self.generation {
                let value = out.values.data[start..].to_vec();
                self.cold.as_mut().expect("a budget").changed.insert(item.id.clone(), (item.expires, value));
            }
            let popped = out.rows.len() as u64;
            out.rows.push((u64::from_be_bytes(expiry_bytes(item.expires)), popped, item.expires));
            out.ids.push(item.id.as_bytes());
            self.slots[s as usize].id = self.vacant.clone();
            self.free.push(s);
        }
        let cold = self.cold.as_mut().expect("a budget");
        out.put_spilled(&mut cold.store).unwrap_or_else(|e| panic!("{e}"));
        cold.spills = out;
    }

    /// Asks the CPU for the memory a spill of `item`'s entry reads: its slot, label vectors and id. The
    /// entries a spill moves are the oldest in memory, so each of those reads is otherwise a cache miss
    /// (hundreds of nanoseconds each with 500,000 entries in memory), taken one after the other.
    fn prefetch_entry(&self, item: &Item) {
        // Addresses only (a prefetch reads nothing and never faults), so no bounds to check.
        let (s, at) = (item.slot as usize, item.slot as usize * self.n_labels);
        prefetch(self.slots.as_ptr().wrapping_add(s));
        prefetch(self.scores.as_ptr().wrapping_add(at));
        prefetch(self.predicted.as_ptr().wrapping_add(at));
        prefetch(self.known.as_ptr().wrapping_add(at));
        prefetch(self.actual.as_ptr().wrapping_add(at));
        prefetch(item.id.as_ptr());
    }

    /// Slot `s`'s value in the store (`encode_entry`), appended to `v`.
    fn encode_into(&self, s: u32, v: &mut Vec<u8>) {
        let (n, at) = (self.n_labels, s as usize * self.n_labels);
        let vectors = [&self.predicted[at..at + n], &self.known[at..at + n], &self.actual[at..at + n]];
        encode_entry_into(v, &self.slots[s as usize], &self.scores[at..at + n], vectors);
    }

    /// Pops the smallest expiry item and drops its entry unless the item is stale (the entry was
    /// rescheduled or is gone); returns what the dropped entry held.
    fn pop(&mut self) -> Option<Side> {
        let item = self.expiry.pop()?;
        if !Self::current(&self.slots, &item) {
            return None;
        }
        let side = side_of(&self.slots[item.slot as usize]);
        self.drop_entry(item.slot);
        Some(side)
    }

    /// The entry found for an id unless its TTL passed at the current watermark (then it expires now).
    /// Takes the lookup's result so that a step hashes its id once (twice for a new entry).
    fn live(&mut self, found: Option<u32>) -> Option<u32> {
        let s = found?;
        if self.slots[s as usize].expires < self.watermark {
            self.drop_entry(s);
            return None;
        }
        Some(s)
    }

    fn drop_entry(&mut self, s: u32) {
        self.touch(s);
        let slot = &self.slots[s as usize];
        self.index.remove(slot.hash, s);
        if !slot.has_pred {
            self.counters.pending_ground_truth -= 1;
            self.counters.expired_ground_truth += 1;
        } else if !slot.has_truth {
            self.counters.pending_prediction -= 1;
            self.counters.expired_prediction += 1;
            self.emit_unpend(s);
        }
        // A joined entry just leaves: its outcome stays counted.
        self.slots[s as usize].id = self.vacant.clone();
        self.free.push(s);
    }

    /// A new, empty entry for an id that is in neither tier; `hash` is the index's hash of `id`.
    fn insert(&mut self, id: &str, hash: u64) -> u32 {
        let slot = Slot {
            id: Arc::from(id),
            hash,
            born: self.births,
            expires: f64::NAN,
            has_pred: false,
            pred_ts: 0.0,
            pred_version: 0,
            has_truth: false,
            truth_ts: 0.0,
            truth_seq: 0,
            full: false,
            changed: 0,
        };
        self.births += 1;
        let s = self.insert_slot(slot);
        self.index.insert_new(hash, s, &*self.slots);
        s
    }

    fn insert_slot(&mut self, slot: Slot) -> u32 {
        match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = slot;
                s
            }
            None => {
                let n = self.n_labels;
                self.slots.push(slot);
                self.scores.resize(self.scores.len() + n, 0.0);
                self.predicted.resize(self.predicted.len() + n, false);
                self.known.resize(self.known.len() + n, false);
                self.actual.resize(self.actual.len() + n, false);
                (self.slots.len() - 1) as u32
            }
        }
    }

    /// A whole entry into a slot, indexed by its id (which the index must not hold): the slot's fields,
    /// scores and label vectors (predicted, known, actual).
    fn place(&mut self, mut slot: Slot, scores: &[f64], vectors: [&[bool]; 3]) -> u32 {
        slot.hash = self.index.hash(&slot.id);
        let hash = slot.hash;
        let s = self.insert_slot(slot);
        let (n, at) = (self.n_labels, s as usize * self.n_labels);
        self.scores[at..at + n].copy_from_slice(scores);
        self.predicted[at..at + n].copy_from_slice(vectors[0]);
        self.known[at..at + n].copy_from_slice(vectors[1]);
        self.actual[at..at + n].copy_from_slice(vectors[2]);
        self.index.insert_new(hash, s, &*self.slots);
        s
    }

    fn set_truth(&mut self, s: u32, g: &TruthIn, seq: i64) {
        let n = self.n_labels;
        let at = s as usize * n;
        self.known[at..at + n].copy_from_slice(g.known);
        self.actual[at..at + n].copy_from_slice(g.actual);
        let slot = &mut self.slots[s as usize];
        slot.has_truth = true;
        slot.truth_ts = g.ts;
        slot.truth_seq = seq;
        slot.full = g.full;
        self.touch(s);
    }

    fn schedule(&mut self, s: u32, expires: f64) {
        self.touch(s);
        let slot = &mut self.slots[s as usize];
        if slot.expires == expires {
            // A scheduled entry has a current item already (a fresh slot's expiry is NaN).
            return;
        }
        slot.expires = expires;
        self.expiry.push(Item { expires, id: slot.id.clone(), slot: s });
        // Rescheduling leaves stale items behind; pruning at 2x keeps the queue O(entries), amortised
        // (same bound as the Python table, whose pops it does not change: stale items are no-ops).
        if self.expiry.len() > 2 * self.index.len() + 1024 {
            self.prune_expiry();
        }
    }

    /// Drops the stale items, and all but one current item per entry (an entry rescheduled back to an
    /// earlier expiry has two).
    fn prune_expiry(&mut self) {
        let (slots, mut seen) = (&self.slots, vec![false; self.slots.len()]);
        self.expiry.retain(|item| Self::current(slots, item) && !std::mem::replace(&mut seen[item.slot as usize], true));
    }

    /// One item per live entry, from the slots (a restore). The slots are read in order, skipping the free
    /// ones: walking the index instead visits them in hash order, a cache miss per entry (a restore of
    /// millions). The queue's pops do not depend on the order its items come in.
    fn rebuild_expiry(&mut self) {
        let mut free = vec![false; self.slots.len()];
        for &s in &self.free {
            free[s as usize] = true;
        }
        let items = (self.slots.iter().zip(free).enumerate())
            .filter(|(_, (_, free))| !free)
            .map(|(s, (slot, _))| Item { expires: slot.expires, id: slot.id.clone(), slot: s as u32 })
            .collect();
        self.expiry = ExpiryQueue::from_items(items);
    }

    fn emit_unpend(&mut self, s: u32) {
        let (n, at) = (self.n_labels, s as usize * self.n_labels);
        let slot = &self.slots[s as usize];
        let o = &mut self.out;
        o.unpend_version.push(slot.pred_version);
        o.unpend_ts.push(slot.pred_ts);
        o.unpend_scores.extend_from_slice(&self.scores[at..at + n]);
        o.unpend_predicted.extend_from_slice(&self.predicted[at..at + n]);
    }

    fn emit_delay(&mut self, s: u32) {
        let slot = &self.slots[s as usize];
        let d = slot.truth_ts - slot.pred_ts;
        self.out.delay.push(if d > 0.0 { d } else { 0.0 });
    }

    fn emit_join(&mut self, s: u32, sign: f64) {
        let (n, at) = (self.n_labels, s as usize * self.n_labels);
        let slot = &self.slots[s as usize];
        let o = &mut self.out;
        o.join_version.push(slot.pred_version);
        o.join_obs.push(py_max(slot.pred_ts, slot.truth_ts));
        o.join_scores.extend_from_slice(&self.scores[at..at + n]);
        o.join_predicted.extend_from_slice(&self.predicted[at..at + n]);
        o.join_known.extend_from_slice(&self.known[at..at + n]);
        o.join_actual.extend_from_slice(&self.actual[at..at + n]);
        o.join_full.push(slot.full);
        o.join_sign.push(sign);
    }

    fn touch(&mut self, s: u32) {
        if let Some(dirty) = &mut self.dirty {
            let slot = &mut self.slots[s as usize];
            if slot.changed != self.generation {
                slot.changed = self.generation;
                dirty.push(slot.id.clone());
            }
        }
    }

    /// Starts a new record of changes: every slot's mark is stale from now on.
    fn next_generation(&mut self) {
        if self.generation == u32::MAX {
            // Never in practice (a clear per checkpoint); were it reached, marks of the first
            // generations must not pass for current ones.
            self.slots.iter_mut().for_each(|slot| slot.changed = 0);
            self.generation = 0;
        }
        self.generation += 1;
    }

    // --- checkpoints ---------------------------------------------------------------------------------

    /// Starts (or stops) recording which ids change; starting clears what was recorded.
    pub fn track_changes(&mut self, on: bool) {
        self.dirty = if on { Some(Vec::new()) } else { None };
        self.next_generation();
        if let Some(cold) = &mut self.cold {
            cold.changed.clear();
        }
    }

    /// The changed entries since tracking started or `clear_changes`: the live ones as checkpoint rows
    /// (sorted by id, so equal tables give equal changes) and the ids that left the table.
    pub fn changes(&self) -> (Checkpoint, Vec<Arc<str>>) {
        let Some(dirty) = &self.dirty else {
            return (Checkpoint::default(), Vec::new());
        };
        let mut ids: Vec<&Arc<str>> = dirty.iter().collect();
        ids.sort_unstable();
        ids.dedup();
        let mut live = Vec::new();
        let mut gone = Vec::new();
        for id in ids {
            match self.index.get(id, &*self.slots) {
                Some(s) => live.push(Src::Hot(s)),
                None => match self.cold_changed(id) {
                    Some(e) => live.push(Src::Cold(Box::new(e))),
                    None => gone.push(id.clone()),
                },
            }
        }
        (self.rows(live), gone)
    }

    /// Records `ids` as changed again: a checkpoint that took them was not written, so the next one
    /// must. An id now in the store is captured from there, as if it had moved there while changed.
    pub fn mark_changed(&mut self, ids: &[String]) {
        if self.dirty.is_none() {
            return;
        }
        for id in ids {
            if let Some(s) = self.index.get(id.as_str(), &*self.slots) {
                self.touch(s);
                continue;
            }
            let id: Arc<str> = Arc::from(id.as_str());
            if let Some(cold) = &mut self.cold {
                if !cold.changed.contains_key(&*id) {
                    if let Some(found) = cold.store.get(id.as_bytes()).unwrap_or_else(|e| panic!("{e}")) {
                        cold.changed.insert(id.clone(), found);
                    }
                }
            }
            self.dirty.as_mut().expect("tracking").push(id);
        }
    }

    /// How many ids changed (or left) since tracking started or `clear_changes`, at most: an id that left
    /// the table and came back counts twice.
    pub fn changed(&self) -> usize {
        self.dirty.as_ref().map_or(0, Vec::len)
    }

    pub fn clear_changes(&mut self) {
        if let Some(dirty) = &mut self.dirty {
            dirty.clear();
        }
        self.next_generation();
        if let Some(cold) = &mut self.cold {
            cold.changed.clear();
        }
    }

    /// The entries in insertion order (Python's dict order), label vectors zero where the side is absent.
    pub fn export(&self) -> Checkpoint {
        let mut order: Vec<(u64, Src)> =
            self.index.slots().map(|s| (self.slots[s as usize].born, Src::Hot(s))).collect();
        if let Some(cold) = &self.cold {
            for row in cold.store.scan() {
                let (id, expires, value) = row.unwrap_or_else(|e| panic!("{e}"));
                let id: Arc<str> = Arc::from(std::str::from_utf8(&id).expect("ids are UTF-8"));
                let e = decode(id, expires, &value, self.n_labels);
                order.push((e.slot.born, Src::Cold(Box::new(e))));
            }
        }
        order.sort_unstable_by_key(|(born, _)| *born);
        self.rows(order.into_iter().map(|(_, src)| src).collect())
    }

    /// A changed entry in the store, from the values captured when it moved there.
    fn cold_changed(&self, id: &Arc<str>) -> Option<Loaded> {
        let cold = self.cold.as_ref()?;
        let (expires, value) = cold.changed.get(&**id)?;
        Some(decode(id.clone(), *expires, value, self.n_labels))
    }

    fn rows(&self, order: Vec<Src>) -> Checkpoint {
        let n = self.n_labels;
        let mut c = Checkpoint::default();
        for src in order {
            let (slot, scores, predicted, known, actual) = match &src {
                Src::Hot(s) => {
                    let at = *s as usize * n;
                    let slot = &self.slots[*s as usize];
                    (slot, &self.scores[at..at + n], &self.predicted[at..at + n], &self.known[at..at + n],
                     &self.actual[at..at + n])
                }
                Src::Cold(e) => (&e.slot, &e.scores[..], &e.predicted[..], &e.known[..], &e.actual[..]),
            };
            c.ids.push(slot.id.clone());
            c.expires.push(slot.expires);
            c.has_pred.push(slot.has_pred);
            c.has_truth.push(slot.has_truth);
            if slot.has_pred {
                c.pred_ts.push(slot.pred_ts);
                c.pred_version.push(slot.pred_version);
                c.scores.extend_from_slice(scores);
                c.predicted.extend_from_slice(predicted);
            } else {
                c.pred_ts.push(0.0);
                c.pred_version.push(0);
                c.scores.extend(std::iter::repeat_n(0.0, n));
                c.predicted.extend(std::iter::repeat_n(false, n));
            }
            if slot.has_truth {
                c.truth_ts.push(slot.truth_ts);
                c.seq.push(slot.truth_seq);
                c.full.push(slot.full);
                c.known.extend_from_slice(known);
                c.actual.extend_from_slice(actual);
            } else {
                c.truth_ts.push(0.0);
                c.seq.push(0);
                c.full.push(false);
                c.known.extend(std::iter::repeat_n(false, n));
                c.actual.extend(std::iter::repeat_n(false, n));
            }
        }
        c
    }

    /// Replaces the entries with a checkpoint's (the expiry order is rebuilt from `(expires, id)`); the counters
    /// are the caller's to set. Errs on a repeated id or a column of the wrong length.
    pub fn restore(&mut self, mut c: Checkpoint) -> Result<(), String> {
        let (k, n) = (c.ids.len(), self.n_labels);
        let lengths = [
            c.has_pred.len(),
            c.pred_ts.len(),
            c.pred_version.len(),
            c.has_truth.len(),
            c.truth_ts.len(),
            c.full.len(),
            c.seq.len(),
            c.expires.len(),
        ];
        let matrices = [c.scores.len(), c.predicted.len(), c.known.len(), c.actual.len()];
        if lengths.iter().any(|&x| x != k) || matrices.iter().any(|&x| x != k * n) {
            return Err("join columns of different lengths".into());
        }
        if self.cold.is_some() {
            return self.restore_within_budget(c);
        }
        let mut index = IdIndex::default();
        let mut slots: Vec<Slot> = Vec::with_capacity(k);
        index.reserve(k, &*slots);
        for (i, id) in std::mem::take(&mut c.ids).into_iter().enumerate() {
            let mut slot = c.slot(i, id);
            slot.hash = index.hash(&slot.id);
            if index.get_hashed(&slot.id, slot.hash, &*slots).is_some() {
                return Err(format!("prediction id {:?} appears twice", &*slot.id));
            }
            let hash = slot.hash;
            slots.push(slot);
            index.insert_new(hash, i as u32, &*slots);
        }
        self.index = index;
        self.slots = slots;
        self.free.clear();
        (self.scores, self.predicted, self.known, self.actual) = (c.scores, c.predicted, c.known, c.actual);
        self.loaded(k);
        Ok(())
    }

    /// `restore` with a budget: the entries that expire last (up to the budget less a sixteenth, as a
    /// spill leaves it) go to memory, the rest straight into the store, sorted, in one bulk load. Any
    /// split is the same table (lookups and expiry read both tiers); this one is what spilling would
    /// have kept in memory, without a store write per entry.
    fn restore_within_budget(&mut self, mut c: Checkpoint) -> Result<(), String> {
        let n = self.n_labels;
        self.clear_changes();
        (self.index, self.slots, self.free, self.expiry) = (IdIndex::default(), Vec::new(), Vec::new(), ExpiryQueue::default());
        (self.scores, self.predicted, self.known, self.actual) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let ids = std::mem::take(&mut c.ids);
        let k = ids.len();
        let mut by_id: Vec<u32> = (0..k as u32).collect();
        by_id.sort_unstable_by(|&a, &b| ids[a as usize].cmp(&ids[b as usize]));
        if let Some(w) = by_id.windows(2).find(|w| ids[w[0] as usize] == ids[w[1] as usize]) {
            return Err(format!("prediction id {:?} appears twice", &*ids[w[0] as usize]));
        }
        let budget = self.cold.as_ref().expect("a budget").budget;
        let hot = if k <= budget { k } else { budget - budget / 16 };
        let mut by_expiry: Vec<u32> = (0..k as u32).collect();
        by_expiry.sort_unstable_by(|&a, &b| {
            let (a, b) = (a as usize, b as usize);
            c.expires[a].partial_cmp(&c.expires[b]).unwrap_or(Ordering::Equal).then_with(|| ids[a].cmp(&ids[b]))
        });
        let mut cold = vec![false; k];
        for &i in &by_expiry[..k - hot] {
            cold[i as usize] = true;
        }
        let row = |i: usize| {
            let at = i * n;
            encode_entry(
                &c.slot(i, ids[i].clone()),
                &c.scores[at..at + n],
                &c.predicted[at..at + n],
                &c.known[at..at + n],
                &c.actual[at..at + n],
            )
        };
        let stored = by_expiry[..k - hot].iter().map(|&i| (ids[i as usize].as_bytes(), c.expires[i as usize], row(i as usize)));
        let stored_ids = by_id.iter().filter(|&&i| cold[i as usize]).map(|&i| (ids[i as usize].as_bytes(), c.expires[i as usize]));
        self.cold.as_mut().expect("a budget").store.load_sorted(stored, stored_ids)?;
        for (i, id) in ids.iter().enumerate() {
            if cold[i] {
                continue;
            }
            let at = i * n..(i + 1) * n;
            let vectors = [&c.predicted[at.clone()], &c.known[at.clone()], &c.actual[at.clone()]];
            self.place(c.slot(i, id.clone()), &c.scores[at], vectors);
        }
        self.loaded(k);
        Ok(())
    }

    /// What every fill of an empty table ends with, once its `k` entries are in their slots (and the
    /// store): births continue after them, the expiry order comes from the slots, nothing is pending
    /// output or recorded as changed.
    fn loaded(&mut self, k: usize) {
        self.births = k as u64;
        self.rebuild_expiry();
        self.out = Output::default();
        self.clear_changes();
    }
}

/// The fewest candidates `load_staged` holds before handing the ones that expire first over (halved):
/// small budgets still hand over in large batches. Small in tests, so that they hand over many times.
#[cfg(not(test))]
const MIN_LOAD_WINDOW: usize = 1 << 16;
#[cfg(test)]
const MIN_LOAD_WINDOW: usize = 64;

/// Entries on their way into a table with a budget, keeping those that expire last. The loader reads ids
/// in ascending order, so an entry's arrival number orders ties on the expiry as its id does and
/// entries compare as integers. Up to twice the budget are held; then a selection (linear) picks the
/// budget's worth that expire last, and one pass in row order hands over the others and moves the kept
/// ones to the front, in place. Rows are appended end to end and only ever read in row order: visiting them in
/// expiry order (slots reused at random) was a cache miss or two per entry, most of a restore's own time.
struct Candidates {
    /// Per row: its expiry as ordered bits, and its arrival.
    keys: Vec<(u64, u64)>,
    ids: Packed,
    /// The rows' changelog values, `width` bytes each.
    values: Vec<u8>,
    width: usize,
}

impl Candidates {
    /// Room for `n` rows with ids of about `id_len` bytes: the columns of a million rows copied at each
    /// doubling were a restore's largest copy.
    fn new(width: usize, n: usize, id_len: usize) -> Self {
        Candidates {
            keys: Vec::with_capacity(n),
            ids: Packed::with_capacity(n, n * id_len),
            values: Vec::with_capacity(n * width),
            width,
        }
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    fn push(&mut self, expires: f64, arrival: u64, id: &[u8], value: &[u8]) {
        self.keys.push((u64::from_be_bytes(expiry_bytes(expires)), arrival));
        self.ids.push(id);
        self.values.extend_from_slice(value);
    }

    /// Row `i`: (arrival, id, changelog value).
    fn row(&self, i: usize) -> (u64, &[u8], &[u8]) {
        (self.keys[i].1, self.ids.get(i), &self.values[i * self.width..(i + 1) * self.width])
    }

    /// Keeps the `keep` that expire last; `f` gets each of the others, in row order, as (arrival, id,
    /// changelog value).
    fn keep_last(
        &mut self,
        keep: usize,
        mut f: impl FnMut(u64, &[u8], &[u8]) -> Result<(), String>,
    ) -> Result<(), String> {
        let n = self.len();
        if n <= keep {
            return Ok(());
        }
        let cut = n - keep;
        let mut leaving = vec![true; n];
        if keep > 0 {
            let mut order: Vec<(u64, u64, u32)> =
                self.keys.iter().enumerate().map(|(i, &(key, arrival))| (key, arrival, i as u32)).collect();
            order.select_nth_unstable(cut);
            for &(_, _, i) in &order[cut..] {
                leaving[i as usize] = false;
            }
        }
        // The kept rows move to the front in place (row w <= row i, and its bytes start no later): a
        // fresh set of columns per call was hundreds of megabytes of new pages to fault in each time.
        let (width, mut w, mut w_bytes) = (self.width, 0, 0);
        for (i, &leaves) in leaving.iter().enumerate() {
            if leaves {
                let (arrival, id, value) = self.row(i);
                f(arrival, id, value)?;
                continue;
            }
            // Row i's start is still its own: rows before it were either all kept in place, or fewer
            // than i were written.
            let (start, end) = (if i == 0 { 0 } else { self.ids.ends[i - 1] }, self.ids.ends[i]);
            self.ids.data.copy_within(start..end, w_bytes);
            w_bytes += end - start;
            self.ids.ends[w] = w_bytes;
            self.values.copy_within(i * width..(i + 1) * width, w * width);
            self.keys[w] = self.keys[i];
            w += 1;
        }
        self.keys.truncate(w);
        self.ids.ends.truncate(w);
        self.ids.data.truncate(w_bytes);
        self.values.truncate(w * width);
        Ok(())
    }
}

/// Byte strings end to end in one buffer: rows of a restore, without an allocation per string.
#[derive(Default)]
struct Packed {
    data: Vec<u8>,
    ends: Vec<usize>,
}

impl Packed {
    fn with_capacity(n: usize, bytes: usize) -> Self {
        Packed { data: Vec::with_capacity(bytes), ends: Vec::with_capacity(n) }
    }

    fn push(&mut self, s: &[u8]) {
        self.data.extend_from_slice(s);
        self.ends.push(self.data.len());
    }

    fn get(&self, i: usize) -> &[u8] {
        &self.data[if i == 0 { 0 } else { self.ends[i - 1] }..self.ends[i]]
    }

    fn clear(&mut self) {
        self.data.clear();
        self.ends.clear();
    }
}

impl JoinTable {
    /// Fills an empty table with entries as the changelog encodes them (restore.rs), given once each in
    /// ascending id order (a staged restore), holding at most the memory budget of them at a time: the
    /// entries that expire last are kept (`Candidates`), those pushed out go to the store an epoch at a
    /// time, and the split is that of `restore_within_budget`. `expected` (at least the count) sizes the
    /// store's id filter. Returns how many were loaded.
    pub fn load_staged<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &mut self,
        rows: impl Iterator<Item = Result<(K, V), String>>,
        expected: usize,
    ) -> Result<usize, String> {
        if !self.index.is_empty() || self.cold.as_ref().is_some_and(|c| c.store.len() > 0) {
            return Err("entries can only be loaded into an empty table".into());
        }
        let (n, width) = (self.n_labels, entry_width(self.n_labels));
        let budget = self.cold.as_ref().map_or(usize::MAX, |c| c.budget);
        // Candidates held before the ones that expire first are handed over (unbounded without a store).
        let window = budget.max(MIN_LOAD_WINDOW).saturating_mul(2);
        if let Some(cold) = &mut self.cold {
            cold.store.expect(expected);
        }
        let mut entry = ChangelogEntry::new(n);
        let mut kept = Candidates::new(width, 0, 0);
        let mut out = Spills::default();
        let mut k = 0u64;
        let mut previous: Option<K> = None;
        for row in rows {
            let (id, value) = row?;
            let (id_bytes, value) = (id.as_ref(), value.as_ref());
            if value.len() != width {
                return Err(format!("a join entry is not {width} bytes long (another label count?)"));
            }
            std::str::from_utf8(id_bytes).map_err(|_| "a prediction id is not valid UTF-8".to_string())?;
            if previous.as_ref().is_some_and(|p| p.as_ref() >= id_bytes) {
                return Err("staged entries out of id order".into());
            }
            let arrival = k;
            k += 1;
            if self.cold.is_none() {
                entry.read(value)?;
                self.load_hot(id_bytes, arrival, &entry);
            } else {
                if kept.keys.capacity() == 0 {
                    kept = Candidates::new(width, window, id_bytes.len());
                }
                kept.push(entry_expires(value), arrival, id_bytes, value);
                if kept.len() >= window {
                    kept.keep_last(budget, |arrival, id, value| self.spill_loaded(arrival, id, value, &mut entry, &mut out))?;
                }
            }
            previous = Some(id);
        }
        let k = k as usize;
        let hot = if k <= budget { k } else { budget - budget / 16 };
        kept.keep_last(hot, |arrival, id, value| self.spill_loaded(arrival, id, value, &mut entry, &mut out))?;
        self.put_loaded(&mut out)?;
        for i in 0..kept.len() {
            let (arrival, id, value) = kept.row(i);
            entry.read(value)?;
            self.load_hot(id, arrival, &entry);
        }
        self.loaded(k);
        Ok(k)
    }

    fn loaded_slot(id: Arc<str>, born: u64, e: &ChangelogEntry) -> Slot {
        Slot {
            id,
            hash: 0,
            born,
            expires: e.expires,
            has_pred: e.has_pred,
            pred_ts: e.pred_ts,
            pred_version: e.pred_version,
            has_truth: e.has_truth,
            truth_ts: e.truth_ts,
            truth_seq: e.seq,
            full: e.full,
            changed: 0,
        }
    }

    fn load_hot(&mut self, id: &[u8], born: u64, e: &ChangelogEntry) {
        let id: Arc<str> = Arc::from(std::str::from_utf8(id).expect("checked when read"));
        self.place(Self::loaded_slot(id, born, e), &e.scores, [&e.predicted, &e.known, &e.actual]);
    }

    /// An entry the budget has no room for, into the store (an epoch's worth at a time).
    fn spill_loaded(
        &mut self,
        arrival: u64,
        id: &[u8],
        value: &[u8],
        entry: &mut ChangelogEntry,
        out: &mut Spills,
    ) -> Result<(), String> {
        entry.read(value)?;
        out.rows.push((u64::from_be_bytes(expiry_bytes(entry.expires)), arrival, entry.expires));
        out.ids.push(id);
        encode_loaded_into(&mut out.values.data, arrival, entry);
        out.values.ends.push(out.values.data.len());
        if out.rows.len() >= EPOCH_ENTRIES {
            self.put_loaded(out)?;
        }
        Ok(())
    }

    /// Spilled entries into the store, put in its two orders by integer keys: arrival is id order. `out`
    /// is emptied, keeping its buffers for the next epoch (growing fresh ones faulted in new pages).
    fn put_loaded(&mut self, out: &mut Spills) -> Result<(), String> {
        let Some(cold) = &mut self.cold else {
            return Ok(());
        };
        // Sorting positions: the entries stay where they were written, and the store reads them in place.
        let mut order: Vec<(u64, u64, u32)> = out.rows.iter().enumerate().map(|(i, r)| (r.0, r.1, i as u32)).collect();
        order.sort_unstable();
        let mut by_id: Vec<(u64, u32)> =
            order.iter().enumerate().map(|(at, &(_, arrival, _))| (arrival, at as u32)).collect();
        by_id.sort_unstable();
        let by_id: Vec<u32> = by_id.into_iter().map(|(_, at)| at).collect();
        let sorted: Vec<(&[u8], f64, &[u8])> = order.into_iter().map(|(_, _, i)| out.get(i as usize)).collect();
        cold.store.put_sorted(&sorted, &by_id, true)?;
        out.clear();
        Ok(())
    }
}

/// Entries on their way to the store, end to end: per entry its expiry as ordered bits, its arrival
/// (a staged load's id order; a spill's pop order) and expiry, its id and its encoded value. One buffer
/// each rather than two allocations per entry, which a million spilled entries then freed one by one.
#[derive(Default)]
struct Spills {
    rows: Vec<(u64, u64, f64)>,
    ids: Packed,
    values: Packed,
}

impl Spills {
    /// Entry `i`: (id, expires, encoded value).
    fn get(&self, i: usize) -> (&[u8], f64, &[u8]) {
        (self.ids.get(i), self.rows[i].2, self.values.get(i))
    }

    fn clear(&mut self) {
        self.rows.clear();
        self.ids.clear();
        self.values.clear();
    }

    /// A spill (entries pushed in the order they left the expiry queue) into the store, and emptied.
    fn put_spilled(&mut self, store: &mut ColdStore) -> Result<(), String> {
        let mut entries: Vec<(&[u8], f64, &[u8])> = (0..self.rows.len()).map(|i| self.get(i)).collect();
        store.put_many(&mut entries)?;
        self.clear();
        Ok(())
    }
}

/// The table's entries as columns, one row per entry (the layout of the Python engine's checkpoints).
#[derive(Default, Debug, Clone)]
pub struct Checkpoint {
    pub ids: Vec<Arc<str>>,
    pub has_pred: Vec<bool>,
    pub pred_ts: Vec<f64>,
    pub pred_version: Vec<i64>,
    pub scores: Vec<f64>,
    pub predicted: Vec<bool>,
    pub has_truth: Vec<bool>,
    pub truth_ts: Vec<f64>,
    pub known: Vec<bool>,
    pub actual: Vec<bool>,
    pub full: Vec<bool>,
    pub seq: Vec<i64>,
    pub expires: Vec<f64>,
}

impl Checkpoint {
    /// Row `i`'s entry (its label vectors stay in the checkpoint's flat arrays).
    fn slot(&self, i: usize, id: Arc<str>) -> Slot {
        Slot {
            id,
            hash: 0,
            born: i as u64,
            expires: self.expires[i],
            has_pred: self.has_pred[i],
            pred_ts: self.pred_ts[i],
            pred_version: self.pred_version[i],
            has_truth: self.has_truth[i],
            truth_ts: self.truth_ts[i],
            truth_seq: self.seq[i],
            full: self.full[i],
            changed: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: f64 = 100.0;

    fn table(cap: usize) -> JoinTable {
        JoinTable::new(TTL, cap, 2)
    }

    fn pred(t: &mut JoinTable, id: &str, ts: f64) -> bool {
        t.add_prediction(id, t.hash(id), &PredIn { ts, version: 0, scores: &[0.9, 0.1], predicted: &[true, false] })
    }

    fn ids(t: &JoinTable) -> Vec<String> {
        t.export().ids.iter().map(|id| id.to_string()).collect()
    }

    fn truth(t: &mut JoinTable, id: &str, ts: f64, actual: [bool; 2]) {
        t.add_ground_truth(id, t.hash(id), &TruthIn { ts, known: &[true, true], actual: &actual, full: true });
    }

    #[test]
    fn stored_values_decode_to_what_was_encoded() {
        let slot = |born, pred_ts, version, truth_ts, seq, flags: u8| Slot {
            id: Arc::from("x"),
            hash: 0,
            born,
            expires: 5.0,
            has_pred: flags & 1 != 0,
            pred_ts,
            pred_version: version,
            has_truth: flags & 2 != 0,
            truth_ts,
            truth_seq: seq,
            full: flags & 4 != 0,
            changed: 0,
        };
        let cases = [
            (slot(0, 1.5e9, 0, 0.0, 0, 1), 6),
            (slot(u64::MAX, -0.0, i64::MIN, 0.0, i64::MAX, 7), 1),
            (slot(300, 0.0, -1, -0.0, -300, 6), 8),
            (slot(1 << 40, f64::MIN_POSITIVE, 127, 1.7e9 + 0.25, 128, 3), 11),
        ];
        for (s, n) in cases {
            let scores: Vec<f64> = (0..n).map(|j| j as f64 / 7.0 - 0.5).collect();
            let bools = |k: usize| (0..n).map(|j| (j * 5 + k) % 3 == 0).collect::<Vec<bool>>();
            let (p, k, a) = (bools(0), bools(1), bools(2));
            let v = encode_entry(&s, &scores, &p, &k, &a);
            let e = decode(Arc::from("x"), 5.0, &v, n);
            let got = (e.slot.born, e.slot.pred_ts.to_bits(), e.slot.pred_version, e.slot.truth_ts.to_bits());
            assert_eq!(got, (s.born, s.pred_ts.to_bits(), s.pred_version, s.truth_ts.to_bits()));
            assert_eq!(
                (e.slot.truth_seq, e.slot.has_pred, e.slot.has_truth, e.slot.full),
                (s.truth_seq, s.has_pred, s.has_truth, s.full)
            );
            assert_eq!(
                e.scores.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                scores.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
            assert_eq!((e.predicted, e.known, e.actual), (p, k, a));
        }
        // A pending 6-label prediction: varint born, flags, prediction time, version and sequence, six
        // scores, 18 bits.
        let pending =
            encode_entry(&slot(10_000_000, 1.79e9, 0, 0.0, 0, 1), &[0.5; 6], &[true; 6], &[false; 6], &[false; 6]);
        assert_eq!(pending.len(), 4 + 1 + 8 + 1 + 1 + 48 + 3);
    }

    #[test]
    fn either_side_first() {
        let mut t = table(100);
        assert!(pred(&mut t, "a", 1000.0));
        truth(&mut t, "a", 1010.0, [true, false]);
        truth(&mut t, "b", 1020.0, [false, false]);
        assert!(pred(&mut t, "b", 1005.0));
        assert_eq!(t.counters.joined, 2);
        assert_eq!((t.counters.pending_prediction, t.counters.pending_ground_truth), (0, 0));
        assert_eq!(t.out.delay, [10.0, 15.0]);
        assert_eq!(t.out.unpend_ts, [1000.0, 1005.0]);
        assert_eq!(t.out.join_obs, [1010.0, 1020.0]);
        assert_eq!(t.out.join_sign, [1.0, 1.0]);
        assert_eq!(t.out.join_actual, [true, false, false, false]);
    }

    #[test]
    fn duplicates_and_corrections() {
        let mut t = table(100);
        pred(&mut t, "a", 1000.0);
        assert!(!pred(&mut t, "a", 1000.0));
        truth(&mut t, "a", 1010.0, [true, false]);
        truth(&mut t, "a", 1010.0, [true, false]); // re-send: same time, same labels
        truth(&mut t, "a", 1005.0, [false, false]); // older: stale
        assert_eq!(t.counters.duplicates_ground_truth, 2);
        truth(&mut t, "a", 1010.0, [false, true]); // same time, later arrival, other labels: wins
        truth(&mut t, "a", 1020.0, [false, true]); // later time, same labels: replaces
        assert_eq!(t.counters.corrections, 2);
        assert_eq!(t.out.join_sign, [1.0, -1.0, 1.0, -1.0, 1.0]);
        assert_eq!(t.out.join_obs, [1010.0, 1010.0, 1010.0, 1010.0, 1020.0]);
        assert_eq!(&t.out.join_actual[2..6], [true, false, false, true]);
        assert_eq!(t.out.delay, [10.0]);
        assert_eq!(t.seq, 5);
    }

    #[test]
    fn expiry_on_event_time_and_on_partner_arrival() {
        let mut t = table(100);
        pred(&mut t, "a", 1000.0);
        pred(&mut t, "z", 1150.0); // watermark 1150: "a" (expires 1100) is past its TTL
        assert_eq!(t.len(), 2); // ... but nothing expired yet
        truth(&mut t, "a", 1001.0, [true, true]); // drops the old "a" on arrival, waits on its own
        assert_eq!(t.counters.expired_prediction, 1);
        assert_eq!(t.counters.pending_ground_truth, 1);
        assert_eq!(t.out.join_sign.len(), 0);
        t.watermark = 1102.0;
        t.expire();
        assert_eq!(t.len(), 1);
        t.watermark = 1300.0;
        t.expire();
        assert_eq!(t.len(), 0);
        assert_eq!((t.counters.expired_prediction, t.counters.expired_ground_truth), (2, 1));
        assert_eq!(t.out.unpend_ts, [1000.0, 1150.0]);
    }

    #[test]
    fn expired_prediction_is_no_duplicate() {
        let mut t = table(100);
        pred(&mut t, "a", 1000.0);
        assert!(!pred(&mut t, "a", 1100.0)); // expires 1100 >= max(watermark, ts)
        assert!(pred(&mut t, "a", 1100.5)); // past its TTL at the new time: a fresh prediction
        assert_eq!(t.counters.duplicates_prediction, 1);
        assert_eq!(t.counters.expired_prediction, 1);
        assert_eq!(t.counters.pending_prediction, 1);
    }

    #[test]
    fn cap_evicts_in_expiry_then_id_order() {
        let mut t = table(2);
        pred(&mut t, "b", 1000.0);
        pred(&mut t, "a", 1000.0);
        truth(&mut t, "a", 1000.0, [true, true]);
        truth(&mut t, "c", 1000.0, [false, false]); // three entries, all expiring at 1100: "a" goes
        assert_eq!(t.counters.evicted_joined, 1);
        pred(&mut t, "d", 999.0); // the smallest expiry: evicts itself
        assert_eq!(t.counters.evicted_prediction, 1);
        assert_eq!(t.counters.expired_prediction, 1);
        assert_eq!(ids(&t), ["b", "c"]);
        truth(&mut t, "e", 1001.0, [false, false]); // evicts "b" (1100) before "c" (1100, later id)
        assert_eq!(ids(&t), ["c", "e"]);
        assert_eq!(t.counters.evicted_prediction, 2);
    }

    #[test]
    fn code_point_order_on_ties() {
        let mut t = table(1);
        pred(&mut t, "\u{e9}", 1000.0); // U+00E9 sorts after "z"
        pred(&mut t, "z", 1000.0);
        assert_eq!(ids(&t), ["\u{e9}"]);
    }

    #[test]
    fn heap_stays_bounded_under_resent_truth() {
        let mut t = table(10);
        for i in 0..10_000 {
            truth(&mut t, "a", 1000.0 + i as f64, [i % 2 == 0, false]);
        }
        assert!(t.expiry.len() <= 2 * t.len() + 1025);
        t.watermark = 1e9;
        t.expire();
        assert_eq!(t.counters.expired_ground_truth, 1);
        assert_eq!(t.counters.pending_ground_truth, 0);
    }

    /// The same steps on a table with everything in memory and on tables with a budget of 1-5 (spilling
    /// to the store and loading back all the time): same outputs, counters and entries, so expiry and
    /// cap eviction took entries from the two tiers in exactly the `(expires, id)` order.
    #[test]
    fn tiers_merge_in_expiry_then_id_order() {
        for budget in 1..=5 {
            for cap in [3, 6, 50] {
                let mut mem = table(cap);
                let mut tiered = JoinTable::with_budget(TTL, cap, 2, budget, None).unwrap();
                mem.track_changes(true);
                tiered.track_changes(true);
                let mut x: u64 = 7 + budget as u64;
                for step in 0..3000 {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let id = format!("i{}", (x >> 33) % 13);
                    // Coarse times give many equal expiries, so the id decides the order.
                    let ts = 1000.0 + (step / 7) as f64 * 10.0 - ((x >> 20) % 4) as f64 * 10.0;
                    for t in [&mut mem, &mut tiered] {
                        if (x >> 40) % 3 == 0 {
                            truth(t, &id, ts, [(x >> 45) % 2 == 0, (x >> 46) % 2 == 0]);
                        } else {
                            pred(t, &id, ts);
                        }
                        if step % 11 == 0 {
                            t.expire();
                        }
                    }
                    if step % 17 == 0 {
                        // What a checkpoint writes: the same live rows and departures from both tiers.
                        assert_eq!(format!("{:?}", mem.changes()), format!("{:?}", tiered.changes()));
                        mem.clear_changes();
                        tiered.clear_changes();
                    }
                    assert!(tiered.hot_len() <= budget + 1);
                }
                assert!(tiered.len() > tiered.hot_len() || tiered.len() <= budget);
                assert_eq!(mem.counters, tiered.counters);
                assert_eq!(format!("{:?}", mem.out), format!("{:?}", tiered.out));
                assert_eq!(format!("{:?}", mem.export()), format!("{:?}", tiered.export()));
            }
        }
    }

    #[test]
    fn cap_evicts_across_tiers() {
        let mut t = JoinTable::with_budget(TTL, 2, 2, 1, None).unwrap();
        pred(&mut t, "b", 1000.0);
        pred(&mut t, "a", 1000.0);
        assert_eq!((t.len(), t.hot_len()), (2, 1));
        pred(&mut t, "c", 1000.0); // "a" goes first of the three equal expiries, wherever it is
        assert_eq!(ids(&t), ["b", "c"]);
        pred(&mut t, "d", 999.0); // the smallest expiry evicts itself
        assert_eq!(ids(&t), ["b", "c"]);
        assert_eq!(t.counters.evicted_prediction, 2);
        t.watermark = 1100.5;
        t.expire();
        assert_eq!(t.len(), 0);
        assert_eq!(t.out.unpend_ts.len(), 4);
    }

    #[test]
    fn checkpoint_round_trip() {
        let mut t = table(100);
        pred(&mut t, "b", 1000.0);
        truth(&mut t, "a", 990.0, [true, false]);
        pred(&mut t, "c", 1001.0);
        truth(&mut t, "c", 1002.0, [false, true]);
        let c = t.export();
        assert_eq!(ids(&t), ["b", "a", "c"]);
        assert_eq!(c.scores, [0.9, 0.1, 0.0, 0.0, 0.9, 0.1]);
        assert_eq!(c.known, [false, false, true, true, true, true]);
        assert_eq!(c.seq, [0, 1, 2]);
        let mut u = table(100);
        u.restore(c.clone()).unwrap();
        assert_eq!(format!("{:?}", u.export()), format!("{c:?}"));
        let mut tiered = JoinTable::with_budget(TTL, 100, 2, 1, None).unwrap();
        tiered.restore(c.clone()).unwrap();
        assert_eq!((tiered.len(), tiered.hot_len()), (3, 1));
        assert_eq!(format!("{:?}", tiered.export()), format!("{c:?}"));
        let mut twice = c.clone();
        twice.ids[2] = twice.ids[0].clone(); // the first copy is in the store by then
        assert!(tiered.restore(twice).is_err());
        u.watermark = 1095.0;
        u.expire();
        assert_eq!(ids(&u), ["b", "c"]);
        truth(&mut u, "b", 1003.0, [true, true]);
        assert_eq!(u.out.join_sign, [1.0]);
        let mut dup = c.clone();
        dup.ids[1] = dup.ids[0].clone();
        assert!(u.restore(dup).is_err());
        let mut short = c;
        short.expires.pop();
        assert!(u.restore(short).is_err());
    }

    /// The changelog rows of a checkpoint, in id order, as a staged restore reads them back.
    fn staged_rows(c: &Checkpoint) -> Vec<Result<(Vec<u8>, Vec<u8>), String>> {
        let n = c.scores.len() / c.ids.len().max(1);
        let mut rows: Vec<(Vec<u8>, Vec<u8>)> = (0..c.ids.len())
            .map(|i| {
                let mut e = ChangelogEntry::new(n);
                (e.pred_ts, e.truth_ts, e.expires) = (c.pred_ts[i], c.truth_ts[i], c.expires[i]);
                (e.pred_version, e.seq) = (c.pred_version[i], c.seq[i]);
                (e.has_pred, e.has_truth, e.full) = (c.has_pred[i], c.has_truth[i], c.full[i]);
                e.scores.copy_from_slice(&c.scores[i * n..(i + 1) * n]);
                e.predicted.copy_from_slice(&c.predicted[i * n..(i + 1) * n]);
                e.known.copy_from_slice(&c.known[i * n..(i + 1) * n]);
                e.actual.copy_from_slice(&c.actual[i * n..(i + 1) * n]);
                (c.ids[i].as_bytes().to_vec(), crate::restore::tests::encode(&e))
            })
            .collect();
        rows.sort();
        rows.into_iter().map(Ok).collect()
    }

    /// Export rows by id, as text: tables holding the same entries compare equal whatever their order.
    fn by_id(t: &JoinTable) -> Vec<String> {
        let c = t.export();
        let n = t.n_labels;
        let mut rows: Vec<String> = (0..c.ids.len())
            .map(|i| {
                format!(
                    "{} {} {} {} {} {} {} {} {} {:?} {:?} {:?} {:?}",
                    c.ids[i], c.has_pred[i], c.pred_ts[i], c.pred_version[i], c.has_truth[i], c.truth_ts[i],
                    c.full[i], c.seq[i], c.expires[i], &c.scores[i * n..(i + 1) * n], &c.predicted[i * n..(i + 1) * n],
                    &c.known[i * n..(i + 1) * n], &c.actual[i * n..(i + 1) * n]
                )
            })
            .collect();
        rows.sort();
        rows
    }

    #[test]
    fn a_staged_load_splits_like_a_restore_and_goes_on_alike() {
        let mut t = table(10_000);
        for i in 0..3000 {
            // Expiries tie in pairs, so the split falls between entries of one expiry.
            pred(&mut t, &format!("p{:05}", (i * 7919) % 3000), 1000.0 + (i / 2) as f64);
            if i % 5 == 0 {
                truth(&mut t, &format!("p{:05}", (i * 31) % 3000), 1001.0 + (i / 2) as f64, [i % 2 == 0, true]);
            }
        }
        let c = t.export();
        for budget in [1, 40, 2999, 5000] {
            let mut restored = JoinTable::with_budget(TTL, 10_000, 2, budget, None).unwrap();
            restored.restore(c.clone()).unwrap();
            let mut loaded = JoinTable::with_budget(TTL, 10_000, 2, budget, None).unwrap();
            assert_eq!(loaded.load_staged(staged_rows(&c).into_iter(), 3000).unwrap(), 3000);
            assert_eq!((loaded.len(), loaded.hot_len()), (restored.len(), restored.hot_len()), "{budget}");
            assert_eq!(by_id(&loaded), by_id(&restored));
            // Expiry then takes the same entries in the same order.
            for table in [&mut restored, &mut loaded] {
                table.watermark = 1900.0;
                table.expire();
            }
            assert_eq!(by_id(&loaded), by_id(&restored));
            assert_eq!(format!("{:?}", loaded.out), format!("{:?}", restored.out));
        }
        let mut unbudgeted = table(10_000);
        unbudgeted.load_staged(staged_rows(&c).into_iter(), 0).unwrap();
        assert_eq!(by_id(&unbudgeted), by_id(&t));
        let mut rows = staged_rows(&c);
        rows.swap(0, 1);
        assert!(table(10_000).load_staged(rows.into_iter(), 0).unwrap_err().contains("order"));
        assert!(unbudgeted.load_staged(staged_rows(&c).into_iter(), 0).unwrap_err().contains("empty"));
    }
}
