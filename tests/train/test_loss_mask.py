"""The loss mask is distinct from the attention mask: tokens outside it are attended to, never trained.

A multi-turn rollout leaves the tokens a tool or environment inserted out of ``Rollout.loss_mask``. Here a
single-turn batch gets a loss mask with holes in the middle of its completions, and the learner's gradient
is checked against an independent computation: one plain forward of prompt + completion written out in
this file, the vanilla policy-gradient loss at ratio 1 summed over the loss-mask tokens only. The same
batch with the full mask gives a different gradient, so the check can fail.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from rlvr import algorithms as A
from rlvr.control.controllers import Controller
from rlvr.experience.batch import PromptSampler, concat_experience, select_rows
from rlvr.experience.producer import PromptDraws, RolloutProducer
from rlvr.experience.replay import split_experience
from rlvr.models.load import load_model_and_tokenizer
from rlvr.models.tiny import save_tiny
from rlvr.rollout.base import Rollout, SamplingParams
from rlvr.rollout.hf import HFRolloutEngine
from rlvr.tasks import make_task
from rlvr.train.learner import Learner


@pytest.fixture(scope="module", params=["tiny", "qwen3_instruct"])
def setup(request, tmp_path_factory, stand_in):
    """The built-in character model, and a Qwen3-shaped stand-in with a subword (BPE) tokenizer."""
    path = save_tiny(tmp_path_factory.mktemp("m") / "tiny", seed=3) if request.param == "tiny" else stand_in(request.param)
    model, tok = load_model_and_tokenizer(path)
    task = make_task("arithmetic", num_train=200, num_eval=10)
    torch.manual_seed(0)
    sampler = PromptSampler(task.problems("train"), 0)
    producer = RolloutProducer(HFRolloutEngine(model, tok), task,
                               SamplingParams(temperature=1.0, max_new_tokens=6, n=4), prompts_per_step=4)
    exp = producer.produce(PromptDraws(sampler.problems, sampler.next_indices))
    exp.rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0] * 2)  # signal in every group
    cm = exp.rollout.completion_mask
    assert int((cm.sum(-1) >= 3).sum()) >= 8, "the untrained model writes a few tokens per row"
    holes = cm.clone()
    holes[:, 1] = 0  # a "tool output" token in the middle of every completion of 3+ tokens
    holes[cm.sum(-1) < 3] = cm[cm.sum(-1) < 3]
    holed = dataclasses.replace(exp, rollout=dataclasses.replace(exp.rollout, loss_mask=holes))
    return model, exp, holed


def _config(fast_config, *extra):
    return fast_config("trainer.num_minibatches=1", "trainer.micro_batch_size=64", "trainer.max_grad_norm=1e9",
                       "trainer.old_logp=recompute", "algorithm.policy_loss=vanilla",
                       "algorithm.loss_agg_mode=token-mean", "rollout.temperature=1.0", *extra)


def _plain_logits(model, r: Rollout) -> torch.Tensor:
    """Logits at the positions that predict each completion token, from one plain forward (left-padded
    prompts, right-padded completions, positions counting real tokens only)."""
    ids = torch.cat([r.prompt_ids, r.completion_ids], 1)
    att = torch.cat([r.prompt_mask, r.completion_mask], 1)
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    P, T = r.prompt_ids.shape[1], r.completion_ids.shape[1]
    return model(input_ids=ids, attention_mask=att, position_ids=pos, use_cache=False).logits[:, P - 1:P + T - 1]


def _expected_gradient(model, exp, mask: torch.Tensor) -> torch.Tensor:
    """grad of -sum_t A_t logp_t m_t / sum m (the vanilla loss's gradient at ratio 1, token-mean) over ``mask``."""
    model = copy.deepcopy(model)
    model.zero_grad(set_to_none=True)
    logp = torch.log_softmax(_plain_logits(model, exp.rollout).float(), -1)
    logp = logp.gather(-1, exp.rollout.completion_ids[..., None]).squeeze(-1)
    m = mask.float()
    adv, _ = A.compute_advantages("grpo", rewards=exp.rewards, token_rewards=None, mask=m, group=exp.group)
    loss = -(adv * logp * m).sum() / m.sum()
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def _learner_gradient(model, exp, cfg) -> tuple[torch.Tensor, dict]:
    model = copy.deepcopy(model)
    learner = Learner(model, cfg)
    metrics = learner.update(exp, step=0)
    return torch.cat([p.grad.flatten() for p in model.parameters()]), metrics


def test_the_loss_trains_only_the_loss_mask_tokens(setup, fast_config):
    model, exp, holed = setup
    cfg = _config(fast_config)
    got, metrics = _learner_gradient(model, holed, cfg)
    want = _expected_gradient(model, holed, holed.rollout.loss_mask)
    full = _expected_gradient(model, exp, exp.rollout.completion_mask)
    scale = float(want.abs().max())
    assert scale > 1e-4
    assert torch.allclose(got, want, atol=1e-5 * scale, rtol=1e-4)
    assert (full - want).abs().max() > 1e-2 * scale, "the holes change the gradient: the test can fail"
    # the entropy metric is the mean over the loss-mask tokens
    logits = _plain_logits(model, holed.rollout).float()
    ent = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1).detach()
    m = holed.rollout.loss_mask.float()
    assert metrics["entropy_token_mean"] == pytest.approx(float((ent * m).sum() / m.sum()), rel=1e-5)


def test_tokens_outside_the_loss_mask_are_still_attended(setup, fast_config):
    """Changing an inserted token (outside the loss mask) changes the gradient through the later tokens."""
    model, _, holed = setup
    cfg = _config(fast_config)
    before, _ = _learner_gradient(model, holed, cfg)
    ids = holed.rollout.completion_ids.clone()
    rows = holed.rollout.loss_mask[:, 1] == 0
    ids[rows, 1] = (ids[rows, 1] + 1) % 10 + 3
    changed = dataclasses.replace(holed, rollout=dataclasses.replace(holed.rollout, completion_ids=ids))
    after, _ = _learner_gradient(model, changed, cfg)
    assert (after - before).abs().max() > 1e-6


def test_a_loss_mask_on_padding_is_refused_and_rows_keep_theirs(setup):
    _, exp, holed = setup
    r = exp.rollout
    bad = r.completion_mask.clone()
    bad[:, -1] = 1
    if bool((r.completion_mask[:, -1] == 0).any()):
        with pytest.raises(ValueError, match="loss_mask trains .* padding"):
            dataclasses.replace(r, loss_mask=bad)
    with pytest.raises(ValueError, match="shape"):
        dataclasses.replace(r, loss_mask=r.completion_mask[:, :1])
    assert exp.rollout.loss_mask is exp.rollout.completion_mask  # single turn: one mask
    idx = torch.tensor([3, 0, 5])
    assert torch.equal(select_rows(holed, idx).rollout.loss_mask, holed.rollout.loss_mask[idx])
    both = concat_experience([select_rows(holed, idx), select_rows(exp, idx)], pad_id=0)
    T = both.rollout.completion_ids.shape[1]
    assert torch.equal(both.rollout.loss_mask[:3, :holed.rollout.loss_mask.shape[1]], holed.rollout.loss_mask[idx])
    assert torch.equal(both.rollout.loss_mask[3:, :T], both.rollout.completion_mask[3:, :T])


def test_replay_refuses_rows_with_inserted_tokens(setup):
    _, exp, holed = setup
    index = {p.prompt: i for i, p in enumerate(exp.problems)}
    assert len(split_experience(exp, index)) == len(exp.problems)
    with pytest.raises(ValueError, match="multi-turn rollouts cannot be replayed"):
        split_experience(holed, index)


class _Recorder(Controller):
    """Declares only the advantage stage; its ``rewards`` method must never run."""

    stages = ("advantages",)

    def __init__(self):
        self.calls = []

    def rewards(self, rewards, exp, learner):
        self.calls.append("rewards")
        return rewards

    def advantages(self, advantages, exp, ctx):
        self.calls.append("advantages")
        return advantages * 0


def test_controllers_act_in_the_stages_they_declare(setup, fast_config):
    model, exp, _ = setup
    learner = Learner(copy.deepcopy(model), _config(fast_config))
    ctl = learner.controllers["recorder"] = _Recorder()
    metrics = learner.update(exp, step=0)
    assert ctl.calls == ["advantages"]
    assert metrics["advantage_abs_mean"] == 0.0
