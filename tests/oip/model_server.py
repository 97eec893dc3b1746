"""A tiny KServe ModelServer for the OIP end-to-end tests (tests/oip.rs): models
that add an offset to their FP32 input `x` and answer it as output `sum`, served
over KServe V1, V2 REST (JSON and binary tensors) and V2 gRPC.

    model_server.py --version 2 --http-port P --grpc-port Q --model adder=0 --model drift=0.5

KServe takes no port 0; the test picks free ports.
"""

import argparse
import logging

import numpy as np
from kserve import Model, ModelServer
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse


class Adder(Model):
    def __init__(self, name: str, version: str, offset: float):
        super().__init__(name)
        self.version = version
        self.offset = np.float32(offset)
        self.ready = True

    async def predict(self, payload, headers=None, response_headers=None):
        if isinstance(payload, InferRequest):
            data = payload.inputs[0].as_numpy().astype(np.float32)
            output = InferOutput(name="sum", shape=list(data.shape), datatype="FP32")
            output.set_data_from_numpy(data + self.offset, binary_data=False)
            # KServe encodes the outputs the client asked for as binary itself.
            return InferResponse(
                response_id=payload.id or "0",
                model_name=self.name,
                model_version=self.version,
                infer_outputs=[output],
                use_binary_outputs=payload.use_binary_outputs,
                requested_outputs=payload.request_outputs,
            )
        # KServe V1: {"instances": [[...], ...]}
        instances = np.asarray(payload["instances"], dtype=np.float32)
        return {"predictions": (instances + self.offset).tolist()}


def model(text: str):
    name, _, offset = text.partition("=")
    return name, float(offset or 0)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--version", required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--model", type=model, action="append", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    ModelServer(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        enable_latency_logging=False,
    ).start([Adder(name, args.version, offset) for name, offset in args.model])


if __name__ == "__main__":
    main()
