"""Single-file outputs and full disks (issue 19, item 4).

`rlhf rm score --out`, `rlhf eval --out` and `rlhf lab gold --out` write one file: they refuse an existing one
(they cannot tell theirs from the user's) unless --overwrite, an input, and impossible paths, with one line
before anything is loaded, and write atomically. A full disk while appending to metrics.jsonl or saving the
reference cache is one line with nothing half-written left.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch

from rlhf.cli import main
from rlhf.errors import UserError
from rlhf.files import check_output_file


def one_line(err: str) -> str:
    assert err.startswith("rlhf: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def lab_rows(path: Path) -> str:
    from rlhf.lab import world

    tasks = world.sample_tasks(3, seed=0, split="eval")
    path.write_text("".join(json.dumps({"prompt": t.prompt, "response": t.answer}) + "\n" for t in tasks))
    return str(path)


@pytest.fixture(scope="module")
def tiny_rm_dir(tmp_path_factory, tiny_tokenizer):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tiny_tokenizer.pad_token_id)
    path = tmp_path_factory.mktemp("tiny-rm")
    LlamaForSequenceClassification(config).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return str(path)


def commands(tmp_path: Path, rm_dir: str, out: str) -> dict[str, list[str]]:
    rows = lab_rows(tmp_path / "rows.jsonl")
    return {
        "rm score": ["rm", "score", "--model", rm_dir, "--data", rows, "--out", out],
        "eval": ["eval", "--answers", str(tmp_path / "answers.json"), "--judge", "gold", "--out", out],
        "lab gold": ["lab", "gold", rows, "--out", out],
    }


def write_answers(tmp_path: Path) -> None:
    from rlhf.lab import world

    tasks = world.sample_tasks(3, seed=0, split="eval")
    samples = [{"prompt": t.prompt, "response_a": t.answer, "response_b": "I do not know."} for t in tasks]
    (tmp_path / "answers.json").write_text(json.dumps({"samples": samples, "model_a": "a", "model_b": "b"}))


@pytest.mark.parametrize("command", ["rm score", "eval", "lab gold"])
def test_a_single_file_output_never_replaces_a_file_it_was_not_asked_to(command, tmp_path, tiny_rm_dir, capsys):
    write_answers(tmp_path)
    notes = tmp_path / "notes.jsonl"
    notes.write_text("the user's own file\n")
    argv = commands(tmp_path, tiny_rm_dir, str(notes))[command]
    assert main(argv) == 2
    assert "already exists" in one_line(capsys.readouterr().err) and notes.read_text() == "the user's own file\n"
    for bad, said in ((tmp_path / "rows.jsonl" if command != "eval" else tmp_path / "answers.json", "is the input"),
                      (Path("/proc/rlhf-test.jsonl"), "not a place for files"),
                      (notes / "x.jsonl", "is a file"), (tmp_path, "is a folder")):
        before = bad.read_bytes() if bad.is_file() else None
        assert main(commands(tmp_path, tiny_rm_dir, str(bad))[command] + ["--overwrite"]) == 2
        assert said in one_line(capsys.readouterr().err)
        assert before is None or bad.read_bytes() == before
    assert main([*argv, "--overwrite"]) == 0  # asked to: replaced whole
    capsys.readouterr()
    assert notes.read_text() != "the user's own file\n"
    text = notes.read_text()
    json.loads(text) if command == "eval" else [json.loads(line) for line in text.splitlines()]
    fresh = tmp_path / "new" / "scores.jsonl"
    assert main(commands(tmp_path, tiny_rm_dir, str(fresh))[command]) == 0 and fresh.exists()
    assert not [p for p in tmp_path.rglob(".*") if p.name.endswith(".tmp")]


def test_check_output_file_refuses_with_one_line_and_writes_nothing(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    check_output_file(tmp_path / "b.json")
    check_output_file(tmp_path / "a.json", overwrite=True)
    check_output_file(tmp_path / "deeper" / "b.json")
    with pytest.raises(UserError, match="already exists"):
        check_output_file(tmp_path / "a.json")
    with pytest.raises(UserError, match="is empty"):
        check_output_file(" ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_a_full_disk_while_appending_metrics_is_one_line_and_leaves_whole_rows(tmp_path, monkeypatch):
    import rlhf.metrics as metrics

    logger = metrics.MetricsLogger(tmp_path)
    logger.log({"step": 1, "loss": 0.5})
    real = metrics.os.write

    def full(fd, data):  # half of the row reaches the disk, then it is full
        real(fd, bytes(data[:len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(metrics, "_append", lambda fd, data: full(fd, data))
    with pytest.raises(UserError, match="no space left") as err:
        logger.log({"step": 2, "loss": 0.25, "note": "x" * 200})
    assert "\n" not in str(err.value)
    monkeypatch.undo()
    assert metrics.read_metrics(tmp_path / "metrics.jsonl") == [{"step": 1, "loss": 0.5}]
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1, "loss": 0.5}\n'  # no torn row
    logger.log({"step": 2, "loss": 0.25})  # room again: the log goes on
    logger.close()
    assert [r["step"] for r in metrics.read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]


def test_a_full_disk_while_saving_the_reference_cache_is_one_line_and_leaves_the_old_one(tmp_path, monkeypatch):
    import safetensors.torch

    from rlhf.refcache import ReferenceCache

    path = tmp_path / "ref_logps.safetensors"
    ReferenceCache("old", torch.zeros(4, 2)).save(path)
    before = path.read_bytes()
    real = safetensors.torch.save_file

    def full(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:  # a half-written file, then the error safetensors gives
            f.truncate(10)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(UserError, match="no space left") as err:
        ReferenceCache("new", torch.ones(4, 2)).save(path)
    assert "\n" not in str(err.value)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [path.name]
