//! The chunk store of one worker: chunks in memory up to a limit, the least
//! recently used spilled beyond it to IPC files read back by `mmap`.
//!
//! *When* to spill (the limit, LRU order) is decided here under the lock;
//! *where the bytes go* ([`ipcfile`]) runs outside it, so readers never wait on disk.

pub mod ipcfile;
pub mod owned;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::chunk::{self, Chunk};
use crate::key::Key;
pub use ipcfile::TempIpcFile;
pub use owned::OwnedDir;

/// How a store is bounded.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Bytes of chunks kept in memory before the least recently used spill.
    pub memory_limit: usize,
    /// Directory for spill files (created on first spill).
    pub spill_dir: PathBuf,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            memory_limit: usize::MAX,
            spill_dir: std::env::temp_dir().join(format!("quiver-spill-{}", std::process::id())),
        }
    }
}

/// A point-in-time view of a store's usage.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStats {
    /// Chunks held.
    pub keys: usize,
    /// Bytes held in memory.
    pub memory_bytes: u64,
    /// The most bytes ever held in memory at once.
    pub peak_memory_bytes: u64,
    /// Bytes held in spill files.
    pub spilled_bytes: u64,
    /// Chunks spilled so far.
    pub spill_count: u64,
    /// Spills that failed (the chunk stayed in memory).
    pub spill_errors: u64,
}

struct Entry {
    chunk: Chunk,
    nbytes: usize,
    tick: u64,
    place: Place,
}

enum Place {
    Memory,
    /// Chosen for spilling; still served from memory until the file is mapped.
    Spilling,
    /// In a mapped file; the chunk's buffers point into the map.
    Spilled(Arc<TempIpcFile>, bytes::Bytes, std::ops::Range<usize>),
}

#[derive(Default)]
struct Inner {
    entries: FxHashMap<Key, Entry>,
    /// In-memory entries by last use, oldest first.
    lru: BTreeMap<u64, Key>,
    tick: u64,
    memory_bytes: usize,
    peak_memory_bytes: usize,
    spilled_bytes: u64,
}

/// One worker's chunks.
pub struct ChunkStore {
    config: StoreConfig,
    inner: Mutex<Inner>,
    spill_count: AtomicU64,
    spill_errors: AtomicU64,
    /// After a failed spill (full disk), no new attempt before this instant:
    /// each attempt writes and deletes a file, which helps nobody.
    spill_paused_until: Mutex<Option<std::time::Instant>>,
}

/// How long spilling rests after a failure.
const SPILL_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);

impl ChunkStore {
    /// An empty store.
    pub fn new(config: StoreConfig) -> Self {
        ChunkStore {
            config,
            inner: Mutex::default(),
            spill_count: AtomicU64::new(0),
            spill_errors: AtomicU64::new(0),
            spill_paused_until: Mutex::new(None),
        }
    }

    /// The store's configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `chunk` under `key` (replacing any previous one), then spills the
    /// least recently used chunks while memory is over the limit.
    pub fn put(&self, key: Key, chunk: Chunk) {
        let nbytes = chunk::nbytes(&chunk);
        let victims = {
            let mut g = self.lock();
            let inner = &mut *g;
            inner.tick += 1;
            let tick = inner.tick;
            if let Some(old) = inner.entries.insert(
                key.clone(),
                Entry {
                    chunk,
                    nbytes,
                    tick,
                    place: Place::Memory,
                },
            ) {
                inner.forget(&old);
            }
            inner.lru.insert(tick, key);
            inner.memory_bytes += nbytes;
            inner.peak_memory_bytes = inner.peak_memory_bytes.max(inner.memory_bytes);
            if self.spill_resting() {
                vec![]
            } else {
                inner.choose_victims(self.config.memory_limit)
            }
        };
        for (key, chunk) in victims {
            self.spill(key, &chunk);
        }
    }

    fn spill_resting(&self) -> bool {
        let until = *self
            .spill_paused_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        until.is_some_and(|t| std::time::Instant::now() < t)
    }

    /// Spills least recently used chunks until the store holds at most
    /// `target` bytes in memory (memory pressure seen from outside the store).
    pub fn spill_down_to(&self, target: usize) {
        if self.spill_resting() {
            return;
        }
        let victims = self.lock().choose_victims(target);
        for (key, chunk) in victims {
            self.spill(key, &chunk);
        }
    }

    fn spill(&self, key: Key, chunk: &Chunk) {
        let written = std::fs::create_dir_all(&self.config.spill_dir)
            .map_err(|source| crate::Error::Spill {
                path: self.config.spill_dir.clone(),
                source,
            })
            .and_then(|()| {
                let path = self
                    .config
                    .spill_dir
                    .join(format!("{}.arrow", uuid::Uuid::new_v4()));
                let file = TempIpcFile::create(path, chunk)?;
                let mapped = ipcfile::map(file.path())?;
                Ok((file, mapped))
            });
        let mut g = self.lock();
        let inner = &mut *g;
        let Some(entry) = inner.entries.get_mut(&key) else {
            return;
        };
        match written {
            Ok((file, mapped)) if matches!(entry.place, Place::Spilling) => {
                inner.memory_bytes -= entry.nbytes;
                inner.spilled_bytes += file.len();
                entry.chunk = mapped.chunk;
                entry.place = Place::Spilled(Arc::new(file), mapped.bytes, mapped.range);
                self.spill_count.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {} // replaced while spilling: the new value stays, the file goes
            Err(e) => {
                tracing::error!(%key, "spill failed, chunk kept in memory (spilling rests {SPILL_BACKOFF:?}): {e}");
                self.spill_errors.fetch_add(1, Ordering::Relaxed);
                *self
                    .spill_paused_until
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) =
                    Some(std::time::Instant::now() + SPILL_BACKOFF);
                entry.place = Place::Memory;
                inner.lru.insert(entry.tick, key);
            }
        }
    }

    /// The chunk under `key`, if held. An `Arc` clone: no data is copied.
    pub fn get(&self, key: &Key) -> Option<Chunk> {
        self.lock().touch(key).map(|e| e.chunk.clone())
    }

    /// Whether `key` is held.
    pub fn contains(&self, key: &Key) -> bool {
        self.lock().entries.contains_key(key)
    }

    /// The spill file backing `key` and the address range of its map, if it is spilled.
    pub fn spill_file(&self, key: &Key) -> Option<(Arc<TempIpcFile>, std::ops::Range<usize>)> {
        match &self.lock().entries.get(key)?.place {
            Place::Spilled(f, _, r) => Some((f.clone(), r.clone())),
            _ => None,
        }
    }

    /// The chunk under `key` and, if it is spilled, the bytes of its mapped IPC
    /// file, which can be sent as they are.
    pub fn get_with_file(&self, key: &Key) -> Option<(Chunk, Option<bytes::Bytes>)> {
        let mut g = self.lock();
        let e = g.touch(key)?;
        let file = match &e.place {
            Place::Spilled(_, b, _) => Some(b.clone()),
            _ => None,
        };
        Some((e.chunk.clone(), file))
    }

    /// Drops `key` (its spill file goes with the last reader); true if it was held.
    pub fn remove(&self, key: &Key) -> bool {
        let mut g = self.lock();
        match g.entries.remove(key) {
            Some(e) => {
                g.forget(&e);
                true
            }
            None => false,
        }
    }

    /// Every key held.
    pub fn keys(&self) -> Vec<Key> {
        self.lock().entries.keys().cloned().collect()
    }

    /// Bytes of `key` (in memory or spilled), if held.
    pub fn nbytes(&self, key: &Key) -> Option<usize> {
        self.lock().entries.get(key).map(|e| e.nbytes)
    }

    /// Usage figures.
    pub fn stats(&self) -> StoreStats {
        let g = self.lock();
        StoreStats {
            keys: g.entries.len(),
            memory_bytes: g.memory_bytes as u64,
            peak_memory_bytes: g.peak_memory_bytes as u64,
            spilled_bytes: g.spilled_bytes,
            spill_count: self.spill_count.load(Ordering::Relaxed),
            spill_errors: self.spill_errors.load(Ordering::Relaxed),
        }
    }
}

impl Inner {
    /// Marks `key` as just used (moving it to the young end of the LRU order).
    fn touch(&mut self, key: &Key) -> Option<&Entry> {
        self.tick += 1;
        let tick = self.tick;
        let e = self.entries.get_mut(key)?;
        if matches!(e.place, Place::Memory) {
            self.lru.remove(&e.tick);
            self.lru.insert(tick, key.clone());
        }
        e.tick = tick;
        Some(e)
    }

    fn forget(&mut self, e: &Entry) {
        match &e.place {
            Place::Memory => {
                self.lru.remove(&e.tick);
                self.memory_bytes -= e.nbytes;
            }
            Place::Spilling => self.memory_bytes -= e.nbytes,
            Place::Spilled(f, _, _) => self.spilled_bytes -= f.len(),
        }
    }

    /// Marks least recently used chunks for spilling until memory would fit `limit`.
    fn choose_victims(&mut self, limit: usize) -> Vec<(Key, Chunk)> {
        let mut projected = self.memory_bytes;
        let mut out = Vec::new();
        while projected > limit {
            let Some((_, key)) = self.lru.pop_first() else {
                break;
            };
            let e = self.entries.get_mut(&key).expect("lru entries are held");
            e.place = Place::Spilling;
            projected -= e.nbytes;
            out.push((key, e.chunk.clone()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Float64Type;

    fn store(limit: usize, dir: &std::path::Path) -> ChunkStore {
        ChunkStore::new(StoreConfig {
            memory_limit: limit,
            spill_dir: dir.to_path_buf(),
        })
    }

    fn floats(n: usize, v: f64) -> Chunk {
        chunk::from_array(std::sync::Arc::new(arrow::array::Float64Array::from(vec![
            v;
            n
        ])))
    }

    fn data_ptr(c: &Chunk) -> usize {
        c.column(0).as_primitive::<Float64Type>().values().as_ptr() as usize
    }

    #[test]
    fn gets_in_memory_share_buffers() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(usize::MAX, dir.path());
        let c = floats(1000, 1.0);
        s.put("a".into(), c.clone());
        assert_eq!(data_ptr(&s.get(&"a".into()).unwrap()), data_ptr(&c));
    }

    #[test]
    fn over_the_limit_lru_spills_and_reads_back_from_the_map() {
        let dir = tempfile::tempdir().unwrap();
        let one = chunk::nbytes(&floats(100_000, 0.0));
        let s = store(one * 2 + one / 2, dir.path());
        for i in 0..5 {
            s.put(format!("k{i}").as_str().into(), floats(100_000, i as f64));
        }
        let st = s.stats();
        assert_eq!(st.keys, 5);
        assert_eq!(st.spill_count, 3, "{st:?}");
        assert!(st.memory_bytes as usize <= one * 2 + one / 2);
        // The oldest went first; its values come back from the map without a copy.
        let (file, range) = s.spill_file(&"k0".into()).expect("k0 spilled");
        assert!(s.spill_file(&"k4".into()).is_none());
        let c = s.get(&"k0".into()).unwrap();
        let ptr = data_ptr(&c);
        assert!(
            range.contains(&ptr),
            "buffer {ptr:#x} outside map {range:x?}"
        );
        assert_eq!(ptr % 64, 0);
        assert_eq!(c.column(0).as_primitive::<Float64Type>().value(99_999), 0.0);
        assert_eq!(c.column(0).len(), 100_000);
        // Freeing the chunk deletes its file once the last reader is gone.
        let path = file.path().to_path_buf();
        drop(file);
        assert!(path.exists());
        assert!(s.remove(&"k0".into()));
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        for i in 1..5 {
            s.remove(&format!("k{i}").as_str().into());
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let st = s.stats();
        assert_eq!(
            (st.keys, st.memory_bytes, st.spilled_bytes, st.spill_count),
            (0, 0, 0, 3)
        );
    }

    #[test]
    fn unwritable_spill_dir_keeps_chunks_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let s = store(10, &file);
        s.put("a".into(), floats(100, 1.0));
        s.put("b".into(), floats(100, 2.0));
        let st = s.stats();
        assert_eq!((st.keys, st.spill_count), (2, 0));
        assert!(st.spill_errors >= 1);
        assert_eq!(s.get(&"a".into()).unwrap().num_rows(), 100);
    }

    #[test]
    fn corrupt_ipc_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.arrow");
        ipcfile::write(&p, &floats(1000, 3.0)).unwrap();
        let mut bytes = std::fs::read(&p).unwrap();
        for cut in [0, 5, 9, 100, bytes.len() - 1] {
            std::fs::write(&p, &bytes[..cut]).unwrap();
            assert!(ipcfile::map(&p).is_err());
        }
        let n = bytes.len();
        bytes[n - 20..n - 10].fill(0xff);
        std::fs::write(&p, &bytes).unwrap();
        assert!(ipcfile::map(&p).is_err());
    }
}
