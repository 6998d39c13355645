"""Rollout workers: each owns an engine with its own copy of the weights and produces batches in a loop.

:class:`RolloutWorker` is the worker itself, the same on every backend; :class:`LocalPool` runs workers as
threads of this process, :class:`rlvr.experience.ray_workers.RayPool` as Ray actors. Both are seen from the
learner through :class:`rlvr.experience.async_source.AsyncSource`.
"""

from __future__ import annotations

import copy
import os
import threading
import time

import torch

from rlvr.experience.producer import PromptDraws, build_producer
from rlvr.experience.staleness import RolloutWorkerError, StalenessBuffer
from rlvr.models.lora import sync_tensors
from rlvr.rollout.factory import engine_on_module
from rlvr.weights.board import WeightBoard
from rlvr.weights.sync import WeightReceiver

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


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
                 debug: bool = False, resolve=lambda items: items, partial_rollouts: bool = False,
                 check_every_s: float = 0.0):
        self.worker_id, self.producer, self.problems = worker_id, producer, problems
        self.buffer, self.threads, self.resolve = buffer, threads, resolve
        self.receiver = WeightReceiver(debug=debug)
        self.model = producer.engine.model
        self.check_every_s, self._last_check = check_every_s, 0.0
        self.in_flight_updates = 0  # weight updates applied mid-generation (partial rollouts)
        if partial_rollouts:  # the engine asks between decode steps; unfinished rows go on with new weights
            producer.engine.on_step = self.in_flight_sync

    def in_flight_sync(self) -> None:
        """Between two decode steps: load the newest published weights, if any (at most every
        ``check_every_s`` seconds: on Ray each check is a call to the buffer actor)."""
        now = time.perf_counter()
        if now - self._last_check < self.check_every_s:
            return
        self._last_check = now
        if self.sync_weights()["weight_payloads"]:
            self.in_flight_updates += 1

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

    def __init__(self, config, model, tokenizer, task, sampler, threads: int, model_path: str | None = None):
        self.config, self.threads, self.model_path = config, threads, model_path
        S = config.runtime.staleness()
        self.buffer = _LocalBuffer(sampler, S, config.run.seed)
        self._spec = (model, tokenizer, task, sampler)
        self.workers: list[RolloutWorker] = []
        self._threads: list[threading.Thread] = []
        self.stop = threading.Event()

    def start(self) -> None:
        model, tokenizer, task, sampler = self._spec
        dtype = DTYPES[self.config.rollout_dtype()]
        for i in range(self.config.runtime.num_rollout_workers):
            copy_ = copy.deepcopy(model).to(dtype).eval().requires_grad_(False)
            engine = engine_on_module(self.config, copy_, tokenizer)  # rollout.engine: hf or lean
            worker = RolloutWorker(i, build_producer(self.config, engine, task, self.model_path), sampler.problems, self.buffer,
                                   threads=self.threads, debug=self.config.runtime.debug_checksums,
                                   partial_rollouts=self.config.runtime.partial_rollouts)
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
