"""Per-token KL estimators (spec algorithms.md section 5.2; verl ``kl_penalty``).

With ``u = logp - ref_logp`` evaluated at tokens sampled from the policy:

* ``k1`` (alias ``kl``):          u                         (Schulman 2020 "Approximating KL divergence")
* ``k2`` (alias ``mse``):         u**2 / 2
* ``k3`` (alias ``low_var_kl``):  exp(-u) - 1 + u            (log-ratio clamped to [-20, 20] and the
  value clamped to [-10, 10], as verl)
* ``abs``:                        |u|
* ``k1+``, ``k2+``, ``k3+`` (straight-through, verl): forward value of k1/k2/k3, gradient of k2:
  ``k2 - sg(k2) + sg(k)``.  (aliases ``kl+``, ``mse+``, ``low_var_kl+``)

The result is a per-token ``[B, T]`` estimate; masking/aggregation is the caller's job
(:func:`rlvr.algorithms.aggregate_loss`).  Which (estimator, placement) pairs give an unbiased
gradient of the sequence-level reverse KL is reported by :mod:`rlvr.algorithms.kl_table`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .registry import KL_ESTIMATORS, lookup, register_kl_estimator


@register_kl_estimator("k1", "kl")
def k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    return logp - ref_logp


@register_kl_estimator("abs")
def kl_abs(logp: Tensor, ref_logp: Tensor) -> Tensor:
    return (logp - ref_logp).abs()


@register_kl_estimator("k2", "mse")
def k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    return 0.5 * (logp - ref_logp).square()


@register_kl_estimator("k3", "low_var_kl")
def k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    kl = torch.clamp(ref_logp - logp, min=-20.0, max=20.0)
    return torch.clamp(torch.exp(kl) - kl - 1.0, min=-10.0, max=10.0)


def _straight_through(forward_fn):
    def est(logp: Tensor, ref_logp: Tensor) -> Tensor:
        back = k2(logp, ref_logp)
        return back - back.detach() + forward_fn(logp, ref_logp).detach()

    est.__doc__ = f"Straight-through: value of {forward_fn.__name__}, gradient of k2."
    return est


register_kl_estimator("k1+", "kl+")(_straight_through(k1))
register_kl_estimator("k2+", "mse+")(_straight_through(k2))
register_kl_estimator("k3+", "low_var_kl+")(_straight_through(k3))


def kl_penalty(logp: Tensor, ref_logp: Tensor, kind: str = "k1") -> Tensor:
    """Per-token KL estimate ``[B, T]`` of the named kind (no masking)."""
    fn = lookup(KL_ESTIMATORS, kind, "KL estimator")
    return fn(logp, ref_logp)


def importance_weighted_kl(
    logp: Tensor, ref_logp: Tensor, old_logp: Tensor, kind: str = "k3", *, max_log_ratio: float = 20.0
) -> Tensor:
    """Off-policy corrected per-token KL for the loss: ``rho * k(logp, ref_logp)``.

    ``rho = exp(logp - old_logp)`` keeps its gradient (TRL ``use_bias_correction_kl``; spec 5.3):
    for samples from ``pi_old`` this makes the per-token in-loss estimate unbiased for the
    per-token quantity under ``pi_theta``.  The log-ratio is clamped to +-``max_log_ratio``.
    """
    rho = torch.exp(torch.clamp(logp - old_logp, -max_log_ratio, max_log_ratio))
    return rho * kl_penalty(logp, ref_logp, kind)
