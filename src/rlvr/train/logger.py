"""The run folder: resolved config, metrics.jsonl, samples.jsonl and learning-curve plots."""

from __future__ import annotations

import math
from pathlib import Path

from rlvr.utils import append_jsonl, atomic_write_text, read_jsonl

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

    def log(self, record: dict) -> None:
        append_jsonl(self.metrics_path, record)

    def log_samples(self, step: int, rows: list[dict]) -> None:
        for row in rows:
            append_jsonl(self.samples_path, {"step": step, **row})

    def truncate_after(self, step: int) -> None:
        """On resume, drop records of steps after the checkpoint (they will be redone)."""
        import json

        for path in (self.metrics_path, self.samples_path):
            if path.exists():
                keep = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
                atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))

    def records(self) -> list[dict]:
        return read_jsonl(self.metrics_path)

    def plot(self) -> list[Path]:
        """Write ``plots/<group>.png`` for every group that has data; returns the paths."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        records = self.records()
        out_dir = self.run_dir / "plots"
        out_dir.mkdir(exist_ok=True)
        written = []
        for group, keys in PLOTS.items():
            series = {k: [(r["step"], r[k]) for r in records
                          if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])] for k in keys}
            series = {k: v for k, v in series.items() if v}
            if not series:
                continue
            fig, ax = plt.subplots(figsize=(6, 3.6))
            for k, pts in series.items():
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o" if len(xs) < 20 else None, label=k)
            ax.set_xlabel("step")
            ax.set_title(group)
            ax.grid(alpha=0.3)
            ax.legend()
            fig.tight_layout()
            path = out_dir / f"{group.replace('/', '_')}.png"
            tmp = path.with_suffix(".tmp.png")
            fig.savefig(tmp, dpi=100)
            plt.close(fig)
            tmp.replace(path)
            written.append(path)
        return written
