"""The code tasks: the tiny task's split, examples and verifier; the JSONL task; reward modes."""

from __future__ import annotations

import json

import pytest

from rlvr.tasks import Task, make_task
from rlvr.tasks.base import SupportsSFT
from rlvr.tasks.code import TINY_FUNCTIONS, CodeTinyTask



def need_sandbox() -> None:
    """Skip (or, under RLVR_REQUIRE_SANDBOX=1 as in CI, fail) where bubblewrap cannot run."""
    import os

    from rlvr.sandbox import probe

    caps = probe()
    if caps.present.get("bwrap"):
        return
    why = f"bubblewrap unusable here: {caps.why.get('bwrap')}"
    if os.environ.get("RLVR_REQUIRE_SANDBOX") == "1":
        pytest.fail(f"RLVR_REQUIRE_SANDBOX=1 but {why}")
    pytest.skip(f"SKIPPED, NOT PASSED: {why}")


@pytest.fixture(scope="module")
def tiny():
    need_sandbox()
    return make_task("code_tiny", num_train=2000, num_eval=100, sandbox={"require_isolation": False})


def test_registered_and_follows_the_protocol(tiny):
    assert isinstance(tiny, Task) and isinstance(tiny, SupportsSFT)
    assert tiny.name == "code_tiny" and set(tiny.reward_names) == {"reward", "correct", "pass_fraction", "ran"}


def test_split_is_disjoint_and_deterministic(tiny):
    train, evals = tiny.problems("train"), tiny.problems("eval")
    assert len(train) == 2000 and len(evals) == 100
    assert not {p.prompt for p in train} & {p.prompt for p in evals}
    assert len({p.prompt for p in evals}) == len(evals)
    again = make_task("code_tiny", num_train=2000, num_eval=100, sandbox={"require_isolation": False})
    assert [p.prompt for p in again.problems("eval")] == [p.prompt for p in evals]
    assert all(tiny.is_eval_prompt(p.prompt) for p in evals) and not any(tiny.is_eval_prompt(p.prompt) for p in train)


def test_prompts_single_out_one_function_and_tests_are_hidden_inputs(tiny):
    fns = {name: fn for name, _, fn in TINY_FUNCTIONS}
    for p in tiny.problems("train", 300):
        pairs = [ex.split(">") for ex in p.prompt.strip().split(";")]
        inputs, outputs = [a for a, _ in pairs], [b for _, b in pairs]
        matches = [name for name, fn in fns.items() if [fn(x) for x in inputs] == outputs]
        assert matches == [p.meta["function"]]
        assert len(p.meta["tests"]) == 3
        assert not {t["input"].strip() for t in p.meta["tests"]} & set(inputs)
        for t in p.meta["tests"]:
            assert fns[p.meta["function"]](t["input"].strip()) + "\n" == t["output"]
        assert all(c.isprintable() or c == "\n" for c in p.prompt + p.answer)  # the tiny vocabulary


def test_reference_programs_pass_and_wrong_ones_fail(tiny):
    problems = tiny.problems("eval", 40)
    scores = tiny.score_batch(problems, [tiny.format_sft_target(p) for p in problems])
    assert all(s == {"reward": 1.0, "correct": 1.0, "pass_fraction": 1.0, "ran": 1.0} for s in scores)
    # printing the examples' outputs (hard-coding) does not pass the hidden tests
    hard = [f"print({p.prompt.split(';')[0].split('>')[1]!r})" for p in problems]
    assert sum(s["correct"] for s in tiny.score_batch(problems, hard)) == 0
    # one wrong constant: runs cleanly, wrong answer
    p = next(p for p in problems if p.answer.startswith("print(int(input())+"))
    wrong = p.answer[:-2] + str((int(p.answer[-2]) % 9) + 1) + ")"
    assert tiny.score(p, wrong) == {"reward": 0.0, "correct": 0.0, "pass_fraction": 0.0, "ran": 1.0}
    assert tiny.score(p, "print(") ["ran"] == 0.0
    assert tiny.score(p, "")["reward"] == 0.0
    assert tiny.score(p, "```python\n" + p.answer + "\n```")["correct"] == 1.0  # fenced block rule


def test_reward_modes(tiny, tmp_path):
    p = tiny.problems("eval", 1)[0]
    partial = make_task("code_tiny", num_train=10, num_eval=5, reward_mode="binary+partial",
                        sandbox={"require_isolation": False})
    assert partial.score(p, "print(12345)")["reward"] == pytest.approx(0.2)
    assert partial.score(p, "raise SystemExit(1)")["reward"] == 0.0
    with pytest.raises(ValueError, match="reward_mode"):
        make_task("code_tiny", reward_mode="best")
    with pytest.raises(ValueError, match="unknown sandbox option"):
        make_task("code_tiny", sandbox={"isolation": True})


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_jsonl_code_task(tmp_path):
    need_sandbox()
    rows = [{"prompt": f"Print a+b+{k}", "tests": [{"input": "1 2\n", "output": f"{3 + k}\n"},
                                                  {"input": "5 5\n", "output": f"{10 + k}\n"}],
             "solution": f"a, b = map(int, input().split())\nprint(a + b + {k})"} for k in range(30)]
    rows.append({"prompt": "echo in bash", "language": "bash", "tests": [{"input": "hi\n", "output": "hi\n"}],
                 "solution": "cat", "limits": {"cpu_s": 1}})
    path = _write(tmp_path / "p.jsonl", rows)
    task = make_task("code", path=str(path), sandbox={"require_isolation": False}, reward_mode="fraction")
    train, evals = task.problems("train"), task.problems("eval")
    assert len(train) + len(evals) == 31 and not {p.prompt for p in train} & {p.prompt for p in evals}
    allp = train + evals
    scores = task.score_batch(allp, [task.format_sft_target(p) for p in allp])
    assert all(s["correct"] == 1.0 for s in scores)
    p = next(p for p in allp if p.prompt == "Print a+b+0")
    half = "a, b = map(int, input().split())\nprint(3 if a == 1 else 0)"
    assert task.score(p, half)["reward"] == pytest.approx(0.5)  # fraction mode runs every test
    bash = next(p for p in allp if p.meta["language"] == "bash")
    assert bash.meta["limits"] == {"cpu_s": 1} and task.score(bash, "cat")["correct"] == 1.0
    sep = make_task("code", path=str(path), eval_path=str(_write(tmp_path / "e.jsonl", rows[:2])),
                    sandbox={"require_isolation": False})
    assert len(sep.problems("eval")) == 2 and len(sep.problems("train")) == 31


@pytest.mark.parametrize("row, message", [
    ({"prompt": "x"}, "tests"),
    ({"prompt": "x", "tests": []}, "tests"),
    ({"prompt": "x", "tests": [{"input": "1"}]}, "tests"),
    ({"prompt": 3, "tests": [{"output": "1"}]}, "prompt"),
    ({"prompt": "x", "tests": [{"output": "1"}], "language": "cobol"}, "unknown language"),
])
def test_jsonl_errors_name_the_line(tmp_path, row, message):
    path = _write(tmp_path / "bad.jsonl", [row])
    with pytest.raises(ValueError, match=message):
        make_task("code", path=str(path), sandbox={"require_isolation": False})


def test_missing_file_and_missing_solution(tmp_path):
    with pytest.raises(FileNotFoundError):
        make_task("code", path=str(tmp_path / "nope.jsonl"))
    need_sandbox()
    path = _write(tmp_path / "p.jsonl", [{"prompt": "p", "tests": [{"output": "1"}]}])
    task = make_task("code", path=str(path), sandbox={"require_isolation": False}, eval_fraction=0.5)
    with pytest.raises(ValueError, match="solution"):
        task.format_sft_target((task.problems("train") + task.problems("eval"))[0])


def test_recipe_config_loads():
    from rlvr.config import load_config

    config = load_config("configs/grpo_code_tiny.yaml", [])
    assert config.task.name == "code_tiny" and config.task.options["sandbox"]["require_isolation"] is True


def test_task_pickles_without_its_sandbox(tiny):
    import pickle

    clone = pickle.loads(pickle.dumps(tiny))
    assert clone._verifier is None and clone.problems("eval", 3) == tiny.problems("eval", 3)
