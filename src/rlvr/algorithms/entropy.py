"""Entropy of categorical distributions given logits, and the entropy-bonus term."""

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
