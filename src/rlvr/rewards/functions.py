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
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

__all__ = ["RESERVED_NAMES", "RewardFunction", "RewardFunctionError", "RewardFunctions",
           "load_reward_function", "parse_reward_functions"]

#: Component names a reward function may not take (the task's own outputs).
RESERVED_NAMES = ("reward", "correct", "function_errors")
#: Failures of one function that are printed in full before only milestones are.
_FIRST_WARNINGS = 3


class RewardFunctionError(ValueError):
    """A user reward function that cannot be loaded, or that fails on every sample of a batch."""


def load_reward_function(spec: str) -> Callable[..., Any]:
    """The callable ``spec`` names: ``"package.module:function"`` or ``"path/to/file.py:function"``.

    A spec whose module part ends in ``.py`` or holds a path separator is a file, loaded by path
    (relative paths from the working directory); anything else is imported.

    Raises:
        RewardFunctionError: a malformed spec, a missing file or module, a module that fails to
            import (its error in one line), a missing or non-callable attribute.
    """
    if not isinstance(spec, str) or ":" not in spec.strip(":"):
        raise RewardFunctionError(f"reward function {spec!r}: expected 'package.module:function' or "
                                  "'path/to/file.py:function'")
    module_part, _, attr = spec.rpartition(":")
    if not module_part or not attr.isidentifier():
        raise RewardFunctionError(f"reward function {spec!r}: expected 'package.module:function' or "
                                  "'path/to/file.py:function'")
    if module_part.endswith(".py") or "/" in module_part or "\\" in module_part:
        module = _load_file(spec, Path(module_part).expanduser())
    else:
        try:
            module = importlib.import_module(module_part)
        except ModuleNotFoundError as err:
            raise RewardFunctionError(f"reward function {spec!r}: no module {err.name!r} (give a file "
                                      "as 'path/to/file.py:function', or install the package)") from None
        except Exception as err:  # noqa: BLE001 - the user's module; report it in one line
            raise RewardFunctionError(f"reward function {spec!r}: importing {module_part!r} failed: "
                                      f"{type(err).__name__}: {err}") from None
    fn = getattr(module, attr, None)
    if fn is None:
        public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise RewardFunctionError(f"reward function {spec!r}: {module_part!r} has no {attr!r}; its "
                                  f"callables: {', '.join(public) or 'none'}")
    if not callable(fn):
        raise RewardFunctionError(f"reward function {spec!r}: {attr!r} is not callable")
    return fn


def _load_file(spec: str, path: Path):
    if not path.is_file():
        raise RewardFunctionError(f"reward function {spec!r}: no such file {str(path)!r}")
    resolved = path.resolve()
    name = f"rlvr_user_rewards_{abs(hash(str(resolved))):x}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, resolved)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001
        del sys.modules[name]
        raise RewardFunctionError(f"reward function {spec!r}: loading {str(path)!r} failed: "
                                  f"{type(err).__name__}: {err}") from None
    return module


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
    """

    functions: list[RewardFunction]
    columns: Sequence[str] | None = None
    warn: Callable[[str], None] = _warn
    errors: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._plan = {}
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
            self.errors.setdefault(f.name, 0)

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

    def _kwargs(self, f: RewardFunction, prompts, completions, columns: Mapping[str, list]) -> dict:
        names = self._plan[f.name]
        kwargs = {"prompts": prompts, "completions": completions, **columns}
        return kwargs if names is None else {k: v for k, v in kwargs.items() if k in names}

    def _call_one(self, f, prompts, completions, columns, n, labels) -> tuple[list[float], list[int]]:
        try:
            return _check_output(f.fn(**self._kwargs(f, prompts, completions, columns)), n), []
        except Exception as batch_error:  # noqa: BLE001 - a user's function; find the culprit samples
            if n == 1:
                return self._failed(f, [(0, batch_error)], n, labels)
        values: list[float] = []
        failed: list[tuple[int, BaseException]] = []
        for i in range(n):
            one = {k: [v[i]] for k, v in columns.items()}
            try:
                values.extend(_check_output(f.fn(**self._kwargs(f, [prompts[i]], [completions[i]], one)), 1))
            except Exception as err:  # noqa: BLE001
                failed.append((i, err))
                values.append(0.0)
        if len(failed) == n:
            i, err = failed[0]
            raise RewardFunctionError(
                f"reward function {f.name!r} ({f.spec}) failed on every sample of a batch of {n}; first at "
                f"sample {i}: {_describe(err)}") from None
        self._failed(f, failed, n, labels)
        return values, [i for i, _ in failed]

    def _failed(self, f, failed, n, labels) -> tuple[list[float], list[int]]:
        values = [0.0] * n if n == 1 else None
        for i, err in failed:
            self.errors[f.name] += 1
            count = self.errors[f.name]
            if count <= _FIRST_WARNINGS or _power_of_ten(count):
                where = f" (prompt {labels[i][:40]!r})" if labels is not None and i < len(labels) else ""
                self.warn(f"reward function {f.name!r} failed on sample {i} of a batch of {n}{where}: "
                          f"{_describe(err)}; that sample gets 0 from it ({count} failure"
                          f"{'s' if count > 1 else ''} so far)")
        return (values if values is not None else []), [i for i, _ in failed]


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
