"""The logic between rollout workers and the learner, in plain classes (tested without Ray;
the Ray backend only wraps them in actors).

* :class:`StalenessBuffer`: admission control (AReaL ``StalenessManager``, SkyRL
  ``_AsyncStalenessManager``), the prompt stream and the queue of finished batches.
  Batch ``k`` is meant for learner step ``k``; a worker may start it only once the weights of
  learner step ``k - S`` are published, so it cannot be more than ``S`` versions stale when
  trained at step ``k`` (this is AReaL's capacity rule ``(S + version + 1) * B >= accepted +
  running`` with one batch as the unit). Batches are handed to the learner in the order they
  finish; one that still exceeds ``S`` then (possible with several workers) follows
  ``stale_policy`` (:func:`apply_stale_policy`).
* :class:`WeightBoard`: the weight payloads published so far, as a chain a worker at any
  version can follow to the newest one (sparse patches), or a self-contained anchor.

Checkpoint rule: batches in flight or finished but not yet trained are *regenerated* on resume,
from the same prompts (recorded per batch) and the same seed, so a resumed run neither loses
nor repeats a prompt.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque

import torch


class RolloutTimeout(TimeoutError):
    """A blocking wait of the asynchronous machinery took longer than ``runtime.timeout_s``."""


class RolloutWorkerError(RuntimeError):
    """A rollout worker failed or died; the message names it."""


@dataclasses.dataclass
class Job:
    """One batch to generate: its slot ``index`` (the learner step it is meant for), its seed and
    the prompt indices it drew (``drawn``; ``replay`` are those of an earlier attempt)."""

    index: int
    seed: int
    replay: list = dataclasses.field(default_factory=list)
    drawn: list = dataclasses.field(default_factory=list)
    wait_s: float = 0.0  # how long its worker waited for admission

    def spec(self) -> dict:
        return {"index": self.index, "seed": self.seed, "drawn": [list(d) for d in self.drawn]}


class StalenessBuffer:
    """Admission control, prompt stream and finished-batch queue; thread-safe."""

    def __init__(self, sampler, max_staleness: int, run_seed: int = 0):
        from rlvr.experience.producer import batch_seed

        self.sampler, self.S, self.run_seed = sampler, max_staleness, run_seed
        self._seed = batch_seed
        self.cond = threading.Condition()
        self.published_step = 0  # the learner step whose weights the workers can load
        self.next_index = 0
        self.redo: deque[Job] = deque()  # batches to regenerate first (resume)
        self.running: dict[int, Job] = {}
        self.ready: dict[int, tuple[Job, object]] = {}  # finished, by slot
        self.next_consume = 0  # the slot the learner takes next (slots are consumed in order)
        self.error: str | None = None
        self.closed = False

    # --- worker side
    def _next_slot(self) -> int:
        return self.redo[0].index if self.redo else self.next_index

    def admit(self, timeout: float) -> Job | None:
        """Block until a batch may start (or ``timeout`` seconds pass: None)."""
        t0 = time.perf_counter()
        deadline = t0 + timeout
        with self.cond:
            while self._next_slot() - self.published_step > self.S:
                left = deadline - time.perf_counter()
                if self.closed or left <= 0:
                    return None
                self.cond.wait(left)
            if self.closed:
                return None
            if self.redo:
                job = self.redo.popleft()
            else:
                job = Job(self.next_index, self._seed(self.run_seed, self.next_index))
                self.next_index += 1
            job.wait_s = time.perf_counter() - t0
            self.running[job.index] = job
            return job

    def draw(self, index: int, n: int) -> list[int]:
        """The next ``n`` prompt indices for batch ``index`` (its recorded ones first, on a redo)."""
        with self.cond:
            job = self.running[index]
            if job.replay and len(job.replay[0]) == n:
                idx = list(job.replay.pop(0))
            else:
                job.replay = []
                idx = self.sampler.next_indices(n)
            job.drawn.append(idx)
            return idx

    def put(self, index: int, experience) -> None:
        with self.cond:
            job = self.running.pop(index)
            self.ready[index] = (job, experience)
            self.cond.notify_all()

    def fail(self, who: str, message: str) -> None:
        with self.cond:
            self.error = self.error or f"{who} failed: {message}"
            self.cond.notify_all()

    # --- learner side
    def get(self, timeout: float):
        """The ``(job, experience)`` of the next slot in order, once finished; None after ``timeout`` s.
        Raises a worker's error."""
        deadline = time.perf_counter() + timeout
        with self.cond:
            while self.next_consume not in self.ready:
                if self.error:
                    raise RolloutWorkerError(self.error)
                left = deadline - time.perf_counter()
                if left <= 0:
                    return None
                self.cond.wait(left)
            item = self.ready.pop(self.next_consume)
            self.next_consume += 1
            return item

    def publish(self, step: int) -> None:
        """The weights after learner step ``step`` are available to the workers."""
        with self.cond:
            self.published_step = max(self.published_step, step)
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def counts(self) -> dict[str, int]:
        with self.cond:
            return {"running": len(self.running), "ready": len(self.ready), "next_index": self.next_index,
                    "next_consume": self.next_consume}

    # --- checkpoint
    def state_dict(self) -> dict:
        """Sampler position, next slot, and every batch admitted but not yet trained (to regenerate)."""
        with self.cond:
            pending = [j.spec() for j in self.running.values()] + [j.spec() for j, _ in self.ready.values()]
            pending += [{"index": j.index, "seed": j.seed, "drawn": [list(d) for d in j.replay]}
                        for j in self.redo]
            return {"sampler": self.sampler.state_dict(), "next_index": self.next_index,
                    "pending": sorted(pending, key=lambda p: p["index"])}

    def load_state_dict(self, state: dict, published_step: int = 0) -> None:
        with self.cond:
            self.sampler.load_state_dict(state["sampler"])
            self.next_index = int(state.get("next_index", 0))
            self.redo = deque(Job(p["index"], p["seed"], replay=[list(d) for d in p["drawn"]])
                              for p in state.get("pending", []))
            self.running.clear()
            self.ready.clear()
            self.next_consume = min((j.index for j in self.redo), default=self.next_index)
            self.published_step = published_step


def apply_stale_policy(exp, policy_version: int, max_staleness: int, policy: str):
    """Staleness of each row (``policy_version - version``) and what happens to rows beyond ``S``.

    ``accept``: trained as they are (counted). ``mask``: kept in the batch, so their group's
    baseline is unchanged, but with policy-gradient weight 0 (``extras["sample_weight"]``).
    ``drop``: every group with a stale member is removed whole (a group shares its baseline);
    returns None when nothing is left. Returns ``(experience or None, counts)``.
    """
    from rlvr.experience.batch import select_rows

    staleness = policy_version - exp.rollout.versions
    stale = staleness > max_staleness
    n, n_stale = int(stale.numel()), int(stale.sum())
    counts = {"accepted": n, "masked": 0, "dropped": 0, "stale": n_stale,
              "staleness_mean": float(staleness.float().mean()) if n else 0.0,
              "staleness_max": int(staleness.max()) if n else 0, "staleness": staleness.tolist()}
    if n_stale == 0 or policy == "accept":
        return exp, counts
    if policy == "mask":
        weight = exp.extras.get("sample_weight", torch.ones(n))
        exp.extras["sample_weight"] = weight * (~stale).float()
        counts.update(accepted=n - n_stale, masked=n_stale)
        return exp, counts
    if policy != "drop":
        raise ValueError(f"unknown stale_policy {policy!r}; known: accept, mask, drop")
    bad_groups = torch.unique(exp.group[stale])
    keep = ~torch.isin(exp.group, bad_groups)
    counts.update(accepted=int(keep.sum()), dropped=n - int(keep.sum()))
    if not keep.any():
        return None, counts
    return select_rows(exp, torch.nonzero(keep).flatten()), counts


