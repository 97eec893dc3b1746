"""The arguments both client scripts of tests/oip/ take."""

import argparse


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gateway", required=True, help="HOST:PORT of stagegate")
    parser.add_argument("--direct", required=True, help="HOST:PORT of the model server")
    parser.add_argument("--model", required=True)
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--direct-grpc", help="HOST:PORT of the model server's gRPC listener")
    return parser.parse_args()
