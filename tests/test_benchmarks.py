"""The benchmark harness's own arithmetic: what the probe counts, and how results become the table.

No benchmark is run here (and nothing is timed): these check that a
throughput, an MFU or a padding share is computed from the right counts.
"""

from __future__ import annotations

import pytest

from tests.conftest import build_tiny_llama


def test_probe_counts_real_tokens_of_training_forwards_only(tiny_tokenizer):
    import torch

    from benchmarks.probe import Probe

    probe = Probe().install()
    try:
        model = build_tiny_llama(len(tiny_tokenizer))
        ids = torch.randint(3, len(tiny_tokenizer), (2, 5))
        mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        model.train()
        model(input_ids=ids, attention_mask=mask).logits.sum().backward()
        opt.step()
        model(input_ids=ids, attention_mask=mask).logits.sum().backward()
        opt.step()
        with torch.no_grad():
            model(input_ids=ids[:1])  # no mask: every id is real
    finally:
        probe.uninstall()
    # two training forwards of 5 + 3 real tokens in 2 x 5 positions; the inner LlamaModel is not counted again
    assert probe.train_forwards == 2
    assert (probe.train_tokens, probe.train_padded) == (16, 20)
    assert (probe.other_tokens, probe.other_padded) == (5, 5)
    s = probe.summary(t_start=probe.t_first_forward)
    assert s["optimizer_steps"] == 2 and s["steady_steps"] == 1
    assert s["steady_train_tokens"] == 8  # the second step's tokens only
    assert s["loop_seconds"] >= s["steady_seconds"] >= 0


def test_probe_is_gone_after_uninstall(tiny_tokenizer):
    from transformers import PreTrainedModel

    from benchmarks.probe import Probe

    before = PreTrainedModel.post_init
    probe = Probe().install()
    assert PreTrainedModel.post_init is not before
    probe.uninstall()
    assert PreTrainedModel.post_init is before


def test_packed_rows_count_up_to_their_last_position():
    import torch

    from benchmarks.probe import _real_tokens

    # row 0: examples of 3 and 2 tokens, then 2 padding positions (position 0): 5 real
    # row 1: one example of 7 tokens: 7 real
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 0], [0, 1, 2, 3, 4, 5, 6]])
    ids = torch.zeros(2, 7, dtype=torch.long)
    mask4d = torch.zeros(2, 1, 7, 7)
    assert _real_tokens(ids, mask4d, pos) == 12
    assert _real_tokens(ids, torch.ones(2, 7), None) == 14


def _result(**kw):
    base = {"loop_seconds": 10.0, "steady_seconds": 8.0, "steady_steps": 4, "train_tokens": 1000,
            "steady_train_tokens": 800, "train_padded_tokens": 1250, "exit": 0, "parameters": 1_000_000,
            "peak_rss_mb": 500.0, "wall_s": 20.0}
    return base | kw


def test_throughput_units_per_stage():
    from benchmarks.cases import CASES
    from benchmarks.run import mfu, throughput

    sft, rm, ppo = CASES["sft-10m"], CASES["rm-10m"], CASES["ppo-10m"]
    t = throughput(sft, _result())
    assert t["throughput"] == pytest.approx(100.0)  # 1000 tokens / 10 s
    assert t["steady_throughput"] == pytest.approx(100.0)  # 800 / 8
    assert t["padding_waste"] == pytest.approx(0.2)  # 1 - 1000 / 1250
    r = throughput(rm, _result())
    assert r["throughput"] == pytest.approx(rm.batch_size * rm.steps / 10.0)
    assert r["steady_throughput"] == pytest.approx(rm.batch_size * 4 / 8.0)
    p = throughput(ppo, _result())
    assert p["throughput"] == pytest.approx(ppo.rollout_batch * ppo.updates / 10.0)
    # 6 x 1e6 params x 100 tokens/s = 6e8 FLOP/s against a 1.2e9 peak: 50%
    assert mfu(sft, _result(), peak=1.2e9, params=1_000_000) == pytest.approx(0.5)
    assert mfu(ppo, _result(), peak=1.2e9, params=1_000_000) is None


def test_matmul_parameters_leave_out_looked_up_embeddings():
    from transformers import (BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM,
                              LlamaForSequenceClassification)

    from benchmarks.common import matmul_parameters

    bert = BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=32,
                                                    max_position_embeddings=20, type_vocab_size=2, num_labels=1))
    total = sum(p.numel() for p in bert.parameters())
    assert matmul_parameters(bert) == total - (100 + 20 + 2) * 16  # word, position and token-type tables
    small = dict(vocab_size=50, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=2)
    tied = LlamaForCausalLM(LlamaConfig(**small, tie_word_embeddings=True))
    untied = LlamaForCausalLM(LlamaConfig(**small, tie_word_embeddings=False))
    scorer = LlamaForSequenceClassification(LlamaConfig(**small, num_labels=1))
    body = sum(p.numel() for p in tied.model.parameters()) - 50 * 8
    assert matmul_parameters(tied) == body + 50 * 8  # the tied head is a matmul: counted once
    assert matmul_parameters(untied) == body + 50 * 8
    assert matmul_parameters(scorer) == body + 8  # the score head, no LM head


def test_aggregate_takes_medians_and_counts_failures():
    from benchmarks.cases import CASES
    from benchmarks.report import markdown
    from benchmarks.run import aggregate

    case = CASES["sft-10m"]
    runs = [{"side": "ours", **_result(loop_seconds=s)} for s in (10.0, 5.0, 20.0)]
    runs += [{"side": "trl", **_result(loop_seconds=20.0, peak_rss_mb=1000.0)},
             {"side": "trl", "exit": 1, "error": "boom"}]
    row = aggregate(case, runs, peak=1e9)
    assert row["ours"]["throughput"] == pytest.approx(100.0)  # median of 100, 200, 50
    assert row["trl"]["throughput"] == pytest.approx(50.0)
    assert row["speedup"] == pytest.approx(2.0)
    assert row["memory_ratio"] == pytest.approx(0.5)
    assert (row["ours_failed"], row["trl_failed"]) == (0, 1)
    info = {"machine": {"cpu": "x", "cores": 2, "avx512_bf16": False, "python": "3"}, "threads": 2,
            "started": "t0", "finished": "t1", "load_before": [1.0], "load_after": [1.0], "command": "c",
            "peaks": [{"flops_per_s": 1e9}], "peak_flops": 1e9, "versions": {"trl": ["1.16.0"]}}
    text = markdown(info, [row])
    assert "| sft-10m (failed runs: ours 0, TRL 1) | tokens/s | 100 | 50 | 2.00x (1.5x)" in text


def test_case_selection():
    from benchmarks.cases import CASES, select

    assert [c.name for c in select(["sft-10m", "sft-10m"])] == ["sft-10m"]
    assert {c.name for c in select(["all"])} == set(CASES)
    assert [c.name for c in select(["accuracy"])] == ["hh-rm-minilm"]
    assert CASES["ppo-30m"].scaled(steps=7).updates == 7
    with pytest.raises(SystemExit):
        select(["no-such-case"])


def test_mixed_precision_reaches_our_stage_command():
    from benchmarks.ours_runner import command

    spec = {"stage": "sft", "model": "m", "steps": 3, "batch_size": 2, "lr": 1e-4, "seed": 0, "threads": 1,
            "max_len": 64, "data_dir": "d", "out": "o"}
    flags = command(spec)[1]
    assert flags[flags.index("--mixed-precision") + 1] == "no"  # fp32 unless asked
    flags = command({**spec, "mixed_precision": "bf16"})[1]
    assert flags[flags.index("--mixed-precision") + 1] == "bf16"
    from rlhf.config import parse
    from rlhf.trainers.sft import SFTConfig

    assert parse(SFTConfig, flags).mixed_precision == "bf16"  # a flag the stage accepts


# --- GRPO and RLOO against TRL 1.16: the flags our runner passes and the config TRL's runner builds --------


def _group_spec(name: str, **kw) -> dict:
    from benchmarks.cases import CASES

    spec = {**CASES[name].as_dict(), "side": "ours", "threads": 2, "seed": 3, "dtype": "float32", "model": "m",
            "data_dir": "d", "out": "o", "reward_file": "benchmarks/rewards.py"}
    spec.pop("tags")
    return spec | kw


def _our_config(spec: dict):
    from benchmarks.ours_runner import command
    from rlhf.config import parse
    from rlhf.trainers.grpo import GRPOConfig, RLOOConfig

    target, flags = command(spec)
    assert target == ("rlhf.trainers.grpo:main" if spec["stage"] == "grpo" else "rlhf.trainers.grpo:rloo_main")
    return parse(GRPOConfig if spec["stage"] == "grpo" else RLOOConfig, flags)


@pytest.mark.parametrize("name", ["grpo-10m", "rloo-10m", "grpo-30m", "rloo-30m"])
def test_group_cases_give_both_sides_the_same_settings(name):
    from benchmarks.ours_runner import LOSS_AGGREGATION
    from benchmarks.trl_runner import group_config

    spec = _group_spec(name)
    cfg, trl = _our_config(spec), group_config(spec)
    per_step = trl["per_device_train_batch_size"] * trl["gradient_accumulation_steps"]  # one process
    # the group, the generation batch (TRL's: per step x steps_per_generation), the optimizer step's batch
    assert cfg.group_size == trl["num_generations"] == spec["group_size"] >= 2
    assert cfg.rollout_batch_size == per_step * trl["steps_per_generation"] == spec["rollout_batch"]
    assert cfg.minibatch_size == per_step and cfg.grad_accum == 1
    assert cfg.generation_batch_size == cfg.rollout_batch_size  # all of an update's samples in one batch, as TRL
    assert cfg.ppo_epochs == trl["num_iterations"]
    # the same number of updates and optimizer steps
    steps_per_update = cfg.rollout_batch_size // cfg.minibatch_size * cfg.ppo_epochs
    assert cfg.n_updates == spec["updates"] and trl["max_steps"] == cfg.n_updates * steps_per_update
    # sampling
    assert cfg.max_new_tokens == trl["max_completion_length"] == spec["response_len"]
    assert cfg.temperature == trl["temperature"] == 1.0 and cfg.top_p == trl["top_p"] == 1.0
    assert trl["top_k"] == 0  # no top-k filtering: ours samples from the full distribution too
    assert cfg.max_prompt_len == spec["max_len"]  # the case's prompts all fit it untruncated (prepare.py)
    # the loss
    assert cfg.clip_eps == trl["epsilon"] and cfg.clip_eps_high is None and "epsilon_high" not in trl
    if spec["stage"] == "grpo":
        assert cfg.loss_aggregation == LOSS_AGGREGATION[trl["loss_type"]] == "token-mean"  # TRL's default, dapo
        assert cfg.scale_rewards and trl["scale_rewards"] == "group"
        assert trl["beta"] == 0.0 and cfg.kl == "none"  # TRL's default: no reference model on either side
    else:
        assert cfg.loss_aggregation == LOSS_AGGREGATION["rloo"] == "seq-mean-token-sum-norm"
        assert trl["normalize_advantages"] is False
        # TRL's RLOO: beta x the sequence's summed k1 log-ratio to the reference, taken off the reward
        assert cfg.kl == "reward" and cfg.kl_estimator == "k1" and cfg.beta == trl["beta"] == 0.05
    assert not cfg.adap_kl_ctrl and not cfg.dynamic_sampling and cfg.overlong_buffer == 0
    assert not trl["mask_truncated_completions"]
    # optimisation
    assert cfg.lr == trl["learning_rate"] == spec["lr"]
    assert cfg.schedule == "constant" and trl["lr_scheduler_type"] == "constant" and trl["warmup_steps"] == 0
    assert cfg.max_grad_norm == trl["max_grad_norm"] == 1.0 and trl["weight_decay"] == 0.0
    assert cfg.seed == trl["seed"] == 3 and cfg.threads == spec["threads"]
    # precision and recomputation
    assert cfg.dtype == "float32" and cfg.mixed_precision == "no" and not cfg.gradient_checkpointing
    assert trl["bf16"] is False and trl["fp16"] is False and trl["gradient_checkpointing"] is False
    # nothing in the timed loop but training: no evaluation, sample logging or checkpoints on either side
    assert cfg.eval_prompts in (None, "none") and cfg.log_samples == 0 and cfg.save_every >= cfg.n_updates
    assert trl["save_strategy"] == "no" and trl["log_completions"] is False
    # the shared reward, by the same file and function
    assert cfg.reward == [f"benchmarks/rewards.py:{spec['reward']}"]


def test_group_kl_maps_to_trl_grpo_beta():
    """GRPO with a KL coefficient: TRL's k3 term in the loss, ours --kl loss with the same beta."""
    from benchmarks.trl_runner import group_config

    spec = _group_spec("grpo-10m", beta=0.04)
    cfg = _our_config(spec)
    assert cfg.kl == "loss" and cfg.beta == group_config(spec)["beta"] == 0.04


def test_group_minibatches_and_epochs_map_to_trl_steps_per_generation():
    from benchmarks.trl_runner import group_config

    spec = _group_spec("grpo-10m", rollout_batch=16, minibatch=8, ppo_epochs=2, updates=3)
    cfg, trl = _our_config(spec), group_config(spec)
    assert (trl["per_device_train_batch_size"], trl["steps_per_generation"], trl["num_iterations"]) == (8, 2, 2)
    assert (cfg.minibatch_size, cfg.ppo_epochs) == (8, 2)
    assert trl["max_steps"] == 3 * 2 * 2  # updates x minibatches x epochs


def test_group_case_data_sizes_and_seeds():
    from benchmarks.cases import CASES, select
    from benchmarks.run import rep_seed

    for name in ("grpo-10m", "rloo-10m"):
        case = CASES[name]
        assert case in select(["default"]) and case in select(["online"])
        assert case.rollout_batch % case.group_size == 0 and case.prompts_per_update * case.group_size == 16
        assert case.reps >= 3 and [rep_seed(case, 5, r) for r in range(3)] == [5, 6, 7]  # three seeds
        assert case.scaled(steps=9).updates == 9
    assert [rep_seed(CASES["ppo-10m"], 5, r) for r in range(3)] == [5, 5, 5]  # other cases: one seed


def test_group_throughput_and_reward_over_seeds():
    from benchmarks.cases import CASES
    from benchmarks.report import markdown
    from benchmarks.run import aggregate, throughput

    case = CASES["grpo-10m"]  # 16 episodes per update, one optimizer step per update
    t = throughput(case, _result(loop_seconds=12.0, steady_seconds=10.0, steady_steps=case.updates - 1))
    assert t["throughput"] == pytest.approx(16 * case.updates / 12.0)
    assert t["steady_throughput"] == pytest.approx(16 * (case.updates - 1) / 10.0)
    runs = [{"side": "ours", "seed": s, **_result(eval_reward=v, final_reward=v)}
            for s, v in enumerate((0.1, 0.2, 0.3))]
    runs += [{"side": "trl", "seed": s, **_result(loop_seconds=20.0, eval_reward=v, final_reward=v)}
             for s, v in enumerate((0.2, 0.2, 0.5))]
    row = aggregate(case, runs, peak=1e9)
    assert row["ours"]["eval_reward"] == pytest.approx(0.2)
    assert row["ours"]["eval_reward_se"] == pytest.approx(0.1 / 3 ** 0.5)
    assert row["trl"]["eval_reward"] == pytest.approx(0.3) and row["trl"]["eval_reward_se"] == pytest.approx(0.1)
    assert row["ours"]["seeds"] == [0, 1, 2]
    assert row["reward_gap"] == pytest.approx(-0.1) and row["reward_within_2se"]  # |-0.1| <= 2 x 0.1
    assert row["speedup"] == pytest.approx(2.0)
    info = {"machine": {"cpu": "x", "cores": 2, "avx512_bf16": False, "python": "3"}, "threads": 2,
            "started": "t0", "finished": "t1", "load_before": [0.1], "load_after": [0.1], "command": "c",
            "peaks": [{"flops_per_s": 1e9}], "peak_flops": 1e9, "versions": {"trl": ["1.16.0"]}}
    assert "held-out reward 0.200 ± 0.115 (2 SE, 3 seeds) (within 2 SE of TRL's)" in markdown(info, [row])


def test_shared_reward_is_the_capitalised_word_share():
    from benchmarks.common import reward_fn

    fn = reward_fn({"reward": "capitalised_share"})
    assert fn(prompts=["p"] * 4, completions=["Hello world", "A B c d", "", "no caps 42"],
              completion_ids=[[1]] * 4, trainer_state=None) == [0.5, 0.5, 0.0, 0.0]
    assert fn(["p"], [[{"role": "assistant", "content": "Yes No"}]]) == [1.0]  # a chat completion's messages


def test_reward_eval_samples_the_same_for_the_same_policy(tmp_path, tiny_model_dir):
    """The post-training reward: the same code and seed on both sides, so one policy scores the same twice."""
    import json

    from transformers import AutoModelForCausalLM

    from benchmarks.common import reward_eval

    prompts = ["User: hi\nAssistant:\n", "User: 2+2?\nAssistant:\n"]
    (tmp_path / "trl-eval.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    spec = {"model": tiny_model_dir, "data_dir": str(tmp_path), "eval_rows": 2, "group_size": 3, "seed": 1,
            "temperature": 1.0, "response_len": 6, "reward": "capitalised_share"}
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    a, b = reward_eval(spec, model), reward_eval(spec, model)
    assert a == b and a["eval_samples"] == 6 and 0.0 <= a["eval_reward"] <= 1.0


def test_background_load_runs_busy_processes_and_stops_them():
    """`--background-load N`: N processes spinning on a core each while the runs go, all gone afterwards."""
    import time

    from benchmarks.run import background_load

    with background_load(2) as procs:
        assert len(procs) == 2
        time.sleep(0.5)
        assert all(p.poll() is None for p in procs)  # still running
        ticks = [int(open(f"/proc/{p.pid}/stat").read().split()[13]) for p in procs]
        assert all(t > 0 for t in ticks)  # they used CPU time
    assert all(p.poll() is not None for p in procs)  # killed and reaped
