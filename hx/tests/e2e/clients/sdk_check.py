"""The official OpenAI and Anthropic Python clients, unchanged, against a Helix gateway.

Run by hx/tests/e2e/llm.rs with HELIX_URL and HELIX_KEY; the gateway's providers are
fakes: `openai` answers "Hello from the fake", `anthropic` calls get_weather, `mistral`
fails after its first chunk. Exits non-zero, with the reason, on any difference.
"""

import json
import os

import anthropic
import openai

BASE = os.environ["HELIX_URL"]
KEY = os.environ["HELIX_KEY"]
HI = [{"role": "user", "content": "Hi"}]
WEATHER = {"city": "Paris", "unit": "celsius"}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


def check_openai():
    client = openai.OpenAI(base_url=BASE + "/v1", api_key=KEY, max_retries=0)
    answer = client.chat.completions.create(model="openai/gpt-4o-mini", messages=HI)
    assert answer.choices[0].message.content == "Hello from the fake", answer
    assert answer.choices[0].finish_reason == "stop", answer
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (11, 4), answer.usage

    chunks = list(client.chat.completions.create(
        model="openai/gpt-4o-mini", messages=HI, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the fake", text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4, chunks[-1]

    name, arguments = None, ""
    for chunk in client.chat.completions.create(
            model="anthropic/claude-haiku-4-5", messages=HI, tools=TOOLS, stream=True):
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            name = name or call.function.name
            arguments += call.function.arguments or ""
    assert name == "get_weather" and json.loads(arguments) == WEATHER, (name, arguments)

    seen = ""
    try:
        for chunk in client.chat.completions.create(model="mistral/mistral-small-latest", messages=HI, stream=True):
            seen += (chunk.choices[0].delta.content or "") if chunk.choices else ""
        raise AssertionError("a stream that failed midway ended as if complete")
    except openai.APIError as error:
        assert seen == "Partial", seen
        assert "middle of the answer" in error.message, error.message

    try:
        client.chat.completions.create(model="openai/no-such-priced-model", messages=HI)
        raise AssertionError("an unpriced model was answered")
    except openai.BadRequestError as error:
        assert error.code == "unpriced_model", error.body

    ids = [m.id for m in client.models.list()]
    assert "openai/gpt-4o-mini" in ids, ids


def check_anthropic():
    client = anthropic.Anthropic(base_url=BASE, api_key=KEY, max_retries=0)
    message = client.messages.create(model="openai/gpt-4o-mini", max_tokens=50, messages=HI)
    assert message.content[0].text == "Hello from the fake", message
    assert message.stop_reason == "end_turn" and message.usage.output_tokens == 4, message

    with client.messages.stream(model="openai/gpt-4o-mini", max_tokens=50, messages=HI) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello from the fake", text
    assert final.stop_reason == "end_turn", final

    tool = client.messages.create(model="anthropic/claude-haiku-4-5", max_tokens=50, messages=HI, tools=[
        {"name": "get_weather", "input_schema": {"type": "object"}}])
    assert tool.stop_reason == "tool_use" and tool.content[0].input == WEATHER, tool


check_openai()
check_anthropic()
print("ok")
