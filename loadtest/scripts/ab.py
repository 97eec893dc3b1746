#!/usr/bin/env python3
"""A/B of stagegate builds: alternates the given binaries round by round on the same
setup (ab-setup.sh: backend and load generator on core 0, stagegate on core 1) and
prints each run and the medians of req/s, p99 and stagegate's CPU time per request.

    cp target/release/stagegate /tmp/sg-before   # ... change, rebuild ...
    loadtest/scripts/ab.py 5 64 /tmp/sg-before target/release/stagegate

Arguments: rounds, connections, binaries; RATE=N in the environment makes the
load open loop at N requests/s. Run from the repository root after
`cargo build --release --workspace`. A manual benchmarking aid, not a test."""
import json, os, statistics, subprocess, sys

rounds, conns, bins = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
WORK = os.environ.setdefault('WORK', '/tmp/stagegate-ab')
L = os.path.join(os.environ.get('TARGET', 'target/release'), 'loadtest')
SETUP = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'ab-setup.sh')
url = os.environ.get('URL', 'http://127.0.0.1:19000/v2/models/m/infer')
res = {b: [] for b in bins}


def cpu_ticks(pid):
    fields = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()
    return int(fields[11]) + int(fields[12])


def load(duration, json_out=False):
    cmd = ['taskset', '-c', '0', L, 'run', '--url', url, '--connections', str(conns),
           '--duration', duration, '--warmup', '0s'] + (['--json'] if json_out else [])
    if os.environ.get('RATE'):
        cmd += ['--rate', os.environ['RATE']]
    return subprocess.run(cmd, capture_output=True, text=True).stdout


for _ in range(rounds):
    for b in bins:
        subprocess.run([SETUP], env=dict(os.environ, SG=b), capture_output=True)
        pid = subprocess.run(['pgrep', '-f', f'serve --config {WORK}/sg.toml'],
                             capture_output=True, text=True).stdout.split()[0]
        load('1s')
        t0 = cpu_ticks(pid)
        d = json.loads(load('5s', json_out=True))
        t1 = cpu_ticks(pid)
        # clock ticks are 10 ms: ticks * 10,000 µs / requests
        row = (d['rps'], d['latency_ms']['p99'], (t1 - t0) * 10000 / max(1, d['successes']))
        res[b].append(row)
        print('%-24s rps=%7.0f p99=%5.2fms cpu_us/req=%.2f' % ((b,) + row), flush=True)
subprocess.run(['pkill', '-f', f'serve --config {WORK}/sg.toml'])
subprocess.run(['pkill', '-f', 'backend --listen 127.0.0.1:1900'])
print('--- medians')
for b, rows in res.items():
    print('%-24s rps=%7.0f p99=%5.2fms cpu_us/req=%.2f' % (
        b, statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows),
        statistics.median(r[2] for r in rows)))
