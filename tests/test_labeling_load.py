"""Load on loopback: 32 annotators submit 100 labels each to the real server; none lost, none doubled."""

import os
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
import requests
from sqlalchemy import select

from rlhf.labeling import schema as S
from rlhf.labeling.store import ItemSpec, Store
from test_labeling_store import fresh_db

ANNOTATORS, LABELS_EACH, OVERLAP = 32, 100, 3
N_ITEMS = 1100  # 3200 labels / 3 per item needs 1067 items; a few spare for leases held at the end


@pytest.fixture()
def server(tmp_path):
    db = fresh_db(tmp_path, "load.db")
    store = Store(db, create=True)
    items = [ItemSpec(f"i{n}", f"g{n}", f"prompt {n}", [f"first {n}", f"second {n}"]) for n in range(N_ITEMS)]
    store.create_project("load", mode="pairwise", overlap=OVERLAP, lease_seconds=600, strength=True,
                         render="text", guidelines="", items=items)
    for n in range(ANNOTATORS):
        store.add_user(f"a{n}", "password1", hash_method="pbkdf2:sha256:1000")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    log = tmp_path / "server.log"
    # The server's output goes to a file: an undrained pipe fills up and blocks the server's logging.
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "rlhf", "label", "serve", db, "--port", "0", "--threads",
                                 "8"], stdout=out, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        match = None
        for _ in range(300):  # up to 30 s to start
            match = re.search(r"http://127\.0\.0\.1:(\d+)/", log.read_text())
            if match or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert match, f"server did not start: {log.read_text()}"
        yield store, f"http://127.0.0.1:{match.group(1)}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        store.close()


def annotate(base: str, name: str, seed: int, results: dict):
    rng = random.Random(seed)
    s = requests.Session()
    statuses: Counter = Counter()
    token = re.search(r'name="csrf_token" value="([^"]+)"', s.get(f"{base}/login", timeout=30).text).group(1)
    r = s.post(f"{base}/login", data={"name": name, "password": "password1", "csrf_token": token},
               allow_redirects=False, timeout=30)
    statuses[r.status_code] += 1
    csrf = s.get(f"{base}/api/session", timeout=30).json()["csrf_token"]
    headers = {"X-CSRF-Token": csrf}
    task = s.post(f"{base}/api/next", headers=headers, timeout=30).json()["task"]
    sent = []
    for n in range(LABELS_EACH):
        assert task is not None, f"{name} ran out of items after {n} labels"
        body = {"item_id": task["item_id"], "choice": rng.choice(["A", "B", "tie", "both_bad"]), "next": True}
        if body["choice"] in ("A", "B"):
            body["strength"] = rng.choice([1, 2, 3])
        r = s.post(f"{base}/api/labels", json=body, headers=headers, timeout=60)
        statuses[r.status_code] += 1
        if n % 10 == 0:
            # a client that never saw the answer sends the same label again: still one label
            again = s.post(f"{base}/api/labels", json={**body, "next": False}, headers=headers, timeout=60)
            statuses[again.status_code] += 1
            assert again.json()["label"]["changed"] is False
        sent.append((task["item_id"], body["choice"]))
        task = r.json()["task"]
    results[name] = {"statuses": statuses, "sent": sent}


def test_32_annotators_100_labels_each(server):
    store, base = server
    results: dict = {}
    errors: list = []

    def run(n):
        try:
            annotate(base, f"a{n}", n, results)
        except Exception as e:  # noqa: BLE001 - reported below with the annotator's name
            errors.append(f"a{n}: {e!r}")

    threads = [threading.Thread(target=run, args=(n,)) for n in range(ANNOTATORS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors[:3]
    assert len(results) == ANNOTATORS
    statuses = sum((r["statuses"] for r in results.values()), Counter())
    assert set(statuses) == {200, 302}, statuses  # every label accepted; 302 only from the logins

    with store.read() as c:
        labels = c.execute(select(S.labels.c.item_id, S.labels.c.user_id, S.labels.c.choice)).all()
        names = dict(c.execute(select(S.users.c.id, S.users.c.name)).all())
        done = dict(c.execute(select(S.items.c.id, S.items.c.done_count)).all())
        creates = c.execute(select(S.audit.c.id).where(S.audit.c.action == "label.create")).all()
    # none lost, none doubled: exactly what each annotator sent, once
    assert len(labels) == ANNOTATORS * LABELS_EACH == len(creates)
    assert len({(lab.item_id, lab.user_id) for lab in labels}) == len(labels)
    got = {(names[lab.user_id], lab.item_id) for lab in labels}
    want = {(name, item) for name, r in results.items() for item, _ in r["sent"]}
    assert got == want
    # the overlap target is never overshot, and the running count matches the labels
    per_item = Counter(lab.item_id for lab in labels)
    assert max(per_item.values()) == OVERLAP
    assert all(done[item] == per_item.get(item, 0) for item in done)
