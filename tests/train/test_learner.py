import copy

import pytest
import torch

from rlvr.models.load import load_model_and_tokenizer
from rlvr.models.tiny import save_tiny
from rlvr.rollout.base import SamplingParams
from rlvr.rollout.hf import HFRolloutEngine
from rlvr.tasks import make_task
from rlvr.experience.batch import PromptSampler
from rlvr.experience.producer import PromptDraws, RolloutProducer
from rlvr.train.learner import Learner, _outcome_on_last_token


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model, tok = load_model_and_tokenizer(save_tiny(tmp_path_factory.mktemp("m") / "tiny", seed=2))
    task = make_task("arithmetic", num_train=200, num_eval=10)
    engine = HFRolloutEngine(model, tok)
    torch.manual_seed(0)
    sampler = PromptSampler(task.problems("train"), 0)
    producer = RolloutProducer(engine, task, SamplingParams(temperature=1.0, max_new_tokens=4, n=4), prompts_per_step=5)
    exp = producer.produce(PromptDraws(sampler.problems, sampler.next_indices))
    # Random rewards so every group has signal (the untrained model is never right).
    exp.rewards = torch.tensor([1.0, 0.0, 0.0, 1.0] * 5)
    return model, exp


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_micro_batches_give_the_full_batch_update(setup, fast_config, agg):
    """Accumulating micro-batches (sizes 3,3,...,2) must equal one full-batch backward pass."""
    base_model, exp = setup
    grads = []
    for micro in (20, 3):
        cfg = fast_config("trainer.num_minibatches=1", f"trainer.micro_batch_size={micro}",
                          f"algorithm.loss_agg_mode={agg}", "trainer.max_grad_norm=1e9", "trainer.lr=1e-3")
        model = copy.deepcopy(base_model)
        learner = Learner(model, cfg)
        metrics = learner.update(exp, step=0)
        # the accumulated gradient of the (single) optimizer step is left in .grad
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        assert metrics["grad_norm"] > 0
    assert grads[0].abs().max() > 1e-3
    # float reassociation only: micro-batches change the shapes of the forwards (trimmed padding, shared
    # prefixes per micro-batch) and the summation order; ~5e-7 absolute at a gradient scale of ~1
    assert torch.allclose(grads[0], grads[1], atol=1e-6 * max(1.0, float(grads[0].abs().max())), rtol=1e-5)


def test_outcome_reward_sits_on_the_last_valid_token():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.float)
    out = _outcome_on_last_token(torch.tensor([2.0, -1.0, 5.0]), mask)
    assert out.tolist() == [[0, 0, 2, 0], [-1, 0, 0, 0], [0, 0, 0, 0]]


def test_lr_schedules_warm_up_then_hold_or_decay():
    import math

    from rlvr.optim import lr_factor

    for schedule in ("constant", "linear", "cosine"):
        assert [lr_factor(s, 4, schedule, 20, 0.1) for s in range(3)] == [0.25, 0.5, 0.75]
        assert lr_factor(3, 4, schedule, 20, 0.1) == 1.0
    assert lr_factor(19, 4, "constant", 20, 0.1) == 1.0
    assert lr_factor(19, 4, "linear", 20, 0.1) == pytest.approx(0.1)
    assert lr_factor(19, 4, "cosine", 20, 0.1) == pytest.approx(0.1)
    mid = 4 + (20 - 4) // 2 - 1  # progress 1/2
    assert lr_factor(mid, 4, "linear", 20, 0.0) == pytest.approx(0.5)
    assert lr_factor(mid, 4, "cosine", 20, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))


def test_the_learner_gives_the_optimal_token_baseline_its_inputs(setup, fast_config, monkeypatch):
    """old_log_probs and sum_pi_squared (sum_v pi_v^2 at every completion position, from a plain softmax here)."""
    from rlvr import algorithms as A

    base_model, exp = setup
    model = copy.deepcopy(base_model)
    learner = Learner(model, fast_config("algorithm.advantage_estimator=optimal_token_baseline",
                                         "trainer.old_logp=recompute"))
    seen = {}
    real = A.ADVANTAGE_ESTIMATORS["optimal_token_baseline"]

    def spy(**kw):
        seen.update(kw)
        return real(**kw)
    spy.__signature__ = __import__("inspect").signature(real)
    monkeypatch.setitem(A.ADVANTAGE_ESTIMATORS, "optimal_token_baseline", spy)
    learner.update(exp, step=0)
    r = exp.rollout
    ids = torch.cat([r.prompt_ids, r.completion_ids], 1)
    att = torch.cat([r.prompt_mask, r.completion_mask], 1)
    P, T = r.prompt_ids.shape[1], r.completion_ids.shape[1]
    with torch.no_grad():
        logits = base_model(input_ids=ids, attention_mask=att, position_ids=(att.cumsum(-1) - 1).clamp(min=0),
                            use_cache=False).logits[:, P - 1:P + T - 1].float()
    m = r.completion_mask.float()
    want = (torch.softmax(logits, -1) ** 2).sum(-1) * m
    assert torch.allclose(seen["sum_pi_squared"], want, atol=1e-5)
    lp = torch.log_softmax(logits, -1).gather(-1, r.completion_ids[..., None]).squeeze(-1) * m
    assert torch.allclose(seen["old_log_probs"], lp, atol=1e-4)


def test_an_importance_weighted_kl_gets_the_behaviour_logprobs(setup, fast_config, monkeypatch):
    """kl.estimator=k3_is in the loss: every call gets old_logp, the log-probs the batch was sampled under."""
    import inspect

    from rlvr import algorithms as A

    base_model, exp = setup
    real = A.KL_ESTIMATORS["k3_is"]
    calls = []

    def spy(logp, ref_logp, **kw):
        calls.append(kw.get("old_logp"))
        return real(logp, ref_logp, **kw)
    spy.__signature__ = inspect.signature(real)
    monkeypatch.setitem(A.KL_ESTIMATORS, "k3_is", spy)
    learner = Learner(copy.deepcopy(base_model), fast_config("kl.placement=loss", "kl.estimator=k3_is", "kl.coef=0.1",
                                                             "trainer.old_logp=recompute"))
    learner.update(exp, step=0)
    in_loss = [c for c in calls if c is not None]
    assert in_loss and all(c.requires_grad is False for c in in_loss)
    assert sum(c.shape[0] for c in in_loss) == exp.rewards.shape[0]  # every row, once, in the one epoch
