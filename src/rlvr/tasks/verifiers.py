"""Verifiers chosen by name for the ``dataset`` task: ``exact``, ``math``, ``regex``, ``code``, ``none``.

A verifier compares a completion with a row's reference answer. It gives ``correct`` (0 or 1) and
any diagnostics of its own (``format``), extracts the answer a completion gives, and writes the
reference completion for a supervised warm start. Like every verifier in rlvr it never raises on a
completion: odd input scores 0.

* ``exact``: the extracted answer equals the reference, both stripped (``ignore_case``: also
  case-folded). ``extract`` chooses what is compared: ``none`` (the whole completion, default),
  ``tags`` (the last ``<answer>...</answer>``), ``boxed`` (the last ``\\boxed{...}``) or
  ``last_line``. ``format`` is 1 when the extraction found something.
* ``math``: math-verify's ``parse`` + ``verify`` (as the ``math`` task); ``format`` is 1 when
  math-verify finds an answer at all.
* ``regex``: ``re.search(pattern, completion)`` where ``pattern`` (an option) may hold ``{answer}``,
  replaced by the escaped reference answer; without ``pattern`` the reference answer itself is the
  regular expression. ``fullmatch: true`` demands the whole stripped completion match.
* ``code``: reserved for the sandboxed code verifier; programs judged by I/O tests are the ``code``
  task's (:mod:`rlvr.tasks.code`) for now, and asking for ``code`` here is a one-line error saying
  so. :func:`register_verifier` adds it (or any other verifier) by name.
* ``none``: no reference answer; the reward comes from user reward functions alone.

Options of a verifier are given as ``verifier_options`` of the dataset task and checked against
its factory's signature.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Protocol

from rlvr.tasks.base import MAX_ANSWER_CHARS, check_options, guarded

__all__ = ["VERIFIERS", "ExactVerifier", "MathVerifier", "RegexVerifier", "Verifier", "make_verifier",
           "register_verifier"]


class Verifier(Protocol):
    name: str
    #: diagnostics besides ``correct`` (each a key of :meth:`score`)
    extra_names: tuple[str, ...]

    def score(self, answer: str, completion: str) -> dict[str, float]: ...

    def extract(self, completion: str) -> str | None: ...

    def sft_target(self, answer: str) -> str: ...


VERIFIERS: dict[str, Callable[..., Verifier]] = {}


def register_verifier(name: str):
    """Decorator adding a verifier factory to :data:`VERIFIERS` (``factory(**verifier_options)``)."""

    def decorator(factory):
        VERIFIERS[name] = factory
        return factory

    return decorator


def make_verifier(name: str, options: dict | None = None) -> Verifier | None:
    """The verifier ``name`` with ``options``; None for ``"none"``. ValueError names what is allowed."""
    options = dict(options or {})
    if name == "none":
        if options:
            raise ValueError(f"verifier 'none' takes no verifier_options, got {', '.join(options)}")
        return None
    factory = VERIFIERS.get(name)
    if factory is None:
        raise ValueError(f"unknown verifier {name!r}; known: {', '.join([*sorted(VERIFIERS), 'none'])}")
    check_options(options, factory, f"verifier {name}")
    return factory(**options)


def _last_tagged(text: str, open_: str = "<answer>", close: str = "</answer>") -> str | None:
    end = text.rfind(close)
    if end == -1:
        return None
    start = text.rfind(open_, 0, end)
    return None if start == -1 else text[start + len(open_):end]


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` with balanced braces (linear scan), or None."""
    start = text.rfind("\\boxed{")
    if start == -1:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


_EXTRACTORS = {
    "none": lambda t: t,
    "tags": _last_tagged,
    "boxed": _last_boxed,
    "last_line": lambda t: (t.strip().splitlines() or [""])[-1],
}


@register_verifier("exact")
class ExactVerifier:
    """Exact match of the extracted answer (see the module doc)."""

    name = "exact"
    extra_names = ("format",)

    def __init__(self, extract: str = "none", ignore_case: bool = False) -> None:
        if extract not in _EXTRACTORS:
            raise ValueError(f"verifier exact: extract={extract!r}; allowed: {', '.join(_EXTRACTORS)}")
        self.mode = extract
        self.ignore_case = bool(ignore_case)

    def extract(self, completion: str) -> str | None:
        if not isinstance(completion, str) or len(completion) > 4 * MAX_ANSWER_CHARS:
            return None
        found = _EXTRACTORS[self.mode](completion)
        if found is None:
            return None
        found = found.strip()
        return found if found and len(found) <= MAX_ANSWER_CHARS else None

    def _norm(self, text: str) -> str:
        text = text.strip()
        return text.casefold() if self.ignore_case else text

    def score(self, answer: str, completion: str) -> dict[str, float]:
        found = self.extract(completion)
        correct = found is not None and self._norm(found) == self._norm(str(answer))
        return {"correct": float(correct), "format": float(found is not None)}

    def sft_target(self, answer: str) -> str:
        return {"tags": f"<answer>{answer}</answer>", "boxed": f"\\boxed{{{answer}}}"}.get(self.mode, str(answer))


@register_verifier("math")
class MathVerifier:
    """math-verify equivalence, exactly as :class:`rlvr.tasks.math.MathTask` checks answers."""

    name = "math"
    extra_names = ("format",)

    def extract(self, completion: str) -> str | None:
        from rlvr.tasks.math import _parse_prediction, _timeout

        if not isinstance(completion, str) or not completion.strip():
            return None
        parsed = guarded(_parse_prediction, completion, _timeout(), default=[])
        return str(parsed[-1]) if parsed else None

    def score(self, answer: str, completion: str) -> dict[str, float]:
        from math_verify import verify

        from rlvr.tasks.math import _parse_gold, _parse_prediction, _timeout

        out = {"correct": 0.0, "format": 0.0}
        if not isinstance(completion, str) or not completion.strip():
            return out
        timeout = _timeout()
        prediction = guarded(_parse_prediction, completion, timeout, default=[])
        if not prediction:
            return out
        out["format"] = 1.0
        gold = guarded(_parse_gold, str(answer), timeout, default=())
        if gold and guarded(verify, list(gold), prediction, timeout_seconds=timeout, default=False):
            out["correct"] = 1.0
        return out

    def sft_target(self, answer: str) -> str:
        return f"\\boxed{{{answer}}}"


@register_verifier("regex")
class RegexVerifier:
    """A regular expression over the completion (see the module doc)."""

    name = "regex"
    extra_names = ()

    def __init__(self, pattern: str | None = None, fullmatch: bool = False, ignore_case: bool = False) -> None:
        self.pattern = pattern
        self.fullmatch = bool(fullmatch)
        self.flags = re.IGNORECASE if ignore_case else 0
        if pattern is not None:
            try:
                re.compile(pattern.replace("{answer}", "x"), self.flags)
            except re.error as err:
                raise ValueError(f"verifier regex: pattern {pattern!r} is not a regular expression: {err}") from None
        self._cache: dict[str, Any] = {}

    def _compiled(self, answer: str):
        if answer not in self._cache:
            text = str(answer) if self.pattern is None else self.pattern.replace("{answer}", re.escape(str(answer)))
            self._cache[answer] = guarded(re.compile, text, self.flags)  # a bad answer-pattern scores 0
        return self._cache[answer]

    def extract(self, completion: str) -> str | None:
        if not isinstance(completion, str):
            return None
        text = completion.strip()
        return text[:MAX_ANSWER_CHARS] or None

    def score(self, answer: str, completion: str) -> dict[str, float]:
        rx = self._compiled(answer)
        if rx is None or not isinstance(completion, str) or len(completion) > MAX_ANSWER_CHARS:
            return {"correct": 0.0}
        text = completion.strip() if self.fullmatch else completion
        hit = guarded(rx.fullmatch if self.fullmatch else rx.search, text)
        return {"correct": float(hit is not None)}

    def sft_target(self, answer: str) -> str:
        return str(answer)


@register_verifier("code")
def _code_verifier(**options: Any) -> Verifier:
    raise ValueError("verifier 'code' is not wired into the dataset task yet: for programs judged by I/O "
                     "tests in the sandbox use task.name=code (rlvr.tasks.code, a JSONL with a 'tests' column); "
                     "here use exact, math, regex, or reward_functions with verifier=none")
