"""The task protocol: a source of prompts with reference data, and a verifier.

A task hands out :class:`Problem` objects (a prompt, the reference answer and any
reference data in ``meta``) and scores a model's completion of a prompt as a dict of
named rewards. Every score dict holds at least:

* ``"reward"``: the scalar the trainer optimises;
* ``"correct"``: 1.0 if the completion is exactly right, else 0.0 (used for accuracy).

Verifiers never raise: a completion that is empty, huge, non-ASCII, malformed, or that
makes an underlying verifier raise, scores 0 on every reward. The helpers at the end of
this module (:func:`guarded`, :func:`zero_rewards`, :data:`MAX_ANSWER_CHARS`) are what the
built-in tasks use to keep that promise.

Optional capabilities, each a small protocol a task may implement (checked with ``isinstance``):

* :class:`SupportsSFT`: ``format_sft_target`` for the supervised warm start;
* :class:`SupportsChainVerifier`: ``verify_chain`` judges the chain of thought, not only the final
  answer (CoT-pass@k, spec section 18.2);
* :class:`SupportsAggregation`: ``aggregation_prompt`` shows the model candidate solutions to
  aggregate (RSA, spec section 17), and ``sft_candidates`` makes noisy candidate lists so the warm
  start can teach that format. Tasks without it fall back to :func:`default_aggregation_prompt`.

Tasks are built by name with :func:`make_task`; user tasks join the registry with the
:func:`register_task` decorator.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    import torch

__all__ = [
    "MAX_ANSWER_CHARS",
    "SPLITS",
    "TASKS",
    "Problem",
    "SupportsAggregation",
    "SupportsChainVerifier",
    "SupportsSFT",
    "Task",
    "aggregation_prompt",
    "compact_aggregation_prompt",
    "default_aggregation_prompt",
    "check_options",
    "check_split",
    "guarded",
    "hash_fraction",
    "make_task",
    "register_task",
    "unit_float",
    "zero_rewards",
]

SPLITS = ("train", "eval")

#: Longest answer text handed to a parser or verifier. Longer answers score 0: they are
#: rejected rather than truncated, because cutting an answer can change what it says.
MAX_ANSWER_CHARS = 10_000


@dataclass(frozen=True)
class Problem:
    """One prompt with its reference answer.

    Attributes:
        prompt: the exact text the model is given.
        answer: the reference answer as a string (what a perfect completion contains).
        meta: reference data the verifier needs (operands, a reasoning-gym entry, ...).
            Excluded from hashing so a problem can live in a set or be a dict key.
    """

    prompt: str
    answer: str
    meta: dict = field(default_factory=dict, hash=False)


@runtime_checkable
class Task(Protocol):
    """What the trainer needs from a task.

    Attributes:
        name: the registry name the task was built under (e.g. ``"arithmetic"``).
        reward_names: the keys :meth:`score` returns, ``"reward"`` and ``"correct"`` included.
    """

    name: str
    reward_names: tuple[str, ...]

    def problems(self, split: str, n: int | None = None) -> list[Problem]:
        """The first ``n`` problems (all when ``None``) of ``split`` ("train" or "eval")."""
        ...

    def score(self, problem: Problem, completion: str) -> dict[str, float]:
        """Named rewards for ``completion`` (the text generated after the prompt)."""
        ...

    def extract_answer(self, completion: str) -> str | None:
        """The answer the completion gives, or ``None`` when it gives none."""
        ...


@runtime_checkable
class SupportsSFT(Protocol):
    """A task with reference completions, for a supervised warm start before RL."""

    def format_sft_target(self, problem: Problem) -> str:
        """The completion a perfect model would give for ``problem`` (scores correct=1)."""
        ...


@runtime_checkable
class SupportsChainVerifier(Protocol):
    """A task that can judge the reasoning steps of a completion, not only its final answer."""

    def verify_chain(self, problem: Problem, completion: str) -> bool:
        """True iff every step of the completion is well-formed, right and follows from the last.

        Never raises (hostile input is False). CoT-pass@k counts a sample only when it is
        ``correct`` *and* ``verify_chain`` holds (arXiv 2506.14245; spec section 18.2).
        """
        ...


@runtime_checkable
class SupportsAggregation(Protocol):
    """A task with its own aggregation prompt for RSA (Venkatraman et al. 2025, arXiv 2509.26626)."""

    def aggregation_prompt(self, problem: Problem, candidates: list[str]) -> str:
        """The prompt that shows ``problem`` and its candidate completions; the model answers it
        with an ordinary completion of ``problem`` (same verifier)."""
        ...

    def sft_candidates(self, problem: Problem, k: int, rng: Any) -> list[str]:
        """``k`` plausible candidate completions, some right and some wrong (``rng`` is a
        ``random.Random``), used to teach the aggregation format during the warm start."""
        ...


def aggregation_prompt(task: Any, problem: Problem, candidates: list[str]) -> str:
    """``task.aggregation_prompt`` when the task has one, else :func:`default_aggregation_prompt`."""
    if isinstance(task, SupportsAggregation):
        return task.aggregation_prompt(problem, list(candidates))
    return default_aggregation_prompt(problem, list(candidates))


#: Longest candidate text (characters) shown in a compact aggregation prompt; longer ones are cut.
MAX_CANDIDATE_CHARS = 64


def compact_aggregation_prompt(prompt: str, candidates: list[str], alphabet: str,
                               max_chars: int = MAX_CANDIDATE_CHARS) -> str:
    """Candidates-then-answer format for tiny character-level models: ``12+7=|19|18|19|=>``.

    The problem's prompt, then each candidate followed by ``|`` (after a leading ``|``), then
    ``=>``; the model continues with an ordinary completion. Each candidate is stripped, cut to
    ``max_chars`` characters, and every character outside ``alphabet`` becomes ``?`` (so a
    candidate can never hold ``|`` or a newline and break the frame).
    """
    cleaned = ["".join(ch if ch in alphabet else "?" for ch in str(c).strip()[:max_chars]) for c in candidates]
    return prompt + "|" + "".join(c + "|" for c in cleaned) + "=>"


def default_aggregation_prompt(problem: Problem, candidates: list[str]) -> str:
    """A natural-language aggregation prompt for instruction-following models (spec 17.2, paraphrased).

    With one candidate it is the RSA "refine this candidate" variant.
    """
    if len(candidates) == 1:
        head = ("Below is a problem and one candidate solution, which may be wrong. Check it, fix any "
                "mistakes, and write one improved solution that ends with the final answer in the "
                "format the problem asks for.")
    else:
        head = ("Below is a problem and several candidate solutions, some of which may be wrong. Combine "
                "their useful ideas, resolve disagreements between them, try a new approach if all are "
                "wrong, and write one improved solution that ends with the final answer in the format "
                "the problem asks for.")
    body = "".join(f"\n\nCandidate {i + 1}:\n{c}" for i, c in enumerate(candidates))
    return f"{head}\n\nProblem:\n{problem.prompt}{body}\n\nNow write one improved solution.\n"


# --------------------------------------------------------------------------- registry

TaskFactory = Callable[..., Task]
F = TypeVar("F", bound=TaskFactory)

#: Registry of task factories by name. ``make_task`` reads it; ``register_task`` writes it.
TASKS: dict[str, TaskFactory] = {}

_BUILTIN_MODULES = ("rlvr.tasks.arithmetic", "rlvr.tasks.arithmetic_concise", "rlvr.tasks.arithmetic_chain",
                    "rlvr.tasks.reasoning_gym",
                    "rlvr.tasks.math", "rlvr.tasks.dataset", "rlvr.tasks.code")


def register_task(name: str) -> Callable[[F], F]:
    """Class/function decorator adding a task factory to :data:`TASKS` under ``name``.

    The factory is called as ``factory(**options)``. A factory registered as ``"family"``
    is also reachable as ``"family:<arg>"``, which calls ``factory(<arg>, **options)``
    (this is how ``"reasoning_gym:chain_sum"`` works).

    Raises:
        ValueError: if ``name`` is empty, holds ``":"``, or is already taken by another factory.
    """
    if not name or ":" in name:
        raise ValueError(f"task name must be non-empty and hold no ':', got {name!r}")

    def decorator(factory: F) -> F:
        existing = TASKS.get(name)
        if existing is not None and existing is not factory and _qualname(existing) != _qualname(factory):
            raise ValueError(f"task name {name!r} is already registered to {_qualname(existing)}")
        TASKS[name] = factory
        return factory

    return decorator


def make_task(name: str, **options: Any) -> Task:
    """Build a registered task by name.

    Args:
        name: ``"arithmetic"``, ``"arithmetic_chain"``, ``"math"``, ``"dataset"`` (your own file),
            ``"reasoning_gym:<dataset>"``
            (any reasoning-gym dataset, e.g. ``"reasoning_gym:chain_sum"``) or a name added with
            :func:`register_task`.
        **options: the factory's keyword options.

    Raises:
        ValueError: unknown name (the message lists the known ones) or unknown option
            (the message names it and lists the allowed ones).
    """
    _load_builtins()
    family, colon, arg = name.partition(":")
    factory = TASKS.get(family)
    if factory is None or (colon and not arg):
        raise ValueError(f"unknown task {name!r}; known tasks: {_known_names()}")
    args = (arg,) if arg else ()
    check_options(options, factory, name, positional=len(args))
    task = factory(*args, **options)
    _set_name(task, name)
    return task


def check_options(
    options: Mapping[str, Any], factory: Callable[..., Any], what: str, positional: int = 0
) -> None:
    """Raise ValueError if ``options`` holds a keyword that ``factory`` does not accept.

    Factories taking ``**kwargs`` validate their own extra options and pass here.
    ``positional`` is how many leading parameters are filled positionally (not options).
    """
    params = list(inspect.signature(factory).parameters.values())
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    allowed = [
        p.name
        for p in params[positional:]
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for task {what!r}; "
            f"allowed: {', '.join(allowed) or '(none)'}"
        )


def _load_builtins() -> None:
    """Import the built-in task modules so their ``@register_task`` lines have run."""
    import importlib

    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def _known_names() -> str:
    names = sorted(TASKS)
    if "reasoning_gym" in names:
        names.append("reasoning_gym:<dataset>")
    return ", ".join(names)


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _set_name(task: Any, name: str) -> None:
    """Record the registry name on the task when the task has not chosen one itself."""
    if not getattr(task, "name", None):
        try:
            task.name = name
        except AttributeError:
            pass


# --------------------------------------------------------------------------- helpers


def check_split(split: str) -> None:
    """Raise ValueError unless ``split`` is "train" or "eval"."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


def hash_fraction(text: str) -> float:
    """A stable number in [0, 1) from ``text`` (BLAKE2b), independent of seeds and runs.

    Used to put each distinct prompt on the train or eval side once and for all, so
    the two splits never share a prompt whatever the sampling order.
    """
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, person=b"rlvr-split").digest()
    return int.from_bytes(digest, "big") / 2.0**64


def zero_rewards(names: tuple[str, ...]) -> dict[str, float]:
    """Every reward in ``names`` set to 0.0."""
    return {name: 0.0 for name in names}


def guarded(fn: Callable[..., Any], *args: Any, default: Any = None, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, or ``default`` if it raises anything but a keyboard interrupt.

    Verifiers from other libraries raise on odd input (``int("abc")``, integers over
    4300 digits, sympy errors, timeouts): every call to one goes through here.
    """
    try:
        return fn(*args, **kwargs)
    except Exception:  # noqa: BLE001 - a verifier must never take down training
        return default


def unit_float(value: Any) -> float:
    """``value`` as a float clamped to [0, 1]; anything non-numeric or non-finite is 0."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return 0.0
    if not math.isfinite(number):
        return 0.0
    return min(1.0, max(0.0, number))


def score(task, problems: list, texts: list[str]) -> dict[str, torch.Tensor]:
    """Run the task's verifier on every completion; named rewards as float tensors ``[B]``.

    A task with ``score_batch(problems, texts) -> list[dict]`` (e.g. one whose user reward functions
    are called once per batch, TRL style) is scored by it; otherwise ``task.score`` per row."""
    import torch  # tasks load without torch (config validation); scoring returns tensors

    batch = getattr(task, "score_batch", None)
    scores = batch(list(problems), list(texts)) if batch is not None else [task.score(p, t) for p, t in zip(problems, texts)]
    names = scores[0].keys() if scores else ()
    return {k: torch.tensor([s[k] for s in scores], dtype=torch.float32) for k in names}
