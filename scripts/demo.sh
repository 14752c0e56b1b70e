#!/usr/bin/env bash
# The live demo: two local clusters (milvus-standin over milvus-lite) replicating A→B,
# switchyard in front, pymilvus traffic through it, one live switchover and a drill.
# Needs .venv (pymilvus + milvus-lite); `.ci/run` creates it, or:
#   python3 -m venv .venv && .venv/bin/pip install "pymilvus==2.6.17" "milvus-lite==3.2.2"
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q "pymilvus==2.6.17" "milvus-lite==3.2.2" requests
fi
cargo build -q --bins
exec .venv/bin/python scripts/demo.py "$@"
