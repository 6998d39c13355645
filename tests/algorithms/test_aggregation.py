"""Loss aggregation: closed forms, edge cases, micro-batch invariance, padding/permutation invariance."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from rlvr.algorithms import LOSS_AGGREGATIONS, aggregate_loss

MODES = ["token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


def _example():
    v = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 0.0, 0.0], [7.0, 8.0, 9.0, 10.0]], dtype=torch.float64)
    # interior zero in row 0, row 2 fully masked
    m = torch.tensor([[1, 1, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    return v, m


def test_registry_has_all_modes():
    assert set(MODES) <= set(LOSS_AGGREGATIONS)


@pytest.mark.parametrize(
    "mode,expected",
    [
        ("token-mean", (1 + 2 + 4 + 5) / 4),
        ("token-sum", 12.0),
        ("seq-mean-token-sum", (7 + 5) / 2),  # B' = 2: the fully masked row does not count
        ("seq-mean-token-mean", (7 / 3 + 5) / 2),
        ("seq-mean-token-sum-norm", 12 / (2 * 4)),  # default norm_constant = padded T = 4
    ],
)
def test_closed_forms(mode, expected):
    v, m = _example()
    assert aggregate_loss(v, m, mode).item() == pytest.approx(expected, rel=1e-12)
    # float 0/1 masks behave like bool masks
    assert aggregate_loss(v, m.double(), mode).item() == pytest.approx(expected, rel=1e-12)


def test_norm_constant_and_global_counts():
    v, m = _example()
    assert aggregate_loss(v, m, "seq-mean-token-sum-norm", norm_constant=10).item() == pytest.approx(12 / 20)
    assert aggregate_loss(v, m, "seq-mean-token-sum-norm", norm_constant=10, batch_num_seqs=3).item() == pytest.approx(
        12 / 30
    )
    assert aggregate_loss(v, m, "token-mean", batch_num_tokens=6).item() == pytest.approx(2.0)
    assert aggregate_loss(v, m, "seq-mean-token-mean", batch_num_seqs=4).item() == pytest.approx((7 / 3 + 5) / 4)


def test_masked_nan_and_inf_do_not_leak():
    v, m = _example()
    v = v.clone()
    v[0, 2] = float("nan")
    v[2, 0] = float("inf")
    for mode in MODES:
        assert torch.isfinite(aggregate_loss(v, m, mode))


def test_all_masked_gives_zero_not_nan():
    v = torch.randn(2, 3)
    m = torch.zeros(2, 3)
    for mode in MODES:
        assert aggregate_loss(v, m, mode).item() == 0.0


def test_length_one_rows():
    v = torch.tensor([[2.0], [4.0]])
    m = torch.ones(2, 1)
    assert aggregate_loss(v, m, "token-mean").item() == pytest.approx(3.0)
    assert aggregate_loss(v, m, "seq-mean-token-sum-norm").item() == pytest.approx(3.0)


def test_unknown_mode_lists_names():
    with pytest.raises(ValueError, match="token-mean"):
        aggregate_loss(torch.zeros(1, 1), torch.ones(1, 1), "nope")


def test_pure_no_inplace():
    v, m = _example()
    v2, m2 = v.clone(), m.clone()
    for mode in MODES:
        aggregate_loss(v, m, mode)
    assert torch.equal(v, v2) and torch.equal(m, m2)


def test_length_bias_spec_1_4():
    """Spec 1.4: identical per-token gradients, lengths 2 and 6: per-token gradient ratio |y2|/|y1|
    under seq-mean-token-mean; equal under token-sum / seq-mean-token-sum-norm."""
    m = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.float64)
    for mode, ratio in [("seq-mean-token-mean", 6 / 2), ("token-sum", 1.0), ("seq-mean-token-sum-norm", 1.0)]:
        x = torch.ones(2, 6, dtype=torch.float64, requires_grad=True)
        aggregate_loss(x, m, mode).backward()
        assert (x.grad[0, 0] / x.grad[1, 0]).item() == pytest.approx(ratio)


def _global_counts(m):
    return dict(batch_num_tokens=m.sum().item(), batch_num_seqs=int((m != 0).any(-1).sum()))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("splits", [[2, 3], [1, 2, 2]])
def test_microbatch_invariance(mode, splits):
    g = torch.Generator().manual_seed(0)
    B, T = 5, 7
    base = torch.randn(B, T, dtype=torch.float64, generator=g)
    m = (torch.rand(B, T, generator=g) > 0.3).double()
    m[1] = 0  # an empty row
    m[2, 3] = 0  # interior zero
    full_x = base.clone().requires_grad_(True)
    full = aggregate_loss(full_x, m, mode, **_global_counts(m), norm_constant=T)
    full.backward()
    # also equal to the default (local) counts for the full batch
    assert full.item() == pytest.approx(aggregate_loss(base, m, mode).item(), rel=1e-12)
    mb_x = base.clone().requires_grad_(True)
    total = 0.0
    start = 0
    for n in splits:
        sl = slice(start, start + n)
        total = total + aggregate_loss(mb_x[sl], m[sl], mode, **_global_counts(m), norm_constant=T)
        start += n
    total.backward()
    assert total.item() == pytest.approx(full.item(), rel=1e-12, abs=1e-12)
    assert torch.allclose(mb_x.grad, full_x.grad, rtol=1e-12, atol=1e-14)


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 4),
    t=st.integers(1, 5),
    pad=st.integers(0, 3),
    seed=st.integers(0, 10_000),
    mode=st.sampled_from(MODES),
)
def test_padding_and_permutation_invariance(b, t, pad, seed, mode):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(b, t, dtype=torch.float64, generator=g)
    m = (torch.rand(b, t, generator=g) > 0.4).double()
    ref = aggregate_loss(v, m, mode, norm_constant=9)
    junk = torch.randn(b, pad, dtype=torch.float64, generator=g) * 1e6
    v2 = torch.cat([v, junk], 1)
    m2 = torch.cat([m, torch.zeros(b, pad, dtype=torch.float64)], 1)
    assert aggregate_loss(v2, m2, mode, norm_constant=9).item() == pytest.approx(ref.item(), rel=1e-9, abs=1e-12)
    perm = torch.randperm(b, generator=g)
    assert aggregate_loss(v[perm], m[perm], mode, norm_constant=9).item() == pytest.approx(
        ref.item(), rel=1e-9, abs=1e-12
    )
