"""The verifiable reward both sides of the GRPO and RLOO benchmarks call, in TRL's convention.

    fn(prompts, completions, **kwargs) -> list[float]

Our side loads it with `--reward benchmarks/rewards.py:capitalised_share`;
TRL's side passes the function to `GRPOTrainer` / `RLOOTrainer` as
`reward_funcs`. Both hand it the decoded completions (special tokens
skipped). Plain Python: no torch, no `rlhf` import, so it runs the same in
every virtualenv.

The lab-size benchmark models are random-init, so a correctness reward would
be 0 for every sample and every group's rewards would be equal (no advantage,
nothing learned). The share of a completion's words that start with a
capital letter is a format reward a random model's samples spread widely on
(mean about 0.1, standard deviation about 0.07 over 32-token samples of
bench-10m, from 0 to above 0.2), and one a policy can move by shifting
probability to the capitalised word pieces of its vocabulary.
"""

from __future__ import annotations


def capitalised_share(prompts, completions, **kwargs) -> list[float]:
    """Per completion: the share of its whitespace-separated words whose first character is an upper-case
    letter, in [0, 1]; 0 for a completion with no words."""
    out = []
    for c in completions:
        text = c if isinstance(c, str) else "".join(m.get("content", "") for m in c)  # a chat completion's messages
        words = text.split()
        out.append(sum(w[0].isupper() for w in words) / len(words) if words else 0.0)
    return out
