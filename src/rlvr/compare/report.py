"""A study's results from its run folders: results.md, results.csv, runs.csv and plots/.

Reads only what every run writes anyway (metrics.jsonl, summary.md, meta.json) plus the
runner's wall_time.json, so the report can be rebuilt at any time (``rlvr compare --report-only``).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from rlvr.compare import stats
from rlvr.compare.study import Study, metric_info
from rlvr.utils import atomic_write_text, read_jsonl

#: Metrics shown as percentages in results.md.
_PERCENT = {"greedy_accuracy", "sampled_reward", "reward_auc", "final_reward"}


def _is_percent(metric: str) -> bool:
    """Shown in %: the fixed rates above, held-out greedy/sampled means of reward components, and the
    training accuracy / reward components (not their effective weights)."""
    return (metric in _PERCENT or metric.startswith(("eval/greedy_", "eval/sampled_")) or metric == "final/accuracy"
            or (metric.startswith("final/reward/") and not metric.startswith("final/reward/weight/")))


@dataclass
class RunSummary:
    arm: str
    seed: int
    run_dir: Path
    finished: bool
    steps: int = 0
    values: dict[str, float] = field(default_factory=dict)
    before: dict[str, float] = field(default_factory=dict)
    curves: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


def summarize_records(records: list[dict], wall_s: float | None = None,
                      cpu_s: float | None = None) -> tuple[dict, dict, dict]:
    """(summary values, before-RL eval, curves) from one run's metrics.jsonl records."""
    steps = [r for r in records if "reward_mean" in r]
    evals = [r for r in records if "eval/greedy_accuracy" in r]

    def series(key):
        return [(r["step"], r[key]) for r in steps if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]

    values: dict[str, float] = {}
    if evals:
        values["greedy_accuracy"] = evals[-1]["eval/greedy_accuracy"]
        values["sampled_reward"] = evals[-1].get("eval/sampled_reward", math.nan)
    reward = series("reward_mean")
    if reward:
        values["reward_auc"] = stats.auc(*zip(*reward))
        values["final_reward"] = stats.final_mean([v for _, v in reward])
    entropy = series("entropy")
    if entropy:
        values["final_entropy"] = stats.final_mean([v for _, v in entropy])
    length = series("response_length")
    if length:
        values["response_length"] = stats.mean([v for _, v in length])
    gen_t = sum(r.get("time_generate", 0.0) for r in steps)
    if gen_t > 0:
        values["tokens_per_second"] = sum(r.get("generated_tokens", 0) for r in steps) / gen_t
    if wall_s is not None:
        values["wall_time"] = wall_s
    if cpu_s is not None:
        values["cpu_time"] = cpu_s
    if evals:  # eval/<key>: any key of the final evaluation (e.g. a reward component's greedy mean)
        values.update({k: v for k, v in evals[-1].items() if k.startswith("eval/") and isinstance(v, (int, float))})
    for key in {k for r in steps for k in r if k != "step"}:  # final/<key>: the last 10% of any training key
        vals = [v for _, v in series(key)]
        if vals:
            values[f"final/{key}"] = stats.final_mean(vals)
    before = {k.removeprefix("eval/"): v for k, v in evals[0].items() if k.startswith("eval/")} if evals else {}
    curve_keys = {k for r in records for k in r if isinstance(r[k], (int, float)) and k != "step"}
    curves = {k: [(r["step"], r[k]) for r in records if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]
              for k in curve_keys}
    return values, before, curves


def collect(study: Study) -> list[RunSummary]:
    out = []
    for run in study.runs:
        d = run.run_dir
        s = RunSummary(run.arm, run.seed, d, finished=(d / "summary.md").exists())
        if s.finished:
            timing = json.loads((d / "wall_time.json").read_text()) if (d / "wall_time.json").exists() else {}
            s.values, s.before, s.curves = summarize_records(read_jsonl(d / "metrics.jsonl"),
                                                             timing.get("wall_s"), timing.get("cpu_s"))
            s.steps = run.config.trainer.steps
            if (d / "meta.json").exists():
                s.meta = json.loads((d / "meta.json").read_text())
        out.append(s)
    return out


@dataclass
class ArmResult:
    arm: str
    n: int
    intervals: dict[str, stats.Interval]
    diffs: dict[str, stats.Interval]
    verdicts: dict[str, str]


def aggregate(study: Study, runs: list[RunSummary]) -> list[ArmResult]:
    """Per arm: the t interval of each metric over seeds and, against the baseline, Welch's
    interval of the difference with its verdict."""
    level = study.spec.level
    by_arm = {arm: [r for r in runs if r.arm == arm and r.finished] for arm in study.arms}

    def by_seed(arm, metric):
        return {r.seed: r.values[metric] for r in by_arm.get(arm, [])  # baseline may be left out (--arms)
                if math.isfinite(r.values.get(metric, math.nan))}

    def vals(arm, metric):
        return list(by_seed(arm, metric).values())

    results = []
    for arm in study.arms:
        intervals = {m: stats.t_interval(vals(arm, m), level) for m in study.spec.metrics}
        diffs, verdicts = {}, {}
        if arm != study.baseline:
            for m in study.spec.verdict_on:
                a, b = vals(arm, m), vals(study.baseline, m)
                if not a or not b:
                    verdicts[m] = "no finished runs to compare"
                    continue
                if study.spec.comparison == "paired":
                    diffs[m] = stats.paired_interval(by_seed(arm, m), by_seed(study.baseline, m), level)
                else:
                    diffs[m] = stats.welch_interval(a, b, level)
                pct = _is_percent(m)
                verdicts[m] = stats.verdict(diffs[m], metric_info(m)[1], scale=100 if pct else 1,
                                            unit=" pts" if pct else "")
        results.append(ArmResult(arm, len(by_arm[arm]), intervals, diffs, verdicts))
    return results


# --------------------------------------------------------------------------- writing

def _fmt(metric: str, x: float) -> str:
    if not math.isfinite(x):
        return "-"
    if _is_percent(metric):
        return f"{100 * x:.1f}"
    if metric in ("wall_time", "cpu_time") or abs(x) >= 1000:
        return f"{x:.0f}"
    return f"{x:.3g}"


def _cell(metric: str, iv: stats.Interval) -> str:
    if iv.n == 0:
        return "-"
    if not iv.defined:
        return _fmt(metric, iv.estimate)
    return f"{_fmt(metric, iv.estimate)} [{_fmt(metric, iv.low)}, {_fmt(metric, iv.high)}]"


def results_csv(results: list[ArmResult], metrics: list[str], verdict_on: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["arm", "n_seeds"]
    for m in metrics:
        head += [f"{m}_mean", f"{m}_low", f"{m}_high"]
    for m in verdict_on:
        head += [f"{m}_diff", f"{m}_diff_low", f"{m}_diff_high", f"{m}_verdict"]
    w.writerow(head)
    for r in results:
        row: list = [r.arm, r.n]
        for m in metrics:
            iv = r.intervals[m]
            row += [iv.estimate, iv.low, iv.high]
        for m in verdict_on:
            d = r.diffs.get(m)
            row += [d.estimate, d.low, d.high] if d else ["", "", ""]
            row.append(r.verdicts.get(m, "baseline" if not r.diffs and not r.verdicts else ""))
        w.writerow(["" if isinstance(x, float) and math.isnan(x) else x for x in row])
    return buf.getvalue()


def runs_csv(runs: list[RunSummary], metrics: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["arm", "seed", "finished", "steps", *metrics, "git_commit", "git_dirty", "run_dir"])
    for r in runs:
        w.writerow([r.arm, r.seed, r.finished, r.steps, *[r.values.get(m, "") for m in metrics],
                    r.meta.get("git_commit", ""), r.meta.get("git_dirty", ""), r.run_dir])
    return buf.getvalue()


def results_md(study: Study, runs: list[RunSummary], results: list[ArmResult], plots: list[Path]) -> str:
    spec = study.spec
    level = round(100 * spec.level)
    finished = [r for r in runs if r.finished]
    cfg = study.runs[0].config
    lines = [f"# Study `{study.name}`", ""]
    if spec.description:
        lines += [spec.description.strip(), ""]
    lines += [f"- study file: `{study.path}`; base config: `{spec.base.config}`",
              f"- {len(study.arms)} arms x {len(study.seeds)} seeds (seeds {', '.join(map(str, study.seeds))}); "
              f"{len(finished)} of {len(runs)} runs finished",
              f"- baseline arm: `{study.baseline}`; task `{cfg.task.name}`, {cfg.trainer.steps} RL steps, "
              f"{cfg.rollout.prompts_per_step} prompts x {cfg.rollout.group_size} completions per step, "
              f"{cfg.eval.num_problems} held-out problems"]
    commits = {(r.meta.get("git_commit"), r.meta.get("git_dirty")) for r in finished if r.meta}
    if commits:
        lines.append("- code: " + ", ".join(f"`{c[:10] if c else 'no git'}`{' (dirty)' if d else ''}"
                                            for c, d in sorted(commits, key=str)))
    befores: dict[str, list[float]] = {}  # arm -> its runs' greedy accuracy at step 0
    for r in finished:
        if "greedy_accuracy" in r.before:
            befores.setdefault(r.arm, []).append(r.before["greedy_accuracy"])
    if befores and len({round(stats.mean(v), 6) for v in befores.values()}) == 1:
        lines.append(f"- before RL (the shared warm start): greedy accuracy "
                     f"{100 * stats.mean(next(iter(befores.values()))):.1f}%")
    elif befores:  # the arms start apart (e.g. one evaluates episodes with an environment's help)
        lines.append("- before RL (each arm's evaluation at step 0): greedy accuracy " + ", ".join(
            f"{arm} {100 * stats.mean(v):.1f}%" for arm, v in befores.items()))
    lines += ["", f"Each cell: mean over seeds [{level}% t-interval]. Accuracies and rewards in %.", ""]

    cols = spec.metrics
    lines.append("| arm | seeds | " + " | ".join(cols) + " |")
    lines.append("|---|---|" + "---|" * len(cols))
    for r in results:
        name = f"**{r.arm}** (baseline)" if r.arm == study.baseline else r.arm
        lines.append(f"| {name} | {r.n} | " + " | ".join(_cell(m, r.intervals[m]) for m in cols) + " |")
    lines += ["", "Metrics: " + "; ".join(f"`{m}` = {metric_info(m)[0]}" for m in cols) + ".", ""]

    method = ("t interval of the per-seed differences (arm - baseline, same seed)" if spec.comparison == "paired"
              else "Welch interval of (arm - baseline) over seeds")
    lines += [f"## Verdicts against `{study.baseline}`", "",
              f"{level}% {method}; an interval that contains zero means these seeds give no evidence of a "
              "difference (not that there is none). Not corrected for multiple comparisons.", ""]
    for r in results:
        if r.arm == study.baseline:
            continue
        desc = f" ({study.descriptions[r.arm]})" if study.descriptions.get(r.arm) else ""
        lines.append(f"- **{r.arm}**{desc}:")
        for m in spec.verdict_on:
            lines.append(f"  - {m}: {r.verdicts.get(m, '-')}")
    missing = [f"{r.arm}/seed{r.seed}" for r in runs if not r.finished]
    if missing:
        lines += ["", f"Unfinished runs (not in the table): {', '.join(missing)}."]
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{p.stem}](plots/{p.name})" for p in plots]
    lines += ["", "Reproduce: `rlvr compare " + str(study.path) + "`; each run folder holds its resolved "
              "`config.yaml` and `meta.json` (git commit, package versions); per-run numbers in `runs.csv`."]
    return "\n".join(lines) + "\n"


def curve_figure(study: Study, runs: list[RunSummary], metric: str):
    """The learning-curve figure of one metric over all arms (mean over seeds with a seed band),
    not saved; None without data.

    By the plotting rule of :func:`rlvr.eval.report.plot_series`: a per-step metric is smoothed
    with ``study.spec.smooth`` (each seed's curve, before the band) and its raw seed mean is drawn
    faintly beside it; an evaluation metric (``eval/*``, a few points per run) is never
    smoothed, so its last point is the value in results.md."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rlvr.records.plots import is_eval_metric, plot_series

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    band_label = "mean ± std over seeds" if study.spec.band == "std" else "mean, min-max over seeds"
    evals = is_eval_metric(metric)
    window = 1 if evals else study.spec.smooth
    fig, ax = plt.subplots(figsize=(7, 4.2))
    any_data = False
    for i, arm in enumerate(study.arms):
        curves = [r.curves.get(metric, []) for r in runs if r.arm == arm and r.finished]
        curves = [c for c in curves if c]
        if not curves:
            continue
        any_data = True
        raw = stats.curve_band(curves, study.spec.band)
        if window > 1:
            curves = [list(zip([s for s, _ in c], stats.moving_average([v for _, v in c], window)))
                      for c in curves]
        b = stats.curve_band(curves, study.spec.band) if window > 1 else raw
        color, ls = colors[i % len(colors)], styles[(i // len(colors)) % len(styles)]
        lw = 2.2 if arm == study.baseline else 1.3
        label = f"{arm} (n={len(curves)})"
        if evals:
            plot_series(ax, raw.steps, raw.mean, points=True, color=color, ls=ls, lw=lw, label=label)
        else:
            plot_series(ax, raw.steps, raw.mean, smooth=window, color=color, ls=ls, lw=lw, label=label,
                        marker="o" if len(raw.steps) < 10 else None)
        ax.fill_between(b.steps, b.low, b.high, color=color, alpha=0.15, lw=0)
    if not any_data:
        plt.close(fig)
        return None
    ax.set_xlabel("step")
    if evals:
        how = ", evaluation points (not smoothed)"
    elif window > 1:
        how = f", moving average of {window}; faint: per-step mean"
    else:
        how = ""
    ax.set_title(f"{metric} ({band_label}{how})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(study.arms) > 6 else 1)
    fig.tight_layout()
    return fig


def final_metrics_figure(study: Study, runs: list[RunSummary], results: list[ArmResult]):
    """The final metrics of every arm with their intervals (not saved); None without finished runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = study.spec.verdict_on
    if not any(r.n for r in results):
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 0.35 * len(results) + 1.6),
                             squeeze=False)
    for ax, m in zip(axes[0], metrics):
        ys = list(range(len(results)))[::-1]
        for y, r in zip(ys, results):
            iv = r.intervals.get(m) or stats.t_interval([r_.values[m] for r_ in runs
                                                        if r_.arm == r.arm and r_.finished and m in r_.values])
            if iv.n == 0:
                continue
            err = [[iv.estimate - iv.low], [iv.high - iv.estimate]] if iv.defined else None
            ax.errorbar([iv.estimate], [y], xerr=err, fmt="o", capsize=3,
                        color="black" if r.arm == study.baseline else "C0")
        base = next((r for r in results if r.arm == study.baseline), None)
        if base is not None and base.intervals.get(m) and base.intervals[m].n:
            ax.axvline(base.intervals[m].estimate, color="gray", ls="--", lw=1)
        ax.set_yticks(ys, [r.arm for r in results], fontsize=8)
        ax.set_title(f"{m} ({round(100 * study.spec.level)}% CI)", fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def plot_study(study: Study, runs: list[RunSummary], results: list[ArmResult], out_dir: Path) -> list[Path]:
    """One figure per curve metric (all arms, mean line with a seed band) and one of the final
    metrics with their intervals. Returns the plots written (one that cannot be written, e.g.
    on a full disk, is left out with a warning)."""
    from rlvr.records.plots import save_figure

    figures = [(f"curve_{metric.replace('/', '_')}.png", lambda m=metric: curve_figure(study, runs, m))
               for metric in study.spec.curves]
    figures.append(("final_metrics.png", lambda: final_metrics_figure(study, runs, results)))
    written = []
    for name, make in figures:  # one figure open at a time
        fig = make()
        if fig is not None and (path := save_figure(fig, Path(out_dir) / name)) is not None:
            written.append(path)
    return written


def write_report(study: Study) -> Path:
    """Write results.md, results.csv, runs.csv and plots/ into the study folder; returns results.md."""
    runs = collect(study)
    results = aggregate(study, runs)
    d = study.study_dir
    d.mkdir(parents=True, exist_ok=True)
    plots = plot_study(study, runs, results, d / "plots") if any(r.finished for r in runs) else []
    atomic_write_text(d / "results.csv", results_csv(results, study.spec.metrics, study.spec.verdict_on))
    atomic_write_text(d / "runs.csv", runs_csv(runs, study.spec.metrics))
    atomic_write_text(d / "results.md", results_md(study, runs, results, plots))
    return d / "results.md"
