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
  implementation defines returns (``gae``, ``reinforce_plus_plus``, ``remax``, the optimal token
  baselines' reward-to-go).
* verl 0.9.1 estimators under verl's names and parameter names: ``grpo_passk``,
  ``optimal_token_baseline``, ``tir_optimal_token_baseline``; verl's GDPO estimator is ``gdpo_verl``
  (``gdpo`` names TRL's reward combiner, :func:`rlvr.algorithms.normalize_then_sum`).
* Third wave (issue 29, item 3): ``maxrl`` (Maximum Likelihood RL, arXiv 2602.02710) and
  ``flash_reinforce`` (FlashREINFORCE's single-rollout batch-centred advantage).  Each docstring says what
  was checked against the published formula / reference code and what is a choice of ours.
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


# ------------------------------------------------------------------ verl 0.9.1: pass@k, GDPO, OTB


@register_advantage_estimator("grpo_passk")
def grpo_passk(*, rewards=None, token_rewards=None, values=None, mask, group=None, epsilon=1e-6,
               norm_adv_by_std_in_grpo=True):
    """GRPO-style pass@k advantage (verl 0.9.1 ``verl/trainer/ppo/core_algos.py``,
    ``compute_grpo_passk_outcome_advantage``, which cites arXiv 2503.19595).

    In each group only the best response is credited: with ``r_(1) >= r_(2)`` the two largest rewards
    of the group, the response holding ``r_(1)`` gets ``A = r_(1) - r_(2)``, divided by
    ``std_g + epsilon`` (Bessel std of the group's rewards) when ``norm_adv_by_std_in_grpo``; every
    other response gets 0.  When the maximum is shared (``r_(1) = r_(2)``) every advantage of the group
    is 0, so which tied row is "the best" does not matter.  A group with fewer than 2 responses raises
    ``ValueError`` (as verl).  Parameter names are verl's.
    """
    r = _outcome(rewards, token_rewards, mask)
    b = r.shape[0]
    inv, k = group_inverse(group, b, r.device)
    cnt = group_sum(torch.ones_like(r), inv, k)
    if b > 0 and bool((cnt < 2).any()):
        bad = int(torch.nonzero(cnt < 2)[0, 0])
        rows = torch.nonzero(inv == bad).squeeze(-1).tolist()
        raise ValueError(f"grpo_passk needs at least 2 responses per group; the group of row(s) {rows} has "
                         f"{int(cnt[bad])}")
    neg_inf = torch.full((k,), -torch.inf, dtype=r.dtype, device=r.device)
    gmax = neg_inf.scatter_reduce(0, inv, r, "amax")
    is_max = r == gmax[inv]
    n_max = group_sum(is_max.to(r.dtype), inv, k)
    below = torch.where(is_max, torch.full_like(r, -torch.inf), r)
    second = torch.where(n_max >= 2, gmax, neg_inf.scatter_reduce(0, inv, below, "amax"))
    pos = torch.arange(b, device=r.device)
    first = torch.full((k,), b, dtype=torch.long, device=r.device).scatter_reduce(
        0, inv, torch.where(is_max, pos, torch.full_like(pos, b)), "amin")
    gap = gmax - second
    if norm_adv_by_std_in_grpo:
        _, std, _, _ = group_stats(r, group)
        gap = gap[inv] / (std + epsilon)
    else:
        gap = gap[inv]
    a = torch.where(pos == first[inv], gap, torch.zeros_like(r))
    return _broadcast(a, mask), None


@register_advantage_estimator("gdpo", "gdpo_verl")
def gdpo_verl(*, rewards=None, token_rewards=None, values=None, mask, group=None, epsilon=1e-6,
              norm_adv_by_std_in_grpo=True, reward_components=None, gdpo_reward_keys=None,
              gdpo_reward_weights=None):
    """GDPO as verl computes it (verl 0.9.1 ``verl/trainer/ppo/core_algos.py``,
    ``compute_gdpo_outcome_advantage``; GDPO paper arXiv 2601.05242).

    For each reward component ``k`` (``reward_components`` ``{name: [B]}``, restricted to and ordered by
    ``gdpo_reward_keys`` when given): the GRPO advantage ``A_k`` of that component alone (group mean,
    Bessel std, ``epsilon``, ``norm_adv_by_std_in_grpo``; singleton groups mean 0, std 1), broadcast to
    the tokens; then ``S = sum_k w_k A_k`` with ``w = gdpo_reward_weights`` (a list in key order, or a
    mapping name -> weight; default all 1); finally ``S`` is whitened over the valid TOKENS of the batch
    (verl ``masked_whiten``: Bessel variance, ``+1e-8`` inside the square root) and multiplied by the
    mask.  Without ``reward_components`` the outcome reward is the only component (verl's fallback).

    This differs from rlvr's reward combiner ``normalize_then_sum`` (alias ``gdpo``, TRL's GDPO), which
    whitens the combined advantage over ROWS with TRL's ``eps = 1e-4``; under token whitening longer
    responses weigh more in the batch statistics.
    """
    if reward_components is None:
        comps = {"reward": _outcome(rewards, token_rewards, mask)}
    else:
        keys = list(reward_components) if gdpo_reward_keys is None else list(gdpo_reward_keys)
        missing = [key for key in keys if key not in reward_components]
        if missing:
            raise ValueError(f"gdpo_reward_keys {missing} not in reward_components "
                             f"(available: {', '.join(reward_components)})")
        comps = {key: reward_components[key] for key in keys}
    names = list(comps)
    if not names:
        raise ValueError("gdpo_verl needs at least one reward component")
    if gdpo_reward_weights is None:
        w = [1.0] * len(names)
    elif isinstance(gdpo_reward_weights, dict):
        w = [float(gdpo_reward_weights[n]) for n in names]
    else:
        w = [float(x) for x in gdpo_reward_weights]
        if len(w) != len(names):
            raise ValueError(f"gdpo_reward_weights has {len(w)} entries for {len(names)} reward components "
                             f"({', '.join(names)})")
    total = None
    for name, wk in zip(names, w):
        a_k, _ = grpo(rewards=comps[name], mask=mask, group=group, norm_by_std=norm_adv_by_std_in_grpo,
                      eps=epsilon)
        total = wk * a_k if total is None else total + wk * a_k
    m = as_float_mask(mask, total)
    return masked_whiten(total, m) * m, None


def _reward_to_go(tr: Tensor, m: Tensor) -> Tensor:
    """``G_t = sum_{s >= t} m_s r_s`` (undiscounted; at masked positions too, as verl's flip-cumsum)."""
    return torch.flip(torch.cumsum(torch.flip(tr * m, [-1]), -1), [-1])


def _otb_inputs(rewards, token_rewards, mask, old_log_probs, sum_pi_squared, rollout_is_weights):
    """``(G, W, m)``: reward-to-go, cumulative path-variance proxy ``W_t = sum_{j <= t} m_j w_j`` with
    ``w_j = (1 - 2 pi_j + sum_v pi_v^2) * rho_j^2`` (``rho`` = ``rollout_is_weights`` or 1), float mask."""
    tr = _token_rewards(rewards, token_rewards, mask)
    m = as_float_mask(mask, tr)
    if old_log_probs is None or sum_pi_squared is None:
        raise ValueError("the optimal token baseline needs old_log_probs [B, T] and sum_pi_squared [B, T] "
                         "(sum_pi_squared_from_logits)")
    lp = _float(old_log_probs, tr)
    spq = _float(sum_pi_squared, tr)
    if lp.shape != m.shape or spq.shape != m.shape:
        raise ValueError(f"old_log_probs and sum_pi_squared must have shape {tuple(m.shape)}")
    w = 1.0 - 2.0 * torch.exp(lp) + spq
    if rollout_is_weights is not None:
        rho = _float(rollout_is_weights, tr)
        w = w * rho * rho
    return _reward_to_go(tr, m), torch.cumsum(w * m, -1), m


def _zero_tail_rows(lengths: Tensor, inv: Tensor, k: int, member: Tensor):
    """``(row_flag [B] bool, second [B] long)``: among the member rows of each group of >= 2 members, the row
    that is strictly the longest (its length unique in the group) and the second-largest length."""
    neg = torch.full((k,), -1, dtype=lengths.dtype, device=lengths.device)
    ln = torch.where(member, lengths, torch.full_like(lengths, -1))
    lmax = neg.scatter_reduce(0, inv, ln, "amax")
    at_max = member & (ln == lmax[inv])
    n_at_max = torch.zeros(k, dtype=torch.long, device=lengths.device).index_add(0, inv, at_max.long())
    second = neg.scatter_reduce(0, inv, torch.where(at_max, torch.full_like(ln, -1), ln), "amax")
    n_member = torch.zeros(k, dtype=torch.long, device=lengths.device).index_add(0, inv, member.long())
    flag = at_max & (n_member[inv] >= 2) & (n_at_max[inv] == 1) & (lmax[inv] > second[inv])
    return flag, second[inv].clamp(min=0)


@register_advantage_estimator("optimal_token_baseline")
def optimal_token_baseline(*, rewards=None, token_rewards=None, values=None, mask, group=None, old_log_probs,
                           sum_pi_squared, rollout_is_weights=None, handle_zero_tail=True, epsilon=1e-8):
    """Optimal Token Baseline, OTB (arXiv 2602.07078; verl 0.9.1 ``verl/trainer/ppo/core_algos.py``,
    ``compute_optimal_token_baseline_advantage``, and ``docs/algo/otb.md``).

    ``G_t`` = reward-to-go of ``token_rewards`` (outcome ``rewards`` sit on the last valid token);
    ``W_t = sum_{j<=t} m_j (1 - 2 pi_j + sum_v pi_{j,v}^2)``, with ``pi_j = exp(old_log_probs_j)`` and
    ``sum_pi_squared`` = ``sum_v pi_{j,v}^2`` (:func:`rlvr.algorithms.sum_pi_squared_from_logits`), each
    term times ``rollout_is_weights_j^2`` when given.  Per group and ABSOLUTE position t:
    ``B_t = sum_i m G W / (sum_i m W + epsilon)``, ``A_t = (G_t - B_t) m_t``; a singleton group has
    ``B = 0`` (A = reward-to-go).  ``handle_zero_tail``: in a group whose longest response is strictly
    longer than all others, that response's baseline is 0 from position L_2 on (L_2 = the second-largest
    number of valid tokens).  Returns ``(A, G)``; ``G`` is not masked (verl's ``returns``).
    """
    g, w_cum, m = _otb_inputs(rewards, token_rewards, mask, old_log_probs, sum_pi_squared, rollout_is_weights)
    b, t_len = m.shape
    inv, k = group_inverse(group, b, m.device)
    cnt = group_sum(torch.ones(b, dtype=m.dtype, device=m.device), inv, k)
    num = torch.zeros(k, t_len, dtype=g.dtype, device=g.device).index_add(0, inv, g * w_cum * m)
    den = torch.zeros(k, t_len, dtype=g.dtype, device=g.device).index_add(0, inv, w_cum * m) + epsilon
    base = torch.where((cnt > 1)[inv].unsqueeze(-1), (num / den)[inv], torch.zeros_like(g))
    if handle_zero_tail and b > 0:
        lengths = m.sum(-1).long()
        flag, second = _zero_tail_rows(lengths, inv, k, torch.ones(b, dtype=torch.bool, device=m.device))
        pos = torch.arange(t_len, device=m.device).unsqueeze(0)
        tail = flag.unsqueeze(-1) & (pos >= second.unsqueeze(-1))
        base = torch.where(tail, torch.zeros_like(base), base)
    return (g - base) * m, g


@register_advantage_estimator("tir_optimal_token_baseline")
def tir_optimal_token_baseline(*, rewards=None, token_rewards=None, values=None, mask, group=None,
                               old_log_probs, sum_pi_squared, rollout_is_weights=None,
                               handle_zero_tail=True, epsilon=1e-8):
    """Multi-turn (tool-integrated) Optimal Token Baseline (arXiv 2602.07078; verl 0.9.1
    ``verl/trainer/ppo/core_algos.py``, ``compute_multi_turn_optimal_token_baseline_advantage``).

    As ``optimal_token_baseline`` (same ``G``, ``W``, ``epsilon``, ``handle_zero_tail``), but the
    responses of a group are aligned by the INDEX OF THE VALID TOKEN (the j-th loss token of every
    response), not by absolute position, so tool-output gaps (interior mask zeros) do not misalign the
    baseline.  Rows without valid tokens are left out of their group (a group left with one row gets
    ``B = 0``).  Returns ``(A, G)``; ``G`` is not masked.
    """
    g, w_cum, m = _otb_inputs(rewards, token_rewards, mask, old_log_probs, sum_pi_squared, rollout_is_weights)
    b = m.shape[0]
    valid = m != 0
    lengths = valid.sum(-1)
    width = int(lengths.max()) if b > 0 else 0
    rank = torch.cumsum(valid.long(), -1) - 1  # index of each valid token among its row's valid tokens
    rows, cols = torch.nonzero(valid, as_tuple=True)
    ranks = rank[rows, cols]
    g_c = torch.zeros(b, width, dtype=g.dtype, device=g.device).index_put((rows, ranks), g[rows, cols])
    w_c = torch.zeros(b, width, dtype=g.dtype, device=g.device).index_put((rows, ranks), w_cum[rows, cols])
    inv, k = group_inverse(group, b, m.device)
    member = lengths > 0
    n_member = torch.zeros(k, dtype=torch.long, device=m.device).index_add(0, inv, member.long())
    memf = member.to(g.dtype).unsqueeze(-1)
    num = torch.zeros(k, width, dtype=g.dtype, device=g.device).index_add(0, inv, g_c * w_c * memf)
    den = torch.zeros(k, width, dtype=g.dtype, device=g.device).index_add(0, inv, w_c * memf) + epsilon
    base = torch.where((member & (n_member[inv] >= 2)).unsqueeze(-1), (num / den)[inv], torch.zeros_like(g_c))
    if handle_zero_tail and b > 0:
        flag, second = _zero_tail_rows(lengths, inv, k, member)
        pos = torch.arange(width, device=m.device).unsqueeze(0)
        base = torch.where(flag.unsqueeze(-1) & (pos >= second.unsqueeze(-1)), torch.zeros_like(base), base)
    a_c = g_c - base
    adv = torch.zeros_like(g).index_put((rows, cols), a_c[rows, ranks])
    return adv * m, g


# ------------------------------------------------------------------ third wave: MaxRL, FlashREINFORCE


@register_advantage_estimator("maxrl")
def maxrl(*, rewards=None, token_rewards=None, values=None, mask, group=None, control_variate=True, epsilon=0.0):
    """MaxRL, Maximum Likelihood Reinforcement Learning (Tajwar, Zeng et al. 2026, arXiv 2602.02710).

    With ``mu_g = (1/N) sum_{j in g} R_j`` the plain mean reward of the group (N = its size, singletons
    included)::

        control_variate=True  (Algorithm 1; eq. "final estimator"):  A_i = (R_i - mu_g) / (mu_g + epsilon)
        control_variate=False (eq. "conditional estimator"):        A_i = R_i / (mu_g + epsilon)

    and ``A_i = 0`` in every group with ``mu_g <= 0`` (Algorithm 1: ``A = 0`` if ``mu = 0``, "no gradient on
    tasks with no successful rollouts"; prime-rl: ``mean <= 0``).  Averaged over the N rollouts, the first is
    ``sum_i (r_i / K - 1/N) S_i`` and the second ``(1/K) sum_i r_i S_i`` (K = number of successes, S the
    score function): unbiased for the gradient of the order-N truncated maximum-likelihood objective
    (paper, Theorem "estimator-objective equivalence").  Defined for binary rewards in {0, 1} (the paper's
    setting); other rewards are used as given.

    Verified: the paper's Algorithm 1 and both estimator equations (``paper.tex`` of Zanette-Labs/MaxRL,
    commit f98fca2); the authors' verl fork tajwarfahim/maxrl ``verl/trainer/ppo/core_algos.py``
    ``compute_maxrl_outcome_advantage`` (control variate, ``epsilon = 1e-6`` added to the mean) and
    ``compute_misc_outcome_advantage`` ``"conditional_expectation"`` (no control variate), commit c0698eb;
    prime-rl ``src/prime_rl/orchestrator/algo/max_rl.py`` ``MaxRLAlgorithm.score_group`` (exact division,
    0 when the mean is <= 0), commit 559b447.  Choices: ``epsilon = 0`` (paper, prime-rl; 1e-6 gives the
    authors' verl numbers for groups of >= 2); a singleton group follows the formula with its own mean
    (``A = 0`` with the control variate, ``A = R`` without: REINFORCE, the paper's T = 1), as prime-rl --
    the authors' verl code instead sets a singleton's mean to 0 (``A = R / epsilon``).
    """
    r = _outcome(rewards, token_rewards, mask)
    inv, k = group_inverse(group, r.shape[0], r.device)
    cnt = group_sum(torch.ones_like(r), inv, k)
    mu = (group_sum(r, inv, k) / cnt.clamp(min=1.0))[inv]
    num = r - mu if control_variate else r
    a = torch.where(mu > 0, num / (mu + epsilon).clamp(min=1e-30), torch.zeros_like(r))
    if control_variate:
        _, _, _, zero_var = group_stats(r, group)
        a = torch.where(zero_var, torch.zeros_like(a), a)  # all equal: exactly 0, no float residue
    return _broadcast(a, mask), None


@register_advantage_estimator("flash_reinforce")
def flash_reinforce(*, rewards=None, token_rewards=None, values=None, mask, group=None):
    """FlashREINFORCE's one-batch REINFORCE advantage (Hu, Zhang, Zhang, Xu et al., NVIDIA 2026,
    "FlashREINFORCE: Critic-Free Single-Rollout Asynchronous RL for Agentic Language Models"):
    ``A_i = R_i - (1/B) sum_j R_j`` over the B responses passed (one rollout per prompt; no group, no std),
    broadcast to the valid tokens.  ``group`` is ignored: the baseline is the batch mean whatever the groups.

    Verified: the reference loss yifanzhang-pro/FlashREINFORCE ``flashreinforce/loss.py``
    ``flashreinforce_loss`` (commit d7604df: ``rewards - rewards.mean()`` over the full learner batch, before
    any micro-batch split) and the README's "One-Batch REINFORCE" equation.  Differences: the reference
    refuses rows without policy tokens; here every row's reward enters the mean (an empty row's advantage is
    0 after the mask).  The rest of FlashREINFORCE is the loss, not the estimator: detached token IS weights
    ``pi / pi_behav``, the sequence trust region (drop a response whose mean sampled-token Bernoulli KL from
    the behaviour policy exceeds ``delta = 3e-3``) and sample-mean aggregation (``seq-mean-token-mean``).
    """
    r = _outcome(rewards, token_rewards, mask)
    a = r - r.mean() if r.numel() > 0 else r
    if r.numel() > 0 and bool(r.max() == r.min()):
        a = torch.zeros_like(r)  # constant batch: exactly 0
    return _broadcast(a, mask), None


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
