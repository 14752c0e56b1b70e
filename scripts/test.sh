#!/usr/bin/env bash
# The project's test command: build, Rust tests, Python end-to-end tests.
#
#   scripts/test.sh
#
# Builds every binary and example (debug), runs the Rust tests (cargo nextest when installed,
# else cargo test; doctests with cargo test --doc), then `pytest tests/python` from the .venv
# (.ci/run creates it) with a per-test timeout. Both suites always run; the script fails if
# either fails. Tests find the binaries through SWITCHYARD_BIN_DIR and the venv through
# SWITCHYARD_VENV.
#
# Settings: PYTEST_TIMEOUT (seconds per test, default 300), PYTEST_ARGS (extra pytest
# arguments, e.g. "-k bench -x"), CARGO_TEST_ARGS (extra arguments for the Rust test runner).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

export SWITCHYARD_BIN_DIR="${SWITCHYARD_BIN_DIR:-$repo/target/debug}"
export SWITCHYARD_VENV="${SWITCHYARD_VENV:-$repo/.venv}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

step() { printf '\n==> %s\n' "$*"; }

step "cargo build --bins --examples"
cargo build --bins --examples

rust_rc=0
read -r -a cargo_test_args <<<"${CARGO_TEST_ARGS:-}"
if cargo nextest --version >/dev/null 2>&1; then
    # --examples too: the examples (canned_milvus) carry unit tests of their own.
    step "cargo nextest run --lib --bins --tests --examples"
    cargo nextest run --no-fail-fast --lib --bins --tests --examples "${cargo_test_args[@]}" || rust_rc=$?
    step "cargo test --doc"
    cargo test --doc || rust_rc=$((rust_rc ? rust_rc : $?))
else
    step "cargo test --lib --bins --tests --examples --doc (cargo-nextest not installed)"
    cargo test --no-fail-fast --lib --bins --tests --examples "${cargo_test_args[@]}" || rust_rc=$?
    cargo test --doc || rust_rc=$((rust_rc ? rust_rc : $?))
fi

py_rc=0
pytest_bin="$SWITCHYARD_VENV/bin/pytest"
if [[ ! -x $pytest_bin ]]; then
    echo "test.sh: $pytest_bin not found; run .ci/run (or create the venv it describes)" >&2
    py_rc=1
else
    read -r -a pytest_args <<<"${PYTEST_ARGS:-}"
    if "$SWITCHYARD_VENV/bin/python" -c 'import pytest_timeout' 2>/dev/null; then
        pytest_args+=(--timeout="${PYTEST_TIMEOUT:-300}")
    else
        echo "test.sh: pytest-timeout is not installed in $SWITCHYARD_VENV; tests run without a timeout" >&2
    fi
    step "pytest tests/python"
    "$pytest_bin" tests/python -q -rs "${pytest_args[@]}" || py_rc=$?
    if ((py_rc == 5)); then
        echo "test.sh: pytest collected no tests" >&2
        py_rc=0
    fi
fi

step "summary"
echo "rust tests: $([[ $rust_rc == 0 ]] && echo passed || echo "FAILED (exit $rust_rc)")"
echo "python tests: $([[ $py_rc == 0 ]] && echo passed || echo "FAILED (exit $py_rc)")"
((rust_rc == 0 && py_rc == 0))
