"""The training loop on toy models: schedule, accumulation, clipping, NaN stop, resume, early stopping."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from rlhf.config import opt, parse
from rlhf.errors import UserError
from rlhf.metrics import read_metrics
from rlhf.trainers.loop import TrainingDiverged, TrainOptions, latest_checkpoint, train, train_options


def regression_data(n=32, batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5])
    return x, y, [{"x": x[i:i + batch], "y": y[i:i + batch]} for i in range(0, n, batch)]


def mlp(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Dropout(dropout), torch.nn.Linear(8, 1))


def mse_step(model, batch):
    pred = model(batch["x"]).squeeze(-1)
    return ((pred - batch["y"]) ** 2).mean(), {"examples": batch["x"].shape[0]}


def opts(**kw):
    base = dict(lr=1e-2, save_every=0, quiet=True, warmup_ratio=0.0, threads=1)
    return TrainOptions(**{**base, **kw})


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def no_save(model):
    pass


def test_learns_logs_and_follows_the_schedule(tmp_path):
    x, y, batches = regression_data()
    model = mlp()

    def eval_fn(m):
        return {"loss": ((m(x).squeeze(-1) - y) ** 2).mean()}

    res = train(model, batches, mse_step, opts(lr=0.05, epochs=6, warmup_steps=2, schedule="linear"),
                out_dir=tmp_path, eval_fn=eval_fn, save_fn=no_save, count_key="examples")
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert res.steps == 48 and res.epoch == 6.0  # 8 micro-batches x 6 epochs, one per step
    assert rows[0]["step"] == 0 and rows[-1]["step"] == 48
    first_eval, last_eval = rows[0]["eval/loss"], rows[-1]["eval/loss"]
    assert last_eval < first_eval / 10, (first_eval, last_eval)
    train_rows = [r for r in rows if "loss" in r]
    assert len(train_rows) == 48
    assert {"epoch", "loss", "lr", "grad_norm", "examples_per_s", "time"} <= set(train_rows[0])
    # linear warmup over 2 steps then linear decay to 0 at step 48; the lr logged
    # is the one the step used: step s uses 0.05 * min((s-1)/2, (48-(s-1))/46)
    lrs = [r["lr"] for r in train_rows]
    assert lrs[:4] == pytest.approx([0.0, 0.025, 0.05, 0.05 * 45 / 46], abs=1e-9)
    assert lrs[-1] == pytest.approx(0.05 * 1 / 46, abs=1e-9)
    assert train_rows[9]["epoch"] == pytest.approx(10 / 8)


def test_accumulation_matches_one_big_batch_and_reports_the_unclipped_norm(tmp_path):
    x, y, _ = regression_data(n=8)
    big = [{"x": x, "y": y}]
    halves = [{"x": x[:4], "y": y[:4]}, {"x": x[4:], "y": y[4:]}]
    a, b = mlp(), mlp()
    train(a, big, mse_step, opts(max_steps=3), out_dir=tmp_path / "a", save_fn=no_save)
    train(b, halves, mse_step, opts(max_steps=3, grad_accum=2), out_dir=tmp_path / "b", save_fn=no_save)
    # equal-size halves: mean of the two half-batch means is the full-batch mean, so the gradients agree
    for k, v in weights(a).items():
        torch.testing.assert_close(weights(b)[k], v, rtol=0, atol=1e-6)
    norms_a = [r["grad_norm"] for r in read_metrics(tmp_path / "a/metrics.jsonl")]
    norms_b = [r["grad_norm"] for r in read_metrics(tmp_path / "b/metrics.jsonl")]
    assert norms_a == pytest.approx(norms_b, rel=1e-5)  # Adam hides a wrong 1/grad_accum; the norm does not


def test_clipping_scales_the_gradient_adam_sees(tmp_path):
    # one weight w = 0, loss (w - 3)^2: gradient -6, norm 6; clipped to norm 1 the gradient is -1,
    # so Adam's first moment after one step is (1 - 0.9) * -1 = -0.1 (unclipped it would be -0.6)
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    batches = [{"x": torch.ones(1, 1)}]

    def step(m, batch):
        return ((m(batch["x"]) - 3.0) ** 2).mean(), {}

    train(model, batches, step, opts(max_steps=2, max_grad_norm=1.0, save_every=1), out_dir=tmp_path,
          save_fn=no_save)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert rows[0]["grad_norm"] == pytest.approx(6.0)
    state = torch.load(tmp_path / "checkpoints/step-0000001/optimizer.bin", weights_only=True)["state"]
    assert state[0]["exp_avg"].item() == pytest.approx(-0.1, abs=1e-7)


def test_nan_loss_stops_and_leaves_the_last_good_checkpoint(tmp_path):
    _, _, batches = regression_data()
    model = mlp()
    calls, seen = [0], {}

    def step(m, batch):
        calls[0] += 1
        if calls[0] == 6:  # the model as step 5 left it
            seen.update(weights(m))
        loss, metrics = mse_step(m, batch)
        return (loss * float("nan") if calls[0] == 7 else loss), metrics

    saved = []
    with pytest.raises(TrainingDiverged) as err:
        train(model, batches, step, opts(max_steps=20, save_every=5), out_dir=tmp_path, save_fn=saved.append)
    message = str(err.value)
    assert "step 7: loss is nan" in message and "step-0000005" in message and "\n" not in message
    assert isinstance(err.value, UserError)  # the CLI prints one line and exits 2
    ckpt = latest_checkpoint(tmp_path / "checkpoints")
    assert ckpt.name == "step-0000005" and json.loads((ckpt / "trainer_state.json").read_text())["step"] == 5
    from safetensors.torch import load_file

    on_disk = load_file(ckpt / "model.safetensors")
    for k, v in seen.items():
        torch.testing.assert_close(on_disk[k], v, rtol=0, atol=0)
    assert max(r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")) == 6
    assert saved == []  # no final model from a diverged run


def test_resume_after_interruption_equals_an_uninterrupted_run(tmp_path):
    # dropout and per-epoch shuffling make the result depend on the RNG and the data position
    x, y, batches = regression_data()
    o = opts(epochs=3, save_every=5, eval_every=4, seed=7)

    def eval_fn(m):
        return {"loss": ((m(x).squeeze(-1) - y) ** 2).mean()}

    ref = mlp(dropout=0.3)
    train(ref, batches, mse_step, o, out_dir=tmp_path / "ref", eval_fn=eval_fn, save_fn=no_save)

    calls = [0]

    def crashing(m, batch):
        calls[0] += 1
        if calls[0] == 13:  # during step 13, after the checkpoint at step 10
            raise KeyboardInterrupt
        return mse_step(m, batch)

    with pytest.raises(KeyboardInterrupt):
        train(mlp(dropout=0.3), batches, crashing, o, out_dir=tmp_path / "run", eval_fn=eval_fn, save_fn=no_save)
    assert latest_checkpoint(tmp_path / "run/checkpoints").name == "step-0000010"
    resumed = mlp(seed=99, dropout=0.3)  # other initial weights: everything must come from the checkpoint
    res = train(resumed, batches, mse_step, TrainOptions(**{**o.__dict__, "resume": True}),
                out_dir=tmp_path / "run", eval_fn=eval_fn, save_fn=no_save)
    assert res.steps == 24
    for k, v in weights(ref).items():
        torch.testing.assert_close(weights(resumed)[k], v, rtol=0, atol=1e-6)

    def strip(rows):
        return [{k: v for k, v in r.items() if k not in ("time", "examples_per_s")} for r in rows]

    assert strip(read_metrics(tmp_path / "run/metrics.jsonl")) == strip(read_metrics(tmp_path / "ref/metrics.jsonl"))


def test_early_stopping_ends_with_the_best_weights(tmp_path):
    _, _, batches = regression_data()
    script = [5.0, 3.0, 4.0, 4.0, 4.0, 4.0]  # eval at steps 0, 1, 2, 3: best at step 1, then 2 worse
    snapshots = []

    def eval_fn(m):
        snapshots.append(weights(m))
        return {"loss": script[len(snapshots) - 1]}

    final = []
    res = train(mlp(), batches, mse_step, opts(max_steps=20, eval_every=1, patience=2), out_dir=tmp_path,
                eval_fn=eval_fn, save_fn=lambda m: final.append(weights(m)))
    assert (res.steps, res.stopped_early, res.best, res.best_step) == (3, True, 3.0, 1)
    assert len(snapshots) == 4
    for k, v in snapshots[1].items():
        torch.testing.assert_close(final[0][k], v, rtol=0, atol=0)
    assert not torch.equal(snapshots[3]["2.weight"], snapshots[1]["2.weight"])  # training did move on


def test_keeps_only_the_newest_checkpoints(tmp_path):
    _, _, batches = regression_data()
    train(mlp(), batches, mse_step, opts(max_steps=9, save_every=2, keep_checkpoints=2), out_dir=tmp_path,
          save_fn=no_save)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-0000006", "step-0000008"]


def test_too_little_data_and_bad_options_are_user_errors(tmp_path):
    _, _, batches = regression_data(n=8)  # 2 micro-batches
    with pytest.raises(UserError, match="only 2 micro-batches"):
        train(mlp(), batches, mse_step, opts(grad_accum=3), out_dir=tmp_path, save_fn=no_save)
    with pytest.raises(UserError, match="lr must be positive"):
        TrainOptions(lr=0)


@dataclass
class StageConfig(TrainOptions):
    command = "stage"
    model: str = opt("lab", "model")
    lr: float = opt(5e-5, "a stage's own default")


def test_stage_configs_inherit_flat_flags():
    cfg = parse(StageConfig, ["--grad-accum", "4", "max_steps=7", "--model", "m"])
    assert (cfg.grad_accum, cfg.max_steps, cfg.model, cfg.lr) == (4, 7, "m", 5e-5)
    assert train_options(cfg) == TrainOptions(grad_accum=4, max_steps=7, lr=5e-5)
    with pytest.raises(UserError, match="batch_size must be >= 1"):
        parse(StageConfig, ["--batch-size", "0"])


def test_optimizer_is_the_fused_adamw_with_the_default_kernels_update():
    from rlhf.trainers.loop import make_optimizer

    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 1))
              for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    start = [p.detach().clone() for p in models[0].parameters()]
    opts = TrainOptions(lr=1e-2, weight_decay=0.1)
    fused = make_optimizer(models[0], opts)
    plain = torch.optim.AdamW([{"params": [p for p in models[1].parameters() if p.ndim >= 2], "weight_decay": 0.1},
                               {"params": [p for p in models[1].parameters() if p.ndim < 2], "weight_decay": 0.0}],
                              lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    x = torch.randn(64, 16)
    for _ in range(5):
        for model, optimizer in zip(models, (fused, plain)):
            optimizer.zero_grad()
            model(x).pow(2).mean().backward()
            optimizer.step()
    apart = [float((p - q).abs().max()) for p, q in zip(models[0].parameters(), models[1].parameters())]
    moved = [float((p - s).abs().max()) for p, s in zip(models[0].parameters(), start)]
    assert max(apart) < 1e-6 and min(moved) > 1e-3  # five real steps, the same within float rounding


@pytest.mark.parametrize("command", ["sft", "rm", "dpo", "kto", "orpo"])
def test_every_offline_stage_checks_max_len_and_val_fraction_alike(command, capsys, tmp_path):
    from rlhf.cli import main

    data = str(tmp_path / "x.jsonl")
    assert main([command, "--data", data, "--max-len", "4", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == "rlhf: max_len must be at least 8, got 4\n"
    assert main([command, "--data", data, "--val-fraction", "1", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == "rlhf: val_fraction must be in [0, 1), got 1.0\n"
    assert not (tmp_path / "o").exists()
