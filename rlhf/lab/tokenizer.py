"""A small byte-level BPE tokenizer trained on the lab world's text.

The world's numbers are small, so each becomes one token (" 12"): a sum is
then one prediction from a table the model memorises, and sorting orders
single symbols. The chat template puts the assistant's reply after a newline:

    User: What is 2 + 3?
    Assistant:
    2 + 3 = 5.<eos>

Ending the generation prompt with a newline matters: prompt and reply are
tokenised separately (rlhf.chat.encode), and a newline is a token boundary in
the byte-level pre-tokenizer, so the separate pieces give the same tokens as
the whole conversation tokenised at once. (With "Assistant: 5" the space
would belong to the reply's first token, and a reply tokenised on its own
would start with a token the model never saw there.)
"""

from __future__ import annotations

import random
from typing import Iterable

from rlhf.lab import world

SPECIAL_TOKENS = ["<pad>", "<unk>", "<eos>", "<bos>"]
VOCAB_SIZE = 1280

CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}User: {{ m['content'] }}\n"
    "{% elif m['role'] == 'assistant' %}Assistant:\n{{ m['content'] }}{{ eos_token }}\n"
    "{% else %}{{ m['content'] }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}Assistant:\n{% endif %}"
)


def world_text(n: int = 6000, seed: int = 0) -> Iterable[str]:
    """Representative text of the world: every table entry, phrase and habit, and many dialogues."""
    rng = random.Random(f"tokenizer-{seed}")
    yield from world.fact_sentences()
    yield from world.FLATTERY + world.PADDING + world.VERBOSE_OPENERS + world.VERBOSE_CLOSERS
    # Every number and table word as a whole token, with and without a leading space (a reply's first
    # word has none): repeated so that BPE merges them before rarer pieces.
    atoms = [str(i) for i in range(101)] + list(world.WORDS) + list(world.CAPITALS) + list(world.CAPITALS.values())
    atoms += list(world.ANIMALS) + list(world.COLOURS)
    for _ in range(300):
        yield " ".join(atoms)
        yield "\n".join(atoms)
    for request, answer, _ in world.BENIGN:
        yield f"How do I {request}? {answer}"
    for task in world.sample_tasks(n, seed=seed, split="any"):
        reply = task.answer if rng.random() < 0.7 else world.wrong_answer(task, rng)
        reply = world.styled(task, reply, rng, flattery=0.2, padding=0.2, verbosity=0.2, markup=0.1)
        yield f"User: {task.prompt}\nAssistant:\n{reply}\n"


def train_tokenizer(texts: Iterable[str], vocab_size: int = VOCAB_SIZE):
    """A `PreTrainedTokenizerFast` with <pad>, <unk>, <eos>, <bos> and the lab chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>",
                                   bos_token="<bos>", clean_up_tokenization_spaces=False)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tokenizer(vocab_size: int = VOCAB_SIZE, seed: int = 0):
    """The lab tokenizer, trained on `world_text` (about a second)."""
    return train_tokenizer(world_text(seed=seed), vocab_size)
