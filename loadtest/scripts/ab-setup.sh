#!/bin/bash
# Starts one fake backend (and, with SHADOW set, a staging backend: SHADOW=" " for a
# healthy one, SHADOW="--mode hang" for a hanging one) on core 0 and the stagegate
# binary $SG (default target/release/stagegate) with one worker on core 1, on fixed
# ports 19000 (data), 19009 (admin), 19001 and 19003 (backends). Used by ab.py.
# This is a manual benchmarking aid, not a test.
WORK=${WORK:-/tmp/stagegate-ab}
B=${TARGET:-target/release}
pkill -f "backend --listen 127.0.0.1:1900" ; pkill -f "serve --config $WORK/sg.toml"; sleep 0.3
mkdir -p "$WORK"
taskset -c 0 $B/loadtest backend --listen 127.0.0.1:19001 > "$WORK/backend.log" 2>&1 &
if [ -n "$SHADOW" ]; then taskset -c 0 $B/loadtest backend --listen 127.0.0.1:19003 $SHADOW > "$WORK/backend2.log" 2>&1 & fi
sleep 0.3
cat > "$WORK/sg.toml" <<EOT
[server]
listen = "127.0.0.1:19000"
admin_listen = "127.0.0.1:19009"
worker_threads = 1
state_dir = "$WORK/state"
request_timeout_ms = 30000

[[models]]
name = "m"
[[models.versions]]
version = "1"
stage = "production"
endpoints = ["http://127.0.0.1:19001"]
[[models.versions]]
version = "2"
stage = "staging"
endpoints = ["http://127.0.0.1:19003"]
EOT
if [ -n "$SHADOW" ]; then printf '\n[models.shadow]\npercent = 100.0\ntimeout_ms = 2000\nmax_in_flight = 256\n' >> "$WORK/sg.toml"; fi
rm -rf "$WORK/state"
taskset -c 1 ${SG:-$B/stagegate} serve --config "$WORK/sg.toml" > "$WORK/sg.log" 2>&1 &
sleep 0.5
