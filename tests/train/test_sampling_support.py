"""Sampling-mask replay (issue 27, item 3): with top-p / top-k the engines return the kept-token set of every
position, and ``trainer.logprob_support=sampled`` makes the learner's log-probs the sampler's own, so the
on-policy importance ratio is exactly 1 (to float reassociation); over the full vocabulary it is biased."""

import copy

import pytest
import torch
from transformers import TopKLogitsWarper, TopPLogitsWarper

from rlvr.config import ConfigError
from rlvr.models.logprobs import completion_logits, support_mask
from rlvr.rollout.base import SamplingParams

CASES = [dict(top_p=0.8, top_k=0), dict(top_p=1.0, top_k=5), dict(top_p=0.8, top_k=5)]


def _engine(kind, path):
    from rlvr.models.load import load_model_and_tokenizer
    from rlvr.rollout.hf import HFRolloutEngine
    from rlvr.rollout.lean import LeanRolloutEngine

    model, tok = load_model_and_tokenizer(path)
    return (LeanRolloutEngine if kind == "lean" else HFRolloutEngine)(model, tok)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    from rlvr.models.tiny import save_tiny

    return str(save_tiny(tmp_path_factory.mktemp("sup") / "tiny", seed=5))


@pytest.mark.parametrize("case", CASES, ids=["top_p0.8", "top_k5", "both"])
@pytest.mark.parametrize("kind", ["lean", "hf"])
@pytest.mark.parametrize("model", ["tiny", "qwen3_instruct"])
def test_the_engine_returns_the_kept_set_transformers_would_keep(kind, model, case, tiny_path, stand_in):
    engine = _engine(kind, tiny_path if model == "tiny" else stand_in(model))
    params = SamplingParams(temperature=0.9, max_new_tokens=6, n=4, seed=3, return_support=True, **case)
    r = engine.generate(["12+7=", "3-1=", "45+45="], params)
    assert r.support_ids is not None and r.support_ids.dtype == torch.int32
    m = r.completion_mask.bool()
    # independently: transformers' own warpers on the model's logits at every position
    logits = completion_logits(engine.model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                               temperature=params.temperature)
    B, T, V = logits.shape
    scores = logits.reshape(B * T, V)
    if case["top_k"]:
        scores = TopKLogitsWarper(case["top_k"])(None, scores)
    if case["top_p"] < 1:
        scores = TopPLogitsWarper(case["top_p"])(None, scores)
    want = torch.isfinite(scores).reshape(B, T, V)
    got = support_mask(r.support_ids, V)
    assert torch.equal(got[m], want[m])  # the same set at every generated position
    assert bool(got[m].gather(-1, r.completion_ids[m].unsqueeze(-1)).all())  # the sampled token is in it
    assert bool((r.support_ids[~m] == -1).all())  # nothing past a row's end
    assert bool((got[m].sum(-1) < V).any())  # the sets do truncate
    # the engine's log-prob is the log-softmax over that set
    lsm = torch.log_softmax(scores.reshape(B, T, V), -1).gather(-1, r.completion_ids.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(r.rollout_logp[m], lsm[m], atol=1e-4)


def test_no_support_without_truncation_or_request(tiny_path):
    engine = _engine("lean", tiny_path)
    assert engine.generate(["1+1="], SamplingParams(top_p=0.8, n=2, seed=0)).support_ids is None  # not asked
    assert engine.generate(["1+1="], SamplingParams(n=2, seed=0, return_support=True)).support_ids is None
    assert engine.generate(["1+1="], SamplingParams(temperature=0, top_k=3, return_support=True)).support_ids is None


def _batch(path, engine_kind, **case):
    from rlvr.experience.batch import PromptSampler
    from rlvr.experience.producer import PromptDraws, RolloutProducer
    from rlvr.tasks import make_task

    engine = _engine(engine_kind, path)
    task = make_task("arithmetic", num_train=200, num_eval=10)
    producer = RolloutProducer(engine, task, SamplingParams(temperature=1.0, max_new_tokens=5, n=4, seed=1,
                                                            return_support=True, **case), prompts_per_step=6)
    sampler = PromptSampler(task.problems("train"), 0)
    exp = producer.produce(PromptDraws(sampler.problems, sampler.next_indices), seed=11)
    exp.rewards = torch.tensor([1.0, 0.0, 0.0, 1.0] * 6)
    return engine.model, exp


@pytest.mark.parametrize("engine_kind", ["lean", "hf"])
def test_on_policy_ratio_is_one_over_the_kept_set_and_biased_over_the_vocabulary(tiny_path, fast_config,
                                                                                 engine_kind):
    from rlvr.train.learner import Learner

    model, exp = _batch(tiny_path, engine_kind, top_p=0.8, top_k=0)
    m = exp.rollout.completion_mask.bool()
    ratios = {}
    for support in ("sampled", "full"):
        cfg = fast_config(f"rollout.engine={engine_kind}", "rollout.top_p=0.8",
                          f"trainer.logprob_support={support}", "trainer.old_logp=recompute")
        learner = Learner(copy.deepcopy(model), cfg)
        old = learner._logprobs(learner.model, exp)
        ratios[support] = torch.exp(old - exp.rollout.rollout_logp)[m]
    assert float((ratios["sampled"] - 1).abs().max()) < 1e-5  # exactly 1 to float reassociation
    assert float(ratios["full"].max()) <= 1 + 1e-5 and float(ratios["full"].mean()) < 0.97  # p / p_K <= 1


def test_the_update_reuses_the_engine_log_probs_and_trains(tiny_path, fast_config):
    from rlvr.train.learner import Learner

    model, exp = _batch(tiny_path, "lean", top_p=1.0, top_k=5)
    out = {}
    for support in ("sampled", "full"):
        cfg = fast_config("rollout.engine=lean", "rollout.top_k=5", f"trainer.logprob_support={support}",
                          "trainer.max_grad_norm=1e9", "trainer.num_minibatches=1")
        learner = Learner(copy.deepcopy(model), cfg)
        out[support] = learner.update(exp, step=0)
    assert out["sampled"]["old_logp_reused"] == 1.0 and out["full"]["old_logp_reused"] == 0.0
    assert out["sampled"]["mismatch_k3"] == 0.0 and out["full"]["mismatch_k3"] > 1e-3
    assert out["sampled"]["ratio_mean"] == pytest.approx(1.0, abs=1e-5)  # one minibatch: on-policy


def test_config_refuses_what_cannot_carry_the_sets(fast_config):
    with pytest.raises(ConfigError, match="rollout.engine=lean or hf"):
        fast_config("trainer.logprob_support=sampled", "rollout.engine=vllm", "rollout.top_p=0.8")
    with pytest.raises(ConfigError, match="replay"):
        fast_config("trainer.logprob_support=sampled", "rollout.top_p=0.8", "replay.enabled=true")
    assert fast_config("rollout.top_k=5").rollout.top_k == 5
    from rlvr.experience.producer import build_producer
    from rlvr.tasks import make_task

    params = build_producer(fast_config("trainer.logprob_support=sampled", "rollout.top_p=0.8"), object(),
                            make_task("arithmetic", num_train=10, num_eval=2)).params
    assert params.return_support and params.truncates and params.top_p == 0.8
