"""GRPO advantage and the vanilla PPO clipped loss: hand-made closed forms and edge cases."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from rlvr.algorithms import ADVANTAGE_ESTIMATORS, POLICY_LOSSES, aggregate_loss, compute_advantages, policy_loss


def _adv(name, r, group, T=3, mask=None, **hp):
    r = torch.as_tensor(r, dtype=torch.float64)
    mask = torch.ones(len(r), T) if mask is None else mask
    a, ret = compute_advantages(name, rewards=r, mask=mask, group=torch.as_tensor(group), **hp)
    return a, ret


# -------------------------------------------------------------------------------------------- GRPO


def test_grpo_spec_examples():
    a, ret = _adv("grpo", [1, 0, 1, 0], [7, 7, 7, 7])
    assert ret is None
    s = math.sqrt(1 / 3)  # Bessel std of [1,0,1,0]
    assert torch.allclose(a[:, 0], torch.tensor([0.5, -0.5, 0.5, -0.5], dtype=torch.float64) / (s + 1e-6))
    assert a[0, 0].item() == pytest.approx(0.866, abs=1e-3)
    a, _ = _adv("grpo", [1, 1, 1, 0], [0, 0, 0, 0])
    assert a[3, 0].item() == pytest.approx(-1.5, abs=1e-5)
    assert a[0, 0].item() == pytest.approx(0.5, abs=1e-5)


def test_grpo_broadcast_times_mask_with_interior_zeros():
    m = torch.tensor([[1, 0, 1, 1], [1, 1, 0, 0]], dtype=torch.float64)
    a, _ = compute_advantages("grpo", rewards=torch.tensor([1.0, 0.0]), mask=m, group=torch.tensor([3, 3]))
    v = 0.5 / (math.sqrt(0.5) + 1e-6)
    assert torch.allclose(a, torch.tensor([[v, 0, v, v], [-v, -v, 0, 0]], dtype=a.dtype))


def test_grpo_zero_variance_exactly_zero():
    a, _ = _adv("grpo", [0.1, 0.1, 0.1, 0.7, 0.7], [0, 0, 0, 1, 1])
    assert torch.count_nonzero(a) == 0


def test_grpo_singleton_verl_convention():
    a, _ = _adv("grpo", [0.7, 1.0, 0.0], [0, 1, 1])
    assert a[0, 0].item() == pytest.approx(0.7 / (1 + 1e-6))
    a, _ = _adv("dr_grpo", [0.7, 1.0, 0.0], [0, 1, 1])
    assert a[0, 0].item() == pytest.approx(0.7)


def test_grpo_non_contiguous_uneven_groups():
    r = [1.0, 5.0, 0.0, 3.0, 1.0, 4.0, 1.0]
    g = [10, 2, 10, 2, 10, -1, 10]
    a, _ = _adv("grpo", r, g, T=1)
    # group 10: [1,0,1,1]; group 2: [5,3]; group -1: singleton [4]
    g10 = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    exp10 = (g10 - g10.mean()) / (g10.std() + 1e-6)
    assert torch.allclose(a[[0, 2, 4, 6], 0], exp10)
    s2 = math.sqrt(2.0)  # Bessel std of [5, 3]
    assert torch.allclose(a[[1, 3], 0], torch.tensor([1 / (s2 + 1e-6), -1 / (s2 + 1e-6)], dtype=torch.float64))
    assert a[5, 0].item() == pytest.approx(4 / (1 + 1e-6))


def test_grpo_without_std_and_token_rewards_and_no_group():
    m = torch.ones(3, 2)
    tr = torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.5, 0.0]])
    a, _ = compute_advantages("grpo", token_rewards=tr, mask=m, norm_by_std=False)
    assert torch.allclose(a[:, 0], torch.tensor([0.5, -0.5, 0.0]))


def test_grpo_int_rewards_ok_and_pure():
    r = torch.tensor([1, 0, 1, 1])
    g = torch.tensor([0, 0, 1, 1])
    m = torch.ones(4, 2, dtype=torch.bool)
    r0, g0, m0 = r.clone(), g.clone(), m.clone()
    a, _ = compute_advantages("grpo", rewards=r, mask=m, group=g)
    assert a.is_floating_point()
    assert torch.equal(r, r0) and torch.equal(g, g0) and torch.equal(m, m0)


def test_unknown_estimator():
    with pytest.raises(ValueError, match="grpo"):
        compute_advantages("nope", rewards=torch.zeros(1), mask=torch.ones(1, 1))


@settings(max_examples=40, deadline=None)
@given(
    rewards=st.lists(st.sampled_from([0.0, 1.0, 0.5, -1.0]), min_size=1, max_size=8),
    ngroups=st.integers(1, 3),
    seed=st.integers(0, 1000),
)
def test_grpo_permutation_equivariance(rewards, ngroups, seed):
    g = torch.Generator().manual_seed(seed)
    b = len(rewards)
    r = torch.tensor(rewards, dtype=torch.float64)
    grp = torch.randint(0, ngroups, (b,), generator=g) * 17 + 3
    m = torch.ones(b, 2)
    a, _ = compute_advantages("grpo", rewards=r, mask=m, group=grp)
    perm = torch.randperm(b, generator=g)
    a2, _ = compute_advantages("grpo", rewards=r[perm], mask=m, group=grp[perm])
    assert torch.allclose(a2, a[perm], atol=1e-12)
    # relabelling the groups changes nothing
    a3, _ = compute_advantages("grpo", rewards=r, mask=m, group=-grp)
    assert torch.allclose(a3, a, atol=1e-12)


# ----------------------------------------------------------------------------------------- vanilla


def _loss(name, lp, old, adv, mask=None, **kw):
    mask = torch.ones_like(lp) if mask is None else mask
    return policy_loss(name, logp=lp, old_logp=old, advantages=adv, mask=mask, **kw)


def test_vanilla_closed_forms_per_token():
    # tokens: (A, ratio) -> expected per-token loss, expected d loss / d logp
    cases = [
        (1.0, 1.1, -1.1, -1.1),  # inside: -A*rho, grad -A*rho
        (1.0, 1.5, -1.2, 0.0),  # A>0 clipped above
        (1.0, 0.5, -0.5, -0.5),  # A>0 ratio low: unclipped (max picks -A rho)
        (-1.0, 0.5, 0.8, 0.0),  # A<0 clipped below
        (-1.0, 2.0, 2.0, 2.0),  # A<0 large ratio inside dual clip: unclipped
        (-1.0, 5.0, 3.0, 0.0),  # A<0 ratio beyond c=3: dual clip -A*c
        (0.0, 3.0, 0.0, 0.0),
    ]
    A = torch.tensor([[c[0] for c in cases]], dtype=torch.float64)
    ratio = torch.tensor([[c[1] for c in cases]], dtype=torch.float64)
    old = torch.full_like(ratio, -1.0)
    lp = (old + ratio.log()).requires_grad_(True)
    loss, met = _loss("vanilla", lp, old, A, agg="token-sum")
    loss.backward()
    assert loss.item() == pytest.approx(sum(c[2] for c in cases))
    assert torch.allclose(lp.grad[0], torch.tensor([c[3] for c in cases], dtype=torch.float64))
    assert met["clip_frac"] == pytest.approx(3 / 7)
    assert met["clip_frac_lower"] == pytest.approx(1 / 7)
    assert met["ratio_mean"] == pytest.approx(ratio.mean().item())
    assert met["approx_kl"] == pytest.approx((0.5 * ratio.log() ** 2).mean().item())
    for k in ("clip_frac", "approx_kl", "ratio_mean", "ppo_kl"):
        assert isinstance(met[k], float)


def test_vanilla_dual_clip_disabled_and_asymmetric():
    A = torch.tensor([[-1.0, 1.0]], dtype=torch.float64)
    ratio = torch.tensor([[5.0, 1.25]], dtype=torch.float64)
    lp = ratio.log()
    loss, _ = _loss("ppo", lp, torch.zeros_like(lp), A, agg="token-sum", clip_ratio_c=None, clip_ratio_high=0.28)
    assert loss.item() == pytest.approx(5.0 - 1.25)
    loss, _ = _loss("ppo", lp, torch.zeros_like(lp), A, agg="token-sum", clip_ratio_high=0.2)
    assert loss.item() == pytest.approx(3.0 - 1.2)
    with pytest.raises(ValueError):
        _loss("ppo", lp, torch.zeros_like(lp), A, clip_ratio_c=0.5)


def test_vanilla_extreme_log_ratios_finite():
    lp = torch.tensor([[100.0, -100.0, 0.0]], dtype=torch.float32, requires_grad=True)
    old = torch.zeros_like(lp)
    A = torch.tensor([[-1.0, 1.0, 1.0]])
    loss, met = _loss("vanilla", lp, old, A)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(lp.grad).all()
    assert all(math.isfinite(v) for v in met.values())


def test_vanilla_on_policy_gradient_is_minus_advantage():
    g = torch.Generator().manual_seed(1)
    lp = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    A = torch.randn(3, 4, generator=g, dtype=torch.float64)
    m = torch.tensor([[1, 1, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.float64)
    loss, met = _loss("vanilla", lp, lp.detach(), A, mask=m, agg="token-mean")
    loss.backward()
    assert torch.allclose(lp.grad, -A * m / m.sum())
    assert met["clip_frac"] == 0.0 and met["ratio_mean"] == pytest.approx(1.0)


def test_vanilla_weights_multiply_per_token_loss():
    g = torch.Generator().manual_seed(2)
    lp = torch.randn(2, 3, generator=g, dtype=torch.float64)
    old = lp + 0.05 * torch.randn(2, 3, generator=g, dtype=torch.float64)
    A = torch.randn(2, 3, generator=g, dtype=torch.float64)
    w = torch.rand(2, 3, generator=g, dtype=torch.float64)
    loss_w, _ = _loss("vanilla", lp, old, A, weights=w, agg="token-sum")
    ratio = (lp - old).exp()
    per = torch.maximum(-A * ratio, -A * ratio.clamp(0.8, 1.2))
    per = torch.where(A < 0, torch.minimum(per, -3 * A), per)
    assert loss_w.item() == pytest.approx((per * w).sum().item())


def test_vanilla_gradcheck():
    g = torch.Generator().manual_seed(3)
    old = torch.randn(3, 4, generator=g, dtype=torch.float64)
    A = torch.randn(3, 4, generator=g, dtype=torch.float64)
    m = (torch.rand(3, 4, generator=g) > 0.3).double()
    lp0 = old + 0.1 * torch.randn(3, 4, generator=g, dtype=torch.float64)

    def f(lp):
        return _loss("vanilla", lp, old, A, mask=m, agg="seq-mean-token-mean")[0]

    assert torch.autograd.gradcheck(f, (lp0.requires_grad_(True),))


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_vanilla_microbatch_invariance(agg):
    g = torch.Generator().manual_seed(4)
    B, T = 6, 5
    old = torch.randn(B, T, generator=g, dtype=torch.float64)
    base = old + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    A = torch.randn(B, T, generator=g, dtype=torch.float64)
    m = (torch.rand(B, T, generator=g) > 0.3).double()
    counts = dict(batch_num_tokens=m.sum().item(), batch_num_seqs=int((m != 0).any(-1).sum()), norm_constant=T)
    lp = base.clone().requires_grad_(True)
    full, _ = _loss("vanilla", lp, old, A, mask=m, agg=agg, **counts)
    full.backward()
    lp2 = base.clone().requires_grad_(True)
    total = sum(
        _loss("vanilla", lp2[s], old[s], A[s], mask=m[s], agg=agg, **counts)[0]
        for s in (slice(0, 2), slice(2, 5), slice(5, 6))
    )
    total.backward()
    assert total.item() == pytest.approx(full.item(), rel=1e-12)
    assert torch.allclose(lp2.grad, lp.grad, rtol=1e-12, atol=1e-15)


def test_unknown_loss_and_hp():
    lp = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="vanilla"):
        _loss("nope", lp, lp, lp)
    with pytest.raises(TypeError):
        _loss("vanilla", lp, lp, lp, not_a_param=1)


def test_registered_names():
    assert {"vanilla", "ppo"} <= set(POLICY_LOSSES)
    assert "grpo" in ADVANTAGE_ESTIMATORS
