from dataclasses import dataclass
from typing import Literal, Optional

import pytest

from rlhf.cli import main as cli_main
from rlhf.config import opt, parse
from rlhf.errors import UserError


@dataclass
class Demo:
    command = "demo-cfg"
    model: str = opt("lab", "model")
    lr: float = opt(1e-4, "learning rate")
    steps: int = opt(10, "steps")
    packing: bool = opt(False, "pack")
    kind: Literal["k1", "k3"] = opt("k1", "estimator")
    tags: list[str] = opt(["a"], "tags")
    out: Optional[str] = opt(None, "output")
    extra: dict = opt({}, "a mapping")

    def __post_init__(self):
        if self.lr <= 0:
            raise UserError("lr must be positive")


def test_defaults_yaml_then_flags(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("lr: 0.5\nsteps: 3\nkind: k3\n")
    cfg = parse(Demo, [str(y), "--steps", "7", "packing=true", "--tags", "x,y"])
    assert (cfg.lr, cfg.steps, cfg.kind, cfg.packing, cfg.tags, cfg.out) == (0.5, 7, "k3", True, ["x", "y"], None)
    assert parse(Demo, ["--no-packing"]).packing is False
    assert parse(Demo, ["--max-len"] if False else ["--steps=4"]).steps == 4
    # a mapping on the command line is YAML flow syntax
    assert parse(Demo, ["--extra", "{markup: 0.2, house: 0}"]).extra == {"markup": 0.2, "house": 0}


@pytest.mark.parametrize("argv,needle", [
    (["--steps", "many"], "'steps' must be a int"),
    (["--kind", "k9"], "'kind' must be a k1|k3"),
    (["--lr", "-1"], "lr must be positive"),
    (["--nope", "1"], "unrecognized arguments"),
    (["--extra", "[1, 2]"], "'extra' must be a"),
    (["--extra", "{a: [1"], "'extra' must be a"),
])
def test_bad_values_are_user_errors(argv, needle):
    with pytest.raises(UserError, match=needle):
        parse(Demo, argv)


def test_unknown_yaml_key(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("lrr: 1\n")
    with pytest.raises(UserError, match="unknown option 'lrr'"):
        parse(Demo, [str(y)])


def test_cli_unknown_command_exits_2(capsys):
    assert cli_main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlhf: unknown command") and "Traceback" not in err
