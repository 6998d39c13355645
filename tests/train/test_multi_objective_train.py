"""The multi-objective recipes (issue 13, item 8) and Trust-GRPO / ARM train 3 steps from config and log
every component, its effective weight and the held-out mean of every component."""

import json

import pytest

from rlvr.config import load_config

pytestmark = pytest.mark.slow

#: The concise task's own options, shrunk (FAST's task.options are arithmetic's: replaced here).
SMALL = ["task.options={max_digits: 1, ops: '+', num_train: 2000, num_eval: 20, max_chars: 1}",
         "sft.steps=150", "sft.batch_size=32", "sft.lr=3.0e-3", "trainer.steps=3"]


def _run(tmp_path, fast_overrides, config, *extra):
    from rlvr.train.loop import train

    base = [o for o in fast_overrides if not o.startswith("task.options")]
    cfg = load_config(config, base + SMALL + [f"run.output_dir={tmp_path}", *extra])
    res = train(cfg, log=lambda *_: None)
    recs = [json.loads(line) for line in open(res.run_dir / "metrics.jsonl")]
    return res, [r for r in recs if '"loss"' in json.dumps(r)], [r for r in recs if "eval/greedy_accuracy" in r]


@pytest.mark.parametrize("name", ["grpo", "gdpo", "dvao", "lagrangian"])
def test_concise_recipe_trains_three_steps(tmp_path, fast_overrides, name):
    res, steps, evals = _run(tmp_path, fast_overrides, f"configs/{name}_arithmetic_concise_tiny.yaml")
    assert (res.run_dir / "checkpoints" / "step_000003").is_dir() and len(steps) == 3
    assert "reward/short" in steps[-1] and "eval/greedy_short" in evals[-1] and "eval/sampled_short" in evals[-1]
    if name == "lagrangian":
        assert "constraint/short/lambda" in steps[-1]
    else:
        assert "reward/weight/short" in steps[-1]


def test_trust_grpo_and_arm_train_three_steps(tmp_path, fast_overrides):
    """Trust-GRPO with `short` as the auxiliary reward (annealed, trust-weighted), and ARM on top."""
    res, steps, _ = _run(tmp_path, fast_overrides, "configs/grpo_arithmetic_concise_tiny.yaml",
                         "reward.combine=trust_grpo", "reward.weights={correct: 1.0, short: 0.3}",
                         "reward.combine_params={anneal_steps: 2}", "algorithm.arm.enabled=true")
    assert len(steps) == 3
    assert steps[-1]["reward/weight/correct"] == 1.0
    assert 0.0 <= steps[-1]["reward/weight/short"] <= 0.3 * 2.718281828 ** (-1 / 2) + 1e-6  # annealed (step >= 1)
    assert "arm/answer_conf" in steps[-1] and 0 < steps[-1]["arm/prompt_conf"] <= 1
