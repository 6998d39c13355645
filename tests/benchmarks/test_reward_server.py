"""benchmarks/reward_server.py --quick: the server starts in its own process, the remote values equal the
in-process ones (the benchmark checks), and it prints samples/s for each concurrency (the numbers mean
nothing here)."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_prints_throughput_beside_the_in_process_baseline():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "reward_server.py"), "--quick"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    rates = dict(re.findall(r"^\s+(in-process verifier|remote, \d+ in flight)\s+([\d,]+) samples/s", proc.stdout, re.M))
    assert set(rates) == {"in-process verifier", "remote, 1 in flight", "remote, 4 in flight"}, proc.stdout
    assert all(int(v.replace(",", "")) > 0 for v in rates.values())
    assert "x the in-process time" in proc.stdout
