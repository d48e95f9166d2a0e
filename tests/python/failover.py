"""The helper's `get` reads from another holder, or asks the center again,
when a holder it was told of does not answer.

    python failover.py CENTER_HOST:PORT

The script names the worker holding its data on stdout ("holder NAME") and
waits for a line on stdin: the test kills that worker, then answers.
"""

import os
import sys

import pyarrow as pa
import pyarrow.flight as flight

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples", "python"))
from quiver_client import Client  # noqa: E402


class DeadHolderFirst:
    """The center, except that every key's first holder is a closed port."""

    def __init__(self, center):
        self.center = center

    def __getattr__(self, name):
        return getattr(self.center, name)

    def get_flight_info(self, descriptor, options):
        info = self.center.get_flight_info(descriptor, options)
        ticket = info.endpoints[0].ticket
        dead = flight.FlightEndpoint(ticket, ["grpc://127.0.0.1:1"])
        endpoints = [dead] + list(info.endpoints)
        schema = info.schema or pa.schema([])
        return flight.FlightInfo(schema, info.descriptor, endpoints, info.total_records, info.total_bytes)


with Client(sys.argv[1]) as client:
    pool = client.pool()
    data = pool.apply("arange", 1000)
    total = pool.apply("sum", data)
    print("sum:", total.get_float())

    center = client.center
    client.center = DeadHolderFirst(center)
    print("sum past a dead holder:", total.get_float())
    client.center = center

    # A real holder dies: the center names another, or makes the data again.
    info = center.get_flight_info(flight.FlightDescriptor.for_path(data.key), client.options)
    uri = info.endpoints[0].locations[0].uri.decode()
    workers = client.action("cluster")["workers"]
    print("holder", next(w["name"] for w in workers if uri.endswith(w["address"])), flush=True)
    sys.stdin.readline()
    print("rows after the holder died:", data.get().num_rows)
    print("sum after the holder died:", pool.apply("sum", data).get_float())
print("ok")
