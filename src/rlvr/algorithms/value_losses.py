"""Value (critic) losses.

Registered in ``VALUE_LOSSES`` and called through :func:`value_loss`, which returns
``(loss scalar tensor, metrics dict[str, float])``.  A registered loss is called as::

    fn(*, values, old_values, returns, mask, agg, batch_num_tokens, batch_num_seqs, norm_constant, **hp)

* ``mse``: clipped value loss of PPO (verl ``compute_value_loss``; spec 3.2)
  ``0.5 * agg(max((V - G)^2, (clip(V, V_old - c, V_old + c) - G)^2))``, ``c = cliprange_value``
  (default 0.5, verl critic default; ``None`` disables the clip and ``old_values`` may be None).
  ``values`` ``[B, T]``.
* ``hl_gauss`` / ``two_hot``: classification value losses (Farebrother et al. 2024, "Stop
  Regressing", arXiv 2403.03950, sec. 3; spec 20).  ``values`` are LOGITS ``[B, T, num_bins]`` over a
  uniform support on ``[v_min, v_max]``; the loss is the cross-entropy to the HL-Gauss (or two-hot)
  target distribution of ``returns`` (clamped to the support), aggregated with ``agg``.  The scalar
  prediction is :func:`hl_gauss_value` (expectation of the bin centres).  ``old_values`` is unused.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._utils import as_float_mask, masked_mean
from .aggregation import aggregate_loss
from .registry import VALUE_LOSSES, lookup, register_value_loss


def _agg(x, mask, agg, batch_num_tokens, batch_num_seqs, norm_constant):
    return aggregate_loss(
        x, mask, agg, batch_num_tokens=batch_num_tokens, batch_num_seqs=batch_num_seqs, norm_constant=norm_constant
    )


@register_value_loss("mse")
def mse(
    *,
    values,
    old_values,
    returns,
    mask,
    agg="token-mean",
    batch_num_tokens=None,
    batch_num_seqs=None,
    norm_constant=None,
    cliprange_value=0.5,
):
    """PPO clipped value loss (verl ``compute_value_loss``); ``0.5 * agg(max(l1, l2))``."""
    returns = returns.detach()
    l1 = (values - returns) ** 2
    metrics = {}
    if cliprange_value is not None:
        if old_values is None:
            raise ValueError("mse value loss with cliprange_value needs old_values (or cliprange_value=None)")
        old = old_values.detach()
        vclip = old + torch.clamp(values - old, -cliprange_value, cliprange_value)
        l2 = (vclip - returns) ** 2
        per_tok = torch.maximum(l1, l2)
        with torch.no_grad():
            metrics["vf_clipfrac"] = float(masked_mean((l2 > l1).to(values.dtype), mask))
    else:
        per_tok = l1
        metrics["vf_clipfrac"] = 0.0
    loss = 0.5 * _agg(per_tok, mask, agg, batch_num_tokens, batch_num_seqs, norm_constant)
    with torch.no_grad():
        metrics["vpred_mean"] = float(masked_mean(values.detach(), mask))
        metrics["vf_mse"] = float(masked_mean(l1.detach(), mask))
    return loss, metrics


def _support(num_bins: int, v_min: float, v_max: float, dtype, device):
    if not v_max > v_min or num_bins < 2:
        raise ValueError("need v_max > v_min and num_bins >= 2")
    edges = torch.linspace(v_min, v_max, num_bins + 1, dtype=dtype, device=device)
    centres = 0.5 * (edges[1:] + edges[:-1])
    return edges, centres


def hl_gauss_target(y: Tensor, num_bins: int, v_min: float, v_max: float, sigma: float) -> Tensor:
    """HL-Gauss target distribution ``[..., num_bins]`` for scalar targets ``y`` (spec 20.2)."""
    y = y.clamp(v_min, v_max)
    edges, _ = _support(num_bins, v_min, v_max, y.dtype, y.device)
    cdf = torch.special.erf((edges - y.unsqueeze(-1)) / (math.sqrt(2.0) * sigma))
    z = cdf[..., -1] - cdf[..., 0]
    return (cdf[..., 1:] - cdf[..., :-1]) / z.unsqueeze(-1)


def two_hot_target(y: Tensor, num_bins: int, v_min: float, v_max: float) -> Tensor:
    """Two-hot target ``[..., num_bins]``: mass on the two neighbouring bin centres, mean = y."""
    _, c = _support(num_bins, v_min, v_max, y.dtype, y.device)
    y = y.clamp(c[0], c[-1])
    width = c[1] - c[0]
    pos = (y - c[0]) / width
    lo = pos.floor().clamp(0, num_bins - 2)
    frac = pos - lo
    lo = lo.long()
    out = torch.zeros(*y.shape, num_bins, dtype=y.dtype, device=y.device)
    out = out.scatter(-1, lo.unsqueeze(-1), (1 - frac).unsqueeze(-1))
    return out.scatter_add(-1, (lo + 1).unsqueeze(-1), frac.unsqueeze(-1))


def hl_gauss_value(logits: Tensor, v_min: float, v_max: float) -> Tensor:
    """Scalar prediction: expectation of the bin centres under ``softmax(logits)``."""
    _, c = _support(logits.shape[-1], v_min, v_max, logits.dtype, logits.device)
    return (torch.softmax(logits, -1) * c).sum(-1)


def _categorical_loss(logits, target, mask, agg, batch_num_tokens, batch_num_seqs, norm_constant, v_min, v_max):
    ce = -(target * torch.log_softmax(logits, -1)).sum(-1)
    loss = _agg(ce, mask, agg, batch_num_tokens, batch_num_seqs, norm_constant)
    with torch.no_grad():
        metrics = {"vpred_mean": float(masked_mean(hl_gauss_value(logits.detach(), v_min, v_max), mask))}
    return loss, metrics


@register_value_loss("hl_gauss")
def hl_gauss(
    *,
    values,
    old_values=None,
    returns,
    mask,
    agg="token-mean",
    batch_num_tokens=None,
    batch_num_seqs=None,
    norm_constant=None,
    num_bins=51,
    v_min=-1.0,
    v_max=1.0,
    sigma_ratio=0.75,
):
    """HL-Gauss cross-entropy value loss (Farebrother et al. 2024, arXiv 2403.03950, sec. 3.1);
    ``sigma = sigma_ratio * (v_max - v_min) / num_bins``."""
    if values.shape[-1] != num_bins:
        raise ValueError(f"values must be logits [..., num_bins={num_bins}], got {tuple(values.shape)}")
    sigma = sigma_ratio * (v_max - v_min) / num_bins
    target = hl_gauss_target(returns.detach().to(values.dtype), num_bins, v_min, v_max, sigma)
    return _categorical_loss(values, target, mask, agg, batch_num_tokens, batch_num_seqs, norm_constant, v_min, v_max)


@register_value_loss("two_hot")
def two_hot(
    *,
    values,
    old_values=None,
    returns,
    mask,
    agg="token-mean",
    batch_num_tokens=None,
    batch_num_seqs=None,
    norm_constant=None,
    num_bins=51,
    v_min=-1.0,
    v_max=1.0,
):
    """Two-hot cross-entropy value loss (Farebrother et al. 2024, arXiv 2403.03950, sec. 3.1)."""
    if values.shape[-1] != num_bins:
        raise ValueError(f"values must be logits [..., num_bins={num_bins}], got {tuple(values.shape)}")
    target = two_hot_target(returns.detach().to(values.dtype), num_bins, v_min, v_max)
    return _categorical_loss(values, target, mask, agg, batch_num_tokens, batch_num_seqs, norm_constant, v_min, v_max)


def value_loss(
    name: str,
    *,
    values: Tensor,
    old_values: Tensor | None = None,
    returns: Tensor,
    mask: Tensor,
    agg: str = "token-mean",
    batch_num_tokens=None,
    batch_num_seqs=None,
    norm_constant=None,
    **hp,
) -> tuple[Tensor, dict[str, float]]:
    """Compute the named value loss: ``(loss scalar tensor, metrics dict[str, float])``."""
    fn = lookup(VALUE_LOSSES, name, "value loss")
    return fn(
        values=values,
        old_values=old_values,
        returns=returns,
        mask=mask,
        agg=agg,
        batch_num_tokens=batch_num_tokens,
        batch_num_seqs=batch_num_seqs,
        norm_constant=norm_constant,
        **hp,
    )
