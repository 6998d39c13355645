"""``rlvr compare`` end to end on tiny runs: parallel workers, results, resume, Ray wiring."""

import csv
import json
import sys
import types

import pytest

from rlvr.cli import main
from rlvr.compare import runner
from rlvr.compare.study import load_study
from rlvr.config import ConfigError

pytestmark = pytest.mark.slow


def _overrides(fast_overrides, steps=3):
    return fast_overrides + [f"trainer.steps={steps}", "logging.checkpoint_every=2"]


def test_two_arms_two_seeds_end_to_end_then_nothing_to_redo(write_study, fast_overrides, tmp_path, capsys):
    path = write_study({"grpo": None, "seq_mean": {"algorithm.loss_agg_mode": "seq-mean-token-mean"}},
                       overrides=_overrides(fast_overrides), seeds=[0, 1], parallel={"workers": 2})
    out = tmp_path / "study"
    assert main(["compare", str(path), "--out", str(out)]) == 0  # 2 spawned worker processes
    for arm in ("grpo", "seq_mean"):
        for seed in (0, 1):
            d = out / arm / f"seed{seed}"
            assert (d / "summary.md").exists() and (d / "checkpoints" / "step_000003").is_dir()
            meta = json.loads((d / "meta.json").read_text())
            assert set(meta["versions"]) >= {"python", "torch", "transformers", "rlvr"} and "git_commit" in meta
            timing = json.loads((d / "wall_time.json").read_text())
            assert timing["attempts"][0]["mode"] == "new" and timing["wall_s"] > 0 and timing["cpu_s"] > 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["arm"] for r in rows] == ["grpo", "seq_mean"] and all(r["n_seeds"] == "2" for r in rows)
    assert 0 <= float(rows[0]["greedy_accuracy_mean"]) <= 1 and rows[1]["greedy_accuracy_verdict"]
    md = (out / "results.md").read_text()
    assert "## Verdicts against `grpo`" in md and "- **seq_mean**" in md
    assert (out / "plots" / "curve_reward_mean.png").exists() and (out / "plots" / "final_metrics.png").exists()

    # the same command again: every run is finished, nothing is trained, results are rebuilt
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/metrics.jsonl")}
    capsys.readouterr()
    assert main(["compare", str(path), "--out", str(out)]) == 0
    assert "4 of 4 runs already finished (skipped)" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/metrics.jsonl")} == stamps
    assert all(len(json.loads(p.read_text())["attempts"]) == 1 for p in out.glob("*/seed*/wall_time.json"))


def test_an_interrupted_run_resumes_from_its_checkpoint(write_study, fast_overrides, tmp_path, monkeypatch):
    from rlvr.train import loop

    study = load_study(write_study({"grpo": None}, overrides=_overrides(fast_overrides, steps=4), seeds=[0]),
                       out=tmp_path / "study")
    run = study.runs[0]
    assert loop.train(run.config, stop_after=2, log=lambda *_: None) is None  # "interrupted" after step 2
    assert (run.run_dir / "checkpoints" / "step_000002").is_dir() and not (run.run_dir / "summary.md").exists()

    calls = []
    real_train = loop.train
    monkeypatch.setattr(loop, "train", lambda *a, **k: calls.append(k.get("resume")) or real_train(*a, **k))
    outcome = runner.run_study(study, workers=1, log=lambda *_: None)
    assert outcome.trained == ["grpo/seed0"] and not outcome.failed
    assert calls == [run.run_dir]  # continued from the checkpoint, not restarted
    steps = [json.loads(line)["step"] for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()
             if "reward_mean" in line]
    assert steps == [1, 2, 3, 4]
    assert json.loads((run.run_dir / "wall_time.json").read_text())["attempts"][0]["mode"] == "resume"
    assert len(json.loads((run.run_dir / "meta.json").read_text())["resumes"]) == 1

    calls.clear()
    assert runner.run_study(study, workers=1, log=lambda *_: None).skipped == ["grpo/seed0"] and calls == []


def test_a_failing_run_is_reported_and_the_others_finish(write_study, fast_overrides, tmp_path, monkeypatch, capsys):
    from rlvr.train import loop

    path = write_study({"grpo": None, "boom": {"trainer.lr": 1e-4}}, overrides=_overrides(fast_overrides, steps=1),
                       seeds=[0], parallel={"workers": 1})
    real_train = loop.train

    def train(config=None, **k):
        if config is not None and config.trainer.lr == 1e-4:
            raise RuntimeError("simulated crash")
        return real_train(config, **k)

    monkeypatch.setattr(loop, "train", train)
    out = tmp_path / "study"
    assert main(["compare", str(path), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "1 runs failed" in err and "boom/seed0" in err
    assert (out / "grpo" / "seed0" / "summary.md").exists() and (out / "results.md").exists()


def test_ray_backend_without_ray_says_how_to_install(write_study, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    path = write_study({"a": None})
    assert main(["compare", str(path), "--out", str(tmp_path / "o"), "--backend", "ray"]) == 2
    assert "pip install 'rlvr[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_ray_driver_submits_one_task_per_run(monkeypatch):
    """The Ray wiring against a stand-in module with Ray's API (ray itself is an optional extra)."""
    log = []

    class Ref:
        def __init__(self, value):
            self.value = value

    fake = types.SimpleNamespace(
        init=lambda **k: log.append(("init", k)),
        remote=lambda **opts: (lambda fn: types.SimpleNamespace(
            remote=lambda job: (log.append(("submit", opts, job["label"])), Ref(fn(job)))[1])),
        wait=lambda refs, num_returns: (refs[:num_returns], refs[num_returns:]),
        get=lambda ref: ref.value,
        cancel=lambda ref: None)
    monkeypatch.setattr(runner, "run_one", lambda job: {"label": job["label"], "seconds": 1.0, "error": None})
    done = []
    runner._run_ray(fake, [{"label": "a/seed0"}, {"label": "b/seed0"}], 3, done.append)
    assert [d["label"] for d in done] == ["a/seed0", "b/seed0"]
    assert [e for e in log if e[0] == "submit"] == [("submit", {"num_cpus": 3}, "a/seed0"),
                                                     ("submit", {"num_cpus": 3}, "b/seed0")]


def test_default_workers_fit_the_machine(monkeypatch):
    monkeypatch.setattr(runner, "cpu_count", lambda: 8)
    assert runner.default_workers(1) == 8 and runner.default_workers(3) == 2 and runner.default_workers(16) == 1


def test_one_compare_per_study_folder(write_study, tmp_path):
    import fcntl
    import os

    study = load_study(write_study({"a": None}), out=tmp_path / "o")
    study.study_dir.mkdir()
    with open(study.study_dir / ".lock", "a+") as f:  # as a running rlvr compare holds it
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.write(str(os.getpid()))
        f.flush()
        with pytest.raises(ConfigError, match=f"another rlvr compare \\(pid {os.getpid()}\\) is running"):
            runner.run_study(study, workers=1, log=lambda *_: None)
    assert not (study.study_dir / "a").exists()
