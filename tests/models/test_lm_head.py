"""The chunked LM head (issue 30, item 3): log-probs, entropy and mean log-prob from the hidden states,
against the plain path (full logits, then log-softmax) in values and in the gradients of the hidden
states, the head's weight and bias; with temperature, kept-set supports, a frozen head, vocabularies of 100
and 32k."""

import pytest
import torch

from rlvr.models.lm_head import head_logprob_stats
from rlvr.models.logprobs import logprob_stats, support_mask


def _case(V, seed=0, B=3, T=5, D=16, bias=False):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    weight = torch.randn(V, D, generator=g, dtype=torch.float64) * 0.5
    b = torch.randn(V, generator=g, dtype=torch.float64) * 0.1 if bias else None
    tokens = torch.randint(0, V, (B, T), generator=g)
    return hidden, weight, b, tokens


def _plain(hidden, weight, bias, tokens, temperature, support=None):
    z = hidden @ weight.t()
    if bias is not None:
        z = z + bias
    x = z / temperature
    lsm = torch.log_softmax(x, -1)
    if support is None:
        logp = lsm.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    else:
        keep = support_mask(support, x.shape[-1])
        logp = torch.log_softmax(x.masked_fill(~keep, float("-inf")), -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    ent = -(lsm.exp() * lsm).sum(-1)
    mean = lsm.mean(-1)
    return logp, ent, mean


def _grads(fn, hidden, weight, bias, w_logp, w_ent, w_mean):
    leaves = [t.clone().requires_grad_(True) for t in (hidden, weight)] + (
        [bias.clone().requires_grad_(True)] if bias is not None else [])
    logp, ent, mean = fn(*leaves)
    out = (logp.double() * w_logp).sum() + (ent.double() * w_ent).sum() + (mean.double() * w_mean).sum()
    out.backward()
    return (logp.double(), ent.double(), mean.double()), [t.grad for t in leaves]


@pytest.mark.parametrize("V,chunk", [(100, 64), (100, 4), (32_000, 7)])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("bias", [False, True])
def test_values_and_gradients_equal_the_plain_path(V, chunk, temperature, bias):
    hidden, weight, b, tokens = _case(V, bias=bias)
    g = torch.Generator().manual_seed(1)
    w = [torch.randn(tokens.shape, generator=g, dtype=torch.float64) for _ in range(3)]
    got, got_g = _grads(lambda h, W, *bb: head_logprob_stats(h, W, tokens, bb[0] if bb else None, temperature, chunk),
                        hidden, weight, b, *w)
    want, want_g = _grads(lambda h, W, *bb: _plain(h, W, bb[0] if bb else None, tokens, temperature),
                          hidden, weight, b, *w)
    for a, e in zip(got, want):
        assert torch.allclose(a, e, rtol=0, atol=1e-6)
    for a, e in zip(got_g, want_g):
        assert torch.allclose(a.double(), e, rtol=1e-6, atol=1e-6)


def test_with_a_kept_set_support_and_the_learner_path():
    V = 50
    hidden, weight, _, tokens = _case(V, seed=3)
    support = torch.full((*tokens.shape, 6), -1, dtype=torch.int32)
    for i, row in enumerate(tokens.reshape(-1).tolist()):
        ids = sorted({row, (row + 1) % V, (row + 7) % V})
        support.view(-1, 6)[i, : len(ids)] = torch.tensor(ids, dtype=torch.int32)
    support[0, 0] = -1  # full vocabulary at one position
    w = [torch.ones(tokens.shape, dtype=torch.float64)] * 3
    got, got_g = _grads(lambda h, W: head_logprob_stats(h, W, tokens, None, 0.8, 5, support), hidden, weight, None, *w)
    want, want_g = _grads(lambda h, W: _plain(h, W, None, tokens, 0.8, support), hidden, weight, None, *w)
    for a, e in zip(got + tuple(got_g), want + tuple(want_g)):
        assert torch.allclose(a.double(), e, atol=1e-6)
    # and the same numbers as the learner's logits path (logprob_stats on materialised logits)
    lp, ent, mean = logprob_stats(hidden @ weight.t(), tokens, 0.8, support=support)
    assert torch.allclose(lp.double(), got[0], atol=1e-6) and torch.allclose(ent.double(), got[1], atol=1e-6)


def test_a_frozen_head_gets_no_gradient_but_the_hidden_states_do():
    hidden, weight, _, tokens = _case(100, seed=4)
    h = hidden.clone().requires_grad_(True)
    logp, _, _ = head_logprob_stats(h, weight, tokens)  # weight: no requires_grad (LoRA's frozen head)
    logp.sum().backward()
    h2 = hidden.clone().requires_grad_(True)
    _plain(h2, weight, None, tokens, 1.0)[0].sum().backward()
    assert torch.allclose(h.grad, h2.grad, atol=1e-6) and weight.grad is None


def test_float32_inputs_and_bad_shapes():
    hidden, weight, _, tokens = _case(100, seed=5)
    got = head_logprob_stats(hidden.float(), weight.float(), tokens)[0]
    want = _plain(hidden, weight, None, tokens, 1.0)[0]
    assert got.dtype == torch.float32 and torch.allclose(got.double(), want, atol=1e-5)
    with pytest.raises(ValueError, match="tokens' shape"):
        head_logprob_stats(hidden, weight, tokens[:, :2])
    with pytest.raises(ValueError, match="chunk"):
        head_logprob_stats(hidden, weight, tokens, chunk=0)
