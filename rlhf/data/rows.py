"""One row -> records, with format detection and a one-line error for anything wrong.

Every error names the file, the line and the field:
`prefs.jsonl:17: "chosen" is empty`.
"""

from __future__ import annotations

import json
import math
import os
import re

from rlhf.data.read import Rows
from rlhf.data.records import Label, Message, Preference, Ranking, SFTExample, as_labels
from rlhf.errors import UserError, bad_row, where

ROLES = ("system", "user", "assistant")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_ASSISTANT = "\n\nAssistant:"

SFT_FORMATS = "{prompt, response}, {prompt, completion}, {messages}, {instruction, output}, {instruction, " \
              "instances}, {text} or a preference row (its chosen response)"
PREFERENCE_FORMATS = "{prompt, chosen, rejected}, {chosen, rejected} or {prompt, responses, ranking}"
LABEL_FORMATS = "{prompt, completion, label} or a preference row"
PROMPT_FORMATS = "{prompt}, {messages}, {instruction} or {chosen, rejected}"


def _kind(value) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "list", dict: "object", type(None): "null", bytes: "bytes"}.get(
        type(value), type(value).__name__)


class Row:
    """One row and where it came from."""

    def __init__(self, path: str, line: int, row: dict, text_cells: bool = False, null_is_absent: bool = False):
        self.path, self.line, self.row, self.text_cells = path, line, row, text_cells
        self.null_is_absent = null_is_absent  # Parquet, hub data: null fills the rows without a field
        self.hh = False  # the prompt was an HH transcript: replies lose the space after "Assistant:"

    @property
    def origin(self) -> str:
        return where(self.path, self.line)

    def fail(self, message: str) -> UserError:
        return bad_row(self.path, self.line, message)

    def has(self, key: str) -> bool:
        value = self.row.get(key)
        return value is not None and not (self.text_cells and isinstance(value, str) and not value.strip())

    def keys(self) -> str:
        present = [str(k) for k in self.row if self.has(k)]
        return ", ".join(present) if present else "none"

    def get(self, key: str):
        return self.row.get(key) if self.has(key) else None

    # ---- field checks -------------------------------------------------------------------------------

    def absent(self, name: str, present: bool | None = None) -> UserError:
        """`"x" is missing`, or `"x" is null` where the field is there with the value null.

        `present`: whether the field is there (a nested one); by default a
        top-level field named `"key"` is looked up in the row.
        """
        return self.fail(f"{name} is {self.null_or_missing(name, present)}")

    def null_or_missing(self, name: str, present: bool | None = None) -> str:
        if present is None:
            key = name[1:-1] if name.startswith('"') and name.endswith('"') else None
            present = key is not None and key in self.row
        return "null" if present and not self.null_is_absent and not self.text_cells else "missing"

    def text(self, value, name: str, *, allow_empty: bool = False, present: bool | None = None) -> str:
        if value is None:
            raise self.absent(name, present)
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise self.fail(f"{name} is not UTF-8") from None
        if not isinstance(value, str):
            raise self.fail(f"{name} must be a string, got {_kind(value)}")
        if not allow_empty and not value.strip():
            raise self.fail(f"{name} is empty")
        return value

    def json_cell(self, value, name: str, *, only_messages: bool = False):
        """CSV cells hold JSON for list fields. With `only_messages`, text that is not a message list stays text."""
        if not (self.text_cells and isinstance(value, str)) or not value.lstrip().startswith("["):
            return value
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError as e:
            if only_messages:
                return value
            raise self.fail(f"{name} is not valid JSON ({e.msg})") from None
        if only_messages and not (isinstance(decoded, list) and decoded and all(isinstance(m, dict) for m in decoded)):
            return value
        return decoded

    def messages(self, value, name: str) -> list[Message]:
        value = self.json_cell(value, name)
        if value is None:
            raise self.absent(name)
        if not isinstance(value, list):
            raise self.fail(f"{name} must be a list of messages, got {_kind(value)}")
        if not value:
            raise self.fail(f"{name} is empty")
        out = []
        for i, m in enumerate(value):
            at = f"{name}[{i}]"
            if not isinstance(m, dict):
                raise self.fail(f'{at} must be an object with "role" and "content", got {_kind(m)}')
            role = m.get("role")
            if role is None:
                raise self.absent(f"{at}.role", "role" in m)
            if role not in ROLES:
                raise self.fail(f"{at}.role is {role!r}; expected one of {', '.join(ROLES)}")
            out.append({"role": role, "content": self.text(m.get("content"), f"{at}.content",
                                                            present="content" in m)})
        return out

    def prompt_messages(self, messages: list[Message], name: str) -> list[Message]:
        if messages[-1]["role"] != "user":
            raise self.fail(f"{name} must end with a user message, not {messages[-1]['role']}")
        return messages

    def prompt(self, key: str = "prompt") -> list[Message]:
        """A string is one user message; a list of messages must end with the user's turn.

        A string in the HH layout (`\n\nHuman: ...\n\nAssistant:`, as many DPO
        preprocessing scripts write it) is parsed into its messages instead.
        """
        name = f'"{key}"'
        value = self.json_cell(self.row.get(key), name, only_messages=True)
        if isinstance(value, list):
            return self.prompt_messages(self.messages(value, name), name)
        text = self.text(value, name)
        end = text.rstrip()
        if text.lstrip(" ").startswith(("\n\nHuman:", "Human:")) and end.endswith(_ASSISTANT):
            self.hh = True
            return self.prompt_messages(parse_transcript(self, end[:-len(_ASSISTANT)], name), name)
        return [{"role": "user", "content": text}]

    def reply(self, value, name: str, *, allow_empty: bool = False) -> str:
        """A response: a string, or (TRL conversational) a list holding one assistant message."""
        value = self.json_cell(value, name, only_messages=True)
        if isinstance(value, list):
            msgs = self.messages(value, name)
            if len(msgs) != 1 or msgs[0]["role"] != "assistant":
                raise self.fail(f"{name} must be one assistant message, got "
                                f"{', '.join(m['role'] for m in msgs)}")
            return msgs[0]["content"]
        text = self.text(value, name, allow_empty=allow_empty)
        return text[1:] if self.hh and text.startswith(" ") else text

    def margin(self) -> float | None:
        value = self.get("margin")
        if value is None:
            return None
        if self.text_cells and isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise self.fail(f'"margin" must be a number, got {value!r}') from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            shown = repr(value) if isinstance(value, str) else _kind(value)
            raise self.fail(f'"margin" must be a number, got {shown}')
        if not math.isfinite(value):
            raise self.fail(f'"margin" must be finite, got {value}')
        if value < 0:
            raise self.fail(f'"margin" must be >= 0 (how much better "chosen" is), got {value}')
        return float(value)

    def label(self) -> bool:
        value = self.row.get("label")
        if value is None:
            raise self.absent('"label"')
        if isinstance(value, str) and self.text_cells:
            low = value.strip().lower()
            if low in ("true", "1", "yes"):
                return True
            if low in ("false", "0", "no"):
                return False
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise self.fail(f'"label" must be true or false, got {value!r}')


# ---- Anthropic HH transcripts ------------------------------------------------------------------------

def parse_transcript(row: Row, text: str, name: str) -> list[Message]:
    """`\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c` -> user/assistant/user messages."""
    if text.startswith("Human:"):
        text = "\n\n" + text
    parts = _HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise row.fail(f'{name} is not a "\\n\\nHuman: ...\\n\\nAssistant: ..." transcript; add a "prompt" field')
    messages = []
    for n, (speaker, content) in enumerate(zip(parts[1::2], parts[2::2]), start=1):
        content = content[1:] if content.startswith(" ") else content  # the space after "Human:"
        if not content.strip():
            raise row.fail(f"{name}: {speaker} turn {n} is empty")
        messages.append({"role": HH_ROLES[speaker], "content": content})
    return messages


def split_transcripts(row: Row, chosen: str, rejected: str) -> tuple[list[Message], str, str]:
    """Implicit prompt: the shared text up to the last `\\n\\nAssistant:` both transcripts have.

    The replies after it may be empty: in HH-RLHF an assistant that says
    nothing is sometimes the preferred answer (an empty reply trains as EOS).
    """
    common = os.path.commonprefix([chosen, rejected])
    cut = common.rfind(_ASSISTANT)
    if cut < 0:
        raise row.fail('"chosen" and "rejected" share no "\\n\\nAssistant:" turn to recover the prompt from; '
                       'add a "prompt" field')
    prompt = row.prompt_messages(parse_transcript(row, chosen[:cut], '"chosen"'), "the recovered prompt")
    replies = []
    for name, text in (('"chosen"', chosen), ('"rejected"', rejected)):
        reply = text[cut + len(_ASSISTANT):]
        reply = reply[1:] if reply.startswith(" ") else reply
        if "\n\nHuman:" in reply:
            raise row.fail(f'{name} continues the conversation after its last shared "Assistant:" turn; '
                           'the two transcripts must differ only in the final reply')
        replies.append(reply)
    return prompt, replies[0], replies[1]


# ---- row formats -----------------------------------------------------------------------------------

def parse_preference(row: Row) -> Preference | Ranking:
    if row.row.get("tie") not in (None, False):  # `rlhf label export --ties`: chosen is not better than rejected
        raise row.fail('"tie": a tie says neither response is better; preference training reads strict '
                       'comparisons only (export without --ties)')
    if row.has("responses") or row.has("ranking"):
        return _parse_ranking(row)
    if not (row.has("chosen") or row.has("rejected")):
        raise row.fail(f"unknown row format (keys: {row.keys()}); expected {PREFERENCE_FORMATS}")
    if row.has("prompt"):
        prompt = row.prompt()
        chosen = row.reply(row.row.get("chosen"), '"chosen"')
        rejected = row.reply(row.row.get("rejected"), '"rejected"')
    else:
        chosen_v = row.json_cell(row.row.get("chosen"), '"chosen"', only_messages=True)
        rejected_v = row.json_cell(row.row.get("rejected"), '"rejected"', only_messages=True)
        if isinstance(chosen_v, list) or isinstance(rejected_v, list):
            prompt, chosen, rejected = _split_conversations(row, chosen_v, rejected_v)
        else:
            chosen = row.text(chosen_v, '"chosen"')
            rejected = row.text(rejected_v, '"rejected"')
            if chosen == rejected:
                raise row.fail('"chosen" and "rejected" are identical')
            prompt, chosen, rejected = split_transcripts(row, chosen, rejected)
    if chosen == rejected:
        raise row.fail('"chosen" and "rejected" are identical')
    return Preference(prompt, chosen, rejected, row.margin(), row.origin)


def _split_conversations(row: Row, chosen, rejected) -> tuple[list[Message], str, str]:
    """TRL implicit-prompt conversational rows: the shared leading messages are the prompt."""
    c = row.messages(chosen, '"chosen"')
    r = row.messages(rejected, '"rejected"')
    n = 0
    while n < min(len(c), len(r)) - 1 and c[n] == r[n]:
        n += 1
    for name, msgs in (('"chosen"', c), ('"rejected"', r)):
        if len(msgs) != n + 1 or msgs[-1]["role"] != "assistant":
            raise row.fail(f"{name} must be the shared prompt messages plus one assistant reply")
    if n == 0:
        raise row.fail('"chosen" and "rejected" share no prompt messages; add a "prompt" field')
    return row.prompt_messages(c[:n], "the shared prompt"), c[n]["content"], r[n]["content"]


def _parse_ranking(row: Row) -> Ranking:
    prompt = row.prompt()
    value = row.json_cell(row.row.get("responses"), '"responses"')
    if value is None:
        raise row.absent('"responses"')
    if not isinstance(value, list):
        raise row.fail(f'"responses" must be a list, got {_kind(value)}')
    if len(value) < 2:
        raise row.fail(f'"responses" needs at least 2 responses to rank, got {len(value)}')
    responses = [row.reply(v, f'"responses"[{i}]') for i, v in enumerate(value)]
    seen: dict[str, int] = {}
    for i, text in enumerate(responses):
        if text in seen:
            raise row.fail(f'"responses"[{seen[text]}] and "responses"[{i}] are identical')
        seen[text] = i
    ranking = row.json_cell(row.row.get("ranking"), '"ranking"')
    if ranking is None:
        raise row.absent('"ranking"')
    k = len(responses)
    if (not isinstance(ranking, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in ranking)
            or sorted(ranking) != list(range(k))):
        raise row.fail(f'"ranking" must be a permutation of 0..{k - 1} (response indices, best first), '
                       f"got {json.dumps(ranking)}")
    return Ranking(prompt, responses, list(ranking), row.origin)


def _alpaca_prompt(row: Row, instruction, value, name: str) -> list[Message]:
    text = row.text(instruction, '"instruction"')
    extra = value.get("input") if isinstance(value, dict) else None
    if extra is not None:
        extra = row.text(extra, f"{name}.input" if name else '"input"', allow_empty=True)
        if extra.strip():
            text = f"{text}\n\n{extra}"
    return [{"role": "user", "content": text}]


def parse_sft(row: Row) -> list[SFTExample]:
    if row.has("messages"):
        msgs = row.messages(row.row["messages"], '"messages"')
        if msgs[-1]["role"] != "assistant":
            raise row.fail(f'"messages" must end with an assistant message (the response), not {msgs[-1]["role"]}')
        if len(msgs) < 2:
            raise row.fail('"messages" has no prompt before its assistant message')
        prompt = row.prompt_messages(msgs[:-1], '"messages" before the last assistant message')
        return [SFTExample(prompt, msgs[-1]["content"], row.origin)]
    if row.has("prompt") and (row.has("response") or row.has("completion")):
        if row.has("label") and not row.label():
            return []  # a thumbs-down KTO row is no demonstration
        key = "response" if row.has("response") else "completion"
        return [SFTExample(row.prompt(), row.reply(row.row[key], f'"{key}"'), row.origin)]
    if row.has("instruction"):
        if row.has("instances"):
            instances = row.json_cell(row.row["instances"], '"instances"')
            if not isinstance(instances, list) or not instances:
                raise row.fail('"instances" must be a non-empty list of {input, output}')
            out = []
            for i, inst in enumerate(instances):
                name = f'"instances"[{i}]'
                if not isinstance(inst, dict):
                    raise row.fail(f"{name} must be an object with \"output\", got {_kind(inst)}")
                prompt = _alpaca_prompt(row, row.row["instruction"], inst, name)
                out.append(SFTExample(prompt, row.text(inst.get("output"), f"{name}.output"), row.origin))
            return out
        prompt = _alpaca_prompt(row, row.row["instruction"], row.row, "")
        return [SFTExample(prompt, row.text(row.row.get("output"), '"output"'), row.origin)]
    if row.has("chosen") or row.has("rejected") or row.has("responses"):
        rec = parse_preference(row)
        if isinstance(rec, Ranking):
            return [SFTExample(rec.prompt, rec.responses[rec.ranking[0]], rec.origin)]
        return [SFTExample(rec.prompt, rec.chosen, rec.origin)]
    if row.has("text"):
        return [SFTExample(None, row.text(row.row["text"], '"text"'), row.origin)]
    if row.has("prompt"):
        if "completion" in row.row and "response" not in row.row:
            raise row.absent('"completion"')
        state = row.null_or_missing('"response"')
        raise row.fail(f'"response" is {state} (or "completion")')
    raise row.fail(f"unknown row format (keys: {row.keys()}); expected {SFT_FORMATS}")


def parse_label(row: Row) -> list[Label]:
    if row.has("label") or (row.has("completion") and not row.has("chosen")):
        prompt = row.prompt()
        completion = row.reply(row.row.get("completion"), '"completion"')
        return [Label(prompt, completion, row.label(), row.origin)]
    if row.has("chosen") or row.has("rejected") or row.has("responses"):
        return as_labels([parse_preference(row)])
    raise row.fail(f"unknown row format (keys: {row.keys()}); expected {LABEL_FORMATS}")


def parse_prompt(row: Row) -> list[Message]:
    if row.has("prompt"):
        return row.prompt()
    if row.has("messages"):
        msgs = row.messages(row.row["messages"], '"messages"')
        if msgs[-1]["role"] == "assistant" and len(msgs) > 1:
            msgs = msgs[:-1]
        return row.prompt_messages(msgs, '"messages"')
    if row.has("instruction"):
        inst = row.json_cell(row.row.get("instances"), '"instances"')
        first = inst[0] if isinstance(inst, list) and inst else row.row
        return _alpaca_prompt(row, row.row["instruction"], first, '"instances"[0]' if first is not row.row else "")
    if row.has("chosen") or row.has("rejected"):
        return parse_preference(row).prompt
    raise row.fail(f"unknown row format (keys: {row.keys()}); expected {PROMPT_FORMATS}")


def each_row(rows: Rows):
    for line, row in rows.rows:
        yield Row(rows.path, line, row, rows.text_cells, rows.null_is_absent)
