"""The plotting rule: dense per-step curves may be smoothed (raw values drawn faintly beside
them); evaluation points never are, so a plot's last held-out point is the table's number."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from rlvr.compare.stats import moving_average  # noqa: E402
from rlvr.eval.report import RAW_ALPHA, plot_pass_at_k, plot_series, plot_tts  # noqa: E402
from rlvr.records.logger import RunLogger  # noqa: E402


def _by_gid(ax):
    out = {}
    for line in ax.get_lines():
        out.setdefault(line.get_gid(), []).append(line)
    return out


def test_plot_series_points_are_raw_with_markers():
    fig, ax = plt.subplots()
    ys = [0.3, 0.5, 0.4, 0.6, 0.7]
    (line,) = plot_series(ax, [0, 25, 50, 75, 100], ys, points=True, smooth=5, label="eval")
    assert line.get_gid() == "points" and line.get_marker() == "o"
    assert list(line.get_ydata()) == ys  # smooth is ignored for evaluation points
    plt.close(fig)


def test_plot_series_dense_is_smoothed_beside_a_faint_raw_line():
    fig, ax = plt.subplots()
    ys = [float((i * 7) % 5) for i in range(30)]
    raw, smoothed = plot_series(ax, range(1, 31), ys, smooth=4, label="reward_mean", color="C3")
    assert raw.get_gid() == "raw" and raw.get_alpha() == pytest.approx(RAW_ALPHA)
    assert raw.get_label().startswith("_")  # no legend entry
    assert list(raw.get_ydata()) == ys
    assert smoothed.get_gid() == "smoothed" and smoothed.get_label() == "reward_mean"
    assert list(smoothed.get_ydata()) == pytest.approx(moving_average(ys, 4))
    assert raw.get_color() == smoothed.get_color()
    (line,) = plot_series(ax, [1, 2, 3], [1.0, 2.0, 3.0], smooth=4)  # fewer points than the window
    assert line.get_gid() == "line" and list(line.get_ydata()) == [1.0, 2.0, 3.0]
    plt.close(fig)


def _run_folder(tmp_path, steps=100, evals=(0, 25, 50, 75, 100)):
    log = RunLogger(tmp_path)
    acc = {0: 0.40, 25: 0.55, 50: 0.52, 75: 0.66, 100: 0.71}
    log.log({"step": 0, "eval/greedy_accuracy": acc[0], "eval/sampled_reward": acc[0] / 2})
    for s in range(1, steps + 1):
        log.log({"step": s, "reward_mean": 0.3 + 0.004 * s + (0.1 if s % 2 else -0.1), "accuracy": 0.5})
        if s in evals:
            log.log({"step": s, "eval/greedy_accuracy": acc[s], "eval/sampled_reward": acc[s] / 2})
    return log


def test_run_folder_eval_plot_ends_at_the_summary_table_value(tmp_path):
    log = _run_folder(tmp_path)
    fig = log.figure("eval")
    lines = _by_gid(fig.axes[0])
    assert set(lines) == {"points"}  # never smoothed
    greedy = next(line for line in lines["points"] if line.get_label() == "eval/greedy_accuracy")
    # summary.md's "after" column is the last eval record (rlvr.train.loop._last_eval)
    after = [r for r in log.records() if "eval/greedy_accuracy" in r][-1]["eval/greedy_accuracy"]
    assert list(greedy.get_xdata()) == [0, 25, 50, 75, 100]
    assert greedy.get_ydata()[-1] == after == 0.71
    plt.close(fig)


def test_run_folder_per_step_curves_are_smoothed_with_the_raw_values_faint(tmp_path):
    log = _run_folder(tmp_path)
    fig = log.figure("reward")
    lines = _by_gid(fig.axes[0])
    assert len(lines["raw"]) == 2 and len(lines["smoothed"]) == 2  # reward_mean and accuracy
    raw = next(line for line in lines["raw"] if "reward_mean" in line.get_label())
    smoothed = next(line for line in lines["smoothed"] if line.get_label().startswith("reward_mean"))
    assert raw.get_alpha() == pytest.approx(RAW_ALPHA)
    ys = [r["reward_mean"] for r in log.records() if "reward_mean" in r]
    assert list(raw.get_ydata()) == pytest.approx(ys)
    assert list(smoothed.get_ydata()) == pytest.approx(moving_average(ys, 5))  # 5% of 100 steps
    assert "moving average of 5" in smoothed.get_label()
    plt.close(fig)
    assert {p.name for p in log.plot()} == {"reward.png", "eval.png"}


def test_short_runs_are_not_smoothed(tmp_path):
    log = _run_folder(tmp_path, steps=10, evals=())
    fig = log.figure("reward")
    assert set(_by_gid(fig.axes[0])) == {"line"}
    plt.close(fig)


def test_eval_report_plots_draw_raw_points(tmp_path):
    ks = [1, 2, 4]
    s = {"pass@1": 0.2, "pass@2": 0.3, "pass@4": 0.45, "maj@1": 0.2, "maj@2": 0.2, "maj@4": 0.3}
    assert plot_pass_at_k({"a": s}, ks, tmp_path / "p.png") == tmp_path / "p.png"
    points = [{"strategy": "rsa", "setting": "T=0", "generated_tokens": 10.0, "accuracy": 0.4},
              {"strategy": "rsa", "setting": "T=1", "generated_tokens": 20.0, "accuracy": 0.5}]
    assert plot_tts(points, tmp_path / "t.png") == tmp_path / "t.png"
    assert (tmp_path / "p.png").stat().st_size > 1000 and (tmp_path / "t.png").stat().st_size > 1000
