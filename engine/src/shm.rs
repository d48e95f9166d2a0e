//! Chunks born in shared memory: an allocator that puts every large allocation
//! in its own memfd, and the export/import that lets a peer on the same host
//! map those very pages (through `/proc/PID/fd`) instead of receiving a copy.
//!
//! A worker installs [`SharedAlloc`] as its global allocator and calls
//! [`enable`]; from then on the values of a chunk it computes already lie in
//! memory a peer can map. Chunks are immutable (no op writes a buffer in
//! place), and a region once exported is never reused (it is its own file,
//! closed on free), so a peer's view can never change under it. A peer keeps
//! the descriptor of each region it maps, so it can hand the chunk on to a
//! third process, even after the region's creator is gone.

use std::alloc::{GlobalAlloc, Layout};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use arrow::array::{ArrayData, ArrayDataBuilder, ArrayRef, make_array};
use arrow::buffer::{BooleanBuffer, Buffer, NullBuffer};
use arrow::datatypes::{DataType, Schema};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use crate::chunk::Chunk;
use crate::error::{Error, Result};

/// Allocations of at least this many bytes go to shared memory.
pub const MIN_BYTES: usize = 1 << 20;

/// Buffers outside shared memory may still travel inline, up to this many bytes in all.
const INLINE_MAX: usize = 64 << 10;

const PAGE: usize = 4096;

static ENABLED: AtomicBool = AtomicBool::new(false);
static NEXT_ID: AtomicU64 = AtomicU64::new(0);
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Descriptors held for regions (this process's own, and peers' it mapped) are
/// capped so that they never take the ones sockets need (half the soft limit,
/// set by [`enable`]).
static MAX_LIVE: AtomicUsize = AtomicUsize::new(0);
static TABLE: Mutex<Table> = Mutex::new(Table {
    live: BTreeMap::new(),
    free: Vec::new(),
    free_bytes: 0,
});

/// Peers' regions mapped here, by the map's start address: a buffer lying in
/// one is exported again under this process's descriptor for it.
static IMPORTED: Mutex<BTreeMap<usize, Imported>> = Mutex::new(BTreeMap::new());

/// A peer's region mapped here, with the descriptor kept open for it.
#[derive(Clone, Copy)]
struct Imported {
    len: usize,
    fd: i32,
    owner: u32,
    id: u64,
}

/// Freed regions that no peer ever saw are kept for reuse up to this many
/// bytes: their pages are already faulted in, as an allocator's free lists are.
const FREE_MAX: usize = 256 << 20;

/// One shared allocation: its mapping length, memfd, unique id, and whether
/// it was ever exported (then it is closed when freed, never reused).
#[derive(Clone, Copy)]
struct Region {
    len: usize,
    fd: i32,
    id: u64,
    exported: bool,
}

/// Live regions by start address, and freed ones kept for reuse.
struct Table {
    live: BTreeMap<usize, Region>,
    free: Vec<(usize, Region)>,
    free_bytes: usize,
}

fn table() -> std::sync::MutexGuard<'static, Table> {
    // Nothing panics while the table is held; a poisoned lock is still consistent.
    TABLE.lock().unwrap_or_else(|e| e.into_inner())
}

/// The name a region's memfd carries, checked by the peer that opens it.
fn region_name(pid: u32, id: u64) -> NameBuf {
    let mut n = NameBuf {
        bytes: [0; 48],
        len: 0,
    };
    let _ = write!(n, "quiver-{pid}-{id}");
    n
}

/// A fixed buffer for a memfd name, written without allocating (this runs inside the allocator).
struct NameBuf {
    bytes: [u8; 48],
    len: usize,
}

impl NameBuf {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }
}

impl std::fmt::Write for NameBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        // One byte stays free for the terminating NUL.
        let end = self.len + s.len();
        if end >= self.bytes.len() {
            return Err(std::fmt::Error);
        }
        self.bytes[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Puts large allocations of this process in shared memory from [`enable`] on.
///
/// Smaller ones, those before `enable`, and any the kernel refuses go to `A`.
pub struct SharedAlloc<A>(pub A);

/// Starts placing large allocations in shared memory; raises the open-file
/// limit to its hard maximum, since every live region holds a descriptor.
pub fn enable() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            let want = lim.rlim_max.min(1 << 20);
            if want > lim.rlim_cur {
                let raised = libc::rlimit {
                    rlim_cur: want,
                    rlim_max: lim.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    lim.rlim_cur = want;
                }
            }
        }
    }
    MAX_LIVE.store((lim.rlim_cur / 2) as usize, Ordering::Relaxed);
    ENABLED.store(true, Ordering::Release);
}

/// Whether large allocations now go to shared memory.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Acquire)
}

fn round_up(n: usize) -> usize {
    n.div_ceil(PAGE) * PAGE
}

/// A new shared region of at least `size` bytes, zeroed; null when the kernel refuses.
///
/// # Safety
/// Called from the allocator: must not allocate `MIN_BYTES` or more itself.
unsafe fn shared_alloc(size: usize, zeroed: bool) -> *mut u8 {
    let len = round_up(size);
    if let Some(p) = reuse(len) {
        if zeroed {
            // SAFETY: the region was just taken from the free list and is `len` long.
            unsafe { std::ptr::write_bytes(p, 0, len) };
        }
        return p;
    }
    if LIVE.fetch_add(1, Ordering::Relaxed) >= MAX_LIVE.load(Ordering::Relaxed) {
        LIVE.fetch_sub(1, Ordering::Relaxed);
        return std::ptr::null_mut();
    }
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let name = region_name(std::process::id(), id);
    // SAFETY: `name.bytes` is NUL-terminated (the writer leaves the last byte 0);
    // the fd is owned here and closed on every failure path.
    let ptr = unsafe {
        let fd = libc::memfd_create(name.bytes.as_ptr().cast(), libc::MFD_CLOEXEC);
        if fd < 0 {
            LIVE.fetch_sub(1, Ordering::Relaxed);
            return std::ptr::null_mut();
        }
        let p = if libc::ftruncate(fd, len as libc::off_t) == 0 {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        } else {
            libc::MAP_FAILED
        };
        if p == libc::MAP_FAILED {
            libc::close(fd);
            LIVE.fetch_sub(1, Ordering::Relaxed);
            return std::ptr::null_mut();
        }
        let region = Region {
            len,
            fd,
            id,
            exported: false,
        };
        table().live.insert(p as usize, region);
        p
    };
    ptr.cast()
}

/// Unmaps and closes the region at `ptr`, if it is one.
///
/// # Safety
/// `ptr` must not be used afterwards if it was a region.
unsafe fn shared_free(ptr: *mut u8) -> bool {
    let mut t = table();
    let Some(r) = t.live.remove(&(ptr as usize)) else {
        return false;
    };
    if !r.exported && t.free_bytes + r.len <= FREE_MAX {
        t.free_bytes += r.len;
        t.free.push((ptr as usize, r));
        return true;
    }
    drop(t);
    // SAFETY: the region was mapped with this length and owns this fd.
    unsafe {
        libc::munmap(ptr.cast(), r.len);
        libc::close(r.fd);
    }
    LIVE.fetch_sub(1, Ordering::Relaxed);
    true
}

/// A freed, never exported region of `len` bytes up to twice that, now live
/// again: the smallest that fits, and of those the one freed last, whose
/// lines are the likeliest still in cache (a worker that stores each result
/// until the center frees it would otherwise cycle through every kept region).
fn reuse(len: usize) -> Option<*mut u8> {
    let mut t = table();
    let i = (0..t.free.len())
        .rev()
        .filter(|&i| (len..=2 * len).contains(&t.free[i].1.len))
        .min_by_key(|&i| t.free[i].1.len)?;
    let (p, r) = t.free.remove(i);
    t.free_bytes -= r.len;
    t.live.insert(p, r);
    Some(p as *mut u8)
}

/// The region at `ptr`, if `ptr` starts one.
fn region_at(ptr: *mut u8) -> Option<Region> {
    table().live.get(&(ptr as usize)).copied()
}

thread_local! {
    /// Set while this thread allocates memory that stays private (see [`private`]).
    static PRIVATE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with its large allocations in the inner allocator's memory, for
/// buffers never shared in place: bytes received over Flight land there, where
/// reused pages need no fault, instead of in fresh shared pages.
pub fn private<R>(f: impl FnOnce() -> R) -> R {
    let before = PRIVATE.replace(true);
    let r = f();
    PRIVATE.set(before);
    r
}

/// Makes this thread's large allocations private from now on: for threads
/// that only move bytes (a worker's IO threads). Their large allocations are
/// transport buffers, read into once and dropped, which no peer ever maps; in
/// shared memory each would cost a descriptor and a file's page faults.
pub fn private_thread() {
    let _ = PRIVATE.try_with(|p| p.set(true));
}

fn wants_shared(layout: &Layout) -> bool {
    layout.size() >= MIN_BYTES
        && layout.align() <= PAGE
        && enabled()
        && !PRIVATE.try_with(|p| p.get()).unwrap_or(true)
}

// SAFETY: every pointer handed out is either the inner allocator's (and goes
// back to it) or a fresh page-aligned mapping of at least the requested size
// (found again in the region table by its start address).
unsafe impl<A: GlobalAlloc> GlobalAlloc for SharedAlloc<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if wants_shared(&layout) {
            // SAFETY: shared_alloc allocates nothing large itself.
            let p = unsafe { shared_alloc(layout.size(), false) };
            if !p.is_null() {
                return p;
            }
        }
        // SAFETY: forwarded as received.
        unsafe { self.0.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if wants_shared(&layout) {
            // SAFETY: as in alloc.
            let p = unsafe { shared_alloc(layout.size(), true) };
            if !p.is_null() {
                return p;
            }
        }
        // SAFETY: forwarded as received.
        unsafe { self.0.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // A region's layout is always MIN_BYTES or more (realloc keeps it so).
        // SAFETY: ptr is the caller's to free.
        if layout.size() >= MIN_BYTES && enabled() && unsafe { shared_free(ptr) } {
            return;
        }
        // SAFETY: not a region, so the inner allocator's.
        unsafe { self.0.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let region = if layout.size() >= MIN_BYTES && enabled() {
            region_at(ptr)
        } else {
            None
        };
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        if let Some(r) = region.filter(|_| new_size >= MIN_BYTES) {
            let new_len = round_up(new_size);
            if new_len <= r.len {
                // The file never shrinks: a peer may have it mapped.
                return ptr;
            }
            // SAFETY: the region is live and ours.
            if let Some(p) = unsafe { grow(ptr, r, new_len) } {
                return p;
            }
        } else if region.is_none() && !wants_shared(&new_layout) {
            // SAFETY: an inner allocation, resized by its own allocator.
            return unsafe { self.0.realloc(ptr, layout, new_size) };
        }
        // Moving between the inner allocator and shared memory (or a region
        // that could not grow where it is).
        // SAFETY: both blocks are valid for the bytes copied; the old one is
        // freed by whoever owns it.
        unsafe {
            let p = self.alloc(new_layout);
            if !p.is_null() {
                std::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            p
        }
    }
}

/// Grows the live region `r` at `ptr` to `new_len` bytes, moving its mapping if need be.
///
/// # Safety
/// `r` must be the live region starting at `ptr`.
unsafe fn grow(ptr: *mut u8, r: Region, new_len: usize) -> Option<*mut u8> {
    // SAFETY: the region's fd and mapping are ours; the file grows before the
    // mapping does, so no page lies beyond its end.
    let p = unsafe {
        if libc::ftruncate(r.fd, new_len as libc::off_t) != 0 {
            return None;
        }
        libc::mremap(ptr.cast(), r.len, new_len, libc::MREMAP_MAYMOVE)
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    let mut t = table();
    t.live.remove(&(ptr as usize));
    t.live.insert(p as usize, Region { len: new_len, ..r });
    Some(p.cast())
}

/// The region containing `[ptr, ptr + len)`, marked exported: its start, and the region.
fn export_region(ptr: usize, len: usize) -> Option<(usize, Region)> {
    let mut t = table();
    let (&start, r) = t.live.range_mut(..=ptr).next_back()?;
    if ptr + len > start + r.len {
        return None;
    }
    r.exported = true;
    Some((start, *r))
}

/// The peer's region mapped here containing `[ptr, ptr + len)`: its map's start, and the region.
fn imported_region(ptr: usize, len: usize) -> Option<(usize, Imported)> {
    let imported = lock_imported();
    let (&start, i) = imported.range(..=ptr).next_back()?;
    (ptr + len <= start + i.len).then_some((start, *i))
}

fn lock_imported() -> std::sync::MutexGuard<'static, BTreeMap<usize, Imported>> {
    IMPORTED.lock().unwrap_or_else(|p| p.into_inner())
}

/// A map of a peer's region; its descriptor, when kept, makes the region
/// exportable from here until the map goes.
struct Mapped {
    map: Mmap,
    file: Option<File>,
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            lock_imported().remove(&(self.map.as_ptr() as usize));
            LIVE.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A memfd of the exporting process, as a peer opens it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionRef {
    /// The exporting process.
    pub pid: u32,
    /// Its descriptor for the memfd.
    pub fd: i32,
    /// The process that created the region (it may have handed it on, or be gone).
    pub owner: u32,
    /// The region's id: with `owner`, the memfd's name, checked on open.
    pub id: u64,
}

/// Where one buffer's bytes are: in a region, or carried inline.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Buf {
    /// `len` bytes at `offset` in region `region` (an index into [`Exported::regions`]).
    Shared {
        /// Index into the export's regions.
        region: u32,
        /// Byte offset in the memfd.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// A small buffer that lies outside shared memory.
    Inline(Vec<u8>),
}

/// One array of an export: its layout, with buffers as [`Buf`]s.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Node {
    data_type: DataType,
    len: usize,
    offset: usize,
    /// The validity bitmap: its buffer, bit offset and length.
    nulls: Option<(Buf, usize, usize)>,
    buffers: Vec<Buf>,
    children: Vec<Node>,
}

/// A chunk described by where its buffers lie, for a peer on the same host to map.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Exported {
    /// Every memfd the buffers lie in.
    pub regions: Vec<RegionRef>,
    /// The bytes of all buffers.
    pub bytes: u64,
    schema: Schema,
    rows: usize,
    columns: Vec<Node>,
}

struct Exporter {
    pid: u32,
    regions: Vec<RegionRef>,
    inline: usize,
    bytes: usize,
}

impl Exporter {
    fn buf(&mut self, b: &Buffer) -> Option<Buf> {
        let ptr = b.as_ptr() as usize;
        self.bytes += b.len();
        let found = export_region(ptr, b.len())
            .map(|(start, r)| (start, r.fd, self.pid, r.id))
            .or_else(|| imported_region(ptr, b.len()).map(|(s, i)| (s, i.fd, i.owner, i.id)));
        if let Some((start, fd, owner, id)) = found {
            let rr = RegionRef {
                pid: self.pid,
                fd,
                owner,
                id,
            };
            let region = match self.regions.iter().position(|x| *x == rr) {
                Some(i) => i,
                None => {
                    self.regions.push(rr);
                    self.regions.len() - 1
                }
            };
            return Some(Buf::Shared {
                region: region as u32,
                offset: (ptr - start) as u64,
                len: b.len() as u64,
            });
        }
        self.inline += b.len();
        (self.inline <= INLINE_MAX).then(|| Buf::Inline(b.as_slice().to_vec()))
    }

    fn node(&mut self, d: &ArrayData) -> Option<Node> {
        let nulls = match d.nulls() {
            Some(n) => Some((self.buf(n.buffer())?, n.offset(), n.len())),
            None => None,
        };
        Some(Node {
            data_type: d.data_type().clone(),
            len: d.len(),
            offset: d.offset(),
            nulls,
            buffers: d
                .buffers()
                .iter()
                .map(|b| self.buf(b))
                .collect::<Option<_>>()?,
            children: d
                .child_data()
                .iter()
                .map(|c| self.node(c))
                .collect::<Option<_>>()?,
        })
    }
}

/// Describes `chunk` by the shared regions its buffers lie in, or `None` when
/// a buffer too large to carry inline lies elsewhere (it must then be copied).
pub fn export(chunk: &Chunk) -> Option<Exported> {
    if !enabled() {
        return None;
    }
    let mut ex = Exporter {
        pid: std::process::id(),
        regions: vec![],
        inline: 0,
        bytes: 0,
    };
    let columns = chunk
        .columns()
        .iter()
        .map(|c| ex.node(&c.to_data()))
        .collect::<Option<Vec<_>>>()?;
    Some(Exported {
        regions: ex.regions,
        bytes: ex.bytes as u64,
        schema: chunk.schema().as_ref().clone(),
        rows: chunk.num_rows(),
        columns,
    })
}

fn bad(what: String) -> Error {
    Error::op("shm", what)
}

/// Opens and maps a peer's memfd read-only, after checking by its name that the
/// descriptor still is the region exported (a closed one's number may be
/// reused). The descriptor is kept while the map lives, within this process's
/// budget, so that the chunk can be handed on without a copy.
fn map_region(r: &RegionRef) -> Result<bytes::Bytes> {
    let path = format!("/proc/{}/fd/{}", r.pid, r.fd);
    let file = File::open(&path).map_err(|e| bad(format!("cannot open {path}: {e}")))?;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|e| bad(format!("cannot name {path}: {e}")))?;
    let want = format!("/memfd:{} (deleted)", region_name(r.owner, r.id).as_str());
    if link.as_os_str() != want.as_str() {
        return Err(bad(format!(
            "{path} is {}, no longer region {}",
            link.display(),
            r.id
        )));
    }
    // SAFETY: the region is never written once exported (its chunk is immutable)
    // and never truncated; it is only read through this map.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| bad(format!("cannot map {path}: {e}")))?;
    let keep = LIVE.fetch_add(1, Ordering::Relaxed) < MAX_LIVE.load(Ordering::Relaxed);
    let file = if keep {
        let imported = Imported {
            len: map.len(),
            fd: file.as_raw_fd(),
            owner: r.owner,
            id: r.id,
        };
        lock_imported().insert(map.as_ptr() as usize, imported);
        Some(file)
    } else {
        LIVE.fetch_sub(1, Ordering::Relaxed);
        None
    };
    Ok(bytes::Bytes::from_owner(Mapped { map, file }))
}

struct Importer {
    maps: Vec<bytes::Bytes>,
}

impl Importer {
    fn buf(&self, b: &Buf) -> Result<Buffer> {
        match b {
            Buf::Inline(v) => Ok(Buffer::from(v.clone())),
            Buf::Shared {
                region,
                offset,
                len,
            } => {
                let map = self
                    .maps
                    .get(*region as usize)
                    .ok_or_else(|| bad(format!("no region {region}")))?;
                let (start, len) = (*offset as usize, *len as usize);
                if start.checked_add(len).is_none_or(|end| end > map.len()) {
                    return Err(bad(format!(
                        "buffer {start}+{len} beyond region of {} bytes",
                        map.len()
                    )));
                }
                Ok(Buffer::from(map.slice(start..start + len)))
            }
        }
    }

    fn node(&self, n: &Node) -> Result<ArrayData> {
        let nulls = match &n.nulls {
            Some((b, offset, len)) => {
                let buf = self.buf(b)?;
                if offset
                    .checked_add(*len)
                    .is_none_or(|end| end > buf.len() * 8)
                {
                    return Err(bad("validity bitmap out of bounds".into()));
                }
                Some(NullBuffer::new(BooleanBuffer::new(buf, *offset, *len)))
            }
            None => None,
        };
        ArrayDataBuilder::new(n.data_type.clone())
            .len(n.len)
            .offset(n.offset)
            .nulls(nulls)
            .buffers(
                n.buffers
                    .iter()
                    .map(|b| self.buf(b))
                    .collect::<Result<_>>()?,
            )
            .child_data(
                n.children
                    .iter()
                    .map(|c| self.node(c))
                    .collect::<Result<_>>()?,
            )
            .build()
            .map_err(|e| bad(format!("invalid array: {e}")))
    }
}

/// Maps the regions of an export and builds its chunk on them: no byte is
/// copied but small inline buffers.
///
/// Whatever a peer describes, a layout arrow cannot build is an error, never a panic.
pub fn import(e: &Exported) -> Result<Chunk> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| import_unchecked(e)))
        .unwrap_or_else(|_| Err(bad("a malformed export".into())))
}

fn import_unchecked(e: &Exported) -> Result<Chunk> {
    let maps = e
        .regions
        .iter()
        .map(map_region)
        .collect::<Result<Vec<_>>>()?;
    let im = Importer { maps };
    let columns: Vec<ArrayRef> = e
        .columns
        .iter()
        .map(|n| im.node(n).map(make_array))
        .collect::<Result<_>>()?;
    // The arrays own their maps: nothing else needs to keep them.
    Ok(RecordBatch::try_new_with_options(
        Arc::new(e.schema.clone()),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(e.rows)),
    )?)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn regions_grow_shrink_and_move_keeping_their_bytes() {
        enable();
        let a = SharedAlloc(std::alloc::System);
        let small = Layout::from_size_align(4096, 64).expect("layout");
        let big = Layout::from_size_align(MIN_BYTES, 64).expect("layout");
        // SAFETY: every pointer is used within its current size and freed once.
        unsafe {
            let p = a.alloc(small);
            std::ptr::write_bytes(p, 7, small.size());
            let p = a.realloc(p, small, MIN_BYTES);
            assert!(region_at(p).is_some(), "grown past the threshold: shared");
            assert_eq!(*p.add(4095), 7);
            std::ptr::write_bytes(p.add(4096), 9, MIN_BYTES - 4096);
            let q = a.realloc(p, big, 3 * MIN_BYTES);
            assert!(region_at(q).is_some());
            assert_eq!((*q, *q.add(MIN_BYTES - 1)), (7, 9));
            let grown = Layout::from_size_align(3 * MIN_BYTES, 64).expect("layout");
            let r = a.realloc(q, grown, 100);
            assert!(
                region_at(r).is_none(),
                "shrunk below: back to the inner allocator"
            );
            assert_eq!(*r.add(99), 7);
            a.dealloc(r, Layout::from_size_align(100, 64).expect("layout"));
            // The freed 3 MiB region (never exported) comes back, zeroed when asked.
            let again = Layout::from_size_align(2 * MIN_BYTES, 64).expect("layout");
            let z = a.alloc_zeroed(again);
            assert_eq!(region_at(z).map(|r| r.len), Some(3 * MIN_BYTES));
            assert!(
                std::slice::from_raw_parts(z, 3 * MIN_BYTES)
                    .iter()
                    .all(|&b| b == 0)
            );
            a.dealloc(z, again);
            let z = a.alloc_zeroed(big);
            assert!(
                std::slice::from_raw_parts(z, big.size())
                    .iter()
                    .all(|&b| b == 0)
            );
            a.dealloc(z, big);
            assert!(region_at(z).is_none());
        }
    }

    #[test]
    fn the_region_freed_last_is_reused_first() {
        enable();
        let a = SharedAlloc(std::alloc::System);
        // A size no other test asks for, nor half of.
        let layout = Layout::from_size_align(7 * MIN_BYTES, 64).expect("layout");
        // SAFETY: each pointer is freed once and not used after.
        unsafe {
            let [x, y, z] = [(); 3].map(|_| a.alloc(layout));
            assert!([x, y, z].iter().all(|&p| region_at(p).is_some()));
            a.dealloc(y, layout);
            a.dealloc(x, layout);
            a.dealloc(z, layout);
            let again = [(); 3].map(|_| a.alloc(layout));
            assert_eq!(again, [z, x, y], "most recently freed first");
            for p in again {
                a.dealloc(p, layout);
            }
        }
    }

    /// Whether a large allocation on this thread lands in a region.
    pub(crate) fn shared_here() -> bool {
        let a = SharedAlloc(std::alloc::System);
        let big = Layout::from_size_align(2 * MIN_BYTES, 64).expect("layout");
        // SAFETY: the pointer is freed once, with its layout.
        unsafe {
            let p = a.alloc(big);
            let shared = region_at(p).is_some();
            a.dealloc(p, big);
            shared
        }
    }

    #[test]
    fn a_private_thread_allocates_privately_for_good_and_others_do_not() {
        enable();
        let io = std::thread::spawn(|| {
            private_thread();
            // A scope that ends does not undo it.
            private(|| ());
            shared_here()
        });
        assert!(!io.join().expect("thread"), "a private thread's buffer");
        let other = std::thread::spawn(shared_here);
        assert!(other.join().expect("thread"), "another thread's buffer");
    }

    /// An export of `values` carried inline (no region needed).
    fn inline_export(values: &[f64]) -> Exported {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Exported {
            regions: vec![],
            bytes: bytes.len() as u64,
            schema: Schema::new(vec![arrow::datatypes::Field::new(
                "value",
                DataType::Float64,
                true,
            )]),
            rows: values.len(),
            columns: vec![Node {
                data_type: DataType::Float64,
                len: values.len(),
                offset: 0,
                nulls: None,
                buffers: vec![Buf::Inline(bytes)],
                children: vec![],
            }],
        }
    }

    #[test]
    fn an_import_builds_the_described_arrays_and_refuses_a_bad_layout() {
        let chunk = import(&inline_export(&[1.0, 2.5])).expect("import");
        let values = chunk
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::Float64Array>();
        assert_eq!(values.expect("floats").values().as_ref(), [1.0, 2.5]);
        type Tamper = fn(&mut Exported);
        let cases: [(&str, Tamper); 5] = [
            ("longer than its buffer", |e| e.columns[0].len = 3),
            ("offset past the end", |e| e.columns[0].offset = 9),
            ("a missing buffer", |e| e.columns[0].buffers.clear()),
            ("bitmap out of bounds", |e| {
                e.columns[0].nulls = Some((Buf::Inline(vec![0xff]), 4, 8))
            }),
            ("an unknown region", |e| {
                e.columns[0].buffers[0] = Buf::Shared {
                    region: 0,
                    offset: 0,
                    len: 16,
                }
            }),
        ];
        for (what, tamper) in cases {
            let mut e = inline_export(&[1.0, 2.5]);
            tamper(&mut e);
            let err = import(&e).expect_err(what);
            assert!(err.to_string().contains("shm"), "{what}: {err}");
        }
    }

    proptest::proptest! {
        /// Whatever layout a peer claims over whatever bytes, import answers or errs.
        #[test]
        fn an_import_of_any_claimed_layout_never_panics(
            len in 0usize..64,
            offset in 0usize..64,
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
            bits in proptest::option::of((0usize..40, 0usize..40)),
            ty in 0usize..5,
            rows in 0usize..64,
        ) {
            let data_type = [
                DataType::Float64,
                DataType::Int32,
                DataType::Utf8,
                DataType::Boolean,
                DataType::List(Arc::new(arrow::datatypes::Field::new("item", DataType::Int8, true))),
            ][ty].clone();
            let mut e = inline_export(&[]);
            e.rows = rows;
            e.schema = Schema::new(vec![arrow::datatypes::Field::new("value", data_type.clone(), true)]);
            e.columns[0] = Node {
                data_type,
                len,
                offset,
                nulls: bits.map(|(o, l)| (Buf::Inline(bytes.iter().take(4).copied().collect()), o, l)),
                buffers: vec![Buf::Inline(bytes.clone()), Buf::Inline(bytes)],
                children: vec![],
            };
            let _ = import(&e);
        }
    }

    #[test]
    fn an_import_names_a_closed_region_as_gone() {
        let r = RegionRef {
            pid: std::process::id(),
            fd: 0,
            owner: std::process::id(),
            id: u64::MAX,
        };
        let e = map_region(&r).expect_err("stdin is no region");
        assert!(e.to_string().contains("no longer region"), "{e}");
    }
}
