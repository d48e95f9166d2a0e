"""The seed workload through the optional helper's Pool, as the seed blog wrote it.

    python examples/python/pool.py --scheduler 127.0.0.1:8787
"""

import argparse
import math
import sys

import pyarrow as pa

from quiver_client import Client, call


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scheduler", default="127.0.0.1:8787")
    parser.add_argument("--arrays", type=int, default=100)
    parser.add_argument("--size", type=int, default=1_000_000)
    args = parser.parse_args()
    n, m = args.arrays, args.size

    with Client(args.scheduler) as client:
        pool = client.pool()
        arrays = pool.map("random", [call(m, seed=i) for i in range(n)])
        sums = pool.map("sum", arrays)
        total = pool.apply("sum", sums).get_float()
        expected, sigma = n * m / 2, math.sqrt(n * m / 12)
        print(f"total = {total:.3f} (expected {expected:.1f} +- {6 * sigma:.1f})")
        if abs(total - expected) > 6 * sigma:
            sys.exit("total is off by more than 6 sigma")

        data = client.scatter(pa.array([1.0, 2.0, 3.0, 4.0]))
        mean = pool.apply("mean", data).get_float()
        print(f"mean of the scattered array = {mean}")
        if mean != 2.5:
            sys.exit("wrong mean")
    print("ok")


if __name__ == "__main__":
    main()
