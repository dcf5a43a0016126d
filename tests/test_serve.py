"""`rlhf serve` against the official openai client on loopback."""

import threading

import openai
import pytest

from rlhf.serve import ServeConfig, make_server


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    srv = make_server(ServeConfig(model=tiny_model_dir, port=0, name="tiny", max_tokens_limit=32))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.effective_port}/v1"
    srv.close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server, api_key="unused", max_retries=0, timeout=60)


def test_models_list(client):
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_chat_completion_greedy_is_deterministic(client):
    msgs = [{"role": "user", "content": "What is 2 + 3?"}]
    a = client.chat.completions.create(model="tiny", messages=msgs, temperature=0, max_tokens=8)
    b = client.chat.completions.create(model="tiny", messages=msgs, temperature=0, max_tokens=8)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.choices[0].finish_reason in ("stop", "length")
    assert a.usage.completion_tokens <= 8 and a.usage.prompt_tokens > 0
    assert a.object == "chat.completion" and a.choices[0].message.role == "assistant"


def test_sampling_n_and_logprobs(client):
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], n=3,
                                       temperature=1.0, max_tokens=4, logprobs=True, top_logprobs=2, seed=1)
    assert len(r.choices) == 3
    lp = r.choices[0].logprobs.content
    assert lp and all(x.logprob <= 0 for x in lp) and len(lp[0].top_logprobs) == 2
    # the top alternative is at least as likely as any sampled token's entry
    assert lp[0].top_logprobs[0].logprob >= lp[0].top_logprobs[1].logprob


def test_streaming_equals_non_streaming(client):
    msgs = [{"role": "user", "content": "Sort these numbers: 4 1 3."}]
    full = client.chat.completions.create(model="tiny", messages=msgs, temperature=0, max_tokens=10)
    pieces, finish = [], None
    for chunk in client.chat.completions.create(model="tiny", messages=msgs, temperature=0, max_tokens=10,
                                                stream=True):
        delta = chunk.choices[0].delta
        pieces.append(delta.content or "")
        finish = chunk.choices[0].finish_reason or finish
    assert "".join(pieces) == full.choices[0].message.content
    assert finish == full.choices[0].finish_reason


@pytest.mark.parametrize("kwargs,exc,needle", [
    (dict(model="nope"), openai.NotFoundError, "does not exist"),
    (dict(model="tiny", temperature=5), openai.BadRequestError, "temperature"),
    (dict(model="tiny", max_tokens=10_000), openai.BadRequestError, "max_tokens"),
    (dict(model="tiny", messages=[]), openai.BadRequestError, "messages"),
])
def test_errors_have_openai_shape(client, kwargs, exc, needle):
    kwargs.setdefault("messages", [{"role": "user", "content": "hi"}])
    with pytest.raises(exc) as info:
        client.chat.completions.create(**kwargs)
    assert needle in info.value.body["message"] and info.value.body["type"] == "invalid_request_error"


def test_api_key_required(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("RLHF_TEST_KEY", "s3cret")
    srv = make_server(ServeConfig(model=tiny_model_dir, port=0, api_key_env="RLHF_TEST_KEY"))
    threading.Thread(target=srv.run, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.effective_port}/v1"
        bad = openai.OpenAI(base_url=url, api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        good = openai.OpenAI(base_url=url, api_key="s3cret", max_retries=0)
        assert len(good.models.list().data) == 1
    finally:
        srv.close()
