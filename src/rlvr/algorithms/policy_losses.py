"""Policy losses (minimised).

Every loss is registered in ``POLICY_LOSSES`` and called through :func:`policy_loss`, which
returns ``(loss scalar tensor, metrics dict[str, float])``.

A registered loss is called with keyword arguments only::

    fn(*, logp, old_logp, advantages, mask, agg, weights, batch_num_tokens, batch_num_seqs,
       norm_constant, **hp)

Common conventions
------------------
* ``weights`` ``[B, T]`` (optional) multiplies the per-token loss before aggregation; it is detached
  (train-inference mismatch correction, see :mod:`rlvr.algorithms.mismatch`).
* Aggregation uses :func:`rlvr.algorithms.aggregate_loss` with ``agg`` and the global counts
  ``batch_num_tokens`` / ``batch_num_seqs`` / ``norm_constant``.
* Log-ratios ``logp - old_logp`` are clamped to [-``log_ratio_clamp``, ``log_ratio_clamp``] before
  ``exp``: default 20 (verl); ``log_ratio_clamp=None`` removes the clamp (TRL computes
  ``exp(logp - old_logp)`` unclamped). Every ratio-based loss takes the parameter.
* ``importance_sampling_level="sequence"`` (the token-level ratio losses: vanilla, decoupled_ppo,
  cispo, dispo, sapo, clip_cov, kl_cov) replaces the token log-ratio by the sequence mean
  ``mean_t (lp - lp_old)`` broadcast to the tokens, with its gradient (TRL
  ``importance_sampling_level="sequence"``: TRL's SAPO-sequence, GSPO with ``loss_type="grpo"``);
  ``importance_sampling_level="sequence_sum"`` uses the sequence SUM ``sum_t (lp - lp_old)``, the log
  of the sequence-likelihood ratio ``pi(y|x) / pi_old(y|x)`` (TRL ``RLOOTrainer._compute_loss``: the PPO
  clip of ``exp(sum_t (lp - lp_old))`` per sequence, averaged over sequences = ``vanilla`` with
  ``sequence_sum``, ``clip_ratio_c=None``, ``log_ratio_clamp=None`` and ``seq-mean-token-mean``). The
  clamp applies to the sequence value. The per-token loss is then aggregated as usual.
* Metrics are over the valid tokens of the tensors passed (a micro-batch): ``clip_frac`` (fraction
  of valid tokens where a clip is active, i.e. the gradient of the token is cut or changed by the
  clip), ``approx_kl`` = mean of ``0.5 * (logp - old_logp)**2`` (the k2 estimate of
  KL(pi_old || pi_theta), always >= 0), ``ppo_kl`` = mean of ``old_logp - logp`` (k1, verl's
  ``ppo_kl``), ``ratio_mean`` / ``ratio_max`` / ``ratio_min`` of ``exp(logp - old_logp)``.

Off-policy safety (``trust_region=True`` puts a loss in ``TRUST_REGION_LOSSES``; see
:func:`rlvr.algorithms.off_policy_safe` and docs/algorithms.md for the reasons per loss): every
loss below is marked except ``kl_cov`` (unclipped ``-A rho``), ``gpg`` (plain ``-A lp``) and ``bypass_mode`` (its
``loss_type="reinforce"`` without ``rollout_is`` is a plain ``-A lp``).

Zero advantage, zero gradient (``zero_at_zero_advantage=True`` puts a loss in
``ZERO_AT_ZERO_ADVANTAGE_LOSSES``): the per-token (or per-sequence) loss is the token's (sequence's)
advantage times a bounded function of that row's own ratios, so a row whose advantages are all zero
adds exactly 0 to the loss and to every gradient; only the aggregation's counts see it, and the learner
passes those for the whole minibatch. Marked: ``vanilla``, ``gspo``, ``cispo``, ``gpg``, ``geo_mean``, ``dppo_tv``,
``dppo_kl``, ``flash_reinforce`` (not ``dro``: its log-ratio penalty acts whatever the advantage; not ``bypass_mode``: its IS batch
normalisation couples the rows).

verl 0.9.1 losses under verl's names and parameter names: ``dppo_tv``, ``dppo_kl``, ``dro``, ``bypass_mode``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._utils import as_float_mask, masked_mean, masked_sum
from .aggregation import aggregate_loss
from .mismatch import (
    _behaviour_weights,
    parse_rollout_rs,
    rollout_is_weights,
    rollout_rs_keep,
)
from .registry import POLICY_LOSSES, lookup, register_policy_loss

LOG_RATIO_CLAMP = 20.0


def _log_ratio(logp: Tensor, old_logp: Tensor, clamp: float | None = LOG_RATIO_CLAMP, level: str = "token",
               mask: Tensor | None = None) -> Tensor:
    """``lp - lp_old`` (token level), its per-sequence mean (``"sequence"``, GSPO's) or sum
    (``"sequence_sum"``, the sequence-likelihood log-ratio) broadcast to ``[B, T]`` (gradient through
    every valid token), clamped to ``[-clamp, clamp]`` unless ``clamp`` is None."""
    d = logp - old_logp
    if level in ("sequence", "sequence_sum"):
        if mask is None:
            raise ValueError(f"importance_sampling_level={level!r} needs the mask")
        m = as_float_mask(mask, d)
        s = masked_sum(d, m, dim=-1)
        if level == "sequence":
            s = s / m.sum(-1).clamp(min=1.0)
        d = s.unsqueeze(-1).expand_as(d)
    elif level != "token":
        raise ValueError("importance_sampling_level must be 'token', 'sequence' or 'sequence_sum', "
                         f"got {level!r}")
    if clamp is None:
        return d
    if clamp <= 0:
        raise ValueError(f"log_ratio_clamp must be > 0 or None, got {clamp}")
    return torch.clamp(d, -clamp, clamp)


def _apply_weights(per_tok: Tensor, weights: Tensor | None) -> Tensor:
    if weights is None:
        return per_tok
    return per_tok * weights.detach().to(per_tok.dtype)


def _agg(per_tok, mask, agg, weights, batch_num_tokens, batch_num_seqs, norm_constant) -> Tensor:
    return aggregate_loss(
        _apply_weights(per_tok, weights),
        mask,
        agg,
        batch_num_tokens=batch_num_tokens,
        batch_num_seqs=batch_num_seqs,
        norm_constant=norm_constant,
    )


def _item(x: Tensor) -> float:
    return float(x.detach().item())


def _base_metrics(logp: Tensor, old_logp: Tensor, mask: Tensor) -> dict[str, float]:
    with torch.no_grad():
        m = as_float_mask(mask, logp)
        d = (logp - old_logp).detach()
        ratio = torch.exp(torch.clamp(d, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
        valid = m != 0
        has = bool(valid.any())
        return {
            "approx_kl": _item(masked_mean(0.5 * d * d, m)),
            "ppo_kl": _item(masked_mean(-d, m)),
            "ratio_mean": _item(masked_mean(ratio, m)) if has else 1.0,
            "ratio_max": _item(ratio[valid].max()) if has else 1.0,
            "ratio_min": _item(ratio[valid].min()) if has else 1.0,
        }


def _frac(flag: Tensor, mask: Tensor) -> float:
    with torch.no_grad():
        return _item(masked_mean(flag.to(torch.get_default_dtype()), mask.to(torch.get_default_dtype())))


# ------------------------------------------------------------------------------------------ vanilla


@register_policy_loss("vanilla", "ppo", trust_region=True, zero_at_zero_advantage=True)
def vanilla(
    *,
    logp,
    old_logp,
    advantages,
    mask,
    agg="token-mean",
    weights=None,
    batch_num_tokens=None,
    batch_num_seqs=None,
    norm_constant=None,
    clip_ratio_low=0.2,
    clip_ratio_high=0.2,
    clip_ratio_c=3.0,
    delta=None,
    log_ratio_clamp=LOG_RATIO_CLAMP,
    importance_sampling_level="token",
):
    """PPO clipped surrogate (Schulman et al. 2017, arXiv 1707.06347, eq. 7) with decoupled bounds
    (DAPO clip-higher, arXiv 2503.14476 sec. 3.1) and optional dual clip (Ye et al. 2020,
    arXiv 1912.09729, sec. 4; ``clip_ratio_c=None`` disables it).  Spec 0.3; verl
    ``compute_policy_loss_vanilla``.

    ``l = max(-A rho, -A clip(rho, 1-low, 1+high))``; for ``A < 0``: ``l = min(l, -A c)``.
    ``delta`` (TRL ``delta``, INTELLECT-2 two-sided clipping, arXiv 2505.07291): the unclipped term
    uses ``min(rho, delta)``. ``log_ratio_clamp`` / ``importance_sampling_level``: module docstring.
    TRL's ``grpo`` / ``bnpo`` / ``dr_grpo`` / ``dapo`` / ``luspo`` losses are this loss with
    ``clip_ratio_c=None, log_ratio_clamp=None`` and the matching aggregation (docs/algorithms.md).
    """
    if clip_ratio_c is not None and clip_ratio_c <= 1.0:
        raise ValueError(f"clip_ratio_c must be > 1 (or None), got {clip_ratio_c}")
    ratio = torch.exp(_log_ratio(logp, old_logp, log_ratio_clamp, importance_sampling_level, mask))
    ratio1 = ratio if delta is None else torch.clamp(ratio, max=delta)
    l1 = -advantages * ratio1
    l2 = -advantages * torch.clamp(ratio, 1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    clipped = torch.maximum(l1, l2)
    clip_flag = l2 > l1
    per_tok = clipped
    metrics = {}
    if clip_ratio_c is not None:
        l3 = -advantages * clip_ratio_c
        dual = torch.minimum(l3, clipped)
        neg = advantages < 0
        per_tok = torch.where(neg, dual, clipped)
        dual_flag = neg & (clipped > l3)
        metrics["clip_frac_lower"] = _frac(dual_flag, mask)
        clip_flag = clip_flag | dual_flag
    loss = _agg(per_tok, mask, agg, weights, batch_num_tokens, batch_num_seqs, norm_constant)
    metrics["clip_frac"] = _frac(clip_flag, mask)
    metrics.update(_base_metrics(logp, old_logp, mask))
    return loss, metrics


# ---------------------------------------------------------------------------------- decoupled PPO


@register_policy_loss("decoupled_ppo", "decoupled", trust_region=True)
def decoupled_ppo(
    *,
    logp,
    old_logp,
    advantages,
    mask,
    agg="token-mean",
    weights=None,
    batch_num_tokens=None,
    batch_num_seqs=None,
    norm_constant=None,
    rollout_logp,
    clip_ratio_low=0.2,
    clip_ratio_high=0.2,
    clip_ratio_c=None,
    behav_imp_weight_cap=None,
    log_ratio_clamp=LOG_RATIO_CLAMP,
    importance_sampling_level="token",
):
    """Decoupled PPO (Hilton et al. 2022, "Batch size-invariance for policy optimization", arXiv
    2110.00641; AReaL, Fu et al. 2025, arXiv 2505.24298, eq. 5; AReaL ``ppo_actor_loss_fn`` with
    ``use_decoupled_loss``).

    The behaviour policy ``pi_behav`` (``rollout_logp``, what the engine sampled with, possibly
    stale) is separated from the proximal policy ``pi_prox`` (``old_logp``, the learner's recompute
    at the start of the update), the centre of the trust region::

        J = E_t[ w_t * min(r_t A_t, clip(r_t, 1 - low, 1 + high) A_t) ],
        w_t = sg(pi_prox / pi_behav),  r_t = pi_theta / pi_prox

    i.e. the ``vanilla`` per-token loss (dual clip too when ``clip_ratio_c`` is set) times ``w_t``
    (and times ``weights`` when another correction gives them).  ``behav_imp_weight_cap`` (> 1):
    tokens with ``w_t`` above it get weight 0 (AReaL; they still count in ``token-mean``
    denominators).  Defaults as AReaL: ``eps_clip=0.2``, no dual clip (``c_clip=None``), no cap.
    Equal to ``vanilla`` with ``weights = decoupled_weights(old_logp, rollout_logp, mask, cap=cap)``
    (the ``decoupled`` mismatch correction; don't use both at once: ``w`` would count twice), and
    to ``vanilla`` itself when ``rollout_logp == old_logp``.

    Metrics (besides ``vanilla``'s): ``behav_weight_mean`` / ``behav_weight_max`` of
    ``pi_prox / pi_behav`` over valid tokens (before the cap), ``behav_capped_frac`` (fraction of
    valid tokens dropped by the cap), ``behav_approx_kl`` (mean ``0.5 (old - rollout)**2``).
    """
    if rollout_logp.shape != mask.shape:
        raise ValueError(f"rollout_logp must have shape {tuple(mask.shape)}, got {tuple(rollout_logp.shape)}")
    roll = rollout_logp.detach().to(old_logp.dtype)
    w, capped = _behaviour_weights(old_logp.detach(), roll, mask, behav_imp_weight_cap)
    if weights is not None:
        w = w * weights.detach().to(w.dtype)
    loss, metrics = vanilla(
        logp=logp, old_logp=old_logp, advantages=advantages, mask=mask, agg=agg, weights=w,
        batch_num_tokens=batch_num_tokens, batch_num_seqs=batch_num_seqs, norm_constant=norm_constant,
        clip_ratio_low=clip_ratio_low, clip_ratio_high=clip_ratio_high, clip_ratio_c=clip_ratio_c,
        log_ratio_clamp=log_ratio_clamp, importance_sampling_level=importance_sampling_level)
    with torch.no_grad():
        m = as_float_mask(mask, old_logp)
        d = old_logp.detach() - roll
        raw = torch.exp(torch.clamp(d, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
        valid = m != 0
        has = bool(valid.any())
        metrics["behav_weight_mean"] = _item(masked_mean(raw, m)) if has else 1.0
        metrics["behav_weight_max"] = _item(raw[valid].max()) if has else 1.0
        metrics["behav_capped_frac"] = _frac(capped, mask)
        metrics["behav_approx_kl"] = _item(masked_mean(0.5 * d * d, m))
    return loss, metrics


# ---------------------------------------------------------------------------- sequence helpers


def _seq_len(mask: Tensor, like: Tensor) -> Tensor:
    return as_float_mask(mask, like).sum(-1)


def _seq_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Per-sequence masked mean ``[B]`` (0 for empty rows)."""
    m = as_float_mask(mask, x)
    return masked_sum(x, m, dim=-1) / m.sum(-1).clamp(min=1.0)


def _seq_weight(weights: Tensor | None, mask: Tensor, like: Tensor) -> Tensor | None:
    """Sequence-level weight from per-token weights: geometric mean over valid tokens (the
    sequence-level importance weight of a product of token weights, length-normalised)."""
    if weights is None:
        return None
    w = weights.detach().to(like.dtype)
    logw = torch.log(w.clamp(min=1e-30))
    return torch.exp(_seq_mean(logw, mask))


def _num_seqs(mask: Tensor, batch_num_seqs, like: Tensor) -> Tensor:
    n = (mask != 0).any(-1).sum() if batch_num_seqs is None else batch_num_seqs
    return torch.as_tensor(n, dtype=like.dtype, device=like.device).clamp(min=1.0)


# ------------------------------------------------------------------------------------------- GSPO


@register_policy_loss("gspo", trust_region=True, zero_at_zero_advantage=True)
def gspo(
    *,
    logp,
    old_logp,
    advantages,
    mask,
    agg="seq-mean-token-mean",
    weights=None,
    batch_num_tokens=None,
    batch_num_seqs=None,
    norm_constant=None,
    clip_ratio_low=3e-4,
    clip_ratio_high=4e-4,
    log_ratio_clamp=10.0,
):
    """GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization", arXiv 2507.18071, sec. 4: the
    GSPO objective and its GSPO-token form; spec 7; verl ``compute_policy_loss_gspo``).

    ``log s_i = mean_t (lp - lp_old)`` over valid tokens; token form
    ``log s_it = sg(log s_i) + lp - sg(lp)`` (clamped at max 10, verl); per-token loss
    ``max(-A s_it, -A clip(s_it, 1-low, 1+high))``.  Paper defaults low=3e-4, high=4e-4.  The paper /
    verl aggregate with ``seq-mean-token-mean`` (verl forces it); here ``agg`` is honoured, pass
    ``agg="seq-mean-token-mean"`` for the paper's objective. ``log_ratio_clamp``: the upper clamp of
    ``log s_it`` (verl: 10; None: no clamp).
    """
    d = logp - old_logp
    log_si = _seq_mean(d, mask)
    log_sit = logp - logp.detach() + log_si.detach().unsqueeze(-1)
    if log_ratio_clamp is not None:
        log_sit = torch.clamp(log_sit, max=log_ratio_clamp)
    s = torch.exp(log_sit)
    l1 = -advantages * s
    l2 = -advantages * torch.clamp(s, 1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    per_tok = torch.maximum(l1, l2)
    loss = _agg(per_tok, mask, agg, weights, batch_num_tokens, batch_num_seqs, norm_constant)
    metrics = {"clip_frac": _frac(l2 > l1, mask)}
    metrics.update(_base_metrics(logp, old_logp, mask))
    with torch.no_grad():
        valid = (mask != 0).any(-1)
        metrics["seq_ratio_mean"] = _item(torch.exp(log_si[valid]).mean()) if bool(valid.any()) else 1.0
    return loss, metrics


# ------------------------------------------------------------------------------------------ CISPO


def _clipped_is_weight(ratio: Tensor, low, high, cap) -> Tensor:
    lo = None if low is None else 1.0 - low
    hi = cap if cap is not None else (None if high is None else 1.0 + high)
    return torch.clamp(ratio, min=lo, max=hi)


@register_policy_loss("cispo", trust_region=True, zero_at_zero_advantage=True)
def cispo(
    *,
    logp,
    old_logp,
    advantages,
    mask,
    agg="token-mean",
    weights=None,
    batch_num_tokens=None,
    batch_num_seqs=None,
    norm_constant=None,
    clip_ratio_low=None,
    clip_ratio_high=4.0,
    clip_ratio_max=None,
    mask_outside=False,
    log_ratio_clamp=LOG_RATIO_CLAMP,
    importance_sampling_level="token",
):
    """CISPO (MiniMax-M1 technical report, arXiv 2506.13585, sec. 3.1, eq. 4-5; spec 6.2).

    Per-token loss ``-sg(r_hat) * A * lp`` with ``r_hat = clip(rho, 1 - low, 1 + high)``; the ratio
    receives no gradient, so ``d loss / d lp = -r_hat * A`` for every token (clipped tokens keep
    their gradient).  Two parameterisations (spec 6.3): ``1 + eps`` form (``clip_ratio_low`` /
    ``clip_ratio_high``, verl) or an absolute cap ``clip_ratio_max`` (TRL ``epsilon_high``), which
    overrides ``clip_ratio_high`` when given.  Defaults: no lower bound (paper: eps_low^IS "very
    large") and upper cap 1 + 4.0 = 5.0 (the TRL-documented value from ScaleRL; the paper gives no
    number).  ``mask_outside=True`` applies the unified-form token mask M of eq. 7 (drop tokens
    with A > 0 and rho > 1 + high or A < 0 and rho < 1 - low).  TRL ``cispo``: ``clip_ratio_max =
    epsilon_high``, ``log_ratio_clamp=None``, token-mean over the global token count.
    """
    ratio = torch.exp(_log_ratio(logp, old_logp, log_ratio_clamp, importance_sampling_level, mask)).detach()
    r_hat = _clipped_is_weight(ratio, clip_ratio_low, clip_ratio_high, clip_ratio_max)
    per_tok = -r_hat * advantages * logp
    clipped = r_hat != ratio
    if mask_outside:
        hi = clip_ratio_max if clip_ratio_max is not None else (
            math.inf if clip_ratio_high is None else 1.0 + clip_ratio_high
        )
        lo = -math.inf if clip_ratio_low is None else 1.0 - clip_ratio_low
        drop = ((advantages > 0) & (ratio > hi)) | ((advantages < 0) & (ratio < lo))
        per_tok = torch.where(drop, torch.zeros_like(per_tok), per_tok)
    loss = _agg(per_tok, mask, agg, weights, batch_num_tokens, batch_num_seqs, norm_constant)
    metrics = {"clip_frac": _frac(clipped, mask)}
    metrics.update(_base_metrics(logp, old_logp, mask))
    return loss, metrics


@register_policy_loss("dispo", trust_region=True)
def dispo(
    *,
    logp,
    old_logp,
    advantages,
    mask,
    agg="token-mean",
    weights=None,
    batch_num_tokens=None,
    batch_num_seqs=None,
    norm_constant=None,
    clip_low_pos=0.2,
    clip_high_pos=0.28,
    clip_low_neg=0.2,
    clip_high_neg=0.28,
    correct=None,
    out_of_range="clip",
    log_ratio_clamp=LOG_RATIO_CLAMP,
    importance_sampling_level="token",
):
    """DISPO (arXiv 2602.00983; spec 6.4-6.5, structure verified, details INFERRED).

    CISPO-style REINFORCE loss ``-sg(r_d) * A * lp`` whose importance-weight clip is decoupled by
    response correctness: ``r_d = clip(rho, 1 - clip_low_pos, 1 + clip_high_pos)`` for tokens of
    correct responses and ``clip(rho, 1 - clip_low_neg, 1 + clip_high_neg)`` for incorrect ones
    (four parameters = four update regimes).  ``correct`` ``[B]`` bool is the verifier outcome
    (spec 6.5 edge case); when ``None`` it falls back to ``A > 0`` per token.
    ``out_of_range="clip"`` keeps the gradient of out-of-range tokens (CISPO-like, default);
    ``"mask"`` drops them (PPO-like).  The paper's four values were not found: the defaults
    (0.2 / 0.28 for both signs, DAPO's clip-higher bounds) make DISPO equal to CISPO with
    ``clip_ratio_low=0.2, clip_ratio_high=0.28``; tune them per regime.
    """
    if out_of_range not in ("clip", "mask"):
        raise ValueError("out_of_range must be 'clip' or 'mask'")
    ratio = torch.exp(_log_ratio(logp, old_logp, log_ratio_clamp, importance_sampling_level, mask)).detach()
    if correct is None:
        pos = advantages > 0
    else:
        pos = torch.as_tensor(correct, device=logp.device).bool().unsqueeze(-1).expand_as(logp)
    lo = torch.where(pos, torch.full_like(ratio, 1.0 - clip_low_pos), torch.full_like(ratio, 1.0 - clip_low_neg))
    hi = torch.where(pos, torch.full_like(ratio, 1.0 + clip_high_pos), torch.full_like(ratio, 1.0 + clip_high_neg))
    r_d = torch.minimum(torch.maximum(ratio, lo), hi)
    outside = r_d != ratio
    per_tok = -r_d * advantages * logp
    if out_of_range == "mask":
        per_tok = torch.where(outside, torch.zeros_like(per_tok), per_tok)
    loss = _agg(per_tok, mask, agg, weights, batch_num_tokens, batch_num_seqs, norm_constant)
    metrics = {
        "clip_frac": _frac(outside, mask),
        "clip_frac_pos": _frac(outside & pos, mask),
        "clip_frac_neg": _frac(outside & ~pos, mask),
    }
    metrics.update(_base_metrics(logp, old_logp, mask))
    return loss, metrics


# ------------------------------------------------------------------------------------------- SAPO


@register_policy_loss("sapo", trust_region=True)
def sapo(
    *,
    logp,
    old_logp,
    advantages,
    mask,
    agg="token-mean",
    weights=None,
    batch_num_tokens=None,
    batch_num_seqs=None,
    norm_constant=None,
    tau_pos=1.0,
    tau_neg=1.05,
    clip_ratio_low=0.2,
    clip_ratio_high=0.2,
    log_ratio_clamp=LOG_RATIO_CLAMP,
    importance_sampling_level="token",
):
    """SAPO (Soft Adaptive Policy Optimization, Gao et al. 2025, arXiv 2511.20347, eq. 5-6, 10-12;
    verl ``compute_policy_loss_sapo``).  Smooth gate instead of the hard clip:
    ``f(r) = 4/tau * sigmoid(tau (r - 1))``, ``tau = tau_pos if A > 0 else tau_neg``; per-token
    loss ``-f(rho) * A``.  ``f'(1) = 1`` so on-policy it is the plain policy gradient.  Defaults
    tau_pos = 1.0, tau_neg = 1.05 (paper / verl); the paper aggregates per sequence
    (``agg="seq-mean-token-mean"``).  ``clip_ratio_low/high`` only define the diagnostic
    ``clip_frac`` (fraction of tokens outside [1-low, 1+high]).  TRL ``sapo`` = this loss with
    ``log_ratio_clamp=None`` and ``seq-mean-token-mean`` (its sequence variant:
    ``importance_sampling_level="sequence"``).
    """
    ratio = torch.exp(_log_ratio(logp, old_logp, log_ratio_clamp, importance_sampling_level, mask))
    tau = torch.where(
        advantages > 0,
        torch.as_tensor(tau_pos, dtype=ratio.dtype, device=ratio.device),
        torch.as_tensor(tau_neg, dtype=ratio.dtype, device=ratio.device),
    )
    gate = torch.sigmoid(tau * (ratio - 1.0)) * (4.0 / tau)
    per_tok = -gate * advantages
    loss = _agg(per_tok, mask, agg, weights, batch_num_tokens, batch_num_seqs, norm_constant)
    r = ratio.detach()
    metrics = {"clip_frac": _frac((r > 1 + clip_ratio_high) | (r < 1 - clip_ratio_low), mask)}
    metrics.update(_base_metrics(logp, old_logp, mask))
    return loss, metrics


# ------------------------------------------------------------------------------------ VESPO / LUSPO


def vespo_gamma_weights(advantages, logp, old_logp, mask, k_pos=2.0, lambda_pos=3.0, k_neg=3.0, lambda_neg=2.0,
                        importance_sampling_ratio=None):
    """VESPO gamma weight ``phi(w) = exp(lambda + k log w - lambda w)`` (so ``phi(1) = 1``) of the
    sequence ratio ``w = exp(sum_t clamp(lp - lp_old, -20, 20))``, ``log w`` clamped to
    ``[log 1e-8, 20]``; ``(k, lambda)`` by the sign of the advantage (``A >= 0``: pos). Detached;
    non-finite values become 0. (VESPO, arXiv 2602.10693; TRL ``get_gamma_weights`` at commit f2cd577
    and in TRL 1.16.0.)  ``importance_sampling_ratio`` ``[B, T]`` (optional; TRL's per-token vLLM ratio
    ``pi_old / pi_sampler``): ``sum_t clamp(log ratio_t, log 1e-8, 20)`` over the valid tokens is added to
    ``log w`` before its clamp (TRL sums over every position, where its ratio is 1 outside the mask)."""
    with torch.no_grad():
        lower = math.log(1e-8)
        m = as_float_mask(mask, logp)
        d = torch.clamp(logp.detach() - old_logp, -20.0, 20.0)
        seq = masked_sum(d, m, dim=-1)
        if importance_sampling_ratio is not None:
            r = importance_sampling_ratio.detach().to(d.dtype)
            seq = seq + masked_sum(torch.clamp(torch.log(r), lower, 20.0), m, dim=-1)
        log_w = torch.clamp(seq, lower, 20.0).unsqueeze(-1)
        nonneg = advantages >= 0
        k = torch.where(nonneg, torch.full_like(d, k_pos), torch.full_like(d, k_neg))
        lam = torch.where(nonneg, torch.full_like(d, lambda_pos), torch.full_like(d, lambda_neg)).clamp(min=1e-4)
        phi = torch.exp(lam + k * log_w - lam * torch.exp(log_w))
        return phi.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


@register_policy_loss("vespo", trust_region=True)
def vespo(
    *,
    logp,
    old_logp,
    advantages,
    mask,
    agg="token-mean",
    weights=None,
    batch_num_tokens=None,
    batch_num_seqs=None,
    norm_constant=None,
    k_pos=2.0,
    lambda_pos=3.0,
    k_neg=3.0,
    lambda_neg=2.0,
    weights_in_w=False,
):
    """VESPO (Variational Sequence-Level Soft Policy Optimization, arXiv 2602.10693; TRL
    ``loss_type="vespo"``): per-token loss ``-sg(phi(w_i)) A lp`` with the gamma weight of
    :func:`vespo_gamma_weights` -- a smooth, bounded sequence-level IS weight instead of a hard clip
    (``phi <= e^lambda (k/lambda)^k e^-k``). Defaults as TRL (k, lambda) = (2, 3) for ``A >= 0`` and
    (3, 2) for ``A < 0``; TRL aggregates by the global token count (``token-mean``). Its own clamps
    (+-20 per token, log w in [log 1e-8, 20]) are TRL's and part of the definition.

    ``weights_in_w`` (default False): False multiplies ``weights`` (mismatch / token weights) into the
    per-token loss, as for every loss.  True is TRL's VESPO with vLLM IS correction
    (``GRPOTrainer.get_gamma_weights(importance_sampling_ratio=...)``, TRL 1.16.0): ``weights`` is taken as
    the per-token IS ratio ``pi_old / pi_rollout`` (the learner's mismatch weights: ``tis`` / ``mis`` at token
    level are TRL's ``token_truncate`` / ``token_mask``) and folded into ``w``,
    ``log w += sum_t clamp(log weights_t, log 1e-8, 20)``; it then does not multiply the loss.  With True,
    every factor of ``weights`` enters ``w`` (token weights too: pair it with mismatch weights only)."""
    phi = vespo_gamma_weights(advantages, logp, old_logp, mask, k_pos, lambda_pos, k_neg, lambda_neg,
                              importance_sampling_ratio=weights if weights_in_w else None)
    per_tok = -phi * advantages * logp
    if weights_in_w:
        weights = None
    loss = _agg(per_tok, mask, agg, weights, batch_num_tokens, batch_num_seqs, norm_constant)
    metrics = {"clip_frac": 0.0}
    metrics.update(_base_metrics(logp, old_logp, mask))
    with torch.no_grad():
        valid = (mask != 0).any(-1)
        metrics["vespo_phi_mean"] = _item(phi[:, 0][valid].mean()) if bool(valid.any()) else 1.0
    return loss, metrics


@register_policy_loss("luspo", trust_region=True)
def luspo(
    *,
    logp,
    old_logp,
    advantages,
    mask,
    agg="seq-mean-token-sum",
    weights=None,
    batch_num_tokens=None,
    batch_num_seqs=None,
    norm_constant=None,
    clip_ratio_low=0.2,
    clip_ratio_high=0.2,
    log_ratio_clamp=LOG_RATIO_CLAMP,
):
    """LUSPO (Length-Unbiased Sequence Policy Optimization, arXiv 2602.05261; TRL ``loss_type="luspo"``):
    the PPO clip of the sequence ratio ``s_i = exp(mean_t (lp - lp_old))`` (no dual clip), each
    sequence's loss scaled by its length ``|y_i|`` and averaged over sequences -- i.e. ``vanilla`` with
    ``importance_sampling_level="sequence"``, ``clip_ratio_c=None`` and ``seq-mean-token-sum``
    aggregation (the default ``agg`` here). TRL divides by all rows (``B``), rlvr by the rows with at
    least one valid token (equal unless a row is empty)."""
    return vanilla(logp=logp, old_logp=old_logp, advantages=advantages, mask=mask, agg=agg, weights=weights,
                   batch_num_tokens=batch_num_tokens, batch_num_seqs=batch_num_seqs, norm_constant=norm_constant,
                   clip_ratio_low=clip_ratio_low, clip_ratio_high=clip_ratio_high, clip_ratio_c=None,
                   log_ratio_clamp=log_ratio_clamp, importance_sampling_level="sequence")


# --------------------------------------------------------------------------------- Clip-Cov / KL-Cov


def _centred_cov(advantages: Tensor, logp: Tensor, mask: Tensor) -> Tensor:
    m = as_float_mask(mask, logp)
    a = advantages.detach()
    lp = logp.detach()
    return (a - masked_mean(a, m)) * (lp - masked_mean(lp, m))


@register_policy_loss("clip_cov", trust_region=True)
def clip_cov(
    *,
    logp,
    old_logp,
    advantages,
    mask,
    agg="token-mean",
    weights=None,
    batch_num_tokens=None,
    batch_num_seqs=None,
    norm_constant=None,
    clip_ratio_low=0.2,
    clip_ratio_high=0.2,
    clip_cov_ratio=2e-4,
    clip_cov_lb=1.0,
    clip_cov_ub=5.0,
    generator=None,
    log_ratio_clamp=LOG_RATIO_CLAMP,
    importance_sampling_level="token",
):
    """Clip-Cov (Cui et al. 2025, "The Entropy Mechanism of RL for Reasoning LMs", arXiv 2505.22617,
    sec. 4 "Clip-Cov"; verl ``compute_policy_loss_clip_cov``).

    Token covariance ``cov = (A - mean A)(lp - mean lp)`` over valid tokens (detached).  Among valid
    tokens not already clipped by PPO with ``lb < cov < ub``, ``max(int(clip_cov_ratio * N), 1)`` are
    drawn uniformly at random (``generator`` makes it deterministic) and their loss is zeroed
    (gradient detached); the rest use the PPO clipped loss.  Means and N are over the tensors
    passed (batch-relative: not micro-batch invariant, as in the reference).
    """
    ratio = torch.exp(_log_ratio(logp, old_logp, log_ratio_clamp, importance_sampling_level, mask))
    l1 = -advantages * ratio
    l2 = -advantages * torch.clamp(ratio, 1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    valid = mask != 0
    clip_by_origin = (l2 > l1) & valid
    cov = _centred_cov(advantages, logp, mask)
    cand = (cov > clip_cov_lb) & (cov < clip_cov_ub) & valid & ~clip_by_origin
    idx = torch.nonzero(cand.reshape(-1)).squeeze(-1)
    corr = torch.ones(logp.numel(), dtype=logp.dtype, device=logp.device)
    n_clip = max(int(clip_cov_ratio * int(valid.sum())), 1)
    if idx.numel() > 0:
        perm = torch.randperm(idx.numel(), generator=generator, device="cpu").to(idx.device)
        corr = corr.index_fill(0, idx[perm[: min(n_clip, idx.numel())]], 0.0)
    corr = corr.reshape(logp.shape)
    per_tok = torch.maximum(l1, l2) * corr
    loss = _agg(per_tok, mask, agg, weights, batch_num_tokens, batch_num_seqs, norm_constant)
    metrics = {"clip_frac": _frac(clip_by_origin, mask), "cov_clip_frac": _frac(corr == 0, mask)}
    metrics.update(_base_metrics(logp, old_logp, mask))
    return loss, metrics


@register_policy_loss("kl_cov")
def kl_cov(
    *,
    logp,
    old_logp,
    advantages,
    mask,
    agg="token-mean",
    weights=None,
    batch_num_tokens=None,
    batch_num_seqs=None,
    norm_constant=None,
    kl_cov_ratio=2e-4,
    ppo_kl_coef=1.0,
    log_ratio_clamp=LOG_RATIO_CLAMP,
    importance_sampling_level="token",
):
    """KL-Cov (Cui et al. 2025, arXiv 2505.22617, sec. 4 "KL-Cov"; verl ``compute_policy_loss_kl_cov``).

    Unclipped surrogate ``-A rho`` for every token; the top ``max(1, int(kl_cov_ratio * N))`` valid
    tokens by covariance ``(A - mean A)(lp - mean lp)`` get an extra ``ppo_kl_coef * |lp - lp_old|``
    penalty.  Batch-relative selection (not micro-batch invariant), as in the reference.
    """
    d = _log_ratio(logp, old_logp, log_ratio_clamp, importance_sampling_level, mask)
    ratio = torch.exp(d)
    per_tok = -advantages * ratio
    valid = mask != 0
    n_valid = int(valid.sum())
    sel = torch.zeros_like(valid)
    if n_valid > 0:
        k = max(1, int(n_valid * kl_cov_ratio))
        cov = _centred_cov(advantages, logp, mask).reshape(-1)
        vidx = torch.nonzero(valid.reshape(-1)).squeeze(-1)
        top = torch.topk(cov[vidx], k, largest=True).indices
        sel = torch.zeros(valid.numel(), dtype=torch.bool, device=valid.device).index_fill(0, vidx[top], True)
        sel = sel.reshape(valid.shape)
    per_tok = torch.where(sel, per_tok + ppo_kl_coef * d.abs(), per_tok)
    loss = _agg(per_tok, mask, agg, weights, batch_num_tokens, batch_num_seqs, norm_constant)
    metrics = {"clip_frac": 0.0, "kl_cov_frac": _frac(sel, mask)}
    metrics.update(_base_metrics(logp, old_logp, mask))
    return loss, metrics


# -------------------------------------------------------------------------------------------- GPG


@register_policy_loss("gpg", zero_at_zero_advantage=True)
def gpg(
    *,
    logp,
    old_logp,
    advantages,
    mask,
    agg="token-mean",
    weights=None,
    batch_num_tokens=None,
    batch_num_seqs=None,
    norm_constant=None,
):
    """GPG (Chu et al. 2025, arXiv 2504.02546, sec. 3 GPG objective; verl ``compute_policy_loss_gpg``): plain
    policy gradient ``-A * lp`` (no ratio, no clip); ``old_logp`` only feeds the metrics."""
    per_tok = -advantages * logp
    loss = _agg(per_tok, mask, agg, weights, batch_num_tokens, batch_num_seqs, norm_constant)
    metrics = {"clip_frac": 0.0}
    metrics.update(_base_metrics(logp, old_logp, mask))
    return loss, metrics


# -------------------------------------------------------------------------------- FlashREINFORCE

FLASH_REINFORCE_PROB_CLAMP = 1e-6


def bernoulli_kl(p_logp: Tensor, q_logp: Tensor, eps: float = FLASH_REINFORCE_PROB_CLAMP) -> Tensor:
    """Per-token Bernoulli KL ``p log(p/q) + (1-p) log((1-p)/(1-q))`` between the probabilities
    ``p = exp(p_logp)`` and ``q = exp(q_logp)`` of the sampled token, both clamped to ``[eps, 1 - eps]``
    (FlashREINFORCE's sequence trust region; reference ``flashreinforce/loss.py``, "Molt's numerical
    stabilization")."""
    p = p_logp.exp().clamp(eps, 1.0 - eps)
    q = q_logp.exp().clamp(eps, 1.0 - eps)
    return p * (p.log() - q.log()) + (1.0 - p) * (torch.log1p(-p) - torch.log1p(-q))


@register_policy_loss("flash_reinforce", trust_region=True, zero_at_zero_advantage=True)
def flash_reinforce(
    *,
    logp,
    old_logp,
    advantages,
    mask,
    agg="token-mean",
    weights=None,
    batch_num_tokens=None,
    batch_num_seqs=None,
    norm_constant=None,
    rollout_logp=None,
    delta=3e-3,
):
    """FlashREINFORCE's detached-ratio loss with its sequence trust region (Hu, Zhang, Zhang, Xu et al.,
    NVIDIA 2026, "FlashREINFORCE: Critic-Free Single-Rollout Asynchronous RL for Agentic Language Models";
    reference ``flashreinforce/loss.py`` ``flashreinforce_loss``, yifanzhang-pro/FlashREINFORCE commit
    d7604df, with ``negative_token_fraction = 1``, the paper's base method).

    With ``mu`` the behaviour log-probs (``rollout_logp``, the engine's: the reference's
    ``behavior_log_probs``; ``old_logp`` when not given) and ``lp`` the learner's::

        KL_i   = (1/|y_i|) sum_t m_t BernKL(exp(mu_t) || exp(lp_t))      (clamped to [1e-6, 1 - 1e-6], >= 0)
        keep_i = KL_i <= delta
        loss_t = -keep_i * sg(exp(lp_t - mu_t)) * A_t * lp_t

    aggregated with ``agg`` (the reference: ``loss_agg_mode: seq-mean-token-mean`` over the ORIGINAL lengths and all B
    rows, a dropped row counting as 0).  The ratio is detached and never clipped, so the gradient is
    ``-keep * rho * A * grad lp`` (the unclipped importance-weighted REINFORCE); a dropped row has no
    gradient and its ratio is never exponentiated.  ``delta = inf`` turns the gate off.  Use with the
    ``flash_reinforce`` estimator (``A = R - mean_batch(R)``), one rollout per prompt, one optimizer step
    per batch.  Metrics: ``flash_accept_frac`` (rows kept among rows with a valid token),
    ``flash_seq_kl_mean``.  Not implemented: the reference's optional entropy filter
    (``negative_token_fraction < 1``: keep the highest-entropy ``ceil(q |y|)`` tokens of failed rows).
    """
    if math.isnan(delta) or delta < 0:
        raise ValueError(f"flash_reinforce needs delta >= 0 (policy_loss_params.delta), got {delta!r}")
    mu = (old_logp if rollout_logp is None else rollout_logp).detach().to(logp.dtype)
    m = as_float_mask(mask, logp)
    valid = m != 0
    with torch.no_grad():
        lp = logp.detach()
        kl_tok = torch.where(valid, bernoulli_kl(mu, lp), torch.zeros_like(lp))
        n = m.sum(-1)
        seq_kl = (kl_tok.sum(-1) / n.clamp(min=1.0)).clamp(min=0.0)
        keep = seq_kl <= delta
        active = valid & keep.unsqueeze(-1)
        rho = torch.where(active, lp - mu, torch.zeros_like(lp)).exp()
        if not bool(torch.isfinite(rho).all()):
            raise FloatingPointError("flash_reinforce: importance ratio overflow on an admitted token")
        coef = torch.where(active, rho * advantages, torch.zeros_like(lp))
    per_tok = -coef * logp
    loss = _agg(per_tok, mask, agg, weights, batch_num_tokens, batch_num_seqs, norm_constant)
    rows = n > 0
    metrics = {"clip_frac": _frac(~active, mask),  # tokens of dropped rows: their gradient is cut
               "flash_accept_frac": _item(keep[rows].to(lp.dtype).mean()) if bool(rows.any()) else 1.0,
               "flash_seq_kl_mean": _item(seq_kl[rows].mean()) if bool(rows.any()) else 0.0}
    metrics.update(_base_metrics(logp, old_logp, mask))
    return loss, metrics


# ------------------------------------------------------------------------------------------- GMPO


@register_policy_loss("geo_mean", trust_region=True, zero_at_zero_advantage=True)
def geo_mean(
    *,
    logp,
    old_logp,
    advantages,
    mask,
    agg="token-mean",
    weights=None,
    batch_num_tokens=None,
    batch_num_seqs=None,
    norm_constant=None,
    clip_ratio_low=0.4,
    clip_ratio_high=0.4,
):
    """GMPO (Geometric-Mean Policy Optimization, Zhao et al. 2025, arXiv 2507.20673, sec. 3 GMPO objective; verl
    ``compute_policy_loss_geo_mean``).

    Token log-ratios are clipped in LOG space to ``[-clip_ratio_low, clip_ratio_high]`` on the
    pessimistic side (``sgn(A) * min(sgn(A) d, sgn(A) clip(d))``); the sequence ratio is the
    geometric mean ``exp(mean_t clipped d)``; the loss is ``-A_i * ratio_i`` per sequence, with
    ``A_i`` the token mean of ``advantages``, averaged over sequences with at least one valid token
    (global ``batch_num_seqs`` when given).  ``agg`` is ignored (sequence-level objective).
    Defaults 0.4 / 0.4 (paper: clip range (e^-0.4, e^0.4)).  ``weights``: each sequence's loss is
    multiplied by the geometric mean of its token weights.
    """
    d = logp - old_logp
    sgn = torch.sign(advantages)
    d_clamp = torch.clamp(d, -clip_ratio_low, clip_ratio_high)
    d_min = sgn * torch.minimum(sgn * d, sgn * d_clamp)
    ratio_seq = torch.exp(_seq_mean(d_min, mask))
    adv_seq = _seq_mean(advantages, mask)
    per_seq = -adv_seq * ratio_seq
    sw = _seq_weight(weights, mask, per_seq)
    if sw is not None:
        per_seq = per_seq * sw
    valid_seq = (mask != 0).any(-1)
    per_seq = torch.where(valid_seq, per_seq, torch.zeros_like(per_seq))
    loss = per_seq.sum() / _num_seqs(mask, batch_num_seqs, per_seq)
    clipped = (d != d_clamp).detach()
    metrics = {
        "clip_frac": _frac(clipped & (advantages != 0), mask),
        "clip_frac_pos": _frac(clipped & (advantages > 0), mask),
        "clip_frac_lower": _frac(clipped & (advantages < 0), mask),
    }
    metrics.update(_base_metrics(logp, old_logp, mask))
    return loss, metrics


# ------------------------------------------------------------------------------------------- REAL


def _group_lse_with_anchor(z: Tensor, member: Tensor, inv: Tensor, k: int, logw: Tensor | None = None):
    """Per group: ``log(1 + sum_{j in group, member} w_j exp(z_j))`` (anchor logit 0), shape [K]."""
    v = z if logw is None else z + logw
    neg_inf = torch.full_like(v, -math.inf)
    v = torch.where(member, v, neg_inf)
    gmax = torch.zeros(k, dtype=v.dtype, device=v.device).scatter_reduce(
        0, inv, v.detach(), "amax", include_self=True
    )  # includes the anchor 0
    e = torch.where(member, torch.exp(v - gmax[inv]), torch.zeros_like(v))
    s = torch.zeros(k, dtype=v.dtype, device=v.device).index_add(0, inv, e)
    return gmax + torch.log(torch.exp(-gmax) + s)


@register_policy_loss("real", trust_region=True)
def real(
    *,
    logp,
    old_logp,
    advantages,
    mask,
    agg="token-mean",
    weights=None,
    batch_num_tokens=None,
    batch_num_seqs=None,
    norm_constant=None,
    rewards,
    group,
    tau=0.5,
    num_prompts=None,
):
    """REAL (Rewards as Labels, arXiv 2602.05630, sec. 3; spec 10; authors' ``compute_policy_loss_real``).

    ``z_i = mean_t (lp - lp_old) / tau``; per prompt with positives P (R = 1) and negatives N (R = 0):
    ``L = log(1 + sum_N exp z) + log(1 + sum_P exp(-z))``; prompts lacking P or N contribute 0.  The
    batch loss is the sum over prompts divided by ``num_prompts`` (the number of prompts of the whole
    batch; default: number of distinct groups passed).  ``advantages`` and ``agg`` are ignored;
    ``rewards`` ``[B]`` (exactly 0/1) and ``group`` ``[B]`` are required hp.  ``weights``: each
    response's term inside the log-sum-exp is multiplied by the geometric mean of its token weights.
    """
    from ._utils import group_inverse

    r = torch.as_tensor(rewards, device=logp.device)
    d = logp - old_logp
    z = _seq_mean(d, mask) / tau
    inv, k = group_inverse(group, logp.shape[0], logp.device)
    valid_seq = (mask != 0).any(-1)
    pos = (r == 1) & valid_seq
    neg = (r == 0) & valid_seq
    sw = _seq_weight(weights, mask, z)
    logw = None if sw is None else torch.log(sw)
    lse_n = _group_lse_with_anchor(z, neg, inv, k, logw)
    lse_p = _group_lse_with_anchor(-z, pos, inv, k, logw)
    has_p = torch.zeros(k, dtype=torch.bool, device=z.device).index_fill(0, inv[pos], True)
    has_n = torch.zeros(k, dtype=torch.bool, device=z.device).index_fill(0, inv[neg], True)
    both = has_p & has_n
    per_prompt = torch.where(both, lse_n + lse_p, torch.zeros_like(lse_n))
    den = torch.as_tensor(k if num_prompts is None else num_prompts, dtype=z.dtype, device=z.device).clamp(min=1.0)
    loss = per_prompt.sum() / den
    metrics = {"clip_frac": 0.0, "real_active_prompt_frac": float(both.float().mean()) if k > 0 else 0.0}
    metrics.update(_base_metrics(logp, old_logp, mask))
    with torch.no_grad():
        metrics["z_mean"] = _item(z[valid_seq].mean()) if bool(valid_seq.any()) else 0.0
    return loss, metrics


# ------------------------------------------------------------------------------------------ ROVER


def _next_valid(x: Tensor, mask: Tensor) -> Tensor:
    """``out[i, t] = x[i, t']`` with t' the next valid position after t (0 if none)."""
    m = mask != 0
    b, t_len = x.shape
    out = []
    nxt = torch.zeros(b, dtype=x.dtype, device=x.device)
    for t in reversed(range(t_len)):
        out.append(nxt)
        nxt = torch.where(m[:, t], x[:, t], nxt)
    return torch.stack(out[::-1], dim=1)


@register_policy_loss("rover", trust_region=True)
def rover(
    *,
    logp,
    old_logp,
    advantages,
    mask,
    agg="token-mean",
    weights=None,
    batch_num_tokens=None,
    batch_num_seqs=None,
    norm_constant=None,
    mean_logp,
    old_mean_logp,
    rover_t=1.0,
):
    """ROVER (Random Policy Valuation, arXiv 2509.24981; spec 8.2; authors' ``compute_rover_loss``).

    ``Q_t = rover_t (lp_t - lp_old_t)``; ``V_u(s_{t+1}) = rover_t (mean_logp - old_mean_logp)`` at the
    next valid position (0 after the last valid token; masked positions are skipped as in GAE);
    target ``= A_t + sg(V_u(s_{t+1}))`` with ``A`` the (group-centred) reward passed as
    ``advantages``; per-token loss ``(Q_t - target_t)^2`` aggregated with ``agg`` (paper: token-mean).
    ``mean_logp`` / ``old_mean_logp`` ``[B, T]``: at position t, ``(1/|V|) sum_a log pi(a | s_t)``
    under the current / old policy (``logits.mean(-1) - logsumexp(logits)``), supplied by the learner.
    """
    q = rover_t * (logp - old_logp)
    v_here = rover_t * (mean_logp - old_mean_logp).detach()
    v_next = _next_valid(v_here, mask)
    target = (advantages + v_next).detach()
    per_tok = (q - target) ** 2
    loss = _agg(per_tok, mask, agg, weights, batch_num_tokens, batch_num_seqs, norm_constant)
    metrics = {"clip_frac": 0.0}
    metrics.update(_base_metrics(logp, old_logp, mask))
    with torch.no_grad():
        metrics["q_mean"] = _item(masked_mean(q.detach(), mask))
    return loss, metrics


# -------------------------------------------------------------------------------------------- TB


@register_policy_loss("tb", trust_region=True)
def trajectory_balance(
    *,
    logp,
    old_logp,
    advantages,
    mask,
    agg="token-mean",
    weights=None,
    batch_num_tokens=None,
    batch_num_seqs=None,
    norm_constant=None,
    ref_logp,
    rewards,
    group,
    beta=0.012,
):
    """Trajectory balance with a VarGrad log-partition (TBA, Bartoldson et al. 2025, arXiv
    2503.18929; spec 9.2; authors' ``tba_trainer_gsm8k.py``).

    ``res_k = LP(y_k) - LP_ref(y_k) - R_k / beta`` with sequence log-probs summed over valid tokens;
    ``log Z_hat(x) = -mean_{k in group} res_k`` (detached); loss = mean over responses of
    ``(sg(log Z_hat) + res_k)^2`` (global ``batch_num_seqs`` when given).  Off-policy valid: no
    importance ratio (``old_logp``/``advantages``/``agg`` unused).  Groups of size 1 contribute 0.
    Default ``beta = 0.012`` (authors' config default; anneal it in the trainer).  ``weights``:
    each response's squared residual is multiplied by the geometric mean of its token weights.
    """
    from ._utils import group_inverse

    m = as_float_mask(mask, logp)
    lp = masked_sum(logp, m, dim=-1)
    lp_ref = masked_sum(ref_logp.detach().to(logp.dtype), m, dim=-1)
    r = torch.as_tensor(rewards, device=logp.device).to(logp.dtype)
    res = lp - lp_ref - r / beta
    inv, k = group_inverse(group, logp.shape[0], logp.device)
    cnt = torch.zeros(k, dtype=res.dtype, device=res.device).index_add(0, inv, torch.ones_like(res))
    log_z = -(torch.zeros(k, dtype=res.dtype, device=res.device).index_add(0, inv, res.detach()) / cnt)
    per_seq = (log_z[inv] + res) ** 2
    sw = _seq_weight(weights, mask, per_seq)
    if sw is not None:
        per_seq = per_seq * sw
    valid_seq = (mask != 0).any(-1)
    per_seq = torch.where(valid_seq, per_seq, torch.zeros_like(per_seq))
    loss = per_seq.sum() / _num_seqs(mask, batch_num_seqs, per_seq)
    metrics = {"clip_frac": 0.0}
    metrics.update(_base_metrics(logp, old_logp, mask))
    with torch.no_grad():
        metrics["log_z_mean"] = _item(log_z.mean()) if k > 0 else 0.0
    return loss, metrics


# ------------------------------------------------------------------------------ verl 0.9.1: DPPO


def _dppo(kind, logp, old_logp, advantages, mask, agg, weights, batch_num_tokens, batch_num_seqs, norm_constant,
          clip_ratio_low, clip_ratio_high, clip_ratio_c, log_ratio_clamp):
    """Shared body of ``dppo_tv`` / ``dppo_kl``: ``-A sg(min(rho, c)) lp`` on the tokens whose divergence
    from ``pi_old`` is still inside the trust region in the direction the advantage pushes."""
    ratio = torch.exp(_log_ratio(logp, old_logp, log_ratio_clamp)).detach()
    weight = ratio if clip_ratio_c is None else torch.clamp(ratio, max=clip_ratio_c)
    with torch.no_grad():
        p = torch.exp(logp.detach())
        p_old = torch.exp(old_logp)
        if kind == "tv":
            keep_pos = (p - p_old) <= clip_ratio_high
            keep_neg = (p - p_old) >= -clip_ratio_low
        else:
            binary_kl = p_old * (old_logp - logp.detach()) + (1.0 - p_old) * torch.log(
                (1.0 - p_old + 1e-8) / (1.0 - p + 1e-8))
            keep_pos = (binary_kl <= clip_ratio_high) | (p <= p_old)
            keep_neg = (binary_kl <= clip_ratio_low) | (p >= p_old)
        keep = torch.where(advantages > 0, keep_pos, keep_neg)
    per_tok = -advantages * weight * logp * keep.to(logp.dtype)
    loss = _agg(per_tok, mask, agg, weights, batch_num_tokens, batch_num_seqs, norm_constant)
    truncated = (ratio > clip_ratio_c) & keep if clip_ratio_c is not None else torch.zeros_like(keep)
    metrics = {
        "clip_frac": _frac(~keep | truncated, mask),
        "divergence_masked_frac": _frac(~keep, mask),
        "clip_frac_lower": _frac(truncated, mask),
    }
    metrics.update(_base_metrics(logp, old_logp, mask))
    return loss, metrics


@register_policy_loss("dppo_tv", trust_region=True, zero_at_zero_advantage=True)
def dppo_tv(
    *,
    logp,
    old_logp,
    advantages,
    mask,
    agg="token-mean",
    weights=None,
    batch_num_tokens=None,
    batch_num_seqs=None,
    norm_constant=None,
    clip_ratio_low=0.15,
    clip_ratio_high=0.15,
    clip_ratio_c=20.0,
    log_ratio_clamp=LOG_RATIO_CLAMP,
):
    """DPPO-Binary-TV (Qi et al. 2026, "Rethinking the Trust Region in LLM Reinforcement Learning", arXiv
    2602.04879; verl 0.9.1 ``verl/trainer/ppo/core_algos.py``, ``compute_policy_loss_dppo_tv``).

    Per token ``-A * sg(min(rho, clip_ratio_c)) * lp * M`` with ``rho = exp(lp - lp_old)`` (log clamped to
    +-``log_ratio_clamp``) and the detached trust-region mask ``M``: for ``A > 0`` keep the token while
    ``pi - pi_old <= clip_ratio_high``, otherwise while ``pi - pi_old >= -clip_ratio_low`` (``pi = exp(lp)``:
    the binary total-variation distance of the sampled token, in probability units, not a ratio).  The
    gradient is ``-A sg(min(rho, c)) grad lp`` = the truncated-IS policy gradient, cut once the token's
    probability has moved by more than the bound in the direction ``A`` pushes.  Defaults: bounds 0.15
    (verl's DPPO recipe ``examples/dppo_trainer``), ``clip_ratio_c = 20`` (the loss function's own default;
    the paper recommends a large truncation, the recipe sets 10000; verl's generic ``ActorConfig`` default
    would give 3.0).  ``clip_ratio_c=None`` turns the truncation off.  Metrics: ``clip_frac`` (masked or
    truncated), ``divergence_masked_frac`` (verl ``pg_clipfrac``), ``clip_frac_lower`` (truncated and kept,
    verl ``pg_clipfrac_lower``).
    """
    return _dppo("tv", logp, old_logp, advantages, mask, agg, weights, batch_num_tokens, batch_num_seqs,
                 norm_constant, clip_ratio_low, clip_ratio_high, clip_ratio_c, log_ratio_clamp)


@register_policy_loss("dppo_kl", trust_region=True, zero_at_zero_advantage=True)
def dppo_kl(
    *,
    logp,
    old_logp,
    advantages,
    mask,
    agg="token-mean",
    weights=None,
    batch_num_tokens=None,
    batch_num_seqs=None,
    norm_constant=None,
    clip_ratio_low=0.05,
    clip_ratio_high=0.05,
    clip_ratio_c=20.0,
    log_ratio_clamp=LOG_RATIO_CLAMP,
):
    """DPPO-Binary-KL (arXiv 2602.04879; verl 0.9.1 ``verl/trainer/ppo/core_algos.py``,
    ``compute_policy_loss_dppo_kl``).

    As ``dppo_tv`` with the binary KL of the sampled token as divergence,
    ``D = p_old log(p_old / p) + (1 - p_old) log((1 - p_old + 1e-8) / (1 - p + 1e-8))``: for ``A > 0`` the
    token is kept while ``D <= clip_ratio_high`` or ``p <= p_old``, otherwise while ``D <= clip_ratio_low``
    or ``p >= p_old``.  Defaults: bounds 0.05 (verl's DPPO recipe), ``clip_ratio_c = 20``.
    """
    return _dppo("kl", logp, old_logp, advantages, mask, agg, weights, batch_num_tokens, batch_num_seqs,
                 norm_constant, clip_ratio_low, clip_ratio_high, clip_ratio_c, log_ratio_clamp)


# ------------------------------------------------------------------------------- verl 0.9.1: DRO


@register_policy_loss("dro", trust_region=True)
def dro(
    *,
    logp,
    old_logp,
    advantages,
    mask,
    agg="token-mean",
    weights=None,
    batch_num_tokens=None,
    batch_num_seqs=None,
    norm_constant=None,
    dro_beta=None,
):
    """DRO, Direct Reward Optimisation with a quadratic log-ratio penalty (verl 0.9.1
    ``verl/trainer/ppo/core_algos.py``, ``compute_policy_loss_dro``, and ``docs/algo/dro.md``).

    Per token ``-(lp * A - (dro_beta / 2) (lp - lp_old)^2)`` (no ratio, no clamp); its gradient
    ``-(A - dro_beta * log rho) grad lp`` is the policy term of DRO's mean-squared objective (Richemond et
    al. 2024, arXiv 2405.19107, with ``pi_old`` in place of the reference policy; verl's docs do not name
    the paper).  ``dro_beta`` is required and must be > 0 (verl raises the same way).  Each token's
    objective is maximal at ``log rho = A / dro_beta``: a soft trust region around ``pi_old``.  The
    penalty acts whatever ``A`` is, so a zero-advantage row still has a gradient once ``pi != pi_old``.
    """
    if dro_beta is None or not dro_beta > 0:
        raise ValueError(f"dro needs dro_beta > 0 (policy_loss_params.dro_beta), got {dro_beta!r}")
    d = logp - old_logp
    per_tok = -(logp * advantages - 0.5 * dro_beta * d * d)
    loss = _agg(per_tok, mask, agg, weights, batch_num_tokens, batch_num_seqs, norm_constant)
    metrics = {"clip_frac": 0.0}
    metrics.update(_base_metrics(logp, old_logp, mask))
    return loss, metrics


# ------------------------------------------------------------------------ verl 0.9.1: bypass mode


@register_policy_loss("bypass_mode")
def bypass_mode(
    *,
    logp,
    old_logp,
    advantages,
    mask,
    agg="token-mean",
    weights=None,
    batch_num_tokens=None,
    batch_num_seqs=None,
    norm_constant=None,
    loss_type="ppo_clip",
    rollout_is=None,
    rollout_is_threshold=2.0,
    rollout_is_batch_normalize=False,
    rollout_rs=None,
    rollout_rs_threshold=None,
    clip_ratio_low=0.2,
    clip_ratio_high=0.2,
    clip_ratio_c=3.0,
):
    """verl's bypass mode (verl 0.9.1 ``verl/trainer/ppo/core_algos.py``, ``compute_policy_loss_bypass_mode``
    with ``compute_policy_loss_reinforce`` / ``compute_policy_loss_vanilla``, and
    ``verl/trainer/ppo/rollout_corr_helper.py``, ``compute_rollout_correction_and_rejection_mask``).

    ``old_logp`` IS the rollout engine's log-probs (no recomputed behaviour policy).  With
    ``log_ratio = sg(lp) - old_logp``:

    * rejection (``rollout_rs``: comma-separated options of :data:`rlvr.algorithms.mismatch.ROLLOUT_RS_OPTIONS`,
      all must pass; ``rollout_rs_threshold``: one number or one per option) shrinks the mask to the kept
      tokens, and that mask is the one aggregated (its count is the ``token-mean`` denominator unless
      ``batch_num_tokens`` is given);
    * IS weights (``rollout_is`` = ``"token"`` / ``"sequence"`` / None; ``rollout_is_threshold`` a number (TIS)
      or ``"lower_upper"`` (IcePop); ``rollout_is_batch_normalize``) from :func:`rlvr.algorithms.mismatch.rollout_is_weights`;
    * ``loss_type="ppo_clip"``: the ``vanilla`` loss against the rollout policy (``clip_ratio_low``,
      ``clip_ratio_high``, ``clip_ratio_c``); the IS weights are not applied (the PPO ratio already is
      ``pi / pi_rollout``), they only feed the metrics;
    * ``loss_type="reinforce"``: ``-A * lp * w`` (``w`` the IS weights, 1 when ``rollout_is`` is None).

    ``weights`` (rlvr's per-token weights) multiply the per-token loss as in every loss; pair bypass mode
    with ``mismatch: none`` (verl ignores incoming rollout IS weights here).  A batch with no valid token
    gives loss 0 (verl raises).  Not in ``TRUST_REGION_LOSSES`` (``reinforce`` without ``rollout_is`` is an
    unbounded policy gradient) nor in ``ZERO_AT_ZERO_ADVANTAGE_LOSSES`` (batch normalisation couples the rows).
    """
    if loss_type not in ("ppo_clip", "reinforce"):
        raise ValueError(f"bypass_mode loss_type must be 'ppo_clip' or 'reinforce', got {loss_type!r}")
    m = as_float_mask(mask, logp)
    rollout_logp = old_logp
    eff = m
    w = None
    extra: dict[str, float] = {}
    if bool((m != 0).any()):
        with torch.no_grad():
            log_ratio = logp.detach() - rollout_logp
            if rollout_is is not None and rollout_is_threshold is not None:
                w = rollout_is_weights(log_ratio, m, rollout_is, rollout_is_threshold, rollout_is_batch_normalize)
                extra["rollout_is_mean"] = _item(masked_mean(w, m))
            if rollout_rs is not None:
                keep = torch.ones_like(m)
                for option, threshold in parse_rollout_rs(rollout_rs, rollout_rs_threshold):
                    kept = rollout_rs_keep(log_ratio, m, option, threshold)
                    extra[f"rollout_rs_{option}_masked_fraction"] = _item(masked_mean(1.0 - kept, m))
                    keep = keep * kept
                eff = m * keep
                extra["rollout_rs_masked_fraction"] = _item(masked_mean(1.0 - keep, m))
    if loss_type == "ppo_clip":
        loss, metrics = vanilla(logp=logp, old_logp=rollout_logp, advantages=advantages, mask=eff, agg=agg,
                                weights=weights, batch_num_tokens=batch_num_tokens, batch_num_seqs=batch_num_seqs,
                                norm_constant=norm_constant, clip_ratio_low=clip_ratio_low,
                                clip_ratio_high=clip_ratio_high, clip_ratio_c=clip_ratio_c)
    else:
        per_tok = -advantages * logp if w is None else -advantages * logp * w
        loss = _agg(per_tok, eff, agg, weights, batch_num_tokens, batch_num_seqs, norm_constant)
        metrics = {"clip_frac": 0.0}
        metrics.update(_base_metrics(logp, rollout_logp, eff))
    metrics.update(extra)
    return loss, metrics


# ------------------------------------------------------------------------------------------ entry


def policy_loss(
    name: str,
    *,
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    agg: str = "token-mean",
    weights: Tensor | None = None,
    batch_num_tokens=None,
    batch_num_seqs=None,
    norm_constant=None,
    **hp,
) -> tuple[Tensor, dict[str, float]]:
    """Compute the named policy loss: ``(loss scalar tensor, metrics dict[str, float])``.

    ``old_logp`` and ``advantages`` are treated as constants (detached here).  ``hp`` are the
    keyword hyper-parameters of the registered loss (unknown ones raise ``TypeError``).
    """
    fn = lookup(POLICY_LOSSES, name, "policy loss")
    if logp.shape != mask.shape or old_logp.shape != mask.shape:
        raise ValueError("logp, old_logp and mask must all have shape [B, T]")
    if advantages.shape != mask.shape:
        raise ValueError(f"advantages must have shape {tuple(mask.shape)}, got {tuple(advantages.shape)}")
    return fn(
        logp=logp,
        old_logp=old_logp.detach(),
        advantages=advantages.detach(),
        mask=mask,
        agg=agg,
        weights=weights,
        batch_num_tokens=batch_num_tokens,
        batch_num_seqs=batch_num_seqs,
        norm_constant=norm_constant,
        **hp,
    )
