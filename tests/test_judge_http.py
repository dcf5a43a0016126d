"""`OpenAIJudge` against a real `rlhf serve` on 127.0.0.1 (no stub): probabilities, both orders, key, retries.

`tests/test_judges.py` covers the client's logic on a scripted stub (backoff
arithmetic, logprob fallback, concurrency) and checks antisymmetry on a real
server; here the real server decides everything: the probability the judge
reports must be the one the served model's own next-token distribution gives,
a wrong key must be refused by the server's check with no retry and no trace
of either key, and a server that is not there (or stalls) must end in a clear
error after the configured retries.
"""

import logging
import math
import socket
import threading

import pytest

from rlhf.errors import UserError
from rlhf.judges import JUDGE_SYSTEM, OpenAIJudge, pairwise_prompt

PROMPTS = ["What is 2 + 3?", "Sort 3 1 2."]
GOOD = ["5.", "1 2 3."]
BAD = ["Great question! 7.", "3 2 1."]
PRINCIPLES = ["Be correct."]
SECRET = "sk-serve-5d1e-not-a-real-key"


def _serve(model_dir, **kw):
    from rlhf.serve import ServeConfig, make_server

    srv = make_server(ServeConfig(model=model_dir, port=0, name="tiny", max_tokens_limit=8, **kw))
    threading.Thread(target=srv.run, daemon=True).start()
    return srv


@pytest.fixture(scope="module")
def judge_model_dir(tmp_path_factory, tiny_tokenizer):
    """A random 2-layer Phi (its output layer has a bias) leaning to answer "A", then "B".

    A random model alone puts neither letter among its top 20 tokens, so every
    answer would read as an even 0.5 and the log-probability path would go
    untested. Biases 3.0 and 2.6 make "A" the greedy answer with "B" close
    behind: P(A) / (P(A) + P(B)) is about sigmoid(0.4) = 0.6 in either order,
    moved a little by the content.
    """
    import torch
    from transformers import PhiConfig, PhiForCausalLM

    from rlhf.judges import letter_token_ids

    torch.manual_seed(0)
    tok = tiny_tokenizer
    model = PhiForCausalLM(PhiConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, max_position_embeddings=512,
                                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                     bos_token_id=tok.bos_token_id))
    with torch.no_grad():
        model.lm_head.bias[letter_token_ids(tok, "A")] = 3.0
        model.lm_head.bias[letter_token_ids(tok, "B")] = 2.6
    path = tmp_path_factory.mktemp("judge-phi")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def server(judge_model_dir):
    srv = _serve(judge_model_dir)
    yield f"http://127.0.0.1:{srv.effective_port}/v1"
    srv.close()


def expected_prob_first(model_dir, prompt, first, second):
    """What the judge should read for one order, computed from the model directly.

    The server decodes greedily; the judge takes the first answer token that is
    not whitespace and, of its top-20 alternatives, the mass on "A" against "B"
    (0.5 when neither is among them and the text names neither).
    """
    import torch

    from rlhf.chat import render_prompt
    from rlhf.models import load_causal_lm, load_tokenizer

    tok = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir).eval()
    messages = [{"role": "system", "content": JUDGE_SYSTEM},
                {"role": "user", "content": pairwise_prompt(prompt, first, second, PRINCIPLES)}]
    ids = tok(render_prompt(tok, messages), add_special_tokens=False)["input_ids"]
    text = ""
    with torch.inference_mode():
        for _ in range(4):  # the judge's max_tokens
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)
            nxt = int(logp.argmax())
            if nxt == tok.eos_token_id:
                break
            piece = tok.decode([nxt])
            text += piece
            if piece.strip():
                top = torch.topk(logp, 20)
                alts = [(tok.decode([int(i)]).strip(), float(v)) for v, i in zip(top.values, top.indices)]
                pa = sum(math.exp(v) for t, v in alts if t == "A")
                pb = sum(math.exp(v) for t, v in alts if t == "B")
                if pa + pb > 0:
                    return pa / (pa + pb)
                break
            ids.append(nxt)
    import re

    m = re.search(r"\b([AB])\b", text)
    return 0.5 if m is None else float(m.group(1) == "A")


def test_probabilities_are_the_served_models_own_in_both_orders(server, judge_model_dir):
    judge = OpenAIJudge(server, "tiny", principles=PRINCIPLES, concurrency=2, max_retries=0)
    probs = judge.compare(PROMPTS, GOOD, BAD)
    assert judge.requests_sent == 2 * len(PROMPTS)  # every pair asked in both orders
    assert all(0.0 <= p <= 1.0 for p in probs) and judge.invalid_rate == 0.0
    assert judge.position_bias == 1.0  # this model answers "A" whatever it is shown: caught
    for i, p in enumerate(probs):
        forward = expected_prob_first(judge_model_dir, PROMPTS[i], GOOD[i], BAD[i])
        reverse = expected_prob_first(judge_model_dir, PROMPTS[i], BAD[i], GOOD[i])
        assert 0.55 < forward < 0.7 and 0.55 < reverse < 0.7  # read from the log-probabilities, not the text
        assert p == pytest.approx((forward + (1.0 - reverse)) / 2.0, abs=1e-5)
    swapped = judge.compare(PROMPTS, BAD, GOOD)
    assert [x + y for x, y in zip(probs, swapped)] == pytest.approx([1.0] * len(PROMPTS), abs=1e-9)


def test_key_is_sent_checked_by_the_server_and_never_shown(judge_model_dir, monkeypatch, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("RLHF_TEST_SERVE_KEY", SECRET)
    srv = _serve(judge_model_dir, api_key_env="RLHF_TEST_SERVE_KEY")
    url = f"http://127.0.0.1:{srv.effective_port}/v1"
    try:
        monkeypatch.setenv("RLHF_TEST_JUDGE_KEY", SECRET)
        good = OpenAIJudge(url, "tiny", api_key_env="RLHF_TEST_JUDGE_KEY", principles=PRINCIPLES, max_retries=0)
        assert all(0.0 <= p <= 1.0 for p in good.compare(PROMPTS[:1], GOOD[:1], BAD[:1]))

        wrong = SECRET[::-1]
        monkeypatch.setenv("RLHF_TEST_JUDGE_KEY", wrong)
        bad = OpenAIJudge(url, "tiny", api_key_env="RLHF_TEST_JUDGE_KEY", principles=PRINCIPLES, max_retries=3)
        bad._sleep = lambda s: pytest.fail("a 401 must not be retried")
        with pytest.raises(UserError, match=r"HTTP 401: Incorrect API key provided \(check \$RLHF_TEST_JUDGE_KEY\)"
                           ) as info:
            bad.compare(PROMPTS[:1], GOOD[:1], BAD[:1])
        assert bad.requests_sent == 1 or bad.requests_sent == 2  # both orders may be in flight at once
    finally:
        srv.close()
    out, err = capfd.readouterr()
    for text in (str(info.value), repr(good), repr(bad), caplog.text, out, err, str(vars(good)), str(vars(bad))):
        assert SECRET not in text and wrong not in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_server_that_is_down_fails_clearly_after_the_retries():
    judge = OpenAIJudge(f"http://127.0.0.1:{_free_port()}/v1", "tiny", max_retries=2, backoff=0.5, concurrency=1)
    waits = []
    judge._sleep = waits.append
    with pytest.raises(UserError, match=r"judge openai:http://127\.0\.0\.1:\d+/v1#tiny: cannot connect after 3 attempts"):
        judge.compare(PROMPTS[:1], GOOD[:1], BAD[:1])
    # the first question is tried 1 + max_retries times, with backoff * 2**k between attempts (jitter in
    # [50%, 100%]); the second (the other order) is not sent at all once the first has failed for good
    assert judge.requests_sent == 3 and len(waits) == 2
    assert 0.25 <= waits[0] <= 0.5 and 0.5 <= waits[1] <= 1.0


def test_a_stalled_server_times_out_then_recovers(server, monkeypatch):
    """The real server, held busy: the first attempt times out, the retry after release succeeds."""
    from rlhf.serve import Engine

    release = threading.Event()
    real = Engine.complete
    busy = threading.Semaphore(0)  # one release per finished request, so the test can wait for stragglers

    def held(self, req):
        try:
            release.wait(10)
            return real(self, req)
        finally:
            busy.release()

    monkeypatch.setattr(Engine, "complete", held)
    judge = OpenAIJudge(server, "tiny", principles=PRINCIPLES, timeout=0.5, max_retries=1, concurrency=1)
    judge._sleep = lambda s: release.set()  # the server becomes responsive while the client backs off
    p = judge.compare(PROMPTS[:1], GOOD[:1], BAD[:1])
    assert 0.0 <= p[0] <= 1.0 and judge.requests_sent == 3  # one timeout, then both orders

    release.clear()
    judge = OpenAIJudge(server, "tiny", principles=PRINCIPLES, timeout=0.3, max_retries=1, concurrency=1)
    judge._sleep = lambda s: None
    with pytest.raises(UserError, match="timed out after 2 attempts"):
        judge.compare(PROMPTS[:1], GOOD[:1], BAD[:1])
    assert judge.requests_sent == 2  # the first question's two attempts; the second is not sent
    release.set()
    for _ in range(3 + 2):  # every request either judge sent has finished on the server before it closes
        assert busy.acquire(timeout=30)
