"""Where the training loop's batches come from: one protocol, and the synchronous source.

:class:`ExperienceSource` is what the loop reads; :class:`OnPolicyQueue` (sync, staleness 0) produces
each batch in place. The others wrap or replace it: :class:`rlvr.experience.async_source.AsyncSource`
(rollout workers on threads or Ray, staleness at most S) and :func:`rlvr.experience.replay.with_replay`
(a replay buffer over either).
"""

from __future__ import annotations

from typing import Protocol

from rlvr.experience.async_source import ANCHOR_EVERY, AsyncSource
from rlvr.experience.batch import Experience, PromptSampler
from rlvr.experience.producer import PromptDraws, batch_seed
from rlvr.experience.ray_workers import RayPool
from rlvr.experience.replay import with_replay  # replay.enabled: a ReplaySource over the source below
from rlvr.experience.workers import DTYPES, LocalPool, thread_split
from rlvr.weights.sync import WeightPublisher


class ExperienceSource(Protocol):
    """What the training loop reads: the next batch for the learner's policy version, and where the
    learner's new weights go. Sync (:class:`OnPolicyQueue`) and async sources look the same."""

    def next_batch(self, policy_version: int) -> Experience: ...

    def publish_weights(self, model, policy_version: int, step: int) -> dict[str, float]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def close(self) -> None: ...


class OnPolicyQueue:
    """Synchronous training (staleness 0): each batch is produced in place, when the learner asks,
    by an engine that shares the learner's weights (publishing them only bumps the version)."""

    def __init__(self, producer, sampler: PromptSampler, run_seed: int = 0):
        self.producer, self.sampler, self.run_seed = producer, sampler, run_seed
        self.index = 0  # batches produced so far: batch i is sampled under batch_seed(run_seed, i)

    def next_batch(self, policy_version: int) -> Experience:
        draws = PromptDraws(self.sampler.problems, self.sampler.next_indices)
        exp = self.producer.produce(draws, batch_seed(self.run_seed, self.index))
        self.index += 1
        return exp

    def publish_weights(self, model, policy_version: int, step: int) -> dict[str, float]:
        self.producer.engine.update_weights(None, policy_version)
        return {}

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(), "next_index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        per_batch = self.producer.prompts_per_step
        self.index = int(state.get("next_index", self.sampler.position // per_batch))

    def close(self) -> None:
        pass


def make_source(config, producer, model, tokenizer, task, sampler, model_path=None):
    """The experience source a config's ``runtime`` section describes."""
    rt = config.runtime
    if not rt.decoupled():
        return with_replay(config, OnPolicyQueue(producer, sampler, config.run.seed), tokenizer, sampler)
    learner_threads, worker_threads = thread_split(rt, config.run.threads)
    publisher = WeightPublisher(method=rt.weight_sync, dtype=DTYPES[config.rollout_dtype()],
                                bucket_bytes=int(rt.sync_bucket_mb * (1 << 20)), history=ANCHOR_EVERY,
                                debug=rt.debug_checksums)
    if rt.backend == "ray":
        pool = RayPool(config, model_path, sampler, worker_threads)
    else:
        pool = LocalPool(config, model, tokenizer, task, sampler, worker_threads, model_path)
    return with_replay(config, AsyncSource(config, pool, publisher), tokenizer, sampler)
