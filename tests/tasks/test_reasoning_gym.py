"""ReasoningGymTask on real reasoning-gym datasets, generated offline."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlvr.tasks import Problem, ReasoningGymTask, make_task
from rlvr.tasks.reasoning_gym import EVAL_SEED_OFFSET, extract_tagged_answer

DATASETS = ["basic_arithmetic", "chain_sum", "prime_factorization"]
GARBAGE = ["", " ", "\x00", "1" * 1_000_000, "é∑😀", "<answer>", "<answer></answer>", "<answer>" * 100_000]


@pytest.fixture(scope="module", params=DATASETS)
def task(request):
    return make_task(f"reasoning_gym:{request.param}", num_train=60, num_eval=20)


def questions(problems):
    return [p.meta["entry"]["question"] for p in problems]


def test_sizes_seeds_and_prompt(task):
    train, evals = task.problems("train"), task.problems("eval")
    assert len(train) == 60 and len(evals) == 20
    assert task.eval_seed == task.seed + EVAL_SEED_OFFSET
    problem = train[0]
    assert problem.prompt.startswith(problem.meta["entry"]["question"])
    assert "<answer></answer>" in problem.prompt
    assert problem.answer == str(problem.meta["entry"]["answer"])
    assert {p.meta["split"] for p in train} == {"train"} and {p.meta["split"] for p in evals} == {"eval"}


def test_train_and_eval_questions_are_disjoint(task):
    evals = questions(task.problems("eval"))
    assert not set(questions(task.problems("train"))) & set(evals)
    assert len(evals) == len(set(evals))


def test_deterministic(task):
    again = ReasoningGymTask(task.dataset, num_train=60, num_eval=20)
    assert again.problems("train") == task.problems("train")
    assert again.problems("eval") == task.problems("eval")
    other = ReasoningGymTask(task.dataset, seed=5, num_train=60, num_eval=20)
    assert questions(other.problems("train")) != questions(task.problems("train"))


def test_reference_answers_score_one(task):
    for problem in task.problems("train", 20) + task.problems("eval"):
        target = task.format_sft_target(problem)
        assert target == f"<answer>{problem.answer}</answer>"
        assert task.score(problem, target) == {"reward": 1.0, "correct": 1.0, "score": 1.0, "format": 1.0}
        assert task.score(problem, f"Thinking...\n<answer>0</answer> then <answer>{problem.answer}</answer>")["correct"] == 1.0
        assert task.score(problem, problem.answer)["correct"] == 1.0  # no tags: whole completion


def test_hostile_completions_never_crash(task, hostile_completion):
    completion = hostile_completion
    strict = ReasoningGymTask(task.dataset, num_train=1, num_eval=0, partial_credit=False)
    for problem in task.problems("train", 3):
        scores = task.score(problem, completion)
        assert set(scores) == set(task.reward_names)
        assert all(0.0 <= v <= 1.0 for v in scores.values())
        assert scores["correct"] == 0.0
        if completion in GARBAGE:
            assert scores["reward"] == 0.0
        assert strict.score(problem, completion)["reward"] == 0.0


def test_prime_factorization_verifier_raises_but_score_does_not():
    task = ReasoningGymTask("prime_factorization", num_train=3, num_eval=0)
    problem = task.problems("train")[0]
    with pytest.raises(ValueError):
        task._train_data.score_answer("abc", problem.meta["entry"])
    assert task.score(problem, "<answer>abc</answer>")["reward"] == 0.0
    assert task.score(problem, "<answer>" + "7" * 5000 + "</answer>")["reward"] == 0.0


def test_partial_credit_goes_to_reward_not_correct():
    entry = ReasoningGymTask("basic_arithmetic", num_train=1, num_eval=0).problems("train")[0].meta["entry"]
    entry = {**entry, "answer": "7"}
    problem = Problem("q", "7", {"entry": entry})
    lenient = ReasoningGymTask("basic_arithmetic", num_train=1, num_eval=0)
    scores = lenient.score(problem, "<answer>17</answer>")
    assert scores["score"] == pytest.approx(0.5) and scores["reward"] == pytest.approx(0.5)
    assert scores["correct"] == 0.0
    strict = ReasoningGymTask("basic_arithmetic", num_train=1, num_eval=0, partial_credit=False)
    assert strict.score(problem, "<answer>17</answer>")["reward"] == 0.0


def test_extract_answer():
    task = ReasoningGymTask("chain_sum", num_train=1, num_eval=0)
    assert task.extract_answer("a <answer> 1 </answer> b <answer>2</answer> c") == "2"
    assert task.extract_answer("  42 \n") == "42"
    assert task.extract_answer("<answer></answer>") is None
    assert task.extract_answer("") is None
    assert task.extract_answer("1" * 1_000_000) is None
    assert extract_tagged_answer("</answer><answer>3") == ("</answer><answer>3", False)
    assert extract_tagged_answer("<answer>3</answer>") == ("3", True)


def test_dataset_config_and_size_alias():
    task = make_task("reasoning_gym:chain_sum", size=10, num_eval=5, min_terms=2, max_terms=2, min_digits=1, max_digits=1)
    assert task.num_train == 10
    assert all(p.meta["entry"]["metadata"]["num_terms"] == 2 for p in task.problems("train"))
    # a small space: eval drops every question train already holds, and may come out short
    assert not set(questions(task.problems("train"))) & set(questions(task.problems("eval")))
    with pytest.raises(ValueError, match="size"):
        ReasoningGymTask("chain_sum", num_train=10, size=20)


@pytest.mark.parametrize(
    "name, options, match",
    [
        ("reasoning_gym:chain_sun", {}, "chain_sum"),
        ("reasoning_gym:chain_sum", {"min_term": 2}, "min_terms"),
        ("reasoning_gym:chain_sum", {"min_terms": 5, "max_terms": 2}, "rejected"),
        ("reasoning_gym:chain_sum", {"num_eval": -1}, "num_eval"),
    ],
)
def test_bad_configs(name, options, match):
    with pytest.raises(ValueError, match=match):
        make_task(name, **options)


def test_eval_skips_questions_seen_in_train():
    """With eval_seed = seed + 1 the eval dataset is train shifted by one: all but one collide."""
    task = ReasoningGymTask("chain_sum", seed=0, eval_seed=1, num_train=30, num_eval=10)
    evals = task.problems("eval")
    assert len(evals) == 10
    assert all(p.meta["index"] >= 29 for p in evals)
    assert not set(questions(task.problems("train"))) & set(questions(evals))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=30), tagged=st.booleans())
def test_random_text_never_crashes(task, text, tagged):
    completion = f"<answer>{text}</answer>" if tagged else text
    scores = task.score(task.problems("train", 1)[0], completion)
    assert all(0.0 <= v <= 1.0 for v in scores.values())
