"""Per-run control groups: the primary memory and process caps, and a way to kill everything.

Detected at run time (:func:`detect`), in this order:

* **cgroup v2** where the unified hierarchy (``/sys/fs/cgroup`` or ``/sys/fs/cgroup/unified``) offers
  both the ``memory`` and ``pids`` controllers and is writable: ``memory.max``, ``memory.swap.max=0``,
  ``pids.max``; ``cgroup.kill`` ends every process; ``memory.peak``, ``memory.events`` (``oom_kill``)
  and ``cpu.stat`` report.
* **cgroup v1** where the ``memory`` and ``pids`` hierarchies are mounted and writable (the hybrid
  layout of the project's machines, where v2 holds only ``hugetlb``): ``memory.limit_in_bytes``
  (plus ``memory.memsw.limit_in_bytes`` when swap accounting exists), ``pids.max``; the processes
  in ``cgroup.procs`` are SIGKILLed until none is left; ``memory.max_usage_in_bytes``,
  ``memory.failcnt`` / ``memory.oom_control`` and ``cpuacct.usage`` (when mounted) report.
* neither (no root, or a container without delegation): :func:`detect` returns ``None`` and the
  sandbox falls back to rlimits, with a warning.

Each run gets its own group ``rlvr-sandbox/<slot>-<n>`` (creating, limiting and removing one costs
well under a millisecond), joined by the launcher shell *before* anything of the program runs.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

__all__ = ["CgroupBackend", "RunGroup", "detect"]

_PARENT = "rlvr-sandbox"
_ROOT = Path("/sys/fs/cgroup")


def _write(path: Path, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _pids(files: list[Path]) -> set[int]:
    out: set[int] = set()
    for f in files:
        for line in _read(f).split():
            if line.isdigit():
                out.add(int(line))
    return out


class RunGroup:
    """The control group(s) of one run: join files for the launcher, reports, kill and removal."""

    def __init__(self, backend: "CgroupBackend", dirs: dict[str, Path]):
        self.backend, self.dirs = backend, dirs

    @property
    def procs_files(self) -> list[Path]:
        """The ``cgroup.procs`` files the launcher writes its pid to (one per hierarchy)."""
        return [d / "cgroup.procs" for d in self.dirs.values()]

    def pids(self) -> set[int]:
        return _pids(self.procs_files)

    def kill(self, timeout: float = 2.0) -> bool:
        """SIGKILL every process in the group; True when the group is empty afterwards."""
        if self.backend.version == 2:
            try:
                _write(self.dirs["unified"] / "cgroup.kill", "1")
            except OSError:
                pass
        end = time.monotonic() + timeout
        while True:
            pids = self.pids()
            if not pids:
                return True
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > end:
                return False
            time.sleep(0.001)

    def peak_memory(self) -> int | None:
        if self.backend.version == 2:
            text = _read(self.dirs["unified"] / "memory.peak").strip()
        else:
            text = _read(self.dirs["memory"] / "memory.max_usage_in_bytes").strip()
        return int(text) if text.isdigit() else None

    def hit_memory_limit(self) -> bool:
        if self.backend.version == 2:
            for line in _read(self.dirs["unified"] / "memory.events").splitlines():
                key, _, value = line.partition(" ")
                if key in ("oom", "oom_kill", "max") and value.strip().isdigit() and int(value) > 0:
                    if key != "max":
                        return True
            return False
        failcnt = _read(self.dirs["memory"] / "memory.failcnt").strip()
        oom = 0
        for line in _read(self.dirs["memory"] / "memory.oom_control").splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                oom = int(value)
        return oom > 0 or (failcnt.isdigit() and int(failcnt) > 0)

    def cpu_seconds(self) -> float | None:
        if self.backend.version == 2:
            for line in _read(self.dirs["unified"] / "cpu.stat").splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec" and value.strip().isdigit():
                    return int(value) / 1e6
            return None
        if "cpuacct" in self.dirs:
            text = _read(self.dirs["cpuacct"] / "cpuacct.usage").strip()
            if text.isdigit():
                return int(text) / 1e9
        return None

    def remove(self) -> bool:
        """Kill what is left and remove the group's directories; False if one could not go."""
        ok = self.kill()
        for d in self.dirs.values():
            for _ in range(200):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.005)
            else:
                ok = False
        return ok


class CgroupBackend:
    """Makes :class:`RunGroup` objects under one parent group per controller hierarchy."""

    def __init__(self, version: int, parents: dict[str, Path]):
        self.version, self.parents = version, parents
        self._counter = 0

    def describe(self) -> str:
        if self.version == 2:
            return f"cgroup v2 at {self.parents['unified']} (memory, pids, cgroup.kill)"
        return "cgroup v1 (" + ", ".join(sorted(self.parents)) + ")"

    def create(self, name: str, memory_bytes: int, pids: int) -> RunGroup:
        self._counter += 1
        dirs: dict[str, Path] = {}
        tag = f"{name}-{os.getpid()}-{self._counter}-{time.monotonic_ns() % 1_000_000}"
        try:
            for ctrl, parent in self.parents.items():
                d = parent / tag
                d.mkdir()
                dirs[ctrl] = d
            if self.version == 2:
                u = dirs["unified"]
                _write(u / "memory.max", str(memory_bytes))
                if (u / "memory.swap.max").exists():
                    _write(u / "memory.swap.max", "0")
                _write(u / "pids.max", str(pids))
            else:
                m = dirs["memory"]
                _write(m / "memory.limit_in_bytes", str(memory_bytes))
                if (m / "memory.memsw.limit_in_bytes").exists():
                    _write(m / "memory.memsw.limit_in_bytes", str(memory_bytes))
                _write(dirs["pids"] / "pids.max", str(pids))
        except OSError:
            RunGroup(self, dirs).remove()
            raise
        return RunGroup(self, dirs)


def _v2_root() -> Path | None:
    for cand in (_ROOT, _ROOT / "unified"):
        ctrls = _read(cand / "cgroup.controllers").split()
        if "memory" in ctrls and "pids" in ctrls:
            return cand
    return None


def detect() -> tuple[CgroupBackend | None, str]:
    """The usable cgroup layout, or ``(None, why not)``. Creates the parent groups."""
    if os.geteuid() != 0:
        return None, "not root: cgroups cannot be created"
    root = _v2_root()
    if root is not None:
        parent = root / _PARENT
        try:
            parent.mkdir(exist_ok=True)
            for level in (root, parent):
                have = _read(level / "cgroup.subtree_control").split()
                need = [c for c in ("memory", "pids", "cpu") if c not in have]
                if need:
                    try:
                        _write(level / "cgroup.subtree_control", " ".join("+" + c for c in need))
                    except OSError:
                        _write(level / "cgroup.subtree_control", "+memory +pids")
            backend = CgroupBackend(2, {"unified": parent})
            backend.create("probe", 1 << 28, 8).remove()
            return backend, ""
        except OSError as err:
            v2_error = f"cgroup v2 at {root} not usable ({err})"
    else:
        v2_error = "no cgroup v2 hierarchy with memory and pids"
    parents: dict[str, Path] = {}
    for ctrl in ("memory", "pids", "cpuacct"):
        base = _ROOT / ctrl
        if not (base / "cgroup.procs").exists():
            continue
        try:
            (base / _PARENT).mkdir(exist_ok=True)
            parents[ctrl] = base / _PARENT
        except OSError:
            continue
    if "memory" in parents and "pids" in parents:
        backend = CgroupBackend(1, parents)
        try:
            backend.create("probe", 1 << 28, 8).remove()
            return backend, ""
        except OSError as err:
            return None, f"{v2_error}; cgroup v1 not writable ({err})"
    return None, f"{v2_error}; no writable cgroup v1 memory+pids hierarchies"
