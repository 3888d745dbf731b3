#!/usr/bin/env python3
"""Drives a live hearth gateway with the official `openai` Python client.

Usage: openai_client_check.py BASE_URL MODEL [--real]

Checks, streaming and not, for chat and completions: the shapes the client parses, usage
counts, that greedy streamed text equals the non-streamed text, that each response carries a
verification trail whose receipts the gateway verified, and that errors map to the client's
exception types. With --real (a real model such as SmolLM2, not random weights) it also checks
that the answers make sense: the greedy completion of "The capital of France is" and the greedy
chat answer to a question about it both contain "Paris". Exits non-zero on the first failure.
"""

import json
import sys
import urllib.request

import openai


def check_real_answers(client: openai.OpenAI, model: str) -> None:
    """Greedy answers of a real model name Paris, through completions and chat."""
    comp = client.completions.create(
        model=model, prompt="The capital of France is", max_tokens=8, temperature=0
    )
    text = comp.choices[0].text
    assert "Paris" in text, f"completion of 'The capital of France is': {text!r}"
    question = "What is the capital of France? Answer in one sentence."
    chat = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=16, temperature=0
    )
    answer = chat.choices[0].message.content
    assert "Paris" in answer, f"chat answer to {question!r}: {answer!r}"
    print(f"real answers: completion {text!r}, chat {answer!r}")


def main() -> None:
    args = sys.argv[1:]
    real = "--real" in args
    args = [a for a in args if a != "--real"]
    if len(args) != 2:
        sys.exit(__doc__)
    base, model = args
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused-on-loopback", max_retries=0)

    if real:
        check_real_answers(client, model)

    ids = [m.id for m in client.models.list().data]
    assert model in ids, ids

    messages = [{"role": "user", "content": "Say hello to the swarm."}]
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=messages, max_tokens=8, temperature=0
    )
    chat = raw.parse()
    content = chat.choices[0].message.content
    assert isinstance(content, str), chat
    assert chat.choices[0].finish_reason in ("stop", "length"), chat
    assert chat.usage.completion_tokens >= 1, chat.usage
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens
    trail = chat.model_extra["hearth"]
    assert trail["all_verified"] is True, trail
    assert len(trail["route"]) >= 1, trail
    assert len(trail["receipts"]) >= len(trail["route"]) * chat.usage.completion_tokens, trail
    # The same trail is served at the address in the response header.
    link = raw.headers["x-hearth-trail"]
    with urllib.request.urlopen(f"{base}{link}") as reply:
        assert json.load(reply) == trail

    pieces, finish = [], None
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    assert "".join(pieces) == content, (pieces, content)
    assert finish == chat.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == chat.usage.completion_tokens

    comp = client.completions.create(model=model, prompt="Once upon a time", max_tokens=6, temperature=0)
    text = comp.choices[0].text
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=model, prompt="Once upon a time", max_tokens=6, temperature=0, stream=True
        )
        if c.choices
    )
    assert streamed == text, (streamed, text)

    seeded = [
        client.completions.create(model=model, prompt="x", max_tokens=6, temperature=1.0, seed=7).choices[0].text
        for _ in range(2)
    ]
    assert seeded[0] == seeded[1], seeded

    try:
        client.chat.completions.create(model="no-such-model", messages=messages)
        raise AssertionError("unknown model accepted")
    except openai.NotFoundError as e:
        assert e.body["code"] == "model_not_found", e.body
    try:
        client.chat.completions.create(model=model, messages=messages, max_tokens=10**7)
        raise AssertionError("huge max_tokens accepted")
    except openai.BadRequestError as e:
        assert "max_tokens" in e.message, e.message
    try:
        client.chat.completions.create(model=model, messages=[])
        raise AssertionError("empty messages accepted")
    except openai.BadRequestError as e:
        assert "messages" in e.message, e.message

    print(f"openai {openai.__version__}: chat, completions, streaming, trails and errors OK")


if __name__ == "__main__":
    main()
