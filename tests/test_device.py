"""Every command that runs a model without training it: --device, threads, progress on stderr.

On this CPU-only machine `--device cpu` runs, `--device auto` picks the CPU, `--device cuda` fails with
one line (exit 2) before anything is written; threads default to the process's share of the cores
(`rlhf.trainers.runtime.default_threads`); long phases print progress lines (stderr is no terminal
under pytest) and none with --quiet.
"""

from __future__ import annotations

import json
import os

import pytest

torch = pytest.importorskip("torch")

from rlhf.cli import main  # noqa: E402
from rlhf.trainers.runtime import default_threads  # noqa: E402

PROMPTS = ["What is 2 + 3?", "Sort these numbers: 4 1 3.", "Reverse the words: red blue cat."]
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible: --device cuda would run")


@pytest.fixture(autouse=True)
def _keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory, tiny_tokenizer):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, num_labels=1,
                      pad_token_id=tiny_tokenizer.pad_token_id)
    path = tmp_path_factory.mktemp("tiny-rm")
    LlamaForSequenceClassification(cfg).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture()
def prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return str(path)


def _argv(command: str, tiny: str, rm: str, prompts: str, out: str) -> list[str]:
    """Each command's smallest run on the tiny models."""
    return {
        "bon": ["bon", "--policy", tiny, "--reward-model", rm, "--prompts", prompts, "--n", "2",
                "--max-new-tokens", "4", "--no-drop-unfinished", "--out", out],
        "eval": ["eval", tiny, tiny, "--prompts", prompts, "--judge", f"rm:{rm}", "--rm", rm, "--max-new-tokens", "4",
                 "--n-boot", "100", "--out", os.path.join(out, "eval.json")],
        "lab data": ["lab", "data", "--model", tiny, "--parts", "prefs", "--n-prefs", "3", "--k", "2",
                     "--max-new-tokens", "4", "--out", out],
        "rm score": ["rm", "score", "--model", rm, "--data", prompts.replace("prompts.jsonl", "rows.jsonl")],
        "cai": ["cai", "--model", tiny, "--prompts", prompts, "--n-prompts", "2", "--max-new-tokens", "4",
                "--critic-max-new-tokens", "4", "--max-prompt-len", "256", "--out", out],
        "observe overopt": ["observe", "overopt", "--policy", tiny, "--reward-model", rm, "--prompts", prompts,
                            "--n-max", "2", "--max-new-tokens", "4", "--gold-judge", f"rm:{rm}", "--out", out],
    }[command]


# what each command's progress notes start with (stderr is no terminal here)
PROGRESS = {
    "bon": ["rlhf: generation: 6 samples in", "rlhf: scoring: 6 responses in"],
    "eval": ["rlhf: A: generation: 3 samples in", "rlhf: B: generation: 3 samples in",
             "rlhf: A: samples for KL: 3 samples in", "rlhf: KL to the reference: 3 samples in",
             "rlhf: scoring: 6 responses in"],
    "lab data": ["rlhf: lab data: sampling: 6 samples in"],
    "rm score": ["rlhf: scoring: 3 responses in"],
    "cai": ["rlhf: responses: 2 samples in", "replies: 2 samples in", "rlhf: RLAIF samples: 4 samples in",
            "rlhf: judge llm:"],
    "observe overopt": ["rlhf: generation: 6 samples in", "rlhf: scoring: 6 responses in"],
}
COMMANDS = list(PROGRESS)


def _rows(prompts: str) -> None:
    with open(prompts.replace("prompts.jsonl", "rows.jsonl"), "w") as f:
        for p in PROMPTS:
            f.write(json.dumps({"prompt": p, "response": "A short answer."}) + "\n")


@pytest.mark.parametrize("command", COMMANDS)
def test_device_cpu_runs_and_shows_progress(command, tiny_model_dir, rm_dir, prompts, tmp_path, capsys,
                                            monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the default threads follow it
    calls = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append(n), real(n)))
    _rows(prompts)
    out = str(tmp_path / "out")
    assert main([*_argv(command, tiny_model_dir, rm_dir, prompts, out), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    for line in PROGRESS[command]:
        assert line in err, (line, err)
    assert calls[:1] == [default_threads()] == [1]  # (cai gives the caller's threads back when it ends)


@pytest.mark.parametrize("command", ["bon", "rm score", "lab data"])
def test_quiet_shows_no_progress(command, tiny_model_dir, rm_dir, prompts, tmp_path, capsys):
    _rows(prompts)
    out = str(tmp_path / "out")
    assert main([*_argv(command, tiny_model_dir, rm_dir, prompts, out), "--device", "cpu", "--threads", "1",
                 "--quiet"]) == 0
    assert "rlhf:" not in capsys.readouterr().err


@no_gpu
@pytest.mark.parametrize("command", [*COMMANDS, "serve", "pipeline"])
def test_device_cuda_without_a_gpu_fails_with_one_line(command, tiny_model_dir, rm_dir, prompts, tmp_path, capsys):
    _rows(prompts)
    out = tmp_path / "out"
    if command == "serve":
        argv = ["serve", tiny_model_dir, "--port", "0"]
    elif command == "pipeline":
        config = tmp_path / "pipeline.yaml"
        config.write_text(f"out: {out}\nbase: {tiny_model_dir}\n")
        argv = ["pipeline", str(config)]
    else:
        argv = _argv(command, tiny_model_dir, rm_dir, prompts, str(out))
    assert main([*argv, "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "device 'cuda': no CUDA GPU is visible" in err, err
    assert "Traceback" not in err
    assert not out.exists()  # nothing written


def test_a_device_that_is_no_device_is_refused_with_one_line(tiny_model_dir, capsys):
    assert main(["rm", "score", "--model", tiny_model_dir, "--prompt", "x", "--response", "y", "--device", "gpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "device 'gpu': expected auto, cpu, cuda, cuda:N or mps" in err


def test_every_command_has_the_same_device_option():
    from dataclasses import fields

    from rlhf.cai import CAIConfig
    from rlhf.device import DEVICE_HELP, THREADS_HELP
    from rlhf.evaluate import EvalConfig
    from rlhf.lab.generate import DataConfig
    from rlhf.observe.overopt import OveroptConfig
    from rlhf.pipeline import PipelineArgs, PipelineConfig
    from rlhf.serve import ServeConfig
    from rlhf.trainers.bon import BonConfig
    from rlhf.trainers.rm import ScoreConfig

    for cls in (BonConfig, EvalConfig, DataConfig, ScoreConfig, ServeConfig, CAIConfig, OveroptConfig,
                PipelineConfig, PipelineArgs):
        by_name = {f.name: f for f in fields(cls)}
        assert by_name["device"].default == "auto" and by_name["device"].metadata["help"] == DEVICE_HELP, cls
        assert by_name["threads"].default == 0 and by_name["threads"].metadata["help"] == THREADS_HELP, cls


def test_auto_picks_the_cpu_here_and_threads_default_to_the_process_share(monkeypatch):
    from rlhf.device import use_device
    from rlhf.trainers.bon import BonConfig

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible: auto picks it")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert use_device(BonConfig()).type == "cpu" and torch.get_num_threads() == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    use_device(BonConfig())
    assert torch.get_num_threads() == default_threads()
    use_device(BonConfig(threads=1))
    assert torch.get_num_threads() == 1


def test_serve_runs_on_the_device_it_is_given(tiny_model_dir):
    from rlhf.serve import Engine, ServeConfig, create_app

    engine = Engine(ServeConfig(model=tiny_model_dir, port=0, device="cpu", threads=1))
    assert engine.device.type == "cpu" and next(engine.model.parameters()).device.type == "cpu"
    client = create_app(engine, "tiny").test_client()
    for stream in (False, True):
        r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}],
                                                      "max_tokens": 3, "temperature": 0, "stream": stream})
        assert r.status_code == 200


def test_judges_load_on_the_device_they_are_given(rm_dir, tiny_model_dir):
    from rlhf.judges import make_judge
    from rlhf.errors import UserError

    assert next(make_judge(f"rm:{rm_dir}", device="cpu").model.parameters()).device.type == "cpu"
    assert next(make_judge(f"llm:{tiny_model_dir}", device="cpu").model.parameters()).device.type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            make_judge(f"rm:{rm_dir}", device="cuda")


def test_pipeline_passes_device_threads_and_quiet_to_the_stages_that_take_them():
    from rlhf.pipeline import PipelineConfig, shared_options

    cfg = PipelineConfig(device="cpu", threads=2, quiet=True)
    assert shared_options(cfg, "rlhf.trainers.bon:main") == {"device": "cpu", "threads": 2, "quiet": True}
    assert shared_options(cfg, "rlhf.trainers.sft:main") == {"threads": 2, "quiet": True}  # accelerate's device
    assert shared_options(PipelineConfig(), "rlhf.trainers.bon:main") == {"device": "auto"}


@pytest.mark.parametrize("n_prompts,num_samples,batch_size", [(23, 1, 4), (17, 3, 4), (9, 4, 6)])
def test_generation_with_progress_gives_the_samples_of_one_call(tiny_model_dir, tiny_tokenizer, n_prompts,
                                                                num_samples, batch_size):
    from rlhf.models import load_causal_lm
    from rlhf.progress import generate
    from rlhf.rollout import generate as plain

    torch.set_num_threads(1)
    model = load_causal_lm(tiny_model_dir, dropout_off=True)
    prompts = [("Sort these numbers: " + " ".join(str(j) for j in range(i % 7 + 1)) + ".") for i in range(n_prompts)]
    opts = dict(max_new_tokens=5, temperature=1.0, seed=3, batch_size=batch_size, num_samples=num_samples)
    a = plain(model, tiny_tokenizer, prompts, **opts)
    b = generate(model, tiny_tokenizer, prompts, show=False, **opts)
    assert b.texts == a.texts and b.prompts == a.prompts
    for name in ("query_ids", "query_mask", "response_ids", "response_mask", "logprobs", "finished"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_progress_notes_when_stderr_is_not_a_terminal():
    import io

    from rlhf.progress import Progress

    stream = io.StringIO()
    with Progress("work", 10, unit="items", stream=stream, first_note_s=0.0, note_every_s=0.0) as bar:
        bar.update(4)
        bar.update(6)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("rlhf: work 4/10 items (40%),") and "left" in lines[0]
    assert lines[-1].startswith("rlhf: work: 10 items in")
    quiet = io.StringIO()
    with Progress("work", 10, stream=quiet, enabled=False) as bar:
        bar.update(10)
    assert quiet.getvalue() == ""
