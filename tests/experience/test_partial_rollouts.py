"""Partial rollouts (issue 27, item 2): a weight update reaches a rollout worker between decode steps; the
unfinished rows go on with the new weights, every token records the version that drew it, and its log-prob
is the one the sampler used."""

import copy

import pytest
import torch

from rlvr.config import ConfigError
from rlvr.rollout.base import SamplingParams

PROMPTS = ["12+7=", "3-1=", "45+45=", "9+9="]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    from rlvr.models.tiny import save_tiny

    return str(save_tiny(tmp_path_factory.mktemp("partial") / "tiny", seed=4))


def _engine(kind, path):
    from rlvr.models.load import load_model_and_tokenizer
    from rlvr.rollout.hf import HFRolloutEngine
    from rlvr.rollout.lean import LeanRolloutEngine

    model, tok = load_model_and_tokenizer(path)
    return (LeanRolloutEngine if kind == "lean" else HFRolloutEngine)(model, tok)


def _perturbed(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
            for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kind", ["lean", "hf"])
@pytest.mark.parametrize("model", ["tiny", "qwen3_instruct"])
def test_a_mid_generation_update_changes_later_tokens_only_and_is_recorded(kind, model, tiny_path, stand_in):
    path = tiny_path if model == "tiny" else stand_in(model)
    params = SamplingParams(temperature=1.0, max_new_tokens=8, n=3, seed=17)
    plain = _engine(kind, path)
    plain.on_step = lambda: None  # the hook without an update: token versions recorded, all 0
    base = plain.generate(PROMPTS, params)
    assert base.token_versions is not None and int(base.token_versions.max()) == 0

    engine = _engine(kind, path)
    new_weights = _perturbed(engine.model)
    calls = []

    def on_step():  # what a rollout worker does when the learner has published version 1
        calls.append(len(calls))
        if len(calls) == 3:  # after the third token: tokens 0-2 from version 0, 3 on from version 1
            with torch.no_grad():
                for name, p in engine.model.state_dict().items():
                    p.copy_(new_weights[name])
            engine.update_weights(None, 1)

    engine.on_step = on_step
    r = engine.generate(PROMPTS, params)
    m = r.completion_mask.bool()
    assert r.versions.tolist() == [0] * len(r.texts) and r.policy_version == 0  # rows: their oldest token
    width = r.completion_ids.shape[1]
    want = torch.tensor([0, 0, 0] + [1] * (width - 3)).expand(r.completion_ids.shape)
    assert torch.equal(r.token_versions[m], want[m])
    # the first three tokens are the plain run's, bit for bit (same seed, same weights)
    assert torch.equal(r.completion_ids[:, :3], base.completion_ids[:, :3])
    assert torch.equal(r.rollout_logp[:, :3], base.rollout_logp[:, :3])
    # later tokens were drawn with the new weights: their log-probs are not the old weights'
    later = m.clone()
    later[:, :3] = False
    assert bool(later.any())
    # the first token after the update (position 3): had it been drawn with the old weights, its recorded
    # log-prob would be the old model's for the same ids (a forward through the plain engine's model, which
    # was never updated; positions 0-2 check that this forward is the sampler's). It is not: the new weights
    # drew it (over the old weights' cached keys/values of positions 0-2: partial rollouts keep the cache)
    from rlvr.models.forward import plain_outputs

    at3 = m[:, 3]
    assert bool(at3.any())
    with torch.no_grad():
        logits = plain_outputs(plain.model, r.prompt_ids, r.prompt_mask, r.completion_ids[:, :4],
                               r.completion_mask[:, :4]).float()
    old = torch.log_softmax(logits, -1).gather(-1, r.completion_ids[:, :4, None]).squeeze(-1)
    assert torch.allclose(r.rollout_logp[:, :3][m[:, :3]], old[:, :3][m[:, :3]], atol=1e-4)
    assert bool((r.rollout_logp[at3, 3] - old[at3, 3]).abs().gt(1e-4).all())


def test_the_worker_loads_published_weights_between_decode_steps(tiny_path, fast_config):
    """Through the real worker, buffer and weight board: the learner publishes version 1 while a batch is
    being generated; the worker loads it at the next decode step; nothing is lost or duplicated."""
    from rlvr.experience.batch import PromptSampler
    from rlvr.experience.producer import build_producer
    from rlvr.experience.async_source import token_staleness
    from rlvr.experience.workers import RolloutWorker, _LocalBuffer
    from rlvr.models.load import load_model_and_tokenizer
    from rlvr.models.lora import sync_tensors
    from rlvr.rollout.factory import engine_on_module
    from rlvr.tasks import make_task
    from rlvr.weights.sync import WeightPublisher

    cfg = fast_config("runtime.mode=async", "runtime.partial_rollouts=true", "rollout.engine=lean",
                      "rollout.max_new_tokens=8", "rollout.temperature=1.5")
    learner_model, tok = load_model_and_tokenizer(tiny_path)
    task = make_task("arithmetic", num_train=200, num_eval=4)
    sampler = PromptSampler(task.problems("train"), 0)
    buffer = _LocalBuffer(sampler, 1, run_seed=0)
    publisher = WeightPublisher("full", torch.float32)
    p0 = publisher.publish(sync_tensors(learner_model), 0)
    p0_state = copy.deepcopy(learner_model.state_dict())
    buffer.board.post(p0.version, p0.base_version, p0)
    worker_model = copy.deepcopy(learner_model).eval().requires_grad_(False)
    worker = RolloutWorker(0, build_producer(cfg, engine_on_module(cfg, worker_model, tok), task), sampler.problems,
                           buffer, partial_rollouts=True)
    engine = worker.producer.engine
    hook, steps = engine.on_step, []

    def learner_publishes_mid_generation():
        steps.append(1)
        if len(steps) == 2:  # the learner finished a step: version 1 on the board
            with torch.no_grad():
                for name, v in _perturbed(learner_model, 1).items():
                    learner_model.state_dict()[name].copy_(v)
            p1 = publisher.publish(sync_tensors(learner_model), 1)
            buffer.board.post(p1.version, p1.base_version, p1)
        hook()

    engine.on_step = learner_publishes_mid_generation
    job = buffer.admit(1.0)
    exp = worker.run_job(job)
    r = exp.rollout
    assert worker.in_flight_updates == 1 and engine.policy_version == 1
    for (name, a), b in zip(worker_model.state_dict().items(), learner_model.state_dict().values()):
        assert torch.equal(a, b), name  # the worker now holds version 1 exactly
    m = r.completion_mask.bool()
    assert set(r.token_versions[m].tolist()) == {0, 1} and bool((r.token_versions[:, :2][m[:, :2]] == 0).all())
    assert r.versions.tolist() == [0] * len(r.texts)
    n_rows = cfg.rollout.prompts_per_step * cfg.rollout.group_size
    assert len(r.texts) == n_rows and len(set(map(tuple, job.drawn))) == 1  # one draw: nothing lost or redone
    stats = token_staleness(exp, policy_version=2)
    assert stats["staleness_token_max"] == 2 and 1 <= stats["staleness_token_mean"] < 2
    assert 0 < stats["in_flight_token_frac"] < 1

    # the off-policy correction reads each token's own behaviour log-prob: decoupled PPO's weight is
    # pi_prox / pi_behaviour per token, where pi_behaviour is version 0 before the update and version 1 after
    from rlvr.train.learner import Learner, loss_mask
    from rlvr.train.step import StepBatch

    learner = Learner(copy.deepcopy(learner_model), cfg)  # the learner at version 1, decoupled PPO (async auto)
    assert cfg.algorithm.mismatch.method == "decoupled"
    exp.rewards = torch.rand(exp.rewards.shape)
    b = StepBatch(exp=exp, mask=loss_mask(exp))
    learner.logprobs_stage(b)
    learner.weights_stage(b)
    want = torch.exp(b.old_logp - r.rollout_logp) * m
    assert torch.allclose(b.weights, want, atol=1e-6)
    v0_model = copy.deepcopy(learner_model)
    v0_model.load_state_dict(p0_state)
    from rlvr.models.logprobs import completion_logits, token_logprobs

    lp_v0 = token_logprobs(completion_logits(v0_model, r.prompt_ids, r.prompt_mask, r.completion_ids,
                                             r.completion_mask, temperature=1.5), r.completion_ids)
    first = m.clone()
    first[:, 2:] = False  # tokens 0-1 were drawn by version 0 over its own prefix: their log-prob is exact
    assert torch.allclose(r.rollout_logp[first], lp_v0[first], atol=1e-4)
    late = m & (r.token_versions == 1)
    assert not torch.allclose(r.rollout_logp[late], lp_v0[late], atol=1e-3)  # later ones are not version 0's


def test_config_rules(fast_config):
    with pytest.raises(ConfigError, match="runtime.mode=async"):
        fast_config("runtime.partial_rollouts=true")
    with pytest.raises(ConfigError, match="timing"):
        fast_config("runtime.partial_rollouts=true", "runtime.mode=async", "runtime.max_staleness=0",
                    "run.deterministic=true")
    assert fast_config("runtime.partial_rollouts=true", "runtime.mode=async").runtime.partial_rollouts


@pytest.mark.slow
def test_an_async_run_with_partial_rollouts_trains_and_reports_token_staleness(fast_config):
    import json

    from rlvr.train.loop import train

    cfg = fast_config("runtime.mode=async", "runtime.partial_rollouts=true", "trainer.steps=4",
                      "runtime.max_staleness=1", "run.name=partial")
    result = train(cfg, log=lambda *_: None)
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines() if '"reward_mean"' in x]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all("staleness_token_mean" in r and r["staleness_token_max"] <= 1 for r in rows)
