"""Study files: parsing, resolution of every arm x seed, and one-line errors naming the arm."""

from pathlib import Path

import pytest

from rlvr.cli import main
from rlvr.compare.runner import plan
from rlvr.compare.study import load_study
from rlvr.config import ConfigError, load_config

BASE = str(Path(__file__).resolve().parents[2] / "configs" / "grpo_arithmetic_tiny.yaml")


def test_arms_resolve_to_configs_with_their_overrides(write_study, tmp_path):
    path = write_study({"grpo": None,
                        "seq": {"algorithm.loss_agg_mode": "seq-mean-token-mean", "trainer.lr": 1e-5},
                        "seq_list": ["algorithm.loss_agg_mode=seq-mean-token-mean", "trainer.lr=1e-5"],
                        "long": {"overrides": {"kl.placement": "loss", "kl.coef": 0.05}, "description": "k3 in loss"}},
                       overrides=["trainer.steps=7"], seeds=3)
    study = load_study(path)
    assert study.name == "study" and study.seeds == [0, 1, 2] and study.baseline == "grpo"
    assert len(study.runs) == 4 * 3
    by = {(r.arm, r.seed): r for r in study.runs}
    assert all(r.config.trainer.steps == 7 for r in study.runs)  # shared base override
    seq, seq_list = by[("seq", 1)].config, by[("seq_list", 1)].config
    assert seq.algorithm.loss_agg_mode == "seq-mean-token-mean" and seq.trainer.lr == 1e-5
    assert seq.model_dump() | {"run": None} == seq_list.model_dump() | {"run": None}  # both forms agree
    assert by[("long", 0)].config.kl.placement == "loss" and study.descriptions["long"] == "k3 in loss"
    r = by[("seq", 2)]
    assert r.config.run.seed == 2 and r.run_dir == Path("runs/studies/study/seq/seed2")
    # the rest of the config is the base file's
    skip = {"run", "trainer", "logging"}
    assert by[("grpo", 0)].config.model_dump(exclude=skip) == load_config(BASE).model_dump(exclude=skip)


def test_out_replaces_the_study_folder(write_study, tmp_path):
    study = load_study(write_study({"a": None}), out=tmp_path / "elsewhere")
    assert study.study_dir == tmp_path / "elsewhere"
    assert study.runs[0].run_dir == tmp_path / "elsewhere" / "a" / "seed0"


def _error(path) -> str:
    with pytest.raises(ConfigError) as info:
        load_study(path)
    return str(info.value)


def test_unknown_override_key_names_the_arm_and_field(write_study):
    msg = _error(write_study({"grpo": None, "typo": {"algorithm.loss_agg_modee": "token-mean"}}))
    assert msg.count("\n") == 0, msg  # one line, once (not once per seed)
    assert "arm 'typo'" in msg and "unknown field 'algorithm.loss_agg_modee'" in msg and "allowed here" in msg


def test_bad_values_name_the_arm_and_field(write_study):
    msg = _error(write_study({"grpo": None, "zero": {"rollout.group_size": 0},
                              "nope": ["algorithm.policy_loss=nope"]}))
    lines = msg.splitlines()
    assert len(lines) == 2, msg
    assert "arm 'zero'" in lines[0] and "rollout.group_size" in lines[0]
    assert "arm 'nope'" in lines[1] and "algorithm.policy_loss" in lines[1] and "unknown name 'nope'" in lines[1]


def test_base_problems_are_not_blamed_on_arms(write_study):
    msg = _error(write_study({"a": None, "b": {"trainer.lr": 1e-5}}, overrides=["trainer.stepz=3"]))
    assert msg.startswith("study error: base") and "trainer.stepz" in msg and "arm '" not in msg


@pytest.mark.parametrize("top,expected", [
    ({"baseline": "missing"}, "baseline 'missing' is not an arm"),
    ({"seed": 3}, "seed: unknown field"),
    ({"seeds": [1, 1]}, "distinct"),
    ({"metrics": ["accuracy_at_k"]}, "unknown metric 'accuracy_at_k'"),
    ({"parallel": {"workers": 0}}, "parallel.workers"),
])
def test_study_level_errors(write_study, top, expected):
    msg = _error(write_study({"a": None}, **top))
    assert expected in msg and msg.startswith("study error"), msg


def test_arms_may_not_set_what_the_study_sets(write_study):
    msg = _error(write_study({"a": None, "b": {"run.seed": 3}}))
    assert "arm 'b'" in msg and "run.seed" in msg and "set by the study" in msg


def test_arm_names_are_folder_safe(write_study):
    assert "folder-safe" in _error(write_study({"a": None, "../x": {"trainer.lr": 1e-5}}))


def test_missing_base_config(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("base: {config: nowhere.yaml}\nbaseline: a\narms: {a: null}\n")
    assert "base.config 'nowhere.yaml' not found" in _error(p)


def test_cli_reports_errors_before_anything_runs(write_study, tmp_path, capsys):
    path = write_study({"grpo": None, "typo": {"trainer.lrr": 1e-5}})
    out = tmp_path / "study_out"
    assert main(["compare", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("study error: arm 'typo': unknown field 'trainer.lrr'")
    assert not out.exists()


def test_dry_run_lists_every_run(write_study, tmp_path, capsys):
    path = write_study({"a": None, "b": {"trainer.lr": 1e-5}}, seeds=2)
    assert main(["compare", str(path), "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("new ") == 4 and "b/seed1" in out and not (tmp_path / "o").exists()


def test_a_stored_run_with_another_config_is_refused(write_study, tmp_path):
    from rlvr.config import dump_config

    path = write_study({"a": None}, seeds=1)
    study = load_study(path, out=tmp_path / "o")
    run = study.runs[0]
    run.run_dir.mkdir(parents=True)
    dump_config(load_config(BASE, ["trainer.lr=1e-3"]), run.run_dir / "config.yaml")
    with pytest.raises(ConfigError, match=r"a/seed0: .* another config .*trainer.lr: 0.001 there"):
        plan(study)
    dump_config(run.config, run.run_dir / "config.yaml")
    assert [p.status for p in plan(study)] == ["resume"]
    (run.run_dir / "summary.md").write_text("done\n")
    assert [p.status for p in plan(study)] == ["finished"]


def test_builtin_study_is_valid():
    study = load_study("studies/tricks_or_traps.yaml")
    assert study.baseline == "grpo" and len(study.seeds) == 3
    # one shared warm start: no arm changes what the SFT cache key depends on
    keys = {(r.config.task.model_dump_json(), r.config.sft.model_dump_json(), r.config.model.model_dump_json())
            for r in study.runs}
    assert len(keys) == 1
    # an isolated ablation: every arm differs from the baseline only in algorithm / kl / rollout
    # sampling, plus the critic (and AsyPPO's entropy bonus) for the critic arms
    base = {r.seed: r.config.to_dict() for r in study.runs if r.arm == "grpo"}
    for r in study.runs:
        d = r.config.to_dict()
        changed = {k for k in d if d[k] != base[r.seed][k]} - {"run"}
        allowed = {"algorithm", "kl", "rollout"} | ({"critic", "trainer"} if r.arm in ("ppo", "asyppo") else set())
        assert changed <= allowed, (r.arm, changed)


def test_subset_keeps_the_same_run_folders(write_study, tmp_path):
    study = load_study(write_study({"a": None, "b": {"trainer.lr": 1e-5}, "c": {"trainer.lr": 2e-5}}, seeds=3),
                       out=tmp_path / "o")
    sub = study.subset(["a", "c"], [1])
    assert list(sub.arms) == ["a", "c"] and sub.seeds == [1]
    assert [r.label for r in sub.runs] == ["a/seed1", "c/seed1"]
    assert sub.runs[1].run_dir == tmp_path / "o" / "c" / "seed1"
    with pytest.raises(ConfigError, match="'d' is not an arm"):
        study.subset(["d"])
    with pytest.raises(ConfigError, match="7 is not a seed"):
        study.subset(None, [7])


def test_a_mapping_for_a_whole_section_is_refused(write_study):
    msg = _error(write_study({"a": None, "b": {"trainer": {"lr": 1e-5}},
                              "c": ["rollout.dynamic_sampling={enabled: true}"]}))
    assert "arm 'b': 'trainer' is given a mapping" in msg and "arm 'c': 'rollout.dynamic_sampling'" in msg
    # a mapping for a dict-valued field is an ordinary value
    study = load_study(write_study({"a": None, "b": {"algorithm.policy_loss_params": {"clip_ratio_high": 0.28}}}))
    assert study.runs[-1].config.algorithm.policy_loss_params == {"clip_ratio_high": 0.28}


def test_arm_forms_and_default_seeds(write_study, tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(f"base: {{config: {BASE}}}\nbaseline: a\narms: {{a: null}}\n")
    assert load_study(p).seeds == [0, 1, 2]
    msg = _error(write_study({"a": None, "b": 5}))
    assert msg.count("\n") == 0 and "arm 'b' must be null, a mapping" in msg
