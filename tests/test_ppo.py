"""PPO: value models, the LoRA reference, the no-EOS penalty, learning, the CLI end to end, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import build_tiny_llama
from rlhf.errors import UserError
from rlhf.rollout import episode_logits, generate, lay_out, response_logits
from rlhf.trainers.ppo import PPOConfig, main, prompt_batch, train
from rlhf.trainers.ppo_step import RewardOut, packing_agrees, reference_mode, score_rollout, trim
from rlhf.value import Critic, PolicyAndCritic, PolicyWithValueHead

PROMPTS = ["What is 2 + 3?", "Sort these numbers: 4 1 3.", "hi", "Reverse the words: red blue cat."]



@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run faster on one thread, and the suite shares two cores with other work."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_lm(tok, seed=0):
    return build_tiny_llama(len(tok), seed=seed, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)


def tiny_rm(tok, seed=1):
    from transformers import LlamaForSequenceClassification

    lm = tiny_lm(tok, seed)
    torch.manual_seed(seed)
    cfg = {k: v for k, v in lm.config.to_dict().items() if k not in ("id2label", "label2id")}
    rm = LlamaForSequenceClassification(lm.config.__class__(**cfg, num_labels=1))
    rm.config.pad_token_id = tok.pad_token_id
    return rm.eval()


def digit_reward(tok):
    """Toy reward: the share of response tokens that contain a digit."""
    target = {i for t, i in tok.get_vocab().items() if any(c.isdigit() for c in t)}

    def fn(prompts, texts):
        ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        return RewardOut(torch.tensor([sum(i in target for i in x) / max(len(x), 1) for x in ids]))

    return fn


# --- value models ------------------------------------------------------------------

def test_value_head_shapes_and_zero_start(tiny_tokenizer):
    ac = PolicyWithValueHead(tiny_lm(tiny_tokenizer))
    r = generate(ac.lm, tiny_tokenizer, PROMPTS, max_new_tokens=5, batch_size=4, seed=0)
    logits, values = ac(lay_out(r.input_ids, r.attention_mask, r.query_ids.size(1)))
    B, T = r.response_ids.shape
    assert logits.shape == (B, T, len(tiny_tokenizer)) and values.shape == (B, T)
    assert (values == 0).all()  # zero-initialised head
    values.sum().backward()
    assert ac.value_head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("pack", [False, True], ids=["padded", "packed"])
def test_critic_values_are_reward_model_scores_of_prefixes(tiny_tokenizer, pack):
    """V(s_t) from the critic = the reward model's score of query + response[:t] (t >= 1), in either layout."""
    rm = tiny_rm(tiny_tokenizer)
    critic = Critic(rm)
    lm = tiny_lm(tiny_tokenizer)
    ac = PolicyAndCritic(lm, critic)
    r = generate(lm, tiny_tokenizer, PROMPTS[:2], max_new_tokens=4, batch_size=2, seed=0)
    nq = r.query_ids.size(1)
    episodes = lay_out(r.input_ids, r.attention_mask, nq, pack=pack, capacity=int(r.attention_mask.sum()))
    assert episodes.inputs["input_ids"].size(0) == (1 if pack else 2)
    logits, values = ac(episodes)
    assert logits.shape[:2] == values.shape == r.response_ids.shape
    with torch.no_grad():
        for b in range(2):
            q = r.query_ids[b][r.query_mask[b].bool()]
            for t in range(int(r.response_lengths[b])):
                prefix = torch.cat([q, r.response_ids[b, :t]])[None]
                score = rm(input_ids=prefix).logits[0, 0]
                assert abs(float(score) - float(values[b, t])) < 1e-5


@pytest.mark.parametrize("value_model", ["head", "critic"])
def test_packed_episodes_give_the_padded_logits_values_and_gradients(tiny_tokenizer, value_model):
    """Several episodes per row (block-diagonal mask, restarting positions) = one per row, forward and backward."""
    tok = tiny_tokenizer
    lm = tiny_lm(tok)
    ac = PolicyWithValueHead(lm) if value_model == "head" else PolicyAndCritic(lm, Critic(tiny_rm(tok)))
    if value_model == "head":
        torch.nn.init.normal_(ac.value_head.weight)  # a zero head would hide the values
    r = generate(lm, tok, PROMPTS, max_new_tokens=6, batch_size=4, seed=3, temperature=1.0)
    i, a, nq, rc = trim(r.input_ids, r.attention_mask, r.query_ids.size(1))
    mask = r.response_mask[:, rc].bool()
    assert len(set((r.query_lengths + r.response_lengths).tolist())) > 2  # episodes of different lengths
    results = {}
    for pack in (False, True):
        episodes = lay_out(i, a, nq, pack=pack, capacity=int(a.sum()))  # packed: all four in one row
        ac.zero_grad()
        logits, values = ac(episodes)
        lp = torch.log_softmax(logits, -1).gather(-1, i[:, nq:, None]).squeeze(-1)
        ((lp * mask).sum() + (values * mask).sum()).backward()
        grads = torch.cat([p.grad.flatten() for p in ac.parameters() if p.grad is not None])
        results[pack] = (lp[mask], values[mask], grads, episodes.inputs["input_ids"].numel())
    (lp0, v0, g0, area0), (lp1, v1, g1, area1) = results[False], results[True]
    assert area1 < area0  # packing saved positions
    assert torch.allclose(lp0, lp1, atol=1e-5) and torch.allclose(v0, v1, atol=1e-5)
    assert torch.allclose(g0, g1, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("value_model", ["head", "critic"])
def test_packed_samples_of_one_prompt_share_its_tokens(tiny_tokenizer, value_model):
    """G samples per prompt, packed: each query is forwarded once for its group, and log-probabilities, values
    and gradients equal one episode per padded row."""
    tok = tiny_tokenizer
    lm = tiny_lm(tok)
    ac = PolicyWithValueHead(lm) if value_model == "head" else PolicyAndCritic(lm, Critic(tiny_rm(tok)))
    if value_model == "head":
        torch.nn.init.normal_(ac.value_head.weight)
    r = generate(lm, tok, PROMPTS[:3], max_new_tokens=6, num_samples=3, seed=3, temperature=1.0)
    perm = torch.tensor([4, 0, 8, 1, 5, 2, 7, 3, 6])  # a minibatch's order: a group's rows are not adjacent
    i, a, nq, rc = trim(r.input_ids[perm], r.attention_mask[perm], r.query_ids.size(1))
    mask = r.response_mask[perm][:, rc].bool()
    q_len, r_len = r.query_lengths[perm], r.response_lengths[perm]
    shared_tokens = int(r.query_lengths[::3].sum() + r_len.sum())  # each query once, every response
    assert shared_tokens < int(a.sum())
    results = {}
    for pack in (False, True):
        episodes = lay_out(i, a, nq, pack=pack, capacity=shared_tokens)
        if pack:  # one row of exactly the shared tokens: nothing forwarded twice
            assert episodes.inputs["input_ids"].shape == (1, shared_tokens)
        ac.zero_grad()
        logits, values = ac(episodes)
        lp = torch.log_softmax(logits, -1).gather(-1, i[:, nq:, None]).squeeze(-1)
        ((lp * mask).sum() + (values * mask).sum()).backward()
        grads = torch.cat([p.grad.flatten() for p in ac.parameters() if p.grad is not None])
        results[pack] = (lp[mask], values[mask], grads)
    assert int((q_len + r_len).sum()) == int(a.sum())
    for x, y in zip(results[False], results[True]):
        assert torch.allclose(x, y, atol=1e-4, rtol=1e-4)
    # a group wider than share_tokens is cut, each part with its own copy of the query: with room for one
    # response behind a query, every episode is its own group again, and the numbers stay the same
    alone = lay_out(i, a, nq, pack=True, capacity=int(a.sum()), share_tokens=1)
    assert alone.inputs["input_ids"].shape == (1, int(a.sum()))
    with torch.no_grad():
        lp_alone = torch.log_softmax(ac(alone)[0], -1).gather(-1, i[:, nq:, None]).squeeze(-1)
    assert torch.allclose(lp_alone[mask], results[False][0], atol=1e-4, rtol=1e-4)


class IgnoresCustomMasks(torch.nn.Module):
    """A causal LM whose attention only knows 2D padding masks: given a 4D mask it attends causally across the
    whole row (transformers would still isolate sequences by restarting position ids, so those go too)."""

    def __init__(self, lm):
        super().__init__()
        self.lm, self.config, self.generation_config = lm, lm.config, lm.generation_config

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kw):
        if attention_mask is not None and attention_mask.dim() == 4:
            attention_mask = position_ids = None
        return self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kw)

    def save_pretrained(self, *args, **kw):
        return self.lm.save_pretrained(*args, **kw)


def test_packing_is_checked_on_the_model_and_falls_back(tiny_tokenizer, tmp_path):
    tok = tiny_tokenizer
    lm = tiny_lm(tok)
    r = generate(lm, tok, PROMPTS[:2], max_new_tokens=4, batch_size=2, seed=0)
    ref = tiny_lm(tok).eval()
    assert packing_agrees(PolicyWithValueHead(lm), ref, r)
    assert packing_agrees(PolicyAndCritic(lm, Critic(tiny_rm(tok))), ref, r)
    assert not packing_agrees(PolicyWithValueHead(IgnoresCustomMasks(lm)), ref, r)
    # train() runs the check and says so when it switches packing off
    said = []
    cfg = PPOConfig(out=str(tmp_path / "ppo"), rollout_batch_size=4, minibatch_size=2, total_episodes=4,
                    max_new_tokens=4, eval_prompts=None, save_every=0)
    train(cfg, PolicyWithValueHead(IgnoresCustomMasks(tiny_lm(tok))), ref, tok, digit_reward(tok), PROMPTS,
          log=said.append)
    assert any("pack_episodes off" in s for s in said), said


def test_packing_changes_no_training_number(tiny_tokenizer, tmp_path):
    """The same PPO run packed and padded: every logged loss, KL and value agrees (the layout is not a setting)."""
    tok = tiny_tokenizer
    rows = {}
    for pack in (False, True):
        cfg = PPOConfig(out=str(tmp_path / str(pack)), rollout_batch_size=8, minibatch_size=4, total_episodes=8 * 3,
                        lr=1e-2, max_new_tokens=8, beta=0.1, eval_prompts=None, schedule="constant",
                        save_every=0, pack_episodes=pack)
        train(cfg, PolicyWithValueHead(tiny_lm(tok)), tiny_lm(tok).eval().requires_grad_(False), tok,
              digit_reward(tok), PROMPTS * 2, log=lambda s: None)
        rows[pack] = [json.loads(line) for line in open(tmp_path / str(pack) / "metrics.jsonl")]
    assert (tmp_path / "True" / "config.yaml").read_text().count("pack_episodes: true") == 1
    for padded, packed in zip(rows[False], rows[True]):
        for k in ("reward/score", "kl/ref", "policy/loss", "value/loss", "entropy", "policy/approx_kl"):
            assert packed[k] == pytest.approx(padded[k], rel=1e-3, abs=1e-5), k


def test_critic_rejects_an_encoder():
    from transformers import BertConfig, BertForSequenceClassification

    bert = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=32, num_labels=1))
    with pytest.raises(UserError, match="value_model=critic: a critic needs a decoder-only"):
        Critic(bert)


# --- the LoRA reference ----------------------------------------------------------

def test_lora_reference_is_the_adapter_disabled(tiny_tokenizer):
    from rlhf.models import LoraOptions, apply_lora

    base = tiny_lm(tiny_tokenizer).eval()
    plain = tiny_lm(tiny_tokenizer).eval()  # same seed: identical weights, never wrapped
    lm = apply_lora(base, LoraOptions(r=4, alpha=8), task="CAUSAL_LM")
    with torch.no_grad():
        for n, p in lm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # a trained adapter (B starts at 0)
    r = generate(plain, tiny_tokenizer, PROMPTS, max_new_tokens=5, batch_size=4, seed=0)
    nq = r.query_ids.size(1)
    with torch.no_grad():
        want, _ = response_logits(plain, r.input_ids, r.attention_mask, nq)
        policy, _ = response_logits(lm, r.input_ids, r.attention_mask, nq)
        with reference_mode(lm, None) as ref:
            got, _ = response_logits(ref, r.input_ids, r.attention_mask, nq)
        after, _ = response_logits(lm, r.input_ids, r.attention_mask, nq)
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    assert (policy - want).abs().max() > 1e-2  # the adapter does change the policy
    assert torch.equal(after, policy)  # and is back on after the block


# --- scores -----------------------------------------------------------------------------

def test_no_eos_penalty_replaces_unfinished_scores(tiny_tokenizer):
    from test_rollout import EosAt

    lm = tiny_lm(tiny_tokenizer)
    # EOS at absolute position 16: prompts of <= 16 tokens finish within 12 new tokens, longer ones do not
    r = generate(EosAt(lm, tiny_tokenizer.eos_token_id, 16), tiny_tokenizer, PROMPTS, max_new_tokens=3,
                 batch_size=4, seed=0)
    assert r.finished.any() and not r.finished.all()
    fn = lambda prompts, texts: RewardOut(torch.full((len(texts),), 2.0))  # noqa: E731
    raw, scores, _ = score_rollout(fn, r, PPOConfig(no_eos_penalty=-3.0), None)
    assert raw.tolist() == [2.0] * 4
    assert scores.tolist() == [2.0 if f else -3.0 for f in r.finished.tolist()]
    _, off, _ = score_rollout(fn, r, PPOConfig(no_eos_penalty=None), None)
    assert off.tolist() == [2.0] * 4
    # the length penalty takes 0.1 per response token (EOS included) off the score, after the no-EOS one
    _, short, _ = score_rollout(fn, r, PPOConfig(no_eos_penalty=-3.0, length_penalty=0.1), None)
    want = [(2.0 if f else -3.0) - 0.1 * n for f, n in zip(r.finished.tolist(), r.response_lengths.tolist())]
    assert short.tolist() == pytest.approx(want) and len(set(r.response_lengths.tolist())) > 1


def test_non_finite_scores_stop_with_a_message(tiny_tokenizer):
    r = generate(tiny_lm(tiny_tokenizer), tiny_tokenizer, PROMPTS[:2], max_new_tokens=2, batch_size=2)
    fn = lambda prompts, texts: RewardOut(torch.tensor([0.0, float("nan")]))  # noqa: E731
    with pytest.raises(UserError, match="NaN"):
        score_rollout(fn, r, PPOConfig(), None)


# --- pieces of the loop -------------------------------------------------------------

def test_trim_drops_all_padding_columns():
    ids = torch.arange(16).view(2, 8)
    # query width 4 (first column padding in both rows), response width 4 (last two columns padding)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 0, 0, 0]])
    i, a, nq, rc = trim(ids, mask, 4)
    assert nq == 3 and rc == slice(0, 2) and i.tolist() == [[1, 2, 3, 4, 5], [9, 10, 11, 12, 13]]
    assert a.tolist() == [[0, 1, 1, 1, 1], [1, 1, 1, 1, 0]]


def test_prompt_batches_cover_each_epoch_once_and_are_reproducible():
    prompts = [f"p{i}" for i in range(10)]
    first_epoch = prompt_batch(prompts, 1, 5, seed=3) + prompt_batch(prompts, 2, 5, seed=3)
    assert sorted(first_epoch) == sorted(prompts)
    assert prompt_batch(prompts, 2, 5, seed=3) == prompt_batch(prompts, 2, 5, seed=3)
    assert prompt_batch(prompts, 1, 5, seed=3) != prompt_batch(prompts, 1, 5, seed=4)


@pytest.mark.parametrize("bad,match", [
    ({"minibatch_size": 128, "rollout_batch_size": 64}, "minibatch_size"),
    ({"minibatch_size": 6, "grad_accum": 4}, "multiple"),
    ({"temperature": 0.0}, "temperature"),
    ({"ptx_coef": 0.5}, "ptx_data"),
    ({"top_p": 0.0}, "top_p"),
])
def test_config_rejects_bad_values(bad, match):
    with pytest.raises(UserError, match=match):
        PPOConfig(**bad)


# --- learning ------------------------------------------------------------------------

def test_ppo_raises_a_toy_reward(tiny_tokenizer, tmp_path):
    """Reward = share of digit tokens. 12 updates of 16 episodes on a fixed seed lift it from about 2%."""
    tok = tiny_tokenizer
    lm, ref = tiny_lm(tok), tiny_lm(tok).eval().requires_grad_(False)
    cfg = PPOConfig(out=str(tmp_path / "ppo"), rollout_batch_size=16, minibatch_size=8, total_episodes=16 * 12,
                    lr=1e-2, max_new_tokens=12, beta=0.0, adap_kl_ctrl=False, eval_prompts=None,
                    no_eos_penalty=None, schedule="constant", save_every=0)
    train(cfg, PolicyWithValueHead(lm), ref, tok, digit_reward(tok), PROMPTS * 4, log=lambda s: None)
    rows = [json.loads(line) for line in open(tmp_path / "ppo" / "metrics.jsonl")]
    scores = [r["reward/score"] for r in rows]
    assert len(scores) == 12
    start, end = sum(scores[:3]) / 3, sum(scores[-3:]) / 3
    assert end > start + 0.05, scores
    assert max(r["policy/sampler_logprob_diff"] for r in rows) < 1e-4


def test_kl_penalty_holds_the_policy_near_the_reference(tiny_tokenizer, tmp_path):
    """Same run with a large fixed beta: the KL to the reference stays far below the beta = 0 run's."""
    tok = tiny_tokenizer
    kls = {}
    for beta in (0.0, 1.0):
        out = tmp_path / f"b{beta}"
        cfg = PPOConfig(out=str(out), rollout_batch_size=16, minibatch_size=8, total_episodes=16 * 8, lr=1e-2,
                        max_new_tokens=12, beta=beta, adap_kl_ctrl=False, eval_prompts=None, no_eos_penalty=None,
                        schedule="constant", save_every=0)
        train(cfg, PolicyWithValueHead(tiny_lm(tok)), tiny_lm(tok).eval().requires_grad_(False), tok,
              digit_reward(tok), PROMPTS * 4, log=lambda s: None)
        rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
        kls[beta] = sum(r["kl/ref"] for r in rows[-3:]) / 3
    assert kls[1.0] < 0.5 * kls[0.0], kls


# --- the command end to end ------------------------------------------------------------

PPO_NAMES = ["reward/score", "kl/ref", "beta", "response/length", "entropy", "policy/clipfrac", "policy/approx_kl",
             "value/loss", "value/explained_var", "reward/no_eos_frac", "episodes_per_s", "time"]


@pytest.fixture(scope="module")
def tiny_rm_dir(tmp_path_factory, tiny_tokenizer):
    path = tmp_path_factory.mktemp("tiny-rm")
    tiny_rm(tiny_tokenizer).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def second_rm_dir(tmp_path_factory, tiny_tokenizer):
    path = tmp_path_factory.mktemp("tiny-rm-2")
    tiny_rm(tiny_tokenizer, seed=2).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return str(path)


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sft") / "sft.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "response": "5."}) + "\n" for p in PROMPTS))
    return str(path)


def _cli(tiny_model_dir, tiny_rm_dir, prompt_file, out, *extra):
    return ["--policy", tiny_model_dir, "--reward_model", tiny_rm_dir, "--prompts", prompt_file,
            "--eval_prompts", prompt_file, "--reference_text", "none", "--out", str(out), "--rollout_batch_size", "4",
            "--minibatch_size", "2", "--total_episodes", "12", "--max_new_tokens", "6", "--eval_every", "2",
            "--save_every", "1", "--ppo_epochs", "2", "--lr", "1e-3", "--schedule", "constant", "--threads", "1",
            *extra]


@pytest.mark.parametrize("extra", [["--lr", "1e-2"], ["--value_model", "critic", "--lora_r", "4", "--lr", "3e-2"]],
                         ids=["head", "critic+lora"])
def test_cli_end_to_end(tiny_model_dir, tiny_rm_dir, prompt_file, tmp_path, extra, capsys):
    out = tmp_path / "ppo"
    assert main(_cli(tiny_model_dir, tiny_rm_dir, prompt_file, out, *extra)) == 0
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    for name in PPO_NAMES:
        assert all(name in r for r in rows[1:]), name
    assert "eval/proxy" in rows[0] and "eval/win_rate" in rows[2] and "eval/win_rate" in rows[3]
    assert rows[0]["eval/ties"] == 1.0 and "eval/win_rate" not in rows[0]  # the SFT model against itself
    assert (out / "config.json").exists() and list(out.glob("*.safetensors"))
    assert not (out / "adapter_config.json").exists()  # LoRA merged
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out)
    samples = [json.loads(line) for line in open(out / "samples.jsonl")]
    assert {s["step"] for s in samples} == {0, 2, 3} and "sft_response" in samples[0]
    # the alarms see every evaluation, the starting one included (a fall from the start is a fall)
    history = json.loads((out / "checkpoints" / "step-0000003" / "trainer_state.json").read_text())["monitor"]["history"]
    assert history["eval/proxy"] == [r["eval/proxy"] for r in rows if "eval/proxy" in r]
    assert len(history["eval/proxy"]) == 3


def test_cli_options_ptx_k3_normalisation_early_stop(tiny_model_dir, tiny_rm_dir, second_rm_dir, prompt_file,
                                                    sft_file, tmp_path):
    out = tmp_path / "ppo"
    ensemble = f"{tiny_rm_dir},{second_rm_dir}"
    assert main(_cli(tiny_model_dir, ensemble, prompt_file, out, "--ensemble", "min", "--ptx_coef", "0.5",
                     "--ptx_data", sft_file,
                     "--kl_estimator", "k3", "--reward_norm", "--reward_clip", "0.5", "--target_kl", "1e-9",
                     "--ppo_epochs", "3", "--kl_target", "0.001", "--kl_horizon", "4")) == 0
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")][1:]
    assert all(r["ptx/loss"] > 0 for r in rows)
    assert all(r["ensemble/std"] > 0 for r in rows)  # two different reward models disagree
    assert all(abs(r["reward/shaped"]) <= 0.5 for r in rows)  # normalised then clipped
    # approx_kl is measured before each step: 0 on the first minibatch, past 1e-9 on the second,
    # which ends the update (of 3 epochs x 2 minibatches)
    assert all(r["policy/early_stop"] == 1.0 and r["policy/minibatches"] == 2.0 for r in rows)
    # adaptive beta: next = beta * (1 + clip(kl / 0.001 - 1, -0.2, 0.2) * 4 episodes / horizon 4)
    for a, b in zip(rows, rows[1:]):
        error = min(max(a["kl/ref"] / 0.001 - 1, -0.2), 0.2)
        assert abs(b["beta"] - a["beta"] * (1 + error)) < 1e-9
    assert rows[0]["beta"] == 0.2 and rows[1]["beta"] != 0.2


def test_resume_continues_exactly(tiny_model_dir, tiny_rm_dir, prompt_file, tmp_path):
    """3 updates in one go = 2 updates, a stop, and --resume for the third (same metrics, same weights)."""
    from safetensors.torch import load_file

    whole, parts = tmp_path / "whole", tmp_path / "parts"
    # --resume with nothing to resume from (killed before the first checkpoint) starts from the beginning
    assert main(_cli(tiny_model_dir, tiny_rm_dir, prompt_file, whole, "--resume")) == 0
    # the run as a kill after update 2's checkpoint leaves it: no step-3 checkpoint, a later metrics row that
    # must be dropped (the model files of the finished run are replaced by the resumed run's)
    shutil.copytree(whole, parts)
    shutil.rmtree(parts / "checkpoints" / "step-0000003")
    (parts / "model.safetensors").unlink()
    with open(parts / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "reward/score": 123.0}) + "\n")
    assert not (parts / "checkpoints" / "step-0000003").exists()
    assert main(_cli(tiny_model_dir, tiny_rm_dir, prompt_file, parts, "--resume")) == 0
    a = [json.loads(line) for line in open(whole / "metrics.jsonl")]
    b = [json.loads(line) for line in open(parts / "metrics.jsonl")]
    assert [r["step"] for r in b] == [0, 1, 2, 3]
    for ra, rb in zip(a, b):
        for k in ("reward/score", "kl/ref", "value/loss", "policy/approx_kl"):
            if k in ra:
                assert abs(ra[k] - rb[k]) < 1e-5, (ra["step"], k)
    wa = load_file(str(whole / "model.safetensors"))
    wb = load_file(str(parts / "model.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_cli_bad_input_is_one_clear_line(tiny_model_dir, tiny_rm_dir, tmp_path):
    from rlhf.cli import main as cli

    missing = tmp_path / "nope.jsonl"
    code = cli(["ppo", "--policy", tiny_model_dir, "--reward_model", tiny_rm_dir, "--prompts", str(missing),
                "--out", str(tmp_path / "o")])
    assert code == 2
    assert not (tmp_path / "o").exists()


def test_evaluator_uses_the_gold_judge_on_lab_prompts(tiny_tokenizer):
    from rlhf.lab.gold import score as gold_score
    from rlhf.trainers.ppo_eval import Evaluator
    from rlhf.trainers.ppo_setup import gold_function

    prompts = ["What is 2 + 3?", "Sort these numbers: 4 1 3.", "Reverse the words: red blue cat."]
    assert gold_function(prompts + ["hi"]) is None  # not every prompt is a lab task: no gold
    lm = tiny_lm(tiny_tokenizer)
    ev = Evaluator(tiny_tokenizer, prompts, lambda p, t: RewardOut(torch.zeros(len(t))),
                   gold_fn=gold_function(prompts), heldout=[(p, "5.") for p in prompts], max_new_tokens=6)
    base = ev.set_baseline(lm)
    m, samples = ev(lm)
    want = [gold_score(p, t, f) for p, t, f in zip(prompts, base["texts"], base["finished"])]
    assert [s["gold"] for s in samples] == want
    assert abs(m["eval/gold"] - sum(want) / 3) < 1e-9
    assert m["eval/ties"] == 1.0 and "eval/win_rate" not in m  # the same model twice: all ties
    assert m["eval/ppl"] > 1.0


def test_evaluator_paired_standard_error_against_the_best_evaluation(tiny_tokenizer):
    from rlhf.trainers.ppo_eval import Evaluator

    golds = iter([[0.0, 1.0, 2.0], [0.0, 0.0, 2.0], [1.0, 1.0, 2.0], [1.0, 1.0, 2.0]])
    ev = Evaluator(tiny_tokenizer, ["a", "b", "c"], lambda p, t: RewardOut(torch.zeros(len(t))),
                   gold_fn=lambda p, t, f: next(golds), max_new_tokens=2)
    lm = tiny_lm(tiny_tokenizer)
    first, _ = ev(lm)
    assert "eval/gold_vs_best_se" not in first  # nothing to compare with yet
    # change against the first [0, -1, 0]: sample sd sqrt(1/3), standard error sqrt(1/3) / sqrt(3) = 1/3
    second, _ = ev(lm)
    assert abs(second["eval/gold_vs_best_se"] - 1 / 3) < 1e-9
    assert ev.best_gold == [0.0, 1.0, 2.0]  # a worse evaluation does not replace the best
    third, _ = ev(lm)  # [1, 0, 0] against the first, then it becomes the best
    assert abs(third["eval/gold_vs_best_se"] - 1 / 3) < 1e-9 and ev.best_gold == [1.0, 1.0, 2.0]
    fourth, _ = ev(lm)  # identical to the best: no change, no noise
    assert fourth["eval/gold_vs_best_se"] == 0.0


def test_disable_dropout_reaches_the_attention_modules_own_copy(tiny_tokenizer, tmp_path):
    """Llama attention keeps `attention_dropout` from the config it was built with: zeroing the config is not enough.

    With attention dropout 0.5, two train-mode forwards differ until `disable_dropout` has run; after it
    they are equal, and PPO's first ratio (old log-probs from the rollout forward, new from the training
    forward in train mode) is exactly 1.
    """
    from transformers import LlamaForCausalLM

    from rlhf.models import disable_dropout

    lm = tiny_lm(tiny_tokenizer)
    cfg = lm.config
    cfg.attention_dropout = 0.5
    lm = LlamaForCausalLM(cfg).train()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    assert not torch.equal(lm(input_ids=ids).logits, lm(input_ids=ids).logits)  # dropout is on
    disable_dropout(lm)
    assert all(m.attention_dropout == 0.0 for m in lm.modules() if hasattr(m, "attention_dropout"))
    assert torch.equal(lm(input_ids=ids).logits, lm(input_ids=ids).logits)

    lm.save_pretrained(tmp_path / "dropout-lm")
    tiny_tokenizer.save_pretrained(tmp_path / "dropout-lm")
    from rlhf.models import load_causal_lm

    loaded = load_causal_lm(str(tmp_path / "dropout-lm"), dropout_off=True)
    assert loaded.config.attention_dropout == 0.0
    ac = PolicyWithValueHead(loaded)
    r = generate(ac.lm, tiny_tokenizer, PROMPTS, max_new_tokens=5, batch_size=4, seed=0)
    ac.train()
    episodes = lay_out(r.input_ids, r.attention_mask, r.query_ids.size(1))
    logits, _ = ac(episodes)
    lp = torch.log_softmax(logits.float(), -1).gather(-1, r.response_ids[..., None]).squeeze(-1)
    ratio = torch.exp(lp - r.logprobs)[r.response_mask.bool()]
    assert (ratio - 1).abs().max() < 1e-5
