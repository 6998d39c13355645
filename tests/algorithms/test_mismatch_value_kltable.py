"""Mismatch correction weights, value losses, and the exact KL-gradient table (spec 5.3)."""

import math

import pytest
import torch

from rlvr.algorithms import (
    VALUE_LOSSES,
    hispo_mask,
    hl_gauss_target,
    hl_gauss_value,
    is_ratio,
    masked_is_weights,
    policy_loss,
    truncated_is_weights,
    two_hot_target,
    value_loss,
)
from rlvr.algorithms.kl_table import EXPECTED_UNBIASED, ESTIMATORS, PLACEMENTS, kl_gradient_table, main, to_markdown

D = torch.float64


# --------------------------------------------------------------------------------------- mismatch


def _mm():
    roll = torch.zeros(2, 3, dtype=D)
    old = torch.log(torch.tensor([[3.0, 1.0, 0.25], [1.1, 1.2, 5.0]], dtype=D))
    m = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=D)
    return old, roll, m


def test_token_tis_and_mis():
    old, roll, m = _mm()
    w = truncated_is_weights(old, roll, m, upper=2.0)
    assert torch.allclose(w, torch.tensor([[2.0, 1.0, 0.25], [1.1, 1.2, 0.0]], dtype=D))
    w = masked_is_weights(old, roll, m, upper=2.0)  # lower = 0.5
    assert torch.allclose(w, torch.tensor([[0.0, 1.0, 0.0], [1.1, 1.2, 0.0]], dtype=D))
    w = masked_is_weights(old, roll, m, upper=2.0, keep_ratio=False)
    assert torch.allclose(w, torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 0.0]], dtype=D))


def test_sequence_and_geometric_levels():
    old, roll, m = _mm()
    # row 0: product 0.75; row 1: product 1.32 (masked 5.0 ignored)
    r = is_ratio(old, roll, m, level="sequence")
    assert torch.allclose(r, torch.tensor([[0.75] * 3, [1.32, 1.32, 0.0]], dtype=D))
    w = truncated_is_weights(old, roll, m, level="sequence", upper=1.3)
    assert torch.allclose(w, torch.tensor([[0.75] * 3, [1.3, 1.3, 0.0]], dtype=D))
    w = masked_is_weights(old, roll, m, level="sequence", upper=1.3, lower=0.8)
    assert torch.allclose(w, torch.zeros(2, 3, dtype=D))  # both sequences rejected whole
    g = is_ratio(old, roll, m, level="geometric")
    assert g[0, 0].item() == pytest.approx(0.75 ** (1 / 3))
    assert g[1, 0].item() == pytest.approx(math.sqrt(1.32))
    with pytest.raises(ValueError):
        is_ratio(old, roll, m, level="nope")


def test_weights_are_detached_and_extreme_values_finite():
    old = torch.tensor([[100.0, -100.0]], requires_grad=True)
    roll = torch.zeros(1, 2)
    w = truncated_is_weights(old, roll, torch.ones(1, 2), level="sequence")
    assert not w.requires_grad and torch.isfinite(w).all()


def test_hispo_hierarchical_mask():
    inf = torch.zeros(3, 3, dtype=D)
    old = torch.log(torch.tensor([[1.05, 0.97, 1.3], [1.5, 1.5, 1.5], [1.01, 0.99, 1.0]], dtype=D))
    m = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 0]], dtype=D)
    h = hispo_mask(old, inf, m, delta_seq=0.1, delta_tok=0.2)
    # row 0: geometric mean (1.05*0.97*1.3)^(1/3) = 1.098 passes delta_seq = 0.1, token 1.3 fails delta_tok
    # row 1: geometric mean 1.5 fails the sequence test: whole response dropped
    assert abs((1.05 * 0.97 * 1.3) ** (1 / 3) - 1) < 0.1
    assert torch.allclose(h, torch.tensor([[1, 1, 0], [0, 0, 0], [1, 1, 0]], dtype=D))
    h2 = hispo_mask(old, inf, m, delta_seq=0.05, delta_tok=0.2)
    assert torch.allclose(h2[0], torch.zeros(3, dtype=D))
    assert torch.allclose(hispo_mask(old, inf, m, delta_seq=None, delta_tok=None), m)


def test_hispo_weights_through_vanilla_drop_tokens():
    lp = torch.zeros(1, 3, dtype=D, requires_grad=True)
    w = torch.tensor([[1.0, 0.0, 1.0]], dtype=D)
    a = torch.ones(1, 3, dtype=D)
    loss, _ = policy_loss("vanilla", logp=lp, old_logp=lp.detach(), advantages=a, mask=torch.ones(1, 3),
                          weights=w, agg="seq-mean-token-sum-norm", norm_constant=10)
    loss.backward()
    assert torch.allclose(lp.grad, torch.tensor([[-0.1, 0.0, -0.1]], dtype=D))


# ------------------------------------------------------------------------------------ value losses


def test_value_loss_names():
    assert {"mse", "hl_gauss", "two_hot"} <= set(VALUE_LOSSES)


def test_mse_clipped_closed_form():
    v = torch.tensor([[1.0, 0.0, 2.0]], dtype=D, requires_grad=True)
    old = torch.tensor([[0.0, 0.0, 0.0]], dtype=D)
    ret = torch.tensor([[2.0, 1.0, 0.0]], dtype=D)
    m = torch.ones(1, 3)
    loss, met = value_loss("mse", values=v, old_values=old, returns=ret, mask=m, agg="token-sum", cliprange_value=0.5)
    loss.backward()
    # token 0: l1 = 1, clipped pred 0.5 -> l2 = 2.25 -> max 2.25 (no grad); token 1: l1 = 1 = l2;
    # token 2: l1 = 4, clipped 0.5 -> l2 = 0.25 -> max 4 (grad 2*(2-0))
    assert loss.item() == pytest.approx(0.5 * (2.25 + 1 + 4))
    assert torch.allclose(v.grad, torch.tensor([[0.0, -1.0, 2.0]], dtype=D))
    assert met["vf_clipfrac"] == pytest.approx(1 / 3)
    loss, _ = value_loss("mse", values=v, returns=ret, mask=m, agg="token-mean", cliprange_value=None)
    assert loss.item() == pytest.approx(0.5 * (1 + 1 + 4) / 3)
    with pytest.raises(ValueError):
        value_loss("mse", values=v, returns=ret, mask=m)  # clip needs old_values


def test_hl_gauss_target_properties():
    y = torch.tensor([0.0, 0.3, -0.55], dtype=D)
    p = hl_gauss_target(y, 51, -1.0, 1.0, sigma=0.75 * 2 / 51)
    assert torch.allclose(p.sum(-1), torch.ones(3, dtype=D))
    centres = torch.linspace(-1, 1, 52, dtype=D)
    centres = (centres[1:] + centres[:-1]) / 2
    assert torch.allclose((p * centres).sum(-1), y, atol=1e-6)  # interior: mean ~= y
    # independent oracle with math.erf for one bin
    s = 0.75 * 2 / 51
    edges = torch.linspace(-1, 1, 52, dtype=D)
    cdf = lambda x: 0.5 * (1 + math.erf((x - 0.3) / (math.sqrt(2) * s)))  # noqa: E731
    j = 40
    expected = (cdf(edges[j + 1].item()) - cdf(edges[j].item())) / (cdf(1.0) - cdf(-1.0))
    assert p[1, j].item() == pytest.approx(expected, rel=1e-9)


def test_two_hot_target():
    t = two_hot_target(torch.tensor([0.0, 0.25, 5.0, -5.0], dtype=D), 5, -1.0, 1.0)
    # centres -0.8 -0.4 0 0.4 0.8
    assert torch.allclose(t[0], torch.tensor([0, 0, 1.0, 0, 0], dtype=D))
    assert torch.allclose(t[1], torch.tensor([0, 0, 0.375, 0.625, 0], dtype=D))
    assert torch.allclose(t[2], torch.tensor([0, 0, 0, 0, 1.0], dtype=D))
    assert torch.allclose(t[3], torch.tensor([1.0, 0, 0, 0, 0], dtype=D))


@pytest.mark.parametrize("name", ["hl_gauss", "two_hot"])
def test_classification_value_loss_is_cross_entropy(name):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 11, generator=g, dtype=D, requires_grad=True)
    ret = torch.rand(2, 3, generator=g, dtype=D) * 2 - 1
    m = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=D)
    loss, met = value_loss(name, values=logits, returns=ret, mask=m, num_bins=11, v_min=-1.0, v_max=1.0)
    tgt = (hl_gauss_target(ret, 11, -1, 1, 0.75 * 2 / 11) if name == "hl_gauss" else two_hot_target(ret, 11, -1, 1))
    ce = -(tgt * torch.log_softmax(logits.detach(), -1)).sum(-1)
    assert loss.item() == pytest.approx(((ce * m).sum() / m.sum()).item())
    loss.backward()
    assert torch.isfinite(logits.grad).all() and torch.all(logits.grad[1, 1:] == 0)
    assert "vpred_mean" in met
    # the minimiser's prediction is the target mean (two-hot exactly)
    if name == "two_hot":
        v = hl_gauss_value(torch.log(tgt.clamp(min=1e-300)), -1, 1)
        assert torch.allclose(v, ret.clamp(-1 + 1 / 11, 1 - 1 / 11), atol=1e-9)


# -------------------------------------------------------------------------------------- KL table


def test_kl_table_matches_spec_5_3():
    rows = kl_gradient_table(vocab=3, length=3, seed=0)
    got = {(r.estimator, r.placement): r for r in rows}
    assert set(got) == {(e, p) for e in ESTIMATORS for p in PLACEMENTS}
    # spec 5.3 statements, spelled out
    assert got[("k1", "reward")].unbiased
    assert not got[("k1", "loss")].unbiased
    assert not got[("k2", "loss")].unbiased
    assert not got[("k3", "reward")].unbiased
    assert not got[("k3", "loss")].unbiased
    assert got[("k3", "reward+loss")].unbiased
    # and the full table (derived entries included)
    for key, r in got.items():
        assert r.unbiased == EXPECTED_UNBIASED[key], key
        if r.unbiased:
            assert r.rel_error < 1e-9
        else:
            assert r.rel_error > 1e-2  # clearly separated from round-off


def test_kl_table_other_shapes_and_to_go_credit():
    for vocab, length, credit in [(2, 2, "sequence"), (2, 3, "to_go")]:
        rows = kl_gradient_table(vocab=vocab, length=length, seed=1, credit=credit)
        for r in rows:
            assert r.unbiased == EXPECTED_UNBIASED[(r.estimator, r.placement)], (vocab, length, r)


def test_k2_in_loss_is_unbiased_for_single_token_sequences():
    """Sanity check of the enumeration: with length 1 the per-state gradient IS the full one."""
    rows = {(r.estimator, r.placement): r for r in kl_gradient_table(vocab=3, length=1)}
    assert rows[("k2", "loss")].unbiased
    assert not rows[("k3", "loss")].unbiased


def test_kl_table_markdown_and_main(capsys):
    md = to_markdown(kl_gradient_table(vocab=2, length=2))
    assert md.startswith("| estimator | in reward | in loss | in reward+loss |")
    assert "| k1 | unbiased |" in md
    main()
    out = capsys.readouterr().out
    assert "| k3 |" in out and "unbiased" in out
