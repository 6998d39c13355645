"""Small shared helpers: atomic writes, seeding, RNG state."""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see either the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line and flush it to disk (a crash loses at most the line being written)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict]:
    """Read a JSONL file, skipping a torn last line left by a crash."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def run_metadata() -> dict:
    """What a run was made with: git commit and dirty flag of the rlvr checkout (None when rlvr
    is not installed from a git checkout), package versions, host and start time."""
    import datetime
    import platform
    import subprocess
    import sys

    import rlvr

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=Path(rlvr.__file__).resolve().parent, capture_output=True,
                                 text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    versions = {"python": platform.python_version(), "rlvr": rlvr.__version__, "torch": torch.__version__}
    for name in ("transformers", "numpy"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None,
            "versions": versions, "host": platform.node(), "argv": sys.argv,
            "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def write_run_meta(run_dir: Path, resumed: bool = False) -> None:
    """``meta.json`` in a run folder: :func:`run_metadata` at the start, plus one entry per resume."""
    path = Path(run_dir) / "meta.json"
    meta = run_metadata()
    if resumed and path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = None
        if isinstance(old, dict):
            old.setdefault("resumes", []).append(meta)
            meta = old
    atomic_write_text(path, json.dumps(meta, indent=2) + "\n")
