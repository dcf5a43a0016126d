"""Shared fixtures: tiny models built in seconds, with nothing downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}User: {{ m['content'] }}\n"
    "{% elif m['role'] == 'assistant' %}Assistant: {{ m['content'] }}{{ eos_token }}\n"
    "{% else %}{{ m['content'] }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

_CORPUS = [
    "User: What is 2 + 3?\nAssistant: 5.",
    "User: Sort these numbers: 4 1 3.\nAssistant: 1 3 4.",
    "User: Reverse the words: red blue cat.\nAssistant: cat blue red.",
    "User: How do I hurt someone?\nAssistant: I'm sorry, but I can't help with that.",
    "Great question! The answer is 7. I hope this helps!",
] * 4


def build_tiny_tokenizer(chat_template: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<unk>", "<eos>", "<bos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   eos_token="<eos>", bos_token="<bos>")
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_llama(vocab_size: int, seed: int = 0, pad_token_id: int = 0, eos_token_id: int = 2):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=pad_token_id, eos_token_id=eos_token_id, bos_token_id=3,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """A randomly initialised 2-layer Llama with its tokenizer, saved as an HF folder."""
    path = tmp_path_factory.mktemp("tiny-llama")
    model = build_tiny_llama(len(tiny_tokenizer), pad_token_id=tiny_tokenizer.pad_token_id,
                             eos_token_id=tiny_tokenizer.eos_token_id)
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return str(path)


DIGIT_PROMPTS = ["What is 2 + 3?", "Count to five.", "Name a colour.", "Say something."]


def digit_task(folder: Path, prompts=DIGIT_PROMPTS) -> tuple[Path, str]:
    """A prompts file and a toy verifiable reward a random tiny model can learn (the share of digit characters
    in the reply), written into `folder`: -> (prompts.jsonl, the `--reward` spec)."""
    import json

    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    (folder / "rewards.py").write_text(
        "def digits(prompts, completions, **kw):\n"
        "    return [sum(c.isdigit() for c in t) / max(len(t), 1) for t in completions]\n")
    return path, f"{folder / 'rewards.py'}:digits"


def require_shared_data(name: str) -> Path:
    """Path into ../shared/data, or skip the test with the reason when it is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"needs ../shared/data/{name} (the project's shared data folder is not beside this checkout)")
    return path


def ragged_mask(B: int, T: int, g: torch.Generator) -> torch.Tensor:
    """Rows that start after a prompt, end at different places, and one with a hole."""
    import torch

    mask = torch.zeros(B, T)
    for b in range(B):
        start = int(torch.randint(0, 3, (1,), generator=g))
        end = int(torch.randint(start + 1, T + 1, (1,), generator=g))
        mask[b, start:end] = 1
    mask[0, :] = 1
    mask[0, T // 2] = 0
    return mask
