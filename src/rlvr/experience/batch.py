"""Experience: scored rollouts, and the source the learner reads them from.

Synchronous training is the special case of asynchronous training with a staleness bound of 0:
the loop always asks an :class:`ExperienceSource` for the next batch and never knows how it was
made. :class:`OnPolicyQueue` produces in place (staleness 0); :class:`rlvr.experience.async_source.AsyncSource`
is fed by rollout workers (threads or Ray actors) and implements the same methods. The producer
that makes a batch is :mod:`rlvr.experience.producer`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlvr.rollout.base import Rollout


@dataclass
class Experience:
    """One batch of scored rollouts: B = prompts x G rows."""

    rollout: Rollout
    rewards: torch.Tensor  # [B] the scalar training reward
    reward_components: dict[str, torch.Tensor]  # named rewards from the verifier, each [B]
    group: torch.Tensor  # [B] group id (one per prompt)
    problems: list  # [B] the Problem each row answers
    timings: dict[str, float] = field(default_factory=dict)
    extras: dict = field(default_factory=dict)  # e.g. baseline_rewards [B] (ReMax)

    @property
    def policy_version(self) -> int:
        return self.rollout.policy_version


class PromptSampler:
    """Walks through the training problems in a seeded random order, epoch after epoch.

    Its whole state is one integer (``position``), so a resumed run draws the same prompts.
    """

    def __init__(self, problems: list, seed: int):
        if not problems:
            raise ValueError("the task has no training problems")
        self.problems = problems
        self.seed = seed
        self.position = 0
        self._cached: tuple[int, list[int]] | None = None  # (epoch, its order): one permutation per epoch

    def _order(self, epoch: int) -> list[int]:
        if self._cached is None or self._cached[0] != epoch:  # drawing n prompts costs O(n), not O(dataset)
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._cached = (epoch, torch.randperm(len(self.problems), generator=g).tolist())
        return self._cached[1]

    def next_indices(self, n: int) -> list[int]:
        """The indices of the next ``n`` problems (the position moves on by ``n``)."""
        out = []
        while len(out) < n:
            epoch, offset = divmod(self.position, len(self.problems))
            order = self._order(epoch)
            take = min(n - len(out), len(order) - offset)
            out.extend(order[offset:offset + take])
            self.position += take
        return out

    def next(self, n: int) -> list:
        return [self.problems[i] for i in self.next_indices(n)]

    def __getstate__(self) -> dict:  # sent to a Ray buffer actor without the cached permutation
        return {**self.__dict__, "_cached": None}

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])


def overlong_penalty(lengths: torch.Tensor, max_len: int, buffer_len: int, factor: float = 1.0) -> torch.Tensor:
    """DAPO soft overlong punishment (Yu et al. 2025, arXiv 2503.14476, eq. 13).

    ``R_len = min(0, -(|y| - (L_max - L_cache)) / L_cache) * factor``: 0 up to ``L_max - L_cache``,
    then falling linearly to ``-factor`` at ``L_max`` (verl's form; lengths never exceed L_max).
    """
    if buffer_len <= 0:
        return torch.zeros_like(lengths, dtype=torch.float32)
    expected = max_len - buffer_len
    return torch.clamp(-(lengths.float() - expected) / buffer_len, max=0.0) * factor


def _per_row(value, rollout) -> bool:
    """Whether a rollout's extra is a per-row list (a multi-turn episode's turn rewards, spans, transcript)."""
    return isinstance(value, list) and len(value) == len(rollout.finish_reason)


def select_rows(exp: Experience, idx: torch.Tensor) -> Experience:
    """The rows ``idx`` of an experience batch (all per-row fields sliced alike)."""
    r = exp.rollout
    il = idx.tolist()
    rollout = type(r)(
        prompt_ids=r.prompt_ids[idx], prompt_mask=r.prompt_mask[idx], completion_ids=r.completion_ids[idx],
        completion_mask=r.completion_mask[idx], rollout_logp=r.rollout_logp[idx],
        finish_reason=[r.finish_reason[i] for i in il], prompt_index=r.prompt_index[idx],
        texts=[r.texts[i] for i in il], policy_version=r.policy_version,
        num_generated_tokens=int(r.completion_mask[idx].sum()), versions=r.versions[idx],
        loss_mask=None if r.loss_mask is r.completion_mask else r.loss_mask[idx],
        support_ids=None if r.support_ids is None else r.support_ids[idx],
        token_versions=None if r.token_versions is None else r.token_versions[idx],
        extras={k: ([v[i] for i in il] if _per_row(v, r) else v) for k, v in r.extras.items()})
    extras = {k: (v[idx] if isinstance(v, torch.Tensor) and v.shape[:1] == exp.rewards.shape else v)
              for k, v in exp.extras.items()}
    return Experience(rollout=rollout, rewards=exp.rewards[idx],
                      reward_components={k: v[idx] for k, v in exp.reward_components.items()},
                      group=exp.group[idx], problems=[exp.problems[i] for i in il],
                      timings=dict(exp.timings), extras=extras)


def keep_informative_groups(exp: Experience, metric: torch.Tensor) -> Experience:
    """Drop every group whose ``metric`` is the same for all its members (DAPO dynamic sampling)."""
    keep = torch.zeros_like(metric, dtype=torch.bool)
    for g in torch.unique(exp.group):
        rows = exp.group == g
        vals = metric[rows]
        keep[rows] = bool(vals.max() != vals.min())
    return select_rows(exp, torch.nonzero(keep).flatten())


def truncate_groups(exp: Experience, n_groups: int) -> Experience:
    """Keep the first ``n_groups`` groups (in order of first appearance)."""
    order = list(dict.fromkeys(exp.group.tolist()))[:n_groups]
    keep = torch.isin(exp.group, torch.tensor(order, dtype=exp.group.dtype))
    return select_rows(exp, torch.nonzero(keep).flatten())


def concat_experience(parts: list[Experience], pad_id: int) -> Experience:
    from rlvr.rollout.base import pad_support
    from rlvr.rollout.hf import _pad_cat

    rs = [p.rollout for p in parts]
    rollout = type(rs[0])(
        prompt_ids=_pad_cat([r.prompt_ids for r in rs], pad_id, left=True),
        prompt_mask=_pad_cat([r.prompt_mask for r in rs], 0, left=True),
        completion_ids=_pad_cat([r.completion_ids for r in rs], pad_id, left=False),
        completion_mask=_pad_cat([r.completion_mask for r in rs], 0, left=False),
        rollout_logp=_pad_cat([r.rollout_logp for r in rs], 0.0, left=False),
        finish_reason=sum((r.finish_reason for r in rs), []),
        prompt_index=torch.cat([r.prompt_index for r in rs]), texts=sum((r.texts for r in rs), []),
        policy_version=min(r.policy_version for r in rs),
        num_generated_tokens=sum(r.num_generated_tokens for r in rs), versions=torch.cat([r.versions for r in rs]),
        loss_mask=(None if all(r.loss_mask is r.completion_mask for r in rs)
                   else _pad_cat([r.loss_mask for r in rs], 0, left=False)),
        support_ids=pad_support([r.support_ids for r in rs], [r.completion_ids.shape[1] for r in rs]),
        token_versions=(None if all(r.token_versions is None for r in rs)
                        else _pad_cat([r.versions_per_token() for r in rs], -1, left=False)),
        extras={k: sum((r.extras[k] for r in rs), []) for k, v in rs[0].extras.items()
                if all(_per_row(r.extras.get(k), r) for r in rs)})
    keys = parts[0].reward_components.keys()
    extras = {k: torch.cat([p.extras[k] for p in parts]) for k, v in parts[0].extras.items()
              if isinstance(v, torch.Tensor)}
    return Experience(rollout=rollout, rewards=torch.cat([p.rewards for p in parts]),
                      reward_components={k: torch.cat([p.reward_components[k] for p in parts]) for k in keys},
                      group=torch.cat([p.group for p in parts]), problems=sum((p.problems for p in parts), []),
                      extras=extras)


