//! Chunks: one Arrow `RecordBatch`. An array chunk has one column; a scalar is one row.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array};
use arrow::datatypes::{Field, Schema};
use arrow::record_batch::RecordBatch;

use crate::error::{Error, Result};

/// One chunk of data: an Arrow record batch.
pub type Chunk = RecordBatch;

/// The column name given to single-array chunks.
pub const VALUE_COLUMN: &str = "value";

/// Wraps one array as a one-column chunk. No copy.
pub fn from_array(array: ArrayRef) -> Chunk {
    let schema = Schema::new(vec![Field::new(
        VALUE_COLUMN,
        array.data_type().clone(),
        true,
    )]);
    RecordBatch::try_new(Arc::new(schema), vec![array]).expect("one column always matches")
}

/// A one-row float64 chunk holding `v`.
pub fn scalar(v: f64) -> Chunk {
    from_array(Arc::new(Float64Array::from(vec![v])))
}

/// The single column of an array chunk.
pub fn column(chunk: &Chunk) -> Result<&ArrayRef> {
    match chunk.num_columns() {
        1 => Ok(chunk.column(0)),
        n => Err(Error::op(
            "chunk",
            format!("expected a one-column chunk, got {n} columns"),
        )),
    }
}

/// Reads a scalar chunk (one row, one numeric column) as f64.
pub fn to_f64(chunk: &Chunk) -> Result<f64> {
    let col = column(chunk)?;
    if col.len() != 1 {
        return Err(Error::op(
            "chunk",
            format!("expected a scalar (1 row), got {} rows", col.len()),
        ));
    }
    let col = arrow::compute::cast(col, &arrow::datatypes::DataType::Float64)?;
    let col = col
        .as_any()
        .downcast_ref::<Float64Array>()
        .expect("cast to f64");
    if col.is_null(0) {
        return Err(Error::op("chunk", "scalar is null"));
    }
    Ok(col.value(0))
}

/// Bytes of Arrow buffers a chunk holds (what the store accounts and placement weighs).
pub fn nbytes(chunk: &Chunk) -> usize {
    chunk.get_array_memory_size()
}
