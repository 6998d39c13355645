"""ArithmeticChainTask: left-to-right answers against an independent oracle, the chain verifier,
split hygiene, the warm-start target and the aggregation format."""

import random
import re

import pytest

from rlvr.tasks import ArithmeticChainTask, Problem, make_task
from rlvr.tasks.base import SupportsAggregation, SupportsChainVerifier, SupportsSFT


def oracle(prompt: str) -> int:
    """Left to right with explicit parentheses, evaluated by Python: ((a op b) op c) ..."""
    tokens = re.findall(r"[0-9]+|[-+*]", prompt[:-1])
    expr = tokens[0]
    for op, value in zip(tokens[1::2], tokens[2::2]):
        expr = f"({expr}{op}{value})"
    return eval(expr)  # noqa: S307 - digits, operators and parentheses only


def oracle_chain(prompt: str) -> str:
    tokens = re.findall(r"[0-9]+|[-+*]", prompt[:-1])
    value, steps = int(tokens[0]), []
    for op, b in zip(tokens[1::2], tokens[2::2]):
        new = eval(f"({value}){op}{b}")  # noqa: S307
        steps.append(f"{value}{op}{b}={new}")
        value = new
    return ";".join(steps)


@pytest.fixture(scope="module")
def task():
    return make_task("arithmetic_chain", min_digits=1, max_digits=2, ops="+-*", num_operands=3,
                     num_train=500, num_eval=100)


def test_registered_with_the_optional_protocols(task):
    assert isinstance(task, ArithmeticChainTask) and task.name == "arithmetic_chain"
    assert isinstance(task, SupportsChainVerifier) and isinstance(task, SupportsAggregation)
    assert isinstance(task, SupportsSFT)


def test_answers_are_left_to_right(task):
    for p in task.problems("train", 200) + task.problems("eval"):
        assert p.answer == str(oracle(p.prompt)), p.prompt
    assert task.score(Problem("12+7*3=", "57"), "12+7=19;19*3=57")["correct"] == 1.0


def test_reference_chain_scores_everything(task):
    for p in task.problems("eval"):
        target = task.format_sft_target(p)
        assert target == oracle_chain(p.prompt)
        assert task.score(p, target) == {"reward": 1.0, "correct": 1.0, "format": 1.0, "chain": 1.0}
        assert task.verify_chain(p, target) is True


def test_splits_do_not_overlap_and_follow_the_hash(task):
    train, evals = {p.prompt for p in task.problems("train")}, {p.prompt for p in task.problems("eval")}
    assert train and evals and not train & evals
    assert all(task.is_eval_prompt(q) for q in evals) and not any(task.is_eval_prompt(q) for q in train)


P = Problem("8+2-8=", "2")


@pytest.mark.parametrize("completion", [
    "8+2=11;11-8=2",   # right final answer, wrong arithmetic in step 1 (and step 2)
    "8+2=10;10-8=3;3-1=2",  # extra step
    "8+3=11;11-9=2",   # arithmetic right, but not the prompt's operands
    "8-2=6;6-4=2",     # wrong operator and operand
    "2",               # right answer, no steps
    "10-8=2",          # only the last step
])
def test_right_answer_by_wrong_steps_fails_the_chain(completion):
    task = ArithmeticChainTask()
    s = task.score(P, completion)
    assert s["correct"] == 1.0 and s["reward"] == 1.0  # counts for pass@k ...
    assert s["chain"] == 0.0 and task.verify_chain(P, completion) is False  # ... but not CoT-pass@k


@pytest.mark.parametrize("completion", [
    "8+2=10,10-8=2", "8+2=10;10-8=02", "8+2=010;10-8=2", "8+2=10;;10-8=2", "8+2=10;10-8=2;",
    "+8+2=10;10-8=2", "8+2=10; 10-8=2", "8+2 = 10;10-8=2", "8+2=10;10-8=+2", "8+2=10;10--8=2",
])
def test_malformed_chains_fail(completion):
    assert ArithmeticChainTask().verify_chain(P, completion) is False


def test_chains_through_negative_values():
    task = ArithmeticChainTask()
    p = Problem("3-7*6=", "-24")
    assert task.verify_chain(p, "3-7=-4;-4*6=-24")
    assert not task.verify_chain(p, "3-7=-4;4*6=24")  # the sign of the previous result was dropped
    assert not task.verify_chain(Problem("0-0+0=", "0"), "0-0=-0;0+0=0")  # -0 is not canonical
    assert task.verify_chain(Problem("0-0+0=", "0"), "0-0=0;0+0=0")


def test_right_chain_with_wrong_final_answer_is_wrong():
    task = ArithmeticChainTask()
    assert task.score(P, "8+2=10;10-8=3") == {"reward": 0.0, "correct": 0.0, "format": 1.0, "chain": 0.0}


def test_hostile_completions_never_crash(hostile_completion):
    task = ArithmeticChainTask()
    for p in (P, Problem("12+7*3=", "57"), Problem("not a prompt", "1")):
        s = task.score(p, hostile_completion)
        assert set(s) == set(task.reward_names) and all(v in (0.0, 1.0) for v in s.values())
        assert s["chain"] == 0.0
        assert task.verify_chain(p, hostile_completion) is False
        task.extract_answer(hostile_completion)


def test_no_negative_step_when_negatives_are_off():
    task = ArithmeticChainTask(ops="+-", num_train=300, num_eval=50, allow_negative=False)
    for p in task.problems("train") + task.problems("eval"):
        assert all(not c.startswith("-") for c in re.findall(r"=(-?[0-9]+)", task.format_sft_target(p)))


def test_aggregation_prompt_and_noisy_candidates(task):
    p = task.problems("train", 1)[0]
    # candidates are stripped; characters outside digits, operators, "=" and ";" become "?"
    assert task.aggregation_prompt(p, [" 1+2=3\n", "7|x\n8"]) == p.prompt + "|1+2=3|7???8|=>"
    rng = random.Random(0)
    seen_right = seen_wrong = 0
    for _ in range(50):
        cands = task.sft_candidates(p, 3, rng)
        assert len(cands) == 3
        for c in cands:
            ok = task.verify_chain(p, c)
            seen_right += ok
            seen_wrong += not ok
            assert task.score(p, c)["format"] == 1.0  # wrong candidates are still well-formed chains
    assert seen_right and seen_wrong
