"""Train-inference mismatch correction: per-token weights ``[B, T]`` for ``policy_loss(weights=...)``.

The rollout engine samples with ``rollout_logp`` (vLLM/SGLang numerics), the trainer recomputes
``old_logp`` for the same weights; the ratio ``w = exp(old_logp - rollout_logp)`` corrects the
off-policyness caused by the engine mismatch (Yao et al. 2025, "Your Efficient RL Framework Secretly
Brings You Off-Policy RL Training", truncated importance sampling; verl ``rollout_is``).

Levels (how the ratio is formed):

* ``token``:     ``w_t = exp(old_t - roll_t)``
* ``sequence``:  ``w = exp(sum_t (old_t - roll_t))`` over valid tokens (product of token ratios),
  broadcast to every token of the response
* ``geometric``: ``w = exp(mean_t (old_t - roll_t))`` (length-normalised sequence ratio)

Log-ratios are clamped to [-20, 20] before ``exp``.

* TIS (truncated IS, :func:`truncated_is_weights`): ``min(w, upper)``.
* MIS (masked IS, :func:`masked_is_weights`): ``w`` (or 1 with ``keep_ratio=False``) where
  ``lower <= w <= upper``, else 0 (the token / whole sequence is dropped).
* HisPO (:func:`hispo_mask`, LongCat-Flash-Prover report arXiv 2603.21065 sec. 3.3 eq. 8-9; spec 14):
  hierarchical 0/1 mask, first sequences by the geometric-mean discrepancy, then tokens.

All outputs are detached, 0 at masked positions, and have the dtype of ``old_logp``.
HisPO's "triplet clipping" of the staleness ratio ``exp(logp - old_logp)`` is exactly the
``vanilla`` loss with ``clip_ratio_high = eps_pos_high`` (upper bound when A > 0),
``clip_ratio_low = eps_neg_low`` (lower bound when A < 0) and ``clip_ratio_c = 1 + eps_neg_high``
(upper bound when A < 0, dual clip); with the paper's constant-length normaliser use
``agg="seq-mean-token-sum-norm"`` and ``norm_constant`` = max generation length, and pass
``weights=hispo_mask(...)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._utils import as_float_mask, masked_sum

_CLAMP = 20.0
LEVELS = ("token", "sequence", "geometric")


def _log_w(old_logp: Tensor, rollout_logp: Tensor, mask: Tensor, level: str) -> Tensor:
    d = (old_logp - rollout_logp).detach()
    m = as_float_mask(mask, d)
    if level == "token":
        lw = d
    elif level == "sequence":
        lw = masked_sum(d, m, dim=-1).unsqueeze(-1).expand_as(d)
    elif level == "geometric":
        lw = (masked_sum(d, m, dim=-1) / m.sum(-1).clamp(min=1.0)).unsqueeze(-1).expand_as(d)
    else:
        raise ValueError(f"unknown level {level!r}; known: {', '.join(LEVELS)}")
    return torch.clamp(lw, -_CLAMP, _CLAMP)


def is_ratio(old_logp: Tensor, rollout_logp: Tensor, mask: Tensor, level: str = "token") -> Tensor:
    """Raw importance ratio ``[B, T]`` at the given level (0 at masked positions)."""
    m = as_float_mask(mask, old_logp)
    return torch.exp(_log_w(old_logp, rollout_logp, mask, level)) * m


def truncated_is_weights(
    old_logp: Tensor, rollout_logp: Tensor, mask: Tensor, *, level: str = "token", upper: float = 2.0
) -> Tensor:
    """TIS weights ``min(w, upper)`` (verl ``rollout_is_threshold`` default 2.0)."""
    m = as_float_mask(mask, old_logp)
    w = torch.exp(_log_w(old_logp, rollout_logp, mask, level))
    return torch.clamp(w, max=upper) * m


def masked_is_weights(
    old_logp: Tensor,
    rollout_logp: Tensor,
    mask: Tensor,
    *,
    level: str = "token",
    upper: float = 2.0,
    lower: float | None = None,
    keep_ratio: bool = True,
) -> Tensor:
    """MIS weights: ``w`` (``keep_ratio``) or 1 where ``lower <= w <= upper``, else 0.

    ``lower`` defaults to ``1 / upper`` (verl).  At ``sequence``/``geometric`` level a whole
    response is kept or dropped.
    """
    if lower is None:
        lower = 1.0 / upper
    m = as_float_mask(mask, old_logp)
    w = torch.exp(_log_w(old_logp, rollout_logp, mask, level))
    keep = (w >= lower) & (w <= upper)
    val = w if keep_ratio else torch.ones_like(w)
    return torch.where(keep, val, torch.zeros_like(val)) * m


def hispo_mask(
    old_logp: Tensor,
    inf_logp: Tensor,
    mask: Tensor,
    *,
    delta_seq: float | None,
    delta_tok: float | None,
) -> Tensor:
    """HisPO hierarchical mask (arXiv 2603.21065, eq. 8-9):

    ``1[|exp(mean_j log r_dis_j) - 1| < delta_seq] * 1[|r_dis_t - 1| < delta_tok]`` with
    ``r_dis = exp(old_logp - inf_logp)``.  The report gives no threshold values, so both are
    required; ``None`` disables that level.
    """
    m = as_float_mask(mask, old_logp)
    keep = torch.ones_like(m, dtype=torch.bool)
    if delta_seq is not None:
        g = torch.exp(_log_w(old_logp, inf_logp, mask, "geometric"))
        keep = keep & ((g - 1.0).abs() < delta_seq)
    if delta_tok is not None:
        r = torch.exp(_log_w(old_logp, inf_logp, mask, "token"))
        keep = keep & ((r - 1.0).abs() < delta_tok)
    return keep.to(m.dtype) * m
