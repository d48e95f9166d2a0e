//! Quiver's C ABI: start an embedded cluster or connect to a center, build and
//! submit graphs, and move chunks in and out through the Arrow C Data
//! Interface without copying their buffers. The header `include/quiver.h` is
//! generated from this file by cbindgen (`tests/header.rs` fails on drift);
//! docs/C_API.md states who owns every pointer.
//!
//! Every `extern "C"` function catches panics and returns a [`QuiverStatus`];
//! the message of the last failure on the calling thread is
//! [`quiver_last_error`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::time::Duration;

use arrow::array::{Array, StructArray, make_array};
use arrow::datatypes::DataType;
use arrow::ffi::{FFI_ArrowArray, FFI_ArrowSchema, from_ffi, to_ffi};
use arrow::record_batch::RecordBatch;
use quiver_engine::graph::{Arg, Node};
use quiver_engine::{Client, Cluster, Error as EngineError, Graph, Key, RemoteData, Task, chunk};
use quiver_flight::Error as FlightError;

/// What a call returned: `QUIVER_OK`, or the kind of failure (the message is
/// in [`quiver_last_error`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuiverStatus {
    /// Success.
    QuiverOk = 0,
    /// A bad argument: a null pointer, invalid UTF-8, a malformed graph or Arrow array.
    QuiverInvalidArgument = 1,
    /// The key is not known to the cluster.
    QuiverNotFound = 2,
    /// The task computing the key (or one it depends on) failed.
    QuiverTaskFailed = 3,
    /// Waiting took longer than the timeout.
    QuiverTimeout = 4,
    /// The cluster, the center or a worker is unreachable.
    QuiverUnavailable = 5,
    /// Data was lost with its worker and cannot be recomputed.
    QuiverLost = 6,
    /// Anything else (I/O, an internal error, a caught panic).
    QuiverInternal = 7,
}

use QuiverStatus::*;

/// A client of a cluster: an embedded one it owns, or a remote center.
/// Safe to share between threads.
pub struct QuiverClient {
    client: Client,
    /// Keeps an embedded cluster alive as long as its client.
    _cluster: Option<Cluster>,
    /// The holds this client took (submitted keys, scattered keys).
    held: Mutex<HashMap<Key, Vec<RemoteData>>>,
}

/// A task graph under construction (key → task). Not thread-safe.
pub struct QuiverGraph {
    graph: Graph,
}

/// An error with the status it maps to.
struct Failure(QuiverStatus, String);

impl From<EngineError> for Failure {
    fn from(e: EngineError) -> Self {
        let status = match &e {
            EngineError::InvalidGraph { .. }
            | EngineError::MalformedGraph(_)
            | EngineError::UnknownOp { .. } => QuiverInvalidArgument,
            EngineError::KeyNotFound { .. } => QuiverNotFound,
            EngineError::TaskFailed { .. } | EngineError::Op { .. } => QuiverTaskFailed,
            EngineError::Timeout { .. } => QuiverTimeout,
            EngineError::Unavailable(_) => QuiverUnavailable,
            EngineError::Lost { .. } => QuiverLost,
            _ => QuiverInternal,
        };
        Failure(status, e.to_string())
    }
}

impl From<FlightError> for Failure {
    fn from(e: FlightError) -> Self {
        match e {
            FlightError::Engine(e) => e.into(),
            FlightError::Connect { .. } => Failure(QuiverUnavailable, e.to_string()),
            FlightError::Remote { ref status, .. } => {
                let s = match status.code() {
                    tonic_code::INVALID_ARGUMENT => QuiverInvalidArgument,
                    tonic_code::NOT_FOUND => QuiverNotFound,
                    tonic_code::FAILED_PRECONDITION => QuiverTaskFailed,
                    tonic_code::DEADLINE_EXCEEDED => QuiverTimeout,
                    tonic_code::UNAVAILABLE => QuiverUnavailable,
                    tonic_code::DATA_LOSS => QuiverLost,
                    _ => QuiverInternal,
                };
                Failure(s, e.to_string())
            }
            e => Failure(QuiverInternal, e.to_string()),
        }
    }
}

impl From<arrow::error::ArrowError> for Failure {
    fn from(e: arrow::error::ArrowError) -> Self {
        Failure(QuiverInvalidArgument, format!("arrow: {e}"))
    }
}

/// Status codes by name, so the mapping reads like the protocol table.
mod tonic_code {
    use tonic::Code;
    pub const INVALID_ARGUMENT: Code = Code::InvalidArgument;
    pub const NOT_FOUND: Code = Code::NotFound;
    pub const FAILED_PRECONDITION: Code = Code::FailedPrecondition;
    pub const DEADLINE_EXCEEDED: Code = Code::DeadlineExceeded;
    pub const UNAVAILABLE: Code = Code::Unavailable;
    pub const DATA_LOSS: Code = Code::DataLoss;
}

fn invalid(msg: impl Into<String>) -> Failure {
    Failure(QuiverInvalidArgument, msg.into())
}

thread_local! {
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

fn set_last_error(msg: String) {
    let c = CString::new(msg.replace('\0', "\\0")).expect("NULs replaced");
    LAST_ERROR.with(|e| *e.borrow_mut() = Some(c));
}

/// Runs `f`, turning an error or a panic into a status and the thread's last error.
fn guard(f: impl FnOnce() -> Result<(), Failure>) -> QuiverStatus {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => QuiverOk,
        Ok(Err(Failure(status, msg))) => {
            set_last_error(msg);
            status
        }
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(format!("internal error (panic): {msg}"));
            QuiverInternal
        }
    }
}

/// Reads a NUL-terminated UTF-8 string argument.
///
/// # Safety
/// `p` is null or points to a NUL-terminated string that outlives `'a`.
unsafe fn text<'a>(p: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if p.is_null() {
        return Err(invalid(format!("{what} is NULL")));
    }
    // SAFETY: non-null and NUL-terminated per this function's contract.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|e| invalid(format!("{what} is not UTF-8: {e}")))
}

/// Reads a key argument.
///
/// # Safety
/// As [`text`].
unsafe fn key_arg(p: *const c_char, what: &str) -> Result<Key, Failure> {
    // SAFETY: forwarded contract.
    let s = unsafe { text(p, what) }?;
    Key::new(s).ok_or_else(|| invalid(format!("{what} is an empty key")))
}

/// Reads an array of `n` keys.
///
/// # Safety
/// `keys` is null (only if `n` is 0) or points to `n` valid string pointers.
unsafe fn keys_arg(keys: *const *const c_char, n: usize) -> Result<Vec<Key>, Failure> {
    if n == 0 {
        return Ok(vec![]);
    }
    if keys.is_null() {
        return Err(invalid("keys is NULL"));
    }
    // SAFETY: `keys` points to `n` pointers per the contract.
    let ptrs = unsafe { std::slice::from_raw_parts(keys, n) };
    ptrs.iter()
        .enumerate()
        // SAFETY: each pointer is a NUL-terminated string per the contract.
        .map(|(i, &p)| unsafe { key_arg(p, &format!("keys[{i}]")) })
        .collect()
}

/// Borrows a handle argument.
///
/// # Safety
/// `p` is null or a live handle made by this library.
unsafe fn handle<'a, T>(p: *const T, what: &str) -> Result<&'a T, Failure> {
    // SAFETY: non-null handles are live per the contract.
    unsafe { p.as_ref() }.ok_or_else(|| invalid(format!("{what} is NULL")))
}

/// Writes `value` to an out-pointer.
///
/// # Safety
/// `out` is null or valid for a write.
unsafe fn put<T>(out: *mut T, value: T) -> Result<(), Failure> {
    if out.is_null() {
        return Err(invalid("the output pointer is NULL"));
    }
    // SAFETY: non-null and writable per the contract.
    unsafe { out.write(value) };
    Ok(())
}

impl QuiverClient {
    fn new(client: Client, cluster: Option<Cluster>) -> *mut QuiverClient {
        Box::into_raw(Box::new(QuiverClient {
            client,
            _cluster: cluster,
            held: Mutex::new(HashMap::new()),
        }))
    }

    fn hold(&self, handles: Vec<RemoteData>) {
        let mut held = self.held.lock().expect("held lock");
        for h in handles {
            held.entry(h.key().clone()).or_default().push(h);
        }
    }
}

/// The library's version, e.g. `"0.1.0"` (static; never free it).
#[unsafe(no_mangle)]
pub extern "C" fn quiver_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The message of the last failed call on this thread, or NULL. Valid until
/// the next failing call on the same thread; owned by the library.
#[unsafe(no_mangle)]
pub extern "C" fn quiver_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ref().map_or(std::ptr::null(), |c| c.as_ptr()))
}

/// Starts an embedded cluster of `workers` in-process workers (one thread
/// each; `memory_limit` bytes per worker before spilling, 0 = none) and
/// writes a client that owns it to `*out`. Free with [`quiver_client_free`].
///
/// # Safety
/// `out` must be valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn quiver_local(
    workers: u32,
    memory_limit: u64,
    out: *mut *mut QuiverClient,
) -> QuiverStatus {
    guard(|| {
        if out.is_null() {
            return Err(invalid("out is NULL"));
        }
        let mut builder = Cluster::builder().workers(workers.max(1) as usize);
        if memory_limit > 0 {
            builder = builder.memory_limit(memory_limit as usize);
        }
        let cluster = builder.build()?;
        let client = QuiverClient::new(cluster.client(), Some(cluster));
        // SAFETY: `out` is writable per the contract.
        unsafe { put(out, client) }
    })
}

/// Connects to the center at `address` (`"host:port"`) and writes the client
/// to `*out`. Free with [`quiver_client_free`].
///
/// # Safety
/// `address` is a NUL-terminated string; `out` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn quiver_connect(
    address: *const c_char,
    out: *mut *mut QuiverClient,
) -> QuiverStatus {
    guard(|| {
        // SAFETY: per the contract.
        let address = unsafe { text(address, "address") }?;
        if out.is_null() {
            return Err(invalid("out is NULL"));
        }
        let client = quiver_flight::client::connect(address)?;
        // SAFETY: `out` is writable per the contract.
        unsafe { put(out, QuiverClient::new(client, None)) }
    })
}

/// Releases every key the client holds, stops an embedded cluster and frees
/// the client. NULL is ignored.
///
/// # Safety
/// `client` is NULL or a client not yet freed; it is invalid afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn quiver_client_free(client: *mut QuiverClient) {
    if client.is_null() {
        return;
    }
    // SAFETY: made by `Box::into_raw` in `QuiverClient::new`, freed once per the contract.
    let client = unsafe { Box::from_raw(client) };
    let _ = catch_unwind(AssertUnwindSafe(move || drop(client)));
}

/// A new, empty graph. Free with [`quiver_graph_free`] (submitting does not free it).
#[unsafe(no_mangle)]
pub extern "C" fn quiver_graph_new() -> *mut QuiverGraph {
    Box::into_raw(Box::new(QuiverGraph {
        graph: Graph::new(),
    }))
}

/// Parses a graph from JSON (an object of key → task, as in docs/PROTOCOL.md)
/// and writes it to `*out`.
///
/// # Safety
/// `json` is a NUL-terminated string; `out` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn quiver_graph_from_json(
    json: *const c_char,
    out: *mut *mut QuiverGraph,
) -> QuiverStatus {
    guard(|| {
        // SAFETY: per the contract.
        let json = unsafe { text(json, "json") }?;
        let graph: Graph =
            serde_json::from_str(json).map_err(|e| invalid(format!("malformed graph: {e}")))?;
        // SAFETY: `out` is writable per the contract.
        unsafe { put(out, Box::into_raw(Box::new(QuiverGraph { graph }))) }
    })
}

/// Adds (or replaces) `key` as the task or literal given in JSON, e.g.
/// `{"op": "random", "args": [1000000], "kwargs": {"seed": 3}}`.
///
/// # Safety
/// `graph` is a live graph; `key` and `node_json` are NUL-terminated strings.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn quiver_graph_add_json(
    graph: *mut QuiverGraph,
    key: *const c_char,
    node_json: *const c_char,
) -> QuiverStatus {
    guard(|| {
        // SAFETY: per the contract.
        let (key, json) = unsafe { (key_arg(key, "key")?, text(node_json, "node_json")?) };
        let node: Node = serde_json::from_str(json)
            .map_err(|e| invalid(format!("malformed task for key '{key}': {e}")))?;
        // SAFETY: a live graph, used by one thread per the contract.
        let graph = unsafe { graph.as_mut() }.ok_or_else(|| invalid("graph is NULL"))?;
        graph.graph.nodes.insert(key, node);
        Ok(())
    })
}

/// Adds (or replaces) `key` as `op` applied to the chunks of `inputs`: one
/// positional argument per input, or, if `as_list` is true, a single list
/// argument holding them all (how `sum` totals many partial sums).
///
/// # Safety
/// `graph` is a live graph; `key` and `op` are NUL-terminated strings; `inputs`
/// points to `n_inputs` NUL-terminated strings (or is NULL when `n_inputs` is 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn quiver_graph_add_task(
    graph: *mut QuiverGraph,
    key: *const c_char,
    op: *const c_char,
    inputs: *const *const c_char,
    n_inputs: usize,
    as_list: bool,
) -> QuiverStatus {
    guard(|| {
        // SAFETY: per the contract.
        let (key, op, inputs) = unsafe {
            (
                key_arg(key, "key")?,
                text(op, "op")?,
                keys_arg(inputs, n_inputs)?,
            )
        };
        let refs: Vec<Arg> = inputs.into_iter().map(Arg::Ref).collect();
        let mut task = Task::new(op);
        task.args = if as_list { vec![Arg::List(refs)] } else { refs };
        // SAFETY: a live graph, used by one thread per the contract.
        let graph = unsafe { graph.as_mut() }.ok_or_else(|| invalid("graph is NULL"))?;
        graph.graph.insert(key, task);
        Ok(())
    })
}

/// Number of keys in the graph (0 for NULL).
///
/// # Safety
/// `graph` is NULL or a live graph.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn quiver_graph_len(graph: *const QuiverGraph) -> usize {
    // SAFETY: NULL or live per the contract.
    unsafe { graph.as_ref() }.map_or(0, |g| g.graph.len())
}

/// Frees a graph. NULL is ignored.
///
/// # Safety
/// `graph` is NULL or a graph not yet freed; it is invalid afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn quiver_graph_free(graph: *mut QuiverGraph) {
    if !graph.is_null() {
        // SAFETY: made by `Box::into_raw` here, freed once per the contract.
        drop(unsafe { Box::from_raw(graph) });
    }
}

/// Validates and schedules `graph`; each of `keys` is computed and held for
/// the client until [`quiver_release`] (every other key is an intermediate,
/// freed when consumed). Returns at once; see [`quiver_wait`].
///
/// # Safety
/// `client` and `graph` are live; `keys` points to `n_keys` NUL-terminated strings.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn quiver_submit(
    client: *const QuiverClient,
    graph: *const QuiverGraph,
    keys: *const *const c_char,
    n_keys: usize,
) -> QuiverStatus {
    guard(|| {
        // SAFETY: per the contract.
        let (client, graph, keys) = unsafe {
            (
                handle(client, "client")?,
                handle(graph, "graph")?,
                keys_arg(keys, n_keys)?,
            )
        };
        let handles = client.client.submit(graph.graph.clone(), &keys)?;
        client.hold(handles);
        Ok(())
    })
}

/// Waits until `key` is computed, at most `timeout_ms` milliseconds (negative
/// = no limit). `QUIVER_TASK_FAILED` carries the task's own error.
///
/// # Safety
/// `client` is live; `key` is a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn quiver_wait(
    client: *const QuiverClient,
    key: *const c_char,
    timeout_ms: i64,
) -> QuiverStatus {
    guard(|| {
        // SAFETY: per the contract.
        let (client, key) = unsafe { (handle(client, "client")?, key_arg(key, "key")?) };
        let timeout = u64::try_from(timeout_ms).ok().map(Duration::from_millis);
        client.client.backend().wait(&key, timeout)?;
        Ok(())
    })
}

/// Waits for `key` and exports its chunk through the Arrow C Data Interface
/// into the caller's `*out_array` and `*out_schema`: a struct array whose
/// children are the chunk's columns (one, `value`, for an array chunk). The
/// buffers are the cluster's own (no copy); they stay valid until the caller
/// calls `out_array->release` (and `out_schema->release`), even after the key
/// is released or the client freed.
///
/// # Safety
/// `client` is live; `key` is a NUL-terminated string; `out_array` and
/// `out_schema` are valid for writes (their old contents are overwritten, not released).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn quiver_fetch(
    client: *const QuiverClient,
    key: *const c_char,
    out_array: *mut FFI_ArrowArray,
    out_schema: *mut FFI_ArrowSchema,
) -> QuiverStatus {
    guard(|| {
        // SAFETY: per the contract.
        let (client, key) = unsafe { (handle(client, "client")?, key_arg(key, "key")?) };
        if out_array.is_null() || out_schema.is_null() {
            return Err(invalid("out_array or out_schema is NULL"));
        }
        let batch = client.client.backend().fetch(&key)?;
        let (array, schema) = to_ffi(&StructArray::from(batch).into_data())?;
        // SAFETY: both are writable per the contract; `write` does not drop the old contents.
        unsafe {
            out_array.write(array);
            out_schema.write(schema);
        }
        Ok(())
    })
}

/// Waits for a scalar `key` (one row, one numeric column) and writes it as a double.
///
/// # Safety
/// `client` is live; `key` is a NUL-terminated string; `out` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn quiver_fetch_f64(
    client: *const QuiverClient,
    key: *const c_char,
    out: *mut f64,
) -> QuiverStatus {
    guard(|| {
        // SAFETY: per the contract.
        let (client, key) = unsafe { (handle(client, "client")?, key_arg(key, "key")?) };
        let v = chunk::to_f64(&client.client.backend().fetch(&key)?)?;
        // SAFETY: writable per the contract.
        unsafe { put(out, v) }
    })
}

/// Places a C-owned Arrow array in the cluster under `key`, held for the
/// client. A struct array becomes a chunk with its children as columns; any
/// other array a one-column chunk. The array is **moved**: on return (success
/// or not) `array->release` is NULL and the library calls the original release
/// callback once the cluster no longer needs the buffers. An embedded cluster
/// keeps the caller's buffers as they are (no copy). The schema is borrowed.
///
/// # Safety
/// `client` is live; `key` is a NUL-terminated string; `array` and `schema`
/// follow the Arrow C Data Interface and describe each other.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn quiver_scatter(
    client: *const QuiverClient,
    key: *const c_char,
    array: *mut FFI_ArrowArray,
    schema: *const FFI_ArrowSchema,
) -> QuiverStatus {
    guard(|| {
        // SAFETY: per the contract.
        let (client, key) = unsafe { (handle(client, "client")?, key_arg(key, "key")?) };
        // SAFETY: checked for NULL; a C Data Interface schema per the contract.
        let schema = unsafe { schema.as_ref() }.ok_or_else(|| invalid("schema is NULL"))?;
        if array.is_null() {
            return Err(invalid("array is NULL"));
        }
        // SAFETY: a live C Data Interface array; `from_raw` moves it out and
        // marks the caller's struct released.
        let array = unsafe { FFI_ArrowArray::from_raw(array) };
        if array.is_released() {
            return Err(invalid("array was already released"));
        }
        // SAFETY: array and schema follow the C Data Interface per the contract.
        let data = unsafe { from_ffi(array, schema) }?;
        let chunk = match data.data_type() {
            DataType::Struct(_) => RecordBatch::from(StructArray::from(data)),
            _ => chunk::from_array(make_array(data)),
        };
        let handle = client.client.scatter_as(key, chunk)?;
        client.hold(vec![handle]);
        Ok(())
    })
}

/// Drops the client's holds on `keys` (from [`quiver_submit`] or
/// [`quiver_scatter`]); a key nobody needs any more is freed on its worker.
/// Keys the client does not hold are ignored.
///
/// # Safety
/// `client` is live; `keys` points to `n_keys` NUL-terminated strings.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn quiver_release(
    client: *const QuiverClient,
    keys: *const *const c_char,
    n_keys: usize,
) -> QuiverStatus {
    guard(|| {
        // SAFETY: per the contract.
        let (client, keys) = unsafe { (handle(client, "client")?, keys_arg(keys, n_keys)?) };
        let released: Vec<RemoteData> = {
            let mut held = client.held.lock().expect("held lock");
            keys.iter()
                .filter_map(|k| held.remove(k))
                .flatten()
                .collect()
        };
        RemoteData::release_all(released);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Float64Array;

    fn last_error() -> String {
        // SAFETY: a NUL-terminated string owned by this thread's slot.
        unsafe { CStr::from_ptr(quiver_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    fn local() -> *mut QuiverClient {
        let mut client = std::ptr::null_mut();
        // SAFETY: `client` is writable.
        assert_eq!(unsafe { quiver_local(2, 0, &mut client) }, QuiverOk);
        client
    }

    #[test]
    fn null_and_malformed_arguments_are_errors_with_messages() {
        let mut graph = std::ptr::null_mut();
        // SAFETY: every pointer is NULL or valid; that is what is tested.
        unsafe {
            assert_eq!(
                quiver_graph_from_json(std::ptr::null(), &mut graph),
                QuiverInvalidArgument
            );
            assert_eq!(last_error(), "json is NULL");
            assert_eq!(
                quiver_graph_from_json(c"{\"x\": {\"op\": ".as_ptr(), &mut graph),
                QuiverInvalidArgument
            );
            assert!(
                last_error().starts_with("malformed graph: "),
                "{}",
                last_error()
            );
            let client = local();
            let g = quiver_graph_new();
            assert_eq!(
                quiver_graph_add_json(g, c"x".as_ptr(), c"{\"op\": \"nope\"}".as_ptr()),
                QuiverOk
            );
            let keys = [c"x".as_ptr()];
            assert_eq!(
                quiver_submit(client, g, keys.as_ptr(), 1),
                QuiverInvalidArgument
            );
            assert!(
                last_error().contains("unknown op 'nope'"),
                "{}",
                last_error()
            );
            assert_eq!(quiver_wait(client, c"never".as_ptr(), 10), QuiverNotFound);
            assert_eq!(
                quiver_submit(std::ptr::null(), g, keys.as_ptr(), 1),
                QuiverInvalidArgument
            );
            assert_eq!(last_error(), "client is NULL");
            quiver_graph_free(g);
            quiver_client_free(client);
        }
    }

    #[test]
    fn fetch_exports_the_workers_buffers_and_scatter_keeps_the_callers() {
        // SAFETY: all pointers come from this library or live on this stack.
        unsafe {
            let client = local();
            let g = quiver_graph_new();
            assert_eq!(
                quiver_graph_add_json(
                    g,
                    c"x".as_ptr(),
                    c"{\"op\": \"arange\", \"args\": [100]}".as_ptr()
                ),
                QuiverOk
            );
            let keys = [c"x".as_ptr()];
            assert_eq!(quiver_submit(client, g, keys.as_ptr(), 1), QuiverOk);
            let held = (*client).client.backend().fetch(&Key::from("x")).unwrap();
            let mut array = FFI_ArrowArray::empty();
            let mut schema = FFI_ArrowSchema::empty();
            assert_eq!(
                quiver_fetch(client, keys[0], &mut array, &mut schema),
                QuiverOk
            );
            assert_eq!(
                array.child(0).buffer(1),
                held.column(0).to_data().buffers()[0].as_ptr(),
                "the export points at the worker's buffer"
            );
            drop((array, schema));

            // A C-style import: the exported array handed back in keeps its buffers.
            let source = Float64Array::from_iter_values((0..1000).map(f64::from));
            let ptr = source.values().inner().as_ptr();
            let (mut array, schema) = to_ffi(&source.into_data()).unwrap();
            assert_eq!(
                quiver_scatter(client, c"c".as_ptr(), &mut array, &schema),
                QuiverOk
            );
            assert!(array.is_released(), "scatter moved the array");
            let chunk = (*client).client.backend().fetch(&Key::from("c")).unwrap();
            assert_eq!(chunk.column(0).to_data().buffers()[0].as_ptr(), ptr);
            let mut v = 0.0;
            let g2 = quiver_graph_new();
            let inputs = [c"c".as_ptr()];
            quiver_graph_add_task(
                g2,
                c"s".as_ptr(),
                c"sum".as_ptr(),
                inputs.as_ptr(),
                1,
                false,
            );
            let out = [c"s".as_ptr()];
            assert_eq!(quiver_submit(client, g2, out.as_ptr(), 1), QuiverOk);
            assert_eq!(quiver_fetch_f64(client, out[0], &mut v), QuiverOk);
            assert_eq!(v, 499_500.0);
            let all = [c"x".as_ptr(), c"c".as_ptr(), c"s".as_ptr()];
            assert_eq!(quiver_release(client, all.as_ptr(), 3), QuiverOk);
            assert_eq!(quiver_wait(client, c"c".as_ptr(), 10), QuiverNotFound);
            quiver_graph_free(g);
            quiver_graph_free(g2);
            quiver_client_free(client);
        }
    }
}
