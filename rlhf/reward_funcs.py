"""Rewards beyond the reward model: answer checkers, format and length terms, Python functions, and weighted sums.

A reward function follows TRL's convention, so users' functions port unchanged:

    fn(prompts=[...], completions=[...], **fields) -> [float | None, ...]   # one value per completion

`prompts` are the prompt rows' prompts (chat messages, or strings), `completions`
the sampled replies as strings, and `fields` every other field of the prompt rows
as a list aligned with them (`answer=[...]`, `tests=[...]`), plus what the trainer
adds (`completion_ids`: the reply's token ids). None means "does not apply to this
completion" (a math checker on a row without an answer). A function that takes no
`**kwargs` receives only the fields it names.

`--reward` takes one or more components joined by ` + ` (or a list, one per item;
a repeated option). Each is an optional weight `W*` and one of:

    lab-correct           1 when the reply answers the lab task right, 0 when wrong (0.5: a curt
                          refusal of a harmful request), from the gold judge's correctness check
                          alone; None for a prompt that is not a lab task
    math[:FIELD]          1 when the reply's final answer equals the row's `answer` (or FIELD), else 0:
                          \\boxed{...} first, then GSM8K's `#### 42`, then "the answer is 42", then the
                          last number; numbers compare exactly as rationals (1,000 = 1000, 1/2 = 0.5)
    format:REGEX          1 when REGEX matches the reply (re.search, DOTALL; anchor with ^...$), else 0
    length[:UNIT]         minus the reply's length in tokens (needs `completion_ids`), `chars` or `words`:
                          a penalty, so `0.001*length` costs 0.001 per token
    path/to/file.py:NAME  a function in a Python file;  package.module:NAME  one in an importable module
    DIR                   a reward-model folder (as `rm:DIR`)
    rm:DIR | llm:DIR | openai:URL#MODEL   a judge's scalar score (`rlhf.judges`)

e.g. `--reward "lab-correct + 0.1*format:^[^\\n]*$ + 0.001*length"` or `--reward runs/rm --reward 0.5*math`.
A weight of 0 logs a component without training on it. Built-in names win over a
module of the same name. Reward models and judges are built by the caller's
`builder(judge_spec)`, so this module imports no torch.

`build_reward` checks everything it can at once (files, functions, patterns) and
`CombinedReward.check` calls the functions on the prompt rows before training;
every problem is one line (`rlhf.errors.UserError`): a missing file, a function
not found, a wrong number of values, a non-number, NaN or infinity.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import math
import os
import re
import sys
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Sequence

from rlhf.errors import UserError

BUILTINS = ("lab-correct", "math", "format", "length")
JUDGE_PREFIXES = ("rm", "llm", "openai")
LENGTH_UNITS = ("tokens", "chars", "words")

_WEIGHT = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*\*\s*(.*)$", re.S)
_PY_NAME = r"[A-Za-z_]\w*"
_MODULE_FN = re.compile(rf"^({_PY_NAME}(?:\.{_PY_NAME})*):({_PY_NAME})$")
_FILE_FN = re.compile(rf"^(.+\.py):({_PY_NAME})$", re.S)


# --- the spec ---------------------------------------------------------------------


@dataclass(frozen=True)
class RewardSpec:
    """One component of a `--reward` spec, parsed but not yet loaded."""

    text: str  # the component as written, weight included
    weight: float
    kind: str  # "builtin", "file", "module" or "judge"
    target: str  # the built-in's name, the file's path, the module's name, or the judge spec
    arg: str | None = None  # the built-in's argument, or the function's name


def _split(spec: str | Sequence[str]) -> list[str]:
    items = [spec] if isinstance(spec, str) else list(spec)
    parts = [p.strip() for item in items for p in re.split(r"\s+\+\s+", str(item))]
    if not parts or any(not p for p in parts):
        raise UserError(f"reward spec {spec!r} has an empty component; join components with ' + '")
    return parts


def parse_component(text: str) -> RewardSpec:
    """One component: an optional weight `W*`, then what to score with (see the module docstring)."""
    weight, body = 1.0, text.strip()
    m = _WEIGHT.match(body)
    if m:
        weight, body = float(m.group(1)), m.group(2).strip()
        if not math.isfinite(weight):
            raise UserError(f"reward '{text}': the weight must be a finite number")
    if not body:
        raise UserError(f"reward '{text}': a weight with nothing to weigh")
    name, colon, arg = body.partition(":")
    if name in BUILTINS:
        return RewardSpec(text, weight, "builtin", name, arg if colon else None)
    if name in JUDGE_PREFIXES and arg:
        return RewardSpec(text, weight, "judge", body)
    m = _FILE_FN.match(body)
    if m:
        return RewardSpec(text, weight, "file", m.group(1), m.group(2))
    if body.endswith(".py"):
        raise UserError(f"reward '{text}': name the function in the file, as {body}:NAME")
    m = _MODULE_FN.match(body)
    if m:
        return RewardSpec(text, weight, "module", m.group(1), m.group(2))
    if os.path.isdir(os.path.expanduser(body)):
        return RewardSpec(text, weight, "judge", f"rm:{body}")
    raise UserError(f"reward '{text}': not a built-in ({', '.join(BUILTINS)}), a reward-model folder, a judge "
                    f"({', '.join(p + ':' for p in JUDGE_PREFIXES)}) or a Python function (file.py:NAME, "
                    f"module:NAME)")


def parse_reward_spec(spec: str | Sequence[str]) -> list[RewardSpec]:
    """`"lab-correct + 0.5*math"` (or `["lab-correct", "0.5*math"]`) -> one RewardSpec per component."""
    return [parse_component(p) for p in _split(spec)]


# --- one component ----------------------------------------------------------------


def _excerpt(prompt) -> str:
    if not isinstance(prompt, str):
        users = [m.get("content", "") for m in prompt or [] if isinstance(m, dict) and m.get("role") == "user"]
        prompt = users[-1] if users else str(prompt)
    return repr(prompt[:60] + ("..." if len(prompt) > 60 else ""))


def _values(spec: str, out, n: int, prompts) -> list[float | None]:
    """A function's return value as n floats or None, or a UserError naming what is wrong."""
    if hasattr(out, "tolist") and not isinstance(out, (list, tuple)):  # numpy arrays, tensors
        out = out.tolist()
    if not isinstance(out, (list, tuple)):
        raise UserError(f"reward '{spec}' returned {type(out).__name__}, not a list of one number per completion")
    if len(out) != n:
        raise UserError(f"reward '{spec}' returned {len(out)} values for {n} completions")
    values: list[float | None] = []
    for i, x in enumerate(out):
        if x is None:
            values.append(None)
            continue
        try:
            if isinstance(x, (str, bytes)):
                raise TypeError
            v = float(x)
        except (TypeError, ValueError):
            raise UserError(f"reward '{spec}' returned {type(x).__name__} {x!r:.40} for completion {i}; "
                            f"expected a number or None") from None
        if not math.isfinite(v):
            raise UserError(f"reward '{spec}' returned {v} for completion {i} (prompt {_excerpt(prompts[i])})")
        values.append(v)
    return values


@dataclass
class RewardFunction:
    """One weighted component: calls `fn` and checks what it returns."""

    name: str  # logged as reward/<name>
    weight: float
    spec: str  # as written, for messages
    fn: Callable
    user_code: bool = False  # a user's function: its exceptions become one line
    keywords: frozenset | None = None  # the fields `fn` takes; None: all (**kwargs)

    def __call__(self, prompts: Sequence, completions: Sequence[str], **fields) -> list[float | None]:
        kwargs = {"prompts": list(prompts), "completions": list(completions), **fields}
        if self.keywords is not None:
            kwargs = {k: v for k, v in kwargs.items() if k in self.keywords}
        try:
            out = self.fn(**kwargs)
        except UserError:
            raise
        except Exception as e:
            if not self.user_code:
                raise
            raise UserError(f"reward '{self.spec}' failed: {type(e).__name__}: {e}") from None
        return _values(self.spec, out, len(completions), prompts)


def _keywords(fn: Callable) -> frozenset | None:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params)


# --- built-ins ----------------------------------------------------------------------


def lab_correct(prompts, completions, **_) -> list[float | None]:
    """The lab gold judge's correctness alone (`rlhf.lab.gold.is_correct`, first turn only),
    as 1 right / 0 wrong (0.5 a curt refusal); None for a prompt that is not a lab task."""
    from rlhf.lab import gold, world

    out: list[float | None] = []
    for prompt, completion in zip(prompts, completions):
        task = world.parse_task(prompt)
        out.append(None if task is None else max(0.0, gold.is_correct(task, completion)))
    return out


_NUMBER = r"[-+\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+(?:\.\d+)?)?|[-+\u2212]?\.\d+"
_NUMBER_RX = re.compile(_NUMBER)
_WHOLE_NUMBER = re.compile(rf"^(?:{_NUMBER})$")
_LABELLED_NUMBER = re.compile(rf"^(?:[A-Za-z]\w*\s*=\s*)?({_NUMBER})(?:\s*[A-Za-z][A-Za-z ]*)?$")
_ANSWER_IS = re.compile(r"answer\s*(?:is|:|=)", re.I)
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_LATEX_WRAP = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_LATEX_DROP = re.compile(r"\\left|\\right|\\[,;:! ]|\\%|\$|%|\^\s*\{?\\circ\}?|\\circ")


def _boxed(text: str) -> str | None:
    """What the last \\boxed{...} (or \\fbox{...}) holds, braces balanced."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    if not starts:
        return None
    depth, start = 1, starts[-1]
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i]
    return None


def _clean(text: str) -> str:
    text = _LATEX_FRAC.sub(r"\1/\2", text)
    text = _LATEX_WRAP.sub(r"\1", text)
    text = _LATEX_DROP.sub("", text)
    return text.strip().rstrip(".").strip()


def number(text: str) -> Fraction | None:
    """A number as written ('1,234.5', '-3', '\u22123', '1/2', '.5') as an exact rational, or None."""
    s = text.strip().replace(",", "").replace("\u2212", "-").replace(" ", "")
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            return Fraction(num) / Fraction(den) if Fraction(den) != 0 else None
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def final_answer(text: str) -> str | None:
    """The answer a reply commits to, as text: the last \\boxed{...}; else what follows the last
    `####`; else what follows the last "answer is"; else the last number; else None."""
    boxed = _boxed(text)
    if boxed is not None:
        return boxed
    for marker in (text.rfind("####"), max((m.end() for m in _ANSWER_IS.finditer(text)), default=-1)):
        if marker >= 0:
            rest = text[marker:].lstrip("#").strip().split("\n", 1)[0]
            m = _NUMBER_RX.search(rest)
            return m.group(0) if m else (_clean(rest) or None)
    nums = _NUMBER_RX.findall(text)
    return nums[-1] if nums else None


def answer_value(answer: str) -> Fraction | str | None:
    """An extracted answer as a rational when it is one number, else as normalised text."""
    cleaned = _clean(answer)
    if _WHOLE_NUMBER.match(cleaned.replace(" ", "")):
        return number(cleaned)
    m = _LABELLED_NUMBER.match(cleaned)  # "x = 5", "42 apples"
    if m:
        return number(m.group(1))
    return re.sub(r"\s+", "", cleaned).lower() or None


def gold_value(answer) -> Fraction | str | None:
    """The ground truth of a row: a number, a bare answer ('1/2', '$1,000') or a worked solution
    ending in `#### 72` or \\boxed{72}."""
    if answer is None or isinstance(answer, bool):
        return None
    if isinstance(answer, (int, float)):
        return Fraction(str(answer)) if math.isfinite(answer) else None
    text = str(answer)
    if "####" in text or _boxed(text) is not None:  # a worked solution
        extracted = final_answer(text)
        return answer_value(extracted) if extracted is not None else None
    return answer_value(text)


def math_correct(completion: str, answer) -> float | None:
    """1.0 when the completion's final answer equals `answer`, 0.0 when not or when it gives none;
    None when there is no ground truth."""
    truth = gold_value(answer)
    if truth is None:
        return None
    said = final_answer(completion)
    return 1.0 if said is not None and answer_value(said) == truth else 0.0


def _math(field_name: str):
    def math_reward(prompts, completions, **fields):
        if field_name not in fields:
            present = ", ".join(sorted(fields)) or "none"
            raise UserError(f"reward 'math' reads each prompt row's {field_name!r} field, and the rows have none "
                            f"(fields: {present})")
        return [math_correct(c, a) for c, a in zip(completions, fields[field_name])]

    return math_reward


def _format(spec: str, pattern: str | None):
    if not pattern:
        raise UserError(f"reward '{spec}': give the pattern, as format:REGEX")
    try:
        rx = re.compile(pattern, re.DOTALL)
    except re.error as e:
        raise UserError(f"reward '{spec}': bad regular expression: {e}") from None

    def format_reward(prompts, completions, **_):
        return [1.0 if rx.search(c) else 0.0 for c in completions]

    return format_reward


def _length(spec: str, unit: str | None):
    unit = unit or "tokens"
    if unit not in LENGTH_UNITS:
        raise UserError(f"reward '{spec}': unknown unit {unit!r}; use one of {', '.join(LENGTH_UNITS)}")

    def length_reward(prompts, completions, **fields):
        if unit == "chars":
            return [-float(len(c)) for c in completions]
        if unit == "words":
            return [-float(len(c.split())) for c in completions]
        ids = fields.get("completion_ids")
        if ids is None:
            raise UserError(f"reward '{spec}' counts tokens but was given no completion_ids; "
                            f"use length:chars or length:words")
        return [-float(len(x)) for x in ids]

    return length_reward


def _builtin(spec: RewardSpec) -> Callable:
    if spec.target == "lab-correct":
        if spec.arg:
            raise UserError(f"reward '{spec.text}': lab-correct takes no argument")
        return lab_correct
    if spec.target == "math":
        return _math(spec.arg or "answer")
    if spec.target == "format":
        return _format(spec.text, spec.arg)
    return _length(spec.text, spec.arg)


# --- user functions -------------------------------------------------------------------


def _from_file(spec: RewardSpec) -> Callable:
    path = os.path.expanduser(spec.target)
    if not os.path.isfile(path):
        raise UserError(f"reward '{spec.text}': no such file {spec.target}")
    digest = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:10]
    stem = re.sub(r"\W", "_", os.path.basename(path)[:-3])
    mod_name = f"rlhf_reward_{stem}_{digest}"
    module = sys.modules.get(mod_name)
    if module is None:
        loader_spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[mod_name] = module  # dataclasses and pickling look the module up by name
        try:
            loader_spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[mod_name]
            raise UserError(f"reward '{spec.text}': loading {spec.target} failed: {type(e).__name__}: {e}") from None
    return _function(spec, module, spec.target)


def _from_module(spec: RewardSpec) -> Callable:
    try:
        module = importlib.import_module(spec.target)
    except ModuleNotFoundError as e:
        raise UserError(f"reward '{spec.text}': no module named {e.name or spec.target!r}") from None
    except Exception as e:
        raise UserError(f"reward '{spec.text}': importing {spec.target} failed: {type(e).__name__}: {e}") from None
    return _function(spec, module, spec.target)


def _function(spec: RewardSpec, module, where: str) -> Callable:
    fn = getattr(module, spec.arg, None)
    if fn is None:
        raise UserError(f"reward '{spec.text}': {where} has no function {spec.arg!r}")
    if not callable(fn):
        raise UserError(f"reward '{spec.text}': {spec.arg!r} in {where} is a {type(fn).__name__}, not a function")
    return fn


def _from_judge(spec: RewardSpec, builder: Callable | None) -> Callable:
    if builder is None:
        raise UserError(f"reward '{spec.text}': this command takes reward functions only, not {spec.target}")
    judge = builder(spec.target)
    if callable(judge) and not hasattr(judge, "score"):
        return judge
    return lambda prompts, completions, **_: judge.score(prompts, completions)


# --- the weighted sum ---------------------------------------------------------------


@dataclass
class RewardScores:
    """What `CombinedReward` returns: the weighted sum and each component on its own (unweighted)."""

    total: list[float]
    components: dict[str, list[float | None]] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """`reward/<name>`: each component's mean over the completions it applies to."""
        out = {}
        for name, values in self.components.items():
            xs = [v for v in values if v is not None]
            if xs:
                out[f"reward/{name}"] = sum(xs) / len(xs)
        return out


class CombinedReward:
    """sum_k w_k f_k(completion) over the components that apply (return a number, not None)."""

    def __init__(self, components: Sequence[RewardFunction]):
        if not components:
            raise UserError("no reward given")
        self.components = list(components)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.components]

    def __call__(self, prompts: Sequence, completions: Sequence[str], **fields) -> RewardScores:
        n = len(completions)
        if len(prompts) != n or any(len(v) != n for v in fields.values()):
            raise ValueError(f"prompts, completions and fields differ in length: {len(prompts)}, {n}, "
                             + ", ".join(f"{k}={len(v)}" for k, v in fields.items()))
        parts = {c.name: c(prompts, completions, **fields) for c in self.components}
        total = []
        for i in range(n):
            applies = [(c.weight, parts[c.name][i]) for c in self.components if parts[c.name][i] is not None]
            if not applies:
                raise UserError(f"no reward applies to completion {i} (prompt {_excerpt(prompts[i])}): "
                                f"{', '.join(self.names)} all returned None")
            total.append(sum(w * v for w, v in applies))
        return RewardScores(total, parts)

    def check(self, prompts: Sequence, **fields) -> None:
        """Call every component on the prompt rows with empty replies, before any training, so a
        wrong return length, a non-number, a NaN or a missing field stops the run at once."""
        n = len(prompts)
        self(prompts, [""] * n, **{"completion_ids": [[] for _ in range(n)], **fields})

    def __repr__(self) -> str:
        return " + ".join(f"{c.weight:g}*{c.name}" for c in self.components)


def _name(spec: RewardSpec, fn: Callable) -> str:
    if spec.kind == "builtin":
        return spec.target
    if spec.kind in ("file", "module"):
        return spec.arg
    kind, _, arg = spec.target.partition(":")
    return os.path.basename(os.path.normpath(arg)) if kind == "rm" else kind


def build_reward(spec: str | Sequence[str], builder: Callable[[str], object] | None = None) -> CombinedReward:
    """Parse and load a `--reward` spec: every file, function and pattern is checked here.

    `builder(judge_spec)` turns `rm:DIR`, `llm:DIR` or `openai:URL#MODEL` (a bare folder
    arrives as `rm:DIR`) into a judge with `.score(prompts, completions)` or a reward
    function; e.g. `rlhf.judges.make_judge`. Without one, such components are refused.
    """
    components, seen = [], {}
    for s in parse_reward_spec(spec):
        if s.kind == "builtin":
            fn, user = _builtin(s), False
        elif s.kind == "file":
            fn, user = _from_file(s), True
        elif s.kind == "module":
            fn, user = _from_module(s), True
        else:
            fn, user = _from_judge(s, builder), False
        name = _name(s, fn)
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name}-{seen[name]}"
        components.append(RewardFunction(name, s.weight, s.text, fn, user_code=user, keywords=_keywords(fn)))
    return CombinedReward(components)
