"""Entropy of categorical distributions given logits, the entropy-bonus term, and the sum of squared
probabilities (the optimal token baseline's input)."""

from __future__ import annotations

import torch
from torch import Tensor

from .aggregation import aggregate_loss


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy ``H = logsumexp(z) - sum softmax(z) z`` over the last dim, shape ``logits.shape[:-1]``.

    Computed as ``-sum p log p`` with ``log p = log_softmax(z)`` (logsumexp based, stable for large
    logits).  Logits of ``-inf`` (masked vocabulary entries) contribute exactly 0 and give finite
    gradients.
    """
    logp = torch.log_softmax(logits, dim=-1)
    p = logp.exp()
    finfo_min = torch.finfo(logp.dtype).min
    return -(p * logp.clamp(min=finfo_min)).sum(-1)


def sum_pi_squared_from_logits(logits: Tensor, chunk: int = 1024) -> Tensor:
    """``sum_v softmax(z)_v^2`` per position, shape ``logits.shape[:-1]``, detached (the optimal token
    baseline's ``sum_pi_squared``; verl 0.9.1 ``verl/utils/torch_functional.py``,
    ``calculate_sum_pi_squared_from_logits``).

    Computed as ``exp(logsumexp(2 z) - 2 logsumexp(z))`` (stable for large logits; ``-inf`` logits
    contribute 0) over ``chunk`` positions at a time, so at most a ``[chunk, V]`` intermediate exists
    besides the logits: never the full ``[B, T, V]`` softmax.  Low-precision logits are computed in
    float32 (float64 stays float64).  Pass the logits the old log-probs come from (divided by the sampling
    temperature, as the learner's log-probs are).
    """
    if int(chunk) < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    chunk = int(chunk)
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    out = torch.empty(logits.shape[:-1].numel(), dtype=dtype, device=logits.device)
    done = 0
    with torch.no_grad():
        for block in _position_blocks(logits.detach()):
            for start in range(0, block.shape[0], chunk):
                z = block[start:start + chunk].to(dtype)
                out[done:done + z.shape[0]] = torch.exp(torch.logsumexp(2.0 * z, dim=-1)
                                                        - 2.0 * torch.logsumexp(z, dim=-1))
                done += z.shape[0]
    return out.reshape(logits.shape[:-1])


def _position_blocks(x: Tensor):
    """``[n, V]`` views covering the positions of ``x [..., V]`` in row-major order, without copying a
    non-contiguous input (a sliced ``[B, T, V]`` is walked row by row)."""
    if x.dim() <= 2:
        yield x.reshape(-1, x.shape[-1])  # a view for 1-d / 2-d inputs with a unit last stride
        return
    try:
        yield x.view(-1, x.shape[-1])
    except RuntimeError:
        for sub in x.unbind(0):
            yield from _position_blocks(sub)


def entropy_bonus(
    entropy: Tensor,
    mask: Tensor,
    agg: str = "token-mean",
    *,
    coef: float = 1.0,
    batch_num_tokens=None,
    batch_num_seqs=None,
    norm_constant=None,
) -> Tensor:
    """Loss term ``-coef * agg(H)`` to ADD to the policy loss (maximises entropy when coef > 0).

    Use the same ``agg`` and global counts as the policy loss (verl ``entropy_coeff``).
    """
    return -coef * aggregate_loss(
        entropy,
        mask,
        agg,
        batch_num_tokens=batch_num_tokens,
        batch_num_seqs=batch_num_seqs,
        norm_constant=norm_constant,
    )
