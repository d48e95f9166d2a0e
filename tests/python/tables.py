"""Tables of every shape a pyarrow user may scatter come back as they went in,
and ops read them. Run by tests/python.rs against `quiver local`."""

import json
import sys

import pyarrow as pa
import pyarrow.flight as flight

center = flight.connect(f"grpc://{sys.argv[1]}")
failures = []


def put(key, table):
    writer, _ = center.do_put(flight.FlightDescriptor.for_path(key), table.schema)
    writer.write_table(table)
    writer.close()


def get(key):
    return center.do_get(flight.Ticket(key.encode())).read_all()


def submit(graph, keys):
    body = json.dumps({"graph": graph, "keys": keys}).encode()
    return list(center.do_action(flight.Action("submit", body)))


def release(keys):
    list(center.do_action(flight.Action("release", json.dumps({"keys": keys}).encode())))


several = pa.Table.from_batches([
    pa.record_batch({"value": pa.array([1.0, 2.0])}),
    pa.record_batch({"value": pa.array([3.0])}),
])
tables = {
    "empty": pa.table({"value": pa.array([], pa.float64())}),
    "several-batches": several,
    "sliced": pa.table({"value": pa.array([0.0, 1.0, 2.0, 3.0, 4.0]).slice(1, 3)}),
    "nulls": pa.table({"value": pa.array([1.0, None, 3.0])}),
    "ints": pa.table({"value": pa.array([1, 2, 3], pa.int32())}),
    "strings": pa.table({"value": pa.array(["a", None, "ccc"])}),
    "dictionary": pa.table({"value": pa.array(["x", "y", "x"]).dictionary_encode()}),
    "struct": pa.table({"value": pa.array([{"a": 1, "b": "p"}, None])}),
    "two-columns": pa.table({"a": [1.0, 2.0], "b": ["u", "v"]}),
}
for name, table in tables.items():
    put(name, table)
    back = get(name)
    if not back.equals(table.combine_chunks()):
        failures.append(f"{name}: {table.to_pydict()} came back as {back.to_pydict()}")
    print(f"{name}: {back.num_rows} rows back")

# The center's listing describes each chunk as its holder does: schema and rows.
listed = {f.descriptor.path[0].decode(): f for f in center.list_flights()}
for name, table in tables.items():
    f = listed.get(name)
    if f is None or f.schema != table.schema or f.total_records != table.num_rows:
        failures.append(f"{name}: listed as {f and (f.schema, f.total_records)}")

sums = {f"sum-{n}": {"op": "sum", "args": [{"key": n}]} for n in
        ["empty", "several-batches", "sliced", "nulls", "ints"]}
submit(sums, list(sums))
for key, want in {"sum-empty": 0.0, "sum-several-batches": 6.0, "sum-sliced": 6.0,
                  "sum-nulls": 4.0, "sum-ints": 6.0}.items():
    got = get(key).column(0)[0].as_py()
    print(f"{key} = {got}")
    if got != want:
        failures.append(f"{key}: {got}, not {want}")
release(list(tables) + list(sums))

if failures:
    print("\n".join(failures))
    sys.exit(1)
print("ok")
