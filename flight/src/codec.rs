//! Chunks as Flight streams, without per-value encoding.
//!
//! Sending: a chunk in memory is laid out once as an IPC message (its buffers
//! copied into one body, the only copy); a spilled chunk's body is a slice of
//! its mapped file, sent as it is. Receiving: the arrays point into the
//! received body when it is aligned; otherwise the body is copied once into an
//! aligned buffer and the copy is counted, never hidden.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::buffer::Buffer;
use arrow::datatypes::{Schema, SchemaRef};
use arrow::ipc::reader::RecordBatchDecoder;
use arrow::ipc::writer::{DictionaryTracker, IpcDataGenerator, IpcWriteContext, IpcWriteOptions};
use arrow::ipc::{MessageHeader, root_as_message};
use arrow_flight::{FlightData, SchemaAsIpc};
use bytes::Bytes;

use crate::error::{Error, Result};
use quiver_engine::Chunk;
use quiver_engine::store::ipcfile;

/// The Flight messages of one chunk: its schema, then its batch.
pub fn encode(chunk: &Chunk, spilled: Option<&Bytes>) -> Result<Vec<FlightData>> {
    let opts = IpcWriteOptions::default();
    let schema: FlightData = SchemaAsIpc::new(chunk.schema_ref(), &opts).into();
    if let Some(file) = spilled {
        let (meta, body) = ipcfile::batch_location(file)?;
        let batch = FlightData {
            data_header: file.slice(meta),
            data_body: file.slice(body),
            ..Default::default()
        };
        return Ok(vec![schema, batch]);
    }
    let generator = IpcDataGenerator::default();
    let mut tracker = DictionaryTracker::new(false);
    let mut ctx = IpcWriteContext::default();
    let (dicts, batch) = generator.encode(chunk, &mut tracker, &opts, &mut ctx)?;
    let mut out = vec![schema];
    out.extend(dicts.into_iter().map(FlightData::from));
    out.push(batch.into());
    Ok(out)
}

/// Bytes of the bodies of `messages` (what a transfer moves).
pub fn body_bytes(messages: &[FlightData]) -> u64 {
    messages.iter().map(|m| m.data_body.len() as u64).sum()
}

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
                match decode(&Buffer::from(data.data_body.clone())) {
                    Ok(chunk) => Ok(Some(chunk)),
                    Err(_) => {
                        // Misaligned in the receive buffer: one copy into an aligned
                        // allocation, counted. Any other fault fails again and is reported.
                        self.realigned += data.data_body.len() as u64;
                        Ok(Some(decode(&Buffer::from(data.data_body.as_ref()))?))
                    }
                }
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
        0 => Err(Error::Protocol(format!(
            "{what}: the stream held no record batch"
        ))),
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
        assert!(
            decode_one(vec![msgs[0].clone()], "test")
                .unwrap_err()
                .to_string()
                .contains("no record batch")
        );
    }
}
