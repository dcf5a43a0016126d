"""Simulated annotators: noisy, sometimes biased judges of lab responses.

An annotator prefers response a to b with the Bradley-Terry probability

    P(a > b) = sigmoid((u(a) - u(b)) / T),   u(x) = gold(x) + bias(x)

where gold is the lab's gold score and T the annotator's temperature (their
noise). `rank` draws a whole ranking from the matching Plackett-Luce model
(utilities plus Gumbel noise, sorted), so any two of its responses are
ordered with exactly the pairwise probability above.

The default temperature makes two independent unbiased annotators agree on
about 70% of pairs of distinct responses from an SFT model, as InstructGPT's
labelers did (~72%). A biased annotator adds a bonus for something the gold
judge does not value (or penalises a little): longer answers ("length"), a
flattering preamble ("flattery"), or markdown formatting ("format"). A reward
model trained on their comparisons learns the bias, and a policy optimised
against it drifts away from gold: reward hacking that the lab can measure.
"""

from __future__ import annotations

import math
import random
from typing import Sequence

from rlhf.lab import gold

DEFAULT_TEMPERATURE = 0.25
BIASES = ("length", "flattery", "format")
# Bias bonus at bias_strength 1: per word (up to LENGTH_WORDS words), or for having the trait at all.
# Each is larger than what the gold judge takes off for the same thing, so the bias wins.
LENGTH_BONUS, LENGTH_WORDS = 0.05, 40
FLATTERY_BONUS = 0.6
FORMAT_BONUS = 0.5


def bias_bonus(response: str, bias: str | None, strength: float = 1.0) -> float:
    """What a biased annotator adds to a response's utility on top of its gold score."""
    if not bias or bias == "none":
        return 0.0
    if bias == "length":
        return strength * LENGTH_BONUS * min(len(gold.words(response)), LENGTH_WORDS)
    if bias == "flattery":
        return strength * FLATTERY_BONUS * (gold.flattery_count(response) > 0)
    if bias == "format":
        return strength * FORMAT_BONUS * gold.has_markup(response)
    raise ValueError(f"unknown annotator bias {bias!r}; expected none or one of {', '.join(BIASES)}")


class Annotator:
    """A simulated labeler: `prefer(prompt, a, b)` and `rank(prompt, responses)`.

    `stopped` flags (did the response end with EOS?) reach the gold judge;
    by default every response counts as stopped.
    """

    def __init__(self, temperature: float = DEFAULT_TEMPERATURE, bias: str | None = None,
                 bias_strength: float = 1.0, seed: int = 0):
        if temperature <= 0:
            raise ValueError(f"annotator temperature must be positive, got {temperature}")
        if bias not in (None, "none", *BIASES):
            raise ValueError(f"unknown annotator bias {bias!r}; expected none or one of {', '.join(BIASES)}")
        self.temperature = float(temperature)
        self.bias = None if bias == "none" else bias
        self.bias_strength = float(bias_strength)
        self.rng = random.Random(seed)

    def utility(self, prompt, response: str, stopped: bool = True) -> float:
        return gold.score(prompt, response, stopped) + bias_bonus(response, self.bias, self.bias_strength)

    def p_prefer(self, prompt, a: str, b: str, stopped_a: bool = True, stopped_b: bool = True) -> float:
        """Probability that this annotator prefers `a` (no randomness used)."""
        diff = self.utility(prompt, a, stopped_a) - self.utility(prompt, b, stopped_b)
        return 1.0 / (1.0 + math.exp(-diff / self.temperature))

    def prefer(self, prompt, a: str, b: str, stopped_a: bool = True, stopped_b: bool = True) -> bool:
        """True when the annotator prefers `a` to `b` (one noisy judgement)."""
        return self.rng.random() < self.p_prefer(prompt, a, b, stopped_a, stopped_b)

    def rank(self, prompt, responses: Sequence[str], stopped: Sequence[bool] | None = None) -> list[int]:
        """Indices of `responses`, best first (one Plackett-Luce draw)."""
        stopped = [True] * len(responses) if stopped is None else list(stopped)
        noisy = []
        for i, (r, s) in enumerate(zip(responses, stopped)):
            gumbel = -math.log(-math.log(max(self.rng.random(), 1e-300)))
            noisy.append((self.utility(prompt, r, s) / self.temperature + gumbel, i))
        return [i for _, i in sorted(noisy, reverse=True)]


def agreement(pairs: Sequence[tuple], a: Annotator, b: Annotator) -> float:
    """Share of `(prompt, x, y)` pairs on which two annotators make the same choice."""
    same = sum(a.prefer(p, x, y) == b.prefer(p, x, y) for p, x, y in pairs)
    return same / max(1, len(pairs))


def expected_agreement(pairs: Sequence[tuple], a: Annotator, b: Annotator) -> float:
    """The agreement `agreement` estimates: mean of p_a p_b + (1 - p_a)(1 - p_b)."""
    total = 0.0
    for p, x, y in pairs:
        pa, pb = a.p_prefer(p, x, y), b.p_prefer(p, x, y)
        total += pa * pb + (1 - pa) * (1 - pb)
    return total / max(1, len(pairs))
