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
"""

from __future__ import annotations

from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)

ADVANTAGE_ESTIMATORS: dict[str, Callable] = {}
POLICY_LOSSES: dict[str, Callable] = {}
KL_ESTIMATORS: dict[str, Callable] = {}
LOSS_AGGREGATIONS: dict[str, Callable] = {}
VALUE_LOSSES: dict[str, Callable] = {}


def _make_register(registry: dict[str, Callable]):
    def register(name: str, *aliases: str) -> Callable[[F], F]:
        def deco(fn: F) -> F:
            for key in (name, *aliases):
                registry[key] = fn
            return fn

        return deco

    return register


register_advantage_estimator = _make_register(ADVANTAGE_ESTIMATORS)
register_policy_loss = _make_register(POLICY_LOSSES)
register_kl_estimator = _make_register(KL_ESTIMATORS)
register_loss_aggregation = _make_register(LOSS_AGGREGATIONS)
register_value_loss = _make_register(VALUE_LOSSES)

register_advantage_estimator.__doc__ = "Decorator: ``@register_advantage_estimator(name, *aliases)``."
register_policy_loss.__doc__ = "Decorator: ``@register_policy_loss(name, *aliases)``."
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
