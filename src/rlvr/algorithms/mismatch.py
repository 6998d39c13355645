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

* verl 0.9.1 rejection sampling (``rollout_rs``), one registry entry per option: ``token_k2``, ``token_k3``,
  ``seq_sum_k2``, ``seq_sum_k3``, ``seq_mean_k2``, ``seq_mean_k3``, ``seq_max_k2``, ``seq_max_k3``
  (:func:`rollout_rs_keep`; parameter ``rollout_rs_threshold``): a 0/1 keep mask.  ``tis`` / ``mis`` take
  ``batch_normalize`` (verl ``rollout_is_batch_normalize``, :func:`batch_normalize_weights`).

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
    old_logp: Tensor, rollout_logp: Tensor, mask: Tensor, *, level: str = "token", upper: float = 2.0,
    batch_normalize: bool = False,
) -> Tensor:
    """TIS weights ``min(w, upper)`` (verl ``rollout_is_threshold`` default 2.0).

    ``batch_normalize`` (verl 0.9.1 ``rollout_is_batch_normalize``): divide by the batch mean of the
    weights, see :func:`batch_normalize_weights`.
    """
    m = as_float_mask(mask, old_logp)
    w = torch.exp(_log_w(old_logp, rollout_logp, mask, level))
    w = torch.clamp(w, max=upper) * m
    return batch_normalize_weights(w, mask, level) if batch_normalize else w


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
    batch_normalize: bool = False,
) -> Tensor:
    """MIS weights: ``w`` (``keep_ratio``) or 1 where ``lower <= w <= upper``, else 0.

    ``lower`` defaults to ``1 / upper`` (verl).  At ``sequence``/``geometric`` level a whole
    response is kept or dropped.  With ``keep_ratio`` this is verl's IcePop form
    (``rollout_is_threshold="lower_upper"``).  ``batch_normalize`` (verl 0.9.1
    ``rollout_is_batch_normalize``): divide by the batch mean of the weights (dropped tokens count as
    0 in it), see :func:`batch_normalize_weights`.
    """
    if lower is None:
        lower = 1.0 / upper
    m = as_float_mask(mask, old_logp)
    w = torch.exp(_log_w(old_logp, rollout_logp, mask, level))
    keep = (w >= lower) & (w <= upper)
    val = w if keep_ratio else torch.ones_like(w)
    w = torch.where(keep, val, torch.zeros_like(val)) * m
    return batch_normalize_weights(w, mask, level) if batch_normalize else w


def batch_normalize_weights(weights: Tensor, mask: Tensor, level: str = "token") -> Tensor:
    """IS weights divided by their batch mean, so that they average 1 (verl 0.9.1
    ``verl/trainer/ppo/rollout_corr_helper.py``, ``compute_rollout_correction_weights`` with
    ``rollout_is_batch_normalize=True``).

    ``token`` level: the mean over all valid tokens.  ``sequence`` / ``geometric`` level (one weight per
    response): the mean over responses with at least one valid token of each response's token-mean
    weight.  When that mean is not above 1e-8 the weights are returned unchanged (verl).  The mean is
    over the tensors passed (rlvr's learner computes mismatch weights once for the whole batch; verl
    averages per micro-batch, across data-parallel ranks).
    """
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; known: {', '.join(LEVELS)}")
    m = as_float_mask(mask, weights)
    w = weights.detach()
    if level == "token":
        mean = masked_sum(w, m) / m.sum().clamp(min=1.0)
    else:
        per_seq = masked_sum(w, m, dim=-1) / m.sum(-1).clamp(min=1.0)
        has = (m.sum(-1) > 0).to(w.dtype)
        mean = (per_seq * has).sum() / has.sum().clamp(min=1.0)
    return w / mean if bool(mean > 1e-8) else w


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


# --------------------------------------------------- verl 0.9.1 rejection sampling (rollout_rs)

#: The rejection options rlvr implements (verl 0.9.1 also has token_k1, seq_sum_k1, seq_mean_k1).
ROLLOUT_RS_OPTIONS = ("token_k2", "token_k3", "seq_sum_k2", "seq_sum_k3", "seq_mean_k2", "seq_mean_k3",
                      "seq_max_k2", "seq_max_k3")


def _threshold(value, option: str) -> float:
    if value is None:
        raise ValueError(f"{option} needs rollout_rs_threshold (a positive number)")
    if isinstance(value, bool):
        raise TypeError(f"rollout_rs_threshold for {option} must be a number, got {value!r}")
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"rollout_rs_threshold for {option} must be a positive number, got {value!r}") from None
    if not t > 0:
        raise ValueError(f"rollout_rs_threshold for {option} must be > 0, got {value!r}")
    return t


def rollout_rs_keep(log_ratio: Tensor, mask: Tensor, option: str, threshold) -> Tensor:
    """0/1 keep mask ``[B, T]`` (dtype of ``log_ratio``, 0 at masked positions) of one verl rejection
    option (verl 0.9.1 ``verl/trainer/ppo/rollout_corr_helper.py``, ``compute_rollout_rejection_mask``).

    ``log_ratio`` = log pi_train - log pi_rollout, clamped to [-20, 20]; per token
    ``k2 = log_ratio^2 / 2`` and ``k3 = exp(log_ratio) - 1 - log_ratio``.  ``token_kX`` keeps the tokens
    with ``kX <= threshold``; ``seq_sum_kX`` / ``seq_mean_kX`` / ``seq_max_kX`` keep (or drop) the whole
    response by the sum / mean / max of ``kX`` over its valid tokens (0 for an empty response).
    """
    if option not in ROLLOUT_RS_OPTIONS:
        raise ValueError(f"unknown rejection option {option!r}; known: {', '.join(ROLLOUT_RS_OPTIONS)}")
    t = _threshold(threshold, option)
    m = as_float_mask(mask, log_ratio)
    lr = torch.clamp(log_ratio.detach(), -_CLAMP, _CLAMP)
    stat = 0.5 * lr * lr if option.endswith("k2") else torch.exp(lr) - 1.0 - lr
    if option.startswith("token_"):
        keep = stat <= t
    else:
        if option.startswith("seq_sum_"):
            seq = masked_sum(stat, m, dim=-1)
        elif option.startswith("seq_mean_"):
            seq = masked_sum(stat, m, dim=-1) / m.sum(-1).clamp(min=1.0)
        else:  # seq_max_
            seq = torch.where(m != 0, stat, torch.full_like(stat, -torch.inf)).amax(-1)
            seq = torch.where(torch.isinf(seq), torch.zeros_like(seq), seq)
        keep = (seq <= t).unsqueeze(-1).expand_as(stat)
    return keep.to(m.dtype) * m


def _make_rs(option: str):
    level = "token" if option.startswith("token_") else "sequence"
    kind = option[-2:]
    agg = {"token": "", "sequence": option.split("_")[1]}[level]

    def rs(old_logp: Tensor, rollout_logp: Tensor, mask: Tensor, *, rollout_rs_threshold) -> Tensor:
        return rollout_rs_keep(old_logp - rollout_logp, mask, option, rollout_rs_threshold)

    what = f"the token's {kind}" if level == "token" else f"the {agg} of {kind} over the response's valid tokens"
    rs.__name__ = f"rollout_rs_{option}"
    rs.__qualname__ = rs.__name__
    rs.__doc__ = (f"verl 0.9.1 rejection option ``{option}`` (``rollout_corr_helper.compute_rollout_rejection_mask``): "
                  f"0/1 keep mask, 1 where {what} is <= ``rollout_rs_threshold``; "
                  f"``log_ratio = old_logp - rollout_logp`` (see :func:`rollout_rs_keep`).")
    return rs


for _option in ROLLOUT_RS_OPTIONS:
    register_mismatch_correction(_option, bounded=True)(_make_rs(_option))
del _option


def parse_rollout_is_threshold(spec) -> tuple[float, float | None]:
    """verl's ``rollout_is_threshold``: a number (TIS upper bound; lower None) or a string
    ``"lower_upper"`` (IcePop: weights outside ``[lower, upper]`` are 0).  Returns ``(upper, lower)``."""
    if isinstance(spec, bool) or spec is None:
        raise TypeError(f"rollout_is_threshold must be a number or a 'lower_upper' string, got {spec!r}")
    lower = None
    if isinstance(spec, str):
        text = spec.strip()
        try:
            if "_" in text:
                lo, up = text.split("_", 1)
                lower, upper = float(lo), float(up)
            else:
                upper = float(text)
        except ValueError:
            raise ValueError(f"invalid rollout_is_threshold {spec!r}") from None
    else:
        upper = float(spec)
    if not upper > 0 or (lower is not None and not lower > 0):
        raise ValueError(f"rollout_is_threshold bounds must be > 0, got {spec!r}")
    if lower is not None and lower > upper:
        raise ValueError(f"rollout_is_threshold lower bound exceeds the upper one: {spec!r}")
    return upper, lower


def rollout_is_weights(log_ratio: Tensor, mask: Tensor, rollout_is: str, rollout_is_threshold=2.0,
                       rollout_is_batch_normalize: bool = False) -> Tensor:
    """verl 0.9.1 rollout IS weights (``rollout_corr_helper.compute_rollout_correction_weights``), detached,
    0 at masked positions: ``rollout_is`` = ``"token"`` (``exp(log_ratio)``) or ``"sequence"``
    (``exp(sum_t log_ratio)`` broadcast), log clamped to [-20, 20]; truncated at the upper bound (TIS) or
    zeroed outside ``[lower, upper]`` (IcePop, threshold ``"lower_upper"``); then optionally divided by the
    batch mean (:func:`batch_normalize_weights`)."""
    if rollout_is not in ("token", "sequence"):
        raise ValueError(f"rollout_is must be 'token' or 'sequence', got {rollout_is!r}")
    upper, lower = parse_rollout_is_threshold(rollout_is_threshold)
    m = as_float_mask(mask, log_ratio)
    lr = log_ratio.detach()
    if rollout_is == "sequence":
        lr = masked_sum(lr, m, dim=-1).unsqueeze(-1).expand_as(lr)
    w = torch.exp(torch.clamp(lr, -_CLAMP, _CLAMP)) * m
    if lower is None:
        w = torch.clamp(w, max=upper)
    else:
        w = torch.where((w >= lower) & (w <= upper), w, torch.zeros_like(w))
    return batch_normalize_weights(w, mask, rollout_is) if rollout_is_batch_normalize else w


def parse_rollout_rs(rollout_rs: str, rollout_rs_threshold) -> list[tuple[str, float]]:
    """verl's ``rollout_rs`` (comma-separated options, all must pass) and ``rollout_rs_threshold`` (one
    number shared by every option, or a comma-separated string with one per option): ``[(option, t)]``,
    duplicates removed in order."""
    if not isinstance(rollout_rs, str):
        raise TypeError(f"rollout_rs must be a string of comma-separated options, got {rollout_rs!r}")
    options = list(dict.fromkeys(o.strip() for o in rollout_rs.split(",") if o.strip()))
    if not options:
        raise ValueError("rollout_rs names no option")
    if rollout_rs_threshold is None:
        raise ValueError("rollout_rs needs rollout_rs_threshold")
    if isinstance(rollout_rs_threshold, str):
        specs = [x.strip() for x in rollout_rs_threshold.split(",") if x.strip()]
    else:
        specs = [rollout_rs_threshold]
    if len(specs) == 1:
        specs = specs * len(options)
    if len(specs) != len(options):
        raise ValueError(f"rollout_rs_threshold gives {len(specs)} values for {len(options)} options")
    return [(o, _threshold(t, o)) for o, t in zip(options, specs)]


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
