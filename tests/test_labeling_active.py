"""Active learning and AI suggestions: acquisition orders, `rlhf label rescore`, suggestions, AI-human agreement."""

import json
import math
import sqlite3
import subprocess
import sys

import pytest

from rlhf.cli import main as cli_main
from rlhf.labeling.agreement import suggestion_agreement
from rlhf.labeling.rescore import information, item_score, judge_score
from rlhf.labeling.store import Answer, ItemSpec, Store
from test_labeling_rm import labelled_project

FAST = "pbkdf2:sha256:1000"


def pairwise_store(path, n=4, **kw):
    store = Store(str(path), create=True)
    items = [ItemSpec(f"i{k}", f"i{k}", f"Question {k}?", [f"yes {k}", f"no {k}"]) for k in range(n)]
    store.create_project("p", mode="pairwise", overlap=1, lease_seconds=600, strength=False, render="text",
                         guidelines="", items=items, **kw)
    store.add_user("ann", "password1", hash_method=FAST)
    store.add_user("boss", "password1", admin=True, hash_method=FAST)
    return store


def hand_out(store, project, name="ann"):
    """Every item this annotator is given, in order, each labelled `a` as it comes."""
    user = next(u for u in store.users() if u["name"] == name)
    seen = []
    while (item_id := store.lease_next(project, user["id"])) is not None:
        seen.append(store.item(item_id).uid)
        store.submit(project, user, item_id, Answer("a"), shown=[0, 1])
    return seen


# -- the numbers rescore stores, by hand ---------------------------------------------------------------


def test_item_score_pairwise_two_members_by_hand():
    # member margins 1.0 - 0.2 = 0.8 and 0.4 - 0.6 = -0.2: mean 0.3, population std |0.8 - (-0.2)| / 2 = 0.5
    out = item_score("pairwise", [[1.0, 0.2], [0.4, 0.6]])
    assert out["margin"] == pytest.approx(0.3, abs=1e-12)
    assert out["spread"] == pytest.approx(0.5, abs=1e-12)
    assert out["information"] == pytest.approx(information([0.8, -0.2]), abs=1e-15)
    assert out["suggestion"] == "a"
    assert item_score("pairwise", [[0.1, 0.7]]) == {"margin": pytest.approx(-0.6), "spread": None, "information": None,
                                                     "suggestion": "b"}


def test_information_by_hand():
    # margins 0 and ln 3: P(a) = 0.5 and 0.75, mean 0.625.
    # H(0.625) = 0.625 ln(1/0.625) + 0.375 ln(1/0.375) = 0.661563; H(0.5) = ln 2 = 0.693147; H(0.75) = 0.562335;
    # information = 0.661563 - (0.693147 + 0.562335) / 2 = 0.033822
    assert information([0.0, math.log(3)]) == pytest.approx(0.033822, abs=1e-6)
    # each member sure, half say each answer: all of ln 2
    assert information([30.0, -30.0]) == pytest.approx(math.log(2), abs=1e-9)
    # members agree: nothing to learn about which is right, however unsure each is (a coin-flip pair) or sure
    assert information([0.0, 0.0]) == 0.0 and information([5.0, 5.0, 5.0]) == pytest.approx(0.0, abs=1e-12)
    assert information([1e6, -1e6]) == pytest.approx(math.log(2)) and information([2.0]) is None  # no overflow
    # a near-tie both call a coin flip (spread 0.1) tells less than a pair they each call firmly apart
    # (spread 3), although its margin is the closer to zero
    assert information([0.1, -0.1]) < 0.01 < 0.3 < information([3.0, -3.0])


def test_item_score_ranking_and_thumbs_by_hand():
    # mean rewards [3, 1, 2]: best first 0, 2, 1; the smallest gap is 1 (between 1 and 2, and 2 and 3)
    out = item_score("ranking", [[3.0, 1.0, 2.0]])
    assert out == {"margin": 1.0, "spread": None, "information": None, "suggestion": [0, 2, 1]}
    # two members: pair differences (0,1): 2, 2 -> std 0; (0,2): 1, -1 -> std 1; (1,2): -1, -3 -> std 1
    out = item_score("ranking", [[3.0, 1.0, 2.0], [2.0, 0.0, 3.0]])
    assert out["spread"] == pytest.approx(1.0) and out["suggestion"] == [[0, 2], 1]  # means 2.5, 0.5, 2.5: tied
    assert out["margin"] == 0.0
    # information: the largest over the pairs, here (0, 2) whose members say +1 and -1
    assert out["information"] == pytest.approx(information([1.0, -1.0]))
    assert information([1.0, -1.0]) > information([-1.0, -3.0]) > information([2.0, 2.0])
    out = item_score("thumbs", [[-0.5], [-0.1]])
    assert out["margin"] == pytest.approx(-0.3) and out["spread"] == pytest.approx(0.2) and out["suggestion"] == "down"
    assert out["information"] == pytest.approx(information([-0.5, -0.1]))


def test_judge_score_is_the_logit_of_p_first():
    assert judge_score(0.8)["margin"] == pytest.approx(1.3862943611198906)  # log(0.8 / 0.2) = log 4
    assert judge_score(0.8)["suggestion"] == "a" and judge_score(0.3)["suggestion"] == "b"
    assert judge_score(0.5) == {"margin": 0.0, "spread": None, "information": None, "suggestion": None}


# -- the orders the web process serves ---------------------------------------------------------------


def test_uncertainty_and_disagreement_orders_follow_the_stored_scores(tmp_path):
    store = pairwise_store(tmp_path / "a.db", n=4, order="uncertainty")
    p = store.project()
    assert p.order == "uncertainty" and p.suggestions is False
    ids = {it.uid: it.id for it in store.project_items(p).values()}
    # i3 has no score yet: after every scored item
    store.set_scores(p, [{"item_id": ids["i0"], "margin": 0.9, "spread": 0.1},
                         {"item_id": ids["i1"], "margin": -0.1, "spread": 0.3},
                         {"item_id": ids["i2"], "margin": 0.5, "spread": 0.7}], source="test")
    assert hand_out(store, p) == ["i1", "i2", "i0", "i3"]  # |margin| 0.1, 0.5, 0.9, then unscored

    store = pairwise_store(tmp_path / "b.db", n=4)
    p = store.project()
    ids = {it.uid: it.id for it in store.project_items(p).values()}
    store.set_scores(p, [{"item_id": ids["i0"], "margin": 0.9, "spread": 0.1},
                         {"item_id": ids["i1"], "margin": -0.1, "spread": 0.3},
                         {"item_id": ids["i2"], "margin": 0.5, "spread": 0.7}], source="test")
    p = store.configure(p, order="disagreement")
    assert hand_out(store, p) == ["i2", "i1", "i0", "i3"]  # spread 0.7, 0.3, 0.1, then unscored


def test_information_order_follows_the_stored_information(tmp_path):
    store = pairwise_store(tmp_path / "a.db", n=5, order="information")
    p = store.project()
    ids = {it.uid: it.id for it in store.project_items(p).values()}
    store.set_scores(p, [{"item_id": ids["i0"], "margin": 0.0, "spread": 0.1, "information": 0.001},
                         {"item_id": ids["i1"], "margin": 0.5, "spread": 2.0, "information": 0.4},
                         {"item_id": ids["i2"], "margin": 2.0, "spread": 3.0, "information": 0.2},
                         {"item_id": ids["i3"], "margin": 0.2}], source="test")  # one model: no information
    assert store.scores(p)[ids["i1"]]["information"] == 0.4 and store.scores(p)[ids["i3"]]["information"] is None
    # information 0.4, 0.2, 0.001; then those without it (scored by one model, or not at all), by position
    assert hand_out(store, p) == ["i1", "i2", "i0", "i3", "i4"]


def test_the_command_line_orders_are_the_stores():
    from typing import get_args

    from rlhf.labeling.cli import Order
    from rlhf.labeling.store import ORDERS
    assert get_args(Order) == ORDERS


def test_the_order_changed_while_serving_applies_to_the_next_lease(tmp_path):
    store = pairwise_store(tmp_path / "a.db", n=3)
    stale = store.project()  # the app holds its Project from start-up
    ids = {it.uid: it.id for it in store.project_items(stale).values()}
    store.set_scores(stale, [{"item_id": ids["i2"], "margin": 0.0}], source="test")
    user = next(u for u in store.users() if u["name"] == "ann")
    store.configure(store.project(), order="uncertainty")
    assert store.item(store.lease_next(stale, user["id"])).uid == "i2"


def test_random_order_hands_out_every_item_once(tmp_path):
    store = pairwise_store(tmp_path / "a.db", n=12, order="random")
    seen = hand_out(store, store.project())
    assert sorted(seen) == sorted(f"i{k}" for k in range(12))
    assert seen != [f"i{k}" for k in range(12)]  # 1 in 12! to be in position order by chance


def test_scores_for_another_projects_item_are_refused(tmp_path):
    from rlhf.errors import UserError

    store = pairwise_store(tmp_path / "a.db", n=1)
    other = store.create_project("q", mode="pairwise", overlap=1, lease_seconds=600, strength=False, render="text",
                                 guidelines="", items=[ItemSpec("x", "x", "Q?", ["a", "b"])])
    foreign = next(iter(store.project_items(other)))
    with pytest.raises(UserError):
        store.set_scores(store.project("p"), [{"item_id": foreign, "margin": 1.0}], source="t")
    assert store.scores(store.project("p")) == {} and store.scores(other) == {}


def as_older_version(db, version: int, *statements: str) -> None:
    """Make `db` look as an older version left it: its later columns or tables dropped, its schema number set."""
    con = sqlite3.connect(db)
    for sql in statements:
        con.execute(sql)
    con.execute(f"UPDATE meta SET value = '{version}' WHERE key = 'schema'")
    con.commit()
    con.close()


def test_a_version_3_database_is_upgraded_to_sequential_and_no_suggestions(tmp_path):
    db = tmp_path / "old.db"
    pairwise_store(db, n=2).close()
    as_older_version(db, 3, "ALTER TABLE projects DROP COLUMN serve_order",
                     "ALTER TABLE projects DROP COLUMN suggestions", "DROP TABLE item_scores")
    store = Store(str(db))
    p = store.project()
    assert (p.order, p.suggestions) == ("sequential", False)
    assert hand_out(store, p) == ["i0", "i1"] and store.scores(p) == {}


def test_a_version_4_database_gains_the_information_column_and_keeps_its_scores(tmp_path):
    db = tmp_path / "old.db"
    store = pairwise_store(db, n=2)
    p = store.project()
    ids = {it.uid: it.id for it in store.project_items(p).values()}
    store.set_scores(p, [{"item_id": ids["i1"], "margin": 0.1, "spread": 0.2}], source="v4")
    store.close()
    as_older_version(db, 4, "ALTER TABLE item_scores DROP COLUMN information")
    store = Store(str(db))
    p = store.project()
    old = store.scores(p)[ids["i1"]]
    assert (old["margin"], old["spread"], old["information"], old["source"]) == (0.1, 0.2, None, "v4")
    store.set_scores(p, [{"item_id": ids["i0"], "margin": 0.0, "spread": 1.0, "information": 0.3}], source="v5")
    p = store.configure(p, order="information")
    assert hand_out(store, p) == ["i0", "i1"]


# -- settings and stats from the command line --------------------------------------------------------


def test_settings_command_and_its_refusals(tmp_path, capsys):
    db = tmp_path / "a.db"
    pairwise_store(db).close()
    assert cli_main(["label", "settings", str(db)]) == 0
    assert "order sequential, AI suggestions hidden (0 items scored)" in capsys.readouterr().out
    assert cli_main(["label", "settings", str(db), "--order", "disagreement", "--suggestions"]) == 0
    out = capsys.readouterr().out
    assert "order disagreement, AI suggestions shown" in out and "no scores yet" in out
    assert cli_main(["label", "settings", str(db), "--order", "smart"]) == 2
    assert cli_main(["label", "settings", str(db), "--no-suggestions"]) == 0
    p = Store(str(db)).project()
    assert (p.order, p.suggestions) == ("disagreement", False)
    assert any(a["action"] == "project.settings" for a in Store(str(db)).audit_log())
    assert cli_main(["label", "rescore", str(db)]) == 2  # neither --reward-model nor --judge
    capsys.readouterr()
    assert cli_main(["label", "rescore", str(db), "--reward-model", str(tmp_path / "nothing")]) == 2
    assert "not a model folder" in capsys.readouterr().err
    store = Store(str(db))
    store.create_project("r", mode="ranking", overlap=1, lease_seconds=600, strength=False, render="text",
                         guidelines="", items=[ItemSpec("x", "x", "Q?", ["a", "b", "c"])])
    store.create_project("d", mode="demonstration", overlap=1, lease_seconds=600, strength=False, render="text",
                         guidelines="", items=[ItemSpec("y", "y", "Write.", [])])
    assert cli_main(["label", "rescore", str(db), "--project", "r", "--judge", "gold"]) == 2
    assert "--judge compares two responses: project 'r' is ranking" in capsys.readouterr().err
    assert cli_main(["label", "rescore", str(db), "--project", "d", "--judge", "gold"]) == 2
    assert "collects demonstrations: nothing to compare" in capsys.readouterr().err
    assert store.scores(store.project("r")) == {} and store.scores(store.project("d")) == {}


def test_suggestion_agreement_by_hand():
    labels = [  # item 1 suggested a: ann a (agree), bo b (disagree); item 2 suggested b: ann tie (disagree)
        {"item_id": 1, "choice": "a", "annotator": "ann"}, {"item_id": 1, "choice": "b", "annotator": "bo"},
        {"item_id": 2, "choice": "tie", "annotator": "ann"}, {"item_id": 3, "choice": "a", "annotator": "ann"},
        {"item_id": 1, "choice": "skip", "annotator": "cy"}]
    out = suggestion_agreement(labels, {1: "a", 2: "b"}, "pairwise")  # item 3 has no suggestion
    assert (out["items"], out["n"], out["agree"]) == (2, 3, 1) and out["rate"] == pytest.approx(1 / 3)
    assert out["annotators"]["ann"] == {"agree": 1, "n": 2, "rate": 0.5}
    # kappa: human a, b, tie vs AI a, a, b: p_o = 1/3, p_e = (1*2 + 1*1) / 9 = 1/3 -> 0
    assert out["kappa"] == pytest.approx(0.0, abs=1e-12)
    # a ranking is compared pair by pair: [0, 1, 2] against the suggestion [1, 0, 2] agrees on 2 of 3 pairs
    rank = suggestion_agreement([{"item_id": 7, "choice": "rank", "ranking": [0, 1, 2], "annotator": "ann"}],
                                {7: [1, 0, 2]}, "ranking")
    assert (rank["n"], rank["agree"]) == (3, 2)


def test_stats_reports_ai_human_agreement(tmp_path, capsys):
    db = tmp_path / "a.db"
    store = pairwise_store(db, n=4)
    p = store.project()
    ids = {it.uid: it.id for it in store.project_items(p).values()}
    store.set_scores(p, [{"item_id": ids[f"i{k}"], "margin": m, "suggestion": s}
                         for k, (m, s) in enumerate([(1.0, "a"), (-1.0, "b"), (2.0, "a")])], source="rm")
    hand_out(store, p)  # ann says a to all four: agrees on i0 and i2, not i1; i3 has no suggestion
    assert cli_main(["label", "stats", str(db)]) == 0
    out = capsys.readouterr().out
    assert "AI suggestions (hidden from annotators; order sequential): 3 items scored; 3 units on 3 items " \
           "labelled by both, AI-human agreement 0.667" in out
    assert cli_main(["label", "stats", str(db), "--json"]) == 0
    ai = json.loads(capsys.readouterr().out)["ai_suggestions"]
    assert (ai["scored_items"], ai["n"], ai["agree"], ai["shown"]) == (3, 3, 2, False)


# -- rescore with a real reward model ----------------------------------------------------------------


@pytest.fixture(scope="module")
def colour_rm(tmp_path_factory, tiny_model_dir):
    """A reward model that learned "blue" beats "red" (as in test_labeling_rm)."""
    tmp = tmp_path_factory.mktemp("colour")
    db = tmp / "train.db"
    labelled_project(db).close()
    out = tmp / "rm"
    assert cli_main(["rm", "--model", tiny_model_dir, "--data", f"sqlite:///{db}", "--out", str(out), "--lr", "3e-3",
                     "--epochs", "3", "--batch-size", "4", "--val-fraction", "0", "--save-every", "0",
                     "--warmup-ratio", "0", "--threads", "1", "--quiet"]) == 0
    return str(out)


def test_rescore_suggests_what_the_reward_model_learned(tmp_path, colour_rm, capsys):
    import random

    from test_labeling_rm import WORDS

    rng = random.Random(7)
    store = Store(str(tmp_path / "new.db"), create=True)
    items, blue_first = [], {}
    for n in range(30):
        pair = [" ".join(rng.sample(WORDS, 2) + [c]) for c in ("blue", "red")]
        if rng.random() < 0.5:
            pair.reverse()
        blue_first[f"n{n}"] = pair[0].endswith("blue")
        items.append(ItemSpec(f"n{n}", f"n{n}", f"Tell me thing {n + 100}.", pair))
    store.create_project("fresh", mode="pairwise", overlap=1, lease_seconds=600, strength=False, render="text",
                         guidelines="", items=items)
    # the same folder twice: an "ensemble" whose members agree exactly, so every spread is 0
    assert cli_main(["label", "rescore", str(tmp_path / "new.db"), "--reward-model", f"{colour_rm},{colour_rm}",
                     "--threads", "1", "--quiet"]) == 0
    assert "scored 30 items of 'fresh' with 2 reward models" in capsys.readouterr().out
    p = store.project()
    scores = {store.item(i).uid: s for i, s in store.scores(p).items()}
    assert len(scores) == 30 and all(s["spread"] == pytest.approx(0.0, abs=1e-6) for s in scores.values())
    right = sum(s["suggestion"] == ("a" if blue_first[u] else "b") for u, s in scores.items())
    assert right >= 27  # the model learned the colour on 120 labels; chance would be about 15
    assert all((s["margin"] > 0) == (s["suggestion"] == "a") for s in scores.values())


def test_the_web_process_never_imports_torch(tmp_path):
    """The app sorts by stored scores and shows stored suggestions: serving them loads no torch."""
    db = tmp_path / "a.db"
    store = pairwise_store(db, n=2, order="uncertainty", suggestions=True)
    p = store.project()
    ids = {it.uid: it.id for it in store.project_items(p).values()}
    store.set_scores(p, [{"item_id": ids["i1"], "margin": 0.1, "suggestion": "b"}], source="rm")
    store.close()
    code = f"""
import sys
from rlhf.labeling.cli import ServeConfig, make_server
from rlhf.labeling.app import create_app
from rlhf.labeling.store import Store
store = Store({str(db)!r})
app = create_app(store)
c = app.test_client()
page = c.get("/login").get_data(as_text=True)
token = page.split('name="csrf_token" value="')[1].split('"')[0]
assert c.post("/login", data={{"name": "ann", "password": "password1", "csrf_token": token}}).status_code == 302
html = c.get("/task").get_data(as_text=True)
assert "is better" in html and "Question 1?" in html, html
make_server(ServeConfig(db={str(db)!r}, port=0)).close()
print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_suggestions_are_hidden_until_the_project_shows_them(tmp_path):
    from rlhf.labeling.app import create_app

    store = pairwise_store(tmp_path / "a.db", n=1)
    p = store.project()
    item_id = next(iter(store.project_items(p)))
    store.set_scores(p, [{"item_id": item_id, "margin": 0.7, "suggestion": "a"}], source="<script>x</script>")
    app = create_app(store)
    c = app.test_client()
    token = c.get("/login").get_data(as_text=True).split('name="csrf_token" value="')[1].split('"')[0]
    c.post("/login", data={"name": "ann", "password": "password1", "csrf_token": token})
    csrf = c.get("/api/session").get_json()["csrf_token"]
    assert "suggestion" not in c.get("/api/task").get_json()["task"]
    assert 'id="suggestion"' not in c.get("/task").get_data(as_text=True)
    store.configure(p, suggestions=True)
    task = c.get("/api/task").get_json()["task"]
    # response 0 ("yes 0") is suggested: the letter is wherever this annotator sees it
    letter = next(r["letter"] for r in task["responses"] if r["text"] == "yes 0")
    assert task["suggestion"] == f"{letter} is better"
    html = c.get("/task").get_data(as_text=True)
    assert f'<p id="suggestion-text">{letter} is better</p>' in html and "<script>x" not in html
    # the admin's settings form changes both, CSRF and all
    c.post("/logout", data={"csrf_token": csrf})
    token = c.get("/login").get_data(as_text=True).split('name="csrf_token" value="')[1].split('"')[0]
    c.post("/login", data={"name": "boss", "password": "password1", "csrf_token": token})
    csrf = c.get("/api/session").get_json()["csrf_token"]
    assert c.post("/admin/settings", data={"order": "uncertainty", "csrf_token": "wrong"}).status_code == 403
    assert c.post("/admin/settings", data={"order": "best", "csrf_token": csrf}).status_code == 400
    assert c.post("/admin/settings", data={"order": "uncertainty", "csrf_token": csrf}).status_code == 302
    p = store.project()
    assert (p.order, p.suggestions) == ("uncertainty", False)  # an unticked box turns suggestions off


# -- the probe: what active-lab measured, scoring the app's queue ------------------------------------


def label_in_order(store, project, choices: list[str], name="ann") -> list[int]:
    """`name` takes the next items (sequential order) and answers them with `choices`, in turn."""
    user = next(u for u in store.users() if u["name"] == name)
    done = []
    for choice in choices:
        item_id = store.lease_next(project, user["id"])
        store.submit(project, user, item_id, Answer(choice), shown=[0, 1])
        done.append(item_id)
    return done


def _fake_features(monkeypatch, dim=5):
    """Each response's features: a fixed random vector per text (no model loads)."""
    import torch

    from rlhf.labeling import probe

    table: dict[str, torch.Tensor] = {}

    def features(model, items, features="mean", **kw):
        for _, text in items:
            table.setdefault(text, torch.randn(dim, generator=torch.Generator().manual_seed(len(table))))
        return torch.stack([table[text] for _, text in items])

    monkeypatch.setattr(probe, "response_features", features)
    return table


def test_probe_in_the_app_fits_the_head_the_lab_fits(tmp_path, monkeypatch):
    """rescore --probe on a project of pool pairs gives the queue the margins ProbeRM gives the same pairs."""
    import torch

    from rlhf.labeling.active_lab import ActiveLabConfig, ProbeRM
    from rlhf.labeling.rescore import rescore

    table = _fake_features(monkeypatch)
    store = pairwise_store(tmp_path / "a.db", n=12)
    p = store.project()
    items = list(store.project_items(p).values())
    h = torch.stack([table.setdefault(t, torch.randn(5, generator=torch.Generator().manual_seed(100 + k)))
                     for k, t in enumerate(r for it in items for r in it.responses)])
    a, b = h[0::2], h[1::2]
    labels = [bool(x) for x in ((a - b)[:, 0] + 0.3 * (a - b)[:, 1] > 0).tolist()]  # the annotator's rule
    assert label_in_order(store, p, ["a" if lab else "b" for lab in labels[:8]]) == [it.id for it in items[:8]]
    out = rescore(store, p, probe="fake", members=1, log=None)
    assert out["items"] == 4 and out["source"] == "probe:fake"

    lab = ProbeRM.__new__(ProbeRM)
    lab.cfg = ActiveLabConfig()  # L2 0.3, as the app's probe
    lab.x_pool = a - b
    w = lab.fit(list(range(8)), labels[:8], seed=0)
    expected = lab.pool_margins(w, [8, 9, 10, 11])
    scores = store.scores(p)
    assert [scores[it.id]["margin"] for it in items[8:]] == pytest.approx(expected, abs=1e-4)
    assert all(scores[it.id]["information"] is None for it in items[8:])  # one head: no ensemble
    # ten heads: an ensemble, so a spread and an information per item
    rescore(store, p, probe="fake", members=10, log=None)
    scores = store.scores(p)
    assert all(scores[it.id]["information"] is not None and scores[it.id]["spread"] > 0 for it in items[8:])


def test_probe_refusals(tmp_path, monkeypatch, capsys):
    from rlhf.errors import UserError
    from rlhf.labeling.rescore import rescore

    _fake_features(monkeypatch)
    store = pairwise_store(tmp_path / "a.db", n=3)
    with pytest.raises(UserError, match="no comparison labelled yet"):
        rescore(store, store.project(), probe="fake", log=None)
    label_in_order(store, store.project(), ["tie"])
    with pytest.raises(UserError, match="no comparison labelled yet"):  # a tie is no comparison for Bradley-Terry
        rescore(store, store.project(), probe="fake", log=None)
    store.create_project("t", mode="thumbs", overlap=1, lease_seconds=600, strength=False, render="text",
                         guidelines="", items=[ItemSpec("x", "x", "Q?", ["a"])])
    with pytest.raises(UserError, match="learns from comparisons: project 't' is thumbs"):
        rescore(store, store.project("t"), probe="fake", log=None)
    db = str(tmp_path / "a.db")
    assert cli_main(["label", "rescore", db, "--project", "p", "--probe", "lab-small", "--judge", "gold"]) == 2
    assert "one of the three" in capsys.readouterr().err
    assert cli_main(["label", "rescore", db, "--project", "p", "--probe", str(tmp_path / "nope")]) == 2
    assert "no such model folder" in capsys.readouterr().err
    assert store.scores(store.project("p")) == {}


def test_rescore_with_a_probe_on_the_lab_model(tmp_path, capsys):
    """End to end: labels in, the lab-small probe's ensemble scores the queue, the information order serves it."""
    db = tmp_path / "a.db"
    store = pairwise_store(db, n=6, order="information")
    p = store.project()
    user = next(u for u in store.users() if u["name"] == "ann")
    items = list(store.project_items(p).values())
    label_in_order(store, p, ["a", "b", "a"])  # no scores yet: by position
    assert cli_main(["label", "rescore", str(db), "--probe", "lab-small", "--members", "4", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "scored 3 items of 'p' with a probe on lab-small (4 heads)" in out and "median information" in out
    scores = Store(str(db)).scores(p)
    assert sorted(scores) == [it.id for it in items[3:]]
    assert all(s["source"] == "probe:lab-small" and s["information"] >= 0 and s["spread"] > 0
               for s in scores.values())
    first = max(scores, key=lambda i: scores[i]["information"])
    assert store.lease_next(p, user["id"]) == first


def test_rm_head_only_from_the_database_is_the_apps_one_head_probe(tmp_path, capsys):
    """`rlhf rm --data sqlite:///... --head-only --pooling mean` saves the head `rescore --probe --members 1` fits:
    rescoring with the folder gives every queued item the probe's margin."""
    db = tmp_path / "a.db"
    store = pairwise_store(db, n=6)
    p = store.project()
    label_in_order(store, p, ["a", "b", "a"])
    assert cli_main(["label", "rescore", str(db), "--probe", "lab-small", "--members", "1", "--quiet"]) == 0
    probe = {i: s["margin"] for i, s in Store(str(db)).scores(p).items()}
    rm = tmp_path / "rm-head"
    assert cli_main(["rm", "--data", f"sqlite:///{db}", "--model", "lab-small", "--head-only", "--pooling", "mean",
                     "--val-fraction", "0", "--out", str(rm), "--quiet"]) == 0
    assert cli_main(["label", "rescore", str(db), "--reward-model", str(rm), "--quiet"]) == 0
    capsys.readouterr()
    folder = {i: s["margin"] for i, s in Store(str(db)).scores(p).items()}
    assert sorted(folder) == sorted(probe) and len(probe) == 3
    assert [folder[i] for i in sorted(folder)] == pytest.approx([probe[i] for i in sorted(probe)], abs=1e-3)
    assert max(abs(m) for m in probe.values()) > 0.05  # margins that say something, not zeros that agree
