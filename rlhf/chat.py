"""How a conversation becomes token ids, the same way in every stage.

A prompt is a list of messages `[{"role": "user", "content": ...}, ...]`
(a plain string is one user message); a response is the assistant's reply.
With a chat template the prompt is rendered by it with the generation prompt;
without one, in the Anthropic HH layout (`\\n\\nHuman: ...\\n\\nAssistant:`).

Prompt and response are tokenised separately and concatenated, so the
response tokens (the only ones SFT trains on, and the ones PPO samples) never
merge with the prompt's last token; a causal LM's response ends with EOS.

Truncation policy, everywhere: a sequence longer than `max_len` keeps its last
`max_len` tokens. The prompt is cut from the left first; the end of the
response (with its EOS, where reward models read their score) always
survives. An encoder keeps its leading [CLS] token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

Message = dict  # {"role": str, "content": str}

_ROLE_NAMES = {"user": "Human", "assistant": "Assistant", "system": "System"}


def as_messages(prompt: str | Sequence[Message] | None) -> list[Message]:
    if prompt is None:
        return []
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [dict(m) for m in prompt]


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer, prompt: str | Sequence[Message]) -> str:
    """Prompt text up to where the assistant's reply begins."""
    messages = as_messages(prompt)
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "".join(f"\n\n{_ROLE_NAMES.get(m['role'], m['role'].title())}: {m['content']}" for m in messages) + (
        "\n\nAssistant:"
    )


def render_response(tokenizer, response: str) -> str:
    if not has_chat_template(tokenizer) and response and not response[0].isspace():
        return " " + response
    return response


def is_encoder(tokenizer_or_config) -> bool:
    """BERT-style models: no causal LM head, [CLS] ... [SEP] framing."""
    cfg = getattr(tokenizer_or_config, "config", tokenizer_or_config)
    return bool(getattr(cfg, "is_encoder_decoder", False) is False and getattr(cfg, "model_type", "") in
                {"bert", "roberta", "distilbert", "deberta", "deberta-v2", "electra", "modernbert", "xlm-roberta"})


@dataclass
class Encoded:
    input_ids: list[int]
    n_prompt: int  # tokens before the response starts (after truncation)
    truncated: bool


def _ids(tokenizer, text: str) -> list[int]:
    # verbose=False: no "longer than the maximum sequence length" warning, the truncation below is ours
    return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]


def encode(tokenizer, prompt, response: str | None, max_len: int, *, encoder: bool = False,
           add_eos: bool = True) -> Encoded:
    """Token ids of prompt + response, truncated by the policy above.

    `response=None` encodes the prompt alone (for generation). For a raw-text
    example (SFT `{text}`), pass `prompt=None`: the text is the response.
    """
    if encoder:
        p_ids = _ids(tokenizer, render_prompt(tokenizer, prompt) if prompt else "")
        r_ids = _ids(tokenizer, response or "")
        cls = [tokenizer.cls_token_id] if tokenizer.cls_token_id is not None else []
        sep = [tokenizer.sep_token_id] if tokenizer.sep_token_id is not None else []
        full = p_ids + sep + r_ids + sep if response is not None else p_ids + sep
        budget = max_len - len(cls)
        removed = max(0, len(full) - budget)
        n_prompt = len(cls) + max(0, len(p_ids) + len(sep) - removed)
        return Encoded(cls + full[removed:], n_prompt, removed > 0)
    p_ids = _ids(tokenizer, render_prompt(tokenizer, prompt)) if prompt else []
    if prompt and getattr(tokenizer, "bos_token_id", None) is not None and not has_chat_template(tokenizer) \
            and getattr(tokenizer, "add_bos_token", False):
        p_ids = [tokenizer.bos_token_id] + p_ids
    r_ids: list[int] = []
    if response is not None:
        r_ids = _ids(tokenizer, render_response(tokenizer, response) if prompt else response)
        if add_eos and tokenizer.eos_token_id is not None:
            r_ids = r_ids + [tokenizer.eos_token_id]
    ids = p_ids + r_ids
    truncated = len(ids) > max_len
    if truncated:
        ids = ids[-max_len:]
    n_prompt = max(0, len(ids) - len(r_ids))
    return Encoded(ids, n_prompt, truncated)
