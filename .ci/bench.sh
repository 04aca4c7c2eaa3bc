#!/usr/bin/env bash
# The benchmark matrix (`make bench`): the same MCP load directly against a
# fixture server and through relay → tunnel → agent on every transport, each
# a separate process, plus large results and memory per idle session. Prints
# a Markdown report; bin/bench/bench.md and bin/bench/bench.json keep it.
#
#   make bench                          full matrix and the paced section (3 interleaved rounds per cell), about 9 minutes
#   make bench BENCH_FLAGS=--quick      a fast sanity run
#   make bench BENCH_FLAGS='--baseline OLD/mcptun'   this build and an older one, same rounds
#   make bench BENCH_FLAGS=--lossy      also the lossy-link comparison (root)
#   make bench-lossy                    only the lossy-link comparison (root)
#   bash .ci/bench.sh --help            every flag
#
# Expects bin/mcptun (make bench builds it first); builds the fixture server
# and the harness itself.
set -euo pipefail
cd "$(dirname "$0")/.."

GO=${GO:-go}
OUT=${BENCH_OUT:-bin/bench}
mkdir -p bin "$OUT"
if [ ! -x bin/mcptun ]; then
	echo "bench: bin/mcptun missing; run 'make bench' (which builds it)" >&2
	exit 1
fi
"$GO" build -trimpath -o bin/mcptest-server ./internal/mcptest/cmd/mcptest-server
"$GO" build -trimpath -o bin/benchmatrix ./internal/benchmatrix/cmd/benchmatrix

# The lossy section creates this network namespace and removes it on every
# exit path it sees; the trap covers the ones it cannot (SIGKILL of the
# harness). Only this name is ever touched.
ns="mcptunbench-$$"
pid=""
cleanup() {
	if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	fi
	if command -v ip >/dev/null 2>&1 && [ -e "/run/netns/$ns" ]; then
		ip netns del "$ns" || true
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bin/benchmatrix --mcptun bin/mcptun --fixture bin/mcptest-server --out "$OUT" --lossy-netns "$ns" "$@" &
pid=$!
wait "$pid"
