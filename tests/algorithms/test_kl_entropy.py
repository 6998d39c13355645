"""KL estimators (spec 5.2) and entropy_from_logits."""

import math

import pytest
import torch

from rlvr.algorithms import KL_ESTIMATORS, entropy_bonus, entropy_from_logits, importance_weighted_kl, kl_penalty

U = [-1.3, -0.2, 0.0, 0.5, math.log(2.0)]


def _inputs():
    ref = torch.tensor([[-1.0, -2.0, -0.5, -3.0, -1.5]], dtype=torch.float64)
    u = torch.tensor([U], dtype=torch.float64)
    logp = (ref + u).requires_grad_(True)
    return logp, ref, u


@pytest.mark.parametrize(
    "kind,value,grad",
    [
        ("k1", lambda u: u, lambda u: 1.0),
        ("k2", lambda u: 0.5 * u * u, lambda u: u),
        ("k3", lambda u: math.exp(-u) - 1 + u, lambda u: 1 - math.exp(-u)),
        ("abs", lambda u: abs(u), lambda u: (u > 0) - (u < 0)),
        ("k1+", lambda u: u, lambda u: u),
        ("k2+", lambda u: 0.5 * u * u, lambda u: u),
        ("k3+", lambda u: math.exp(-u) - 1 + u, lambda u: u),
    ],
)
def test_estimator_values_and_gradients(kind, value, grad):
    logp, ref, _ = _inputs()
    out = kl_penalty(logp, ref, kind)
    out.sum().backward()
    for j, u in enumerate(U):
        assert out[0, j].item() == pytest.approx(value(u), abs=1e-12)
        assert logp.grad[0, j].item() == pytest.approx(grad(u), abs=1e-12)


@pytest.mark.parametrize("alias,canon", [("kl", "k1"), ("mse", "k2"), ("low_var_kl", "k3"), ("low_var_kl+", "k3+")])
def test_aliases(alias, canon):
    logp, ref, _ = _inputs()
    assert torch.equal(kl_penalty(logp, ref, alias), kl_penalty(logp, ref, canon))


def test_names_registered():
    assert {"k1", "k2", "k3", "abs", "kl", "mse", "low_var_kl", "k1+", "k2+", "k3+"} <= set(KL_ESTIMATORS)


def test_k3_clamps_like_verl():
    logp = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    ref = torch.tensor([[50.0, -50.0]], dtype=torch.float64)
    out = kl_penalty(logp, ref, "k3")
    assert torch.isfinite(out).all()
    assert out[0, 0].item() == 10.0  # exp(20) - 21 clamped to 10
    assert out[0, 1].item() == 10.0  # exp(-20) + 20 - 1 = 19.0... clamped to 10
    mid = kl_penalty(torch.zeros(1, 1, dtype=torch.float64), torch.full((1, 1), -5.0, dtype=torch.float64), "k3")
    assert mid.item() == pytest.approx(math.exp(-5) + 5 - 1)  # 4.0067, not clamped
    assert out.max().item() <= 10.0


def test_unknown_kind():
    with pytest.raises(ValueError, match="k3"):
        kl_penalty(torch.zeros(1, 1), torch.zeros(1, 1), "k4")


def test_importance_weighted_kl_value_and_gradient():
    logp, ref, u = _inputs()
    old = (logp.detach() - 0.3)
    out = importance_weighted_kl(logp, ref, old, "k3")
    out.sum().backward()
    rho = math.exp(0.3)
    for j, uj in enumerate(U):
        k3 = math.exp(-uj) - 1 + uj
        assert out[0, j].item() == pytest.approx(rho * k3)
        assert logp.grad[0, j].item() == pytest.approx(rho * k3 + rho * (1 - math.exp(-uj)))


def test_importance_weighted_k1_is_unbiased_for_kl_under_old_policy():
    # exact expectation over a 3-token vocabulary: E_old[rho * (logp - logref)] = KL(pi || ref)
    p = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    q_old = torch.tensor([0.4, 0.4, 0.2], dtype=torch.float64)
    r = torch.tensor([0.3, 0.3, 0.4], dtype=torch.float64)
    est = importance_weighted_kl(p.log()[None], r.log()[None], q_old.log()[None], "k1")[0]
    assert (q_old * est).sum().item() == pytest.approx((p * (p / r).log()).sum().item())
    est3 = importance_weighted_kl(p.log()[None], r.log()[None], q_old.log()[None], "k3")[0]
    assert (q_old * est3).sum().item() == pytest.approx((p * (p / r).log()).sum().item())


# ------------------------------------------------------------------------------------------ entropy


def test_entropy_matches_categorical():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 7, generator=g, dtype=torch.float64)
    ref = torch.distributions.Categorical(logits=logits).entropy()
    assert torch.allclose(entropy_from_logits(logits), ref, atol=1e-12)
    assert entropy_from_logits(logits).shape == (3, 4)


def test_entropy_uniform_and_extreme_logits():
    assert entropy_from_logits(torch.zeros(5, dtype=torch.float64)).item() == pytest.approx(math.log(5))
    big = torch.tensor([1e4, 0.0, -1e4], dtype=torch.float32, requires_grad=True)
    h = entropy_from_logits(big)
    h.backward()
    assert torch.isfinite(h) and h.item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(big.grad).all()


def test_entropy_with_neg_inf_logits():
    x = torch.tensor([0.0, 0.0, -float("inf")], dtype=torch.float64, requires_grad=True)
    h = entropy_from_logits(x)
    h.backward()
    assert h.item() == pytest.approx(math.log(2))
    assert torch.isfinite(x.grad).all()


def test_entropy_gradcheck():
    x = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(entropy_from_logits, (x,))


def test_entropy_bonus_sign():
    h = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    m = torch.tensor([[1, 1], [1, 0]])
    assert entropy_bonus(h, m, "token-mean", coef=0.1).item() == pytest.approx(-0.2)
