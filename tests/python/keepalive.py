"""A helper client that pauses longer than the center's session timeout keeps
its handles: its keepalive calls the center meanwhile.

    python keepalive.py CENTER_HOST:PORT SESSION_TIMEOUT_SECONDS
"""

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples", "python"))
from quiver_client import Client  # noqa: E402

address, timeout = sys.argv[1], float(sys.argv[2])
with Client(address, keepalive=timeout / 4) as client:
    held = client.pool().apply("arange", 10)
    held.get()
    time.sleep(timeout * 2.5)
    print("sum after a pause:", client.pool().apply("sum", held).get_float())
print("ok")
