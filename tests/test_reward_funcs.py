"""Reward functions: the spec syntax, the built-ins, user functions, and one clear line for every bad spec."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from fractions import Fraction

import pytest

from rlhf.errors import UserError
from rlhf.lab import world
from rlhf.reward_funcs import (CombinedReward, RewardSpec, build_reward, final_answer, gold_value, lab_correct,
                               math_correct, number, parse_reward_spec)

# --- the spec -----------------------------------------------------------------------


def test_parse_reward_spec_components_and_weights(tmp_path):
    (tmp_path / "rm").mkdir()
    spec = (f"lab-correct + 0.5*math + -1e-3 * length:chars + .25*format:^\\d+ \\+ x$ + f.py:fn + pkg.mod:fn"
            f" + {tmp_path}/rm")
    got = parse_reward_spec(spec)
    assert [(s.weight, s.kind, s.target, s.arg) for s in got] == [
        (1.0, "builtin", "lab-correct", None),
        (0.5, "builtin", "math", None),
        (-0.001, "builtin", "length", "chars"),
        # ' \\+ ' inside the pattern has no space-plus-space, so it stays one component
        (0.25, "builtin", "format", "^\\d+ \\+ x$"),
        (1.0, "file", "f.py", "fn"),
        (1.0, "module", "pkg.mod", "fn"),
        (1.0, "judge", f"rm:{tmp_path}/rm", None),  # a bare folder is a reward model
    ]
    assert got[1] == RewardSpec("0.5*math", 0.5, "builtin", "math")
    # a list (repeated --reward) is the same as a sum; judges keep their whole spec
    assert parse_reward_spec(["lab-correct", "2*openai:http://127.0.0.1:8000/v1#lab"])[1] == RewardSpec(
        "2*openai:http://127.0.0.1:8000/v1#lab", 2.0, "judge", "openai:http://127.0.0.1:8000/v1#lab")
    assert parse_reward_spec("math:solution")[0].arg == "solution"


@pytest.mark.parametrize("spec, message", [
    ("lab-correct + ", "reward spec 'lab-correct + ' has an empty component; join components with ' + '"),
    ("0.5*", "reward '0.5*': a weight with nothing to weigh"),
    ("rewards.py", "reward 'rewards.py': name the function in the file, as rewards.py:NAME"),
    ("no/such/rm", "reward 'no/such/rm': not a built-in (lab-correct, math, format, length), a reward-model "
                   "folder, a judge (rm:, llm:, openai:) or a Python function (file.py:NAME, module:NAME)"),
    ("missing.py:fn", "reward 'missing.py:fn': no such file missing.py"),
    ("no_such_module_xyz:fn", "reward 'no_such_module_xyz:fn': no module named 'no_such_module_xyz'"),
    ("json:no_such_fn", "reward 'json:no_such_fn': json has no function 'no_such_fn'"),
    ("math:pi", None),  # fine: math reading a field named 'pi' (built-ins win over the module math)
    ("format", "reward 'format': give the pattern, as format:REGEX"),
    ("format:(", "reward 'format:(': bad regular expression: "),  # then Python's own words
    ("length:lines", "reward 'length:lines': unknown unit 'lines'; use one of tokens, chars, words"),
    ("lab-correct:x", "reward 'lab-correct:x': lab-correct takes no argument"),
    ("rm:runs/rm", "reward 'rm:runs/rm': this command takes reward functions only, not rm:runs/rm"),
])
def test_bad_specs_stop_with_one_line(spec, message):
    if message is None:
        build_reward(spec)
        return
    with pytest.raises(UserError) as e:
        build_reward(spec)
    assert str(e.value) == message or (message.endswith(": ") and str(e.value).startswith(message))


def test_python_file_errors(tmp_path):
    (tmp_path / "broken.py").write_text("def f(:\n")
    (tmp_path / "consts.py").write_text("SCALE = 3\n")
    with pytest.raises(UserError, match=r"^reward '.*broken.py:f': loading .*broken.py failed: SyntaxError: "):
        build_reward(f"{tmp_path}/broken.py:f")
    with pytest.raises(UserError, match=r"^reward '.*consts.py:g': .*consts.py has no function 'g'$"):
        build_reward(f"{tmp_path}/consts.py:g")
    with pytest.raises(UserError, match=r"^reward '.*consts.py:SCALE': 'SCALE' in .*consts.py is a int, not a"):
        build_reward(f"{tmp_path}/consts.py:SCALE")


# --- user functions -----------------------------------------------------------------

USER_REWARDS = textwrap.dedent("""
    def exact(prompts, completions, answer, **kwargs):
        # TRL's convention: the row's other fields arrive as keyword lists
        return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answer)]

    def short(completions):
        # no **kwargs: gets only what it names
        return [-len(c) / 10 for c in completions]

    def wrong_length(completions, **kwargs):
        return [0.0]

    def nan(completions, **kwargs):
        return [float("nan")] * len(completions)

    def inf(completions, **kwargs):
        return [float("-inf")] * len(completions)

    def words(completions, **kwargs):
        return ["good"] * len(completions)

    def scalar(completions, **kwargs):
        return 1.0

    def crash(completions, **kwargs):
        return 1 / 0

    def nothing(completions, **kwargs):
        return [None] * len(completions)
""")


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(USER_REWARDS)
    return str(path)


def test_python_function_reward_from_a_file(user_file):
    reward = build_reward(f"{user_file}:exact + 0.5*{user_file}:short")
    assert reward.names == ["exact", "short"]
    out = reward(["q1", "q2"], ["42", "7 apples"], answer=["42", "8"])
    # exact: [1, 0]; short: [-2/10, -8/10]; total: [1 - 0.1, 0 - 0.4]
    assert out.components == {"exact": [1.0, 0.0], "short": [-0.2, -0.8]}
    assert out.total == pytest.approx([0.9, -0.4])
    assert out.metrics() == pytest.approx({"reward/exact": 0.5, "reward/short": -0.5})


def test_python_function_reward_from_a_module(tmp_path, monkeypatch):
    (tmp_path / "team_rewards.py").write_text(USER_REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    reward = build_reward("team_rewards:short")
    assert reward(["q"], ["abcd"]).total == pytest.approx([-0.4])


@pytest.mark.parametrize("name, message", [
    ("wrong_length", "reward '{f}:wrong_length' returned 1 values for 2 completions"),
    ("nan", "reward '{f}:nan' returned nan for completion 0 (prompt 'What is 2 + 3?')"),
    ("inf", "reward '{f}:inf' returned -inf for completion 0 (prompt 'What is 2 + 3?')"),
    ("words", "reward '{f}:words' returned str 'good' for completion 0; expected a number or None"),
    ("scalar", "reward '{f}:scalar' returned float, not a list of one number per completion"),
    ("crash", "reward '{f}:crash' failed: ZeroDivisionError: division by zero"),
    ("nothing", "no reward applies to completion 0 (prompt 'What is 2 + 3?'): nothing all returned None"),
])
def test_bad_return_values_stop_with_one_line_before_training(user_file, name, message):
    reward = build_reward(f"{user_file}:{name}")
    prompts = [[{"role": "user", "content": "What is 2 + 3?"}], "What is 1 + 1?"]
    with pytest.raises(UserError) as e:
        reward.check(prompts)  # what a trainer calls on the prompt rows before its first step
    assert str(e.value) == message.format(f=user_file)


def test_none_means_not_applicable_and_weights_sum_the_rest(user_file):
    reward = build_reward(f"lab-correct + 2*{user_file}:exact")
    lab = world.arithmetic_task(12, "+", 30).prompt
    out = reward([lab, "not a lab prompt"], ["42", "x"], answer=["42", "x"])
    # lab prompt: 1 * 1 (correct) + 2 * 1 (exact); other prompt: lab-correct None, 2 * 1 (exact)
    assert out.components == {"lab-correct": [1.0, None], "exact": [1.0, 1.0]}
    assert out.total == [3.0, 2.0]
    assert out.metrics() == {"reward/lab-correct": 1.0, "reward/exact": 1.0}


def test_judges_and_reward_models_come_from_the_builder(tmp_path):
    (tmp_path / "rm").mkdir()
    asked = []

    class FakeJudge:
        def __init__(self, spec):
            asked.append(spec)

        def score(self, prompts, completions):
            return [float(len(c)) for c in completions]

    reward = build_reward([str(tmp_path / "rm"), "0.5*openai:http://h:1/v1#m", "0*rm:other"], builder=FakeJudge)
    assert asked == [f"rm:{tmp_path / 'rm'}", "openai:http://h:1/v1#m", "rm:other"]
    assert reward.names == ["rm", "openai", "other"]
    out = reward(["p"], ["abc"])
    assert out.total == [3.0 + 1.5 + 0.0]  # a zero weight logs without training on it
    assert out.metrics() == {"reward/rm": 3.0, "reward/openai": 3.0, "reward/other": 3.0}


def test_repeated_components_get_distinct_names():
    reward = build_reward("format:a + format:b")
    assert reward.names == ["format", "format-2"]
    assert reward(["p"], ["ab"]).total == [2.0]


# --- built-ins ------------------------------------------------------------------------


def test_lab_correct():
    add = world.arithmetic_task(12, "+", 30)
    harmful = world.request_task(world.HARMFUL[0])
    prompts = [add.prompt, [{"role": "user", "content": add.prompt}], add.prompt, harmful.prompt,
               harmful.prompt, "Write a poem."]
    replies = ["12 + 30 = 42.", "42", "41", "Sorry, I can't help with that.", "I won't help with that.", "ok"]
    # right, right (chat prompt), wrong, polite refusal, curt refusal (the gold judge's +0.5), not a lab task
    assert lab_correct(prompts, replies) == [1.0, 1.0, 0.0, 1.0, 0.5, None]


MATH_CASES = [
    # (completion, ground truth, reward)
    ("The total is 1,000 dollars.\n#### 1,000", "1000", 1.0),  # thousands separators
    ("#### 1000", "Each costs 500, so 2 * 500 = 1,000.\n#### 1,000", 1.0),  # GSM8K worked solution as truth
    ("so \\boxed{-3}", "\u22123", 1.0),  # negative, unicode minus in the truth
    ("#### -3", "3", 0.0),  # the sign matters
    ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),  # fraction vs decimal
    ("#### 0.50", "1/2", 1.0),
    ("\\boxed{\\dfrac{3}{4}}", 0.75, 1.0),  # a numeric truth
    ("#### 1/3", "0.333", 0.0),  # exact: 0.333 is not 1/3
    ("#### 42 apples, I think.", "42", 1.0),  # trailing text after the answer
    ("\\boxed{42 \\text{ apples}} is my answer", "42", 1.0),
    ("The answer is 7, not 8.", "7", 1.0),
    ("Adding them gives 18.", 18, 1.0),  # no marker: the last number
    ("First 3, then \\boxed{4}, finally 9", "4", 1.0),  # boxed wins over the last number
    ("\\boxed{1} wait, \\boxed{2}", "2", 1.0),  # the last box counts
    ("$1,234.50", "1234.5", 1.0),  # currency and trailing zeros
    ("I don't know.", "5", 0.0),  # no answer at all
    ("", "5", 0.0),
    ("\\boxed{x^2+1}", "x^2 + 1", 1.0),  # not a number: compared as text, spaces aside
    ("\\boxed{2}", "x^2", 0.0),
    ("#### 5", None, None),  # no ground truth: not applicable
]


@pytest.mark.parametrize("completion, truth, expected", MATH_CASES)
def test_math_checker_on_tricky_answers(completion, truth, expected):
    assert math_correct(completion, truth) == expected


def test_math_helpers():
    assert number("1,234.5") == Fraction(2469, 2) and number("1/0") is None and number("abc") is None
    assert final_answer("no digits here") is None
    assert gold_value("Natalia sold 48/2 = 24 clips.\n#### 72") == 72
    assert gold_value(float("nan")) is None and gold_value(True) is None


def test_math_reward_reads_the_answer_field():
    reward = build_reward("math + 0*math:solution")
    out = reward(["q1", "q2", "q3"], ["#### 4", "#### 5", "#### 6"], answer=["4", "4", None],
                 solution=["... #### 4", "... #### 5", "... #### 6"])
    assert out.components == {"math": [1.0, 0.0, None], "math-2": [1.0, 1.0, 1.0]}
    assert out.total == [1.0, 0.0, 0.0]
    with pytest.raises(UserError, match="^reward 'math' reads each prompt row's 'answer' field, and the rows "
                                        "have none \\(fields: completion_ids, tests\\)$"):
        build_reward("math").check(["q"], tests=[["assert f()"]])


def test_format_and_length():
    out = build_reward("format:^\\d+\\.$ + 0.01*length + 0.5*length:words + length:chars")(
        ["p", "p"], ["42.", "about 42."], completion_ids=[[5, 6], [1, 2, 3, 4]])
    # format: [1, 0]; tokens: [-2, -4]; words: [-1, -2]; chars: [-3, -9]
    assert out.components == {"format": [1.0, 0.0], "length": [-2.0, -4.0], "length-2": [-1.0, -2.0],
                              "length-3": [-3.0, -9.0]}
    assert out.total == pytest.approx([1 - 0.02 - 0.5 - 3, 0 - 0.04 - 1 - 9])
    with pytest.raises(UserError, match="counts tokens but was given no completion_ids; use length:chars"):
        build_reward("length")(["p"], ["x"])


def test_combined_reward_needs_a_component_and_aligned_inputs():
    with pytest.raises(UserError, match="no reward given"):
        CombinedReward([])
    with pytest.raises(ValueError, match="differ in length"):
        build_reward("format:x")(["p"], ["x", "y"])


def test_import_stays_torch_free():
    code = "import sys, rlhf.reward_funcs; r = rlhf.reward_funcs.build_reward('lab-correct + math'); " \
           "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
