"""Bradley-Terry loss and on-policy distillation's reverse KL against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algorithms import bradley_terry_loss, distillation_advantage, pair_accuracy, reverse_kl_full


def test_bradley_terry_loss_and_gradient_by_hand():
    rc = torch.tensor([1.0, -0.5, 2.0], requires_grad=True)
    rr = torch.tensor([0.0, 0.5, 2.5], requires_grad=True)
    loss = bradley_terry_loss(rc, rr)
    # -log sigma(d) = log(1 + e^-d), averaged; d/dd = -(1 - sigma(d)) = -1/(1+e^d)
    d = [1.0, -1.0, -0.5]
    expected = sum(math.log1p(math.exp(-x)) for x in d) / 3
    assert float(loss) == pytest.approx(expected, abs=1e-6)
    loss.backward()
    for i, x in enumerate(d):
        assert float(rc.grad[i]) == pytest.approx(-1 / (1 + math.exp(x)) / 3, abs=1e-6)
        assert float(rr.grad[i]) == pytest.approx(1 / (1 + math.exp(x)) / 3, abs=1e-6)


def test_bradley_terry_margin_shifts_the_difference():
    rc, rr = torch.tensor([2.0, 1.0]), torch.tensor([0.0, 0.0])
    m = torch.tensor([1.5, 0.25])
    expected = (math.log1p(math.exp(-(2 - 1.5))) + math.log1p(math.exp(-(1 - 0.25)))) / 2
    assert float(bradley_terry_loss(rc, rr, m)) == pytest.approx(expected, abs=1e-6)
    assert float(bradley_terry_loss(rc, rr, 1.0)) == pytest.approx(
        (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(0.0))) / 2, abs=1e-6)


def test_pair_accuracy_counts_ties_half():
    assert pair_accuracy(torch.tensor([1.0, 0.0, 2.0, 3.0]), torch.tensor([0.0, 1.0, 2.0, 1.0])) == 0.625


def test_reverse_kl_on_a_two_token_vocabulary():
    # student p = (0.8, 0.2), teacher q = (0.4, 0.6): KL(p||q) = 0.8 ln 2 + 0.2 ln(1/3)
    s = torch.log(torch.tensor([[0.8, 0.2]]))
    t = torch.log(torch.tensor([[0.4, 0.6]]))
    expected = 0.8 * math.log(0.8 / 0.4) + 0.2 * math.log(0.2 / 0.6)
    assert float(reverse_kl_full(s, t)) == pytest.approx(expected, abs=1e-6)
    # the sampled-token advantage is -(log p - log q) per token; its expectation under p is -KL(p||q)
    logp, tlogp = s[0], t[0]
    adv = distillation_advantage(logp, tlogp, torch.ones(2), coef=1.0)
    assert float((s[0].exp() * adv).sum()) == pytest.approx(-expected, abs=1e-6)


def test_distillation_advantage_gradient_is_the_reverse_kl_gradient():
    """E_{y~p}[A(y) grad log p(y)] with A = -(log p - log q) equals -grad KL(p||q) (two-token vocabulary,
    enumerated exactly)."""
    theta = torch.tensor([0.3, -0.4], requires_grad=True)
    q = torch.log(torch.tensor([0.7, 0.3]))
    logp = torch.log_softmax(theta, -1)
    adv = distillation_advantage(logp.detach(), q, torch.ones(2))
    surrogate = (logp.detach().exp() * adv * logp).sum()  # sum_y p(y) A(y) log p(y), A and p(y) held fixed
    g_pg, = torch.autograd.grad(surrogate, theta)
    theta2 = theta.detach().clone().requires_grad_(True)
    g_kl, = torch.autograd.grad(-reverse_kl_full(theta2, q), theta2)
    assert torch.allclose(g_pg, g_kl, atol=1e-6)


def test_distillation_advantage_is_zero_off_the_mask():
    adv = distillation_advantage(torch.tensor([[-1.0, -2.0, -3.0]]), torch.tensor([[-0.5, -9.0, -1.0]]),
                                 torch.tensor([[1.0, 0.0, 1.0]]), coef=0.5)
    assert adv.tolist() == [[0.25, 0.0, 1.0]]  # -0.5 * (lp - tlp)
