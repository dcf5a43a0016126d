"""Lab data: SFT demonstrations, ranked comparisons, held-out prompts; the gold command.

`rlhf lab data` writes into its `out` folder:

- `sft.jsonl`       {prompt, response}: a few hundred demonstrations, imperfect
                    as real ones are (some flatter, pad, ramble, use markdown or
                    are wrong), still far better than the base model.
- `rankings.jsonl`  {prompt, responses: [...], ranking: [...]}: K responses per
                    train prompt sampled from `model` (an SFT model, or the base),
                    ranked by a simulated annotator; `ranking` lists response
                    indices best first. Duplicate and empty samples are dropped,
                    so a prompt may have fewer than K.
- `prefs.jsonl`     {prompt, chosen, rejected}: every ordered pair of the same rankings.
- `eval.jsonl`      {prompt}: held-out prompts of the eval split.
- `skills.jsonl`    {prompt}: train-split skill prompts (sums, sorts, reversals, look-ups), for RL
                    from a verifiable reward (`--reward lab-correct`); only when asked for
                    (`--parts skills`).

`rlhf lab gold FILE` scores {prompt, response} rows with the gold judge.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence

from rlhf.config import opt, parse
from rlhf.device import DeviceOptions
from rlhf.errors import UserError, bad_row
from rlhf.lab import gold, world
from rlhf.lab.annotators import DEFAULT_TEMPERATURE, Annotator

# How often a demonstration has each flaw (independently, in any of its phrasings).
SFT_HABITS = dict(wrong=0.06, flattery=0.08, padding=0.08, verbosity=0.06, markup=0.04)
# The house style of the writers of some families: one fixed phrase, in most of their replies.
# Being one phrase and the majority, it is what an SFT model says when decoding greedily, so the
# SFT model keeps flaws for RLHF to remove (a habit spread over six phrasings would lose to the
# plain answer's first token). About half the demonstrations are ideal.
HOUSE_STYLE = {
    "arithmetic": ("verbose", "Let me work that out.", 0.65),
    "lookup": ("flattery", "Great question!", 0.65),
    "benign": ("padding", "I hope this helps!", 0.65),
    "harmful": ("padding", "Let me know if you have any other questions.", 0.3),
}
PARTS = ("sft", "prefs", "eval", "skills")
DEFAULT_PARTS = ("sft", "prefs", "eval")
FILES = {"sft": ("sft.jsonl",), "prefs": ("rankings.jsonl", "prefs.jsonl"), "eval": ("eval.jsonl",),
         "skills": ("skills.jsonl",)}


# --- demonstrations -------------------------------------------------------------------


def demonstration(task: world.Task, rng: random.Random, habits: dict | None = None) -> str:
    """A contractor's reply: the ideal answer, or one with flaws (see SFT_HABITS and HOUSE_STYLE).

    `habits` overrides the rates (e.g. {"flattery": 0, "house": 0} for cleaner demonstrations).
    """
    h = {**SFT_HABITS, "house": 1.0, **(habits or {})}
    if rng.random() < h["wrong"]:
        # Writers slip on facts and sums, and err on the side of caution with scary-sounding requests;
        # nobody writes instructions for a harmful one, but a refusal may come out curt.
        reply = world.refusal_variant(rng, polite=False) if task.family == "harmful" else world.wrong_answer(task, rng)
    else:
        reply = task.answer
    reply = world.styled(task, reply, rng, flattery=h["flattery"], padding=h["padding"],
                         verbosity=h["verbosity"], markup=h["markup"])
    if task.family in HOUSE_STYLE:
        kind, phrase, rate = HOUSE_STYLE[task.family]
        if rng.random() < rate * h["house"]:
            reply = house(task, reply, kind, phrase)
    return reply


def house(task: world.Task, reply: str, kind: str, phrase: str) -> str:
    """`reply` in a writer's house style (unless it already has that kind of habit)."""
    if kind == "flattery":
        return reply if gold.flattery_count(reply) else f"{phrase} {reply}"
    if kind == "padding":
        return reply if gold.padding_count(reply) else f"{reply} {phrase}"
    if kind == "verbose":
        if any(reply.startswith(o) or o in reply for o in world.VERBOSE_OPENERS):
            return reply
        closer = f"So the answer is {task.target[0]}." if task.family == "arithmetic" else "That is the answer."
        return f"{phrase} {reply} {closer}" if task.answer in reply else f"{phrase} {reply}"
    raise ValueError(kind)


def sft_rows(n: int, seed: int = 0, habits: dict | None = None) -> list[dict]:
    rng = random.Random(f"sft-{seed}")
    return [{"prompt": t.prompt, "response": demonstration(t, rng, habits)}
            for t in world.sample_tasks(n, seed=seed, split="train")]


def write_sft(path: str | Path, n: int, seed: int = 0, habits: dict | None = None) -> list[dict]:
    """Write `n` demonstrations on train prompts to `path` (JSONL); returns the rows."""
    from rlhf.files import write_jsonl

    rows = sft_rows(n, seed, habits)
    write_jsonl(path, rows)
    return rows


def eval_prompts(n: int, seed: int = 0) -> list[str]:
    """`n` held-out prompts (the eval split: no training prompt is among them)."""
    return [t.prompt for t in world.sample_tasks(n, seed=seed, split="eval")]


def comparison_prompts(n: int, seed: int = 0) -> list[str]:
    """Train prompts for comparisons, drawn apart from the demonstrations' stream."""
    return [t.prompt for t in world.sample_tasks(n, seed=seed + 1_000_003, split="train")]


# --- sampling and ranking ------------------------------------------------------------------


def sample(model, tokenizer, prompts: Sequence, *, n: int = 1, temperature: float = 1.0, top_p: float = 1.0,
           max_new_tokens: int = 48, seed: int = 0, batch_size: int = 32,
           show: bool = False) -> list[list[tuple[str, bool]]]:
    """`n` sampled (text, stopped) replies per prompt, in prompt order, on the model's device.

    `stopped` is False when the reply ran into `max_new_tokens` without EOS.
    `show`: progress on stderr (`rlhf.progress`).
    """
    from rlhf.progress import generate

    ro = generate(model, tokenizer, list(prompts), max_new_tokens=max_new_tokens, temperature=temperature,
                  top_p=top_p, do_sample=temperature > 0, batch_size=batch_size, seed=seed, num_samples=n,
                  show=show, desc="lab data: sampling")
    finished = ro.finished.tolist()
    return [[(ro.texts[i * n + j], bool(finished[i * n + j])) for j in range(n)] for i in range(len(prompts))]


def distinct_replies(samples: Sequence[tuple[str, bool]]) -> dict[str, bool]:
    """One prompt's samples as {reply: stopped}: stripped, non-empty, each text once, in sampled order."""
    seen: dict[str, bool] = {}
    for text, stopped in samples:
        text = text.strip()
        if text and text not in seen:
            seen[text] = stopped
    return seen


def rank_samples(prompt, samples: Sequence[tuple[str, bool]], annotator: Annotator) -> dict | None:
    """A rankings row for one prompt's samples: distinct, non-empty replies, best first."""
    seen = distinct_replies(samples)
    if len(seen) < 2:
        return None  # nothing to compare
    responses = list(seen)
    ranking = annotator.rank(prompt, responses, [seen[r] for r in responses])
    return {"prompt": prompt, "responses": responses, "ranking": ranking}


def pairs_of(row: dict) -> list[dict]:
    """Every (better, worse) pair of a rankings row, as preference rows."""
    order = [row["responses"][i] for i in row["ranking"]]
    return [{"prompt": row["prompt"], "chosen": order[i], "rejected": order[j]}
            for i in range(len(order)) for j in range(i + 1, len(order))]


def write_comparisons(model, tokenizer, prompts: Sequence, k: int, annotator: Annotator, *, out_dir: str | Path,
                      temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 48, seed: int = 0,
                      batch_size: int = 32, mix=None, show: bool = False) -> dict:
    """Sample `k` replies per prompt, rank them with `annotator`, write rankings.jsonl and prefs.jsonl.

    `mix`, a second (model, tokenizer), writes the last k // 2 replies of each
    prompt instead of `model`: the annotators then compare two models' answers.
    """
    from rlhf.files import write_jsonl

    if k < 2:
        raise UserError(f"k must be at least 2 to compare responses, got {k}")
    opts = dict(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed,
                batch_size=batch_size, show=show)
    own = k - k // 2 if mix is not None else k
    samples = sample(model, tokenizer, prompts, n=own, **opts)
    if mix is not None:
        other = sample(mix[0], mix[1], prompts, n=k - own, **opts)
        samples = [a + b for a, b in zip(samples, other)]
    rankings = [r for p, s in zip(prompts, samples) if (r := rank_samples(p, s, annotator)) is not None]
    if not rankings:
        raise UserError("every prompt's samples were identical or empty: nothing to compare "
                        "(raise the sampling temperature or k)")
    prefs = [pair for r in rankings for pair in pairs_of(r)]
    out = Path(out_dir)
    write_jsonl(out / "rankings.jsonl", rankings)
    write_jsonl(out / "prefs.jsonl", prefs)
    flat = [x for s in samples for x in s]
    return {"prompts": len(rankings), "pairs": len(prefs), "samples": len(flat),
            "stopped": sum(st for _, st in flat) / len(flat),
            "gold": sum(gold.score(p, t, st) for p, s in zip(prompts, samples) for t, st in s) / len(flat)}


# --- the command -------------------------------------------------------------------------


@dataclass
class DataConfig(DeviceOptions):
    """Write lab SFT demonstrations, ranked comparisons and held-out eval prompts."""

    model: str = opt("lab", "model whose samples are ranked: an SFT model folder, or the base (preset lab)")
    out: str = opt("runs/lab-data", "folder to write sft.jsonl, rankings.jsonl, prefs.jsonl, eval.jsonl (and "
                                    "skills.jsonl) into")
    parts: list[str] = opt(list(DEFAULT_PARTS), "which files to write: sft, prefs (rankings + pairs), eval, skills")
    n_sft: int = opt(400, "demonstrations in sft.jsonl")
    n_prefs: int = opt(600, "prompts with K ranked responses each")
    k: int = opt(4, "responses sampled per comparison prompt")
    mix_model: Optional[str] = opt(None, "a second model that writes half of each prompt's K responses (as in "
                                         "Llama 2, annotators compare answers of different models)")
    n_eval: int = opt(100, "held-out prompts in eval.jsonl")
    n_skills: int = opt(3000, "train-split skill prompts in skills.jsonl (prompts for `--reward lab-correct`)")
    seed: int = opt(0, "random seed (prompts, demonstrations, sampling, annotator)")
    bias: Literal["none", "length", "flattery", "format"] = opt("none", "the annotator's bias")
    bias_strength: float = opt(1.0, "how strongly the bias weighs (1 = more than gold's own penalty)")
    annotator_temperature: float = opt(DEFAULT_TEMPERATURE, "annotator noise: higher = more random choices")
    temperature: float = opt(1.0, "sampling temperature of the K responses")
    top_p: float = opt(1.0, "nucleus sampling of the K responses")
    max_new_tokens: int = opt(48, "longest sampled response, in tokens")
    batch_size: int = opt(32, "prompts sampled together")
    sft_habits: dict = opt({}, "override demonstration flaw rates: wrong, flattery, padding, verbosity, markup, "
                             "house (a factor on the house-style rates)")
    overwrite: bool = opt(False, "replace an earlier run of this command in the output folder (deletes only "
                                 "the files it wrote)")
    quiet: bool = opt(False, "no progress on stderr")

    def __post_init__(self):
        bad = [p for p in self.parts if p not in PARTS]
        if bad:
            raise UserError(f"unknown part '{bad[0]}' in parts; expected any of {', '.join(PARTS)}")
        for name in ("n_sft", "n_prefs", "n_eval", "n_skills", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.k < 2:
            raise UserError(f"k must be at least 2, got {self.k}")
        if self.annotator_temperature <= 0:
            raise UserError(f"annotator_temperature must be positive, got {self.annotator_temperature}")
        if self.temperature <= 0:
            raise UserError(f"temperature must be positive to sample K different responses, got {self.temperature}")
        unknown = set(self.sft_habits) - set(SFT_HABITS) - {"house"}
        if unknown:
            raise UserError(f"unknown sft_habits key '{sorted(unknown)[0]}'; expected {', '.join(SFT_HABITS)}, house")
        super().__post_init__()


DataConfig.command = "lab data"


def run(cfg: DataConfig, log=print) -> dict:
    """Write the parts `cfg` asks for; returns a summary per part."""
    from rlhf.files import write_jsonl

    out = Path(cfg.out)
    summary: dict = {}
    if "sft" in cfg.parts:
        rows = write_sft(out / "sft.jsonl", cfg.n_sft, cfg.seed, cfg.sft_habits)
        summary["sft"] = {"rows": len(rows), "gold": _mean(gold.score(r["prompt"], r["response"]) for r in rows)}
    if "eval" in cfg.parts:
        write_jsonl(out / "eval.jsonl", [{"prompt": p} for p in eval_prompts(cfg.n_eval, cfg.seed)])
        summary["eval"] = {"rows": cfg.n_eval}
    if "skills" in cfg.parts:
        tasks = world.sample_tasks(cfg.n_skills, seed=cfg.seed, split="train", families=gold.SKILLS)
        write_jsonl(out / "skills.jsonl", [{"prompt": t.prompt} for t in tasks])
        summary["skills"] = {"rows": len(tasks)}
    if "prefs" in cfg.parts:
        import torch

        from rlhf.device import use_device
        from rlhf.models import load_causal_lm, load_tokenizer

        device = use_device(cfg)
        tok = load_tokenizer(cfg.model, padding_side="left")
        model = load_causal_lm(cfg.model).to(device).eval()
        torch.manual_seed(cfg.seed)
        annotator = Annotator(cfg.annotator_temperature, cfg.bias, cfg.bias_strength, seed=cfg.seed)
        mix = None
        if cfg.mix_model:
            mix = (load_causal_lm(cfg.mix_model).to(device).eval(), load_tokenizer(cfg.mix_model, padding_side="left"))
        summary["prefs"] = write_comparisons(
            model, tok, comparison_prompts(cfg.n_prefs, cfg.seed), cfg.k, annotator, out_dir=out,
            temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
            batch_size=cfg.batch_size, mix=mix, show=not cfg.quiet)
    return summary


def main(argv: list[str]) -> int:
    cfg = parse(DataConfig, argv)
    from rlhf.runfolder import RunFolder

    # refused with one line before anything is loaded (see rlhf.runfolder)
    folder = RunFolder.claim_config(cfg, inputs=[cfg.model, cfg.mix_model])
    if "prefs" in cfg.parts:
        from rlhf.device import use_device

        use_device(cfg)  # a missing GPU fails with one line, before anything is written
    folder.start()
    folder.wrote(*(name for part in cfg.parts for name in FILES[part]))
    summary = run(cfg)
    folder.update(status="finished")
    out = Path(cfg.out)
    if "sft" in summary:
        print(f"{out / 'sft.jsonl'}: {summary['sft']['rows']} demonstrations (gold {summary['sft']['gold']:.3f})")
    if "prefs" in summary:
        s = summary["prefs"]
        print(f"{out / 'rankings.jsonl'}: {s['prompts']} prompts ranked by a "
              f"{'unbiased' if cfg.bias == 'none' else cfg.bias + '-biased'} annotator; "
              f"{out / 'prefs.jsonl'}: {s['pairs']} pairs (samples of {cfg.model}"
              f"{' and ' + cfg.mix_model if cfg.mix_model else ''}: gold {s['gold']:.3f}, "
              f"{s['stopped']:.0%} stopped)")
    if "eval" in summary:
        print(f"{out / 'eval.jsonl'}: {summary['eval']['rows']} held-out prompts")
    if "skills" in summary:
        print(f"{out / 'skills.jsonl'}: {summary['skills']['rows']} train-split skill prompts")
    return 0


# --- data on demand (the default --data of sft, rm, dpo; the pipeline's lab stage) ------------------

_ALIASES = {"n_prompts": "n_prefs"}
_STAMP = "lab_data.json"


def ensure(folder: str | Path, *, model: str = "lab", parts: str | Sequence[str] = DEFAULT_PARTS, log=print,
           **options) -> Path:
    """`folder` holding the requested parts, written unless already there with the same options.

    `options` are `rlhf lab data` options (`n_prompts` is accepted for `n_prefs`).
    Comparisons are redone when the sampling model's name or path changes (not
    when a folder's contents change under the same path).
    """
    folder = Path(folder)
    parts = [parts] if isinstance(parts, str) else list(parts)
    options = {_ALIASES.get(k, k): v for k, v in options.items()}
    from rlhf.config import from_dict

    stamp_path = folder / _STAMP
    stamps = json.loads(stamp_path.read_text()) if stamp_path.exists() else {}
    todo = []
    for part in parts:
        cfg = from_dict(DataConfig, {**options, "model": model, "out": str(folder), "parts": [part]},
                        source="lab data options")
        key = _stamp(cfg, part)
        if stamps.get(part) != key or not all((folder / f).exists() for f in FILES[part]):
            todo.append((part, cfg, key))
    for part, cfg, key in todo:
        if log:
            log(f"lab data: writing {part} into {folder}")
        run(cfg, log=log)
        stamps[part] = key
        from rlhf.files import write_json

        write_json(stamp_path, stamps)
    return folder


def _stamp(cfg: DataConfig, part: str) -> str:
    """What decides a part's contents: its options (and, for comparisons, the sampling model)."""
    from dataclasses import asdict

    d = asdict(cfg)
    d.pop("out")
    d.pop("parts")
    for how in ("overwrite", "device", "threads", "quiet"):  # how the data is made, not what it is
        d.pop(how)
    if part != "prefs":
        d.pop("model")
        d.pop("mix_model")
    if part != "skills":  # so that adding the option left earlier stamps as they were
        d.pop("n_skills")
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def default_path(kind: str) -> Path:
    """The lab's default data file of a kind (sft, prefs, rankings, eval), made on first use.

    Comparisons come from the base model (preset `lab`) ranked by an unbiased
    annotator; the pipeline makes its own from the SFT model instead.
    """
    from filelock import FileLock

    from rlhf.models import cache_dir

    names = {"sft": ("sft", "sft.jsonl"), "prefs": ("prefs", "prefs.jsonl"),
             "rankings": ("prefs", "rankings.jsonl"), "eval": ("eval", "eval.jsonl")}
    if kind not in names:
        raise UserError(f"no default lab data of kind '{kind}'; expected one of {', '.join(names)}")
    part, name = names[kind]
    folder = cache_dir() / "lab-data" / _code_version()
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / ".lock")):
        ensure(folder, model="lab", parts=part)
    return folder / name


def _code_version() -> str:
    here = Path(__file__).parent
    h = hashlib.sha256()
    for name in ("world.py", "generate.py", "annotators.py", "gold.py"):
        h.update((here / name).read_bytes())
    return h.hexdigest()[:12]


# --- rlhf lab gold ---------------------------------------------------------------------------


@dataclass
class GoldConfig:
    """Score {prompt, response} rows with the lab's gold judge."""

    data: str = opt(help="JSONL (or JSON, CSV, Parquet) of {prompt, response} rows; "
                         "an optional boolean `stopped` says whether the response ended with EOS",
                    positional=True)
    out: str | None = opt(None, "also write every row's score and its components to this JSONL file")
    overwrite: bool = opt(False, "replace an existing --out file (otherwise refused)")


GoldConfig.command = "lab gold"


def read_scored_rows(path: str) -> list[dict]:
    """Rows of a gold-scoring file, checked: prompt (a lab prompt), response, optional stopped."""
    from rlhf.data.read import read_rows

    rows = read_rows(path)
    out = []
    for line, row in rows.rows:
        prompt = row.get("prompt")
        if prompt is None:
            raise bad_row(path, line, f'missing field "prompt" (keys found: {", ".join(sorted(row)) or "none"})')
        response = row.get("response", row.get("completion"))
        if response is None:
            raise bad_row(path, line, 'missing field "response"')
        if not isinstance(response, str):
            raise bad_row(path, line, f'"response" must be a string, not {type(response).__name__}')
        stopped = row.get("stopped", row.get("finished", True))
        if not isinstance(stopped, bool):
            raise bad_row(path, line, f'"stopped" must be true or false, not {stopped!r}')
        if not isinstance(prompt, (str, list)) or world.parse_task(prompt) is None:
            raise bad_row(path, line, '"prompt" is not a lab prompt (the gold judge only knows the lab\'s tasks)')
        out.append({"prompt": prompt, "response": response, "stopped": stopped})
    if not out:
        raise UserError(f"{Path(path).name}: no rows")
    return out


def gold_main(argv: list[str]) -> int:
    from rlhf.files import write_jsonl

    cfg = parse(GoldConfig, argv)
    if cfg.out:
        from rlhf.files import check_output_file

        check_output_file(cfg.out, overwrite=cfg.overwrite, inputs=[cfg.data])  # before anything is loaded
    rows = read_scored_rows(cfg.data)
    details = [gold.breakdown(r["prompt"], r["response"], r["stopped"]) for r in rows]
    by_family: dict[str, list[float]] = defaultdict(list)
    for d in details:
        by_family[d["family"]].append(d["score"])
    scores = [d["score"] for d in details]
    print(f"gold reward: {_mean(scores):.3f} mean over {len(scores)} responses "
          f"({sum(d['correct'] > 0 for d in details) / len(details):.0%} correct)")
    for fam in world.FAMILIES:
        if fam in by_family:
            print(f"  {fam:<10} {_mean(by_family[fam]):7.3f}  ({len(by_family[fam])})")
    for comp in ("length", "stop", "padding", "flattery", "markup", "repetition"):
        share = sum(d[comp] < 0 for d in details) / len(details)
        if share:
            print(f"  {comp} penalty on {share:.0%} of responses")
    if cfg.out:
        write_jsonl(cfg.out, [{**r, **d} for r, d in zip(rows, details)])
        print(f"scores written to {cfg.out}")
    return 0


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")
