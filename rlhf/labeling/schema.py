"""The labeling database: tables in SQLAlchemy Core, portable to SQLite and PostgreSQL.

Times are UNIX seconds (floats) so every backend stores them the same way.
Answers are stored in the item's own terms, never in the order an annotator
saw: response `idx` 0, 1, ... as created. A pairwise choice is `a` (response 0
better), `b` (response 1 better), `tie`, `both_bad` or `skip`. A ranking has
choice `rank` and a JSON list of places, best first: a place is a response
index, or a list of indices the annotator tied (`[2, [0, 1], 3]`); a ranking
whose responses are all bad is choice `all_bad` with no list. A thumbs
label is `up`, `down` or `skip` on the item's one response; a demonstration
is choice `write` with the annotator's response in `text` (or `skip`).

A project hands out its items in its `serve_order`: `sequential` (by position),
`random`, or an acquisition order read from `item_scores`, which `rlhf label
rescore` fills from reward models (or a judge) in another process: the web
process only sorts by the stored numbers. The same row holds the model's
suggested answer, shown to annotators only where the project's
`suggestions` is on.

An admin's adjudication of an item the annotators disagree on is a row of
`decisions`, in the same terms as a label, kept beside the votes (which stay
as they were); an export gives the decision in place of that item's votes.
"""

from __future__ import annotations

from sqlalchemy import (Boolean, Column, Float, ForeignKey, Index, Integer, MetaData, String, Table, Text,
                        UniqueConstraint, false)

SCHEMA_VERSION = "5"

metadata = MetaData()

# Key/value settings of the whole database: schema version, the session secret.
meta = Table(
    "meta", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

users = Table(
    "users", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("password_hash", String(256), nullable=False),
    Column("is_admin", Boolean, nullable=False, default=False),
    Column("active", Boolean, nullable=False, default=True),
    Column("created_at", Float, nullable=False),
)

# Logged-in sessions, server side so they can be ended: logout, a disabled
# account, a new password and "sign out everywhere" delete rows here. The
# browser's cookie holds the token; the table holds only its SHA-256.
sessions = Table(
    "sessions", metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("address", String(64), nullable=True),
    Index("ix_sessions_user", "user_id"),
)

projects = Table(
    "projects", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("mode", String(16), nullable=False),  # pairwise | ranking | thumbs | demonstration
    Column("overlap", Integer, nullable=False),  # annotators per (non-gold) item
    Column("lease_seconds", Integer, nullable=False),
    Column("strength", Boolean, nullable=False),  # ask how strong a pairwise preference is
    Column("render", String(16), nullable=False),  # markdown | text
    Column("guidelines", Text, nullable=False, default=""),
    Column("created_at", Float, nullable=False),
    # which item is handed out next: sequential | random | uncertainty | disagreement | information (store.ORDERS)
    Column("serve_order", String(16), nullable=False, server_default="sequential"),
    Column("suggestions", Boolean, nullable=False, server_default=false()),  # show annotators the AI's suggestion
)

items = Table(
    "items", metadata,
    Column("id", Integer, primary_key=True),
    Column("project_id", Integer, ForeignKey("projects.id"), nullable=False),
    Column("uid", String(128), nullable=False),  # stable id from the source file (or made up)
    Column("group_id", String(128), nullable=False),  # items sharing a prompt share a group
    Column("position", Integer, nullable=False),  # order in which items are handed out
    Column("prompt", Text, nullable=False),  # JSON: a string or a list of messages
    Column("is_gold", Boolean, nullable=False, default=False),
    Column("gold", Text, nullable=True),  # JSON answer in item terms: "a"/"b" or a ranking
    # Non-skip labels so far: kept in the same transaction as the labels, it
    # lets the next-task query pass over finished items without counting.
    Column("done_count", Integer, nullable=False, default=0),
    UniqueConstraint("project_id", "uid"),
    Index("ix_items_project_position", "project_id", "position"),
)

responses = Table(
    "responses", metadata,
    Column("id", Integer, primary_key=True),
    Column("item_id", Integer, ForeignKey("items.id"), nullable=False),
    Column("idx", Integer, nullable=False),
    Column("text", Text, nullable=False),
    Column("model", String(256), nullable=True),  # never shown to annotators
    UniqueConstraint("item_id", "idx"),
)

# A lease: who is working on what. `leased` until the label arrives (then
# `done`, or `skipped`); a lease past `expires_at` no longer holds a slot.
assignments = Table(
    "assignments", metadata,
    Column("id", Integer, primary_key=True),
    Column("item_id", Integer, ForeignKey("items.id"), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("state", String(16), nullable=False),
    Column("leased_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    UniqueConstraint("item_id", "user_id"),
    Index("ix_assignments_user_state", "user_id", "state"),
)

labels = Table(
    "labels", metadata,
    Column("id", Integer, primary_key=True),
    Column("item_id", Integer, ForeignKey("items.id"), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("choice", String(16), nullable=False),  # a | b | tie | both_bad | skip | rank | all_bad | up | down | write
    Column("ranking", Text, nullable=True),  # JSON list of places, best first: idx, or a list of tied idx
    Column("text", Text, nullable=True),  # a demonstration: the response the annotator wrote or edited
    Column("strength", Integer, nullable=True),  # 1 slightly, 2 clearly, 3 much better
    Column("shown", Text, nullable=False),  # JSON list of response idx in the order shown
    Column("seconds", Float, nullable=True),  # time from page load to answer, as the browser measured
    Column("comment", Text, nullable=True),  # the annotator's note; for a skip, why
    Column("flagged", Boolean, nullable=False, default=False),  # "flag this item" for an admin to look at
    Column("reason", String(16), nullable=True),  # why skipped: one of store.SKIP_REASONS
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("item_id", "user_id"),
    # An undone label's id is never reused, so the audit log's label ids stay unambiguous.
    sqlite_autoincrement=True,
)

# What a reward model (or an ensemble, or a judge) thinks of an item, written by `rlhf label rescore`.
item_scores = Table(
    "item_scores", metadata,
    Column("item_id", Integer, ForeignKey("items.id"), primary_key=True),
    # pairwise: r(response 0) - r(response 1); ranking: the smallest gap between two responses; thumbs: r
    Column("margin", Float, nullable=False),
    Column("spread", Float, nullable=True),  # how much ensemble members disagree on that margin (std); one model: None
    Column("information", Float, nullable=True),  # what a label would tell about which member is right (BALD, nats)
    Column("suggestion", Text, nullable=True),  # JSON answer in item terms, as `items.gold`
    Column("source", String(512), nullable=False),  # the reward-model folders or the judge spec
    Column("scored_at", Float, nullable=False),
)

# An admin's decision on an item the annotators disagree on: one per item, in a label's terms.
decisions = Table(
    "decisions", metadata,
    Column("id", Integer, primary_key=True),
    Column("item_id", Integer, ForeignKey("items.id"), nullable=False, unique=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),  # the admin who decided
    Column("choice", String(16), nullable=False),
    Column("ranking", Text, nullable=True),
    Column("text", Text, nullable=True),
    Column("note", Text, nullable=True),  # why, for the other admins
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# Every change to labels, accounts and projects, with the values before and after.
audit = Table(
    "audit", metadata,
    Column("id", Integer, primary_key=True),
    Column("at", Float, nullable=False),
    Column("actor", String(64), nullable=True),  # user name, or "cli"
    Column("action", String(32), nullable=False),
    Column("item_id", Integer, nullable=True),
    Column("label_id", Integer, nullable=True),
    Column("detail", Text, nullable=False),  # JSON
)
