"""The output folder of a run: what a command may write into, and the manifest that says what it wrote.

A command writes only into a folder it may call its own:

- a missing or empty folder (a new run);
- a folder holding the manifest (`run.json`) of an earlier run of the same
  command: `--resume` continues it (refusing changed options other than
  those the command lets change), `--overwrite` replaces it, deleting only
  the files the manifest lists.

Anything else is refused with one line before anything is loaded: a folder
with other files (the user's own), a model folder without a manifest,
another command's run, an output folder equal to, inside or holding one of
the inputs, a path that cannot be written (`/proc/x`, a path under a file).
A run never deletes a file it did not write.

    folder = RunFolder.claim(cfg.out, command="sft", options=to_dict(cfg), inputs=[cfg.model, cfg.data],
                             resume=cfg.resume, overwrite=cfg.overwrite, may_change=TRAIN_MAY_CHANGE)
    ...validate the data...
    folder.start()                    # creates the folder, writes run.json
    folder.wrote("config.yaml")       # before (or after) writing it
    folder.update(status="finished")

This module imports no torch: a refusal takes milliseconds.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable, Sequence

from rlhf.errors import UserError

MANIFEST = "run.json"
# Options that never change what a run means: a resume may give other values.
ALWAYS_MAY_CHANGE = frozenset({"resume", "overwrite", "quiet", "out", "change_on_resume", "report_to",
                               "deterministic"})
# Options a resume may change only when it names them in --change-on-resume (the training loops apply them).
NAMED_CHANGES = ("lr", "max_grad_norm")
PACKAGES = ("torch", "transformers", "accelerate", "peft", "rlhf")
# Options of the training loop a resume may change: how often it logs and checkpoints, how many checkpoints
# it keeps, its CPU threads. Everything else (data, model, learning rate, schedule, batch, seed, ...) would
# make the resumed run another run than the one recorded.
TRAIN_MAY_CHANGE = ("threads", "save_every", "keep_checkpoints", "log_every")


def read_manifest(out: str | os.PathLike) -> dict | None:
    """The manifest of a run folder, None when there is none; `UserError` when it is damaged."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: damaged run manifest ({e.__class__.__name__}); move the folder aside or "
                        "choose another --out") from None
    if not isinstance(data, dict) or not isinstance(data.get("command"), str):
        raise UserError(f"{path}: not a run manifest of rlhf; choose another --out")
    return data


def _is_main_process() -> bool:
    """Under torchrun / accelerate launch only the main process claims and writes the folder."""
    return os.environ.get("RANK", "0") == "0"


def _ours(name: str) -> bool:
    """Entries a run of ours leaves while writing (temporary files and folders, an unfinished swap)."""
    return name.startswith(".") and name.endswith((".tmp", ".new", ".old"))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _show(value) -> str:
    return json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value


def _plain(options: dict) -> dict:
    """Options as JSON would give them back (tuples -> lists, paths -> strings)."""
    return json.loads(json.dumps(options, default=str))


class RunFolder:
    """A claimed output folder. Build it with `RunFolder.claim`; nothing is written before `start`."""

    def __init__(self, path: Path, command: str, options: dict, *, resuming: bool = False,
                 overwrite: bool = False, manifest: dict | None = None, changed: dict | None = None,
                 main: bool = True, inputs: dict | None = None):
        self.path = path
        self.inputs = inputs or {}  # sha256 of the input files, by absolute path
        self.command = command
        self.options = options
        self.resuming = resuming
        self.overwrite = overwrite
        self.main = main
        self.manifest: dict = manifest or {}
        self.changed = changed or {}
        self._beat: float | None = None

    # --- claiming -----------------------------------------------------------------------------------

    @classmethod
    def claim(cls, out, *, command: str, options: dict, inputs: Sequence[str | None] = (), resume: bool = False,
              overwrite: bool = False, may_change: Iterable[str] = (), kin: Iterable[str] = ()) -> "RunFolder":
        """May `command` write into `out`? Raises `UserError` (one line) to refuse; writes nothing.

        Allowed: `out` missing or empty; or `out` holding the manifest of an
        earlier run of `command`, continued with `resume` (options other than
        `may_change` must be those of that run) or replaced with `overwrite`
        (`start` deletes the files it lists). Refused: anything else (see the
        module docstring). `kin`: other commands whose runs this one continues as
        its own (`rlhf demo` is `rlhf pipeline` on the lab's config).
        """
        if not str(out).strip():
            raise UserError("--out is empty: name an output folder")
        path = Path(os.path.abspath(Path(out).expanduser()))
        options = _plain(options)
        if not _is_main_process():  # the main process checked and writes; the others only run
            return cls(path, command, options, resuming=resume, overwrite=overwrite, main=False)
        if resume and overwrite:
            raise UserError("--resume continues the run in the output folder and --overwrite replaces it: "
                            "give one of them")
        _check_inputs(path, inputs)
        _check_writable(path)
        main = True
        prints = fingerprints(inputs)
        entries = sorted(p.name for p in path.iterdir() if not _ours(p.name)) if path.is_dir() else []
        manifest = read_manifest(path) if entries else None
        if not entries:
            return cls(path, command, options, main=main, inputs=prints)
        if manifest is None:
            raise UserError(_occupied(path, entries, command))
        if manifest["command"] != command and manifest["command"] not in kin:
            raise UserError(f"{path} holds a run of `rlhf {manifest['command']}`, not of `rlhf {command}`; "
                            "choose another --out")
        if overwrite:
            return cls(path, command, options, overwrite=True, manifest=manifest, main=main, inputs=prints)
        if not resume:
            how = "--resume to continue it or --overwrite" if "resume" in options else "--overwrite"
            raise UserError(f"{path} holds an earlier run of `rlhf {command}`: pass {how} to replace it (deletes "
                            "only the files that run wrote), or choose another --out")
        before = manifest.get("options") or {}
        free = ALWAYS_MAY_CHANGE | set(may_change)
        changed = {k: [before.get(k), options.get(k)] for k in sorted(set(before) | set(options))
                   if before.get(k) != options.get(k)}
        fixed = [k for k in changed if k not in free]
        if fixed:
            k = fixed[0]
            more = f" (and {len(fixed) - 1} other option{'s' if len(fixed) > 2 else ''})" if len(fixed) > 1 else ""
            named = k in NAMED_CHANGES and "change_on_resume" in options
            hint = f"--change-on-resume {k} lets this resume take the new value; " if named else ""
            shown = sorted(free - {"resume", "out", "change_on_resume"})
            raise UserError(f"cannot resume {path}: {_flag(k)} was {_show(changed[k][0])}, now "
                            f"{_show(changed[k][1])}{more}; a resume keeps the options of the run (those it "
                            f"may change: {', '.join(_flag(f) for f in shown)}); {hint}"
                            "use --overwrite to start over")
        for name, digest in prints.items():
            was = (manifest.get("inputs") or {}).get(name)
            if was is not None and was != digest:
                raise UserError(f"cannot resume {path}: {name} changed since the run started (its contents differ); "
                                "a resume needs the data it started with: use --overwrite to start over")
        return cls(path, command, options, resuming=True, manifest=manifest, inputs=prints,
                   changed={k: v for k, v in changed.items()
                            if k not in ("resume", "overwrite", "out", "change_on_resume")}, main=main)

    @classmethod
    def existing(cls, out) -> "RunFolder | None":
        """The run in `out` (to record more files into its manifest), None when it holds no manifest."""
        path = Path(os.path.abspath(Path(out).expanduser()))
        manifest = read_manifest(path)
        if manifest is None:
            return None
        return cls(path, manifest["command"], manifest.get("options") or {}, manifest=manifest,
                   main=_is_main_process())

    @classmethod
    def claim_config(cls, cfg, *, inputs: Sequence[str | None] = (), may_change: Iterable[str] = ()) -> "RunFolder":
        """`claim` for a command's config dataclass: its `command`, `out`, `resume` and `overwrite` fields; the
        options its `change_on_resume` names (of `NAMED_CHANGES`) may change too."""
        from dataclasses import asdict

        named = [n for n in (getattr(cfg, "change_on_resume", None) or ()) if n in NAMED_CHANGES]
        return cls.claim(cfg.out, command=cfg.command, options=asdict(cfg), inputs=inputs,
                         resume=bool(getattr(cfg, "resume", False)), overwrite=bool(getattr(cfg, "overwrite", False)),
                         may_change=(*may_change, *named))

    # --- writing ------------------------------------------------------------------------------------

    def start(self, *, extra: dict | None = None, step: int | None = None) -> None:
        """Create the folder and write the manifest; finish or undo what an interrupted run left.

        On `overwrite` first deletes the files the earlier manifest lists; on
        a resume appends `{time, step, changed}` to the manifest's `resumes`
        (`step`: the step it continues from, by default that of the newest
        checkpoint in `checkpoints/`).
        """
        if not self.main:
            return
        from rlhf.files import disk_errors, recover, recover_all

        with disk_errors(self.path):
            recover(self.path)
            self.path.mkdir(parents=True, exist_ok=True)
            recover_all(self.path)
            now = _now()
            if self.overwrite:
                for name in self.manifest.get("files", []):
                    _delete_inside(self.path, name)
            if self.resuming:
                manifest = dict(self.manifest)
                manifest["options"] = self.options
                resumes = list(manifest.get("resumes", []))
                resumes.append({"time": now, "step": step if step is not None else _newest_step(self.path),
                                "changed": self.changed, "environment": _environment(self.options)})
                manifest.update(resumes=resumes, status="running")
            else:
                manifest = {"command": self.command, "options": self.options, "status": "running",
                            "started": now, **_environment(self.options), "files": [MANIFEST], "resumes": []}
            manifest["inputs"] = {**(manifest.get("inputs") or {}), **self.inputs}
            if extra:
                manifest.update(_plain(extra))
            manifest.pop("error", None)
            self.manifest = manifest
            self._write(merge=self.resuming)
            _STARTED.append(self)

    def wrote(self, *names: str) -> None:
        """Record entries (relative to the folder) that this run writes; `--overwrite` deletes only these."""
        if not self.main:
            return
        files = list(self.manifest.get("files", []))
        new = [n for n in (str(Path(n)) for n in names) if n not in files]
        if new:
            self.manifest["files"] = files + new
            self._write()

    def heartbeat(self, step: int | None = None, *, every: float = 10.0) -> bool:
        """Say the run is alive: sets the manifest's `heartbeat` (and `step` when given), at most once per
        `every` seconds (returns whether it wrote). A run killed with -9 writes nothing more, so a reader
        (`rlhf studio`) calls a "running" run whose heartbeat went quiet stopped. Call it once per step."""
        if not self.main:
            return False
        now = time.monotonic()
        if self._beat is not None and now - self._beat < every:
            return False
        self._beat = now
        fields = {"heartbeat": _now()} if step is None else {"heartbeat": _now(), "step": step}
        self.update(**fields)
        return True

    def fail(self, error: str) -> None:
        """Record that the run stopped on an error (status "failed", `error`); a resume sets "running" again."""
        if not self.main or self.manifest.get("status") != "running":
            return
        self.update(status="failed", error=str(error)[:2000])

    def update(self, **fields) -> None:
        """Set manifest fields (status="finished", heartbeat, device, processes, ...) and rewrite it."""
        if not self.main:
            return
        self.manifest.update(_plain(fields))
        self._write()

    def _write(self, merge: bool = True) -> None:
        from rlhf.files import write_json

        # Another RunFolder of this folder (a model save, the pipeline) may have recorded files meanwhile.
        try:
            on_disk = (read_manifest(self.path) or {}) if merge else {}
        except UserError:
            on_disk = {}
        files = list(self.manifest.get("files", []))
        files += [f for f in on_disk.get("files", []) if f not in files]
        self.manifest["files"] = files
        self.manifest["updated"] = _now()
        write_json(self.path / MANIFEST, self.manifest)


# --- runs of this process that may still be running ----------------------------------------------------

_STARTED: list[RunFolder] = []


def fail_started(error: str | None) -> None:
    """Mark every run this process started that is still "running" as failed with `error`; forget them.

    `rlhf <command>` calls it when the command ends on an error or Ctrl-C, so a
    crashed run says so in its manifest (one killed with -9 cannot: readers go
    by its heartbeat), and with None when it ends well.
    """
    while _STARTED:
        folder = _STARTED.pop()
        if error is None:
            continue
        try:
            on_disk = read_manifest(folder.path) or {}
        except UserError:
            continue
        if on_disk.get("status") == "running":
            folder.manifest["status"] = "running"
            try:
                folder.fail(error)
            except Exception:  # a full disk while reporting an error must not hide that error
                pass


# --- checks -----------------------------------------------------------------------------------------------

def _occupied(path: Path, entries: list[str], command: str) -> str:
    shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
    if "config.json" in entries:
        what = "a model folder that is not a run of rlhf (no run.json)"
    else:
        what = f"files that no rlhf run wrote ({shown})"
    return (f"{path} holds {what}; `rlhf {command}` writes only into a new or empty folder or its own earlier "
            "run: choose another --out")


def fingerprints(inputs: Sequence[str | None]) -> dict:
    """sha256 of every input that is a regular file, by absolute path: a resume refuses data that changed,
    a shuffled file of the same size included."""
    import hashlib

    out = {}
    for name in inputs:
        p = Path(str(name)).expanduser() if name else None
        if p is not None and p.is_file():
            digest = hashlib.sha256()
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            out[str(p.resolve())] = digest.hexdigest()
    return out


def _check_inputs(out: Path, inputs: Sequence[str | None]) -> None:
    """`out` must not be an input, inside one, or hold one (its files would be replaced or deleted)."""
    real_out = Path(os.path.realpath(out))
    for name in inputs:
        if not name:
            continue
        name = str(name)
        for prefix in ("rm:", "llm:", "human:"):  # judge specs name a path after their prefix
            if name.startswith(prefix):
                name = name[len(prefix):]
        p = Path(name).expanduser()
        if not p.exists():
            continue
        real_in = Path(os.path.realpath(p))
        if real_in == real_out:
            raise UserError(f"--out {out} is the input {name}: write the result into another folder")
        if real_out in real_in.parents:
            raise UserError(f"--out {out} holds the input {name}: write the result into another folder")
        if real_in in real_out.parents:
            raise UserError(f"--out {out} is inside the input {name}: write the result into another folder")


def _check_writable(path: Path) -> None:
    """Refuse a path under a regular file, in a file system that takes no new folders, or not writable."""
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} is a file, not a folder")
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"--out {path}: {existing} is a file, so no folder can be made under it")
    for kernel in ("/proc", "/sys", "/dev"):
        if existing == Path(kernel) or Path(kernel) in existing.parents:
            raise UserError(f"--out {path}: {kernel} is not a place for files; choose another folder")
    try:  # the one sure test: make (and remove) a folder where the run would write
        probe = tempfile.mkdtemp(dir=existing, prefix=".rlhf-write-test.")
        os.rmdir(probe)
    except OSError as e:
        raise UserError(f"--out {path}: cannot write in {existing} ({e.strerror or e})") from None


def _delete_inside(folder: Path, name: str) -> None:
    """Delete `folder/name` if it is really inside `folder` (a manifest is data: never follow it out)."""
    import shutil

    target = folder / name
    try:
        inside = Path(os.path.realpath(target.parent)) == Path(os.path.realpath(folder)) or \
            Path(os.path.realpath(folder)) in Path(os.path.realpath(target)).parents
    except OSError:
        return
    if not inside or name in ("", ".", "..") or Path(name).is_absolute():
        return
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif target.exists() or target.is_symlink():
        target.unlink()


def _newest_step(folder: Path) -> int | None:
    steps = [int(m.group(1)) for p in (folder / "checkpoints").glob("step-*")
             if (m := re.fullmatch(r"step-(\d+)", p.name))]
    return max(steps, default=None)


# --- what the manifest records about the machine ----------------------------------------------------------

def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _environment(options: dict) -> dict:
    return {"versions": _versions(), "commit": _git_commit(), "python": platform.python_version(),
            "machine": {"cpu": _cpu_model(), "cores": _cores(), "gpu": _gpu_name(), "host": platform.node()},
            "threads": _threads(options), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "seeds": {k: v for k, v in options.items() if k == "seed" or
                                                     k.endswith("_seed")}}


def _versions() -> dict:
    from importlib import metadata

    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    if out.get("rlhf") is None:
        from rlhf import __version__

        out["rlhf"] = __version__
    return out


def _git_commit() -> str | None:
    """The commit of the source tree rlhf runs from, read from .git (no git process), None outside a checkout."""
    here = Path(__file__).resolve().parent
    for root in (here, *here.parents):
        git = root / ".git"
        if git.is_file():  # a worktree: "gitdir: PATH"
            text = git.read_text().strip()
            git = (root / text.split(":", 1)[1].strip()) if text.startswith("gitdir:") else git
        if git.is_dir():
            try:
                head = (git / "HEAD").read_text().strip()
                if not head.startswith("ref:"):
                    return head
                ref = head.split(":", 1)[1].strip()
                for base in (git, _common_dir(git)):
                    if (base / ref).is_file():
                        return (base / ref).read_text().strip()
                    packed = base / "packed-refs"
                    if packed.is_file():
                        for line in packed.read_text().splitlines():
                            if line.endswith(" " + ref):
                                return line.split()[0]
            except OSError:
                return None
            return None
    return None


def _common_dir(git: Path) -> Path:
    common = git / "commondir"
    return (git / common.read_text().strip()).resolve() if common.is_file() else git


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _cores() -> int:
    from rlhf.trainers.runtime import available_cores

    return available_cores()


def _gpu_name() -> str | None:
    """The GPU's name when torch is already loaded and sees one (the runtime records the device it uses)."""
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:  # a broken driver is not this module's business
        return None
    return None


def _threads(options: dict) -> dict:
    torch = sys.modules.get("torch")
    return {"option": options.get("threads"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "torch": torch.get_num_threads() if torch is not None else None}
