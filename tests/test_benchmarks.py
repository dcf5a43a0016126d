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
