"""The house's rooms hold: the layer contract and the no-cycle contract in pyproject.toml ([tool.importlinter]).

``lint-imports`` (import-linter) reads every import of ``src/rlvr``, those inside functions too, so a
lazy import is no way around a layer. The second test shows the check can fail: a copy of the package
with one import that runs back up (inside a function) and one cycle inside a room is refused.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
        "sys.exit(lint_imports_command())", "--no-cache"]


def _lint(src: Path, config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*LINT, "--config", str(config)], cwd=src.parent, capture_output=True, text=True,
                          env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"})


def test_rooms_are_layered_and_acyclic():
    done = _lint(ROOT / "src", ROOT / "pyproject.toml")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "2 kept, 0 broken" in done.stdout


def test_the_contract_refuses_an_import_that_runs_back_up_or_a_cycle(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "rlvr", src / "rlvr", ignore=shutil.ignore_patterns("__pycache__"))
    with open(src / "rlvr" / "algorithms" / "kl.py", "a") as f:  # algorithms (bottom) -> train (top), lazily
        f.write("\n\ndef _back_up():\n    from rlvr.train.loop import train  # noqa: F401\n")
    with open(src / "rlvr" / "models" / "forward.py", "a") as f:  # forward <- prefix, and now forward -> prefix
        f.write("\n\ndef _cycle():\n    from rlvr.models.prefix import prefix_groups  # noqa: F401\n")
    done = _lint(src, ROOT / "pyproject.toml")
    assert done.returncode != 0
    assert "rlvr.algorithms.kl -> rlvr.train.loop" in done.stdout
    assert "0 kept, 2 broken" in done.stdout
