"""Ray backend of asynchronous training: each rollout worker in its own Ray actor.

    driver (learner, the training loop)  ──ray.put(weight payload)──┐
        │ get / publish / post_weights                              ▼
    BufferActor  (StalenessBuffer + WeightBoard of object refs: plain classes, tested without Ray)
        ▲ admit / draw / put / weights_since
    RolloutWorkerActor x N  (own HF engine and weight copy, own torch threads; one GPU each on a cluster)

``ray.init`` starts a local Ray with this machine's cores, or joins ``runtime.ray_address``. Every
blocking call has a timeout that raises :class:`RolloutTimeout`; a worker whose actor dies
(exception, OOM, killed process) is reported in one line with its id as
:class:`RolloutWorkerError`, and the run stops with a checkpoint (we do not restart workers:
a resumed run regenerates the batches that were in flight). ``close`` (also on Ctrl-C) kills
every actor and shuts down the Ray it started: no orphan processes.
"""

from __future__ import annotations

import os
import time

from rlvr.experience.staleness import RolloutTimeout, RolloutWorkerError, StalenessBuffer
from rlvr.weights.board import WeightBoard

_RPC_SLACK_S = 60.0  # extra seconds a call may take beyond the wait it asks the actor for
IN_FLIGHT_CHECK_S = 0.05  # partial rollouts: a Ray worker asks the buffer actor for new weights at most this often


def import_ray():
    try:
        import ray
    except ImportError:
        from rlvr.config import ConfigError

        raise ConfigError("runtime.backend=ray needs Ray, an optional extra: pip install 'rlvr[ray]' "
                          "(or use runtime.backend=local)") from None
    return ray


class BufferImpl(StalenessBuffer):
    """The buffer actor's body: the staleness buffer plus a board of weight-payload object refs."""

    def __init__(self, sampler, max_staleness: int, run_seed: int):
        super().__init__(sampler, max_staleness, run_seed)
        self.board = WeightBoard()

    def post_weights(self, version, base_version, item: list, anchor: list | None) -> None:
        # refs arrive wrapped in lists, so Ray hands over the refs, not the payloads
        self.board.post(version, base_version, item[0], anchor[0] if anchor else None)

    def weights_since(self, version):
        return self.board.since(version)

    def is_closed(self) -> bool:
        return self.closed

    def ping(self) -> bool:
        return True


class WorkerImpl:
    """A rollout worker actor's body: builds its task, model copy and producer from the config."""

    def __init__(self, config_dict: dict, model_path: str, worker_id: int, buffer, threads: int, timeout: float):
        import torch

        torch.set_num_threads(threads)
        import ray

        from rlvr.config import config_from_dict
        from rlvr.models.load import load_model_and_tokenizer, quiet_transformers
        from rlvr.rollout.factory import engine_on_module
        from rlvr.tasks import make_task
        from rlvr.experience.workers import RolloutWorker
        from rlvr.experience.producer import build_producer

        quiet_transformers()
        config = config_from_dict(config_dict)
        task = make_task(config.task.name, **config.task.options)
        model, tokenizer = load_model_and_tokenizer(model_path, config.rollout_dtype(), config.run.device)
        if config.model.lora.enabled:  # the same adapter layout as the learner's; its weights come by sync
            from rlvr.models.lora import apply_lora

            model = apply_lora(model, config.model.lora).to(getattr(torch, config.rollout_dtype()))
        model.eval().requires_grad_(False)
        engine = engine_on_module(config, model, tokenizer)  # rollout.engine: hf or lean
        self.worker = RolloutWorker(worker_id, build_producer(config, engine, task, model_path), task.problems("train"),
                                    _RemoteBuffer(buffer, timeout), threads=threads,
                                    debug=config.runtime.debug_checksums,
                                    resolve=lambda refs: ray.get(refs, timeout=timeout) if refs else [],
                                    partial_rollouts=config.runtime.partial_rollouts,
                                    check_every_s=IN_FLIGHT_CHECK_S)

    def run(self) -> str:
        self.worker.loop(None)
        return "closed"

    def pid(self) -> int:
        return os.getpid()


class _RemoteBuffer:
    """The worker-side view of the buffer actor: the StalenessBuffer methods, as blocking calls."""

    def __init__(self, handle, timeout: float):
        self.h, self.timeout = handle, timeout

    def _get(self, ref, wait: float = 0.0):
        import ray

        try:
            return ray.get(ref, timeout=wait + _RPC_SLACK_S)
        except ray.exceptions.GetTimeoutError:
            raise RolloutTimeout(f"the buffer actor did not answer in {wait + _RPC_SLACK_S:g} s") from None

    def admit(self, timeout):
        return self._get(self.h.admit.remote(timeout), timeout)

    def draw(self, index, n):
        return self._get(self.h.draw.remote(index, n))

    def put(self, index, exp):
        return self._get(self.h.put.remote(index, exp))

    def fail(self, who, message):
        return self._get(self.h.fail.remote(who, message))

    def weights_since(self, version):
        return self._get(self.h.weights_since.remote(version))

    @property
    def closed(self) -> bool:
        return self._get(self.h.is_closed.remote())


class RayPool:
    """The pool of Ray rollout-worker actors, seen from the learner (same methods as LocalPool)."""

    def __init__(self, config, model_path, sampler, threads: int):
        self.ray = import_ray()
        self.config, self.model_path, self.threads = config, str(model_path), threads
        self.rt = config.runtime
        ray = self.ray
        self.started_ray = False
        if not ray.is_initialized():
            if self.rt.ray_address:
                ray.init(address=self.rt.ray_address, ignore_reinit_error=True, log_to_driver=False)
            else:
                ray.init(num_cpus=max(os.cpu_count() or 1, self.rt.num_rollout_workers),
                         include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
            self.started_ray = True
        concurrency = 4 * self.rt.num_rollout_workers + 8
        self.buffer = ray.remote(num_cpus=0, max_concurrency=concurrency)(BufferImpl).remote(
            sampler, self.rt.staleness(), config.run.seed)
        self.workers, self.run_refs = [], []
        self.closing = False

    def _get(self, ref, wait: float = 0.0):
        ray = self.ray
        try:
            return ray.get(ref, timeout=wait + _RPC_SLACK_S)
        except ray.exceptions.GetTimeoutError:
            raise RolloutTimeout(f"the buffer actor did not answer in {wait + _RPC_SLACK_S:g} s") from None
        except ray.exceptions.RayTaskError as err:
            cause = err.as_instanceof_cause()
            if isinstance(cause, RolloutWorkerError):
                raise RolloutWorkerError(str(cause).splitlines()[-1]) from None
            raise

    def start(self) -> None:
        ray = self.ray
        gpus = 1 if str(self.config.run.device).startswith("cuda") else 0
        actor = ray.remote(num_cpus=self.threads, num_gpus=gpus, max_restarts=0)(WorkerImpl)
        for i in range(self.rt.num_rollout_workers):
            w = actor.options(name=None).remote(self.config.to_dict(), self.model_path, i, self.buffer,
                                                self.threads, self.rt.timeout_s)
            self.workers.append(w)
        self.pids = self._get([w.pid.remote() for w in self.workers], self.rt.timeout_s)
        self.run_refs = [w.run.remote() for w in self.workers]

    def post_weights(self, version, base_version, payload, anchor) -> None:
        ray = self.ray
        item = [ray.put(payload)]
        anchor_ref = [ray.put(anchor)] if anchor is not None else None
        self._get(self.buffer.post_weights.remote(version, base_version, item, anchor_ref))

    def publish(self, step: int) -> None:
        self._get(self.buffer.publish.remote(step))

    def get(self, timeout: float):
        return self._get(self.buffer.get.remote(timeout), timeout)

    def counts(self) -> dict:
        return self._get(self.buffer.counts.remote())

    def check_alive(self) -> None:
        ray = self.ray
        if not self.run_refs:
            return
        ready, _ = ray.wait(self.run_refs, timeout=0, num_returns=len(self.run_refs))
        for ref in ready:
            i = self.run_refs.index(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise RolloutWorkerError(f"rollout worker {i} (Ray actor, pid {self.pids[i]}) died: "
                                         f"{type(err).__name__}: {first}") from None
            if not self.closing:
                raise RolloutWorkerError(f"rollout worker {i} (Ray actor) stopped: {result}")

    def state_dict(self) -> dict:
        return self._get(self.buffer.state_dict.remote())

    def load_state_dict(self, state: dict, step: int) -> None:
        self._get(self.buffer.load_state_dict.remote(state, step))

    def close(self) -> None:
        ray = self.ray
        self.closing = True
        try:
            if ray.is_initialized():
                try:
                    ray.get(self.buffer.close.remote(), timeout=10)
                except Exception:  # noqa: BLE001 - shutting down anyway
                    pass
                deadline = time.perf_counter() + 10
                if self.run_refs:
                    ray.wait(self.run_refs, num_returns=len(self.run_refs),
                             timeout=max(0.0, deadline - time.perf_counter()))
                for w in self.workers:
                    ray.kill(w)
                ray.kill(self.buffer)
        finally:
            if self.started_ray and ray.is_initialized():
                ray.shutdown()
