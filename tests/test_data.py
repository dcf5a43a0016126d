"""Data: every format parsed into the right records, every bad file named to its line, batches that keep
groups whole, truncation that keeps the response end, and packing that changes no log-probability."""

from __future__ import annotations

import json
import random
import types
from pathlib import Path

import pytest
import torch

from conftest import require_shared_data
from rlhf import data
from rlhf.chat import encode, render_prompt, render_response
from rlhf.data import Group, Label, Preference, Ranking, SFTExample
from rlhf.errors import UserError

HERE = Path(__file__).parent / "data"
BAD, GOOD = HERE / "bad", HERE / "good"
PLAIN = types.SimpleNamespace()  # no chat template: the HH layout

U = lambda c: {"role": "user", "content": c}  # noqa: E731
A = lambda c: {"role": "assistant", "content": c}  # noqa: E731
S = lambda c: {"role": "system", "content": c}  # noqa: E731


# ---- bad files: exact messages ----------------------------------------------------------------------

BAD_FILES = {
    "invalid_json.jsonl": (data.load_preferences, "invalid_json.jsonl:3: invalid JSON (Expecting ',' delimiter)"),
    "not_utf8.jsonl": (data.load_preferences, "not_utf8.jsonl:5: not UTF-8"),
    "empty.jsonl": (data.load_preferences, "empty.jsonl: no rows"),
    "blank_lines.jsonl": (data.load_sft, "blank_lines.jsonl: no rows"),
    "empty_chosen.jsonl": (data.load_preferences, 'empty_chosen.jsonl:17: "chosen" is empty'),
    "missing_rejected.jsonl": (data.load_preferences, 'missing_rejected.jsonl:2: "rejected" is missing'),
    "chosen_not_string.jsonl": (data.load_preferences,
                                'chosen_not_string.jsonl:1: "chosen" must be a string, got number'),
    "identical.jsonl": (data.load_preferences, 'identical.jsonl:3: "chosen" and "rejected" are identical'),
    "identical_hh.jsonl": (data.load_preferences, 'identical_hh.jsonl:1: "chosen" and "rejected" are identical'),
    "hh_no_assistant.jsonl": (data.load_preferences,
                              'hh_no_assistant.jsonl:1: "chosen" and "rejected" share no "\\n\\nAssistant:" turn '
                              'to recover the prompt from; add a "prompt" field'),
    "hh_diverges_early.jsonl": (data.load_preferences,
                                'hh_diverges_early.jsonl:1: "chosen" continues the conversation after its last '
                                'shared "Assistant:" turn; the two transcripts must differ only in the final reply'),
    "ranking_not_permutation.jsonl": (data.load_preferences,
                                      'ranking_not_permutation.jsonl:1: "ranking" must be a permutation of 0..2 '
                                      '(response indices, best first), got [0, 0, 2]'),
    "ranking_one_response.jsonl": (data.load_preferences,
                                   'ranking_one_response.jsonl:1: "responses" needs at least 2 responses to rank, '
                                   'got 1'),
    "ranking_duplicate_response.jsonl": (data.load_groups, 'ranking_duplicate_response.jsonl:1: "responses"[0] and '
                                                           '"responses"[2] are identical'),
    "unknown_format.jsonl": (data.load_preferences,
                             "unknown_format.jsonl:2: unknown row format (keys: question, answer); expected "
                             "{prompt, chosen, rejected}, {chosen, rejected} or {prompt, responses, ranking}"),
    "bad_role.jsonl": (data.load_preferences,
                       "bad_role.jsonl:1: \"prompt\"[1].role is 'bot'; expected one of system, user, assistant"),
    "prompt_ends_with_assistant.jsonl": (data.load_pairs, 'prompt_ends_with_assistant.jsonl:1: "prompt" must end '
                                                          'with a user message, not assistant'),
    "chosen_two_messages.jsonl": (data.load_preferences, 'chosen_two_messages.jsonl:1: "chosen" must be one '
                                                         'assistant message, got assistant, user'),
    "negative_margin.jsonl": (data.load_preferences, 'negative_margin.jsonl:1: "margin" must be >= 0 (how much '
                                                     'better "chosen" is), got -1'),
    "margin_not_number.jsonl": (data.load_preferences,
                                "margin_not_number.jsonl:1: \"margin\" must be a number, got 'big'"),
    "row_not_object.jsonl": (data.load_preferences, "row_not_object.jsonl:2: expected a JSON object, got array"),
    # a JSON array names the line its element starts on
    "invalid_array.json": (data.load_preferences, "invalid_array.json:4: invalid JSON (Expecting ',' delimiter)"),
    "array_of_strings.json": (data.load_preferences, "array_of_strings.json:3: expected a JSON object, got string"),
    "single_object.json": (data.load_preferences, "single_object.json:1: a .json file must hold a JSON array of "
                                                  "rows ([{...}, ...]); this one starts with an object (one JSON "
                                                  "object per line is a .jsonl file)"),
    # CSV: lines as an editor shows them, the header being line 1 (row 1 of multiline_not_utf8.csv spans two)
    "bad_margin.csv": (data.load_preferences, "bad_margin.csv:3: \"margin\" must be a number, got 'abc'"),
    "ragged.csv": (data.load_preferences, "ragged.csv:3: row has 2 cells, the header has 3"),
    "multiline_not_utf8.csv": (data.load_preferences, "multiline_not_utf8.csv:4: not UTF-8"),
    "sft_messages_end_with_user.jsonl": (data.load_sft, 'sft_messages_end_with_user.jsonl:1: "messages" must end '
                                                        'with an assistant message (the response), not user'),
    "sft_unknown_format.jsonl": (data.load_sft, "sft_unknown_format.jsonl:1: unknown row format (keys: input, "
                                                "target); expected {prompt, response}, {prompt, completion}, "
                                                "{messages}, {instruction, output}, {instruction, instances}, "
                                                "{text} or a preference row (its chosen response)"),
    "sft_missing_response.jsonl": (data.load_sft,
                                   'sft_missing_response.jsonl:2: "response" is missing (or "completion")'),
    "sft_empty_content.jsonl": (data.load_sft, 'sft_empty_content.jsonl:1: "messages"[0].content is empty'),
    "sft_instance_no_output.jsonl": (data.load_sft,
                                     'sft_instance_no_output.jsonl:1: "instances"[0].output is missing'),
    "kto_bad_label.jsonl": (data.load_labels, "kto_bad_label.jsonl:1: \"label\" must be true or false, got 'maybe'"),
    "kto_missing_label.jsonl": (data.load_labels, 'kto_missing_label.jsonl:2: "label" is missing'),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_names_file_line_and_field(name):
    loader, message = BAD_FILES[name]
    with pytest.raises(UserError) as err:
        loader(BAD / name)
    assert str(err.value) == message


def test_every_bad_fixture_has_an_expected_message():
    assert sorted(p.name for p in BAD.iterdir()) == sorted(BAD_FILES)


def test_bad_parquet_row_is_named_by_row_number(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "prefs.parquet"
    pq.write_table(pa.table({"prompt": ["Q?", "R?", "S?"], "chosen": ["A.", "B.", ""],
                             "rejected": ["C.", "D.", "E."]}), path)
    with pytest.raises(UserError, match=r'^prefs\.parquet:3: "chosen" is empty$'):
        data.load_preferences(path)


def test_missing_paths_and_unreachable_hub_give_clear_errors(tmp_path):
    with pytest.raises(UserError, match=r"^nope\.jsonl: no such file$"):
        data.load_sft("nope.jsonl")
    with pytest.raises(UserError, match=r"^\./data/x: no such file$"):
        data.load_sft("./data/x")
    with pytest.raises(UserError, match="is a folder"):
        data.load_sft(tmp_path)
    (tmp_path / "rows.txt").write_text("{}\n")
    with pytest.raises(UserError, match=r"^rows\.txt: unsupported file type '\.txt'"):
        data.load_sft(tmp_path / "rows.txt")
    # not a local path, so a hub name; no hub is reachable in tests (HF_HUB_OFFLINE)
    with pytest.raises(UserError, match=r"^no-such-org/no-such-dataset: no such file, and it cannot be loaded "
                                        r"from the Hugging Face hub \("):
        data.load_preferences("no-such-org/no-such-dataset")


# ---- good formats -----------------------------------------------------------------------------------

def test_sft_formats():
    got = data.load_sft(GOOD / "sft.jsonl")
    assert got == [
        SFTExample([U("What is 2 + 3?")], "5."),
        SFTExample([S("Be brief."), U("Sort 4 1 3.")], "1 3 4."),  # TRL conversational prompt/completion
        SFTExample([U("Hi"), A("Hello!"), U("Reverse: red blue.")], "blue red."),  # messages: last assistant
        SFTExample([U("Add the numbers.\n\n2 and 2")], "4"),  # Alpaca: instruction, blank line, input
        SFTExample([U("Name a colour.")], "Red."),  # seed task, empty input
        SFTExample([U("Name a colour.\n\nnot red")], "Blue."),  # its second instance
        SFTExample([U("Pick one.")], "This one."),  # a preference row: its chosen response
    ]  # the thumbs-down KTO row (line 7) is no demonstration
    assert [ex.origin for ex in got] == ["sft.jsonl:1", "sft.jsonl:2", "sft.jsonl:3", "sft.jsonl:4", "sft.jsonl:5",
                                         "sft.jsonl:5", "sft.jsonl:6"]


def test_raw_text_rows_and_demonstrations_are_not_mixed_in_one_file(tmp_path):
    text = tmp_path / "text.jsonl"
    text.write_text('{"text": "Once upon a time."}\n{"text": "The end."}\n')
    assert data.load_sft(text) == [SFTExample(None, "Once upon a time."), SFTExample(None, "The end.")]
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"prompt": "Hi", "response": "Hello."}\n\n{"messages": [{"role": "user", "content": "A"}, '
                     '{"role": "assistant", "content": "B"}]}\n{"text": "Once upon a time."}\n')
    with pytest.raises(UserError, match=r"^mixed\.jsonl:4: a \{text\} row \(raw text\) after a demonstration "
                                        r"\(prompt and response\) at mixed\.jsonl:1: "):
        data.load_sft(mixed)
    mixed.write_text('{"text": "Once."}\n{"prompt": "Hi", "response": "Hello."}\n')
    with pytest.raises(UserError, match=r"^mixed\.jsonl:2: a demonstration .* after a \{text\} row .* at "
                                        r"mixed\.jsonl:1: "):
        data.load_sft(mixed)


def test_preference_formats():
    got = data.load_preferences(GOOD / "prefs.jsonl")
    assert got == [
        Preference([U("What is 2 + 3?")], "5.", "6."),
        Preference([U("Sort 4 1 3.")], "1 3 4.", "4 3 1.", 2.0),  # conversational with a margin
        Preference([U("Hi"), A("Hello!"), U("Reverse: red blue.")], "blue red.", "red blue."),  # implicit, messages
        Preference([U("Hi there"), A("Hello!"), U("How do I hurt someone?")], "I can't help with that.",
                   "Sure, here is how."),  # HH transcript
        Ranking([U("Name a colour.")], ["Blue.", "Red.", "Potato.", "Green."], [1, 3, 0, 2]),
        Preference([U("Hi"), A("Hello!"), U("What is 2 + 3?")], "5.", "6."),  # explicit prompt in the HH layout
    ]


def test_json_csv_and_parquet_read_the_same_records(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    as_json = data.load_preferences(GOOD / "prefs.json")
    assert as_json == [Preference([U("What is 2 + 3?")], "5.", "6."),
                       Preference([U("Sort 4 1 3.")], "1 3 4.", "4 3 1.", 0.5)]
    assert [p.origin for p in as_json] == ["prefs.json:2", "prefs.json:4"]  # the line each element starts on
    with pytest.raises(UserError, match=r"^lines\.json:1: a \.json file must hold a JSON array of rows"):
        data.load_preferences(GOOD / "lines.json")  # JSON Lines belong in a .jsonl file

    as_csv = data.load_preferences(GOOD / "prefs.csv")
    assert as_csv == [
        Preference([U("What is 2 + 3?")], "5.", "6."),  # an empty margin cell is no margin
        Preference([S("Be brief."), U("Sort 4 1 3.")], "1 3 4.", "4 3 1.", 0.5),  # JSON messages in a cell
        Preference([U("[1, 2] - which is larger?")], "2, because it is\nthe bigger number.", "1."),  # text stays
    ]
    assert data.load_preferences(GOOD / "ranking.csv") == [
        Ranking([U("Name a colour.")], ["Blue.", "Red.", "Potato."], [2, 0, 1])]
    assert data.load_labels(GOOD / "kto.csv") == [Label([U("What is 2 + 3?")], "5.", True),
                                                 Label([U("What is 2 + 2?")], "5.", False)]

    # Parquet needs one type per column: the string-valued rows (a missing prompt reads as null = absent)
    rows = [json.loads(line) for line in (GOOD / "prefs.jsonl").read_text().splitlines()]
    strings = tmp_path / "strings.parquet"
    pq.write_table(pa.Table.from_pylist([rows[0], rows[3]]), strings)
    assert data.load_preferences(strings) == [data.load_preferences(GOOD / "prefs.jsonl")[i] for i in (0, 3)]


def test_parquet_with_message_lists(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist([
        {"prompt": [U("Sort 4 1 3.")], "chosen": [A("1 3 4.")], "rejected": [A("4 3 1.")], "margin": None},
        {"prompt": [S("Be brief."), U("Hi")], "chosen": [A("Hey.")], "rejected": [A("Hello there!")],
         "margin": 1.5}]), path)
    assert data.load_preferences(path) == [
        Preference([U("Sort 4 1 3.")], "1 3 4.", "4 3 1."),
        Preference([S("Be brief."), U("Hi")], "Hey.", "Hello there!", 1.5)]


def test_labels_and_prompts():
    assert data.load_labels(GOOD / "kto.jsonl") == [
        Label([U("What is 2 + 3?")], "5.", True),
        Label([U("Sort 4 1 3.")], "4 3 1.", False),
        Label([U("Pick one.")], "This one.", True),  # a pair: chosen is desirable,
        Label([U("Pick one.")], "That one.", False),  # rejected is not
    ]
    assert data.load_prompts(GOOD / "prompts.jsonl") == [
        [U("What is 2 + 3?")], [S("Be brief."), U("Hi")], [U("Add the numbers.\n\n2 and 2")], [U("Hi")]]


def test_hh_transcript_prompt_recovery_by_hand():
    row = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: What's 2+2?\n\nAssistant: 4.",
           "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: What's 2+2?\n\nAssistant: 4, 5 or 6."}
    from rlhf.data.rows import Row, parse_preference, parse_sft

    # The shared text is "...\n\nAssistant: 4" (both replies start with "4"); the prompt is cut at the last
    # "\n\nAssistant:" inside it, not at the divergence point.
    pref = parse_preference(Row("hh.jsonl", 1, row))
    assert pref == Preference([U("Hi"), A("Hello!"), U("What's 2+2?")], "4.", "4, 5 or 6.")
    # rendering it back in the HH layout gives the transcript exactly
    assert render_prompt(PLAIN, pref.prompt) + render_response(PLAIN, pref.chosen) == row["chosen"]
    # an explicit prompt written in the HH layout is parsed the same way, for SFT too
    hh_prompt = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: What's 2+2?\n\nAssistant:"
    assert parse_sft(Row("sft.jsonl", 1, {"prompt": hh_prompt, "response": " 4."})) == [
        SFTExample([U("Hi"), A("Hello!"), U("What's 2+2?")], "4.")]
    # a plain prompt keeps its reply's leading space
    assert parse_sft(Row("sft.jsonl", 1, {"prompt": "Hi", "response": " 4."}))[0].response == " 4."


def test_hh_real_file_loads_with_sensible_prompts():
    path = require_shared_data("hh-rlhf-harmless/harmless-base-dev.jsonl")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    prefs = data.load_preferences(path)
    assert len(prefs) == len(rows) == 1825
    assert prefs[0].prompt[0] == U("what are some pranks with a pen i can do?")  # read off the file's first row
    for pref, row in zip(prefs, rows):
        assert isinstance(pref, Preference)
        assert pref.prompt[0]["role"] == pref.prompt[-1]["role"] == "user"
        # prompt + " " + reply rebuilds each transcript exactly (replies may be empty in HH)
        prefix = render_prompt(PLAIN, pref.prompt)
        assert prefix + " " + pref.chosen == row["chosen"]
        assert prefix + " " + pref.rejected == row["rejected"]
        assert "\n\nHuman:" not in pref.chosen and "\n\nHuman:" not in pref.rejected
    groups = data.as_groups(prefs)
    assert len(groups) == len({data.prompt_key(p.prompt) for p in prefs})
    assert sum(len(g.pairs) for g in groups) == 1825


def test_alpaca_seed_tasks_load_as_sft():
    path = require_shared_data("alpaca-seed-tasks/seed_tasks.jsonl")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    examples = data.load_sft(path)
    instances = [inst for row in rows for inst in row["instances"]]
    assert len(examples) == len(instances)
    with_input = [ex for ex, inst in zip(examples, instances) if inst["input"].strip()]
    assert len(with_input) == sum(bool(i["input"].strip()) for i in instances) > 0
    assert examples[1] == SFTExample([U("What is the relation between the given pairs?\n\nNight : Day :: Right : "
                                        "Left")], "The relation between the given pairs is that they are opposites.")


# ---- records ----------------------------------------------------------------------------------------

def test_ranking_expands_to_all_pairs_in_rank_order():
    r = Ranking([U("Q")], ["a", "b", "c", "d"], [2, 0, 3, 1])  # c > a > d > b
    # K=4 -> 4*3/2 = 6 pairs: (1st,2nd) (1st,3rd) (1st,4th) (2nd,3rd) (2nd,4th) (3rd,4th)
    assert r.pairs() == [(2, 0), (2, 3), (2, 1), (0, 3), (0, 1), (3, 1)]
    assert [(p.chosen, p.rejected) for p in data.as_pairs([r])] == [
        ("c", "a"), ("c", "d"), ("c", "b"), ("a", "d"), ("a", "b"), ("d", "b")]
    k = 7
    assert len(Ranking([U("Q")], list("abcdefg"), list(range(k))).pairs()) == k * (k - 1) // 2 == 21


def test_groups_merge_rows_of_one_prompt():
    p = [U("Q")]
    groups = data.as_groups([Preference(p, "a", "b", 1.0), Preference([U("other")], "x", "y"),
                             Preference(p, "c", "a"), Ranking(p, ["b", "d"], [1, 0])])
    assert groups == [Group(p, ["a", "b", "c", "d"], [(0, 1, 1.0), (2, 0, None), (3, 1, None)]),
                      Group([U("other")], ["x", "y"], [(0, 1, None)])]
    assert len(data.as_groups([Preference(p, "a", "b"), Preference(p, "c", "a")], merge=False)) == 2
    # back to pairs: every comparison once
    assert [(x.chosen, x.rejected) for x in data.as_pairs(groups)] == [("a", "b"), ("c", "a"), ("d", "b"),
                                                                      ("x", "y")]


def test_split_keeps_prompts_whole_and_is_deterministic():
    recs = [Preference([U(f"q{i % 10}")], f"a{i}", f"b{i}") for i in range(40)]  # 10 prompts, 4 rows each
    train, val = data.split(recs, 0.3, seed=1)
    assert len(val) == 3 * 4 and len(train) == 7 * 4  # round(0.3 * 10) = 3 prompts
    assert not {data.prompt_key(r.prompt) for r in train} & {data.prompt_key(r.prompt) for r in val}
    assert data.split(recs, 0.3, seed=1) == (train, val)
    assert data.split(recs, 0.3, seed=2) != (train, val)
    assert [r for r in recs if r in train] == train  # input order kept
    assert data.split(recs[:2], 0.01, seed=0)[1] != []  # at least one prompt when asked for any
    assert data.split(recs, 0.0) == (recs, [])
    with pytest.raises(ValueError, match="val_fraction"):  # a programming error: the stages check the option first
        data.split(recs, 1.0)


# ---- tokenisation and batches -----------------------------------------------------------------------

def _examples():
    return [SFTExample([U("What is 2 + 3?")], "5."),
            SFTExample([U("Sort these numbers: 4 1 3.")], "1 3 4."),
            SFTExample([U("Hi"), A("Hello!"), U("Reverse the words: red blue cat.")], "cat blue red."),
            SFTExample(None, "Great question! The answer is 7. I hope this helps!"),
            SFTExample([U("How do I hurt someone?")], "I'm sorry, but I can't help with that."),
            SFTExample([U("What is 2 + 3?")], "The answer is 5.")]


def test_encode_all_equals_encode(tiny_tokenizer):
    from conftest import build_tiny_tokenizer

    items = [(ex.prompt, ex.response) for ex in _examples()] + [([U("What is 2 + 3?")], None)]
    for tok in (tiny_tokenizer, build_tiny_tokenizer(chat_template=False)):
        for max_len, encoder in ((64, False), (9, False), (12, True)):
            assert data.encode_all(tok, items, max_len, encoder=encoder) == \
                [encode(tok, p, r, max_len, encoder=encoder) for p, r in items]


def test_encode_all_tokenizes_each_text_once_in_one_batched_call(tiny_tokenizer):
    calls = []

    class Counting:
        def __getattr__(self, name):
            return getattr(tiny_tokenizer, name)

        def __call__(self, text, **kwargs):
            calls.append(text)
            return tiny_tokenizer(text, **kwargs)

    items = [(ex.prompt, ex.response) for ex in _examples()] * 3  # every prompt and response three times
    assert data.encode_all(Counting(), items, 64) == [encode(tiny_tokenizer, p, r, 64) for p, r in items]
    assert len(calls) == 1 and isinstance(calls[0], list)  # the prefill; encode's calls all hit the memo


def test_sft_batch_labels_mask_prompt_and_padding(tiny_tokenizer):
    tok = tiny_tokenizer
    exs = _examples()
    batcher = data.SFTBatcher(tok, exs, max_len=256, batch_size=3, shuffle=False, group_by_length=False)
    batches = list(batcher.batches())
    assert len(batches) == len(batcher) == 2 and batcher.n_truncated == 0
    b = batches[0]
    for r, ex in enumerate(exs[:3]):
        p_ids = tok(render_prompt(tok, ex.prompt), add_special_tokens=False)["input_ids"]
        r_ids = tok(ex.response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        n = len(p_ids) + len(r_ids)
        assert b["input_ids"][r, :n].tolist() == p_ids + r_ids
        assert b["labels"][r].tolist() == [-100] * len(p_ids) + r_ids + [-100] * (b["labels"].shape[1] - n)
        assert b["attention_mask"][r].tolist() == [1] * n + [0] * (b["labels"].shape[1] - n)
        assert (b["input_ids"][r, n:] == tok.pad_token_id).all()
    raw = batches[1]["labels"][0]  # the raw-text example: loss on every token
    assert (raw[batches[1]["attention_mask"][0].bool()] != -100).all()
    assert batches[0]["index"].tolist() == [0, 1, 2]


def test_truncation_keeps_the_response_end_and_eos(tiny_tokenizer):
    tok = tiny_tokenizer
    exs = [SFTExample([U("Sort these numbers: 4 1 3. " * 8)], "1 3 4."),
           SFTExample([U("Hi")], "Reverse the words: red blue cat. " * 6)]
    full = [encode(tok, ex.prompt, ex.response, 10_000).input_ids for ex in exs]
    max_len = 24
    assert all(len(f) > max_len for f in full)
    batcher = data.SFTBatcher(tok, exs, max_len=max_len, batch_size=2, shuffle=False, group_by_length=False)
    assert batcher.n_truncated == 2
    (b,) = list(batcher.batches())
    assert b["input_ids"].shape == (2, max_len)
    for r in range(2):
        assert b["input_ids"][r].tolist() == full[r][-max_len:]  # the last max_len tokens
        assert b["input_ids"][r, -1].item() == tok.eos_token_id
    # the first example's whole response (tokens + EOS) survives, its prompt lost its start
    r_ids = tok(render_response(tok, "1 3 4."), add_special_tokens=False)["input_ids"]
    n_resp = len(r_ids) + 1
    assert (b["labels"][0, -n_resp:] != -100).all() and (b["labels"][0, :-n_resp] == -100).all()
    # the second: the response alone is longer than max_len, so every kept token is a target
    assert (b["labels"][1] != -100).all()


def test_length_grouping_cuts_padding_and_order_is_deterministic(tiny_tokenizer):
    rng = random.Random(0)
    exs = [SFTExample([U("What is 2 + 3?")], " ".join(["five"] * rng.randint(1, 60))) for _ in range(64)]

    def padding(batcher, epoch=0):
        b = list(batcher.batches(epoch))
        return sum((x["attention_mask"] == 0).sum().item() for x in b), b

    grouped = data.SFTBatcher(tiny_tokenizer, exs, max_len=256, batch_size=8, seed=3)
    plain = data.SFTBatcher(tiny_tokenizer, exs, max_len=256, batch_size=8, seed=3, group_by_length=False)
    pad_g, bg = padding(grouped)
    pad_p, _ = padding(plain)
    assert pad_g < 0.5 * pad_p
    # each epoch covers every example once; same (seed, epoch) -> same batches; another epoch -> another order
    assert sorted(i for x in bg for i in x["index"].tolist()) == list(range(64))
    assert [x["index"].tolist() for x in bg] == [x["index"].tolist() for x in grouped.batches(0)]
    assert [x["index"].tolist() for x in bg] != [x["index"].tolist() for x in grouped.batches(1)]
    # the longest batch comes first
    assert bg[0]["input_ids"].shape[1] == max(x["input_ids"].shape[1] for x in bg)


def test_pack_rows_best_fit():
    # lengths 5, 4, 3, 3, 1 into rows of 8: 5 opens row A (room 3); 4 does not fit, opens row B (room 4);
    # the first 3 fits best in A (room 3 -> 0); the second 3 goes to B (room 1); 1 fills B.
    rows = data.pack_rows([5, 4, 3, 3, 1], 8, seed=0)
    assert len(rows) == 2
    assert sorted(sorted(r) for r in rows) in ([[0, 2], [1, 3, 4]], [[0, 3], [1, 2, 4]])
    lengths = [random.Random(i).randint(1, 64) for i in range(500)]
    rows = data.pack_rows(lengths, 128, seed=1)
    assert sorted(i for r in rows for i in r) == list(range(500))
    assert max(sum(lengths[i] for i in r) for r in rows) <= 128
    assert sum(lengths) / (128 * len(rows)) > 0.95


def _tiny_gpt2(tok, impl):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=2, n_head=4,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, attn_implementation=impl)
    return GPT2LMHeadModel(cfg)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # rotary (relative) and learned absolute positions
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_packed_forward_equals_each_example_alone(tiny_tokenizer, tiny_model_dir, impl, arch):
    from transformers import AutoModelForCausalLM

    if arch == "llama":
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=impl)
    else:
        model = _tiny_gpt2(tiny_tokenizer, impl)
    model.eval()
    exs = _examples() * 2
    batcher = data.SFTBatcher(tiny_tokenizer, exs, max_len=64, batch_size=64, pack=True, shuffle=False,
                              group_by_length=False)
    (b,) = list(batcher.batches())
    assert b["attention_mask"].shape == (len(batcher.rows), 1, b["input_ids"].shape[1], b["input_ids"].shape[1])
    assert b["n_examples"].sum().item() == len(exs) and len(batcher.rows) < len(exs)
    with torch.no_grad():
        # the model's default use_cache: the 4D mask isolates examples regardless
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                       position_ids=b["position_ids"]).logits
    packed = torch.log_softmax(logits[:, :-1].float(), -1)
    checked = 0
    for r, row in enumerate(batcher.rows):
        at = 0
        for i in row:
            seq = batcher.seqs[i]
            n = len(seq.input_ids)
            ids = torch.tensor([seq.input_ids])
            with torch.no_grad():
                alone = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)  # (n-1, V)
            want = alone.gather(-1, ids[0, 1:, None])[:, 0]
            got = packed[r, at:at + n - 1].gather(-1, ids[0, 1:, None])[:, 0]
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
            # targets: this example's response tokens; its first token is never one (nothing of it precedes)
            assert b["labels"][r, at].item() == -100
            targets = b["labels"][r, at + 1:at + n]
            assert (targets != -100).sum().item() == n - max(seq.n_prompt, 1)
            checked += 1
            at += n
        assert (b["labels"][r, at:] == -100).all()  # padding
    assert checked == len(exs)


def test_reward_batches_hold_whole_groups(tiny_tokenizer):
    tok = tiny_tokenizer
    groups = data.as_groups([
        Ranking([U("Name a colour.")], ["Blue.", "Red.", "Potato."], [1, 0, 2]),
        Preference([U("What is 2 + 3?")], "5.", "6.", 2.0),
        Preference([U("Sort 4 1 3.")], "1 3 4.", "4 3 1."),
        Ranking([U("Hi")], ["Hello!", "Go away.", "Hey.", "What?"], [2, 0, 3, 1]),
        Preference([U("What is 2 + 3?")], "Five.", "5."),  # merges into group 1
    ])
    assert [len(g.responses) for g in groups] == [3, 3, 2, 4]
    batcher = data.RewardBatcher(tok, groups, max_len=64, batch_size=2, seed=0)
    assert batcher.n_pairs == 3 + 2 + 1 + 6
    seen = []
    for b in batcher.batches(0):
        n_rows = b["input_ids"].shape[0]
        assert n_rows == sum(len(groups[g].responses) for g in b["index"].tolist())  # whole groups only
        assert b["group"].shape == (n_rows,)
        for (better, worse), margin in zip(b["pairs"].tolist(), b["margins"].tolist()):
            assert b["group"][better] == b["group"][worse]  # a pair never spans groups
        starts = torch.cat([torch.tensor([0]), torch.bincount(b["group"]).cumsum(0)[:-1]])
        for pos, g in enumerate(b["index"].tolist()):
            group = groups[g]
            for k, resp in enumerate(group.responses):  # each response forwarded once
                seq = encode(tok, group.prompt, resp, 64)
                want = seq.input_ids
                assert b["input_ids"][starts[pos] + k, :len(want)].tolist() == want
                # labels mark the response's tokens (what `rlhf rm --pooling mean` averages over), nothing else
                assert (b["labels"][starts[pos] + k] != -100).nonzero().squeeze(1).tolist() == \
                    list(range(seq.n_prompt, len(want)))
            mine = [(bt - starts[pos].item(), wr - starts[pos].item())
                    for (bt, wr), grp in zip(b["pairs"].tolist(), b["group"][b["pairs"][:, 0]].tolist())
                    if grp == pos]
            assert mine == [(i, j) for i, j, _ in group.pairs]
        seen += b["index"].tolist()
    assert sorted(seen) == [0, 1, 2, 3]
    (b,) = list(data.RewardBatcher(tok, groups[1:2], max_len=64, batch_size=1, shuffle=False).batches())
    assert b["margins"].tolist() == [2.0, 0.0] and b["has_margin"].tolist() == [True, False]


def test_pair_batches_concatenate_chosen_then_rejected(tiny_tokenizer):
    tok = tiny_tokenizer
    pairs = [Preference([U("What is 2 + 3?")], "5.", "The answer is six.", 1.0),
             Preference([U("Sort 4 1 3.")], "1 3 4.", "4 3 1."),
             Preference([U("Hi")], "Hello!", "Go away.")]
    batcher = data.PairBatcher(tok, pairs, max_len=64, batch_size=2, seed=0)
    seen = []
    for b in batcher.batches(0):
        idx = b["index"].tolist()
        n = len(idx)
        assert b["input_ids"].shape[0] == b["labels"].shape[0] == 2 * n
        for r, i in enumerate(idx):
            for row, resp in ((r, pairs[i].chosen), (n + r, pairs[i].rejected)):
                e = encode(tok, pairs[i].prompt, resp, 64)
                assert b["input_ids"][row, :len(e.input_ids)].tolist() == e.input_ids
                assert (b["labels"][row] != -100).sum().item() == len(e.input_ids) - e.n_prompt
        assert b["margins"].tolist() == [pairs[i].margin or 0.0 for i in idx]
        seen += idx
    assert sorted(seen) == [0, 1, 2]
    keys = list(batcher.item_sequences())
    assert len(keys) == 3 and keys[0][0][-1] == batcher.items[0][0].n_prompt


def test_label_batches_carry_kl_pairs(tiny_tokenizer):
    tok = tiny_tokenizer
    labels = data.as_labels([Preference([U(f"Question {i}?")], f"Good {i}.", f"Bad {i}.") for i in range(5)])
    batcher = data.LabelBatcher(tok, labels, max_len=64, batch_size=4, seed=7)
    assert sorted(batcher.partner) == list(range(10)) and all(j != i for i, j in enumerate(batcher.partner))
    seen = []
    for b in batcher.batches(0):
        idx = b["index"].tolist()
        n = len(idx)
        assert b["desirable"].tolist() == [labels[i].label for i in idx]
        for r, i in enumerate(idx):
            rated = encode(tok, labels[i].prompt, labels[i].completion, 64).input_ids
            kl = encode(tok, labels[i].prompt, labels[batcher.partner[i]].completion, 64).input_ids
            assert b["input_ids"][r, :len(rated)].tolist() == rated
            assert b["input_ids"][n + r, :len(kl)].tolist() == kl
        seen += idx
    assert sorted(seen) == list(range(10))


def test_empty_record_lists_give_no_batches(tiny_tokenizer):
    for make in (lambda: data.SFTBatcher(tiny_tokenizer, [], max_len=32, batch_size=4),
                 lambda: data.SFTBatcher(tiny_tokenizer, [], max_len=32, batch_size=4, pack=True),
                 lambda: data.RewardBatcher(tiny_tokenizer, [], max_len=32, batch_size=4),
                 lambda: data.PairBatcher(tiny_tokenizer, [], max_len=32, batch_size=4),
                 lambda: data.LabelBatcher(tiny_tokenizer, [], max_len=32, batch_size=4)):
        batcher = make()
        assert len(batcher) == 0 and list(batcher.batches(0)) == [] and batcher.n_truncated == 0


# ---- issue 19: nulls, sizes, lines, and checks before anything heavy is loaded -----------------------------

def test_null_is_reported_as_null_not_as_missing(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    cases = [('{"prompt": "Q?", "chosen": "A.", "rejected": null}', data.load_preferences, '"rejected" is null'),
             ('{"prompt": "Q?", "chosen": "A."}', data.load_preferences, '"rejected" is missing'),
             ('{"prompt": "Q?", "response": null}', data.load_sft, '"response" is null (or "completion")'),
             ('{"messages": [{"role": "user", "content": null}]}', data.load_sft,
              '"messages"[0].content is null'),
             ('{"prompt": "Q?", "completion": "A.", "label": null}', data.load_labels, '"label" is null')]
    for text, loader, message in cases:
        path = tmp_path / "rows.jsonl"
        path.write_text(text + "\n")
        with pytest.raises(UserError) as err:
            loader(path)
        assert str(err.value) == f"rows.jsonl:1: {message}"
    # a Parquet column holds null for every row without the field: that is a missing field
    path = tmp_path / "prefs.parquet"
    pq.write_table(pa.table({"prompt": ["Q?"], "chosen": ["A."], "rejected": pa.array([None], pa.string())}), path)
    with pytest.raises(UserError, match=r'^prefs\.parquet:1: "rejected" is missing$'):
        data.load_preferences(path)


def test_csv_errors_name_the_line_an_editor_shows(tmp_path):
    path = tmp_path / "prefs.csv"
    path.write_text('prompt,chosen,rejected\n"Q?","two\nlines","B."\n"R?","","C."\n')
    with pytest.raises(UserError, match=r'^prefs\.csv:4: "chosen" is empty$'):  # header 1, a row on 2-3, then 4
        data.load_preferences(path)


def test_a_json_file_must_hold_a_list_of_rows(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text('\n\n"a string"\n')
    with pytest.raises(UserError, match=r"^rows\.json:3: a \.json file must hold a JSON array of rows"):
        data.load_sft(path)


def test_a_field_over_the_size_cap_is_refused_with_its_line_and_field(tmp_path, monkeypatch):
    from rlhf.data.read import DEFAULT_MAX_FIELD_CHARS, max_field_chars

    assert max_field_chars() == DEFAULT_MAX_FIELD_CHARS == 1_000_000
    monkeypatch.setenv("RLHF_MAX_FIELD_CHARS", "100")
    path = tmp_path / "sft.jsonl"
    path.write_text('{"prompt": "Q?", "response": "ok"}\n'
                    + json.dumps({"prompt": "Q?", "response": "x" * 101}) + "\n")
    with pytest.raises(UserError, match=r'^sft\.jsonl:2: "response" has 101 characters, more than the 100 a field '
                                        r"may hold \(refused, not cut; RLHF_MAX_FIELD_CHARS sets the limit\)$"):
        data.load_sft(path)
    chat = tmp_path / "chat.json"
    chat.write_text(json.dumps([{"messages": [{"role": "user", "content": "y" * 200},
                                              {"role": "assistant", "content": "B"}]}]))
    with pytest.raises(UserError, match=r'^chat\.json:1: "messages"\[0\]\.content has 200 characters'):
        data.load_sft(chat)
    csv_path = tmp_path / "prefs.csv"
    csv_path.write_text('prompt,chosen,rejected\n"Q?","A.","B."\n"R?","' + "z" * 150 + '","C."\n')
    with pytest.raises(UserError, match=r"^prefs\.csv:3: a cell has more than the 100 characters"):
        data.load_preferences(csv_path)
    monkeypatch.setenv("RLHF_MAX_FIELD_CHARS", "many")
    with pytest.raises(UserError, match="RLHF_MAX_FIELD_CHARS='many'"):
        data.load_sft(path)


def test_a_huge_jsonl_row_is_refused_without_reading_it_whole(tmp_path, monkeypatch):
    """Memory is bounded by the cap, not by the file: a 30 MB line under a 1,000-character cap."""
    import tracemalloc

    monkeypatch.setenv("RLHF_MAX_FIELD_CHARS", "1000")
    path = tmp_path / "sft.jsonl"
    with open(path, "w") as f:
        f.write('{"prompt": "Q?", "response": "ok"}\n{"prompt": "Q?", "response": "')
        f.write("x" * 30_000_000)
        f.write('"}\n')
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match=r"^sft\.jsonl:2: row is longer than 12,096 bytes"):
            data.load_sft(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000, peak


@pytest.mark.parametrize("command", ["sft", "rm", "dpo", "kto", "orpo"])
def test_bad_rows_are_refused_before_torch_is_imported_and_nothing_is_written(command, tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Q?", "chosen": "A.", "rejected": "B."}\n{"prompt": "R?", "chosen": ""}\n')
    out = tmp_path / "out"
    code = ("import sys\nfrom rlhf.cli import main\nrc = main(sys.argv[1:])\n"
            "print('torch' in sys.modules)\nsys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", code, command, "--model", "lab-small", "--data", str(bad),
                          "--out", str(out)], capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert res.returncode == 2 and res.stdout.strip() == "False", (res.stdout, res.stderr)
    assert res.stderr.startswith("rlhf: bad.jsonl:2: ") and res.stderr.count("\n") == 1, res.stderr
    assert not out.exists()
