"""User reward functions in TRL's contract, so reward code written for TRL moves over unchanged.

A reward function is called once per batch, exactly as TRL's ``GRPOTrainer`` calls its
``reward_funcs``::

    fn(prompts=[...], completions=[...], **columns) -> list[float | None]

* ``prompts``: the dataset's prompt of each sample, as the dataset holds it: a string
  (standard format) or a list of ``{"role", "content"}`` messages (conversational format);
* ``completions``: the generated text of each sample; in conversational format (a message-list
  prompt) each is ``[{"role": "assistant", "content": text}]``, as in TRL;
* ``**columns``: every other column of the dataset row, one list per column (e.g. ``answer=[...]``,
  ``solution=[...]``). A function without ``**kwargs`` is passed only the columns it names.

It returns one value per sample: a number, or ``None`` when the function does not apply to that
sample (TRL's convention). Not passed (unlike TRL): ``completion_ids`` and ``trainer_state``.

Loading: ``"package.module:function"`` (importable) or ``"path/to/file.py:function"`` (a file, loaded
by path). Several functions are combined with weights as TRL does: each is a named reward
component (its ``__name__``, or the name given) holding its raw values (NaN where it returned
``None``), and the scalar reward is the weighted sum over the functions that apply (``None`` skipped;
0 when none applies), TRL's ``nansum(rewards * weights)``.

Errors (the rule, chosen so a run neither dies of one odd completion nor trains on a broken function):

* A function that raises or returns a bad value (not a number or None, not finite, wrong length) is
  called again sample by sample to find the culprits. Each sample that still fails gets **0** from
  that function, and a ``warning:`` line on stderr names the function, the sample's index in the
  batch, the start of its prompt and the error (the first 3 per function, then at 10, 100, 1000...
  failures). Failures are counted: the ``function_errors`` reward component (failures per sample)
  shows up in ``metrics.jsonl`` as ``reward/function_errors``, and ``RewardFunctions.errors`` counts
  them per function.
* A function that fails on **every** sample of a batch of two or more (a bug, not an odd input)
  stops the run with :class:`RewardFunctionError`, one line naming the function, the first sample
  index and the error (the CLI prints it and exits with status 2).

Async functions and timeouts (:mod:`rlvr.rewards.pool` runs the calls):

* A function may be ``async def`` (TRL allows it): its coroutine is awaited on a dedicated event-loop
  thread, so it works whether or not the caller is inside a running event loop. A plain function that
  returns an awaitable is treated the same way.
* ``timeout_s`` (default None: wait as long as it takes, today's behaviour) bounds each call. With
  ``mode="batch"`` (the default, TRL's one call per batch) the whole batch has ``timeout_s``; with
  ``mode="per_sample"`` each sample is its own call, ``workers`` at a time, each with ``timeout_s``.
  Synchronous calls then run on daemon worker threads; a call past its deadline is abandoned (Python
  cannot kill a thread: it runs on until it returns, see :mod:`rlvr.rewards.pool`), a coroutine past its
  deadline is cancelled.
* A timeout is a failure under the rule above, with two differences: a batch that times out is **not**
  called again sample by sample (its time is spent; each of its samples gets 0 and one warning covers the
  batch), and timeouts never stop the run, even on every sample (a stalled server is not a bug in the
  function). ``RewardFunctions.timeouts`` counts the samples that timed out (they are in ``errors`` too)
  and ``RewardFunctions.seconds`` the wall-clock seconds spent in each function.

The reward component ``{type: functions}`` (:mod:`rlvr.rewards.execution`) calls the same functions
the same way beside any task, with the reward pipeline's failure policy (a failure is NaN, not 0).
"""

from __future__ import annotations

import functools
import inspect
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from rlvr.rewards.pool import (DaemonPool, Outcome, RewardTimeoutError, gather_with_timeouts, is_async_callable,
                               run_coroutine)
from rlvr.utils import load_object

__all__ = ["MODES", "RESERVED_NAMES", "RewardFunction", "RewardFunctionError", "RewardFunctions",
           "load_reward_function", "parse_reward_functions"]

#: Component names a reward function may not take (the task's own outputs).
RESERVED_NAMES = ("reward", "correct", "function_errors")
#: How a function is called: ``batch`` (once per batch, TRL's way) or ``per_sample`` (once per sample, in a pool).
MODES = ("batch", "per_sample")
#: Failures of one function that are printed in full before only milestones are.
_FIRST_WARNINGS = 3


class RewardFunctionError(ValueError):
    """A user reward function that cannot be loaded, or that fails on every sample of a batch."""


def load_reward_function(spec: str) -> Callable[..., Any]:
    """The callable ``spec`` names: ``"package.module:function"`` or ``"path/to/file.py:function"``
    (:func:`rlvr.utils.load_object`).

    Raises:
        RewardFunctionError: a malformed spec, a missing file or module, a module that fails to
            import (its error in one line), a missing or non-callable attribute.
    """
    return load_object(spec, "reward function", RewardFunctionError)


@dataclass(frozen=True)
class RewardFunction:
    """One reward function: its component name, the callable, its weight and where it came from."""

    name: str
    fn: Callable[..., Any]
    weight: float = 1.0
    spec: str = ""

    def accepts(self) -> tuple[bool, set[str], set[str]]:
        """(takes ``**kwargs``, the keyword names it takes, the names it requires)."""
        try:
            params = list(inspect.signature(self.fn).parameters.values())
        except (TypeError, ValueError):  # a builtin or C callable: assume it takes everything
            return True, set(), set()
        var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        names = {p.name for p in params if p.kind in kinds}
        required = {p.name for p in params if p.kind in kinds and p.default is inspect.Parameter.empty}
        return var_kw, names, required


def parse_reward_functions(specs: Sequence[Any], weights: Sequence[float] | None = None) -> list[RewardFunction]:
    """Reward functions from config entries: a spec string, or ``{function: spec, weight: w, name: n}``.

    ``weights`` (TRL's ``reward_weights``), if given, holds one weight per function and overrides the
    entries' own. Names default to the function's ``__name__`` and must be distinct.
    """
    if isinstance(specs, (str, Mapping)):
        specs = [specs]
    specs = list(specs or [])
    if weights is not None:
        weights = list(weights)
        if len(weights) != len(specs):
            raise RewardFunctionError(f"reward_weights has {len(weights)} entries for {len(specs)} reward "
                                      "functions; give one weight per function")
    out: list[RewardFunction] = []
    for i, entry in enumerate(specs):
        if isinstance(entry, Mapping):
            unknown = sorted(set(entry) - {"function", "weight", "name"})
            if unknown or "function" not in entry:
                raise RewardFunctionError(f"reward_functions[{i}] = {dict(entry)!r}: expected a spec string or "
                                          "{function: 'module:fn', weight: 1.0, name: ...}")
            spec, weight, name = entry["function"], entry.get("weight", 1.0), entry.get("name")
        else:
            spec, weight, name = entry, 1.0, None
        if callable(spec):  # from Python: a function object itself
            fn, spec = spec, f"{getattr(spec, '__module__', '?')}:{getattr(spec, '__qualname__', spec)}"
        else:
            fn = load_reward_function(spec)
        if weights is not None:
            weight = weights[i]
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise RewardFunctionError(f"reward function {spec!r}: weight {weight!r} is not a finite number")
        name = str(name) if name is not None else getattr(fn, "__name__", None) or f"reward_fn_{i}"
        if name in RESERVED_NAMES:
            raise RewardFunctionError(f"reward function {spec!r}: the name {name!r} is reserved; give it "
                                      "another: {function: ..., name: my_name}")
        if any(f.name == name for f in out):
            raise RewardFunctionError(f"two reward functions are named {name!r}; name one of them: "
                                      "{function: ..., name: other_name}")
        out.append(RewardFunction(name=name, fn=fn, weight=float(weight), spec=str(spec)))
    return out


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


@dataclass
class RewardFunctions:
    """Several TRL-contract reward functions, called per batch and combined with their weights.

    Args:
        functions: from :func:`parse_reward_functions`.
        columns: the dataset's columns (other than the prompt), to check each function's required
            parameters when it is built; None skips the check.
        warn: where warnings go (default: a ``warning:`` line on stderr).
        timeout_s: seconds a call may take before it counts as a failure (None: no limit; the calls
            then run in the caller's thread, as they always did, unless ``mode="per_sample"``).
        mode: ``batch`` (one call per batch, the timeout for the whole batch) or ``per_sample`` (one call
            per sample, ``workers`` at a time, the timeout for each).
        workers: how many calls run at once in ``per_sample`` mode.

    Attributes:
        errors: failures per function (samples; timeouts included).
        timeouts: samples per function whose call timed out.
        seconds: wall-clock seconds spent in each function, cumulative.
    """

    functions: list[RewardFunction]
    columns: Sequence[str] | None = None
    warn: Callable[[str], None] = _warn
    errors: dict[str, int] = field(default_factory=dict)
    timeout_s: float | None = None
    mode: str = "batch"
    workers: int = 4
    timeouts: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise RewardFunctionError(f"reward functions: mode {self.mode!r}; expected one of {', '.join(MODES)}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise RewardFunctionError(f"reward functions: workers must be a positive integer, got {self.workers!r}")
        if self.timeout_s is not None and (isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, (
                int, float)) or not math.isfinite(self.timeout_s) or self.timeout_s <= 0):
            raise RewardFunctionError(f"reward functions: timeout_s must be a positive number of seconds or null, "
                                      f"got {self.timeout_s!r}")
        self._plan = {}
        self._async = {}
        self._pool: DaemonPool | None = None
        for f in self.functions:
            var_kw, names, required = f.accepts()
            if self.columns is not None:
                available = {"prompts", "completions", *self.columns}
                missing = sorted(required - available)
                if missing:
                    raise RewardFunctionError(
                        f"reward function {f.name!r} ({f.spec}) requires {', '.join(map(repr, missing))}, which "
                        f"{'is not a column' if len(missing) == 1 else 'are not columns'} of the dataset; "
                        f"its columns: {', '.join(self.columns) or 'none'} (plus prompts, completions)")
            self._plan[f.name] = None if var_kw else names
            self._async[f.name] = is_async_callable(f.fn)
            self.errors.setdefault(f.name, 0)
            self.timeouts.setdefault(f.name, 0)
            self.seconds.setdefault(f.name, 0.0)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.functions)

    def __call__(self, prompts: list, completions: list, columns: Mapping[str, list],
                 labels: Sequence[str] | None = None) -> tuple[dict[str, list[float]], list[float], list[float]]:
        """``(components, rewards, failures)`` for a batch.

        ``components[name]`` holds each function's raw values (NaN for None; 0 where it failed),
        ``rewards`` the weighted sum over the functions that apply, ``failures`` how many functions
        failed on each sample. ``labels`` (e.g. prompt text) only make warnings easier to read.
        """
        n = len(completions)
        components: dict[str, list[float]] = {}
        failures = [0.0] * n
        for f in self.functions:
            values, failed = self._call_one(f, prompts, completions, columns, n, labels)
            components[f.name] = values
            for i in failed:
                failures[i] += 1
        rewards = []
        for i in range(n):
            total, applied = 0.0, False
            for f in self.functions:
                v = components[f.name][i]
                if not math.isnan(v):
                    total += f.weight * v
                    applied = True
            rewards.append(total if applied else 0.0)
        return components, rewards, failures

    def evaluate(self, f: RewardFunction, prompts: list, completions: list,
                 columns: Mapping[str, list]) -> tuple[list[float], list[BaseException | None]]:
        """``(values, errors)``: ``f``'s value on each sample (NaN for None, and NaN where it failed) and, per
        sample, what failed it (None: nothing; a :class:`~rlvr.rewards.pool.RewardTimeoutError` for a
        timeout). Counts timeouts and seconds; applies no failure rule (the callers have their own)."""
        n = len(completions)
        if n == 0:
            return [], []
        t0 = time.perf_counter()
        try:
            if self.mode == "per_sample":
                values, errors = self._per_sample(f, prompts, completions, columns)
            else:
                values, errors = self._batch(f, prompts, completions, columns)
        finally:
            self.seconds[f.name] += time.perf_counter() - t0
        self.timeouts[f.name] += sum(isinstance(e, RewardTimeoutError) for e in errors)
        return values, errors

    def _kwargs(self, f: RewardFunction, prompts, completions, columns: Mapping[str, list]) -> dict:
        names = self._plan[f.name]
        kwargs = {"prompts": prompts, "completions": completions, **columns}
        return kwargs if names is None else {k: v for k, v in kwargs.items() if k in names}

    def _get_pool(self) -> DaemonPool:
        if self._pool is None:
            self._pool = DaemonPool(self.workers, warn=self.warn)
        return self._pool

    def _call(self, f: RewardFunction, kwargs: dict) -> Any:
        """One call's return value (an awaitable awaited), within ``timeout_s``; raises what failed it."""
        if self.timeout_s is None:  # today's way: in this thread
            return _resolve(f.fn(**kwargs), None)
        if self._async[f.name]:
            return run_coroutine(f.fn(**kwargs), self.timeout_s)
        outcome = self._get_pool().run([functools.partial(_call_resolved, f.fn, kwargs, self.timeout_s)],
                                       self.timeout_s)[0]
        if outcome.error is not None:
            raise outcome.error
        return outcome.value

    def _batch(self, f, prompts, completions, columns) -> tuple[list[float], list[BaseException | None]]:
        n = len(completions)
        try:
            return _check_output(self._call(f, self._kwargs(f, prompts, completions, columns)), n), [None] * n
        except RewardTimeoutError as err:  # the batch's time is spent: no second try sample by sample
            return [math.nan] * n, [err] * n
        except Exception as err:  # noqa: BLE001 - a user's function; find the culprit samples
            if n == 1:
                return [math.nan], [err]
        return self._per_sample(f, prompts, completions, columns)

    def _per_sample(self, f, prompts, completions, columns) -> tuple[list[float], list[BaseException | None]]:
        n = len(completions)
        kwargs = [self._kwargs(f, [prompts[i]], [completions[i]], {k: [v[i]] for k, v in columns.items()})
                  for i in range(n)]
        if self.mode == "batch" and self.timeout_s is None:  # today's way: one by one, in this thread
            outcomes = []
            for kw in kwargs:
                try:
                    outcomes.append(Outcome(self._call(f, kw)))
                except Exception as err:  # noqa: BLE001
                    outcomes.append(Outcome(None, err))
        elif self._async[f.name]:
            outcomes = gather_with_timeouts([functools.partial(f.fn, **kw) for kw in kwargs], self.timeout_s,
                                            self.workers)
        else:
            outcomes = self._get_pool().run([functools.partial(_call_resolved, f.fn, kw, self.timeout_s)
                                             for kw in kwargs], self.timeout_s)
        values: list[float] = []
        errors: list[BaseException | None] = []
        for out in outcomes:
            error = out.error
            if error is None:
                try:
                    values.extend(_check_output(out.value, 1))
                    errors.append(None)
                    continue
                except ValueError as err:
                    error = err
            values.append(math.nan)
            errors.append(error)
        return values, errors

    def _call_one(self, f, prompts, completions, columns, n, labels) -> tuple[list[float], list[int]]:
        values, errors = self.evaluate(f, prompts, completions, columns)
        failed = [(i, err) for i, err in enumerate(errors) if err is not None]
        if not failed:
            return values, []
        if n > 1 and len(failed) == n and not any(isinstance(err, RewardTimeoutError) for _, err in failed):
            i, err = failed[0]
            raise RewardFunctionError(
                f"reward function {f.name!r} ({f.spec}) failed on every sample of a batch of {n}; first at "
                f"sample {i}: {_describe(err)}") from None
        self.report_failures(f, failed, n, labels)
        return [0.0 if err is not None else v for v, err in zip(values, errors)], [i for i, _ in failed]

    def report_failures(self, f: RewardFunction, failed: Sequence[tuple[int, BaseException]], n: int,
                        labels: Sequence[str] | None = None, consequence: str = "gets 0 from it") -> None:
        """Count ``failed`` (``(sample index, error)``) in :attr:`errors` and warn: the first 3 failures of a
        function in full, then at 10, 100, 1000... A batch that timed out as a whole is one warning."""
        if n > 1 and len(failed) == n and isinstance(failed[0][1], RewardTimeoutError) and all(
                err is failed[0][1] for _, err in failed):
            before = self.errors[f.name]
            self.errors[f.name] = count = before + n
            if before < _FIRST_WARNINGS or any(_power_of_ten(k) for k in range(before + 1, count + 1)):
                self.warn(f"reward function {f.name!r} timed out on a whole batch of {n}: {_describe(failed[0][1])}; "
                          f"each sample {consequence} ({count} failures so far)")
            return
        for i, err in failed:
            self.errors[f.name] += 1
            count = self.errors[f.name]
            if warn_this_time(count):
                where = f" (prompt {labels[i][:40]!r})" if labels is not None and i < len(labels) else ""
                self.warn(f"reward function {f.name!r} failed on sample {i} of a batch of {n}{where}: "
                          f"{_describe(err)}; that sample {consequence} ({count} failure"
                          f"{'s' if count > 1 else ''} so far)")


def _resolve(out: Any, timeout_s: float | None) -> Any:
    """A call's return value, an awaitable awaited on the reward loop."""
    return run_coroutine(out, timeout_s) if inspect.isawaitable(out) else out


def _call_resolved(fn: Callable[..., Any], kwargs: dict, timeout_s: float | None) -> Any:
    return _resolve(fn(**kwargs), timeout_s)


def warn_this_time(count: int) -> bool:
    """Whether the ``count``-th failure of one thing is printed: the first few, then at 10, 100, 1000..."""
    return count <= _FIRST_WARNINGS or _power_of_ten(count)


def _power_of_ten(k: int) -> bool:
    while k >= 10 and k % 10 == 0:
        k //= 10
    return k == 1


def _describe(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())[:300]


def _check_output(out: Any, n: int) -> list[float]:
    """A function's return value as n floats (NaN for None); ValueError for anything else."""
    if isinstance(out, (str, bytes, Mapping)) or not hasattr(out, "__len__"):
        raise ValueError(f"returned {type(out).__name__}, expected a list of {n} numbers or None")
    if hasattr(out, "tolist"):  # a numpy array or torch tensor
        out = out.tolist()
    out = list(out)
    if len(out) != n:
        raise ValueError(f"returned {len(out)} values for {n} samples")
    values = []
    for v in out:
        if v is None:
            values.append(math.nan)
            continue
        if hasattr(v, "item") and not isinstance(v, (int, float)):
            v = v.item()
        if isinstance(v, bool):
            v = float(v)
        if not isinstance(v, (int, float)):
            raise ValueError(f"returned {v!r} ({type(v).__name__}), expected a number or None")
        v = float(v)
        if math.isinf(v):
            raise ValueError(f"returned {v}, expected a finite number or None")
        values.append(v)  # NaN counts as None, as in TRL's nansum
    return values
