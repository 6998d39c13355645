"""Task-aware defaults: the task switch, the tiny presets, the token budget, the start-of-RL warnings."""

from __future__ import annotations

import warnings

import pytest
import torch

from rlvr.config import ConfigWarning, load_config
from rlvr.tasks import make_task
from rlvr.tasks.defaults import apply_token_budget, token_budget, zero_variance_warning

CONFIG = "configs/grpo_arithmetic_tiny.yaml"


def load(*overrides, config=CONFIG):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        c = load_config(config, list(overrides))
    return c, [str(w.message) for w in caught if issubclass(w.category, ConfigWarning)]


# --------------------------------------------------------------------------- task switch (README's example)


def test_readme_task_switch_loads_and_builds():
    c, warned = load("task.name=reasoning_gym:chain_sum")
    assert "ops" not in c.task.options and c.task.options == {"preset": "tiny"}
    assert "max_new_tokens" not in c.rollout.model_fields_set  # sized for arithmetic: derived again
    assert len(warned) == 1 and "task.name=reasoning_gym:chain_sum replaces the config's task 'arithmetic'" in warned[0]
    assert "task.options (min_digits, max_digits, ops)" in warned[0] and "rollout.max_new_tokens (6" in warned[0]
    task = make_task(c.task.name, **c.task.options)
    assert task.problems("train", 1)[0].prompt.endswith("=")


def test_switch_keeps_what_the_overrides_set():
    c, warned = load("task.name=reasoning_gym:chain_sum", "task.options={max_terms: 3}", "rollout.max_new_tokens=9")
    assert c.task.options == {"max_terms": 3, "preset": "tiny"} and c.rollout.max_new_tokens == 9
    assert warned == []  # nothing dropped that the user did not replace
    c, _ = load("task={name: arithmetic_chain, options: {max_digits: 1}}")
    assert c.task.options == {"max_digits": 1}


def test_same_task_keeps_the_file_options():
    c, warned = load("task.name=arithmetic", "task.options.max_digits=3")
    assert c.task.options == {"min_digits": 1, "max_digits": 3, "ops": "+-"} and warned == []
    assert c.rollout.max_new_tokens == 6


def test_cli_task_switch_reaches_training(monkeypatch, capsys):
    """`rlvr train --config ... task.name=reasoning_gym:chain_sum` gets past config and task building."""
    import rlvr.train.loop as loop
    from rlvr.cli import main

    seen = {}

    def fake_train(config=None, **kwargs):
        seen["task"] = make_task(config.task.name, **config.task.options)

    monkeypatch.setattr(loop, "train", fake_train)
    assert main(["train", "--config", CONFIG, "task.name=reasoning_gym:chain_sum"]) == 0
    assert seen["task"].name == "reasoning_gym:chain_sum"
    err = capsys.readouterr().err
    assert "unknown option" not in err and err.count("warning:") == 1


# --------------------------------------------------------------------------- model switch

DATASET = "configs/grpo_dataset_tiny.yaml"


def test_model_switch_drops_the_budget_counted_in_the_file_models_tokens(tmp_path):
    c, warned = load(config=DATASET)
    assert c.rollout.max_new_tokens == 6 and warned == []  # builtin:tiny: the recipe as it was
    c, warned = load(f"model.path={tmp_path}", config=DATASET)
    assert "max_new_tokens" not in c.rollout.model_fields_set and c.rollout.max_new_tokens == 8
    assert len(warned) == 1
    assert warned[0].startswith(f"model.path={tmp_path} replaces the config's model 'builtin:tiny'")
    assert "rollout.max_new_tokens (6)" in warned[0]
    c, warned = load(f"model.path={tmp_path}", "rollout.max_new_tokens=12", config=DATASET)
    assert c.rollout.max_new_tokens == 12 and warned == []  # set with the switch: kept
    c, warned = load("model.path=builtin:tiny", config=DATASET)  # not a switch
    assert c.rollout.max_new_tokens == 6 and warned == []
    c, warned = load(f"model={{path: {tmp_path}}}")  # any config: arithmetic's 6 counts characters too
    assert "max_new_tokens" not in c.rollout.model_fields_set and len(warned) == 1
    c, warned = load("task.name=reasoning_gym:chain_sum", f"model.path={tmp_path}")
    assert len(warned) == 1 and warned[0].startswith("task.name=reasoning_gym:chain_sum")  # dropped once


def test_a_subword_chat_model_gets_a_budget_in_its_own_tokens(tmp_path, tok):
    from rlvr.models.stand_in import build_bpe_tokenizer

    bpe = build_bpe_tokenizer()
    bpe.save_pretrained(tmp_path / "chat")
    c, _ = load(f"model.path={tmp_path / 'chat'}", config=DATASET)
    task = make_task(c.task.name, **c.task.options)
    assert task.uses_chat_template
    assert token_budget(task, bpe) == 3  # the longest answers ("-89") are "-" "89" in its tokens, plus <|im_end|>
    with pytest.warns(ConfigWarning, match=r"rollout.max_new_tokens is 8 \(the default\) for a chat model"):
        assert apply_token_budget(c, task, bpe, log=print) == 8
    c, _ = load(config=DATASET)  # the built-in model: the recipe's 6 characters, as before
    task = make_task(c.task.name, **c.task.options)
    assert token_budget(task, tok) == 4 and apply_token_budget(c, task, tok, log=print) == 6


# --------------------------------------------------------------------------- presets


def test_tiny_preset_only_for_the_builtin_model(tmp_path):
    c, _ = load("task.name=reasoning_gym:chain_sum", f"model.path={tmp_path}")
    assert c.task.options == {}
    c, _ = load("task.name=reasoning_gym:chain_sum", "task.options={preset: null}")
    assert c.task.options == {"preset": None}
    c, _ = load("task.name=reasoning_gym:leg_counting")  # no tuned settings: the generic tiny preset
    assert c.task.options == {"preset": "tiny"}


def test_tiny_preset_contents():
    from rlvr.tasks.reasoning_gym import ReasoningGymTask

    task = ReasoningGymTask("chain_sum", preset="tiny", num_train=50, num_eval=10)
    p = task.problems("train")[0]
    assert not p.prompt.startswith("State the final answer") and "<answer>" not in p.prompt
    assert task.format_sft_target(p) == p.answer and task.score(p, p.answer)["correct"] == 1.0
    assert all(len(x.meta["entry"]["metadata"]["expression"].split()) == 3 for x in task.problems("train"))
    harder = ReasoningGymTask("chain_sum", preset="tiny", max_terms=3, instruction="Go.", num_train=50, num_eval=0)
    assert harder.dataset_config["max_terms"] == 3 and harder.instruction == "Go."  # options override the preset
    generic = ReasoningGymTask("leg_counting", preset="tiny", num_train=50, num_eval=5)  # any dataset has it
    assert generic.lead_in[0].startswith("Your task is to count") and generic.instruction == ""
    for name in ("basic_arithmetic", "products"):
        t = ReasoningGymTask(name, preset="tiny", num_train=20, num_eval=5)
        q = t.problems("train")[0]
        assert len(q.prompt) < 20 and t.score(q, q.answer)["correct"] == 1.0, q.prompt


# --------------------------------------------------------------------------- token budget


class _Answers:
    name = "answers"

    def __init__(self, answers):
        from rlvr.tasks.base import Problem

        self._p = [Problem(prompt=f"{i}=", answer=a) for i, a in enumerate(answers)]

    def problems(self, split, n=None):
        return self._p[:n] if split == "train" else []

    def format_sft_target(self, problem):
        return problem.answer


@pytest.fixture(scope="module")
def tok():
    from rlvr.models.tiny import build_char_tokenizer

    return build_char_tokenizer()


def test_budget_is_raised_when_unset(tok):
    c, _ = load("task.name=reasoning_gym:chain_sum")
    task = _Answers(["1", "-1428211", "55"])
    assert token_budget(task, tok) == 9  # 8 characters + EOS
    lines = []
    assert apply_token_budget(c, task, tok, log=lines.append) == 9
    assert c.rollout.max_new_tokens == 9 and "rollout.max_new_tokens: 9" in lines[0]
    c2, _ = load("task.name=reasoning_gym:chain_sum")
    apply_token_budget(c2, _Answers(["1"]), tok, log=lines.append)
    assert c2.rollout.max_new_tokens == 8  # never lowered below the default


def test_budget_set_by_the_user_is_kept_with_a_warning(tok):
    c, _ = load()  # the recipe sets 6
    with pytest.warns(ConfigWarning, match=r"rollout.max_new_tokens=6 is shorter than the longest reference answer"):
        assert apply_token_budget(c, _Answers(["-14282"]), tok, log=print) == 6
    assert c.rollout.max_new_tokens == 6


def test_zero_variance_warning():
    group = torch.tensor([0, 0, 1, 1, 2, 2])
    assert zero_variance_warning(torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0, 0.0]), group) is None
    text = zero_variance_warning(torch.zeros(6), group)
    assert text.startswith("3 of 3 groups of the first RL batch have zero reward variance (3 all at reward <= 0")
    assert zero_variance_warning(torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 1.0]), group) is None  # 2 of 3 < 90%
