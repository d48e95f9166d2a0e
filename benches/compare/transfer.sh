#!/usr/bin/env bash
# Worker-to-worker transfer by route, next to pyarrow's own Flight (C++) in the
# same run. Creates target/pyenv with pyarrow from the package registry.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ ! -x target/pyenv/bin/python ] || ! target/pyenv/bin/python -c "import pyarrow.flight" 2>/dev/null; then
  python3 -m venv target/pyenv
  target/pyenv/bin/pip install --quiet pyarrow
fi
cargo bench --bench transfer -- --pyarrow "$PWD/target/pyenv/bin/python" "$@"
