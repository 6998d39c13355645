"""Decoupled PPO (loss and mismatch entry), the mismatch registry, and off-policy safety."""

import copy
import math

import pytest
import torch

from rlvr import algorithms as A
from rlvr.algorithms import (
    MISMATCH_CORRECTIONS,
    POLICY_LOSSES,
    TRUST_REGION_LOSSES,
    decoupled_weights,
    hispo_mask,
    masked_is_weights,
    mismatch_params,
    mismatch_weights,
    off_policy_safe,
    policy_loss,
    truncated_is_weights,
)

D = torch.float64


# ------------------------------------------------------------------------------ the hand example
#
# Probabilities per token: behaviour (engine, rollout_logp), proximal (old_logp), current (logp).
# w = prox / behav, r = theta / prox, eps = 0.2 both sides, cap = 3 (row 1, t1 and t3 are masked).
#
#   row 0 t0: behav .2  prox .4  theta .6   A +1  w 2     r 1.5  A>0, r > 1.2: clipped, l = -1.2
#   row 0 t1: behav .8  prox .4  theta .2   A -1  w .5    r .5   A<0, r < 0.8: clipped, l = 0.8
#   row 0 t2: behav .4  prox .5  theta .55  A +2  w 1.25  r 1.1  inside: l = -2.2, dl/dlp = -2.2
#   row 0 t3: behav .05 prox .2  theta .3   A -1  w 4     r 1.5  A<0, r > 1.2: unclipped (pessimistic
#                                                                side), l = 1.5, dl/dlp = 1.5; w > cap
#   row 1 t0: behav .5  prox .3  theta .27  A +1  w .6    r .9   inside: l = -0.9, dl/dlp = -0.9
#   row 1 t2: behav .25 prox .3  theta .3   A -2  w 1.2   r 1    inside: l = 2, dl/dlp = 2
#
# token-mean over the N = 6 valid tokens of w * l:
#   capped (t3 weight 0): (2*-1.2 + .5*.8 + 1.25*-2.2 + 0 + .6*-.9 + 1.2*2) / 6 = -2.89 / 6
#   no cap:               (-2.89 + 4 * 1.5) / 6 = 3.11 / 6

BEHAV = [[0.2, 0.8, 0.4, 0.05], [0.5, 0.001, 0.25, 0.9]]
PROX = [[0.4, 0.4, 0.5, 0.2], [0.3, 0.9, 0.3, 0.1]]
THETA = [[0.6, 0.2, 0.55, 0.3], [0.27, 0.5, 0.3, 0.7]]
ADV = [[1.0, -1.0, 2.0, -1.0], [1.0, 5.0, -2.0, 5.0]]
MASK = [[1, 1, 1, 1], [1, 0, 1, 0]]


def _example():
    lp = torch.log(torch.tensor(THETA, dtype=D)).requires_grad_(True)
    old = torch.log(torch.tensor(PROX, dtype=D))
    roll = torch.log(torch.tensor(BEHAV, dtype=D))
    return lp, old, roll, torch.tensor(ADV, dtype=D), torch.tensor(MASK, dtype=D)


def test_decoupled_ppo_matches_the_hand_computation_with_a_capped_token():
    lp, old, roll, adv, m = _example()
    loss, met = policy_loss("decoupled_ppo", logp=lp, old_logp=old, advantages=adv, mask=m,
                            rollout_logp=roll, behav_imp_weight_cap=3.0)
    assert loss.item() == pytest.approx(-2.89 / 6, rel=1e-12)
    loss.backward()
    # d loss / d lp = w * (-A r) / N on unclipped, uncapped tokens; 0 on clipped, capped, masked ones
    expected = torch.tensor([[0.0, 0.0, 1.25 * -2.2, 0.0], [0.6 * -0.9, 0.0, 1.2 * 2.0, 0.0]], dtype=D) / 6
    assert torch.allclose(lp.grad, expected, atol=1e-12)
    assert met["behav_capped_frac"] == pytest.approx(1 / 6)
    assert met["behav_weight_mean"] == pytest.approx((2 + 0.5 + 1.25 + 4 + 0.6 + 1.2) / 6)
    assert met["behav_weight_max"] == pytest.approx(4.0)
    behav_kl = sum(0.5 * math.log(p / b) ** 2 for p, b, k in zip(sum(PROX, []), sum(BEHAV, []), sum(MASK, [])) if k)
    assert met["behav_approx_kl"] == pytest.approx(behav_kl / 6)
    assert met["clip_frac"] == pytest.approx(2 / 6)  # row 0 t0 (upper branch) and t1 (lower branch)


def test_decoupled_ppo_without_cap_keeps_every_token():
    lp, old, roll, adv, m = _example()
    loss, met = policy_loss("decoupled", logp=lp, old_logp=old, advantages=adv, mask=m, rollout_logp=roll)
    assert loss.item() == pytest.approx(3.11 / 6, rel=1e-12)
    loss.backward()
    expected = torch.tensor([[0.0, 0.0, 1.25 * -2.2, 4 * 1.5], [0.6 * -0.9, 0.0, 1.2 * 2.0, 0.0]], dtype=D) / 6
    assert torch.allclose(lp.grad, expected, atol=1e-12)
    assert met["behav_capped_frac"] == 0.0


def test_decoupled_ppo_gradient_by_finite_differences():
    g = torch.Generator().manual_seed(3)
    old = torch.randn(3, 5, generator=g, dtype=D) - 1
    roll = old + 0.3 * torch.randn(3, 5, generator=g, dtype=D)
    adv = torch.randn(3, 5, generator=g, dtype=D)
    m = (torch.rand(3, 5, generator=g, dtype=D) > 0.2).to(D)
    lp = (old + 0.1 * torch.randn(3, 5, generator=g, dtype=D)).requires_grad_(True)

    def f(x):
        return policy_loss("decoupled_ppo", logp=x, old_logp=old, advantages=adv, mask=m, rollout_logp=roll,
                           agg="seq-mean-token-mean", clip_ratio_c=3.0)[0]

    assert torch.autograd.gradcheck(f, (lp,), eps=1e-7, atol=1e-6)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("cap,dual", [(None, None), (1.5, None), (2.0, 3.0)])
def test_vanilla_with_decoupled_weights_equals_decoupled_ppo(agg, cap, dual):
    g = torch.Generator().manual_seed(0)
    old = torch.randn(4, 6, generator=g, dtype=D) - 1
    roll = old + 0.5 * torch.randn(4, 6, generator=g, dtype=D)
    adv = torch.randn(4, 6, generator=g, dtype=D)
    m = (torch.rand(4, 6, generator=g, dtype=D) > 0.25).to(D)
    base = old + 0.3 * torch.randn(4, 6, generator=g, dtype=D)
    tis = truncated_is_weights(old, roll, m, upper=1.2)
    hp = dict(clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=dual)
    for extra in (None, tis):  # weights from another correction multiply too
        lp1, lp2 = base.clone().requires_grad_(True), base.clone().requires_grad_(True)
        w = mismatch_weights("decoupled", old, roll, m, cap=cap)
        ww = w if extra is None else w * extra
        l1, _ = policy_loss("vanilla", logp=lp1, old_logp=old, advantages=adv, mask=m, agg=agg, weights=ww, **hp)
        l2, _ = policy_loss("decoupled_ppo", logp=lp2, old_logp=old, advantages=adv, mask=m, agg=agg,
                            weights=extra, rollout_logp=roll, behav_imp_weight_cap=cap, **hp)
        l1.backward()
        l2.backward()
        assert torch.allclose(l1, l2, rtol=1e-12, atol=1e-14)
        assert torch.allclose(lp1.grad, lp2.grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dual", [None, 3.0])
def test_decoupled_ppo_is_vanilla_when_behaviour_equals_proximal(dual):
    g = torch.Generator().manual_seed(1)
    old = torch.randn(3, 4, generator=g, dtype=D)
    adv = torch.randn(3, 4, generator=g, dtype=D)
    m = torch.tensor([[1, 1, 1, 0], [1, 0, 1, 1], [0, 0, 0, 0]], dtype=D)
    base = old + 0.4 * torch.randn(3, 4, generator=g, dtype=D)
    lp1, lp2 = base.clone().requires_grad_(True), base.clone().requires_grad_(True)
    l1, m1 = policy_loss("vanilla", logp=lp1, old_logp=old, advantages=adv, mask=m, clip_ratio_c=dual)
    l2, m2 = policy_loss("decoupled_ppo", logp=lp2, old_logp=old, advantages=adv, mask=m, clip_ratio_c=dual,
                         rollout_logp=old.clone(), behav_imp_weight_cap=1.5)
    l1.backward()
    l2.backward()
    assert torch.equal(l1, l2) and torch.equal(lp1.grad, lp2.grad)
    assert {k: v for k, v in m2.items() if not k.startswith("behav_")} == m1
    assert m2["behav_weight_mean"] == 1.0 and m2["behav_capped_frac"] == 0.0


def test_decoupled_ppo_checks_inputs():
    lp, old, roll, adv, m = _example()
    with pytest.raises(TypeError):  # rollout_logp is required
        policy_loss("decoupled_ppo", logp=lp, old_logp=old, advantages=adv, mask=m)
    with pytest.raises(ValueError, match="rollout_logp must have shape"):
        policy_loss("decoupled_ppo", logp=lp, old_logp=old, advantages=adv, mask=m, rollout_logp=roll[:, :2])
    with pytest.raises(ValueError, match="must be > 1"):
        policy_loss("decoupled_ppo", logp=lp, old_logp=old, advantages=adv, mask=m, rollout_logp=roll,
                    behav_imp_weight_cap=1.0)


# ------------------------------------------------------------------------------ mismatch registry


def test_decoupled_weights_by_hand():
    _, old, roll, _, m = _example()
    w = decoupled_weights(old, roll, m, cap=3.0)
    expected = torch.tensor([[2.0, 0.5, 1.25, 0.0], [0.6, 0.0, 1.2, 0.0]], dtype=D)
    assert torch.allclose(w, expected, rtol=1e-12)
    assert torch.allclose(decoupled_weights(old, roll, m)[0], torch.tensor([2.0, 0.5, 1.25, 4.0], dtype=D))
    old_g = old.clone().requires_grad_(True)
    assert not mismatch_weights("decoupled", old_g, roll, m).requires_grad


def test_registry_names_and_entries():
    assert {"none", "tis", "mis", "hispo", "decoupled"} <= set(MISMATCH_CORRECTIONS)
    assert MISMATCH_CORRECTIONS["tis"] is truncated_is_weights
    assert MISMATCH_CORRECTIONS["mis"] is masked_is_weights
    assert MISMATCH_CORRECTIONS["hispo"] is hispo_mask
    assert POLICY_LOSSES["decoupled"] is POLICY_LOSSES["decoupled_ppo"]
    _, old, roll, _, m = _example()
    assert mismatch_weights("none", old, roll, m) is None
    for level in ("token", "sequence", "geometric"):
        assert torch.equal(mismatch_weights("tis", old, roll, m, level=level, upper=1.5),
                           truncated_is_weights(old, roll, m, level=level, upper=1.5))
        assert torch.equal(mismatch_weights("mis", old, roll, m, level=level, upper=2.5, lower=0.4),
                           masked_is_weights(old, roll, m, level=level, upper=2.5, lower=0.4))
    assert torch.equal(mismatch_weights("hispo", old, roll, m, delta_seq=0.9, delta_tok=0.6),
                       hispo_mask(old, roll, m, delta_seq=0.9, delta_tok=0.6))


def test_unknown_names_give_a_clear_error():
    _, old, roll, _, m = _example()
    with pytest.raises(ValueError, match=r"unknown mismatch correction 'bogus'; known: decoupled, hispo, mis"):
        mismatch_weights("bogus", old, roll, m)
    with pytest.raises(ValueError, match="unknown mismatch correction"):
        off_policy_safe("vanilla", "bogus")
    with pytest.raises(ValueError, match=r"unknown policy loss 'bogus'; known: .*decoupled_ppo"):
        off_policy_safe("bogus", "none")
    with pytest.raises(TypeError):  # a parameter the entry does not take
        mismatch_weights("tis", old, roll, m, cap=3.0)
    with pytest.raises(ValueError, match="shape"):
        mismatch_weights("tis", old, roll[:, :2], m)


def test_mismatch_params_pick_what_each_entry_names():
    fields = dict(level="sequence", upper=3.0, lower=0.5, delta_seq=0.1, delta_tok=0.2, cap=4.0)
    assert mismatch_params("none", fields) == {}
    assert mismatch_params("tis", fields) == {"level": "sequence", "upper": 3.0}
    assert mismatch_params("mis", fields) == {"level": "sequence", "upper": 3.0, "lower": 0.5}
    assert mismatch_params("hispo", fields) == {"delta_seq": 0.1, "delta_tok": 0.2}
    assert mismatch_params("decoupled", fields) == {"cap": 4.0}


def test_user_registered_correction_and_flags():
    from rlvr.algorithms.registry import BOUNDED_MISMATCH_CORRECTIONS

    name = "test_half_weights"

    @A.register_mismatch_correction(name, bounded=True)
    def half(old_logp, rollout_logp, mask, *, upper=2.0, **extra):
        return torch.full_like(old_logp, 0.5) * mask

    try:
        _, old, roll, _, m = _example()
        assert torch.equal(mismatch_weights(name, old, roll, m), 0.5 * m)
        assert mismatch_params(name, {"upper": 1.0, "cap": 2.0}) == {"upper": 1.0, "cap": 2.0}  # **kwargs: all
        assert off_policy_safe("gpg", name)
        A.register_mismatch_correction(name)(half)  # registering again without the flag clears it
        assert name not in BOUNDED_MISMATCH_CORRECTIONS and not off_policy_safe("gpg", name)
    finally:
        MISMATCH_CORRECTIONS.pop(name, None)
        BOUNDED_MISMATCH_CORRECTIONS.discard(name)
    with pytest.raises(TypeError, match="unknown registration flag"):
        A.register_policy_loss("x", bounded=True)


# ------------------------------------------------------------------------------ off-policy safety

SAFE_LOSSES = {"vanilla", "ppo", "gspo", "cispo", "dispo", "sapo", "clip_cov", "geo_mean", "real", "rover", "tb",
               "decoupled_ppo", "decoupled", "vespo", "luspo", "dppo_tv", "dppo_kl", "dro", "flash_reinforce"}
UNSAFE_LOSSES = {"gpg", "kl_cov", "bypass_mode"}


def test_every_builtin_loss_has_a_decision():
    builtin = {k for k, fn in POLICY_LOSSES.items() if fn.__module__ == "rlvr.algorithms.policy_losses"}
    assert builtin == SAFE_LOSSES | UNSAFE_LOSSES
    assert {k for k in builtin if k in TRUST_REGION_LOSSES} == SAFE_LOSSES


@pytest.mark.parametrize("loss", sorted(SAFE_LOSSES | UNSAFE_LOSSES))
def test_off_policy_safe_truth_table(loss):
    trust = loss in SAFE_LOSSES
    assert off_policy_safe(loss, "none") is trust
    assert off_policy_safe(loss) is trust  # mismatch defaults to none
    for bounded in ("tis", "mis", "hispo"):
        assert off_policy_safe(loss, bounded) is True
    # uncapped decoupled weights are unbounded: only a trust region makes them safe
    assert off_policy_safe(loss, "decoupled") is trust
    assert off_policy_safe(loss, "decoupled", cap=5.0) is True
    # a cap means nothing to a correction without one
    assert off_policy_safe(loss, "none", cap=5.0) is trust


def test_off_policy_safe_for_a_user_loss():
    def loss_fn(*, logp, old_logp, advantages, mask, **_):
        return (-advantages * logp * mask).sum(), {}

    try:
        A.register_policy_loss("test_user_pg")(loss_fn)
        assert not off_policy_safe("test_user_pg", "none") and off_policy_safe("test_user_pg", "tis")
        A.register_policy_loss("test_user_pg", trust_region=True)(loss_fn)
        assert off_policy_safe("test_user_pg", "none")
    finally:
        POLICY_LOSSES.pop("test_user_pg", None)
        TRUST_REGION_LOSSES.discard("test_user_pg")


# ------------------------------------------------------------------------------ config and learner


def test_config_accepts_decoupled_and_refuses_unknown_methods():
    from rlvr.config import ConfigError, load_config

    cfg = load_config(None, ["algorithm.mismatch.method=decoupled", "algorithm.mismatch.cap=5"])
    assert cfg.algorithm.mismatch.method == "decoupled" and cfg.algorithm.mismatch.cap == 5.0
    assert load_config(None, []).algorithm.mismatch.cap is None
    with pytest.raises(ConfigError) as err:
        load_config(None, ["algorithm.mismatch.method=bogus"])
    msg = str(err.value)
    assert "algorithm.mismatch.method" in msg and "bogus" in msg
    for name in ("decoupled", "hispo", "mis", "none", "tis"):
        assert name in msg
    with pytest.raises(ConfigError, match="algorithm.mismatch.cap"):
        load_config(None, ["algorithm.mismatch.method=decoupled", "algorithm.mismatch.cap=0.5"])
    cfg = load_config(None, ["algorithm.policy_loss=decoupled_ppo",
                             "algorithm.policy_loss_params={behav_imp_weight_cap: 5.0, clip_ratio_high: 0.28}"])
    assert cfg.algorithm.policy_loss == "decoupled_ppo"


@pytest.mark.parametrize("method", ["none", "tis", "mis", "hispo", "decoupled"])
def test_learner_mismatch_weights_is_the_registry_entry(method):
    from rlvr.config import load_config
    from rlvr.train.learner import mismatch_weights as learner_weights

    over = [f"algorithm.mismatch.method={method}", "algorithm.mismatch.level=geometric",
            "algorithm.mismatch.upper=1.7", "algorithm.mismatch.lower=0.6", "algorithm.mismatch.delta_seq=0.9",
            "algorithm.mismatch.delta_tok=0.7", "algorithm.mismatch.cap=3.0"]
    cfg = load_config(None, over).algorithm.mismatch
    _, old, roll, _, m = _example()
    got = learner_weights(cfg, old, roll, m)
    expected = {
        "none": None,
        "tis": truncated_is_weights(old, roll, m, level="geometric", upper=1.7),
        "mis": masked_is_weights(old, roll, m, level="geometric", upper=1.7, lower=0.6),
        "hispo": hispo_mask(old, roll, m, delta_seq=0.9, delta_tok=0.7),
        "decoupled": decoupled_weights(old, roll, m, cap=3.0),
    }[method]
    assert got is None if expected is None else torch.equal(got, expected)


@pytest.fixture(scope="module")
def tiny_experience(tmp_path_factory):
    from rlvr.models.load import load_model_and_tokenizer
    from rlvr.models.tiny import save_tiny
    from rlvr.rollout.base import SamplingParams
    from rlvr.rollout.hf import HFRolloutEngine
    from rlvr.experience.batch import Experience

    model, tok = load_model_and_tokenizer(save_tiny(tmp_path_factory.mktemp("m") / "tiny", seed=2))
    torch.manual_seed(0)
    params = SamplingParams(temperature=1.0, max_new_tokens=4, n=4)
    r = HFRolloutEngine(model, tok).generate(["1+2=", "7-3=", "4+4="], params)
    # a stale behaviour policy: perturb the engine's log-probs so the behaviour weights are not 1
    g = torch.Generator().manual_seed(0)
    r.rollout_logp = r.rollout_logp + 0.3 * torch.randn(r.rollout_logp.shape, generator=g)
    b = r.completion_ids.shape[0]
    exp = Experience(rollout=r, rewards=torch.tensor([1.0, 0.0, 0.0, 1.0] * (b // 4)), reward_components={},
                     group=r.prompt_index, problems=[None] * b)
    return model, exp


def test_learner_decoupled_loss_equals_vanilla_with_decoupled_correction(tiny_experience, fast_config):
    from rlvr.train.learner import Learner

    base_model, exp = tiny_experience
    common = ["trainer.num_minibatches=1", "trainer.max_grad_norm=1e9", "trainer.lr=1e-3"]
    arms = {
        "loss": ["algorithm.policy_loss=decoupled_ppo",
                 "algorithm.policy_loss_params={behav_imp_weight_cap: 1.3, clip_ratio_c: 3.0}"],
        "correction": ["algorithm.policy_loss=vanilla", "algorithm.mismatch.method=decoupled",
                       "algorithm.mismatch.cap=1.3"],
    }
    grads, metrics = {}, {}
    for arm, over in arms.items():
        model = copy.deepcopy(base_model)
        metrics[arm] = Learner(model, fast_config(*common, *over)).update(exp, step=0)
        grads[arm] = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert grads["loss"].abs().max() > 1e-4
    assert torch.allclose(grads["loss"], grads["correction"], atol=1e-7, rtol=1e-5)
    assert metrics["loss"]["loss"] == pytest.approx(metrics["correction"]["loss"], rel=1e-5, abs=1e-7)
    assert 0 < metrics["loss"]["behav_capped_frac"] < 1
