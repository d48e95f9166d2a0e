"""The helper client against a cluster with a token and TLS: it takes both
from $QUIVER_TOKEN and $QUIVER_TLS_CA, as Quiver's own processes do, for the
center and for the workers it fetches from.

    QUIVER_TOKEN=T QUIVER_TLS_CA=ca.pem python secured.py CENTER_HOST:PORT
"""

import os
import sys

import pyarrow as pa

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples", "python"))
from quiver_client import Client, call  # noqa: E402

address = sys.argv[1]
with Client(address) as client:
    pool = client.pool()
    arrays = pool.map("arange", [call(10 * (i + 1)) for i in range(4)])
    sums = pool.map("sum", arrays)
    print("total:", pool.apply("sum", sums).get_float())
    print("rows fetched from a worker:", arrays[3].get().num_rows)
    print("mean of scattered:", pool.apply("mean", client.scatter(pa.array([1.0, 2.0, 6.0]))).get_float())
try:
    Client(address, token="wrong").pool().apply("arange", 3).get()
    print("a wrong token got through")
except pa.ArrowException as e:
    print("wrong token:", str(e).splitlines()[0])
print("ok")
