//! The data records of one partition's Fetch response `records` bytes as flat columns: keys and values
//! in one buffer with start/end offsets, their record offsets, and the offset to fetch next.
//!
//! Batches are decoded (CRC-32C checked, decompressed) by the `kafka-protocol` crate's
//! `RecordBatchDecoder`, not by a parser of our own: the record-batch format, its compression codecs and
//! its CRC are that crate's job. What is here is the consumer's logic on top, the same as aiokafka's
//! `PartitionRecords._unpack_records` (aiokafka/consumer/fetcher.py), so a reader of these columns sees
//! exactly the records aiokafka's `getmany` would return:
//! - a truncated last batch (the broker cuts the response at the partition's byte limit) is left for the
//!   next fetch;
//! - control batches (transaction markers) are skipped whatever the isolation level;
//! - under read_committed, a transactional batch of a producer whose transaction is listed as aborted
//!   (from its first offset on, until that producer's abort marker) is skipped;
//! - records below the fetch offset (the start of a batch fetched from its middle) are skipped;
//! - the next fetch offset is the end of the last batch read, also when compaction removed its last
//!   records.

use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;
use std::hash::BuildHasher;

use hashbrown::HashTable;
use rustc_hash::{FxBuildHasher, FxHashSet};

/// Base offset (8 bytes) and batch length (4): what precedes a batch's `length` bytes.
const LOG_OVERHEAD: usize = 12;
/// aiokafka's smallest acceptable batch (its legacy v0 record overhead): anything shorter is corrupt.
const MIN_SLICE: usize = LOG_OVERHEAD + 14;
pub(crate) const MAGIC_OFFSET: usize = 16;
/// The v2 batch header's lastOffsetDelta, which `kafka-protocol` reads but does not expose.
const LAST_OFFSET_DELTA_OFFSET: usize = 23;

/// Keys and values of the records kept, in `data`: record i's key is `data[key_start[i]..key_end[i]]`,
/// or None when `key_start[i]` is -1 (likewise values; a None value is a tombstone).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Columns {
    pub data: Vec<u8>,
    pub key_start: Vec<i64>,
    pub key_end: Vec<i64>,
    pub value_start: Vec<i64>,
    pub value_end: Vec<i64>,
    pub offsets: Vec<i64>,
    pub next_offset: i64,
    /// Complete batches seen (0 with non-empty input: the first batch is larger than the fetch's limit).
    pub batches: usize,
}

impl Columns {
    fn push(&mut self, key: Option<&[u8]>, value: Option<&[u8]>, offset: i64) {
        for (part, starts, ends) in
            [(key, &mut self.key_start, &mut self.key_end), (value, &mut self.value_start, &mut self.value_end)]
        {
            match part {
                Some(b) => {
                    starts.push(self.data.len() as i64);
                    self.data.extend_from_slice(b);
                    ends.push(self.data.len() as i64);
                }
                None => {
                    starts.push(-1);
                    ends.push(-1);
                }
            }
        }
        self.offsets.push(offset);
    }
}

fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// `raw`: one partition's `records` field; `aborted`: the response's (producer id, first offset) list.
pub fn unpack(raw: &[u8], fetch_offset: i64, read_committed: bool, aborted: &[(i64, i64)]) -> Result<Columns, String> {
    let mut aborted: Vec<(i64, i64)> = aborted.to_vec();
    aborted.sort_by_key(|&(_, first)| first); // stable, like aiokafka's sorted()
    let mut aborted = aborted.into_iter().peekable();
    let mut aborted_producers: FxHashSet<i64> = FxHashSet::default();
    let mut out = Columns { next_offset: fetch_offset, ..Columns::default() };
    let buffer = Bytes::copy_from_slice(raw);
    let mut pos = 0usize;
    while raw.len() - pos >= LOG_OVERHEAD {
        let length = be_i32(raw, pos + 8);
        let end = pos + LOG_OVERHEAD + length.max(0) as usize;
        if length < 0 || end > raw.len() {
            break; // a truncated last batch: fetched again from its start next time
        }
        let slice = &raw[pos..end];
        pos = end;
        out.batches += 1;
        if slice.len() < MIN_SLICE {
            return Err(format!("a record batch of {} bytes is shorter than the minimum", slice.len()));
        }
        if slice[MAGIC_OFFSET] < 2 {
            return Err(format!("record batch format v{} (only v2 is read)", slice[MAGIC_OFFSET]));
        }
        let base_offset = be_i64(slice, 0);
        let batch_next = base_offset + be_i32(slice, LAST_OFFSET_DELTA_OFFSET) as i64 + 1;
        // Decoding checks the batch's CRC-32C (aiokafka's default check_crcs) and decompresses it.
        let mut batch = buffer.slice(pos - slice.len()..pos);
        let set = RecordBatchDecoder::decode(&mut batch).map_err(|e| format!("offset {base_offset}: {e}"))?;
        let info = set.records.first();
        // An empty batch (compaction removed every record) has no record to carry its flags: it holds no
        // data and no marker, so only its offsets matter.
        let (control, transactional, producer_id) =
            info.map_or((false, false, -1), |r| (r.control, r.transactional, r.producer_id));
        if read_committed {
            while let Some(&(producer, first)) = aborted.peek() {
                if first > base_offset {
                    break;
                }
                aborted_producers.insert(producer);
                aborted.next();
            }
            if control {
                let key = info.and_then(|r| r.key.as_ref()).ok_or("a control record without a key")?;
                if key.len() < 4 {
                    return Err("a control record key shorter than 4 bytes".into());
                }
                let (version, kind) = (u16::from_be_bytes([key[0], key[1]]), u16::from_be_bytes([key[2], key[3]]));
                if version == 0 && kind == 0 {
                    // The abort marker ends that producer's aborted transaction.
                    aborted_producers.remove(&producer_id);
                }
            }
            if transactional && aborted_producers.contains(&producer_id) {
                out.next_offset = batch_next;
                continue;
            }
        }
        if control {
            out.next_offset = batch_next;
            continue;
        }
        for record in &set.records {
            if record.offset < out.next_offset {
                continue; // a batch fetched from its middle
            }
            out.push(record.key.as_deref(), record.value.as_deref(), record.offset);
            out.next_offset = record.offset + 1;
        }
        out.next_offset = batch_next;
    }
    Ok(out)
}

/// Keys and values end to end, with their starts and ends: (keys, key starts, key ends, values, value
/// starts, value ends).
pub type KeyValueColumns = (Vec<u8>, Vec<i64>, Vec<i64>, Vec<u8>, Vec<i64>, Vec<i64>);

/// The records of columns (record i's key is data[ks[i]..ke[i]], its value data[vs[i]..ve[i]], -1: a
/// tombstone), checked: every record has a key and every offset lies within `data`.
#[allow(clippy::type_complexity)]
pub fn columns<'a>(
    data: &'a [u8],
    ks: &'a [i64],
    ke: &'a [i64],
    vs: &'a [i64],
    ve: &'a [i64],
) -> Result<impl Iterator<Item = Result<(&'a [u8], Option<&'a [u8]>), String>> + 'a, String> {
    let n = ks.len();
    if ke.len() != n || vs.len() != n || ve.len() != n {
        return Err("key and value offsets of different lengths".into());
    }
    let span = move |s: i64, e: i64| -> Result<Option<&'a [u8]>, String> {
        if s < 0 {
            return Ok(None);
        }
        data.get(s as usize..e as usize).map(Some).ok_or_else(|| "an offset outside the data".to_string())
    };
    Ok((0..n).map(move |i| Ok((span(ks[i], ke[i])?.ok_or("a record without a key")?, span(vs[i], ve[i])?))))
}

/// The newest value of every key over a sequence of record columns (a compacted topic as a reader sees
/// it): a later value replaces an earlier one in place, a tombstone (None value) removes its key, and a
/// key written again after its removal goes last. That is the order of a Python dict filled the same
/// way, so a consumer of the result sees what it saw from the per-record dict it replaces.
///
/// Keys and values live in two arenas and the index holds slot numbers (with their hashes), so a key
/// costs no allocation of its own: millions of changelog records are kept at memory speed.
#[derive(Default)]
pub struct Latest {
    index: HashTable<usize>,
    slots: Vec<Slot>,
    keys: Vec<u8>,
    values: Vec<u8>,
    live: usize,
}

struct Slot {
    hash: u64,
    key: (usize, usize),
    value: (usize, usize),
    live: bool,
}

impl Latest {
    /// Record i of `data` has key data[ks[i]..ke[i]] and value data[vs[i]..ve[i]], -1: None.
    pub fn add(&mut self, data: &[u8], ks: &[i64], ke: &[i64], vs: &[i64], ve: &[i64]) -> Result<(), String> {
        let slots = &self.slots;
        self.index.reserve(ks.len(), |&i| slots[i].hash);
        for record in columns(data, ks, ke, vs, ve)? {
            let (key, value) = record?;
            self.put(key, value);
        }
        Ok(())
    }

    /// One record: `key` now has `value` (None: a tombstone, the key is gone).
    pub fn put(&mut self, key: &[u8], value: Option<&[u8]>) {
        let Latest { index, slots, keys, values, live } = self;
        let hash = FxBuildHasher.hash_one(key);
        let eq = |&j: &usize| {
            let (a, b) = slots[j].key;
            &keys[a..b] == key
        };
        match value {
            None => {
                if let Ok(entry) = index.find_entry(hash, eq) {
                    let (j, _) = entry.remove();
                    slots[j].live = false;
                    *live -= 1;
                }
            }
            Some(value) => {
                let at = (values.len(), values.len() + value.len());
                values.extend_from_slice(value);
                if let Some(&j) = index.find(hash, eq) {
                    slots[j].value = at;
                } else {
                    let k = (keys.len(), keys.len() + key.len());
                    keys.extend_from_slice(key);
                    index.insert_unique(hash, slots.len(), |&j| slots[j].hash);
                    slots.push(Slot { hash, key: k, value: at, live: true });
                    *live += 1;
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.live
    }

    /// The value `key` has now (None: it has none).
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        let hash = FxBuildHasher.hash_one(key);
        let (keys, slots) = (&self.keys, &self.slots);
        let &j = self.index.find(hash, |&j| &keys[slots[j].key.0..slots[j].key.1] == key)?;
        Some(&self.values[slots[j].value.0..slots[j].value.1])
    }

    /// The live keys and their values, in dict order.
    pub fn live(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.slots
            .iter()
            .filter(|s| s.live)
            .map(|s| (&self.keys[s.key.0..s.key.1], &self.values[s.value.0..s.value.1]))
    }

    /// `take_columns` without taking: a copy.
    pub fn columns(&self) -> KeyValueColumns {
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        let (mut ks, mut ke, mut vs, mut ve) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (key, value) in self.live() {
            ks.push(keys.len() as i64);
            keys.extend_from_slice(key);
            ke.push(keys.len() as i64);
            vs.push(values.len() as i64);
            values.extend_from_slice(value);
            ve.push(values.len() as i64);
        }
        (keys, ks, ke, values, vs, ve)
    }

    /// The same live keys and values, without the space of replaced or removed ones.
    pub fn compact(&mut self) {
        let mut fresh = Latest::default();
        for (key, value) in self.live() {
            fresh.put(key, Some(value));
        }
        *self = fresh;
    }

    /// (keys, key starts, key ends, values, value starts, value ends) of the live keys in dict order,
    /// the values contiguous in that order; leaves this empty. When no key was replaced or removed (a
    /// restore of a well-compacted log) the arenas already are that, and are handed over without a copy.
    pub fn take_columns(&mut self) -> KeyValueColumns {
        let taken = std::mem::take(self);
        let clean = taken.live == taken.slots.len()
            && taken
                .slots
                .iter()
                .scan(0usize, |end, s| {
                    let ok = s.value.0 == *end;
                    *end = s.value.1;
                    Some(ok)
                })
                .all(|ok| ok);
        if clean {
            let cap = taken.live;
            let (mut ks, mut ke, mut vs, mut ve) =
                (Vec::with_capacity(cap), Vec::with_capacity(cap), Vec::with_capacity(cap), Vec::with_capacity(cap));
            for slot in &taken.slots {
                ks.push(slot.key.0 as i64);
                ke.push(slot.key.1 as i64);
                vs.push(slot.value.0 as i64);
                ve.push(slot.value.1 as i64);
            }
            return (taken.keys, ks, ke, taken.values, vs, ve);
        }
        taken.columns()
    }
}
