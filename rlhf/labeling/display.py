"""How an item looks to one annotator, and how their answer maps back to item terms.

Responses are shown in an order drawn per (annotator, item) from the
database secret: stable across reloads, different between annotators, and
not guessable from the item, so position bias averages out and no one can
tell which response came first (or from which model, whose name is never
sent to the browser).

Response text is untrusted. `to_html` either escapes it or renders it as
CommonMark with raw HTML disabled (markdown-it-py `html=False`): a `<script>`
in a response arrives in the page as the text `&lt;script&gt;`. Rendering
keeps the model's line breaks, never makes an `<img>` (an image is shown as
its alt text and address, so nothing is fetched from anywhere), and opens
links in a new tab with `rel="noopener noreferrer"`; the page also carries
the raw text, escaped, for the annotator who wants to see exactly what the
model wrote.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from functools import lru_cache

from markupsafe import Markup, escape

from rlhf.labeling.store import Answer, Refused, places

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
    # breaks: a newline in the text is a line break on the page, as the model wrote it.
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False, "breaks": True})

    def image(self, tokens, idx, options, env):
        t = tokens[idx]
        alt = "".join(c.content for c in (t.children or []))
        return (f'<span class="image">[image: {escape(alt)}]'
                f' <code>{escape(t.attrGet("src") or "")}</code></span>')

    def link_open(self, tokens, idx, options, env):
        tokens[idx].attrSet("target", "_blank")
        tokens[idx].attrSet("rel", "noopener noreferrer")
        return self.renderToken(tokens, idx, options, env)

    md.add_render_rule("image", image)
    md.add_render_rule("link_open", link_open)
    return md


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


def answer_from_form(mode: str, shown: list[int], choice: str, order: str | None, strength: str | None,
                     text: str | None = None) -> Answer:
    """Map what the page posted (display positions) to an `Answer` in item terms.

    Pairwise: `choice` is A (left), B (right), tie, both_bad or skip.
    Ranking: `choice` rank, all_bad or skip; `order` lists display letters
    best first, tied ones joined by "=": "C,A=D,B" (C best, A and D tied).
    Thumbs: `choice` up, down or skip. Demonstration: `choice` write with
    `text` (the response exactly as typed, CRLF line ends made LF), or skip.
    """
    choice = (choice or "").strip()
    if text is not None and (choice != "write" or not isinstance(text, str)):
        raise Refused(400, "text goes only with a demonstration (choice write), as a string")
    if mode in ("thumbs", "demonstration"):
        _no_strength(strength, f"a {mode} label")
        if order not in (None, ""):
            raise Refused(400, f"a {mode} label has no order")
        if choice == "write" and mode == "demonstration":
            return Answer(choice="write", text=(text or "").replace("\r\n", "\n"))
        if choice in ("up", "down", "skip") and (mode == "thumbs" or choice == "skip"):
            return Answer(choice=choice)
        raise Refused(400, "choice must be up, down or skip" if mode == "thumbs" else "choice must be write or skip")
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
    if choice in ("skip", "all_bad"):
        return Answer(choice=choice)
    if choice != "rank":
        raise Refused(400, "choice must be rank, all_bad or skip")
    k = len(shown)
    groups = [[x.strip() for x in part.split("=")] for part in (order or "").split(",") if part.strip()]
    if not groups:
        raise Refused(400, "order is empty: put the responses in order (or confirm the order shown) first")
    if sorted(x for g in groups for x in g) != list(LETTERS[:k]):
        raise Refused(400, f"order must list each of the letters {', '.join(LETTERS[:k])} once")
    ranking = [[shown[LETTERS.index(x)] for x in g] for g in groups]
    return Answer(choice="rank", ranking=[g[0] if len(g) == 1 else sorted(g) for g in ranking])


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
    if mode in ("thumbs", "demonstration"):
        return {"choice": label["choice"], **({"text": label["text"]} if label.get("text") is not None else {})}
    if mode == "pairwise":
        c = label["choice"]
        if c in ("a", "b"):
            pos = shown.index(0 if c == "a" else 1)
            return {"choice": LETTERS[pos], "strength": label.get("strength")}
        return {"choice": c}
    if label["choice"] == "rank" and label.get("ranking"):
        return {"choice": "rank", "order": ["=".join(sorted(LETTERS[shown.index(i)] for i in tied))
                                            for tied in places(label["ranking"])]}
    return {"choice": label["choice"]}


def suggestion_text(suggestion, mode: str, shown: list[int]) -> str:
    """An AI suggestion (an answer in item terms) as this annotator sees the responses: plain text."""
    if suggestion is None:
        return ""
    if mode == "thumbs":
        return {"up": "good", "down": "bad"}.get(suggestion, "")
    if mode == "pairwise":
        seen = answer_in_display_terms({"choice": suggestion}, mode, shown)
        return f"{seen['choice']} is better" if seen.get("choice") in LETTERS else ""
    seen = answer_in_display_terms({"choice": "rank", "ranking": suggestion}, mode, shown)
    return " > ".join(p.replace("=", " = ") for p in seen.get("order", []))
