"""A warm start that is bounded, visible and honest: its estimate, its time bound, its progress lines, and
what it says when it cannot reach its target."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from rlvr.config import load_config
from rlvr.models.tiny import build_char_tokenizer, build_tiny_model
from rlvr.tasks import make_task
from rlvr.warmstart import sft as S

SMALL_ARCH = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=2)


@pytest.fixture(scope="module")
def task():
    return make_task("arithmetic", min_digits=1, max_digits=2, ops="+-", num_train=500, num_eval=20)


def _sft(*overrides):
    return load_config("configs/grpo_arithmetic_tiny.yaml", list(overrides)).sft


def test_the_estimate_is_steps_times_step_time_plus_the_checks():
    assert S.duration_estimate(1000, 0.5) == 500.0
    assert S.duration_estimate(1000, 0.5, check_s=2.0, eval_every=25) == 500.0 + (40 + 1) * 2.0


def test_over_the_bound_a_warning_names_what_makes_it_cheaper(task):
    logs = []
    hook = S.budget_check(task, _sft("sft.steps=1000", "sft.max_minutes=1", "sft.target_accuracy=null",
                                     "sft.batch_size=64"), task.problems("train"), logs.append)
    hook(0.5, 0.0)  # a stub step time: 1000 x 0.5 s = 8m20s > 1 min
    assert logs[0] == "warm start: about 8m20s (1000 steps at 0.50 s/step)"
    assert logs[1].startswith("warning: warm start estimated at 8m20s, over sft.max_minutes=1")
    assert "sft.steps=120 fits 1 min" in logs[1] and "sft.batch_size=32" in logs[1]
    assert "characters" not in logs[1]  # arithmetic's prompts are short: not named as a cost
    long = [SimpleNamespace(prompt="x" * 120)] * 4
    logs.clear()
    S.budget_check(task, _sft("sft.steps=1000", "sft.max_minutes=1", "sft.target_accuracy=0.5"), long,
                   logs.append)(0.5, 0.0)
    assert logs[1].startswith("warning: warm start may take up to")  # a target may stop it before the cap
    assert "shorter prompts (they average 120 characters" in logs[1]


def test_within_the_bound_only_the_estimate_is_logged(task):
    logs = []
    S.budget_check(task, _sft("sft.steps=100", "sft.max_minutes=10", "sft.target_accuracy=0.5", "sft.eval_every=25"),
                   [], logs.append)(0.2, 1.5)
    assert logs == ["warm start: about 28s (at most 100 steps at 0.20 s/step, a validation check every 25 steps "
                    "at 1.5 s)"]


def test_over_budget_stop_stops_before_the_time_is_spent(task):
    model = build_tiny_model(build_char_tokenizer(), seed=0, **SMALL_ARCH)
    cfg = _sft("sft.steps=50", "sft.max_minutes=0.0001", "sft.over_budget=stop", "sft.target_accuracy=null",
               "sft.batch_size=4", "sft.warmup_steps=1")
    logs = []
    with pytest.raises(S.WarmStartBudgetError, match=r"over sft.max_minutes=0.0001.*sft.over_budget=stop"):
        S.train_by_rule(model, build_char_tokenizer(), task, cfg, progress=False, log=logs.append)
    assert logs and logs[0].startswith("warm start: about")


def test_the_estimate_runs_once_after_the_first_steps_and_times_a_check(task):
    calls, checks = [], []

    def validate():
        checks.append(1)
        return 0.0
    model = build_tiny_model(build_char_tokenizer(), seed=0, **SMALL_ARCH)
    out = S.train_sft(model, build_char_tokenizer(), task, 8, 1e-3, 4, 1, progress=False, validate=validate,
                      eval_every=100, estimate=lambda per_step, check_s: calls.append((per_step, check_s)))
    assert len(calls) == 1 and calls[0][0] > 0 and calls[0][1] > 0
    assert [c["step"] for c in out.checks] == [8]  # the timed check is not recorded
    assert len(checks) == 2


def test_progress_lines_when_the_output_is_not_a_terminal(task, capsys):
    model = build_tiny_model(build_char_tokenizer(), seed=0, **SMALL_ARCH)
    S.train_sft(model, build_char_tokenizer(), task, 10, 1e-3, 4, 1, progress=True)
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("[warm start (SFT)]")]
    assert lines and lines[-1].startswith("[warm start (SFT)] step 10/10 | loss ")
    assert "s/step" in lines[0] and "eta" in lines[0]


def test_an_unreachable_target_says_so_and_warns_before_rl(tmp_path, monkeypatch, task):
    monkeypatch.setenv("RLVR_CACHE", str(tmp_path))
    cfg = _sft("sft.steps=6", "sft.target_accuracy=1.0", "sft.eval_every=3", "sft.val_problems=20",
               "sft.batch_size=4", "sft.warmup_steps=1")
    logs = []
    S.warm_start(task, "arithmetic", {"num_train": 500}, cfg, progress=False, log=logs.append)
    text = "\n".join(logs)
    assert "stopped at the cap (sft.steps=6) below the target 1:" in text
    assert "peak memory" in text
    assert "warning: the warm start did not reach its target (validation reference_probability" in text
    assert "zero variance" in text
    logs.clear()
    path = S.warm_start(task, "arithmetic", {"num_train": 500}, cfg, progress=False, log=logs.append)  # cached
    assert "using cached checkpoint" in logs[0] and logs[1].startswith("warning: the warm start did not reach")
    record = S.warm_start_record(path)
    assert record["reached_target"] is False and record["peak_memory_gib"] > 0


def test_the_time_bound_is_not_part_of_the_cache_key():
    a = S.sft_key_fields(_sft("sft.max_minutes=1"))
    b = S.sft_key_fields(_sft("sft.max_minutes=100", "sft.over_budget=stop"))
    assert a == b and "max_minutes" not in a
