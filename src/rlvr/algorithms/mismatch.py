"""Train-inference mismatch / off-policy correction: per-token weights ``[B, T]`` for
``policy_loss(weights=...)``.

Every correction is an entry of ``MISMATCH_CORRECTIONS`` (``@register_mismatch_correction``), a pure
function ``fn(old_logp, rollout_logp, mask, **params) -> weights [B, T] | None`` called through
:func:`mismatch_weights`: ``none`` (None: no weights), ``tis``, ``mis``, ``hispo`` and ``decoupled``
(the behaviour weight of decoupled PPO, below).  :func:`mismatch_params` picks, from a mapping of
settings (the config's ``algorithm.mismatch`` fields), those the entry's signature names.

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

* Decoupled PPO (:func:`decoupled_weights`; Hilton et al. 2022 arXiv 2110.00641, AReaL arXiv
  2505.24298 eq. 5): ``w_t = exp(old_t - roll_t) = pi_prox / pi_behav`` at token level, unbounded,
  except that with ``cap`` set the tokens with ``w_t > cap`` get weight 0 (AReaL
  ``behav_imp_weight_cap``).  Multiplying any clipped loss by it makes that loss decoupled:
  ``vanilla`` + ``decoupled`` == the ``decoupled_ppo`` loss.  With asynchronous rollouts
  ``rollout_logp`` is the behaviour policy (stale weights, and the engine's numerics) and
  ``old_logp`` the proximal policy (the learner's recompute at the start of the update).

All outputs are detached, 0 at masked positions, and have the dtype of ``old_logp``.
HisPO's "triplet clipping" of the staleness ratio ``exp(logp - old_logp)`` is exactly the
``vanilla`` loss with ``clip_ratio_high = eps_pos_high`` (upper bound when A > 0),
``clip_ratio_low = eps_neg_low`` (lower bound when A < 0) and ``clip_ratio_c = 1 + eps_neg_high``
(upper bound when A < 0, dual clip); with the paper's constant-length normaliser use
``agg="seq-mean-token-sum-norm"`` and ``norm_constant`` = max generation length, and pass
``weights=hispo_mask(...)``.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

import torch
from torch import Tensor

from ._utils import as_float_mask, masked_sum
from .registry import (
    BOUNDED_MISMATCH_CORRECTIONS,
    MISMATCH_CORRECTIONS,
    POLICY_LOSSES,
    TRUST_REGION_LOSSES,
    lookup,
    register_mismatch_correction,
)

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


@register_mismatch_correction("tis", bounded=True)
def truncated_is_weights(
    old_logp: Tensor, rollout_logp: Tensor, mask: Tensor, *, level: str = "token", upper: float = 2.0
) -> Tensor:
    """TIS weights ``min(w, upper)`` (verl ``rollout_is_threshold`` default 2.0)."""
    m = as_float_mask(mask, old_logp)
    w = torch.exp(_log_w(old_logp, rollout_logp, mask, level))
    return torch.clamp(w, max=upper) * m


@register_mismatch_correction("mis", bounded=True)
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


@register_mismatch_correction("hispo", bounded=True)
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


@register_mismatch_correction("none")
def no_correction(old_logp: Tensor, rollout_logp: Tensor, mask: Tensor) -> None:
    """No correction: ``policy_loss`` gets ``weights=None``."""
    return None


def _behaviour_weights(old_logp: Tensor, rollout_logp: Tensor, mask: Tensor, cap: float | None):
    """``(w, capped)``: ``w = exp(old - roll)`` (log clamped to +-20) with capped tokens set to 0 and
    masked positions 0; ``capped`` marks the valid tokens with ``exp(old - roll) > cap``."""
    if cap is not None and not cap > 1.0:
        raise ValueError(f"cap (behav_imp_weight_cap) must be > 1 or None, got {cap}")
    m = as_float_mask(mask, old_logp)
    w = torch.exp(_log_w(old_logp, rollout_logp, mask, "token"))
    valid = m != 0
    capped = (w > cap) & valid if cap is not None else torch.zeros_like(valid)
    w = torch.where(capped | ~valid, torch.zeros_like(w), w)
    return w, capped


@register_mismatch_correction("decoupled")
def decoupled_weights(old_logp: Tensor, rollout_logp: Tensor, mask: Tensor, *, cap: float | None = None) -> Tensor:
    """Decoupled-PPO behaviour weights ``pi_prox / pi_behav = exp(old_logp - rollout_logp)`` per token
    (detached); with ``cap`` (> 1) tokens whose weight exceeds it get 0 (AReaL
    ``behav_imp_weight_cap``: the token is dropped, it still counts in token-mean denominators).

    Unbounded when ``cap`` is None (AReaL's default): safe with a trust-region loss, whose clip
    bounds the update whatever the weight, but not with an unclipped one (see
    :func:`off_policy_safe`).
    """
    return _behaviour_weights(old_logp.detach(), rollout_logp.detach(), mask, cap)[0]


def mismatch_weights(name: str, old_logp: Tensor, rollout_logp: Tensor, mask: Tensor, **params) -> Tensor | None:
    """Weights ``[B, T]`` (detached) of the named correction, or None (``none``).

    ``params`` are the keyword parameters of the registered function (unknown ones raise
    ``TypeError``); to pass settings from a larger mapping use :func:`mismatch_params`.
    """
    fn = lookup(MISMATCH_CORRECTIONS, name, "mismatch correction")
    if old_logp.shape != mask.shape or rollout_logp.shape != mask.shape:
        raise ValueError("old_logp, rollout_logp and mask must all have shape [B, T]")
    return fn(old_logp.detach(), rollout_logp.detach(), mask, **params)


def mismatch_params(name: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``settings`` that the named correction takes as keyword parameters (all of
    them if it takes ``**kwargs``).  The learner passes ``algorithm.mismatch``'s fields this way,
    so ``tis`` gets ``level``/``upper``, ``hispo`` ``delta_seq``/``delta_tok``, ``decoupled``
    ``cap``, and a user-registered correction the fields it names."""
    fn = lookup(MISMATCH_CORRECTIONS, name, "mismatch correction")
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(settings)
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    named = {k for i, (k, p) in enumerate(params.items()) if i >= 3 and p.kind in keyword}  # after the 3 tensors
    return {k: v for k, v in settings.items() if k in named}


def mismatch_bounded(mismatch: str, *, cap: float | None = None) -> bool:
    """True when the named correction's weights are bounded whatever the policies: it is in
    ``BOUNDED_MISMATCH_CORRECTIONS`` (``tis``, ``mis``, ``hispo``), or it takes a ``cap`` parameter
    (``decoupled``) and ``cap`` is given."""
    fn = lookup(MISMATCH_CORRECTIONS, mismatch, "mismatch correction")
    if mismatch in BOUNDED_MISMATCH_CORRECTIONS:
        return True
    return cap is not None and "cap" in inspect.signature(fn).parameters


def off_policy_safe(policy_loss: str, mismatch: str = "none", *, cap: float | None = None) -> bool:
    """Whether ``policy_loss`` with mismatch correction ``mismatch`` may train on stale samples
    (asynchronous rollouts, ``max_staleness > 0``).

    rlvr always recomputes ``old_logp`` with the learner's weights at the start of an update, so
    every loss's ratio ``rho = pi_theta / pi_old`` starts at 1 and whatever keeps it bounded in a
    synchronous run still does.  What staleness adds is the gap between the policy that sampled
    (``rollout_logp``, the behaviour policy) and ``pi_old`` (the proximal policy).  Two things
    keep that gap from blowing up an update, and either suffices:

    1. The loss has a trust region (``TRUST_REGION_LOSSES``): its gradient vanishes or stays bounded
       once ``pi_theta`` leaves a neighbourhood of ``pi_old`` (PPO-style clip, a clipped stop-grad
       IS weight, a soft gate), or it is an objective that is valid off-policy (trajectory
       balance).  Stale samples then cost bias (they were not drawn from ``pi_old``) but cannot
       make the step unbounded; ``decoupled`` weights, even uncapped, cannot either, because the
       clip stops each token once its ratio leaves ``[1 - low, 1 + high]`` (AReaL's default runs
       decoupled PPO without a cap).
    2. The correction's weights are bounded (``mismatch_bounded``: ``tis``, ``mis``, ``hispo``, or
       ``decoupled`` with ``cap``): the off-policy gap enters the gradient through a factor of at
       most ``upper`` / ``cap``.  A loss without a trust region (``gpg``, ``kl_cov``) is then a
       truncated-IS policy gradient at ``pi_old``: as stable as the same loss run synchronously.

    False otherwise: e.g. ``gpg`` / ``kl_cov`` with ``none`` (an uncorrected, unbounded update on
    stale data) or with uncapped ``decoupled`` (``kl_cov`` + ``decoupled`` is exactly the
    unclipped IS loss ``-A pi_theta / pi_behav`` that diverged in tinker-cookbook PR #822 and
    NeMo-RL PR #1098).  "Safe" is about boundedness, not bias: the recommended async setting is
    still a correction of the gap (``decoupled_ppo``, or ``vanilla`` + ``decoupled``), see
    ``docs/algorithms.md``.  Note that ``decoupled_ppo`` already applies the behaviour weight:
    combining it with the ``decoupled`` correction applies it twice (``w**2``); don't.
    User-registered losses count as unsafe unless registered with ``trust_region=True``.
    Unknown names raise ``ValueError``.
    """
    lookup(POLICY_LOSSES, policy_loss, "policy loss")
    bounded = mismatch_bounded(mismatch, cap=cap)
    return policy_loss in TRUST_REGION_LOSSES or bounded
