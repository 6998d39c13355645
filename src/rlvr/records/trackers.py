"""Experiment trackers behind ``logging.report_to: [tensorboard, wandb, mlflow, trackio]``.

Every record written to ``metrics.jsonl`` (per-step metrics and ``eval/*`` lines) goes to each
tracker with its ``step``, numbers only; every ``samples.jsonl`` batch goes as a sample table
where the tracker has one. The run folder stays the record of truth: a tracker that fails
mid-run is reported once on stderr and switched off, the run goes on.

==============  ===========================  ====================================================
tracker         extra                        where it writes (offline / local by default)
==============  ===========================  ====================================================
tensorboard     ``rlvr[tensorboard]``        ``<run>/tensorboard/`` event files; samples as text
wandb           ``rlvr[wandb]``              ``<run>/wandb/``; offline unless ``WANDB_MODE`` is set
                                             or an API key is configured; samples as a wandb.Table
mlflow          ``rlvr[mlflow]``             ``MLFLOW_TRACKING_URI`` if set, else the file store
                                             ``<run>/mlruns/`` (``mlflow ui --backend-store-uri``
                                             it with ``MLFLOW_ALLOW_FILE_STORE=true``); samples as
                                             JSON artifacts
trackio         ``rlvr[trackio]``            trackio's local store (``TRACKIO_DIR``, default
                                             ``~/.cache/huggingface/trackio``); samples as a Table
==============  ===========================  ====================================================

The tracker's run is named after the run folder and filed under ``logging.project``; its id is
kept in ``<run>/trackers.json``, so ``rlvr train --resume`` continues the same tracker run.
A tracker whose package is missing is a one-line error naming the pip command
(:func:`require_trackers`, called before anything is built).
"""

from __future__ import annotations

import json
import math
import os
import secrets
import sys
from pathlib import Path

IDS_FILE = "trackers.json"
SAMPLE_COLUMNS = ("prompt", "answer", "completion", "reward")


def require_trackers(names) -> None:
    """Raise a one-line ``ValueError`` with the pip command for the first tracker not installed."""
    from rlvr.extras import TRACKER_EXTRAS, require

    for name in names:
        module, extra = TRACKER_EXTRAS[name]
        require(module, extra, f"logging.report_to: {name}", " (or drop it from logging.report_to)")


def numeric(record: dict) -> dict[str, float]:
    """The finite int/float values of a record, ``step`` excluded (booleans are not metrics)."""
    out = {}
    for k, v in record.items():
        if k == "step" or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(v):
            out[k] = float(v) if isinstance(v, float) else v
    return out


class Tracker:
    name = "tracker"

    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def log_samples(self, step: int, rows: list[dict]) -> None: ...

    def close(self) -> None: ...


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def __init__(self, run_dir: Path, config, ids: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.dir = run_dir / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.dir))
        if not ids.get("tensorboard"):
            self.writer.add_text("config", "```yaml\n" + _yaml(config) + "\n```", 0)
            ids["tensorboard"] = "tensorboard"

    def log(self, step, metrics):
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def log_samples(self, step, rows):
        self.writer.add_text("samples", markdown_table(rows), step)
        self.writer.flush()

    def close(self):
        self.writer.close()


class WandbTracker(Tracker):
    name = "wandb"

    def __init__(self, run_dir: Path, config, ids: dict):
        import wandb

        self.wandb = wandb
        mode = os.environ.get("WANDB_MODE") or (None if _wandb_logged_in() else "offline")
        run_id = ids.get("wandb") or secrets.token_hex(4)  # never the training RNGs
        self.run = wandb.init(project=config.logging.project, name=run_dir.name, id=run_id, resume="allow",
                              dir=str(run_dir), config=config.to_dict(), mode=mode,
                              settings=wandb.Settings(console="off", silent=True))
        ids["wandb"] = run_id
        self.step = -1

    def log(self, step, metrics):
        if step < self.step:  # a resumed run redoes steps W&B already holds: it keeps the first ones
            return
        self.step = step
        self.run.log(metrics, step=step)

    def log_samples(self, step, rows):
        if step < self.step:
            return
        table = self.wandb.Table(columns=list(SAMPLE_COLUMNS), data=[[r.get(c) for c in SAMPLE_COLUMNS] for r in rows])
        self.step = step
        self.run.log({"samples": table}, step=step)

    def close(self):
        self.run.finish()


class MLflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, run_dir: Path, config, ids: dict):
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # MLflow 3 keeps its file store in "maintenance mode", behind this switch
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (run_dir / "mlruns").resolve().as_uri()
        self.client = MlflowClient(tracking_uri=uri)
        self.uri = uri
        run_id = ids.get("mlflow")
        if run_id is None:
            experiment = self.client.get_experiment_by_name(config.logging.project)
            exp_id = experiment.experiment_id if experiment is not None else \
                self.client.create_experiment(config.logging.project)
            run_id = self.client.create_run(exp_id, run_name=run_dir.name).info.run_id
            from mlflow.entities import Param

            params = [Param(k, str(v)[:500]) for k, v in _flatten(config.to_dict()).items()]
            for i in range(0, len(params), 100):
                self.client.log_batch(run_id, params=params[i:i + 100])
            self.client.log_dict(run_id, config.to_dict(), "config.yaml")
        else:
            self.client.update_run(run_id, status="RUNNING")
        ids["mlflow"] = run_id
        self.run_id = run_id

    def log(self, step, metrics):
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(_mlflow_key(k), float(v), ts, step) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i:i + 1000])

    def log_samples(self, step, rows):
        self.client.log_dict(self.run_id, rows, f"samples/step_{step:06d}.json")

    def close(self):
        self.client.set_terminated(self.run_id)


class TrackioTracker(Tracker):
    name = "trackio"

    def __init__(self, run_dir: Path, config, ids: dict):
        import trackio

        self.trackio = trackio
        name = ids.get("trackio") or run_dir.name
        self.run = trackio.init(project=config.logging.project, name=name, config=config.to_dict(),
                                resume="allow", embed=False, auto_log_gpu=False, auto_log_cpu=False)
        ids["trackio"] = name

    def log(self, step, metrics):
        self.run.log(metrics, step=step)

    def log_samples(self, step, rows):
        table = self.trackio.Table(columns=list(SAMPLE_COLUMNS), data=[[r.get(c) for c in SAMPLE_COLUMNS] for r in rows])
        self.run.log({"samples": table}, step=step)

    def close(self):
        self.run.finish()


TRACKERS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MLflowTracker,
            "trackio": TrackioTracker}


class Trackers:
    """The trackers of a run, fed by :class:`~rlvr.records.logger.RunLogger`; a failing one is switched off."""

    def __init__(self, trackers: list[Tracker]):
        self.trackers = list(trackers)

    def _each(self, method: str, *args) -> None:
        for t in list(self.trackers):
            try:
                getattr(t, method)(*args)
            except Exception as err:  # noqa: BLE001 - a tracker must not stop the run
                self.trackers.remove(t)
                print(f"warning: tracker {t.name} failed and is switched off ({type(err).__name__}: "
                      f"{' '.join(str(err).split())[:200]}); metrics.jsonl has everything", file=sys.stderr)

    def log(self, record: dict) -> None:
        step = record.get("step")
        metrics = numeric(record)
        if isinstance(step, int) and metrics:
            self._each("log", step, metrics)

    def log_samples(self, step: int, rows: list[dict]) -> None:
        if rows:
            self._each("log_samples", step, rows)

    def close(self) -> None:
        self._each("close")
        self.trackers = []


def open_trackers(config, run_dir: Path) -> Trackers | None:
    """The trackers ``logging.report_to`` names, opened on ``run_dir`` (ids kept in trackers.json)."""
    names = list(config.logging.report_to)
    if not names:
        return None
    require_trackers(names)
    run_dir = Path(run_dir)
    path = run_dir / IDS_FILE
    ids = json.loads(path.read_text()) if path.is_file() else {}
    opened = []
    try:
        for name in names:
            opened.append(TRACKERS[name](run_dir, config, ids))
    except Exception:
        for t in opened:
            try:
                t.close()
            except Exception:  # noqa: BLE001 - already failing
                pass
        raise
    from rlvr.utils import atomic_write_text

    atomic_write_text(path, json.dumps(ids, indent=1) + "\n")
    return Trackers(opened)


# ------------------------------------------------------------------------------------------------


def markdown_table(rows: list[dict]) -> str:
    def cell(v) -> str:
        text = f"{v:.4g}" if isinstance(v, float) else str(v)
        return text.replace("|", "\\|").replace("\n", "⏎")

    lines = ["| " + " | ".join(SAMPLE_COLUMNS) + " |", "|" + "---|" * len(SAMPLE_COLUMNS)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in SAMPLE_COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def _yaml(config) -> str:
    import yaml

    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _mlflow_key(key: str) -> str:
    """MLflow metric names allow letters, digits, ``_ - . / :`` and spaces; anything else becomes ``_``."""
    return "".join(c if c.isalnum() or c in "_-./: " else "_" for c in key)


def _wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False
