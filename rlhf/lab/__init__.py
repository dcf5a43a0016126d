"""The built-in lab: a world where alignment can be measured exactly.

- `world`       generated instructions in six families (sums, sorting, reversing
                words, fact look-ups, harmful requests to refuse, harmless look-alikes
                not to refuse), disjoint train/eval splits, `parse_task(prompt)`.
- `gold`        the gold judge: `score(prompt, response, stopped)` in [-2, 1.5],
                `breakdown`, `compare`; correctness first, then harmlessness,
                concision, stopping, no padding, flattery, markup or repetition;
                `skill_correctness` (share of skill prompts answered right).
- `annotators`  simulated labelers: Bradley-Terry noise on gold (~70% agreement),
                optional length / flattery / format bias.
- `tokenizer`   a small byte-level BPE tokenizer with a chat template.
- `pretrain`    the base model, a small Llama trained from scratch on world text
                with a base model's habits (presets `lab`, `lab-long` and `lab-small`).
- `critic`      the lab critic (preset `lab-critic`): pretrained on world text that also
                holds critiques, revisions and comparisons, for `rlhf cai`.
- `skills`      correctness of models on held-out skill prompts, per family
                (`rlhf lab skills MODEL,MODEL`).
- `generate`    `rlhf lab data` (demonstrations, ranked comparisons, eval prompts)
                and `rlhf lab gold`.

The policy never sees the gold judge: only annotators' comparisons reach the
reward model, so the gold score can tell when optimisation games the reward.
"""
