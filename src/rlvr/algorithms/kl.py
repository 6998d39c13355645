"""Per-token KL estimators (spec algorithms.md section 5.2; verl ``kl_penalty``).

With ``u = logp - ref_logp`` evaluated at tokens sampled from the policy:

* ``k1`` (alias ``kl``):          u                         (Schulman 2020 "Approximating KL divergence")
* ``k2`` (alias ``mse``):         u**2 / 2
* ``k3`` (alias ``low_var_kl``):  exp(-u) - 1 + u            (log-ratio clamped to
  [-``log_ratio_clamp``, ``log_ratio_clamp``] = [-20, 20] and the value to [-``value_clamp``,
  ``value_clamp``] = [-10, 10], as verl; ``None`` turns a clamp off -- TRL's k3 has neither)
* ``abs``:                        |u|
* ``k1+``, ``k2+``, ``k3+``, ``abs+`` (straight-through, verl): forward value of k1/k2/k3/abs,
  gradient of k2: ``k2 - sg(k2) + sg(k)``.  (aliases ``kl+``, ``mse+``, ``low_var_kl+``)
* ``k3_is`` (TRL ``use_bias_correction_kl``; DeepSeek-V3.2, arXiv 2512.02556, the unbiased KL
  estimate of its GRPO objective): ``rho * k3`` with ``rho = exp(lp - lp_old)`` keeping its
  gradient -- :func:`importance_weighted_kl` with k3.  It reads ``old_logp``; without it
  ``lp_old = sg(lp)`` (TRL's own on-policy fallback: value k3, gradient ``grad k3 + k3 grad lp``).

Estimators take keyword hyper-parameters through ``kl_penalty(..., **hp)`` (k3 / k3+ / k3_is:
``log_ratio_clamp``, ``value_clamp``; k3_is also ``old_logp``); the config's ``kl.log_ratio_clamp`` /
``kl.value_clamp`` reach the estimators whose signature names them.

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


K3_LOG_RATIO_CLAMP = 20.0
K3_VALUE_CLAMP = 10.0


@register_kl_estimator("k3", "low_var_kl")
def k3(logp: Tensor, ref_logp: Tensor, log_ratio_clamp: float | None = K3_LOG_RATIO_CLAMP,
       value_clamp: float | None = K3_VALUE_CLAMP) -> Tensor:
    kl = ref_logp - logp
    if log_ratio_clamp is not None:
        kl = torch.clamp(kl, min=-log_ratio_clamp, max=log_ratio_clamp)
    out = torch.exp(kl) - kl - 1.0
    if value_clamp is not None:
        out = torch.clamp(out, min=-value_clamp, max=value_clamp)
    return out


def _straight_through(forward_fn):
    def est(logp: Tensor, ref_logp: Tensor, **hp) -> Tensor:
        back = k2(logp, ref_logp)
        return back - back.detach() + forward_fn(logp, ref_logp, **hp).detach()

    est.__doc__ = f"Straight-through: value of {forward_fn.__name__}, gradient of k2."
    est.forward_fn = forward_fn
    return est


register_kl_estimator("k1+", "kl+")(_straight_through(k1))
register_kl_estimator("k2+", "mse+")(_straight_through(k2))
register_kl_estimator("k3+", "low_var_kl+")(_straight_through(k3))
register_kl_estimator("abs+")(_straight_through(kl_abs))


def kl_params(kind: str, params: dict) -> dict:
    """The entries of ``params`` that the estimator ``kind`` takes (e.g. k3's clamps)."""
    import inspect

    fn = lookup(KL_ESTIMATORS, kind, "KL estimator")
    fn = getattr(fn, "forward_fn", fn)
    names = set(inspect.signature(fn).parameters) - {"logp", "ref_logp"}
    return {k: v for k, v in params.items() if k in names}


def kl_penalty(logp: Tensor, ref_logp: Tensor, kind: str = "k1", **hp) -> Tensor:
    """Per-token KL estimate ``[B, T]`` of the named kind (no masking); ``hp``: the estimator's
    keyword parameters (k3: ``log_ratio_clamp``, ``value_clamp``; k3_is: also ``old_logp``)."""
    fn = lookup(KL_ESTIMATORS, kind, "KL estimator")
    return fn(logp, ref_logp, **hp)


def importance_weighted_kl(
    logp: Tensor, ref_logp: Tensor, old_logp: Tensor, kind: str = "k3", *, max_log_ratio: float | None = 20.0,
    log_ratio_clamp: float | None = K3_LOG_RATIO_CLAMP, value_clamp: float | None = K3_VALUE_CLAMP,
) -> Tensor:
    """Off-policy corrected per-token KL for the loss: ``rho * k(logp, ref_logp)``.

    ``rho = exp(logp - old_logp)`` keeps its gradient (TRL ``use_bias_correction_kl``; DeepSeek-V3.2,
    arXiv 2512.02556; spec 5.3): for samples from ``pi_old`` this makes the per-token in-loss estimate
    unbiased for the per-token quantity under ``pi_theta``.  Clamps (defaults: today's, verl's):
    ``max_log_ratio`` bounds ``logp - old_logp`` before ``exp`` (20; None: none, as TRL);
    ``log_ratio_clamp`` / ``value_clamp`` are the estimator's own clamps, passed to ``kind`` when its
    signature names them (k3: 20 and 10; None: off, as TRL's k3).  ``old_logp`` is treated as a constant.
    """
    d = logp - old_logp.detach()
    if max_log_ratio is not None:
        d = torch.clamp(d, -max_log_ratio, max_log_ratio)
    hp = kl_params(kind, {"log_ratio_clamp": log_ratio_clamp, "value_clamp": value_clamp})
    return torch.exp(d) * kl_penalty(logp, ref_logp, kind, **hp)


@register_kl_estimator("k3_is")
def k3_is(logp: Tensor, ref_logp: Tensor, old_logp: Tensor | None = None,
          log_ratio_clamp: float | None = K3_LOG_RATIO_CLAMP, value_clamp: float | None = K3_VALUE_CLAMP) -> Tensor:
    """Bias-corrected (importance-weighted) k3: ``exp(lp - lp_old) * k3(lp, lp_ref)``, the ratio with its
    gradient (TRL ``GRPOTrainer._compute_loss`` with ``use_bias_correction_kl=True``, the default in TRL
    1.16; DeepSeek-V3.2, arXiv 2512.02556, the KL term of its objective).

    ``old_logp`` ``[B, T]``: the behaviour policy's log-probs; None uses ``sg(logp)`` (TRL does the same
    when it skips the old-policy forward), so the value is k3 and the gradient ``grad k3 + k3 grad lp``.
    ``log_ratio_clamp`` clamps both log-ratios before ``exp`` (``lp - lp_old`` in the weight and
    ``lp_ref - lp`` in k3) and ``value_clamp`` the k3 value, as ``k3`` (defaults 20 / 10, verl's);
    ``None`` for both is TRL's (no clamp).  Token level only (TRL's ``importance_sampling_level="sequence"``
    weights the KL by the sequence-mean ratio instead).
    """
    old = logp.detach() if old_logp is None else old_logp
    return importance_weighted_kl(logp, ref_logp, old, "k3", max_log_ratio=log_ratio_clamp,
                                  log_ratio_clamp=log_ratio_clamp, value_clamp=value_clamp)
