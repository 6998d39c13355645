"""Aggregation of synthetic run folders into results.md / results.csv (no training)."""

import csv
import json
import math
from pathlib import Path

import pytest

from rlvr.compare import stats as S
from rlvr.compare.report import aggregate, collect, summarize_records, write_report
from rlvr.compare.study import load_study

BASE = str(Path(__file__).resolve().parents[2] / "configs" / "grpo_arithmetic_tiny.yaml")

#: Final greedy accuracy per arm and seed of the synthetic study.
FINAL = {"base": [0.40, 0.50, 0.60], "same": [0.50, 0.60, 0.70], "up": [0.90, 0.91, 0.92]}


def _records(final_acc: float, seed: int, steps: int = 4) -> list[dict]:
    recs = [{"step": 0, "eval/greedy_accuracy": 0.3, "eval/sampled_reward": 0.2}]
    for s in range(1, steps + 1):
        recs.append({"step": s, "reward_mean": 0.1 * s + 0.01 * seed, "accuracy": 0.1 * s, "entropy": 1.0 - 0.1 * s,
                     "response_length": 3.0 + s, "generated_tokens": 100, "time_generate": 2.0})
    recs.append({"step": steps, "eval/greedy_accuracy": final_acc, "eval/sampled_reward": final_acc / 2})
    return recs


@pytest.fixture
def synthetic_study(write_study, tmp_path):
    study = load_study(write_study({a: (None if a == "base" else {"trainer.lr": 1e-5}) for a in FINAL},
                                   seeds=3, baseline="base"), out=tmp_path / "study")
    for run in study.runs:
        if run.arm == "up" and run.seed == 2:
            continue  # an unfinished run: left out of the table
        run.run_dir.mkdir(parents=True)
        (run.run_dir / "metrics.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in _records(FINAL[run.arm][run.seed], run.seed)))
        (run.run_dir / "summary.md").write_text("done\n")
        (run.run_dir / "wall_time.json").write_text(json.dumps({"wall_s": 10.0 + run.seed, "cpu_s": 5.0}))
        (run.run_dir / "meta.json").write_text(json.dumps({"git_commit": "abc123", "git_dirty": False}))
    return study


def test_summarize_records_closed_forms():
    values, before, curves = summarize_records(_records(0.7, seed=0, steps=10), wall_s=12.5, cpu_s=20.0)
    assert values["greedy_accuracy"] == 0.7 and values["sampled_reward"] == 0.35
    assert values["reward_auc"] == pytest.approx(0.1 * 5.5)  # linear 0.1 s over [1, 10]: average 0.55
    assert values["final_reward"] == pytest.approx(1.0)  # last 10% = last step
    assert values["final_entropy"] == pytest.approx(0.0)
    assert values["response_length"] == pytest.approx(3 + 5.5)
    assert values["tokens_per_second"] == pytest.approx(50.0)
    assert values["wall_time"] == 12.5 and values["cpu_time"] == 20.0
    assert before == {"greedy_accuracy": 0.3, "sampled_reward": 0.2}
    assert curves["eval/greedy_accuracy"] == [(0, 0.3), (10, 0.7)]


def test_aggregate_matches_t_and_welch_intervals(synthetic_study):
    runs = collect(synthetic_study)
    assert sum(r.finished for r in runs) == 8
    res = {r.arm: r for r in aggregate(synthetic_study, runs)}
    assert res["base"].n == 3 and res["up"].n == 2
    iv = res["base"].intervals["greedy_accuracy"]
    hw = 4.302652729749752 * 0.1 / math.sqrt(3)
    assert iv.estimate == pytest.approx(0.5) and iv.high - iv.estimate == pytest.approx(hw)
    same = res["same"].diffs["greedy_accuracy"]
    assert same.estimate == pytest.approx(0.1) and same.df == pytest.approx(4.0)
    assert same.half_width == pytest.approx(2.7764451051977987 * math.sqrt(2 * 0.01 / 3))
    assert res["same"].verdicts["greedy_accuracy"].startswith("no evidence of a difference")
    up = res["up"].diffs["greedy_accuracy"]
    assert up.estimate == pytest.approx(0.905 - 0.5)
    assert up == S.welch_interval([0.90, 0.91], FINAL["base"])
    assert res["up"].verdicts["greedy_accuracy"].startswith("better than baseline (+40.5 pts")
    assert res["base"].verdicts == {}
    wall = res["base"].intervals["wall_time"]
    assert wall.estimate == pytest.approx(11.0)
    assert res["base"].intervals["cpu_time"].estimate == 5.0 and res["base"].intervals["cpu_time"].half_width == 0


def test_write_report_files(synthetic_study):
    path = write_report(synthetic_study)
    d = synthetic_study.study_dir
    md = path.read_text()
    assert "| **base** (baseline) | 3 |" in md
    assert "- **up**" in md and "better than baseline" in md and "no evidence of a difference" in md
    assert "Unfinished runs (not in the table): up/seed2" in md
    assert "`abc123`" in md
    assert "- before RL (the shared warm start): greedy accuracy 30.0%" in md
    rows = list(csv.DictReader((d / "results.csv").open()))
    assert [r["arm"] for r in rows] == ["base", "same", "up"]
    assert float(rows[0]["greedy_accuracy_mean"]) == pytest.approx(0.5)
    assert rows[0]["greedy_accuracy_verdict"] == "baseline"
    assert float(rows[1]["greedy_accuracy_diff"]) == pytest.approx(0.1)
    per_run = list(csv.DictReader((d / "runs.csv").open()))
    assert len(per_run) == 9 and sum(r["finished"] == "True" for r in per_run) == 8
    for name in ("curve_reward_mean.png", "curve_eval_greedy_accuracy.png", "final_metrics.png"):
        assert (d / "plots" / name).stat().st_size > 1000, name


def test_arms_that_start_apart_get_their_own_before(synthetic_study):
    """An arm evaluated differently at step 0 (episodes with an environment's help) is not averaged into a
    shared "before": each arm's own step-0 accuracy is written."""
    for run in synthetic_study.runs:
        if run.arm == "up" and run.run_dir.exists():
            recs = _records(FINAL["up"][run.seed], run.seed)
            recs[0]["eval/greedy_accuracy"] = 0.5
            (run.run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    md = write_report(synthetic_study).read_text()
    assert "- before RL (each arm's evaluation at step 0): greedy accuracy base 30.0%, same 30.0%, up 50.0%" in md
    assert "shared warm start" not in md


def test_paired_comparison(write_study, tmp_path):
    study = load_study(write_study({"base": None, "same": {"trainer.lr": 1e-5}}, seeds=3, baseline="base",
                                   comparison="paired"), out=tmp_path / "paired")
    for run in study.runs:
        run.run_dir.mkdir(parents=True)
        final = FINAL[run.arm][run.seed] + (0.01 * run.seed if run.arm == "same" else 0.0)
        (run.run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records(final, run.seed)))
        (run.run_dir / "summary.md").write_text("done\n")
    res = {r.arm: r for r in aggregate(study, collect(study))}
    d = res["same"].diffs["greedy_accuracy"]
    diffs = [0.1, 0.11, 0.12]
    assert d.df == 2 and d.estimate == pytest.approx(0.11)
    assert d.half_width == pytest.approx(4.302652729749752 * S.std(diffs) / math.sqrt(3))
    assert res["same"].verdicts["greedy_accuracy"].startswith("better than baseline")
    assert "per-seed differences" in write_report(study).read_text()
