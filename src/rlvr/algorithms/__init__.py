"""rlvr algorithm core: pure functions for advantages, policy/value losses, KL and aggregation.

Public API (see ``spec/api.md`` and ``docs/algorithms.md``)::

    compute_advantages(name, *, rewards=None, token_rewards=None, values=None, mask, group=None, **hp)
        -> (advantages [B, T], returns [B, T] or None)
    policy_loss(name, *, logp, old_logp, advantages, mask, agg="token-mean", weights=None,
                batch_num_tokens=None, batch_num_seqs=None, norm_constant=None, **hp)
        -> (loss, metrics)
    kl_penalty(logp, ref_logp, kind) -> [B, T]
    aggregate_loss(values, mask, mode, *, batch_num_tokens=None, batch_num_seqs=None,
                   norm_constant=None) -> scalar
    value_loss(name, *, values, old_values, returns, mask, agg="token-mean", **hp) -> (loss, metrics)
    entropy_from_logits(logits) -> [...]
    mismatch_weights(name, old_logp, rollout_logp, mask, **params) -> weights [B, T] or None
    off_policy_safe(policy_loss, mismatch="none", *, cap=None) -> bool
"""

from .registry import (
    ADVANTAGE_ESTIMATORS,
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    MISMATCH_CORRECTIONS,
    POLICY_LOSSES,
    TRUST_REGION_LOSSES,
    BOUNDED_MISMATCH_CORRECTIONS,
    VALUE_LOSSES,
    register_advantage_estimator,
    register_kl_estimator,
    register_loss_aggregation,
    register_mismatch_correction,
    register_policy_loss,
    register_value_loss,
)
from .aggregation import aggregate_loss
from .kl import importance_weighted_kl, kl_penalty
from .entropy import entropy_bonus, entropy_from_logits
from .advantages import asyppo_masks, compute_advantages
from .policy_losses import policy_loss
from .value_losses import hl_gauss_target, hl_gauss_value, two_hot_target, value_loss
from .mismatch import (
    decoupled_weights,
    hispo_mask,
    is_ratio,
    masked_is_weights,
    mismatch_bounded,
    mismatch_params,
    mismatch_weights,
    off_policy_safe,
    truncated_is_weights,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "KL_ESTIMATORS",
    "LOSS_AGGREGATIONS",
    "MISMATCH_CORRECTIONS",
    "POLICY_LOSSES",
    "TRUST_REGION_LOSSES",
    "BOUNDED_MISMATCH_CORRECTIONS",
    "VALUE_LOSSES",
    "register_advantage_estimator",
    "register_kl_estimator",
    "register_loss_aggregation",
    "register_mismatch_correction",
    "register_policy_loss",
    "register_value_loss",
    "aggregate_loss",
    "kl_penalty",
    "importance_weighted_kl",
    "entropy_from_logits",
    "entropy_bonus",
    "compute_advantages",
    "asyppo_masks",
    "policy_loss",
    "value_loss",
    "hl_gauss_target",
    "hl_gauss_value",
    "two_hot_target",
    "is_ratio",
    "truncated_is_weights",
    "masked_is_weights",
    "hispo_mask",
    "decoupled_weights",
    "mismatch_weights",
    "mismatch_params",
    "mismatch_bounded",
    "off_policy_safe",
]
