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

from contextlib import contextmanager

import torch

from rlvr.models.logprobs import support_mask

#: Positions per chunk: the ``[chunk, V]`` fp32 temporaries (logits, log-softmax, probabilities) stay at
#: 4 x chunk x V x 4 bytes, 128 MiB at V = 152k and chunk = 64.
CHUNK_POSITIONS = 64
#: Backward: elements of each ``[positions, vocabulary block]`` temporary (8M fp32 = 32 MiB).
BLOCK_ELEMENTS = 1 << 23


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
    """Forward over chunks of positions (each needs the whole vocabulary for its log-sum-exp); backward over
    blocks of the vocabulary, from the saved per-position log-sum-exps: each block's logits are recomputed
    once and both gradient matmuls run once per block (a per-position-chunk backward would rewrite the whole
    ``[V, D]`` weight gradient once per chunk)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, tokens, temperature: float, chunk: int, support):
        n = hidden.shape[0]
        dt = _compute_dtype(hidden)
        logp = torch.empty(n, dtype=dt, device=hidden.device)
        ent, mean, lse = torch.empty_like(logp), torch.empty_like(logp), torch.empty_like(logp)
        lse_k = torch.empty_like(logp) if support is not None else None
        for c0 in range(0, n, chunk):
            c = slice(c0, min(n, c0 + chunk))
            x = _chunk_logits(hidden[c], weight, bias, temperature)
            lse[c] = torch.logsumexp(x, dim=-1)
            lsm = x - lse[c].unsqueeze(-1)
            tok = tokens[c].unsqueeze(-1)
            if support is None:
                logp[c] = lsm.gather(-1, tok).squeeze(-1)
            else:
                lse_k[c] = torch.logsumexp(x.masked_fill(~support_mask(support[c], x.shape[-1]), float("-inf")), -1)
                logp[c] = x.gather(-1, tok).squeeze(-1) - lse_k[c]
            p = lsm.exp()
            ent[c] = -(p * lsm.clamp(min=torch.finfo(lsm.dtype).min)).sum(-1)
            mean[c] = x.mean(-1) - lse[c]
        ctx.save_for_backward(hidden, weight, *(() if bias is None else (bias,)), tokens, ent, lse,
                              *(() if support is None else (support, lse_k)))
        ctx.has_bias, ctx.has_support = bias is not None, support is not None
        ctx.temperature, ctx.chunk = temperature, chunk
        ctx.set_materialize_grads(False)
        return logp, ent, mean

    @staticmethod
    def backward(ctx, g_logp, g_ent, g_mean):
        saved = list(ctx.saved_tensors)
        hidden, weight = saved.pop(0), saved.pop(0)
        bias = saved.pop(0) if ctx.has_bias else None
        tokens, ent, lse = saved.pop(0), saved.pop(0), saved.pop(0)
        support, lse_k = (saved.pop(0), saved.pop(0)) if ctx.has_support else (None, None)
        if g_logp is None and g_ent is None and g_mean is None:
            return None, None, None, None, None, None, None
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        n, V = hidden.shape[0], weight.shape[0]
        t = ctx.temperature
        scale = 1.0 / t if t > 0 and t != 1.0 else 1.0
        dt = _compute_dtype(hidden)
        h = hidden.to(dt)
        zero = torch.zeros(n, dtype=dt, device=hidden.device)
        g_lp = zero if g_logp is None else g_logp.to(dt)
        g_en = zero if g_ent is None else g_ent.to(dt)
        g_mn = zero if g_mean is None else g_mean.to(dt)
        # d/dx of (g_lp logp + g_en H + g_mn mean) = g_lp (onehot - q) - g_en p (log p + H) + g_mn (1/V - p),
        # q = p (full support) or p_K (kept set); per position only these [n] coefficients are needed
        coef_p = g_mn + (g_lp if support is None else zero)
        g_h = torch.zeros(n, hidden.shape[1], dtype=dt, device=hidden.device) if need_h else None
        g_w = torch.empty(weight.shape, dtype=dt, device=weight.device) if need_w else None
        g_b = torch.empty(V, dtype=dt, device=weight.device) if need_b else None
        block = max(256, BLOCK_ELEMENTS // max(1, n))  # vocabulary columns per block: [n, block] temporaries
        for v0 in range(0, V, block):
            vb = slice(v0, min(V, v0 + block))
            x = h @ weight[vb].to(dt).t()
            if bias is not None:
                x = x + bias[vb].to(dt)
            if scale != 1.0:
                x = x * scale
            lsm = x - lse.unsqueeze(-1)
            p = lsm.exp()
            g = p * (coef_p.unsqueeze(-1) + g_en.unsqueeze(-1) * (lsm.clamp(min=torch.finfo(dt).min)
                                                                   + ent.unsqueeze(-1)))
            if support is not None:
                ids = torch.arange(vb.start, vb.stop, device=hidden.device)
                kept = (support.unsqueeze(-1) == ids.to(support.dtype)).any(-2) | ~(support >= 0).any(-1, keepdim=True)
                g = g + torch.where(kept, (x - lse_k.unsqueeze(-1)).exp(), torch.zeros_like(x)) * g_lp.unsqueeze(-1)
            g = -g + (g_mn / V).unsqueeze(-1)
            hit = (tokens >= vb.start) & (tokens < vb.stop)
            if bool(hit.any()):
                rows = torch.nonzero(hit).squeeze(-1)
                g[rows, tokens[rows] - vb.start] += g_lp[rows]
            if scale != 1.0:
                g = g * scale  # d x / d z = 1 / temperature
            if need_h:
                g_h.addmm_(g, weight[vb].to(dt))
            if need_w:
                g_w[vb] = g.t() @ h
            if need_b:
                g_b[vb] = g.sum(0)
        return (None if g_h is None else g_h.to(hidden.dtype), None if g_w is None else g_w.to(weight.dtype),
                None if g_b is None else g_b.to(bias.dtype), None, None, None, None)


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


# ------------------------------------------------------------------ using it on a model
#: ``trainer.chunked_head=auto`` uses the chunked head for a micro-batch whose fp32 logits would take at least
#: this many bytes. On CPU it is slower than the plain path (benchmarks/chunked_head.py: 1.3-1.6x, one more
#: matmul in the backward) and saves 3-10x of the head's memory, so it is worth it only where memory is short.
AUTO_MIN_LOGITS_BYTES = 1 << 30
_LOGIT_RESCALES = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def head_of(model):
    """``(parent, attribute, head)`` when the model's LM head is a plain ``nn.Linear`` applied to the last
    hidden states as is (no logit scaling or soft-capping in the config), else the reason it is not."""
    from rlvr.models.forward import underlying_model

    base = underlying_model(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if head is None or type(head) is not torch.nn.Linear:
        return f"its output embeddings are {type(head).__name__}, not a plain Linear (e.g. a LoRA-wrapped head)"
    cfg = getattr(base, "config", None)
    for name in _LOGIT_RESCALES:
        value = getattr(cfg, name, None)
        if value not in (None, 1, 1.0):
            return f"config.{name} = {value} changes the logits after the head"
    for name, child in base.named_children():
        if child is head:
            return base, name, head
    return "its LM head is not a direct child of the model"


@contextmanager
def head_bypassed(model):
    """The body's forwards return the last hidden states where they would return logits (the head swapped
    for an identity, put back after); yields the head. Only for models :func:`head_of` accepts."""
    found = head_of(model)
    if isinstance(found, str):
        raise ValueError(f"no chunked head for this model: {found}")
    parent, name, head = found
    setattr(parent, name, torch.nn.Identity())
    try:
        yield head
    finally:
        setattr(parent, name, head)


class ChunkedHead:
    """Whether the learner's forward uses :func:`head_logprob_stats` (``trainer.chunked_head``): ``never``;
    ``always`` when :func:`head_of` accepts the model; ``auto`` when it does and the micro-batch's fp32 logits
    would take at least :data:`AUTO_MIN_LOGITS_BYTES`. The first use on each model is checked against the
    plain path on that batch (log-probs within ``check_tol``); a disagreement turns it off for that model,
    with the reason in ``reasons``."""

    def __init__(self, setting: str = "auto", log=None, check_tol: float = 1e-4, agree=None):
        self.setting, self.log, self.check_tol = str(setting).lower(), log, check_tol
        self.agree = agree or (lambda ok: ok)  # a learner group: on only where the check passes on every rank
        self.state: dict[int, str | None] = {}
        self.reasons: list[str] = []

    def _off(self, model, reason: str) -> bool:
        from rlvr.models.forward import underlying_model

        self.state[id(model)] = reason
        line = f"chunked LM head off for {type(underlying_model(model)).__name__}: {reason}"
        self.reasons.append(line)
        if self.log is not None and self.setting == "always":
            self.log(f"note: {line}")
        return False

    def use(self, model, check, positions: int = 0) -> bool:
        """``check()`` -> the largest |log-prob difference| chunked vs plain on the current batch (run once);
        ``positions``: the micro-batch's rows x completion tokens (``auto`` decides by its logits' size)."""
        if self.setting == "never":
            return False
        key = id(model)
        if key not in self.state:
            found = head_of(model)
            if isinstance(found, str):
                return self._off(model, found)
        elif self.state[key] is not None:
            return False
        if self.setting == "auto":
            from rlvr.models.forward import underlying_model

            vocab = underlying_model(model).get_output_embeddings().weight.shape[0]
            if positions * vocab * 4 < AUTO_MIN_LOGITS_BYTES:
                return False
        if key not in self.state:
            err = check()
            if not self.agree(err <= self.check_tol):
                return self._off(model, f"its log-probs differ from the plain path by {err:.2e}"
                                 if not err <= self.check_tol else "its check failed on another learner rank")
            self.state[key] = None
        return self.state[key] is None
