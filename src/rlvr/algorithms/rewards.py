"""Multi-objective reward combination, dynamic reward weights and Lagrangian constraints.

Pure functions over named reward components ``components: dict[str, Tensor [B]]`` (what a verifier
or a user reward function returns) and per-component base weights ``weights: dict[str, float]``.

Combiners (registry ``REWARD_COMBINERS``, :func:`combine_rewards`) return ``(combined [B],
effective_weights dict[str, Tensor [B]])``. Reward-level combiners (``sum_then_normalize``,
``pow3r``) give a scalar reward that the advantage estimator then normalises; advantage-level ones
(registered with ``advantage=True``: ``normalize_then_sum`` / GDPO, ``dvao``, ``tmn``) already
normalise, and the run feeds their output through the ``identity`` advantage estimator.

* ``sum_then_normalize`` (aliases ``weighted_sum``, ``sum``): ``R = sum_k w_k R_k`` (TRL default
  ``multi_objective_aggregation="sum_then_normalize"``; TRL ``GRPOTrainer`` at commit f2cd577).
* ``normalize_then_sum`` (alias ``gdpo``): each component group-normalised ``(R_k - mu_k) /
  (std_k + eps)``, weighted, summed, then batch-normalised (TRL ``normalize_then_sum``, GDPO).
* ``dvao``: DVAO (arXiv 2605.25604, spec 11.1): ``A = sum_k w_k (R_k - mu_k) / sum_l w_l sigma_l``.
* ``tmn``: TMN-Reweight (GoLongRL, arXiv 2605.19577, spec 11.2, authors'
  ``compute_tmn_grpo_outcome_advantage``): task-level scale and difficulty re-weighting.
* ``trust_grpo`` (alias ``trust``): Trust-GRPO (SophiaVL-R1, arXiv 2505.17018; authors' code): an
  auxiliary reward weighted by its per-group trustworthiness and annealed over training.
* ``pow3r``: POW3R rubric weights (arXiv 2605.20164, spec 11.3) -- INFERRED (the paper's formula
  was not found): ``w_c ~ h_c Var_group(score_c)``, renormalised per category to the human totals.

Dynamic weights (spec 11.4, Lu et al. arXiv 2509.11452, authors' code at commit 238fe65):
:func:`hypervolume_contribution`, :func:`hv_meta_reward`, :func:`gradient_weight_update`.

Constraints (Moskovitz et al., ICLR 2024, arXiv 2310.04373, spec 11.5):
:func:`lagrangian_mixed_advantage`, :func:`multiplier_loss_grad`.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from ._utils import group_inverse, group_sum
from .registry import REWARD_COMBINERS, lookup, register_reward_combiner


def _stack(components: dict[str, Tensor], names) -> Tensor:
    missing = [n for n in names if n not in components]
    if missing:
        raise ValueError(f"reward weights name component(s) {', '.join(missing)} the verifier did not return; "
                         f"its components: {', '.join(sorted(components))}")
    return torch.stack([torch.as_tensor(components[n]).to(torch.get_default_dtype()) for n in names], dim=-1)


def _group_moments(x: Tensor, group: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row group mean, Bessel std (0 for singleton groups) and group size of ``x [B, K]``."""
    b = x.shape[0]
    inv, k = group_inverse(group, b, x.device)
    cnt = group_sum(torch.ones(b, dtype=x.dtype, device=x.device), inv, k)
    s = torch.zeros((k,) + x.shape[1:], dtype=x.dtype, device=x.device).index_add(0, inv, x)
    mean = s / cnt.clamp(min=1).view(-1, *([1] * (x.dim() - 1)))
    dev = x - mean[inv]
    ss = torch.zeros_like(s).index_add(0, inv, dev * dev)
    var = ss / (cnt - 1).clamp(min=1).view(-1, *([1] * (x.dim() - 1)))
    std = torch.where((cnt > 1).view(-1, *([1] * (x.dim() - 1))), var.sqrt(), torch.zeros_like(var))
    return mean[inv], std[inv], cnt[inv]


def _per_row(w: dict[str, float], b: int) -> dict[str, Tensor]:
    return {n: torch.full((b,), float(v)) for n, v in w.items()}


# -------------------------------------------------------------------------------- combiners


@register_reward_combiner("sum_then_normalize", "weighted_sum", "sum")
def sum_then_normalize(components, weights, group=None):
    """``R = sum_k w_k R_k`` (TRL ``sum_then_normalize``: the estimator normalises it afterwards)."""
    names = list(weights)
    x = _stack(components, names)
    w = torch.tensor([float(weights[n]) for n in names], dtype=x.dtype)
    return (x * w).sum(-1), _per_row(weights, x.shape[0])


@register_reward_combiner("normalize_then_sum", "gdpo", advantage=True)
def normalize_then_sum(components, weights, group=None, eps=1e-4):
    """GDPO / TRL ``normalize_then_sum``: ``A_k = (R_k - mu_k) / (std_k + eps)`` per group (Bessel std;
    a singleton group gives 0, as TRL), ``S = sum_k w_k A_k``, then ``(S - mean(S)) / (std(S) + eps)``
    over the batch. ``eps = 1e-4`` (TRL)."""
    names = list(weights)
    x = _stack(components, names)
    mean, std, _ = _group_moments(x, group)
    a = (x - mean) / (std + eps)
    w = torch.tensor([float(weights[n]) for n in names], dtype=x.dtype)
    s = (a * w).sum(-1)
    bstd = s.std() if s.numel() > 1 else torch.zeros((), dtype=s.dtype)
    return (s - s.mean()) / (bstd + eps), _per_row(weights, x.shape[0])


@register_reward_combiner("dvao", advantage=True)
def dvao(components, weights, group=None):
    """DVAO (arXiv 2605.25604, spec 11.1): per group, ``w~_k = w_k sigma_k / sum_l w_l sigma_l`` and
    ``A = sum_k w~_k (R_k - mu_k) / sigma_k = sum_k w_k (R_k - mu_k) / sum_l w_l sigma_l``.

    Bessel std (spec 0.2). Choices where the paper is silent: no epsilon (the closed form is used, so
    a constant objective has weight 0 exactly); a group whose every objective is constant (or a
    singleton group) gets ``A = 0``. Effective weights are the ``w~_k`` of each row's group."""
    names = list(weights)
    x = _stack(components, names)
    mean, std, _ = _group_moments(x, group)
    w = torch.tensor([float(weights[n]) for n in names], dtype=x.dtype)
    den = (w * std).sum(-1)
    ok = den > 0
    safe = torch.where(ok, den, torch.ones_like(den))
    a = torch.where(ok, ((x - mean) * w).sum(-1) / safe, torch.zeros_like(den))
    eff = torch.where(ok.unsqueeze(-1), w * std / safe.unsqueeze(-1), torch.zeros_like(x))
    return a, {n: eff[:, i] for i, n in enumerate(names)}


@register_reward_combiner("tmn", "tmn_reweight", advantage=True)
def tmn(components, weights, group=None, task_key=None, difficulty_reweight=True, alpha=0.5, gamma=1.0):
    """TMN-Reweight (GoLongRL arXiv 2605.19577, spec 11.2; authors' ``compute_tmn_grpo_outcome_advantage``).

    The reward is first ``R = sum_k w_k R_k``. For prompt u of task k: ``mu_u``, ``var_u`` (Bessel;
    a single rollout: mu = 0, var = 1), ``scale_k = sqrt(mean_u var_u)``, ``A = (R - mu_u) /
    (scale_k + 1e-6)``. Difficulty re-weighting: ``m~_u = alpha mu_u + (1 - alpha) mean_u(mu_u)``
    (single-rollout prompts use the task mean), ``p_u`` = share of u's responses with ``R > m~_u``,
    ``A *= exp(gamma (0.5 - p_u))`` where ``R > mu_u`` else ``exp(gamma (p_u - 0.5))`` (not clamped).
    ``task_key`` names a component holding a task id per row (None: one task). Defaults: code
    ``alpha = 0.5`` (the released 4B script uses 0.8), ``gamma = 1``."""
    r, _ = sum_then_normalize(components, weights, group)
    b = r.shape[0]
    inv, k = group_inverse(group, b, r.device)
    cnt = group_sum(torch.ones_like(r), inv, k)
    mu = group_sum(r, inv, k) / cnt.clamp(min=1)
    var = group_sum((r - mu[inv]) ** 2, inv, k) / (cnt - 1).clamp(min=1)
    single = cnt <= 1
    mu = torch.where(single, torch.zeros_like(mu), mu)
    var = torch.where(single, torch.ones_like(var), var)
    if task_key is None:
        task_of_group = torch.zeros(k, dtype=torch.long)
    else:
        tid = torch.as_tensor(components[task_key])
        task_of_group = torch.zeros(k, dtype=tid.dtype).index_copy(0, inv, tid)
        _, task_of_group = torch.unique(task_of_group, return_inverse=True)
    nt = int(task_of_group.max()) + 1 if k else 0
    tcnt = torch.zeros(nt).index_add(0, task_of_group, torch.ones(k))
    scale = (torch.zeros(nt).index_add(0, task_of_group, var) / tcnt.clamp(min=1)).sqrt()
    adv = (r - mu[inv]) / (scale[task_of_group][inv] + 1e-6)
    if difficulty_reweight:
        raw_mu = group_sum(r, inv, k) / cnt.clamp(min=1)
        mode_mean = torch.zeros(nt).index_add(0, task_of_group, raw_mu) / tcnt.clamp(min=1)
        m_tilde = torch.where(single, mode_mean[task_of_group], alpha * raw_mu + (1 - alpha) * mode_mean[task_of_group])
        p = group_sum((r > m_tilde[inv]).to(r.dtype), inv, k) / cnt.clamp(min=1)
        w_pos = torch.exp(gamma * (0.5 - p))
        w_neg = torch.exp(gamma * (p - 0.5))
        adv = adv * torch.where(r > mu[inv], w_pos[inv], w_neg[inv])
    return adv, _per_row(weights, b)


@register_reward_combiner("pow3r")
def pow3r(components, weights, group=None, categories=None):
    """POW3R policy-aware rubric weights (arXiv 2605.20164, spec 11.3) -- INFERRED, the paper's formula
    was not found: per group, ``w_c = h_c Var(score_c)`` renormalised within each category so that the
    category's total equals its human total ``sum_{c in cat} h_c``; a category whose criteria are all
    constant in the group keeps the human weights. ``R = sum_c w_c score_c``. ``categories`` maps a
    component to a category name (None: one category)."""
    names = list(weights)
    x = _stack(components, names)
    h = torch.tensor([float(weights[n]) for n in names], dtype=x.dtype)
    _, std, _ = _group_moments(x, group)
    var = std * std
    cats = [(categories or {}).get(n, "") for n in names]
    eff = torch.zeros_like(x)
    for cat in dict.fromkeys(cats):
        idx = [i for i, c in enumerate(cats) if c == cat]
        hv = h[idx] * var[:, idx]
        tot = hv.sum(-1, keepdim=True)
        human = h[idx].sum()
        eff[:, idx] = torch.where(tot > 0, hv / tot.clamp(min=1e-30) * human, h[idx].expand_as(hv))
    return (eff * x).sum(-1), {n: eff[:, i] for i, n in enumerate(names)}


def trust_weights(outcome: Tensor, aux: Tensor, group=None, correct_threshold: float = 0.5,
                  saturated_high: float = 0.9, saturated_low: float = 0.1) -> Tensor:
    """Trust-GRPO trustworthiness weight of an auxiliary reward, per row (SophiaVL-R1, Fan et al. 2025,
    arXiv 2505.17018, sec. 3.3, eq. 1-3; authors' ``CustomRewardManager.__call__``, kxfan2002/SophiaVL-R1
    at commit 4fd36a8, ``verl/workers/reward/custom.py``).

    Per group: ``mu_c`` / ``mu_w`` = mean auxiliary reward of the responses whose outcome is ``>=`` /
    ``<`` ``correct_threshold`` (0 when there are none); ``gamma = 1`` if ``mu_c >= mu_w`` (the auxiliary
    reward ranks right answers higher: trustworthy), else ``exp(mu_c - mu_w)`` (< 1), or 1 when no
    response is correct (the release). A group whose outcomes are all ``>= saturated_high`` or all
    ``<= saturated_low`` gets ``gamma = 0`` (the release drops the auxiliary reward there: the outcome
    alone already carries no contrast). Returns ``gamma [B]`` (each row its group's)."""
    o = torch.as_tensor(outcome, dtype=torch.get_default_dtype())
    a = torch.as_tensor(aux, dtype=o.dtype)
    b = o.shape[0]
    inv, k = group_inverse(group, b, o.device)
    right = (o >= correct_threshold).to(o.dtype)
    n_right, n_all = group_sum(right, inv, k), group_sum(torch.ones_like(o), inv, k)
    n_wrong = n_all - n_right
    mu_c = torch.where(n_right > 0, group_sum(a * right, inv, k) / n_right.clamp(min=1), torch.zeros_like(n_all))
    mu_w = torch.where(n_wrong > 0, group_sum(a * (1 - right), inv, k) / n_wrong.clamp(min=1), torch.zeros_like(n_all))
    gamma = torch.where((mu_c < mu_w) & (n_right > 0), torch.exp(mu_c - mu_w), torch.ones_like(mu_c))
    high = group_sum((o >= saturated_high).to(o.dtype), inv, k) == n_all
    low = group_sum((o <= saturated_low).to(o.dtype), inv, k) == n_all
    return torch.where(high | low, torch.zeros_like(gamma), gamma)[inv]


@register_reward_combiner("trust_grpo", "trust")
def trust_grpo(components, weights, group=None, outcome="correct", anneal_steps=500.0, correct_threshold=0.5,
               aux_min_outcome=None, step=0):
    """Trust-GRPO (SophiaVL-R1, arXiv 2505.17018, eq. 4; authors' reward manager, commit 4fd36a8):
    ``R = w_o R_o + sum_a w_a exp(-step / anneal_steps) gamma_a R_a``: the outcome component ``outcome``
    (weight ``w_o``, 1 in the paper) plus each other weighted component as an auxiliary reward (the
    paper's thinking reward, ``w_a = alpha = 0.3`` in the release) scaled by the time annealing and its
    per-group trustworthiness :func:`trust_weights`. The run's estimator (GRPO) normalises ``R``.

    ``step``: the policy version that generated the batch (the producer passes it; the release uses the
    global step), ``anneal_steps``: the release's ``T = 500``. ``aux_min_outcome``: the release scores
    the thinking reward only where the outcome is ``>= 0.2`` and uses 0 elsewhere (0.2 reproduces that;
    with binary outcomes it makes ``mu_w = 0`` and so ``gamma = 1``); None (default) uses the auxiliary
    reward of every response, as the paper describes. Effective weights: ``w_o`` and ``w_a anneal gamma``."""
    if outcome not in weights:
        raise ValueError(f"trust_grpo: the outcome component {outcome!r} needs a weight in reward.weights "
                         f"(weighted: {', '.join(weights)})")
    names = list(weights)
    x = _stack(components, names)
    r_o = x[:, names.index(outcome)]
    anneal = math.exp(-float(step) / float(anneal_steps))
    total = float(weights[outcome]) * r_o
    eff = {outcome: torch.full_like(r_o, float(weights[outcome]))}
    for i, n in enumerate(names):
        if n == outcome:
            continue
        aux = x[:, i]
        if aux_min_outcome is not None:
            aux = torch.where(r_o >= aux_min_outcome, aux, torch.zeros_like(aux))
        w = float(weights[n]) * anneal * trust_weights(r_o, aux, group, correct_threshold)
        total = total + w * aux
        eff[n] = w
    return total, eff


def combine_rewards(name: str, components: dict[str, Tensor], weights: dict[str, float], group=None, **hp):
    """The named combiner: ``(combined [B], effective weights dict[str, [B]])``."""
    fn = lookup(REWARD_COMBINERS, name, "reward combiner")
    if not weights:
        raise ValueError("combine_rewards needs at least one weighted component")
    return fn(components, dict(weights), group, **hp)


# ---------------------------------------------------------------------- dynamic reward weights


def hypervolume(points: Tensor, ref: Tensor) -> float:
    """Exact hypervolume dominated by ``points [N, K]`` (maximisation) above the reference ``ref [K]``:
    the volume of the union of boxes ``[ref, p]`` (points not above ``ref`` in every objective add
    nothing). Computed on the grid of the points' coordinates (exact; O(N^K), for small buffers)."""
    pts = torch.as_tensor(points, dtype=torch.float64).reshape(-1, ref.numel())
    ref = torch.as_tensor(ref, dtype=torch.float64)
    pts = torch.maximum(pts, ref)  # a coordinate below the reference contributes a zero-width box
    if pts.numel() == 0:
        return 0.0
    axes = [torch.unique(torch.cat([ref[k:k + 1], pts[:, k]])) for k in range(ref.numel())]
    total = 0.0
    for cell in itertools.product(*[range(len(a) - 1) for a in axes]):
        lo = torch.stack([axes[k][c] for k, c in enumerate(cell)])
        hi = torch.stack([axes[k][c + 1] for k, c in enumerate(cell)])
        if bool((pts >= hi).all(-1).any()):  # some box covers the whole cell
            total += float((hi - lo).prod())
    return total


def hypervolume_contribution(point, buffer, minimize=None) -> float:
    """``dHV = HV(buffer + [point]) - HV(buffer)`` with the reference point ``buffer[0]`` (spec 11.4a;
    objectives flagged in ``minimize [K]`` are negated). ``buffer`` holds at least the reference."""
    buf = torch.as_tensor(buffer, dtype=torch.float64).reshape(len(buffer), -1)
    p = torch.as_tensor(point, dtype=torch.float64).reshape(1, -1)
    if minimize is not None:
        sign = torch.tensor([-1.0 if m else 1.0 for m in minimize], dtype=torch.float64)
        buf, p = buf * sign, p * sign
    ref = buf[0]
    return hypervolume(torch.cat([buf[1:], p]), ref) - hypervolume(buf[1:], ref)


def hv_meta_reward(dhv: float) -> float:
    """Meta-reward multiplier of the next step's rewards: ``m = 0.5 + 1.5 tanh(dHV)`` (spec 11.4a)."""
    return 0.5 + 1.5 * math.tanh(dhv)


def gradient_weight_update(weights: Tensor, grads: Tensor, lr: float, reg: float = 1e-5) -> Tensor:
    """Gradient-based weight optimisation (spec 11.4b): with per-objective policy gradients
    ``grads [K, P]``, influence ``I_k = sum_j <g_k, g_j>`` and ``w <- softmax(log w + lr * I / reg)``
    (``lr``: the actor's current learning rate; ``reg``: ``regularization_factor``, 1e-5)."""
    g = torch.as_tensor(grads, dtype=torch.float64)
    influence = (g @ g.T).sum(-1)
    w = torch.as_tensor(weights, dtype=torch.float64)
    return torch.softmax(torch.log(w.clamp(min=1e-30)) + lr * influence / reg, dim=0)


# ------------------------------------------------------------------------- Lagrangian constraints


def squash(lam: Tensor, kind: str = "sigmoid") -> Tensor:
    """Multiplier squashing (Moskovitz et al.): sigmoid for inequalities, tanh for equalities, or none
    (then the multiplier is clamped >= 0 by the update)."""
    if kind == "sigmoid":
        return torch.sigmoid(lam)
    if kind == "tanh":
        return torch.tanh(lam)
    if kind == "none":
        return lam
    raise ValueError(f"unknown squash {kind!r}; known: sigmoid, tanh, none")


def lagrangian_mixed_advantage(objective: Tensor, constraint_advantages: Tensor, s: Tensor, sign: Tensor) -> Tensor:
    """Mixed advantage of constrained PPO (Moskovitz et al. 2024, spec 11.5), for J constraints:

    ``A_mix = (J - sum_j s_j) A_obj + sum_j s_j d_j A_j``, ``d_j = +1`` for ``component >= threshold``,
    ``-1`` for ``<=``. With J = 1 and ``>=`` this is the authors' mode "task" ``(1 - s) A_task + s A_con``;
    with the KL stream as objective and J = 2, mode "kl"; with ``<=`` and the component sum as
    objective, mode "all". ``objective`` ``[B, T]``, ``constraint_advantages`` ``[J, B, T]``, ``s``, ``sign`` ``[J]``.
    """
    s = torch.as_tensor(s, dtype=objective.dtype)
    sign = torch.as_tensor(sign, dtype=objective.dtype)
    j = s.numel()
    mix = (j - s.sum()) * objective
    return mix + (s * sign).view(-1, *([1] * objective.dim())).mul(constraint_advantages).sum(0)


def multiplier_loss(lam: Tensor, values: Tensor, thresholds: Tensor, sign: Tensor, kind: str = "sigmoid") -> Tensor:
    """``L_lambda = sum_j s_j d_j (Rbar_j - theta_j)`` (spec 11.5; minimised over lambda): a violated
    ``>=`` constraint (``Rbar < theta``) has ``dL/dlambda < 0``, so descent raises its multiplier."""
    s = squash(lam, kind)
    return (s * sign * (values - thresholds)).sum()


def multiplier_loss_grad(lam: Tensor, values: Tensor, thresholds: Tensor, sign: Tensor, kind: str = "sigmoid") -> Tensor:
    """Closed form of ``dL_lambda / dlambda_j = s'(lambda_j) d_j (Rbar_j - theta_j)``."""
    lam = torch.as_tensor(lam, dtype=torch.float64)
    ds = {"sigmoid": lambda x: torch.sigmoid(x) * (1 - torch.sigmoid(x)),
          "tanh": lambda x: 1 - torch.tanh(x) ** 2, "none": torch.ones_like}[kind](lam)
    return ds * torch.as_tensor(sign, dtype=lam.dtype) * (torch.as_tensor(values, dtype=lam.dtype)
                                                          - torch.as_tensor(thresholds, dtype=lam.dtype))
