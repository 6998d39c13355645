"""User reward functions in TRL's contract: loading, weights, None, errors, and the dataset task's use."""

from __future__ import annotations

import json
import math
import sys

import pytest

from rlvr.rewards import RewardFunctionError, RewardFunctions, load_reward_function, parse_reward_functions
from rlvr.tasks import DatasetTask

USER_MODULE = '''
def accuracy(prompts, completions, answer, **kwargs):
    return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answer)]

def length_penalty(completions, **kwargs):
    return [-0.1 * len(c) for c in completions]

def only_even(prompts, completions, answer, **kwargs):
    return [None if int(a) % 2 else 1.0 for a in answer]

def picky(completions, level):
    return [float(l) for l in level]

def boom_on_x(completions, **kwargs):
    if any(c == "x" for c in completions):
        raise ValueError("cannot score 'x'")
    return [0.5 for c in completions]

def always_boom(completions, **kwargs):
    raise KeyError("solution")

def wrong_length(completions, **kwargs):
    return [1.0, 1.0, 1.0]

def not_a_number(completions, **kwargs):
    return ["high" for c in completions]

CALLS = []
def counted(prompts, completions, **kwargs):
    CALLS.append(len(completions))
    return [1.0] * len(completions)

def chat(prompts, completions, **kwargs):
    assert all(isinstance(p, list) and p[0]["role"] == "user" for p in prompts)
    return [1.0 if c[0]["role"] == "assistant" and c[0]["content"] == "ok" else 0.0 for c in completions]
'''


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(USER_MODULE)
    return path


@pytest.fixture
def data(tmp_path):
    rows = [{"prompt": f"{a}+{a}=", "answer": str(2 * a), "level": a % 3} for a in range(40)]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def fns(user_file, *names, weights=None, columns=("answer", "level")):
    return RewardFunctions(parse_reward_functions([f"{user_file}:{n}" for n in names], weights), columns=list(columns),
                           warn=WARNINGS.append)


WARNINGS: list[str] = []


@pytest.fixture(autouse=True)
def _clear():
    WARNINGS.clear()


# --------------------------------------------------------------------------- loading


def test_load_from_file_and_module(user_file, monkeypatch):
    fn = load_reward_function(f"{user_file}:accuracy")
    assert fn(prompts=["p"], completions=["4"], answer=["4"]) == [1.0]
    monkeypatch.syspath_prepend(str(user_file.parent))
    sys.modules.pop("my_rewards", None)
    assert load_reward_function("my_rewards:length_penalty")(completions=["ab"]) == [pytest.approx(-0.2)]


@pytest.mark.parametrize("spec, message", [
    ("accuracy", "expected 'package.module:function'"),
    ("nowhere/x.py:f", "no such file 'nowhere/x.py'"),
    ("no_such_module_xyz:f", "no module 'no_such_module_xyz'"),
    ("{file}:missing", "has no 'missing'; its callables: accuracy, always_boom"),
])
def test_load_errors_name_the_spec(user_file, spec, message):
    with pytest.raises(RewardFunctionError, match=message) as err:
        load_reward_function(spec.format(file=user_file))
    assert "\n" not in str(err.value)


def test_parse_names_and_weights(user_file):
    parsed = parse_reward_functions([f"{user_file}:accuracy", {"function": f"{user_file}:accuracy", "name": "acc2",
                                                                "weight": 0.5}])
    assert [(f.name, f.weight) for f in parsed] == [("accuracy", 1.0), ("acc2", 0.5)]
    with pytest.raises(RewardFunctionError, match="two reward functions are named 'accuracy'"):
        parse_reward_functions([f"{user_file}:accuracy"] * 2)
    with pytest.raises(RewardFunctionError, match="reward_weights has 1 entries for 2"):
        parse_reward_functions([f"{user_file}:accuracy", f"{user_file}:only_even"], [1.0])
    with pytest.raises(RewardFunctionError, match="the name 'reward' is reserved"):
        parse_reward_functions([{"function": f"{user_file}:accuracy", "name": "reward"}])


# --------------------------------------------------------------------------- combination


def test_weighted_sum_is_trl_default(user_file):
    combo = fns(user_file, "accuracy", "length_penalty", weights=[1.0, 2.0])
    comps, rewards, failures = combo(["p", "q"], ["4", "12"], {"answer": ["4", "3"], "level": [0, 1]})
    assert comps["accuracy"] == [1.0, 0.0] and comps["length_penalty"] == pytest.approx([-0.1, -0.2])
    assert rewards == pytest.approx([1.0 - 0.2, -0.4]) and failures == [0, 0]


def test_none_means_not_applicable(user_file):
    combo = fns(user_file, "accuracy", "only_even")
    comps, rewards, _ = combo(["p", "q"], ["2", "x"], {"answer": ["2", "3"], "level": [0, 0]})
    assert comps["only_even"][0] == 1.0 and math.isnan(comps["only_even"][1])  # None kept as NaN
    assert rewards == [2.0, 0.0]  # None is skipped, not counted as 0 or as a failure
    alone = fns(user_file, "only_even")
    assert alone(["q"], ["x"], {"answer": ["3"], "level": [0]})[1] == [0.0]  # nothing applies: 0 (TRL's nansum)


def test_functions_without_kwargs_get_only_their_columns(user_file):
    combo = fns(user_file, "picky")
    assert combo(["p", "q"], ["a", "b"], {"answer": ["1", "2"], "level": [2, 1]})[1] == [2.0, 1.0]
    with pytest.raises(RewardFunctionError, match="requires 'level', which is not a column of the dataset"):
        fns(user_file, "picky", columns=("answer",))


# --------------------------------------------------------------------------- errors


def test_a_failing_sample_gets_zero_and_a_counted_warning(user_file):
    combo = fns(user_file, "boom_on_x", "accuracy")
    comps, rewards, failures = combo(["p", "q", "r"], ["1", "x", "3"], {"answer": ["1", "2", "3"], "level": [0] * 3},
                                     labels=["1+1=", "2+2=", "3+3="])
    assert comps["boom_on_x"] == [0.5, 0.0, 0.5] and failures == [0, 1, 0]
    assert rewards == [1.5, 0.0, 1.5]
    assert len(WARNINGS) == 1 and "reward function 'boom_on_x' failed on sample 1 of a batch of 3" in WARNINGS[0]
    assert "ValueError: cannot score 'x'" in WARNINGS[0] and "(prompt '2+2=')" in WARNINGS[0]
    assert combo.errors == {"boom_on_x": 1, "accuracy": 0}
    for _ in range(20):
        combo(["q"], ["x"], {"answer": ["2"], "level": [0]})
    assert combo.errors["boom_on_x"] == 21
    assert len(WARNINGS) == 4  # the first 3 failures in full, then only at 10, 100, ...
    assert "(10 failures so far)" in WARNINGS[-1]


@pytest.mark.parametrize("name, why", [("always_boom", "KeyError: 'solution'"),
                                       ("wrong_length", "returned 3 values for 1 samples"),
                                       ("not_a_number", "returned 'high'")])
def test_a_function_failing_on_every_sample_stops_the_run(user_file, name, why):
    combo = fns(user_file, name)
    with pytest.raises(RewardFunctionError) as err:
        combo(["p", "q"], ["1", "2"], {"answer": ["1", "2"], "level": [0, 0]})
    text = str(err.value)
    assert f"reward function '{name}'" in text and "failed on every sample of a batch of 2" in text
    assert "first at sample 0" in text and why in text and "\n" not in text


# --------------------------------------------------------------------------- in the dataset task


def test_dataset_task_with_reward_functions(user_file, data):
    from rlvr.tasks.base import score

    task = DatasetTask(path=str(data), eval_fraction=0.0, reward_functions=[
        f"{user_file}:accuracy", {"function": f"{user_file}:only_even", "weight": 0.5}, f"{user_file}:counted"],
        reward_weights=[1.0, 0.5, 0.0])
    assert task.reward_names == ("reward", "correct", "format", "accuracy", "only_even", "counted", "function_errors")
    problems = task.problems("train")[:4]
    calls = load_reward_function(f"{user_file}:counted").__globals__["CALLS"]  # the same loaded module
    calls.clear()
    out = score(task, problems, [p.answer for p in problems[:2]] + ["no", "no"])
    assert calls == [4]  # called once per batch, TRL style
    answers = [int(p.answer) for p in problems]
    even = [0.5 if a % 2 == 0 else 0.0 for a in answers]
    assert out["reward"].tolist() == pytest.approx([1.0 + even[0], 1.0 + even[1], even[2], even[3]])
    assert out["correct"].tolist() == [1.0, 1.0, 0.0, 0.0]  # from the exact verifier
    assert out["function_errors"].tolist() == [0.0] * 4


def test_verifier_none_and_correct_threshold(user_file, data):
    task = DatasetTask(path=str(data), eval_fraction=0.0, verifier="none",
                       reward_functions=[f"{user_file}:accuracy"], correct_threshold=0.5)
    p = task.problems("train")[3]
    assert task.score(p, p.answer) == {"reward": 1.0, "correct": 1.0, "accuracy": 1.0, "function_errors": 0.0}
    assert task.score(p, "nope")["correct"] == 0.0


def test_conversational_contract(user_file, tmp_path):
    from rlvr.models.tiny import build_char_tokenizer

    tok = build_char_tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    tok.save_pretrained(tmp_path / "tok")
    rows = [{"prompt": [{"role": "user", "content": f"say ok {i}"}], "answer": "ok"} for i in range(5)]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = DatasetTask(path=str(path), eval_fraction=0.0, tokenizer=str(tmp_path / "tok"),
                       reward_functions=[f"{user_file}:chat"])
    ps = task.problems("train")[:2]
    out = task.score_batch(ps, ["ok", "no"])
    assert [o["chat"] for o in out] == [1.0, 0.0]


def test_task_reward_function_error_stops_a_run_in_one_line(user_file, data, tmp_path, capsys):
    from rlvr.cli import main

    rc = main(["train", "--config", "configs/grpo_arithmetic_tiny.yaml", "task.name=dataset",
               f"task.options={{path: '{data}', reward_functions: ['{user_file}:always_boom'], num_eval: 4}}",
               "model.warm_start=false", "trainer.steps=1", "rollout.prompts_per_step=2", "rollout.group_size=2",
               "trainer.num_minibatches=1", "eval.num_problems=2", "eval.samples_per_problem=1",
               "logging.progress=false", "logging.plots=false", f"run.output_dir={tmp_path / 'runs'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("error: reward function 'always_boom'") and "KeyError: 'solution'" in err[-1]
