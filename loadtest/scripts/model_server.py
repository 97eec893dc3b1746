#!/usr/bin/env python3
"""A fake model server for `loadtest rollouts`: Python's threaded HTTP server,
noisy the way real Python model servers are (interpreter, GIL, scheduler), with
a lognormal latency, occasional pauses ten times as long, and an error rate.

Answers every POST with an Open Inference Protocol style JSON answer (or a 500),
and GET /v2/health/ready with 200. Prints "listening on HOST:PORT" once bound
(port 0 picks a free one) and runs until SIGTERM or SIGINT. Standard library
only.
"""

import argparse
import json
import math
import random
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--name", default="model", help="model_name in answers")
    parser.add_argument("--median-ms", type=float, default=10.0)
    parser.add_argument("--sigma", type=float, default=0.4, help="lognormal sigma")
    parser.add_argument("--pause-rate", type=float, default=0.005,
                        help="share of requests that pause ten times as long")
    parser.add_argument("--slowdown", type=float, default=1.0,
                        help="every latency times this")
    parser.add_argument("--error-rate", type=float, default=0.001,
                        help="share of requests answered 500")
    return parser.parse_args()


def handler_for(args):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # The head and the body are two writes: without this, Nagle's algorithm
        # holds the body back until the client's delayed ACK, 40 ms later.
        disable_nagle_algorithm = True

        def log_message(self, format, *values):  # noqa: A002 - the base's name
            pass

        def reply(self, status, payload):
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self.reply(200, {"name": args.name, "ready": True})

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            request = json.loads(self.rfile.read(length) or b"{}")
            latency = args.median_ms * math.exp(args.sigma * random.gauss(0.0, 1.0))
            if random.random() < args.pause_rate:
                latency *= 10.0
            time.sleep(latency * args.slowdown / 1000.0)
            if random.random() < args.error_rate:
                self.reply(500, {"error": "injected failure"})
                return
            inputs = request.get("inputs") or request.get("instances") or []
            self.reply(200, {
                "model_name": args.name,
                "outputs": [{"name": "score", "datatype": "FP32", "shape": [1],
                             "data": [0.5 + 0.01 * len(inputs)]}],
            })

    return Handler


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client (the gateway's pool) closing a kept-alive connection is normal.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def main():
    args = parse_args()
    server = Server((args.host, args.port), handler_for(args))

    def stop(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = server.server_address[:2]
    print(f"listening on {host}:{port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
