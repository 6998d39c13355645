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


#: token budgets already warned about (a group larger than the budget), so the warning shows once per budget
_OVER_BUDGET_WARNED: set[int] = set()


def micro_batches(groups: list[torch.Tensor], size: int, max_tokens: int = 0,
                  prompt_lengths: torch.Tensor | None = None, completion_lengths: torch.Tensor | None = None):
    """Row indices in chunks of whole groups, each at most ``size`` rows and, with ``max_tokens > 0``
    (``trainer.max_tokens_per_microbatch``), at most ``max_tokens`` padded positions: rows x (the longest
    real prompt + the longest real completion among them), what the forward of the chunk runs once
    :func:`rlvr.models.logprobs.trim_padding` has cut the padding (a shared-prefix or packed forward runs
    fewer). A group over a limit on its own is a chunk of its own. ``*_lengths``: real tokens per row."""
    chunk, count, longest_p, longest_c = [], 0, 0, 0
    for rows in groups:
        p = int(prompt_lengths[rows].max()) if max_tokens and len(rows) else 0
        c = int(completion_lengths[rows].max()) if max_tokens and len(rows) else 0
        over_tokens = max_tokens and (count + len(rows)) * (max(longest_p, p) + max(longest_c, c)) > max_tokens
        if max_tokens and len(rows) * (p + c) > max_tokens and max_tokens not in _OVER_BUDGET_WARNED:
            _OVER_BUDGET_WARNED.add(max_tokens)
            log_once(f"trainer.max_tokens_per_microbatch={max_tokens} is below one group ({len(rows)} rows x "
                     f"{p + c} positions = {len(rows) * (p + c)}): groups are never split, so this micro-batch "
                     "runs over the budget; raise the budget to at least group_size x (prompt + completion length)")
        if chunk and (count + len(rows) > size or over_tokens):
            yield torch.cat(chunk)
            chunk, count, longest_p, longest_c = [], 0, 0, 0
        chunk.append(rows)
        count += len(rows)
        longest_p, longest_c = max(longest_p, p), max(longest_c, c)
    if chunk:
        yield torch.cat(chunk)


def padded_tokens(rows: torch.Tensor, prompt_lengths: torch.Tensor, completion_lengths: torch.Tensor) -> int:
    """Positions of one micro-batch's trimmed, padded forward: rows x (longest prompt + longest completion)."""
    if not len(rows):
        return 0
    return len(rows) * (int(prompt_lengths[rows].max()) + int(completion_lengths[rows].max()))


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
