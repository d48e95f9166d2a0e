"""A tiny optional helper over pyarrow.flight that reads like the seed blog's
Pool. One file, pure Python; everything it does is a raw Flight call shown in
seed.py and docs/PYTHON.md.

    from quiver_client import Client, call
    with Client("127.0.0.1:8787") as client:
        pool = client.pool()
        arrays = pool.map("random", [call(1_000_000, seed=i) for i in range(100)])
        sums = pool.map("sum", arrays)             # each sum runs where its array is
        total = pool.apply("sum", sums).get_float()
"""

import json
import os
import threading
import time
import uuid

import pyarrow as pa
import pyarrow.flight as flight


class call:
    """Positional and keyword arguments of one task."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def _arg(value):
    if isinstance(value, Remote):
        return {"key": value.key}
    if isinstance(value, (list, tuple)):
        return [_arg(v) for v in value]
    return value


def _task(op, item):
    c = item if isinstance(item, call) else call(item)
    task = {"op": op, "args": [_arg(a) for a in c.args]}
    if c.kwargs:
        task["kwargs"] = c.kwargs
    return task


class Remote:
    """A handle to a chunk that stays on a worker; released on `release()` or when the client closes."""

    def __init__(self, client, key):
        self.client, self.key = client, key

    def get(self):
        """The chunk as a pyarrow Table, read from the worker that holds it."""
        return self.client.get(self.key)

    def get_float(self):
        """A scalar chunk as a Python float."""
        return self.get().column(0)[0].as_py()

    def release(self):
        self.client.release([self.key])

    def __repr__(self):
        return f"Remote({self.key!r})"


class Pool:
    """`map` and `apply` return handles; the data stays on the workers."""

    def __init__(self, client):
        self.client = client

    def map(self, op, items):
        items = list(items)
        prefix = f"{op}-{uuid.uuid4().hex[:12]}"
        graph = {f"{prefix}-{i}": _task(op, item) for i, item in enumerate(items)}
        return self.client.submit(graph, list(graph))

    def apply(self, op, *args, **kwargs):
        key = f"{op}-{uuid.uuid4().hex[:12]}"
        return self.client.submit({key: _task(op, call(*args, **kwargs))}, [key])[0]


class Client:
    """A session with a center: holds end when the client closes.

    The center releases the holds of a session silent for 60 s, so a thread
    calls it every `keepalive` seconds while the client is open, as the Rust
    client does: a handle stays good however long you pause.
    """

    def __init__(self, address, keepalive=10.0, token=None, tls_ca=None):
        """`token` and `tls_ca` (a CA certificate file) default, as in Quiver's
        own processes, to $QUIVER_TOKEN and $QUIVER_TLS_CA."""
        token = token or os.environ.get("QUIVER_TOKEN")
        tls_ca = tls_ca or os.environ.get("QUIVER_TLS_CA")
        self._connect_options = {}
        if tls_ca:
            with open(tls_ca, "rb") as f:
                self._connect_options["tls_root_certs"] = f.read()
        scheme = "grpc+tls" if tls_ca else "grpc"
        self.center = flight.connect(f"{scheme}://{address}", **self._connect_options)
        headers = [(b"x-quiver-session", uuid.uuid4().hex.encode())]
        if token:
            headers.append((b"authorization", b"Bearer " + token.encode()))
        self.options = flight.FlightCallOptions(headers=headers)
        # Where a key is, without its schema: the center answers that alone.
        self._locate = flight.FlightCallOptions(headers=headers + [(b"x-quiver-locate", b"1")])
        self._workers = {}
        self._closed = threading.Event()
        self._keepalive = threading.Thread(target=self._keep_alive, args=(keepalive,), daemon=True)
        self._keepalive.start()

    def _keep_alive(self, every):
        while not self._closed.wait(every):
            try:
                self.action("cluster")
            except pa.ArrowException:
                pass  # the center is away: the next call of the user's says so

    def action(self, name, body=None):
        payload = json.dumps(body).encode() if body is not None else b""
        results = list(self.center.do_action(flight.Action(name, payload), self.options))
        return json.loads(results[0].body.to_pybytes()) if results else None

    def pool(self):
        return Pool(self)

    def submit(self, graph, keys):
        """Schedules a graph (key -> task dict); returns a handle per wanted key."""
        self.action("submit", {"graph": graph, "keys": keys})
        return [Remote(self, k) for k in keys]

    def get(self, key, rounds=6):
        """The chunk as a pyarrow Table, read from a worker that holds it.

        A holder can die after the center named it; the center learns of it
        at once, so asking again names another holder, or says the data was
        lost. As the Rust client does, each round tries every holder named,
        and `rounds` bounds the asking.
        """
        descriptor = flight.FlightDescriptor.for_path(key)
        last = None
        for round in range(rounds):
            if round:
                time.sleep(0.1 * 2 ** (round - 1))
            try:
                info = self.center.get_flight_info(descriptor, self._locate)
            except flight.FlightUnavailableError as e:
                last = e  # the center could not reach a holder it still believes in
                continue
            for endpoint in info.endpoints:
                for location in endpoint.locations:
                    uri = location.uri.decode()
                    try:
                        if uri not in self._workers:
                            self._workers[uri] = flight.connect(uri, **self._connect_options)
                        return self._workers[uri].do_get(endpoint.ticket, self.options).read_all()
                    except pa.ArrowException as e:
                        last = e
                        stale = self._workers.pop(uri, None)
                        if stale is not None:
                            stale.close()
            if last is None:
                raise KeyError(f"the center named no holder of {key!r}")
        raise last

    def scatter(self, data, key=None):
        """Places a pyarrow Table (or Array, as column `value`) on a worker."""
        if not isinstance(data, pa.Table):
            data = pa.table({"value": data})
        key = key or f"scatter-{uuid.uuid4().hex}"
        writer, _ = self.center.do_put(flight.FlightDescriptor.for_path(key), data.schema, self.options)
        writer.write_table(data)
        writer.close()
        return Remote(self, key)

    def release(self, keys):
        self.action("release", {"keys": list(keys)})

    def close(self):
        self._closed.set()
        self._keepalive.join()
        try:
            self.action("session-close")
        finally:
            for w in self._workers.values():
                w.close()
            self.center.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
