"""The labeling store: leases meet the overlap target exactly, labels are idempotent and audited."""

import json
import os
import subprocess
import sys

import pytest

from rlhf.errors import UserError
from rlhf.labeling.export import preference_rows
from rlhf.labeling.sources import interleave, read_items
from rlhf.labeling.store import Answer, ItemSpec, Refused, Store

FAST = "pbkdf2:sha256:1000"  # cheap hashes keep the tests quick; the app's default is scrypt


def fresh_db(tmp_path, name="p.db") -> str:
    """A new, empty database: SQLite in tmp_path, or the PostgreSQL named by $RLHF_TEST_POSTGRES, wiped."""
    url = os.environ.get("RLHF_TEST_POSTGRES")
    if not url:
        return str(tmp_path / name)
    from sqlalchemy import create_engine

    from rlhf.labeling.schema import metadata

    engine = create_engine(url)
    metadata.drop_all(engine)
    engine.dispose()
    return url


def make_store(tmp_path, n_items=3, overlap=2, mode="pairwise", k=2, gold=(), lease=60, strength=True):
    store = Store(fresh_db(tmp_path), create=True)
    items = [ItemSpec(f"i{n}", f"g{n}", f"prompt {n}", [f"r{n}.{j}" for j in range(k)]) for n in range(n_items)]
    items += [ItemSpec(f"gold{n}", f"gold{n}", f"gold prompt {n}", [f"good {n}", f"bad {n}"], gold=g)
              for n, g in enumerate(gold)]
    project = store.create_project("p", mode=mode, overlap=overlap, lease_seconds=lease, strength=strength,
                                   render="markdown", guidelines="", items=items)
    users = {}
    for name in ("ann", "bo", "cy"):
        store.add_user(name, "password1", hash_method=FAST)
        users[name] = next(u for u in store.users() if u["name"] == name) | {"name": name}
    return store, project, users


def uid_of(store, item_id):
    return store.item(item_id).uid


def test_overlap_is_met_by_leases_not_overshot(tmp_path):
    store, p, u = make_store(tmp_path, n_items=2, overlap=2)
    a = store.lease_next(p, u["ann"]["id"], now=0)
    b = store.lease_next(p, u["bo"]["id"], now=0)
    c = store.lease_next(p, u["cy"]["id"], now=0)
    # i0 has two leases (its overlap), so the third annotator gets i1
    assert (uid_of(store, a), uid_of(store, b), uid_of(store, c)) == ("i0", "i0", "i1")
    # asking again renews the held lease instead of taking another item
    assert store.lease_next(p, u["ann"]["id"], now=1) == a
    assert store.current_task(p, u["ann"]["id"]) == a


def test_expired_lease_frees_the_slot_and_late_label_is_refused(tmp_path):
    store, p, u = make_store(tmp_path, n_items=1, overlap=2, lease=60)
    item = store.lease_next(p, u["ann"]["id"], now=0)
    assert store.lease_next(p, u["bo"]["id"], now=0) == item
    assert store.lease_next(p, u["cy"]["id"], now=30) is None  # both slots leased
    # ann's lease runs out at t=60; at t=100 cy takes the slot
    assert store.lease_next(p, u["cy"]["id"], now=100) == item
    store.submit(p, u["bo"], item, Answer("a"), shown=[0, 1], now=101)
    store.submit(p, u["cy"], item, Answer("b"), shown=[1, 0], now=102)
    with pytest.raises(Refused) as e:
        store.submit(p, u["ann"], item, Answer("a"), shown=[0, 1], now=103)
    assert e.value.status == 409
    assert store.item(item).done_count == 2
    assert store.current_task(p, u["ann"]["id"]) is None  # the stale lease is gone


def test_late_label_is_kept_when_a_slot_is_still_free(tmp_path):
    store, p, u = make_store(tmp_path, n_items=1, overlap=2, lease=60)
    item = store.lease_next(p, u["ann"]["id"], now=0)
    label = store.submit(p, u["ann"], item, Answer("b", strength=3), shown=[0, 1], now=500)
    assert label["changed"] and label["choice"] == "b" and label["strength"] == 3
    assert store.item(item).done_count == 1


def test_resubmission_is_idempotent_and_changes_are_audited(tmp_path):
    store, p, u = make_store(tmp_path)
    item = store.lease_next(p, u["ann"]["id"])
    first = store.submit(p, u["ann"], item, Answer("a", strength=2), shown=[1, 0])
    again = store.submit(p, u["ann"], item, Answer("a", strength=2), shown=[1, 0])
    assert first["id"] == again["id"] and not again["changed"]
    changed = store.submit(p, u["ann"], item, Answer("tie"), shown=[1, 0])
    assert changed["id"] == first["id"] and changed["choice"] == "tie" and changed["strength"] is None
    labels = store.project_labels(p)
    assert len(labels) == 1 and store.item(item).done_count == 1
    log = [e for e in store.audit_log() if e["action"].startswith("label.")]
    assert [e["action"] for e in log] == ["label.update", "label.create"]  # newest first; no row for the no-op
    none = {"comment": None, "flagged": False, "reason": None}
    assert log[0]["detail"] == {"before": {"choice": "a", "ranking": None, "strength": 2, **none},
                                "after": {"choice": "tie", "ranking": None, "strength": None, **none}}
    assert log[0]["actor"] == "ann"


def test_only_leased_items_can_be_labelled(tmp_path):
    store, p, u = make_store(tmp_path)
    item = store.lease_next(p, u["ann"]["id"])
    with pytest.raises(Refused) as e:
        store.submit(p, u["bo"], item, Answer("a"), shown=[0, 1])
    assert e.value.status == 403
    with pytest.raises(Refused) as e:
        store.submit(p, u["ann"], 10_000, Answer("a"), shown=[0, 1])
    assert e.value.status == 404


@pytest.mark.parametrize("answer", [Answer("left"), Answer("rank", ranking=[0, 1]), Answer("tie", strength=2),
                                    Answer("a", strength=4)])
def test_bad_pairwise_answers_are_refused(tmp_path, answer):
    store, p, u = make_store(tmp_path)
    item = store.lease_next(p, u["ann"]["id"])
    with pytest.raises(Refused) as e:
        store.submit(p, u["ann"], item, answer, shown=[0, 1])
    assert e.value.status == 400
    assert store.project_labels(p) == []


def test_skip_frees_the_slot_for_someone_else(tmp_path):
    store, p, u = make_store(tmp_path, n_items=1, overlap=1)
    item = store.lease_next(p, u["ann"]["id"])
    assert store.lease_next(p, u["bo"]["id"]) is None
    store.submit(p, u["ann"], item, Answer("skip"), shown=[0, 1])
    assert store.item(item).done_count == 0
    assert store.lease_next(p, u["bo"]["id"]) == item
    assert store.lease_next(p, u["ann"]["id"]) is None  # a skipped item does not come back


def test_gold_items_go_to_everyone(tmp_path):
    store, p, u = make_store(tmp_path, n_items=0, overlap=1, gold=["a"])
    for name in u:
        item = store.lease_next(p, u[name]["id"])
        assert store.item(item).is_gold
        store.submit(p, u[name], item, Answer("a" if name != "cy" else "b"), shown=[0, 1])
    assert store.item(item).done_count == 3
    assert store.progress(p)["gold_items"] == 1


def test_ranking_labels_and_export_pairs(tmp_path):
    store, p, u = make_store(tmp_path, n_items=1, overlap=1, mode="ranking", k=3)
    item = store.lease_next(p, u["ann"]["id"])
    with pytest.raises(Refused):
        store.submit(p, u["ann"], item, Answer("rank", ranking=[0, 0, 1]), shown=[0, 1, 2])
    store.submit(p, u["ann"], item, Answer("rank", ranking=[2, 0, 1]), shown=[1, 2, 0])
    rows = preference_rows(store.project_items(p), store.project_labels(p), "ranking")
    # 2 > 0 > 1 gives three pairs, better first
    assert {(r["chosen"], r["rejected"]) for r in rows} == {("r0.2", "r0.0"), ("r0.2", "r0.1"), ("r0.0", "r0.1")}
    assert all(r["annotator"] == "ann" and r["item_id"] == "i0" and r["group_id"] == "g0" for r in rows)
    assert all("margin" not in r for r in rows)


def test_secret_is_made_once_and_kept(tmp_path):
    db = fresh_db(tmp_path)
    store = Store(db, create=True)
    secret = store.secret_key()
    assert len(secret) == 64
    assert Store(db, create=True).secret_key() == secret
    assert Store(db).secret_key() == secret


def test_missing_database_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such labeling database"):
        Store(str(tmp_path / "nope.db"))


def test_accounts(tmp_path):
    store = Store(fresh_db(tmp_path), create=True)
    store.add_user("ann", "password1", admin=True, hash_method=FAST)
    with pytest.raises(UserError, match="already exists"):
        store.add_user("ann", "password2")
    with pytest.raises(UserError, match="at least 8"):
        store.add_user("bo", "short")
    with pytest.raises(UserError, match="user name"):
        store.add_user("<b>", "password1")
    assert store.check_login("ann", "password1")["is_admin"]
    assert store.check_login("ann", "password2") is None
    assert store.check_login("nobody", "password1") is None
    store.update_user("ann", active=False)
    assert store.check_login("ann", "password1") is None
    hashes = [store.user(x["id"])["password_hash"] for x in store.users()]
    assert all("password1" not in h for h in hashes)


def test_read_items_formats_and_errors(tmp_path):
    f = tmp_path / "r.jsonl"
    f.write_text(json.dumps({"id": "x", "prompt": "p", "responses": ["a", "b", {"text": "c", "model": "m"}]}) + "\n"
                 + json.dumps({"prompt": [{"role": "user", "content": "q"}], "chosen": "yes",
                               "rejected": [{"role": "assistant", "content": "no"}], "gold": True}) + "\n")
    items = read_items(str(f), "pairwise")
    # 3 responses -> 3 pairs in one group, plus the chosen/rejected row
    assert [i.uid for i in items] == ["x:0-1", "x:0-2", "x:1-2", "r:2"]
    assert {i.group_id for i in items[:3]} == {"x"} and items[2].models == [None, "m"]
    assert items[3].responses == ["yes", "no"] and items[3].gold == "a"
    ranked = read_items(str(f), "ranking")
    assert len(ranked) == 2 and ranked[1].gold == [0, 1]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n"
                   + json.dumps({"prompt": "p", "chosen": "", "rejected": "b"}) + "\n")
    with pytest.raises(UserError, match=r'^bad.jsonl:2: "chosen" is empty'):
        read_items(str(bad), "pairwise")
    bad.write_text("{not json\n")
    with pytest.raises(UserError, match=r"^bad.jsonl:1: not valid JSON"):
        read_items(str(bad), "pairwise")


def test_interleave_spreads_gold():
    reg = [ItemSpec(f"r{n}", "g", "p", ["a", "b"]) for n in range(8)]
    gold = [ItemSpec(f"g{n}", "g", "p", ["a", "b"], gold="a") for n in range(2)]
    out = [s.uid for s in interleave(reg, gold)]
    assert len(out) == 10 and out.index("g0") in (2, 3) and out.index("g1") in (5, 6, 7)


def test_store_and_app_import_no_torch():
    code = ("import sys, rlhf.labeling.store, rlhf.labeling.app, rlhf.labeling.export, rlhf.labeling.cli; "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_create_by_sampling_a_model(tmp_path, tiny_model_dir, capsys):
    from rlhf.cli import main as rlhf_main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is 2 + 3?\nSort these numbers: 4 1 3.\n")
    db = str(tmp_path / "s.db")
    assert rlhf_main(["label", "create", db, "--prompts", str(prompts), "--model", tiny_model_dir, "--mode",
                      "ranking", "--k", "3", "--max-new-tokens", "6", "--seed", "1"]) == 0
    store = Store(db)
    items = list(store.project_items(store.project()).values())
    assert [i.prompt for i in items] == ["What is 2 + 3?", "Sort these numbers: 4 1 3."]
    for item in items:
        assert 2 <= len(item.responses) <= 3 and len(set(item.responses)) == len(item.responses)
        # the sampler's name and sample number are stored (never shown to annotators)
        assert all(m.startswith(os.path.basename(tiny_model_dir) + "#") for m in item.models)
    assert rlhf_main(["label", "create", str(tmp_path / "t.db"), "--prompts", str(prompts)]) == 2


def test_transcript_rows_are_read_through_rlhf_data(tmp_path):
    f = tmp_path / "hh.jsonl"
    f.write_text(json.dumps({"chosen": "\n\nHuman: hi there\n\nAssistant: Hello! How can I help?",
                             "rejected": "\n\nHuman: hi there\n\nAssistant: Go away."}) + "\n")
    (item,) = read_items(str(f), "pairwise")
    assert item.prompt == [{"role": "user", "content": "hi there"}]
    assert item.responses == ["Hello! How can I help?", "Go away."] and item.gold is None
    (gold,) = read_items(str(f), "pairwise", gold=True)
    assert gold.gold == "a" and gold.uid == "hh.jsonl:1"
    f.write_text(json.dumps({"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: hi"}) + "\n")
    with pytest.raises(UserError, match=r"^hh.jsonl:1: "):
        read_items(str(f), "pairwise")


def test_rendering_keeps_hostile_text_inert():
    from rlhf.labeling.display import answer_from_form, shown_order, to_html

    html = str(to_html('<script>alert(1)</script> [x](javascript:alert(2)) <img src=x onerror=alert(3)> **b**'))
    assert "<script" not in html and "<img" not in html and 'href="javascript' not in html
    assert "&lt;script&gt;" in html and "<strong>b</strong>" in html
    assert str(to_html("<b>x</b>\n*y*", "text")) == '<div class="plain">&lt;b&gt;x&lt;/b&gt;\n*y*</div>'
    # display order: stable per (annotator, item), a permutation, and not the same for everyone
    assert shown_order("s", 1, 7, 4) == shown_order("s", 1, 7, 4)
    assert sorted(shown_order("s", 1, 7, 4)) == [0, 1, 2, 3]
    assert len({tuple(shown_order("s", u, 7, 4)) for u in range(20)}) > 5
    # what the page calls A is mapped back to the response shown there
    assert answer_from_form("pairwise", [1, 0], "A", None, "3").choice == "b"
    assert answer_from_form("ranking", [2, 0, 1], "rank", "B,C,A", None).ranking == [0, 1, 2]


def test_append_adds_items_after_the_existing_ones(tmp_path):
    store, p, u = make_store(tmp_path, n_items=2)
    store.create_project("p", mode="pairwise", overlap=2, lease_seconds=60, strength=True, render="markdown",
                         guidelines="", items=[ItemSpec("new", "new", "q", ["x", "y"])], append=True)
    items = store.project_items(p)
    assert [i.uid for i in sorted(items.values(), key=lambda i: i.position)] == ["i0", "i1", "new"]
    with pytest.raises(UserError, match="already in project"):
        store.create_project("p", mode="pairwise", overlap=2, lease_seconds=60, strength=True, render="markdown",
                             guidelines="", items=[ItemSpec("new", "new", "q", ["x", "y"])], append=True)
