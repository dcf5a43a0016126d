"""Tokenise a whole data set once, up front, with `rlhf.chat.encode`'s exact rules.

`chat.encode` is the one definition of how a prompt and a response become
token ids (and how they are truncated). It tokenises one text per call;
`encode_all` hands it a tokenizer whose answers come from a cache filled by
one batched call per few thousand texts, and renders each distinct prompt
once (a prompt with K responses is not templated and tokenised K times).
"""

from __future__ import annotations

from typing import Sequence

from rlhf.chat import Encoded, encode, render_prompt, render_response
from rlhf.data.records import Message, prompt_key

_CHUNK = 2048  # texts per batched tokenizer call


class MemoTokenizer:
    """A tokenizer proxy: `tok(text, add_special_tokens=False)` and prompt rendering are memoised.

    Memoised ids are whole texts, never truncated, so the tokenizer's "longer than the model's maximum" warning
    is off for them: `rlhf.chat.encode` truncates afterwards.
    """

    def __init__(self, tokenizer):
        self._tok = tokenizer
        self._ids: dict[str, list[int]] = {}
        self._rendered: dict[tuple, str] = {}

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __call__(self, text, add_special_tokens: bool = True, verbose: bool = True, **kwargs):
        if isinstance(text, str) and not add_special_tokens and not kwargs:
            ids = self._ids.get(text)
            if ids is None:
                ids = self._ids[text] = list(self._tok(text, add_special_tokens=False, verbose=False)["input_ids"])
            return {"input_ids": ids}
        return self._tok(text, add_special_tokens=add_special_tokens, verbose=verbose, **kwargs)

    def apply_chat_template(self, conversation, tokenize: bool = True, add_generation_prompt: bool = False,
                            **kwargs):
        if tokenize or kwargs or not isinstance(conversation, list) or not conversation \
                or not isinstance(conversation[0], dict):
            return self._tok.apply_chat_template(conversation, tokenize=tokenize,
                                                 add_generation_prompt=add_generation_prompt, **kwargs)
        key = (prompt_key(conversation), add_generation_prompt)
        text = self._rendered.get(key)
        if text is None:
            text = self._rendered[key] = self._tok.apply_chat_template(
                conversation, tokenize=False, add_generation_prompt=add_generation_prompt)
        return text

    def prefill(self, texts: Sequence[str]) -> None:
        todo = [t for t in dict.fromkeys(texts) if t not in self._ids]
        for start in range(0, len(todo), _CHUNK):
            chunk = todo[start:start + _CHUNK]
            for text, ids in zip(chunk, self._tok(chunk, add_special_tokens=False, verbose=False)["input_ids"]):
                self._ids[text] = list(ids)


def encode_all(tokenizer, items: Sequence[tuple[list[Message] | None, str | None]], max_len: int, *,
               encoder: bool = False) -> list[Encoded]:
    """`chat.encode(tokenizer, prompt, response, max_len)` for every (prompt, response), batched."""
    memo = tokenizer if isinstance(tokenizer, MemoTokenizer) else MemoTokenizer(tokenizer)
    texts = []
    prompts_seen = set()
    for prompt, response in items:
        if prompt:
            key = prompt_key(prompt)
            if key not in prompts_seen:
                prompts_seen.add(key)
                texts.append(render_prompt(memo, prompt))
        if response is not None:
            texts.append(response if encoder or not prompt else render_response(memo, response))
    memo.prefill(texts)
    return [encode(memo, prompt, response, max_len, encoder=encoder) for prompt, response in items]
