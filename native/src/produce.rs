//! Kafka record batches for the state changelog, encoded without a Python object per record.
//!
//! A checkpoint writes one record per changed join entry: millions after a restore or a burst. aiokafka
//! appends records one Python call at a time (about 10 us each with our key and value encoding around
//! it); here the `kafka-protocol` crate encodes the same v2 batches (its encoder, not ours: the format
//! and its CRC are that crate's job) from the entries' keys and fixed-width values in two buffers.
//!
//! The producer state (producer id, epoch, base sequence) is only known when aiokafka's sender drains a
//! batch: the batches are encoded with none, and `set_producer_state` writes it into the header and
//! recomputes the CRC, which is what aiokafka's own builder does at that point.

use bytes::{Bytes, BytesMut};
use indexmap::IndexMap;
use crate::records::MAGIC_OFFSET;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType, NO_PARTITION_LEADER_EPOCH,
    NO_PRODUCER_EPOCH, NO_PRODUCER_ID,
};

/// The v2 batch header: fixed fields before the records (KIP-98).
const HEADER: usize = 61;
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;
const PRODUCER_ID_AT: usize = 43;
const PRODUCER_EPOCH_AT: usize = 51;
const BASE_SEQUENCE_AT: usize = 53;
/// A record's own fields beside its key and value, at most: length, attributes, timestamp delta, offset
/// delta, key length, value length (varints) and the header count.
const RECORD_OVERHEAD: usize = 5 + 1 + 10 + 5 + 5 + 5 + 1;

/// One record per key: key i is `prefix` + `keys[ends[i-1]..ends[i]]`, its value the i-th `width` bytes
/// of `values`, or none (a tombstone) when `values` is None. Records go into transactional batches of at
/// most `max_bytes` each (a record larger than that alone in its batch); returns each batch's bytes and
/// record count.
pub fn encode_batches(
    prefix: &[u8],
    keys: &[u8],
    ends: &[i64],
    values: Option<&[u8]>,
    width: usize,
    max_bytes: usize,
    timestamp_ms: i64,
) -> Result<Vec<(Vec<u8>, usize)>, String> {
    if let Some(v) = values {
        if v.len() != ends.len() * width {
            return Err(format!("{} values of {width} bytes expected, got {} bytes", ends.len(), v.len()));
        }
    }
    let options = RecordEncodeOptions { version: 2, compression: Compression::None };
    let mut out = Vec::new();
    let mut batch: Vec<Record> = Vec::new();
    let mut size = HEADER;
    let mut start = 0usize;
    for (i, &end) in ends.iter().enumerate() {
        let end = usize::try_from(end).map_err(|_| "negative key end".to_string())?;
        if end < start || end > keys.len() {
            return Err(format!("key {i} ends at {end}, outside {start}..{}", keys.len()));
        }
        let mut key = Vec::with_capacity(prefix.len() + end - start);
        key.extend_from_slice(prefix);
        key.extend_from_slice(&keys[start..end]);
        start = end;
        let value = values.map(|v| Bytes::copy_from_slice(&v[i * width..(i + 1) * width]));
        let record_size = key.len() + value.as_ref().map_or(0, Bytes::len) + RECORD_OVERHEAD;
        if !batch.is_empty() && size + record_size > max_bytes {
            out.push(encode(&batch, &options)?);
            batch.clear();
            size = HEADER;
        }
        size += record_size;
        let offset = batch.len() as i64;
        batch.push(Record {
            transactional: true,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            timestamp_type: TimestampType::Creation,
            offset,
            sequence: offset as i32,
            timestamp: timestamp_ms,
            key: Some(Bytes::from(key)),
            value,
            headers: IndexMap::new(),
        });
    }
    if !batch.is_empty() {
        out.push(encode(&batch, &options)?);
    }
    Ok(out)
}

fn encode(records: &[Record], options: &RecordEncodeOptions) -> Result<(Vec<u8>, usize), String> {
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(&mut buf, records, options).map_err(|e| format!("record batch: {e}"))?;
    Ok((buf.to_vec(), records.len()))
}

/// Writes the producer id, epoch and base sequence into an encoded batch and recomputes its CRC-32C
/// (over everything from the attributes on).
pub fn set_producer_state(batch: &mut [u8], producer_id: i64, epoch: i16, base_sequence: i32) -> Result<(), String> {
    if batch.len() < HEADER || batch[MAGIC_OFFSET] != 2 {
        return Err("not a v2 record batch".into());
    }
    batch[PRODUCER_ID_AT..PRODUCER_ID_AT + 8].copy_from_slice(&producer_id.to_be_bytes());
    batch[PRODUCER_EPOCH_AT..PRODUCER_EPOCH_AT + 2].copy_from_slice(&epoch.to_be_bytes());
    batch[BASE_SEQUENCE_AT..BASE_SEQUENCE_AT + 4].copy_from_slice(&base_sequence.to_be_bytes());
    let crc = crc32c::crc32c(&batch[ATTRIBUTES_AT..]);
    batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::RecordBatchDecoder;

    #[test]
    fn batches_decode_to_the_records_with_the_producer_state_set() {
        let keys = b"abcdefgh";
        let ends = [1i64, 3, 6, 8];
        let values = b"0123456789ABCDEF";
        let batches = encode_batches(b"e\x00", keys, &ends, Some(values), 4, 90, 1_700_000_000_000).unwrap();
        assert!(batches.len() > 1);
        let mut seen = Vec::new();
        let mut sequence = 0;
        for (raw, count) in batches {
            let mut raw = raw;
            set_producer_state(&mut raw, 77, 3, sequence).unwrap();
            let set = RecordBatchDecoder::decode(&mut Bytes::from(raw)).unwrap();
            let records = set.records;
            assert_eq!(records.len(), count);
            for r in records {
                assert!(r.transactional);
                assert_eq!((r.producer_id, r.producer_epoch), (77, 3));
                assert_eq!(r.sequence, sequence + r.offset as i32);
                seen.push((r.key.unwrap().to_vec(), r.value.unwrap().to_vec()));
            }
            sequence += count as i32;
        }
        let expect: Vec<(Vec<u8>, Vec<u8>)> = [("a", "0123"), ("bc", "4567"), ("def", "89AB"), ("gh", "CDEF")]
            .iter()
            .map(|(k, v)| ([b"e\x00".as_slice(), k.as_bytes()].concat(), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(seen, expect);
    }

    #[test]
    fn tombstones_have_no_value_and_bad_input_is_refused() {
        let batches = encode_batches(b"", b"xy", &[1, 2], None, 0, 1 << 20, 0).unwrap();
        assert_eq!(batches.len(), 1);
        let set = RecordBatchDecoder::decode(&mut Bytes::from(batches[0].0.clone())).unwrap();
        assert!(set.records.iter().all(|r| r.value.is_none()));
        assert!(encode_batches(b"", b"xy", &[1, 3], None, 0, 1 << 20, 0).is_err());
        assert!(encode_batches(b"", b"xy", &[1, 2], Some(b"abc"), 2, 1 << 20, 0).is_err());
        assert!(set_producer_state(&mut [0u8; 10], 1, 1, 1).is_err());
    }
}
