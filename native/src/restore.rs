//! A state partition's changelog read into bounded memory, for a join table with a memory budget.
//!
//! The changelog (monitor.stream.changelog) holds one record per key, the newest value winning: a
//! few records for the rest of the engine, and one per join entry, of which a partition can hold tens of
//! millions. Keeping the newest value of every entry in memory until the read ends costs gigabytes
//! where the restored table runs in a few hundred megabytes. So entry records go, as they are read,
//! into a staging keyspace of an embedded store (fjall), the way Kafka Streams restores into RocksDB:
//! a window of records is sorted by key in memory and ingested as one sorted run (tombstones included),
//! later runs winning over earlier ones, and the store's read path yields the newest live value of
//! every key, in key order, without ever holding them all. The join then loads them from there
//! (`JoinTable::load_staged`). The other records are few and stay in memory.
//!
//! The same store, opened in a fixed directory (`Staged::open_local`), is the worker's local copy of a
//! partition's changelog: fed the records of each committed transaction, `seal`ed now and then with a
//! mark saying up to which changelog offset it holds them all. A restart then reads only the changelog
//! after that offset into it, and loads the join from there, instead of reading the whole changelog.

use std::path::{Path, PathBuf};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::records::{columns, KeyValueColumns, Latest};
use crate::store::{err, open_fresh, CACHE_BYTES};

/// The first byte of a join entry's key: b"e", the model name's length (u16, big-endian), the name,
/// the prediction id.
const ENTRY: u8 = b'e';
/// Keys and values held before they are written as a run: a few hundred thousand entries.
pub const WINDOW_BYTES: usize = 64 << 20;
/// Runs a local copy keeps before fjall merges them.
const LOCAL_RUNS: u8 = 64;
/// What opening a local copy that is open elsewhere says.
pub const IN_USE: &str = "in use by another worker";
/// The key of a local copy's mark (in its own keyspace, apart from the changelog's keys).
const MARK: &[u8] = b"mark";

/// Entry records read since the last run, in arrival order; the last one of a key wins.
#[derive(Default)]
struct Window {
    data: Vec<u8>,
    /// key start, key end, value end (the value follows the key; None: a tombstone).
    records: Vec<(usize, usize, Option<usize>)>,
}

impl Window {
    /// A record whose key is `prefix` then `id`.
    fn push_parts(&mut self, prefix: &[u8], id: &[u8], value: Option<&[u8]>) {
        let start = self.data.len();
        self.data.extend_from_slice(prefix);
        self.data.extend_from_slice(id);
        let key_end = self.data.len();
        let value_end = value.map(|v| {
            self.data.extend_from_slice(v);
            self.data.len()
        });
        self.records.push((start, key_end, value_end));
    }

    fn push(&mut self, key: &[u8], value: Option<&[u8]>) {
        self.push_parts(key, &[], value);
    }

    fn key(&self, i: u32) -> &[u8] {
        let (start, end, _) = self.records[i as usize];
        &self.data[start..end]
    }

    fn value(&self, i: u32) -> Option<&[u8]> {
        let (_, key_end, value_end) = self.records[i as usize];
        value_end.map(|end| &self.data[key_end..end])
    }

    /// The newest record of each key, in key order.
    fn newest(&self) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.records.len() as u32).collect();
        // Stable: the records of one key stay in arrival order, so the last of each run is the newest.
        order.sort_by(|&a, &b| self.key(a).cmp(self.key(b)));
        let mut out: Vec<u32> = Vec::with_capacity(order.len());
        for i in order {
            match out.last_mut() {
                Some(last) if self.key(*last) == self.key(i) => *last = i,
                _ => out.push(i),
            }
        }
        out
    }

    fn clear(&mut self) {
        self.data.clear();
        self.records.clear();
    }
}

/// Where a changelog's records go while it is read: entry records into sorted runs of a staging
/// keyspace, the others into memory. `finish` once the read is complete, then read the entries of each
/// model with `entries`.
pub struct Staged {
    db: Database,
    entries: Keyspace,
    /// Set for a local copy kept across restarts; None for a staging store, deleted when dropped.
    local: Option<Local>,
    window: Window,
    others: Latest,
    runs: usize,
    window_bytes: usize,
    /// Entry records staged (each key counted once per run): at least the live entries. For a local
    /// copy, what it held when opened (approximately) plus what was staged since.
    pub staged: usize,
    pub records: usize,
    pub bytes: usize,
    pub dir: PathBuf,
}

/// What a local copy keeps besides the entries: the other records' newest values, and its mark.
struct Local {
    others: Keyspace,
    marks: Keyspace,
    mark: Option<Vec<u8>>,
}

impl Staged {
    /// An empty staging store in a fresh directory under `parent` (the system temp directory when
    /// None), deleted when this is dropped, writing a run per `window_bytes` of entry records.
    pub fn open(parent: Option<&Path>, window_bytes: usize) -> Result<Self, String> {
        let (db, dir) = open_fresh(parent, "restore")?;
        // Runs are only ever read once, merged, in key order: compacting them would rewrite every entry
        // for nothing, so they stay in level 0 (a threshold of 255 runs, 16 GB at a run per window).
        let keep = std::sync::Arc::new(fjall::compaction::Leveled::default().with_l0_threshold(u8::MAX));
        let entries = db
            .keyspace("entries", || {
                KeyspaceCreateOptions::default().expect_point_read_hits(true).compaction_strategy(keep.clone())
            })
            .map_err(err)?;
        Ok(Self::new(db, entries, window_bytes, dir))
    }

    /// The local copy in `dir`, created empty if there is none: what it held when last sealed (and
    /// possibly some runs after that, which are a prefix of what followed the mark in the changelog),
    /// with its mark (`mark`). Unlike a staging store it stays on disk, and its runs are compacted as
    /// they pile up, since it lives as long as the partition.
    pub fn open_local(dir: &Path, window_bytes: usize) -> Result<Self, String> {
        let fail = |e: std::io::Error| format!("local store {}: {e}", dir.display());
        std::fs::create_dir_all(dir).map_err(fail)?;
        let db = Database::builder(dir).cache_size(CACHE_BYTES).worker_threads(1).open().map_err(|e| match e {
            // Another process (or handle) has it open: the caller must not wipe it.
            fjall::Error::Locked => format!("local store {}: {IN_USE}", dir.display()),
            e => err(e),
        })?;
        // Entry keys are random ids, so every run overlaps everything below it, and fjall's default (a
        // merge per 4 runs into levels ten times larger) rewrites the whole copy again and again: at 10M
        // entries that took most of a core from the worker. Runs are read back only at a restart, merged, so
        // up to LOCAL_RUNS of them are left as they are (about 1 GB at the worker's 16 MiB seals), then
        // merged at once.
        let runs = std::sync::Arc::new(fjall::compaction::Leveled::default().with_l0_threshold(LOCAL_RUNS));
        let entries = db
            .keyspace("entries", || KeyspaceCreateOptions::default().compaction_strategy(runs.clone()))
            .map_err(err)?;
        let others = db.keyspace("others", KeyspaceCreateOptions::default).map_err(err)?;
        let marks = db.keyspace("marks", KeyspaceCreateOptions::default).map_err(err)?;
        let mark = marks.get(MARK).map_err(err)?.map(|v| v.to_vec());
        let held = entries.approximate_len();
        let mut staged = Self::new(db, entries, window_bytes, dir.to_path_buf());
        for guard in others.iter() {
            let (key, value) = guard.into_inner().map_err(err)?;
            staged.others.put(&key, Some(&value));
        }
        // Tombstones must be kept from the first run on: older runs may hold their keys.
        staged.runs = usize::from(held > 0);
        staged.staged = held;
        staged.local = Some(Local { others, marks, mark });
        Ok(staged)
    }

    fn new(db: Database, entries: Keyspace, window_bytes: usize, dir: PathBuf) -> Self {
        Staged {
            db,
            entries,
            local: None,
            window: Window::default(),
            others: Latest::default(),
            runs: 0,
            window_bytes,
            staged: 0,
            records: 0,
            bytes: 0,
            dir,
        }
    }

    /// Records in the layout of `records::Latest::add` (-1: no value, a tombstone).
    pub fn add(&mut self, data: &[u8], ks: &[i64], ke: &[i64], vs: &[i64], ve: &[i64]) -> Result<(), String> {
        for record in columns(data, ks, ke, vs, ve)? {
            let (key, value) = record?;
            self.put(key, value)?;
        }
        Ok(())
    }

    /// One record (a tombstone when `value` is None).
    pub fn put(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        self.records += 1;
        self.bytes += key.len() + value.map_or(0, <[u8]>::len);
        if key.first() == Some(&ENTRY) {
            if model_of(key).is_none() {
                return Err("a join entry key without its model name".into());
            }
            self.window.push(key, value);
            self.written()
        } else {
            self.others.put(key, value);
            Ok(())
        }
    }

    /// Join entry records `prefix + id` -> the id's `width`-byte row of `rows` (tombstones when `rows`
    /// is None), id i being ids[ends[i-1]..ends[i]]: a checkpoint's entries as its writer encodes them
    /// (monitor.stream.encoded.entry_batches).
    pub fn add_entries(
        &mut self,
        prefix: &[u8],
        ids: &[u8],
        ends: &[i64],
        rows: Option<&[u8]>,
        width: usize,
    ) -> Result<(), String> {
        if model_of(prefix).is_none_or(|name| prefix.len() != 3 + name.len()) || prefix.first() != Some(&ENTRY) {
            return Err("an entry key prefix is b'e', the model name's length and the name".into());
        }
        if rows.is_some_and(|r| r.len() != width * ends.len()) {
            return Err(format!("{} ids but {} bytes of {width}-byte rows", ends.len(), rows.map_or(0, <[u8]>::len)));
        }
        let mut start = 0usize;
        for (i, &end) in ends.iter().enumerate() {
            let end = usize::try_from(end).ok().filter(|&e| e >= start && e <= ids.len()).ok_or("bad id ends")?;
            let value = rows.map(|r| &r[i * width..(i + 1) * width]);
            self.records += 1;
            self.bytes += prefix.len() + end - start + value.map_or(0, <[u8]>::len);
            self.window.push_parts(prefix, &ids[start..end], value);
            start = end;
        }
        self.written()
    }

    /// A full window becomes a run.
    fn written(&mut self) -> Result<(), String> {
        if self.window.data.len() >= self.window_bytes {
            self.write_run()?;
        }
        Ok(())
    }

    /// The window as one sorted run. The first run's tombstones are left out: nothing is below them.
    fn write_run(&mut self) -> Result<(), String> {
        if self.window.records.is_empty() {
            return Ok(());
        }
        let mut ingestion = self.entries.start_ingestion().map_err(err)?;
        for i in self.window.newest() {
            match self.window.value(i) {
                Some(value) => {
                    ingestion.write(self.window.key(i), value).map_err(err)?;
                    self.staged += 1;
                }
                None if self.runs > 0 => ingestion.write_tombstone(self.window.key(i)).map_err(err)?,
                None => {}
            }
        }
        ingestion.finish().map_err(err)?;
        self.runs += 1;
        self.window.clear();
        Ok(())
    }

    /// The read is complete: the last window becomes a run.
    pub fn finish(&mut self) -> Result<(), String> {
        self.write_run()?;
        self.window = Window::default();
        Ok(())
    }

    /// A local copy's mark, as last sealed (None: never sealed, or not a local copy).
    pub fn mark(&self) -> Option<&[u8]> {
        self.local.as_ref().and_then(|l| l.mark.as_deref())
    }

    /// A local copy now holds every record it was given: the window becomes a run, then the other
    /// records and `mark` (what the caller needs to know of where these records end in the changelog)
    /// are written in one batch, synced to disk. A crash in between leaves runs beyond the old mark,
    /// which the records after that mark, read again, rewrite in the same order.
    pub fn seal(&mut self, mark: &[u8]) -> Result<(), String> {
        if self.local.is_none() {
            return Err("only a local copy is sealed".into());
        }
        self.write_run()?;
        let local = self.local.as_mut().expect("checked above");
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
        let mut held = std::collections::HashSet::new();
        for guard in local.others.iter() {
            let (key, value) = guard.into_inner().map_err(err)?;
            match self.others.get(&key) {
                None => batch.remove(&local.others, key.clone()),
                Some(now) if now != &value[..] => batch.insert(&local.others, key.clone(), now),
                Some(_) => {}
            }
            held.insert(key);
        }
        for (key, value) in self.others.live() {
            if !held.contains(key) {
                batch.insert(&local.others, key, value);
            }
        }
        batch.insert(&local.marks, MARK, mark);
        batch.commit().map_err(err)?;
        local.mark = Some(mark.to_vec());
        // Replaced values pile up in the arena of a copy that lives for days: keep only the live ones.
        self.others.compact();
        Ok(())
    }

    /// The other records' newest values (`records::Latest::take_columns`); leaves them empty, except in
    /// a local copy, which goes on holding them (a copy is handed out).
    pub fn take_others(&mut self) -> KeyValueColumns {
        if self.local.is_some() {
            return self.others.columns();
        }
        self.others.take_columns()
    }

    /// The live entries of `model`, in id order: (id, changelog value).
    pub fn entries(&self, model: &str) -> impl Iterator<Item = Result<(StagedId, fjall::Slice), String>> + '_ {
        let prefix = entry_prefix(model);
        let skip = prefix.len();
        self.entries.prefix(prefix).map(move |guard| {
            let (key, value) = guard.into_inner().map_err(err)?;
            Ok((StagedId(key, skip), value))
        })
    }
}

/// What the keys of `model`'s entries start with (monitor.stream.changelog.entry_key).
fn entry_prefix(model: &str) -> Vec<u8> {
    let mut prefix = vec![ENTRY];
    prefix.extend_from_slice(&(model.len() as u16).to_be_bytes());
    prefix.extend_from_slice(model.as_bytes());
    prefix
}

/// An entry key read back, seen as its prediction id (what follows the model name).
pub struct StagedId(fjall::Slice, usize);

impl AsRef<[u8]> for StagedId {
    fn as_ref(&self) -> &[u8] {
        &self.0[self.1..]
    }
}

/// The model name of an entry key (the name after its u16 length at byte 1), None when the key is too
/// short to hold it.
pub fn model_of(key: &[u8]) -> Option<&[u8]> {
    let n = u16::from_be_bytes(key.get(1..3)?.try_into().ok()?) as usize;
    key.get(3..3 + n)
}

/// A join entry as the changelog encodes it (monitor.stream.changelog.entry_dtype): three times
/// (prediction, ground truth, expiry), version and ground-truth sequence, flags (has prediction, has
/// ground truth, full), the scores, and the three label vectors bit-packed, most significant bit first.
pub struct ChangelogEntry {
    pub pred_ts: f64,
    pub truth_ts: f64,
    pub expires: f64,
    pub pred_version: i64,
    pub seq: i64,
    pub has_pred: bool,
    pub has_truth: bool,
    pub full: bool,
    pub scores: Vec<f64>,
    pub predicted: Vec<bool>,
    pub known: Vec<bool>,
    pub actual: Vec<bool>,
}

pub fn entry_width(n_labels: usize) -> usize {
    41 + 8 * n_labels + 3 * n_labels.div_ceil(8)
}

/// The expiry of an encoded entry (its third time), without decoding the rest.
pub fn entry_expires(v: &[u8]) -> f64 {
    f64::from_le_bytes(v[16..24].try_into().expect("an entry of entry_width"))
}

impl ChangelogEntry {
    pub fn new(n_labels: usize) -> Self {
        ChangelogEntry {
            pred_ts: 0.0,
            truth_ts: 0.0,
            expires: 0.0,
            pred_version: 0,
            seq: 0,
            has_pred: false,
            has_truth: false,
            full: false,
            scores: vec![0.0; n_labels],
            predicted: vec![false; n_labels],
            known: vec![false; n_labels],
            actual: vec![false; n_labels],
        }
    }

    /// Decodes `v` into this (sized for its label count), reusing its vectors.
    pub fn read(&mut self, v: &[u8]) -> Result<(), String> {
        let n = self.scores.len();
        if v.len() != entry_width(n) {
            return Err(format!("a join entry is not {} bytes long (another label count?)", entry_width(n)));
        }
        let f = |i: usize| f64::from_le_bytes(v[i..i + 8].try_into().expect("8 bytes"));
        let int = |i: usize| i64::from_le_bytes(v[i..i + 8].try_into().expect("8 bytes"));
        (self.pred_ts, self.truth_ts, self.expires) = (f(0), f(8), f(16));
        (self.pred_version, self.seq) = (int(24), int(32));
        let flags = v[40];
        (self.has_pred, self.has_truth, self.full) = (flags & 1 != 0, flags & 2 != 0, flags & 4 != 0);
        for (j, x) in self.scores.iter_mut().enumerate() {
            *x = f(41 + 8 * j);
        }
        let bits = 41 + 8 * n;
        let nb = n.div_ceil(8);
        for (k, out) in [&mut self.predicted, &mut self.known, &mut self.actual].into_iter().enumerate() {
            let packed = &v[bits + k * nb..bits + (k + 1) * nb];
            for (j, b) in out.iter_mut().enumerate() {
                *b = packed[j / 8] & (0x80 >> (j % 8)) != 0;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// `ChangelogEntry::read`'s inverse (the writer is monitor.stream.changelog.encode_rows, in numpy).
    pub fn encode(e: &ChangelogEntry) -> Vec<u8> {
        let n = e.scores.len();
        let mut v = Vec::with_capacity(entry_width(n));
        for x in [e.pred_ts, e.truth_ts, e.expires] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        v.extend_from_slice(&e.pred_version.to_le_bytes());
        v.extend_from_slice(&e.seq.to_le_bytes());
        v.push(e.has_pred as u8 | (e.has_truth as u8) << 1 | (e.full as u8) << 2);
        for x in &e.scores {
            v.extend_from_slice(&x.to_le_bytes());
        }
        for bits in [&e.predicted, &e.known, &e.actual] {
            let mut packed = vec![0u8; n.div_ceil(8)];
            for (j, &b) in bits.iter().enumerate() {
                packed[j / 8] |= (b as u8) << (7 - j % 8);
            }
            v.extend_from_slice(&packed);
        }
        v
    }

    fn columns(records: &[(Vec<u8>, Option<Vec<u8>>)]) -> (Vec<u8>, Vec<i64>, Vec<i64>, Vec<i64>, Vec<i64>) {
        let (mut data, mut ks, mut ke, mut vs, mut ve) = (Vec::new(), vec![], vec![], vec![], vec![]);
        for (k, v) in records {
            ks.push(data.len() as i64);
            data.extend_from_slice(k);
            ke.push(data.len() as i64);
            match v {
                Some(v) => {
                    vs.push(data.len() as i64);
                    data.extend_from_slice(v);
                    ve.push(data.len() as i64);
                }
                None => {
                    vs.push(-1);
                    ve.push(-1);
                }
            }
        }
        (data, ks, ke, vs, ve)
    }

    fn key(model: &str, id: &str) -> Vec<u8> {
        [entry_prefix(model), id.as_bytes().to_vec()].concat()
    }

    fn staged(window_bytes: usize, records: &[(Vec<u8>, Option<Vec<u8>>)]) -> Staged {
        let dir = std::env::temp_dir();
        let mut s = Staged::open(Some(&dir), window_bytes).unwrap();
        for chunk in records.chunks(3) {
            let (data, ks, ke, vs, ve) = columns(chunk);
            s.add(&data, &ks, &ke, &vs, &ve).unwrap();
        }
        s.finish().unwrap();
        s
    }

    fn read(s: &Staged, model: &str) -> Vec<(String, Vec<u8>)> {
        s.entries(model)
            .map(|r| {
                let (id, v) = r.unwrap();
                (String::from_utf8(id.as_ref().to_vec()).unwrap(), v.to_vec())
            })
            .collect()
    }

    #[test]
    fn the_newest_value_of_each_key_wins_across_runs() {
        let v = |x: u8| Some(vec![x; 4]);
        let records = vec![
            (key("m", "a"), v(1)),
            (key("m", "b"), v(2)),
            (key("m", "c"), v(3)),
            (b"m".to_vec(), v(9)),
            (key("m", "b"), v(4)),
            (key("m", "a"), None),
            (key("mm", "a"), v(5)),
            (key("m", "c"), None),
            (key("m", "a"), v(6)),
            (key("m", "d"), None),
            (b"m".to_vec(), v(10)),
        ];
        // One run per record, a few records per run, one run: the same newest values.
        for window in [1, 20, 1 << 20] {
            let mut s = staged(window, &records);
            assert_eq!(read(&s, "m"), [("a".to_string(), vec![6; 4]), ("b".to_string(), vec![4; 4])], "{window}");
            assert_eq!(read(&s, "mm"), [("a".to_string(), vec![5; 4])]);
            assert!(read(&s, "x").is_empty());
            assert_eq!(s.records, records.len());
            assert!(s.staged >= 3);
            let (keys, ks, ke, values, vs, ve) = s.take_others();
            assert_eq!(
                (&keys[ks[0] as usize..ke[0] as usize], &values[vs[0] as usize..ve[0] as usize]),
                (&b"m"[..], &[10u8; 4][..])
            );
            assert_eq!(ks.len(), 1);
        }
    }

    #[test]
    fn a_local_copy_holds_what_was_sealed_across_reopens() {
        let dir = std::env::temp_dir().join(format!("mlmon-local-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let v = |x: u8| Some(vec![x; 4]);
        {
            let mut s = Staged::open_local(&dir, 1 << 20).unwrap();
            assert!(s.mark().is_none());
            for (k, val) in
                [(key("m", "a"), v(1)), (key("m", "b"), v(2)), (b"m".to_vec(), v(9)), (b"b1".to_vec(), v(3))]
            {
                s.put(&k, val.as_deref()).unwrap();
            }
            s.seal(b"at 4").unwrap();
            // After the seal: a tombstone, an entry given as a checkpoint's chunk, and a removed block.
            s.put(&key("m", "a"), None).unwrap();
            s.add_entries(&entry_prefix("m"), b"cd", &[1, 2], Some(&[7u8; 8]), 4).unwrap();
            s.put(b"b1", None).unwrap();
            s.put(b"m", v(10).as_deref()).unwrap();
            s.seal(b"at 9").unwrap();
            // Not sealed: lost with the process, to be read again from the changelog.
            s.put(b"m", v(11).as_deref()).unwrap();
        }
        let mut s = Staged::open_local(&dir, 1 << 20).unwrap();
        assert!(Staged::open_local(&dir, 1 << 20).err().unwrap().contains(IN_USE));
        assert_eq!(s.mark(), Some(&b"at 9"[..]));
        let got = read(&s, "m");
        assert_eq!(got, [("b".to_string(), vec![2; 4]), ("c".to_string(), vec![7; 4]), ("d".to_string(), vec![7; 4])]);
        let (keys, ks, ke, values, vs, ve) = s.take_others();
        assert_eq!(ks.len(), 1);
        assert_eq!(
            (&keys[ks[0] as usize..ke[0] as usize], &values[vs[0] as usize..ve[0] as usize]),
            (&b"m"[..], &[10u8; 4][..])
        );
        // A local copy keeps its other records when they are handed out.
        assert_eq!(s.take_others().1.len(), 1);
        // A tombstone in the first run after a reopen still hides the older run's entry.
        s.put(&key("m", "b"), None).unwrap();
        s.finish().unwrap();
        assert_eq!(read(&s, "m").len(), 2);
        assert!(s.add_entries(b"e\x00\x05m", b"c", &[1], None, 4).unwrap_err().contains("prefix"));
        assert!(s.add_entries(&entry_prefix("m"), b"c", &[1], Some(&[1u8; 3]), 4).unwrap_err().contains("rows"));
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_staging_store_is_not_sealed() {
        let mut s = Staged::open(None, 1 << 20).unwrap();
        assert!(s.seal(b"x").unwrap_err().contains("local"));
    }

    #[test]
    fn an_entry_key_must_hold_its_model_name() {
        let mut s = Staged::open(None, 1 << 20).unwrap();
        let (data, ks, ke, vs, ve) = columns(&[(b"e\x00\x05ab".to_vec(), Some(vec![1]))]);
        assert!(s.add(&data, &ks, &ke, &vs, &ve).unwrap_err().contains("model name"));
    }

    #[test]
    fn entries_decode_what_numpy_packs() {
        let mut e = ChangelogEntry::new(9);
        (e.pred_ts, e.truth_ts, e.expires, e.pred_version, e.seq) = (1.5, 2.5, 3.5, 7, 11);
        (e.has_pred, e.has_truth, e.full) = (true, false, true);
        e.scores = (0..9).map(|j| j as f64 / 10.0).collect();
        e.predicted = (0..9).map(|j| j % 2 == 0).collect();
        e.known = (0..9).map(|j| j == 8).collect();
        e.actual = (0..9).map(|j| j < 3).collect();
        let v = encode(&e);
        assert_eq!(v.len(), entry_width(9));
        // np.packbits: label 0 is the first byte's most significant bit.
        assert_eq!(v[41 + 72..], [0b1010_1010, 0b1000_0000, 0, 0b1000_0000, 0b1110_0000, 0]);
        let mut back = ChangelogEntry::new(9);
        back.read(&v).unwrap();
        assert_eq!(encode(&back), v);
        assert_eq!(entry_expires(&v), 3.5);
        assert!(back.read(&v[1..]).unwrap_err().contains("bytes long"));
    }
}
