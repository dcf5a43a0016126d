"""The labeling store: projects, items, accounts, leases and labels in one SQL database.

Named by a SQLAlchemy URL, so a team can point it at PostgreSQL; a bare path
means SQLite, opened in WAL mode with a busy timeout. Every write is one
transaction that takes the write lock up front (`BEGIN IMMEDIATE` on SQLite,
`SELECT ... FOR UPDATE` on the project row elsewhere), so two annotators
submitting at once are serialised rather than failing half-way, and a vote is
either stored with its audit row or not at all.

Overlap: each non-gold item is labelled by `overlap` annotators. An item is
handed out under a lease; a lease holds one of the item's slots until it
expires, so when many people work at once the target is met without being
overshot. A label that arrives after its lease expired is kept only if a slot
is still free. Gold items (known answers) go to every annotator once.

No torch here: the web app and the reward-model loader import this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from sqlalchemy import and_, create_engine, delete, event, exists, func, insert, inspect, or_, select, update
from sqlalchemy import bindparam as P
from sqlalchemy.engine import Connection, Engine

from rlhf.errors import UserError
from rlhf.labeling import schema as S

MODES = ("pairwise", "ranking", "thumbs", "demonstration")
PAIR_CHOICES = ("a", "b", "tie", "both_bad", "skip")
RANK_CHOICES = ("rank", "all_bad", "skip")
THUMB_CHOICES = ("up", "down", "skip")  # thumbs: the item's one response is good (up) or bad (down)
DEMO_CHOICES = ("write", "skip")  # demonstration: the annotator writes (or edits a draft of) the response
SKIP_REASONS = ("unsure", "expertise", "harmful", "broken", "other")
# Which item is handed out next: by position; at random; the reward model's margin closest to zero;
# the reward-model ensemble's largest disagreement; the most a label would tell the ensemble (the last three
# from `rlhf label rescore`'s scores).
ORDERS = ("sequential", "random", "uncertainty", "disagreement", "information")
MAX_COMMENT = 2000
MAX_TEXT = 20000  # a written demonstration, in characters



# The hot path's statements, built once: building SQLAlchemy expressions per
# request cost more than running them.
_a, _i, _l, _r = S.assignments, S.items, S.labels, S.responses
Q_ITEM = select(_i).where(_i.c.id == P("item_id"))
Q_RESPONSES = select(_r.c.text, _r.c.model).where(_r.c.item_id == P("item_id")).order_by(_r.c.idx)
Q_ITEM_STATE = select(_i.c.project_id, _i.c.is_gold, _i.c.done_count,
                      select(func.count()).where(_r.c.item_id == _i.c.id).scalar_subquery().label("k")
                      ).where(_i.c.id == P("item_id"))
Q_LABEL = select(_l).where(_l.c.item_id == P("item_id"), _l.c.user_id == P("user_id"))
Q_LEASE = select(_a).where(_a.c.item_id == P("item_id"), _a.c.user_id == P("user_id"))
Q_OTHERS_LEASING = select(func.count()).select_from(_a).where(
    _a.c.item_id == P("item_id"), _a.c.user_id != P("user_id"), _a.c.state == "leased", _a.c.expires_at > P("now"))
Q_HELD = (select(_a.c.item_id, _a.c.id, _a.c.expires_at).join(_i, _i.c.id == _a.c.item_id)
          .where(_a.c.user_id == P("user_id"), _a.c.state == "leased", _i.c.project_id == P("project_id"))
          .order_by(_a.c.leased_at.desc()))
_live_leases = select(func.count()).select_from(_a).where(
    _a.c.item_id == _i.c.id, _a.c.state == "leased", _a.c.expires_at > P("now")).scalar_subquery()
# The first item, in the project's order, that is gold or has a free slot, and that this user has not had.
_s = S.item_scores
_eligible = select(_i.c.id).where(
    _i.c.project_id == P("project_id"),
    or_(_i.c.is_gold, and_(_i.c.done_count < P("overlap"), _i.c.done_count + _live_leases < P("overlap"))),
    ~exists().where(_a.c.item_id == _i.c.id, _a.c.user_id == P("user_id")))
_scored = _eligible.outerjoin(_s, _s.c.item_id == _i.c.id)
# Unscored items (added since the last rescore) come after the scored ones, by position.
Q_NEXT = {
    "sequential": _eligible.order_by(_i.c.position).limit(1),
    "random": _eligible.order_by(func.random()).limit(1),
    "uncertainty": _scored.order_by(_s.c.margin.is_(None), func.abs(_s.c.margin), _i.c.position).limit(1),
    "disagreement": _scored.order_by(_s.c.spread.is_(None), _s.c.spread.desc(), _i.c.position).limit(1),
    "information": _scored.order_by(_s.c.information.is_(None), _s.c.information.desc(), _i.c.position).limit(1),
}
Q_ORDER = select(S.projects.c.serve_order).where(S.projects.c.id == P("project_id"))
I_LEASE = insert(_a)
U_RENEW = update(_a).where(_a.c.id == P("aid")).values(expires_at=P("exp"))
D_LEASE = delete(_a).where(_a.c.id == P("aid"))
I_LABEL = insert(_l)
U_LABEL = update(_l).where(_l.c.id == P("lid"))
U_STATE = update(_a).where(_a.c.item_id == P("iid"), _a.c.user_id == P("uid"))
U_DONE = update(_i).where(_i.c.id == P("iid")).values(done_count=_i.c.done_count + P("delta"))
I_AUDIT = insert(S.audit)
Q_USER = select(S.users).where(S.users.c.id == P("user_id"))
Q_SESSION_USER = (select(S.users).join(S.sessions, S.sessions.c.user_id == S.users.c.id)
                  .where(S.sessions.c.token_hash == P("h"), S.sessions.c.expires_at > P("now"), S.users.c.active))


class Refused(Exception):
    """A request the store will not carry out; `status` is the HTTP status the app answers with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class ItemSpec:
    """One item to create: a prompt and its responses, in item order."""

    uid: str
    group_id: str
    prompt: object  # str or list of messages
    responses: list[str]
    models: list[Optional[str]] = field(default_factory=list)
    gold: object = None  # "a"/"b" (pairwise) or a list of response indices best first (ranking)


@dataclass
class Project:
    id: int
    name: str
    mode: str
    overlap: int
    lease_seconds: int
    strength: bool
    render: str
    guidelines: str
    order: str = "sequential"  # one of ORDERS
    suggestions: bool = False  # annotators see the stored AI suggestion


@dataclass
class Item:
    id: int
    uid: str
    group_id: str
    position: int
    prompt: object
    responses: list[str]
    models: list[Optional[str]]
    is_gold: bool
    gold: object
    done_count: int


@dataclass
class Answer:
    """A label in item terms (see `schema`)."""

    choice: str
    ranking: Optional[list] = None  # places best first: an index, or a list of tied indices
    strength: Optional[int] = None
    comment: Optional[str] = None
    flagged: bool = False
    reason: Optional[str] = None  # with a skip: one of SKIP_REASONS
    text: Optional[str] = None  # a demonstration's response (choice `write`)


def places(ranking: list) -> list[list[int]]:
    """A stored ranking as places best first, each a list of the (tied) response indices in it."""
    return [list(p) if isinstance(p, list) else [p] for p in ranking]


def database_url(db: str) -> str:
    """`project.db` -> `sqlite:////abs/project.db`; URLs pass through."""
    if "://" in db:
        return db
    return "sqlite:///" + str(Path(db).expanduser().resolve())


def _sqlite_engine(url: str) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # Take transaction control from the driver so we can say BEGIN IMMEDIATE ourselves.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable at checkpoints, never corrupt
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        # Writers take the lock at BEGIN: no deadlock-prone upgrade from a read lock.
        immediate = conn.get_execution_options().get("write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def open_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        return _sqlite_engine(url)
    return create_engine(url, pool_pre_ping=True)


def _dumps(x) -> str:
    return json.dumps(x, ensure_ascii=False)


class Store:
    """All reads and writes of a labeling database."""

    def __init__(self, db: str, *, create: bool = False):
        self.url = database_url(db)
        if self.url.startswith("sqlite:///") and not create:
            path = self.url[len("sqlite:///"):]
            if not os.path.exists(path):
                raise UserError(f"{db}: no such labeling database (make one with `rlhf label create`)")
        self.engine = open_engine(self.url)
        self._items: dict[int, Item] = {}
        if create:
            S.metadata.create_all(self.engine)
            with self.write() as c:
                if c.execute(select(S.meta.c.value).where(S.meta.c.key == "schema")).scalar() is None:
                    c.execute(insert(S.meta), [{"key": "schema", "value": S.SCHEMA_VERSION},
                                               {"key": "secret_key", "value": secrets.token_hex(32)}])
        elif not inspect(self.engine).has_table("meta"):
            raise UserError(f"{db}: not a labeling database (no 'meta' table)")
        else:
            self._upgrade()

    def _upgrade(self) -> None:
        """Bring a database made by an older version up to this schema (new tables and columns only)."""
        with self.read() as c:
            version = c.execute(select(S.meta.c.value).where(S.meta.c.key == "schema")).scalar()
        if version == S.SCHEMA_VERSION:
            return
        S.metadata.create_all(self.engine)  # tables that are missing, e.g. sessions
        have = {col["name"] for col in inspect(self.engine).get_columns("labels")}
        have_p = {col["name"] for col in inspect(self.engine).get_columns("projects")}
        have_s = {col["name"] for col in inspect(self.engine).get_columns("item_scores")}
        with self.write() as c:
            if "serve_order" not in have_p:
                c.exec_driver_sql("ALTER TABLE projects ADD COLUMN serve_order VARCHAR(16) NOT NULL "
                                  "DEFAULT 'sequential'")
            if "suggestions" not in have_p:
                c.exec_driver_sql("ALTER TABLE projects ADD COLUMN suggestions BOOLEAN NOT NULL DEFAULT FALSE")
            if "comment" not in have:
                c.exec_driver_sql("ALTER TABLE labels ADD COLUMN comment TEXT")
            if "flagged" not in have:
                c.exec_driver_sql("ALTER TABLE labels ADD COLUMN flagged BOOLEAN NOT NULL DEFAULT FALSE")
            if "reason" not in have:
                c.exec_driver_sql("ALTER TABLE labels ADD COLUMN reason VARCHAR(16)")
            if "text" not in have:
                c.exec_driver_sql("ALTER TABLE labels ADD COLUMN text TEXT")
            if "information" not in have_s:
                c.exec_driver_sql("ALTER TABLE item_scores ADD COLUMN information FLOAT")
            c.execute(update(S.meta).where(S.meta.c.key == "schema").values(value=S.SCHEMA_VERSION))

    def close(self) -> None:
        self.engine.dispose()

    # -- transactions ------------------------------------------------------
    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as c:
            with c.begin():
                yield c

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        with self.engine.connect().execution_options(write=True) as c:
            with c.begin():
                yield c

    def _lock_project(self, c: Connection, project_id: int) -> None:
        # A row lock on PostgreSQL; on SQLite BEGIN IMMEDIATE already holds the database lock.
        if self.engine.dialect.name != "sqlite":
            c.execute(select(S.projects.c.id).where(S.projects.c.id == project_id).with_for_update()).first()

    def _audit(self, c: Connection, actor: Optional[str], action: str, detail: dict, *, item_id=None,
               label_id=None, now=None) -> None:
        c.execute(insert(S.audit).values(at=now or time.time(), actor=actor, action=action, item_id=item_id,
                                         label_id=label_id, detail=_dumps(detail)))

    def secret_key(self) -> str:
        with self.read() as c:
            return c.execute(select(S.meta.c.value).where(S.meta.c.key == "secret_key")).scalar_one()

    # -- accounts ----------------------------------------------------------
    def add_user(self, name: str, password: str, *, admin: bool = False, actor: str = "cli",
                 hash_method: str = "scrypt") -> int:
        """`hash_method` is werkzeug's (scrypt by default); tests use a cheap one to log in fast."""
        from werkzeug.security import generate_password_hash

        check_user_name(name)
        check_password(password)
        with self.write() as c:
            if c.execute(select(S.users.c.id).where(S.users.c.name == name)).first():
                raise UserError(f"user '{name}' already exists (use `rlhf label user passwd {name}`)")
            uid = c.execute(insert(S.users).values(
                name=name, password_hash=generate_password_hash(password, method=hash_method), is_admin=admin,
                active=True, created_at=time.time())).inserted_primary_key[0]
            self._audit(c, actor, "user.add", {"name": name, "admin": admin})
        return int(uid)

    def update_user(self, name: str, *, password: str | None = None, admin: bool | None = None,
                    active: bool | None = None, actor: str = "cli") -> None:
        from werkzeug.security import generate_password_hash

        values: dict = {}
        if password is not None:
            check_password(password)
            values["password_hash"] = generate_password_hash(password)
        if admin is not None:
            values["is_admin"] = admin
        if active is not None:
            values["active"] = active
        with self.write() as c:
            uid = c.execute(select(S.users.c.id).where(S.users.c.name == name)).scalar()
            if uid is None:
                raise UserError(f"no user named '{name}'")
            c.execute(update(S.users).where(S.users.c.id == uid).values(**values))
            if password is not None or active is not None:
                # A new password or a disabled account ends every session; enabling brings none back.
                c.execute(delete(S.sessions).where(S.sessions.c.user_id == uid))
            shown = {k: v for k, v in values.items() if k != "password_hash"}
            if password is not None:
                shown["password"] = "changed"
            self._audit(c, actor, "user.update", {"name": name, **shown})

    # -- sessions ----------------------------------------------------------
    def start_session(self, user_id: int, *, lifetime: float, address: str | None = None) -> str:
        """A new login session: the token for the cookie (only its hash is stored)."""
        token = secrets.token_urlsafe(32)
        now = time.time()
        with self.write() as c:
            c.execute(delete(S.sessions).where(S.sessions.c.expires_at <= now))
            c.execute(insert(S.sessions).values(token_hash=_token_hash(token), user_id=user_id, created_at=now,
                                                expires_at=now + lifetime, address=(address or "")[:64]))
        return token

    def session_user(self, token: str) -> Optional[dict]:
        """The active user a live session token belongs to, else None."""
        with self.read() as c:
            r = c.execute(Q_SESSION_USER, {"h": _token_hash(token), "now": time.time()}).first()
        return dict(r._mapping) if r else None

    def end_session(self, token: str) -> None:
        with self.write() as c:
            c.execute(delete(S.sessions).where(S.sessions.c.token_hash == _token_hash(token)))

    def end_sessions(self, name: str, *, actor: str = "cli") -> int:
        """Sign a user out everywhere: every session of theirs ends. Returns how many did."""
        with self.write() as c:
            uid = c.execute(select(S.users.c.id).where(S.users.c.name == name)).scalar()
            if uid is None:
                raise UserError(f"no user named '{name}'")
            n = c.execute(delete(S.sessions).where(S.sessions.c.user_id == uid)).rowcount
            self._audit(c, actor, "user.signout", {"name": name, "sessions": n})
        return n

    def users(self) -> list[dict]:
        with self.read() as c:
            rows = c.execute(select(S.users.c.id, S.users.c.name, S.users.c.is_admin, S.users.c.active)
                             .order_by(S.users.c.id)).all()
        return [dict(r._mapping) for r in rows]

    def user(self, user_id: int) -> Optional[dict]:
        with self.read() as c:
            r = c.execute(Q_USER, {"user_id": user_id}).first()
        return dict(r._mapping) if r else None

    def check_login(self, name: str, password: str) -> Optional[dict]:
        """The user's row when the name and password match an active account, else None."""
        from werkzeug.security import check_password_hash

        with self.read() as c:
            r = c.execute(select(S.users).where(S.users.c.name == name)).first()
        if r is None:
            # Same work as a real check, so response time does not tell which names exist.
            check_password_hash(_DUMMY_HASH(), password)
            return None
        ok = check_password_hash(r.password_hash, password)
        return dict(r._mapping) if ok and r.active else None

    # -- projects ----------------------------------------------------------
    def create_project(self, name: str, *, mode: str, overlap: int, lease_seconds: int, strength: bool,
                       render: str, guidelines: str, items: list[ItemSpec], append: bool = False,
                       actor: str = "cli", order: str = "sequential", suggestions: bool = False) -> Project:
        if mode not in MODES:
            raise UserError(f"mode must be one of {', '.join(MODES)}, got '{mode}'")
        if order not in ORDERS:
            raise UserError(f"order must be one of {', '.join(ORDERS)}, got '{order}'")
        for spec in items:
            check_item(spec, mode)
        with self.write() as c:
            row = c.execute(select(S.projects).where(S.projects.c.name == name)).first()
            if row is not None and not append:
                raise UserError(f"project '{name}' already exists in this database (add --append to add items)")
            if row is not None and row.mode != mode:
                raise UserError(f"project '{name}' is a {row.mode} project; cannot append {mode} items")
            if row is None:
                pid = c.execute(insert(S.projects).values(
                    name=name, mode=mode, overlap=overlap, lease_seconds=lease_seconds, strength=strength,
                    render=render, guidelines=guidelines, created_at=time.time(), serve_order=order,
                    suggestions=suggestions)).inserted_primary_key[0]
                start = 0
            else:
                pid = row.id
                start = (c.execute(select(func.max(S.items.c.position)).where(S.items.c.project_id == pid))
                         .scalar() or 0) + 1
                if guidelines:
                    c.execute(update(S.projects).where(S.projects.c.id == pid).values(guidelines=guidelines))
            taken = set(c.execute(select(S.items.c.uid).where(S.items.c.project_id == pid)).scalars())
            for n, spec in enumerate(items):
                if spec.uid in taken:
                    raise UserError(f"item id '{spec.uid}' is already in project '{name}'")
                taken.add(spec.uid)
                item_id = c.execute(insert(S.items).values(
                    project_id=pid, uid=spec.uid, group_id=spec.group_id, position=start + n,
                    prompt=_dumps(spec.prompt), is_gold=spec.gold is not None,
                    gold=None if spec.gold is None else _dumps(spec.gold), done_count=0)).inserted_primary_key[0]
                models = spec.models or [None] * len(spec.responses)
                if spec.responses:  # a demonstration item may come without a draft
                    c.execute(insert(S.responses), [{"item_id": item_id, "idx": i, "text": t, "model": m}
                                                    for i, (t, m) in enumerate(zip(spec.responses, models))])
            self._audit(c, actor, "project.append" if row is not None else "project.create",
                        {"name": name, "mode": mode, "overlap": overlap, "items": len(items)})
        return self.project(name)

    def project_names(self) -> list[str]:
        with self.read() as c:
            return list(c.execute(select(S.projects.c.name).order_by(S.projects.c.id)).scalars())

    def project(self, name: str | None = None) -> Project:
        """The named project, or the only one in the database."""
        names = self.project_names()
        if name is None:
            if len(names) != 1:
                raise UserError("this database holds no project" if not names else
                                f"this database holds several projects ({', '.join(names)}): pick one with --project")
            name = names[0]
        with self.read() as c:
            r = c.execute(select(S.projects).where(S.projects.c.name == name)).first()
        if r is None:
            raise UserError(f"no project named '{name}' (have: {', '.join(names) or 'none'})")
        return Project(id=r.id, name=r.name, mode=r.mode, overlap=r.overlap, lease_seconds=r.lease_seconds,
                       strength=bool(r.strength), render=r.render, guidelines=r.guidelines or "",
                       order=r.serve_order, suggestions=bool(r.suggestions))

    def configure(self, project: Project, *, order: str | None = None, suggestions: bool | None = None,
                  actor: str = "cli") -> Project:
        """Change how a project hands out items (`order`) and whether annotators see AI suggestions."""
        if order is not None and order not in ORDERS:
            raise UserError(f"order must be one of {', '.join(ORDERS)}, got '{order}'")
        values = {k: v for k, v in (("serve_order", order), ("suggestions", suggestions)) if v is not None}
        if values:
            with self.write() as c:
                self._lock_project(c, project.id)
                old = c.execute(select(S.projects).where(S.projects.c.id == project.id)).one()
                c.execute(update(S.projects).where(S.projects.c.id == project.id).values(**values))
                self._audit(c, actor, "project.settings", {
                    "name": project.name, "before": {k: getattr(old, k) for k in values}, "after": values})
        return self.project(project.name)

    # -- acquisition scores and AI suggestions -----------------------------------
    def queue(self, project: Project, *, every: bool = False) -> list[Item]:
        """The items still to hand out (gold, or fewer than `overlap` votes), or `every` item, by position."""
        items = self.project_items(project).values()
        return [it for it in items if every or it.is_gold or it.done_count < project.overlap]

    def set_scores(self, project: Project, rows: list[dict], *, source: str, actor: str = "cli",
                   now: float | None = None) -> int:
        """Store each row's `margin`, `spread`, `information` and `suggestion` for its `item_id` (replacing older ones)."""
        now = time.time() if now is None else now
        s = S.item_scores
        with self.write() as c:
            self._lock_project(c, project.id)
            ids = [r["item_id"] for r in rows]
            mine = set(c.execute(select(_i.c.id).where(_i.c.project_id == project.id, _i.c.id.in_(ids))).scalars())
            if len(mine) != len(set(ids)):
                raise UserError("scores for items of another project")
            if ids:
                c.execute(delete(s).where(s.c.item_id.in_(ids)))
                c.execute(insert(s), [{"item_id": r["item_id"], "margin": float(r["margin"]),
                                       "spread": None if r.get("spread") is None else float(r["spread"]),
                                       "information": None if r.get("information") is None
                                       else float(r["information"]),
                                       "suggestion": None if r.get("suggestion") is None else _dumps(r["suggestion"]),
                                       "source": source[:512], "scored_at": now} for r in rows])
            self._audit(c, actor, "project.rescore", {"name": project.name, "items": len(rows), "source": source},
                        now=now)
        return len(rows)

    def scores(self, project: Project) -> dict[int, dict]:
        """Every stored score of the project by item id: margin, spread, information, suggestion, source, scored_at."""
        s = S.item_scores
        with self.read() as c:
            rows = c.execute(select(s).join(_i, _i.c.id == s.c.item_id).where(_i.c.project_id == project.id)).all()
        return {r.item_id: _score_dict(r) for r in rows}

    def score(self, item_id: int) -> Optional[dict]:
        with self.read() as c:
            r = c.execute(select(S.item_scores).where(S.item_scores.c.item_id == item_id)).first()
        return _score_dict(r) if r else None

    def suggestions_on(self, project: Project) -> bool:
        """Whether annotators see suggestions, as stored now (changed while the app runs, too)."""
        with self.read() as c:
            return bool(c.execute(select(S.projects.c.suggestions).where(S.projects.c.id == project.id)).scalar())

    def item(self, item_id: int) -> Optional[Item]:
        with self.read() as c:
            r = c.execute(Q_ITEM, {"item_id": item_id}).first()
            if r is None:
                return None
            resp = c.execute(Q_RESPONSES, {"item_id": item_id}).all()
        return Item(id=r.id, uid=r.uid, group_id=r.group_id, position=r.position, prompt=json.loads(r.prompt),
                    responses=[x.text for x in resp], models=[x.model for x in resp], is_gold=bool(r.is_gold),
                    gold=json.loads(r.gold) if r.gold else None, done_count=r.done_count)

    def item_project(self, item_id: int) -> Optional[int]:
        """The id of the project an item belongs to (None: no such item)."""
        with self.read() as c:
            return c.execute(select(_i.c.project_id).where(_i.c.id == item_id)).scalar()

    def item_view(self, item_id: int) -> Optional[Item]:
        """`item` from a cache: what an item shows never changes (its `done_count` here may be stale)."""
        item = self._items.get(item_id)
        if item is None:
            item = self.item(item_id)
            if item is not None and len(self._items) < 100_000:
                self._items[item_id] = item
        return item

    # -- leases ------------------------------------------------------------
    def _has_room(self, c: Connection, project: Project, state, item_id: int, user_id: int, now: float) -> bool:
        """Whether one more vote fits the item: gold, or done + others' live leases < overlap."""
        if state.is_gold:
            return True
        others = c.execute(Q_OTHERS_LEASING, {"item_id": item_id, "user_id": user_id, "now": now}).scalar_one()
        return state.done_count + others < project.overlap

    def current_task(self, project: Project, user_id: int) -> Optional[int]:
        """The item this user holds a lease on (expired or not), without changing anything."""
        with self.read() as c:
            return c.execute(Q_HELD, {"user_id": user_id, "project_id": project.id}).scalar()

    def lease_next(self, project: Project, user_id: int, *, now: float | None = None) -> Optional[int]:
        """Lease the next item for this user (or renew the one held); None when nothing is left."""
        now = time.time() if now is None else now
        with self.write() as c:
            self._lock_project(c, project.id)
            return self._lease(c, project, user_id, now)

    def _lease(self, c: Connection, project: Project, user_id: int, now: float) -> Optional[int]:
        expires = now + project.lease_seconds
        for h in c.execute(Q_HELD, {"user_id": user_id, "project_id": project.id}).all():
            state = c.execute(Q_ITEM_STATE, {"item_id": h.item_id}).one()
            if h.expires_at > now or self._has_room(c, project, state, h.item_id, user_id, now):
                c.execute(U_RENEW, {"aid": h.id, "exp": expires})
                return h.item_id
            c.execute(D_LEASE, {"aid": h.id})  # lost to others while away
        # The order as stored now: `rlhf label` commands may change it while the app runs.
        order = c.execute(Q_ORDER, {"project_id": project.id}).scalar()
        item_id = c.execute(Q_NEXT.get(order, Q_NEXT["sequential"]),
                            {"project_id": project.id, "user_id": user_id, "now": now,
                             "overlap": project.overlap}).scalar()
        if item_id is not None:
            c.execute(I_LEASE, {"item_id": item_id, "user_id": user_id, "state": "leased", "leased_at": now,
                                "expires_at": expires})
        return item_id

    # -- labels ------------------------------------------------------------
    def submit(self, project: Project, user: dict, item_id: int, answer: Answer, *, shown: list[int],
               seconds: float | None = None, now: float | None = None) -> dict:
        """Store this user's label for the item: new, changed, or the same again (a no-op).

        Returns the label row with `changed` (False for an identical resubmission).
        Raises `Refused` for an item not leased to the user, or one whose lease
        expired after others filled it (that stale lease is dropped).
        """
        return self.submit_and_lease(project, user, item_id, answer, shown=shown, seconds=seconds, now=now,
                                     lease=False)[0]

    def submit_and_lease(self, project: Project, user: dict, item_id: int, answer: Answer, *, shown: list[int],
                         seconds: float | None = None, now: float | None = None,
                         lease: bool = True) -> tuple[dict, Optional[int]]:
        """`submit`, then lease the user's next item in the same transaction: (label, next item id)."""
        now = time.time() if now is None else now
        nxt = None
        with self.write() as c:
            self._lock_project(c, project.id)
            result = self._submit(c, project, user, item_id, answer, shown, seconds, now)
            if lease and not isinstance(result, Refused):
                nxt = self._lease(c, project, user["id"], now)
        # Raised after the commit: a refusal may still have cleaned up a stale lease.
        if isinstance(result, Refused):
            raise result
        return result, nxt

    def _submit(self, c: Connection, project: Project, user: dict, item_id: int, answer: Answer,
                shown: list[int], seconds: float | None, now: float):
        state = c.execute(Q_ITEM_STATE, {"item_id": item_id}).first()
        if state is None or state.project_id != project.id:
            raise Refused(404, "no such item in this project")
        check_answer(project, state.k, answer)
        if sorted(shown) != list(range(state.k)):
            raise Refused(400, "shown order is not a permutation of the responses")
        key = {"item_id": item_id, "user_id": user["id"]}
        old = c.execute(Q_LABEL, key).first()
        lease = c.execute(Q_LEASE, key).first()
        if old is None and (lease is None or lease.state != "leased"):
            raise Refused(403, "this item is not assigned to you")
        votes = answer.choice != "skip"
        was_vote = old is not None and old.choice != "skip"
        # A live lease holds a slot of its own; otherwise check one is free.
        live = old is None and lease.expires_at > now
        if votes and not was_vote and not live and not self._has_room(c, project, state, item_id, user["id"], now):
            # The lease ran out and others filled the item meanwhile: keep the target exact.
            if old is None:
                c.execute(D_LEASE, {"aid": lease.id})
            return Refused(409, "your lease on this item expired and it has been labelled by others")
        after = {"choice": answer.choice, "ranking": answer.ranking, "strength": answer.strength,
                 "comment": answer.comment, "flagged": bool(answer.flagged), "reason": answer.reason}
        if answer.text is not None:  # demonstrations only: other labels' audit rows stay as they were
            after["text"] = answer.text
        values = {"choice": answer.choice, "ranking": None if answer.ranking is None else _dumps(answer.ranking),
                  "strength": answer.strength, "comment": answer.comment, "flagged": bool(answer.flagged),
                  "reason": answer.reason, "text": answer.text, "shown": _dumps(shown), "seconds": seconds,
                  "updated_at": now}
        before = None
        if old is not None:
            before = _answer_dict(old)
            if before == after:
                return {**_label_dict(old), "changed": False}
            c.execute(U_LABEL, {"lid": old.id, **values})
            label_id, created, action = old.id, old.created_at, "label.update"
        else:
            label_id = c.execute(I_LABEL, {**key, **values, "created_at": now}).inserted_primary_key[0]
            created, action = now, "label.create"
        c.execute(U_STATE, {"iid": item_id, "uid": user["id"], "state": "done" if votes else "skipped"})
        if votes != was_vote:
            c.execute(U_DONE, {"iid": item_id, "delta": 1 if votes else -1})
        c.execute(I_AUDIT, {"at": now, "actor": user["name"], "action": action, "item_id": item_id,
                            "label_id": label_id, "detail": _dumps({"before": before, "after": after})})
        return {"id": label_id, **key, **values, "ranking": answer.ranking, "shown": list(shown),
                "created_at": created, "changed": True}

    def undo_last(self, project: Project, user: dict, *, now: float | None = None) -> Optional[int]:
        """Take back this user's latest label in the project: it is deleted (audited) and its item is
        leased to them again, first in line. Returns that item's id, or None when there is nothing to undo."""
        now = time.time() if now is None else now
        with self.write() as c:
            self._lock_project(c, project.id)
            last = c.execute(select(_l).join(_i, _i.c.id == _l.c.item_id)
                             .where(_l.c.user_id == user["id"], _i.c.project_id == project.id)
                             .order_by(_l.c.updated_at.desc(), _l.c.id.desc()).limit(1)).first()
            if last is None:
                return None
            c.execute(delete(_l).where(_l.c.id == last.id))
            if last.choice != "skip":
                c.execute(U_DONE, {"iid": last.item_id, "delta": -1})
            # Back to a live lease, newest, so it is the task shown next; it holds the slot the vote held.
            c.execute(U_STATE.values(state="leased", leased_at=now, expires_at=now + project.lease_seconds),
                      {"iid": last.item_id, "uid": user["id"]})
            before = _answer_dict(last)
            c.execute(I_AUDIT, {"at": now, "actor": user["name"], "action": "label.undo", "item_id": last.item_id,
                                "label_id": last.id, "detail": _dumps({"before": before, "after": None})})
            return last.item_id

    def label(self, label_id: int) -> Optional[dict]:
        with self.read() as c:
            r = c.execute(select(S.labels).where(S.labels.c.id == label_id)).first()
        return _label_dict(r) if r else None

    def label_for(self, item_id: int, user_id: int) -> Optional[dict]:
        with self.read() as c:
            r = c.execute(select(S.labels).where(S.labels.c.item_id == item_id, S.labels.c.user_id == user_id)).first()
        return _label_dict(r) if r else None

    def labels_of(self, project: Project, user_id: int) -> list[dict]:
        """One annotator's labels in this project, newest first, with the item's uid."""
        lab, i = S.labels, S.items
        with self.read() as c:
            rows = c.execute(select(lab, i.c.uid).join(i, i.c.id == lab.c.item_id)
                             .where(lab.c.user_id == user_id, i.c.project_id == project.id)
                             .order_by(lab.c.updated_at.desc(), lab.c.id.desc())).all()
        return [_label_dict(r) for r in rows]

    def project_labels(self, project: Project) -> list[dict]:
        """Every label of the project with annotator name and item fields (for stats and export)."""
        lab, i, u = S.labels, S.items, S.users
        with self.read() as c:
            rows = c.execute(select(lab, u.c.name.label("annotator"), i.c.uid, i.c.group_id, i.c.is_gold,
                                    i.c.gold).join(i, i.c.id == lab.c.item_id).join(u, u.c.id == lab.c.user_id)
                             .where(i.c.project_id == project.id).order_by(i.c.position, lab.c.id)).all()
        out = []
        for r in rows:
            d = _label_dict(r)
            d["gold"] = json.loads(r.gold) if r.gold else None
            d["is_gold"] = bool(r.is_gold)
            out.append(d)
        return out

    def project_items(self, project: Project) -> dict[int, Item]:
        """Every item of the project by id, with its responses (for export)."""
        i, r = S.items, S.responses
        with self.read() as c:
            rows = c.execute(select(i).where(i.c.project_id == project.id).order_by(i.c.position)).all()
            resp = c.execute(select(r.c.item_id, r.c.text, r.c.model).join(i, i.c.id == r.c.item_id)
                             .where(i.c.project_id == project.id).order_by(r.c.item_id, r.c.idx)).all()
        texts: dict[int, list] = {}
        for x in resp:
            texts.setdefault(x.item_id, []).append((x.text, x.model))
        return {row.id: Item(id=row.id, uid=row.uid, group_id=row.group_id, position=row.position,
                             prompt=json.loads(row.prompt), responses=[t for t, _ in texts.get(row.id, [])],
                             models=[m for _, m in texts.get(row.id, [])], is_gold=bool(row.is_gold),
                             gold=json.loads(row.gold) if row.gold else None, done_count=row.done_count)
                for row in rows}

    # -- adjudication --------------------------------------------------------
    def decide(self, project: Project, admin: dict, item_id: int, answer: Answer, *, note: str | None = None,
               now: float | None = None) -> dict:
        """Store an admin's decision on an item, beside its votes (which stay); it replaces them on export."""
        now = time.time() if now is None else now
        if answer.choice == "skip":
            raise Refused(400, "a decision cannot be a skip (remove the decision instead)")
        if note is not None and (not isinstance(note, str) or len(note) > MAX_COMMENT):
            raise Refused(400, f"note: text of at most {MAX_COMMENT} characters")
        with self.write() as c:
            self._lock_project(c, project.id)
            state = c.execute(Q_ITEM_STATE, {"item_id": item_id}).first()
            if state is None or state.project_id != project.id:
                raise Refused(404, "no such item in this project")
            check_answer(project, state.k, answer)
            d = S.decisions
            old = c.execute(select(d).where(d.c.item_id == item_id)).first()
            values = {"user_id": admin["id"], "choice": answer.choice, "text": answer.text, "note": note or None,
                      "ranking": None if answer.ranking is None else _dumps(answer.ranking), "updated_at": now}
            after = {"choice": answer.choice, "ranking": answer.ranking, "text": answer.text, "note": note or None}
            before = None
            if old is None:
                c.execute(insert(d).values(item_id=item_id, created_at=now, **values))
            else:
                before = {"choice": old.choice, "ranking": json.loads(old.ranking) if old.ranking else None,
                          "text": old.text, "note": old.note}
                c.execute(update(d).where(d.c.id == old.id).values(**values))
            self._audit(c, admin["name"], "decision.update" if old else "decision.create",
                        {"before": before, "after": after}, item_id=item_id, now=now)
        return after

    def undecide(self, project: Project, admin: dict, item_id: int) -> bool:
        """Remove the decision on an item (its votes count again); False if there was none."""
        d = S.decisions
        with self.write() as c:
            self._lock_project(c, project.id)
            old = c.execute(select(d).join(_i, _i.c.id == d.c.item_id)
                            .where(d.c.item_id == item_id, _i.c.project_id == project.id)).first()
            if old is None:
                return False
            c.execute(delete(d).where(d.c.id == old.id))
            self._audit(c, admin["name"], "decision.delete", {"before": {
                "choice": old.choice, "ranking": json.loads(old.ranking) if old.ranking else None,
                "text": old.text, "note": old.note}, "after": None}, item_id=item_id)
        return True

    def decisions(self, project: Project) -> dict[int, dict]:
        """Every decision in the project by item id: choice, ranking, text, note, admin, updated_at."""
        d, i, u = S.decisions, S.items, S.users
        with self.read() as c:
            rows = c.execute(select(d, u.c.name.label("admin")).join(i, i.c.id == d.c.item_id)
                             .join(u, u.c.id == d.c.user_id).where(i.c.project_id == project.id)).all()
        return {r.item_id: {"item_id": r.item_id, "choice": r.choice, "text": r.text, "note": r.note,
                            "ranking": json.loads(r.ranking) if r.ranking else None, "admin": r.admin,
                            "updated_at": r.updated_at} for r in rows}

    def progress(self, project: Project, user_id: int | None = None, *, now: float | None = None) -> dict:
        now = time.time() if now is None else now
        i, lab, a = S.items, S.labels, S.assignments
        with self.read() as c:
            regular = c.execute(select(func.count(), func.coalesce(func.sum(i.c.done_count), 0)).where(
                i.c.project_id == project.id, ~i.c.is_gold)).one()
            complete = c.execute(select(func.count()).where(
                i.c.project_id == project.id, ~i.c.is_gold, i.c.done_count >= project.overlap)).scalar_one()
            gold = c.execute(select(func.count()).where(i.c.project_id == project.id, i.c.is_gold)).scalar_one()
            leased = c.execute(select(func.count()).select_from(a).join(i, i.c.id == a.c.item_id).where(
                i.c.project_id == project.id, a.c.state == "leased", a.c.expires_at > now)).scalar_one()
            out = {"items": regular[0], "gold_items": gold, "complete": complete, "votes": int(regular[1]),
                   "target_votes": regular[0] * project.overlap, "active_leases": leased}
            if user_id is not None:
                # Items this user may still be given: gold or not yet full, and not had before.
                out["left"] = c.execute(select(func.count()).where(
                    i.c.project_id == project.id, or_(i.c.is_gold, i.c.done_count < project.overlap),
                    ~exists().where(a.c.item_id == i.c.id, a.c.user_id == user_id, a.c.state != "leased"))
                ).scalar_one()
                by_choice = c.execute(select(lab.c.choice == "skip", func.count()).select_from(lab)
                                      .join(i, i.c.id == lab.c.item_id)
                                      .where(i.c.project_id == project.id, lab.c.user_id == user_id)
                                      .group_by(lab.c.choice == "skip")).all()
                counts = {bool(skip): n for skip, n in by_choice}
                out["mine"] = counts.get(False, 0)  # votes
                out["labelled"] = out["mine"] + counts.get(True, 0)  # with skips
        return out

    def audit_log(self, limit: int = 1000) -> list[dict]:
        with self.read() as c:
            rows = c.execute(select(S.audit).order_by(S.audit.c.id.desc()).limit(limit)).all()
        return [{**dict(r._mapping), "detail": json.loads(r.detail)} for r in rows]


def _score_dict(r) -> dict:
    return {"item_id": r.item_id, "margin": r.margin, "spread": r.spread, "information": r.information,
            "suggestion": json.loads(r.suggestion) if r.suggestion else None, "source": r.source,
            "scored_at": r.scored_at}


def _answer_dict(r) -> dict:
    """A stored label's answer, as the audit log records it."""
    out = {"choice": r.choice, "ranking": json.loads(r.ranking) if r.ranking else None, "strength": r.strength,
           "comment": r.comment, "flagged": bool(r.flagged), "reason": r.reason}
    if r.text is not None:
        out["text"] = r.text
    return out


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _label_dict(r) -> dict:
    d = dict(r._mapping)
    d["ranking"] = json.loads(d["ranking"]) if d.get("ranking") else None
    d["shown"] = json.loads(d["shown"]) if d.get("shown") else None
    return d


_dummy: list[str] = []


def _DUMMY_HASH() -> str:
    from werkzeug.security import generate_password_hash

    if not _dummy:
        _dummy.append(generate_password_hash(secrets.token_hex(8)))
    return _dummy[0]


def check_user_name(name: str) -> None:
    if not name or len(name) > 64 or not all(ch.isalnum() or ch in "._-@" for ch in name):
        raise UserError(f"user name '{name}': use 1-64 letters, digits and . _ - @")


def check_password(password: str) -> None:
    if len(password) < 8:
        raise UserError("password: at least 8 characters")


def check_item(spec: ItemSpec, mode: str) -> None:
    k = len(spec.responses)
    if mode == "thumbs":
        if k != 1:
            raise UserError(f"item {spec.uid}: a thumbs item has exactly 1 response, got {k}")
        if spec.gold not in (None, "up", "down"):
            raise UserError(f"item {spec.uid}: a thumbs gold answer is 'up' or 'down', got {spec.gold!r}")
        return
    if mode == "demonstration":
        if k > 1:
            raise UserError(f"item {spec.uid}: a demonstration item has at most 1 response (a draft), got {k}")
        if spec.gold is not None:
            raise UserError(f"item {spec.uid}: demonstration items have no gold answers")
        return
    if mode == "pairwise" and k != 2:
        raise UserError(f"item {spec.uid}: a pairwise item needs exactly 2 responses, got {k}")
    if mode == "ranking" and k < 2:
        raise UserError(f"item {spec.uid}: a ranking item needs at least 2 responses, got {k}")
    if len(set(spec.responses)) != k:
        raise UserError(f"item {spec.uid}: two of its responses are identical")
    if spec.gold is None:
        return
    if mode == "pairwise" and spec.gold not in ("a", "b"):
        raise UserError(f"item {spec.uid}: a pairwise gold answer is 'a' or 'b', got {spec.gold!r}")
    if mode == "ranking" and (not isinstance(spec.gold, list) or sorted(spec.gold) != list(range(k))):
        raise UserError(f"item {spec.uid}: a ranking gold answer lists every response index once, got {spec.gold!r}")


def check_answer(project: Project, k: int, ans: Answer) -> None:
    """Raise `Refused(400)` unless the answer fits the project's mode."""
    if ans.comment is not None and (not isinstance(ans.comment, str) or len(ans.comment) > MAX_COMMENT):
        raise Refused(400, f"comment: text of at most {MAX_COMMENT} characters")
    if ans.reason is not None and (ans.choice != "skip" or ans.reason not in SKIP_REASONS):
        raise Refused(400, f"reason goes only with a skip and is one of {', '.join(SKIP_REASONS)}")
    if ans.text is not None and ans.choice != "write":
        raise Refused(400, "text goes only with a demonstration (choice write)")
    if project.mode in ("thumbs", "demonstration"):
        choices = THUMB_CHOICES if project.mode == "thumbs" else DEMO_CHOICES
        if ans.choice not in choices:
            raise Refused(400, f"choice must be one of {', '.join(choices)}")
        if ans.ranking is not None or ans.strength is not None:
            raise Refused(400, f"a {project.mode} label has no ranking and no strength")
        if ans.choice == "write" and (not isinstance(ans.text, str) or not ans.text.strip()
                                      or len(ans.text) > MAX_TEXT):
            raise Refused(400, f"text: the response you wrote, 1 to {MAX_TEXT} characters")
        return
    if project.mode == "pairwise":
        if ans.choice not in PAIR_CHOICES:
            raise Refused(400, f"choice must be one of {', '.join(PAIR_CHOICES)}")
        if ans.ranking is not None:
            raise Refused(400, "a pairwise label has no ranking")
        if ans.strength is not None and (not project.strength or ans.choice not in ("a", "b")):
            raise Refused(400, "strength goes only with a choice of A or B")
        if ans.strength is not None and ans.strength not in (1, 2, 3):
            raise Refused(400, "strength must be 1, 2 or 3")
        return
    if ans.choice in ("skip", "all_bad"):
        if ans.ranking is not None:
            raise Refused(400, f"{ans.choice} has no ranking")
    elif ans.choice != "rank":
        raise Refused(400, f"choice must be one of {', '.join(RANK_CHOICES)}")
    elif not _valid_ranking(ans.ranking, k):
        raise Refused(400, f"ranking must list each of the {k} responses once (tied ones together in a list)")
    if ans.strength is not None:
        raise Refused(400, "a ranking has no strength")


def _valid_ranking(ranking, k: int) -> bool:
    if not isinstance(ranking, list) or not ranking:
        return False
    ok = all((isinstance(p, int) and not isinstance(p, bool)) or
             (isinstance(p, list) and len(p) >= 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in p))
             for p in ranking)
    return ok and sorted(x for p in places(ranking) for x in p) == list(range(k))
