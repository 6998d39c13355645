"""Judging throughput: programs per second with 1, 2, ... worker slots, and the per-run overhead.

Each program is "read a b, print a+b" (a distinct constant appended, so nothing is de-duplicated)
judged on 3 tests, so one program is 3 sandboxed runs. The overhead is the mean wall time of one
sandboxed ``python3 -I -c pass`` minus that of the same command run bare (``subprocess.run``, no
sandbox), both measured here, one at a time.
"""

from __future__ import annotations

import subprocess
import time

from rlvr.sandbox.core import Sandbox
from rlvr.sandbox.verifier import CodeVerifier

__all__ = ["run_bench"]

_TESTS = [{"input": "1 2\n", "output": "3\n"}, {"input": "10 -4\n", "output": "6\n"},
          {"input": "0 0\n", "output": "0\n"}]


def _mean_ms(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1000


def run_bench(programs: int = 100, slots: list[int] = (1, 2), repeat_overhead: int = 20) -> list[dict]:
    one = Sandbox(require_isolation=False, slots=1, quiet=True)
    bare = _mean_ms(lambda: subprocess.run(["python3", "-I", "-c", "pass"], env={}), repeat_overhead)
    boxed = _mean_ms(lambda: one.run(["python3", "-I", "-c", "pass"]), repeat_overhead)
    rows = []
    for n in slots:
        verifier = CodeVerifier(Sandbox(require_isolation=False, slots=n, quiet=True))
        items = [{"code": f"a, b = map(int, input().split())\nprint(a + b)  # {i}", "tests": _TESTS}
                 for i in range(programs)]
        t0 = time.perf_counter()
        verdicts = verifier.verify_batch(items)
        wall = time.perf_counter() - t0
        verifier.close()
        if not all(v.correct for v in verdicts):
            raise RuntimeError("benchmark programs were judged wrong: " +
                               next(v.detail for v in verdicts if not v.correct))
        runs = sum(v.runs for v in verdicts)
        rows.append({"slots": n, "programs": programs, "runs": runs, "seconds": wall,
                     "programs_per_s": programs / wall, "runs_per_s": runs / wall,
                     "ms_per_run": wall / runs * n * 1000, "bare_ms": bare, "boxed_ms": boxed,
                     "overhead_ms": boxed - bare})
    return rows
