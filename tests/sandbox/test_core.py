"""The sandbox itself: statuses, streams and caps, isolation facts, refusal rules, judge failures."""

from __future__ import annotations

import dataclasses
import os
import warnings

import pytest

from rlvr.sandbox import (ALLOWED_ENV, Capabilities, CodeVerifier, Limits, Sandbox, SandboxError,
                          SandboxUnavailableError, SandboxWarning, probe)

PY = ["python3", "-I", "main.py"]


def run(sb, code, stdin=b"", **limits):
    return sb.run(PY, stdin, Limits(**{"cpu_s": 1, "wall_s": 3, **limits}), {"main.py": code})


def test_ok_and_runtime_error(sandbox):
    r = run(sandbox, "print(input()[::-1])", b"abc\n")
    assert (r.status, r.stdout, r.exit_code) == ("ok", "cba\n", 0)
    assert r.cpu_s > 0 and r.wall_s > 0 and r.peak_mem and r.peak_mem > 0
    r = run(sandbox, "raise SystemExit(4)")
    assert (r.status, r.exit_code) == ("runtime_error", 4)


def test_signal_death_is_killed(sandbox):
    r = run(sandbox, "import os, signal\nos.kill(os.getpid(), signal.SIGABRT)")
    assert r.status == "killed" and r.signal == 6


def test_timeouts_cpu_and_wall(sandbox):
    r = run(sandbox, "while True: pass", cpu_s=1, wall_s=5)
    assert r.status == "timeout" and "cpu" in r.detail and r.wall_s < 5
    r = run(sandbox, "import time; time.sleep(60)", cpu_s=1, wall_s=1)
    assert r.status == "timeout" and "wall" in r.detail and r.wall_s < 3


def test_output_is_cut_at_the_cap_and_the_run_killed(sandbox):
    r = run(sandbox, "import sys\nwhile True: sys.stdout.write('y' * 4096)", stdout_bytes=10_000)
    assert r.status == "output_limit" and r.truncated and len(r.stdout) == 10_000
    r = run(sandbox, "print('ok')\nimport sys\nsys.stderr.write('e' * 100_000)", stderr_bytes=1000)
    assert r.status == "output_limit" and len(r.stderr) == 1000


def test_large_stdin_is_streamed_without_deadlock(sandbox):
    data = b"x" * (3 << 20) + b"\n"
    r = run(sandbox, "import sys\nd = sys.stdin.buffer.read()\nprint(len(d))", data, wall_s=10)
    assert r.status == "ok" and r.stdout.strip() == str(len(data))


def test_environment_is_the_allow_list_only(sandbox, monkeypatch):
    monkeypatch.setenv("RLVR_TEST_SECRET", "hunter2")
    r = run(sandbox, "import os\nprint(sorted(os.environ))\nprint(open('/proc/1/environ','rb').read())")
    names = eval(r.stdout.splitlines()[0])  # our own test's output, not model code
    assert set(names) - {"PWD"} <= set(ALLOWED_ENV) and "RLVR_TEST_SECRET" not in names
    assert r.stdout.splitlines()[1] == "b''" and "hunter2" not in r.stdout


def test_files_and_executable_artifacts(sandbox):
    r = sandbox.run(["./tool"], b"", Limits(cpu_s=1), {"tool": "#!/bin/sh\necho from-tool\n"}, executable=["tool"])
    assert (r.status, r.stdout) == ("ok", "from-tool\n")
    with pytest.raises(Exception):
        sandbox._run(0, ["true"], b"", Limits(), {"../x": "no"}, set())


def test_uid_drop_and_no_capabilities(sandbox):
    r = run(sandbox, "import os\nprint(os.getuid(), os.getgid(), os.getgroups())\n"
                     "print([l for l in open('/proc/self/status') if l.startswith(('CapEff', 'NoNewPrivs'))])")
    if sandbox.caps.present["uid_drop"]:
        # inside the user namespace the uid reads as itself: bubblewrap maps it 1:1
        assert r.stdout.split()[0] in {str(sandbox.uid(s)) for s in range(sandbox.slots)}
    assert "CapEff:\\t0000000000000000" in r.stdout and "NoNewPrivs:\\t1" in r.stdout


def test_parallel_slots_keep_order_and_use_their_own_uids(sandbox):
    verifier = CodeVerifier(sandbox)
    items = [{"code": f"import os, time\ntime.sleep(0.2)\nprint({i})", "tests": [{"input": "", "output": f"{i}\n"}]}
             for i in range(6)]
    verdicts = verifier.verify_batch(items)
    assert [v.correct for v in verdicts] == [True] * 6
    verifier.close()
    if not sandbox.caps.present["uid_drop"]:
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:  # 4 threads, 2 slots: never more than 2 at once, never one uid twice
        results = list(pool.map(lambda i: run(sandbox, "import os, time\nprint(os.getuid(), time.time())\n"
                                                       "time.sleep(0.3)\nprint(time.time())"), range(6)))
    spans = [(int(r.stdout.split()[0]), float(r.stdout.split()[1]), float(r.stdout.split()[2])) for r in results]
    for i, (u1, a1, b1) in enumerate(spans):
        overlapping = [u2 for j, (u2, a2, b2) in enumerate(spans) if j != i and a2 < b1 and a1 < b2]
        assert len(overlapping) <= sandbox.slots - 1 and u1 not in overlapping


def _slot_uid_processes(sandbox) -> list[str]:
    """``pid state ppid`` of every process whose real uid is one of this process's slot uids."""
    uids = {sandbox.uid(s) for s in range(64)}
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if int(fields["Uid"].split()[0]) in uids:
            found.append(f"{entry} {fields['State'].split()[0]} ppid {fields['PPid'].strip()}")
    return found


def test_no_run_leaves_a_process_behind_not_even_a_zombie(sandbox):
    # bubblewrap's outer process exits before reaping its pid-1 helper; the orphan goes to pid 1,
    # which on our CI machines reaps lazily, so zombies of the slot uids piled up (35-55 each) until
    # RLIMIT_NPROC made bubblewrap fail to fork. The trainer is now their subreaper and reaps them.
    if not sandbox.caps.present["uid_drop"]:
        pytest.skip("SKIPPED, NOT PASSED: no uid drop here (not root), so no slot uids to count")
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda i: run(sandbox, f"print({i})"), range(80)))
    assert all(r.status == "ok" for r in results)
    assert _slot_uid_processes(sandbox) == []


def test_forged_bwrap_error_is_a_program_error_not_a_judge_error(sandbox):
    r = run(sandbox, "import sys\nsys.stderr.write('bwrap: execvp main.py: No such file or directory\\n')\nsys.exit(1)")
    assert r.status == "runtime_error"


def _caps_with(**present) -> Capabilities:
    caps = probe()
    return dataclasses.replace(caps, present={**caps.present, **present},
                               why={**caps.why, **{k: "simulated absence" for k, v in present.items() if not v}})


def test_require_isolation_refuses_when_a_mechanism_is_missing():
    need = probe()
    if not need.present.get("bwrap"):
        pytest.skip("SKIPPED, NOT PASSED: bubblewrap unusable here")
    caps = _caps_with(cgroup=False)
    with pytest.raises(SandboxUnavailableError, match="cgroup"):
        Sandbox(require_isolation=True, _caps=caps)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        Sandbox(require_isolation=False, _caps=caps)
    lines = [str(w.message) for w in seen if issubclass(w.category, SandboxWarning)]
    assert len(lines) == 1 and "cgroup" in lines[0] and "\n" not in lines[0]


def test_without_bwrap_nothing_runs_even_when_isolation_is_optional():
    caps = dataclasses.replace(probe(), bwrap=None, present={**probe().present, "bwrap": False},
                               why={**probe().why, "bwrap": "simulated"})
    with pytest.raises(SandboxUnavailableError, match="bwrap"):
        Sandbox(require_isolation=False, _caps=caps)


@pytest.mark.skipif(os.geteuid() != 0, reason="SKIPPED, NOT PASSED: only root can be refused for a missing uid drop")
def test_root_without_uid_drop_is_refused():
    with pytest.raises(SandboxUnavailableError, match="uid_drop"):
        Sandbox(require_isolation=False, _caps=_caps_with(uid_drop=False))


def test_without_cgroups_rlimits_still_cap_memory_and_processes(sandbox):
    sb = Sandbox(require_isolation=False, slots=1, quiet=True, _caps=_caps_with(cgroup=False))
    r = run(sb, "a = []\nwhile True: a.append(bytearray(16 << 20))", memory_mb=256)
    assert r.status == "memory"
    r = run(sb, "import os\nwhile True: os.fork()")
    assert r.status in ("runtime_error", "timeout", "killed")


def test_without_seccomp_it_runs_and_warns(sandbox):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        sb = Sandbox(require_isolation=False, slots=1, _caps=_caps_with(seccomp=False))
    assert any("seccomp" in str(w.message) for w in seen)
    r = run(sb, "import socket\ns = socket.socket()\nprint('made')")
    assert r.status == "ok"  # no filter: an AF_INET socket can be made (in an empty netns)
    r = run(sandbox, "import socket\ns = socket.socket()\nprint('made')")
    assert r.status == "runtime_error" and "Address family not supported" in r.stderr


def test_a_broken_sandbox_is_a_judge_error_never_a_zero_reward():
    caps = dataclasses.replace(probe(), bwrap="/bin/false")
    sb = Sandbox(require_isolation=False, slots=1, quiet=True, _caps=caps)
    r = run(sb, "print(1)")
    assert r.status == "sandbox_error"
    with pytest.raises(SandboxError, match="twice"):
        CodeVerifier(sb).verify("print(1)", [{"input": "", "output": "1"}])


def test_limits_are_validated():
    with pytest.raises(ValueError, match="cpu_s"):
        Limits(cpu_s=0)
    with pytest.raises(ValueError, match="memory_mb"):
        Limits(memory_mb=-1)
    assert Limits(cpu_s=2).wall == 7.0 and Limits(cpu_s=5).wall == 10.0 and Limits(wall_s=2).wall == 2.0
