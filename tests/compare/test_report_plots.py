"""rlvr compare's plots agree with its table: the held-out curve (5 evaluation points a run) is
never smoothed, so its last point is results.md's final accuracy; per-step curves are smoothed
with study.smooth and drawn faintly raw beside it."""

import errno
import json

import matplotlib.pyplot as plt
import pytest

from rlvr.compare import stats
from rlvr.compare.report import aggregate, collect, curve_figure, write_report
from rlvr.compare.study import load_study
from rlvr.eval.report import RAW_ALPHA

EVAL_STEPS = [0, 25, 50, 75, 100]
#: Held-out greedy accuracy at EVAL_STEPS, per arm and seed.
ACC = {"base": {0: [0.40, 0.45, 0.5, 0.52, 0.61], 1: [0.40, 0.47, 0.49, 0.58, 0.66]},
       "other": {0: [0.40, 0.50, 0.55, 0.62, 0.70], 1: [0.40, 0.52, 0.60, 0.61, 0.69]}}


def _records(arm, seed):
    recs = []
    for s in range(0, 101):
        if s:
            recs.append({"step": s, "reward_mean": 0.3 + 0.003 * s + (0.08 if (s + seed) % 2 else -0.08),
                         "accuracy": 0.4 + 0.002 * s})
        if s in EVAL_STEPS:
            a = ACC[arm][seed][EVAL_STEPS.index(s)]
            recs.append({"step": s, "eval/greedy_accuracy": a, "eval/sampled_reward": a / 2})
    return recs


@pytest.fixture
def study(write_study, tmp_path):
    st = load_study(write_study({"base": None, "other": {"trainer.lr": 1e-5}}, seeds=2, baseline="base",
                                smooth=5, curves=["reward_mean", "eval/greedy_accuracy"]),
                    out=tmp_path / "study")
    for run in st.runs:
        run.run_dir.mkdir(parents=True)
        (run.run_dir / "metrics.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in _records(run.arm, run.seed)))
        (run.run_dir / "summary.md").write_text("done\n")
    return st


def _lines(fig, gid):
    return [line for line in fig.axes[0].get_lines() if line.get_gid() == gid]


def test_eval_curve_last_point_is_the_table_value(study):
    runs = collect(study)
    results = {r.arm: r for r in aggregate(study, runs)}
    fig = curve_figure(study, runs, "eval/greedy_accuracy")
    assert _lines(fig, "smoothed") == [] and _lines(fig, "raw") == []  # smooth=5 is not applied
    points = {line.get_label().split(" ")[0]: line for line in _lines(fig, "points")}
    assert set(points) == {"base", "other"}
    for arm, line in points.items():
        assert list(line.get_xdata()) == EVAL_STEPS and line.get_marker() == "o"
        table = results[arm].intervals["greedy_accuracy"].estimate  # results.md's cell (in %)
        assert line.get_ydata()[-1] == pytest.approx(table)
        assert list(line.get_ydata()) == pytest.approx(
            [sum(v) / 2 for v in zip(ACC[arm][0], ACC[arm][1])])
    assert "not smoothed" in fig.axes[0].get_title()
    plt.close(fig)
    md = write_report(study).read_text()
    assert f"| **base** (baseline) | 2 | {100 * results['base'].intervals['greedy_accuracy'].estimate:.1f} [" in md


def test_per_step_curve_is_smoothed_with_a_faint_raw_line(study):
    runs = collect(study)
    fig = curve_figure(study, runs, "reward_mean")
    raw, smoothed = _lines(fig, "raw"), _lines(fig, "smoothed")
    assert len(raw) == 2 and len(smoothed) == 2
    assert all(line.get_alpha() == pytest.approx(RAW_ALPHA) for line in raw)
    base_curves = [r.curves["reward_mean"] for r in runs if r.arm == "base"]
    mean = stats.curve_band(base_curves).mean
    base_raw = next(line for line in raw if "base" in line.get_label())
    base_smooth = next(line for line in smoothed if line.get_label().startswith("base"))
    assert list(base_raw.get_ydata()) == pytest.approx(mean)
    assert list(base_smooth.get_ydata()) == pytest.approx(stats.moving_average(mean, 5))
    assert "moving average of 5" in fig.axes[0].get_title()
    plt.close(fig)


def test_a_plot_that_cannot_be_written_is_left_out_with_a_warning(study, monkeypatch, capsys):
    from matplotlib.figure import Figure

    def savefig(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", savefig)
    md = write_report(study).read_text()  # the tables are still written
    assert "| **base** (baseline) |" in md and "## Plots" not in md
    assert "warning: could not write plot" in capsys.readouterr().err
