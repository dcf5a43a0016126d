"""The shared runtime: threads per process, one checkpoint format for the offline and online stages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf.cli import main as cli
from rlhf.trainers import runtime


@pytest.mark.parametrize("cores,env,want", [
    (8, {}, 8),                                              # one process: every core it may run on
    (8, {"LOCAL_WORLD_SIZE": "2"}, 4),                       # two processes on the machine: half each
    (8, {"LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}, 1),  # torchrun's OMP_NUM_THREADS=1 is respected
    (8, {"OMP_NUM_THREADS": "16"}, 8),                       # never more than the cores
    (2, {"LOCAL_WORLD_SIZE": "4"}, 1),                       # more processes than cores: one thread each
])
def test_default_threads_are_this_processs_share(monkeypatch, cores, env, want):
    monkeypatch.setattr(runtime, "available_cores", lambda: cores)
    for key in ("LOCAL_WORLD_SIZE", "OMP_NUM_THREADS"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert runtime.default_threads() == want


def test_pick_device():
    import torch

    assert runtime.pick_device("auto") == torch.device("cpu")  # no GPU on this machine
    assert runtime.pick_device("cpu") == torch.device("cpu")
    from rlhf.errors import UserError

    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            runtime.pick_device("cuda")
    with pytest.raises(UserError, match="expected auto, cpu"):
        runtime.pick_device("tpu9")


def test_offline_and_online_stages_write_one_checkpoint_format(tmp_path, tiny_model_dir):
    """SFT (the offline loop) and PPO (the online loop) write the same checkpoint files; each state file holds
    the loop's position, PPO's also the KL controller, reward statistics, alarm monitor and evaluator."""
    from test_ppo import PROMPTS
    from test_sft import write_arithmetic

    data = write_arithmetic(tmp_path / "sft.jsonl")
    assert cli(["sft", "--model", tiny_model_dir, "--data", str(data), "--batch-size", "4", "--max-steps", "2",
                "--save-every", "1", "--val-fraction", "0.2", "--threads", "1", "--quiet",
                "--out", str(tmp_path / "sft")]) == 0
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    # the SFT folder as a reward model: a randomly drawn score head on it does for the checkpoint's format
    assert cli(["ppo", "--policy", tiny_model_dir, "--reward-model", str(tmp_path / "sft"), "--prompts", str(prompts),
                "--eval-prompts", str(prompts), "--reference-text", "none", "--rollout-batch-size", "4",
                "--minibatch-size", "2", "--total-episodes", "8", "--max-new-tokens", "4", "--save-every", "1",
                "--threads", "1", "--out", str(tmp_path / "ppo")]) == 0

    def files(out: Path):
        ckpt = runtime.latest_checkpoint(out / "checkpoints")
        return ckpt, {p.name for p in ckpt.iterdir()} - {"best.safetensors"}

    (sft_ckpt, sft_files), (ppo_ckpt, ppo_files) = files(tmp_path / "sft"), files(tmp_path / "ppo")
    assert sft_files == ppo_files == {"model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl",
                                      "trainer_state.json"}
    ppo_state = json.loads((ppo_ckpt / "trainer_state.json").read_text())
    assert ppo_state["update"] == 2 and {"kl_ctl", "method", "monitor", "evaluator"} <= set(ppo_state)
    assert ppo_state["evaluator"]["baseline"]["texts"]  # the SFT answers every evaluation is read against
    assert json.loads((sft_ckpt / "trainer_state.json").read_text())["step"] == 1  # the last step is the model
    for out in ("sft", "ppo"):
        manifest = json.loads((tmp_path / out / "run.json").read_text())
        assert manifest["command"] == out and manifest["status"] == "finished"


def test_ppos_old_checkpoint_format_is_refused_with_one_line(tmp_path, tiny_model_dir, capsys):
    old = tmp_path / "old-ppo"
    (old / "checkpoint").mkdir(parents=True)
    (old / "checkpoint" / "state.json").write_text("{}")
    (old / "metrics.jsonl").write_text("")
    code = cli(["ppo", "--policy", tiny_model_dir, "--reward-model", tiny_model_dir, "--resume",
                "--out", str(old)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "earlier rlhf release" in err, err


@pytest.fixture
def restores_determinism():
    """torch's deterministic mode and CUBLAS_WORKSPACE_CONFIG as they were before the test."""
    import os

    import torch

    was, env = torch.are_deterministic_algorithms_enabled(), os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    torch.use_deterministic_algorithms(False)
    yield
    torch.use_deterministic_algorithms(was)
    os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    if env is not None:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = env


def test_deterministic_runs_reach_torch_and_give_bit_identical_weights(tmp_path, tiny_model_dir,
                                                                       restores_determinism):
    """--deterministic (offline SFT and online PPO) turns torch's deterministic mode on, is recorded in run.json,
    and two runs give the same weights to the bit (on a CPU they would without it; the option must not spoil it)."""
    import os

    import torch
    from safetensors.torch import load_file
    from test_ppo import PROMPTS
    from test_sft import write_arithmetic

    data = write_arithmetic(tmp_path / "sft.jsonl")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))

    def sft(out):
        return ["sft", "--model", tiny_model_dir, "--data", str(data), "--batch-size", "4", "--max-steps", "3",
                "--save-every", "0", "--val-fraction", "0.2", "--threads", "1", "--quiet", "--deterministic",
                "--out", str(tmp_path / out)]

    def ppo(out):
        return ["ppo", "--policy", tiny_model_dir, "--reward-model", str(tmp_path / "sft-1"), "--prompts", str(prompts),
                "--eval-prompts", "none", "--rollout-batch-size", "4", "--minibatch-size", "2", "--total-episodes",
                "8", "--max-new-tokens", "4", "--save-every", "0", "--threads", "1", "--quiet", "--deterministic",
                "--out", str(tmp_path / out)]

    assert cli(sft("sft-1")) == 0
    assert torch.are_deterministic_algorithms_enabled() and os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    torch.use_deterministic_algorithms(False)
    for args in (sft("sft-2"), ppo("ppo-1"), ppo("ppo-2")):
        assert cli(args) == 0
        assert torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(False)
    for a, b in (("sft-1", "sft-2"), ("ppo-1", "ppo-2")):
        assert json.loads((tmp_path / a / "run.json").read_text())["options"]["deterministic"] is True
        one, two = load_file(tmp_path / a / "model.safetensors"), load_file(tmp_path / b / "model.safetensors")
        assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one), (a, b)


def test_others_busy_reads_proc_stat_between_two_samples():
    """Busy cores = (ticks - idle ticks) / ticks x the CPU count, over the sampling interval."""
    import os

    from rlhf.trainers.runtime import others_busy

    readings = iter(["cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 1 2 3\n", "cpu  200 10 140 840 10 0 0 0 0 0\n"])
    # 200 ticks passed, 50 of them idle or waiting on I/O: 3/4 of the machine busy
    assert others_busy(0.0, stat=lambda: next(readings)) == pytest.approx(0.75 * (os.cpu_count() or 1))
    assert others_busy(0.0, stat=lambda: "garbage") == 0.0


def _policy_after_cli(env_extra, busy_processes=0) -> str:
    """OMP_WAIT_POLICY after a refused `rlhf lab skills` in a fresh process, beside `busy_processes` spinning ones."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    env.update(env_extra)
    code = ("import os, sys; from rlhf.cli import main; "
            "assert main(['lab', 'skills', 'lab-small', '--temperature', '-1']) == 2; "
            "print('policy', os.environ.get('OMP_WAIT_POLICY'))")
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy_processes)]
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    assert out.returncode == 0, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1  # the refusal's one line, nothing about the policy
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.skipif(runtime.available_cores() < 2, reason="one core: a single thread never waits on another")
def test_a_busy_machine_makes_openmp_wait_passively():
    """Beside busy processes the CLI sets OMP_WAIT_POLICY=PASSIVE before torch loads, silently; a policy the
    user set is left alone."""
    assert _policy_after_cli({}, busy_processes=runtime.available_cores()) == "policy PASSIVE"
    assert _policy_after_cli({"OMP_WAIT_POLICY": "ACTIVE"}, busy_processes=runtime.available_cores()) == "policy ACTIVE"


def test_choose_wait_policy_before_torch_only():
    """The policy is chosen in a process without torch (libgomp reads it once, when torch loads), only when
    the measured load reaches BUSY_CORES; in a process that already has torch nothing changes."""
    import os
    import subprocess
    import sys

    code = ("import os, sys; from rlhf.trainers.runtime import choose_wait_policy; "
            "assert 'torch' not in sys.modules; "
            "print(choose_wait_policy(lambda: 0.2), os.environ.get('OMP_WAIT_POLICY')); "
            "print(choose_wait_policy(lambda: 1.5), os.environ.get('OMP_WAIT_POLICY'))")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["OMP_NUM_THREADS"] = "2"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    if runtime.available_cores() >= 2:
        assert lines[0] == "None None" and lines[1] == "1.5 PASSIVE", out.stdout
    import torch  # noqa: F401  (this process has torch: too late to choose)

    before = os.environ.get("OMP_WAIT_POLICY")
    assert runtime.choose_wait_policy(lambda: 9.0) is None and os.environ.get("OMP_WAIT_POLICY") == before
