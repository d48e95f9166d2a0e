"""Puts and gets of one big table through a running Quiver cluster, with
pyarrow's Flight client (examples/python/quiver_client.py): the scatter path
(client -> center -> worker) against the fetch (worker -> client) and the
fetch through the center (worker -> center -> client), and beside them the
same table fetched from pyarrow's own Flight server.

    python benches/compare/put.py HOST:PORT [--mb 800] [--reps 5]

Prints each round and the medians, in seconds and GB/s.
"""
import argparse
import os
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples", "python"))
import pyarrow as pa  # noqa: E402
import pyarrow.flight as flight  # noqa: E402
import quiver_client as q  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("address")
    p.add_argument("--mb", type=int, default=800)
    p.add_argument("--reps", type=int, default=5)
    a = p.parse_args()
    n = a.mb * 1_000_000 // 8
    table = pa.table({"x": pa.array([1.5] * 1_000_000, type=pa.float64())})
    table = pa.concat_tables([table] * (n // 1_000_000)).combine_chunks()
    gb = table.nbytes / 1e9
    c = q.Client(a.address)

    class Server(flight.FlightServerBase):
        def do_get(self, context, ticket):
            return flight.RecordBatchStream(table)

    server = Server("grpc://127.0.0.1:0")
    threading.Thread(target=server.serve, daemon=True).start()
    own = flight.connect("grpc://127.0.0.1:%d" % server.port)
    puts, gets, proxied, owns = [], [], [], []
    for i in range(a.reps):
        key = "put-bench-%d" % i
        start = time.perf_counter()
        c.scatter(table, key=key)
        put = time.perf_counter() - start
        start = time.perf_counter()
        back = c.get(key)
        get = time.perf_counter() - start
        assert back.num_rows == table.num_rows
        del back
        start = time.perf_counter()
        back = c.center.do_get(flight.Ticket(key.encode()), c.options).read_all()
        via_center = time.perf_counter() - start
        assert back.num_rows == table.num_rows
        del back
        c.release([key])
        start = time.perf_counter()
        back = own.do_get(flight.Ticket(b"table")).read_all()
        pyarrow_get = time.perf_counter() - start
        assert back.num_rows == table.num_rows
        del back
        puts.append(put)
        gets.append(get)
        proxied.append(via_center)
        owns.append(pyarrow_get)
        print("round %d: put %.2f s (%.2f GB/s), get %.2f s (%.2f GB/s), through the center %.2f s, "
              "from pyarrow's server %.2f s" % (i, put, gb / put, get, gb / get, via_center, pyarrow_get))
    server.shutdown()
    put, get, pyarrow_get = statistics.median(puts), statistics.median(gets), statistics.median(owns)
    print("median of %d: put %.2f s (%.2f GB/s), get %.2f s (%.2f GB/s), %.0f MB"
          % (a.reps, put, gb / put, get, gb / get, gb * 1000))
    via_center = statistics.median(proxied)
    print("through the center: get %.2f s (%.2f GB/s)" % (via_center, gb / via_center))
    print("pyarrow's own server, the same table: get %.2f s (%.2f GB/s)" % (pyarrow_get, gb / pyarrow_get))


if __name__ == "__main__":
    main()
