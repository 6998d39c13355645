"""CPU threads: how many torch uses, and how OpenMP waits when the cores are shared.

PyTorch's CPU kernels run on OpenMP (libgomp on Linux). Between parallel regions libgomp's
threads spin for a while before they sleep. Alone on a machine that is the fastest choice; beside
another process that also runs several threads, the spinning threads steal the cores the other
side's threads are waiting for, and both collapse. Measured on our 2-core machine, default recipe,
``python benchmarks/oversubscription.py --steps 12`` (median s/step; "load": beside a process
multiplying matrices with 2 threads; docs/reliability.md has the whole table):

    2 threads, libgomp default         alone 0.53   under load 3.97  (7.4x)
    2 threads, GOMP_SPINCOUNT=1000     alone 0.61   under load 1.27  (2.1x)
    2 threads, OMP_WAIT_POLICY=PASSIVE alone 1.00   under load 1.65
    1 thread                           alone 0.70   under load 1.39

So rlvr keeps libgomp's default when the cores are free and, when other work is already
running as a command starts, shortens the spin (``GOMP_SPINCOUNT=1000``: spin briefly, then
sleep), which keeps most of the speed and avoids the collapse. This must happen before torch
is imported (libgomp reads its environment once), so the CLI calls :func:`configure_openmp`
first. A user's own ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` is never overridden.
``run.threads`` sets torch's thread count (default: torch's own, all cores or ``OMP_NUM_THREADS``).
"""

from __future__ import annotations

import os
import sys
import time

#: the spin count used on a busy machine (libgomp's own default is 300000 when not oversubscribed)
BUSY_SPINCOUNT = "1000"
#: at least this many cores busy with other work (as a command starts) counts as a busy machine
BUSY_CORES = 0.5
_USER_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
#: what :func:`configure_openmp` did in this process, for the run's first lines (None: nothing)
NOTE: str | None = None


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies over all cores since boot, from /proc/stat (None off Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(interval: float = 0.2) -> float:
    """How many cores other processes keep busy right now (sampled over ``interval`` seconds)."""
    a = _cpu_times()
    if a is None:
        return 0.0
    time.sleep(interval)
    b = _cpu_times()
    if b is None or b[1] <= a[1]:
        return 0.0
    return (os.cpu_count() or 1) * (b[0] - a[0]) / (b[1] - a[1])


def configure_openmp(environ=os.environ, busy: float | None = None) -> str | None:
    """Shorten OpenMP's spin-waiting when other work is running; returns (and keeps in ``NOTE``) a
    note when it did, which the training loop prints as it starts.

    Does nothing once torch is imported (too late to matter), when the user set
    ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``, or when the cores are free.
    """
    if "torch" in sys.modules or any(v in environ for v in _USER_VARS):
        return None
    busy = busy_cores() if busy is None else busy
    if busy < BUSY_CORES:
        return None
    global NOTE
    environ["GOMP_SPINCOUNT"] = BUSY_SPINCOUNT
    NOTE = (f"note: other work keeps {busy:.1f} of {os.cpu_count()} cores busy; OpenMP threads will "
            f"spin briefly, then sleep (GOMP_SPINCOUNT={BUSY_SPINCOUNT}) instead of fighting it for "
            "the cores (set OMP_WAIT_POLICY or GOMP_SPINCOUNT yourself to choose; run.threads=N)")
    return NOTE


def apply_threads(threads: int | None) -> int:
    """Set torch's intra-op threads to ``run.threads`` (None: leave torch's default); returns the count."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()
