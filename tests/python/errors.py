"""Every error a Flight client can cause comes back as a Flight error whose
message says what was wrong. Run by tests/python.rs against `quiver local`."""

import json
import sys

import pyarrow as pa
import pyarrow.flight as flight

center = flight.connect(f"grpc://{sys.argv[1]}")
failures = []


def expect_error(what, fn, *needles):
    try:
        fn()
    except Exception as e:  # pyarrow maps status codes onto several classes
        text = str(e)
        missing = [n for n in needles if n not in text]
        print(f"{what}: {type(e).__name__}: {text.splitlines()[0]}")
        if missing:
            failures.append(f"{what}: message lacks {missing}: {text}")
        return
    failures.append(f"{what}: no error")


def submit(body):
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return list(center.do_action(flight.Action("submit", payload)))


expect_error("bad JSON", lambda: submit(b"{not json"), "malformed graph")
expect_error("unknown op", lambda: submit({"graph": {"x": {"op": "frobnicate"}}, "keys": ["x"]}),
             "unknown op 'frobnicate'", "'x'")
expect_error("missing dependency",
             lambda: submit({"graph": {"s": {"op": "sum", "args": [{"key": "ghost"}]}}, "keys": ["s"]}),
             "'s'", "ghost")
expect_error("cycle", lambda: submit({"graph": {
    "a": {"op": "neg", "args": [{"key": "b"}]},
    "b": {"op": "neg", "args": [{"key": "a"}]}}, "keys": ["a"]}), "cycle")
expect_error("absurd size",
             lambda: submit({"graph": {"x": {"op": "random", "args": [10**15]}}, "keys": ["x"]}), "'x'")
expect_error("unknown key", lambda: center.get_flight_info(flight.FlightDescriptor.for_path("nope")),
             "nope", "not found")
expect_error("unknown ticket", lambda: center.do_get(flight.Ticket(b"nope")).read_all(), "nope", "not found")
expect_error("unknown action", lambda: list(center.do_action(flight.Action("frobnicate", b""))),
             "unknown action 'frobnicate'")
expect_error("wrong descriptor type",
             lambda: center.get_flight_info(flight.FlightDescriptor.for_command(b"total")), "PATH")

# A DoPut whose schema the op cannot take: strings summed.
names = pa.table({"value": pa.array(["a", "b", "c"])})
writer, _ = center.do_put(flight.FlightDescriptor.for_path("names"), names.schema)
writer.write_table(names)
writer.close()
submit({"graph": {"names-sum": {"op": "sum", "args": [{"key": "names"}]}}, "keys": ["names-sum"]})
expect_error("op over the wrong schema",
             lambda: center.get_flight_info(flight.FlightDescriptor.for_path("names-sum")),
             "names-sum", "sum")


def put_again():
    w, _ = center.do_put(flight.FlightDescriptor.for_path("names"), names.schema)
    w.write_table(names)
    w.close()


expect_error("DoPut of an existing key", put_again, "names", "exists")
list(center.do_action(flight.Action("release", json.dumps({"keys": ["names", "names-sum"]}).encode())))

if failures:
    print("\n".join(failures))
    sys.exit(1)
print("ok")
