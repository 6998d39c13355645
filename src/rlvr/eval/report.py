"""Markdown tables and PNG plots for ``rlvr eval --k`` and ``rlvr tts``, drawn by the plotting rule of
:mod:`rlvr.records.plots` (whose names are re-exported here)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from rlvr.records.plots import RAW_ALPHA, default_window, is_eval_metric, plot_series, save_figure

__all__ = ["RAW_ALPHA", "default_window", "eval_markdown", "is_eval_metric", "plot_pass_at_k", "plot_series",
           "plot_tts", "save_figure", "tts_markdown"]

def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def eval_markdown(summaries: Mapping[str, dict], ks: Sequence[int]) -> str:
    """Two tables: per-checkpoint summary, then pass@k / CoT-pass@k / maj@k against k (in %)."""
    lines = ["| checkpoint | problems | n | greedy acc % | mean@k % | response length | distinct answers "
             "| distinct completions | distinct-2 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, s in summaries.items():
        lines.append(f"| {label} | {s['num_problems']} | {s['n']} | {_pct(s['greedy_accuracy'])} | "
                     f"{_pct(s['mean_accuracy'])} | {s['response_length']:.2f} | {s['distinct_answers']:.2f} | "
                     f"{s['distinct_completions']:.2f} | {s['distinct_2']:.3f} |")
    lines += ["", "| checkpoint | metric (%) | " + " | ".join(f"k={k}" for k in ks) + " |",
              "|---|---|" + "---|" * len(ks)]
    for label, s in summaries.items():
        for metric in ("pass", "cot_pass", "maj"):
            if f"{metric}@{ks[0]}" in s:
                cells = " | ".join(_pct(s[f"{metric}@{k}"]) for k in ks)
                lines.append(f"| {label} | {metric}@k | {cells} |")
    return "\n".join(lines)


def plot_pass_at_k(summaries: Mapping[str, dict], ks: Sequence[int], path: Path, title: str = "") -> Path | None:
    """pass@k (solid), CoT-pass@k (dashed) and maj@k (dotted) against k, one colour per checkpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, (label, s) in enumerate(summaries.items()):
        color = f"C{i}"
        plot_series(ax, ks, [100 * s[f"pass@{k}"] for k in ks], points=True, marker="o", ls="-", color=color,
                    label=f"{label} pass@k")
        if f"cot_pass@{ks[0]}" in s:
            plot_series(ax, ks, [100 * s[f"cot_pass@{k}"] for k in ks], points=True, marker="s", ls="--",
                        color=color, label=f"{label} CoT-pass@k")
        plot_series(ax, ks, [100 * s[f"maj@{k}"] for k in ks], points=True, marker="^", ls=":", color=color,
                    alpha=0.7, label=f"{label} maj@k")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(ks), [str(k) for k in ks])
    ax.set_xlabel("k (samples)")
    ax.set_ylabel("% of held-out problems")
    ax.set_ylim(0, 100)
    return _finish(fig, ax, path, title or "pass@k against k", legend_size=7)


def tts_markdown(points: Sequence[dict]) -> str:
    """One row per (strategy, budget): generated tokens per problem and accuracy (in %)."""
    lines = ["| strategy | setting | generated tokens / problem | accuracy % | population mean % | pass@N % |",
             "|---|---|---|---|---|---|"]
    for p in points:
        lines.append(f"| {p['strategy']} | {p['setting']} | {p['generated_tokens']:.1f} | {_pct(p['accuracy'])} | "
                     f"{_pct(p.get('mean_accuracy'))} | {_pct(p.get('pass_at_n'))} |")
    return "\n".join(lines)


def plot_tts(points: Sequence[dict], path: Path, title: str = "") -> Path | None:
    """Accuracy against generated tokens per problem, one line per strategy (equal compute = same x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    strategies = list(dict.fromkeys(p["strategy"] for p in points))
    for i, name in enumerate(strategies):
        pts = sorted((p for p in points if p["strategy"] == name), key=lambda p: p["generated_tokens"])
        plot_series(ax, [p["generated_tokens"] for p in pts], [100 * p["accuracy"] for p in pts], points=True,
                    ls="--" if "oracle" in name else "-", color=f"C{i}", label=name)
        for p in pts:  # label each point with its budget: "T=t" for RSA, "N=n" otherwise
            short = p["setting"].rpartition(",")[2]
            ax.annotate(short, (p["generated_tokens"], 100 * p["accuracy"]), fontsize=6, color=f"C{i}",
                        textcoords="offset points", xytext=(3, -9 if name == "rsa" else 4))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("generated tokens per problem")
    ax.set_ylabel("accuracy % (held-out)")
    low = min(100 * p["accuracy"] for p in points) if points else 0.0
    ax.set_ylim(max(0.0, low - 10), 101)
    return _finish(fig, ax, path, title or "test-time scaling at equal compute", legend_size=8)


def _finish(fig, ax, path: Path, title: str, legend_size: int) -> Path | None:
    """Grid, title, legend; save the figure to ``path`` (folders made) and close it. Returns
    ``path``, or None if it could not be written (a warning was printed)."""
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    return save_figure(fig, Path(path), dpi=120)
