"""An LM head that never materialises the full ``[B, T, V]`` logits: the sampled-token log-prob, the entropy
and the vocabulary-mean log-prob straight from the last hidden states, a chunk of positions at a time.

:func:`head_logprob_stats` is :func:`rlvr.models.logprobs.logprob_stats` applied to ``hidden @ W^T + b``,
with the head's matmul inside the chunk loop and a hand-written backward that recomputes each chunk's
logits: in forward and backward the largest temporaries are ``[chunk, V]``; the full ``[N, V]`` logits (and
their gradient) never exist. This is what TRL, verl, prime-rl and NeMo-RL now do for long completions with
150k-token vocabularies, where the logits dominate the learner's memory. Exact to float reassociation
against the plain path (tested in values and gradients, with temperature and kept-set supports).
"""

from __future__ import annotations

import torch

from rlvr.models.logprobs import support_mask

#: Positions per chunk: the ``[chunk, V]`` fp32 temporaries (logits, log-softmax, probabilities) stay at
#: 4 x chunk x V x 4 bytes, 128 MiB at V = 152k and chunk = 64.
CHUNK_POSITIONS = 64


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """fp32 for every float dtype but fp64 (low precision is upcast chunk by chunk)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _chunk_logits(h, weight, bias, temperature):
    dt = _compute_dtype(h)
    z = h.to(dt) @ weight.to(dt).t()
    if bias is not None:
        z = z + bias.to(dt)
    return z / temperature if temperature > 0 and temperature != 1.0 else z


class _HeadStats(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, tokens, temperature: float, chunk: int, support):
        n = hidden.shape[0]
        logp = torch.empty(n, dtype=_compute_dtype(hidden), device=hidden.device)
        ent, mean = torch.empty_like(logp), torch.empty_like(logp)
        for c0 in range(0, n, chunk):
            c = slice(c0, min(n, c0 + chunk))
            x = _chunk_logits(hidden[c], weight, bias, temperature)
            lsm = torch.log_softmax(x, dim=-1)
            tok = tokens[c].unsqueeze(-1)
            if support is None:
                logp[c] = lsm.gather(-1, tok).squeeze(-1)
            else:
                kept = support_mask(support[c], x.shape[-1])
                logp[c] = x.gather(-1, tok).squeeze(-1) - torch.logsumexp(x.masked_fill(~kept, float("-inf")), -1)
            p = lsm.exp()
            ent[c] = -(p * lsm.clamp(min=torch.finfo(lsm.dtype).min)).sum(-1)
            mean[c] = x.mean(-1) - torch.logsumexp(x, dim=-1)
        ctx.save_for_backward(hidden, weight, *(() if bias is None else (bias,)), tokens, ent,
                              *(() if support is None else (support,)))
        ctx.has_bias, ctx.has_support = bias is not None, support is not None
        ctx.temperature, ctx.chunk = temperature, chunk
        ctx.set_materialize_grads(False)
        return logp, ent, mean

    @staticmethod
    def backward(ctx, g_logp, g_ent, g_mean):
        saved = list(ctx.saved_tensors)
        hidden, weight = saved.pop(0), saved.pop(0)
        bias = saved.pop(0) if ctx.has_bias else None
        tokens, ent = saved.pop(0), saved.pop(0)
        support = saved.pop(0) if ctx.has_support else None
        if g_logp is None and g_ent is None and g_mean is None:
            return None, None, None, None, None, None, None
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        n, V = hidden.shape[0], weight.shape[0]
        t = ctx.temperature
        scale = 1.0 / t if t > 0 and t != 1.0 else 1.0
        g_h = torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device) if need_h else None
        dt = _compute_dtype(hidden)
        g_w = torch.zeros(weight.shape, dtype=dt, device=weight.device) if need_w else None
        g_b = torch.zeros(V, dtype=dt, device=weight.device) if need_b else None
        for c0 in range(0, n, ctx.chunk):
            c = slice(c0, min(n, c0 + ctx.chunk))
            x = _chunk_logits(hidden[c], weight, bias, t)
            lsm = torch.log_softmax(x, dim=-1)
            p = lsm.exp()
            coef = torch.zeros(p.shape[:-1], dtype=p.dtype, device=p.device)
            if g_logp is not None and support is None:
                coef = coef + g_logp[c]
            if g_mean is not None:
                coef = coef + g_mean[c]
            # d logp/dx = onehot - p (or - p_K over a kept set);  d mean/dx = 1/V - p;  d H/dx = -p (log p + H)
            g = p * coef.unsqueeze(-1)
            if g_logp is not None and support is not None:
                p_k = torch.softmax(x.masked_fill(~support_mask(support[c], V), float("-inf")), dim=-1)
                g = g + p_k * g_logp[c].unsqueeze(-1)
            if g_ent is not None:
                g = g + p * (lsm.clamp(min=torch.finfo(lsm.dtype).min) + ent[c].unsqueeze(-1)) * g_ent[c].unsqueeze(-1)
            g = -g
            if g_logp is not None:
                g.scatter_add_(-1, tokens[c].unsqueeze(-1), g_logp[c].unsqueeze(-1))
            if g_mean is not None:
                g = g + (g_mean[c] / V).unsqueeze(-1)
            if scale != 1.0:
                g = g * scale  # d x / d z = 1 / temperature
            if need_h:
                g_h[c] = (g @ weight.to(dt)).to(g_h.dtype)
            if need_w:
                g_w.addmm_(g.t(), hidden[c].to(dt))
            if need_b:
                g_b += g.sum(0)
        return (g_h, None if g_w is None else g_w.to(weight.dtype), None if g_b is None else g_b.to(bias.dtype),
                None, None, None, None)


def head_logprob_stats(hidden: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor, bias: torch.Tensor | None = None,
                       temperature: float = 1.0, chunk: int = CHUNK_POSITIONS, support: torch.Tensor | None = None):
    """``(logp, entropy, mean_logp)``, each ``[...]`` fp32 (fp64 for fp64 inputs; the shape of ``tokens``), of the logits
    ``(hidden @ weight^T + bias) / temperature`` without ever holding them whole.

    ``hidden`` ``[..., D]`` (the last hidden states at the positions that predict ``tokens``), ``weight``
    ``[V, D]`` and ``bias`` ``[V]`` (the LM head's), ``support`` ``[..., K]`` as in
    :func:`rlvr.models.logprobs.logprob_stats` (log-probs over the sampler's kept sets). Differentiable in
    ``hidden``, ``weight`` and ``bias`` (a frozen head, as under LoRA, gets no gradient and costs none).
    """
    if hidden.shape[:-1] != tokens.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} must be tokens' shape {tuple(tokens.shape)} + [D]")
    if int(chunk) < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    lead = tokens.shape
    flat_support = None if support is None else support.reshape(-1, support.shape[-1])
    out = _HeadStats.apply(hidden.reshape(-1, hidden.shape[-1]), weight, bias, tokens.reshape(-1),
                           float(temperature), int(chunk), flat_support)
    return tuple(o.reshape(lead) for o in out)
