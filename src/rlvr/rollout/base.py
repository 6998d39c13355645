"""The rollout-engine protocol and the data it returns."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How completions are sampled. ``temperature=0`` means greedy decoding."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # keep the k most likely tokens (0: off); applied before top_p, as transformers does
    max_new_tokens: int = 16
    n: int = 1  # completions per prompt (the group size G)
    seed: int | None = None  # draw this call's samples from its own seeded stream (None: the global RNG)
    #: each prompt's group sampled on its own, from its own stream (:func:`prompt_seeds`): a row's completion
    #: and log-probs then depend only on its prompt, the seed and the weights, never on the other prompts of
    #: the call (``run.deterministic``; slower: one engine pass per prompt)
    batch_invariant: bool = False
    #: return the sampler's kept-token set per position (``Rollout.support_ids``) when top-k / top-p truncate
    #: it, so the learner can renormalise its log-probs over the same set (``trainer.logprob_support=sampled``)
    return_support: bool = False

    @property
    def truncates(self) -> bool:
        """Whether sampling draws from a truncated (top-k / top-p) distribution."""
        return self.temperature > 0 and (self.top_p < 1.0 or self.top_k > 0)


def prompt_seeds(seed: int, prompts: Sequence[str]) -> list[int]:
    """One sampling seed per prompt of a call seeded ``seed`` that does not depend on the prompt's place in
    the call: from the prompt's text (CRC-32, stable across processes) and how many identical prompts came
    before it in this call (so repeated prompts still get different samples)."""
    seen: dict[str, int] = {}
    out = []
    for text in prompts:
        if not isinstance(text, str):  # a prompt given as token ids (RolloutEngine.generate_ids)
            text = "ids:" + ",".join(map(str, text))
        k = seen.get(text, 0)
        seen[text] = k + 1
        out.append((int(seed) * 1_000_003 + zlib.crc32(text.encode("utf-8")) * 7_919 + k * 104_729) % (2**62))
    return out


@dataclass
class Rollout:
    """A batch of completions, one row per completion (B = prompts x n).

    Tensors are right-padded over the completion positions ``T``; prompts are left-padded.
    ``rollout_logp`` holds the log-probabilities of the sampled tokens under the *sampling*
    distribution (temperature and top-p applied), as returned by the engine, so that
    train-inference mismatch is always measurable.

    Two masks over the completion positions: ``completion_mask`` says which tokens are there (the
    forward pass attends to them), ``loss_mask`` which of them the policy wrote and is trained on.
    For a single-turn completion they are the same (``loss_mask`` defaults to ``completion_mask``);
    a multi-turn rollout leaves the tokens an environment or tool inserted out of ``loss_mask``.
    """

    prompt_ids: torch.Tensor  # [B, P] left-padded
    prompt_mask: torch.Tensor  # [B, P]
    completion_ids: torch.Tensor  # [B, T] right-padded (pad id after the end)
    completion_mask: torch.Tensor  # [B, T] 1 for generated tokens (EOS included)
    rollout_logp: torch.Tensor  # [B, T]
    finish_reason: list[str]  # "stop" (EOS) or "length"
    prompt_index: torch.Tensor  # [B] index of the prompt in the request (the group id)
    texts: list[str]  # decoded completions without special tokens
    policy_version: int
    num_generated_tokens: int = 0
    extras: dict = field(default_factory=dict)
    versions: torch.Tensor | None = None  # [B] policy version that produced each sequence (per-token later)
    loss_mask: torch.Tensor | None = None  # [B, T] tokens trained on (None: every completion token)
    #: [B, T, K] int32: the ids the sampler could draw at each position (its top-k / top-p kept set), -1 padding;
    #: a position with no id (all -1, e.g. past a row's end) means the full vocabulary. None: not recorded.
    support_ids: torch.Tensor | None = None
    #: [B, T] long: the policy version of the weights that drew each token (partial rollouts: a weight update
    #: mid-generation makes later tokens newer); None: every token is its row's ``versions``
    token_versions: torch.Tensor | None = None

    def versions_per_token(self) -> torch.Tensor:
        """``[B, T]``: each token's policy version (``token_versions``, or the row's version broadcast)."""
        if self.token_versions is not None:
            return self.token_versions
        return self.versions.unsqueeze(-1).expand(self.completion_ids.shape)

    def __post_init__(self):
        if self.versions is None:
            self.versions = torch.full((len(self.finish_reason),), int(self.policy_version), dtype=torch.long)
        if self.loss_mask is None:
            self.loss_mask = self.completion_mask
        elif self.loss_mask is not self.completion_mask:
            check_loss_mask(self.loss_mask, self.completion_mask)
        if self.token_versions is not None and self.token_versions.shape != self.completion_ids.shape:
            raise ValueError(f"token_versions must be [B, T] = {tuple(self.completion_ids.shape)}, "
                             f"got {tuple(self.token_versions.shape)}")
        if self.support_ids is not None and (self.support_ids.dim() != 3
                                             or self.support_ids.shape[:2] != self.completion_ids.shape):
            raise ValueError(f"support_ids must be [B, T, K] with [B, T] = {tuple(self.completion_ids.shape)}, "
                             f"got {tuple(self.support_ids.shape)}")


def check_loss_mask(loss_mask: torch.Tensor, completion_mask: torch.Tensor) -> None:
    """A loss mask covers the completion's positions and trains only tokens that are there: a token
    outside ``completion_mask`` (padding) in the loss would be a silent wrong gradient, so it raises."""
    if loss_mask.shape != completion_mask.shape:
        raise ValueError(f"rollout.loss_mask has shape {tuple(loss_mask.shape)}, the completion mask "
                         f"{tuple(completion_mask.shape)}: one entry per completion position")
    outside = (loss_mask != 0) & (completion_mask == 0)
    if bool(outside.any()):
        row = int(outside.any(-1).nonzero()[0])
        raise ValueError(f"rollout.loss_mask trains {int(outside.sum())} padding position(s) (row {row}): "
                         "a loss token must be a completion token (completion_mask = 1)")


class RolloutEngine(Protocol):
    """Anything that turns prompts into sampled completions with their log-probs. ``generate_ids`` takes the
    prompts as token ids, used as they are (no tokenization: a multi-turn episode's context is the ids the
    engine sampled plus the environment's), with this call's stop conditions."""

    policy_version: int

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> Rollout: ...

    def generate_ids(self, prompt_ids: Sequence[Sequence[int]], params: SamplingParams,
                     stops=None) -> Rollout: ...

    def update_weights(self, state_dict: dict[str, torch.Tensor], policy_version: int) -> None: ...


class IdsPrompts:
    """``generate_ids`` for an engine whose ``generate`` takes prompts as text or as lists of token ids
    (:func:`encode_prompts`) and whose ``stops`` attribute ends its completions (the lean and HF engines)."""

    def generate_ids(self, prompt_ids: Sequence[Sequence[int]], params: SamplingParams, stops=None) -> Rollout:
        """``generate`` on prompts given as token ids (used as they are), ending at ``stops``
        (:class:`~rlvr.rollout.stops.StopConditions`; default: the engine's) for this call only."""
        saved = self.stops
        self.stops = stops if stops is not None else saved
        try:
            return self.generate([list(map(int, p)) for p in prompt_ids], params)
        finally:
            self.stops = saved


def encode_prompts(tokenizer, prompts: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` ``[B, P]``, left-padded: text prompts through the tokenizer, prompts given
    as token ids (lists) used exactly as they are."""
    if all(isinstance(p, str) for p in prompts):
        enc = tokenizer(list(prompts), return_tensors="pt", padding=True, padding_side="left")
        return enc["input_ids"], enc["attention_mask"]
    if any(isinstance(p, str) for p in prompts):
        raise TypeError("prompts are all text or all token ids, not a mix")
    width = max((len(p) for p in prompts), default=0)
    if any(len(p) == 0 for p in prompts):
        raise ValueError("a prompt of token ids is empty")
    ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, width - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
        mask[b, width - len(p):] = 1
    return ids, mask


def kept_ids(scores: torch.Tensor) -> torch.Tensor:
    """``[B, K]`` int32: the ids with a finite score per row (the sampler's kept set), in id order, -1 padding;
    ``K`` = the largest kept set of the batch."""
    kept = torch.isfinite(scores)
    k = int(kept.sum(-1).max()) if kept.numel() else 0
    order = torch.argsort((~kept).to(torch.int8), dim=-1, stable=True)[..., :k]  # kept ids first, in id order
    ids = order.to(torch.int32)
    return ids.masked_fill(~kept.gather(-1, order), -1)


def pad_support(tensors: list[torch.Tensor | None], widths: list[int]) -> torch.Tensor | None:
    """Concatenate ``[b_i, T_i, K_i]`` support-id tensors along rows, padding ``T`` to ``max(widths)`` and
    ``K`` to the largest ``K_i`` with -1 (a missing one, None, becomes all -1: the full vocabulary).
    Returns None when every part is None."""
    if all(t is None for t in tensors):
        return None
    width = max(widths)
    k = max(t.shape[2] for t in tensors if t is not None)
    out = []
    for t, w in zip(tensors, widths):
        if t is None:
            raise ValueError("support_ids recorded for some rows but not others")
        out.append(torch.nn.functional.pad(t, (0, k - t.shape[2], 0, width - t.shape[1]), value=-1))
    return torch.cat(out)

