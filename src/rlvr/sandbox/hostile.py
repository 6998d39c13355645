"""The hostile-program suite: programs that attack the judge, and the host invariants checked after each.

The attacks are the table of ``../shared/design/sandbox.md`` section 4 (resource exhaustion R*,
escape and exfiltration E*, interpreter tricks I*). Each attack is a real program run in the real
sandbox with the suite's limits (:data:`SUITE_LIMITS`). It passes when

* its status is one of the expected ones (and its own check of the output holds: e.g. every
  forbidden read printed an error), and
* it is **contained**: it is judged wrong against a test whose expected output (a random nonce) it
  cannot know; the trainer's canary secret (an environment variable) never appears in its output;
  the canary file is unchanged; the canary TCP listener on 127.0.0.1 and the canary AF_UNIX socket got
  no connection; the canary process is alive; no process of the run is left (slot uids / the run's
  cgroups); and it ended within the wall limit plus a grace.

Nothing here aims at an address outside the loopback range: the only network targets are the suite's
own listeners on 127.0.0.1 (and its own unix socket). ``rlvr sandbox check`` prints the table of
:func:`run_suite`; the tests under ``tests/sandbox/`` assert every row.
"""

from __future__ import annotations

import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from rlvr.sandbox.core import MAX_SLOTS, Limits, Result, Sandbox
from rlvr.sandbox.verifier import CodeVerifier, outputs_match

__all__ = ["ATTACKS", "SUITE_LIMITS", "Attack", "AttackReport", "Canaries", "format_table", "run_suite"]

#: Limits the suite runs under (small, so the whole suite takes well under a minute).
SUITE_LIMITS = Limits(cpu_s=1.0, wall_s=3.0, memory_mb=256, pids=64, tmpfs_mb=16, fsize_mb=8, nofile=64,
                      stdout_bytes=1 << 20, stderr_bytes=1 << 20)
#: Extra seconds allowed over the wall limit (start-up and teardown on a loaded 2-core machine).
GRACE_S = 3.0


@dataclass(frozen=True)
class Attack:
    """One hostile program. ``code`` may use ``@PORT@``, ``{canary_file}``, ``@CANARY_PID@``,
    ``{checkout}``, ``{unix_sock}``, ``{home}``, ``{prefix}`` (filled in by the suite).

    ``expect``: acceptable statuses. ``check(result)``: an extra condition on the output (True = as
    it should be). ``before``: a program run first in a separate sandbox (E16). ``test``: an
    ``(input, output)`` pair the program must still *fail* (I1, I2: right output, wrong exit).
    ``verify_only``: judged by the verifier alone (I7: it must not run at all).
    """

    id: str
    title: str
    code: str
    expect: tuple[str, ...]
    language: str = "python"
    check: Callable[[Result], bool] | None = None
    before: str | None = None
    test: tuple[str, str] | None = None
    verify_only: bool = False
    stdin: str = ""


def _has(*needles: str) -> Callable[[Result], bool]:
    return lambda r: all(n in r.stdout for n in needles)


def _lacks(*needles: str) -> Callable[[Result], bool]:
    return lambda r: not any(n in r.stdout for n in needles)


def _all_denied(r: Result) -> bool:
    lines = [line for line in r.stdout.splitlines() if line.strip()]
    return bool(lines) and all(line.startswith("DENIED") for line in lines)


_TRY = '''
import os, sys, errno
def attempt(label, fn):
    try:
        out = fn()
        print("ALLOWED", label, repr(out)[:200])
    except Exception as e:
        print("DENIED", label, type(e).__name__, errno.errorcode.get(getattr(e, "errno", None) or 0, ""))
'''

ATTACKS: tuple[Attack, ...] = (
    # ------------------------------------------------------------------ resource exhaustion
    Attack("R1", "fork bomb (os.fork loop)", "import os\nwhile True:\n    os.fork()\n",
           ("runtime_error", "timeout", "killed", "memory")),
    Attack("R2", "shell fork bomb :(){ :|:& };:", ":(){ :|:& };:\n:\nsleep 5\n",
           ("ok", "runtime_error", "timeout", "killed"), language="bash"),
    Attack("R3", "memory bomb (16 MiB bytearrays)", "a = []\nwhile True:\n    a.append(bytearray(16 << 20))\n",
           ("memory",)),
    Attack("R4", "mmap + touch every page",
           "import mmap\nm = mmap.mmap(-1, 2 << 30, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)\n"
           "for i in range(0, 2 << 30, 4096):\n    m[i] = 1\n", ("memory",)),
    Attack("R5", "CPU spin", "while True:\n    pass\n", ("timeout",)),
    Attack("R6", "sleep forever / block on own pipe",
           "import os, time\nr, w = os.pipe()\nos.read(r, 1)\ntime.sleep(10**9)\n", ("timeout",)),
    Attack("R7", "32 spinning threads",
           "import threading\nthreading.stack_size(256 << 10)\ndef spin():\n    while True:\n        pass\n"
           "for _ in range(32):\n    threading.Thread(target=spin, daemon=True).start()\n"
           "threading.Event().wait()\n", ("timeout",)),
    Attack("R8", "thread bomb (100k threads)",
           "import threading, time\nfor _ in range(100_000):\n"
           "    threading.Thread(target=time.sleep, args=(100,), daemon=True).start()\n",
           ("runtime_error", "memory")),
    Attack("R9", "fill the disk",
           "import errno\ni = 0\ntry:\n    while True:\n        with open(f'/tmp/f{i}', 'wb') as f:\n"
           "            f.write(b'x' * (4 << 20))\n        i += 1\n"
           "except OSError as e:\n    print(errno.errorcode[e.errno], i)\n", ("ok",), check=_has("ENOSPC")),
    Attack("R10", "100 GB file via truncate / seek",
           "import errno, os\ntry:\n    os.truncate(open('/tmp/big', 'wb').fileno(), 100 << 30)\n"
           "except OSError as e:\n    print(errno.errorcode[e.errno])\n"
           "try:\n    f = open('/tmp/big2', 'wb'); f.seek(100 << 30); f.write(b'x'); f.flush()\n"
           "except OSError as e:\n    print(errno.errorcode[e.errno])\n", ("ok",), check=_has("EFBIG")),
    Attack("R11", "endless stdout", "while True:\n    print('x' * 10**6)\n", ("output_limit",)),
    Attack("R12", "endless stderr", "import sys\nwhile True:\n    sys.stderr.write('x' * 10**6)\n",
           ("output_limit",)),
    Attack("R13", "deep recursion through C frames (recursion limit 10**7)",
           "import sys\nsys.setrecursionlimit(10**7)\ndef f(n):\n    return list(map(f, [n + 1]))\nf(0)\n",
           ("killed", "runtime_error", "memory")),
    Attack("R14", "open 100k files and pipes",
           "import os\nfds = []\nfor i in range(100_000):\n    fds.append(os.open('/dev/null', os.O_RDONLY))\n",
           ("runtime_error",)),
    # ------------------------------------------------------------------ escape / exfiltration
    Attack("E1", "read /etc/shadow, /etc/passwd",
           _TRY + "attempt('shadow', lambda: open('/etc/shadow').read())\n"
                  "attempt('passwd', lambda: open('/etc/passwd').read())\n", ("ok",), check=_all_denied),
    Attack("E2", "read the trainer's files (canary, checkout, ~/.cache, venv)",
           _TRY + "attempt('canary', lambda: open(@CANARY_FILE@).read())\n"
                  "attempt('checkout', lambda: os.listdir(@CHECKOUT@))\n"
                  "attempt('cache', lambda: os.listdir(@HOME@ + '/.cache'))\n"
                  "attempt('prefix', lambda: os.listdir(@PREFIX@))\n", ("ok",), check=_all_denied),
    Attack("E3", "dump os.environ", "import os\nfor k, v in sorted(os.environ.items()):\n    print(k, v)\n",
           ("ok",)),
    Attack("E4", "/proc/1/environ, /proc/*/cmdline, mountinfo",
           "import os\nprint('ENV1', repr(open('/proc/1/environ', 'rb').read()))\n"
           "pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\nprint('PIDS', pids)\n"
           "for p in pids:\n    try:\n        print('CMD', p, open('/proc/%d/cmdline' % p, 'rb').read())\n"
           "    except OSError:\n        pass\nprint(open('/proc/self/mountinfo').read())\n", ("ok",),
           check=lambda r: "ENV1 b''" in r.stdout and all(
               int(x) < 20 for x in r.stdout.split("PIDS [", 1)[1].split("]", 1)[0].split(",") if x.strip())),
    Attack("E5", "write /usr/x, /x, ../../x, /dev, /dev/shm, /proc/sys",
           _TRY + "attempt('usr', lambda: open('/usr/x', 'w').write('x'))\n"
                  "attempt('root', lambda: open('/x', 'w').write('x'))\n"
                  "attempt('dotdot', lambda: open('../../x', 'w').write('x'))\n"
                  "attempt('canary', lambda: open(@CANARY_FILE@, 'w').write('pwned'))\n"
                  "attempt('dev', lambda: open('/dev/x', 'w').write('x'))\n"
                  "attempt('devshm', lambda: open('/dev/shm/x', 'wb').write(b'x' * (4 << 20)))\n"
                  "attempt('hostname', lambda: open('/proc/sys/kernel/hostname', 'w').write('pwned'))\n",
           ("ok",), check=_all_denied),
    Attack("E6", "TCP/UDP to the host's 127.0.0.1 listener; list interfaces",
           _TRY + "import socket\n"
                  "attempt('tcp', lambda: socket.create_connection(('127.0.0.1', @PORT@), timeout=1))\n"
                  "attempt('udp', lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', @PORT@)))\n"
                  "attempt('tcp6', lambda: socket.create_connection(('::1', @PORT@), timeout=1))\n"
                  "ifs = [l.split(':')[0].strip() for l in open('/proc/net/dev').read().splitlines()[2:]]\n"
                  "print('DENIED-IFS' if ifs == ['lo'] else 'ALLOWED-IFS', ifs)\n", ("ok",), check=_all_denied),
    Attack("E7", "other socket families (raw, packet, netlink, inet6)",
           _TRY + "import socket\n"
                  "attempt('raw', lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, 1))\n"
                  "attempt('packet', lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW))\n"
                  "attempt('netlink', lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW))\n"
                  "attempt('inet6', lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM))\n",
           ("ok",), check=_all_denied),
    Attack("E8", "AF_UNIX connect to host sockets",
           _TRY + "import socket\n"
                  "def c(p):\n    s = socket.socket(socket.AF_UNIX); s.connect(p); return p\n"
                  "for p in [@UNIX_SOCK@, '/run/docker.sock', '/var/run/docker.sock', '/run/systemd/private',"
                  " '/tmp/.X11-unix/X0', '/run/dbus/system_bus_socket']:\n    attempt(p, lambda: c(p))\n",
           ("ok",), check=_all_denied),
    Attack("E9", "kill the parent, kill(-1), kill the canary pid",
           "import os, signal\nfor pid in (os.getppid(), -1, @CANARY_PID@, 1):\n    try:\n"
           "        os.kill(pid, signal.SIGKILL)\n    except OSError as e:\n        print('DENIED', pid, e)\n",
           ("ok", "killed", "runtime_error")),
    Attack("E10", "ptrace(PTRACE_ATTACH, 1) via ctypes",
           "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
           "rc = libc.ptrace(16, 1, 0, 0)\nprint('ptrace', rc, os.strerror(ctypes.get_errno()))\n"
           "rc = libc.ptrace(16, os.getppid(), 0, 0)\nprint('ptrace-parent', rc, os.strerror(ctypes.get_errno()))\n",
           ("ok",), check=lambda r: r.stdout.count(" -1 Operation not permitted") == 2),
    Attack("E11", "ignore SIGTERM/SIGXCPU, SIGSTOP itself",
           "import os, signal\nfor s in (signal.SIGTERM, signal.SIGXCPU, signal.SIGINT):\n"
           "    signal.signal(s, signal.SIG_IGN)\nos.kill(os.getpid(), signal.SIGSTOP)\n", ("timeout",)),
    Attack("E12", "setsid + double fork, sleep 30, then write",
           "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
           "        time.sleep(30)\n        open('/tmp/survived', 'w').write('x')\n    os._exit(0)\nprint('parent done')\n",
           ("ok",)),
    Attack("E13", "unshare, mount, nested user namespace, chroot",
           "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
           "for name, rc in [('unshare-user', libc.unshare(0x10000000)), ('unshare-mnt', libc.unshare(0x00020000)),"
           " ('mount', libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)), ('chroot', libc.chroot(b'/tmp')),"
           " ('setns', libc.setns(0, 0))]:\n"
           "    print('DENIED' if rc != 0 else 'ALLOWED', name, os.strerror(ctypes.get_errno()))\n",
           ("ok",), check=_all_denied),
    Attack("E14", "run setuid binaries (su, mount)",
           "import subprocess\nfor cmd in (['su', '-c', 'id'], ['mount', '-t', 'tmpfs', 'none', '/tmp'], ['id', '-u']):\n"
           "    try:\n        p = subprocess.run(cmd, capture_output=True, text=True, timeout=1)\n"
           "        print(cmd[0], p.returncode, p.stdout.strip())\n    except Exception as e:\n        print(cmd[0], 'error', e)\n",
           ("ok",), check=lambda r: "uid=0" not in r.stdout and "\nid 0 0" not in "\n" + r.stdout
           and "mount 0" not in r.stdout),
    Attack("E15", "search the filesystem for expected outputs",
           "import os\nfor top in ('/tmp', '/usr', '/proc/self', '/dev'):\n"
           "    for root, dirs, files in os.walk(top):\n        for f in files:\n"
           "            try:\n                if b'RLVR-EXPECTED' in open(os.path.join(root, f), 'rb').read(1 << 16):\n"
           "                    print('FOUND', root, f)\n            except Exception:\n                pass\nprint('done')\n",
           ("ok", "timeout"), check=_lacks("FOUND")),
    Attack("E16", "leave /tmp/state for the next run",
           "import os\nprint('LEFTOVER' if os.path.exists('/tmp/state') else 'fresh', sorted(os.listdir('/tmp')))\n",
           ("ok",), before="open('/tmp/state', 'w').write('secret')\nprint('planted')\n", check=_has("fresh")),
    # ------------------------------------------------------------------ interpreter tricks
    Attack("I1", "os._exit(0) before printing", "import os\nos._exit(0)\nprint(42)\n", ("ok",),
           test=("", "42")),
    Attack("I2", "right output, then sys.exit(3)", "import sys\nprint(42)\nsys.exit(3)\n", ("runtime_error",),
           test=("", "42")),
    Attack("I3", "close stdout, keep computing",
           "import os\nos.close(1)\nx = sum(range(10**6))\ntry:\n    print(x)\nexcept OSError:\n    pass\n",
           ("ok", "runtime_error")),
    Attack("I4", "binary garbage: random bytes, NUL, \\r, ANSI, invalid UTF-8",
           "import os, sys\nsys.stdout.buffer.write(os.urandom(4096) + b'\\x00\\r\\x1b[31m\\xff\\xfe42\\n')\n",
           ("ok",)),
    Attack("I5", "read stdin forever", "while True:\n    input()\n", ("runtime_error", "timeout"), stdin="1\n2\n"),
    Attack("I6", "ctypes NULL dereference", "import ctypes\nctypes.string_at(0)\n", ("killed",)),
    Attack("I7", "1 MB source / no code at all", "x = 1\n" * 200_000, ("invalid_code",), verify_only=True),
)


@dataclass
class AttackReport:
    id: str
    title: str
    status: str
    expected: tuple[str, ...]
    as_expected: bool
    contained: bool
    violations: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def passed(self) -> bool:
        return self.as_expected and self.contained


class Canaries:
    """Host-side tripwires: an env secret, a file, a TCP listener on 127.0.0.1, a unix socket, a process."""

    def __init__(self) -> None:
        self.secret = "RLVR-CANARY-" + secrets.token_hex(16)
        self.nonce = "RLVR-EXPECTED-" + secrets.token_hex(16)
        self._old_env = os.environ.get("RLVR_CANARY_SECRET")
        os.environ["RLVR_CANARY_SECRET"] = self.secret
        self.dir = Path(tempfile.mkdtemp(prefix="rlvr-canary-"))
        self.file = self.dir / "canary.txt"
        self.file_content = self.secret + "\n"
        self.file.write_text(self.file_content)
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(8)
        self.tcp.setblocking(False)
        self.port = self.tcp.getsockname()[1]
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", self.port))
        self.udp.setblocking(False)
        self.unix_path = str(self.dir / "canary.sock")
        self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.unix.bind(self.unix_path)
        os.chmod(self.unix_path, 0o777)
        os.chmod(self.dir, 0o755)
        self.unix.listen(8)
        self.unix.setblocking(False)
        self.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def fill(self, code: str) -> str:
        for token, value in (("@PORT@", str(self.port)), ("@CANARY_PID@", str(self.proc.pid)),
                             ("@CANARY_FILE@", repr(str(self.file))), ("@CHECKOUT@", repr(os.getcwd())),
                             ("@UNIX_SOCK@", repr(self.unix_path)), ("@HOME@", repr(str(Path.home()))),
                             ("@PREFIX@", repr(sys.prefix))):
            code = code.replace(token, value)
        return code

    def violations(self) -> list[str]:
        out = []
        for name, sock in (("tcp listener", self.tcp), ("unix socket", self.unix)):
            try:
                conn, _ = sock.accept()
                conn.close()
                out.append(f"the canary {name} got a connection")
            except (BlockingIOError, OSError):
                pass
        try:
            self.udp.recvfrom(64)
            out.append("the canary udp socket got a datagram")
        except (BlockingIOError, OSError):
            pass
        try:
            if self.file.read_text() != self.file_content:
                out.append("the canary file changed")
        except OSError:
            out.append("the canary file is gone")
        if self.proc.poll() is not None:
            out.append("the canary process died")
        return out

    def close(self) -> None:
        for s in (self.tcp, self.udp, self.unix):
            s.close()
        self.proc.kill()
        self.proc.wait()
        if self._old_env is None:
            os.environ.pop("RLVR_CANARY_SECRET", None)
        else:
            os.environ["RLVR_CANARY_SECRET"] = self._old_env
        for p in self.dir.iterdir():
            p.unlink()
        self.dir.rmdir()


def leftover_processes(sandbox: Sandbox) -> list[str]:
    """Processes of this trainer's sandbox runs still alive (slot uids, or the trainer's run cgroups)."""
    uids = {str(sandbox.uid(s)) for s in range(MAX_SLOTS)} if sandbox.uid(0) is not None else set()
    tag = f"-{os.getpid()}-"
    grouped = bool(sandbox.caps.present.get("cgroup"))
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
            cgroup = Path(f"/proc/{entry}/cgroup").read_text()
        except OSError:
            continue
        uid = next((line.split()[1] for line in status.splitlines() if line.startswith("Uid:")), "")
        # with cgroups: the processes in this trainer's run groups (other trainers' runs are theirs);
        # without: every process of a slot uid
        if ("rlvr-sandbox/slot" in cgroup and tag in cgroup) if grouped else uid in uids:
            name = next((line.split(None, 1)[1] for line in status.splitlines() if line.startswith("Name:")), "?")
            out.append(f"pid {entry} ({name.strip()}, uid {uid})")
    return out


def run_attack(attack: Attack, sandbox: Sandbox, verifier: CodeVerifier, canaries: Canaries,
               limits: Limits = SUITE_LIMITS) -> AttackReport:
    from rlvr.sandbox.languages import get_language

    lang = get_language(attack.language)
    code = canaries.fill(attack.code) if not attack.verify_only else attack.code
    violations: list[str] = []
    t0 = time.monotonic()
    if attack.verify_only:
        verdict = verifier.verify(code, [{"input": "", "output": canaries.nonce}], attack.language)
        status = verdict.status
        if verdict.runs:
            violations.append(f"it ran ({verdict.runs} sandbox runs) instead of being rejected")
        if verdict.correct:
            violations.append("judged correct")
        wall = time.monotonic() - t0
        # the no-code-block half of I7
        empty = verifier.verify("", [{"input": "", "output": canaries.nonce}], attack.language)
        if empty.status != "invalid_code" or empty.runs:
            violations.append(f"an empty program gave {empty.status} after {empty.runs} runs")
    else:
        if attack.before:
            sandbox.run(list(lang.run), b"", limits, {lang.filename: canaries.fill(attack.before)})
        stdin = attack.test[0] if attack.test else attack.stdin
        result = sandbox.run(list(lang.run), stdin, limits, {lang.filename: code})
        wall = time.monotonic() - t0
        status = result.status
        expected_output = attack.test[1] if attack.test else canaries.nonce
        judged_ok = status == "ok" and outputs_match(result.stdout, expected_output)
        if judged_ok:
            violations.append("judged correct")
        for stream in (result.stdout, result.stderr):
            if canaries.secret in stream:
                violations.append("the canary secret leaked into its output")
            if canaries.nonce in stream:
                violations.append("the expected output leaked into the sandbox")
        if attack.check is not None and status in attack.expect and not attack.check(result):
            violations.append(f"output check failed: {result.stdout[:300]!r}")
        if attack.id == "E3":
            keys = {line.split(" ", 1)[0] for line in result.stdout.splitlines() if line}
            from rlvr.sandbox.core import ALLOWED_ENV

            extra = keys - set(ALLOWED_ENV) - {"PWD", "SHLVL", "_"}
            if extra:
                violations.append(f"environment variables beyond the allow-list: {sorted(extra)}")
        if wall > limits.wall + GRACE_S:
            violations.append(f"took {wall:.1f}s > wall {limits.wall:.1f}s + {GRACE_S:.0f}s")
        if status == "sandbox_error":
            violations.append(f"sandbox error: {result.detail}")
    violations += canaries.violations()
    left = leftover_processes(sandbox)
    if left:
        violations.append("processes left: " + ", ".join(left[:5]))
    as_expected = status in attack.expect and not any(v.startswith("output check") for v in violations)
    contained = not [v for v in violations if not v.startswith("output check")]
    return AttackReport(attack.id, attack.title, status, attack.expect, as_expected, contained, violations, wall)


def run_suite(sandbox: Sandbox | None = None, attacks: tuple[Attack, ...] = ATTACKS,
              limits: Limits = SUITE_LIMITS, progress: Callable[[AttackReport], None] | None = None,
              require_isolation: bool = False) -> list[AttackReport]:
    """Run every attack (sequentially) with host invariants checked after each."""
    sandbox = sandbox or Sandbox(require_isolation=require_isolation, slots=1)
    verifier = CodeVerifier(sandbox, limits=limits)
    canaries = Canaries()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reports = []
    try:
        for attack in attacks:
            from rlvr.sandbox.languages import get_language

            ok, why = get_language(attack.language).available()
            if not ok:
                reports.append(AttackReport(attack.id, attack.title, f"skipped ({why})", attack.expect,
                                            False, True, [why]))
                continue
            report = run_attack(attack, sandbox, verifier, canaries, limits)
            grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
            if grown > 256 * 1024:  # KiB
                report.violations.append(f"the trainer's peak RSS grew by {grown // 1024} MiB")
                report.contained = False
            reports.append(report)
            if progress:
                progress(report)
    finally:
        canaries.close()
    return reports


def format_table(reports: list[AttackReport]) -> str:
    rows = [("id", "attack", "expected", "got", "contained", "s")]
    for r in reports:
        rows.append((r.id, r.title[:52], "|".join(r.expected), r.status,
                     "yes" if r.contained else "NO", f"{r.wall_s:.2f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    for r in reports:
        for v in r.violations:
            lines.append(f"  {r.id}: {v}")
    return "\n".join(lines)
