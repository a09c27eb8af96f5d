"""The official Anthropic Python SDK against Switchyard's /v1/messages (started by server/tests/sdk.rs).

`claude-x` is served by an Anthropic-format upstream (native pass-through),
`gpt-x` by an OpenAI-format upstream (translated both ways).
Environment: SWITCHYARD_BASE_URL (the gateway root), SWITCHYARD_CLIENT_KEY.
"""

import os

import anthropic

BASE = os.environ["SWITCHYARD_BASE_URL"]
KEY = os.environ["SWITCHYARD_CLIENT_KEY"]

client = anthropic.Anthropic(base_url=BASE, api_key=KEY, max_retries=0, timeout=20)
MESSAGES = [{"role": "user", "content": "Say hello"}]


def check(name, condition, detail=""):
    if not condition:
        raise SystemExit(f"FAILED: {name}: {detail}")
    print(f"ok: {name}")


for model, expected, provider in [
    ("claude-x", "Hello from claude", "native"),
    ("gpt-x", "Hello from alpha", "translated"),
]:
    message = client.messages.create(model=model, max_tokens=64, messages=MESSAGES, system="Be brief.")
    check(f"{provider} text", message.content[0].text == expected, message)
    check(f"{provider} model", message.model == model, message.model)
    check(f"{provider} stop reason", message.stop_reason == "end_turn", message.stop_reason)
    check(f"{provider} usage", message.usage.output_tokens == 7, message.usage)

    with client.messages.stream(model=model, max_tokens=64, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    check(f"{provider} stream text", text == expected, text)
    check(f"{provider} stream final", final.content[0].text == expected and final.stop_reason == "end_turn", final)
    check(f"{provider} stream model", final.model == model, final.model)

    events = [event.type for event in client.messages.create(
        model=model, max_tokens=64, messages=MESSAGES, stream=True
    )]
    check(f"{provider} raw events", events[0] == "message_start" and events[-1] == "message_stop", events)

try:
    client.messages.create(model="no-such-model", max_tokens=16, messages=MESSAGES)
    check("unknown model raises", False, "no exception")
except anthropic.NotFoundError as error:
    check("unknown model status", error.status_code == 404, error.status_code)

print("anthropic sdk: all checks passed")
