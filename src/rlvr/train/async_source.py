"""Asynchronous experience: rollout workers generate while the learner trains.

    learner (main thread)                         rollout worker x N (thread | Ray actor)
      source.next_batch(version)  <── queue ──     job = buffer.admit()        (staleness <= S)
      learner.update(batch)                        weights = board.since(mine)  (full | sparse patch)
      source.publish_weights(...)  ── board ──>    producer.produce(prompts, job.seed)

The training loop is the same as in sync mode; only the :class:`AsyncSource` differs from the
:class:`~rlvr.train.experience.OnPolicyQueue`. Every worker owns a rollout engine with its own
copy of the weights (in ``rollout.dtype``) and draws its prompts from the run's one
:class:`~rlvr.train.experience.PromptSampler` through the :class:`StalenessBuffer`.

Backends: ``local`` runs the workers as threads of this process (torch releases the GIL in its
kernels; HF ``generate``'s Python overhead still takes it); ``ray`` runs each worker in its own
Ray actor (:mod:`rlvr.distributed.ray_backend`). Failures: a worker's exception, or a dead Ray
actor, stops the run with :class:`RolloutWorkerError` naming the worker (the loop then leaves
its last checkpoint, from which ``--resume`` continues); a wait longer than
``runtime.timeout_s`` raises :class:`RolloutTimeout`.
"""

from __future__ import annotations

import copy
import os
import threading
import time

import torch

from rlvr.models.lora import sync_tensors
from rlvr.train.producer import PromptDraws, build_producer
from rlvr.train.staleness import (RolloutTimeout, RolloutWorkerError, StalenessBuffer, WeightBoard,
                                  apply_stale_policy)
from rlvr.train.weight_sync import WeightPublisher, WeightReceiver

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
ANCHOR_EVERY = 16  # sparse sync: a self-contained anchor every N publications bounds a chain's length


def thread_split(runtime, cpus: int | None = None) -> tuple[int, int]:
    """(learner threads, threads per worker) out of ``cpus`` (``run.threads``; None: this machine's
    cores), see ``RuntimeSection``."""
    cpus = cpus or os.cpu_count() or 1
    workers = runtime.num_rollout_workers
    per_worker = runtime.worker_threads or max(1, cpus // (workers + 1))
    learner = runtime.learner_threads or max(1, cpus - workers * per_worker)
    return learner, per_worker


class RolloutWorker:
    """One rollout worker: its engine (own weights), a producer over it, and a loop over jobs.

    ``buffer`` is a :class:`StalenessBuffer` or anything with its worker-side methods
    (``admit``, ``draw``, ``put``, ``fail``, ``weights_since``); ``resolve`` turns what
    ``weights_since`` returns into payloads (identity locally, ``ray.get`` on Ray).
    """

    def __init__(self, worker_id: int, producer, problems: list, buffer, threads: int | None = None,
                 debug: bool = False, resolve=lambda items: items):
        self.worker_id, self.producer, self.problems = worker_id, producer, problems
        self.buffer, self.threads, self.resolve = buffer, threads, resolve
        self.receiver = WeightReceiver(debug=debug)
        self.model = producer.engine.model

    def sync_weights(self) -> dict[str, float]:
        t0 = time.perf_counter()
        payloads = self.resolve(self.buffer.weights_since(self.receiver.version))
        if payloads:
            version = self.receiver.apply(sync_tensors(self.model), payloads)
            self.producer.engine.update_weights(None, version)
        return {"weight_load_s": time.perf_counter() - t0, "weight_payloads": len(payloads)}

    def run_job(self, job):
        sync = self.sync_weights()
        draws = PromptDraws(self.problems, lambda n: self.buffer.draw(job.index, n))
        exp = self.producer.produce(draws, job.seed)
        exp.timings.update(admission_wait=job.wait_s, **sync)
        exp.extras["worker"] = self.worker_id
        return exp

    def loop(self, stop: threading.Event | None = None, poll_s: float = 0.5) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            while stop is None or not stop.is_set():
                job = self.buffer.admit(poll_s)
                if job is None:
                    if getattr(self.buffer, "closed", False):
                        return
                    continue
                self.buffer.put(job.index, self.run_job(job))
        except Exception as err:  # noqa: BLE001 - reported to the learner, which stops the run
            self.buffer.fail(f"rollout worker {self.worker_id}", f"{type(err).__name__}: {err}")
            raise


class _LocalBuffer(StalenessBuffer):
    """The buffer with the weight board beside it (one process)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.board = WeightBoard()

    def weights_since(self, version):
        return self.board.since(version)


class LocalPool:
    """Rollout workers as threads of this process."""

    def __init__(self, config, model, tokenizer, task, sampler, threads: int):
        self.config, self.threads = config, threads
        S = config.runtime.staleness()
        self.buffer = _LocalBuffer(sampler, S, config.run.seed)
        self._spec = (model, tokenizer, task, sampler)
        self.workers: list[RolloutWorker] = []
        self._threads: list[threading.Thread] = []
        self.stop = threading.Event()

    def start(self) -> None:
        from rlvr.rollout.factory import engine_on_module

        model, tokenizer, task, sampler = self._spec
        dtype = _DTYPES[self.config.rollout_dtype()]
        for i in range(self.config.runtime.num_rollout_workers):
            copy_ = copy.deepcopy(model).to(dtype).eval().requires_grad_(False)
            engine = engine_on_module(self.config, copy_, tokenizer)  # rollout.engine: hf or lean
            worker = RolloutWorker(i, build_producer(self.config, engine, task), sampler.problems, self.buffer,
                                   threads=self.threads, debug=self.config.runtime.debug_checksums)
            thread = threading.Thread(target=self._run, args=(worker,), name=f"rlvr-rollout-{i}", daemon=True)
            self.workers.append(worker)
            self._threads.append(thread)
        for thread in self._threads:
            thread.start()

    def _run(self, worker: RolloutWorker) -> None:
        try:
            worker.loop(self.stop)
        except Exception:  # noqa: BLE001 - already reported through buffer.fail
            pass

    def post_weights(self, version, base_version, payload, anchor) -> None:
        self.buffer.board.post(version, base_version, payload, anchor)

    def check_alive(self) -> None:
        for i, t in enumerate(self._threads):
            if not t.is_alive() and not self.stop.is_set() and self.buffer.error is None:
                raise RolloutWorkerError(f"rollout worker {i} (thread) stopped unexpectedly")

    def get(self, timeout: float):
        return self.buffer.get(timeout)

    def publish(self, step: int) -> None:
        self.buffer.publish(step)

    def counts(self) -> dict:
        return self.buffer.counts()

    def state_dict(self) -> dict:
        return self.buffer.state_dict()

    def load_state_dict(self, state: dict, step: int) -> None:
        self.buffer.load_state_dict(state, published_step=step)

    def close(self) -> None:
        self.stop.set()
        self.buffer.close()
        for t in self._threads:
            t.join(timeout=30)


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
                "staleness_hist": c["staleness"]}
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


def make_source(config, producer, model, tokenizer, task, sampler, model_path=None):
    """The experience source a config's ``runtime`` section describes."""
    from rlvr.train.experience import OnPolicyQueue
    from rlvr.train.replay import with_replay  # replay.enabled: a ReplaySource over the source below

    rt = config.runtime
    if not rt.decoupled():
        return with_replay(config, OnPolicyQueue(producer, sampler, config.run.seed), tokenizer, sampler)
    learner_threads, worker_threads = thread_split(rt, config.run.threads)
    publisher = WeightPublisher(method=rt.weight_sync, dtype=_DTYPES[config.rollout_dtype()],
                                bucket_bytes=int(rt.sync_bucket_mb * (1 << 20)), history=ANCHOR_EVERY,
                                debug=rt.debug_checksums)
    if rt.backend == "ray":
        from rlvr.distributed.ray_backend import RayPool

        pool = RayPool(config, model_path, sampler, worker_threads)
    else:
        pool = LocalPool(config, model, tokenizer, task, sampler, worker_threads)
    return with_replay(config, AsyncSource(config, pool, publisher), tokenizer, sampler)
