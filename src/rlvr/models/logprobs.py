"""Log-probabilities of completion tokens under a causal LM (the learner's forward pass).

Two ways to the same numbers:

* the plain, reference computation: :func:`completion_logits` then :func:`token_logprobs` (and
  :func:`rlvr.algorithms.entropy_from_logits`), each of which materialises a ``[B, T, V]`` tensor;
* the learner's: :func:`completion_outputs` (the model's head only at the completion positions,
  optionally with a shared prompt prefix, :mod:`rlvr.models.prefix`) then :func:`logprob_stats`,
  which gives the sampled-token log-prob, the entropy and the vocabulary-mean log-prob of every
  position from one pass over the logits in chunks of positions, with a hand-written backward that
  recomputes the softmax chunk by chunk. The only ``[B, T, V]`` tensors are the model's logits and,
  in the backward, their gradient: nothing is kept for the backward beyond the logits themselves
  (the plain path keeps the temperature-scaled copy, the log-softmax and the softmax).
"""

from __future__ import annotations

import torch

from rlvr.models.forward import plain_outputs, sequence_inputs  # noqa: F401 (sequence_inputs: re-exported)
from rlvr.models.prefix import shared_prefix_outputs

#: Elements per chunk of :func:`logprob_stats` (4M fp32 values = 16 MiB per temporary).
CHUNK_ELEMENTS = 1 << 22


def completion_logits(model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                      temperature: float = 1.0) -> torch.Tensor:
    """Logits ``[B, T, V]`` (divided by the sampling temperature) that predict each completion token."""
    input_ids, attention_mask, position_ids = sequence_inputs(
        prompt_ids, prompt_mask, completion_ids, completion_mask)
    P, T = prompt_ids.shape[1], completion_ids.shape[1]
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                use_cache=False)
    logits = out.logits[:, P - 1:P + T - 1].float()
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    return logits


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits) gathered at ``tokens``: ``[B, T]``."""
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


# ---------------------------------------------------------------------- the learner's forward
def trim_padding(prompt_ids, prompt_mask, completion_ids, completion_mask):
    """Drop the prompt columns that are padding in every row (left) and the completion columns that
    are padding in every row (right); at least one column of each is kept. The real tokens, their
    positions and their attention are unchanged, so every output at a real completion position is
    too (up to float reassociation). Returns the four tensors; the completion width shrinks to
    ``T' <= T`` (the caller pads per-position results back with zeros)."""
    P, T = prompt_ids.shape[1], completion_ids.shape[1]
    used = prompt_mask.bool().any(0)
    p0 = min(int(used.float().argmax()) if bool(used.any()) else P - 1, P - 1)
    used = completion_mask.bool().any(0)
    t1 = max(1, T - int(used.flip(0).float().argmax()) if bool(used.any()) else 1)
    if p0 == 0 and t1 == T:
        return prompt_ids, prompt_mask, completion_ids, completion_mask
    return prompt_ids[:, p0:], prompt_mask[:, p0:], completion_ids[:, :t1], completion_mask[:, :t1]


def completion_outputs(model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                       shared_prefix: bool = False, pack_tokens: int = 0) -> torch.Tensor:
    """The model's outputs (LM logits or value-head outputs, not temperature-scaled, in the model's
    dtype) ``[B, T, D]`` at the positions that predict each completion token.

    ``shared_prefix``: one prompt forward per distinct prompt (:func:`rlvr.models.prefix.shared_prefix_outputs`;
    ``pack_tokens``: as one packed sequence when it is at most that long).
    Otherwise one plain forward; a causal LM that takes ``logits_to_keep`` applies its head only at
    the ``T`` positions that predict completion tokens instead of all ``P + T``.
    """
    if shared_prefix:
        return shared_prefix_outputs(model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                                     pack_tokens=pack_tokens)
    return plain_outputs(model, prompt_ids, prompt_mask, completion_ids, completion_mask)


def _blocks(B: int, T: int, V: int, budget: int):
    """``(b0, b1, t0, t1)`` blocks of a ``[B, T, V]`` tensor with at most ``budget`` elements each
    (at least one position)."""
    if T * V <= budget:
        rows = max(1, budget // max(1, T * V))
        for b0 in range(0, B, rows):
            yield b0, min(B, b0 + rows), 0, T
    else:
        cols = max(1, budget // max(1, V))
        for b0 in range(B):
            for t0 in range(0, T, cols):
                yield b0, b0 + 1, t0, min(T, t0 + cols)


def _scaled(x: torch.Tensor, temperature: float) -> torch.Tensor:
    x = x.float()
    return x / temperature if temperature > 0 and temperature != 1.0 else x


class _LogprobStats(torch.autograd.Function):
    """Sampled-token log-prob, entropy and mean log-prob of every position, chunk by chunk."""

    @staticmethod
    def forward(ctx, logits, tokens, temperature: float, budget: int, support=None):
        B, T, V = logits.shape
        logp = torch.empty((B, T), dtype=torch.float32, device=logits.device)
        ent, mean = torch.empty_like(logp), torch.empty_like(logp)
        for b0, b1, t0, t1 in _blocks(B, T, V, budget):
            x = _scaled(logits[b0:b1, t0:t1], temperature)
            lsm = torch.log_softmax(x, dim=-1)  # as token_logprobs / entropy_from_logits compute it
            tok = tokens[b0:b1, t0:t1].unsqueeze(-1)
            if support is None:
                logp[b0:b1, t0:t1] = lsm.gather(-1, tok).squeeze(-1)
            else:  # over the sampler's kept set
                kept = support_mask(support[b0:b1, t0:t1], V)
                logp[b0:b1, t0:t1] = (x.gather(-1, tok).squeeze(-1)
                                      - torch.logsumexp(x.masked_fill(~kept, float("-inf")), dim=-1))
            p = lsm.exp()
            ent[b0:b1, t0:t1] = -(p * lsm.clamp(min=torch.finfo(lsm.dtype).min)).sum(-1)
            mean[b0:b1, t0:t1] = x.mean(-1) - torch.logsumexp(x, dim=-1)
        ctx.save_for_backward(logits, tokens, ent, *(() if support is None else (support,)))
        ctx.temperature, ctx.budget = temperature, budget
        ctx.set_materialize_grads(False)
        return logp, ent, mean

    @staticmethod
    def backward(ctx, g_logp, g_ent, g_mean):
        logits, tokens, ent, *rest = ctx.saved_tensors
        support = rest[0] if rest else None
        if g_logp is None and g_ent is None and g_mean is None:
            return None, None, None, None, None
        B, T, V = logits.shape
        temperature = ctx.temperature
        scale = 1.0 / temperature if temperature > 0 and temperature != 1.0 else 1.0
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        for b0, b1, t0, t1 in _blocks(B, T, V, ctx.budget):
            sl = (slice(b0, b1), slice(t0, t1))
            x = _scaled(logits[sl], temperature)
            lsm = torch.log_softmax(x, dim=-1)
            p = lsm.exp()
            coef = torch.zeros(p.shape[:-1], dtype=p.dtype, device=p.device)
            if g_logp is not None and support is None:
                coef = coef + g_logp[sl]
            if g_mean is not None:
                coef = coef + g_mean[sl]
            # d logp_tok/dx = onehot - p;  d mean/dx = 1/V - p;  d H/dx = -p (log p + H)
            g = p * coef.unsqueeze(-1)
            if g_logp is not None and support is not None:  # d logp_K/dx = onehot - p_K (p_K: softmax over K)
                p_k = torch.softmax(x.masked_fill(~support_mask(support[sl], V), float("-inf")), dim=-1)
                g = g + p_k * g_logp[sl].unsqueeze(-1)
            if g_ent is not None:
                g = g + (p * (lsm.clamp(min=torch.finfo(lsm.dtype).min) + ent[sl].unsqueeze(-1))
                         * g_ent[sl].unsqueeze(-1))
            g = -g
            if g_logp is not None:
                g.scatter_add_(-1, tokens[sl].unsqueeze(-1), g_logp[sl].unsqueeze(-1))
            if g_mean is not None:
                g = g + (g_mean[sl] / V).unsqueeze(-1)
            if scale != 1.0:
                g = g * scale
            grad[sl] = g.to(grad.dtype)
        return grad, None, None, None, None


def logprob_stats(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0,
                  chunk_elements: int = CHUNK_ELEMENTS, support: torch.Tensor | None = None):
    """``(logp, entropy, mean_logp)``, each ``[B, T]`` fp32, of ``logits / temperature`` (any float
    dtype; upcast chunk by chunk): ``log softmax`` at ``tokens``, ``-sum p log p`` (as
    :func:`rlvr.algorithms.entropy_from_logits`) and ``(1/|V|) sum_a log p(a)`` (ROVER's input).
    Differentiable in ``logits``; equal to the plain computation on the fp32 logits to float
    reassociation (the same ``log_softmax`` per position).

    ``support`` ``[B, T, K]`` (the sampler's kept ids per position, -1 padding; ``Rollout.support_ids``):
    ``logp`` is then normalised over that set, ``x_y - logsumexp_{v in K} x_v`` (the log-prob the top-k /
    top-p sampler drew the token with); a position without ids keeps the full vocabulary. The entropy and
    the mean log-prob stay over the full vocabulary."""
    if support is not None and support.shape[:2] != tokens.shape:
        raise ValueError(f"support must be [B, T, K] with [B, T] = {tuple(tokens.shape)}, got {tuple(support.shape)}")
    return _LogprobStats.apply(logits, tokens, float(temperature), int(chunk_elements), support)


def support_mask(support_ids: torch.Tensor, vocab: int) -> torch.Tensor:
    """``[..., V]`` bool from kept ids ``[..., K]`` (-1 padding): True where a token is in the kept set;
    a position without ids keeps every token."""
    valid = support_ids >= 0  # ids are packed to the left: the first one is valid wherever any is
    ids = torch.where(valid, support_ids, support_ids[..., :1]).clamp(min=0).long()
    mask = torch.zeros((*support_ids.shape[:-1], vocab), dtype=torch.bool, device=support_ids.device)
    mask.scatter_(-1, ids, True)
    return mask | ~valid.any(-1, keepdim=True)
