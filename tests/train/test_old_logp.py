"""No redundant forward (issue 14.3): the rule that lets old_logp be the engine's rollout_logp, one
condition at a time, and the learner taking that path only when it holds, with results within the
stated tolerance of the recompute."""

import copy

import pytest
import torch

from rlvr.train.old_logp import generation_truncation, reuse_rollout_logp

OK = dict(setting="auto", engine="hf", decoupled=False, staleness=0, mismatch_method="none",
          top_p=1.0, engine_truncation=None, model_dtype="float32", rollout_dtype="float32", autocast="none",
          dropout_active=False, row_versions=[3], learner_version=3, needs_old_mean_logp=False,
          sample_temperature=1.0, train_temperature=1.0)


def test_reused_when_every_condition_holds():
    assert reuse_rollout_logp(**OK)[0]
    assert reuse_rollout_logp(**{**OK, "engine": "lean"})[0]
    assert reuse_rollout_logp(**{**OK, "sample_temperature": 0.7, "train_temperature": 0.7})[0]


@pytest.mark.parametrize("change,words", [
    ({"setting": "recompute"}, "trainer.old_logp"),
    ({"decoupled": True}, "rollout workers"),
    ({"staleness": 1}, "proximal"),
    ({"mismatch_method": "decoupled"}, "mismatch"),
    ({"mismatch_method": "tis"}, "mismatch"),
    ({"engine": "vllm"}, "not the learner's module"),
    ({"sample_temperature": 0.7}, "temperature"),
    ({"top_p": 0.9}, "top_p"),
    ({"engine_truncation": "the model's generation_config sets top_k=20"}, "top_k"),
    ({"rollout_dtype": "bfloat16"}, "dtype"),
    ({"autocast": "bf16"}, "autocast"),
    ({"dropout_active": True}, "dropout"),
    ({"needs_old_mean_logp": True}, "old_mean_logp"),
    ({"reads_rollout_logp": True}, "proximal"),
    ({"row_versions": [2, 3]}, "policy versions [2]"),
    ({"row_versions": [2]}, "policy versions"),
    ({"learner_version": 4}, "policy versions"),
])
def test_recomputed_when_any_condition_fails(change, words):
    reuse, reason = reuse_rollout_logp(**{**OK, **change})
    assert not reuse and words in reason


def test_generation_configs_that_truncate_are_named():
    from transformers import GenerationConfig

    assert generation_truncation(GenerationConfig()) is None
    assert generation_truncation(None) is None
    assert "top_k=20" in generation_truncation(GenerationConfig(top_k=20))
    assert "repetition_penalty" in generation_truncation(GenerationConfig(repetition_penalty=1.05))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from rlvr.models.load import load_model_and_tokenizer
    from rlvr.models.tiny import save_tiny
    from rlvr.rollout.base import SamplingParams
    from rlvr.rollout.hf import HFRolloutEngine
    from rlvr.tasks import make_task
    from rlvr.experience.batch import PromptSampler
    from rlvr.experience.producer import PromptDraws, RolloutProducer

    model, tok = load_model_and_tokenizer(save_tiny(tmp_path_factory.mktemp("m") / "tiny", seed=2))
    assert generation_truncation(model.generation_config) is None  # the built-in model samples plainly
    task = make_task("arithmetic", num_train=200, num_eval=10)
    torch.manual_seed(0)
    sampler = PromptSampler(task.problems("train"), 0)
    producer = RolloutProducer(HFRolloutEngine(model, tok), task,
                               SamplingParams(temperature=1.0, max_new_tokens=4, n=4), prompts_per_step=5)
    exp = producer.produce(PromptDraws(sampler.problems, sampler.next_indices))
    exp.rewards = torch.tensor([1.0, 0.0, 0.0, 1.0] * 5)
    return model, exp


def test_the_learner_reuses_only_when_the_rule_holds_and_the_update_agrees(setup, fast_config):
    base, exp = setup
    out = {}
    for mode in ("auto", "recompute"):
        cfg = fast_config(f"trainer.old_logp={mode}", "trainer.num_minibatches=2", "trainer.max_grad_norm=1e9",
                          "trainer.lr=1e-3")
        model = copy.deepcopy(base)
        from rlvr.train.learner import Learner

        learner = Learner(model, cfg)
        metrics = learner.update(exp, step=0)
        out[mode] = (metrics, torch.cat([p.detach().flatten() for p in model.parameters()]))
    (m_auto, w_auto), (m_re, w_re) = out["auto"], out["recompute"]
    assert m_auto["old_logp_reused"] == 1.0 and m_re["old_logp_reused"] == 0.0
    assert m_auto["mismatch_k3"] == 0.0 and m_re["mismatch_k3"] < 1e-8
    w0 = torch.cat([p.detach().flatten() for p in base.parameters()])
    step = (w_re - w0).norm()
    assert step > 0 and (w_auto - w_re).norm() / step < 1e-3  # old_logp within 1e-4: the update within ~1e-4
    assert m_auto["loss"] == pytest.approx(m_re["loss"], rel=1e-3, abs=1e-6)


def test_stale_rows_are_recomputed(setup, fast_config):
    from rlvr.train.learner import Learner

    base, exp = setup
    learner = Learner(copy.deepcopy(base), fast_config())
    learner.policy_version = 1  # the rows were sampled at version 0
    reuse, reason = learner.reuse_rollout_logp(exp)
    assert not reuse and "policy versions [0]" in reason
    learner.policy_version = 0
    assert learner.reuse_rollout_logp(exp)[0]
    for over in (["runtime.mode=async"], ["runtime.mode=async", "runtime.max_staleness=0"]):
        reuse, reason = Learner(copy.deepcopy(base), fast_config(*over)).reuse_rollout_logp(exp)
        assert not reuse and "rollout workers" in reason
    reuse, reason = Learner(copy.deepcopy(base), fast_config("algorithm.policy_loss=decoupled_ppo")).reuse_rollout_logp(exp)
    assert not reuse and "proximal" in reason  # decoupled PPO: old_logp is the learner's proximal policy


def test_bypass_mode_always_takes_the_rollout_logp(setup, fast_config):
    """verl's bypass mode: old_logp IS the behaviour policy's log-probs, even for stale rows and rollout
    workers (where ``auto`` recomputes); the config selects it and refuses what contradicts it."""
    from rlvr.config import ConfigError
    from rlvr.train.learner import Learner

    assert reuse_rollout_logp(**{**OK, "setting": "rollout", "decoupled": True, "row_versions": [0]})[0]
    base, exp = setup
    cfg = fast_config("algorithm.policy_loss=bypass_mode", "runtime.mode=async", "runtime.max_staleness=0")
    assert cfg.trainer.old_logp == "rollout"
    learner = Learner(copy.deepcopy(base), cfg)
    learner.policy_version = 2  # rows sampled at version 0: still the rollout's log-probs
    stale = copy.deepcopy(exp)
    stale.rollout.rollout_logp = stale.rollout.rollout_logp - 0.05 * stale.rollout.completion_mask  # a behaviour gap
    metrics = learner.update(stale, step=0)
    assert metrics["old_logp_reused"] == 1.0
    assert metrics["mismatch_k3"] == 0.0  # nothing between old_logp and rollout_logp: they are the same tensor
    with pytest.raises(ConfigError, match="trainer.old_logp=recompute"):
        fast_config("algorithm.policy_loss=bypass_mode", "trainer.old_logp=recompute")
    with pytest.raises(ConfigError, match="mismatch.method=none"):
        fast_config("algorithm.policy_loss=bypass_mode", "algorithm.mismatch.method=tis")
