"""pyarrow's own Flight server and client (Arrow C++) on loopback: do_get
throughput of one float64 column per chunk size, as a reference for Quiver's
worker-to-worker Flight route. The server runs in a process of its own, as a
Flight server would, and each size is fetched once untimed first, as Quiver's
fetches are. Prints one JSON object per size.

Usage: python pyarrow_flight.py [--quick] [--reps N]
"""
import json
import multiprocessing
import queue
import statistics
import sys
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.flight as flight

MB = 1 << 20


class Server(flight.FlightServerBase):
    def __init__(self, sizes):
        super().__init__("grpc://127.0.0.1:0")
        self.tables = {str(s): pa.table({"value": pc.random(s // 8, initializer=0)})
                       for s in sizes}

    def do_get(self, context, ticket):
        return flight.RecordBatchStream(self.tables[ticket.ticket.decode()])


def serve(sizes, port):
    server = Server(sizes)
    port.put(server.port)
    server.serve()


def main():
    quick = "--quick" in sys.argv
    sizes = [8 * MB] if quick else [8 * MB, 32 * MB, 100 * MB, 256 * MB]
    reps = 2 if quick else 5
    if "--reps" in sys.argv:
        reps = int(sys.argv[sys.argv.index("--reps") + 1])
    ctx = multiprocessing.get_context("spawn")
    port = ctx.Queue()
    server = ctx.Process(target=serve, args=(sizes, port), daemon=True)
    server.start()
    try:
        try:
            client = flight.connect(f"grpc://127.0.0.1:{port.get(timeout=60)}")
        except queue.Empty:
            raise SystemExit("pyarrow's Flight server did not start within 60 s")
        for size in sizes:
            ticket = flight.Ticket(str(size))
            client.do_get(ticket).read_all()
            rates = []
            for _ in range(reps):
                start = time.perf_counter()
                table = client.do_get(ticket).read_all()
                rates.append(size / (time.perf_counter() - start))
                assert table.num_rows == size // 8
            print(json.dumps({"route": "pyarrow-flight", "chunk_bytes": size,
                              "bytes_per_sec": statistics.median(rates)}))
    finally:
        server.kill()
        server.join()


if __name__ == "__main__":
    main()
