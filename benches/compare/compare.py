"""The seed workload and tiny-task throughput on dask.distributed, Ray (when
installed) and Quiver, on this machine in one go; prints the ratios and writes
JSON. Run through compare.sh, which builds Quiver and makes the venv.

Seed workload: N arrays of M random float64s, each summed, the sums summed.
dask: LocalCluster, 4 worker processes x 1 thread, via delayed and via
client.map. Ray: 4 CPUs, tasks. Quiver: `quiver local --workers 4`, all five
approaches. Tiny tasks: T no-op tasks mapped and gathered.

Usage: python compare.py --quiver BIN --seed BIN --bench BIN
                         [--arrays N] [--size M] [--rounds R] [--tiny T]
                         [--json FILE] [--quick] [--no-ray]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np


def noop(x):
    return x


def random_array(seed, m):
    # A generator per array: worker processes may start from one global
    # random state, and arrays drawn from it would be correlated.
    return np.random.default_rng(seed).random(m)


def array_sum(a):
    return float(np.sum(a))


def median_time(fn, rounds):
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def check(total, n, m):
    # 40 sigma: loose enough never to fail by chance, tight enough that a lost
    # array (M/2 off) shows.
    expected = n * m / 2
    if abs(total - expected) > 40 * (n * m / 12) ** 0.5:
        raise SystemExit(f"wrong total {total}, expected about {expected}")


def run_dask(n, m, rounds, tiny):
    from dask import delayed
    from dask.distributed import Client, LocalCluster

    rows = []
    with LocalCluster(n_workers=4, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:

        def via_delayed():
            sums = [delayed(np.sum)(delayed(random_array)(i, m)) for i in range(n)]
            check(delayed(sum)(sums).compute(), n, m)

        def via_map():
            arrays = client.map(random_array, range(n), [m] * n, pure=False)
            sums = client.map(np.sum, arrays)
            del arrays
            check(client.submit(sum, sums).result(), n, m)

        for name, fn in [("delayed", via_delayed), ("map", via_map)]:
            fn()  # warm the workers
            secs, runs = median_time(fn, rounds)
            rows.append({"system": "dask", "workload": "seed", "approach": name,
                         "seconds": secs, "runs": runs})

        def tiny_map():
            futures = client.map(noop, range(tiny), pure=False)
            client.gather(futures)

        tiny_map()
        secs, runs = median_time(tiny_map, rounds)
        rows.append({"system": "dask", "workload": "tiny", "approach": "map",
                     "tasks": tiny, "seconds": secs, "tasks_per_sec": tiny / secs,
                     "runs": runs})
    return rows


def run_ray(n, m, rounds, tiny):
    try:
        import ray
    except ImportError:
        print("Ray is not installed: left out", file=sys.stderr)
        return []
    ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR")
    rows = []
    try:
        rand = ray.remote(random_array)
        npsum = ray.remote(array_sum)
        rnoop = ray.remote(noop)

        def seed():
            # The array refs are dropped as soon as their sum is submitted, so
            # Ray frees each array after its sum (as dask and Quiver do).
            sums = [npsum.remote(rand.remote(i, m)) for i in range(n)]
            check(sum(ray.get(sums)), n, m)

        def tiny_map():
            ray.get([rnoop.remote(i) for i in range(tiny)])

        seed()
        secs, runs = median_time(seed, rounds)
        rows.append({"system": "ray", "workload": "seed", "approach": "tasks",
                     "seconds": secs, "runs": runs})
        tiny_map()
        secs, runs = median_time(tiny_map, rounds)
        rows.append({"system": "ray", "workload": "tiny", "approach": "tasks",
                     "tasks": tiny, "seconds": secs, "tasks_per_sec": tiny / secs,
                     "runs": runs})
    finally:
        ray.shutdown()
    return rows


def run_quiver(args):
    local = subprocess.Popen([args.quiver, "local", "--workers", "4", "--port", "0"],
                             stdout=subprocess.PIPE, text=True)
    rows = []
    try:
        address = None
        for line in local.stdout:
            if line.startswith("quiver cluster at "):
                address = line.split()[3]
                break
        if address is None:
            raise SystemExit("quiver local did not start")
        runs = {}
        for r in range(args.rounds + 1):  # the first round warms the workers
            out = subprocess.run(
                [args.seed, "--scheduler", address, "--json",
                 "--arrays", str(args.arrays), "--size", str(args.size)],
                check=True, capture_output=True, text=True).stdout
            for line in out.splitlines():
                row = json.loads(line)
                if r > 0:
                    runs.setdefault(row["approach"], []).append(row["seconds"])
        for approach, times in runs.items():
            rows.append({"system": "quiver", "workload": "seed", "approach": approach,
                         "seconds": statistics.median(times), "runs": times})
    finally:
        local.terminate()
        local.wait()
    # Tiny tasks: the overhead bench's pool map through its own center and 4 workers.
    path = os.path.join(os.path.dirname(os.path.abspath(args.json)), "compare-overhead.json")
    subprocess.run([args.bench, "overhead", "--map", str(args.tiny), "--graph", "0",
                    "--rounds", str(args.rounds), "--quiver", args.quiver, "--json", path],
                   check=True, stdout=subprocess.DEVNULL)
    with open(path) as f:
        m = next(r for r in json.load(f) if r["scenario"] == "map")
    rows.append({"system": "quiver", "workload": "tiny", "approach": "pool map",
                 "tasks": m["tasks"], "seconds": m["seconds"],
                 "tasks_per_sec": m["tasks_per_sec"], "runs": m["runs"]})
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--quiver", required=True)
    p.add_argument("--seed", required=True)
    p.add_argument("--bench", required=True)
    p.add_argument("--arrays", type=int)
    p.add_argument("--size", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int)
    p.add_argument("--tiny", type=int)
    p.add_argument("--json", default="target/compare.json")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-ray", action="store_true", help="leave Ray out even if installed")
    args = p.parse_args()
    args.arrays = args.arrays or (100 if args.quick else 1000)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.tiny = args.tiny or (2000 if args.quick else 20000)
    n, m = args.arrays, args.size

    rows = run_quiver(args) + run_dask(n, m, args.rounds, args.tiny)
    if not args.no_ray:
        rows += run_ray(n, m, args.rounds, args.tiny)
    with open(args.json, "w") as f:
        json.dump(rows, f, indent=2)

    print(f"seed workload, N={n} arrays x M={m} floats, medians of {args.rounds}:")
    seed = [r for r in rows if r["workload"] == "seed"]
    for r in seed:
        print(f"  {r['system']:<7} {r['approach']:<9} {r['seconds']:8.3f} s")
    best = {s: min((r["seconds"] for r in seed if r["system"] == s), default=None)
            for s in ("quiver", "dask", "ray")}
    for other in ("dask", "ray"):
        if best[other] is not None:
            print(f"  Quiver's best is {best[other] / best['quiver']:.1f}x faster than {other}'s best")
    print(f"tiny tasks, {args.tiny} no-ops mapped and gathered:")
    tiny = {r["system"]: r["tasks_per_sec"] for r in rows if r["workload"] == "tiny"}
    for s, v in tiny.items():
        print(f"  {s:<7} {v:10.0f} tasks/s")
    for other in ("dask", "ray"):
        if other in tiny:
            print(f"  Quiver does {tiny['quiver'] / tiny[other]:.0f}x {other}'s tasks/s")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
