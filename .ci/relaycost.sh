#!/bin/bash
# What each further relay costs an agent: RSS, heap in use and goroutines of
# an idle agent with tunnels to 1, 2 and 11 relays (all on 127.0.0.1).
# Usage: .ci/relaycost.sh [quic|tcp]   (from the repository root)
set -eu
T=${1:-quic}
ROOT=$(pwd)
D=$(mktemp -d)
pids=()
ap=
cleanup() {
	[ -n "$ap" ] && kill "$ap" 2>/dev/null || true
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$D"
}
trap cleanup EXIT
go build -o "$D/mcptun" "$ROOT/cmd/mcptun"
go build -o "$D/mcptest-server" "$ROOT/internal/mcptest/cmd/mcptest-server"
cd "$D"
# waitlog FILE PATTERN COUNT: wait (at most 20 s) until FILE has COUNT lines matching PATTERN.
waitlog() {
	for _ in $(seq 200); do
		[ "$(grep -c "$2" "$1" 2>/dev/null || true)" -ge "$3" ] && return 0
		sleep 0.1
	done
	echo "no $3 lines matching '$2' in $1" >&2
	cat "$1" >&2
	exit 1
}
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout relay.key -out relay.crt \
	-days 1 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 2>/dev/null
chmod 600 relay.key relay.crt
printf 'agent-secret-0123456789\n' >agent.token
chmod 600 agent.token
H=$(printf 'agent-secret-0123456789' | sha256sum | cut -d' ' -f1)
C=$(printf 'client' | sha256sum | cut -d' ' -f1)
addrs=()
for i in $(seq 11); do
	cat >relay$i.yaml <<Y
tunnel: {listen: "127.0.0.1:0", cert_file: relay.crt, key_file: relay.key}
http: {listen: "127.0.0.1:0"}
agents: [{name: dc1, token_sha256: "$H"}]
clients: [{name: ci, token_sha256: "$C", allow: ["dc1/*"]}]
Y
	chmod 600 relay$i.yaml
	./mcptun relay -c relay$i.yaml >relay$i.log 2>&1 &
	pids+=($!)
done
for i in $(seq 11); do
	waitlog relay$i.log 'relay started' 1
	addrs+=("$(grep -o 'tunnel=[^ ]*' relay$i.log | cut -d= -f2)")
done
for n in 1 2 11; do
	list=$(printf '"%s", ' "${addrs[@]:0:$n}")
	list=${list%, }
	cat >agent$n.yaml <<Y
name: dc1
relay: {address: [$list], token_file: agent.token, ca_file: relay.crt, transport: $T}
servers: [{name: notes, command: ["$D/mcptest-server", "--stdio"]}]
debug: {pprof_listen: "127.0.0.1:0"}
Y
	chmod 600 agent$n.yaml
	./mcptun agent -c agent$n.yaml >agent$n.log 2>&1 &
	ap=$!
	waitlog agent$n.log 'tunnel: relay up' "$n"
	sleep 5 # a settled runtime, not a condition: the figures are of an idle agent
	dbg=$(grep -o 'pprof listening" addr=http://[^/]*' agent$n.log | sed 's|.*http://||')
	g=$(curl -s "http://$dbg/debug/pprof/goroutine?debug=1" | head -1 | sed 's/goroutine profile: total /goroutines=/')
	heap=$(curl -s "http://$dbg/debug/pprof/heap?debug=1&gc=1" | grep -E '^# HeapInuse =' | sed 's/# HeapInuse = /heap_inuse=/')
	rss=$(awk '/VmRSS/ {print $2}' /proc/$ap/status)
	echo "$T relays=$n rss_kb=$rss $g $heap"
	kill $ap
	wait $ap 2>/dev/null || true
	ap=
done
