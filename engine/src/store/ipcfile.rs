//! Chunks as Arrow IPC files, written 64-byte aligned and read back by `mmap`
//! with arrays whose buffers point into the mapping (no copy, no decode of values).
//! Spill files and shared-memory hand-overs both use this.

use std::fs::File;
use std::io::BufWriter;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::buffer::Buffer;
use arrow::ipc::convert::try_fb_to_schema;
use arrow::ipc::reader::{FileDecoder, read_footer_length};
use arrow::ipc::writer::{FileWriter, IpcWriteOptions};
use arrow::ipc::{Block, Footer, MetadataVersion, root_as_footer};
use memmap2::Mmap;

use crate::chunk::Chunk;
use crate::error::{Error, Result};

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Spill {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `chunk` as an IPC file whose buffers are 64-byte aligned; returns its size.
///
/// A partly written file is removed before the error is returned.
pub fn write(path: &Path, chunk: &Chunk) -> Result<u64> {
    let result = (|| {
        let file = File::create(path).map_err(io_err(path))?;
        let opts = IpcWriteOptions::try_new(64, false, MetadataVersion::V5)?;
        let mut w =
            FileWriter::try_new_with_options(BufWriter::new(file), chunk.schema_ref(), opts)?;
        w.write(chunk)?;
        w.finish()?;
        let file = w
            .into_inner()?
            .into_inner()
            .map_err(|e| io_err(path)(e.into_error()))?;
        Ok(file.metadata().map_err(io_err(path))?.len())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// A chunk read back from a mapped IPC file, with the address range of the map.
pub struct Mapped {
    /// The chunk; its buffers lie inside `range`.
    pub chunk: Chunk,
    /// The whole file as mapped: sent as it is, without decoding, by the Flight route.
    pub bytes: bytes::Bytes,
    /// Addresses of the mapping, for zero-copy assertions and accounting.
    pub range: Range<usize>,
}

/// Maps the IPC file at `path` and decodes its single batch without copying buffers.
///
/// Alignment is required, so a misaligned file fails loudly instead of being copied.
pub fn map(path: &Path) -> Result<Mapped> {
    let file = File::open(path).map_err(io_err(path))?;
    // SAFETY: the file is private to this process's store or published read-only
    // by a peer that never rewrites it in place; it is only read through the map.
    let mmap = unsafe { Mmap::map(&file) }.map_err(io_err(path))?;
    let start = mmap.as_ptr() as usize;
    let range = start..start + mmap.len();
    let bytes = bytes::Bytes::from_owner(mmap);
    let chunk = decode(Buffer::from(bytes.clone()))
        .map_err(|e| Error::op("ipc", format!("corrupt IPC file {}: {e}", path.display())))?;
    Ok(Mapped {
        chunk,
        bytes,
        range,
    })
}

fn corrupt(what: &str) -> Error {
    Error::op("ipc", what.to_string())
}

/// The footer of the IPC file in `buf`, and where it starts.
fn footer(buf: &[u8]) -> Result<(Footer<'_>, usize)> {
    if buf.len() < 10 {
        return Err(corrupt("file shorter than an IPC footer"));
    }
    let trailer: [u8; 10] = buf[buf.len() - 10..].try_into().expect("10 bytes");
    let footer_len = read_footer_length(trailer)?;
    let footer_start = (buf.len() - 10)
        .checked_sub(footer_len)
        .ok_or_else(|| corrupt("footer length"))?;
    let footer = root_as_footer(&buf[footer_start..buf.len() - 10])
        .map_err(|e| corrupt(&format!("bad footer: {e}")))?;
    Ok((footer, footer_start))
}

/// The file's only record batch block (Quiver writes one batch per file).
fn only_batch<'a>(footer: &Footer<'a>) -> Result<&'a Block> {
    let blocks = footer
        .recordBatches()
        .ok_or_else(|| corrupt("no record batches"))?;
    if blocks.len() != 1 {
        return Err(corrupt(&format!(
            "expected one record batch, found {}",
            blocks.len()
        )));
    }
    Ok(blocks.get(0))
}

/// A block's start, metadata length and body length, checked to lie before
/// the footer (lengths come from the file: negative or overflowing ones are errors).
fn block_extent(b: &Block, footer_start: usize) -> Result<(usize, usize, usize)> {
    let start = usize::try_from(b.offset()).map_err(|_| corrupt("block offset"))?;
    let meta = usize::try_from(b.metaDataLength()).map_err(|_| corrupt("metadata length"))?;
    let body = usize::try_from(b.bodyLength()).map_err(|_| corrupt("body length"))?;
    if meta
        .checked_add(body)
        .and_then(|len| start.checked_add(len))
        .is_none_or(|end| end > footer_start)
    {
        return Err(corrupt("block out of bounds"));
    }
    Ok((start, meta, body))
}

/// Where the one record batch of an IPC file lies: its flatbuffer message and its body.
pub fn batch_location(buf: &[u8]) -> Result<(Range<usize>, Range<usize>)> {
    let (footer, footer_start) = footer(buf)?;
    let (start, meta, body) = block_extent(only_batch(&footer)?, footer_start)?;
    if meta < 8 {
        return Err(corrupt("block out of bounds"));
    }
    // The metadata is prefixed by a continuation marker and its length (8 bytes).
    Ok((start + 8..start + meta, start + meta..start + meta + body))
}

/// Decodes the one batch of an IPC file held in `buf`; buffers are slices of `buf`.
///
/// Arrow's decoder panics on some malformed messages (a buffer offset past the
/// body, found by fuzzing); here they are errors, whatever the file holds.
pub fn decode(buf: Buffer) -> Result<Chunk> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode_unchecked(buf)))
        .unwrap_or_else(|_| Err(Error::op("ipc", "malformed record batch")))
}

fn decode_unchecked(buf: Buffer) -> Result<Chunk> {
    let (footer, footer_start) = footer(&buf)?;
    let schema = try_fb_to_schema(footer.schema().ok_or_else(|| corrupt("no schema"))?)?;
    let mut decoder =
        FileDecoder::new(Arc::new(schema), footer.version()).with_require_alignment(true);
    let block_data = |b: &Block| -> Result<Buffer> {
        let (start, meta, body) = block_extent(b, footer_start)?;
        Ok(buf.slice_with_length(start, meta + body))
    };
    for b in footer.dictionaries().iter().flatten() {
        decoder.read_dictionary(b, &block_data(b)?)?;
    }
    let b = only_batch(&footer)?;
    decoder
        .read_record_batch(b, &block_data(b)?)?
        .ok_or_else(|| corrupt("empty batch block"))
}

/// An IPC file that deletes itself when the last holder drops it.
#[derive(Debug)]
pub struct TempIpcFile {
    path: PathBuf,
    len: u64,
}

impl TempIpcFile {
    /// Writes `chunk` to `path`, owned from now on.
    pub fn create(path: PathBuf, chunk: &Chunk) -> Result<Self> {
        let len = write(&path, chunk)?;
        Ok(TempIpcFile { path, len })
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty (never, for a written chunk).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for TempIpcFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), "could not remove IPC file: {e}");
        }
    }
}
