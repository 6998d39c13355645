"""Cutting a batch into minibatches and micro-batches of whole groups (the learner's and the critics')."""

from __future__ import annotations

import torch


def split_groups(group: torch.Tensor, n: int, generator: torch.Generator) -> list[list[torch.Tensor]]:
    """Shuffle the groups and deal them into ``n`` minibatches (lists of row-index tensors)."""
    ids = torch.unique(group)
    order = ids[torch.randperm(len(ids), generator=generator)]
    rows = [torch.nonzero(group == g).flatten() for g in order]
    n = min(n, len(rows))
    return [rows[i::n] for i in range(n)] if n > 1 else [rows]


def micro_batches(groups: list[torch.Tensor], size: int):
    """Row indices in chunks of whole groups, each at most ``size`` rows (or one group if larger)."""
    chunk, count = [], 0
    for rows in groups:
        if chunk and count + len(rows) > size:
            yield torch.cat(chunk)
            chunk, count = [], 0
        chunk.append(rows)
        count += len(rows)
    if chunk:
        yield torch.cat(chunk)


def sort_groups_by_length(groups: list[torch.Tensor], prompt_mask: torch.Tensor,
                          completion_mask: torch.Tensor) -> list[torch.Tensor]:
    """The groups ordered by their longest row (real prompt + completion tokens), a stable sort, so
    that consecutive micro-batches hold rows of similar length and :func:`trim_padding` cuts more.
    Only the order of the micro-batches' gradient sums changes (float reassociation)."""
    lengths = prompt_mask.sum(-1) + completion_mask.sum(-1)
    keys = [int(lengths[g].max()) if len(g) else 0 for g in groups]
    order = sorted(range(len(groups)), key=lambda i: keys[i])
    return [groups[i] for i in order]


def log_once(message: str) -> None:
    """A one-time note (e.g. why the shared-prefix forward is off for a model) on the ``rlvr`` logger."""
    import logging

    logging.getLogger("rlvr").warning(message)
