"""`rlhf pipeline CONFIG.yaml`: SFT, then the reward model, then the last stage(s), then one report.

Every stage is the same command a user would run by hand (`rlhf sft`,
`rlhf rm`, `rlhf ppo`, `rlhf dpo`, ...), given the options of its section in
the YAML file, and writes a normal run folder under `out/`. A stage whose
model folder is already complete is skipped, so an interrupted pipeline
resumes where it stopped; a stage is also skipped when its model is given
(`sft_model`, `reward_model`). With several methods (`method: [ppo, dpo]`) the
report compares them on the same held-out prompts. With `rounds: N`, after
each round the new policy's answers to new prompts (`round_prefs` of them)
are labelled, the reward model is retrained on the grown comparison set, and
the last stage runs again from the new policy (iterative RLHF);
`round_samples: policy+sft` has the annotators
compare the policy's samples with the SFT model's, and `round_start: sft`
reruns the last stage from the SFT model with the retrained reward model.

A config, with every section optional:

    out: runs/lab
    base: lab                # base model: folder, hub name or preset
    seed: 0
    data: {sft: null, prefs: null, eval: null}   # files; null = the lab makes them
    lab: {n_sft: 400, n_prompts: 600, k: 4, n_eval: 100}   # `rlhf lab data` options
    sft: {epochs: 3}         # `rlhf sft` options
    rm: {epochs: 2}          # `rlhf rm` options
    method: ppo              # ppo | grpo | rloo | reinforce | online-dpo | dpo | ipo | cdpo | simpo | kto |
                             # orpo | bon, or a list
    ppo: {total_episodes: 2048}
    grpo: {reward: lab-correct}   # the online methods' reward: the pipeline's reward model unless set
    dpo: {beta: 0.1}         # each method has its own section (online-dpo's is online_dpo)
    eval: {n: 100, judge: gold}   # skills: 500 adds lab skill correctness (skills_temperature, skills_samples)
    device: auto             # where bon, lab sampling and the evaluation run (the training stages: accelerate)
    threads: 0               # CPU threads of every stage; 0 = each process's share of the cores
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from rlhf.config import from_dict, load_yaml, opt, parse
from rlhf.device import DeviceOptions
from rlhf.errors import UserError

METHODS = ("ppo", "grpo", "rloo", "reinforce", "online-dpo", "dpo", "ipo", "cdpo", "simpo", "kto", "orpo", "bon")
ONLINE = ("ppo", "grpo", "rloo", "reinforce", "online-dpo")  # start from a policy and sample as they train

# method -> (command target, options added to the method's own section)
_METHOD_COMMANDS = {
    "ppo": ("rlhf.trainers.ppo:main", {}),
    "grpo": ("rlhf.trainers.grpo:main", {}),
    "rloo": ("rlhf.trainers.grpo:rloo_main", {}),
    "reinforce": ("rlhf.trainers.grpo:reinforce_main", {}),
    "online-dpo": ("rlhf.trainers.online_dpo:main", {}),
    "dpo": ("rlhf.trainers.dpo:main", {"loss": "dpo"}),
    "ipo": ("rlhf.trainers.dpo:main", {"loss": "ipo"}),
    "cdpo": ("rlhf.trainers.dpo:main", {"loss": "cdpo"}),
    "simpo": ("rlhf.trainers.dpo:main", {"loss": "simpo"}),
    "kto": ("rlhf.trainers.dpo:kto_main", {}),
    "orpo": ("rlhf.trainers.dpo:orpo_main", {}),
    "bon": ("rlhf.trainers.bon:main", {}),
}


@dataclass
class EvalSection:
    n: int = opt(100, "held-out prompts the models are compared on")
    judge: str = opt("gold", "judge for win rates: gold | rm:PATH | llm:PATH | openai:URL#model | human:FILE")
    max_new_tokens: int = opt(48, "longest answer")
    samples: int = opt(12, "prompts shown side by side in the report")
    skills: int = opt(0, "held-out skill prompts (lab: sums, sorts, reversals, look-ups) each model's correctness "
                         "is measured on, with its change against SFT and a 95% interval (0 = off)")
    skills_temperature: float = opt(0.0, "0 = each model's greedy answer to every skill prompt; above 0, "
                                         "skills_samples answers sampled at it, all of them counted (the "
                                         "measure RL with a verifiable reward trains on: pass@1 at its temperature)")
    skills_samples: int = opt(1, "answers sampled per skill prompt when skills_temperature > 0")
    seed: int = opt(0, "seed of the bootstrap and of sampling")

    def __post_init__(self):
        if self.skills_temperature < 0 or self.skills_samples < 1:
            raise UserError(f"pipeline: eval: skills_temperature must be >= 0 and skills_samples >= 1, got "
                            f"{self.skills_temperature} and {self.skills_samples}")


@dataclass
class PipelineConfig(DeviceOptions):
    """The options of a pipeline YAML file (see the module docstring)."""

    command = "pipeline"
    out: str = opt("runs/pipeline", "output folder: one sub-folder per stage, the report at the top")
    base: str = opt("lab", "base model: folder, hub name or preset")
    seed: int = opt(0, "seed passed to every stage")
    data: dict = opt({}, "data files: sft, prefs, eval (null = the lab makes them)")
    lab: dict = opt({}, "options of `rlhf lab data` when the lab makes the data")
    sft: dict = opt({}, "options of `rlhf sft`")
    rm: dict = opt({}, "options of `rlhf rm`")
    method: list[str] = opt(["ppo"], "last stage(s): ppo | grpo | rloo | reinforce | online-dpo | dpo | ipo | "
                                     "cdpo | simpo | kto | orpo | bon")
    ppo: dict = opt({}, "options of `rlhf ppo`")
    grpo: dict = opt({}, "options of `rlhf grpo` (reward: the pipeline's reward model unless set)")
    rloo: dict = opt({}, "options of `rlhf rloo` (reward: the pipeline's reward model unless set)")
    reinforce: dict = opt({}, "options of `rlhf reinforce` (reward: the pipeline's reward model unless set)")
    online_dpo: dict = opt({}, "options of `rlhf online-dpo` for method online-dpo (reward: the reward model "
                               "unless set)")
    dpo: dict = opt({}, "options of `rlhf dpo` for method dpo")
    ipo: dict = opt({}, "options of `rlhf dpo --loss ipo` for method ipo")
    cdpo: dict = opt({}, "options of `rlhf dpo --loss cdpo` for method cdpo")
    simpo: dict = opt({}, "options of `rlhf dpo --loss simpo` for method simpo")
    kto: dict = opt({}, "options of `rlhf kto`")
    orpo: dict = opt({}, "options of `rlhf orpo`")
    bon: dict = opt({}, "options of `rlhf bon`")
    sft_model: Optional[str] = opt(None, "an SFT model to use instead of training one")
    reward_model: Optional[str] = opt(None, "a reward model to use instead of training one")
    rounds: int = opt(1, "iterative RLHF rounds (label new policy samples, retrain RM, rerun the last stage)")
    round_samples: Literal["policy", "policy+sft"] = opt(
        "policy", "who answers the prompts labelled after each round: the new policy alone, or the policy and "
                  "the SFT model half each (annotators then compare what the policy changed)")
    round_prefs: int = opt(0, "prompts labelled after each round (new prompts every round); 0 = lab's n_prefs")
    round_start: Literal["last", "sft"] = opt(
        "last", "where each later round's last stage starts: the previous round's policy, or the SFT model "
                "again (only the reward model carries over)")
    eval: EvalSection = field(default_factory=EvalSection, metadata={"help": "evaluation options"})
    quiet: bool = opt(False, "less output from the stages: no progress lines")

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.method, str):
            self.method = [self.method]
        bad = [m for m in self.method if m not in METHODS]
        if bad:
            raise UserError(f"pipeline: unknown method '{bad[0]}'; choose from {', '.join(METHODS)}")
        if not self.method:
            raise UserError("pipeline: 'method' is empty")
        if self.rounds < 1:
            raise UserError("pipeline: 'rounds' must be at least 1")
        if self.round_prefs < 0:
            raise UserError("pipeline: 'round_prefs' must be >= 0")
        for k in self.data:
            if k not in ("sft", "prefs", "eval"):
                raise UserError(f"pipeline: unknown data key '{k}' (sft, prefs, eval)")
        if isinstance(self.eval, dict):
            self.eval = from_dict(EvalSection, self.eval, "pipeline: eval")


@dataclass
class PipelineArgs(DeviceOptions):
    """SFT, reward model and the last stage in order, with one report.

    `--device` and `--threads` override the config's when given other than their defaults.
    """

    command = "pipeline"
    config: str = opt(help="pipeline YAML file", positional=True)
    out: Optional[str] = opt(None, "override the config's output folder")
    method: Optional[list[str]] = opt(None, "override the config's method(s)")
    rounds: Optional[int] = opt(None, "override the config's rounds")


# --------------------------------------------------------------------------- running stages


def _argv(options: dict) -> list[str]:
    """A section of the YAML as command-line `key=value` tokens for the stage's own parser."""
    out = []
    for k, v in options.items():
        if v is None:
            v = "none"
        elif isinstance(v, bool):
            v = "true" if v else "false"
        elif isinstance(v, (list, tuple)):
            v = ",".join(str(x) for x in v)
        elif isinstance(v, dict):
            raise UserError(f"pipeline: option '{k}' cannot be a mapping")
        out.append(f"{k}={v}")
    return out


# Stages that take --device (the training stages take theirs from accelerate).
_TAKES_DEVICE = ("rlhf.trainers.bon:main",)


def shared_options(cfg: PipelineConfig, target: str) -> dict:
    """The pipeline's device, threads and quiet, for a stage that takes them (its own section wins)."""
    out: dict = {}
    if target in _TAKES_DEVICE:
        out["device"] = cfg.device
    if cfg.threads:
        out["threads"] = cfg.threads
    if cfg.quiet:
        out["quiet"] = True
    return out


def call(target: str, options: dict) -> None:
    import importlib

    module, func = target.split(":")
    status = getattr(importlib.import_module(module), func)(_argv(options))
    if status:
        raise UserError(f"pipeline: stage {target} exited with status {status}")


STAGE_FILE = "stage.json"  # written when a stage has finished: its wall time


def _done(folder: Path) -> bool:
    from rlhf.runfolder import read_manifest

    if (folder / STAGE_FILE).exists():
        return True
    manifest = read_manifest(folder)
    if manifest is not None:
        return manifest.get("status") == "finished"
    return (folder / "config.json").exists() and any(folder.glob("*.safetensors"))


# Stages without --resume: an unfinished run of theirs is replaced (--overwrite deletes only its own files).
_NO_RESUME = ("rlhf.trainers.bon:main",)


def _log(msg: str) -> None:
    print(f"\n== {msg}", file=sys.stderr, flush=True)


def claim(cfg: PipelineConfig, command: str = "pipeline"):
    """The pipeline's output folder, claimed and started (`rlhf.runfolder`).

    A pipeline always continues its own earlier run in `out`, or a demo's (the
    same pipeline on the lab's config; finished stages are skipped, an
    unfinished one resumes and checks its own options), so any option may
    change; any other occupied folder is refused with one line before
    anything runs.
    """
    from rlhf.config import to_dict
    from rlhf.models import resolve
    from rlhf.runfolder import RunFolder

    # what the config names must be there before anything is written (a stage would find out only when it starts)
    for key, value in sorted(cfg.data.items()):
        if value and "://" not in str(value) and not Path(value).exists():
            raise UserError(f"pipeline: data.{key}: {value}: no such file")
    for given in (cfg.sft_model, cfg.reward_model):
        if given:
            resolve(given)
    options = to_dict(cfg)
    run = RunFolder.claim(cfg.out, command=command, options=options, inputs=[cfg.base], resume=True,
                          may_change=options, kin={"pipeline", "demo"} - {command})
    from rlhf.device import use_device

    use_device(cfg)  # a missing GPU fails with one line, before anything is written; threads set
    run.start()
    return run


class Pipeline:
    def __init__(self, cfg: PipelineConfig, folder=None):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.folder = folder  # the pipeline's own RunFolder (`main`), recording the folders it writes
        self.timings: dict[str, float] = {}
        self.stages: list[dict] = []  # for the report: name + metrics path

    def stage(self, name: str, folder: Path, target: str, options: dict) -> Path:
        if _done(folder):
            _log(f"{name}: {folder} is complete, skipped")
            if (folder / STAGE_FILE).exists():  # its wall time from the run that made it
                self.timings[name] = json.loads((folder / STAGE_FILE).read_text())["wall_s"]
        else:
            from rlhf.files import write_json

            _log(f"{name}: training into {folder}")
            t0 = time.time()
            from rlhf.runfolder import MANIFEST, RunFolder

            opts = {**shared_options(self.cfg, target), **options, "out": str(folder)}
            if (folder / MANIFEST).exists():  # this pipeline's own stage, cut short: continue it
                opts.setdefault("overwrite" if target in _NO_RESUME else "resume", True)
            elif (folder / "checkpoint").exists() or (folder / "checkpoints").exists():
                opts.setdefault("resume", True)
            call(target, opts)
            self.timings[name] = time.time() - t0
            run = RunFolder.existing(folder)
            if run is not None:
                run.wrote(STAGE_FILE)
            write_json(folder / STAGE_FILE, {"stage": name, "wall_s": self.timings[name]})
        if self.folder is not None:
            self.folder.wrote(folder.name)
        if (folder / "metrics.jsonl").exists():
            self.stages.append({"name": name, "path": str(folder / "metrics.jsonl")})
        return folder

    # -- data ---------------------------------------------------------------------------------------
    def lab_data(self, model: str, folder: Path, **extra) -> Path:
        from rlhf.lab import generate

        if self.folder is not None:
            self.folder.wrote(folder.name)
        how = {"device": self.cfg.device, "threads": self.cfg.threads, "quiet": self.cfg.quiet}  # not in its stamp
        return generate.ensure(folder, model=model, **{"seed": self.cfg.seed, **how, **self.cfg.lab, **extra})

    def run(self) -> dict:
        cfg, out = self.cfg, self.out
        out.mkdir(parents=True, exist_ok=True)
        data = dict(cfg.data)
        uses_lab = not (data.get("sft") and data.get("prefs") and data.get("eval"))
        seed = {"seed": cfg.seed}

        if not data.get("sft") and not cfg.sft_model:
            data["sft"] = str(self.lab_data(cfg.base, out / "data", parts="sft") / "sft.jsonl")
        sft = Path(cfg.sft_model) if cfg.sft_model else self.stage(
            "sft", out / "sft", "rlhf.trainers.sft:main", {"model": cfg.base, "data": data["sft"], **seed, **cfg.sft})

        if not data.get("prefs") and not cfg.reward_model:
            data["prefs"] = str(self.lab_data(str(sft), out / "data", parts="prefs") / "rankings.jsonl")
        if not data.get("eval"):
            data["eval"] = str(self.lab_data(cfg.base, out / "data", parts="eval") / "eval.jsonl")
        rm = Path(cfg.reward_model) if cfg.reward_model else self.stage(
            "rm", out / "rm", "rlhf.trainers.rm:main", {"model": str(sft), "data": data["prefs"], **seed, **cfg.rm})

        rounds: list[dict] = []
        policies: dict[str, Path] = {}
        needs_prefs = cfg.rounds > 1 or any(m not in (*ONLINE, "bon") for m in cfg.method)
        if needs_prefs and not data.get("prefs"):
            if not uses_lab:
                raise UserError("pipeline: the methods other than ppo and bon, and rounds > 1, need "
                                "comparisons: set data.prefs")
            data["prefs"] = str(self.lab_data(str(sft), out / "data", parts="prefs") / "rankings.jsonl")
        policy_start, rm_now, prefs_now, last = sft, rm, data.get("prefs"), sft
        for r in range(1, cfg.rounds + 1):
            tag = "" if cfg.rounds == 1 else f"-round{r}"
            round_info: dict = {"round": r, "reward_model": str(rm_now)}
            if r > 1:
                # Iterative RLHF: the last policy's samples, labelled, extend the comparisons.
                extra = {"mix_model": str(sft)} if cfg.round_samples == "policy+sft" else {}
                if cfg.round_prefs:
                    extra["n_prefs"] = cfg.round_prefs
                # new prompts each round (and a new annotator draw): the lab's seed moves on by the round
                new = self.lab_data(str(last), out / f"data-round{r}", parts="prefs", seed=cfg.seed + r - 1, **extra)
                # a fifth of the new prompts is held out of retraining: the accuracy before and after is on them
                fresh, held = _hold_out(new / "rankings.jsonl", out / f"data-round{r}")
                before = _rm_accuracy(rm_now, held, cfg.device)
                prefs_now = _concat([prefs_now, str(fresh)], out / f"data-round{r}" / "all.jsonl")
                rm_now = self.stage(f"rm{tag}", out / f"rm{tag}", "rlhf.trainers.rm:main",
                                    {"model": str(sft), "data": prefs_now, **seed, **cfg.rm})
                after = _rm_accuracy(rm_now, held, cfg.device)
                round_info.update(rm_acc_before=before, rm_acc_after=after, reward_model=str(rm_now))
                policy_start = last if cfg.round_start == "last" else sft
            for m in cfg.method:
                target, fixed = _METHOD_COMMANDS[m]
                section = getattr(cfg, m.replace("-", "_"))  # each method its own options (beta differs)
                opts = {**seed, **section, **fixed}
                folder = out / f"{m}{tag}"
                if m == "ppo":
                    opts = {"policy": str(policy_start), "reward_model": str(rm_now), **opts}
                elif m in ONLINE:
                    opts = {"policy": str(policy_start), "reward": [str(rm_now)], **opts}
                elif m == "bon":
                    opts = {"policy": str(policy_start), "reward_model": str(rm_now), **opts}
                else:
                    opts = {"model": str(policy_start), "data": prefs_now, **opts}
                policies[f"{m}{tag}"] = self.stage(f"{m}{tag}", folder, target, opts)
            # the next round starts from the first method's policy (best-of-N has none of its own)
            last = next((policies[f"{m}{tag}"] for m in cfg.method if m != "bon"), last)
            rounds.append(round_info)

        _log("evaluation on held-out prompts")
        result = evaluate_models(cfg, base=cfg.base, sft=sft, rm=rm_now, policies=policies,  # on cfg.device
                                 eval_file=data["eval"], uses_lab=uses_lab)
        result["rounds"] = rounds
        result["rm_val_accuracy"] = _last_metric(rm_now / "metrics.jsonl", "eval/accuracy")
        result["timings"] = self.timings
        for row in result["table"]:  # the wall time of the stage that made each model (base: none)
            if row["model"] in self.timings:
                row["wall_s"] = self.timings[row["model"]]
        report = write_pipeline_report(cfg, out, self.stages, result)
        result["report"] = str(report)
        from rlhf.files import write_json

        write_json(out / "summary.json", {k: v for k, v in result.items() if k != "samples"})
        if self.folder is not None:
            self.folder.wrote(Path(report).name, "report.md", "plots", "summary.json")
            self.folder.update(status="finished")
        return result


def _last_metric(path: Path, key: str):
    """The kept (best) value of an evaluation metric, else its last logged value."""
    from rlhf.metrics import read_metrics

    rows = [r for r in read_metrics(path) if key in r]
    return rows[-1][key] if rows else None


def _concat(paths: list[str], out: Path) -> str:
    from rlhf.files import write_text

    text = "".join(Path(p).read_text(encoding="utf-8") for p in paths)
    write_text(out, text)
    return str(out)


def _hold_out(rankings: Path, folder: Path, every: int = 5) -> tuple[Path, Path]:
    """Every `every`-th rankings row (one prompt each) to held.jsonl, the rest to train.jsonl."""
    from rlhf.files import write_text

    lines = [line for line in rankings.read_text(encoding="utf-8").splitlines(keepends=True) if line.strip()]
    write_text(folder / "train.jsonl", "".join(x for i, x in enumerate(lines) if i % every))
    write_text(folder / "held.jsonl", "".join(x for i, x in enumerate(lines) if i % every == 0))
    return folder / "train.jsonl", folder / "held.jsonl"


def _rm_accuracy(rm: Path, prefs: Path, device: str = "auto") -> float:
    """Share of the held-out new comparisons the reward model orders as the annotators did."""
    from rlhf.data import load_groups
    from rlhf.models import load_reward_model, load_tokenizer
    from rlhf.trainers.rm import score
    from rlhf.trainers.runtime import pick_device

    groups = load_groups(str(prefs))
    tok = load_tokenizer(str(rm))
    model = load_reward_model(str(rm), pad_token_id=tok.pad_token_id).to(pick_device(device)).eval()
    prompts, responses, pairs = [], [], []
    for g in groups:
        base = len(responses)
        for resp in g.responses:
            prompts.append(g.prompt)
            responses.append(resp)
        pairs += [(base + i, base + j) for i, j, *_ in g.pairs]
    s = score(model, tok, prompts, responses)
    return sum(s[i] > s[j] for i, j in pairs) / max(1, len(pairs))


# --------------------------------------------------------------------------- evaluation and report


def evaluate_models(cfg: PipelineConfig, *, base: str, sft: Path, rm: Path, policies: dict[str, Path],
                    eval_file: str, uses_lab: bool) -> dict:
    """Every model answers the same held-out prompts; gold, win rate vs SFT with its interval, KL, length."""
    from rlhf.data import load_prompts
    from rlhf.evaluate import Generation, compare_policies, evaluate_policy
    from rlhf.judges import RewardModelJudge, make_judge
    from rlhf.models import load_causal_lm, load_tokenizer
    from rlhf.trainers.runtime import pick_device

    e = cfg.eval
    device, show = pick_device(cfg.device), not cfg.quiet
    prompts = load_prompts(eval_file)[: e.n]
    gen = Generation(max_new_tokens=e.max_new_tokens, greedy=True, seed=e.seed)
    judge = make_judge(e.judge, device=device)
    judge.show = show
    rm_judge = RewardModelJudge.load(str(rm), device=device)
    rm_judge.show = show
    tok = load_tokenizer(str(sft))
    ref = load_causal_lm(str(sft)).to(device).eval()
    models = {"base": base, "sft": str(sft), **{k: str(v) for k, v in policies.items()}}
    results: dict[str, dict] = {}
    for name, path in models.items():
        if name.startswith("bon"):
            results[name] = _best_of_n_answers(cfg, ref, tok, rm_judge, prompts)
            continue
        model = ref if name == "sft" else load_causal_lm(path).to(device).eval()
        t = tok if name != "base" else load_tokenizer(path)
        results[name] = evaluate_policy(model, t, prompts, gen=gen, reward_judge=rm_judge,
                                        ref=ref if name not in ("sft",) and _same_vocab(t, tok) else None,
                                        show=show, name=f"evaluation of {name}")
    rows = []
    for name, r in results.items():
        row = {"model": name, "gold": r.get("gold"), "reward": r.get("reward"), "kl_to_sft": r.get("kl", 0.0)
               if name != "sft" else 0.0, "length": r["length"], "no_eos": r["no_eos_frac"]}
        if name != "sft":
            w = compare_policies(prompts, r["texts"], results["sft"]["texts"], judge,
                                 finished_a=r["finished"], finished_b=results["sft"]["finished"], seed=e.seed)
            row.update(win_rate_vs_sft=w["win_rate"], ci_low=w["ci_low"], ci_high=w["ci_high"],
                       wins=w["wins"], losses=w["losses"], ties=w["ties"])
        rows.append(row)
    # The reward model against the gold judge: on every prompt, every pair of models' answers that
    # gold tells apart, does the reward model order them the same way?
    agree = total = 0
    names = [n for n in results if "gold_scores" in results[n] and "reward_scores" in results[n]]
    for i in range(len(prompts)):
        for x in range(len(names)):
            for y in range(x + 1, len(names)):
                a, b = results[names[x]], results[names[y]]
                dg = a["gold_scores"][i] - b["gold_scores"][i]
                if abs(dg) > 1e-6 and a["texts"][i] != b["texts"][i]:
                    total += 1
                    agree += (a["reward_scores"][i] - b["reward_scores"][i]) * dg > 0
    if uses_lab and e.skills:
        _skill_correctness(rows, models, results, ref, tok, e, device)
    samples = [{"prompt": p if isinstance(p, str) else p[-1]["content"],
                "responses": {name: r["texts"][i] for name, r in results.items()}}
               for i, p in enumerate(prompts[: e.samples])]
    out = {"table": rows, "samples": samples, "judge": e.judge, "n_prompts": len(prompts),
           "rm_gold_accuracy": agree / total if total else None, "rm_gold_pairs": total}
    if all("flaws" in r for r in results.values()):
        # what each model gets wrong, by the gold judge, and so what each policy learned, good or bad
        from rlhf.lab.gold import describe_change

        out["flaws"] = {name: r["flaws"] for name, r in results.items()}
        out["changes"] = {name: describe_change(out["flaws"]["sft"], rates)
                          for name, rates in out["flaws"].items() if name not in ("base", "sft")}
    return out


def _best_of_n_answers(cfg: PipelineConfig, sft, tokenizer, rm_judge, prompts) -> dict:
    """Best-of-N as a policy: N samples of the SFT model per held-out prompt, the reward model keeps one.

    Its KL to the SFT model is the analytic log N - (N-1)/N (`rlhf.trainers.bon.analytic_kl`).
    """
    from rlhf.evaluate import answer_metrics
    from rlhf.trainers.bon import BonConfig, analytic_kl, sample_candidates

    b = from_dict(BonConfig, {**cfg.bon, "seed": cfg.seed}, "pipeline: bon")
    c = sample_candidates(sft, tokenizer, rm_judge.model, rm_judge.tokenizer, prompts, b.n,
                          max_new_tokens=cfg.eval.max_new_tokens, temperature=b.temperature, top_p=b.top_p,
                          seed=cfg.eval.seed, unfinished_score=b.unfinished_score, rm_max_len=b.max_len,
                          show=not cfg.quiet)
    texts, finished = c.chosen(), c.chosen_finished()
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    out = answer_metrics(prompts, texts, finished, lengths, reward_judge=rm_judge)
    out["kl"] = analytic_kl(b.n)
    return out


def _same_vocab(a, b) -> bool:
    return len(a) == len(b) and a.get_vocab() == b.get_vocab()


def _skill_correctness(rows: list[dict], models: dict, results: dict, sft_model, tok, e, device) -> None:
    """Each model's share of `e.skills` held-out skill prompts answered right (greedy, or `e.skills_samples`
    samples at `e.skills_temperature`), and for the policies the change against SFT with a paired 95%
    bootstrap interval (the same prompts, resampled together)."""
    from rlhf.evaluate import paired_difference
    from rlhf.lab.skills import correctness, skill_prompts
    from rlhf.models import load_causal_lm

    prompts = skill_prompts(e.skills, e.seed)
    hits = {}
    for name, path in models.items():
        if name.startswith("bon") or name not in results:
            continue
        model = sft_model if name == "sft" else load_causal_lm(path).to(device).eval()
        hits[name] = correctness(model, tok, prompts, e.max_new_tokens, temperature=e.skills_temperature,
                                 samples=e.skills_samples, seed=e.seed)["per_prompt"]
    for row in rows:
        h = hits.get(row["model"])
        if h is None:
            continue
        row["correct"] = sum(h) / len(h)
        if row["model"] != "sft":
            d = paired_difference(h, hits["sft"], seed=e.seed)
            row.update(correct_vs_sft=d["diff"], correct_lo=d["lo"], correct_hi=d["hi"], skill_prompts=d["n"])


def format_table(rows: list[dict]) -> str:
    cols = [("model", "model", "{}"), ("gold", "gold", "{:+.3f}"), ("reward", "RM score", "{:+.3f}"),
            ("win_rate_vs_sft", "win vs SFT", "{:.2f}"), ("ci", "95% CI", "{}"), ("kl_to_sft", "KL", "{:.2f}"),
            ("length", "length", "{:.1f}"), ("wall_s", "wall s", "{:.0f}")]
    if any("correct" in r for r in rows):
        cols[6:6] = [("correct", "correct", "{:.3f}"), ("correct_ci", "vs SFT [95% CI]", "{}")]
    lines = []
    head = [c[1] for c in cols]
    body = []
    for r in rows:
        cells = []
        for key, _, f in cols:
            if key == "ci":
                lo, hi = r.get("ci_low"), r.get("ci_high")
                cells.append("" if lo is None or (isinstance(lo, float) and math.isnan(lo)) else f"[{lo:.2f}, {hi:.2f}]")
            elif key == "correct_ci":
                d = r.get("correct_vs_sft")
                cells.append("" if d is None else f"{d:+.3f} [{r['correct_lo']:+.3f}, {r['correct_hi']:+.3f}]")
            else:
                v = r.get(key)
                cells.append("" if v is None or (isinstance(v, float) and math.isnan(v)) else f.format(v))
        body.append(cells)
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


def write_pipeline_report(cfg: PipelineConfig, out: Path, stages: list[dict], result: dict) -> Path:
    from rlhf.observe.report import write_report

    notes = [f"Held-out prompts: {result['n_prompts']}; answers are greedy; win rates by the {result['judge']} "
             "judge, ties excluded, with 95% bootstrap intervals; KL is to the SFT model, on samples at temperature 1."]
    e = cfg.eval
    if any("correct" in r for r in result["table"]):
        how = ("each model's greedy answer" if e.skills_temperature == 0 else
               f"{e.skills_samples} answers per prompt sampled at temperature {e.skills_temperature:g}, all counted")
        notes.append(f"Correct: the share of {e.skills} held-out skill prompts answered right by the gold judge, "
                     f"{how}; the change against SFT with a paired 95% bootstrap interval over the prompts.")
    for r in result.get("rounds", []):
        if "rm_acc_before" in r:
            notes.append(f"Round {r['round']}: reward-model accuracy on the new samples' comparisons (a fifth of "
                         f"the new prompts, held out of retraining) {r['rm_acc_before']:.3f} before retraining, "
                         f"{r['rm_acc_after']:.3f} after.")
    if result.get("rm_gold_accuracy") is not None:
        notes.append(f"Reward model against the gold judge: it orders {result['rm_gold_accuracy']:.1%} of "
                     f"{result['rm_gold_pairs']} held-out answer pairs (that gold tells apart) as gold does; "
                     f"validation accuracy on annotator comparisons {result.get('rm_val_accuracy') or float('nan'):.3f}.")
    for name, change in result.get("changes", {}).items():
        notes.append(f"What {name} changed against SFT (gold judge, share of held-out answers): {change}.")
    for name, secs in result.get("timings", {}).items():
        notes.append(f"Stage {name}: {secs:.0f} s wall time.")
    alarms_path = out / "ppo" / "alarms.json"
    if alarms_path.exists():
        for a in json.loads(alarms_path.read_text()):
            notes.append(f"Alarm at update {a['step']}: {a['alarm']}: {a['message']}")
    return write_report(out, stages, result["samples"], result["table"], notes, title=f"rlhf pipeline: {out}")


def main(argv: list[str]) -> int:
    args = parse(PipelineArgs, argv)
    raw = load_yaml(args.config)
    if args.out:
        raw["out"] = args.out
    if args.method:
        raw["method"] = args.method
    if args.rounds:
        raw["rounds"] = args.rounds
    if args.device != "auto":
        raw["device"] = args.device
    if args.threads:
        raw["threads"] = args.threads
    cfg = from_dict(PipelineConfig, raw, os.path.basename(args.config))
    result = Pipeline(cfg, claim(cfg)).run()
    print()
    print(format_table(result["table"]))
    print(f"\nreport: {result['report']}")
    return 0
