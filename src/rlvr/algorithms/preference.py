"""Reward-model training and on-policy distillation: pure functions on scores and log-probs.

* :func:`bradley_terry_loss`: the pairwise preference loss of a scalar reward model (Bradley & Terry
  1952; InstructGPT, Ouyang et al. 2022, arXiv 2203.02155, eq. 1; with Llama 2's margin, Touvron et al.
  2023, arXiv 2307.09288, eq. 2).
* :func:`pair_accuracy`: the share of pairs the reward model orders right (ties count half).
* :func:`reverse_kl_full` and :func:`distillation_advantage`: on-policy distillation from a teacher
  (GKD, Agarwal et al. 2024, arXiv 2306.13649, with the student's own samples and the reverse KL;
  Thinking Machines' "On-Policy Distillation", Lu et al. 2025, which uses the sampled-token reverse KL
  ``log pi_theta(y_t) - log pi_T(y_t)`` as a per-token negative advantage).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["bradley_terry_loss", "distillation_advantage", "pair_accuracy", "reverse_kl_full"]


def bradley_terry_loss(r_chosen: Tensor, r_rejected: Tensor, margin: Tensor | float | None = None) -> Tensor:
    """Mean over pairs of ``-log sigma(r_c - r_r - m)``.

    Bradley-Terry (1952): ``P(chosen > rejected) = sigma(r_c - r_r)``; InstructGPT eq. 1 minimises its
    negative log-likelihood over labelled pairs. Llama 2 eq. 2 subtracts a margin ``m(r)`` that grows
    with how clearly the chosen answer is better, so confident pairs must be separated by more.

    Args:
        r_chosen, r_rejected: scalar rewards ``[N]`` of the preferred and the other completion.
        margin: ``[N]`` or a float (0 when None).
    """
    diff = r_chosen.float() - r_rejected.float()
    if margin is not None:
        diff = diff - (margin.float() if isinstance(margin, Tensor) else float(margin))
    return -F.logsigmoid(diff).mean()


def pair_accuracy(r_chosen: Tensor, r_rejected: Tensor) -> float:
    """Share of pairs with ``r_c > r_r`` (a tie counts one half)."""
    diff = r_chosen.float() - r_rejected.float()
    return float(((diff > 0).float() + 0.5 * (diff == 0).float()).mean())


def reverse_kl_full(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Per-position reverse KL ``KL(pi_theta || pi_T) = sum_v pi_theta(v) (log pi_theta(v) - log pi_T(v))``
    over the full vocabulary (GKD's divergence with beta = 1 on student samples). ``[..., V] -> [...]``."""
    log_p = torch.log_softmax(student_logits.float(), dim=-1)
    log_q = torch.log_softmax(teacher_logits.float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def distillation_advantage(logp: Tensor, teacher_logp: Tensor, mask: Tensor, coef: float = 1.0) -> Tensor:
    """Per-token advantage ``-coef * (log pi_theta(y_t) - log pi_T(y_t))`` on the sampled tokens.

    The sampled-token (k1) estimate of the reverse KL: its expectation under the student's own samples is
    :func:`reverse_kl_full`, and the policy gradient with this advantage (no discounting, no baseline, as in
    Lu et al. 2025) is the gradient of ``-coef * KL(pi_theta || pi_T)`` summed over positions. ``logp`` is the
    behaviour policy's (the sampler's) log-prob of each token, detached; padding and observation tokens get 0.
    """
    return (-float(coef) * (logp.float() - teacher_logp.float())) * mask.float()
