"""rlvr.rollout.lean.sample_categorical: the inverse-CDF draw the lean sampler uses instead of
torch.multinomial, checked against the distribution itself (frequencies, zero-probability tokens, the
interval ends) rather than against another sampler's stream."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.rollout.lean import sample_categorical


def test_frequencies_match_the_probabilities():
    p = torch.tensor([0.5, 0.0, 0.25, 1e-3, 0.0, 0.249])
    n = 400_000
    g = torch.Generator().manual_seed(0)
    draws = sample_categorical(p.expand(n, -1), g)
    counts = torch.bincount(draws, minlength=len(p)).double()
    assert counts[1] == 0 and counts[4] == 0  # probability 0: never
    q = p.double() / p.sum()
    for i in (0, 2, 3, 5):
        sigma = math.sqrt(n * q[i] * (1 - q[i]))
        assert abs(counts[i] - n * q[i]) < 5 * sigma, (i, counts[i].item(), n * q[i].item())


def test_unnormalised_rows_and_a_large_vocabulary():
    # a 32k vocabulary whose mass sits on 3 far-apart tokens (scaled by 7: rows need not sum to 1)
    V, n = 32768, 8_000  # seeded: the same draws every run
    p = torch.zeros(V)
    p[[5, 20_000, V - 1]] = torch.tensor([0.2, 0.3, 0.5]) * 7
    g = torch.Generator().manual_seed(1)
    draws = torch.cat([sample_categorical(p.expand(1000, -1), g) for _ in range(n // 1000)])  # 256 MB a chunk
    assert set(draws.unique().tolist()) <= {5, 20_000, V - 1}
    freq = torch.bincount(draws, minlength=V)[[5, 20_000, V - 1]].double() / n
    assert torch.allclose(freq, torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64), atol=0.02)


@pytest.mark.parametrize("u", [0.0, 1.0 - 2.0**-53])
def test_the_ends_of_the_unit_interval_draw_a_token_of_positive_probability(monkeypatch, u):
    p = torch.tensor([[0.0, 0.3, 0.0, 0.7, 0.0, 0.0]])
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.full((1, 1), u, dtype=torch.float64))
    token = int(sample_categorical(p, None))
    assert token == (1 if u == 0.0 else 3)


def test_a_tiny_probability_next_to_large_ones_is_drawn_at_its_rate():
    # float32 running sums would lose a 1e-7 token after a mass of 1; float64 keeps it
    p = torch.tensor([1.0, 1e-7, 0.0, 1.0], dtype=torch.float32)
    cdf64 = p.double().cumsum(0)
    assert cdf64[1] > cdf64[0]  # its interval is not empty
    n = 2_000_000
    draws = sample_categorical(p.expand(n, -1), torch.Generator().manual_seed(2))
    assert (draws == 2).sum() == 0
    assert (draws == 1).sum() <= 5  # expected 0.1


def test_a_seeded_generator_reproduces_and_leaves_the_global_rng_alone():
    p = torch.softmax(torch.randn(8, 100, generator=torch.Generator().manual_seed(3)), -1)
    state = torch.random.get_rng_state()
    a = sample_categorical(p, torch.Generator().manual_seed(4))
    b = sample_categorical(p, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and torch.equal(torch.random.get_rng_state(), state)


def test_the_decode_head_equals_the_module_and_respects_hooks():
    from rlvr.rollout.lean import HEAD_TRANSPOSE_ROWS, decode_head

    g = torch.Generator().manual_seed(5)
    for bias in (False, True):
        head = torch.nn.Linear(16, 300, bias=bias)
        with torch.no_grad():
            head.weight.copy_(torch.randn(300, 16, generator=g))
            if bias:
                head.bias.copy_(torch.randn(300, generator=g))
        h = torch.randn(8, 16, generator=g)
        fast = decode_head(head, h)
        assert fast.is_contiguous() and fast.shape == (8, 300)
        torch.testing.assert_close(fast, head(h), rtol=1e-5, atol=1e-5)
        # the layout changes the summation order at most: the same values to float reassociation
        exact = (h.double() @ head.weight.double().t() + (head.bias.double() if bias else 0)).float()
        torch.testing.assert_close(fast, exact, rtol=1e-5, atol=1e-5)
    # a hook on the head, more rows than the threshold, or a narrow vocabulary: through the module
    calls = []
    handle = head.register_forward_hook(lambda m, a, o: calls.append(1))
    decode_head(head, h)
    handle.remove()
    assert calls == [1]
    wide = torch.randn(HEAD_TRANSPOSE_ROWS + 1, 16, generator=g)
    torch.testing.assert_close(decode_head(head, wide), head(wide))
    narrow = torch.nn.Linear(16, 100)
    calls.clear()
    handle = narrow.register_forward_hook(lambda m, a, o: calls.append(1))
    decode_head(narrow, h)  # 100 < 8 x 16: the module runs (its hook fires)
    handle.remove()
    assert calls == [1]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.1])
def test_non_finite_or_negative_probabilities_are_loud(bad):
    p = torch.tensor([[0.2, 0.3, 0.5], [0.2, bad, 0.5]])
    with pytest.raises(ValueError, match="NaN, inf"):
        sample_categorical(p, None)
    with pytest.raises(ValueError, match="no mass"):
        sample_categorical(torch.zeros(1, 3), None)
