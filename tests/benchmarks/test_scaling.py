"""benchmarks/scaling.py: the cells of its table, and a smallest end-to-end run (rlvr side only, a tiny
model; the numbers mean nothing, the tables and the JSON must be there)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_cells_vary_one_thing_at_a_time():
    import scaling

    cells = scaling.cells([32, 128, 512], [100, 32768, 151936])
    assert cells == [("length", 32768, 32), ("length", 32768, 128), ("length", 32768, 512),
                     ("vocab", 100, 128), ("vocab", 151936, 128)]  # the base cell (32k, 128) once


@pytest.mark.slow
def test_smallest_run(tmp_path):
    out = tmp_path / "scaling.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scaling.py"), "--tiny", "--no-trl", "--threads", "1",
                           "--lengths", "8", "--vocabs", "100,300", "--base-vocab", "300", "--base-length", "8",
                           "--warmup", "1", "--steps", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "growth from each axis" in proc.stdout and "V=100, C=8" in proc.stdout, proc.stdout
    report = json.loads(out.read_text())
    cells = {(c["V"], c["C"]): c for c in report["cells"]}
    assert set(cells) == {(300, 8), (100, 8)}  # two cells: the base, and one step along the vocabulary
    assert cells[(300, 8)]["axes"] == ["length", "vocab"]
    for c in cells.values():
        rl = c["sides"]["rlvr"]
        assert rl["parts"]["wall"] > 0 and rl["peak_rss_mib"] > rl["rss_loaded_mib"] > 0
