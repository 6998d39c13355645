"""Loss parameters annealed over learner steps (``algorithm.policy_loss_schedule``).

TBA (Bartoldson et al. 2025, arXiv 2503.18929; authors' ``tba_trainer_gsm8k.py``) anneals its KL
coefficient beta linearly, ``beta(t) = start + (end - start) * t / steps`` for ``t < steps``, then
``end``; ``t`` is the 0-based learner step (the authors' ``iteration - 1``). Any numeric parameter of
the configured policy loss can be scheduled the same way; the learner applies the schedule at every
step and logs each value as ``schedule/<name>``.
"""

from __future__ import annotations


def linear_value(schedule, step: int) -> float:
    """The value of a :class:`~rlvr.config.LinearSchedule` at 0-based learner step ``step``."""
    frac = min(1.0, max(0, step) / schedule.steps)
    return schedule.start + (schedule.end - schedule.start) * frac


def scheduled_loss_params(algorithm, step: int) -> tuple[dict, dict[str, float]]:
    """``algorithm.policy_loss_params`` with every scheduled parameter set to its value at ``step``,
    and the ``schedule/<name>`` metrics of this step."""
    params = dict(algorithm.policy_loss_params)
    metrics = {}
    for name, schedule in getattr(algorithm, "policy_loss_schedule", {}).items():
        params[name] = linear_value(schedule, step)
        metrics[f"schedule/{name}"] = params[name]
    return params, metrics
