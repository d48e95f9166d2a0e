"""The seed workload against a Quiver center with nothing but pyarrow.

N random arrays of M floats are made and summed on the workers, the sums
summed; only the total leaves the cluster. Then a pyarrow table goes in with
DoPut and a graph runs over it. Raw Arrow Flight calls, no Quiver package:

    quiver local --workers 4 &
    python examples/python/seed.py --scheduler 127.0.0.1:8787
"""

import argparse
import json
import math
import sys

import pyarrow as pa
import pyarrow.flight as flight


def action(client, name, body=None):
    """Runs a DoAction and decodes its JSON reply."""
    payload = json.dumps(body).encode() if body is not None else b""
    results = list(client.do_action(flight.Action(name, payload)))
    return json.loads(results[0].body.to_pybytes()) if results else None


def fetch(center, key):
    """Waits for `key` (GetFlightInfo) and reads it from the worker that holds it."""
    info = center.get_flight_info(flight.FlightDescriptor.for_path(key))
    endpoint = info.endpoints[0]
    worker = flight.connect(endpoint.locations[0])
    try:
        return worker.do_get(endpoint.ticket).read_all()
    finally:
        worker.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scheduler", default="127.0.0.1:8787")
    parser.add_argument("--arrays", type=int, default=100)
    parser.add_argument("--size", type=int, default=1_000_000)
    args = parser.parse_args()
    n, m = args.arrays, args.size

    center = flight.connect(f"grpc://{args.scheduler}")

    # 1. The seed graph as JSON: key -> task; {"key": k} is a dependency.
    graph = {}
    for i in range(n):
        graph[f"x-{i}"] = {"op": "random", "args": [m], "kwargs": {"seed": i}}
        graph[f"sum-{i}"] = {"op": "sum", "args": [{"key": f"x-{i}"}]}
    graph["total"] = {"op": "sum", "args": [[{"key": f"sum-{i}"} for i in range(n)]]}
    reply = action(center, "submit", {"graph": graph, "keys": ["total"]})
    print("submitted", len(graph), "tasks; held:", reply["keys"])

    # 2. Locate `total` and fetch it from the worker the endpoint names.
    info = center.get_flight_info(flight.FlightDescriptor.for_path("total"))
    location = info.endpoints[0].locations[0]
    total = fetch(center, "total").column(0)[0].as_py()
    expected, sigma = n * m / 2, math.sqrt(n * m / 12)
    print(f"total = {total:.3f} (expected {expected:.1f} +- {6 * sigma:.1f}), held at {location.uri.decode()}")
    if abs(total - expected) > 6 * sigma:
        sys.exit("total is off by more than 6 sigma")

    # 3. Data in: DoPut a pyarrow table as a key, then a graph over it.
    table = pa.table({"value": pa.array([float(i) for i in range(1000)])})
    writer, _ = center.do_put(flight.FlightDescriptor.for_path("py-data"), table.schema)
    writer.write_table(table)
    writer.close()
    action(center, "submit", {
        "graph": {
            "py-doubled": {"op": "mul", "args": [{"key": "py-data"}, 2]},
            "py-sum": {"op": "sum", "args": [{"key": "py-doubled"}]},
        },
        "keys": ["py-sum"],
    })
    py_sum = fetch(center, "py-sum").column(0)[0].as_py()
    print(f"sum of 2 * py-data = {py_sum}")
    if py_sum != 999_000.0:
        sys.exit("wrong sum over the DoPut table")

    # 4. What the cluster holds, then give it back.
    held = {f.descriptor.path[0].decode(): f.total_bytes for f in center.list_flights()}
    print("held:", ", ".join(f"{k} ({v} bytes)" for k, v in sorted(held.items())))
    if not {"total", "py-data", "py-sum"} <= held.keys():
        sys.exit(f"list_flights misses keys: {sorted(held)}")
    action(center, "release", {"keys": ["total", "py-data", "py-sum"]})
    left = {f.descriptor.path[0].decode() for f in center.list_flights()}
    if left & {"total", "py-data", "py-sum"}:
        sys.exit(f"released keys still held: {sorted(left)}")
    print("released; ok")


if __name__ == "__main__":
    main()
