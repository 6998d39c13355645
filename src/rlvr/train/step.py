"""What the learner's stages pass along during one update: the step's batch, and one micro-batch of it.

:class:`StepBatch` is filled stage by stage by :meth:`rlvr.train.learner.Learner.update` (log-probs,
then advantages, then per-token weights); :class:`MicroBatch` is what the loss terms of
:mod:`rlvr.train.loss_terms` read for one forward/backward. Plain data, no logic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from rlvr.experience.batch import Experience


@dataclass
class StepBatch:
    """One update's batch, as the stages fill it in."""

    exp: Experience
    mask: torch.Tensor  # [B, T] float loss mask: the tokens the policy wrote (rlvr.rollout.base.Rollout.loss_mask)
    metrics: dict[str, Any] = field(default_factory=dict)
    # 1. log-probs
    old_logp: torch.Tensor | None = None  # [B, T] behaviour log-probs (recomputed, or the engine's when provably equal)
    old_mean_logp: torch.Tensor | None = None  # [B, T] vocabulary-mean log-prob (ROVER), when the loss reads it
    ref_logp: torch.Tensor | None = None  # [B, T] reference log-probs, when a KL term or the loss needs them
    teacher_logp: torch.Tensor | None = None  # [B, T] the distillation teacher's log-probs (distill.teacher)
    sum_pi_squared: torch.Tensor | None = None  # [B, T] sum_v pi_v^2, when the estimator reads it (optimal baseline)
    # 2. advantages
    rewards: torch.Tensor | None = None  # [B] after the controllers of the reward stage (and KL in the reward)
    token_rewards: torch.Tensor | None = None  # [B, T]
    values: torch.Tensor | None = None  # [M, B, T] critic values (PPO, AsyPPO)
    advantages: torch.Tensor | None = None  # [B, T]
    returns: torch.Tensor | None = None  # [B, T]
    entropy_mask: torch.Tensor | None = None  # [B, T] AsyPPO: tokens the entropy bonus may act on
    # 3. per-token weights known before the update
    weights: torch.Tensor | None = None  # [B, T] mismatch correction x stale-sample weights, or None
    # 4. optimization
    trained: torch.Tensor | None = None  # [B] rows that run forward/backward (zero-advantage rows skipped), or None
    sums: dict[str, float] = field(default_factory=dict)  # metric sums over micro-batches
    grad_norms: list[float] = field(default_factory=list)  # one per optimizer step


@dataclass
class MicroBatch:
    """What the loss terms of one micro-batch read: rows ``idx`` of the step's batch, already forwarded."""

    learner: Any  # rlvr.train.learner.Learner: the coefficients (kl_coef, entropy_coef), the config
    step: StepBatch
    idx: torch.Tensor  # [n] rows of the batch
    mask: torch.Tensor  # [n, T] loss mask of the rows
    logp: torch.Tensor  # [n, T] log-probs under the current policy (with grad)
    entropy: torch.Tensor  # [n, T] per-token entropy (detached unless an entropy bonus trains)
    weights: torch.Tensor | None  # [n, T] per-token weights (mismatch, stale rows, token-weight registry)
    bonus_mask: torch.Tensor  # [n, T] tokens of the entropy bonus (the loss mask, or a token weight's selection)
    inputs: dict  # the extra inputs the policy loss names (rewards, group, ref_logp, ...), sliced to the rows
    counts: dict  # the minibatch's normalisers: batch_num_tokens, batch_num_seqs
    agg: dict  # loss aggregation (mode, counts, params) for the loss
    agg_metric: dict  # ... for metrics: over the rows that train (zero-advantage rows skipped)
    frac: float  # the micro-batch's share of the minibatch's trained tokens (weights its metrics)

    @property
    def old_logp(self) -> torch.Tensor:
        return self.step.old_logp[self.idx]

    @property
    def advantages(self) -> torch.Tensor:
        return self.step.advantages[self.idx]

    def log(self, key: str, value: float) -> None:
        self.step.sums[key] = self.step.sums.get(key, 0.0) + value
