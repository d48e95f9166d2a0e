#!/usr/bin/env bash
# Quiver against the systems users would pick instead, on this machine, in one
# go: the seed workload and tiny-task throughput on dask.distributed, Ray (when
# it installs) and Quiver, then pyarrow's own Flight next to Quiver's
# worker-to-worker route. Prints the ratios; JSON lands in target/.
#
#   benches/compare/compare.sh [--quick] [--arrays N] [--size M] [--rounds R] [--tiny T]
#   benches/compare/compare.sh --smoke BIN_DIR
#
# --smoke is the test suite's run: tiny sizes, one round, without Ray, on
# binaries already built in BIN_DIR (quiver, quiver-bench, examples/seed); of
# the transfer bench only pyarrow's half, one 8 MB fetch.
#
# Python packages come from the package registry into target/compare-env.
set -euo pipefail
cd "$(dirname "$0")/../.."
env=target/compare-env
smoke=
if [ "${1:-}" = --smoke ]; then
  smoke=${2:?--smoke takes the directory of built binaries}
fi
if [ ! -x "$env/bin/python" ] || ! "$env/bin/python" -c "import dask.distributed, pyarrow.flight, numpy" 2>/dev/null; then
  python3 -m venv "$env"
  "$env/bin/pip" install --quiet "dask[distributed]" numpy pyarrow
fi
if [ -n "$smoke" ]; then
  "$env/bin/python" benches/compare/compare.py \
    --quiver "$smoke/quiver" --seed "$smoke/examples/seed" --bench "$smoke/quiver-bench" \
    --json target/compare-smoke.json --arrays 8 --size 10000 --rounds 1 --tiny 100 --no-ray
  # The transfer bench's pyarrow half, alone: one size, one fetch.
  exec "$env/bin/python" benches/compare/pyarrow_flight.py --quick --reps 1
fi
# Ray is tried on every full run: a smoke run's venv has none.
if ! "$env/bin/python" -c "import ray" 2>/dev/null; then
  "$env/bin/pip" install --quiet ray || echo "Ray did not install: it is left out of the comparison"
fi
cargo build --release --locked --bins --example seed
"$env/bin/python" benches/compare/compare.py \
  --quiver target/release/quiver --seed target/release/examples/seed \
  --bench target/release/quiver-bench --json target/compare.json "$@"
quick=()
for a in "$@"; do [ "$a" = --quick ] && quick=(--quick); done
cargo bench --locked --bench transfer -- "${quick[@]}" --pyarrow "$PWD/$env/bin/python"
