"""Small tensor helpers shared by the algorithm modules (pure functions)."""

from __future__ import annotations

import torch
from torch import Tensor


def as_float_mask(mask: Tensor, like: Tensor | None = None) -> Tensor:
    """Return the mask as a floating tensor (dtype of ``like`` when given and floating)."""
    dtype = like.dtype if (like is not None and like.is_floating_point()) else torch.get_default_dtype()
    return mask.to(dtype)


def masked_sum(x: Tensor, mask: Tensor, dim=None) -> Tensor:
    m = as_float_mask(mask, x)
    # torch.where keeps NaN/inf at masked positions out of the sum (0 * inf = nan otherwise).
    y = torch.where(m != 0, x * m, torch.zeros((), dtype=x.dtype, device=x.device))
    return y.sum() if dim is None else y.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim=None) -> Tensor:
    """Mean of ``x`` over positions where mask != 0 (0 when there are none)."""
    m = as_float_mask(mask, x)
    num = masked_sum(x, m, dim)
    den = m.sum() if dim is None else m.sum(dim)
    return num / den.clamp(min=1.0)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    m = as_float_mask(mask, x)
    mean = masked_mean(x, m)
    n = m.sum()
    var = masked_sum((x - mean) ** 2, m)
    if unbiased:
        return var / (n - 1).clamp(min=1.0)
    return var / n.clamp(min=1.0)


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """verl ``masked_whiten``: (x - mean) / sqrt(var + eps) over valid positions, Bessel variance."""
    m = as_float_mask(mask, x)
    mean = masked_mean(x, m)
    var = masked_var(x, m)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out


def group_inverse(group: Tensor | None, batch: int, device) -> tuple[Tensor, int]:
    """Map arbitrary (non-contiguous) group ids to 0..K-1; ``None`` means one group."""
    if group is None:
        return torch.zeros(batch, dtype=torch.long, device=device), 1
    group = torch.as_tensor(group, device=device)
    if group.shape != (batch,):
        raise ValueError(f"group must have shape [{batch}], got {tuple(group.shape)}")
    _, inv = torch.unique(group, return_inverse=True)
    return inv, int(inv.max().item()) + 1 if batch > 0 else 0


def group_sum(x: Tensor, inv: Tensor, k: int) -> Tensor:
    """Per-group sums, shape [K]."""
    return torch.zeros(k, dtype=x.dtype, device=x.device).index_add(0, inv, x)


def group_stats(x: Tensor, group: Tensor | None, singleton: str = "verl"):
    """Per-response group mean, Bessel std and size (each [B]), plus a zero-variance flag [B].

    Singleton groups (size 1) follow verl: mean = 0, std = 1.  ``zero_var`` is True for members of
    groups of size >= 2 whose values are all exactly equal.
    """
    b = x.shape[0]
    inv, k = group_inverse(group, b, x.device)
    ones = torch.ones_like(x)
    cnt = group_sum(ones, inv, k)
    mean_g = group_sum(x, inv, k) / cnt.clamp(min=1)
    dev = x - mean_g[inv]
    var_g = group_sum(dev * dev, inv, k) / (cnt - 1).clamp(min=1)
    std_g = var_g.sqrt()
    gmax = torch.full((k,), -torch.inf, dtype=x.dtype, device=x.device).scatter_reduce(0, inv, x, "amax")
    gmin = torch.full((k,), torch.inf, dtype=x.dtype, device=x.device).scatter_reduce(0, inv, x, "amin")
    single = cnt <= 1
    mean_g = torch.where(single, torch.zeros_like(mean_g), mean_g)
    std_g = torch.where(single, torch.ones_like(std_g), std_g)
    zero_var = (~single) & (gmax == gmin)
    return mean_g[inv], std_g[inv], cnt[inv], zero_var[inv]


def last_valid_index(mask: Tensor) -> Tensor:
    """Index of the last position with mask != 0 in each row ([B], -1 for empty rows)."""
    t = mask.shape[-1]
    pos = torch.arange(t, device=mask.device).expand_as(mask)
    return torch.where(mask != 0, pos, torch.full_like(pos, -1)).amax(-1)


def outcome_to_token_rewards(rewards: Tensor, mask: Tensor) -> Tensor:
    """Place each outcome reward on the last valid token of its response."""
    rewards = rewards.to(torch.get_default_dtype()) if not rewards.is_floating_point() else rewards
    idx = last_valid_index(mask)
    out = torch.zeros(mask.shape, dtype=rewards.dtype, device=rewards.device)
    valid = idx >= 0
    rows = torch.arange(mask.shape[0], device=mask.device)[valid]
    return out.index_put((rows, idx[valid]), rewards[valid])


def clip_by_value(x: Tensor, tensor_min, tensor_max) -> Tensor:
    """Clamp ``x`` between bounds that may be tensors broadcastable to ``x`` (verl 0.9.1
    ``verl/utils/torch_functional.py``, ``clip_by_value``): ``max(min(x, tensor_max), tensor_min)``, so
    where ``tensor_min > tensor_max`` the result is ``tensor_min``.  Scalars are accepted as bounds.
    """
    lo = torch.as_tensor(tensor_min, dtype=x.dtype, device=x.device)
    hi = torch.as_tensor(tensor_max, dtype=x.dtype, device=x.device)
    return torch.maximum(torch.minimum(x, hi), lo)
