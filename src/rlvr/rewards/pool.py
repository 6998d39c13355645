"""Calls that never stall a run: a daemon-thread pool and an event-loop thread, each call with a deadline.

Reward code is the user's: it may hang (a dead server, a regex that backtracks forever, an infinite
loop on one odd completion). This module runs such calls so that the caller always gets an answer in
bounded time: the value, the exception the call raised, or a :class:`RewardTimeoutError` once the call
has run ``timeout_s`` seconds.

* Synchronous calls run on a :class:`DaemonPool`: ``workers`` **daemon** threads fed from one queue.
  ``concurrent.futures.ThreadPoolExecutor`` will not do: it joins its threads at interpreter exit, so one
  hung call would hang the exit too, and a hung call holds its worker for good. Here a call that passes
  its deadline is *abandoned*: the caller gets a timeout, its thread is written off (it exits by itself if
  the call ever returns) and a fresh thread takes its place, so ``workers`` calls can still run.
* Coroutines (``async def`` reward functions) run on one event loop in a daemon thread of its own
  (:func:`run_coroutine`, :func:`gather_with_timeouts`), which works the same whether or not the caller
  is itself inside a running loop. A coroutine that passes its deadline is cancelled. Its loop's default
  executor (``asyncio.to_thread``, ``loop.run_in_executor(None, ...)``) runs on daemon threads as well.

Python cannot kill a thread. An abandoned call keeps its thread (and whatever it holds: CPU, memory,
sockets) until it returns by itself; a coroutine that ignores its cancellation, or blocks its loop
without awaiting, cannot be stopped either (a loop that stops answering is abandoned and replaced, like a
thread). :attr:`DaemonPool.abandoned` counts the calls written off, :attr:`DaemonPool.stuck` the threads
still running one, and a warning is printed once when more than ``4 * workers`` are stuck. Code that
must really be killed on a timeout (a model-written program, anything that can spin forever) belongs in
a process: :mod:`rlvr.sandbox` runs it under hard limits, and its kill is real.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import inspect
import itertools
import math
import sys
import threading
import time
from typing import Any, Awaitable, Callable, NamedTuple, Sequence

__all__ = ["DaemonPool", "Outcome", "RewardTimeoutError", "gather_with_timeouts", "is_async_callable",
           "loop_stats", "run_coroutine", "run_with_timeouts"]

#: Seconds a loop may overrun a coroutine's deadline (it cannot cancel a coroutine that blocks it)
#: before the caller gives up on it and the loop is replaced.
LOOP_GRACE_S = 1.0
#: An idle worker thread exits after this many seconds (the pool starts threads again when needed).
IDLE_S = 30.0
#: Abandoned threads still running, per worker slot, above which a warning is printed (once).
STUCK_WARN_FACTOR = 4


class RewardTimeoutError(TimeoutError):
    """A call that gave no result within its ``timeout_s`` (it was abandoned, or its coroutine cancelled)."""

    def __init__(self, timeout_s: float, why: str = "") -> None:
        super().__init__(f"no result within {timeout_s:g} s (timeout_s){why}")
        self.timeout_s = timeout_s


class Outcome(NamedTuple):
    """The result of one call: ``error`` is None and ``value`` the return value, or ``error`` what failed it."""

    value: Any = None
    error: BaseException | None = None


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def is_async_callable(fn: Any) -> bool:
    """Whether calling ``fn`` gives a coroutine: an ``async def`` function, a partial of one, or an
    object whose ``__call__`` is one."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))


class _Task:
    __slots__ = ("fn", "started", "thread", "done", "value", "error")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.started: float | None = None
        self.thread: threading.Thread | None = None
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None


class DaemonPool:
    """``workers`` daemon threads running calls from one queue; each call's deadline starts when it starts.

    Args:
        workers: how many calls run at once (abandoned calls not counted: their slots are refilled).
        idle_s: an idle thread exits after this long (restarted on demand), so idle pools cost nothing.
        warn: where the one warning about abandoned threads piling up goes (default: stderr).
        name: the threads' name prefix.
    """

    def __init__(self, workers: int = 4, idle_s: float = IDLE_S, warn: Callable[[str], None] | None = None,
                 name: str = "rlvr-reward") -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        self.workers = workers
        self.idle_s = idle_s
        self.name = name
        self.abandoned = 0
        self._warn = warn or _warn
        self._warned = False
        self._lock = threading.Lock()
        self._has_work = threading.Condition(self._lock)  # workers wait here for tasks
        self._changed = threading.Condition(self._lock)   # callers wait here for starts and results
        self._queue: collections.deque[_Task] = collections.deque()
        self._threads: set[threading.Thread] = set()      # live workers
        self._stuck: set[threading.Thread] = set()        # abandoned, still inside a call
        self._ids = itertools.count()

    @property
    def stuck(self) -> int:
        """Abandoned threads still running their call."""
        with self._lock:
            return len(self._stuck)

    def run(self, calls: Sequence[Callable[[], Any]], timeout_s: float | None = None) -> list[Outcome]:
        """Run each zero-argument callable in the pool; one :class:`Outcome` per call, in order.

        A call still running ``timeout_s`` seconds after it started is abandoned: its outcome is a
        :class:`RewardTimeoutError` (None: wait as long as it takes). Returns once every call has an outcome.
        """
        tasks = [_Task(fn) for fn in calls]
        if not tasks:
            return []
        with self._lock:
            self._queue.extend(tasks)  # queued and counted under one lock: no worker can retire in between
            while len(self._threads) < self.workers:
                self._spawn()
            self._has_work.notify(len(tasks))
            try:
                self._wait(tasks, timeout_s)
            except BaseException:  # e.g. KeyboardInterrupt: calls that have not started never will
                for t in tasks:
                    if t.started is None and not t.done:
                        self._queue.remove(t)
                raise
        return [Outcome(t.value, t.error) for t in tasks]

    def _wait(self, tasks: list[_Task], timeout_s: float | None) -> None:
        while True:
            now = time.monotonic()
            pending, wake = False, None
            for t in tasks:
                if t.done:
                    continue
                if timeout_s is not None and t.started is not None:
                    left = t.started + timeout_s - now
                    if left <= 0:
                        self._abandon(t, timeout_s)
                        continue
                    wake = left if wake is None else min(wake, left)
                pending = True
            if not pending:
                return
            self._changed.wait(wake)

    def _abandon(self, task: _Task, timeout_s: float) -> None:
        task.done, task.error = True, RewardTimeoutError(timeout_s, "; the call was abandoned")
        self._threads.discard(task.thread)
        self._stuck.add(task.thread)
        self.abandoned += 1
        if len(self._threads) < self.workers:
            self._spawn()
            if self._queue:
                self._has_work.notify()
        if len(self._stuck) > STUCK_WARN_FACTOR * self.workers and not self._warned:
            self._warned = True
            self._warn(f"{len(self._stuck)} reward calls that timed out are still running in abandoned threads "
                       f"({self.workers} workers); Python cannot kill a thread, so they hold their CPU and memory "
                       "until they return. Fix the hang, or run code that must be killed on a timeout in a "
                       "process (rlvr.sandbox)")

    def _spawn(self) -> None:
        thread = threading.Thread(target=self._work, name=f"{self.name}-{next(self._ids)}", daemon=True)
        self._threads.add(thread)
        try:
            thread.start()
        except BaseException:  # e.g. "can't start new thread": do not count a thread that never ran
            self._threads.discard(thread)
            raise

    def _work(self) -> None:
        me = threading.current_thread()
        with self._lock:
            while True:
                idle_until = time.monotonic() + self.idle_s
                while not self._queue:
                    left = idle_until - time.monotonic()
                    if left <= 0:  # idle for idle_s: retire (run() starts threads again when needed)
                        self._threads.discard(me)
                        return
                    self._has_work.wait(left)
                task = self._queue.popleft()
                task.started, task.thread = time.monotonic(), me
                self._changed.notify_all()
                self._lock.release()
                try:
                    value, error = task.fn(), None
                except BaseException as err:  # noqa: BLE001 - the user's call; its error is its outcome
                    value, error = None, err
                finally:
                    self._lock.acquire()
                if me in self._stuck:  # abandoned while inside the call: its slot is taken already
                    self._stuck.discard(me)
                    return
                task.value, task.error, task.done = value, error, True
                self._changed.notify_all()


_SHARED: dict[int, DaemonPool] = {}
_SHARED_LOCK = threading.Lock()


def run_with_timeouts(calls: Sequence[Callable[[], Any]], timeout_s: float | None = None, workers: int = 4,
                      pool: DaemonPool | None = None) -> list[Outcome]:
    """Run zero-argument callables ``workers`` at a time on daemon threads, each within ``timeout_s``.

    One :class:`Outcome` per call, in order: its value, the exception it raised, or a
    :class:`RewardTimeoutError` when it ran longer than ``timeout_s`` (counted from its own start, not
    from the queue). ``pool`` (else a pool shared by callers asking for the same ``workers``) runs them;
    see :class:`DaemonPool` for what happens to a call that times out.
    """
    if pool is None:
        with _SHARED_LOCK:
            pool = _SHARED.get(workers) or _SHARED.setdefault(workers, DaemonPool(workers))
    return pool.run(calls, timeout_s)


# --------------------------------------------------------------------------- the event-loop thread


class _DaemonExecutor(concurrent.futures.ThreadPoolExecutor):
    """The reward loop's default executor: each call on a fresh daemon thread, never joined at exit (asyncio
    accepts only a ThreadPoolExecutor here; its own threads are never started, ``submit`` is replaced)."""

    def submit(self, fn, /, *args, **kwargs):
        future: concurrent.futures.Future = concurrent.futures.Future()

        def target():
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as err:  # noqa: BLE001
                future.set_exception(err)

        threading.Thread(target=target, name="rlvr-reward-to-thread", daemon=True).start()
        return future

    def shutdown(self, wait=True, *, cancel_futures=False):  # nothing to join: the threads are daemons
        pass


class _LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.set_default_executor(_DaemonExecutor())
        self.thread = threading.Thread(target=self._run, name="rlvr-reward-loop", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()


_LOOP: _LoopThread | None = None
_LOOP_LOCK = threading.Lock()
_LOOP_STATS = {"abandoned_loops": 0}


def _loop_thread() -> _LoopThread:
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None:
            _LOOP = _LoopThread()
        if threading.current_thread() is _LOOP.thread:
            raise RuntimeError("a reward coroutine may not wait for another on the reward loop (it would wait "
                               "for itself); await it instead")
        return _LOOP


def _abandon_loop(lt: _LoopThread) -> None:
    """Stop sending work to a loop that no longer answers (a coroutine blocks it); the next call starts a
    new one. The old loop's thread is a daemon and keeps what it runs."""
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is lt:
            _LOOP = None
            _LOOP_STATS["abandoned_loops"] += 1
            if _LOOP_STATS["abandoned_loops"] == 1:
                _warn("a reward coroutine blocked the event loop past its timeout (a blocking call inside an "
                      "async def, e.g. time.sleep or requests): the loop was abandoned and replaced; use "
                      "await asyncio.to_thread(...) for blocking work")


def loop_stats() -> dict[str, int]:
    """``{"abandoned_loops": n}``: event loops given up because a coroutine blocked them past its deadline."""
    return dict(_LOOP_STATS)


async def _bounded(awaitable: Awaitable, timeout_s: float | None) -> Outcome:
    """Await with a deadline; the task is cancelled when it passes (a user's own TimeoutError is its error)."""
    try:
        task = asyncio.ensure_future(awaitable)
    except Exception as err:  # noqa: BLE001 - not awaitable after all
        return Outcome(None, err)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
    except asyncio.CancelledError:  # the caller gave up on us: stop the user's coroutine too
        task.cancel()
        raise
    if not done:
        task.cancel()
        return Outcome(None, RewardTimeoutError(timeout_s, "; the coroutine was cancelled"))
    try:
        return Outcome(task.result())
    except (Exception, asyncio.CancelledError) as err:  # noqa: BLE001 - the user's coroutine failed
        return Outcome(None, err)


def run_coroutine(awaitable: Awaitable, timeout_s: float | None = None) -> Any:
    """Await ``awaitable`` on the reward loop and return its value; raise its error, or
    :class:`RewardTimeoutError` after ``timeout_s`` seconds (the coroutine is cancelled).

    Works from any thread, inside a running event loop or not (the caller's thread blocks meanwhile).
    """
    outcome = _await_on_loop(_bounded(awaitable, timeout_s), timeout_s)
    if outcome.error is not None:
        raise outcome.error
    return outcome.value


def _await_on_loop(coro, limit_s: float | None) -> Any:
    try:
        lt = _loop_thread()
    except RuntimeError:
        coro.close()
        raise
    future = asyncio.run_coroutine_threadsafe(coro, lt.loop)
    try:
        return future.result(None if limit_s is None else limit_s + LOOP_GRACE_S)
    except concurrent.futures.TimeoutError:
        if future.done():  # it finished just as the wait ran out
            return future.result()
        future.cancel()
        _abandon_loop(lt)
        return Outcome(None, RewardTimeoutError(limit_s, "; the event loop was blocked"))


def gather_with_timeouts(factories: Sequence[Callable[[], Any]], timeout_s: float | None = None,
                         workers: int = 4) -> list[Outcome]:
    """Call each factory (e.g. ``lambda: fn(...)`` for an ``async def`` fn) on the reward loop and await what
    it returns, at most ``workers`` at a time (a semaphore), each within ``timeout_s`` from its own start
    (``asyncio.wait`` with a timeout; the coroutine is then cancelled). One :class:`Outcome` per factory,
    in order. A factory that returns a plain value (not awaitable) has that value as its outcome.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    n = len(factories)
    if n == 0:
        return []
    results: list[Outcome | None] = [None] * n

    async def main() -> None:
        semaphore = asyncio.Semaphore(workers)

        async def one(i: int) -> None:
            async with semaphore:
                try:
                    made = factories[i]()
                except Exception as err:  # noqa: BLE001 - e.g. a TypeError from the arguments
                    results[i] = Outcome(None, err)
                    return
                results[i] = await _bounded(made, timeout_s) if inspect.isawaitable(made) else Outcome(made)

        await asyncio.gather(*(one(i) for i in range(n)))

    limit = None if timeout_s is None else math.ceil(n / workers) * timeout_s
    blocked = _await_on_loop(main(), limit)  # an Outcome only when the loop stopped answering
    return [r if r is not None else blocked for r in results]
