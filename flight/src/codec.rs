//! Chunks as Flight streams, without per-value encoding.
//!
//! Sending: a chunk in memory becomes IPC messages whose bodies are the
//! chunk's own buffers (with padding between them), uncopied; a spilled
//! chunk's body is a slice of its mapped file, sent as it is. Only a caller
//! that needs one contiguous body ([`Message::into_flight_data`]) copies.
//! Receiving: the arrays point into the received body when it is aligned (a
//! `DoGet` fetch receives each large body into an aligned buffer of its own,
//! `direct::get`); otherwise the body is copied once into an aligned buffer
//! and the copy is counted, never hidden.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use arrow::buffer::Buffer;
use arrow::datatypes::{Schema, SchemaRef};
use arrow::ipc::reader::RecordBatchDecoder;
use arrow::ipc::writer::{IpcWriteOptions, StreamEncoder};
use arrow::ipc::{MessageHeader, root_as_message};
use arrow_flight::{FlightData, SchemaAsIpc};
use bytes::Bytes;

use crate::error::{Error, Result};
use quiver_engine::Chunk;
use quiver_engine::store::ipcfile;

/// One Flight message whose body is kept as the slices it is made of.
#[derive(Debug, Clone, Default)]
pub struct Message {
    /// Every field but the body (`data_body` is empty).
    pub head: FlightData,
    /// The body, in order: the chunk's buffers and the padding between them.
    pub body: Vec<Bytes>,
}

impl Message {
    /// Bytes in the body.
    pub fn body_len(&self) -> usize {
        self.body.iter().map(Bytes::len).sum()
    }

    /// As one `FlightData`: a body of one slice is kept, several are joined (a copy).
    pub fn into_flight_data(self) -> FlightData {
        let mut m = self.head;
        m.data_body = match self.body.len() {
            0 => Bytes::new(),
            1 => self.body.into_iter().next().expect("one slice"),
            _ => self.body.concat().into(),
        };
        m
    }
}

impl From<FlightData> for Message {
    /// Its body as one slice, uncopied.
    fn from(mut m: FlightData) -> Self {
        let body = std::mem::take(&mut m.data_body);
        Message {
            head: m,
            body: if body.is_empty() { vec![] } else { vec![body] },
        }
    }
}

/// The Flight messages of one chunk, bodies uncopied: its schema, any
/// dictionaries, then its batch.
pub fn encode_messages(chunk: &Chunk, spilled: Option<&Bytes>) -> Result<Vec<Message>> {
    Encoder::default().messages(chunk, spilled)
}

/// Encodes chunks one after another as one Flight stream, bodies uncopied: a
/// schema message only when the schema changes (a reader keeps the last one).
#[derive(Default)]
pub struct Encoder {
    schema: Option<SchemaRef>,
    /// Encodes batches of `schema`, once it has been used (its own schema
    /// message, already sent, is dropped).
    stream: Option<StreamEncoder>,
}

impl Encoder {
    /// The messages that carry `chunk` next. A spilled chunk's body is a
    /// slice of its mapped file; a chunk in memory sends its own buffers.
    pub fn messages(&mut self, chunk: &Chunk, spilled: Option<&Bytes>) -> Result<Vec<Message>> {
        let mut out = Vec::new();
        if self.schema.as_ref() != Some(chunk.schema_ref()) {
            let opts = IpcWriteOptions::default();
            out.push(Message {
                head: SchemaAsIpc::new(chunk.schema_ref(), &opts).into(),
                body: vec![],
            });
            self.schema = Some(chunk.schema());
            self.stream = None;
        }
        if let Some(file) = spilled {
            let (meta, body) = ipcfile::batch_location(file)?;
            out.push(Message {
                head: FlightData {
                    data_header: file.slice(meta),
                    ..Default::default()
                },
                body: vec![file.slice(body)],
            });
            return Ok(out);
        }
        let (stream, fresh) = match self.stream.take() {
            Some(s) => (s, false),
            None => (StreamEncoder::try_new(chunk.schema_ref())?, true),
        };
        let stream = self.stream.insert(stream);
        let mut messages = split_stream(stream.encode(chunk)?)?;
        if fresh {
            // The stream's own schema message: the one above is already out.
            messages.remove(0);
        }
        out.extend(messages);
        Ok(out)
    }
}

/// The Flight messages of one chunk, each body contiguous (joined if need be).
pub fn encode(chunk: &Chunk, spilled: Option<&Bytes>) -> Result<Vec<FlightData>> {
    Ok(encode_messages(chunk, spilled)?
        .into_iter()
        .map(Message::into_flight_data)
        .collect())
}

/// Cuts an IPC stream, given as the buffers it was written in, into
/// messages: each a continuation marker and length, the flatbuffer header
/// (padded), then `bodyLength` bytes of body taken as slices of the buffers.
fn split_stream(parts: Vec<Buffer>) -> Result<Vec<Message>> {
    let mut rope = Rope(parts.into());
    let mut out = Vec::new();
    while !rope.is_empty() {
        let prefix = rope.take_joined(8)?;
        let len = i32::from_le_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]);
        if prefix[..4] != [0xff; 4] || len <= 0 {
            return Err(Error::Protocol(format!(
                "the IPC writer framed a message oddly (prefix {prefix:?})"
            )));
        }
        let header = rope.take_joined(len as usize)?;
        let body_len = root_as_message(&header)
            .map_err(|e| Error::Protocol(format!("the IPC writer's header: {e}")))?
            .bodyLength();
        let body = rope.take(usize::try_from(body_len).unwrap_or(usize::MAX))?;
        out.push(Message {
            head: FlightData {
                data_header: header,
                ..Default::default()
            },
            body,
        });
    }
    Ok(out)
}

/// Buffers read front to back, cut into ranges without copying where a
/// range lies in one buffer.
struct Rope(VecDeque<Buffer>);

impl Rope {
    fn is_empty(&self) -> bool {
        self.0.iter().all(|b| b.is_empty())
    }

    /// The next `n` bytes as slices of the buffers they lie in.
    fn take(&mut self, mut n: usize) -> Result<Vec<Bytes>> {
        let mut out = Vec::new();
        while n > 0 {
            let front = self
                .0
                .pop_front()
                .ok_or_else(|| Error::Protocol("the IPC writer's stream ended early".into()))?;
            if front.len() > n {
                self.0.push_front(front.slice(n));
                out.push(Bytes::from_owner(front.slice_with_length(0, n)));
                n = 0;
            } else if !front.is_empty() {
                n -= front.len();
                out.push(Bytes::from_owner(front));
            }
        }
        Ok(out)
    }

    /// The next `n` bytes in one piece (for small framing and headers).
    fn take_joined(&mut self, n: usize) -> Result<Bytes> {
        let mut parts = self.take(n)?;
        if parts.len() == 1 {
            return Ok(parts.pop().expect("one part"));
        }
        Ok(parts.concat().into())
    }
}

/// Bodies below this size are copied to be aligned without trying them in place first.
const SMALL_BODY: usize = 64 << 10;

/// Decodes Flight messages into chunks.
#[derive(Default, Debug)]
pub struct Decoder {
    schema: Option<SchemaRef>,
    dictionaries: HashMap<i64, arrow::array::ArrayRef>,
    /// Body bytes received.
    pub received: u64,
    /// Body bytes that had to be copied to be aligned.
    pub realigned: u64,
}

impl Decoder {
    /// Feeds one message; returns a chunk when it completes one.
    pub fn push(&mut self, data: FlightData) -> Result<Option<Chunk>> {
        // A message of a descriptor or app_metadata alone carries no IPC
        // message: Flight lets a client send its descriptor that way.
        if data.data_header.is_empty() && data.data_body.is_empty() {
            return Ok(None);
        }
        let message = root_as_message(&data.data_header[..])
            .map_err(|e| Error::Protocol(format!("not an IPC message header: {e}")))?;
        match message.header_type() {
            MessageHeader::Schema => {
                let schema = Schema::try_from(&data)
                    .map_err(|e| Error::Protocol(format!("bad schema message: {e}")))?;
                self.schema = Some(Arc::new(schema));
                Ok(None)
            }
            MessageHeader::DictionaryBatch => {
                let schema = self
                    .schema
                    .clone()
                    .ok_or_else(|| Error::Protocol("dictionary before schema".into()))?;
                let batch = message.header_as_dictionary_batch().expect("checked type");
                let buffers = batch.data().and_then(|d| d.buffers()).into_iter().flatten();
                check_bounds(
                    buffers.map(|b| (b.offset(), b.length())),
                    data.data_body.len(),
                )?;
                arrow::ipc::reader::read_dictionary(
                    &Buffer::from(data.data_body.as_ref()),
                    batch,
                    &schema,
                    &mut self.dictionaries,
                    &message.version(),
                )?;
                Ok(None)
            }
            MessageHeader::RecordBatch => {
                let schema = self
                    .schema
                    .clone()
                    .ok_or_else(|| Error::Protocol("record batch before schema".into()))?;
                let batch = message.header_as_record_batch().expect("checked type");
                check_bounds(
                    batch
                        .buffers()
                        .iter()
                        .flatten()
                        .map(|b| (b.offset(), b.length())),
                    data.data_body.len(),
                )?;
                self.received += data.data_body.len() as u64;
                let decode = |buf: &Buffer| {
                    // The reader panics on some malformed headers; they are errors here.
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        RecordBatchDecoder::try_new(
                            buf,
                            batch,
                            schema.clone(),
                            &self.dictionaries,
                            &message.version(),
                        )?
                        .with_require_alignment(true)
                        .read_record_batch()
                    }))
                    .unwrap_or_else(|_| {
                        Err(arrow::error::ArrowError::IpcError(
                            "malformed record batch".into(),
                        ))
                    })
                };
                // A small body off a 64-byte boundary is copied at once: that is
                // cheaper than a decode that fails on its alignment first.
                let small = data.data_body.len() < SMALL_BODY;
                let aligned = (data.data_body.as_ptr() as usize).is_multiple_of(64);
                if (!small || aligned)
                    && let Ok(chunk) = decode(&Buffer::from(data.data_body.clone()))
                {
                    return Ok(Some(chunk));
                }
                // Misaligned in the receive buffer: one copy into an aligned
                // allocation, counted. Any other fault fails again and is reported.
                self.realigned += data.data_body.len() as u64;
                Ok(Some(decode(&Buffer::from(data.data_body.as_ref()))?))
            }
            other => Err(Error::Protocol(format!("unexpected IPC message {other:?}"))),
        }
    }
}

/// Refuses a message whose buffers reach past its body (the IPC reader would panic).
fn check_bounds(buffers: impl Iterator<Item = (i64, i64)>, body: usize) -> Result<()> {
    for (offset, length) in buffers {
        let end = u64::try_from(offset)
            .ok()
            .zip(u64::try_from(length).ok())
            .and_then(|(o, l)| o.checked_add(l));
        if end.is_none_or(|e| e > body as u64) {
            return Err(Error::Protocol(format!(
                "corrupt IPC: a buffer at {offset}+{length} lies outside the {body}-byte body"
            )));
        }
    }
    Ok(())
}

/// Small chunks sent together as one batch, up to this many bytes in all:
/// a slice keeps its whole batch alive, so a batch stays small.
const COMBINE_MAX: usize = 256 << 10;

/// Encodes `chunks` one after another with one [`Encoder`]. With `combine`,
/// each run of chunks in memory sharing a schema goes as one batch, their
/// rows concatenated, whose `app_metadata` lists each chunk's rows ([`split`]
/// cuts it again): many small chunks then cost one IPC message, not one each.
pub fn encode_chunks(chunks: &[(Chunk, Option<Bytes>)], combine: bool) -> Result<Vec<Message>> {
    let mut encoder = Encoder::default();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chunks.len() {
        let (first, file) = &chunks[i];
        let mut end = i + 1;
        if combine && file.is_none() {
            let mut bytes = first.get_array_memory_size();
            while let Some((c, None)) = chunks.get(end) {
                bytes += c.get_array_memory_size();
                if c.schema_ref() != first.schema_ref() || bytes > COMBINE_MAX {
                    break;
                }
                end += 1;
            }
        }
        if end == i + 1 {
            out.extend(encoder.messages(first, file.as_ref())?);
        } else {
            let run = &chunks[i..end];
            let rows: Vec<usize> = run.iter().map(|(c, _)| c.num_rows()).collect();
            let all =
                arrow::compute::concat_batches(first.schema_ref(), run.iter().map(|(c, _)| c))?;
            let mut messages = encoder.messages(&all, None)?;
            let batch = messages.last_mut().expect("a batch message");
            batch.head.app_metadata = serde_json::to_vec(&rows).expect("numbers").into();
            out.extend(messages);
        }
        i = end;
    }
    Ok(out)
}

/// The chunks a received batch stands for: itself, or, when its
/// `app_metadata` lists rows ([`encode_chunks`]), its slices of those rows.
pub fn split(batch: Chunk, app_metadata: &[u8]) -> Result<Vec<Chunk>> {
    if app_metadata.is_empty() {
        return Ok(vec![batch]);
    }
    let rows: Vec<usize> = serde_json::from_slice(app_metadata)
        .map_err(|e| Error::Protocol(format!("bad row counts of a combined batch: {e}")))?;
    let total = rows.iter().try_fold(0usize, |a, &n| a.checked_add(n));
    if total != Some(batch.num_rows()) {
        return Err(Error::Protocol(format!(
            "a combined batch of {} rows claims {} chunks of {} rows in all",
            batch.num_rows(),
            rows.len(),
            total.map_or_else(|| "too many".into(), |t| t.to_string())
        )));
    }
    let mut offset = 0;
    Ok(rows
        .into_iter()
        .map(|n| {
            offset += n;
            batch.slice(offset - n, n)
        })
        .collect())
}

/// Decodes a whole stream that must hold exactly one chunk.
pub fn decode_one(
    messages: impl IntoIterator<Item = FlightData>,
    what: &str,
) -> Result<(Chunk, Decoder)> {
    let mut d = Decoder::default();
    let mut chunks = Vec::new();
    for m in messages {
        chunks.extend(d.push(m)?);
    }
    match chunks.len() {
        1 => Ok((chunks.pop().expect("one"), d)),
        // pyarrow writes an empty table as its schema alone: that is a chunk of no rows.
        0 => match &d.schema {
            Some(schema) => Ok((Chunk::new_empty(schema.clone()), d)),
            None => Err(Error::Protocol(format!(
                "{what}: the stream held no schema and no record batch"
            ))),
        },
        _ => {
            let schema = chunks[0].schema();
            let one = arrow::compute::concat_batches(&schema, &chunks)
                .map_err(|e| Error::Protocol(format!("{what}: batches do not concatenate: {e}")))?;
            Ok((one, d))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, Float64Array};
    use arrow::datatypes::Float64Type;
    use quiver_engine::chunk;

    fn floats(n: usize) -> Chunk {
        chunk::from_array(Arc::new(Float64Array::from(
            (0..n).map(|i| i as f64).collect::<Vec<_>>(),
        )))
    }

    #[test]
    fn a_chunk_round_trips_and_aligned_bodies_are_not_copied() {
        let c = floats(10_000);
        let msgs = encode(&c, None).unwrap();
        let body = msgs[1].data_body.as_ptr() as usize;
        let (back, d) = decode_one(msgs, "test").unwrap();
        assert_eq!(back, c);
        let ptr = back
            .column(0)
            .as_primitive::<Float64Type>()
            .values()
            .as_ptr() as usize;
        if body.is_multiple_of(64) {
            assert_eq!(ptr, body, "aligned body must be used in place");
            assert_eq!(d.realigned, 0);
        }
        assert_eq!(d.received, 80_000);
    }

    #[test]
    fn a_chunk_in_memory_is_sent_as_its_own_buffers() {
        let c = floats(10_000);
        let values = c.column(0).as_primitive::<Float64Type>().values().as_ptr();
        let msgs = encode_messages(&c, None).unwrap();
        let batch = msgs.last().unwrap();
        assert!(
            batch.body.iter().any(|b| b.as_ptr() == values.cast()),
            "the values buffer must be sent in place"
        );
        assert!(batch.body_len().is_multiple_of(64) && batch.body_len() >= 80_000);
        let (back, _) = decode_one(msgs.into_iter().map(Message::into_flight_data), "t").unwrap();
        assert_eq!(back, c);
        let strings: Chunk = chunk::from_array(Arc::new(arrow::array::StringArray::from(vec![
            Some("a"),
            None,
            Some("ccc"),
        ])));
        let (back, _) = decode_one(encode(&strings, None).unwrap(), "t").unwrap();
        assert_eq!(back, strings);
    }

    #[test]
    fn a_schema_alone_is_a_chunk_of_no_rows_and_nothing_at_all_is_an_error() {
        let c = floats(3);
        let schema_only = encode(&c, None).unwrap().into_iter().take(1);
        let (back, _) = decode_one(schema_only, "t").unwrap();
        assert_eq!(back.num_rows(), 0);
        assert_eq!(back.schema(), c.schema());
        let e = decode_one(Vec::new(), "k").unwrap_err().to_string();
        assert!(e.contains("k: the stream held no schema"), "{e}");
        // A descriptor sent in a message of its own is passed over.
        let mut msgs = vec![FlightData::default()];
        msgs.extend(encode(&c, None).unwrap());
        assert_eq!(decode_one(msgs, "t").unwrap().0, c);
    }

    #[test]
    fn a_stream_of_chunks_sends_a_schema_only_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.arrow");
        ipcfile::write(&path, &floats(30)).unwrap();
        let mapped = ipcfile::map(&path).unwrap();
        let strings: Chunk =
            chunk::from_array(Arc::new(arrow::array::StringArray::from(vec!["a", "bb"])));
        let chunks = [
            (floats(10), None),
            (floats(20), None),
            (mapped.chunk.clone(), Some(&mapped.bytes)),
            (strings.clone(), None),
            (floats(40), None),
        ];
        let mut e = Encoder::default();
        let mut d = Decoder::default();
        let mut schemas = 0;
        for (c, file) in &chunks {
            let mut got = None;
            for m in e.messages(c, *file).unwrap() {
                let head = root_as_message(&m.head.data_header[..]).unwrap();
                schemas += usize::from(head.header_type() == MessageHeader::Schema);
                got = got.or(d.push(m.into_flight_data()).unwrap());
            }
            assert_eq!(got.as_ref(), Some(c));
        }
        assert_eq!(schemas, 3, "floats, strings, floats again");
    }

    #[test]
    fn combined_runs_of_small_chunks_split_back_into_the_same_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.arrow");
        ipcfile::write(&path, &floats(30)).unwrap();
        let mapped = ipcfile::map(&path).unwrap();
        let strings: Chunk =
            chunk::from_array(Arc::new(arrow::array::StringArray::from(vec!["a", "bb"])));
        let big = floats(COMBINE_MAX / 8 + 1);
        let chunks = vec![
            (floats(1), None),
            (floats(0), None),
            (floats(3), None),
            (mapped.chunk.clone(), Some(mapped.bytes.clone())),
            (strings.clone(), None),
            (strings.clone(), None),
            (floats(2), None),
            (big.clone(), None),
            (floats(1), None),
        ];
        let msgs = encode_chunks(&chunks, true).unwrap();
        let batches = msgs
            .iter()
            .filter(|m| {
                root_as_message(&m.head.data_header[..])
                    .unwrap()
                    .header_type()
                    == MessageHeader::RecordBatch
            })
            .count();
        // [1, 0, 3], the spilled one, [strings × 2], [2], big alone, [1].
        assert_eq!(batches, 6);
        let mut d = Decoder::default();
        let mut back = Vec::new();
        for m in msgs {
            let m = m.into_flight_data();
            let rows = m.app_metadata.clone();
            if let Some(batch) = d.push(m).unwrap() {
                back.extend(split(batch, &rows).unwrap());
            }
        }
        let want: Vec<Chunk> = chunks.into_iter().map(|(c, _)| c).collect();
        assert_eq!(back, want);
    }

    #[test]
    fn a_combined_batch_with_wrong_row_counts_is_refused() {
        for (meta, what) in [
            (&b"[1,2]"[..], "claims 2 chunks"),
            (b"[1,18446744073709551615]", "claims 2 chunks"),
            (b"not json", "bad row counts"),
        ] {
            let e = split(floats(4), meta).unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        }
        assert_eq!(split(floats(4), b"[4]").unwrap(), [floats(4)]);
    }

    #[test]
    fn a_spilled_chunk_is_sent_from_its_map_without_a_copy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.arrow");
        let c = floats(1000);
        ipcfile::write(&path, &c).unwrap();
        let mapped = ipcfile::map(&path).unwrap();
        let msgs = encode(&mapped.chunk, Some(&mapped.bytes)).unwrap();
        let body = msgs[1].data_body.as_ptr() as usize;
        assert!(
            mapped.range.contains(&body),
            "the body is a slice of the map"
        );
        let (back, d) = decode_one(msgs, "test").unwrap();
        assert_eq!(back, c);
        assert_eq!(d.realigned, 0, "a mapped body is 64-byte aligned");
    }

    #[test]
    fn garbage_is_an_error() {
        let junk = FlightData {
            data_header: Bytes::from_static(b"nonsense"),
            ..Default::default()
        };
        assert!(decode_one(vec![junk], "test").is_err());
        let mut msgs = encode(&floats(10), None).unwrap();
        msgs[1].data_body = msgs[1].data_body.slice(0..7);
        assert!(decode_one(msgs.clone(), "test").is_err());
        assert!(decode_one(vec![msgs[1].clone()], "test").is_err());
    }
}
