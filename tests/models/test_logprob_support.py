"""Log-probs over the sampler's kept set (issue 27, item 3): ``logprob_stats(..., support=...)`` against the
plain masked log-softmax, in values and gradients, with and without temperature, on ragged kept sets."""

import pytest
import torch

from rlvr.models.logprobs import logprob_stats, support_mask


def _case(seed, B=3, T=4, V=11, K=5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 2
    support = torch.full((B, T, K), -1, dtype=torch.int32)
    tokens = torch.empty(B, T, dtype=torch.long)
    for b in range(B):
        for t in range(T):
            n = int(torch.randint(1, K + 1, (1,), generator=g))
            ids = torch.randperm(V, generator=g)[:n].sort().values
            support[b, t, :n] = ids.to(torch.int32)
            tokens[b, t] = ids[int(torch.randint(0, n, (1,), generator=g))]
    support[0, 1] = -1  # a position without a set: the full vocabulary
    tokens[0, 1] = 3
    return logits, tokens, support


def _plain(logits, tokens, support, temperature):
    x = logits / temperature
    keep = torch.zeros(x.shape, dtype=torch.bool)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            ids = [int(i) for i in support[b, t] if i >= 0]
            if ids:
                keep[b, t, ids] = True
            else:
                keep[b, t, :] = True
    lsm = torch.log_softmax(x.masked_fill(~keep, float("-inf")), dim=-1)
    return lsm.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk", [1 << 22, 7])  # one block, and many small ones
def test_logp_over_the_kept_set_values_and_gradients(temperature, chunk):
    logits, tokens, support = _case(0)
    a = logits.clone().requires_grad_(True)
    logp, ent, mean = logprob_stats(a, tokens, temperature, chunk_elements=chunk, support=support)
    b = logits.clone().requires_grad_(True)
    want = _plain(b, tokens, support, temperature)
    assert torch.allclose(logp.double(), want, rtol=0, atol=1e-6)
    w = torch.randn(logp.shape, dtype=torch.float64)
    (logp.double() * w).sum().backward()
    (want * w).sum().backward()
    assert torch.allclose(a.grad, b.grad, rtol=0, atol=1e-6)
    # outside the kept set the gradient of the log-prob is exactly 0
    keep = support_mask(support, logits.shape[-1])
    assert float(a.grad.masked_select(~keep).abs().max()) == 0.0
    # the entropy is still the full distribution's
    full = torch.log_softmax(logits / temperature, -1)
    assert torch.allclose(ent.double(), -(full.exp() * full).sum(-1), atol=1e-6)


def test_with_entropy_and_mean_gradients_together():
    logits, tokens, support = _case(1, V=9)
    a = logits.clone().requires_grad_(True)
    logp, ent, mean = logprob_stats(a, tokens, 1.0, support=support)
    (logp.sum() + 0.3 * ent.sum() - 0.2 * mean.sum()).backward()
    b = logits.clone().requires_grad_(True)
    full = torch.log_softmax(b, -1)
    ((_plain(b, tokens, support, 1.0)).sum() + 0.3 * (-(full.exp() * full).sum(-1)).sum()
     - 0.2 * (full.mean(-1)).sum()).backward()
    assert torch.allclose(a.grad, b.grad, rtol=0, atol=1e-6)


def test_without_support_nothing_changes():
    logits, tokens, _ = _case(2)
    a, _, _ = logprob_stats(logits, tokens, 1.0)
    full = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(a.double(), full, atol=1e-6)
    with pytest.raises(ValueError, match="support must be"):
        logprob_stats(logits, tokens, 1.0, support=torch.zeros(2, 2, 2, dtype=torch.int32))
