"""`rlhf <command>`: one subcommand per stage.

Each command is a `main(argv) -> int` function in the module that owns it,
named here so `import rlhf.cli` stays light and `rlhf --help` is instant.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

from rlhf.errors import UserError

# name -> (module:function, one-line summary). Two-word names ("lab pretrain") are
# matched before one-word ones.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("rlhf.demo:main", "run the whole pipeline on the built-in lab and print the results"),
    "lab pretrain": ("rlhf.lab.pretrain:main", "train (or fetch from the cache) the lab's small base model"),
    "lab data": ("rlhf.lab.generate:main", "write lab SFT demonstrations, comparisons and eval prompts"),
    "lab gold": ("rlhf.lab.generate:gold_main", "score prompt/response JSONL with the lab's gold judge"),
    "lab skills": ("rlhf.lab.skills:main", "share of held-out skill prompts (sums, sorts, reversals, look-ups) "
                                          "models answer right"),
    "sft": ("rlhf.trainers.sft:main", "stage 1: supervised fine-tuning on demonstrations"),
    "rm": ("rlhf.trainers.rm:main", "stage 2: reward model from comparisons (Bradley-Terry)"),
    "rm score": ("rlhf.trainers.rm:score_main", "print reward-model scores for prompt/response pairs"),
    "ppo": ("rlhf.trainers.ppo:main", "stage 3: PPO against the reward model with a KL penalty"),
    "grpo": ("rlhf.trainers.grpo:main", "GRPO: group-normalised advantages, rewards from models, judges or code"),
    "rloo": ("rlhf.trainers.grpo:rloo_main", "RLOO: REINFORCE with the leave-one-out baseline"),
    "reinforce": ("rlhf.trainers.grpo:reinforce_main", "REINFORCE++: token-level KL, batch-normalised advantages"),
    "online-dpo": ("rlhf.trainers.online_dpo:main", "online DPO: pairs sampled as it trains, labelled by a reward or a judge"),
    "dpo": ("rlhf.trainers.dpo:main", "DPO / IPO / cDPO / SimPO straight from comparisons"),
    "kto": ("rlhf.trainers.dpo:kto_main", "KTO from thumbs-up/down data"),
    "orpo": ("rlhf.trainers.dpo:orpo_main", "ORPO: odds-ratio preference term plus SFT, no reference"),
    "bon": ("rlhf.trainers.bon:main", "best-of-N sampling against the reward model"),
    "pipeline": ("rlhf.pipeline:main", "SFT, reward model and the last stage in order, with a report"),
    "eval": ("rlhf.evaluate:main", "win rate of model A against model B, reward, length, KL, perplexity"),
    "serve": ("rlhf.serve:main", "OpenAI-compatible chat-completions server for a model"),
    "cai": ("rlhf.cai:main", "Constitutional AI: critique, revise, AI preference labels"),
    "label create": ("rlhf.labeling.cli:create_main", "create a labeling project"),
    "label serve": ("rlhf.labeling.cli:serve_main", "start the labeling web app"),
    "label user": ("rlhf.labeling.cli:user_main", "add or change an annotator account (admin)"),
    "label stats": ("rlhf.labeling.cli:stats_main", "inter-annotator agreement and progress"),
    "label export": ("rlhf.labeling.cli:export_main", "export labels as preference JSONL"),
    "label rescore": ("rlhf.labeling.cli:rescore_main", "score a project's queue with reward models (or a judge) "
                      "for active learning and AI suggestions"),
    "label settings": ("rlhf.labeling.cli:settings_main", "show or change a project's order and AI suggestions"),
    "label active-lab": ("rlhf.labeling.active_lab:main", "measure active vs random labelling order in the lab"),
    "observe overopt": ("rlhf.observe.overopt:main", "overoptimization curves: proxy vs gold reward against KL"),
    "studio": ("rlhf.studio.cli:main", "local web page to watch, debug and compare runs (curves, samples, alarms)"),
}


def _usage() -> str:
    lines = ["usage: rlhf <command> [options]   (rlhf <command> --help for its options)", "", "commands:"]
    width = max(len(k) for k in COMMANDS)
    for name, (target, summary) in COMMANDS.items():
        if _available(target):
            lines.append(f"  {name:<{width}}  {summary}")
    return "\n".join(lines)


def _available(target: str) -> bool:
    module = target.split(":")[0]
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def resolve(argv: list[str]) -> tuple[str, str, list[str]]:
    if len(argv) >= 2 and f"{argv[0]} {argv[1]}" in COMMANDS:
        name = f"{argv[0]} {argv[1]}"
        return name, COMMANDS[name][0], argv[2:]
    if argv and argv[0] in COMMANDS:
        return argv[0], COMMANDS[argv[0]][0], argv[1:]
    raise UserError(f"unknown command '{' '.join(argv[:2])}'; run `rlhf --help` for the list")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from rlhf import __version__

        print(__version__)
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    debug = os.environ.get("RLHF_DEBUG") == "1"
    try:
        name, target, rest = resolve(argv)
        if not _available(target):
            raise UserError(f"command '{name}' is not available in this installation")
        module, func = target.split(":")
        fn = getattr(importlib.import_module(module), func)
        _runs_failed(None)  # only the runs this command starts are its own
        code = int(fn(rest) or 0)
        _runs_failed(f"exited with status {code}" if code else None)
        if code == 0:
            _leave_process_group()
        return code
    except UserError as e:
        _runs_failed(str(e))
        if debug:
            raise
        print(f"rlhf: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _runs_failed("interrupted")
        print("rlhf: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:
        _runs_failed(f"exited with status {e.code}" if e.code not in (None, 0) else None)
        raise
    except BaseException as e:
        _runs_failed(f"{type(e).__name__}: {e}")
        raise


def _leave_process_group() -> None:
    """A process of a multi-process run (torchrun, accelerate launch) that finished its command leaves the
    process group before the interpreter shuts down: left to finalisation, gloo's worker threads can outlive
    it and abort the process (SIGABRT, "terminate called without an active exception") after a run that
    succeeded. Only on success: a process that failed must not wait on ones that may never arrive."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _runs_failed(error: str | None) -> None:
    """Runs the command started and left "running" say they failed (`error`), or are forgotten (None).

    Imports nothing when the command started no run.
    """
    runfolder = sys.modules.get("rlhf.runfolder")
    if runfolder is not None:
        runfolder.fail_started(error)


if __name__ == "__main__":
    sys.exit(main())
