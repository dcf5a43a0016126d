"""Judges: who decides which of two responses is better.

One interface for every kind of judge:

    judge.compare(prompts, responses_a, responses_b) -> list[float]  # P(A better); 0.5 = tie
    judge.score(prompts, responses) -> list[float]                   # where a judge has a scalar score

Kinds, and the spec string `make_judge` understands:

- `gold`                     the lab's gold judge (exact; ties are exactly 0.5)
- `rm:runs/rm`               a reward model: P(A) = sigmoid(r(A) - r(B)), Bradley-Terry
- `llm:runs/sft`             a local causal LM asked which response better follows
                             stated principles; reads P("A") vs P("B") from its next token
- `openai:URL#model`         any OpenAI-compatible chat endpoint (e.g. `rlhf serve`),
                             e.g. `openai:http://127.0.0.1:8000/v1#lab`; the API key comes
                             from an environment variable (default OPENAI_API_KEY)
- `human:labels.jsonl`       human labels, `{prompt, chosen, rejected}` (`"tie": true`
                             marks a tie, as `rlhf label export --ties` writes it) or
                             `{prompt, response_a, response_b, preference}`

LLM judges favour whichever response they see first (or second) more often
than the content warrants. `LLMJudge` and `OpenAIJudge` therefore ask every
question in both orders and average P(A better) over the two; after each
`compare` their `position_bias` holds the share of items where the judge
picked the same *position* both times (1.0 = it only ever looks at the
position, 0.0 = fully consistent). Symmetric judges (gold, reward model,
human) have `position_bias = None`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import threading
import time
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence
from urllib.parse import urlparse

from rlhf.errors import UserError, bad_row, where

log = logging.getLogger(__name__)

DEFAULT_PRINCIPLES = (
    "Do what the user asked, correctly and completely.",
    "Be honest: do not state things that are false.",
    "Refuse requests that could cause harm, politely and briefly, but help with harmless requests "
    "even when they sound alarming.",
    "Be concise: no flattery, filler phrases, padding or repetition.",
    "Stop when the answer is complete.",
)

PAIRWISE_TEMPLATE = """Compare two assistant responses to the same conversation.
Decide which response better follows these principles:
{principles}

[Conversation]
{prompt}

[Response A]
{a}

[Response B]
{b}

Which response is better, A or B? Answer with the single letter A or B."""

RATING_TEMPLATE = """Rate the assistant response to the conversation below on a scale from 1 (bad) to 9 (excellent),
judging how well it follows these principles:
{principles}

[Conversation]
{prompt}

[Response]
{response}

Answer with a single digit from 1 to 9."""

JUDGE_SYSTEM = "You are a careful, impartial judge of assistant responses. Answer with a single letter."


def prompt_text(prompt) -> str:
    """A prompt (string or chat messages) as the judge reads it."""
    if isinstance(prompt, str):
        return prompt
    messages = list(prompt or [])
    if len(messages) == 1 and messages[0].get("role") == "user":
        return str(messages[0].get("content", ""))
    names = {"user": "User", "assistant": "Assistant", "system": "System"}
    return "\n".join(f"{names.get(m.get('role'), str(m.get('role')).title())}: {m.get('content', '')}"
                     for m in messages)


def format_principles(principles: Sequence[str]) -> str:
    return "\n".join(f"{i}. {p}" for i, p in enumerate(principles, 1))


def pairwise_prompt(prompt, first: str, second: str, principles: Sequence[str] = DEFAULT_PRINCIPLES) -> str:
    """The question put to an LLM judge: `first` is shown as Response A, `second` as Response B."""
    return PAIRWISE_TEMPLATE.format(principles=format_principles(principles), prompt=prompt_text(prompt),
                                    a=first, b=second)


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def both_orders(ask: Callable[[list, list, list], list[float]], prompts: Sequence, a: Sequence[str],
                b: Sequence[str]) -> tuple[list[float], list[bool]]:
    """Ask in both orders and average; also say where the judge picked the same position twice.

    `ask(prompts, first, second)` returns P(first shown is better) per item.
    Order 1 shows A first; order 2 shows B first, so there P(A better) = 1 - P(first).
    The averaged probability is antisymmetric by construction:
    compare(a, b) = 1 - compare(b, a). An item counts as position-biased when
    the judge's pick is the first slot in both orders, or the second in both.
    """
    n = len(prompts)
    q = ask(list(prompts) * 2, list(a) + list(b), list(b) + list(a))
    fwd, rev = q[:n], q[n:]
    probs = [(f + (1.0 - r)) / 2.0 for f, r in zip(fwd, rev)]

    def pick(p):
        return None if p == 0.5 else p > 0.5

    same = [pick(f) is not None and pick(f) == pick(r) for f, r in zip(fwd, rev)]
    return probs, same


def _check_lengths(prompts, a, b=None):
    if len(prompts) != len(a) or (b is not None and len(a) != len(b)):
        raise ValueError(f"prompts and responses differ in length: {len(prompts)}, {len(a)}"
                         + (f", {len(b)}" if b is not None else ""))


class Judge(ABC):
    """Decides P(A better) for pairs of responses to the same prompt."""

    name: str = "judge"
    position_bias: float | None = None  # share of items judged by position alone in the last compare
    show: bool = False  # a local model's passes show progress on stderr (`rlhf.progress`)

    @abstractmethod
    def compare(self, prompts: Sequence, responses_a: Sequence[str], responses_b: Sequence[str]) -> list[float]:
        """Probability that A is better than B, per item (0.5 = tie)."""

    def score(self, prompts: Sequence, responses: Sequence[str]) -> list[float]:
        """A scalar quality per response, where the judge has one."""
        raise NotImplementedError(f"the {self.name} judge compares pairs only; it has no scalar score")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


# --------------------------------------------------------------------------- gold


class GoldJudge(Judge):
    """The lab's gold judge: exact, deterministic, knows the task behind every lab prompt.

    `compare` is `rlhf.lab.gold.compare` (+1 -> 1.0, -1 -> 0.0, a tie within
    its epsilon -> exactly 0.5). Pass `stopped_a`/`stopped_b` (did each
    response end with EOS?) to have a response that ran out of tokens judged
    as such; by default every response counts as stopped.
    """

    name = "gold"

    def __init__(self):
        from rlhf.lab import gold

        self._gold = gold

    def score(self, prompts, responses, stopped: Sequence[bool] | None = None) -> list[float]:
        _check_lengths(prompts, responses)
        stopped = [True] * len(responses) if stopped is None else list(stopped)
        return [float(self._gold.score(p, r, stopped=bool(s))) for p, r, s in zip(prompts, responses, stopped)]

    def compare(self, prompts, responses_a, responses_b, *, stopped_a: Sequence[bool] | None = None,
                stopped_b: Sequence[bool] | None = None) -> list[float]:
        _check_lengths(prompts, responses_a, responses_b)
        n = len(prompts)
        sa = [True] * n if stopped_a is None else list(stopped_a)
        sb = [True] * n if stopped_b is None else list(stopped_b)
        outcomes = [self._gold.compare(p, a, b, stopped_a=bool(x), stopped_b=bool(y))
                    for p, a, b, x, y in zip(prompts, responses_a, responses_b, sa, sb)]
        return [{1: 1.0, -1: 0.0}.get(int(o), 0.5) for o in outcomes]


# --------------------------------------------------------------------------- reward model


def _device(device):
    """A torch.device from a name (`auto`, `cpu`, `cuda`, `cuda:N`, `mps`; checked with one line) or a device."""
    if isinstance(device, str):
        from rlhf.trainers.runtime import pick_device

        return pick_device(device)
    return device


class RewardModelJudge(Judge):
    """A Bradley-Terry reward model as a judge: P(A better) = sigmoid(r(A) - r(B))."""

    def __init__(self, model, tokenizer, *, batch_size: int = 8, max_len: int = 1024, name: str = "rm"):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_len, self.name = batch_size, max_len, name

    @classmethod
    def load(cls, path: str, *, dtype: str = "float32", batch_size: int = 8, max_len: int = 1024,
             trust_remote_code: bool = False, device="auto") -> "RewardModelJudge":
        """The reward model at `path` on `device` (a name for `runtime.pick_device`, or a torch.device)."""
        from rlhf.models import disable_dropout, load_reward_model, load_tokenizer

        tok = load_tokenizer(path, trust_remote_code=trust_remote_code)
        model = load_reward_model(path, dtype=dtype, trust_remote_code=trust_remote_code,
                                  pad_token_id=tok.pad_token_id).to(_device(device))
        disable_dropout(model)
        model.eval()
        return cls(model, tok, batch_size=batch_size, max_len=max_len, name=f"rm:{path}")

    def score(self, prompts, responses) -> list[float]:
        from rlhf.trainers.rm import score

        _check_lengths(prompts, responses)
        return [float(s) for s in score(self.model, self.tokenizer, list(prompts), list(responses),
                                        batch_size=self.batch_size, max_len=self.max_len, progress=self.show)]

    def compare(self, prompts, responses_a, responses_b) -> list[float]:
        _check_lengths(prompts, responses_a, responses_b)
        n = len(prompts)
        s = self.score(list(prompts) * 2, list(responses_a) + list(responses_b))  # one pass, both sides
        return [sigmoid(x - y) for x, y in zip(s[:n], s[n:])]


# --------------------------------------------------------------------------- local LLM


def letter_token_ids(tokenizer, letter: str) -> list[int]:
    """Ids of single tokens that spell `letter` (bare, or with a leading space)."""
    ids = set()
    for text in (letter, " " + letter):
        toks = tokenizer(text, add_special_tokens=False)["input_ids"]
        if toks and tokenizer.decode(toks[:1]).strip() == letter:
            ids.add(int(toks[0]))
    if not ids:
        raise UserError(f"the judge's tokenizer has no single token for {letter!r}")
    return sorted(ids)


class LLMJudge(Judge):
    """A local causal LM as a pairwise judge (and a 1-9 rater for `score`).

    The question (`PAIRWISE_TEMPLATE`: the principles, the conversation, both
    responses) is rendered as one user message with the model's chat template,
    followed by `answer_prefix` as the start of the assistant's reply. One
    forward pass gives the next-token distribution; P(first better) is the
    probability mass on "A" (bare or space-prefixed tokens) against "B",
    renormalised over the two. Asked in both orders (see `both_orders`).
    Each of the conversation and the responses is cut to `max_field_tokens`
    first (responses keep their start, the conversation its end), so both
    orders see the same text.
    """

    def __init__(self, model, tokenizer, *, principles: Sequence[str] = DEFAULT_PRINCIPLES, batch_size: int = 8,
                 max_len: int = 2048, max_field_tokens: int = 384, answer_prefix: str = "Better response:",
                 name: str = "llm"):
        self.model, self.tokenizer = model, tokenizer
        self.principles = list(principles)
        self.batch_size, self.max_len, self.max_field_tokens = batch_size, max_len, max_field_tokens
        self.answer_prefix = answer_prefix
        self.name = name
        self.position_bias = None
        self.same_position: list[bool] = []
        self._a_ids = letter_token_ids(tokenizer, "A")
        self._b_ids = letter_token_ids(tokenizer, "B")

    @classmethod
    def load(cls, path: str, *, dtype: str = "float32", trust_remote_code: bool = False, device="auto",
             **kwargs) -> "LLMJudge":
        """The causal LM at `path` as a judge on `device` (a name for `pick_device`, or a torch.device)."""
        from rlhf.models import load_causal_lm, load_tokenizer

        tok = load_tokenizer(path, trust_remote_code=trust_remote_code, padding_side="left")
        model = load_causal_lm(path, dtype=dtype, trust_remote_code=trust_remote_code, dropout_off=True)
        model.to(_device(device)).eval()
        return cls(model, tok, name=f"llm:{path}", **kwargs)

    def _clip(self, text: str, keep: str) -> str:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        n = self.max_field_tokens
        if len(ids) <= n:
            return text
        return self.tokenizer.decode(ids[:n] if keep == "start" else ids[-n:]) + (" [...]" if keep == "start" else "")

    def _render(self, question: str) -> list[int]:
        from rlhf.chat import render_prompt

        text = render_prompt(self.tokenizer, [{"role": "user", "content": question}]) + self.answer_prefix
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids[-self.max_len:]

    def next_token_logprobs(self, rows: list[list[int]]):
        """(N, V) log-softmax of the next token after each row of ids, in batches with left padding."""
        import torch

        from rlhf.progress import Progress
        from rlhf.rollout import accepts_keyword, position_ids_from_mask

        try:
            device = next(self.model.parameters()).device
        except (StopIteration, AttributeError):
            device = torch.device("cpu")
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        # Similar lengths together: less padding.
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        results: dict[int, torch.Tensor] = {}
        extra = {"logits_to_keep": 1} if accepts_keyword(self.model, "logits_to_keep") else {}
        with torch.inference_mode(), Progress(f"judge {self.name}", len(rows), unit="questions",
                                              enabled=self.show) as bar:
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                width = max(len(rows[i]) for i in idx)
                ids = torch.full((len(idx), width), pad, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for j, i in enumerate(idx):
                    ids[j, width - len(rows[i]):] = torch.tensor(rows[i], dtype=torch.long)
                    mask[j, width - len(rows[i]):] = 1
                ids, mask = ids.to(device), mask.to(device)
                logits = self.model(input_ids=ids, attention_mask=mask,
                                    position_ids=position_ids_from_mask(mask), **extra).logits[:, -1, :]  # (b, V)
                lp = torch.log_softmax(logits.float(), dim=-1).cpu()
                for j, i in enumerate(idx):
                    results[i] = lp[j]
                bar.update(len(idx))
        out = [results[i] for i in range(len(rows))]
        return torch.stack(out) if out else torch.zeros((0, 0))

    def prob_first(self, prompts, first, second) -> list[float]:
        """P(the response shown as A is better), one question per item, one order."""
        import torch

        rows = []
        for p, x, y in zip(prompts, first, second):
            question = PAIRWISE_TEMPLATE.format(
                principles=format_principles(self.principles), prompt=self._clip(prompt_text(p), "end"),
                a=self._clip(x, "start"), b=self._clip(y, "start"))
            rows.append(self._render(question))
        lp = self.next_token_logprobs(rows)
        if not rows:
            return []
        la = torch.logsumexp(lp[:, self._a_ids], dim=-1)
        lb = torch.logsumexp(lp[:, self._b_ids], dim=-1)
        return torch.sigmoid(la - lb).tolist()  # = P(A) / (P(A) + P(B))

    def compare(self, prompts, responses_a, responses_b) -> list[float]:
        _check_lengths(prompts, responses_a, responses_b)
        probs, same = both_orders(self.prob_first, prompts, responses_a, responses_b)
        self.same_position = same
        self.position_bias = sum(same) / len(same) if same else None
        return probs

    def score(self, prompts, responses) -> list[float]:
        """Expected rating 1..9 under the model's next-token distribution over the digits."""
        import torch

        _check_lengths(prompts, responses)
        digits = [letter_token_ids(self.tokenizer, str(d)) for d in range(1, 10)]
        rows = [self._render(RATING_TEMPLATE.format(principles=format_principles(self.principles),
                                                    prompt=self._clip(prompt_text(p), "end"),
                                                    response=self._clip(r, "start")))
                for p, r in zip(prompts, responses)]
        if not rows:
            return []
        lp = self.next_token_logprobs(rows)
        per_digit = torch.stack([torch.logsumexp(lp[:, ids], dim=-1) for ids in digits], dim=-1)  # (N, 9)
        w = torch.softmax(per_digit, dim=-1)
        return (w * torch.arange(1, 10, dtype=w.dtype)).sum(-1).tolist()


# --------------------------------------------------------------------------- OpenAI-compatible HTTP

_ANSWER = re.compile(r"\b([AB])\b")


def parse_answer(text: str | None) -> float | None:
    """1.0 for "A", 0.0 for "B" (the first standalone letter), None when there is neither."""
    m = _ANSWER.search(text or "")
    return None if m is None else (1.0 if m.group(1) == "A" else 0.0)


def _is_loopback(url: str) -> bool:
    host = (urlparse(url).hostname or "").lower()
    return host in ("localhost", "127.0.0.1", "::1") or host.startswith("127.")


class OpenAIJudge(Judge):
    """A pairwise judge behind any OpenAI-compatible chat-completions endpoint.

    Both orders are asked (see `both_orders`). With `logprobs=True` the judge
    reads P("A") vs P("B") from the first answer token's `top_logprobs`; when
    the endpoint returns no log-probabilities (or rejects the option, after
    which it is switched off), the first standalone A or B in the reply counts
    as certainty. A reply with neither letter counts 0.5 for that order and is
    counted in `invalid_rate`.

    The API key is read from the environment variable named `api_key_env`
    when the judge is built; it is kept only inside the HTTP client, never
    logged, never in `repr`, in error messages or in any saved file (a server
    echoing it back in an error is masked). Requests run `concurrency` at a
    time on a thread pool. Timeouts, connection errors, 408/409/429 and 5xx are
    retried up to `max_retries` times with exponential backoff and jitter
    (`backoff * 2**attempt`, capped at `max_backoff`, or the server's
    Retry-After when it sends one); other errors stop at once.
    """

    RETRY_STATUS = {408, 409, 429}

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY",
                 principles: Sequence[str] = DEFAULT_PRINCIPLES, timeout: float = 60.0, max_retries: int = 4,
                 backoff: float = 1.0, max_backoff: float = 30.0, concurrency: int = 4, logprobs: bool = True,
                 max_tokens: int = 4, temperature: float = 0.0, seed: int | None = 0):
        import openai

        self.base_url, self.model_name = base_url.rstrip("/"), model
        self.api_key_env = api_key_env
        self.name = f"openai:{self.base_url}#{model}"
        key = os.environ.get(api_key_env) if api_key_env else None
        if not key and not _is_loopback(base_url):
            raise UserError(f"judge {self.name}: set the API key in the environment variable ${api_key_env}")
        # The key lives in the client only (a local server without keys takes any placeholder).
        self._client = openai.OpenAI(base_url=self.base_url, api_key=key or "not-needed", timeout=timeout,
                                     max_retries=0)
        self._has_key = bool(key)
        self.principles = list(principles)
        self.timeout, self.max_retries = timeout, max_retries
        self.backoff, self.max_backoff = backoff, max_backoff
        self.concurrency = max(1, int(concurrency))
        self.logprobs, self.max_tokens, self.temperature, self.seed = logprobs, max_tokens, temperature, seed
        self.position_bias = None
        self.same_position: list[bool] = []
        self.invalid_rate: float | None = None
        self.requests_sent = 0
        self._invalid: list[bool] = []
        self._lock = threading.Lock()
        self._sleep = time.sleep

    def __repr__(self) -> str:
        return f"OpenAIJudge(base_url={self.base_url!r}, model={self.model_name!r}, api_key_env={self.api_key_env!r})"

    def _mask(self, text: str) -> str:
        # The key is read back from the client here rather than kept as an attribute of ours,
        # so that dumping the judge's fields (vars, a config snapshot) cannot reveal it.
        key = self._client.api_key if self._has_key else None
        return text.replace(key, "***") if key else text

    def messages(self, prompt, first: str, second: str) -> list[dict]:
        return [{"role": "system", "content": JUDGE_SYSTEM},
                {"role": "user", "content": pairwise_prompt(prompt, first, second, self.principles)}]

    def _request(self, messages: list[dict]):
        kwargs = dict(model=self.model_name, messages=messages, temperature=self.temperature,
                      max_tokens=self.max_tokens)
        if self.seed is not None:
            kwargs["seed"] = self.seed
        if self.logprobs:
            kwargs.update(logprobs=True, top_logprobs=20)
        with self._lock:
            self.requests_sent += 1
        return self._client.chat.completions.create(**kwargs)

    def _delay(self, attempt: int, error) -> float:
        retry_after = None
        response = getattr(error, "response", None)
        if response is not None:
            try:
                retry_after = float(response.headers.get("retry-after"))
            except (TypeError, ValueError):
                retry_after = None
        if retry_after is not None and retry_after >= 0:
            return min(retry_after, self.max_backoff)
        base = min(self.max_backoff, self.backoff * 2 ** attempt)
        return base * (0.5 + 0.5 * random.random())  # jitter: parallel workers do not retry in lockstep

    def _call(self, messages: list[dict]):
        """One chat completion with retries; UserError with a clean message when it cannot succeed."""
        import openai

        attempt = 0
        while True:
            try:
                return self._request(messages)
            except openai.BadRequestError as e:
                if self.logprobs and "logprob" in str(e).lower():
                    log.warning("%s: endpoint rejects logprobs; reading the answer text instead", self.name)
                    self.logprobs = False
                    continue
                raise UserError(f"judge {self.name}: request rejected: {self._mask(_message(e))}") from None
            except openai.APIStatusError as e:
                retryable = e.status_code in self.RETRY_STATUS or e.status_code >= 500
                if not retryable or attempt >= self.max_retries:
                    hint = f" (check ${self.api_key_env})" if e.status_code in (401, 403) else ""
                    raise UserError(f"judge {self.name}: HTTP {e.status_code}: {self._mask(_message(e))}{hint}"
                                    + (f" after {attempt + 1} attempts" if retryable else "")) from None
                err = e
            except (openai.APITimeoutError, openai.APIConnectionError) as e:
                if attempt >= self.max_retries:
                    what = "timed out" if isinstance(e, openai.APITimeoutError) else "cannot connect"
                    raise UserError(f"judge {self.name}: {what} after {attempt + 1} attempts") from None
                err = e
            delay = self._delay(attempt, err)
            log.info("%s: %s; retry %d/%d in %.2fs", self.name, type(err).__name__, attempt + 1,
                     self.max_retries, delay)
            self._sleep(delay)
            attempt += 1

    def complete(self, messages: list[dict]):
        """One chat completion with this judge's model, retries, timeout and key handling (for other callers,
        e.g. a critic in Constitutional AI); `openai`'s ChatCompletion object."""
        return self._call(messages)

    @staticmethod
    def read_choice(completion) -> float | None:
        """P(first better) from a completion: log-probabilities when present, else the answer text."""
        choice = completion.choices[0]
        content = getattr(getattr(choice, "logprobs", None), "content", None) or []
        for entry in content:
            if not (entry.token or "").strip():
                continue  # leading whitespace tokens
            pa = pb = 0.0
            for alt in (entry.top_logprobs or []) or [entry]:
                t = (alt.token or "").strip()
                if t == "A":
                    pa += math.exp(alt.logprob)
                elif t == "B":
                    pb += math.exp(alt.logprob)
            if pa + pb > 0:
                return pa / (pa + pb)
            break
        return parse_answer(choice.message.content if choice.message else None)

    def prob_first(self, prompts, first, second) -> list[float]:
        jobs = [self.messages(p, x, y) for p, x, y in zip(prompts, first, second)]
        # a failure that survives the retries (bad key, unknown model, server gone) would fail every
        # request alike: the first one stops the rest instead of each being sent and retried in turn
        failed = threading.Event()

        def ask(messages):
            if failed.is_set():
                return None
            try:
                return self.read_choice(self._call(messages))
            except BaseException:
                failed.set()
                raise

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            answers = list(pool.map(ask, jobs))
        self._invalid = [a is None for a in answers]
        return [0.5 if a is None else float(a) for a in answers]

    def compare(self, prompts, responses_a, responses_b) -> list[float]:
        _check_lengths(prompts, responses_a, responses_b)
        probs, same = both_orders(self.prob_first, prompts, responses_a, responses_b)
        self.same_position = same
        self.position_bias = sum(same) / len(same) if same else None
        self.invalid_rate = sum(self._invalid) / len(self._invalid) if self._invalid else None
        return probs


def _message(e) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        inner = body["error"] if isinstance(body.get("error"), dict) else body
        if inner.get("message"):
            return str(inner["message"])
    return str(getattr(e, "message", e)).splitlines()[0]


# --------------------------------------------------------------------------- human labels

_PREFERENCE_WORDS = {"a": 1.0, "response_a": 1.0, "b": 0.0, "response_b": 0.0, "tie": 0.5, "equal": 0.5,
                     "same": 0.5}


def _response_text(value, path, line, field) -> str:
    """A response as text: a string, or TRL's conversational form (a list ending in an assistant message)."""
    if isinstance(value, list) and value and isinstance(value[-1], dict) and "content" in value[-1]:
        value = value[-1]["content"]
    if not isinstance(value, str):
        raise bad_row(path, line, f'"{field}" must be a string')
    if not value.strip():
        raise bad_row(path, line, f'"{field}" is empty')
    return value


def _prompt_key(prompt) -> str:
    return prompt_text(prompt).strip()


def _preference(value, path, line) -> float:
    if isinstance(value, str) and value.strip().lower() in _PREFERENCE_WORDS:
        return _PREFERENCE_WORDS[value.strip().lower()]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0:
        return float(value)
    raise bad_row(path, line, f'"preference" must be "a", "b", "tie" or a number in [0, 1], got {value!r}')


def read_human_labels(path: str | os.PathLike) -> dict[tuple[str, str, str], list[float]]:
    """(prompt, response_a, response_b) -> the labels' P(A better), from JSONL (or a JSON list)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such labels file") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{where(p)}: not UTF-8") from None
    if p.suffix == ".json":
        try:
            rows = list(enumerate(json.loads(text), 1))
        except json.JSONDecodeError as e:
            raise UserError(f"{where(p)}: invalid JSON ({e.msg})") from None
    else:
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append((i, json.loads(line)))
            except json.JSONDecodeError as e:
                raise bad_row(p, i, f"invalid JSON ({e.msg})") from None
    labels: dict[tuple[str, str, str], list[float]] = {}
    for line, row in rows:
        if not isinstance(row, dict):
            raise bad_row(p, line, "expected a JSON object")
        if "prompt" not in row:
            raise bad_row(p, line, '"prompt" is missing')
        prompt = row["prompt"]
        if not isinstance(prompt, (str, list)) or not _prompt_key(prompt):
            raise bad_row(p, line, '"prompt" is empty' if isinstance(prompt, (str, list)) else
                          '"prompt" must be a string or a list of messages')
        if "chosen" in row or "rejected" in row:
            a = _response_text(row.get("chosen"), p, line, "chosen")
            b = _response_text(row.get("rejected"), p, line, "rejected")
            pref = 0.5 if row.get("tie") is True else 1.0  # `rlhf label export --ties` marks ties so
        elif "response_a" in row or "response_b" in row:
            a = _response_text(row.get("response_a"), p, line, "response_a")
            b = _response_text(row.get("response_b"), p, line, "response_b")
            if "preference" not in row:
                raise bad_row(p, line, '"preference" is missing')
            pref = _preference(row["preference"], p, line)
        else:
            raise bad_row(p, line, f"unknown label format with keys {sorted(row)}; expected "
                                   "{prompt, chosen, rejected} or {prompt, response_a, response_b, preference}")
        if a == b:
            raise bad_row(p, line, "the two responses are identical")
        labels.setdefault((_prompt_key(prompt), a, b), []).append(pref)
    if not labels:
        raise UserError(f"{where(p)}: no rows")
    return labels


class HumanJudge(Judge):
    """Human labels as a judge: looks each pair up (in either order) and averages its labels.

    Several annotators on one pair average to the share preferring A. A pair
    with no label is an error naming how many are missing: a human judge can
    only judge what people have labelled.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self.name = f"human:{path}"
        self.labels = read_human_labels(path)

    def lookup(self, prompt, a: str, b: str) -> float | None:
        key = _prompt_key(prompt)
        votes = list(self.labels.get((key, a, b), []))
        votes += [1.0 - v for v in self.labels.get((key, b, a), [])]
        return sum(votes) / len(votes) if votes else None

    def compare(self, prompts, responses_a, responses_b) -> list[float]:
        _check_lengths(prompts, responses_a, responses_b)
        found = [self.lookup(p, a, b) for p, a, b in zip(prompts, responses_a, responses_b)]
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            first = prompt_text(prompts[missing[0]])
            raise UserError(f"{where(self.path)}: no human label for {len(missing)} of {len(found)} pairs "
                            f"(first: prompt {first[:60]!r})")
        return [float(f) for f in found]

    def pairs(self) -> tuple[list[str], list[str], list[str]]:
        """Every labelled pair as (prompts, responses_a, responses_b)."""
        keys = list(self.labels)
        return [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]


# --------------------------------------------------------------------------- registry

JUDGE_KINDS = ("gold", "rm:PATH", "llm:PATH", "openai:URL#MODEL", "human:FILE")


def parse_openai_spec(spec: str) -> tuple[str, str]:
    """`openai:URL#MODEL` -> (URL, MODEL); one clear line when it is not that."""
    url, _, model = spec[len("openai:"):].partition("#")
    if not url.startswith(("http://", "https://")) or not model:
        raise UserError(f"'{spec}': write it as openai:http://HOST:PORT/v1#MODEL")
    return url, model


def make_judge(spec: str, *, api_key_env: str = "OPENAI_API_KEY", principles: Sequence[str] | None = None,
               batch_size: int = 8, max_len: int = 1024, dtype: str = "float32", timeout: float = 60.0,
               max_retries: int = 4, concurrency: int = 4, trust_remote_code: bool = False, device="auto") -> Judge:
    """Build a judge from its spec string (see the module docstring); a local model runs on `device`."""
    spec = (spec or "").strip()
    kind, _, arg = spec.partition(":")
    principles = list(principles) if principles else list(DEFAULT_PRINCIPLES)
    if spec == "gold":
        return GoldJudge()
    if kind == "rm" and arg:
        return RewardModelJudge.load(arg, dtype=dtype, batch_size=batch_size, max_len=max_len,
                                     trust_remote_code=trust_remote_code, device=device)
    if kind == "llm" and arg:
        return LLMJudge.load(arg, dtype=dtype, trust_remote_code=trust_remote_code, principles=principles,
                             batch_size=batch_size, max_len=max(max_len, 256), device=device)
    if kind == "openai" and arg:
        url, model = parse_openai_spec(spec)
        return OpenAIJudge(url, model, api_key_env=api_key_env, principles=principles, timeout=timeout,
                           max_retries=max_retries, concurrency=concurrency)
    if kind == "human" and arg:
        return HumanJudge(arg)
    raise UserError(f"unknown judge '{spec}'; use one of: {', '.join(JUDGE_KINDS)}")


__all__ = ["parse_openai_spec", "Judge", "GoldJudge", "RewardModelJudge", "LLMJudge", "OpenAIJudge", "HumanJudge", "make_judge",
           "both_orders", "pairwise_prompt", "parse_answer", "read_human_labels", "DEFAULT_PRINCIPLES",
           "sigmoid", "letter_token_ids"]
