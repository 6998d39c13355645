"""Exploration and entropy control: per-token loss weights, exploration bonuses, controllers.

Token weights (registry ``TOKEN_WEIGHTS``, :func:`token_weights`) multiply the per-token policy
loss of ANY policy loss (through its ``weights`` argument, like mismatch weights); each is detached:

* ``opsm``: the off-policy sequence mask of DeepSeek-V3.2 (arXiv 2512.02556, eq. 9; TRL
  ``off_policy_mask_threshold``): drop a response when ``A < 0`` and its mean token
  ``log pi_behav - log pi_theta`` exceeds ``threshold``.
* ``top_entropy``: keep only the top-``quantile`` share of valid tokens by entropy ("Beyond the 80/20
  rule", Wang et al. 2025, arXiv 2506.01939; TRL ``top_entropy_quantile``).
* ``steer``: STEER token re-weighting (arXiv 2510.10150, spec 12.1; authors' ``compute_token_weights``).

Controllers and bonuses (pure update rules; the stateful wrappers are in ``rlvr.control.controllers``
and ``rlvr.control.callbacks``): :func:`adaptive_kl_update` (Ziegler et al. 2019, arXiv 1909.08593
eq. 2; verl ``AdaptiveKLController``), :func:`adaptive_entropy_update` (Skywork-OR1, arXiv
2505.22312, as TRL ``use_adaptive_entropy``), :func:`imentor_bonus` (i-MENTOR, arXiv 2505.17621,
spec 12.3), :func:`arm_advantages` / :func:`low_prob_confidence` (ARM / ProGRPO, arXiv 2602.05281,
spec 12.2, inferred), :func:`dormant_scores` / :func:`grama_scores` (spec 19).
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import Tensor

from ._utils import as_float_mask, group_inverse, group_sum, masked_sum
from .registry import TOKEN_WEIGHTS, lookup, register_token_weight


# ------------------------------------------------------------------------------ token weights


@register_token_weight("opsm", "off_policy_mask")
def opsm(*, advantages, logp, old_logp, mask, entropy=None, rollout_logp=None, threshold=0.5,
         behaviour="rollout"):
    """Off-policy sequence mask (DeepSeek-V3.2, arXiv 2512.02556, eq. 9; TRL ``get_off_policy_mask``):
    ``keep_i = (A_i >= 0) or mean_t (lp_behav - sg(lp)) <= threshold``, as 0/1 per token.
    ``behaviour="rollout"``: ``lp_behav`` = the engine's ``rollout_logp`` (TRL with vLLM), ``"old"``:
    the trainer's ``old_logp`` (TRL without vLLM). The sign test uses each token's advantage (the
    outcome advantage of its response). TRL's example threshold: 0.5."""
    behav = rollout_logp if (behaviour == "rollout" and rollout_logp is not None) else old_logp
    if behaviour not in ("rollout", "old"):
        raise ValueError("opsm behaviour must be 'rollout' or 'old'")
    m = as_float_mask(mask, logp)
    kl = masked_sum(behav.detach() - logp.detach(), m, dim=-1) / m.sum(-1).clamp(min=1.0)
    keep = (advantages >= 0) | (kl <= threshold).unsqueeze(-1)
    return keep.to(logp.dtype)


@register_token_weight("top_entropy", "high_entropy", entropy_bonus=True)
def top_entropy(*, advantages, logp, old_logp, mask, entropy, rollout_logp=None, quantile=0.2):
    """Keep the tokens whose entropy is at least the ``1 - quantile`` quantile of the valid tokens'
    entropies (TRL ``get_high_entropy_mask`` with ``top_entropy_quantile = quantile``; the 80/20 paper
    keeps the top 20%). ``quantile = 1`` keeps every token; ``0`` only the highest. The quantile is
    over the tokens passed (TRL: the micro-batch, gathered over ranks); ``torch.quantile``'s linear
    interpolation, as TRL."""
    if entropy is None:
        raise ValueError("top_entropy needs the per-token entropy")
    valid = mask != 0
    ent = entropy.detach()
    if not bool(valid.any()):
        return torch.zeros_like(logp)
    thr = torch.quantile(ent[valid].to(torch.promote_types(ent.dtype, torch.float32)), 1.0 - quantile)
    return ((ent * valid.to(ent.dtype) >= thr) & valid).to(logp.dtype)


@register_token_weight("steer")
def steer(*, advantages, logp, old_logp, mask, entropy, rollout_logp=None, w_min=0.8, w_max=1.0,
          mapping="exp"):
    """STEER (arXiv 2510.10150, spec 12.1; authors' ``compute_token_weights``, all detached):
    ``p = clamp(exp(lp), 1e-8, 1 - 1e-8)``, ``Omega = (A / p_old) p (1 - p) (log p + H)`` (non-finite
    -> 0); exponential mapping ``k = -ln(w_min) / max(max|Omega|, 0.02)``, ``w = clamp(exp(-k|Omega|),
    w_min, 1)``; linear mapping ``w = w_max - (|Omega| - min)(w_max - w_min)/(max - min)``
    (``(w_min + w_max)/2`` when all equal). max/min over the valid tokens passed (a micro-batch, as
    the authors'). Defaults: released runs (w_min 0.8, w_max 1.0, exp)."""
    if entropy is None:
        raise ValueError("steer needs the per-token entropy")
    with torch.no_grad():
        valid = mask != 0
        p = torch.exp(logp.detach()).clamp(1e-8, 1 - 1e-8)
        p_old = torch.exp(old_logp.detach())
        omega = (advantages / p_old) * p * (1 - p) * (torch.log(p) + entropy.detach())
        omega = torch.where(torch.isfinite(omega), omega, torch.zeros_like(omega)).abs()
        if not bool(valid.any()):
            return torch.ones_like(logp)
        om = omega[valid]
        if mapping == "exp":
            k = -math.log(w_min) / max(float(om.max()), 0.02)
            w = torch.clamp(torch.exp(-k * omega), w_min, 1.0)
        elif mapping == "linear":
            lo, hi = float(om.min()), float(om.max())
            if hi == lo:
                w = torch.full_like(omega, 0.5 * (w_min + w_max))
            else:
                w = torch.clamp(w_max - (omega - lo) * (w_max - w_min) / (hi - lo), w_min, w_max)
        else:
            raise ValueError("steer mapping must be 'exp' or 'linear'")
        return torch.where(valid, w, torch.ones_like(w)).to(logp.dtype)


def token_weights(name: str, *, advantages, logp, old_logp, mask, entropy=None, rollout_logp=None, **hp) -> Tensor:
    """The named per-token weight ``[B, T]`` (detached) to multiply into a policy loss's ``weights``."""
    fn = lookup(TOKEN_WEIGHTS, name, "token weight")
    w = fn(advantages=advantages.detach(), logp=logp, old_logp=old_logp.detach(), mask=mask, entropy=entropy,
           rollout_logp=None if rollout_logp is None else rollout_logp.detach(), **hp)
    return w.detach()


def token_weight_params(name: str) -> dict:
    """The hyper-parameters (with defaults) of a token weight."""
    fn = lookup(TOKEN_WEIGHTS, name, "token weight")
    skip = {"advantages", "logp", "old_logp", "mask", "entropy", "rollout_logp"}
    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if k not in skip}


# --------------------------------------------------------------------------------- controllers


def adaptive_kl_update(coef: float, current_kl: float, target: float, horizon: float, n_steps: int) -> float:
    """Adaptive KL coefficient (Ziegler et al. 2019, arXiv 1909.08593, eq. 2; verl
    ``AdaptiveKLController.update``): ``e = clip(KL / target - 1, -0.2, 0.2)``,
    ``coef <- coef * (1 + e * n_steps / horizon)`` (verl passes the batch size as ``n_steps``)."""
    err = min(max(current_kl / target - 1.0, -0.2), 0.2)
    return coef * (1.0 + err * n_steps / horizon)


def adaptive_entropy_update(coef: float, entropy: float, target: float, delta: float, coef_min: float,
                            coef_max: float) -> float:
    """Adaptive entropy coefficient (Skywork-OR1 arXiv 2505.22312 sec. 3.2; TRL ``use_adaptive_entropy``):
    ``coef + delta`` (at most ``coef_max``) when the step's mean token entropy is ``<= target``, else
    ``coef - delta`` (at least ``coef_min``). TRL applies the coefficient on the next step only while
    the last entropy is ``<= target`` (:func:`adaptive_entropy_applied`)."""
    if entropy <= target:
        return min(coef + delta, coef_max)
    return max(coef - delta, coef_min)


def adaptive_entropy_applied(coef: float, last_entropy: float, target: float) -> float:
    """The coefficient TRL applies: ``coef`` if the last measured entropy is ``<= target``, else 0
    (before the first measurement, ``last_entropy = inf``: 0)."""
    return coef if last_entropy <= target else 0.0


# ---------------------------------------------------------------------------- i-MENTOR bonus


def imentor_bonus(errors: Tensor, score: Tensor, scale: float) -> Tensor:
    """i-MENTOR error-conditioned exploration bonus (arXiv 2505.17621, spec 12.3; authors' code):
    ``b = 0.5 (e - min e) / (max e - min e)`` over the batch (0 when all errors are equal: the
    release divides by zero there), ``r_exp = b * scale`` where the task score ``< 1``, else 0.
    ``scale`` = ``s0 / s1`` of the decaying schedule. Added to the advantage AFTER normalisation."""
    e = torch.as_tensor(errors, dtype=torch.get_default_dtype())
    span = e.max() - e.min() if e.numel() else torch.zeros(())
    b = torch.where(span > 0, 0.5 * (e - e.min()) / torch.where(span > 0, span, torch.ones_like(span)),
                    torch.zeros_like(e))
    return torch.where(torch.as_tensor(score) < 1, b * scale, torch.zeros_like(b))


# ------------------------------------------------------------------------- ARM / ProGRPO


def low_prob_confidence(logp: Tensor, mask: Tensor, quantile: float = 0.2) -> Tensor:
    """Confidence of each row on its least likely tokens (ARM / ProGRPO's "T_low", arXiv 2602.05281,
    spec 12.2 -- INFERRED, the paper's definition was not found): ``c = exp(mean of the
    ceil(quantile * n) lowest log-probs among the row's n valid tokens)``, the inverse perplexity of
    the low-probability positions, in (0, 1]. A row without valid tokens gets 1. ``quantile = 0.2``
    (the secondary source's "about 20% least likely tokens"). Detached."""
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must lie in (0, 1], got {quantile!r}")
    lp = logp.detach().to(torch.promote_types(logp.dtype, torch.float32))
    valid = mask != 0
    n = valid.sum(-1)
    k = torch.clamp(torch.ceil(quantile * n.to(lp.dtype)), min=1).to(torch.long)
    srt = torch.sort(torch.where(valid, lp, torch.full_like(lp, float("inf"))), dim=-1).values
    take = torch.arange(lp.shape[-1], device=lp.device).unsqueeze(0) < k.unsqueeze(-1)
    low = torch.where(take & torch.isfinite(srt), srt, torch.zeros_like(srt)).sum(-1) / k.to(lp.dtype)
    return torch.where(n > 0, torch.exp(low), torch.ones_like(low))


def arm_advantages(advantages: Tensor, rewards: Tensor, group, prompt_conf: Tensor, answer_conf: Tensor,
                   alpha: float = 0.1) -> Tensor:
    """ARM / ProGRPO advantage re-weighting (arXiv 2602.05281, spec 12.2; formula shape from a secondary
    review): ``A~_i = A_i`` in a group whose rewards are all 0, else ``A_i + alpha (c(q) - c(o_i | q))``
    (broadcast to the row's tokens; ``advantages`` ``[B]`` or ``[B, T]``). ``prompt_conf`` ``[B]`` is
    ``c(q)`` of each row's prompt, ``answer_conf`` ``[B]`` ``c(o_i | q)``: an over-confident response
    (``c(o|q) > c(q)``) loses advantage, a low-confidence one gains. ``alpha`` is NOT from the paper
    (not found); 0.1 is ours."""
    r = torch.as_tensor(rewards)
    b = r.shape[0]
    inv, k = group_inverse(group, b, r.device)
    nonzero = group_sum((r != 0).to(torch.float64), inv, k) > 0
    shift = alpha * (torch.as_tensor(prompt_conf) - torch.as_tensor(answer_conf)).to(advantages.dtype)
    shift = torch.where(nonzero[inv], shift, torch.zeros_like(shift))
    return advantages + (shift.unsqueeze(-1) if advantages.dim() == 2 else shift)


# --------------------------------------------------------------------------------- plasticity


def dormant_scores(mean_abs_activation: Tensor, tau: float = 0.0) -> tuple[Tensor, float]:
    """tau-dormant neurons (Sokar et al. 2023, ReDo, arXiv 2302.12902; spec 19.1): ``s_i = d_i /
    (sum_k d_k / H + 1e-8)`` with ``d_i = E|h_i|`` over the batch; neuron i is dormant iff
    ``s_i <= tau``. Returns ``(s [H], dormant ratio)``."""
    d = torch.as_tensor(mean_abs_activation, dtype=torch.float64)
    s = d / (d.sum() / d.numel() + 1e-8)
    return s, float((s <= tau).to(torch.float64).mean())


def grama_scores(grad_magnitude: Tensor, tau: float = 0.0) -> tuple[Tensor, float]:
    """GraMa (arXiv 2505.24061, spec 19.2): ``G_i = g_i / (mean_k g_k + 1e-8)`` with ``g_i`` the
    neuron's gradient magnitude (here: mean |dL/dW| over its incoming weights, the optax variant);
    inactive iff ``G_i <= tau``. Returns ``(G [H], inactive ratio)``."""
    g = torch.as_tensor(grad_magnitude, dtype=torch.float64)
    s = g / (g.sum() / g.numel() + 1e-8)
    return s, float((s <= tau).to(torch.float64).mean())
