"""`rlhf label create|serve|user|stats|export`: the labeling app's commands.

    rlhf label create project.db --data responses.jsonl --mode pairwise --overlap 3 --guidelines guide.md
    rlhf label user add alice --admin --db project.db
    rlhf label serve project.db --port 8080
    rlhf label stats project.db
    rlhf label export project.db -o prefs.jsonl
    rlhf label rescore project.db --reward-model runs/rm-ensemble
    rlhf label settings project.db --order disagreement --suggestions
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from dataclasses import dataclass
from typing import Literal, Optional

from rlhf.config import opt, parse
from rlhf.device import ScoringOptions
from rlhf.errors import UserError

ORDER_HELP = ("which item is handed out next: sequential (by position), random, uncertainty (the reward model's "
              "margin closest to zero), disagreement (the reward-model ensemble's margins spread most) or "
              "information (a label would tell the ensemble most: BALD); the last three read the scores "
              "`rlhf label rescore` stores")
Order = Literal["sequential", "random", "uncertainty", "disagreement", "information"]  # store.ORDERS
SUGGESTIONS_HELP = "show annotators the stored AI suggestion (folded, text only); off by default"


@dataclass
class CreateConfig:
    """Create a labeling project from ready responses or by sampling a model."""

    command = "label create"
    db: str = opt("project.db", "database file, or a SQLAlchemy URL (postgresql://...)", positional=True)
    name: str = opt("default", "project name")
    data: Optional[str] = opt(None, "JSONL of {prompt, responses: [...]} or {prompt, chosen, rejected}")
    prompts: Optional[str] = opt(None, "prompts (JSONL {prompt} or one per line) to sample responses for")
    model: Optional[str] = opt(None, "model that samples the responses for --prompts (folder or preset); "
                                     "a demonstration project may go without (annotators write from nothing)")
    k: int = opt(0, "responses sampled per prompt (default: 2 pairwise, 4 ranking, 1 thumbs or demonstration)")
    mode: Literal["pairwise", "ranking", "thumbs", "demonstration"] = opt(
        "pairwise", "compare two responses, rank K, rate one up or down (KTO data), or write/edit the response (SFT data)")
    overlap: int = opt(3, "annotators per item")
    guidelines: Optional[str] = opt(None, "markdown file shown with every task")
    gold: Optional[str] = opt(None, "JSONL of gold items with known answers, spread through the items")
    lease_minutes: float = opt(30.0, "an item leased to an annotator goes back to the pool after this long")
    strength: bool = opt(True, "ask how strong a pairwise preference is (exported as margin)")
    render: Literal["markdown", "text"] = opt("markdown", "show responses as markdown (raw HTML off) or plain text")
    append: bool = opt(False, "add the items to an existing project of that name")
    order: Order = opt("sequential", ORDER_HELP)
    suggestions: bool = opt(False, SUGGESTIONS_HELP)
    max_new_tokens: int = opt(128, "sampling: longest response in tokens")
    temperature: float = opt(1.0, "sampling temperature")
    top_p: float = opt(1.0, "sampling nucleus")
    seed: int = opt(0, "sampling seed")
    batch_size: int = opt(8, "sampling batch size")

    def __post_init__(self):
        if bool(self.data) == bool(self.prompts):
            raise UserError("give exactly one of --data (ready responses) or --prompts with --model")
        if self.prompts and not self.model and self.mode != "demonstration":
            raise UserError("--prompts needs --model to sample responses (only --mode demonstration goes without)")
        if self.gold and self.mode == "demonstration":
            raise UserError("--gold: demonstration items have no known answers")
        if self.overlap < 1:
            raise UserError(f"overlap must be at least 1, got {self.overlap}")
        if self.lease_minutes <= 0:
            raise UserError(f"lease_minutes must be positive, got {self.lease_minutes}")
        single = self.mode in ("thumbs", "demonstration")
        if self.k == 0:
            self.k = 1 if single else 2 if self.mode == "pairwise" else 4
        if self.k < (1 if single else 2):
            raise UserError(f"k must be at least {1 if single else 2} in {self.mode} mode, got {self.k}")
        if self.mode == "demonstration" and self.k != 1:
            raise UserError(f"k: a demonstration item has one draft; got {self.k}")


@dataclass
class ServeConfig:
    """Start the labeling web app."""

    command = "label serve"
    db: str = opt("project.db", "database file or URL", positional=True)
    project: Optional[str] = opt(None, "project to serve (default: the only one; with several, all of them, "
                                       "each at /NAME/ and a list at /)")
    host: str = opt("127.0.0.1", "address to bind; 0.0.0.0 exposes the app to the network")
    port: int = opt(8080, "port (0 picks a free one and prints it)")
    threads: int = opt(8, "worker threads")
    secure_cookies: bool = opt(False, "mark the session cookie Secure (when served behind HTTPS)")

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise UserError(f"port must be 0..65535, got {self.port}")
        if self.threads < 1:
            raise UserError("threads must be at least 1")


@dataclass
class UserConfig:
    """Add or change an annotator account: add | passwd | admin | disable | enable | signout | list."""

    command = "label user"
    action: Literal["add", "passwd", "admin", "disable", "enable", "signout", "list"] = opt(
        help="add | passwd | admin | disable | enable | signout (end every session) | list", positional=True)
    name: Optional[str] = opt(None, "user name", positional=True)
    db: str = opt("project.db", "database file or URL")
    admin: bool = opt(False, "with add: an admin (sees stats and export); with admin: grant (or --no-admin: revoke)")
    password_env: Optional[str] = opt(None, "read the password from this environment variable instead of a prompt")


@dataclass
class StatsConfig:
    """Inter-annotator agreement and progress."""

    command = "label stats"
    db: str = opt("project.db", "database file or URL", positional=True)
    project: Optional[str] = opt(None, "project (default: the only one)")
    json: bool = opt(False, "print JSON instead of a table")


@dataclass
class SettingsConfig:
    """Show or change how a project hands out items and whether annotators see AI suggestions."""

    command = "label settings"
    db: str = opt("project.db", "database file or URL", positional=True)
    project: Optional[str] = opt(None, "project (default: the only one)")
    order: Optional[Order] = opt(None, ORDER_HELP)
    suggestions: Optional[bool] = opt(None, SUGGESTIONS_HELP + " (--no-suggestions hides it)")


@dataclass
class RescoreConfig(ScoringOptions):
    """Score a project's queue with reward models (or a judge): acquisition order and AI suggestions."""

    command = "label rescore"
    db: str = opt("project.db", "database file or URL", positional=True)
    project: Optional[str] = opt(None, "project (default: the only one)")
    reward_model: list[str] = opt([], "reward-model folder(s); several, or an ensemble folder (rlhf rm --ensemble), "
                                      "give the disagreement and information orders their scores")
    judge: Optional[str] = opt(None, "a pairwise judge instead: llm:FOLDER, openai:URL#MODEL or rm:FOLDER")
    probe: Optional[str] = opt(None, "or a probe: Bradley-Terry heads on this model's frozen features, fit to the "
                                     "project's labels so far (what `rlhf label active-lab` measured; seconds)")
    members: int = opt(10, "probe: heads, each on a bootstrap resample of the labels (the ensemble)")
    every: bool = opt(False, "score every item, labelled ones too (default: those still handed out, and gold)")
    quiet: bool = opt(False, "no progress on stderr")

    def __post_init__(self):
        if (bool(self.reward_model) + bool(self.judge) + bool(self.probe)) != 1:
            raise UserError("give --reward-model FOLDER[,FOLDER...], --judge SPEC or --probe MODEL (one of the three)")
        if self.members < 1:
            raise UserError(f"members must be at least 1, got {self.members}")
        super().__post_init__()


@dataclass
class ExportConfig:
    """Export labels as training JSONL: preferences (TRL), thumbs as KTO rows, demonstrations as SFT rows."""

    command = "label export"
    db: str = opt("project.db", "database file or URL", positional=True)
    output: str = opt("preferences.jsonl", "output JSONL file")
    project: Optional[str] = opt(None, "project (default: the only one)")
    ties: bool = opt(False, "write ties as rows with tie=true and margin 0")
    gold: bool = opt(True, "include annotators' labels on gold items")
    aggregate: Literal["none", "majority"] = opt("none", "one row per annotator label, or the majority per comparison")


def _argv_with_short_output(argv: list[str]) -> list[str]:
    return ["--output" if a == "-o" else a for a in argv]


def create_main(argv: list[str]) -> int:
    from rlhf.labeling.sources import interleave, prompt_items, read_items, read_prompts, sample_items
    from rlhf.labeling.store import Store

    cfg = parse(CreateConfig, argv)
    guidelines = ""
    if cfg.guidelines:
        try:
            guidelines = open(cfg.guidelines, encoding="utf-8").read()
        except (FileNotFoundError, UnicodeDecodeError) as e:
            raise UserError(f"{cfg.guidelines}: cannot read guidelines ({type(e).__name__})") from None
    if cfg.data:
        items = read_items(cfg.data, cfg.mode)
    elif not cfg.model:  # demonstrations written from nothing
        items = prompt_items(read_prompts(cfg.prompts), os.path.splitext(os.path.basename(cfg.prompts))[0])
    else:
        prompts = read_prompts(cfg.prompts)
        items = sample_items(prompts, cfg.model, k=cfg.k, mode=cfg.mode, max_new_tokens=cfg.max_new_tokens,
                             temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed,
                             batch_size=cfg.batch_size, source=os.path.splitext(os.path.basename(cfg.prompts))[0])
    gold = read_items(cfg.gold, cfg.mode, gold=True) if cfg.gold else []
    store = Store(cfg.db, create=True)
    project = store.create_project(cfg.name, mode=cfg.mode, overlap=cfg.overlap,
                                   lease_seconds=int(cfg.lease_minutes * 60), strength=cfg.strength,
                                   render=cfg.render, guidelines=guidelines, items=interleave(items, gold),
                                   append=cfg.append, order=cfg.order, suggestions=cfg.suggestions)
    p = store.progress(project)
    settings = "".join([f", order {project.order}" if project.order != "sequential" else "",
                        ", AI suggestions shown" if project.suggestions else ""])
    print(f"rlhf: project '{project.name}' in {cfg.db}: {p['items']} items, {p['gold_items']} gold, "
          f"{project.mode}, {project.overlap} annotators each{settings}")
    if not store.users():
        print(f"rlhf: next, add an admin: rlhf label user add NAME --admin --db {cfg.db}")
    return 0


def make_server(cfg: ServeConfig):
    """A waitress server for the app, bound but not yet serving."""
    from rlhf.labeling.app import create_app, create_projects_app
    from rlhf.labeling.store import Store
    from rlhf.web import make_waitress

    store = Store(cfg.db)
    if cfg.project is None and len(store.project_names()) > 1:
        app = create_projects_app(store, secure_cookies=cfg.secure_cookies)
    else:
        app = create_app(store, cfg.project, secure_cookies=cfg.secure_cookies)
    return make_waitress(app, host=cfg.host, port=cfg.port, threads=cfg.threads, ident="rlhf-label")


def serve_main(argv: list[str]) -> int:
    import logging

    cfg = parse(ServeConfig, argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # waitress warns on every queued request under load; a busy moment is not news.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    server = make_server(cfg)
    print(f"rlhf: labeling app at http://{cfg.host}:{server.effective_port}/ (Ctrl-C stops)", flush=True)
    names = [] if cfg.project else _project_names(cfg.db)
    if len(names) > 1:
        print(f"rlhf: {len(names)} projects, each at its own path: "
              + ", ".join(f"/{n}/" for n in names), flush=True)
    if not _has_users(cfg.db):
        print(f"rlhf: no accounts yet: rlhf label user add NAME --admin --db {cfg.db}", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


def _project_names(db: str) -> list[str]:
    from rlhf.labeling.store import Store

    return Store(db).project_names()


def _has_users(db: str) -> bool:
    from rlhf.labeling.store import Store

    return bool(Store(db).users())


def _password(cfg: UserConfig) -> str:
    if cfg.password_env:
        value = os.environ.get(cfg.password_env)
        if not value:
            raise UserError(f"--password-env {cfg.password_env}: that environment variable is empty")
        return value
    if sys.stdin.isatty():
        try:
            first = getpass.getpass(f"password for {cfg.name}: ")
            if getpass.getpass("again: ") != first:
                raise UserError("the two passwords differ")
        except EOFError:
            raise UserError("no password given") from None
        return first
    line = sys.stdin.readline().rstrip("\n")
    if not line:
        raise UserError("no password given (type it at the prompt, pipe it on stdin, or use --password-env)")
    return line


def user_main(argv: list[str]) -> int:
    from rlhf.labeling.store import Store

    cfg = parse(UserConfig, argv)
    store = Store(cfg.db)
    if cfg.action == "list":
        for u in store.users():
            flags = [f for f, on in (("admin", u["is_admin"]), ("disabled", not u["active"])) if on]
            print(u["name"] + (f" ({', '.join(flags)})" if flags else ""))
        return 0
    if not cfg.name:
        raise UserError(f"rlhf label user {cfg.action}: give a user name")
    if cfg.action == "add":
        store.add_user(cfg.name, _password(cfg), admin=cfg.admin)
        print(f"rlhf: added {'admin' if cfg.admin else 'annotator'} {cfg.name}")
    elif cfg.action == "passwd":
        store.update_user(cfg.name, password=_password(cfg))
        print(f"rlhf: password of {cfg.name} changed (their sessions are logged out)")
    elif cfg.action == "signout":
        n = store.end_sessions(cfg.name)
        print(f"rlhf: {cfg.name} signed out everywhere ({n} session{'s' if n != 1 else ''} ended)")
    elif cfg.action == "admin":
        store.update_user(cfg.name, admin=cfg.admin)
        print(f"rlhf: {cfg.name} is {'now' if cfg.admin else 'no longer'} an admin")
    else:
        store.update_user(cfg.name, active=cfg.action == "enable")
        ended = " (their sessions are logged out)" if cfg.action == "disable" else ""
        print(f"rlhf: {cfg.name} {cfg.action}d{ended}")
    return 0


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def stats_main(argv: list[str]) -> int:
    from rlhf.labeling.agreement import suggestion_agreement, summarize
    from rlhf.labeling.store import Store

    cfg = parse(StatsConfig, argv)
    store = Store(cfg.db)
    project = store.project(cfg.project)
    progress = store.progress(project)
    labels = store.project_labels(project)
    summary = summarize(labels, project.mode)
    scores = store.scores(project)
    ai = suggestion_agreement(labels, {i: s["suggestion"] for i, s in scores.items()}, project.mode)
    if cfg.json:
        print(json.dumps({"project": project.name, "progress": progress, "agreement": summary,
                          "ai_suggestions": {"scored_items": len(scores), "order": project.order,
                                             "shown": project.suggestions, **ai}}, indent=2))
        return 0
    print(f"project {project.name}: {project.mode}, {project.overlap} annotators per item")
    print(f"progress: {progress['complete']}/{progress['items']} items complete, "
          f"{progress['votes']}/{progress['target_votes']} labels, {progress['gold_items']} gold items, "
          f"{progress['active_leases']} active leases")
    print(f"agreement: {summary['pairable_units']} units with 2+ labels, percent agreement "
          f"{_fmt(summary['percent_agreement'])}, Krippendorff's alpha {_fmt(summary['krippendorff_alpha'])}")
    if summary["pairs"]:
        print(f"\n{'annotator':<16}{'annotator':<16}{'shared':>8}{'agree':>8}{'kappa':>8}")
        for p in summary["pairs"]:
            print(f"{p['a']:<16}{p['b']:<16}{p['n']:>8}{_fmt(p['agreement']):>8}{_fmt(p['kappa']):>8}")
    if summary["annotators"]:
        print(f"\n{'annotator':<16}{'labels':>8}{'skips':>8}{'majority':>10}{'gold':>8}")
        for a in summary["annotators"]:
            maj = _fmt(a["majority"]["rate"]) if a["majority"] else "-"
            gold = _fmt(a["gold"]["rate"]) if a["gold"] else "-"
            print(f"{a['name']:<16}{a['labels']:>8}{a['skips']:>8}{maj:>10}{gold:>8}")
    if scores:
        shown = "shown to annotators" if project.suggestions else "hidden from annotators"
        print(f"\nAI suggestions ({shown}; order {project.order}): {len(scores)} items scored; "
              f"{ai['n']} units on {ai['items']} items labelled by both, AI-human agreement {_fmt(ai['rate'])}, "
              f"kappa {_fmt(ai['kappa'])}")
        for name, a in ai["annotators"].items():
            print(f"  {name:<16}{a['n']:>6} units  agreement {_fmt(a['rate'])}")
    return 0


def settings_main(argv: list[str]) -> int:
    from rlhf.labeling.store import Store

    cfg = parse(SettingsConfig, argv)
    store = Store(cfg.db)
    project = store.configure(store.project(cfg.project), order=cfg.order, suggestions=cfg.suggestions)
    scored = len(store.scores(project))
    print(f"rlhf: project '{project.name}': order {project.order}, AI suggestions "
          f"{'shown' if project.suggestions else 'hidden'} ({scored} items scored)")
    if project.order not in ("sequential", "random") and not scored:
        print(f"rlhf: no scores yet: items go out by position until `rlhf label rescore {cfg.db} --reward-model ...`")
    return 0


def rescore_main(argv: list[str]) -> int:
    from pathlib import Path

    from rlhf.labeling.store import Store

    cfg = parse(RescoreConfig, argv)
    store = Store(cfg.db)
    project = store.project(cfg.project)
    members = []
    if cfg.reward_model:
        from rlhf.trainers.rm_ensemble import members as expand

        members = expand(cfg.reward_model)
        for path in members:  # every folder checked before any model loads
            if not (Path(path) / "config.json").exists():
                raise UserError(f"--reward-model {path}: not a model folder (no config.json)")
    if cfg.probe:
        from rlhf.models import resolve

        resolve(cfg.probe)  # a folder that is not there is refused before anything loads
    from rlhf.device import use_device
    from rlhf.labeling.rescore import rescore
    from rlhf.trainers.sft import quiet_transformers

    device = use_device(cfg)
    quiet_transformers(cfg.quiet)
    log = None if cfg.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    out = rescore(store, project, reward_models=members, judge=cfg.judge, probe=cfg.probe, members=cfg.members,
                  every=cfg.every, batch_size=cfg.batch_size, max_len=cfg.max_len, device=device, log=log)
    if not out["items"]:
        print(f"rlhf: project '{project.name}': nothing left to score")
        return 0
    margins = sorted(abs(r["margin"]) for r in out["rows"])
    spreads = sorted(r["spread"] for r in out["rows"] if r["spread"] is not None)
    what = (f"a probe on {cfg.probe} ({out['members']} head{'s' if out['members'] != 1 else ''})" if cfg.probe
            else f"{out['members']} reward models" if out["members"] > 1
            else "judge " + cfg.judge if cfg.judge else "1 reward model")
    items = f"{out['items']} item{'s' if out['items'] != 1 else ''}"
    line = f"rlhf: scored {items} of '{project.name}' with {what}: median |margin| {margins[len(margins) // 2]:.3f}"
    infos = sorted(r["information"] for r in out["rows"] if r["information"] is not None)
    if spreads:
        line += f", median spread {spreads[len(spreads) // 2]:.3f}"
    if infos:
        line += f", median information {infos[len(infos) // 2]:.4f} nats"
    print(line + f"; order {project.order}")
    if project.order in ("sequential", "random"):
        print(f"rlhf: to serve the least certain first: rlhf label settings {cfg.db} --order "
              f"{'information' if spreads else 'uncertainty'}")
    return 0


def export_main(argv: list[str]) -> int:
    from rlhf.files import write_jsonl
    from rlhf.labeling.export import export_project
    from rlhf.labeling.store import Store

    cfg = parse(ExportConfig, _argv_with_short_output(argv))
    store = Store(cfg.db)
    rows = export_project(store, cfg.project, include_ties=cfg.ties, include_gold=cfg.gold,
                          aggregate=cfg.aggregate)
    write_jsonl(cfg.output, rows)
    mode = store.project(cfg.project).mode
    what = {"thumbs": "thumbs up/down rows (rlhf kto)", "demonstration": "demonstrations (rlhf sft)"}.get(
        mode, "preference pairs")
    print(f"rlhf: wrote {len(rows)} {what} to {cfg.output}")
    return 0
