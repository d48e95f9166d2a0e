//! Chunks: one Arrow `RecordBatch`. An array chunk has one column; a scalar is one row.

use std::sync::{Arc, LazyLock};

use arrow::array::{Array, ArrayRef, Float64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use crate::error::{Error, Result};

/// One chunk of data: an Arrow record batch.
pub type Chunk = RecordBatch;

/// The column name given to single-array chunks.
pub const VALUE_COLUMN: &str = "value";

/// Wraps one array as a one-column chunk. No copy.
pub fn from_array(array: ArrayRef) -> Chunk {
    RecordBatch::try_new(schema_for(array.data_type()), vec![array])
        .expect("one column always matches")
}

/// The schema of a one-column chunk of `data_type`. Float64 chunks, nearly all
/// of them, share one: a tiny task then allocates no schema, and comparing two
/// chunks' schemas is a pointer comparison.
fn schema_for(data_type: &DataType) -> SchemaRef {
    static FLOAT64: LazyLock<SchemaRef> = LazyLock::new(|| one_column(DataType::Float64));
    match data_type {
        DataType::Float64 => FLOAT64.clone(),
        t => one_column(t.clone()),
    }
}

fn one_column(data_type: DataType) -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(VALUE_COLUMN, data_type, true)]))
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
    let col = arrow::compute::cast(col, &DataType::Float64)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int32Array;

    #[test]
    fn float64_chunks_share_one_schema_and_others_get_their_own() {
        let (a, b) = (scalar(1.0), scalar(2.0));
        assert!(Arc::ptr_eq(&a.schema(), &b.schema()));
        assert_eq!(to_f64(&b).unwrap(), 2.0);
        let i = from_array(Arc::new(Int32Array::from(vec![7])));
        assert_eq!(i.schema().field(0).data_type(), &DataType::Int32);
        assert_eq!(i.schema().field(0).name(), VALUE_COLUMN);
        assert_eq!(to_f64(&i).unwrap(), 7.0);
    }
}
