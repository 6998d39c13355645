"""Loss aggregation modes (spec algorithms.md section 0.4; names as in verl ``agg_loss``).

With per-token values ``l[i,t]`` and mask ``m``:

* ``token-mean``:              sum(m*l) / N_tok
* ``token-sum``:               sum(m*l)
* ``seq-mean-token-sum``:      sum_i sum_t m*l / B'
* ``seq-mean-token-mean``:     sum_i (sum_t m*l / sum_t m) / B'
* ``seq-mean-token-sum-norm``: sum(m*l) / (B' * norm_constant)   (Dr. GRPO / oat convention)

``N_tok`` is ``batch_num_tokens`` and ``B'`` is ``batch_num_seqs`` when given: these are the counts
of the WHOLE optimisation batch, so that summing the losses (and gradients) of micro-batches gives
exactly the full-batch loss.  When ``None`` they are the counts of the tensors passed: ``N_tok`` =
number of valid tokens, ``B'`` = number of sequences with at least one valid token.

Convention for ``seq-mean-token-sum-norm`` (spec 0.4 leaves it open; we fix one): the Dr. GRPO
paper / oat form ``L = (1 / (B' * L_max)) sum_{i,t} m l`` -- each sequence's token sum divided by
the constant ``norm_constant`` (default: the padded length ``T`` of ``values``), then averaged over
sequences.  This equals TRL's ``dr_grpo`` (B * max_completion_length) and differs from verl's
(which does not divide by the number of sequences) by the constant factor B'.  For a constant
normaliser across steps pass both ``norm_constant`` (= max generation length) and
``batch_num_seqs``.

Empty denominators (no valid token / sequence) are clamped to 1, so the loss is 0, not NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._utils import as_float_mask, masked_sum
from .registry import LOSS_AGGREGATIONS, lookup, register_loss_aggregation


def _den(value, default: Tensor, like: Tensor) -> Tensor:
    if value is None:
        value = default
    return torch.as_tensor(value, dtype=like.dtype, device=like.device).clamp(min=1.0)


def _num_seqs(m: Tensor) -> Tensor:
    return ((m != 0).any(-1)).sum().to(m.dtype)


@register_loss_aggregation("token-mean")
def token_mean(values, mask, *, batch_num_tokens=None, batch_num_seqs=None, norm_constant=None):
    m = as_float_mask(mask, values)
    return masked_sum(values, m) / _den(batch_num_tokens, m.sum(), values)


@register_loss_aggregation("token-sum")
def token_sum(values, mask, *, batch_num_tokens=None, batch_num_seqs=None, norm_constant=None):
    return masked_sum(values, as_float_mask(mask, values))


@register_loss_aggregation("seq-mean-token-sum")
def seq_mean_token_sum(values, mask, *, batch_num_tokens=None, batch_num_seqs=None, norm_constant=None):
    m = as_float_mask(mask, values)
    return masked_sum(values, m) / _den(batch_num_seqs, _num_seqs(m), values)


@register_loss_aggregation("seq-mean-token-mean")
def seq_mean_token_mean(values, mask, *, batch_num_tokens=None, batch_num_seqs=None, norm_constant=None):
    m = as_float_mask(mask, values)
    per_seq = masked_sum(values, m, dim=-1) / m.sum(-1).clamp(min=1.0)
    return per_seq.sum() / _den(batch_num_seqs, _num_seqs(m), values)


@register_loss_aggregation("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(values, mask, *, batch_num_tokens=None, batch_num_seqs=None, norm_constant=None):
    m = as_float_mask(mask, values)
    if norm_constant is None:
        norm_constant = values.shape[-1]
    if norm_constant <= 0:
        raise ValueError(f"norm_constant must be > 0, got {norm_constant}")
    return masked_sum(values, m) / (_den(batch_num_seqs, _num_seqs(m), values) * float(norm_constant))


def aggregate_loss(
    values: Tensor,
    mask: Tensor,
    mode: str = "token-mean",
    *,
    batch_num_tokens=None,
    batch_num_seqs=None,
    norm_constant=None,
) -> Tensor:
    """Aggregate per-token values ``[B, T]`` to a scalar with the named mode (see module doc).

    ``mask`` may be bool or 0/1 float, with interior zeros.  Masked positions never contribute, even
    if they hold NaN/inf.
    """
    fn = lookup(LOSS_AGGREGATIONS, mode, "loss aggregation mode")
    if values.shape != mask.shape:
        raise ValueError(f"values {tuple(values.shape)} and mask {tuple(mask.shape)} must have the same shape")
    return fn(
        values,
        mask,
        batch_num_tokens=batch_num_tokens,
        batch_num_seqs=batch_num_seqs,
        norm_constant=norm_constant,
    )
