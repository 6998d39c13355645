"""The run folder: resolved config, metrics.jsonl, samples.jsonl and learning-curve plots.

Writes are whole lines, flushed to disk; a failed write (disk full, read-only folder) raises
:class:`~rlvr.utils.StorageError` and leaves no partial line behind, and a torn last line left
by a crash is skipped on read and repaired by the next append. A plot that cannot be written
only warns: plots are not needed to resume.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from rlvr.utils import append_jsonl, append_jsonl_records, atomic_write_text, read_jsonl

#: Metrics plotted as learning curves, grouped one figure per group.
PLOTS = {
    "reward": ["reward_mean", "accuracy"],
    "eval": ["eval/greedy_accuracy", "eval/sampled_reward"],
    "entropy": ["entropy"],
    "kl": ["kl_loss", "kl_in_reward", "approx_kl", "mismatch_k3"],
    "clip": ["clip_frac"],
    "response_length": ["response_length"],
    "grad_norm": ["grad_norm"],
    "throughput": ["tokens_per_second"],
}


class RunLogger:
    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.samples_path = self.run_dir / "samples.jsonl"
        self.trackers = None  # rlvr.records.trackers.Trackers (logging.report_to): fed the same records

    def log(self, record: dict) -> None:
        append_jsonl(self.metrics_path, record)
        if self.trackers is not None:
            self.trackers.log(record)

    def log_samples(self, step: int, rows: list[dict]) -> None:
        append_jsonl_records(self.samples_path, [{"step": step, **row} for row in rows])
        if self.trackers is not None:
            self.trackers.log_samples(step, rows)

    def close(self) -> None:
        """Finish the trackers' runs (the files need no closing)."""
        if self.trackers is not None:
            self.trackers.close()
            self.trackers = None

    def truncate_after(self, step: int) -> None:
        """On resume, drop records of steps after the checkpoint (they will be redone), and any
        torn line."""
        for path in (self.metrics_path, self.samples_path):
            if path.exists():
                keep = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
                atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))

    def records(self) -> list[dict]:
        return read_jsonl(self.metrics_path)

    def figure(self, group: str, records: list[dict] | None = None):
        """The matplotlib figure of one group of :data:`PLOTS` (not saved), or None without data.

        Per-step metrics are smoothed (:func:`~rlvr.eval.report.default_window`) with their raw
        values drawn faintly beside them; ``eval/*`` points are drawn raw with markers."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from rlvr.records.plots import default_window, is_eval_metric, plot_series

        records = self.records() if records is None else records
        series = {k: [(r["step"], r[k]) for r in records
                      if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])] for k in PLOTS[group]}
        series = {k: v for k, v in series.items() if v}
        if not series:
            return None
        fig, ax = plt.subplots(figsize=(6, 3.6))
        smoothed = False
        for i, (k, pts) in enumerate(series.items()):
            xs, ys = zip(*pts)
            if is_eval_metric(k):
                plot_series(ax, xs, ys, points=True, color=f"C{i}", label=k)
            else:
                w = default_window(len(ys))
                smoothed |= w > 1
                label = f"{k} (moving average of {w})" if w > 1 else k
                plot_series(ax, xs, ys, smooth=w, color=f"C{i}", label=label,
                            marker="o" if len(xs) < 20 else None)
        ax.set_xlabel("step")
        ax.set_title(group + (" (faint: per-step values)" if smoothed else ""))
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        return fig

    def plot(self) -> list[Path]:
        """Write ``plots/<group>.png`` for every group that has data; returns the paths written.

        A plot that cannot be written (disk full...) is skipped with a warning on stderr."""
        from rlvr.records.plots import save_figure

        records = self.records()
        written = []
        for group in PLOTS:
            fig = self.figure(group, records)
            if fig is None:
                continue
            path = save_figure(fig, self.run_dir / "plots" / f"{group.replace('/', '_')}.png")
            if path is not None:
                written.append(path)
        return written
