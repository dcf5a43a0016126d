"""`rlhf label rescore`: score a project's queue with reward models (or a judge, or a probe), for active learning.

Each item's responses are scored by every reward model given (one folder,
several, or an ensemble folder: `rlhf rm --ensemble K`; or the heads of a
probe fit to the labels so far, `--probe`), and the store gets, per item,
in the item's own terms:

- `margin`: pairwise, mean r(response 0) - r(response 1); ranking, the
  smallest gap between two responses' mean rewards; thumbs, the mean reward
  (0 is the reward of an average training response: `rlhf rm` normalises);
- `spread`: how much the members disagree about it: the population std over
  members of the pairwise margin (ranking: the largest over its pairs;
  thumbs: of the reward); None with one model;
- `information`: what the label would tell about which member is right
  (BALD, Houlsby et al. 2011): H(mean p) - mean H(p) in nats, p = sigmoid of
  a member's margin, its Bradley-Terry P(response 0 preferred) (ranking: the
  largest over its pairs; thumbs: p = sigmoid of the reward); None with one
  model. It is high where members are each sure and disagree, low where each
  calls the pair a coin flip (a near-tie a label cannot settle);
- `suggestion`: the answer the models' mean reward gives (`a`/`b`, a ranking,
  `up`/`down`), shown to annotators only where the project turns suggestions on.

`--order uncertainty` hands out the smallest |margin| first (the model is
least sure), `--order disagreement` the largest spread first (the ensemble
disagrees most), `--order information` the largest information first. An
LLM judge (`--judge`, a spec as `rlhf eval` takes: `llm:`, `openai:`,
`rm:`) gives a pairwise margin of logit P(A better) and a suggestion, no
spread. A probe (`--probe MODEL`, `rlhf.labeling.probe`)
fits `members` Bradley-Terry heads on MODEL's frozen features to the
project's labels so far and scores with them, as `rlhf label active-lab`
measured the orders: seconds, where an ensemble of `rlhf rm` models takes
a retraining of each.

This module imports torch only inside `rescore`; the web process imports
none of it, it only sorts by the stored numbers.
"""

from __future__ import annotations

import math
import statistics
from itertools import combinations
from typing import Optional, Sequence

from rlhf.errors import UserError


def information(margins: Sequence[float]) -> Optional[float]:
    """BALD of one comparison from its members' margins: H(mean p) - mean H(p), nats; None with one member.

    p = sigmoid(margin) is a member's Bradley-Terry probability that response 0
    is preferred; H the entropy of that coin. The mutual information between
    the label and which member is right: 0 when the members agree (however
    unsure), up to log 2 when each is certain and half say each answer.
    """
    if len(margins) < 2:
        return None

    def entropy(p: float) -> float:
        return 0.0 if p <= 0.0 or p >= 1.0 else -(p * math.log(p) + (1 - p) * math.log1p(-p))

    ps = [0.5 * (1.0 + math.tanh(0.5 * m)) for m in margins]  # sigmoid(m), without overflow
    return max(0.0, entropy(sum(ps) / len(ps)) - sum(entropy(p) for p in ps) / len(ps))


def item_score(mode: str, member_scores: Sequence[Sequence[float]]) -> dict:
    """(M members, K responses) rewards of one item -> {margin, spread, information, suggestion} in item terms."""
    m = len(member_scores)
    k = len(member_scores[0])
    mean = [sum(s[i] for s in member_scores) / m for i in range(k)]

    def spread_of(values: list[float]) -> Optional[float]:
        return statistics.pstdev(values) if m > 1 else None

    if mode == "thumbs":
        rewards = [s[0] for s in member_scores]
        return {"margin": mean[0], "spread": spread_of(rewards), "information": information(rewards),
                "suggestion": "up" if mean[0] > 0 else "down" if mean[0] < 0 else None}
    if mode == "pairwise":
        margin, margins = mean[0] - mean[1], [s[0] - s[1] for s in member_scores]
        return {"margin": margin, "spread": spread_of(margins), "information": information(margins),
                "suggestion": "a" if margin > 0 else "b" if margin < 0 else None}
    if mode == "ranking":
        pairs = list(combinations(range(k), 2))
        spreads = [spread_of([s[i] - s[j] for s in member_scores]) for i, j in pairs]
        infos = [information([s[i] - s[j] for s in member_scores]) for i, j in pairs]
        order = sorted(range(k), key=lambda i: -mean[i])
        places: list = []
        for i in order:  # exactly equal rewards share a place
            if places and mean[places[-1][0]] == mean[i]:
                places[-1].append(i)
            else:
                places.append([i])
        return {"margin": min(abs(mean[i] - mean[j]) for i, j in pairs),
                "spread": None if m == 1 else max(spreads), "information": None if m == 1 else max(infos),
                "suggestion": [p[0] if len(p) == 1 else p for p in places]}
    raise UserError(f"rescore: a {mode} project has nothing to compare (only pairwise, ranking and thumbs)")


def judge_score(p_first: float) -> dict:
    """A pairwise judge's P(response 0 better) -> {margin (its logit), spread and information None, suggestion}."""
    p = min(max(p_first, 1e-6), 1 - 1e-6)
    return {"margin": math.log(p / (1 - p)), "spread": None, "information": None,
            "suggestion": "a" if p_first > 0.5 else "b" if p_first < 0.5 else None}


def probe_rewards(store, project, items, model: str, *, members: int, seed: int = 0, batch_size: int = 16,
                  max_len: int = 512, device="cpu", log=None) -> list[list[float]]:
    """Per member, the reward of every response of `items`: probe heads fit to the project's comparisons.

    `rlhf.labeling.probe`, as `rlhf label active-lab` measured it and `rlhf rm
    --head-only --pooling mean` trains it: `model`'s response-mean features
    of every response in the project; each labelled comparison (ties, skips and "bad" left out; an adjudicated item's
    decision in place of its votes, as export gives them) is a pair winner
    minus loser; `members` heads on bootstrap resamples (one: a head on all).
    """
    from rlhf.labeling.export import adjudicated, comparisons
    from rlhf.labeling.probe import L2, bootstrap_heads, distinct_features, fit_head

    if project.mode not in ("pairwise", "ranking"):
        raise UserError(f"--probe learns from comparisons: project '{project.name}' is {project.mode} "
                        "(give --reward-model instead)")
    everything = store.project_items(project)
    labels = adjudicated(store.project_labels(project), store.decisions(project))
    won = [(lab["item_id"], i, j) if outcome == "a" else (lab["item_id"], j, i)
           for lab in labels for i, j, outcome in comparisons(lab, project.mode) if outcome != "tie"]
    if not won:
        raise UserError(f"--probe learns from labels: project '{project.name}' has no comparison labelled yet "
                        "(label some first, or give --reward-model)")
    if log:
        log(f"rlhf label rescore: probe on {model}: {members} heads fit to {len(won)} labelled comparisons")
    h, row = distinct_features(model, [(it.prompt, text) for it in everything.values() for text in it.responses],
                               max_len=max_len, batch_size=batch_size, device=device)

    def at(it, k: int) -> int:
        return row(it.prompt, it.responses[k])

    x = h[[at(everything[i], w) for i, w, _ in won]] - h[[at(everything[i], lo) for i, _, lo in won]]
    heads = [fit_head(x, L2)] if members == 1 else bootstrap_heads(x, members, seed=seed, l2=L2)
    queue = h[[at(it, k) for it in items for k in range(len(it.responses))]]
    return [(queue @ w).tolist() for w in heads]


def rescore(store, project, *, reward_models: Sequence[str] = (), judge: Optional[str] = None,
            probe: Optional[str] = None, members: int = 10, every: bool = False, batch_size: int = 16,
            max_len: int = 512, device="cpu", log=print) -> dict:
    """Score the project's queue (or `every` item) and store the scores; -> a summary."""
    if project.mode == "demonstration":
        raise UserError(f"rescore: project '{project.name}' collects demonstrations: nothing to compare")
    if judge and project.mode != "pairwise":
        raise UserError(f"--judge compares two responses: project '{project.name}' is {project.mode} "
                        "(give --reward-model instead)")
    items = [it for it in store.queue(project, every=every) if it.responses]
    if not items:
        return {"items": 0, "members": 0, "source": None}
    prompts = [it.prompt for it in items for _ in it.responses]
    responses = [r for it in items for r in it.responses]
    if judge:
        from rlhf.judges import make_judge

        j = make_judge(judge, batch_size=batch_size, max_len=max_len, device=device)
        p = j.compare([it.prompt for it in items], [it.responses[0] for it in items],
                      [it.responses[1] for it in items])
        rows = [{"item_id": it.id, **judge_score(x)} for it, x in zip(items, p)]
        source, members = judge, 1
    else:
        if probe:
            per_member = probe_rewards(store, project, items, probe, members=members, batch_size=batch_size,
                                       max_len=max_len, device=device, log=log)
            source = f"probe:{probe}"
        else:
            from rlhf.judges import RewardModelJudge

            per_member = []
            for n, path in enumerate(reward_models):
                if log:
                    log(f"rlhf label rescore: reward model {n + 1}/{len(reward_models)}: {path}")
                rm = RewardModelJudge.load(path, batch_size=batch_size, max_len=max_len, device=device)
                per_member.append(rm.score(prompts, responses))
                del rm
            source = ",".join(reward_models)
        rows, start = [], 0
        for it in items:
            k = len(it.responses)
            rows.append({"item_id": it.id, **item_score(project.mode, [s[start:start + k] for s in per_member])})
            start += k
        members = len(per_member)
    store.set_scores(project, rows, source=source)
    return {"items": len(rows), "members": members, "source": source, "rows": rows}
