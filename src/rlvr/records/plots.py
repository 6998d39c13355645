"""The plotting rule every plot of rlvr follows (matplotlib, Agg backend), so that plots and tables tell
the same truth:

- a dense per-step curve (training reward, entropy, ... one value per RL step) may be smoothed
  (trailing moving average); the raw values are then drawn beside it, faint;
- evaluation points (held-out accuracy every ``eval.every`` steps, pass@k against k, accuracy
  against a budget) are never smoothed: raw values with markers, so the last point of the
  held-out curve is the number in the results table.

Used by the run folder's plots (:mod:`rlvr.records.logger`), ``rlvr eval``/``tts`` (:mod:`rlvr.eval.report`)
and ``rlvr compare`` (:mod:`rlvr.compare.report`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence


#: Opacity of the raw values drawn beside a smoothed curve.
RAW_ALPHA = 0.3


def is_eval_metric(name: str) -> bool:
    """Metrics logged at evaluation points (``eval/*``), not once per step: never smoothed."""
    return name.startswith("eval/")


def default_window(num_points: int) -> int:
    """Moving-average window for a dense per-step curve of ``num_points`` points: 5% of them
    (1, i.e. no smoothing, below 40 points)."""
    return max(1, num_points // 20)


def plot_series(ax, xs: Sequence[float], ys: Sequence[float], *, points: bool = False, smooth: int = 1,
                label: str | None = None, color=None, marker: str | None = None, **style) -> list:
    """Draw one curve by the plotting rule; returns its ``Line2D`` objects.

    ``points=True``: evaluation points -- the raw values with markers (``marker``, default
    ``"o"``), never smoothed (``smooth`` is ignored). Otherwise a dense per-step curve: with
    ``smooth > 1`` and more points than that, the trailing moving average of ``smooth`` points
    (labelled, gid ``"smoothed"``) and the raw values beside it (alpha :data:`RAW_ALPHA`, thin,
    no legend entry, gid ``"raw"``); else the raw values as one line (gid ``"line"``).
    ``style`` goes to every line (e.g. ``ls``, ``lw``).
    """
    xs, ys = list(xs), [float(y) for y in ys]
    if points:
        (line,) = ax.plot(xs, ys, marker=marker or "o", color=color, label=label, **style)
        line.set_gid("points")
        return [line]
    if smooth > 1 and len(ys) > smooth:
        lw = style.pop("lw", style.pop("linewidth", 1.5))
        alpha = style.pop("alpha", 1.0)
        (raw,) = ax.plot(xs, ys, color=color, alpha=RAW_ALPHA * alpha, lw=max(0.6, 0.6 * lw),
                         label=f"_raw {label or ''}".rstrip(), **style)
        raw.set_gid("raw")
        (smoothed,) = ax.plot(xs, moving_average(ys, smooth), color=raw.get_color(), lw=lw, alpha=alpha,
                              label=label, **style)
        smoothed.set_gid("smoothed")
        return [raw, smoothed]
    (line,) = ax.plot(xs, ys, marker=marker, color=color, label=label, **style)
    line.set_gid("line")
    return [line]


def save_figure(fig, path: Path, dpi: int = 100) -> Path | None:
    """Save ``fig`` to ``path`` atomically (a temporary file, then a rename) and close it.

    Plots are not needed to resume or to read results, so a failed write (disk full, unwritable
    folder) only warns on stderr and returns None instead of stopping the run.
    """
    import matplotlib.pyplot as plt

    from rlvr.utils import describe_os_error

    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(tmp, dpi=dpi)
        tmp.replace(path)
        return path
    except OSError as err:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        print(f"warning: could not write plot {path}: {describe_os_error(err)}; continuing without it",
              file=sys.stderr, flush=True)
        return None
    finally:
        plt.close(fig)


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average: point i is the mean of values[max(0, i - window + 1) .. i]."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out
