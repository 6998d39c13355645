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
    sum_pi_squared_from_logits(logits, chunk=1024) -> [...]   (optimal token baseline input)
    clip_by_value(x, tensor_min, tensor_max) -> x clamped elementwise
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
    ZERO_AT_ZERO_ADVANTAGE_LOSSES,
    BOUNDED_MISMATCH_CORRECTIONS,
    ENTROPY_BONUS_TOKEN_WEIGHTS,
    VALUE_LOSSES,
    REWARD_COMBINERS,
    ADVANTAGE_LEVEL_COMBINERS,
    TOKEN_WEIGHTS,
    register_reward_combiner,
    register_token_weight,
    register_advantage_estimator,
    register_kl_estimator,
    register_loss_aggregation,
    register_mismatch_correction,
    register_policy_loss,
    register_value_loss,
)
from .aggregation import aggregate_loss
from .kl import importance_weighted_kl, kl_penalty
from .entropy import entropy_bonus, entropy_from_logits, sum_pi_squared_from_logits
from ._utils import clip_by_value
from .advantages import asyppo_masks, compute_advantages
from .policy_losses import policy_loss
from .preference import bradley_terry_loss, distillation_advantage, pair_accuracy, reverse_kl_full
from .value_losses import hl_gauss_target, hl_gauss_value, two_hot_target, value_loss
from .rewards import (
    combine_rewards,
    dvao,
    gradient_weight_update,
    hv_meta_reward,
    hypervolume,
    hypervolume_contribution,
    lagrangian_mixed_advantage,
    multiplier_loss,
    multiplier_loss_grad,
    normalize_then_sum,
    squash,
    trust_grpo,
    trust_weights,
)
from .exploration import (
    adaptive_entropy_applied,
    adaptive_entropy_update,
    adaptive_kl_update,
    arm_advantages,
    dormant_scores,
    grama_scores,
    imentor_bonus,
    low_prob_confidence,
    token_weight_params,
    token_weights,
)
from .kl import kl_params
from .mismatch import (
    ROLLOUT_RS_OPTIONS,
    batch_normalize_weights,
    decoupled_weights,
    hispo_mask,
    is_ratio,
    masked_is_weights,
    mismatch_bounded,
    mismatch_params,
    mismatch_weights,
    off_policy_safe,
    parse_rollout_is_threshold,
    parse_rollout_rs,
    rollout_is_weights,
    rollout_rs_keep,
    truncated_is_weights,
)

__all__ = [
    "bradley_terry_loss",
    "distillation_advantage",
    "pair_accuracy",
    "reverse_kl_full",
    "ADVANTAGE_ESTIMATORS",
    "KL_ESTIMATORS",
    "LOSS_AGGREGATIONS",
    "MISMATCH_CORRECTIONS",
    "POLICY_LOSSES",
    "TRUST_REGION_LOSSES",
    "ZERO_AT_ZERO_ADVANTAGE_LOSSES",
    "BOUNDED_MISMATCH_CORRECTIONS",
    "ENTROPY_BONUS_TOKEN_WEIGHTS",
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
    "REWARD_COMBINERS",
    "ADVANTAGE_LEVEL_COMBINERS",
    "TOKEN_WEIGHTS",
    "register_reward_combiner",
    "register_token_weight",
    "combine_rewards",
    "normalize_then_sum",
    "dvao",
    "hypervolume",
    "hypervolume_contribution",
    "hv_meta_reward",
    "gradient_weight_update",
    "squash",
    "trust_grpo",
    "trust_weights",
    "arm_advantages",
    "low_prob_confidence",
    "lagrangian_mixed_advantage",
    "multiplier_loss",
    "multiplier_loss_grad",
    "token_weights",
    "token_weight_params",
    "adaptive_kl_update",
    "adaptive_entropy_update",
    "adaptive_entropy_applied",
    "imentor_bonus",
    "dormant_scores",
    "grama_scores",
    "kl_params",
    "clip_by_value",
    "sum_pi_squared_from_logits",
    "ROLLOUT_RS_OPTIONS",
    "batch_normalize_weights",
    "rollout_is_weights",
    "rollout_rs_keep",
    "parse_rollout_is_threshold",
    "parse_rollout_rs",
]
