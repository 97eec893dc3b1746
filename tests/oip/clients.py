"""The official Open Inference Protocol clients, through stagegate and directly
against the model server, for tests/oip.rs:

    clients.py --gateway HOST:PORT --direct HOST:PORT --model NAME --requests N

Prints one JSON object: for every check, what the client got through the
gateway and directly. The Rust test asserts on it; this script decides nothing.
"""

import asyncio
import json

import numpy as np
from cli import parse_args
import tritonclient.http as triton_http
from kserve import InferenceGRPCClient, InferenceRESTClient, RESTConfig
from kserve.protocol.infer_type import InferInput, InferRequest


def tensor(i: int) -> np.ndarray:
    # No zeros: an offset within the relative tolerance is a large one near 0.
    return np.array([[1.5 + i, 2.25, -3.0 * (i + 1)]], dtype=np.float32)


def triton_checks(address: str, model: str, requests: int) -> dict:
    client = triton_http.InferenceServerClient(address)
    results = {
        "server_live": client.is_server_live(),
        "server_ready": client.is_server_ready(),
        "server_metadata": client.get_server_metadata(),
        "model_ready": [client.is_model_ready(model) for _ in range(requests)],
        "model_metadata": client.get_model_metadata(model),
    }
    for encoding, binary in (("json", False), ("binary", True)):
        answers = []
        for i in range(requests):
            x = tensor(i)
            infer_input = triton_http.InferInput("x", list(x.shape), "FP32")
            infer_input.set_data_from_numpy(x, binary_data=binary)
            output = triton_http.InferRequestedOutput("sum", binary_data=binary)
            # tritonclient sends JSON without a content type, which KServe's
            # server reads as binary; the header is what a KServe user adds.
            headers = None if binary else {"Content-Type": "application/json"}
            result = client.infer(model, [infer_input], outputs=[output], headers=headers)
            answers.append(result.as_numpy("sum").tolist())
        results[f"infer_{encoding}"] = answers
    client.close()
    return results


async def kserve_checks(address: str, model: str, requests: int) -> dict:
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=20))
    base = f"http://{address}"
    results = {
        "server_live": await client.is_server_live(base),
        "server_ready": await client.is_server_ready(base),
        "model_ready": await client.is_model_ready(base, model),
    }
    answers = []
    for i in range(requests):
        x = tensor(i)
        infer_input = InferInput(name="x", shape=list(x.shape), datatype="FP32")
        infer_input.set_data_from_numpy(x, binary_data=False)
        request = InferRequest(model_name=model, infer_inputs=[infer_input], request_id=str(i))
        response = await client.infer(base, request, model_name=model)
        answers.append(response.outputs[0].as_numpy().tolist())
    results["infer"] = answers
    await client.close()
    return results


async def kserve_grpc_checks(address: str, model: str, requests: int) -> dict:
    client = InferenceGRPCClient(address, retries=0, timeout=20)
    results = {
        "server_live": await client.is_server_live(),
        "server_ready": await client.is_server_ready(),
        "model_ready": await client.is_model_ready(model),
    }
    answers = []
    for i in range(requests):
        x = tensor(i)
        infer_input = InferInput(name="x", shape=list(x.shape), datatype="FP32")
        infer_input.set_data_from_numpy(x)
        request = InferRequest(model_name=model, infer_inputs=[infer_input], request_id=str(i))
        response = await client.infer(request)
        answers.append(response.outputs[0].as_numpy().tolist())
    results["infer"] = answers
    await client.close()
    return results


def main():
    args = parse_args()
    report = {}
    gateway_grpc = args.gateway if args.direct_grpc else None
    sides = (("gateway", args.gateway, gateway_grpc), ("direct", args.direct, args.direct_grpc))
    for side, address, grpc_address in sides:
        report[side] = {
            "tritonclient": triton_checks(address, args.model, args.requests),
            "kserve": asyncio.run(kserve_checks(address, args.model, args.requests)),
        }
        if grpc_address:
            checks = kserve_grpc_checks(grpc_address, args.model, args.requests)
            report[side]["kserve_grpc"] = asyncio.run(checks)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
