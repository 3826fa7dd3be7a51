//! The cold tier of the join: entries that do not fit the in-memory budget, in an embedded LSM store
//! (fjall) on local disk. The store is a cache of the worker's changelog, so it is created empty in a
//! fresh directory and deleted when the table goes; nothing here has to survive a crash.
//!
//! Two keyspaces: `expiry` maps `(expires, id)` to the encoded entry, so the store's first key is its
//! smallest entry in the join's expiry order; `ids` maps an id to its expiry, for lookups (bloom filters
//! answer the common miss without reading a block).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use ahash::RandomState;
use fjall::{Database, Keyspace, KeyspaceCreateOptions};

/// Block cache of each store: lookups of recent spills hit it; beyond that the OS page cache helps.
const CACHE_BYTES: u64 = 32 << 20;
/// Memtable size per keyspace (fjall's default is 64 MiB; two keyspaces per table, one table per model
/// and partition).
const MEMTABLE_BYTES: u64 = 16 << 20;

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

fn err(e: fjall::Error) -> String {
    format!("join store: {e}")
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
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("mlmon-join-")).and_then(|r| r.split('-').next())
        else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Bits per id and probes of the in-memory filter in front of the store.
const BLOOM_BITS: usize = 12;
const BLOOM_PROBES: u64 = 6;

/// A bloom filter over the ids in the store, in memory (12 bits an id: 15 MB at 10M), so that a new id,
/// the usual lookup, costs no store read at all (the store's own filters sit behind its memtables,
/// whose lookups cost more than the whole step). Removals leave their bits set; the filter is rebuilt
/// from the store's ids once as many ids went in as it was sized for.
struct Bloom {
    bits: Vec<u64>,
    mask: u64,
    hasher: RandomState,
    capacity: usize,
    added: usize,
}

impl Bloom {
    fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1 << 16);
        let n_bits = (capacity * BLOOM_BITS).next_power_of_two();
        Bloom { bits: vec![0; n_bits / 64], mask: n_bits as u64 - 1, hasher: RandomState::new(), capacity, added: 0 }
    }

    fn probes(&self, id: &[u8]) -> impl Iterator<Item = u64> {
        let h = self.hasher.hash_one(id);
        let (a, b, mask) = (h, h.rotate_left(32) | 1, self.mask);
        (0..BLOOM_PROBES).map(move |i| a.wrapping_add(i.wrapping_mul(b)) & mask)
    }

    fn insert(&mut self, id: &[u8]) {
        for bit in self.probes(id).collect::<Vec<_>>() {
            self.bits[(bit / 64) as usize] |= 1 << (bit % 64);
        }
        self.added += 1;
    }

    fn may_contain(&self, id: &[u8]) -> bool {
        self.probes(id).all(|bit| self.bits[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
    }

    fn full(&self) -> bool {
        self.added > self.capacity
    }
}

pub struct ColdStore {
    db: Database,
    expiry: Keyspace,
    ids: Keyspace,
    len: usize,
    /// No key is below this one: scans for the smallest start here instead of walking over the
    /// tombstones the front of the store collects as entries expire.
    floor: Vec<u8>,
    /// The smallest key and its value, while known.
    first: Option<(Vec<u8>, Vec<u8>)>,
    bloom: Bloom,
    pub dir: PathBuf,
}

impl ColdStore {
    /// A new, empty store in a fresh directory under `parent` (the system temp directory when None),
    /// removed when the store is dropped.
    pub fn open(parent: Option<&Path>) -> Result<Self, String> {
        let parent = parent.map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
        remove_orphans(&parent);
        let n = OPENED.fetch_add(1, AtomicOrdering::Relaxed);
        let dir = parent.join(format!("mlmon-join-{}-{n}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| format!("join store {}: {e}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| format!("join store {}: {e}", dir.display()))?;
        let db = Database::builder(&dir).cache_size(CACHE_BYTES).temporary(true).open().map_err(err)?;
        let opts = || KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES);
        let expiry = db.keyspace("expiry", opts).map_err(err)?;
        let ids = db.keyspace("ids", opts).map_err(err)?;
        Ok(ColdStore { db, expiry, ids, len: 0, floor: Vec::new(), first: None, bloom: Bloom::new(0), dir })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Stores entries (id, expires, encoded value) that are not in the store yet, in one write batch.
    pub fn put_many(&mut self, entries: Vec<(Vec<u8>, f64, Vec<u8>)>) -> Result<(), String> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut batch = self.db.batch();
        for (id, expires, value) in entries {
            let key = expiry_key(expires, &id);
            if key < self.floor {
                self.floor.clone_from(&key);
            }
            if let Some((first, _)) = &self.first {
                if key < *first {
                    self.first = Some((key.clone(), value.clone()));
                }
            }
            self.bloom.insert(&id);
            batch.insert(&self.ids, id, expiry_bytes(expires).to_vec());
            batch.insert(&self.expiry, key, value);
            self.len += 1;
        }
        batch.commit().map_err(err)?;
        if self.bloom.full() {
            self.rebuild_bloom()?;
        }
        Ok(())
    }

    /// A filter sized for twice the ids stored now, from the ids keyspace (keys only).
    fn rebuild_bloom(&mut self) -> Result<(), String> {
        let mut bloom = Bloom::new(2 * self.len);
        for guard in self.ids.iter() {
            bloom.insert(&guard.key().map_err(err)?);
        }
        bloom.added = self.len;
        self.bloom = bloom;
        Ok(())
    }

    /// The entry stored for `id`: its expiry and encoded value.
    pub fn get(&self, id: &[u8]) -> Result<Option<(f64, Vec<u8>)>, String> {
        if self.len == 0 || !self.bloom.may_contain(id) {
            return Ok(None);
        }
        let Some(e) = self.ids.get(id).map_err(err)? else {
            return Ok(None);
        };
        let mut key = e.to_vec();
        key.extend_from_slice(id);
        let value = self.expiry.get(&key).map_err(err)?.ok_or("join store: an id without its entry")?;
        Ok(Some((expiry_from(&e), value.to_vec())))
    }

    /// Removes and returns the entry stored for `id`.
    pub fn take(&mut self, id: &[u8]) -> Result<Option<(f64, Vec<u8>)>, String> {
        let found = self.get(id)?;
        if let Some((expires, _)) = &found {
            self.remove(id, *expires)?;
        }
        Ok(found)
    }

    fn remove(&mut self, id: &[u8], expires: f64) -> Result<(), String> {
        let key = expiry_key(expires, id);
        if self.first.as_ref().is_some_and(|(first, _)| *first == key) {
            self.first = None;
            self.floor = key.clone();
        }
        let mut batch = self.db.batch();
        batch.remove(&self.ids, id.to_vec());
        batch.remove(&self.expiry, key);
        batch.commit().map_err(err)?;
        self.len -= 1;
        Ok(())
    }

    /// The smallest `(expires, id)` stored.
    pub fn first(&mut self) -> Result<Option<(f64, &[u8])>, String> {
        if self.len == 0 {
            return Ok(None);
        }
        if self.first.is_none() {
            let guard = self.expiry.range(self.floor.as_slice()..).next().ok_or("join store: entries missing")?;
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
        let (k, v) = self.first.take().expect("just read");
        let (expires, id) = (expiry_from(&k), k[8..].to_vec());
        self.remove(&id, expires)?;
        Ok(Some((id, expires, v)))
    }

    /// Every entry, in `(expires, id)` order: (id, expires, encoded value).
    pub fn scan(&self) -> impl Iterator<Item = Result<(Vec<u8>, f64, Vec<u8>), String>> + '_ {
        let it = if self.len == 0 { None } else { Some(self.expiry.range(self.floor.as_slice()..)) };
        it.into_iter().flatten().map(|guard| {
            let (k, v) = guard.into_inner().map_err(err)?;
            Ok((k[8..].to_vec(), expiry_from(&k), v.to_vec()))
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
        let mut n = 0;
        let mut ingestion = self.expiry.start_ingestion().map_err(err)?;
        for (id, expires, value) in by_expiry {
            ingestion.write(expiry_key(expires, id), value).map_err(err)?;
            n += 1;
        }
        ingestion.finish().map_err(err)?;
        let mut bloom = Bloom::new(2 * n);
        let mut ingestion = self.ids.start_ingestion().map_err(err)?;
        for (id, expires) in by_id {
            bloom.insert(id);
            ingestion.write(id.to_vec(), expiry_bytes(expires).to_vec()).map_err(err)?;
        }
        ingestion.finish().map_err(err)?;
        if bloom.added != n {
            return Err(format!("join store: {n} entries but {} ids loaded", bloom.added));
        }
        (self.len, self.bloom) = (n, bloom);
        Ok(())
    }

    /// Drops every entry.
    pub fn clear(&mut self) -> Result<(), String> {
        self.expiry.clear().map_err(err)?;
        self.ids.clear().map_err(err)?;
        (self.len, self.floor, self.first, self.bloom) = (0, Vec::new(), None, Bloom::new(0));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let dir = s.dir.clone();
        let e = |id: &str, x: f64| (id.as_bytes().to_vec(), x, id.as_bytes().to_vec());
        s.put_many(vec![e("b", 2.0), e("a", 2.0), e("c", 1.0), e("ab", 2.0)]).unwrap();
        assert_eq!(s.first().unwrap(), Some((1.0, &b"c"[..])));
        assert_eq!(s.take(b"c").unwrap(), Some((1.0, b"c".to_vec())));
        assert_eq!(s.first().unwrap(), Some((2.0, &b"a"[..])));
        s.put_many(vec![e("z", 0.5)]).unwrap(); // below the floor
        assert_eq!(s.pop_first().unwrap().unwrap().0, b"z");
        assert_eq!(s.pop_first().unwrap().unwrap().0, b"a");
        assert!(s.get(b"zz").unwrap().is_none());
        let rest: Vec<Vec<u8>> = s.scan().map(|r| r.unwrap().0).collect();
        assert_eq!(rest, [b"ab".to_vec(), b"b".to_vec()]);
        assert_eq!(s.len(), 2);
        // Past the filter's capacity it is rebuilt from the store: every stored id is still found.
        let many: Vec<_> = (0..70_000).map(|i| e(&format!("k{i}"), 3.0)).collect();
        s.put_many(many).unwrap();
        assert!(s.bloom.capacity > 1 << 16);
        assert!((0..70_000).step_by(997).all(|i| s.get(format!("k{i}").as_bytes()).unwrap().is_some()));
        assert!(s.get(b"ab").unwrap().is_some() && s.get(b"k70000").unwrap().is_none());
        drop(s);
        assert!(!dir.exists());
    }
}
