"""Judges: position-bias handling, the OpenAI-compatible client (on a stdlib stub), human labels, registry."""

import json
import logging
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
import torch

from rlhf.errors import UserError
from rlhf.judges import (DEFAULT_PRINCIPLES, HumanJudge, LLMJudge, OpenAIJudge, both_orders, letter_token_ids,
                         make_judge, pairwise_prompt, parse_answer, sigmoid)

# --------------------------------------------------------------------------- local LLM judge


class FakeLM(torch.nn.Module):
    """A 'language model' whose next token is decided by a rule on the decoded input."""

    def __init__(self, tokenizer, rule):
        super().__init__()
        self.tokenizer, self.rule = tokenizer, rule
        self.a, self.b = letter_token_ids(tokenizer, "A"), letter_token_ids(tokenizer, "B")
        self.calls = 0

    def forward(self, input_ids, attention_mask=None, position_ids=None, **_):
        self.calls += 1
        logits = torch.zeros(input_ids.shape + (len(self.tokenizer),))
        for i, row in enumerate(input_ids):
            text = self.tokenizer.decode(row[attention_mask[i].bool()])
            letter, strength = self.rule(text)
            logits[i, -1, self.a if letter == "A" else self.b] = strength
        return SimpleNamespace(logits=logits)


def _always_a(text):
    return "A", 6.0


def _content(text):
    """Prefers whichever response holds GOOD, however it is placed."""
    a_part = text.split("[Response A]")[1].split("[Response B]")[0]
    return ("A" if "GOOD" in a_part else "B"), 3.0


PROMPTS = ["What is 2 + 3?", "Sort 3 1 2.", [{"role": "user", "content": "Reverse: red blue"}]]
GOOD = ["GOOD 5.", "GOOD 1 2 3.", "GOOD blue red."]
BAD = ["Great question! 7.", "3 2 1.", "red blue red blue."]


def test_both_orders_cancels_a_judge_that_always_says_a(tiny_tokenizer):
    judge = LLMJudge(FakeLM(tiny_tokenizer, _always_a), tiny_tokenizer, batch_size=2)
    probs = judge.compare(PROMPTS, GOOD, BAD)
    # order 1: P(A) = sigmoid(6); order 2 shows B first, P(A better) = 1 - sigmoid(6); mean = 1/2
    assert probs == pytest.approx([0.5] * 3, abs=1e-6)
    assert judge.position_bias == 1.0 and judge.same_position == [True] * 3


def test_consistent_judge_has_no_position_bias_and_reads_content(tiny_tokenizer):
    judge = LLMJudge(FakeLM(tiny_tokenizer, _content), tiny_tokenizer, batch_size=4)
    p = judge.compare(PROMPTS, GOOD, BAD)
    assert p == pytest.approx([sigmoid(3.0)] * 3, abs=1e-6)  # both orders agree: sigmoid(3) = 0.9526
    assert judge.position_bias == 0.0
    q = judge.compare(PROMPTS, BAD, GOOD)
    assert q == pytest.approx([1 - sigmoid(3.0)] * 3, abs=1e-6)


def test_both_orders_flags_only_same_slot_picks():
    # item 0 picks the first slot twice (biased); item 1 picks A both times (consistent); item 2 a coin flip
    # one call asks all 2N questions: A first for the first N, B first for the rest
    calls = []

    def ask(p, first, second):
        calls.append((first, second))
        return [0.9, 0.8, 0.5] + [0.7, 0.3, 0.5]

    probs, same = both_orders(ask, ["p"] * 3, ["a1", "a2", "a3"], ["b1", "b2", "b3"])
    assert calls == [(["a1", "a2", "a3", "b1", "b2", "b3"], ["b1", "b2", "b3", "a1", "a2", "a3"])]
    assert probs == pytest.approx([(0.9 + 0.3) / 2, (0.8 + 0.7) / 2, 0.5])
    assert same == [True, False, False]


def test_llm_judge_on_a_real_tiny_model_is_antisymmetric_and_batch_invariant(tiny_model_dir):
    judge = make_judge(f"llm:{tiny_model_dir}", batch_size=3, principles=["Be correct."])  # short: a fast test
    ab = judge.compare(PROMPTS, GOOD, BAD)
    ba = judge.compare(PROMPTS, BAD, GOOD)
    assert all(0.0 < p < 1.0 for p in ab)
    assert [x + y for x, y in zip(ab, ba)] == pytest.approx([1.0] * 3, abs=1e-6)
    # left padding with position ids: a batch gives what each item gives alone
    judge.batch_size = 1
    assert judge.compare(PROMPTS, GOOD, BAD) == pytest.approx(ab, abs=1e-5)
    ratings = judge.score(PROMPTS, GOOD)
    assert all(1.0 <= r <= 9.0 for r in ratings)


def test_pairwise_prompt_shows_principles_conversation_and_both_responses():
    text = pairwise_prompt([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <x>"}],
                           "first one", "second one")
    for i, principle in enumerate(DEFAULT_PRINCIPLES, 1):
        assert f"{i}. {principle}" in text
    assert "System: Be brief.\nUser: Hi <x>" in text
    assert text.index("[Response A]\nfirst one") < text.index("[Response B]\nsecond one")
    assert parse_answer("Response B is better") == 0.0 and parse_answer("A.") == 1.0
    assert parse_answer("Both are fine") is None  # "Both" holds a 'B' but not a standalone one


# --------------------------------------------------------------------------- OpenAI-compatible judge


class Stub:
    """A chat-completions endpoint on 127.0.0.1 that records requests and follows a script."""

    def __init__(self, *, fail=(), delay=0.0, reject_logprobs=False, logprobs=True, echo_auth_on=None):
        self.fail = list(fail)  # statuses to answer first, one per request
        self.delay, self.reject_logprobs, self.logprobs = delay, reject_logprobs, logprobs
        self.echo_auth_on = echo_auth_on
        self.bodies, self.auth = [], []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.lock:
                    stub.bodies.append(body)
                    stub.auth.append(self.headers.get("Authorization"))
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                    status = stub.fail.pop(0) if stub.fail else 200
                try:
                    time.sleep(stub.delay)
                    if stub.echo_auth_on is not None and status == stub.echo_auth_on:
                        return self._send(status, {"error": {"message": f"bad header {self.headers['Authorization']}",
                                                             "type": "invalid_request_error"}})
                    if status != 200:
                        return self._send(status, {"error": {"message": f"status {status}", "type": "server_error"}})
                    if stub.reject_logprobs and body.get("logprobs"):
                        return self._send(400, {"error": {"message": "logprobs are not supported by this model",
                                                          "type": "invalid_request_error", "param": "logprobs"}})
                    self._send(200, stub.answer(body))
                finally:
                    with stub.lock:
                        stub.in_flight -= 1

            def _send(self, status, obj):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, body):
        """Prefers the response holding GOOD with probability 0.8 (logprobs) or outright (text)."""
        user = body["messages"][-1]["content"]
        a_part = user.split("[Response A]")[1].split("[Response B]")[0]
        letter = "A" if "GOOD" in a_part else "B"
        other = "B" if letter == "A" else "A"
        choice = {"index": 0, "message": {"role": "assistant", "content": letter}, "finish_reason": "stop",
                  "logprobs": None}
        if body.get("logprobs") and self.logprobs:
            top = [{"token": letter, "logprob": math.log(0.8), "bytes": None},
                   {"token": " " + other, "logprob": math.log(0.15), "bytes": None},
                   {"token": "The", "logprob": math.log(0.05), "bytes": None}]
            choice["logprobs"] = {"content": [{"token": letter, "logprob": math.log(0.8), "bytes": None,
                                               "top_logprobs": top}]}
        return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"], "choices": [choice],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub_factory():
    stubs = []

    def make(**kw):
        stubs.append(Stub(**kw))
        return stubs[-1]

    yield make
    for s in stubs:
        s.close()


SECRET = "sk-test-7f3a9c-not-a-real-key"


def _judge(stub, monkeypatch, **kw):
    monkeypatch.setenv("RLHF_TEST_JUDGE_KEY", SECRET)
    j = OpenAIJudge(stub.url, "judge-model", api_key_env="RLHF_TEST_JUDGE_KEY", **kw)
    j.sleeps = []
    j._sleep = j.sleeps.append  # record the backoff instead of waiting it out
    return j


def test_openai_judge_asks_both_orders_and_reads_logprobs(stub_factory, monkeypatch):
    stub = stub_factory()
    judge = _judge(stub, monkeypatch)
    probs = judge.compare(PROMPTS[:2], GOOD[:2], BAD[:2])
    # each order: 0.8 / (0.8 + 0.15) for the GOOD side
    assert probs == pytest.approx([0.8 / 0.95] * 2, abs=1e-9)
    assert judge.position_bias == 0.0 and judge.invalid_rate == 0.0
    assert len(stub.bodies) == 4
    users = [b["messages"][-1]["content"] for b in stub.bodies]
    first_item = [u for u in users if GOOD[0] in u]
    assert len(first_item) == 2
    assert sorted(u.index(GOOD[0]) < u.index(BAD[0]) for u in first_item) == [False, True]  # once each way
    assert pairwise_prompt(PROMPTS[0], GOOD[0], BAD[0]) in users and pairwise_prompt(PROMPTS[0], BAD[0], GOOD[0]) in users
    body = stub.bodies[0]
    assert body["model"] == "judge-model" and body["temperature"] == 0 and body["logprobs"] is True
    assert body["top_logprobs"] == 20 and body["messages"][0]["role"] == "system"
    assert all(a == f"Bearer {SECRET}" for a in stub.auth)


def test_openai_judge_falls_back_to_text_when_logprobs_are_rejected(stub_factory, monkeypatch):
    stub = stub_factory(reject_logprobs=True)
    judge = _judge(stub, monkeypatch, concurrency=1)
    assert judge.compare(PROMPTS[:2], BAD[:2], GOOD[:2]) == [0.0, 0.0]
    assert judge.logprobs is False
    assert sum(1 for b in stub.bodies if not b.get("logprobs")) == 4  # every question asked again without


def test_openai_judge_retries_with_exponential_backoff(stub_factory, monkeypatch):
    stub = stub_factory(fail=[503, 429, 500])
    judge = _judge(stub, monkeypatch, concurrency=1, backoff=0.1, max_backoff=10.0, max_retries=4)
    assert judge.compare(PROMPTS[:1], GOOD[:1], BAD[:1]) == pytest.approx([0.8 / 0.95])
    assert len(stub.bodies) == 3 + 2  # three failures, then both orders
    # attempt k waits backoff * 2**k with jitter in [50%, 100%]
    assert len(judge.sleeps) == 3
    for k, s in enumerate(judge.sleeps):
        assert 0.1 * 2 ** k * 0.5 <= s <= 0.1 * 2 ** k


def test_openai_judge_gives_up_after_max_retries_and_does_not_retry_client_errors(stub_factory, monkeypatch):
    stub = stub_factory(fail=[502] * 10)
    judge = _judge(stub, monkeypatch, concurrency=1, backoff=0.01, max_retries=2)
    with pytest.raises(UserError, match=r"HTTP 502: status 502 after 3 attempts"):
        judge.compare(PROMPTS[:1], GOOD[:1], BAD[:1])
    stub2 = stub_factory(fail=[401])
    judge2 = _judge(stub2, monkeypatch, concurrency=1)
    with pytest.raises(UserError, match=r"HTTP 401.*check \$RLHF_TEST_JUDGE_KEY"):
        judge2.compare(PROMPTS[:1], GOOD[:1], BAD[:1])
    assert len(stub2.bodies) <= 2 and judge2.sleeps == []


def test_openai_judge_stops_sending_after_a_permanent_failure(stub_factory, monkeypatch):
    # a bad key fails every request alike: the queued ones are dropped, not sent one by one
    stub = stub_factory(fail=[401] * 100)
    judge = _judge(stub, monkeypatch, concurrency=2)
    with pytest.raises(UserError, match=r"HTTP 401"):
        judge.compare(PROMPTS * 10, GOOD * 10, BAD * 10)  # 60 requests without the fix
    assert len(stub.bodies) <= 2 and judge.sleeps == []


def test_openai_judge_times_out(stub_factory, monkeypatch):
    stub = stub_factory(delay=1.0)
    judge = _judge(stub, monkeypatch, concurrency=1, timeout=0.2, max_retries=1, backoff=0.01)
    with pytest.raises(UserError, match="timed out after 2 attempts"):
        judge.compare(PROMPTS[:1], GOOD[:1], BAD[:1])


def test_openai_judge_limits_concurrency(stub_factory, monkeypatch):
    stub = stub_factory(delay=0.05)
    judge = _judge(stub, monkeypatch, concurrency=3)
    judge.compare(PROMPTS * 3, GOOD * 3, BAD * 3)
    assert len(stub.bodies) == 18
    assert 2 <= stub.max_in_flight <= 3


def test_openai_key_is_never_logged_shown_or_echoed(stub_factory, monkeypatch, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    stub = stub_factory(fail=[500, 400], echo_auth_on=400)
    judge = _judge(stub, monkeypatch, concurrency=1)
    with pytest.raises(UserError) as info:
        judge.compare(PROMPTS[:1], GOOD[:1], BAD[:1])
    assert stub.auth[0] == f"Bearer {SECRET}"  # it was sent ...
    assert "Bearer ***" in str(info.value)  # ... and masked when the server echoed it
    out, err = capfd.readouterr()
    for text in (str(info.value), repr(judge), caplog.text, out, err, json.dumps(vars(judge), default=repr)):
        assert SECRET not in text


def test_openai_judge_needs_a_key_for_remote_endpoints(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(UserError, match=r"\$NO_SUCH_KEY_VAR"):
        OpenAIJudge("https://api.example.com/v1", "m", api_key_env="NO_SUCH_KEY_VAR")
    OpenAIJudge("http://127.0.0.1:9/v1", "m", api_key_env="NO_SUCH_KEY_VAR")  # a local server may need none


def test_openai_judge_against_rlhf_serve(tiny_model_dir):
    from rlhf.serve import ServeConfig, make_server

    srv = make_server(ServeConfig(model=tiny_model_dir, port=0, name="tiny", max_tokens_limit=8))
    threading.Thread(target=srv.run, daemon=True).start()
    try:
        judge = make_judge(f"openai:http://127.0.0.1:{srv.effective_port}/v1#tiny", concurrency=2)
        ab = judge.compare(PROMPTS[:2], GOOD[:2], BAD[:2])
        ba = judge.compare(PROMPTS[:2], BAD[:2], GOOD[:2])
    finally:
        srv.close()
    assert all(0.0 <= p <= 1.0 for p in ab)
    assert [x + y for x, y in zip(ab, ba)] == pytest.approx([1.0, 1.0], abs=1e-9)


# --------------------------------------------------------------------------- human labels


def test_human_judge_reads_both_formats_either_order_and_averages(tmp_path):
    path = tmp_path / "labels.jsonl"
    rows = [
        {"prompt": "q1", "chosen": "good", "rejected": "bad"},
        {"prompt": "q2", "response_a": "x", "response_b": "y", "preference": "b"},
        {"prompt": "q2", "response_a": "y", "response_b": "x", "preference": "tie"},
        {"prompt": [{"role": "user", "content": "q3"}], "response_a": "u", "response_b": "v", "preference": 0.75},
        {"prompt": "q4", "chosen": "m", "rejected": "n", "margin": 0.0, "tie": True, "annotator": "ann1"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    judge = HumanJudge(path)
    # q2 (x vs y): label 1 says B(y) -> 0.0; label 2 (y vs x) tie -> 1 - 0.5; mean = 0.25
    assert judge.compare(["q1", "q1", "q2", "q3", "q4"], ["good", "bad", "x", "u", "n"],
                         ["bad", "good", "y", "v", "m"]) == [1.0, 0.0, 0.25, 0.75, 0.5]
    assert judge.position_bias is None
    with pytest.raises(UserError, match=r"labels.jsonl: no human label for 1 of 2 pairs \(first: prompt 'q9'\)"):
        judge.compare(["q1", "q9"], ["good", "a"], ["bad", "b"])


@pytest.mark.parametrize("row,message", [
    ('{"prompt": "q", "chosen": "", "rejected": "b"}', 'labels.jsonl:2: "chosen" is empty'),
    ('{"prompt": "q", "response_a": "a", "response_b": "b"}', 'labels.jsonl:2: "preference" is missing'),
    ('{"prompt": "q", "response_a": "a", "response_b": "b", "preference": "maybe"}',
     'labels.jsonl:2: "preference" must be "a", "b", "tie" or a number in [0, 1], got \'maybe\''),
    ('{"prompt": "q", "text": "a"}', "labels.jsonl:2: unknown label format with keys ['prompt', 'text']"),
    ('{"prompt": "q", "chosen": "a", "rejected": "a"}', "labels.jsonl:2: the two responses are identical"),
    ('{"prompt": "q", "chosen": "a"', "labels.jsonl:2: invalid JSON"),
])
def test_human_labels_bad_rows_name_file_line_and_field(tmp_path, row, message):
    path = tmp_path / "labels.jsonl"
    path.write_text('{"prompt": "ok", "chosen": "a", "rejected": "b"}\n' + row + "\n")
    with pytest.raises(UserError) as info:
        HumanJudge(path)
    assert str(info.value).startswith(message)


# --------------------------------------------------------------------------- registry


def test_make_judge_rejects_unknown_and_malformed_specs(tmp_path):
    with pytest.raises(UserError, match="unknown judge 'oracle'"):
        make_judge("oracle")
    with pytest.raises(UserError, match="openai:http://HOST:PORT/v1#MODEL"):
        make_judge("openai:127.0.0.1:8000")
    path = tmp_path / "l.jsonl"
    path.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n')
    assert isinstance(make_judge(f"human:{path}"), HumanJudge)


# --------------------------------------------------------------------------- gold and reward-model judges


def test_gold_judge_agrees_with_gold_compare():
    from rlhf.judges import GoldJudge
    from rlhf.lab import gold

    prompts = ["What is 2 + 3?"] * 4 + ["Sort these numbers: 4 1 3."] * 2
    a = ["5.", "Great question! 5. I hope this helps!", "7.", "5.", "1 3 4.", "4 1 3."]
    b = ["Great question! 5.", "5.", "7", "5.", "1 3 4.", "1 3 4."]
    judge = GoldJudge()
    expected = {1: 1.0, -1: 0.0, 0: 0.5}
    assert judge.compare(prompts, a, b) == [expected[gold.compare(p, x, y)] for p, x, y in zip(prompts, a, b)]
    assert judge.compare(prompts, a, b)[:4] == [1.0, 0.0, 0.5, 0.5]  # a clean answer beats flattery; ties are 0.5
    # a response that ran out of tokens loses to the same text that stopped
    assert judge.compare(prompts[:1], ["5."], ["5."], stopped_a=[False], stopped_b=[True]) == [0.0]
    assert judge.score(prompts[:2], a[:2]) == [gold.score(prompts[0], a[0]), gold.score(prompts[1], a[1])]
    assert judge.position_bias is None


@pytest.fixture(scope="module")
def tiny_rm_dir(tmp_path_factory, tiny_tokenizer):
    """A random 2-layer Llama reward model (one label) with a stored reward offset of 0.25."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from rlhf.models import REWARD_OFFSET_KEY

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, num_labels=1,
                      pad_token_id=tiny_tokenizer.pad_token_id, eos_token_id=tiny_tokenizer.eos_token_id)
    model = LlamaForSequenceClassification(cfg)
    setattr(model.config, REWARD_OFFSET_KEY, 0.25)
    path = tmp_path_factory.mktemp("tiny-rm")
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return str(path)


def test_reward_model_judge_is_sigmoid_of_the_score_difference(tiny_rm_dir):
    from transformers import AutoModelForSequenceClassification

    from rlhf.chat import encode
    from rlhf.judges import RewardModelJudge

    judge = make_judge(f"rm:{tiny_rm_dir}", batch_size=2)
    assert isinstance(judge, RewardModelJudge) and judge.position_bias is None
    # by hand: the raw score is the head's output at the last token of prompt + response + EOS, one
    # unpadded sequence at a time; the judge's score subtracts the stored offset 0.25
    plain = AutoModelForSequenceClassification.from_pretrained(tiny_rm_dir).eval()

    def raw(prompt, response):
        ids = torch.tensor([encode(judge.tokenizer, prompt, response, 1024).input_ids])
        with torch.no_grad():
            return float(plain(input_ids=ids).logits[0, 0])

    ra = [raw(p, r) for p, r in zip(PROMPTS, GOOD)]
    rb = [raw(p, r) for p, r in zip(PROMPTS, BAD)]
    assert judge.score(PROMPTS, GOOD) == pytest.approx([x - 0.25 for x in ra], abs=1e-5)
    probs = judge.compare(PROMPTS, GOOD, BAD)
    assert probs == pytest.approx([1 / (1 + math.exp(-(x - y))) for x, y in zip(ra, rb)], abs=1e-6)
    assert [p + q for p, q in zip(probs, judge.compare(PROMPTS, BAD, GOOD))] == pytest.approx([1.0] * 3, abs=1e-9)
