"""Reward execution that never stalls a run: user reward functions as a reward component, with timeouts.

The ``functions`` component calls TRL-contract reward functions (:mod:`rlvr.rewards.functions`) beside
any task's verifier::

    reward:
      components:
        - type: functions
          functions: ["my_rewards.py:format_ok", {function: "my_pkg.rewards:judge", name: judge}]
          mode: per_sample        # or batch (default): one call per batch, as TRL calls them
          workers: 8              # per_sample: calls at once (threads, or coroutines for async def)
          timeout_s: 5.0          # per call: per sample, or per batch in batch mode; null: no limit
      on_failure: zero            # or drop_group, or stop (after reward.max_failures)
      weights: {correct: 1.0, format_ok: 0.2, judge: 0.5}

Each function is one named component holding its raw values (a ``None``, "does not apply", is 0: its
share of TRL's ``nansum``); a sample it failed on, or did not score in time, is **NaN**, which the reward
pipeline (:class:`~rlvr.rewards.components.RewardPipeline`) counts as a failure and handles by
``reward.on_failure``: score 0, drop the sample's group, or stop the run after ``reward.max_failures``.
The pipeline also logs each component's wall-clock time (``time/reward/<names>``);
:attr:`RewardFunctionsComponent.seconds` keeps it per function.

How calls run (:mod:`rlvr.rewards.pool`):

* ``async def`` functions are awaited on a dedicated event-loop thread (works whether or not the caller
  runs an event loop); per sample, they are gathered ``workers`` at a time (a semaphore), each sample
  cancelled at its deadline.
* Synchronous functions run on a pool of ``workers`` daemon threads (with no ``timeout_s`` in ``batch``
  mode, in the caller's thread). A call past its deadline is abandoned and its thread replaced; Python
  cannot kill a thread, so the call runs on until it returns (counted, and warned about when they pile
  up). Code that must be killed belongs in the process sandbox (:mod:`rlvr.sandbox`).
* ``batch`` mode: a batch that times out is NaN on every sample (each counted in :attr:`timeouts`) and is
  **not** called again sample by sample: its time budget is spent, and a per-sample retry of a slow
  function would cost up to ``len(batch) / workers`` more timeouts. A batch that *raises* (or returns a bad
  value) is called again sample by sample, each call with ``timeout_s``, so only the culprits are NaN.
* ``per_sample`` mode: one call per sample, each with ``timeout_s`` counted from its own start (not from
  the queue), so only the samples that hang are NaN.

What a function is passed (TRL's contract, standard format): ``prompts`` = each problem's ``prompt`` (the
text the policy saw), ``completions`` = the generated texts, and as columns every key of the problem's
``meta["row"]`` (the dataset task keeps its dataset row there; ``None`` for a row without that key) plus
``answer`` (the row's own ``answer`` if it has one, else the problem's ``answer``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from rlvr.rewards.components import register_component
from rlvr.rewards.functions import MODES, RewardFunctionError, RewardFunctions, parse_reward_functions
from rlvr.rewards.pool import (DaemonPool, Outcome, RewardTimeoutError, gather_with_timeouts, is_async_callable,
                               run_coroutine, run_with_timeouts)

__all__ = ["DaemonPool", "MODES", "Outcome", "RewardFunctionsComponent", "RewardTimeoutError",
           "gather_with_timeouts", "is_async_callable", "problem_columns", "run_coroutine", "run_with_timeouts"]

#: Keyword names the contract itself uses: a dataset column of that name is not passed.
_CONTRACT = ("prompts", "completions")


def problem_columns(problems: Sequence[Any]) -> tuple[list, dict[str, list]]:
    """``(prompts, columns)`` for a batch of problems (objects with ``.prompt``, ``.answer``, ``.meta``)."""
    prompts = [getattr(p, "prompt", "") for p in problems]
    rows = [(getattr(p, "meta", None) or {}).get("row") for p in problems]
    rows = [r if isinstance(r, Mapping) else {} for r in rows]
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if isinstance(k, str) and k not in _CONTRACT]
    columns = {k: [r.get(k) for r in rows] for k in keys}
    if "answer" not in columns:
        columns["answer"] = [getattr(p, "answer", None) for p in problems]
    return prompts, columns


@register_component("functions")
class RewardFunctionsComponent:
    """TRL-contract reward functions as a reward component: one name per function, NaN where one failed
    (0 where it returned None).

    Args:
        functions: reward function specs, as ``task.options.reward_functions`` takes them:
            ``"module:fn"``, ``"path/file.py:fn"``, ``{function, name, weight}`` (or function objects).
        weights: one weight per function (TRL's ``reward_weights``); kept in :attr:`weights` for reference
            only: the training reward is combined by ``reward.weights``, like every component's.
        mode: ``batch`` (one call per batch, ``timeout_s`` for the whole batch) or ``per_sample``.
        workers: calls at once in ``per_sample`` mode (and pool size for timed batch calls).
        timeout_s: seconds per call before it counts as failed (None: no limit).
        columns: the columns the problems' rows will have, to check each function's required parameters
            when built (None: no check; a missing column then fails the function's calls).

    Attributes:
        names: the functions' names (the components this returns).
        seconds: wall-clock seconds spent in each function, cumulative.
        timeouts: samples per function whose call timed out.
        errors: samples per function that failed (timeouts included).
    """

    def __init__(self, functions: Sequence[Any] | str | Mapping, weights: Sequence[float] | None = None,
                 mode: str = "batch", workers: int = 4, timeout_s: float | None = None,
                 columns: Sequence[str] | None = None) -> None:
        parsed = parse_reward_functions(functions, weights)
        if not parsed:
            raise RewardFunctionError("reward component 'functions': give at least one function in 'functions'")
        self.calls = RewardFunctions(parsed, columns=None if columns is None else list(columns),
                                     timeout_s=timeout_s, mode=mode, workers=workers)
        self.names = self.calls.names
        self.weights = {f.name: f.weight for f in parsed}

    @property
    def seconds(self) -> dict[str, float]:
        return self.calls.seconds

    @property
    def timeouts(self) -> dict[str, int]:
        return self.calls.timeouts

    @property
    def errors(self) -> dict[str, int]:
        return self.calls.errors

    def __call__(self, problems: Sequence[Any], texts: Sequence[str]) -> dict[str, list[float]]:
        """Each function's values on the batch: NaN where it failed or timed out, 0 where it returned None."""
        texts = list(texts)
        n = len(texts)
        prompts, columns = problem_columns(problems)
        labels = [str(p) for p in prompts]
        out: dict[str, list[float]] = {}
        for f in self.calls.functions:
            values, errors = self.calls.evaluate(f, prompts, texts, columns)
            failed = [(i, err) for i, err in enumerate(errors) if err is not None]
            if failed:
                self.calls.report_failures(f, failed, n, labels,
                                           consequence="counts as a reward failure (NaN; reward.on_failure)")
            # NaN means "failed" to the pipeline: a None ("does not apply") is 0, its share of TRL's nansum
            out[f.name] = [math.nan if err is not None else 0.0 if math.isnan(v) else v
                           for v, err in zip(values, errors)]
        return out

    def __repr__(self) -> str:
        return (f"RewardFunctionsComponent({list(self.names)}, mode={self.calls.mode!r}, "
                f"workers={self.calls.workers}, timeout_s={self.calls.timeout_s})")
