"""Code as a verifiable reward: programs judged by I/O tests in the sandbox.

Two tasks share one judge (:class:`rlvr.sandbox.CodeVerifier`, rules in :mod:`rlvr.sandbox.verifier`):

* ``"code"`` (:class:`CodeTask`): problems from a JSONL file, one per line::

      {"prompt": "...", "tests": [{"input": "1 2\\n", "output": "3\\n"}, ...],
       "language": "python", "solution": "optional reference program", "limits": {"cpu_s": 1}}

  ``language`` is any registered language (``python``, ``bash``, ``c``, ``javascript``; default:
  the ``language`` option); ``limits`` optionally overrides the per-test limits. The prompt is given
  to the model as it is. ``eval_path`` names a separate eval file; without it a share
  ``eval_fraction`` of the prompts (by prompt hash) is the eval split.

* ``"code_tiny"`` (:class:`CodeTinyTask`): a code task the built-in character-level model can
  learn. The prompt shows two input/output examples of a hidden function, ``"3>6;5>8\\n"``, and the
  model writes a Python program that reads the input from stdin and prints the function's value,
  ``print(int(input())+3)``. The functions: ``x+c``, ``x-c``, ``x*c`` (c = 2..9) on an integer,
  and reverse, upper-case, double, length, first, last and sorted characters on a word. The
  examples always single out one function (checked against every function of the family, the word
  functions applied to numbers too); the program is judged on three *other* hidden inputs, so
  printing the examples' outputs does not pass. The reference program is the SFT target.

Rewards (both tasks): ``correct`` (every test passed), ``pass_fraction``, ``ran`` (built and ran
every test it got to without an error); ``reward`` is picked by ``reward_mode``: ``binary``
(= correct, default), ``fraction`` (= pass_fraction; every test is run), or ``binary+partial``
(1 if correct, else 0.2 if it ran cleanly: Agnostics' partial-reward channel).

Judge failures are not rewards: when the sandbox fails twice on a run, scoring raises
:class:`rlvr.sandbox.SandboxError` and the step stops (the task's one exception to "verifiers never
raise"). Batches are judged in parallel (``score_batch``: one program per sandbox worker slot).

Sandbox settings are the task option ``sandbox`` (a mapping): ``require_isolation`` (default
true: refuse to run when any isolation mechanism is missing), ``workers`` (slots; default one per
core), and per-test limits ``cpu_s``, ``wall_s``, ``memory_mb``, ``pids``, plus ``program_wall_s``.
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path
from typing import Any, Callable, Mapping

from rlvr.tasks.base import MAX_ANSWER_CHARS, Problem, check_split, hash_fraction, register_task

__all__ = ["CodeTask", "CodeTinyTask", "TINY_FUNCTIONS", "REWARD_MODES"]

REWARD_MODES = ("binary", "fraction", "binary+partial")
_REWARD_NAMES = ("reward", "correct", "pass_fraction", "ran")
_SANDBOX_KEYS = {"require_isolation": bool, "workers": int, "cpu_s": float, "wall_s": float,
                 "memory_mb": int, "pids": int, "program_wall_s": float}


class _Judged:
    """Scoring shared by the code tasks: extraction, the verifier, reward modes, batches."""

    reward_names = _REWARD_NAMES

    def _init_judge(self, sandbox: Mapping[str, Any] | None, reward_mode: str) -> None:
        if reward_mode not in REWARD_MODES:
            raise ValueError(f"reward_mode must be one of {REWARD_MODES}, got {reward_mode!r}")
        options = dict(sandbox or {})
        unknown = sorted(set(options) - set(_SANDBOX_KEYS))
        if unknown:
            raise ValueError(f"unknown sandbox option(s) {unknown}; allowed: {', '.join(sorted(_SANDBOX_KEYS))}")
        for key, value in options.items():
            kind = _SANDBOX_KEYS[key]
            if value is not None and (isinstance(value, bool) != (kind is bool) or
                                      not isinstance(value, (int, float))):
                raise ValueError(f"sandbox.{key} must be a {kind.__name__}, got {value!r}")
        self.sandbox_options = options
        self.reward_mode = reward_mode
        self._verifier = None
        self.verifier  # build it now: a machine that cannot sandbox refuses before any training

    @property
    def verifier(self):
        if self._verifier is None:
            from rlvr.sandbox import CodeVerifier, Limits, Sandbox

            o = self.sandbox_options
            limit_keys = {k: o[k] for k in ("cpu_s", "wall_s", "memory_mb", "pids") if o.get(k) is not None}
            sandbox = Sandbox(require_isolation=o.get("require_isolation", True), slots=o.get("workers"))
            self._verifier = CodeVerifier(sandbox, limits=Limits(**limit_keys),
                                          fraction=self.reward_mode == "fraction",
                                          program_wall_s=o.get("program_wall_s") or 30.0)
        return self._verifier

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_verifier"] = None  # pools and slots stay in their process; rebuilt on first use
        return state

    def extract_answer(self, completion: str) -> str | None:
        """The program of the completion (see :func:`rlvr.sandbox.extract_program`), or None if empty."""
        from rlvr.sandbox import extract_program

        if not isinstance(completion, str):
            return None
        program = extract_program(completion)
        return program if program.strip() else None

    def _item(self, problem: Problem, completion: str) -> dict:
        program = self.extract_answer(completion) if isinstance(completion, str) else None
        if program is not None and len(program) > MAX_ANSWER_CHARS * 8:
            program = program[: MAX_ANSWER_CHARS * 8 + 1]  # still over the verifier's cap: invalid_code
        return {"code": program or "", "tests": problem.meta["tests"],
                "language": problem.meta.get("language", "python"), "limits": problem.meta.get("limits")}

    def _rewards(self, verdict) -> dict[str, float]:
        r = verdict.rewards()
        if self.reward_mode == "binary":
            reward = r["correct"]
        elif self.reward_mode == "fraction":
            reward = r["pass_fraction"]
        else:
            reward = 1.0 if r["correct"] else (0.2 if r["ran"] else 0.0)
        return {"reward": reward, **r}

    def score(self, problem: Problem, completion: str) -> dict[str, float]:
        """Named rewards of one completion (raises SandboxError when the judge itself fails)."""
        return self.score_batch([problem], [completion])[0]

    def score_batch(self, problems: list[Problem], completions: list[str]) -> list[dict[str, float]]:
        """Named rewards of many completions, judged in parallel worker slots, in order."""
        items = [self._item(p, c) for p, c in zip(problems, completions)]
        return [self._rewards(v) for v in self.verifier.verify_batch(items)]

    def verdicts(self, problems: list[Problem], completions: list[str]):
        """The full :class:`~rlvr.sandbox.Verdict` of each completion (for debugging tests)."""
        return self.verifier.verify_batch([self._item(p, c) for p, c in zip(problems, completions)])


# ------------------------------------------------------------------------------------------------ JSONL


@register_task("code")
class CodeTask(_Judged):
    """Programs judged by I/O tests, problems from a JSONL file (see the module doc for the format).

    Args:
        path: the JSONL file of problems (the train split, and the eval split unless ``eval_path``).
        eval_path: a separate JSONL file for the eval split.
        language: the language of problems that do not name one.
        eval_fraction: share of ``path``'s prompts (by prompt hash) that is eval, without ``eval_path``.
        num_train, num_eval: at most this many problems per split (None: all).
        reward_mode: ``binary`` | ``fraction`` | ``binary+partial``.
        sandbox: sandbox settings (see the module doc).
    """

    name = "code"

    def __init__(self, path: str, eval_path: str | None = None, language: str = "python",
                 eval_fraction: float = 0.1, num_train: int | None = None, num_eval: int | None = None,
                 reward_mode: str = "binary", sandbox: Mapping[str, Any] | None = None) -> None:
        from rlvr.sandbox import get_language

        get_language(language)
        if not 0.0 < eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must lie in (0, 1), got {eval_fraction!r}")
        self.path, self.eval_path, self.language = str(path), eval_path, language
        self.eval_fraction = float(eval_fraction)
        rows = _read_jsonl(Path(path), language)
        if eval_path is not None:
            train, evals = rows, _read_jsonl(Path(eval_path), language)
        else:
            train = [p for p in rows if hash_fraction(p.prompt) >= self.eval_fraction]
            evals = [p for p in rows if hash_fraction(p.prompt) < self.eval_fraction]
        self._splits = {"train": train[:num_train] if num_train is not None else train,
                        "eval": evals[:num_eval] if num_eval is not None else evals}
        self._init_judge(sandbox, reward_mode)

    def problems(self, split: str, n: int | None = None) -> list[Problem]:
        check_split(split)
        problems = self._splits[split]
        return list(problems if n is None else problems[: max(0, n)])

    def format_sft_target(self, problem: Problem) -> str:
        """The problem's reference ``solution``; ValueError when the file gives none."""
        if not problem.answer:
            raise ValueError(f"problem {problem.meta.get('id', problem.prompt[:40])!r} has no 'solution'")
        return problem.answer


def _read_jsonl(path: Path, language: str) -> list[Problem]:
    from rlvr.sandbox import get_language

    if not path.is_file():
        raise FileNotFoundError(f"code task: no such file {str(path)!r}")
    problems = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except ValueError as err:
            raise ValueError(f"{where}: not JSON ({err})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise ValueError(f"{where}: expected an object with a string 'prompt'")
        tests = row.get("tests")
        if not isinstance(tests, list) or not tests or not all(
                isinstance(t, dict) and isinstance(t.get("input", ""), str) and isinstance(t.get("output"), str)
                for t in tests):
            raise ValueError(f"{where}: 'tests' must be a non-empty list of {{input, output}} strings")
        lang = row.get("language", language)
        get_language(lang)
        limits = row.get("limits")
        if limits is not None and not isinstance(limits, dict):
            raise ValueError(f"{where}: 'limits' must be an object")
        meta = {"tests": [{"input": t.get("input", ""), "output": t["output"]} for t in tests],
                "language": lang, "id": row.get("id", lineno)}
        if limits:
            meta["limits"] = limits
        problems.append(Problem(prompt=row["prompt"], answer=str(row.get("solution") or ""), meta=meta))
    if not problems:
        raise ValueError(f"code task: {path} holds no problems")
    return problems


# ------------------------------------------------------------------------------------------------ tiny


def _num(op: str, c: int) -> tuple[str, str, Callable[[str], str | None]]:
    def fn(s: str) -> str | None:
        if not s.lstrip("-").isdigit():
            return None
        x = int(s)
        return str(x + c if op == "+" else x - c if op == "-" else x * c)
    return (f"x{op}{c}", f"print(int(input()){op}{c})", fn)


#: The hidden functions of ``code_tiny``: (name, reference program, function on the input text).
TINY_FUNCTIONS: tuple[tuple[str, str, Callable[[str], str | None]], ...] = (
    *(_num(op, c) for op in "+-*" for c in range(2, 10)),
    ("reverse", "print(input()[::-1])", lambda s: s[::-1]),
    ("upper", "print(input().upper())", lambda s: s.upper()),
    ("double", "print(input()*2)", lambda s: s * 2),
    ("length", "print(len(input()))", lambda s: str(len(s))),
    ("first", "print(input()[0])", lambda s: s[:1] or None),
    ("last", "print(input()[-1])", lambda s: s[-1:] or None),
    ("sorted", "print(''.join(sorted(input())))", lambda s: "".join(sorted(s))),
)
_NUMERIC = [f for f in TINY_FUNCTIONS if f[0].startswith("x")]
_WORDS = [f for f in TINY_FUNCTIONS if not f[0].startswith("x")]


@register_task("code_tiny")
class CodeTinyTask(_Judged):
    """Write a Python one-liner for a hidden function shown by two examples (see the module doc).

    Args:
        num_examples: input/output examples in the prompt.
        num_tests: hidden tests a program must pass.
        word_share: share of problems on words (the rest on integers).
        max_example: integer examples are drawn from 1..max_example; hidden integer inputs from 0..99.
        seed, num_train, num_eval, eval_fraction: as in the arithmetic task (prompt-hash split:
            train and eval never share a prompt).
        reward_mode, sandbox: see the module doc.
    """

    name = "code_tiny"

    def __init__(self, num_examples: int = 2, num_tests: int = 3, word_share: float = 0.3, max_example: int = 20,
                 seed: int = 0, num_train: int = 20_000, num_eval: int = 200, eval_fraction: float = 0.1,
                 reward_mode: str = "binary", sandbox: Mapping[str, Any] | None = None) -> None:
        for key, value, low in (("num_examples", num_examples, 1), ("num_tests", num_tests, 1),
                                ("max_example", max_example, 3), ("num_train", num_train, 0),
                                ("num_eval", num_eval, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{key} must be an integer >= {low}, got {value!r}")
        if not 0.0 <= word_share <= 1.0:
            raise ValueError(f"word_share must lie in [0, 1], got {word_share!r}")
        if not 0.0 < eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must lie in (0, 1), got {eval_fraction!r}")
        self.num_examples, self.num_tests, self.word_share = num_examples, num_tests, float(word_share)
        self.max_example, self.seed = max_example, seed
        self.num_train, self.num_eval, self.eval_fraction = num_train, num_eval, float(eval_fraction)
        self._cache: dict[str, list[Problem]] = {}
        self._init_judge(sandbox, reward_mode)

    def is_eval_prompt(self, prompt: str) -> bool:
        return hash_fraction(prompt) < self.eval_fraction

    def problems(self, split: str, n: int | None = None) -> list[Problem]:
        check_split(split)
        if split not in self._cache:
            rng = random.Random(f"rlvr.code_tiny:{self.seed}:{split}")
            want = self.num_train if split == "train" else self.num_eval
            out: list[Problem] = []
            seen: set[str] = set()
            for _ in range(200 * want + 1000):
                if len(out) >= want:
                    break
                p = self._sample(rng)
                if p is None or self.is_eval_prompt(p.prompt) != (split == "eval"):
                    continue
                if split == "eval":
                    if p.prompt in seen:
                        continue
                    seen.add(p.prompt)
                out.append(p)
            self._cache[split] = out
        problems = self._cache[split]
        return list(problems if n is None else problems[: max(0, n)])

    def _sample(self, rng: random.Random) -> Problem | None:
        words = rng.random() < self.word_share
        name, program, fn = rng.choice(_WORDS if words else _NUMERIC)
        if words:
            inputs = [_word(rng, 2, 5) for _ in range(self.num_examples)]
        else:
            inputs = [str(v) for v in rng.sample(range(1, self.max_example + 1), self.num_examples)]
        if len(set(inputs)) < len(inputs):
            return None
        outputs = [fn(x) for x in inputs]
        # the examples must single out this function among all of them (word ones on numbers too)
        matches = [f for f in TINY_FUNCTIONS if [f[2](x) for x in inputs] == outputs]
        if len(matches) != 1:
            return None
        prompt = ";".join(f"{x}>{y}" for x, y in zip(inputs, outputs)) + "\n"
        trng = random.Random(f"rlvr.code_tiny.tests:{prompt}")
        tests: list[dict[str, str]] = []
        while len(tests) < self.num_tests:
            x = _word(trng, 1, 6) if words else str(trng.randint(0, 99))
            if x in inputs or any(t["input"] == x + "\n" for t in tests):
                continue
            tests.append({"input": x + "\n", "output": fn(x) + "\n"})
        return Problem(prompt=prompt, answer=program,
                       meta={"function": name, "tests": tests, "language": "python"})

    def format_sft_target(self, problem: Problem) -> str:
        """The reference program, e.g. ``print(int(input())+3)``."""
        return problem.answer

    def __repr__(self) -> str:
        return (f"CodeTinyTask(num_examples={self.num_examples}, num_tests={self.num_tests}, "
                f"word_share={self.word_share}, seed={self.seed}, reward_mode={self.reward_mode!r})")


def _word(rng: random.Random, low: int, high: int) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(low, high)))

