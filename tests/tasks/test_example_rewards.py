"""examples/rewards.py on both of TRL's data formats: standard (strings) and conversational (messages).

The functions are loaded by path, as a config names them (``examples/rewards.py:correctness``), and
called directly on each form with hand-computed values, then end to end through the ``dataset`` task's
scoring (what training calls) with a stand-in chat model's template.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rlvr.rewards.functions import load_reward_function  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FILE = "examples/rewards.py"


@pytest.fixture
def in_repo(monkeypatch):
    """Relative specs mean what they mean in a config run from a clone: the repository is the cwd."""
    monkeypatch.chdir(ROOT)


@pytest.fixture
def fns(in_repo):
    return {name: load_reward_function(f"{FILE}:{name}") for name in ("correctness", "is_integer", "sign")}


def conversational(prompts, completions):
    """The same batch in TRL's conversational format."""
    return ([[{"role": "user", "content": p}] for p in prompts],
            [[{"role": "assistant", "content": c}] for c in completions])


PROMPTS = ["What is 2+2?", "What is 1-4?", "What is 0-3?", "What is 5-9?", "What is 6+1?"]
COMPLETIONS = ["4", " -3 ", "-3", "4", "seven"]
ANSWERS = ["4", "-3", "-3", "-4", "7"]
WANT = {
    "correctness": [1.0, 1.0, 1.0, 0.0, 0.0],   # " -3 " is "-3" once stripped
    "is_integer": [1.0, 1.0, 1.0, 1.0, 0.0],
    "sign": [None, 1.0, 1.0, 0.0, None],        # None: the answer is not negative
}


@pytest.mark.parametrize("name", sorted(WANT))
def test_each_function_gives_the_same_values_on_both_forms(fns, name):
    fn = fns[name]
    plain = fn(prompts=PROMPTS, completions=COMPLETIONS, answer=ANSWERS)
    conv_prompts, conv_completions = conversational(PROMPTS, COMPLETIONS)
    chat = fn(prompts=conv_prompts, completions=conv_completions, answer=ANSWERS)
    assert plain == WANT[name]
    assert chat == WANT[name]


def test_small_cases(fns):
    assert fns["correctness"](["What is 2+2?"], ["4"], answer=["4"]) == [1.0]
    assert fns["correctness"]([[{"role": "user", "content": "What is 2+2?"}]],
                              [[{"role": "assistant", "content": "4"}]], answer=["4"]) == [1.0]
    correctness = fns["correctness"]
    assert correctness(["q"], [" -3 "], answer=["-3"]) == correctness(["q"], ["-3"], answer=["-3"]) == [1.0]
    assert fns["sign"](["q", "q"], ["-1", "1"], answer=["0", "12"]) == [None, None]
    assert fns["is_integer"](completions=["-12", "1.5", "", "+3"]) == [1.0, 0.0, 0.0, 0.0]


def test_completion_text_takes_the_last_assistant_message(in_repo):
    text = load_reward_function(f"{FILE}:completion_text")
    assert text("12") == "12"
    assert text([{"role": "assistant", "content": "12"}]) == "12"
    assert text([{"role": "assistant", "content": "thinking"}, {"role": "user", "content": "go on"},
                 {"role": "assistant", "content": "-5"}]) == "-5"
    assert text([]) == ""


# --------------------------------------------------------------------------- through the dataset task


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    """A Qwen3-shaped stand-in with a byte-level BPE tokenizer and a ChatML template, as an HF folder."""
    from rlvr.models.stand_in import save_stand_in

    return save_stand_in("qwen3_instruct", tmp_path_factory.mktemp("stand_in") / "qwen3")


ROWS = [("What is 2+3?", "5"), ("What is 1-4?", "-3"), ("What is 7+7?", "14"), ("What is 0-9?", "-9")]
SPECS = [f"{FILE}:correctness", {"function": f"{FILE}:is_integer", "weight": 0.1}, f"{FILE}:sign"]


def write_rows(tmp_path, chat: bool) -> Path:
    path = tmp_path / ("chat.jsonl" if chat else "plain.jsonl")
    rows = [{"prompt": [{"role": "user", "content": q}] if chat else q, "answer": a} for q, a in ROWS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("chat", [False, True], ids=["plain_prompts", "conversational_prompts"])
def test_scored_through_the_dataset_task(tmp_path, in_repo, stand_in, chat):
    from rlvr.tasks import make_task
    from rlvr.tasks.base import score

    task = make_task("dataset", path=str(write_rows(tmp_path, chat)), tokenizer=str(stand_in),
                     reward_functions=SPECS, eval_fraction=0.0)
    assert task.uses_chat_template
    problems = task.problems("train")
    assert [p.answer for p in problems] == [a for _, a in ROWS]
    assert problems[0].prompt == "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"
    texts = ["5", " -3", "15", "9"]  # right, right (stripped), wrong integer, wrong sign
    got = score(task, problems, texts)
    assert got["correctness"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert got["is_integer"].tolist() == [1.0, 1.0, 1.0, 1.0]
    sign = got["sign"].tolist()
    assert math.isnan(sign[0]) and math.isnan(sign[2]) and sign[1] == 1.0 and sign[3] == 0.0
    assert got["function_errors"].tolist() == [0.0] * 4
    assert got["reward"].tolist() == pytest.approx([1.1, 2.1, 0.1, 0.1])
    assert got["correct"].tolist() == [1.0, 1.0, 0.0, 0.0]  # the exact verifier


@pytest.mark.parametrize("chat", [False, True], ids=["plain_prompts", "conversational_prompts"])
def test_functions_get_the_form_of_the_dataset(tmp_path, stand_in, chat):
    """As in TRL: message-list completions for a conversational dataset, strings otherwise."""
    from rlvr.tasks import make_task

    seen = []

    def spy(prompts, completions, **kwargs):
        seen.append((prompts, completions))
        return [0.0] * len(completions)

    task = make_task("dataset", path=str(write_rows(tmp_path, chat)), tokenizer=str(stand_in),
                     reward_functions=[spy], eval_fraction=0.0)
    task.score_batch(task.problems("train")[:2], ["5", "x"])
    prompts, completions = seen[0]
    if chat:
        assert prompts == [[{"role": "user", "content": "What is 2+3?"}], [{"role": "user", "content": "What is 1-4?"}]]
        assert completions == [[{"role": "assistant", "content": "5"}], [{"role": "assistant", "content": "x"}]]
    else:
        assert prompts == ["What is 2+3?", "What is 1-4?"] and completions == ["5", "x"]
