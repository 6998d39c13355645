"""Gold and proxy reward over steps for studies/overoptimization.yaml: a table and a plot.

    python studies/overoptimization_report.py runs/studies/overoptimization [--window 9]

Per arm and seed, from metrics.jsonl: gold = the verifier's components on the training batches (``accuracy``,
the share correct, plus ``reward/short``), proxy = the calibrated reward models' batch means (``reward/rm_correct``
+ ``reward/rm_short``), each a moving mean over ``--window`` steps. The gold peak is the step where the
seed-mean of smoothed gold is highest. The table has, per arm, the mean and 95% t-interval over seeds at the
start, at the gold peak and at the end (mean of the last 10% of steps), and the held-out greedy accuracy at
the end (``eval/greedy_accuracy``). The plot (``overoptimization.png`` in the study folder) shows both curves.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rlvr.compare.stats import t_interval


def _series(run: Path) -> dict[str, list[float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "accuracy" in r and "reward/rm_correct" in r]
    evals = [r for r in (json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip())
             if "eval/greedy_accuracy" in r]
    return {"gold": [r["accuracy"] + r["reward/short"] for r in rows],
            "correct": [r["accuracy"] for r in rows], "short": [r["reward/short"] for r in rows],
            "proxy": [r["reward/rm_correct"] + r["reward/rm_short"] for r in rows],
            "held_out": [evals[-1]["eval/greedy_accuracy"]] if evals else [float("nan")]}


def _smooth(xs: list[float], w: int) -> list[float]:
    return [sum(xs[max(0, i - w // 2):i + w // 2 + 1]) / len(xs[max(0, i - w // 2):i + w // 2 + 1])
            for i in range(len(xs))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("study_dir")
    p.add_argument("--window", type=int, default=9)
    args = p.parse_args()
    root = Path(args.study_dir)
    arms = {arm.name: {run.name: _series(run) for run in sorted(arm.iterdir()) if (run / "metrics.jsonl").is_file()}
            for arm in sorted(root.iterdir()) if arm.is_dir() and any(arm.glob("seed*/metrics.jsonl"))}
    fmt = lambda iv: f"{iv.estimate:.3f} [{iv.low:.3f}, {iv.high:.3f}]"  # noqa: E731
    print("| arm | quantity | start | at the gold peak (step) | end (last 10%) |")
    print("|---|---|---|---|---|")
    curves = {}
    for arm, runs in arms.items():
        sm = {seed: {k: _smooth(v, args.window) for k, v in s.items() if k != "held_out"} for seed, s in runs.items()}
        n = min(len(s["gold"]) for s in sm.values())
        mean_gold = [sum(s["gold"][i] for s in sm.values()) / len(sm) for i in range(n)]
        peak = max(range(n), key=mean_gold.__getitem__)
        tail = max(1, n // 10)
        for q in ("gold", "correct", "short", "proxy"):
            start = t_interval([s[q][0] for s in sm.values()])
            at_peak = t_interval([s[q][peak] for s in sm.values()])
            end = t_interval([sum(r[q][n - tail:n]) / tail for r in runs.values()])
            print(f"| {arm} | {q} | {fmt(start)} | {fmt(at_peak)} ({peak + 1}) | {fmt(end)} |")
        held = t_interval([r["held_out"][0] for r in runs.values()])
        print(f"| {arm} | held-out greedy accuracy (end) | | | {fmt(held)} |")
        curves[arm] = {q: [[s[q][i] for s in sm.values()] for i in range(n)] for q in ("gold", "proxy")}
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, q in zip(axes, ("gold", "proxy")):
        for arm, c in curves.items():
            m = [sum(v) / len(v) for v in c[q]]
            lo, hi = [min(v) for v in c[q]], [max(v) for v in c[q]]
            steps = range(1, len(m) + 1)
            ax.plot(steps, m, label=arm)
            ax.fill_between(steps, lo, hi, alpha=0.2)
        ax.set_title(f"{q}: " + ("correct + short (verifier)" if q == "gold" else "rm_correct + rm_short (calibrated)"))
        ax.set_xlabel("RL step")
        ax.legend()
    fig.tight_layout()
    fig.savefig(root / "overoptimization.png", dpi=120)
    print(f"\nplot: {root / 'overoptimization.png'} (lines: seed mean; bands: min-max over seeds)")


if __name__ == "__main__":
    main()
