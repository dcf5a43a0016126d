"""Building what `rlhf ppo` trains with: models, the reward function, prompts, evaluation, PPO-ptx data."""

from __future__ import annotations

import itertools
from typing import Sequence

from rlhf.errors import UserError

LAB_TRAIN_PROMPTS = 4000  # distinct lab training prompts drawn for PPO
LAB_REFERENCE_TEXTS = 128  # held-out ideal answers whose perplexity is tracked


# --- prompts and texts ----------------------------------------------------------

def lab_tasks(n: int, split: str, seed: int = 0):
    from rlhf.lab.world import sample_tasks

    return sample_tasks(n, seed=seed, split=split)


def load_prompt_list(spec: str, *, split: str, n: int | None = None, seed: int = 0) -> list:
    """'lab' -> lab prompts of `split` (train, or the held-out eval split); else a data file (`rlhf.data`)."""
    if spec == "lab":
        if split == "eval":
            from rlhf.evaluate import default_prompts

            return default_prompts(n or 64, seed)
        return [t.prompt for t in lab_tasks(n or LAB_TRAIN_PROMPTS, split, seed)]
    from rlhf.data.load import load_prompts

    prompts = load_prompts(spec)
    return prompts[:n] if n else prompts


def load_prompt_rows(spec: str, *, split: str, n: int | None = None, seed: int = 0) -> list[tuple]:
    """`load_prompt_list` with each row's other fields: (prompt, {"answer": ..., ...}) for reward functions."""
    if spec == "lab":
        return [(p, {}) for p in load_prompt_list(spec, split=split, n=n, seed=seed)]
    from rlhf.data.load import load_prompt_rows as rows_of

    rows = rows_of(spec)
    return rows[:n] if n else rows


def load_reference_examples(spec: str | None, eval_prompts: Sequence, n: int = LAB_REFERENCE_TEXTS) -> list[tuple]:
    """(prompt, response) held-out reference text: 'lab' = the ideal answers to the lab eval prompts."""
    if not spec or spec == "none":
        return []
    if spec == "lab":
        from rlhf.evaluate import default_heldout

        return [(r["prompt"], r["response"]) for r in default_heldout(eval_prompts)][:n]
    from rlhf.data.load import load_sft

    return [(ex.prompt, ex.response) for ex in load_sft(spec)[:n]]


def ptx_stream(tokenizer, spec: str, batch_size: int, max_len: int, seed: int = 0):
    """An endless, seeded stream of SFT batches for PPO-ptx ('lab' = ideal answers to lab training prompts)."""
    from rlhf.data import SFTBatcher, SFTExample

    if spec == "lab":
        examples = [SFTExample([{"role": "user", "content": t.prompt}], t.answer)
                    for t in lab_tasks(2000, "train", seed + 2)]
    else:
        from rlhf.data.load import load_sft

        examples = load_sft(spec)
    batcher = SFTBatcher(tokenizer, examples, max_len=max_len, batch_size=batch_size, seed=seed)
    for epoch in itertools.count():
        yield from batcher.batches(epoch)


# --- judges -----------------------------------------------------------------------

def reward_function(models: list, tokenizers: list, *, reduction: str = "mean", lam: float = 1.0,
                    batch_size: int = 32, max_len: int = 512):
    """(prompts, texts) -> RewardOut from one reward model or an ensemble (`ensemble/std` in extras)."""
    import torch

    from rlhf.trainers.ppo_step import RewardOut
    from rlhf.trainers.rm import score

    def fn(prompts, texts):
        per_member = [score(m, t, list(prompts), list(texts), batch_size=batch_size, max_len=max_len)
                      for m, t in zip(models, tokenizers)]
        if len(per_member) == 1:
            return RewardOut(torch.tensor(per_member[0], dtype=torch.float32))
        from rlhf.ensemble import reduce_scores

        reward, std = reduce_scores(per_member, reduction, lam)
        return RewardOut(reward, {"ensemble/std": std})

    return fn


def gold_function(prompts: Sequence):
    """The lab's gold judge when every prompt is a lab prompt, else None."""
    from rlhf.evaluate import lab_prompts

    if not lab_prompts(prompts):
        return None
    from rlhf.judges import GoldJudge

    judge = GoldJudge()
    return lambda ps, texts, finished: judge.score(ps, texts, stopped=finished)


# --- models -----------------------------------------------------------------------

def same_vocabulary(a, b) -> bool:
    return len(a) == len(b) and a.get_vocab() == b.get_vocab()


def build_models(cfg):
    """-> (actor_critic, reference or None, tokenizer, reward models, their tokenizers)."""
    from rlhf.models import LoraOptions, disable_dropout, load_causal_lm, load_reward_model, load_tokenizer
    from rlhf.value import Critic, PolicyAndCritic, PolicyWithValueHead

    tokenizer = load_tokenizer(cfg.policy, padding_side="left")
    lora = LoraOptions(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=0.0,
                       target_modules=list(cfg.lora_targets)) if cfg.lora_r > 0 else None
    lm = load_causal_lm(cfg.policy, dtype=cfg.dtype, lora=lora, dropout_off=True)
    reference = None
    if lora is None:
        reference = load_causal_lm(cfg.policy, dtype=cfg.dtype, dropout_off=True).eval().requires_grad_(False)
    from rlhf.trainers.rm_ensemble import members

    rms, rm_toks = [], []
    paths = members(cfg.reward_model)  # an ensemble folder (ensemble.json) counts as its members
    for path in paths:
        tok = load_tokenizer(path, padding_side="right")
        rm = load_reward_model(path, dtype=cfg.dtype, pad_token_id=tok.pad_token_id)
        disable_dropout(rm)
        rms.append(rm.eval().requires_grad_(False))
        rm_toks.append(tok)
    if cfg.value_model == "head":
        actor_critic = PolicyWithValueHead(lm)
    else:
        if not same_vocabulary(tokenizer, rm_toks[0]):
            raise UserError(f"value_model=critic: the reward model {paths[0]} uses another tokenizer "
                            "than the policy, so it cannot value the policy's tokens; use value_model=head")
        critic_rm = load_reward_model(paths[0], dtype=cfg.dtype, lora=lora,
                                      pad_token_id=tokenizer.pad_token_id)
        disable_dropout(critic_rm)
        actor_critic = PolicyAndCritic(lm, Critic(critic_rm))
    return actor_critic, reference, tokenizer, rms, rm_toks
