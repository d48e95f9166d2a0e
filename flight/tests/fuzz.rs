//! Fuzzing, proptest-based: the graph decoder (JSON → validated graph) and
//! IPC ingest (Flight messages from a peer or a DoPut, IPC files read back
//! from spill or shared memory) take mutated and random inputs and answer
//! with an error, never a panic. `QUIVER_FUZZ_CASES` sets the cases per
//! target (default 1000); `.ci/run` runs a longer bounded pass. A failure
//! prints the shrunk input; it goes into `regressions` below.

use std::sync::{Arc, LazyLock};

use arrow::array::{Float64Array, Int64Array, StringArray};
use arrow::buffer::Buffer;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use arrow_flight::FlightData;
use bytes::Bytes;
use proptest::prelude::*;
use quiver_engine::store::ipcfile;
use quiver_engine::{OpRegistry, Submission};
use quiver_flight::codec;

fn config() -> ProptestConfig {
    // Arrow panics on some inputs inside the product's catch_unwind; that is
    // handled, so its report would only be noise while the product runs.
    // Everything else (proptest's own failure report) is printed.
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_PRODUCT.with(|q| q.get()) {
                default(info);
            }
        }));
    });
    let cases = std::env::var("QUIVER_FUZZ_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(1000);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

thread_local! {
    static IN_PRODUCT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs product code with its caught panics kept quiet. A panic that escapes
/// it is a failure: it is reported after the flag is reset.
fn quietly<T>(f: impl FnOnce() -> T) -> T {
    IN_PRODUCT.with(|q| q.set(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    IN_PRODUCT.with(|q| q.set(false));
    r.unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Valid and nearly valid graphs the mutations start from.
static GRAPHS: LazyLock<Vec<String>> = LazyLock::new(|| {
    let deep = format!(
        r#"{{"graph": {{"x": {{"op": "concat", "args": [{}{{"key": "y"}}{}]}}, "y": [1, 2]}}, "keys": ["x"]}}"#,
        "[".repeat(100),
        "]".repeat(100)
    );
    vec![
        r#"{"graph": {
            "x-0": {"op": "random", "args": [1000], "kwargs": {"seed": 0}},
            "sum-0": {"op": "sum", "args": [{"key": "x-0"}]},
            "total": {"op": "sum", "args": [[{"key": "sum-0"}]]}
          }, "keys": ["total"]}"#
            .into(),
        r#"{"graph": {"a": {"op": "add", "args": [{"key": "b"}, 2.5]},
            "b": {"op": "slice", "args": [{"key": "c"}, 1, 3]},
            "c": [1, 2, 3, 4], "d": {"op": "sum", "args": [{"task": {"op": "arange", "args": [5]}}]}},
            "keys": ["a", "d"]}"#
            .into(),
        deep,
        format!(
            r#"{{"graph": {{"{}": {{"op": "noop"}}}}, "keys": ["{}"]}}"#,
            "k".repeat(5000),
            "k".repeat(5000)
        ),
    ]
});

/// Byte-level edits: (kind, position, byte).
fn edits() -> impl Strategy<Value = Vec<(u8, usize, u8)>> {
    prop::collection::vec((0u8..5, any::<usize>(), any::<u8>()), 0..8)
}

fn mutate(input: &[u8], edits: &[(u8, usize, u8)]) -> Vec<u8> {
    let mut v = input.to_vec();
    for &(kind, pos, byte) in edits {
        let at = if v.is_empty() { 0 } else { pos % v.len() };
        match kind {
            0 if !v.is_empty() => v[at] = byte,
            1 => v.insert(at, byte),
            2 if !v.is_empty() => {
                v.remove(at);
            }
            3 => v.truncate(at),
            4 if !v.is_empty() => v[at] ^= 1 << (byte % 8),
            _ => {}
        }
    }
    v
}

fn check_graph(bytes: &[u8]) {
    match Submission::from_json(bytes) {
        Ok(s) => {
            if let Err(e) = s.graph.validate(&s.keys, &OPS) {
                assert!(!e.to_string().is_empty());
            }
        }
        Err(e) => assert!(e.to_string().starts_with("malformed graph")),
    }
}

static OPS: LazyLock<OpRegistry> = LazyLock::new(OpRegistry::builtin);

/// Chunks of a few types, the way peers send them.
static CHUNKS: LazyLock<Vec<RecordBatch>> = LazyLock::new(|| {
    let schema = Arc::new(Schema::new(vec![
        Field::new("i", DataType::Int64, true),
        Field::new("s", DataType::Utf8, true),
    ]));
    vec![
        quiver_engine::chunk::from_array(Arc::new(Float64Array::from(vec![1.5; 100]))),
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![Some(1), None, Some(3)])),
                Arc::new(StringArray::from(vec![Some("a"), Some("bc"), None])),
            ],
        )
        .unwrap(),
    ]
});

/// The same chunks as IPC files (spill and shared-memory format).
static FILES: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    let dir = tempfile::tempdir().unwrap();
    CHUNKS
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let path = dir.path().join(format!("{i}.arrow"));
            ipcfile::write(&path, c).unwrap();
            std::fs::read(&path).unwrap()
        })
        .collect()
});

fn check_messages(which: usize, part: u8, edits: &[(u8, usize, u8)]) {
    let mut msgs = codec::encode(&CHUNKS[which], None).unwrap();
    let m = &mut msgs[(part as usize / 2) % 2];
    if part.is_multiple_of(2) {
        m.data_header = Bytes::from(mutate(&m.data_header, edits));
    } else {
        m.data_body = Bytes::from(mutate(&m.data_body, edits));
    }
    if let Ok((chunk, _)) = quietly(|| codec::decode_one(msgs, "fuzz")) {
        // Whatever decodes must be usable without panics.
        let _ = quiver_engine::chunk::nbytes(&chunk);
        let _ = format!("{:?}", chunk.columns());
        // So must the slices a mutated list of row counts cuts it into.
        let rows = format!("[{},0]", chunk.num_rows());
        if let Ok(parts) = codec::split(chunk, &mutate(rows.as_bytes(), edits)) {
            let _ = format!("{parts:?}");
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn graph_decoder_takes_mutated_graphs(which in 0..4usize, edits in edits()) {
        check_graph(&mutate(GRAPHS[which].as_bytes(), &edits));
    }

    #[test]
    fn graph_decoder_takes_random_json(json in arb_json()) {
        check_graph(json.to_string().as_bytes());
        let wrapped = serde_json::json!({"graph": {"k": json}, "keys": ["k"]});
        check_graph(wrapped.to_string().as_bytes());
    }

    #[test]
    fn flight_ingest_takes_mutated_messages(which in 0..2usize, part in 0u8..4, edits in edits()) {
        check_messages(which, part, &edits);
    }

    #[test]
    fn flight_ingest_takes_random_messages(header in prop::collection::vec(any::<u8>(), 0..256),
                                           body in prop::collection::vec(any::<u8>(), 0..256)) {
        let junk = FlightData { data_header: header.into(), data_body: body.into(), ..Default::default() };
        let _ = quietly(|| codec::decode_one(vec![junk], "fuzz"));
    }

    #[test]
    fn ipc_file_ingest_takes_mutated_files(which in 0..2usize, edits in edits()) {
        let bytes = mutate(&FILES[which], &edits);
        let _ = ipcfile::batch_location(&bytes);
        if let Ok(chunk) = quietly(|| ipcfile::decode(Buffer::from(bytes))) {
            let _ = format!("{:?}", chunk.columns());
        }
    }
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop_oneof![
            Just("op".to_string()),
            Just("key".into()),
            Just("sum".into()),
            Just("random".into()),
            ".{0,8}"
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("op".to_string()),
                        Just("args".into()),
                        Just("kwargs".into()),
                        Just("key".into()),
                        Just("task".into()),
                        ".{0,4}"
                    ],
                    inner
                ),
                0..5
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Inputs fuzzing once found to crash.
mod regressions {
    use super::*;

    /// A footer block whose body length is negative (-1) overflowed
    /// `meta + body` in `batch_location` (found by the CI fuzz pass).
    #[test]
    fn ipc_file_with_a_negative_body_length() {
        for file in FILES.iter() {
            let (_, body) = ipcfile::batch_location(file).unwrap();
            let len = (body.len() as i64).to_le_bytes();
            let footer_len =
                i32::from_le_bytes(file[file.len() - 10..file.len() - 6].try_into().unwrap())
                    as usize;
            let footer_start = file.len() - 10 - footer_len;
            let at = footer_start
                + file[footer_start..]
                    .windows(8)
                    .position(|w| w == len)
                    .expect("the block's body length is in the footer");
            let mut bad = file.clone();
            bad[at..at + 8].copy_from_slice(&(-1i64).to_le_bytes());
            assert!(ipcfile::batch_location(&bad).is_err());
            assert!(quietly(|| ipcfile::decode(Buffer::from(bad))).is_err());
        }
    }

    /// A record batch message whose buffer offset points past the body made
    /// Arrow's file decoder panic (slice offset 1778384960 of a 320-byte
    /// block). Every byte of the batch metadata, overwritten, must give an
    /// error or a chunk, never a panic.
    #[test]
    fn ipc_file_with_a_buffer_offset_past_the_body() {
        for file in FILES.iter() {
            let (meta, _) = ipcfile::batch_location(file).unwrap();
            for at in meta {
                for byte in [0x6a, 0xff, 0x00] {
                    let mut bad = file.clone();
                    bad[at] = byte;
                    let _ = quietly(|| ipcfile::decode(Buffer::from(bad)));
                }
            }
        }
    }
}
