"""The terms of the learner's loss on one micro-batch: the policy loss, the entropy bonus, the KL loss.

The loss is a list of registered terms (:data:`LOSS_TERMS`), added in the order the learner lists them
(:func:`active_terms`). A term reads one :class:`MicroBatch`, logs its own metrics with ``mb.log`` and
returns its contribution to the loss, already signed and scaled by its coefficient, or None when it
adds nothing this step. The math of every term is in :mod:`rlvr.algorithms`; a term only chooses the
tokens and the coefficient. A new term is one function::

    @register_loss_term("my_term")
    def my_term(mb: MicroBatch) -> torch.Tensor | None:
        ...

and one name in :func:`active_terms` (or a config switch that adds it there).

Every term aggregates over ``mb.mask``, the micro-batch's *loss mask* (the tokens the policy wrote:
:attr:`rlvr.rollout.base.Rollout.loss_mask`), with the denominators of the whole minibatch
(``mb.counts``), so the accumulated gradient equals the minibatch's exactly.
"""

from __future__ import annotations

from typing import Callable

import torch

from rlvr import algorithms as A
from rlvr.train.step import MicroBatch

#: name -> term(mb) -> contribution | None
LOSS_TERMS: dict[str, Callable[[MicroBatch], torch.Tensor | None]] = {}


def register_loss_term(name: str):
    """Decorator: ``@register_loss_term(name)`` adds a term to :data:`LOSS_TERMS`."""
    def deco(fn):
        LOSS_TERMS[name] = fn
        return fn
    return deco


def active_terms(config) -> list[str]:
    """The terms of a run's loss, in the order they are added: the policy loss, the entropy term
    (it logs the entropy every step; it adds a bonus only while the coefficient is > 0), the KL loss
    when ``kl.placement=loss``."""
    return ["policy", "entropy"] + (["kl"] if config.kl.placement == "loss" else [])


@register_loss_term("policy")
def policy_term(mb: MicroBatch) -> torch.Tensor:
    """The configured policy loss (``algorithm.policy_loss``, :func:`rlvr.algorithms.policy_loss`) with the
    step's scheduled parameters; its metrics are token-weighted means over the minibatch."""
    learner = mb.learner
    alg = learner.config.algorithm
    loss, metrics = A.policy_loss(
        alg.policy_loss, logp=mb.logp, old_logp=mb.old_logp, advantages=mb.advantages, mask=mb.mask,
        agg=alg.loss_agg_mode, weights=mb.weights, **mb.counts, **alg.loss_agg_params, **mb.inputs,
        **learner.loss_params)
    for k, v in metrics.items():
        mb.log(k, float(v) * mb.frac)
    return loss


@register_loss_term("entropy")
def entropy_term(mb: MicroBatch) -> torch.Tensor | None:
    """``-c_H * H``: the entropy bonus (:func:`rlvr.algorithms.aggregate_loss` of the per-token entropy)
    over ``mb.bonus_mask``, less the tokens AsyPPO's critics disagree on. Logs the mean entropy always."""
    learner = mb.learner
    entropy = A.aggregate_loss(mb.entropy, mb.mask, **mb.agg_metric)
    mb.log("entropy_token_sum", float((mb.entropy.detach() * mb.bonus_mask).sum()))
    mb.log("entropy_token_count", float(mb.bonus_mask.sum()))
    mb.log("entropy", float(entropy.detach()))
    if learner.entropy_coef <= 0:
        return None
    entropy_mask = mb.step.entropy_mask  # AsyPPO: high-disagreement tokens get no bonus
    bmask = mb.bonus_mask if entropy_mask is None else mb.bonus_mask * entropy_mask[mb.idx]
    bonus = entropy if bmask is mb.mask else A.aggregate_loss(mb.entropy, bmask, **mb.agg)
    return -learner.entropy_coef * bonus


@register_loss_term("kl")
def kl_term(mb: MicroBatch) -> torch.Tensor:
    """``beta * KL(pi || pi_ref)`` in the loss (``kl.placement=loss``) with the configured estimator
    (:func:`rlvr.algorithms.kl_penalty`), aggregated like the policy loss; an estimator that names
    ``old_logp`` (``k3_is``, importance-weighted) gets the behaviour log-probs."""
    learner = mb.learner
    cfg = learner.config
    ref_logp = mb.step.ref_logp[mb.idx]
    extra = {"old_logp": mb.old_logp} if learner.kl_reads_old_logp else {}  # k3_is: the ratio to the behaviour
    kl = A.aggregate_loss(A.kl_penalty(mb.logp, ref_logp, cfg.kl.estimator, **learner.kl_hp, **extra), mb.mask,
                          **mb.agg)
    mb.log("kl_loss", float(kl.detach()))
    return learner.kl_coef * kl
