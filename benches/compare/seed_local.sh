#!/usr/bin/env bash
# The seed workload on `quiver local --workers 4` against the embedded cluster,
# in alternating rounds; prints each approach's median on both, its ratio to
# the same approach embedded, and its ratio to the embedded graph run.
#
#   bash benches/compare/seed_local.sh [ROUNDS] [QUIVER_BIN] [SEED_BIN]
#
# QUIVER_BIN (default target/release/quiver) and SEED_BIN (default
# target/release/examples/seed) let another build run, its seed client
# speaking its cluster's protocol version; without SEED_BIN the release
# binaries are built first. SEED_ARGS (e.g. "--arrays 8 --size 10000") goes to
# every seed run: the test suite's smoke run sets it.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-5}
quiver=${2:-target/release/quiver}
if [ -z "${3:-}" ]; then
    cargo build --release --bin quiver --example seed >&2
fi
seed=${3:-target/release/examples/seed}
read -r -a sizes <<<"${SEED_ARGS:-}"
out=$(mktemp)
log=$(mktemp)
"$quiver" local --workers 4 --port 0 >"$log" 2>/dev/null &
cluster=$!
trap 'kill -TERM $cluster 2>/dev/null; wait $cluster 2>/dev/null; rm -f "$out" "$log"' EXIT
address=
for _ in $(seq 100); do
    address=$(sed -n 's/^quiver cluster at \([^ ]*\).*/\1/p' "$log")
    [ -n "$address" ] && break
    kill -0 $cluster 2>/dev/null || break
    sleep 0.1
done
if [ -z "$address" ]; then
    echo "quiver local did not start" >&2
    exit 1
fi
"$seed" "${sizes[@]}" --scheduler "$address" --approach graph >/dev/null # warm-up
for _ in $(seq "$rounds"); do
    "$seed" "${sizes[@]}" --scheduler "$address" --approach graph --approach delayed \
        --approach array --approach pool --approach mix | sed 's/^/local /' >>"$out"
    "$seed" "${sizes[@]}" --approach graph --approach delayed --approach array --approach pool \
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
