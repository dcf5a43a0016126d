"""Models and data that both sides of a benchmark start from, built once into `benchmarks/work/`.

Runs in the main virtualenv (it uses `rlhf.data` and `rlhf.chat`). Both
sides read the same model folders and the same examples:

- Lab-architecture models (`bench-10m`, `bench-30m`): a Llama of the lab's
  shape (GQA, SwiGLU, tied embeddings), randomly initialised with a fixed
  seed, with a byte-level BPE tokenizer (the lab's `train_tokenizer`) trained
  on the benchmark texts. Reward-model cases start from a sequence-
  classification folder saved once with its score head already drawn, so
  both sides begin from identical weights (a head drawn at load time would
  depend on each library's RNG use).
- Data: our side reads text JSONL through `rlhf.data`'s loaders; TRL reads
  the token ids of the same examples made by `rlhf.chat.encode` (TRL's
  RewardTrainer drops over-long pairs instead of truncating them, and its
  DPO needs one prompt for both replies: identical ids are the only way to
  give both sides the same sequences). Throughput cases keep only examples
  that fit `max_len` untruncated, so the two sides also agree on every
  token; the HH accuracy case truncates (keeping the end, where the replies
  differ) and hands TRL the truncated ids.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = Path(os.environ.get("RLHF_BENCH_WORK", ROOT / "benchmarks" / "work"))
SHARED = ROOT.parent / "shared" / "data"
HH = SHARED / "hh-rlhf-harmless" / "harmless-base-dev.jsonl"
ALPACA = SHARED / "alpaca-seed-tasks" / "seed_tasks.jsonl"

# Lab-shaped Llamas; parameters with the 4096-token vocabulary (tied): ~9.9M and ~31.6M.
LAB_SHAPES = {
    "bench-10m": dict(hidden_size=256, num_hidden_layers=12, num_attention_heads=8, num_key_value_heads=4,
                      intermediate_size=704),
    "bench-30m": dict(hidden_size=512, num_hidden_layers=10, num_attention_heads=8, num_key_value_heads=4,
                      intermediate_size=1408),
}
VOCAB = 4096
SEED = 0


def require_data() -> None:
    from rlhf.errors import UserError

    for path in (HH, ALPACA):
        if not path.exists():
            raise UserError(f"{path}: benchmark data not found (the benchmarks read ../shared/data)")


# --- models ---------------------------------------------------------------------------------------------


def bench_tokenizer():
    """The lab's BPE tokenizer recipe, trained on the HH and Alpaca texts (cached)."""
    from transformers import AutoTokenizer

    out = WORK / "models" / "bench-tokenizer"
    if not (out / "tokenizer.json").exists():
        from rlhf.files import atomic_dir
        from rlhf.lab.tokenizer import train_tokenizer

        require_data()
        texts = []
        for line in HH.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            texts += [row["chosen"], row["rejected"]]
        for line in ALPACA.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            texts.append(row["instruction"])
            texts += [i.get("input", "") + "\n" + i.get("output", "") for i in row["instances"]]
        tok = train_tokenizer(texts, VOCAB)
        with atomic_dir(out) as tmp:
            tok.save_pretrained(tmp)
    return AutoTokenizer.from_pretrained(out)


def lab_model(name: str) -> Path:
    """`bench-10m` / `bench-30m`: a random-init lab-shaped Llama folder (cached)."""
    out = WORK / "models" / name
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhf.files import atomic_dir

    tok = bench_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), max_position_embeddings=1024, tie_word_embeddings=True,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                      **LAB_SHAPES[name])
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return out


def base_model(name: str) -> Path:
    """A causal LM folder: a bench model, or a preset resolved through `rlhf.models`."""
    if name in LAB_SHAPES:
        return lab_model(name)
    from rlhf.models import resolve

    return Path(resolve(name))


def reward_model(name: str) -> Path:
    """`<name>-rm`: the backbone as a 1-label sequence classifier with a fixed, seeded score head (cached)."""
    out = WORK / "models" / f"{name}-rm"
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhf.files import atomic_dir

    src = base_model(name)
    tok = AutoTokenizer.from_pretrained(src)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    torch.manual_seed(SEED)
    model = AutoModelForSequenceClassification.from_pretrained(src, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tok.pad_token_id
    model.config.problem_type = "regression"
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return out


def parameters(path: Path) -> int:
    """Parameter count of a model folder (tied weights once), read from its safetensors headers."""
    import struct

    total = 0
    for f in sorted(Path(path).glob("*.safetensors")):
        with open(f, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(n))
        for key, meta in header.items():
            if key != "__metadata__":
                size = 1
                for d in meta["shape"]:
                    size *= d
                total += size
    return total


# --- data -----------------------------------------------------------------------------------------------


def _write_jsonl(path: Path, rows) -> None:
    from rlhf.files import write_jsonl

    write_jsonl(path, rows)


def _has_replies(pair) -> bool:
    """Both replies non-empty: a few HH transcripts end with an empty assistant turn, which the
    transcript format allows but the explicit {prompt, chosen, rejected} files of the benchmark reject."""
    return bool(pair.chosen.strip() and pair.rejected.strip())


def _hh_pairs():
    """HH harmless pairs, one per distinct prompt (so our reward batches of G groups hold G pairs).
    Pairs with an empty reply are left out (`_has_replies`).
    """
    from rlhf.data.load import load_pairs
    from rlhf.data.records import prompt_key

    require_data()
    seen, out = set(), []
    for p in load_pairs(HH):
        key = prompt_key(p.prompt)
        if key not in seen and _has_replies(p):
            seen.add(key)
            out.append(p)
    return out


def _alpaca_examples():
    from rlhf.data.load import load_sft

    require_data()
    return load_sft(ALPACA)


def case_data(kind: str, model: str, max_len: int, limit: int | None = None) -> Path:
    """`data_dir`, with the training files cut to their first `limit` rows (held-out rows unchanged)."""
    full = data_dir(kind, model, max_len)
    if not limit:
        return full
    out = full.parent / f"{full.name}-first{limit}"
    if (out / "meta.json").exists():
        return out
    import shutil

    out.mkdir(parents=True, exist_ok=True)
    for f in full.iterdir():
        if f.name.endswith("-train.jsonl"):
            lines = f.read_text(encoding="utf-8").splitlines(keepends=True)
            if len(lines) < limit:
                raise SystemExit(f"{full.name}: {len(lines)} training rows, the case needs {limit}")
            (out / f.name).write_text("".join(lines[:limit]), encoding="utf-8")
        elif f.name != "meta.json":
            shutil.copy2(f, out / f.name)
    meta = json.loads((full / "meta.json").read_text())
    meta["train_rows_used"] = limit
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return out


def data_dir(kind: str, model: str, max_len: int, **extra) -> Path:
    """Build (once) the data of one case; returns its folder with ours-*.jsonl, trl-*.jsonl, meta.json."""
    tag = "-".join([kind, model, str(max_len)] + [f"{k}{v}" for k, v in sorted(extra.items())])
    out = WORK / "data" / tag
    if (out / "meta.json").exists():
        return out
    from transformers import AutoTokenizer

    from rlhf.chat import is_encoder
    from rlhf.models import load_tokenizer

    path = base_model(model)
    tok = load_tokenizer(str(path))
    encoder = is_encoder(AutoTokenizer.from_pretrained(path)) or _is_encoder_folder(path)
    build = {"sft": _sft_data, "pairs": _pair_data, "hh-split": _hh_split_data, "prompts": _prompt_data,
             "group-prompts": _group_prompt_data}[kind]
    meta = build(out, tok, max_len, encoder=encoder, **extra)
    meta.update(kind=kind, model=model, max_len=max_len, **extra)
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return out


def _is_encoder_folder(path: Path) -> bool:
    cfg = json.loads((Path(path) / "config.json").read_text())
    return cfg.get("model_type") in {"bert", "roberta", "distilbert", "deberta", "deberta-v2", "electra"}


def _sft_data(out: Path, tok, max_len: int, *, encoder: bool = False, held: int = 16) -> dict:
    """Alpaca seed demonstrations that fit `max_len` whole; `held` of them (by prompt) held out."""
    from rlhf.data.records import split
    from rlhf.data.tokens import encode_all

    examples = _alpaca_examples()
    enc = encode_all(tok, [(e.prompt, e.response) for e in examples], max_len + 1)
    fit = [(e, s) for e, s in zip(examples, enc) if len(s.input_ids) <= max_len]
    train, val = split(fit, held / len(fit), seed=SEED) if held else (fit, [])
    meta = {}
    for name, part in (("train", train), ("eval", val)):
        _write_jsonl(out / f"ours-{name}.jsonl", [{"prompt": e.prompt, "response": e.response} for e, _ in part])
        _write_jsonl(out / f"trl-{name}.jsonl", [
            {"input_ids": s.input_ids, "completion_mask": [0] * s.n_prompt + [1] * (len(s.input_ids) - s.n_prompt)}
            for _, s in part])
        meta[name] = _length_meta([len(s.input_ids) for _, s in part], len(part))
    meta["dropped_too_long"] = len(examples) - len(fit)
    return meta


def _pair_data(out: Path, tok, max_len: int, *, encoder: bool = False, held: int = 64) -> dict:
    """HH pairs whose chosen and rejected sequences both fit `max_len` whole; `held` pairs held out."""
    from rlhf.data.records import split
    from rlhf.data.tokens import encode_all

    pairs = _hh_pairs()
    enc = encode_all(tok, [(p.prompt, r) for p in pairs for r in (p.chosen, p.rejected)], max_len + 1,
                     encoder=encoder)
    fit = []
    for i, p in enumerate(pairs):
        c, r = enc[2 * i], enc[2 * i + 1]
        if max(len(c.input_ids), len(r.input_ids)) <= max_len and c.n_prompt == r.n_prompt:
            fit.append((p, c, r))
    train, val = split(fit, held / len(fit), seed=SEED) if held else (fit, [])
    meta = {}
    for name, part in (("train", train), ("eval", val)):
        _write_jsonl(out / f"ours-{name}.jsonl", [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
                                                  for p, _, _ in part])
        # prompt_ids/chosen_ids/rejected_ids for DPO; a reward model reads prompt + reply.
        _write_jsonl(out / f"trl-{name}.jsonl", [
            {"prompt_ids": c.input_ids[:c.n_prompt], "chosen_ids": c.input_ids[c.n_prompt:],
             "rejected_ids": r.input_ids[r.n_prompt:]} for _, c, r in part])
        meta[name] = _length_meta([len(s.input_ids) for _, c, r in part for s in (c, r)], 2 * len(part))
    meta["dropped_too_long"] = len(pairs) - len(fit)
    return meta


def hh_split(val_fraction: float = 0.2, seed: int = SEED, path: Path = HH):
    """(train, held-out) comparison groups of the HH file, split exactly as `rlhf rm` splits them."""
    from rlhf.data.load import load_groups
    from rlhf.data.records import split

    return split(load_groups(path), val_fraction, seed=seed)


def group_pairs(groups) -> list:
    """Every comparison of the groups as a `Preference` (better reply as chosen)."""
    from rlhf.data.records import Preference

    return [Preference(g.prompt, g.responses[b], g.responses[w]) for g in groups for b, w, _ in g.pairs]


def _hh_split_data(out: Path, tok, max_len: int, *, encoder: bool = False, val: int = 20) -> dict:
    """Every HH comparison, split by prompt as `rlhf rm --val-fraction` does; longer sequences keep their end.

    The 3 of 1825 comparisons with an empty reply (2 training, 1 held out) are left out on both sides:
    the explicit pair files reject an empty field, though the transcript file that `rlhf rm` reads in
    examples/hh-harmless-rm.yaml keeps them.
    """
    from rlhf.data.tokens import encode_all

    require_data()
    train_g, held_g = hh_split(val / 100)
    meta = {}
    held = [p for p in group_pairs(held_g) if _has_replies(p)]
    for name, part in (("train", [p for p in group_pairs(train_g) if _has_replies(p)]), ("eval", held)):
        enc = encode_all(tok, [(p.prompt, r) for p in part for r in (p.chosen, p.rejected)], max_len,
                         encoder=encoder)
        _write_jsonl(out / f"ours-{name}.jsonl", [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
                                                  for p in part])
        _write_jsonl(out / f"trl-{name}.jsonl", [{"chosen_ids": enc[2 * i].input_ids,
                                                   "rejected_ids": enc[2 * i + 1].input_ids}
                                                  for i in range(len(part))])
        meta[name] = _length_meta([len(s.input_ids) for s in enc], 2 * len(part))
        meta[name]["truncated"] = sum(s.truncated for s in enc)
    # The trivial baseline on the held-out pairs: the shorter reply (in characters) wins, ties count half.
    from benchmarks.rm_report import shorter_wins

    meta["shorter_wins_accuracy"] = shorter_wins((p.chosen, p.rejected) for p in held)
    return meta


def _prompt_data(out: Path, tok, max_len: int, *, encoder: bool = False) -> dict:
    """Alpaca seed instructions as PPO prompts (token ids for TRL, left-truncated to `max_len`)."""
    from rlhf.data.tokens import encode_all

    examples = _alpaca_examples()
    enc = encode_all(tok, [(e.prompt, None) for e in examples], max_len)
    _write_jsonl(out / "ours-train.jsonl", [{"prompt": e.prompt} for e in examples])
    _write_jsonl(out / "trl-train.jsonl", [{"input_ids": s.input_ids} for s in enc])
    return _length_meta([len(s.input_ids) for s in enc], len(examples))


def _group_prompt_data(out: Path, tok, max_len: int, *, encoder: bool = False, held: int = 32) -> dict:
    """Alpaca seed instructions for GRPO/RLOO, each once, that fit `max_len` untruncated, `held` held out.

    Our side reads `{"prompt": instruction}` and renders it with the tokenizer's chat template
    (`rlhf.chat`); TRL reads `{"prompt": rendered text}`, a plain-text prompt that its trainers tokenise
    with the tokenizer's defaults. Only prompts whose two tokenisations are the same ids are kept, so both
    sides sample from identical prompts (`ids_agree` in meta.json counts them).
    """
    from transformers import AutoTokenizer

    from rlhf.chat import encode, render_prompt
    from rlhf.data.records import split

    plain = AutoTokenizer.from_pretrained(tok.name_or_path)  # what TRL loads: no padding side or template change
    seen, rows, disagree = set(), [], 0
    for e in _alpaca_examples():
        text = render_prompt(tok, e.prompt)
        if text in seen:
            continue
        seen.add(text)
        ours = encode(tok, e.prompt, None, max_len + 1).input_ids
        if len(ours) > max_len:
            continue
        if plain(text=[text])["input_ids"][0] != ours:
            disagree += 1
            continue
        rows.append((e.prompt, text, len(ours)))
    train, val = split(rows, held / len(rows), seed=SEED)
    meta = {"ids_agree": len(rows), "ids_differ": disagree}
    for name, part in (("train", train), ("eval", val)):
        _write_jsonl(out / f"ours-{name}.jsonl", [{"prompt": p} for p, _, _ in part])
        _write_jsonl(out / f"trl-{name}.jsonl", [{"prompt": t} for _, t, _ in part])
        meta[name] = _length_meta([n for _, _, n in part], len(part))
    return meta


def _length_meta(lengths: list[int], total: int) -> dict:
    lengths = sorted(lengths)
    return {"sequences": len(lengths), "of": total, "mean_len": round(sum(lengths) / max(1, len(lengths)), 1),
            "max_len_seen": lengths[-1] if lengths else 0}
