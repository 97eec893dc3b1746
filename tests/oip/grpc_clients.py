"""tritonclient's gRPC client through stagegate and directly against the model
server, for tests/oip.rs (apart from clients.py: tritonclient.grpc and kserve
register the same protobufs, so one process cannot import both):

    grpc_clients.py --gateway HOST:PORT --direct HOST:PORT --model NAME --requests N

Prints one JSON object: every check's result through the gateway and directly,
and the statuses of calls the gateway must refuse. The Rust test asserts on it.
"""

import json

import numpy as np
from cli import parse_args
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def tensor(i: int) -> np.ndarray:
    return np.array([[1.5 + i, 2.25, -3.0 * (i + 1)]], dtype=np.float32)


def infer(client, model: str, i: int, **options):
    x = tensor(i)
    infer_input = grpcclient.InferInput("x", list(x.shape), "FP32")
    infer_input.set_data_from_numpy(x)
    return client.infer(model, [infer_input], **options).as_numpy("sum").tolist()


def checks(address: str, model: str, requests: int) -> dict:
    client = grpcclient.InferenceServerClient(address)
    results = {
        "server_live": client.is_server_live(),
        "server_ready": client.is_server_ready(),
        "server_metadata": client.get_server_metadata(as_json=True),
        "model_ready": [client.is_model_ready(model) for _ in range(requests)],
        "model_metadata": client.get_model_metadata(model, as_json=True),
        "infer": [infer(client, model, i) for i in range(requests)],
        "infer_gzip": [
            infer(client, model, i, compression_algorithm="gzip") for i in range(requests)
        ],
    }
    client.close()
    return results


def status_of(call) -> str:
    try:
        call()
        return "OK"
    except InferenceServerException as error:
        return f"{error.status()}: {error.message()}"


def refusals(address: str, model: str) -> dict:
    client = grpcclient.InferenceServerClient(address)
    results = {
        "unknown_model": status_of(lambda: infer(client, "no-such-model", 0)),
        "archived_pin": status_of(lambda: infer(client, model, 0, model_version="0")),
        "no_grpc_endpoints": status_of(lambda: infer(client, "http-only", 0)),
        "pinned_staging": infer(client, model, 0, model_version="2"),
        "stage_pin_header": infer(client, model, 0, headers={"x-stagegate-stage": "staging"}),
        "with_client_timeout": infer(client, model, 0, client_timeout=30),
    }
    client.close()
    return results


def main():
    args = parse_args()
    report = {
        "gateway": checks(args.gateway, args.model, args.requests),
        "direct": checks(args.direct, args.model, args.requests),
        "refusals": refusals(args.gateway, args.model),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
