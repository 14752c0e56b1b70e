#!/usr/bin/env bash
# Side-by-side benchmark of gRPC proxies in front of one canned Milvus upstream:
# direct, switchyard, haproxy and nginx, each proxy on one thread or worker.
#
#   scripts/bench-compare.sh                       # full run, prints a markdown table for BENCHMARKS.md
#   BENCH_QUICK=1 scripts/bench-compare.sh         # a small run (CI smoke, development)
#   BENCH_TARGETS=direct,haproxy,nginx scripts/bench-compare.sh
#
# Other settings: BENCH_JSON=PATH (results as JSON), BENCH_KEEP=1 (keep configs and logs),
# BENCH_BIN_DIR=DIR (use already built binaries, e.g. target/debug, instead of building
# target/release). Needs h2load and nghttp (Debian nghttp2-client), haproxy and nginx.
# The workloads and columns are described in scripts/bench_compare.py.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
targets=${BENCH_TARGETS:-direct,switchyard,haproxy,nginx}

if [[ -n ${BENCH_BIN_DIR:-} ]]; then
    bin_dir=$BENCH_BIN_DIR
else
    bin_dir=$repo/target/release
    build=(cargo build --release --example canned_milvus)
    [[ ,$targets, == *,switchyard,* ]] && build+=(--bin switchyard)
    echo "bench: ${build[*]}" >&2
    (cd "$repo" && "${build[@]}")
fi

if [[ ! -x $bin_dir/examples/canned_milvus ]]; then
    echo "bench: $bin_dir/examples/canned_milvus is missing (cargo build --example canned_milvus)" >&2
    exit 2
fi

helper_pid=
# shellcheck disable=SC2317  # called through the trap
cleanup() {
    # The helper kills what it started; this covers the helper itself being interrupted.
    if [[ -n $helper_pid ]] && kill -0 "$helper_pid" 2>/dev/null; then
        kill -TERM "$helper_pid" 2>/dev/null || true
        wait "$helper_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# In the background so that this shell can act on signals while the helper runs.
BENCH_TARGETS=$targets python3 "$repo/scripts/bench_compare.py" --bin-dir "$bin_dir" &
helper_pid=$!
rc=0
wait "$helper_pid" || rc=$?
helper_pid=
exit "$rc"
