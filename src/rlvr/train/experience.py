"""Experience: scored rollouts, the producer that makes them and the source the learner reads.

Synchronous training is the special case of asynchronous training with a staleness bound of 0:
the loop always asks an :class:`ExperienceSource` for the next batch and never knows how it was
made. :class:`OnPolicyQueue` produces just in time (staleness 0); an asynchronous source (a
replay buffer fed by Ray rollout workers) implements the same three methods.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import torch

from rlvr.rollout.base import Rollout, RolloutEngine, SamplingParams


@dataclass
class Experience:
    """One batch of scored rollouts: B = prompts x G rows."""

    rollout: Rollout
    rewards: torch.Tensor  # [B] the scalar training reward
    reward_components: dict[str, torch.Tensor]  # named rewards from the verifier, each [B]
    group: torch.Tensor  # [B] group id (one per prompt)
    problems: list  # [B] the Problem each row answers
    timings: dict[str, float] = field(default_factory=dict)

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

    def _order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(len(self.problems), generator=g).tolist()

    def next(self, n: int) -> list:
        out = []
        while len(out) < n:
            epoch, offset = divmod(self.position, len(self.problems))
            order = self._order(epoch)
            take = min(n - len(out), len(order) - offset)
            out.extend(self.problems[i] for i in order[offset:offset + take])
            self.position += take
        return out

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])


def score(task, problems: list, texts: list[str]) -> dict[str, torch.Tensor]:
    """Run the task's verifier on every completion; named rewards as float tensors ``[B]``."""
    scores = [task.score(p, t) for p, t in zip(problems, texts)]
    names = scores[0].keys() if scores else ()
    return {k: torch.tensor([s[k] for s in scores], dtype=torch.float32) for k in names}


class RolloutProducer:
    """prompts -> engine -> verifier: makes one :class:`Experience` per call."""

    def __init__(self, engine: RolloutEngine, task, sampler: PromptSampler, params: SamplingParams,
                 prompts_per_step: int):
        self.engine, self.task, self.sampler = engine, task, sampler
        self.params, self.prompts_per_step = params, prompts_per_step

    def produce(self) -> Experience:
        problems = self.sampler.next(self.prompts_per_step)
        t0 = time.perf_counter()
        rollout = self.engine.generate([p.prompt for p in problems], self.params)
        t1 = time.perf_counter()
        rows = [problems[i] for i in rollout.prompt_index.tolist()]
        components = score(self.task, rows, rollout.texts)
        t2 = time.perf_counter()
        return Experience(rollout=rollout, rewards=components["reward"], reward_components=components,
                          group=rollout.prompt_index.clone(), problems=rows,
                          timings={"generate": t1 - t0, "score": t2 - t1})


class ExperienceSource(Protocol):
    def next_batch(self, policy_version: int) -> Experience: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class OnPolicyQueue:
    """A queue between producer and learner with a staleness bound.

    ``max_staleness=0`` (synchronous GRPO/PPO): every batch comes from the current policy, produced
    when the learner asks for it. Batches older than the bound are dropped.
    """

    def __init__(self, producer: RolloutProducer, max_staleness: int = 0):
        self.producer = producer
        self.max_staleness = max_staleness
        self.queue: deque[Experience] = deque()

    def next_batch(self, policy_version: int) -> Experience:
        while self.queue and policy_version - self.queue[0].policy_version > self.max_staleness:
            self.queue.popleft()
        if not self.queue:
            self.queue.append(self.producer.produce())
        return self.queue.popleft()

    def state_dict(self) -> dict:
        return {"sampler": self.producer.sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.producer.sampler.load_state_dict(state["sampler"])
