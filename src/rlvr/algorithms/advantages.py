"""Advantage estimators.

Every estimator is registered in ``ADVANTAGE_ESTIMATORS`` and called through
:func:`compute_advantages`, which returns ``(advantages [B, T], returns [B, T] or None)``.

Common conventions
------------------
* Outcome reward: ``rewards`` ``[B]``; when it is ``None`` the outcome reward is
  ``(token_rewards * mask).sum(-1)`` (verl sums ``token_level_rewards``).
* Outcome advantages are broadcast to tokens and multiplied by the mask: ``A[i,t] = A_i * m[i,t]``.
* ``group`` ``[B]`` ids need not be contiguous nor of equal size; statistics use index/scatter ops.
  ``group=None`` treats the whole batch as ONE group.
* Group statistics: mean and Bessel-corrected (n-1) std (spec 0.2).
* Singleton groups follow verl: mean = 0 and std = 1, so GRPO gives ``R / (1 + eps)`` (Dr. GRPO,
  RLOO, OPO, ... give the raw reward ``R``).  TRL's alternative (advantage 0) is not used.
* Zero-variance groups (size >= 2, all rewards exactly equal) get advantage exactly 0 (avoids
  floating-point residue of ``R - mean``).
* Returned ``returns`` is ``None`` for critic-free estimators except where the reference
  implementation defines returns (``gae``, ``reinforce_plus_plus``, ``remax``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._utils import (
    as_float_mask,
    group_inverse,
    group_stats,
    group_sum,
    masked_whiten,
    outcome_to_token_rewards,
)
from .registry import ADVANTAGE_ESTIMATORS, lookup, register_advantage_estimator


def _float(x: Tensor, like: Tensor | None = None) -> Tensor:
    x = torch.as_tensor(x)
    if like is not None and like.is_floating_point():
        return x.to(like.dtype)
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())


def _outcome(rewards, token_rewards, mask) -> Tensor:
    if rewards is not None:
        r = _float(rewards)
        if r.dim() != 1 or r.shape[0] != mask.shape[0]:
            raise ValueError(f"rewards must have shape [B]={mask.shape[0]}, got {tuple(r.shape)}")
        return r
    if token_rewards is None:
        raise ValueError("either rewards [B] or token_rewards [B, T] is required")
    tr = _float(token_rewards)
    return (tr * as_float_mask(mask, tr)).sum(-1)


def _token_rewards(rewards, token_rewards, mask) -> Tensor:
    if token_rewards is not None:
        return _float(token_rewards)
    if rewards is None:
        raise ValueError("either rewards [B] or token_rewards [B, T] is required")
    return outcome_to_token_rewards(_float(rewards), mask)


def _broadcast(a: Tensor, mask: Tensor) -> Tensor:
    return a.unsqueeze(-1) * as_float_mask(mask, a)


# --------------------------------------------------------------------------------------------- GRPO


@register_advantage_estimator("grpo")
def grpo(*, rewards=None, token_rewards=None, values=None, mask, group=None, norm_by_std=True, eps=1e-6):
    """GRPO outcome advantage (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300, sec. 4.1.2):
    ``A_i = (R_i - mean_g) / (std_g + eps)`` (Bessel std), or ``R_i - mean_g`` if not norm_by_std.
    """
    r = _outcome(rewards, token_rewards, mask)
    mean, std, _, zero_var = group_stats(r, group)
    a = r - mean
    if norm_by_std:
        a = a / (std + eps)
    a = torch.where(zero_var, torch.zeros_like(a), a)
    return _broadcast(a, mask), None


@register_advantage_estimator("dr_grpo")
def dr_grpo(*, rewards=None, token_rewards=None, values=None, mask, group=None):
    """Dr. GRPO advantage (Liu et al. 2025, arXiv 2503.20783): ``A_i = R_i - mean_g`` (no std).

    Pair it with ``agg="seq-mean-token-sum-norm"`` and ``norm_constant = L_max`` for the paper's loss.
    """
    return grpo(rewards=rewards, token_rewards=token_rewards, mask=mask, group=group, norm_by_std=False)


@register_advantage_estimator("identity")
def identity(*, rewards=None, token_rewards=None, values=None, mask, group=None):
    """The outcome signal is already an advantage: ``A_i = R_i`` broadcast to tokens. Used with the
    advantage-level reward combiners (``reward.combine`` = ``normalize_then_sum`` / GDPO, ``dvao``,
    ``tmn``), which group- or batch-normalise the reward components themselves."""
    return _broadcast(_outcome(rewards, token_rewards, mask), mask), None


@register_advantage_estimator("lite_ppo")
def lite_ppo(*, rewards=None, token_rewards=None, values=None, mask, group=None, eps=1e-6):
    """Lite PPO advantage ("Tricks or Traps? A Deep Dive into RL for LLM Reasoning", Liu et al. 2025,
    arXiv 2508.08221; ROLL ``reward_norm`` with norm_mean_type=group, norm_std_type=batch; spec 3.4):
    ``A_i = (R_i - mean_{group(i)} R) / (std_{batch} R + eps)``, Bessel std over the raw rewards of
    the whole batch passed (a batch of one reward uses std = 1).  Pair with ``vanilla`` loss and
    ``agg="token-mean"``.
    """
    r = _outcome(rewards, token_rewards, mask)
    mean, _, _, zero_var = group_stats(r, group)
    if r.numel() > 1:
        std_b = r.std()
        a = (r - mean) / (std_b + eps)
        if bool(r.max() == r.min()):
            a = torch.zeros_like(a)
    else:
        a = r - mean
        a = a / (1.0 + eps)
    a = torch.where(zero_var, torch.zeros_like(a), a)
    return _broadcast(a, mask), None


@register_advantage_estimator("rloo")
def rloo(*, rewards=None, token_rewards=None, values=None, mask, group=None):
    """RLOO (Kool et al. 2019; Ahmadian et al. 2024, arXiv 2402.14740, sec. 3): leave-one-out baseline
    ``A_i = R_i - mean_{j != i} R_j = n/(n-1) (R_i - mean_g)``.  Singletons: raw reward (verl).
    """
    r = _outcome(rewards, token_rewards, mask)
    mean, _, cnt, zero_var = group_stats(r, group)
    scale = torch.where(cnt > 1, cnt / (cnt - 1).clamp(min=1), torch.ones_like(cnt))
    a = (r - mean) * scale
    a = torch.where(zero_var, torch.zeros_like(a), a)
    return _broadcast(a, mask), None


@register_advantage_estimator("opo")
def opo(*, rewards=None, token_rewards=None, values=None, mask, group=None):
    """OPO (On-Policy RL with Optimal reward baseline, Hao et al. 2025, arXiv 2505.23585):
    length-weighted group baseline ``b = sum_j |y_j| R_j / sum_j |y_j|``, ``A_i = R_i - b``
    (verl ``compute_opo_outcome_advantage``; singletons: b = 0).
    """
    r = _outcome(rewards, token_rewards, mask)
    lengths = as_float_mask(mask, r).sum(-1)
    inv, k = group_inverse(group, r.shape[0], r.device)
    cnt = group_sum(torch.ones_like(r), inv, k)[inv]
    num = group_sum(lengths * r, inv, k)[inv]
    den = group_sum(lengths, inv, k)[inv]
    b = torch.where((cnt > 1) & (den > 0), num / den.clamp(min=1e-30), torch.zeros_like(r))
    _, _, _, zero_var = group_stats(r, group)
    a = torch.where(zero_var, torch.zeros_like(r), r - b)
    return _broadcast(a, mask), None


@register_advantage_estimator("gpg")
def gpg(*, rewards=None, token_rewards=None, values=None, mask, group=None, f_norm=1.0):
    """GPG (Group Policy Gradient, Chu et al. 2025, arXiv 2504.02546, sec. 3, corrected advantage):
    ``A_i = alpha * (R_i - mean_g) / f_norm`` with the gradient-rescaling factor
    ``alpha = B / max(B - M, 1)``, M = number of responses in zero-variance groups (they carry no
    signal; singletons count as valid).  verl instead uses ``B / count_nonzero(R)``; we follow the
    paper's definition.  Pair with the ``gpg`` policy loss.
    """
    r = _outcome(rewards, token_rewards, mask)
    mean, _, _, zero_var = group_stats(r, group)
    b = r.shape[0]
    m = int(zero_var.sum())
    alpha = b / max(b - m, 1)
    a = alpha * (r - mean) / f_norm
    a = torch.where(zero_var, torch.zeros_like(a), a)
    return _broadcast(a, mask), None


@register_advantage_estimator("reinforce_plus_plus_baseline")
def reinforce_plus_plus_baseline(*, rewards=None, token_rewards=None, values=None, mask, group=None):
    """REINFORCE++-baseline (Hu 2025, arXiv 2501.03262): group-mean baseline, then the
    advantage is whitened over all valid tokens of the batch (verl ``masked_whiten``: Bessel
    variance, eps 1e-8).  Singletons: mean 0.
    """
    r = _outcome(rewards, token_rewards, mask)
    mean, _, _, zero_var = group_stats(r, group)
    a = torch.where(zero_var, torch.zeros_like(r), r - mean)
    tok = _broadcast(a, mask)
    m = as_float_mask(mask, tok)
    return masked_whiten(tok, m) * m, None


def _discounted_returns(tr: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """Backward discounted sums over VALID tokens (masked positions are skipped, not reset)."""
    m = as_float_mask(mask, tr)
    running = torch.zeros(tr.shape[0], dtype=tr.dtype, device=tr.device)
    out = []
    for t in reversed(range(tr.shape[1])):
        mt = m[:, t]
        new = tr[:, t] * mt + gamma * running
        running = torch.where(mt != 0, new, running)
        out.append(running * mt)
    return torch.stack(out[::-1], dim=1)


@register_advantage_estimator("reinforce_plus_plus")
def reinforce_plus_plus(*, rewards=None, token_rewards=None, values=None, mask, group=None, gamma=1.0):
    """REINFORCE++ (Hu 2025, arXiv 2501.03262): per-token discounted return
    ``G_t = sum_{s>=t} gamma^(s-t) r_s`` over valid tokens, whitened over the valid tokens of the
    batch.  With outcome ``rewards`` the reward sits on the last valid token.  Returns ``G``.
    Masked positions (e.g. tool output) are skipped when discounting (verl instead resets the
    running return at every masked position, which only differs for interior zeros).
    """
    tr = _token_rewards(rewards, token_rewards, mask)
    ret = _discounted_returns(tr, mask, gamma)
    m = as_float_mask(mask, ret)
    return masked_whiten(ret, m) * m, ret


@register_advantage_estimator("remax")
def remax(*, rewards=None, token_rewards=None, values=None, mask, group=None, baseline_rewards):
    """ReMax (Li et al. 2024, arXiv 2310.10505, Algorithm 1): REINFORCE with the reward of the
    greedy response as baseline: ``A[i,t] = G[i,t] - b_i`` with ``G`` the (undiscounted) reward-to-go
    and ``b = baseline_rewards`` ``[B]`` (the greedy responses' rewards).  Returns ``G``.
    """
    tr = _token_rewards(rewards, token_rewards, mask)
    ret = _discounted_returns(tr, mask, 1.0)
    b = _float(baseline_rewards, ret)
    m = as_float_mask(mask, ret)
    return (ret - b.unsqueeze(-1)) * m, ret


@register_advantage_estimator("gae")
def gae(*, rewards=None, token_rewards=None, values, mask, group=None, gamma=1.0, lam=1.0, whiten=True):
    """GAE (Schulman et al. 2016, arXiv 1506.02438, eq. 16) as in verl
    ``compute_gae_advantage_return`` (spec 3.2): ``delta_t = r_t + gamma V_{t+1} - V_t``,
    ``A_t = delta_t + gamma lam A_{t+1}``, V = 0 after the last valid token; masked positions
    (observation tokens) are skipped.  ``returns = A + V`` (before whitening); ``whiten=True``
    (verl default) whitens A over the valid tokens of the batch.  Defaults gamma = lam = 1 (verl).
    """
    if values is None:
        raise ValueError("gae needs values [B, T]")
    tr = _token_rewards(rewards, token_rewards, mask)
    v = _float(values, tr).to(tr.dtype)
    m = as_float_mask(mask, tr)
    b, t_len = tr.shape
    nextv = torch.zeros(b, dtype=tr.dtype, device=tr.device)
    last = torch.zeros(b, dtype=tr.dtype, device=tr.device)
    out = []
    for t in reversed(range(t_len)):
        mt = m[:, t]
        delta = tr[:, t] + gamma * nextv - v[:, t]
        cur = delta + gamma * lam * last
        nextv = torch.where(mt != 0, v[:, t], nextv)
        last = torch.where(mt != 0, cur, last)
        out.append(last)
    adv = torch.stack(out[::-1], dim=1)
    ret = (adv + v) * m
    if whiten:
        adv = masked_whiten(adv, m)
    return adv * m, ret


@register_advantage_estimator("rover")
def rover(*, rewards=None, token_rewards=None, values=None, mask, group=None, norm_by_std=False, eps=1e-6):
    """ROVER "low-variance reward" (arXiv 2509.24981; spec 8.2): ``r~_i = R_i - mean_g`` broadcast
    to tokens, to be passed as ``advantages`` to the ``rover`` policy loss.  ``norm_by_std=True``
    reproduces the authors' released math script (verl GRPO advantage).
    """
    return grpo(rewards=rewards, token_rewards=token_rewards, mask=mask, group=group, norm_by_std=norm_by_std, eps=eps)


@register_advantage_estimator("asyppo")
def asyppo(*, rewards=None, token_rewards=None, values, mask, group=None, gamma=1.0, lam=1.0, whiten=True):
    """AsyPPO (arXiv 2510.01656, sec. 4; spec 4.3, secondary sources): GAE on the mean of an ensemble
    of mini-critics.  ``values`` ``[M, B, T]`` (M critics) or ``[B, T]``.  The uncertainty masks
    (advantage mask I^A, entropy mask I^H) come from :func:`asyppo_masks` (the entry point returns
    only advantages and returns).
    """
    v = torch.as_tensor(values)
    v_bar = v.mean(0) if v.dim() == 3 else v
    return gae(rewards=rewards, token_rewards=token_rewards, values=v_bar, mask=mask, gamma=gamma, lam=lam,
               whiten=whiten)


def asyppo_masks(values: Tensor, mask: Tensor, *, adv_mask_frac: float = 0.2, ent_mask_frac: float = 0.2):
    """AsyPPO uncertainty masks from critic disagreement ``sigma = std_m V_m`` (Bessel; spec 4.3).

    Returns ``(adv_mask, entropy_mask)`` ``[B, T]`` 0/1 floats: ``adv_mask`` is 0 on the
    ``floor(adv_mask_frac * N)`` valid tokens with the LOWEST sigma (critics agree: no policy
    gradient), ``entropy_mask`` is 0 on the ``floor(ent_mask_frac * N)`` valid tokens with the
    HIGHEST sigma (excluded from the entropy bonus).  N = valid tokens passed; masked tokens are
    outside the percentile pool and are 0 in both masks; ties are broken by flat position (stable
    sort).  With a single critic (M = 1) the masks are disabled (equal to ``mask``).
    Defaults 20% / 20% (spec 4.4).  Use: ``advantages * adv_mask`` and
    ``entropy_bonus(H, mask * entropy_mask, ...)``.
    """
    v = torch.as_tensor(values).detach()
    m = as_float_mask(mask, v)
    if v.dim() != 3 or v.shape[0] < 2:
        return m.clone(), m.clone()
    sigma = v.std(0).reshape(-1)
    valid = torch.nonzero(m.reshape(-1) != 0).squeeze(-1)
    n = valid.numel()
    adv = m.reshape(-1).clone()
    ent = m.reshape(-1).clone()
    if n > 0:
        order = torch.sort(sigma[valid], stable=True).indices
        k_a = int(adv_mask_frac * n)
        k_h = int(ent_mask_frac * n)
        if k_a > 0:
            adv = adv.index_fill(0, valid[order[:k_a]], 0.0)
        if k_h > 0:
            ent = ent.index_fill(0, valid[order[n - k_h:]], 0.0)
    return adv.reshape(m.shape), ent.reshape(m.shape)


def compute_advantages(
    name: str,
    *,
    rewards: Tensor | None = None,
    token_rewards: Tensor | None = None,
    values: Tensor | None = None,
    mask: Tensor,
    group: Tensor | None = None,
    **hp,
) -> tuple[Tensor, Tensor | None]:
    """Compute ``(advantages [B, T], returns [B, T] or None)`` with the named estimator.

    Hyper-parameters ``hp`` are the keyword arguments of the registered estimator; an unknown one
    raises ``TypeError``.  Both outputs are detached (advantages are constants of the update).
    """
    fn = lookup(ADVANTAGE_ESTIMATORS, name, "advantage estimator")
    adv, ret = fn(rewards=rewards, token_rewards=token_rewards, values=values, mask=mask, group=group, **hp)
    return adv.detach(), (None if ret is None else ret.detach())
