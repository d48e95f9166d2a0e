"""pyarrow's own Flight server and client (Arrow C++) on loopback: do_get
throughput of one float64 column per chunk size, as a reference for Quiver's
worker-to-worker Flight route. Prints one JSON object per size.

Usage: python pyarrow_flight.py [--quick]
"""
import json
import statistics
import sys
import threading
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.flight as flight

MB = 1 << 20


class Server(flight.FlightServerBase):
    def __init__(self):
        super().__init__("grpc://127.0.0.1:0")
        self.tables = {}

    def do_get(self, context, ticket):
        return flight.RecordBatchStream(self.tables[ticket.ticket.decode()])


def main():
    quick = "--quick" in sys.argv
    sizes = [8 * MB] if quick else [8 * MB, 32 * MB, 100 * MB, 256 * MB]
    reps = 2 if quick else 5
    server = Server()
    threading.Thread(target=server.serve, daemon=True).start()
    client = flight.connect(f"grpc://127.0.0.1:{server.port}")
    for size in sizes:
        values = pc.random(size // 8, initializer=0)
        server.tables[str(size)] = pa.table({"value": values})
        rates = []
        for _ in range(reps):
            start = time.perf_counter()
            table = client.do_get(flight.Ticket(str(size))).read_all()
            rates.append(size / (time.perf_counter() - start))
            assert table.num_rows == size // 8
        print(json.dumps({"route": "pyarrow-flight", "chunk_bytes": size,
                          "bytes_per_sec": statistics.median(rates)}))
    server.shutdown()


if __name__ == "__main__":
    main()
