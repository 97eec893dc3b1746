"""Drives the official `openai` Python SDK against the gateway and against the
model server directly, and prints what each saw as JSON, for tests/llm.rs to
compare: the gateway must be invisible to the SDK."""

import argparse
import json

import openai


def calls(client, model):
    """The same calls against one base URL; what came back, as plain data."""
    seen = {}
    ask = [{"role": "user", "content": "what does stagegate do"}]
    chat = client.chat.completions.create(model=model, messages=ask, temperature=0)
    seen["chat"] = chat.model_dump()
    pieces, finish, chunks = [], None, 0
    for chunk in client.chat.completions.create(model=model, messages=ask, stream=True):
        chunks += 1
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    seen["stream"] = {"text": "".join(pieces), "finish_reason": finish, "chunks": chunks}
    usage = None
    for chunk in client.chat.completions.create(
        model=model, messages=ask, stream=True, stream_options={"include_usage": True}
    ):
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
    seen["stream_usage"] = usage
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    called = client.chat.completions.create(model=model, messages=ask, tools=tools)
    seen["tool_call"] = called.choices[0].message.tool_calls[0].model_dump()
    seen["completion"] = client.completions.create(model=model, prompt="hello there").model_dump()
    seen["embeddings"] = client.embeddings.create(model=model, input=["a b", "c"]).model_dump()
    seen["response"] = client.responses.create(model=model, input="hello there").output_text
    seen["models"] = [m.id for m in client.models.list()]
    return seen


def error_of(call):
    try:
        call()
    except openai.APIStatusError as error:
        body = error.body if isinstance(error.body, dict) else {}
        return {"class": type(error).__name__, "status": error.status_code,
                "code": body.get("code"), "message": str(error)}
    return None


def refusals(client):
    ask = [{"role": "user", "content": "hi"}]
    return {
        "unknown_model": error_of(lambda: client.chat.completions.create(model="nope", messages=ask)),
        "empty_pin": error_of(lambda: client.chat.completions.create(model="chat@", messages=ask)),
        "archived_stage": error_of(
            lambda: client.chat.completions.create(model="chat@archived", messages=ask)),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--direct", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--served", required=True)
    args = parser.parse_args()
    client = lambda base: openai.OpenAI(base_url=f"{base}/v1", api_key="test", max_retries=0)
    gateway, direct = client(args.gateway), client(args.direct)
    print(json.dumps({
        "gateway": calls(gateway, args.model),
        "direct": calls(direct, args.served),
        "refusals": refusals(gateway),
    }))


if __name__ == "__main__":
    main()
