"""``rlvr rm pairs`` and ``rlvr rm train`` end to end (small), and reward components in a training run:
their scores join the verifier's, a failed sample is counted and, with ``on_failure=drop_group``, its group
leaves the loss; the config names a bad component field."""

from __future__ import annotations

import json

import pytest
import torch

from rlvr.cli import main
from rlvr.config import load_config
from rlvr.models.tiny import save_tiny
from rlvr.rewards.reward_model import RM_RECORD

CONCISE = "configs/grpo_arithmetic_concise_tiny.yaml"


@pytest.fixture(scope="module")
def rm_path(tmp_path_factory):
    return str(save_tiny(tmp_path_factory.mktemp("rm") / "m", seed=7))


def test_rm_pairs_then_rm_train(tmp_path, fast_overrides, capsys):
    small = [o for o in fast_overrides if not o.startswith("task.options")]
    pairs = tmp_path / "pairs.jsonl"
    assert main(["rm", "pairs", "--config", CONCISE, "--component", "short", "--out", str(pairs),
                 "--prompts", "24", "--samples", "4", *small]) == 0
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    assert rows and all(set(r) == {"prompt", "question", "chosen", "rejected", "margin"} for r in rows)
    assert all(r["chosen"] != r["rejected"] and r["margin"] > 0 for r in rows)
    assert main(["rm", "train", "--config", CONCISE, "--data", str(pairs), "--out", str(tmp_path / "rm"),
                 "--eval-fraction", "0.3", "--epochs", "1", "--batch-size", "8", *small]) == 0
    record = json.loads((tmp_path / "rm" / RM_RECORD).read_text())
    assert record["held_out_pairs"] > 0 and record["train_pairs"] + record["held_out_pairs"] == len(rows)
    assert 0 <= record["held_out_accuracy"] <= 1
    assert main(["rm", "pairs", "--config", CONCISE, "--component", "nope", "--out", str(pairs), *small]) != 0
    assert "--component 'nope'" in capsys.readouterr().err


def test_a_bad_component_field_is_named_in_the_config_error(rm_path):
    with pytest.raises(Exception, match=r"reward.components\[0\].*unknown field\(s\) temperature"):
        load_config(CONCISE, [f"reward.components=[{{type: reward_model, name: rm, path: {rm_path}, temperature: 1}}]"])
    with pytest.raises(Exception, match="unknown type 'magic'"):
        load_config(CONCISE, ["reward.components=[{type: magic, name: rm}]"])
    with pytest.raises(Exception, match="used twice"):
        load_config(CONCISE, [f"reward.components=[{{type: reward_model, name: rm, path: {rm_path}}}, "
                              f"{{type: reward_model, name: rm, path: {rm_path}}}]"])


def _produce(cfg):
    from rlvr.experience.batch import PromptSampler
    from rlvr.experience.producer import PromptDraws, build_producer
    from rlvr.models.load import load_model_and_tokenizer
    from rlvr.rollout.hf import HFRolloutEngine
    from rlvr.tasks import make_task

    task = make_task(cfg.task.name, **cfg.task.options)
    model, tok = load_model_and_tokenizer(save_tiny(cfg.run.output_dir + "/policy", seed=3))
    producer = build_producer(cfg, HFRolloutEngine(model, tok), task)
    sampler = PromptSampler(task.problems("train"), 0)
    return producer, producer.produce(PromptDraws(sampler.problems, sampler.next_indices), seed=1)


def test_component_scores_join_the_verifiers_and_drop_group_masks_the_loss(tmp_path, fast_overrides, rm_path):
    base = fast_overrides + [f"run.output_dir={tmp_path}"]
    spec = f"{{type: reward_model, name: rm, path: {rm_path}, max_length: 7}}"  # some texts are too long
    cfg = load_config("configs/grpo_arithmetic_tiny.yaml", base + [f"reward.components=[{spec}]",
                                                                    "reward.on_failure=drop_group",
                                                                    "rollout.max_new_tokens=6"])
    producer, exp = _produce(cfg)
    comps = exp.reward_components
    assert {"reward", "correct", "rm", "reward_failures", "reward_failed_group"} <= set(comps)
    failed = comps["reward_failures"] > 0
    assert bool(failed.any()) and not bool(failed.all()), "the prompt lengths straddle max_length: both kinds"
    assert producer.rewards.failures["rm"] == int(failed.sum())
    assert torch.all(comps["rm"][failed] == 0)
    dropped = comps["reward_failed_group"] > 0
    for g in exp.group[failed].tolist():
        assert bool(dropped[exp.group == g].all())
    lm = exp.rollout.loss_mask
    assert torch.all(lm[dropped] == 0) and torch.equal(lm[~dropped], exp.rollout.completion_mask[~dropped])
    assert "reward/rm" in exp.timings


def test_a_hung_reward_function_is_a_counted_failure_and_the_run_goes_on(tmp_path, fast_config):
    """A `functions` component whose function hangs on some samples: with a per-sample timeout the training
    run finishes, and the failures are in metrics.jsonl."""
    from rlvr.train.loop import train

    (tmp_path / "slow.py").write_text(
        "import time\n"
        "def slow(prompts, completions, **kw):\n"
        "    if len(completions[0]) % 2:\n"
        "        time.sleep(30)\n"
        "    return [1.0]\n")
    spec = f"{{type: functions, functions: ['{tmp_path / 'slow.py'}:slow'], mode: per_sample, timeout_s: 0.3, workers: 8}}"
    cfg = fast_config(f"reward.components=[{spec}]", "trainer.steps=2", "rollout.max_new_tokens=6")
    result = train(cfg, log=lambda *_: None)
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward/slow" in r]
    assert len(steps) == 2
    assert sum(r["reward/reward_failures"] for r in steps) > 0
    assert all(0 <= r["reward/slow"] < 1 for r in steps)  # a hung sample scores 0, the others 1
    assert all(r["time_reward/slow"] < 5 for r in steps)
