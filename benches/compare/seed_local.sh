#!/usr/bin/env bash
# The seed workload on `quiver local --workers 4` against the embedded cluster,
# in alternating rounds; prints each approach's median on both, its ratio to
# the same approach embedded, and its ratio to the embedded graph run.
#
#   bash benches/compare/seed_local.sh [ROUNDS] [QUIVER_BIN] [SEED_BIN]
#
# Builds the release binaries first; QUIVER_BIN (default target/release/quiver)
# and SEED_BIN (default target/release/examples/seed) let another build run,
# its seed client speaking its cluster's protocol version.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-5}
quiver=${2:-target/release/quiver}
port=8797
cargo build --release --bin quiver --example seed >&2
seed=${3:-target/release/examples/seed}
out=$(mktemp)
"$quiver" local --workers 4 --port "$port" >/dev/null 2>&1 &
cluster=$!
trap 'kill -TERM $cluster 2>/dev/null; wait $cluster 2>/dev/null; rm -f "$out"' EXIT
for _ in $(seq 50); do
    "$quiver" status "127.0.0.1:$port" >/dev/null 2>&1 && break
    sleep 0.2
done
"$seed" --scheduler "127.0.0.1:$port" --approach graph >/dev/null # warm-up
for _ in $(seq "$rounds"); do
    "$seed" --scheduler "127.0.0.1:$port" --approach graph --approach delayed \
        --approach array --approach pool --approach mix | sed 's/^/local /' >>"$out"
    "$seed" --approach graph --approach delayed --approach array --approach pool \
        --approach mix | sed 's/^/embedded /' >>"$out"
done
awk '
    { split($NF, kv, "="); t[$1 " " $2] = t[$1 " " $2] " " kv[2] }
    function median(list,    v, n, i, j, x) {
        n = split(list, v, " ")
        for (i = 2; i <= n; i++) { x = v[i]; for (j = i - 1; j >= 1 && v[j] > x; j--) v[j + 1] = v[j]; v[j + 1] = x }
        return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
    }
    END {
        g = median(t["embedded graph"])
        printf "%-8s %10s %10s %8s %14s\n", "approach", "embedded", "local", "ratio", "ratio to graph"
        split("graph delayed array pool mix", a, " ")
        for (i = 1; i <= 5; i++) {
            e = median(t["embedded " a[i]]); m = median(t["local " a[i]])
            printf "%-8s %9.3fs %9.3fs %8.2f %14.2f\n", a[i], e, m, m / e, m / g
        }
    }' "$out"
