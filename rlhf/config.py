"""One source of truth for options.

Each command has one dataclass. A field declared with `opt(default, "help")`
is at once the YAML key, the command-line flag (`--max-len 512`,
`--max_len=512` or `max_len=512`) and its help text. Values come from the
defaults, then YAML files (`--config a.yaml`, or a positional `*.yaml`), then
flags, later ones winning. `__post_init__` checks values and raises
`UserError` with a clear message.

    @dataclass
    class SFTConfig:
        model: str = opt("lab", "model folder, hub name or preset")
        lr: float = opt(1e-4, "peak learning rate")
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
from dataclasses import MISSING, field, fields
from typing import Any, Literal, get_args, get_origin

from rlhf.errors import UserError


def opt(default: Any = MISSING, help: str = "", *, positional: bool = False, **meta):
    """A config field: default value, one-line help, and whether it is positional."""
    md = {"help": help, "positional": positional, **meta}
    if isinstance(default, (list, dict, set)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata=md)
    return field(default=default, metadata=md)


def _unwrap_optional(tp):
    """Optional[X] -> (X, True); X -> (X, False)."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _describe(tp) -> str:
    base, _ = _unwrap_optional(tp)
    if get_origin(base) is Literal:
        return "|".join(str(a) for a in get_args(base))
    if get_origin(base) in (list, tuple):
        return f"list of {_describe(get_args(base)[0])}"
    return getattr(base, "__name__", str(base))


def convert(value: Any, tp, name: str, source: str) -> Any:
    """Convert a YAML value or a command-line string to the field's type."""
    base, optional = _unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional:
            return None
        raise UserError(f"{source}: '{name}' must be a {_describe(tp)}, not empty")
    origin = get_origin(base)
    try:
        if origin is Literal:
            choices = get_args(base)
            for c in choices:
                if value == c or str(value) == str(c):
                    return c
            raise ValueError
        if origin in (list, tuple):
            (inner,) = get_args(base)[:1]
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)):
                value = [value]
            return [convert(v, inner, name, source) for v in value]
        if origin is dict or base is dict:
            if isinstance(value, str):  # from the command line: a YAML mapping, e.g. '{markup: 0.2}'
                import yaml

                try:
                    value = yaml.safe_load(value)
                except yaml.YAMLError:
                    raise ValueError from None
            if not isinstance(value, dict):
                raise ValueError
            return value
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if base is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
        return value
    except (TypeError, ValueError):
        raise UserError(f"{source}: '{name}' must be a {_describe(tp)}, got {value!r}") from None


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def from_dict(cls, values: dict, source: str = "config"):
    """Build `cls` from a mapping (a YAML section), with clear errors for unknown keys."""
    if not isinstance(values, dict):
        raise UserError(f"{source}: expected a mapping of options, got {type(values).__name__}")
    hints = _hints(cls)
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise UserError(f"{source}: unknown option '{key}' for {_command_name(cls)}")
        f = known[name]
        if dataclasses.is_dataclass(hints[name]) and isinstance(value, dict):
            kwargs[name] = from_dict(hints[name], value, f"{source}: {name}")
        else:
            kwargs[name] = convert(value, hints[name], name, source)
    missing = [f.name for f in fields(cls)
               if f.default is MISSING and f.default_factory is MISSING and f.name not in kwargs]
    if missing:
        raise UserError(f"{source}: missing required option '{missing[0]}'")
    return cls(**kwargs)


def _command_name(cls) -> str:
    return getattr(cls, "command", cls.__name__)


def load_yaml(path: str) -> dict:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: no such config file") from None
    except UnicodeDecodeError:
        raise UserError(f"{os.path.basename(path)}: not UTF-8 text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise UserError(f"{os.path.basename(path)}{line}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{os.path.basename(path)}: expected a mapping of options at the top level")
    return data


def to_dict(cfg) -> dict:
    """Plain mapping of a config (for saving next to a run). Secrets never live in configs."""
    return dataclasses.asdict(cfg)


def flatten(d, prefix: str = "") -> dict:
    """Nested options as dotted keys: {"ppo": {"lr": 1}} -> {"ppo.lr": 1}."""
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict) and v:
                out.update(flatten(v, key))
            else:
                out[key] = v
    return out


def build_parser(cls, prog: str, description: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=description or (cls.__doc__ or "").strip().split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    hints = _hints(cls)
    for f in fields(cls):
        help_ = f.metadata.get("help", "")
        if f.metadata.get("positional"):
            required = f.default is MISSING and f.default_factory is MISSING
            p.add_argument(f.name, nargs=None if required else "?", default=argparse.SUPPRESS,
                           help=help_, metavar=f.name.upper())
            continue
        flags = [f"--{f.name}"]
        if "_" in f.name:
            flags.append(f"--{f.name.replace('_', '-')}")
        base, _ = _unwrap_optional(hints[f.name])
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else None)
        if base is bool:
            p.add_argument(*flags, dest=f.name, nargs="?", const="true", default=argparse.SUPPRESS,
                           metavar="BOOL", help=f"{help_} (default: {default})")
            p.add_argument(f"--no-{f.name.replace('_', '-')}", dest=f.name, action="store_const",
                           const="false", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        else:
            p.add_argument(*flags, dest=f.name, default=argparse.SUPPRESS, metavar=_describe(hints[f.name]).upper()
                           if get_origin(base) is not Literal else None,
                           help=f"{help_} (default: {default})")
    p.add_argument("--config", dest="_config_files", action="append", default=[], metavar="YAML",
                   help="YAML file(s) of options; flags given after override them")
    return p


def parse(cls, argv: list[str] | None = None, prog: str | None = None):
    """Parse `argv` into an instance of the config dataclass `cls`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or f"rlhf {_command_name(cls)}"
    # `key=value` tokens are flags too, and a bare *.yaml is a config file
    # unless the command takes positional arguments of its own.
    positional_fields = [f for f in fields(cls) if f.metadata.get("positional")]
    rewritten: list[str] = []
    yaml_files: list[str] = []
    # A *.yaml right after a flag that takes a value (`--constitution c.yaml`) is that value.
    hints = _hints(cls)
    takes_value = {f"--{n}" for f in fields(cls) if _unwrap_optional(hints[f.name])[0] is not bool
                   for n in (f.name, f.name.replace("_", "-"))}
    for i, tok in enumerate(argv):
        if not tok.startswith("-") and "=" in tok and tok.split("=", 1)[0].replace("-", "_").isidentifier():
            k, v = tok.split("=", 1)
            rewritten += [f"--{k}", v]
        elif (not positional_fields and tok.endswith((".yaml", ".yml")) and not tok.startswith("-")
              and not (i and argv[i - 1] in takes_value)):
            yaml_files.append(tok)
        else:
            rewritten.append(tok)
    parser = build_parser(cls, prog)

    def error(message: str):
        raise UserError(f"{prog}: {message}")

    parser.error = error  # type: ignore[method-assign]
    ns = vars(parser.parse_args(rewritten))
    values: dict = {}
    for path in yaml_files + ns.pop("_config_files", []):
        values.update({str(k).replace("-", "_"): v for k, v in load_yaml(path).items()})
    values.update(ns)
    # YAML values are typed already; command-line strings are converted in from_dict.
    return from_dict(cls, values, source=", ".join(os.path.basename(p) for p in yaml_files) or prog)
