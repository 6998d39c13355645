"""MathTask: math-verify based answers, guarded."""

import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlvr.tasks import make_task
from rlvr.tasks.math import MathTask

PAIRS = [("What is 1/2 + 1/4?", "\\frac{3}{4}"), ("Solve x + 2 = 7.", "5"), ("What is 0.1 * 30?", "3")]


@pytest.fixture(scope="module")
def task():
    return MathTask(PAIRS, eval_fraction=0.0)


def problem(task, answer):
    return next(p for p in task.problems("train") if p.answer == answer)


@pytest.mark.parametrize(
    "answer, completion, correct",
    [
        ("\\frac{3}{4}", "So the sum is \\boxed{\\frac{3}{4}}.", 1.0),
        ("\\frac{3}{4}", "\\boxed{0.75}", 1.0),
        ("\\frac{3}{4}", "\\boxed{3/4}", 1.0),
        ("\\frac{3}{4}", "\\boxed{0.7}", 0.0),
        ("5", "x = 5, so \\boxed{5}", 1.0),
        ("5", "\\boxed{6}", 0.0),
        ("3", "The answer is $3$.", 1.0),
    ],
)
def test_verify(task, answer, completion, correct):
    scores = task.score(problem(task, answer), completion)
    assert scores["correct"] == scores["reward"] == correct
    if correct:
        assert scores["format"] == 1.0


def test_hostile_completions_never_crash(task, hostile_completion):
    completion = hostile_completion
    for answer in ("\\frac{3}{4}", "3"):
        scores = task.score(problem(task, answer), completion)
        assert set(scores) == {"reward", "correct", "format"}
        assert scores["reward"] == scores["correct"] == 0.0


def test_sft_target_and_prompt(task):
    for p in task.problems("train"):
        assert "\\boxed{}" in p.prompt and p.prompt.startswith(p.meta["question"])
        assert task.score(p, task.format_sft_target(p))["correct"] == 1.0
    assert task.extract_answer("\\boxed{5}") == "5"
    assert task.extract_answer("") is None


def test_splits():
    pairs = [(f"What is {i} + {i}?", str(2 * i)) for i in range(200)]
    task = make_task("math", pairs=pairs + pairs[:5], eval_fraction=0.2)
    train, evals = task.problems("train"), task.problems("eval")
    assert len(train) + len(evals) == 200
    assert 10 < len(evals) < 80
    assert not {p.prompt for p in train} & {p.prompt for p in evals}
    explicit = MathTask(pairs[:10], eval_pairs=pairs[5:15])
    assert [p.meta["question"] for p in explicit.problems("eval")] == [q for q, _ in pairs[10:15]]
    with pytest.raises(ValueError, match="eval_fraction"):
        MathTask(pairs, eval_fraction=2.0)


def test_scoring_in_a_worker_thread(task):
    """math-verify's signal-based timeout fails outside the main thread; the task must not."""
    results = []
    p = problem(task, "5")
    thread = threading.Thread(target=lambda: results.append(task.score(p, "\\boxed{5}")))
    thread.start()
    thread.join()
    assert results == [{"reward": 1.0, "correct": 1.0, "format": 1.0}]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=30))
def test_random_text_never_crashes(task, text):
    scores = task.score(problem(task, "5"), text)
    assert scores["correct"] in (0.0, 1.0) and scores["reward"] == scores["correct"]
