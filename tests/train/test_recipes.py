"""Every recipe in configs/ trains 3 steps end to end, and every registered name is selectable."""

from pathlib import Path

import pytest
import torch

from rlvr import algorithms as A
from rlvr.config import load_config
from rlvr.train.loop import train

pytestmark = pytest.mark.slow

RECIPES = sorted(Path("configs").glob("*.yaml"))
#: A task the quick warm start gets partly right, so groups have reward variance (DAPO needs it).
EASY = ["task.options={max_digits: 1, ops: '+', num_eval: 20}", "sft.steps=150", "sft.batch_size=32",
        "sft.lr=3.0e-3"]


@pytest.fixture
def _cfg(fast_overrides):
    def make(tmp_path, path, *extra):
        from rlvr.config import read_yaml

        base = fast_overrides + EASY
        recipe = read_yaml(path)
        if recipe.get("task", {}).get("name", "arithmetic") != "arithmetic":
            base = [o for o in fast_overrides if not o.startswith("task.options")]  # EASY is arithmetic's
        if recipe.get("env", {}).get("name"):  # multi-turn: the wiring is tested, not learning (a short warm start)
            base = [*base, "sft.steps=10"]
        return load_config(path, base + [f"run.output_dir={tmp_path}", "trainer.steps=3", *extra])
    return make


def _artifacts(stem: str, tmp_path) -> list[str]:
    """Overrides for recipes that read a model a setup script builds (a reward model, a teacher): a freshly
    initialised tiny model stands in, so the recipe's wiring is tested without the setup's minutes."""
    from rlvr.models.tiny import save_tiny

    if stem == "rm_proxy_arithmetic_concise_tiny":
        path = save_tiny(tmp_path / "rm", seed=5)
        return [f"reward.components=[{{type: reward_model, name: rm_correct, path: {path}}}, "
                f"{{type: reward_model, name: rm_short, path: {path}, normalize: batch}}]"]
    if stem == "distill_arithmetic_tiny":
        return [f"distill.teacher={save_tiny(tmp_path / 'teacher', seed=5, hidden_size=128)}"]
    return []


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_trains_three_steps(tmp_path, path, _cfg):
    assert path.read_text().startswith("#"), "each recipe cites its paper at the top"
    result = train(_cfg(tmp_path, path, *_artifacts(path.stem, tmp_path)), log=lambda *_: None)
    assert (result.run_dir / "checkpoints" / "step_000003").is_dir()


@pytest.mark.parametrize("name", sorted(A.POLICY_LOSSES))
def test_every_policy_loss_is_selectable(tmp_path, name, _cfg):
    # (trajectory balance needs reference log-probs: the learner keeps a reference model for it)
    extra = ["algorithm.policy_loss_params={dro_beta: 0.1}"] if name == "dro" else []  # dro_beta has no default
    result = train(_cfg(tmp_path, "configs/grpo_arithmetic_tiny.yaml", f"algorithm.policy_loss={name}",
                        "trainer.steps=1", *extra), log=lambda *_: None)
    assert result.steps == 1


@pytest.mark.parametrize("name", sorted(A.ADVANTAGE_ESTIMATORS))
def test_every_advantage_estimator_is_selectable(tmp_path, name, _cfg):
    extra = ["rollout.greedy_baseline=true"] if name == "remax" else []
    result = train(_cfg(tmp_path, "configs/grpo_arithmetic_tiny.yaml", f"algorithm.advantage_estimator={name}",
                        "trainer.steps=1", *extra), log=lambda *_: None)
    assert result.steps == 1


def test_remax_without_a_baseline_says_how_to_get_one(tmp_path, _cfg):
    with pytest.raises(ValueError, match="rollout.greedy_baseline=true"):
        train(_cfg(tmp_path, "configs/grpo_arithmetic_tiny.yaml", "algorithm.advantage_estimator=remax",
                   "trainer.steps=1"), log=lambda *_: None)


@pytest.mark.parametrize("placement,estimator", [("reward", "k1"), ("loss", "k3"), ("loss", "k2+"), ("loss", "k3_is")])
def test_kl_placements(tmp_path, placement, estimator, _cfg):
    train(_cfg(tmp_path, "configs/grpo_arithmetic_tiny.yaml", f"kl.placement={placement}",
               f"kl.estimator={estimator}", "kl.coef=0.01", "trainer.steps=2"), log=lambda *_: None)


@pytest.mark.parametrize("method", ["tis", "mis", "hispo", "seq_mean_k3"])
def test_mismatch_corrections(tmp_path, method, _cfg):
    extra = {"hispo": ["algorithm.mismatch.delta_seq=0.5", "algorithm.mismatch.delta_tok=0.5"],
             "seq_mean_k3": ["algorithm.mismatch.rollout_rs_threshold=2.0"],
             "mis": ["algorithm.mismatch.batch_normalize=true"]}.get(method, [])
    train(_cfg(tmp_path, "configs/grpo_arithmetic_tiny.yaml", f"algorithm.mismatch.method={method}",
               "trainer.steps=1", *extra), log=lambda *_: None)


def test_a_user_registered_loss_runs_from_config(tmp_path, _cfg):
    calls = []

    @A.register_policy_loss("test_user_reinforce")
    def user_loss(*, logp, old_logp, advantages, mask, agg="token-mean", weights=None, batch_num_tokens=None,
                  batch_num_seqs=None, norm_constant=None, group, scale=1.0):
        calls.append(group.shape)
        per_tok = -advantages * logp * scale
        return A.aggregate_loss(per_tok, mask, agg, batch_num_tokens=batch_num_tokens,
                                batch_num_seqs=batch_num_seqs), {"clip_frac": 0.0}

    try:
        train(_cfg(tmp_path, "configs/grpo_arithmetic_tiny.yaml", "algorithm.policy_loss=test_user_reinforce",
                   "algorithm.policy_loss_params={scale: 2.0}", "trainer.steps=1"), log=lambda *_: None)
    finally:
        A.POLICY_LOSSES.pop("test_user_reinforce")
    assert calls and all(len(s) == 1 for s in calls)


def test_entropy_bonus_changes_the_update(tmp_path, _cfg):
    a = train(_cfg(tmp_path, "configs/grpo_arithmetic_tiny.yaml", "trainer.steps=1", "run.name=a"), log=lambda *_: None)
    b = train(_cfg(tmp_path, "configs/grpo_arithmetic_tiny.yaml", "trainer.steps=1", "run.name=b",
                   "trainer.entropy_coef=0.1"), log=lambda *_: None)
    from safetensors.torch import load_file

    wa = load_file(str(a.run_dir / "checkpoints/step_000001/model.safetensors"))
    wb = load_file(str(b.run_dir / "checkpoints/step_000001/model.safetensors"))
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)


def test_aggregation_aware_rl_reaches_the_trainer(tmp_path, _cfg):
    """`rollout.aggregation_ratio` is wired through `rlvr train`: aggregation rows are trained on."""
    import json

    result = train(_cfg(tmp_path, "configs/rsa_arithmetic_chain_tiny.yaml", "trainer.steps=2"), log=lambda *_: None)
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward_mean" in r]
    assert all("aggregation/accuracy" in r and "aggregation/plain_accuracy" in r for r in steps)
