"""Reward components: named scores computed beside the task's verifier, in a registry.

A task's verifier gives ``reward`` and ``correct`` (and any components of its own). A reward
*component* adds more named scores for the same batch of completions: a learned reward model, an LLM
judge, a remote reward server, a pool of user reward functions. Components are listed in the config::

    reward:
      components:
        - {type: reward_model, name: rm_short, path: runs/rm_short/model}
        - {type: remote, name: server, url: "http://127.0.0.1:8000"}
      weights: {correct: 1.0, rm_short: 0.5}     # how components become the training reward

A component's scores join the verifier's as ``reward_components`` (logged as ``reward/<name>``), so
``reward.weights``, ``reward.combine`` and ``reward.constraints`` (Lagrange multipliers) act on them
like on any verifier component. Without ``reward.weights`` the training reward stays the verifier's.

The protocol (:class:`RewardComponent`) is one call per batch::

    component(problems, texts) -> {name: [float, ...]}      # one list of len(texts) per name in .names

A value that could not be computed is NaN; :class:`RewardPipeline` turns it into a counted failure (see
``on_failure``), so a component never stops a run for one sample. Each component's wall-clock time is
reported as ``time/reward/<name>``.

Component types are registered with :func:`register_component` (``type`` in the config is the key) and
built by :func:`build_component` from the config entry's other keys (the class's constructor arguments).
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

__all__ = ["BUILTIN_TYPES", "REWARD_COMPONENTS", "FAILURE_POLICIES", "RewardComponent", "RewardComponentError",
           "RewardPipeline", "build_component", "check_component_spec", "question_of", "register_component"]


class RewardComponentError(ValueError):
    """A reward component that cannot be built, or a run stopped by too many reward failures."""


@runtime_checkable
class RewardComponent(Protocol):
    """Scores a batch of completions.

    Attributes:
        names: the component names it returns (each one key of the result).
    """

    names: tuple[str, ...]

    def __call__(self, problems: Sequence[Any], texts: Sequence[str]) -> dict[str, list[float]]:
        """One list of ``len(texts)`` floats per name in :attr:`names`; NaN where it failed."""
        ...


#: type name -> component class (or factory). Built-ins register on import of their module.
REWARD_COMPONENTS: dict[str, Callable[..., RewardComponent]] = {}


def register_component(name: str):
    """Class decorator: make a component type available as ``{type: name, ...}`` in ``reward.components``."""

    def deco(cls):
        if name in REWARD_COMPONENTS and REWARD_COMPONENTS[name] is not cls:
            raise ValueError(f"reward component type {name!r} is already registered")
        REWARD_COMPONENTS[name] = cls
        return cls

    return deco


def question_of(problem) -> str:
    """The question a problem asks, as a user wrote it: ``meta["question"]`` when the task keeps it (the
    dataset task does, because its prompt text may already be rendered with the policy's chat template,
    which a reward model or judge with its own template must not see twice), else the prompt itself (a
    string, or the last user turn of a list of messages)."""
    meta = getattr(problem, "meta", None)
    if meta is None and isinstance(problem, Mapping):
        meta = problem.get("meta")
    if isinstance(meta, Mapping) and isinstance(meta.get("question"), str):
        return meta["question"]
    prompt = problem.get("prompt") if isinstance(problem, Mapping) else getattr(problem, "prompt", None)
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(m, Mapping) for m in prompt):
        users = [m for m in prompt if m.get("role") == "user"] or list(prompt)
        return str(users[-1].get("content", ""))
    raise RewardComponentError(f"a problem's prompt must be a string or a list of messages, got "
                               f"{type(prompt).__name__}")


#: Built-in component types and the module whose import registers each (imported on first use).
BUILTIN_TYPES = {"reward_model": "rlvr.rewards.reward_model", "judge": "rlvr.rewards.judge",
                 "remote": "rlvr.rewards.remote", "functions": "rlvr.rewards.execution"}


def _factory(kind: str) -> Callable[..., RewardComponent]:
    import importlib

    if kind not in REWARD_COMPONENTS and kind in BUILTIN_TYPES:
        importlib.import_module(BUILTIN_TYPES[kind])
    if kind not in REWARD_COMPONENTS:
        known = sorted(set(REWARD_COMPONENTS) | set(BUILTIN_TYPES))
        raise RewardComponentError(f"reward.components: unknown type {kind!r}; known: {', '.join(known)}")
    return REWARD_COMPONENTS[kind]


def check_component_spec(spec: Mapping[str, Any], where: str = "reward.components") -> None:
    """Raise :class:`RewardComponentError` naming the field when ``spec`` cannot build a component
    (unknown type, unknown or missing argument). Loads nothing heavy: used by config validation."""
    if not isinstance(spec, Mapping) or "type" not in spec:
        raise RewardComponentError(f"{where}: expected {{type: <{'|'.join(sorted(BUILTIN_TYPES))}>, "
                                   f"name: ..., ...}}, got {spec!r}")
    factory = _factory(spec["type"])
    params = {k: v for k, v in spec.items() if k != "type"}
    sig = inspect.signature(factory)
    accepted = {n for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise RewardComponentError(f"{where} (type {spec['type']!r}): unknown field(s) {', '.join(unknown)}; "
                                   f"accepted: {', '.join(sorted(accepted))}")
    missing = sorted(n for n, p in sig.parameters.items() if p.default is inspect.Parameter.empty
                     and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in params)
    if missing:
        raise RewardComponentError(f"{where} (type {spec['type']!r}): missing field(s) {', '.join(missing)}")


def build_component(spec: Mapping[str, Any], **context) -> RewardComponent:
    """The component a config entry describes: ``REWARD_COMPONENTS[spec["type"]](**rest)``.

    ``context`` (e.g. ``device``, ``policy_path``) is passed to the factory for each name its
    signature takes and the entry does not set."""
    check_component_spec(spec)
    factory = _factory(spec["type"])
    params = {k: v for k, v in spec.items() if k != "type"}
    accepted = inspect.signature(factory).parameters
    for k, v in context.items():
        if k in accepted and k not in params:
            params[k] = v
    return factory(**params)


def fail_zero(pipeline: "RewardPipeline", out: dict, failed, group) -> None:
    """``zero``: a failed sample keeps the score 0 it was given (counted in ``reward_failures``)."""


def fail_drop_group(pipeline: "RewardPipeline", out: dict, failed, group) -> None:
    """``drop_group``: also ``reward_failed_group`` = 1 on every row of a group with a failed sample; the
    producer zeroes those rows' loss mask, so the group trains nothing this step."""
    import torch

    if group is None:
        raise RewardComponentError("reward.on_failure=drop_group needs the rows' group ids")
    group = torch.as_tensor(group)
    out["reward_failed_group"] = torch.isin(group, torch.unique(group[failed > 0])).float()


def fail_stop(pipeline: "RewardPipeline", out: dict, failed, group) -> None:
    """``stop``: the run stops once more than ``max_failures`` samples have failed, counted over the run."""
    total = sum(pipeline.failures.values())
    if total > pipeline.max_failures:
        worst = max(pipeline.failures, key=pipeline.failures.get)
        raise RewardComponentError(f"reward components failed on {total} samples (most: {worst!r}, "
                                   f"{pipeline.failures[worst]}), more than reward.max_failures = "
                                   f"{pipeline.max_failures}; see the warnings above, or set reward.on_failure=zero")


#: ``reward.on_failure`` -> what happens to a scored batch with failed (NaN) samples, after each is scored 0.
FAILURE_POLICIES: dict[str, Callable[..., None]] = {"zero": fail_zero, "drop_group": fail_drop_group,
                                                    "stop": fail_stop}


@dataclass
class RewardPipeline:
    """The configured components, called in order on each scored batch; failures counted, calls timed.

    The task's verifier is scored by the caller (the producer); this adds the components' scores.

    Args:
        components: built components.
        on_failure: one of :data:`FAILURE_POLICIES`.
        max_failures: with ``on_failure=stop``, the number of failed samples the run tolerates; one more
            stops it with :class:`RewardComponentError`.
    """

    components: list = field(default_factory=list)
    on_failure: str = "zero"
    max_failures: int = 0
    failures: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.on_failure not in FAILURE_POLICIES:
            raise RewardComponentError(f"reward.on_failure = {self.on_failure!r}; expected one of "
                                       f"{', '.join(FAILURE_POLICIES)}")
        seen: set[str] = set()
        for c in self.components:
            for name in c.names:
                if name in seen or name in ("reward", "correct", "reward_failures", "reward_failed_group"):
                    raise RewardComponentError(f"reward.components: the name {name!r} is used twice (or is "
                                               "reserved); give each component its own name")
                seen.add(name)
                self.failures.setdefault(name, 0)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for c in self.components for n in c.names)

    def __call__(self, problems: list, texts: list[str], group=None) -> tuple[dict, dict[str, float]]:
        """``(components, seconds)``: each component's scores as float tensors ``[B]`` (failures set to 0),
        ``reward_failures`` (failed components per sample) and, with ``on_failure=drop_group``,
        ``reward_failed_group`` (1 on every row of a group with a failure; needs ``group`` [B]); and the
        wall-clock seconds of each component."""
        import torch

        if not self.components:
            return {}, {}
        values, seconds = score_components(self.components, problems, texts)
        n = len(texts)
        failed = torch.zeros(n)
        out = {}
        for name, vals in values.items():
            v = torch.tensor(vals, dtype=torch.float32)
            bad = ~torch.isfinite(v)
            self.failures[name] += int(bad.sum())
            failed += bad.float()
            out[name] = torch.where(bad, torch.zeros_like(v), v)
        out["reward_failures"] = failed
        FAILURE_POLICIES[self.on_failure](self, out, failed, group)
        return out, seconds


def score_components(components: list, problems: list, texts: list[str]) -> tuple[dict[str, list[float]],
                                                                                 dict[str, float]]:
    """Each component's values (NaN where it failed) and its wall-clock seconds (``name`` -> s)."""
    values: dict[str, list[float]] = {}
    timings: dict[str, float] = {}
    n = len(texts)
    for c in components:
        t0 = time.perf_counter()
        try:
            out = c(problems, texts)
        except Exception as err:  # noqa: BLE001 - a component failing on a whole batch is a counted failure
            _warn_once(c, err)
            out = {name: [math.nan] * n for name in c.names}
        timings["/".join(c.names) if len(c.names) > 1 else c.names[0]] = time.perf_counter() - t0
        for name in c.names:
            got = list(out.get(name, [math.nan] * n))
            if len(got) != n:
                raise RewardComponentError(f"reward component {name!r} returned {len(got)} values for {n} samples")
            values[name] = [float(v) if v is not None else math.nan for v in got]
    return values, timings


_WARNED: set[int] = set()


def _warn_once(component, err: BaseException) -> None:
    import sys

    if id(component) not in _WARNED:
        _WARNED.add(id(component))
        print(f"warning: reward component {', '.join(component.names)} failed on a whole batch: "
              f"{type(err).__name__}: {err} (its samples count as failures)", file=sys.stderr, flush=True)
