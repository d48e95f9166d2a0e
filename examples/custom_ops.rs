//! A program with an op of its own that is a whole Quiver cluster: the
//! `quiver` command line ([`quiver::cli::main`]) with `clip` added to the
//! built-in ops. Its `center` accepts graphs that use `clip`, its `worker`s
//! run it, and its `local` starts itself as both.
//!
//! ```sh
//! cargo build --release --example custom_ops
//! target/release/examples/custom_ops local --workers 4
//! ```
//!
//! Then any client, in any language, submits graphs such as
//! `{"op": "clip", "args": [{"key": "x"}, 0.25, 0.75]}`. A `quiver worker`
//! of the stock binary is refused by this center: it lacks `clip`.

use std::process::ExitCode;
use std::sync::Arc;

use arrow::array::{AsArray, Float64Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type};
use quiver::engine::ops::{Kind, Signature, Value};
use quiver::{Chunk, Error, OpRegistry, Result, chunk};
use serde_json::{Map, Value as Json};

#[global_allocator]
static GLOBAL: quiver::cli::Allocator = quiver::cli::ALLOCATOR;

/// `clip(x, lo, hi)`: each value of `x` brought into `[lo, hi]`, as float64.
fn clip(args: &[Value], _kwargs: &Map<String, Json>) -> Result<Chunk> {
    let (lo, hi) = (args[1].f64()?, args[2].f64()?);
    if lo.is_nan() || hi.is_nan() || lo > hi {
        return Err(Error::op(
            "clip",
            format!("needs lo ≤ hi, got {lo} and {hi}"),
        ));
    }
    let x = cast(chunk::column(args[0].chunk()?)?, &DataType::Float64)?;
    let clipped: Float64Array = x.as_primitive::<Float64Type>().unary(|v| v.clamp(lo, hi));
    Ok(chunk::from_array(Arc::new(clipped)))
}

fn main() -> ExitCode {
    let mut ops = OpRegistry::builtin();
    // Checked at submission: one chunk, then two numbers.
    let signature = Signature::new(&[Kind::Chunk, Kind::Number, Kind::Number]);
    ops.register("clip", signature, clip);
    quiver::cli::main(ops)
}
