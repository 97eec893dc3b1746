#!/bin/bash
# Instructions per request of a stagegate binary in user space (all its threads),
# counted by valgrind's callgrind: deterministic to about 0.2% between repeats, where
# CPU time on this kind of shared 2-core host moves by 10-20% from run to run. Use it
# beside ab.py to A/B a change to the request path (it does not see the kernel, or
# cache misses).
#
#     loadtest/scripts/instructions.sh target/release/stagegate 20000
#
# Arguments: binary, requests (default 20000), connections (default 16). Runs the
# fake backend on 127.0.0.1:19501 and the gateway (one worker) on 19500/19509, warms
# up with 2,000 requests, then counts the instructions of the measured ones.
# Needs valgrind (apt-get install -y valgrind) and `cargo build --release --workspace`.
# A manual benchmarking aid, not a test.
set -e
BIN=${1:?usage: instructions.sh BINARY [REQUESTS] [CONNECTIONS]}
N=${2:-20000}
C=${3:-16}
L=${TARGET:-target/release}/loadtest
W=$(mktemp -d /tmp/stagegate-instructions.XXXXXX)
command -v valgrind > /dev/null || { echo "valgrind is missing: apt-get install -y valgrind" >&2; exit 1; }
$L backend --listen 127.0.0.1:19501 > "$W/backend.log" 2>&1 &
BACKEND=$!
cat > "$W/sg.toml" <<EOT
[server]
listen = "127.0.0.1:19500"
admin_listen = "127.0.0.1:19509"
worker_threads = 1
state_dir = "$W/state"

[[models]]
name = "m"
[[models.versions]]
version = "1"
stage = "production"
endpoints = ["http://127.0.0.1:19501"]
EOT
valgrind --tool=callgrind --callgrind-out-file="$W/callgrind.%p" "$BIN" serve --config "$W/sg.toml" > "$W/sg.log" 2>&1 &
GATEWAY=$!
trap 'kill $GATEWAY $BACKEND 2> /dev/null; rm -rf "$W"' EXIT
URL=http://127.0.0.1:19500/v2/models/m/infer
for _ in $(seq 1 100); do
    curl -s -o /dev/null -X POST -d '{}' $URL && break
    sleep 0.3
done
$L run --url $URL --connections "$C" --requests 2000 --warmup 0s > /dev/null
callgrind_control --zero $GATEWAY > /dev/null 2>&1
$L run --url $URL --connections "$C" --requests "$N" --warmup 0s | grep requests
callgrind_control --dump $GATEWAY > /dev/null 2>&1
COUNTED=$(grep -h '^summary:' "$W"/callgrind.$GATEWAY.1 | awk '{print $2}')
echo "instructions per request: $((COUNTED / N)) ($COUNTED over $N requests)"
