"""ArithmeticTask: split hygiene, answers against an independent oracle, strict verifier."""

import json
import operator
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlvr.tasks import ArithmeticTask, Problem, make_task
from rlvr.tasks.arithmetic import evaluate

_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def oracle(prompt: str) -> int:
    """Independent evaluation of a prompt string: tokenise, fold products, then fold sums."""
    assert prompt.endswith("=")
    tokens = re.findall(r"[0-9]+|[-+*]", prompt[:-1])
    assert "".join(tokens) == prompt[:-1], "prompt holds something besides digits and operators"
    values, ops = [int(t) for t in tokens[0::2]], tokens[1::2]
    sums, sum_ops = [values[0]], []
    for op, value in zip(ops, values[1:]):
        if op == "*":
            sums[-1] = _OPS["*"](sums[-1], value)
        else:
            sums.append(value)
            sum_ops.append(op)
    result = sums[0]
    for op, value in zip(sum_ops, sums[1:]):
        result = _OPS[op](result, value)
    return result


def prompts(problems):
    return [p.prompt for p in problems]


@pytest.fixture(scope="module")
def task():
    return ArithmeticTask(num_train=3000, num_eval=300)


def test_defaults_and_prompt_format(task):
    default = make_task("arithmetic")
    assert (default.min_digits, default.max_digits, default.ops) == (1, 2, "+-")
    assert (default.num_operands, default.seed, default.num_train, default.num_eval) == (2, 0, 20_000, 500)
    assert default.allow_negative is True
    assert len(default.problems("train")) == 20_000
    assert len(default.problems("eval")) == 500
    for problem in task.problems("train", 200):
        assert re.fullmatch(r"[0-9]{1,2}[-+][0-9]{1,2}=", problem.prompt)
        assert " " not in problem.prompt


def test_train_and_eval_are_disjoint(task):
    train, evals = set(prompts(task.problems("train"))), prompts(task.problems("eval"))
    assert not train & set(evals)
    assert len(evals) == len(set(evals)) == 300


@pytest.mark.parametrize("options", [{"max_digits": 1}, {"ops": "+-*", "num_operands": 3}, {"min_digits": 2}])
def test_disjoint_for_other_options(options):
    task = ArithmeticTask(num_train=2000, num_eval=200, **options)
    assert not set(prompts(task.problems("train"))) & set(prompts(task.problems("eval")))


def test_split_side_does_not_depend_on_seed():
    a, b = ArithmeticTask(seed=1, num_train=2000, num_eval=200), ArithmeticTask(seed=2, num_train=2000, num_eval=200)
    for problem in a.problems("train") + b.problems("train"):
        assert not a.is_eval_prompt(problem.prompt)
    for problem in a.problems("eval") + b.problems("eval"):
        assert b.is_eval_prompt(problem.prompt)
    # so a train problem of one seed is never an eval problem of another
    assert not set(prompts(a.problems("train"))) & set(prompts(b.problems("eval")))


def test_deterministic_for_a_seed_and_different_across_seeds():
    a1, a2, b = (ArithmeticTask(seed=s, num_train=500, num_eval=100) for s in (7, 7, 8))
    for split in ("train", "eval"):
        assert a1.problems(split) == a2.problems(split)
        assert prompts(a1.problems(split)) != prompts(b.problems(split))


def test_prefixes_are_stable(task):
    assert task.problems("train", 10) == task.problems("train")[:10]
    assert task.problems("eval", 0) == []
    assert len(task.problems("eval", 10**9)) == 300


@pytest.mark.parametrize(
    "options",
    [{}, {"ops": "+-*", "num_operands": 3}, {"ops": "*", "min_digits": 2, "max_digits": 3}, {"num_operands": 4}],
)
def test_answers_match_the_oracle(options):
    task = ArithmeticTask(num_train=500, num_eval=100, **options)
    for problem in task.problems("train") + task.problems("eval"):
        expected = oracle(problem.prompt)
        assert problem.answer == str(expected)
        assert problem.meta["result"] == expected
        rebuilt = "".join(f"{a}{op}" for a, op in zip(problem.meta["operands"], problem.meta["ops"]))
        assert rebuilt + f"{problem.meta['operands'][-1]}=" == problem.prompt
        assert json.loads(json.dumps(problem.meta)) == problem.meta


def test_evaluate_precedence():
    assert evaluate([2, 3, 4], ["+", "*"]) == 14
    assert evaluate([2, 3, 4], ["*", "-"]) == 2
    assert evaluate([10, 3, 2], ["-", "-"]) == 5
    with pytest.raises(ValueError):
        evaluate([1, 2], ["/"])


def test_operand_digit_ranges():
    task = ArithmeticTask(min_digits=2, max_digits=3, num_train=1000, num_eval=50)
    for problem in task.problems("train"):
        assert all(10 <= v <= 999 for v in problem.meta["operands"])
    one = ArithmeticTask(max_digits=1, num_train=1000, num_eval=50)
    seen = {v for p in one.problems("train") for v in p.meta["operands"]}
    assert seen == set(range(10))


def test_small_space_gives_the_whole_eval_side_without_duplicates():
    task = ArithmeticTask(max_digits=1, ops="+", num_train=100, num_eval=500)
    assert task.space_size() == 100
    evals = prompts(task.problems("eval"))
    side = [f"{a}+{b}=" for a in range(10) for b in range(10) if task.is_eval_prompt(f"{a}+{b}=")]
    assert 0 < len(evals) < 500
    assert len(evals) == len(set(evals))
    assert sorted(evals) == sorted(side)


def test_allow_negative_false():
    task = ArithmeticTask(ops="-", allow_negative=False, num_train=1000, num_eval=100)
    results = [p.meta["result"] for p in task.problems("train") + task.problems("eval")]
    assert min(results) >= 0
    neg = ArithmeticTask(ops="-", num_train=1000, num_eval=100)
    assert min(p.meta["result"] for p in neg.problems("train")) < 0


@pytest.mark.parametrize(
    "options",
    [
        {"ops": ""},
        {"ops": "+/"},
        {"min_digits": 0},
        {"min_digits": 3, "max_digits": 2},
        {"num_operands": 1},
        {"num_train": -1},
        {"eval_fraction": 0.0},
        {"max_digits": 1.5},
    ],
)
def test_bad_options(options):
    with pytest.raises(ValueError):
        ArithmeticTask(**options)


def test_ops_are_normalised():
    assert ArithmeticTask(ops=["*", "+", "*"]).ops == "*+"


# ---------------------------------------------------------------------- verifier

SEVEN = Problem("3+4=", "7", {"operands": [3, 4], "ops": ["+"], "result": 7})
ZERO = Problem("4-4=", "0", {"operands": [4, 4], "ops": ["-"], "result": 0})
MINUS = Problem("4-9=", "-5", {"operands": [4, 9], "ops": ["-"], "result": -5})


@pytest.mark.parametrize(
    "problem, completion, correct",
    [
        (SEVEN, "7", 1.0),
        (SEVEN, " 7 ", 1.0),
        (SEVEN, "7\n", 1.0),
        (SEVEN, "\t7\r\n", 1.0),
        (SEVEN, "07", 0.0),
        (SEVEN, "+7", 0.0),
        (SEVEN, "7.0", 0.0),
        (SEVEN, "7 extra words", 0.0),
        (SEVEN, "7\n8", 0.0),
        (SEVEN, "77", 0.0),
        (SEVEN, "٧", 0.0),
        (SEVEN, "7e0", 0.0),
        (ZERO, "0", 1.0),
        (ZERO, "-0", 0.0),
        (ZERO, "00", 0.0),
        (MINUS, "-5", 1.0),
        (MINUS, "5", 0.0),
        (MINUS, "- 5", 0.0),
        (MINUS, "--5", 0.0),
    ],
)
def test_strict_rule(problem, completion, correct):
    task = ArithmeticTask()
    scores = task.score(problem, completion)
    assert scores == {"reward": correct, "correct": correct, "format": scores["format"]}


def test_format_reward_and_extract_answer():
    task = ArithmeticTask()
    assert task.extract_answer(" -12\n") == "-12"
    assert task.extract_answer("12 13") is None
    assert task.score(SEVEN, "8")["format"] == 1.0
    assert task.score(SEVEN, "eight")["format"] == 0.0


def test_first_line_option():
    strict, lenient = ArithmeticTask(), ArithmeticTask(first_line=True)
    assert strict.score(SEVEN, "7\n3+4=7")["correct"] == 0.0
    assert lenient.score(SEVEN, "7\n3+4=7")["correct"] == 1.0
    assert lenient.score(SEVEN, "\n 7 \nxx")["correct"] == 1.0
    assert lenient.score(SEVEN, "7 extra words\n")["correct"] == 0.0


def test_hostile_completions_score_zero(hostile_completion):
    completion = hostile_completion
    task = ArithmeticTask()
    for problem in (SEVEN, ZERO, MINUS):
        scores = task.score(problem, completion)
        assert scores["reward"] == 0.0 and scores["correct"] == 0.0
        assert set(scores) == set(task.reward_names)
    # against answer 5 only the bare "5" (whitespace stripped) is right: "+5", "5 extra words" are not
    five = task.score(Problem("2+3=", "5", {}), completion)
    assert five["correct"] == five["reward"] == float(completion == "5\n")


def test_non_string_completion_scores_zero():
    task = ArithmeticTask()
    assert task.score(SEVEN, None)["reward"] == 0.0  # type: ignore[arg-type]
    assert task.score(SEVEN, 7)["reward"] == 0.0  # type: ignore[arg-type]


def test_sft_target_scores_one(task):
    for problem in task.problems("eval"):
        assert task.format_sft_target(problem) == problem.answer
        assert task.score(problem, task.format_sft_target(problem))["correct"] == 1.0


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_correct_iff_stripped_text_is_the_answer(text):
    task = ArithmeticTask()
    scores = task.score(SEVEN, text)
    assert scores["correct"] == float(text.strip() == "7")
    assert scores["reward"] == scores["correct"]


@settings(max_examples=200, deadline=None)
@given(st.integers(-10**6, 10**6), st.integers(-10**6, 10**6))
def test_integer_answers(answer, guess):
    task = ArithmeticTask()
    problem = Problem("x=", str(answer), {})
    assert task.score(problem, f" {guess}\n")["correct"] == float(answer == guess)
