"""More kinds of feedback (issue 21, section 3), and comments and flags in the export.

Round trips: `rlhf label create --mode thumbs|demonstration` -> labels through
the app's JSON API and its HTML forms -> `rlhf label export` -> the rows read
back by `rlhf.data`'s loaders (`load_labels` for `rlhf kto`, `load_sft` for
`rlhf sft`), which ignore the optional comment and flag fields.
"""

import json
import re

import pytest

from rlhf.cli import main as rlhf_main
from rlhf.data import load_labels, load_pairs, load_sft
from rlhf.errors import UserError
from rlhf.labeling import load_preferences_from_db
from rlhf.labeling.app import create_app
from rlhf.labeling.export import export_project
from rlhf.labeling.sources import read_items
from rlhf.labeling.store import Store
from test_labeling_app import api_label, login, store  # noqa: F401


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def cli_project(tmp_path, monkeypatch, mode, rows, *extra):
    data = write_jsonl(tmp_path / "items.jsonl", rows)
    db = str(tmp_path / f"{mode}.db")
    assert rlhf_main(["label", "create", db, "--data", data, "--mode", mode, "--overlap", "2", *extra]) == 0
    monkeypatch.setenv("LABEL_PW", "password1")
    for name in ("ann", "bo"):
        assert rlhf_main(["label", "user", "add", name, "--db", db, "--password-env", "LABEL_PW"]) == 0
    return db


def form_label(c, item_id, choice, **fields):
    return c.post("/label", data={"item_id": item_id, "choice": choice, "csrf_token": c.csrf, **fields})


def test_thumbs_round_trip_to_kto_rows(tmp_path, monkeypatch, capsys):
    rows = [{"id": "cap", "prompt": "Capital of France?", "responses": ["Paris.", "Lyon."]},
            {"id": "sum", "prompt": [{"role": "user", "content": "2 + 3?"}], "response": "5"}]
    db = cli_project(tmp_path, monkeypatch, "thumbs", rows)
    assert "3 items" in capsys.readouterr().out  # two responses of one row are two items
    store = Store(db)
    app = create_app(store)
    ann, bo = login(app, "ann"), login(app, "bo")
    task = ann.get("/api/task").json["task"]
    assert task["mode"] == "thumbs" and len(task["responses"]) == 1
    page = ann.get("/task").text
    assert 'id="choose-up"' in page and 'id="choose-down"' in page and 'name="strength"' not in page
    # refusals: a pairwise choice, a strength, an order, a text
    for bad in ({"choice": "A"}, {"choice": "up", "strength": 2}, {"choice": "up", "order": "A"},
                {"choice": "up", "text": "x"}):
        choice = bad.pop("choice")
        assert api_label(ann, task["item_id"], choice, **bad).status_code == 400, bad
    seen = {}
    # ann by API, with a comment and a flag; bo through the page's form
    item = task["item_id"]
    for n in range(3):
        text = ann.get("/api/task").json["task"]["responses"][0]["text"]
        r = api_label(ann, item, "up" if text != "Lyon." else "down", comment="checked" if n == 0 else None,
                      flag=n == 0, next=True)
        assert r.status_code == 200, r.text
        seen[("ann", text)] = r.json["label"]["choice"]
        item = (r.json.get("task") or {}).get("item_id")
    for n in range(3):
        page = bo.get("/task").text
        item = int(re.search(r'name="item_id" value="(\d+)"', page).group(1))
        text = bo.get("/api/task").json["task"]["responses"][0]["text"]
        assert form_label(bo, item, "down" if text == "Paris." else "up").status_code == 302
        seen[("bo", text)] = "down" if text == "Paris." else "up"
    out = tmp_path / "kto.jsonl"
    assert rlhf_main(["label", "export", db, "-o", str(out)]) == 0
    assert "wrote 6 thumbs up/down rows (rlhf kto)" in capsys.readouterr().out
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    completion = {r["label_id"]: r["completion"] if isinstance(r["completion"], str) else r["completion"][0]["content"]
                  for r in exported}
    assert {(r["annotator"], completion[r["label_id"]]): "up" if r["label"] else "down" for r in exported} == seen
    (noted,) = [r for r in exported if "comment" in r]
    assert noted["comment"] == "checked" and noted["flagged"] is True
    assert all("flagged" not in r for r in exported if r is not noted)
    labels = load_labels(str(out))  # what `rlhf kto --data` reads
    assert sorted((lab.completion, lab.label) for lab in labels) == sorted(
        (text, choice == "up") for (_, text), choice in seen.items())
    assert labels[0].prompt[-1]["role"] == "user"
    # majority over both annotators: both said up to "5"; the others split 1/1 and are left out
    majority = export_project(store, aggregate="majority")
    assert [(r["completion"], r["label"], r["votes"]) for r in majority] == [
        ([{"role": "assistant", "content": "5"}], True, "2/2")]  # a message prompt: TRL's conversational form
    # agreement: one unit per item, valued up/down
    assert rlhf_main(["label", "stats", db]) == 0
    assert "3 units with 2+ labels, percent agreement 0.333" in capsys.readouterr().out
    # a thumbs database is not comparisons: `rlhf rm --data sqlite:///` says what to do instead
    with pytest.raises(UserError, match="thumbs labels, not comparisons.*rlhf kto"):
        load_preferences_from_db("sqlite:///" + db)


def test_demonstration_round_trip_to_sft_rows(tmp_path, monkeypatch, capsys):
    rows = [{"id": "poem", "prompt": "Write a two-line poem about rain."},
            {"id": "fix", "prompt": "Explain recursion in one sentence.",
             "response": "Recursion is when a function calls it self."}]
    db = cli_project(tmp_path, monkeypatch, "demonstration", rows)
    store = Store(db)
    app = create_app(store)
    ann, bo = login(app, "ann"), login(app, "bo")
    first = ann.get("/task").text
    assert 'id="text"' in first and "Write a two-line poem" in first  # items go out by position: no draft
    assert re.search(r'<textarea name="text" id="text"[^>]*>\s*</textarea>', first)
    item = int(re.search(r'name="item_id" value="(\d+)"', first).group(1))
    assert form_label(ann, item, "write", text="   ").status_code == 400  # nothing written
    assert api_label(ann, item, "write").status_code == 400
    assert api_label(ann, item, "up").status_code == 400
    assert api_label(ann, item, "write", text="x" * 20001).status_code == 400
    poem = "Rain taps the glass,\r\nthe gutters hum along."
    assert form_label(ann, item, "write", text=poem, comment="kept it short").status_code == 302
    page = ann.get("/task").text  # the second item shows its draft to edit
    assert "Recursion is when a function calls it self.</textarea>" in page and 'id="restore-draft"' in page
    item2 = int(re.search(r'name="item_id" value="(\d+)"', page).group(1))
    fixed = "Recursion is when a function calls itself on a smaller part of the problem."
    r = api_label(ann, item2, "write", text=fixed, flag=True)
    assert r.status_code == 200 and r.json["label"]["text"] == fixed
    # bo keeps the draft as it is, and skips the poem
    bo_item = bo.get("/api/task").json["task"]
    assert bo_item["item_id"] == item
    assert api_label(bo, item, "skip", reason="other").status_code == 200
    bo.post("/api/next", headers={"X-CSRF-Token": bo.csrf})
    assert api_label(bo, item2, "write", text="Recursion is when a function calls it self.").status_code == 200
    # revisiting shows the text written, and "My labels" lists it
    assert "Rain taps the glass,\nthe gutters hum along.</textarea>" in ann.get(f"/task/{item}").text
    assert "the gutters hum along." in ann.get("/labels").text
    out = tmp_path / "sft.jsonl"
    assert rlhf_main(["label", "export", db, "-o", str(out)]) == 0
    assert "wrote 3 demonstrations (rlhf sft)" in capsys.readouterr().out
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    by = {(r["annotator"], r["item_id"]): r for r in exported}
    assert by[("ann", "poem")]["response"] == "Rain taps the glass,\nthe gutters hum along."
    assert "edited" not in by[("ann", "poem")] and by[("ann", "poem")]["comment"] == "kept it short"
    assert by[("ann", "fix")]["edited"] is True and by[("ann", "fix")]["flagged"] is True
    assert by[("bo", "fix")]["edited"] is False
    examples = load_sft(str(out))  # what `rlhf sft --data` reads
    assert sorted(ex.response for ex in examples) == sorted(r["response"] for r in exported)
    assert all(ex.prompt[-1]["role"] == "user" for ex in examples)
    assert rlhf_main(["label", "export", db, "-o", str(out), "--aggregate", "majority"]) == 2
    assert "demonstrations are written, not voted" in capsys.readouterr().err


def test_create_refusals_for_the_new_kinds(tmp_path, capsys):
    db = str(tmp_path / "x.db")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "responses": ["a", "b"]}])
    assert rlhf_main(["label", "create", db, "--data", bad, "--mode", "demonstration"]) == 2
    assert "bad.jsonl:1: a demonstration item has at most one draft response" in capsys.readouterr().err
    bare = write_jsonl(tmp_path / "bare.jsonl", [{"prompt": "p"}])
    assert rlhf_main(["label", "create", db, "--data", bare, "--mode", "thumbs"]) == 2
    assert "bare.jsonl:1: a thumbs item needs a response to rate" in capsys.readouterr().err
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Say hi.\nSay bye.\n")
    assert rlhf_main(["label", "create", db, "--prompts", str(prompts), "--mode", "thumbs"]) == 2
    assert "--prompts needs --model" in capsys.readouterr().err
    assert rlhf_main(["label", "create", db, "--data", bare, "--mode", "demonstration", "--gold", bare]) == 2
    # demonstrations from bare prompts need no model: annotators write every response
    assert rlhf_main(["label", "create", db, "--prompts", str(prompts), "--mode", "demonstration"]) == 0
    assert "2 items, 0 gold, demonstration" in capsys.readouterr().out
    gold = write_jsonl(tmp_path / "gold.jsonl", [{"prompt": "2 + 2?", "response": "4", "label": True}])
    specs = read_items(gold, "thumbs", gold=True)
    assert [(s.responses, s.gold) for s in specs] == [(["4"], "up")]


def test_comments_and_flags_ride_along_and_loaders_ignore_them(store, tmp_path):  # noqa: F811
    app = create_app(store)
    c = login(app, "ann")
    item = c.get("/api/task").json["task"]["item_id"]
    nxt = api_label(c, item, "A", comment="B's \"5\" is a typo", flag=True, next=True).json["task"]["item_id"]
    api_label(c, nxt, "B", strength=2)
    rows = export_project(store)
    assert [(r.get("comment"), r.get("flagged")) for r in rows] == [('B\'s "5" is a typo', True), (None, None)]
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = load_pairs(str(path))
    assert [p.chosen for p in pairs] == [r["chosen"] for r in rows] and pairs[1].margin == 2.0
    assert len(load_sft(str(path))) == 2 and len(load_labels(str(path))) == 4
    assert load_preferences_from_db(store.url)[0]["comment"] == 'B\'s "5" is a typo'
    # the admin's download carries them too
    body = login(app, "admin").get("/admin/export.jsonl").text
    assert '"flagged": true' in body and "is a typo" in body
