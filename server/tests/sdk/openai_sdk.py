"""The official OpenAI Python SDK against a running Switchyard (started by server/tests/sdk.rs).

Environment: SWITCHYARD_BASE_URL (the gateway root), SWITCHYARD_CLIENT_KEY.
Exits non-zero on the first failed check.
"""

import json
import os

import openai

BASE = os.environ["SWITCHYARD_BASE_URL"]
KEY = os.environ["SWITCHYARD_CLIENT_KEY"]

client = openai.OpenAI(base_url=f"{BASE}/v1", api_key=KEY, max_retries=0, timeout=20)
MESSAGES = [{"role": "user", "content": "Say hello"}]


def check(name, condition, detail=""):
    if not condition:
        raise SystemExit(f"FAILED: {name}: {detail}")
    print(f"ok: {name}")


# Chat, non-stream.
completion = client.chat.completions.create(model="gpt-x", messages=MESSAGES)
check("chat content", completion.choices[0].message.content == "Hello from alpha", completion)
check("chat model", completion.model == "gpt-x", completion.model)
check("chat usage", completion.usage is not None and completion.usage.total_tokens == 12, completion.usage)
raw = client.chat.completions.with_raw_response.create(model="gpt-x", messages=MESSAGES)
check("switchyard headers", raw.headers.get("x-switchyard-provider") == "alpha", dict(raw.headers))

# Chat, streaming.
text = ""
chunks = 0
for chunk in client.chat.completions.create(model="gpt-x", messages=MESSAGES, stream=True):
    chunks += 1
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
check("stream text", text == "Hello from alpha", text)
check("stream chunks", chunks >= 3, chunks)

usage = None
for chunk in client.chat.completions.create(
    model="gpt-x", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
):
    if chunk.usage is not None:
        usage = chunk.usage
check("stream usage when asked", usage is not None and usage.completion_tokens == 7, usage)

# Tools, non-stream and streaming.
tools = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
completion = client.chat.completions.create(model="tool-model", messages=MESSAGES, tools=tools)
call = completion.choices[0].message.tool_calls[0]
check("tool call name", call.function.name == "get_weather", call)
check("tool call args", json.loads(call.function.arguments) == {"city": "Paris"}, call.function.arguments)
check("tool finish reason", completion.choices[0].finish_reason == "tool_calls", completion.choices[0])

arguments = ""
name = None
for chunk in client.chat.completions.create(model="tool-model", messages=MESSAGES, tools=tools, stream=True):
    for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
        if delta.function and delta.function.name:
            name = delta.function.name
        if delta.function and delta.function.arguments:
            arguments += delta.function.arguments
check("streamed tool call", name == "get_weather" and json.loads(arguments) == {"city": "Paris"}, (name, arguments))

# Embeddings.
embedding = client.embeddings.create(model="emb", input="hello")
check("embedding", list(embedding.data[0].embedding) == [0.25, -0.5, 0.75], embedding)
check("embedding model", embedding.model == "emb", embedding.model)

# Models.
ids = [m.id for m in client.models.list()]
check("models list", {"gpt-x", "tool-model", "emb"} <= set(ids), ids)
check("model retrieve", client.models.retrieve("gpt-x").id == "gpt-x")

# An upstream 400 surfaces as BadRequestError with the upstream's message.
try:
    client.chat.completions.create(model="bad", messages=MESSAGES)
    check("upstream 400 raises", False, "no exception")
except openai.BadRequestError as error:
    check("upstream 400 status", error.status_code == 400, error.status_code)
    check("upstream 400 message", "upstream says 7 is too hot" in error.message, error.message)
    check("upstream 400 param", error.param == "temperature", error.param)
    check("upstream 400 code", error.code == "invalid_value", error.code)

# An unknown model is a NotFoundError.
try:
    client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    check("unknown model raises", False, "no exception")
except openai.NotFoundError as error:
    check("unknown model status", error.status_code == 404, error.status_code)
    check("unknown model code", error.code == "model_not_found", error.code)

# A wrong client key is an AuthenticationError.
wrong = openai.OpenAI(base_url=f"{BASE}/v1", api_key="wrong-key", max_retries=0)
try:
    wrong.chat.completions.create(model="gpt-x", messages=MESSAGES)
    check("wrong key raises", False, "no exception")
except openai.AuthenticationError as error:
    check("wrong key status", error.status_code == 401, error.status_code)

print("openai sdk: all checks passed")
