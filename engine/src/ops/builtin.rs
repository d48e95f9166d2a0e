//! The built-in ops, each a thin wrapper over an Arrow compute kernel.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Datum, Float64Array, Int64Array};
use arrow::compute::kernels::{arity, cmp, numeric};
use arrow::compute::{self, SortOptions};
use arrow::datatypes::{DataType, Field, Float64Type, Schema};
use arrow::record_batch::RecordBatch;
use serde_json::{Map, Value as Json};

use super::{Kind, OpRegistry, Signature, Value, normal_vec, uniform_vec};
use crate::chunk::{self, Chunk};
use crate::error::{Error, Result};

type Kw = Map<String, Json>;

fn kw_f64(kw: &Kw, name: &str, default: f64) -> f64 {
    kw.get(name).and_then(Json::as_f64).unwrap_or(default)
}

fn kw_u64(kw: &Kw, name: &str, default: u64) -> u64 {
    kw.get(name)
        .and_then(|v| v.as_u64().or_else(|| v.as_i64().map(|i| i as u64)))
        .unwrap_or(default)
}

fn f64_chunk(values: Vec<f64>) -> Chunk {
    chunk::from_array(Arc::new(Float64Array::from(values)))
}

/// The column of a chunk as float64 (a cast only when it is another numeric
/// type: a cast of strings would silently turn them into nulls).
fn floats(c: &Chunk) -> Result<Float64Array> {
    let col = chunk::column(c)?;
    let col = match col.data_type() {
        DataType::Float64 => col.clone(),
        t if t.is_numeric() || t == &DataType::Boolean => compute::cast(col, &DataType::Float64)?,
        t => {
            return Err(Error::op(
                "chunk",
                format!("needs a numeric column, got a column of {t}"),
            ));
        }
    };
    Ok(col.as_primitive::<Float64Type>().clone())
}

/// An operand of an elementwise op: an array or a broadcast float.
fn operand(v: &Value) -> Result<Box<dyn Datum>> {
    Ok(match v {
        Value::Chunk(c) => Box::new(floats(c)?),
        other => Box::new(Float64Array::new_scalar(other.f64()?)),
    })
}

fn binary(
    f: fn(&dyn Datum, &dyn Datum) -> std::result::Result<ArrayRef, arrow::error::ArrowError>,
) -> impl Fn(&[Value], &Kw) -> Result<Chunk> {
    move |a, _| {
        let (l, r) = (operand(&a[0])?, operand(&a[1])?);
        if l.get().1 && r.get().1 {
            return Err(Error::op("args", "at least one operand must be a chunk"));
        }
        Ok(chunk::from_array(f(l.as_ref(), r.as_ref())?))
    }
}

fn compare(
    f: fn(&dyn Datum, &dyn Datum) -> std::result::Result<BooleanArray, arrow::error::ArrowError>,
) -> impl Fn(&[Value], &Kw) -> Result<Chunk> {
    move |a, _| {
        let (l, r) = (operand(&a[0])?, operand(&a[1])?);
        Ok(chunk::from_array(Arc::new(f(l.as_ref(), r.as_ref())?)))
    }
}

fn unary(f: fn(f64) -> f64) -> impl Fn(&[Value], &Kw) -> Result<Chunk> {
    move |a, _| {
        let x = floats(a[0].chunk()?)?;
        Ok(chunk::from_array(Arc::new(
            arity::unary::<_, _, Float64Type>(&x, f),
        )))
    }
}

/// Streaming moments (count, mean, M2) merged with Chan et al.'s formula,
/// so variance partials combine exactly in a reduction tree.
#[derive(Clone, Copy, Default)]
struct Moments {
    n: f64,
    mean: f64,
    m2: f64,
}

const MOMENT_COLUMNS: [&str; 3] = ["count", "mean", "m2"];

impl Moments {
    fn of_values(x: &Float64Array) -> Moments {
        let n = (x.len() - x.null_count()) as f64;
        if n == 0.0 {
            return Moments::default();
        }
        let mean = compute::sum(x).unwrap_or(0.0) / n;
        let m2 = x.iter().flatten().map(|v| (v - mean) * (v - mean)).sum();
        Moments { n, mean, m2 }
    }

    /// A chunk's moments: read from a partial, or computed from values.
    fn of_chunk(c: &Chunk) -> Result<Moments> {
        let names: Vec<&str> = c
            .schema_ref()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        if names == MOMENT_COLUMNS && c.num_rows() == 1 {
            let get = |i: usize| c.column(i).as_primitive::<Float64Type>().value(0);
            return Ok(Moments {
                n: get(0),
                mean: get(1),
                m2: get(2),
            });
        }
        Ok(Moments::of_values(&floats(c)?))
    }

    fn merge(self, o: Moments) -> Moments {
        let n = self.n + o.n;
        if n == 0.0 {
            return Moments::default();
        }
        let d = o.mean - self.mean;
        Moments {
            n,
            mean: self.mean + d * o.n / n,
            m2: self.m2 + o.m2 + d * d * self.n * o.n / n,
        }
    }

    fn of_all(args: &[Value]) -> Result<Moments> {
        args[0]
            .chunks()?
            .into_iter()
            .try_fold(Moments::default(), |acc, c| {
                Ok(acc.merge(Moments::of_chunk(c)?))
            })
    }

    fn to_chunk(self) -> Chunk {
        let fields: Vec<Field> = MOMENT_COLUMNS
            .iter()
            .map(|n| Field::new(*n, DataType::Float64, false))
            .collect();
        let cols: Vec<ArrayRef> = [self.n, self.mean, self.m2]
            .into_iter()
            .map(|v| Arc::new(Float64Array::from(vec![v])) as ArrayRef)
            .collect();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).expect("moments schema")
    }

    fn var(self, ddof: f64) -> Result<f64> {
        if self.n - ddof <= 0.0 {
            return Err(Error::op(
                "args",
                format!("variance of {} values with ddof {ddof}", self.n),
            ));
        }
        Ok(self.m2 / (self.n - ddof))
    }
}

/// Folds a reduction over one chunk or a list of them, as if they were
/// concatenated; over no values at all it is `identity`, or an error if the
/// reduction has none.
fn fold(
    name: &'static str,
    args: &[Value],
    f: fn(&Float64Array) -> Option<f64>,
    combine: fn(f64, f64) -> f64,
    identity: Option<f64>,
) -> Result<Chunk> {
    let mut acc: Option<f64> = identity;
    for c in args[0].chunks()? {
        if let Some(v) = f(&floats(c)?) {
            acc = Some(acc.map_or(v, |a| combine(a, v)));
        }
    }
    acc.map(chunk::scalar)
        .ok_or_else(|| Error::op(name, "reduction of no values"))
}

fn size_of_range(start: f64, stop: f64, step: f64) -> Result<usize> {
    if step == 0.0 || !step.is_finite() || !start.is_finite() || !stop.is_finite() {
        return Err(Error::op(
            "args",
            "arange needs finite bounds and a non-zero step",
        ));
    }
    let n = ((stop - start) / step).ceil().max(0.0);
    if n > super::MAX_ELEMENTS as f64 {
        return Err(Error::op(
            "args",
            format!("arange of {n} elements exceeds the limit"),
        ));
    }
    Ok(n as usize)
}

/// Registers every built-in op in `r`.
pub(super) fn register_all(r: &mut OpRegistry) {
    use Kind::*;
    let seeded = |sig: Signature| sig.kwarg("seed", Int);
    r.register("random", seeded(Signature::new(&[Size])), |a, kw| {
        Ok(f64_chunk(uniform_vec(a[0].usize()?, kw_u64(kw, "seed", 0))))
    });
    r.register(
        "normal",
        seeded(Signature::new(&[Size]))
            .kwarg("loc", Number)
            .kwarg("scale", Number),
        |a, kw| {
            let (loc, scale) = (kw_f64(kw, "loc", 0.0), kw_f64(kw, "scale", 1.0));
            // As numpy has it: a negative spread is a mistake, not a mirror image.
            if !(scale >= 0.0 && scale.is_finite() && loc.is_finite()) {
                return Err(Error::op(
                    "normal",
                    format!(
                        "needs a finite loc and a finite scale ≥ 0, got loc {loc}, scale {scale}"
                    ),
                ));
            }
            Ok(f64_chunk(normal_vec(
                a[0].usize()?,
                kw_u64(kw, "seed", 0),
                loc,
                scale,
            )))
        },
    );
    r.register(
        "arange",
        Signature::new(&[Number, Number, Number]).optional_from(1),
        |a, _| {
            let (start, stop, step) = match a {
                [stop] => (0.0, stop.f64()?, 1.0),
                [start, stop] => (start.f64()?, stop.f64()?, 1.0),
                [start, stop, step] => (start.f64()?, stop.f64()?, step.f64()?),
                _ => unreachable!("signature checked"),
            };
            let n = size_of_range(start, stop, step)?;
            Ok(f64_chunk((0..n).map(|i| start + i as f64 * step).collect()))
        },
    );
    r.register("full", Signature::new(&[Size, Number]), |a, _| {
        Ok(f64_chunk(vec![a[1].f64()?; a[0].usize()?]))
    });
    // A list of numbers comes as a list of arguments (`executor::evaluate`).
    r.register("literal", Signature::new(&[Any]), |a, _| match &a[0] {
        Value::List(items) => Ok(f64_chunk(
            items.iter().map(Value::f64).collect::<Result<_>>()?,
        )),
        v => Ok(chunk::scalar(v.f64()?)),
    });
    r.register("noop", Signature::any(), |_, _| Ok(chunk::scalar(0.0)));

    let reduce = || Signature::new(&[Chunks]);
    r.register("sum", reduce(), |a, _| {
        fold(
            "sum",
            a,
            |x| Some(compute::sum(x).unwrap_or(0.0)),
            |p, q| p + q,
            Some(0.0),
        )
    });
    r.register("min", reduce(), |a, _| {
        fold("min", a, compute::min, f64::min, None)
    });
    r.register("max", reduce(), |a, _| {
        fold("max", a, compute::max, f64::max, None)
    });
    r.register("count", reduce(), |a, _| {
        let mut n = 0;
        for c in a[0].chunks()? {
            n += c.num_rows() - chunk::column(c)?.null_count();
        }
        Ok(chunk::from_array(Arc::new(Int64Array::from(vec![
            n as i64,
        ]))))
    });
    r.register("mean", reduce(), |a, _| {
        let m = Moments::of_all(a)?;
        if m.n == 0.0 {
            return Err(Error::op("mean", "mean of no values"));
        }
        Ok(chunk::scalar(m.mean))
    });
    r.register("moments", reduce(), |a, _| {
        Ok(Moments::of_all(a)?.to_chunk())
    });
    r.register("var", reduce().kwarg("ddof", Number), |a, kw| {
        Ok(chunk::scalar(
            Moments::of_all(a)?.var(kw_f64(kw, "ddof", 0.0))?,
        ))
    });
    r.register("std", reduce().kwarg("ddof", Number), |a, kw| {
        Ok(chunk::scalar(
            Moments::of_all(a)?.var(kw_f64(kw, "ddof", 0.0))?.sqrt(),
        ))
    });

    let elementwise = || Signature::new(&[ChunkOrNumber, ChunkOrNumber]);
    r.register("add", elementwise(), binary(numeric::add));
    r.register("sub", elementwise(), binary(numeric::sub));
    r.register("mul", elementwise(), binary(numeric::mul));
    r.register("div", elementwise(), binary(numeric::div));
    r.register("gt", elementwise(), compare(cmp::gt));
    r.register("ge", elementwise(), compare(cmp::gt_eq));
    r.register("lt", elementwise(), compare(cmp::lt));
    r.register("le", elementwise(), compare(cmp::lt_eq));
    r.register("eq", elementwise(), compare(cmp::eq));
    r.register("neg", Signature::new(&[Chunk]), |a, _| {
        Ok(chunk::from_array(numeric::neg(chunk::column(
            a[0].chunk()?,
        )?)?))
    });
    r.register("abs", Signature::new(&[Chunk]), unary(f64::abs));
    r.register("sqrt", Signature::new(&[Chunk]), unary(f64::sqrt));
    r.register("exp", Signature::new(&[Chunk]), unary(f64::exp));
    r.register("log", Signature::new(&[Chunk]), unary(f64::ln));

    r.register("concat", Signature::new(&[Chunks]), |a, _| {
        let chunks = a[0].chunks()?;
        let first = chunks
            .first()
            .ok_or_else(|| Error::op("concat", "nothing to concatenate"))?;
        Ok(compute::concat_batches(
            first.schema_ref(),
            chunks.iter().copied(),
        )?)
    });
    r.register("slice", Signature::new(&[Chunk, Size, Size]), |a, _| {
        let c = a[0].chunk()?;
        let (offset, len) = (a[1].usize()?, a[2].usize()?);
        if offset.saturating_add(len) > c.num_rows() {
            return Err(Error::op(
                "slice",
                format!(
                    "rows {offset}..{} out of a chunk of {}",
                    offset + len,
                    c.num_rows()
                ),
            ));
        }
        Ok(c.slice(offset, len))
    });
    r.register("filter", Signature::new(&[Chunk, Chunk]), |a, _| {
        let mask = chunk::column(a[1].chunk()?)?;
        let mask = mask.as_boolean_opt().ok_or_else(|| {
            Error::op(
                "filter",
                format!("mask must be boolean, got {}", mask.data_type()),
            )
        })?;
        Ok(compute::filter_record_batch(a[0].chunk()?, mask)?)
    });
    r.register(
        "sort",
        Signature::new(&[Chunk]).kwarg("descending", Bool),
        |a, kw| {
            let descending = kw
                .get("descending")
                .and_then(Json::as_bool)
                .unwrap_or(false);
            let opts = SortOptions {
                descending,
                nulls_first: false,
            };
            Ok(chunk::from_array(compute::sort(
                chunk::column(a[0].chunk()?)?,
                Some(opts),
            )?))
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::to_f64;

    fn call(op: &str, args: Vec<Value>) -> Result<Chunk> {
        OpRegistry::builtin().call(op, &args, &Map::new())
    }

    fn lit(v: impl Into<Json>) -> Value {
        Value::Literal(v.into())
    }

    fn arr(v: &[f64]) -> Value {
        Value::Chunk(f64_chunk(v.to_vec()))
    }

    fn values(c: &Chunk) -> Vec<f64> {
        floats(c).unwrap().values().to_vec()
    }

    #[test]
    fn strings_are_refused_not_read_as_nulls() {
        let names = chunk::from_array(Arc::new(arrow::array::StringArray::from(vec!["a", "b"])));
        let err = call("sum", vec![Value::Chunk(names)])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "op 'sum' failed: needs a numeric column, got a column of Utf8"
        );
        let ints = chunk::from_array(Arc::new(arrow::array::Int32Array::from(vec![1, 2])));
        assert_eq!(
            to_f64(&call("sum", vec![Value::Chunk(ints)]).unwrap()).unwrap(),
            3.0
        );
    }

    #[test]
    fn reductions_over_chunks_and_partials_agree() {
        let a = arr(&[1.0, 2.0, 3.0]);
        let b = arr(&[4.0, 5.0]);
        let both = Value::List(vec![a.clone(), b.clone()]);
        assert_eq!(
            to_f64(&call("sum", vec![both.clone()]).unwrap()).unwrap(),
            15.0
        );
        assert_eq!(
            to_f64(&call("min", vec![both.clone()]).unwrap()).unwrap(),
            1.0
        );
        assert_eq!(
            to_f64(&call("max", vec![both.clone()]).unwrap()).unwrap(),
            5.0
        );
        assert_eq!(
            to_f64(&call("count", vec![both.clone()]).unwrap()).unwrap(),
            5.0
        );
        assert_eq!(
            to_f64(&call("mean", vec![both.clone()]).unwrap()).unwrap(),
            3.0
        );
        let var = to_f64(&call("var", vec![both.clone()]).unwrap()).unwrap();
        assert!((var - 2.0).abs() < 1e-12);
        // Partials of a tree give the same variance as the flat list.
        let pa = Value::Chunk(call("moments", vec![a]).unwrap());
        let pb = Value::Chunk(call("moments", vec![b]).unwrap());
        let std = to_f64(&call("std", vec![Value::List(vec![pa, pb])]).unwrap()).unwrap();
        assert!((std - 2f64.sqrt()).abs() < 1e-12);
        assert!(call("min", vec![Value::List(vec![])]).is_err());
    }

    #[test]
    fn elementwise_with_chunks_and_scalars() {
        let a = arr(&[1.0, 4.0]);
        assert_eq!(
            values(&call("add", vec![a.clone(), lit(1)]).unwrap()),
            [2.0, 5.0]
        );
        assert_eq!(
            values(&call("sub", vec![lit(1), a.clone()]).unwrap()),
            [0.0, -3.0]
        );
        assert_eq!(
            values(&call("mul", vec![a.clone(), a.clone()]).unwrap()),
            [1.0, 16.0]
        );
        assert_eq!(
            values(&call("div", vec![a.clone(), lit(2.0)]).unwrap()),
            [0.5, 2.0]
        );
        assert_eq!(values(&call("sqrt", vec![a.clone()]).unwrap()), [1.0, 2.0]);
        assert_eq!(values(&call("neg", vec![a.clone()]).unwrap()), [-1.0, -4.0]);
        assert_eq!(values(&call("abs", vec![arr(&[-2.0])]).unwrap()), [2.0]);
        let e = call("add", vec![a.clone(), arr(&[1.0])])
            .unwrap_err()
            .to_string();
        assert!(e.contains("add"), "{e}");
        let e = call("add", vec![lit("x"), a]).unwrap_err().to_string();
        assert!(
            e.contains("op 'add'") && e.contains("expected a number"),
            "{e}"
        );
    }

    #[test]
    fn constructors_and_reshaping() {
        assert_eq!(
            values(&call("arange", vec![lit(3)]).unwrap()),
            [0.0, 1.0, 2.0]
        );
        assert_eq!(
            values(&call("arange", vec![lit(1), lit(2), lit(0.5)]).unwrap()),
            [1.0, 1.5]
        );
        assert_eq!(
            values(&call("full", vec![lit(2), lit(7)]).unwrap()),
            [7.0, 7.0]
        );
        let x = arr(&[3.0, 1.0, 2.0]);
        assert_eq!(
            values(&call("sort", vec![x.clone()]).unwrap()),
            [1.0, 2.0, 3.0]
        );
        assert_eq!(
            values(&call("slice", vec![x.clone(), lit(1), lit(2)]).unwrap()),
            [1.0, 2.0]
        );
        assert!(call("slice", vec![x.clone(), lit(2), lit(2)]).is_err());
        let mask = Value::Chunk(call("gt", vec![x.clone(), lit(1.5)]).unwrap());
        assert_eq!(
            values(&call("filter", vec![x.clone(), mask]).unwrap()),
            [3.0, 2.0]
        );
        let both = Value::List(vec![x.clone(), x]);
        assert_eq!(call("concat", vec![both]).unwrap().num_rows(), 6);
        let r = call("random", vec![lit(10)]).unwrap();
        assert_eq!(r.num_rows(), 10);
        assert_eq!(
            values(&call("literal", vec![Value::List(vec![lit(1.0), lit(2.0)])]).unwrap()),
            [1.0, 2.0]
        );
        let kw = |scale: f64| {
            serde_json::json!({"scale": scale})
                .as_object()
                .unwrap()
                .clone()
        };
        let normal = |scale| OpRegistry::builtin().call("normal", &[lit(3)], &kw(scale));
        assert_eq!(normal(2.0).unwrap().num_rows(), 3);
        let e = normal(-1.0).unwrap_err().to_string();
        assert!(e.contains("scale ≥ 0, got loc 0, scale -1"), "{e}");
        let ints = Value::List(vec![lit(1.0), lit(2)]);
        assert_eq!(values(&call("literal", vec![ints]).unwrap()), [1.0, 2.0]);
        assert_eq!(
            call("literal", vec![Value::List(vec![])])
                .unwrap()
                .num_rows(),
            0
        );
    }
}
