"""Progress of the RL loop: a live bar on a terminal, short status lines in a log file.

    progress = StepProgress(total=config.trainer.steps, initial=start, enabled=config.logging.progress)
    for step in range(start, total):
        ...
        progress.update(step + 1, record)      # record: reward_mean, accuracy, ... (any may be missing)
    progress.close()

On a terminal (and not under ``CI``) it drives a tqdm bar with the live reward and accuracy.
Otherwise (``make run > log``, CI logs) it writes one line every ``every`` steps, and always
for the last step, e.g.::

    [RL] step 50/250 | reward 0.412 | acc 0.391 | 0.52 s/step | eta 1m44s

Everything goes to ``stream`` (stderr by default): stdout stays for results.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Callable, TextIO

__all__ = ["StepProgress", "default_every", "format_duration", "use_bar"]

#: (record key, shown name) of the numbers a status line and the bar show, by default (RL)
RL_FIELDS = (("reward_mean", "reward"), ("accuracy", "acc"))
#: About this many status lines per run when the output is not a terminal.
LINES_PER_RUN = 20


def default_every(total: int, lines: int = LINES_PER_RUN) -> int:
    """A round step interval giving about ``lines`` status lines over ``total`` steps (1, 2, 5,
    10, 20, 25, 50, 100, ...; 1 for runs of up to ``lines`` steps)."""
    target = total / lines
    if target <= 1:
        return 1
    candidates = [m * 10 ** e for e in range(int(math.log10(target)) + 2) for m in (1, 2, 2.5, 5)]
    candidates = [int(c) for c in candidates if c == int(c) and c >= 1]
    return min(candidates, key=lambda c: (abs(math.log(c / target)), c))


def format_duration(seconds: float) -> str:
    """``45s``, ``1m44s``, ``2h03m``."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def use_bar(stream: TextIO) -> bool:
    """A live bar only on a terminal, and not under CI (``CI`` set, as CI services do)."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        tty = False
    return bool(tty) and not os.environ.get("CI")


class StepProgress:
    """Progress of ``total`` steps starting after step ``initial`` (a resumed run).

    ``enabled=False`` (``logging.progress: false``) prints nothing at all. ``every`` (lines mode
    only) defaults to :func:`default_every` of ``total``, so a resumed run prints at the same
    steps as a straight one. ``clock`` is for tests.
    """

    def __init__(self, total: int, initial: int = 0, desc: str = "RL", enabled: bool = True,
                 every: int | None = None, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic, fields: tuple = RL_FIELDS):
        self.total, self.initial, self.desc = int(total), int(initial), desc
        self.fields = tuple(fields)  # (record key, shown name) pairs
        self.stream = sys.stderr if stream is None else stream
        self.every = max(1, int(every)) if every else default_every(self.total)
        self._clock = clock
        self._t0 = clock()
        self._last: tuple[int, dict] | None = None
        self._printed = -1
        self._closed = False
        self.mode = "off" if not enabled else ("bar" if use_bar(self.stream) else "lines")
        self._bar = None
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, initial=self.initial, desc=desc, file=self.stream,
                             dynamic_ncols=True)

    def update(self, step: int, record: dict | None = None) -> None:
        """Step ``step`` (1-based: steps done so far, i.e. the metrics record's ``step``) is done."""
        record = record or {}
        self._last = (step, record)
        if self.mode == "bar":
            self._bar.update(max(0, step - self._bar.n))
            postfix = {}
            for key, name in self.fields:
                if _is_number(record.get(key)):
                    postfix[name] = f"{record[key]:.3f}"
            if _is_number(record.get("dist/ranks")):  # a learner group: its ranks, seconds in collectives
                postfix["ranks"] = int(record["dist/ranks"])
                postfix["coll"] = f"{record.get('time_collectives', 0.0):.2f}s"
            if postfix:
                self._bar.set_postfix(postfix)
        elif self.mode == "lines" and (step % self.every == 0 or step >= self.total):
            self._line(step, record)

    def line(self, step: int, record: dict) -> str:
        """The status line for ``step`` (no newline)."""
        parts = [f"[{self.desc}] step {step}/{self.total}"]
        for key, name in self.fields:
            if _is_number(record.get(key)):
                parts.append(f"{name} {record[key]:.3f}")
        if _is_number(record.get("dist/ranks")):  # a learner group: its ranks and rank 0's seconds in collectives
            parts.append(f"{int(record['dist/ranks'])} ranks, {record.get('time_collectives', 0.0):.2f} s collectives")
        done = step - self.initial
        if done > 0:
            per_step = (self._clock() - self._t0) / done
            parts.append(f"{per_step:.2f} s/step" if per_step < 10 else f"{per_step:.0f} s/step")
            if step < self.total:
                parts.append(f"eta {format_duration(per_step * (self.total - step))}")
            else:
                parts.append(f"took {format_duration(self._clock() - self._t0)}")
        return " | ".join(parts)

    def _line(self, step: int, record: dict) -> None:
        print(self.line(step, record), file=self.stream, flush=True)
        self._printed = step

    def close(self) -> None:
        """End the bar; in lines mode, print the last step if its line is not out yet (a run
        stopped early, e.g. ``stop_after``)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "lines" and self._last is not None and self._last[0] != self._printed:
            self._line(*self._last)

    def __enter__(self) -> StepProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
