"""The multi-objective demonstration task: correctness and a length budget that pull against each other."""

import pytest

from rlvr.tasks import ArithmeticConciseTask, ArithmeticTask, make_task


def _candidates():
    """Every integer literal the verifier could accept for 1-2 digit +/- problems (-99..198), plus junk."""
    return [str(v) for v in range(-120, 220)] + ["", "x", "1 2", "+5", "05"]


def test_registered_and_same_problems_as_arithmetic():
    task = make_task("arithmetic_concise", num_train=300, num_eval=100)
    assert isinstance(task, ArithmeticConciseTask) and task.name == "arithmetic_concise"
    base = ArithmeticTask(num_train=300, num_eval=100)
    assert task.problems("train") == base.problems("train") and task.problems("eval") == base.problems("eval")
    assert set(task.score(task.problems("eval")[0], "1")) == set(task.reward_names)


def test_components_conflict_exactly_on_long_answers():
    """By enumeration over every candidate answer: a completion scoring 1 on both correct and short
    exists iff the problem does not conflict; correct agrees with the arithmetic verifier; short is an
    integer literal of at most max_chars characters; reward = correct."""
    task = ArithmeticConciseTask(num_train=10, num_eval=300)
    base = ArithmeticTask(num_train=10, num_eval=300)
    n_conflict = 0
    for p in task.problems("eval"):
        both = False
        for c in _candidates():
            s = task.score(p, c)
            assert s["correct"] == base.score(p, c)["correct"] == s["reward"]
            assert s["short"] == float(base.extract_answer(c) is not None and len(c.strip()) <= 2)
            both |= s["correct"] == 1.0 and s["short"] == 1.0
        assert both == (not task.conflicts(p)), p
        n_conflict += task.conflicts(p)
    assert task.conflict_fraction("eval") == pytest.approx(n_conflict / 300)
    assert 0.1 < n_conflict / 300 < 0.45  # both objectives matter: a real trade-off on a minority of problems


def test_hostile_completions_never_raise(hostile_completion):
    task = ArithmeticConciseTask(num_train=10, num_eval=20)
    p = task.problems("eval")[0]
    s = task.score(p, hostile_completion)
    assert set(s) == set(task.reward_names) and all(v in (0.0, 1.0) for v in s.values())
    assert s["correct"] == ArithmeticTask(num_train=10, num_eval=20).score(p, hostile_completion)["correct"]


def test_budget_option():
    wide = ArithmeticConciseTask(max_chars=3)
    assert wide.conflict_fraction("eval") == 0.0  # every 1-2 digit +/- answer fits in 3 characters
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_chars"):
            ArithmeticConciseTask(max_chars=bad)
    with pytest.raises(ValueError, match="unknown option"):
        make_task("arithmetic_concise", max_char=2)
