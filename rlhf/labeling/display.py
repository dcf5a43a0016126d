"""How an item looks to one annotator, and how their answer maps back to item terms.

Responses are shown in an order drawn per (annotator, item) from the
database secret: stable across reloads, different between annotators, and
not guessable from the item, so position bias averages out and no one can
tell which response came first (or from which model, whose name is never
sent to the browser).

Response text is untrusted. `to_html` either escapes it or renders it as
CommonMark with raw HTML disabled (markdown-it-py `html=False`): a `<script>`
in a response arrives in the page as the text `&lt;script&gt;`.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from functools import lru_cache

from markupsafe import Markup, escape

from rlhf.labeling.store import Answer, Refused

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def shown_order(secret: str, user_id: int, item_id: int, k: int) -> list[int]:
    """Response indices in the order this annotator sees them."""
    digest = hmac.new(secret.encode(), f"order:{user_id}:{item_id}".encode(), hashlib.sha256).digest()
    order = list(range(k))
    random.Random(int.from_bytes(digest[:8], "big")).shuffle(order)
    return order


@lru_cache(maxsize=2)
def _markdown():
    from markdown_it import MarkdownIt

    # commonmark preset with raw HTML off; markdown-it also refuses javascript:/vbscript:/data: links.
    return MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})


def to_html(text: str, render: str = "markdown") -> Markup:
    """Safe HTML for an untrusted response (or the guidelines)."""
    if render == "markdown":
        return Markup(_markdown().render(text))
    return Markup('<div class="plain">') + escape(text) + Markup("</div>")


def prompt_messages(prompt) -> list[dict]:
    """A prompt as messages for display: a string is one user turn."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": str(m.get("role", "user")), "content": str(m.get("content", ""))} for m in prompt]


def answer_from_form(mode: str, shown: list[int], choice: str, order: str | None, strength: str | None) -> Answer:
    """Map what the page posted (display positions) to an `Answer` in item terms.

    Pairwise: `choice` is A (left), B (right), tie, both_bad or skip.
    Ranking: `order` lists display letters best first, e.g. "C,A,D,B".
    """
    choice = (choice or "").strip()
    if mode == "pairwise":
        if choice in ("A", "B"):
            picked = shown[LETTERS.index(choice)]
            s = _strength(strength)
            return Answer(choice="a" if picked == 0 else "b", strength=s)
        if choice in ("tie", "both_bad", "skip"):
            _no_strength(strength, f"a choice of {choice}")
            return Answer(choice=choice)
        raise Refused(400, "choice must be A, B, tie, both_bad or skip")
    _no_strength(strength, "a ranking")
    if choice == "skip":
        return Answer(choice="skip")
    if choice != "rank":
        raise Refused(400, "choice must be rank or skip")
    letters = [x.strip() for x in (order or "").split(",") if x.strip()]
    k = len(shown)
    if sorted(letters) != list(LETTERS[:k]):
        raise Refused(400, f"order must list each of the letters {', '.join(LETTERS[:k])} once")
    return Answer(choice="rank", ranking=[shown[LETTERS.index(x)] for x in letters])


def _no_strength(value: str | None, what: str) -> None:
    # Refused rather than dropped: a client that sends one believes it was stored.
    if value not in (None, ""):
        raise Refused(400, f"strength goes only with a choice of A or B, not with {what}")


def _strength(value: str | None) -> int | None:
    if value in (None, ""):
        return None
    if value not in ("1", "2", "3"):
        raise Refused(400, "strength must be 1, 2 or 3")
    return int(value)


def answer_in_display_terms(label: dict | None, mode: str, shown: list[int]) -> dict:
    """A stored label as the page shows it (to pre-select the previous answer when revisiting)."""
    if not label:
        return {}
    if mode == "pairwise":
        c = label["choice"]
        if c in ("a", "b"):
            pos = shown.index(0 if c == "a" else 1)
            return {"choice": LETTERS[pos], "strength": label.get("strength")}
        return {"choice": c}
    if label["choice"] == "rank" and label.get("ranking"):
        return {"choice": "rank", "order": [LETTERS[shown.index(i)] for i in label["ranking"]]}
    return {"choice": label["choice"]}
