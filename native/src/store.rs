//! The cold tier of the join: entries that do not fit the in-memory budget, in an embedded LSM store
//! (fjall) on local disk. The store is a cache of the worker's changelog, so it is created empty in a
//! fresh directory and deleted when the table goes; nothing here has to survive a crash.
//!
//! Two keyspaces: `expiry` maps `(expires, id)` to the entry's epoch and encoded value, so the store's
//! first key is its smallest entry in the join's expiry order; `ids` maps `(epoch, id)` to the expiry,
//! for lookups (an in-memory bloom filter answers the common miss without reading a block).
//!
//! An epoch is a run of about a million spilled entries. Ids are random, so an index keyed by id alone
//! would have every new table overlap all older ones, and the LSM's compactions would rewrite the whole
//! index again and again (at 3M stored entries that was half the CPU of a spilling worker). Keyed by
//! epoch first, new ids only ever overlap their own epoch. The index is never updated in place either:
//! a removal deletes the `expiry` row only, a lookup checks that the row its index entry points at still
//! exists and still belongs to that epoch, and an epoch's index range is dropped once it holds no live
//! entry. A lookup of a stored id tries the live epochs, newest first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use ahash::RandomState;
use fjall::{AbstractTree, Database, Keyspace, KeyspaceCreateOptions, Slice, UserKey, UserValue};

use crate::prefetch::prefetch;

/// Block cache of each store: lookups of recent spills hit it; beyond that the OS page cache helps.
pub const CACHE_BYTES: u64 = 32 << 20;
/// Memtable size per keyspace (fjall's default is 64 MiB; two keyspaces per table, one table per model
/// and partition).
const MEMTABLE_BYTES: u64 = 16 << 20;
/// Entries per epoch of the id index, and the target size of its tables.
pub const EPOCH_ENTRIES: usize = 1 << 20;
const INDEX_TABLE_BYTES: u64 = 8 << 20;
/// Spills of at least this many entries are ingested as new tables rather than written through the
/// journal and memtables.
const INGEST_MIN: usize = 4096;

static OPENED: AtomicU64 = AtomicU64::new(0);

/// An expiry time as 8 bytes whose unsigned byte order is the float order (finite values; -0.0 is 0.0,
/// as Python's tuple compare treats them as equal).
pub fn expiry_bytes(expires: f64) -> [u8; 8] {
    let x = if expires == 0.0 { 0.0f64 } else { expires };
    let bits = x.to_bits();
    let ordered = if bits >> 63 == 1 { !bits } else { bits | (1 << 63) };
    ordered.to_be_bytes()
}

pub fn expiry_from(bytes: &[u8]) -> f64 {
    let ordered = u64::from_be_bytes(bytes[..8].try_into().expect("8-byte expiry prefix"));
    let bits = if ordered >> 63 == 1 { ordered & !(1 << 63) } else { !ordered };
    f64::from_bits(bits)
}

fn expiry_key(expires: f64, id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + id.len());
    k.extend_from_slice(&expiry_bytes(expires));
    k.extend_from_slice(id);
    k
}

fn id_key(epoch: u32, id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + id.len());
    k.extend_from_slice(&epoch.to_be_bytes());
    k.extend_from_slice(id);
    k
}

/// An `expiry` row's value: the entry's epoch, then its encoded value.
fn stored_value(epoch: u32, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + value.len());
    v.extend_from_slice(&epoch.to_be_bytes());
    v.extend_from_slice(value);
    v
}

fn epoch_of(stored: &[u8]) -> u32 {
    u32::from_be_bytes(stored[..4].try_into().expect("a 4-byte epoch prefix"))
}

pub fn err(e: fjall::Error) -> String {
    format!("join store: {e}")
}

/// Writes `rows`, in strictly ascending key order, as new tables of `keyspace` (fjall's ingestion of
/// sorted runs: no journal, no memtable); returns how many.
pub fn ingest<K: Into<UserKey>, V: Into<UserValue>>(
    keyspace: &Keyspace,
    rows: impl IntoIterator<Item = (K, V)>,
) -> Result<usize, String> {
    let mut ingestion = keyspace.start_ingestion().map_err(err)?;
    let mut n = 0;
    for (key, value) in rows {
        ingestion.write(key, value).map_err(err)?;
        n += 1;
    }
    ingestion.finish().map_err(err)?;
    Ok(n)
}

/// The first 8 bytes of an id, zero-padded, as a big-endian integer: ids in this order are in byte
/// order, except that ids equal here need their bytes compared.
fn id_prefix(id: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let k = id.len().min(8);
    b[..k].copy_from_slice(&id[..k]);
    u64::from_be_bytes(b)
}

/// Removes the stores of processes that are gone (killed before they could delete them), so crashes do
/// not fill the disk. Linux only (process liveness from /proc); elsewhere they stay.
fn remove_orphans(parent: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(dir) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| STORE_KINDS.iter().find_map(|kind| n.strip_prefix(&format!("mlmon-{kind}-"))))
            .and_then(|r| r.split('-').next())
        else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The kinds of store this process opens (directory `mlmon-{kind}-{pid}-{n}`): a join's cold tier, and
/// the staging of a changelog restore (monitor::restore).
const STORE_KINDS: [&str; 2] = ["join", "restore"];

/// A new fjall database in a fresh directory under `parent` (the system temp directory when None),
/// deleted when the database is dropped; orphans of dead processes are removed first.
pub fn open_fresh(parent: Option<&Path>, kind: &str) -> Result<(Database, PathBuf), String> {
    debug_assert!(STORE_KINDS.contains(&kind));
    let parent = parent.map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
    remove_orphans(&parent);
    let n = OPENED.fetch_add(1, AtomicOrdering::Relaxed);
    let dir = parent.join(format!("mlmon-{kind}-{}-{n}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("{kind} store {}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{kind} store {}: {e}", dir.display()))?;
    // One background thread per store: with more, fjall's first worker re-queues every compaction
    // request to leave itself free for flushes and spins doing so while another compacts.
    let db = Database::builder(&dir).cache_size(CACHE_BYTES).worker_threads(1).temporary(true).open().map_err(err)?;
    Ok((db, dir))
}

/// Creates `dir` if missing and writes (and removes) a file in it: what a store opened there later needs.
fn check_writable(dir: &Path) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("join store directory {}: {e}", dir.display());
    std::fs::create_dir_all(dir).map_err(fail)?;
    let probe =
        dir.join(format!(".mlmon-probe-{}-{}", std::process::id(), OPENED.fetch_add(1, AtomicOrdering::Relaxed)));
    std::fs::write(&probe, b"").map_err(fail)?;
    std::fs::remove_file(&probe).map_err(fail)
}

/// Bits per id and probes of the in-memory filter in front of the store.
const BLOOM_BITS: usize = 12;
const BLOOM_PROBES: u32 = 6;

/// One cache line of the filter: all of an id's bits are in one, so a lookup or insert costs one
/// memory access rather than one per probe (at 10M ids the filter is far larger than the caches).
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Block([u64; 8]);

/// A bloom filter over the ids in the store, in memory (12 bits an id: 15 MB at 10M), so that a new id,
/// the usual lookup, costs no store read at all (the store's own filters sit behind its memtables,
/// whose lookups cost more than the whole step). Blocked: each id's 6 bits lie in one 512-bit block
/// (false positives about 0.5% rather than 0.3%). Removals leave their bits set; the filter is rebuilt
/// from the store's ids once as many ids went in as it was sized for.
struct Bloom {
    blocks: Vec<Block>,
    hasher: RandomState,
    capacity: usize,
    added: usize,
}

impl Bloom {
    fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1 << 16);
        let n_blocks = (capacity * BLOOM_BITS / 512).next_power_of_two();
        Bloom { blocks: vec![Block([0; 8]); n_blocks], hasher: RandomState::new(), capacity, added: 0 }
    }

    /// The id's block and the 6 bit positions in it (9 bits each, from a second mix of the hash).
    fn locate(&self, id: &[u8]) -> (usize, u64) {
        let h = self.hasher.hash_one(id);
        let block = (h >> 32) as usize & (self.blocks.len() - 1);
        let mut x = h ^ (h >> 31);
        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        (block, x ^ (x >> 29))
    }

    fn insert(&mut self, id: &[u8]) {
        self.set(self.locate(id));
        self.added += 1;
    }

    /// Sets the bits `locate` found.
    fn set(&mut self, (b, bits): (usize, u64)) {
        let block = &mut self.blocks[b].0;
        for i in 0..BLOOM_PROBES {
            let bit = (bits >> (9 * i)) & 511;
            block[(bit / 64) as usize] |= 1 << (bit % 64);
        }
    }

    /// Asks the CPU for the block holding `id`'s bits.
    fn prefetch(&self, id: &[u8]) {
        let (b, _) = self.locate(id);
        prefetch(self.blocks.as_ptr().wrapping_add(b));
    }

    /// `insert` of each id, the blocks of those a few ahead asked for meanwhile (each is a cache miss).
    fn insert_all<'a>(&mut self, ids: impl Iterator<Item = &'a [u8]>) {
        const AHEAD: usize = 8;
        let located: Vec<(usize, u64)> = ids.map(|id| self.locate(id)).collect();
        for (i, &at) in located.iter().enumerate() {
            if let Some(&(ahead, _)) = located.get(i + AHEAD) {
                prefetch(self.blocks.as_ptr().wrapping_add(ahead));
            }
            self.set(at);
        }
        self.added += located.len();
    }

    fn may_contain(&self, id: &[u8]) -> bool {
        let (b, bits) = self.locate(id);
        let block = &self.blocks[b].0;
        (0..BLOOM_PROBES).all(|i| {
            let bit = (bits >> (9 * i)) & 511;
            block[(bit / 64) as usize] & (1 << (bit % 64)) != 0
        })
    }

    fn full(&self) -> bool {
        self.added > self.capacity
    }
}

/// The store's database and keyspaces, opened with its first entry.
struct Tables {
    /// Kept open for the keyspaces; dropping it (temporary) deletes the directory.
    db: Database,
    expiry: Keyspace,
    ids: Keyspace,
    dir: PathBuf,
}

impl Tables {
    fn open(parent: Option<&Path>) -> Result<Self, String> {
        let (db, dir) = open_fresh(parent, "join")?;
        let opts = || KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES);
        // Every `expiry` read is of a key the index just named: its filters would only cost memory.
        let expiry = db.keyspace("expiry", || opts().expect_point_read_hits(true)).map_err(err)?;
        // Small index tables, merged 32 spills at a time: about an epoch's worth at the default budget
        // (an epoch is about a million entries, a spill a sixteenth of the budget), so an epoch's index
        // is rewritten about once rather than at every eighth spill. Ids are random, so every spill's
        // table overlaps the rest of its epoch; lookups check up to 32 tables' filters per epoch.
        // Measured at 10M pending, budget 500,000: new predictions 2.1x the events per CPU second of a
        // threshold of 8 through the worker, lookups of stored ids no slower (64: slower lookups).
        let index_compaction = std::sync::Arc::new(
            fjall::compaction::Leveled::default().with_table_target_size(INDEX_TABLE_BYTES).with_l0_threshold(32),
        );
        let ids = db.keyspace("ids", || opts().compaction_strategy(index_compaction.clone())).map_err(err)?;
        Ok(Tables { db, expiry, ids, dir })
    }
}

/// A join's entries beyond its memory budget. The database is opened with the first entry stored, so a
/// table that never goes over its budget costs no directory, files or background thread.
pub struct ColdStore {
    /// Where the store's directory goes (checked when the store was made).
    parent: PathBuf,
    tables: Option<Tables>,
    len: usize,
    /// No key is below this one: scans for the smallest start here instead of walking over the
    /// tombstones the front of the store collects as entries expire.
    floor: Vec<u8>,
    /// The smallest key and its value, while known.
    first: Option<(Vec<u8>, Vec<u8>)>,
    bloom: Bloom,
    /// Live entries per epoch of the id index.
    epochs: BTreeMap<u32, usize>,
    /// The epoch new spills go to, how many entries it took so far, and how many it takes.
    epoch: u32,
    epoch_filled: usize,
    epoch_entries: usize,
}

impl ColdStore {
    /// An empty store whose directory will be a fresh one under `parent` (the system temp directory when
    /// None), made when the first entry is stored and removed when the store is dropped. `parent` is
    /// checked now (created if missing, written to), so a directory that cannot hold the store is an
    /// error here rather than at the first spill.
    pub fn open(parent: Option<&Path>) -> Result<Self, String> {
        let parent = parent.map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
        check_writable(&parent)?;
        Ok(ColdStore {
            parent,
            tables: None,
            len: 0,
            floor: Vec::new(),
            first: None,
            bloom: Bloom::new(0),
            epochs: BTreeMap::new(),
            epoch: 0,
            epoch_filled: 0,
            epoch_entries: EPOCH_ENTRIES,
        })
    }

    /// The store's directory, once it holds (or held) an entry.
    pub fn dir(&self) -> Option<&Path> {
        self.tables.as_ref().map(|t| t.dir.as_path())
    }

    /// The tables, opened on first use.
    fn tables(&mut self) -> Result<&Tables, String> {
        if self.tables.is_none() {
            self.tables = Some(Tables::open(Some(&self.parent))?);
        }
        Ok(self.tables.as_ref().expect("just opened"))
    }

    /// The tables of a store that holds entries (only writes open them).
    fn opened(&self) -> Result<&Tables, String> {
        self.tables.as_ref().ok_or_else(|| "join store: entries counted but no store opened".to_string())
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// `put_sorted` of entries (id, expires, encoded value) in any order; `entries` is left in `(expires,
    /// id)` order. A join's spill comes in that order already (its expiry queue pops so), which costs one
    /// pass to check. Both orders only matter from INGEST_MIN entries on.
    pub fn put_many(&mut self, entries: &mut [(&[u8], f64, &[u8])]) -> Result<(), String> {
        let n = entries.len();
        if n < INGEST_MIN {
            return self.put_sorted(entries, &[], false);
        }
        let order = |a: &(&[u8], f64, &[u8]), b: &(&[u8], f64, &[u8])| {
            expiry_bytes(a.1).cmp(&expiry_bytes(b.1)).then_with(|| a.0.cmp(b.0))
        };
        if !entries.windows(2).all(|w| order(&w[0], &w[1]) == std::cmp::Ordering::Less) {
            entries.sort_unstable_by(order);
        }
        // Id order, mostly from the ids' first 8 bytes (one integer compare rather than a string compare
        // per step of the sort).
        let mut by_id: Vec<(u64, u32)> = (0..n as u32).map(|i| (id_prefix(entries[i as usize].0), i)).collect();
        by_id.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| entries[a.1 as usize].0.cmp(entries[b.1 as usize].0)));
        let by_id: Vec<u32> = by_id.into_iter().map(|(_, i)| i).collect();
        self.put_sorted(entries, &by_id, false)
    }

    /// Stores entries (id, expires, encoded value) that are not in the store yet, given in `(expires,
    /// id)` order, `by_id` listing them in id order (both orders only matter from INGEST_MIN entries
    /// on). A spill of many goes straight into new tables (fjall's ingestion of sorted runs): no
    /// journal, and no memtable, whose skiplist inserts cost more than the join step itself. A few go
    /// through one write batch, as a table per handful of keys would cost more in compactions than it
    /// saves. `side_by_side` writes the two keyspaces on two threads: for a restore, where the worker
    /// waits on the wall time (measured: a 2M-entry staged restore 8-10% faster); the spills of a
    /// running join keep one thread, as the second costs CPU that the other partitions and models would
    /// use (measured: 0.69x against 0.72-0.81x of the empty state's events per CPU second at 10M
    /// pending).
    pub fn put_sorted(
        &mut self,
        entries: &[(&[u8], f64, &[u8])],
        by_id: &[u32],
        side_by_side: bool,
    ) -> Result<(), String> {
        if entries.is_empty() {
            return Ok(());
        }
        let epoch = self.epoch;
        let n = entries.len();
        // A key is the expiry's 8 ordered bytes then the id, so comparing the pairs compares the keys.
        let (bytes, id) = entries.iter().map(|&(id, expires, _)| (expiry_bytes(expires), id)).min().expect("entries");
        let smallest = [&bytes[..], id].concat();
        if smallest < self.floor {
            self.floor.clone_from(&smallest);
        }
        if self.first.as_ref().is_some_and(|(first, _)| smallest < *first) {
            self.first = None;
        }
        self.bloom.insert_all(entries.iter().map(|e| e.0));
        let t = self.tables()?;
        if n < INGEST_MIN {
            let mut batch = t.db.batch();
            for &(id, expires, value) in entries {
                batch.insert(&t.ids, id_key(epoch, id), expiry_bytes(expires).to_vec());
                batch.insert(&t.expiry, expiry_key(expires, id), stored_value(epoch, value));
            }
            batch.commit().map_err(err)?;
        } else {
            // Keys and values are built in scratch buffers: fjall copies each into a view of its own, so a
            // vector per key and value was only allocated and freed (a million of each per epoch).
            let stamp = epoch.to_be_bytes();
            let index = by_id.iter().scan(Vec::new(), |key, &i| {
                let (id, expires, _) = entries[i as usize];
                key.clear();
                key.extend_from_slice(&stamp);
                key.extend_from_slice(id);
                Some((Slice::from(&key[..]), Slice::from(&expiry_bytes(expires)[..])))
            });
            let rows = entries.iter().scan((Vec::new(), Vec::new()), |(key, value), &(id, expires, v)| {
                key.clear();
                key.extend_from_slice(&expiry_bytes(expires));
                key.extend_from_slice(id);
                value.clear();
                value.extend_from_slice(&stamp);
                value.extend_from_slice(v);
                Some((Slice::from(&key[..]), Slice::from(&value[..])))
            });
            if side_by_side {
                // Each ingestion builds its own tables, so the two keyspaces can be written at once.
                let (ids, expiry) = (&t.ids, &t.expiry);
                let (a, b) = std::thread::scope(|scope| {
                    let other = scope.spawn(move || ingest(ids, index));
                    let b = ingest(expiry, rows);
                    (other.join().expect("an ingesting thread panicked"), b)
                });
                a?;
                b?;
            } else {
                ingest(&t.ids, index)?;
                ingest(&t.expiry, rows)?;
            }
        }
        self.len += n;
        *self.epochs.entry(epoch).or_default() += n;
        self.epoch_filled += n;
        if self.epoch_filled >= self.epoch_entries {
            (self.epoch, self.epoch_filled) = (self.epoch + 1, 0);
            if self.epochs.get(&epoch) == Some(&0) {
                self.drop_epoch(epoch)?;
            }
        }
        if self.bloom.full() {
            self.rebuild_bloom()?;
        }
        Ok(())
    }

    /// Sizes the id filter of an empty store for `n` ids, so a load of that many does not rebuild it on
    /// the way (it grows by rebuilding from the store, a read of every stored id).
    pub fn expect(&mut self, n: usize) {
        if self.len == 0 && n > self.bloom.capacity {
            self.bloom = Bloom::new(n);
        }
    }

    /// A filter sized for twice the ids stored now, from the ids keyspace (keys only).
    fn rebuild_bloom(&mut self) -> Result<(), String> {
        let mut bloom = Bloom::new(2 * self.len);
        let ids = &self.opened()?.ids;
        for &epoch in self.epochs.keys() {
            for guard in ids.prefix(epoch.to_be_bytes()) {
                bloom.insert(&guard.key().map_err(err)?[4..]);
            }
        }
        bloom.added = self.len;
        self.bloom = bloom;
        Ok(())
    }

    /// Asks the CPU for the memory a lookup of `id` reads first (its bits in the filter).
    pub fn prefetch(&self, id: &[u8]) {
        if self.len > 0 {
            self.bloom.prefetch(id);
        }
    }

    /// The entry stored for `id`: its expiry and encoded value.
    pub fn get(&self, id: &[u8]) -> Result<Option<(f64, Vec<u8>)>, String> {
        Ok(self.find(id)?.map(|(expires, _, mut stored)| (expires, stored.split_off(4))))
    }

    /// The entry stored for `id` as its expiry, epoch and `expiry` row value. Index entries whose row
    /// is gone or belongs to a later epoch (the id left and was stored again) are stale.
    fn find(&self, id: &[u8]) -> Result<Option<(f64, u32, Vec<u8>)>, String> {
        if self.len == 0 || !self.bloom.may_contain(id) {
            return Ok(None);
        }
        let t = self.opened()?;
        for &epoch in self.epochs.keys().rev() {
            let Some(e) = t.ids.get(id_key(epoch, id)).map_err(err)? else {
                continue;
            };
            let mut key = e.to_vec();
            key.extend_from_slice(id);
            if key < self.floor {
                continue;
            }
            match t.expiry.get(&key).map_err(err)? {
                Some(stored) if epoch_of(&stored) == epoch => {
                    return Ok(Some((expiry_from(&e), epoch, stored.to_vec())));
                }
                _ => continue,
            }
        }
        Ok(None)
    }

    /// Removes and returns the entry stored for `id`.
    pub fn take(&mut self, id: &[u8]) -> Result<Option<(f64, Vec<u8>)>, String> {
        let Some((expires, epoch, mut stored)) = self.find(id)? else {
            return Ok(None);
        };
        self.remove(id, expires, epoch)?;
        Ok(Some((expires, stored.split_off(4))))
    }

    /// Deletes an entry's `expiry` row; its index entry goes with its epoch's range.
    fn remove(&mut self, id: &[u8], expires: f64, epoch: u32) -> Result<(), String> {
        let key = expiry_key(expires, id);
        if self.first.as_ref().is_some_and(|(first, _)| *first == key) {
            self.first = None;
            self.floor = key.clone();
        }
        self.opened()?.expiry.remove(key).map_err(err)?;
        self.len -= 1;
        let live = self.epochs.get_mut(&epoch).ok_or("join store: an entry of an unknown epoch")?;
        *live -= 1;
        if *live == 0 && epoch != self.epoch {
            self.drop_epoch(epoch)?;
        }
        Ok(())
    }

    /// Forgets an epoch without live entries and drops the index tables wholly inside it; its rows in
    /// tables shared with a neighbour stay until compaction, unread (no lookup asks a dead epoch).
    fn drop_epoch(&mut self, epoch: u32) -> Result<(), String> {
        self.epochs.remove(&epoch);
        let (lo, hi) = (epoch.to_be_bytes(), (epoch + 1).to_be_bytes());
        self.opened()?.ids.tree.drop_range::<&[u8], _>(&lo[..]..&hi[..]).map_err(|e| format!("join store: {e}"))
    }

    /// The smallest `(expires, id)` stored.
    pub fn first(&mut self) -> Result<Option<(f64, &[u8])>, String> {
        if self.len == 0 {
            return Ok(None);
        }
        if self.first.is_none() {
            let t = self.opened()?;
            let guard = t.expiry.range(self.floor.as_slice()..).next().ok_or("join store: entries missing")?;
            let (k, v) = guard.into_inner().map_err(err)?;
            self.floor = k.to_vec();
            self.first = Some((k.to_vec(), v.to_vec()));
        }
        let (k, _) = self.first.as_ref().expect("just set");
        Ok(Some((expiry_from(k), &k[8..])))
    }

    /// Removes and returns the smallest entry: (id, expires, encoded value).
    pub fn pop_first(&mut self) -> Result<Option<(Vec<u8>, f64, Vec<u8>)>, String> {
        if self.first()?.is_none() {
            return Ok(None);
        }
        let (k, mut v) = self.first.take().expect("just read");
        let (expires, id) = (expiry_from(&k), k[8..].to_vec());
        self.remove(&id, expires, epoch_of(&v))?;
        Ok(Some((id, expires, v.split_off(4))))
    }

    /// Every entry, in `(expires, id)` order: (id, expires, encoded value).
    pub fn scan(&self) -> impl Iterator<Item = Result<(Vec<u8>, f64, Vec<u8>), String>> + '_ {
        let it = self.tables.as_ref().filter(|_| self.len > 0).map(|t| t.expiry.range(self.floor.as_slice()..));
        it.into_iter().flatten().map(|guard| {
            let (k, v) = guard.into_inner().map_err(err)?;
            Ok((k[8..].to_vec(), expiry_from(&k), v[4..].to_vec()))
        })
    }

    /// Replaces the store's contents: `by_expiry` gives the entries (id, expires, encoded value) in
    /// `(expires, id)` order, `by_id` the same ids with their expiry in byte order. Both go straight
    /// into the store's tables (fjall's ingestion of sorted streams), not through its journal and
    /// memtables: a restore of millions costs what writing them sorted costs.
    pub fn load_sorted<'a>(
        &mut self,
        by_expiry: impl Iterator<Item = (&'a [u8], f64, Vec<u8>)>,
        by_id: impl Iterator<Item = (&'a [u8], f64)>,
    ) -> Result<(), String> {
        self.clear()?;
        // One epoch for all of them: it is written once, sorted, and never overlaps a later one.
        let epoch = self.epoch;
        let t = self.tables()?;
        let n = ingest(
            &t.expiry,
            by_expiry.map(|(id, expires, value)| (expiry_key(expires, id), stored_value(epoch, &value))),
        )?;
        let mut bloom = Bloom::new(2 * n);
        ingest(
            &t.ids,
            by_id.map(|(id, expires)| {
                bloom.insert(id);
                (id_key(epoch, id), expiry_bytes(expires).to_vec())
            }),
        )?;
        if bloom.added != n {
            return Err(format!("join store: {n} entries but {} ids loaded", bloom.added));
        }
        (self.len, self.bloom) = (n, bloom);
        if n > 0 {
            self.epochs.insert(epoch, n);
            (self.epoch, self.epoch_filled) = (epoch + 1, 0);
        }
        Ok(())
    }

    /// Drops every entry.
    pub fn clear(&mut self) -> Result<(), String> {
        if let Some(t) = &self.tables {
            t.expiry.clear().map_err(err)?;
            t.ids.clear().map_err(err)?;
        }
        (self.len, self.floor, self.first, self.bloom) = (0, Vec::new(), None, Bloom::new(0));
        self.epochs.clear();
        // Epoch numbers are not reused, so no index entry left anywhere can pass for a new one.
        (self.epoch, self.epoch_filled) = (self.epoch + 1, 0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `put_many` of owned entries.
    fn put(s: &mut ColdStore, entries: Vec<(Vec<u8>, f64, Vec<u8>)>) -> Result<(), String> {
        let mut refs: Vec<(&[u8], f64, &[u8])> = entries.iter().map(|(id, e, v)| (&id[..], *e, &v[..])).collect();
        s.put_many(&mut refs)
    }

    #[test]
    fn expiry_bytes_sort_as_floats() {
        let xs = [-1e300, -2.5, -1.0, -1e-300, 0.0, 1e-300, 1.0, 1.5, 1.7e9, 4.1e9, 1e300];
        for w in xs.windows(2) {
            assert!(expiry_bytes(w[0]) < expiry_bytes(w[1]), "{} {}", w[0], w[1]);
        }
        for x in xs {
            assert_eq!(expiry_from(&expiry_bytes(x)).to_bits(), x.to_bits());
        }
        assert_eq!(expiry_bytes(-0.0), expiry_bytes(0.0));
    }

    #[test]
    fn first_follows_puts_and_removals() {
        let mut s = ColdStore::open(None).unwrap();
        // Nothing on disk until the first entry; reads of the empty store open nothing either.
        assert!(s.dir().is_none() && s.get(b"a").unwrap().is_none() && s.first().unwrap().is_none());
        assert_eq!(s.scan().count(), 0);
        s.clear().unwrap();
        assert!(s.dir().is_none());
        let e = |id: &str, x: f64| (id.as_bytes().to_vec(), x, id.as_bytes().to_vec());
        put(&mut s, vec![e("b", 2.0), e("a", 2.0), e("c", 1.0), e("ab", 2.0)]).unwrap();
        let dir = s.dir().expect("opened by the first entries").to_path_buf();
        assert!(dir.exists());
        assert_eq!(s.first().unwrap(), Some((1.0, &b"c"[..])));
        assert_eq!(s.take(b"c").unwrap(), Some((1.0, b"c".to_vec())));
        assert_eq!(s.first().unwrap(), Some((2.0, &b"a"[..])));
        put(&mut s, vec![e("z", 0.5)]).unwrap(); // below the floor
        assert_eq!(s.pop_first().unwrap().unwrap().0, b"z");
        assert_eq!(s.pop_first().unwrap().unwrap().0, b"a");
        assert!(s.get(b"zz").unwrap().is_none());
        let rest: Vec<Vec<u8>> = s.scan().map(|r| r.unwrap().0).collect();
        assert_eq!(rest, [b"ab".to_vec(), b"b".to_vec()]);
        assert_eq!(s.len(), 2);
        // Past the filter's capacity it is rebuilt from the store: every stored id is still found.
        let many: Vec<_> = (0..70_000).map(|i| e(&format!("k{i}"), 3.0)).collect();
        put(&mut s, many).unwrap();
        assert!(s.bloom.capacity > 1 << 16);
        assert!((0..70_000).step_by(997).all(|i| s.get(format!("k{i}").as_bytes()).unwrap().is_some()));
        assert!(s.get(b"ab").unwrap().is_some() && s.get(b"k70000").unwrap().is_none());
        drop(s);
        assert!(!dir.exists());
    }

    #[test]
    fn the_filter_has_no_false_negatives_and_few_false_positives() {
        let mut b = Bloom::new(100_000);
        (0..100_000).for_each(|i| b.insert(format!("id-{i}").as_bytes()));
        assert!((0..100_000).all(|i| b.may_contain(format!("id-{i}").as_bytes())));
        let false_positives = (0..100_000).filter(|i| b.may_contain(format!("other-{i}").as_bytes())).count();
        assert!(false_positives < 1_000, "{false_positives} of 100,000");
    }

    #[test]
    fn lookups_skip_stale_index_entries_across_epochs() {
        let mut s = ColdStore::open(None).unwrap();
        s.epoch_entries = 3;
        let e = |id: &str, x: f64, v: &str| (id.as_bytes().to_vec(), x, v.as_bytes().to_vec());
        put(&mut s, vec![e("a", 1.0, "a1"), e("b", 2.0, "b1"), e("c", 3.0, "c1")]).unwrap(); // epoch 0
        assert_eq!(s.take(b"b").unwrap(), Some((2.0, b"b1".to_vec())));
        // Stored again, same expiry, in epoch 1: the epoch-0 index entry now points at a row of epoch 1.
        put(&mut s, vec![e("b", 2.0, "b2"), e("d", 4.0, "d1"), e("e", 5.0, "e1")]).unwrap();
        assert_eq!(s.get(b"b").unwrap(), Some((2.0, b"b2".to_vec())));
        assert_eq!(s.take(b"b").unwrap(), Some((2.0, b"b2".to_vec())));
        assert_eq!(s.get(b"b").unwrap(), None, "both index entries are stale");
        // Epoch 0 empties and is dropped; its ids are not found, the others are.
        assert_eq!(s.pop_first().unwrap().unwrap().0, b"a");
        assert_eq!(s.pop_first().unwrap().unwrap().0, b"c");
        assert!(!s.epochs.contains_key(&0));
        assert_eq!(s.get(b"a").unwrap(), None);
        assert_eq!(s.get(b"d").unwrap(), Some((4.0, b"d1".to_vec())));
        assert_eq!(s.len(), 2);
        let rest: Vec<Vec<u8>> = s.scan().map(|r| r.unwrap().2).collect();
        assert_eq!(rest, [b"d1".to_vec(), b"e1".to_vec()]);
        // A spill large enough to be ingested as tables, then read back through both keyspaces.
        let many: Vec<_> = (0..5000).map(|i| e(&format!("k{i:05}"), 10.0 + i as f64, "v")).collect();
        put(&mut s, many).unwrap();
        assert!((0..5000).step_by(499).all(|i| s.get(format!("k{i:05}").as_bytes()).unwrap().is_some()));
        assert_eq!(s.pop_first().unwrap().unwrap().0, b"d");
        assert_eq!(s.len(), 5001);
    }
}
