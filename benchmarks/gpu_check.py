"""The GPU check: every training stage for a few steps on the device, in bf16, checked and timed.

    python -m benchmarks.gpu_check                        # CUDA if visible: SmolLM2-135M and Qwen2-0.5B shapes
    python -m benchmarks.gpu_check --device cpu --size tiny --out /tmp/gpu-check   # the CPU test's run
    make gpu-check                                        # the same, with the TRL wheels when present

Built for a short loan of a GPU machine with no network and no model hub (see
benchmarks/README.md, "The GPU check"). It runs from the source tree and needs
nothing beyond torch, transformers, accelerate and the package's light
dependencies; TRL's side runs when `trl` is importable (`make gpu-wheels`).

For each size it builds random-weight model folders from configs (throughput
needs no trained weights) with the lab tokenizer, and the lab's data:
demonstrations and held-out prompts from `rlhf lab data`, comparisons of lab
replies of several qualities ranked by a simulated annotator (no model has to
sample them). Then, in this process, one after the other:

- `rlhf sft`, `rlhf rm`, `rlhf dpo` (their `main(argv)`, with the flags of the
  CPU benchmark harness, `benchmarks.ours_runner.command`) and `rlhf ppo`
  (value head, so the trainer's log-probabilities are compared with the
  sampler's), all `--mixed-precision bf16` over float32 weights;
- TRL's SFT, reward and DPO trainers at the same settings on the same token
  ids (`benchmarks.trl_runner`), when `trl` imports.

Checked (the run exits 1 when one fails):

- every stage finished;
- every model forward (each `PreTrainedModel`, and every module's positional
  tensor inputs) ran on the requested device, with all parameters and buffers
  of each model there;
- device-to-host copies in one PPO update (the last one, under the CUDA
  profiler) stay within the waits the code documents: one per minibatch (the
  gradient norm, `ppo_step.ppo_update`), per generation batch one per 8
  sampled tokens and as many prunes (`rollout.sample_batch`) plus its closing
  reads and copies, per reward-model batch its scores, plus the per-update
  metric copies (`MAX_D2H` below). Host waits of any kind (`torch.cuda.set_sync_debug_mode`)
  are counted on every update, by phase and by source line, and reported;
- the sampler's and the trainer's log-probabilities (`policy/sampler_logprob_diff`)
  are finite; the largest difference over the run is reported.

Reported per stage: throughput (tokens/s for SFT, pairs/s for RM and DPO,
episodes/s for PPO) measured by the harness's probe from the second optimizer
step to the last (the same instrument on both sides), the stage's own
metrics.jsonl figure, peak GPU memory (`torch.cuda.max_memory_allocated`), and
for PPO the generation share of an update. The table is printed and written to
`<out>/gpu_check.json` (and `gpu_check.md`).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import random
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Model shapes. `smollm2` is SmolLM2-135M's config; `qwen05b` Qwen2.5-0.5B's. The tokenizer is the lab's
# (1,280 tokens): the embedding rows past it are never fed, but the output layer and the sampler still run
# over the whole vocabulary, as they would with the real tokenizer.
SIZES = {
    "tiny": dict(arch="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=None, tie_word_embeddings=True, max_position_embeddings=512),
    "smollm2": dict(arch="llama", hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                    intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True,
                    max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5),
    "qwen05b": dict(arch="qwen2", hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                    intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True,
                    max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6),
}

# Few steps, small batches: both real sizes, all stages and TRL's in well under 5 minutes on one H100.
SETTINGS = {
    "tiny": dict(steps=3, batch_size=4, dpo_batch_size=2, max_len=128, lr=1e-4, rollout=8, minibatch=4,
                 ppo_epochs=1, new_tokens=8, updates=2),
    "smollm2": dict(steps=8, batch_size=16, dpo_batch_size=8, max_len=256, lr=1e-5, rollout=32, minibatch=8,
                    ppo_epochs=2, new_tokens=48, updates=4),
    "qwen05b": dict(steps=8, batch_size=16, dpo_batch_size=8, max_len=256, lr=1e-5, rollout=32, minibatch=8,
                    ppo_epochs=2, new_tokens=48, updates=4),
}
UNITS = {"sft": "tokens/s", "rm": "pairs/s", "dpo": "pairs/s", "ppo": "episodes/s"}
PACKAGE = str(ROOT / "rlhf") + os.sep
SEED = 0
SYNC_MESSAGE = "called a synchronizing CUDA operation"


def MAX_D2H(s: dict) -> int:
    """The most device-to-host copies one PPO update may make (see the module docstring)."""
    minibatches = s["ppo_epochs"] * math.ceil(s["rollout"] / s["minibatch"])  # one gradient norm each
    gen_batches = rm_batches = 1  # the check passes --generation-batch-size and --rm-batch-size = the rollout
    checks = math.ceil(s["new_tokens"] / 8)
    per_gen_batch = 2 * checks + 8  # "all done?" every 8th token, as many prunes, closing reads and 4 copies
    return minibatches + gen_batches * per_gen_batch + 2 * rm_batches + 16  # + per-update metric copies


# --- instruments ---------------------------------------------------------------------------------------


class DeviceGuard:
    """Records every forward whose inputs, parameters or buffers are off the expected device."""

    def __init__(self, device_type: str):
        self.device_type = device_type
        self.forwards = 0
        self.models: set[int] = set()
        self.violations: list[str] = []
        self._handles: list = []

    def install(self) -> "DeviceGuard":
        import torch
        from transformers import PreTrainedModel

        guard = self
        original = PreTrainedModel.post_init

        def post_init(model, *args, **kwargs):
            original(model, *args, **kwargs)
            model.register_forward_pre_hook(guard._model_pre, with_kwargs=True)

        PreTrainedModel.post_init = post_init
        self._restore = (PreTrainedModel, original)
        self._handles.append(torch.nn.modules.module.register_module_forward_pre_hook(self._module_pre))
        return self

    def uninstall(self) -> None:
        for h in self._handles:
            h.remove()
        cls, original = self._restore
        cls.post_init = original

    def _bad(self, what: str, t) -> None:
        if len(self.violations) < 20:
            self.violations.append(f"{what} on {t.device} (shape {tuple(t.shape)})")
        else:
            self.violations.append("...")
            self.violations = self.violations[:21]

    def _check(self, where: str, values) -> None:
        import torch

        for name, v in values:
            if isinstance(v, torch.Tensor) and v.device.type != self.device_type and v.device.type != "meta":
                self._bad(f"{where}: input {name}", v)

    def _module_pre(self, module, args):
        self._check(type(module).__name__, enumerate(args))

    def _model_pre(self, module, args, kwargs):
        self.forwards += 1
        name = type(module).__name__
        self._check(name, list(enumerate(args)) + list(kwargs.items()))
        if id(module) not in self.models:
            self.models.add(id(module))
            for pname, p in list(module.named_parameters()) + list(module.named_buffers()):
                if p.device.type != self.device_type and p.device.type != "meta":
                    self._bad(f"{name}: {pname}", p)


class SyncCounter:
    """Host waits per PPO update, by phase and by source line; device-to-host copies of the last update.

    Wraps the functions `rlhf.trainers.ppo.train` calls (it imports them from
    `rlhf.trainers.ppo_step` when it runs): an update spans `make_experience`
    (generation, scoring, the no-grad forwards), `ppo_update` and
    `experience_metrics`. On CUDA, `torch.cuda.set_sync_debug_mode("warn")`
    turns every host wait into a warning, counted here; the last update also
    runs under the profiler, whose memcpy events give the copies by direction.
    """

    PHASES = ("generate", "score", "forward", "update", "metrics")

    def __init__(self, cuda: bool, n_updates: int):
        self.cuda, self.n_updates = cuda, n_updates
        self.phase: str | None = None
        self.update = 0
        self.per_update: list[Counter] = []
        self.sites: Counter = Counter()
        self.seconds: list[dict] = []
        self.memcpy: dict | None = None
        self._prof = None
        self._patched: list = []

    # phases
    def _wrap(self, module, name: str, phase: str, *, start: bool = False, end: bool = False):
        original = getattr(module, name)
        counter = self

        def wrapped(*args, **kwargs):
            if start:
                counter._begin_update()
            outer, counter.phase = counter.phase, phase
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                if counter.seconds:
                    counter.seconds[-1][phase] = counter.seconds[-1].get(phase, 0.0) + time.perf_counter() - t0
                counter.phase = outer
                if end:
                    counter._end_update()

        setattr(module, name, wrapped)
        self._patched.append((module, name, original))

    def install(self) -> "SyncCounter":
        from rlhf.trainers import ppo_step

        self._wrap(ppo_step, "make_experience", "experience", start=True)
        self._wrap(ppo_step, "generate", "generate")
        self._wrap(ppo_step, "reward_scores", "score")
        self._wrap(ppo_step, "forward_experience", "forward")
        self._wrap(ppo_step, "ppo_update", "update")
        self._wrap(ppo_step, "experience_metrics", "metrics", end=True)
        return self

    def uninstall(self) -> None:
        for module, name, original in reversed(self._patched):
            setattr(module, name, original)
        self._patched.clear()
        self._stop_profiler()

    def _begin_update(self) -> None:
        self.update += 1
        self.per_update.append(Counter())
        self.seconds.append({"t0": time.perf_counter()})
        if self.cuda and self.update == self.n_updates:
            from torch.profiler import ProfilerActivity, profile

            self._prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
            self._prof.__enter__()

    def _end_update(self) -> None:
        s = self.seconds[-1]
        s["total"] = time.perf_counter() - s.pop("t0")
        self._stop_profiler()

    def _stop_profiler(self) -> None:
        if self._prof is None:
            return
        prof, self._prof = self._prof, None
        prof.__exit__(None, None, None)
        names = Counter(e.name for e in prof.events())
        d2h = sum(n for k, n in names.items() if "memcpy dtoh" in k.lower())
        h2d = sum(n for k, n in names.items() if "memcpy htod" in k.lower())
        any_memcpy = sum(n for k, n in names.items() if "memcpy" in k.lower())
        self.memcpy = {"d2h": d2h, "h2d": h2d, "seen": any_memcpy > 0,
                       "names": {k: n for k, n in names.items() if "memcpy" in k.lower()}}

    # host waits
    def on_warning(self, message) -> bool:
        """Count a sync warning (True), or leave the warning to its usual handler (False)."""
        if SYNC_MESSAGE not in str(message):
            return False
        if self.phase is None or not self.per_update:
            return True  # setup, checkpoints: outside the updates
        self.per_update[-1][self.phase] += 1
        inner = ours = None  # the innermost frame outside the warning machinery, and the innermost in rlhf/
        f = sys._getframe(1)
        while f is not None and ours is None:
            name = f.f_code.co_filename
            if not (name.endswith("warnings.py") or name == __file__):
                inner = inner or (name, f.f_lineno)
                if os.path.realpath(name).startswith(PACKAGE):
                    ours = (name, f.f_lineno)
            f = f.f_back
        site = _short(*ours) if ours else "?"
        if inner is not None and inner != ours:
            site += f" (in {_short(*inner)})"
        self.sites[site] += 1
        return True

    @contextlib.contextmanager
    def capture(self):
        """Sync warnings go to `on_warning`, every one of them (not once per line); others as usual."""
        import warnings

        with warnings.catch_warnings():
            warnings.filterwarnings("always", message=".*" + SYNC_MESSAGE)
            shown = warnings.showwarning

            def showwarning(message, category, filename, lineno, file=None, line=None):
                if not self.on_warning(message):
                    shown(message, category, filename, lineno, file, line)

            warnings.showwarning = showwarning
            yield self

    @contextlib.contextmanager
    def counting(self):
        """On CUDA: every host wait raises a warning while this lasts, and each is counted."""
        import torch

        if not self.cuda:
            yield self
            return
        with self.capture():
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield self
            finally:
                torch.cuda.set_sync_debug_mode("default")

    def summary(self, settings: dict) -> dict:
        steady = self.per_update[1:] or self.per_update
        out = {"updates_counted": len(self.per_update),
               "host_waits_per_update": [sum(c.values()) for c in self.per_update] if self.cuda else None,
               "host_waits_by_phase_last_update": dict(self.per_update[-1]) if self.cuda and self.per_update else None,
               "host_wait_sites": [f"{n} x {s}" for s, n in self.sites.most_common(15)] if self.cuda else None,
               "max_d2h_per_update": MAX_D2H(settings),
               "d2h_last_update": self.memcpy["d2h"] if self.memcpy and self.memcpy["seen"] else None,
               "h2d_last_update": self.memcpy["h2d"] if self.memcpy and self.memcpy["seen"] else None,
               "memcpy_events": self.memcpy["names"] if self.memcpy else None}
        # not the first update (warm-up) nor, on CUDA, the last (under the profiler), when there are others
        secs = [s for s in self.seconds if "total" in s]
        secs = (secs[1:-1] if self.cuda else secs[1:]) or secs[1:] or secs
        if secs:
            gen = sum(s.get("generate", 0.0) for s in secs)
            total = sum(s["total"] for s in secs)
            out["generation_share"] = gen / total if total else None
            out["phase_seconds_mean"] = {k: sum(s.get(k, 0.0) for s in secs) / len(secs)
                                         for k in ("generate", "score", "forward", "experience", "update",
                                                   "metrics", "total")}
        out["steady_updates"] = len(steady)
        return out


def _short(path: str, lineno: int) -> str:
    """`rlhf/rollout.py:296 `n_live = int(live.sum())`` (paths relative to the repository or site-packages)."""
    import linecache

    line = linecache.getline(path, lineno).strip()[:60]
    path = os.path.realpath(path)
    if path.startswith(str(ROOT) + os.sep):
        path = path[len(str(ROOT)) + 1:]
    elif "site-packages" + os.sep in path:
        path = path[path.rindex("site-packages" + os.sep) + len("site-packages") + 1:]
    return f"{path}:{lineno} `{line}`"


# --- models and data -----------------------------------------------------------------------------------


def build_models(size: str, tok, out: Path, device) -> dict:
    """A causal LM folder and a 1-label sequence-classification folder of `size`'s shape, random weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    shape = dict(SIZES[size])
    arch = shape.pop("arch")
    shape["vocab_size"] = shape["vocab_size"] or len(tok)
    if arch == "llama":
        from transformers import LlamaConfig as Config
    else:
        from transformers import Qwen2Config as Config
    cfg = Config(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, **shape)
    paths = {}
    for kind, cls in (("policy", AutoModelForCausalLM), ("rm", AutoModelForSequenceClassification)):
        path = out / f"{size}-{kind}"
        torch.manual_seed(SEED)
        c = Config.from_dict(cfg.to_dict())
        if kind == "rm":
            c.num_labels = 1
            c.problem_type = "regression"
        with torch.device(device):  # drawn on the device: a 0.5B model initialises in a blink there
            model = cls.from_config(c)
        if kind == "policy":
            model.generation_config.pad_token_id = tok.pad_token_id
            model.generation_config.eos_token_id = tok.eos_token_id
        model.to(torch.bfloat16).save_pretrained(path, safe_serialization=True)  # loaded as float32
        tok.save_pretrained(path)
        paths[kind] = path
        paths[f"{kind}_parameters"] = sum(p.numel() for p in model.parameters())
        del model
    return paths


def lab_preferences(n_prompts: int, seed: int = SEED) -> list[dict]:
    """Comparisons without a model: lab replies of several qualities to train prompts, ranked by an annotator."""
    from rlhf.lab import world
    from rlhf.lab.annotators import Annotator
    from rlhf.lab.generate import demonstration, pairs_of, rank_samples

    rng = random.Random(f"gpu-check-{seed}")
    annotator = Annotator(seed=seed)
    rows = []
    for task in world.sample_tasks(n_prompts, seed=seed + 1_000_003, split="train"):
        replies = [demonstration(task, rng) for _ in range(3)] + [world.wrong_answer(task, rng)]
        ranked = rank_samples(task.prompt, [(r, True) for r in replies], annotator)
        if ranked is not None:
            rows += pairs_of(ranked)[:3]
    return rows


def build_data(tok, work: Path, max_len: int) -> dict:
    """The lab's files (`rlhf lab data` for demonstrations and prompts) and both sides' training files."""
    from rlhf.chat import as_messages
    from rlhf.data.tokens import encode_all
    from rlhf.files import write_jsonl
    from rlhf.lab.generate import main as lab_data

    lab = work / "lab-data"
    with contextlib.redirect_stdout(sys.stderr):
        lab_data(["--parts", "sft,eval", "--out", str(lab), "--n-sft", "400", "--n-eval", "64"])
    sft = [json.loads(line) for line in (lab / "sft.jsonl").read_text().splitlines() if line.strip()]
    prefs = lab_preferences(200)
    write_jsonl(lab / "prefs.jsonl", prefs)

    # Our side reads the text rows, TRL the token ids `rlhf.chat.encode` makes of the same rows; only rows
    # that fit max_len whole, so both sides see the same tokens (as benchmarks.prepare does).
    dirs = {"sft": work / "data-sft", "pairs": work / "data-pairs"}
    enc = encode_all(tok, [(as_messages(r["prompt"]), r["response"]) for r in sft], max_len + 1)
    keep = [(r, e) for r, e in zip(sft, enc) if len(e.input_ids) <= max_len]
    write_jsonl(dirs["sft"] / "ours-train.jsonl", [r for r, _ in keep])
    write_jsonl(dirs["sft"] / "trl-train.jsonl", [
        {"input_ids": e.input_ids, "completion_mask": [0] * e.n_prompt + [1] * (len(e.input_ids) - e.n_prompt)}
        for _, e in keep])
    enc = encode_all(tok, [(as_messages(p["prompt"]), r) for p in prefs for r in (p["chosen"], p["rejected"])],
                     max_len + 1)
    pairs = [(p, enc[2 * i], enc[2 * i + 1]) for i, p in enumerate(prefs)]
    pairs = [(p, c, r) for p, c, r in pairs
             if max(len(c.input_ids), len(r.input_ids)) <= max_len and c.n_prompt == r.n_prompt]
    write_jsonl(dirs["pairs"] / "ours-train.jsonl", [p for p, _, _ in pairs])
    write_jsonl(dirs["pairs"] / "trl-train.jsonl", [
        {"prompt_ids": c.input_ids[:c.n_prompt], "chosen_ids": c.input_ids[c.n_prompt:],
         "rejected_ids": r.input_ids[r.n_prompt:]} for _, c, r in pairs])
    return {"lab": lab, "prompts": lab / "eval.jsonl", **dirs, "sft_rows": len(keep), "pair_rows": len(pairs)}


# --- stages ----------------------------------------------------------------------------------------------


def stage_data(src: Path, rows: int, dst: Path) -> Path:
    """The first `rows` training rows of both sides' files: a run trains on exactly steps x batch_size
    examples (one epoch), so a pass made once up front (DPO's reference log-probabilities) covers what is
    trained and no more (the harness's rule, `benchmarks.prepare.case_data`)."""
    if (dst / "trl-train.jsonl").exists():
        return dst
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("ours-train.jsonl", "trl-train.jsonl"):
        lines = (src / name).read_text(encoding="utf-8").splitlines(keepends=True)
        if len(lines) < rows:
            raise RuntimeError(f"{src / name}: {len(lines)} rows, the stage needs {rows}")
        (dst / name).write_text("".join(lines[:rows]), encoding="utf-8")
    return dst


def spec_for(stage: str, size: str, models: dict, data: dict, out: Path, threads: int) -> dict:
    """The harness's spec of one stage (benchmarks.ours_runner / trl_runner read it)."""
    s = SETTINGS[size]
    batch = s["dpo_batch_size"] if stage == "dpo" else s["batch_size"]
    src = data["sft"] if stage == "sft" else data["pairs"]
    return {"stage": stage, "model": str(models["policy"]), "rm_model": str(models["rm"]),
            "data_dir": str(stage_data(src, s["steps"] * batch, src.parent / f"data-{stage}-{size}")),
            "out": str(out), "steps": s["steps"], "batch_size": batch, "lr": s["lr"], "seed": SEED,
            "threads": threads, "max_len": s["max_len"], "beta": 0.1, "mixed_precision": "bf16", "eval_rows": 0}


def ppo_argv(size: str, models: dict, data: dict, out: Path, threads: int) -> list[str]:
    """`rlhf ppo` with the harness's flags, but a value head: the trainer then recomputes the old
    log-probabilities, and PPO logs how far they are from the sampler's."""
    from benchmarks.ours_runner import command

    s = SETTINGS[size]
    spec = {"stage": "ppo", "model": str(models["policy"]), "rm_model": str(models["rm"]),
            "data_dir": str(out.parent), "out": str(out), "temperature": 1.0, "response_len": s["new_tokens"],
            "max_len": s["max_len"], "beta": 0.05, "ppo_epochs": s["ppo_epochs"], "rollout_batch": s["rollout"],
            "minibatch": s["minibatch"], "lr": 1e-6, "updates": s["updates"], "seed": SEED, "threads": threads}
    _, argv = command(spec)
    argv[argv.index("--prompts") + 1] = str(data["prompts"])
    argv[argv.index("--value-model") + 1] = "head"
    return argv + ["--mixed-precision", "bf16"]


def _metrics(path: Path) -> list[dict]:
    f = path / "metrics.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines() if line.strip()] if f.exists() else []


def _probe_rate(stage: str, timing: dict, batch_size: int) -> float | None:
    """Units per second from the second optimizer step to the last (the harness's steady state)."""
    secs = timing.get("steady_seconds")
    if not secs:
        return None
    units = timing["steady_train_tokens"] if stage == "sft" else timing["steady_steps"] * batch_size
    return units / secs


class Run:
    """One check run: the rows of the table, the checks, and the stage runner."""

    def __init__(self, device: str, guard: DeviceGuard):
        self.device, self.guard = device, guard
        self.rows: list[dict] = []
        self.checks: list[dict] = []

    def check(self, name: str, passed: bool, value=None, limit=None) -> None:
        self.checks.append({"check": name, "passed": bool(passed), "value": value, "limit": limit})

    @contextlib.contextmanager
    def stage(self, row: dict):
        import torch

        gc.collect()
        cuda = self.device == "cuda"
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        forwards, bad = self.guard.forwards, len(self.guard.violations)
        t0 = time.perf_counter()
        try:
            yield row
            row["status"] = "ok"
        except BaseException as e:  # noqa: BLE001 - a stage's failure is a row of the table, not the end
            if isinstance(e, KeyboardInterrupt):
                raise
            row["status"] = "failed"
            row["error"] = f"{type(e).__name__}: {e}"[:600]
            row["traceback"] = traceback.format_exc()[-3000:]
            print(row["traceback"], file=sys.stderr)
        row["seconds"] = round(time.perf_counter() - t0, 2)
        row["forwards_checked"] = self.guard.forwards - forwards
        row["device_violations"] = self.guard.violations[bad:]
        if cuda:
            row["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        self.rows.append(row)
        name = f"{row['side']} {row['stage']} ({row['size']})"
        if row["status"] != "skipped":
            self.check(f"{name} finished", row["status"] == "ok", row.get("error"))
            self.check(f"{name}: every forward on {self.device}",
                       row["forwards_checked"] > 0 and not row["device_violations"],
                       f"{row['forwards_checked']} forwards, {len(row['device_violations'])} off the device")
        gc.collect()


def run_ours(run: Run, stage: str, size: str, models: dict, data: dict, work: Path, threads: int) -> None:
    import importlib

    from benchmarks.ours_runner import command
    from benchmarks.probe import Probe

    spec = spec_for(stage, size, models, data, work / f"ours-{stage}-{size}", threads)
    row = {"side": "ours", "stage": stage, "size": size, "unit": UNITS[stage]}
    with run.stage(row):
        target, argv = command(spec)
        module, func = target.split(":")
        probe = Probe().install()
        try:
            with contextlib.redirect_stdout(sys.stderr):
                rc = getattr(importlib.import_module(module), func)(argv)
        finally:
            probe.uninstall()
        if rc:
            raise RuntimeError(f"{target} returned {rc}")
        timing = probe.summary(0.0)
        rows = _metrics(Path(spec["out"]))
        key = "tokens_per_s" if stage == "sft" else "pairs_per_s"
        logged = [r[key] for r in rows if key in r]
        losses = [r["loss"] for r in rows if "loss" in r]
        row.update(throughput=_probe_rate(stage, timing, spec["batch_size"]),
                   logged_throughput=logged[-1] if logged else None, steps=timing["optimizer_steps"],
                   final_loss=losses[-1] if losses else None, optimizer=probe.optimizer)
        if losses:
            run.check(f"ours {stage} ({size}): loss finite", all(map(math.isfinite, losses)), losses[-1])


def run_ppo(run: Run, size: str, models: dict, data: dict, work: Path, threads: int) -> None:
    from rlhf.trainers.ppo import main as ppo_main

    s = SETTINGS[size]
    out = work / f"ours-ppo-{size}"
    row = {"side": "ours", "stage": "ppo", "size": size, "unit": UNITS["ppo"]}
    counter = SyncCounter(run.device == "cuda", s["updates"]).install()
    with run.stage(row):
        try:
            with counter.counting(), contextlib.redirect_stdout(sys.stderr):
                rc = ppo_main(ppo_argv(size, models, data, out, threads))
        finally:
            counter.uninstall()
        if rc:
            raise RuntimeError(f"rlhf ppo returned {rc}")
        rows = [r for r in _metrics(out) if r.get("step", 0) >= 1]
        steady = rows[1:-1] if len(rows) >= 3 else rows  # not the first (warm-up) nor the profiled last
        rate = sorted(r["episodes_per_s"] for r in steady)
        diffs = [r["policy/sampler_logprob_diff"] for r in rows if "policy/sampler_logprob_diff" in r]
        rollout = sum(r["timing/rollout_s"] for r in steady)
        update = sum(r["timing/update_s"] for r in steady)
        syncs = counter.summary(s)
        row.update(throughput=rate[len(rate) // 2] if rate else None, updates=len(rows),
                   sampler_logprob_diff=max(diffs) if diffs else None,
                   rollout_share=rollout / (rollout + update) if rollout + update else None,
                   generation_share=syncs.get("generation_share"), phase_seconds=syncs.get("phase_seconds_mean"),
                   syncs=syncs)
        run.check(f"ours ppo ({size}): {len(rows)} updates logged", len(rows) == s["updates"], len(rows), s["updates"])
        run.check(f"ours ppo ({size}): every update seen by the sync counter", syncs["updates_counted"] == s["updates"],
                  syncs["updates_counted"], s["updates"])
        run.check(f"ours ppo ({size}): sampler and trainer log-probs finite (max |diff|, bf16)",
                  bool(diffs) and all(map(math.isfinite, diffs)), max(diffs) if diffs else None)
        if run.device == "cuda":
            d2h = syncs["d2h_last_update"]
            if d2h is None:
                row["note"] = "the profiler saw no memcpy events: device-to-host copies not measured"
            else:
                run.check(f"ours ppo ({size}): device-to-host copies in one update", d2h <= syncs["max_d2h_per_update"],
                          d2h, syncs["max_d2h_per_update"])


def trl_available() -> tuple[bool, str]:
    """Whether TRL's side can run, found without importing it (it imports `datasets`, which the
    training commands must not: that is checked after ours ran)."""
    import importlib.metadata
    import importlib.util

    missing = [m for m in ("trl", "datasets") if importlib.util.find_spec(m) is None]
    if missing:
        return False, f"not importable: {', '.join(missing)} (see `make gpu-wheels`)"
    try:
        return True, importlib.metadata.version("trl")
    except importlib.metadata.PackageNotFoundError:
        return True, "unknown version"


def run_trl(run: Run, stage: str, size: str, models: dict, data: dict, work: Path, threads: int) -> None:
    from benchmarks.probe import Probe

    spec = spec_for(stage, size, models, data, work / f"trl-{stage}-{size}", threads)
    row = {"side": "trl", "stage": stage, "size": size, "unit": UNITS[stage]}
    with run.stage(row):
        from benchmarks.trl_runner import RUNNERS, summarise_log

        probe = Probe().install()
        try:
            with contextlib.redirect_stdout(sys.stderr):
                trainer, _ = RUNNERS[stage](spec)
        finally:
            probe.uninstall()
        timing = probe.summary(0.0)
        summary = summarise_log(stage, trainer.state.log_history)
        row.update(throughput=_probe_rate(stage, timing, spec["batch_size"]), steps=timing["optimizer_steps"],
                   final_loss=summary.get("final_loss"), optimizer=probe.optimizer)
        del trainer


# --- the table -------------------------------------------------------------------------------------------


def _fmt(v, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}" if abs(v) >= 0.01 or v == 0 else f"{v:.2e}"
    return str(v)


def table(result: dict) -> str:
    lines = ["| size | side | stage | status | throughput | unit | peak GPU MiB | seconds | forwards on device | notes |",
             "|---|---|---|---|---:|---|---:|---:|---|---|"]
    for r in result["rows"]:
        notes = []
        if r.get("final_loss") is not None:
            notes.append(f"loss {r['final_loss']:.3f}")
        if r["stage"] == "ppo" and r["status"] == "ok":
            notes.append(f"sampler-trainer max |dlogp| {_fmt(r['sampler_logprob_diff'], 4)}")
            notes.append(f"generation {_fmt(100 * (r['generation_share'] or 0), 0)}% of an update "
                         f"(rollout+scoring+forwards {_fmt(100 * (r['rollout_share'] or 0), 0)}%)")
            sy = r["syncs"]
            if sy["host_waits_per_update"] is not None:
                notes.append(f"host waits/update {sy['host_waits_per_update']}")
            if sy["d2h_last_update"] is not None:
                notes.append(f"D2H copies last update {sy['d2h_last_update']} (max {sy['max_d2h_per_update']}), "
                             f"H2D {sy['h2d_last_update']}")
            else:
                notes.append(f"D2H copies not measured on {result['device']} (max allowed {sy['max_d2h_per_update']})")
        if r.get("note"):
            notes.append(r["note"])
        if r.get("error"):
            notes.append(r["error"][:160].replace("|", "/").replace("\n", " "))
        dev = "-" if r["status"] == "skipped" else \
            f"{r['forwards_checked']} ok" if not r.get("device_violations") else f"{len(r['device_violations'])} OFF"
        lines.append(f"| {r['size']} | {r['side']} | {r['stage']} | {r['status']} | {_fmt(r.get('throughput'))} | "
                     f"{r['unit']} | {_fmt(r.get('peak_gpu_mib'))} | {_fmt(r.get('seconds'))} | {dev} | "
                     f"{'; '.join(notes)} |")
    failed = [c for c in result["checks"] if not c["passed"]]
    lines.append("")
    lines.append(f"{len(result['checks']) - len(failed)}/{len(result['checks'])} checks passed"
                 + ("" if not failed else ": FAILED " + "; ".join(
                     f"{c['check']} (value {c['value']}, limit {c['limit']})" for c in failed)))
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default=None,
                    help="where every stage runs (default: cuda when visible, else cpu)")
    ap.add_argument("--size", nargs="+", choices=list(SIZES), default=None,
                    help="model shapes (default: smollm2 qwen05b on cuda, tiny on cpu)")
    ap.add_argument("--out", default="gpu-check", help="folder for gpu_check.json and gpu_check.md")
    ap.add_argument("--work", default=None, help="folder for the models, data and runs (default: a temporary "
                                                 "folder, deleted at the end)")
    ap.add_argument("--no-trl", action="store_true", help="skip TRL's trainers even if trl imports")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads per stage (0 = the stages' default)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch: accelerate then places every stage on the CPU
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    t_start = time.perf_counter()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda but torch sees no CUDA GPU", file=sys.stderr)
        return 2
    sizes = args.size or (["smollm2", "qwen05b"] if device == "cuda" else ["tiny"])
    threads = args.threads
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)

    import transformers

    from rlhf.lab.tokenizer import build_tokenizer

    web = ("flask", "sqlalchemy", "openai", "datasets", "waitress")
    guard = DeviceGuard(device).install()
    run = Run(device, guard)
    trl_ok, trl_info = (False, "--no-trl") if args.no_trl else trl_available()
    result = {"device": device, "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
              "torch": torch.__version__, "transformers": transformers.__version__,
              "python": platform.python_version(), "sizes": sizes, "settings": {s: SETTINGS[s] for s in sizes},
              "trl": trl_info if trl_ok else None, "trl_skipped": None if trl_ok else trl_info,
              "rows": run.rows, "checks": run.checks}
    try:
        tok = build_tokenizer()
        data = build_data(tok, work, max(SETTINGS[s]["max_len"] for s in sizes))
        result["data"] = {"sft_rows": data["sft_rows"], "pair_rows": data["pair_rows"]}
        for size in sizes:
            models = build_models(size, tok, work / "models", device)
            result.setdefault("parameters", {})[size] = models["policy_parameters"]
            for stage in ("sft", "rm", "dpo"):
                run_ours(run, stage, size, models, data, work, threads)
            run_ppo(run, size, models, data, work, threads)
            if size == sizes[0]:  # before TRL's side, which imports datasets
                loaded = sorted(m for m in web if m in sys.modules)
                run.check(f"training commands imported none of {', '.join(web)}", not loaded, loaded or None)
            for stage in ("sft", "rm", "dpo"):
                if trl_ok:
                    run_trl(run, stage, size, models, data, work, threads)
                else:
                    run.rows.append({"side": "trl", "stage": stage, "size": size, "unit": UNITS[stage],
                                     "status": "skipped", "note": f"TRL not run: {trl_info}"})
            shutil.rmtree(work / "models", ignore_errors=True)
    finally:
        guard.uninstall()
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    result["checks_passed"] = all(c["passed"] for c in run.checks)
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    text = table(result)
    header = (f"GPU check on {result['gpu'] or device} (torch {result['torch']}, transformers "
              f"{result['transformers']}, TRL {result['trl'] or 'not run: ' + str(result['trl_skipped'])}); "
              f"{result['seconds']} s")
    print(header + "\n\n" + text)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "gpu_check.md").write_text(header + "\n\n" + text + "\n")
    return 0 if result["checks_passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
