"""Judge programs by I/O tests in the sandbox (Agnostics' universal verifier, arXiv 2508.04865).

Rules, one place for all of them:

* **Extraction** (:func:`extract_program`): the content of the *last closed* fenced block
  (```` ```lang ... ``` ````); a completion with no closed fence is taken whole. Empty programs and
  programs over :data:`MAX_CODE_BYTES` are ``invalid_code`` and nothing runs.
* **Build**: a compiled language compiles once per program, in its own sandbox run; a failure is
  ``compile_error``. The artifact is carried as bytes into each test run.
* **Tests**: each test is a fresh sandbox run (stdin = ``input``; nothing carries over between
  tests or programs). Expected outputs never enter the sandbox: the comparison is done here.
* **Compare** (:func:`outputs_match`): exact, after stripping trailing whitespace from every line and
  dropping trailing empty lines. Leading whitespace and inner blank lines count.
* **Early stop**: tests run in order and stop at the first failure (wrong output, non-zero exit,
  timeout, ...), unless the fraction is asked for (``fraction=True``), which runs every test.
  Non-zero exit fails a test even when its output is right (as in Agnostics).
* **Budget**: a program's test runs together may take at most ``program_wall_s`` (30 s, the
  Agnostics value) of wall time; the rest is ``timeout``.
* **Rewards** (:meth:`Verdict.rewards`): ``correct`` 1.0 iff every test passed; ``pass_fraction``
  = passed / total (with early stop: the tests passed before the first failure); ``ran`` 1.0 iff it
  compiled and every test that ran exited 0 within the limits (right output or not).
* **Judge failures** raise: a ``sandbox_error`` run is retried once, then :class:`SandboxError` is
  raised. It is never a silent 0 reward. A run that exited 1 with nothing but a ``bwrap:`` line on
  stderr (bubblewrap's pid 1 failing to fork, :attr:`Result.launcher_failed`) is run again, up to
  :data:`LAUNCH_ATTEMPTS` times in all (counted in ``launch_retries``); a program that prints that
  line itself gains nothing but the repeats, and its verdict stands.

Batches (:meth:`CodeVerifier.verify_batch`) are judged in parallel, one program per worker slot,
results in input order. Identical ``(language, program, tests)`` items of one batch are judged once
(GRPO groups repeat programs often); a program that is not deterministic gets the verdict of its
first run for every copy.
"""

from __future__ import annotations

import base64
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from rlvr.sandbox.core import Limits, Result, Sandbox, SandboxError
from rlvr.sandbox.languages import Language, get_language

__all__ = ["MAX_CODE_BYTES", "VERDICTS", "LAUNCH_ATTEMPTS", "CodeVerifier", "Verdict", "extract_program", "normalise_output",
           "outputs_match"]

#: Largest program judged (bytes of UTF-8); larger ones are ``invalid_code``.
MAX_CODE_BYTES = 64 * 1024

#: Runs of one test at most while bubblewrap reports its own launch failure (:attr:`Result.launcher_failed`).
LAUNCH_ATTEMPTS = 3

#: Program verdicts (``sandbox_error`` is not one: it raises).
VERDICTS = ("ok", "wrong_answer", "runtime_error", "timeout", "memory", "output_limit", "killed",
            "compile_error", "invalid_code")

_FENCE = re.compile(r"```[^\n`]*\n(.*?)```", re.DOTALL)


def extract_program(completion: str) -> str:
    """The last closed fenced code block of ``completion``, else the whole completion."""
    if not isinstance(completion, str):
        return ""
    blocks = _FENCE.findall(completion)
    return blocks[-1] if blocks else completion


def normalise_output(text: str) -> str:
    """``text`` with trailing whitespace stripped from each line and trailing empty lines dropped."""
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def outputs_match(got: str, expected: str) -> bool:
    return normalise_output(got) == normalise_output(expected)


@dataclass
class TestOutcome:
    passed: bool
    status: str  # a run status, or wrong_answer
    detail: str = ""
    cpu_s: float = 0.0
    wall_s: float = 0.0


@dataclass
class Verdict:
    """The judgement of one program: ``status`` is ``ok`` iff every test passed."""

    status: str
    passed: int
    total: int
    ran: bool
    detail: str = ""
    per_test: list[TestOutcome] = field(default_factory=list)
    runs: int = 0  # sandbox runs it took (compile included)
    judge_s: float = 0.0

    @property
    def correct(self) -> bool:
        return self.status == "ok"

    def rewards(self) -> dict[str, float]:
        return {"correct": float(self.correct),
                "pass_fraction": self.passed / self.total if self.total else 0.0,
                "ran": float(self.ran)}


class CodeVerifier:
    """Judges programs against ``[{input, output}]`` tests in a :class:`~rlvr.sandbox.Sandbox`.

    Args:
        sandbox: the sandbox (default: a new one with ``require_isolation`` and ``workers`` slots).
        limits: base per-test limits; a language's and a problem's own limits override them.
        fraction: run every test (for ``pass_fraction``) instead of stopping at the first failure.
        program_wall_s: wall-time budget of all of one program's runs.
    """

    def __init__(self, sandbox: Sandbox | None = None, limits: Limits | None = None, fraction: bool = False,
                 program_wall_s: float = 30.0, require_isolation: bool = True, workers: int | None = None):
        self.sandbox = sandbox if sandbox is not None else Sandbox(require_isolation=require_isolation,
                                                                   slots=workers)
        self.limits = limits or Limits()
        self.fraction = bool(fraction)
        self.program_wall_s = float(program_wall_s)
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        #: test runs repeated because bubblewrap reported its own launch failure (see ``_run``)
        self.launch_retries = 0

    # ------------------------------------------------------------------ one program

    def verify(self, code: str, tests: Sequence[Mapping[str, Any]], language: str | Language = "python",
               limits: Mapping[str, Any] | None = None, fraction: bool | None = None) -> Verdict:
        """Judge ``code`` (already extracted) on ``tests``. Raises SandboxError on a judge failure."""
        t0 = time.monotonic()
        lang = language if isinstance(language, Language) else get_language(language)
        fraction = self.fraction if fraction is None else fraction
        total = len(tests)
        if not total:
            raise ValueError("a problem needs at least one test")
        if not isinstance(code, str) or not code.strip():
            return Verdict("invalid_code", 0, total, False, "empty program")
        if len(code.encode("utf-8", "replace")) > MAX_CODE_BYTES:
            return Verdict("invalid_code", 0, total, False, f"program over {MAX_CODE_BYTES} bytes")
        ok, why = lang.available()
        if not ok:
            raise SandboxError(f"cannot judge: {why}")
        base = self.limits.replace(**dict(limits)) if limits else self.limits
        run_limits = lang.run_limits(base)
        files: dict[str, bytes | str] = {lang.filename: code}
        executable: tuple[str, ...] = ()
        runs = 0
        if lang.compile:
            build = self._run(["/bin/sh", "-c", f"{lang.compile} >&2 && base64 -w0 {lang.artifact}"], b"",
                              lang.build_limits(base).replace(stdout_bytes=48 << 20), files)
            runs += 1
            if build.status != "ok":
                return Verdict("compile_error", 0, total, False, f"{build.status} {build.detail}: "
                               f"{build.stderr[-2000:]}", runs=runs, judge_s=time.monotonic() - t0)
            files = {lang.artifact: base64.b64decode(build.stdout)}
            executable = (lang.artifact,)
        outcomes: list[TestOutcome] = []
        first_failure: TestOutcome | None = None
        all_ran = True
        for i, test in enumerate(tests):
            if time.monotonic() - t0 > self.program_wall_s:
                outcome = TestOutcome(False, "timeout", f"program budget {self.program_wall_s:.0f}s spent")
            else:
                result = self._run(list(lang.run), _text(test.get("input", "")), run_limits, files, executable)
                runs += 1
                outcome = _outcome(result, _text(test.get("output", "")))
            outcome.detail = f"test {i + 1}/{total}: {outcome.detail}" if outcome.detail else f"test {i + 1}/{total}"
            outcomes.append(outcome)
            if outcome.status not in ("ok", "wrong_answer"):
                all_ran = False
            if not outcome.passed:
                first_failure = first_failure or outcome
                if not fraction:
                    break
        passed = sum(o.passed for o in outcomes)
        status = "ok" if first_failure is None else first_failure.status
        return Verdict(status=status, passed=passed, total=total, ran=all_ran and bool(outcomes),
                       detail=first_failure.detail if first_failure else "", per_test=outcomes, runs=runs,
                       judge_s=time.monotonic() - t0)

    def _run(self, argv, stdin, limits, files, executable=()) -> Result:
        failures = 0
        for attempt in range(LAUNCH_ATTEMPTS):
            result = self.sandbox.run(argv, stdin=stdin, limits=limits, files=files, executable=executable)
            if result.status == "sandbox_error":
                failures += 1
                if failures == 2:
                    raise SandboxError(f"sandbox failed twice, refusing to score: {result.detail}")
                continue
            if not result.launcher_failed or attempt == LAUNCH_ATTEMPTS - 1:
                return result  # a launch failure to the last: the verdict stands (it may be the program's)
            with self._lock:
                self.launch_retries += 1
            time.sleep(0.01 * (attempt + 1))
        raise SandboxError(f"sandbox could not run the program, refusing to score: {result.detail}")

    # ------------------------------------------------------------------ batches

    def verify_batch(self, items: Sequence[Mapping[str, Any]], fraction: bool | None = None) -> list[Verdict]:
        """Judge many programs in parallel (one per worker slot); verdicts in the order of ``items``.

        Each item: ``{"code", "tests", "language"?, "limits"?}``. Identical items are judged once.
        """
        keys, unique = [], {}
        for item in items:
            key = _item_key(item)
            keys.append(key)
            unique.setdefault(key, item)
        if not unique:
            return []

        def judge(item):
            return self.verify(item["code"], item["tests"], item.get("language", "python"),
                               item.get("limits"), fraction)

        if self.sandbox.slots == 1 or len(unique) == 1:
            verdicts = {k: judge(v) for k, v in unique.items()}
        else:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.sandbox.slots, thread_name_prefix="rlvr-judge")
            futures = {k: self._pool.submit(judge, v) for k, v in unique.items()}
            verdicts = {k: f.result() for k, f in futures.items()}  # re-raises SandboxError
        return [verdicts[k] for k in keys]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def _item_key(item: Mapping[str, Any]) -> tuple:
    tests = tuple((_text(t.get("input", "")), _text(t.get("output", ""))) for t in item["tests"])
    limits = tuple(sorted((item.get("limits") or {}).items()))
    lang = item.get("language", "python")
    return (lang if isinstance(lang, str) else lang.name, item["code"], tests, limits)


def _outcome(result: Result, expected: str) -> TestOutcome:
    if result.status == "ok":
        if outputs_match(result.stdout, expected):
            return TestOutcome(True, "ok", "", result.cpu_s, result.wall_s)
        got = normalise_output(result.stdout)
        return TestOutcome(False, "wrong_answer", f"expected {expected[:80]!r}, got {got[:80]!r}",
                           result.cpu_s, result.wall_s)
    tail = result.stderr.strip().splitlines()[-1][:200] if result.stderr.strip() else ""
    return TestOutcome(False, result.status, f"{result.detail} {tail}".strip(), result.cpu_s, result.wall_s)
