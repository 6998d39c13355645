"""Asynchronous experience: rollout workers generate while the learner trains.

    learner (main thread)                         rollout worker x N (thread | Ray actor)
      source.next_batch(version)  <── queue ──     job = buffer.admit()        (staleness <= S)
      learner.update(batch)                        weights = board.since(mine)  (full | sparse patch)
      source.publish_weights(...)  ── board ──>    producer.produce(prompts, job.seed)

The training loop is the same as in sync mode; only the :class:`AsyncSource` differs from the
:class:`~rlvr.experience.batch.OnPolicyQueue`. Every worker owns a rollout engine with its own
copy of the weights (in ``rollout.dtype``) and draws its prompts from the run's one
:class:`~rlvr.experience.batch.PromptSampler` through the :class:`StalenessBuffer`.

Backends: ``local`` runs the workers as threads of this process (torch releases the GIL in its
kernels; HF ``generate``'s Python overhead still takes it); ``ray`` runs each worker in its own
Ray actor (:mod:`rlvr.experience.ray_workers`). Failures: a worker's exception, or a dead Ray
actor, stops the run with :class:`RolloutWorkerError` naming the worker (the loop then leaves
its last checkpoint, from which ``--resume`` continues); a wait longer than
``runtime.timeout_s`` raises :class:`RolloutTimeout`.
"""

from __future__ import annotations

import time

from rlvr.experience.staleness import RolloutTimeout, apply_stale_policy
from rlvr.models.lora import sync_tensors
from rlvr.weights.sync import WeightPublisher

ANCHOR_EVERY = 16  # sparse sync: a self-contained anchor every N publications bounds a chain's length


def token_staleness(exp, policy_version: int) -> dict[str, float]:
    """Partial rollouts: staleness per generated token (``policy_version - token_versions``; a row's
    ``staleness`` is its oldest token's) and the share of tokens drawn after a mid-generation update."""
    r = exp.rollout
    if r.token_versions is None:
        return {}
    m = r.completion_mask.bool()
    if not bool(m.any()):
        return {}
    tv = r.token_versions[m]
    return {"staleness_token_mean": float((policy_version - tv).float().mean()),
            "staleness_token_max": int((policy_version - tv).max()),
            "in_flight_token_frac": float((tv > r.versions.unsqueeze(-1).expand_as(m)[m]).float().mean())}


class AsyncSource:
    """The learner's side: batches from the pool, stale policy, weight publication, metrics."""

    def __init__(self, config, pool, publisher: WeightPublisher):
        self.config, self.pool, self.publisher = config, pool, publisher
        self.rt = config.runtime
        self.S = self.rt.staleness()
        self.started = False
        self.publications = 0
        self.last_sync: dict[str, float] = {}
        self.totals = {"accepted": 0, "masked": 0, "dropped": 0}
        self.closed_state: dict | None = None

    # --- weights
    def publish_weights(self, model, policy_version: int, step: int) -> dict[str, float]:
        """Publish the learner's weights every ``sync_every`` steps (and at the start)."""
        if self.started and (step % self.rt.sync_every != 0 or policy_version == self.publisher.version):
            if policy_version == self.publisher.version:  # no new weights (e.g. a critic warm-up step)
                self.pool.publish(step)
            return {}
        t0 = time.perf_counter()
        payload = self.publisher.publish(sync_tensors(model), policy_version)  # LoRA: the adapter only
        anchor = None
        self.publications += 1
        if payload.base_version is not None and self.publications % ANCHOR_EVERY == 0:
            anchor = self.publisher.payloads_since(None)[0]
        self.pool.post_weights(payload.version, payload.base_version, payload, anchor)
        self.pool.publish(step)
        metrics = {"sync/seconds": time.perf_counter() - t0, "sync/bytes": payload.nbytes,
                   "sync/dense_bytes": payload.dense_nbytes,
                   "sync/changed_frac": payload.changed / max(1, payload.numel)}
        if not self.started:
            self.pool.start()
            self.started = True
        return metrics

    # --- batches
    def next_batch(self, policy_version: int):
        deadline = time.perf_counter() + self.rt.timeout_s
        counts = {"accepted": 0, "masked": 0, "dropped": 0}
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise RolloutTimeout(
                    f"no batch from the rollout workers in runtime.timeout_s = {self.rt.timeout_s:g} s "
                    f"(buffer: {self.pool_counts()}); raise runtime.timeout_s if generation is this slow")
            self.pool.check_alive()
            item = self.pool.get(min(left, 1.0))
            if item is None:
                continue
            job, exp = item
            exp, c = apply_stale_policy(exp, policy_version, self.S, self.rt.stale_policy)
            for k in counts:
                counts[k] += c[k]
            if exp is None:
                continue
            for k in counts:
                self.totals[k] += counts[k]
            exp.extras["runtime"] = {
                "staleness_mean": c["staleness_mean"], "staleness_max": c["staleness_max"],
                "samples_accepted": counts["accepted"], "samples_masked": counts["masked"],
                "samples_dropped": counts["dropped"], "rollout_idle_s": exp.timings.get("admission_wait", 0.0),
                "weight_load_s": exp.timings.get("weight_load_s", 0.0), "batch_index": job.index,
                "staleness_hist": c["staleness"], **token_staleness(exp, policy_version)}
            return exp

    def pool_counts(self):
        try:
            return self.pool.counts()
        except Exception:  # noqa: BLE001 - only for an error message
            return "?"

    # --- checkpoint
    def state_dict(self) -> dict:
        if self.closed_state is not None:  # the final checkpoint, written after the workers stopped
            return {"async": self.closed_state}
        return {"async": self.pool.state_dict()}

    def load_state_dict(self, state: dict, step: int = 0) -> None:
        if "async" in state:
            self.pool.load_state_dict(state["async"], step)
        else:  # a sync-mode checkpoint continued in async mode: same sampler position
            self.pool.load_state_dict({"sampler": state["sampler"], "next_index": state.get("next_index", 0),
                                       "pending": []}, step)

    def close(self) -> None:
        if self.closed_state is None:
            try:
                self.closed_state = self.pool.state_dict()
            except Exception:  # noqa: BLE001 - a dead pool: the last checkpoint stands
                self.closed_state = None
        self.pool.close()


