"""Experiment trackers (logging.report_to): each writes its files offline, gets the same numbers as
metrics.jsonl plus the sample tables, and a missing extra is a one-line error with the pip command.

TensorBoard is in the dev extra; W&B (offline mode), MLflow (file store) and trackio (local store)
tests run when their package is installed and skip with the pip command otherwise."""

import glob
import json
import math
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from rlvr.records.trackers import markdown_table, numeric, open_trackers

RECORDS = [
    {"step": 0, "eval/greedy_accuracy": 0.25, "eval/sampled_reward": 0.125},
    {"step": 1, "reward_mean": 0.5, "loss": 1.5, "generated_tokens": 96, "note": "text", "flag": True,
     "bad": float("nan")},
    {"step": 2, "reward_mean": 0.75, "loss": 1.25, "generated_tokens": 80},
]
SAMPLES = (1, [{"prompt": "1+1=", "answer": "2", "completion": "2|x\nz", "reward": 1.0},
               {"prompt": "3*4=", "answer": "12", "completion": "7", "reward": 0.0}])


def _config(*names, project="rlvr-test"):
    data = {"run": {"name": "t"}, "trainer": {"lr": 1e-4}, "logging": {"report_to": list(names)}}
    return SimpleNamespace(logging=SimpleNamespace(project=project, report_to=list(names)), to_dict=lambda: data)


def _feed(run_dir: Path, *names):
    trackers = open_trackers(_config(*names), run_dir)
    for r in RECORDS:  # as the loop does: a step's samples right after its metrics
        trackers.log(r)
        if r["step"] == SAMPLES[0]:
            trackers.log_samples(*SAMPLES)
    trackers.close()


def test_numbers_only_reach_the_trackers():
    assert numeric(RECORDS[1]) == {"reward_mean": 0.5, "loss": 1.5, "generated_tokens": 96}
    table = markdown_table(SAMPLES[1])
    assert table.splitlines()[0] == "| prompt | answer | completion | reward |"
    assert "2\\|x⏎z" in table  # cells stay on one row


def _tb_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    return {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}, ea


def test_tensorboard_writes_event_files(tmp_path):
    pytest.importorskip("tensorboard", reason="pip install 'rlvr[tensorboard]' (it is in rlvr[dev])")
    _feed(tmp_path, "tensorboard")
    scalars, ea = _tb_scalars(tmp_path / "tensorboard")
    assert scalars["reward_mean"] == [(1, 0.5), (2, 0.75)]
    assert scalars["eval/greedy_accuracy"] == [(0, 0.25)]
    assert scalars["generated_tokens"] == [(1, 96.0), (2, 80.0)]
    assert not {"note", "flag", "bad", "step"} & set(scalars)
    text = {t for t in ea.Tags()["tensors"]}
    assert {"samples/text_summary", "config/text_summary"} <= text
    assert json.loads((tmp_path / "trackers.json").read_text()) == {"tensorboard": "tensorboard"}


def test_wandb_offline_writes_its_run_folder(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="pip install 'rlvr[wandb]'")
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # not logged in: rlvr picks offline mode itself
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    _feed(tmp_path, "wandb")
    ids = json.loads((tmp_path / "trackers.json").read_text())
    runs = glob.glob(str(tmp_path / "wandb" / f"offline-run-*-{ids['wandb']}"))
    assert len(runs) == 1, sorted(p.name for p in (tmp_path / "wandb").iterdir())
    log_file = Path(runs[0], f"run-{ids['wandb']}.wandb")
    deadline = time.monotonic() + 60  # W&B's service process writes the file after finish() returns
    while b"generated_tokens" not in log_file.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.2)
    data = log_file.read_bytes()
    for key in (b"reward_mean", b"eval/greedy_accuracy", b"generated_tokens"):
        assert key in data
    tables = glob.glob(str(Path(runs[0]) / "files" / "media" / "table" / "samples_*.table.json"))
    assert tables and "1+1=" in Path(tables[0]).read_text()
    # a second open (a resumed run) continues the same W&B run id
    _feed(tmp_path, "wandb")
    assert json.loads((tmp_path / "trackers.json").read_text())["wandb"] == ids["wandb"]


def test_mlflow_file_store_holds_the_metrics_and_samples(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="pip install 'rlvr[mlflow]'")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    _feed(tmp_path, "mlflow")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    run_id = json.loads((tmp_path / "trackers.json").read_text())["mlflow"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["trainer.lr"] == "0.0001"
    history = client.get_metric_history(run_id, "reward_mean")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.75)]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "eval/greedy_accuracy")] == [(0, 0.25)]
    assert "note" not in run.data.metrics and "bad" not in run.data.metrics
    artifacts = [a.path for a in client.list_artifacts(run_id, "samples")]
    assert artifacts == ["samples/step_000001.json"]
    assert client.get_experiment_by_name("rlvr-test").experiment_id == run.info.experiment_id


def test_trackio_local_store_holds_the_metrics(tmp_path):
    pytest.importorskip("trackio", reason="pip install 'rlvr[trackio]'")
    # trackio fixes its folder (TRACKIO_DIR) at import, so it runs in its own process here
    script = textwrap.dedent(f"""
        import json, sqlite3, sys
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_trackers import _feed
        _feed(Path({str(tmp_path)!r}), "trackio")
        db = sqlite3.connect(Path({str(tmp_path / 'trackio')!r}) / "rlvr-test.db")
        rows = db.execute("select step, metrics from metrics order by id").fetchall()
        print("ROWS:" + json.dumps([(s, m.decode() if isinstance(m, bytes) else m) for s, m in rows]))
    """)
    env = {**__import__("os").environ, "TRACKIO_DIR": str(tmp_path / "trackio")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("ROWS:"))[5:])
    by_step = {}
    for step, metrics in rows:
        by_step.setdefault(step, {}).update(json.loads(metrics))
    assert by_step[1]["reward_mean"] == 0.5 and by_step[2]["reward_mean"] == 0.75
    assert by_step[0]["eval/greedy_accuracy"] == 0.25
    assert "samples" in by_step[1] and "note" not in by_step[1]


def test_a_failing_tracker_is_switched_off_with_one_warning(tmp_path, capsys):
    from rlvr.records.trackers import Tracker, Trackers

    class Broken(Tracker):
        name = "broken"

        def log(self, step, metrics):
            raise ConnectionError("no route\nto host")

    seen = []

    class Good(Tracker):
        name = "good"

        def log(self, step, metrics):
            seen.append(step)

    t = Trackers([Broken(), Good()])
    for r in RECORDS:
        t.log(r)
    err = capsys.readouterr().err
    assert seen == [0, 1, 2] and err.count("warning: tracker broken failed") == 1 and "no route to host" in err


@pytest.mark.parametrize("name,extra", [("wandb", "wandb"), ("mlflow", "mlflow"), ("tensorboard", "tensorboard"),
                                        ("trackio", "trackio")])
def test_a_missing_extra_is_one_line_with_the_pip_command(monkeypatch, capsys, name, extra):
    from rlvr.cli import main

    monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    rc = main(["train", "--config", "configs/grpo_arithmetic_tiny.yaml", f"logging.report_to=[{name}]",
               "run.output_dir=/nonexistent/never-created"])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert f"logging.report_to: {name} needs the" in err and f"pip install 'rlvr[{extra}]'" in err


@pytest.mark.slow
def test_a_training_run_sends_tensorboard_exactly_the_metrics_of_metrics_jsonl(fast_config):
    pytest.importorskip("tensorboard", reason="pip install 'rlvr[tensorboard]' (it is in rlvr[dev])")
    import warnings

    from rlvr.config import ConfigWarning
    from rlvr.train.loop import train

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)
        run_dir = train(fast_config("trainer.steps=3", "logging.report_to=tensorboard", "logging.samples_every=2",
                                    "logging.num_samples=2"), log=lambda *_: None).run_dir
    scalars, ea = _tb_scalars(run_dir / "tensorboard")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    expected = {}
    for r in records:
        for k, v in numeric(r).items():
            expected.setdefault(k, []).append((r["step"], v))
    assert set(scalars) == set(expected)
    for k, pts in expected.items():
        got = scalars[k]
        assert [s for s, _ in got] == [s for s, _ in pts], k
        assert all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6) for (_, a), (_, b) in zip(got, pts)), k
    assert [e.step for e in ea.Tensors("samples/text_summary")] == [1, 2]
