"""Study metrics read from any metrics.jsonl key (eval/<key>, final/<key>) and the multi-objective study."""

import pytest

from rlvr.compare.report import _is_percent, summarize_records
from rlvr.compare.study import load_study, metric_info


def test_prefixed_metrics_closed_forms():
    recs = [{"step": 0, "eval/greedy_accuracy": 0.3, "eval/greedy_short": 0.5}]
    for s in range(1, 21):
        recs.append({"step": s, "reward_mean": 0.0, "accuracy": s / 20, "reward/short": 1.0 - s / 20,
                     "reward/weight/short": 0.5})
    recs.append({"step": 20, "eval/greedy_accuracy": 0.6, "eval/greedy_short": 0.8, "eval/sampled_short": 0.7})
    values, before, _ = summarize_records(recs)
    assert values["eval/greedy_short"] == 0.8 and values["eval/sampled_short"] == 0.7
    assert values["eval/greedy_accuracy"] == values["greedy_accuracy"] == 0.6
    assert values["final/accuracy"] == pytest.approx((19 / 20 + 20 / 20) / 2)  # last 10% of 20 steps = 2 steps
    assert values["final/reward/short"] == pytest.approx((1 / 20 + 0) / 2)
    assert values["final/reward/weight/short"] == pytest.approx(0.5)
    assert before["greedy_short"] == 0.5
    assert metric_info("eval/greedy_short") == ("`eval/greedy_short` at the final held-out evaluation", True)
    assert metric_info("final/reward/short")[1] is True
    assert _is_percent("eval/greedy_short") and _is_percent("final/reward/short")
    assert not _is_percent("final/reward/weight/short") and not _is_percent("eval/response_length")
    with pytest.raises(KeyError):
        metric_info("eval/")


def test_unknown_metric_is_refused(write_study):
    with pytest.raises(Exception, match="unknown metric 'greedy_short'.*eval/<key>"):
        load_study(write_study({"a": None}, metrics=["greedy_short"]))
    assert load_study(write_study({"a": None}, metrics=["eval/greedy_format"], verdict_on=["final/reward/format"]))


def test_multi_objective_study_is_valid():
    study = load_study("studies/multi_objective.yaml")
    assert study.baseline == "weighted_sum" and len(study.seeds) == 3 and len(study.runs) == 15
    assert {r.config.task.name for r in study.runs} == {"arithmetic_concise"}
    # one shared warm start: no arm changes what the SFT cache key depends on
    keys = {(r.config.task.model_dump_json(), r.config.sft.model_dump_json(), r.config.model.model_dump_json())
            for r in study.runs}
    assert len(keys) == 1
    by_arm = {r.arm: r.config for r in study.runs if r.seed == 0}
    assert by_arm["gdpo"].reward.combine == "normalize_then_sum" and by_arm["dvao"].reward.combine == "dvao"
    assert dict(by_arm["lagrangian"].reward.weights) == {"correct": 1.0}
    assert by_arm["lagrangian"].reward.constraints["short"].threshold == 0.9
    assert dict(by_arm["weighted_sum"].reward.weights) == {"correct": 1.0, "short": 0.5}
    base = {r.seed: r.config.to_dict() for r in study.runs if r.arm == "weighted_sum"}
    for r in study.runs:  # arms differ only in how the rewards are combined
        d = r.config.to_dict()
        assert {k for k in d if d[k] != base[r.seed][k]} - {"run"} <= {"reward", "algorithm"}, r.arm
