"""Policy losses beyond vanilla: closed forms, gradients, weights, micro-batch invariance."""

import math

import pytest
import torch

from rlvr.algorithms import POLICY_LOSSES, policy_loss

D = torch.float64
API_NAMES = ["vanilla", "ppo", "gspo", "cispo", "dispo", "sapo", "clip_cov", "kl_cov", "gpg", "geo_mean", "real", "tb", "rover"]


def test_all_api_names_registered():
    assert set(API_NAMES) <= set(POLICY_LOSSES)


def _case(b=4, t=5, seed=0, spread=0.2):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=g, dtype=D) * 2
    lp = old + spread * torch.randn(b, t, generator=g, dtype=D)
    adv = torch.randn(b, 1, generator=g, dtype=D).expand(b, t).clone()
    m = (torch.rand(b, t, generator=g) > 0.25).to(D)
    m[:, 0] = 1
    return lp, old, adv, m, g


def _extra(name, b, t, g):
    if name == "real":
        return {"rewards": torch.tensor([1.0, 0.0] * (b // 2) + [1.0] * (b % 2), dtype=D), "group": torch.arange(b) // 2}
    if name == "tb":
        return {"ref_logp": -torch.rand(b, t, generator=g, dtype=D), "rewards": torch.rand(b, generator=g, dtype=D),
                "group": torch.arange(b) // 2, "beta": 0.5}
    if name == "rover":
        return {"mean_logp": -3 - torch.rand(b, t, generator=g, dtype=D), "old_mean_logp": -3 - torch.rand(b, t, generator=g, dtype=D)}
    if name == "clip_cov":
        return {"generator": torch.Generator().manual_seed(5)}
    return {}


def _pl(name, lp, old, adv, m, **kw):
    return policy_loss(name, logp=lp, old_logp=old, advantages=adv, mask=m, **kw)


# ----------------------------------------------------------------------------------- generic checks


@pytest.mark.parametrize("name", API_NAMES)
def test_metrics_finite_pure_and_weights_one_is_identity(name):
    lp, old, adv, m, g = _case()
    extra = _extra(name, 4, 5, g)
    copies = [x.clone() for x in (lp, old, adv, m)]
    x = lp.clone().requires_grad_(True)
    loss, met = _pl(name, x, old, adv, m, **extra)
    loss.backward()
    assert loss.dim() == 0 and torch.isfinite(loss) and torch.isfinite(x.grad).all()
    assert torch.all(x.grad[m == 0] == 0)
    for k in ("clip_frac", "approx_kl", "ratio_mean"):
        assert isinstance(met[k], float) and math.isfinite(met[k])
    assert all(torch.equal(a, c) for a, c in zip((lp, old, adv, m), copies))
    if name == "clip_cov":
        extra = _extra(name, 4, 5, g)
    loss1, _ = _pl(name, lp, old, adv, m, weights=torch.ones_like(lp), **extra)
    assert loss1.item() == pytest.approx(loss.item(), rel=1e-12)


@pytest.mark.parametrize("name", ["vanilla", "gspo", "cispo", "dispo", "sapo", "gpg", "kl_cov", "rover"])
def test_token_weights_multiply_per_token_loss(name):
    """For token-level losses, a weight w on one token scales exactly that token's contribution."""
    lp, old, adv, m, g = _case(seed=3)
    extra = _extra(name, 4, 5, g)
    e = torch.zeros_like(lp)
    e[1, 0] = 1.0
    l0, _ = _pl(name, lp, old, adv, m, agg="token-sum", weights=1 - e, **extra)
    l1, _ = _pl(name, lp, old, adv, m, agg="token-sum", weights=1 + e, **extra)
    l_half, _ = _pl(name, lp, old, adv, m, agg="token-sum", weights=torch.ones_like(lp), **extra)
    assert (l1 - l_half).item() == pytest.approx((l_half - l0).item(), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name", ["gspo", "cispo", "dispo", "sapo", "gpg", "rover", "geo_mean", "tb", "real"])
def test_microbatch_invariance(name):
    b, t = 6, 5
    lp, old, adv, m, g = _case(b=b, t=t, seed=7)
    extra = _extra(name, b, t, g)
    counts = dict(batch_num_tokens=m.sum().item(), batch_num_seqs=int((m != 0).any(-1).sum()))
    kw = {"agg": "seq-mean-token-mean"} if name in ("gspo", "sapo") else {}
    if name == "real":
        extra["num_prompts"] = 3
    x = lp.clone().requires_grad_(True)
    full, _ = _pl(name, x, old, adv, m, **kw, **counts, **extra)
    full.backward()
    y = lp.clone().requires_grad_(True)
    total = 0.0
    for sl in (slice(0, 2), slice(2, 6)):  # micro-batches keep groups (pairs) together
        ex = {k: (v[sl] if torch.is_tensor(v) else v) for k, v in extra.items()}
        total = total + _pl(name, y[sl], old[sl], adv[sl], m[sl], **kw, **counts, **ex)[0]
    total.backward()
    assert total.item() == pytest.approx(full.item(), rel=1e-10, abs=1e-12)
    assert torch.allclose(y.grad, x.grad, rtol=1e-10, atol=1e-13)


# cispo/dispo are excluded on purpose: their weight is stop-gradient, so the value is not an
# antiderivative of the gradient (checked in closed form instead).
@pytest.mark.parametrize("name", ["gspo", "sapo", "real", "tb", "rover", "geo_mean", "gpg"])
def test_gradcheck(name):
    lp, old, adv, m, g = _case(b=4, t=3, seed=11, spread=0.05)
    extra = _extra(name, 4, 3, g)
    if name == "gspo":
        extra = {"clip_ratio_low": 0.5, "clip_ratio_high": 0.5}  # stay off the clip kinks

    def f(x):
        return _pl(name, x, old, adv, m, agg="seq-mean-token-mean", **extra)[0]

    assert torch.autograd.gradcheck(f, (lp.clone().requires_grad_(True),))


# ------------------------------------------------------------------------------------------- GSPO


def test_gspo_matches_sequence_level_formula():
    lp, old, adv, m, _ = _case(seed=2, spread=0.01)
    eps_l, eps_h = 3e-4, 4e-4
    x = lp.clone().requires_grad_(True)
    loss, met = _pl("gspo", x, old, adv, m, agg="seq-mean-token-mean")
    loss.backward()
    # independent oracle: J = mean_i min(s_i A_i, clip(s_i) A_i), s_i = exp(mean_t (lp - old))
    y = lp.clone().requires_grad_(True)
    s = torch.exp(((y - old) * m).sum(-1) / m.sum(-1))
    a = adv[:, 0]
    j = torch.minimum(s * a, torch.clamp(s, 1 - eps_l, 1 + eps_h) * a).mean()
    (-j).backward()
    assert loss.item() == pytest.approx(-j.item(), rel=1e-12)
    assert torch.allclose(x.grad, y.grad, atol=1e-14)


def test_gspo_on_policy_gradient():
    lp, _, adv, m, _ = _case(seed=4)
    x = lp.clone().requires_grad_(True)
    loss, met = _pl("gspo", x, lp, adv, m, agg="seq-mean-token-mean")
    loss.backward()
    assert loss.item() == pytest.approx(-adv[:, 0].mean().item())
    assert torch.allclose(x.grad, -adv * m / m.sum(-1, keepdim=True) / 4)
    assert met["clip_frac"] == 0.0


# ------------------------------------------------------------------------------------ CISPO / DISPO


def _ratio_case(ratios, advs):
    r = torch.tensor([ratios], dtype=D)
    old = torch.full_like(r, -1.0)
    lp = (old + r.log()).requires_grad_(True)
    a = torch.tensor([advs], dtype=D)
    return lp, old, a, torch.ones_like(r)


@pytest.mark.parametrize(
    "hp,expected",
    [
        ({}, [0.5, 1.0, 5.0, 5.0]),  # defaults: no lower bound, cap 1 + 4 = 5
        ({"clip_ratio_low": 0.2, "clip_ratio_high": 0.2}, [0.8, 1.0, 1.2, 1.2]),  # verl form
        ({"clip_ratio_max": 2.0}, [0.5, 1.0, 2.0, 2.0]),  # TRL absolute cap
    ],
)
def test_cispo_gradient_is_minus_clipped_weight_times_advantage(hp, expected):
    lp, old, a, m = _ratio_case([0.5, 1.0, 7.0, 7.0], [1.0, -2.0, 1.0, -1.0])
    loss, met = _pl("cispo", lp, old, a, m, agg="token-sum", **hp)
    loss.backward()
    w = torch.tensor([expected], dtype=D)
    assert torch.allclose(lp.grad, -w * a)
    assert loss.item() == pytest.approx((-w * a * lp.detach()).sum().item())


def test_cispo_mask_outside_unified_form():
    lp, old, a, m = _ratio_case([0.5, 0.5, 1.5, 1.5], [1.0, -1.0, 1.0, -1.0])
    loss, _ = _pl("cispo", lp, old, a, m, agg="token-sum", clip_ratio_low=0.2, clip_ratio_high=0.2, mask_outside=True)
    loss.backward()
    # dropped: (A<0, rho<0.8) and (A>0, rho>1.2)
    assert torch.allclose(lp.grad, torch.tensor([[-0.8, 0.0, 0.0, 1.2]], dtype=D))


def test_dispo_four_bounds():
    hp = dict(clip_low_pos=0.1, clip_high_pos=0.2, clip_low_neg=0.3, clip_high_neg=0.4)
    lp, old, a, m = _ratio_case([2.0, 0.5, 2.0, 0.5, 1.05], [1.0, 1.0, -1.0, -1.0, 1.0])
    loss, met = _pl("dispo", lp, old, a, m, agg="token-sum", **hp)
    loss.backward()
    r_d = torch.tensor([[1.2, 0.9, 1.4, 0.7, 1.05]], dtype=D)
    assert torch.allclose(lp.grad, -r_d * a)
    assert met["clip_frac"] == pytest.approx(4 / 5)
    # correctness from the verifier, not the sign of A: a "correct" token with A < 0 uses the + bounds
    lp2, old2, a2, m2 = _ratio_case([2.0], [-1.0])
    loss2, _ = _pl("dispo", lp2, old2, a2, m2, agg="token-sum", correct=torch.tensor([True]), **hp)
    loss2.backward()
    assert lp2.grad.item() == pytest.approx(1.2)
    # mask mode drops out-of-range tokens
    lp3, old3, a3, m3 = _ratio_case([2.0, 1.05], [1.0, 1.0])
    loss3, _ = _pl("dispo", lp3, old3, a3, m3, agg="token-sum", out_of_range="mask", **hp)
    loss3.backward()
    assert torch.allclose(lp3.grad, torch.tensor([[0.0, -1.05]], dtype=D))


# ------------------------------------------------------------------------------------------- SAPO


def test_sapo_gate_closed_form():
    lp, old, a, m = _ratio_case([1.0, 2.0, 0.5], [1.0, 1.0, -1.0])
    loss, _ = _pl("sapo", lp, old, a, m, agg="token-sum")
    loss.backward()
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    f = [4 * sig(0.0), 4 * sig(1.0), 4 / 1.05 * sig(-1.05 * 0.5)]
    fprime = [1.0, 4 * sig(1.0) * (1 - sig(1.0)), 4 * sig(-0.525) * (1 - sig(-0.525))]
    ratios = [1.0, 2.0, 0.5]
    advs = [1.0, 1.0, -1.0]
    assert loss.item() == pytest.approx(sum(-fi * ai for fi, ai in zip(f, advs)))
    expected_grad = [-ai * fp * r for ai, fp, r in zip(advs, fprime, ratios)]
    assert torch.allclose(lp.grad, torch.tensor([expected_grad], dtype=D))


# --------------------------------------------------------------------------------- Clip-Cov / KL-Cov


def test_clip_cov_zeroes_a_random_subset_of_candidates():
    # 1 sequence, A varies by token; lp constant except where we want high covariance
    a = torch.tensor([[2.0, 2.0, -2.0, -2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]], dtype=D)
    lp0 = torch.tensor([[1.0, 1.0, -1.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]], dtype=D) - 2.0
    m = torch.ones_like(a)
    # cov = (A - 0)(lp - mean lp) = 2*1 = 2 for the first four tokens (in (lb, ub) = (1, 5)), 0 elsewhere
    lp = lp0.clone().requires_grad_(True)
    loss, met = _pl("clip_cov", lp, lp0, a, m, agg="token-sum", clip_cov_ratio=0.2,
                    generator=torch.Generator().manual_seed(0))
    loss.backward()
    zeroed = (lp.grad == 0) & (a != 0)
    assert int(zeroed.sum()) == 2  # max(int(0.2 * 10), 1)
    assert bool(zeroed[0, :4].all() == False)  # noqa: E712
    assert met["cov_clip_frac"] == pytest.approx(0.2)
    kept = (a != 0) & ~zeroed
    assert torch.allclose(lp.grad[kept], -a[kept])
    # deterministic given the generator
    lp2 = lp0.clone().requires_grad_(True)
    _pl("clip_cov", lp2, lp0, a, m, agg="token-sum", clip_cov_ratio=0.2, generator=torch.Generator().manual_seed(0))[0].backward()
    assert torch.equal(lp.grad, lp2.grad)


def test_kl_cov_penalises_top_covariance_token():
    a = torch.tensor([[1.0, -1.0, 0.5, 0.0]], dtype=D)
    old = torch.tensor([[-1.0, -1.0, -1.0, -1.0]], dtype=D)
    lp = torch.tensor([[-0.5, -1.2, -1.0, -1.1]], dtype=D).requires_grad_(True)
    m = torch.ones_like(a)
    loss, met = _pl("kl_cov", lp, old, a, m, agg="token-sum", kl_cov_ratio=0.25, ppo_kl_coef=2.0)
    # cov_t = (A - 0.125)(lp - mean lp); largest at token 0
    ratio = (lp.detach() - old).exp()
    expected = (-a * ratio).sum() + 2.0 * 0.5
    assert loss.item() == pytest.approx(expected.item())
    assert met["kl_cov_frac"] == pytest.approx(0.25)


# -------------------------------------------------------------------------------------- GPG / GMPO


def test_gpg_loss_and_gradient():
    lp, old, adv, m, _ = _case(seed=5)
    x = lp.clone().requires_grad_(True)
    loss, _ = _pl("gpg", x, old, adv, m, agg="token-sum")
    loss.backward()
    assert loss.item() == pytest.approx((-adv * lp * m).sum().item())
    assert torch.allclose(x.grad, -adv * m)


def test_geo_mean_closed_form():
    old = torch.zeros(3, 2, dtype=D)
    lp = torch.tensor([[0.5, 0.5], [0.5, 0.1], [0.0, 0.0]], dtype=D).requires_grad_(True)
    a = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [2.0, 2.0]], dtype=D)
    m = torch.tensor([[1, 1], [1, 1], [1, 0]], dtype=D)
    loss, met = _pl("geo_mean", lp, old, a, m)
    loss.backward()
    # seq 0: A>0, log-ratios clipped at 0.4 -> ratio e^0.4, no gradient
    # seq 1: A<0, pessimistic side keeps 0.5 (unclipped): ratio e^0.3
    # seq 2: on-policy single token: ratio 1
    expected = (-1 * math.exp(0.4) + 1 * math.exp(0.3) - 2.0) / 3
    assert loss.item() == pytest.approx(expected)
    assert torch.allclose(lp.grad[0], torch.zeros(2, dtype=D))
    assert torch.allclose(lp.grad[1], torch.full((2,), math.exp(0.3) / 2 / 3, dtype=D))
    assert lp.grad[2, 0].item() == pytest.approx(-2.0 / 3)


# ------------------------------------------------------------------------------------------- REAL


def test_real_on_policy_gradient_weights_spec_10_2():
    # one prompt with 2 positives and 3 negatives, one prompt all-correct (counts in the denominator)
    b, t = 7, 2
    lp0 = -torch.rand(b, t, dtype=D)
    m = torch.ones(b, t, dtype=D)
    m[0, 1] = 0  # length-1 response
    rewards = torch.tensor([1, 1, 0, 0, 0, 1, 1], dtype=D)
    group = torch.tensor([3, 3, 3, 3, 3, 8, 8])
    lp = lp0.clone().requires_grad_(True)
    loss, met = _pl("real", lp, lp0, torch.zeros_like(lp0), m, rewards=rewards, group=group, tau=0.5)
    loss.backward()
    assert loss.item() == pytest.approx((math.log(1 + 3) + math.log(1 + 2)) / 2)
    tau, n_prompts = 0.5, 2
    lengths = m.sum(-1)
    for i in range(b):
        dz = -1 / 3 if i < 2 else (1 / 4 if i < 5 else 0.0)
        expected = dz / tau / lengths[i] / n_prompts
        assert torch.allclose(lp.grad[i][m[i] != 0], torch.full((int(lengths[i]),), expected, dtype=D))


def test_real_off_policy_closed_form():
    old = torch.zeros(3, 1, dtype=D)
    lp = torch.tensor([[0.2], [-0.1], [0.3]], dtype=D)
    rewards = torch.tensor([1.0, 0.0, 0.0])
    loss, _ = _pl("real", lp, old, torch.zeros_like(lp), torch.ones_like(lp), rewards=rewards,
                  group=torch.tensor([0, 0, 0]), tau=0.5, num_prompts=4)
    z = [0.4, -0.2, 0.6]
    expected = (math.log(1 + math.exp(z[1]) + math.exp(z[2])) + math.log(1 + math.exp(-z[0]))) / 4
    assert loss.item() == pytest.approx(expected)


# ------------------------------------------------------------------------------------------ ROVER


def test_rover_first_step_is_reinforce_with_baseline():
    lp, _, adv, m, g = _case(seed=8)
    ml = -torch.rand_like(lp) - 3
    x = lp.clone().requires_grad_(True)
    loss, _ = _pl("rover", x, lp, adv, m, mean_logp=ml, old_mean_logp=ml, rover_t=2.0)
    loss.backward()
    n = m.sum()
    assert loss.item() == pytest.approx(((adv**2) * m).sum().item() / n.item())
    assert torch.allclose(x.grad, -2 * 2.0 * adv * m / n)


def test_rover_target_uses_next_valid_position():
    old = torch.zeros(1, 4, dtype=D)
    lp = torch.tensor([[0.1, 0.0, 0.2, 0.3]], dtype=D)
    m = torch.tensor([[1, 0, 1, 1]], dtype=D)
    a = torch.full((1, 4), 0.5, dtype=D)
    ml = torch.tensor([[0.0, 9.0, 0.4, 0.7]], dtype=D)
    oml = torch.zeros(1, 4, dtype=D)
    loss, _ = _pl("rover", lp, old, a, m, agg="token-sum", mean_logp=ml, old_mean_logp=oml, rover_t=1.0)
    # t=0 -> next valid t=2 (V=0.4); t=2 -> t=3 (V=0.7); t=3 -> end (0)
    expected = (0.1 - 0.9) ** 2 + (0.2 - 1.2) ** 2 + (0.3 - 0.5) ** 2
    assert loss.item() == pytest.approx(expected)


# -------------------------------------------------------------------------------------------- TB


def test_trajectory_balance_closed_form():
    old = torch.zeros(3, 2, dtype=D)
    lp = torch.tensor([[-0.5, -0.5], [-1.0, -0.2], [-0.3, -0.4]], dtype=D).requires_grad_(True)
    ref = torch.tensor([[-0.7, -0.2], [-0.4, -0.4], [-1.0, -1.0]], dtype=D)
    m = torch.ones(3, 2, dtype=D)
    r = torch.tensor([1.0, 0.0, 0.5], dtype=D)
    beta = 0.5
    loss, _ = _pl("tb", lp, old, torch.zeros_like(old), m, ref_logp=ref, rewards=r, group=torch.tensor([0, 0, 1]), beta=beta)
    loss.backward()
    res = (lp.detach().sum(-1) - ref.sum(-1) - r / beta)
    d = (res[0] - res[1]) / 2
    assert loss.item() == pytest.approx((2 * d.item() ** 2) / 3)  # singleton group contributes 0
    assert torch.allclose(lp.grad[0], torch.full((2,), 2 * d.item() / 3, dtype=D))
    assert torch.allclose(lp.grad[1], torch.full((2,), -2 * d.item() / 3, dtype=D))
    assert torch.allclose(lp.grad[2], torch.zeros(2, dtype=D))
