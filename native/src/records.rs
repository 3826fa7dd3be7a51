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
use rustc_hash::FxHashSet;

/// Base offset (8 bytes) and batch length (4): what precedes a batch's `length` bytes.
const LOG_OVERHEAD: usize = 12;
/// aiokafka's smallest acceptable batch (its legacy v0 record overhead): anything shorter is corrupt.
const MIN_SLICE: usize = LOG_OVERHEAD + 14;
const MAGIC_OFFSET: usize = 16;
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
