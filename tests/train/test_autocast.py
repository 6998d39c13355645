"""bf16 where it is exact enough (issue 14.5): trainer.autocast=bf16 runs the learner's forward passes
under torch.autocast(bfloat16) with fp32 master weights, gradients and AdamW state; the lean sampler
samples from a bfloat16 copy with rollout.dtype=bfloat16 (sync mode too). Neither is a default."""

import copy
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from rlvr.models.load import load_model_and_tokenizer
from rlvr.models.tiny import save_tiny
from rlvr.rollout.base import SamplingParams
from rlvr.rollout.hf import HFRolloutEngine
from rlvr.tasks import make_task
from rlvr.experience.batch import PromptSampler
from rlvr.train.learner import Learner
from rlvr.experience.producer import PromptDraws, RolloutProducer


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model, tok = load_model_and_tokenizer(save_tiny(tmp_path_factory.mktemp("m") / "tiny", seed=2))
    task = make_task("arithmetic", num_train=200, num_eval=10)
    sampler = PromptSampler(task.problems("train"), 0)
    producer = RolloutProducer(HFRolloutEngine(model, tok), task, SamplingParams(temperature=1.0, max_new_tokens=4, n=4),
                               prompts_per_step=5)
    exp = producer.produce(PromptDraws(sampler.problems, sampler.next_indices), seed=0)
    exp.rewards = torch.tensor([1.0, 0.0, 0.0, 1.0] * 5)
    return model, exp


def test_defaults_are_fp32(fast_config):
    cfg = fast_config()
    assert cfg.trainer.autocast == "none" and cfg.rollout.dtype is None and cfg.rollout.engine == "lean"


def test_a_bf16_sampler_in_sync_mode_needs_the_lean_engine(fast_config):
    assert fast_config("rollout.engine=lean", "rollout.dtype=bfloat16").rollout_dtype() == "bfloat16"
    with pytest.raises(ValueError, match="rollout.dtype = 'bfloat16' needs a separate engine copy.*rollout.engine=lean"):
        fast_config("rollout.engine=hf", "rollout.dtype=bfloat16")
    with pytest.raises(ValueError, match="trainer.autocast"):
        fast_config("trainer.autocast=fp16")


def test_autocast_update_keeps_fp32_master_weights_and_state(setup, fast_config):
    base, exp = setup
    out = {}
    for mode in ("none", "bf16"):
        model = copy.deepcopy(base)
        learner = Learner(model, fast_config(f"trainer.autocast={mode}", "trainer.lr=1e-3"))
        with learner.autocast():
            h = model.lm_head(torch.randn(2, model.config.hidden_size))
        assert h.dtype == (torch.bfloat16 if mode == "bf16" else torch.float32)
        idx = torch.arange(exp.rewards.shape[0])
        out[mode] = learner._logits(model, exp, idx)
        assert out[mode].dtype == torch.float32  # logits come back in fp32 (log-softmax in fp32)
        metrics = learner.update(exp, step=0)
        assert math.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
        assert all(p.dtype == torch.float32 for p in model.parameters())
        moments = [s["exp_avg"] for s in learner.optimizer.state.values()]
        assert moments and all(m.dtype == torch.float32 for m in moments)
        changed = [not torch.equal(a, b) for a, b in zip(model.parameters(), base.parameters())]
        assert any(changed)
    gap = (out["bf16"] - out["none"]).abs().max()
    assert 0 < gap < 0.1  # bf16 matmuls: close, not equal


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    ("trainer.autocast=bf16",),
    ("rollout.engine=lean", "trainer.old_logp=recompute"),
    ("rollout.engine=lean", "rollout.dtype=bfloat16", "trainer.autocast=bf16"),
], ids=["autocast", "lean", "lean_bf16_autocast"])
def test_three_steps_train_from_config(fast_config, overrides):
    from rlvr.train.loop import train

    result = train(fast_config("trainer.steps=3", "logging.checkpoint_every=3", "trainer.entropy_coef=0.01", *overrides),
                   log=lambda *_: None)  # the entropy bonus: a gradient even when every group has one reward
    d = result.run_dir
    steps = [r for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if "reward_mean" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    for r in steps:
        assert math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) and math.isfinite(r["mismatch_k3"])
        assert r["skipped_steps"] == 0 and r["grad_norm"] > 0
    weights = load_file(str(d / "checkpoints" / "step_000003" / "model.safetensors"))
    assert all(t.dtype == torch.float32 for t in weights.values())
    if overrides[0] == "rollout.engine=lean" and len(overrides) == 2:  # fp32 sampler and learner: equal to ~1e-6
        assert all(r["mismatch_k3"] < 1e-6 for r in steps)
    text = (d / "config.yaml").read_text()
    for o in overrides:
        key, value = o.split("=")
        assert f"{key.split('.')[-1]}: {value}" in text
