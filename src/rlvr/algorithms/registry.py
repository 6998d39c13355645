"""Registries of the algorithm core.

Each registry is a plain ``dict`` mapping a public name to a function.  Users extend them with the
``register_*`` decorators::

    from rlvr.algorithms import register_policy_loss

    @register_policy_loss("my_loss")
    def my_loss(*, logp, old_logp, advantages, mask, agg, weights, batch_num_tokens,
                batch_num_seqs, norm_constant, **hp):
        ...
        return loss, metrics

An alias is simply a second key pointing at the same function.

Some registries carry a flag per name, kept in a set next to the dict and set by a keyword of the
decorator: ``register_policy_loss(name, ..., trust_region=True)`` adds the names to
``TRUST_REGION_LOSSES``, ``register_mismatch_correction(name, ..., bounded=True)`` to
``BOUNDED_MISMATCH_CORRECTIONS`` (see :func:`rlvr.algorithms.off_policy_safe`),
``register_token_weight(name, ..., entropy_bonus=True)`` to ``ENTROPY_BONUS_TOKEN_WEIGHTS``.  Registering a
name again without the flag removes it from the set.
"""

from __future__ import annotations

from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)

ADVANTAGE_ESTIMATORS: dict[str, Callable] = {}
POLICY_LOSSES: dict[str, Callable] = {}
KL_ESTIMATORS: dict[str, Callable] = {}
LOSS_AGGREGATIONS: dict[str, Callable] = {}
VALUE_LOSSES: dict[str, Callable] = {}
#: Off-policy / train-inference mismatch corrections: ``fn(old_logp, rollout_logp, mask, **params)
#: -> weights [B, T] | None`` (:func:`rlvr.algorithms.mismatch_weights`).
MISMATCH_CORRECTIONS: dict[str, Callable] = {}

#: Multi-objective reward combiners: ``fn(components, weights, group, **hp) -> (combined [B],
#: effective weights dict[str, [B]])`` (:func:`rlvr.algorithms.combine_rewards`).
REWARD_COMBINERS: dict[str, Callable] = {}
#: Per-token loss weights / masks applied to any policy loss (OPSM, top-entropy, STEER):
#: ``fn(*, advantages, logp, old_logp, mask, entropy, rollout_logp, **hp) -> weights [B, T]`` (detached).
TOKEN_WEIGHTS: dict[str, Callable] = {}

#: Token weights that also select the tokens of the entropy bonus (TRL's 80/20 top-entropy mask: the bonus
#: acts on the same tokens as the policy loss), set by ``register_token_weight(..., entropy_bonus=True)``.
ENTROPY_BONUS_TOKEN_WEIGHTS: set[str] = set()

#: Combiners whose output is already an advantage (group/batch normalised): the run uses the
#: ``identity`` advantage estimator with them.
ADVANTAGE_LEVEL_COMBINERS: set[str] = set()

#: Policy losses that stay bounded on stale data without any extra correction: the update is held
#: near ``old_logp`` by a clip / gate, or the objective is valid off-policy (trajectory balance).
TRUST_REGION_LOSSES: set[str] = set()
#: Mismatch corrections whose weights are bounded whatever the policies (truncated or 0/1 masks).
BOUNDED_MISMATCH_CORRECTIONS: set[str] = set()
#: Policy losses whose per-token loss is zero, with zero gradient, wherever the token's advantage is
#: zero, whatever the other rows hold (no batch statistic couples the rows): a row whose advantages
#: are all zero contributes nothing, so the learner may skip its forward/backward exactly
#: (:mod:`rlvr.train.zero_advantage`). ``clip_cov`` / ``kl_cov`` (batch covariances) and the group
#: objectives (``real``, ``rover``, ``tb``) are not in it.
ZERO_AT_ZERO_ADVANTAGE_LOSSES: set[str] = set()


def _make_register(registry: dict[str, Callable], flags: dict[str, set[str]] | None = None):
    flags = flags or {}

    def register(name: str, *aliases: str, **marks: bool) -> Callable[[F], F]:
        unknown = sorted(set(marks) - set(flags))
        if unknown:
            allowed = ", ".join(flags) or "none"
            raise TypeError(f"unknown registration flag(s) {', '.join(unknown)}; allowed: {allowed}")

        def deco(fn: F) -> F:
            for key in (name, *aliases):
                registry[key] = fn
                for flag, members in flags.items():
                    if marks.get(flag, False):
                        members.add(key)
                    else:
                        members.discard(key)
            return fn

        return deco

    return register


register_advantage_estimator = _make_register(ADVANTAGE_ESTIMATORS)
register_policy_loss = _make_register(POLICY_LOSSES, {"trust_region": TRUST_REGION_LOSSES,
                                                      "zero_at_zero_advantage": ZERO_AT_ZERO_ADVANTAGE_LOSSES})
register_kl_estimator = _make_register(KL_ESTIMATORS)
register_loss_aggregation = _make_register(LOSS_AGGREGATIONS)
register_value_loss = _make_register(VALUE_LOSSES)
register_mismatch_correction = _make_register(MISMATCH_CORRECTIONS, {"bounded": BOUNDED_MISMATCH_CORRECTIONS})
register_reward_combiner = _make_register(REWARD_COMBINERS, {"advantage": ADVANTAGE_LEVEL_COMBINERS})
register_token_weight = _make_register(TOKEN_WEIGHTS, {"entropy_bonus": ENTROPY_BONUS_TOKEN_WEIGHTS})

register_advantage_estimator.__doc__ = "Decorator: ``@register_advantage_estimator(name, *aliases)``."
register_policy_loss.__doc__ = (
    "Decorator: ``@register_policy_loss(name, *aliases, trust_region=False, zero_at_zero_advantage=False)``; "
    "``trust_region=True`` adds the names to ``TRUST_REGION_LOSSES`` (safe on stale data, see "
    "``off_policy_safe``), ``zero_at_zero_advantage=True`` to ``ZERO_AT_ZERO_ADVANTAGE_LOSSES`` (rows with "
    "zero advantage carry no gradient and may be skipped, see ``rlvr.train.zero_advantage``).")
register_mismatch_correction.__doc__ = (
    "Decorator: ``@register_mismatch_correction(name, *aliases, bounded=False)``; ``bounded=True`` adds "
    "the names to ``BOUNDED_MISMATCH_CORRECTIONS`` (weights bounded whatever the policies).")
register_token_weight.__doc__ = (
    "Decorator: ``@register_token_weight(name, *aliases, entropy_bonus=False)``; ``entropy_bonus=True`` adds "
    "the names to ``ENTROPY_BONUS_TOKEN_WEIGHTS`` (the weights also mask the entropy bonus).")
register_kl_estimator.__doc__ = "Decorator: ``@register_kl_estimator(name, *aliases)``."
register_loss_aggregation.__doc__ = "Decorator: ``@register_loss_aggregation(name, *aliases)``."
register_value_loss.__doc__ = "Decorator: ``@register_value_loss(name, *aliases)``."


def lookup(registry: dict[str, Callable], name: str, what: str) -> Callable:
    """Return ``registry[name]`` or raise ``ValueError`` listing the known names."""
    try:
        return registry[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(registry))
        raise ValueError(f"unknown {what} {name!r}; known: {known}") from None
