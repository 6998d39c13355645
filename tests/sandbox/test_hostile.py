"""The hostile-program suite (../shared/design/sandbox.md section 4), one test per attack.

Each attack runs in the real sandbox; the test asserts its expected status and that it was
contained: judged wrong, no canary secret in its output, the canary file, TCP/UDP listener on
127.0.0.1, unix socket and process untouched, no process of the run left over, within the wall limit.
"""

from __future__ import annotations

import os

import pytest

from rlvr.sandbox import CodeVerifier, Limits, Result
from rlvr.sandbox.hostile import ATTACKS, SUITE_LIMITS, Attack, Canaries, format_table, run_attack, run_suite


@pytest.fixture(scope="module")
def canaries():
    c = Canaries()
    yield c
    c.close()


def test_every_attack_of_the_design_note_is_in_the_suite():
    ids = {a.id for a in ATTACKS}
    assert {f"R{i}" for i in range(1, 15)} <= ids
    assert {f"E{i}" for i in range(1, 17)} <= ids
    assert {f"I{i}" for i in range(1, 8)} <= ids


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.id for a in ATTACKS])
def test_attack_is_contained(attack: Attack, sandbox1, canaries):
    from rlvr.sandbox import get_language

    ok, why = get_language(attack.language).available()
    if not ok:
        pytest.skip(f"SKIPPED, NOT PASSED: {why}")
    verifier = CodeVerifier(sandbox1, limits=SUITE_LIMITS)
    report = run_attack(attack, sandbox1, verifier, canaries)
    assert report.contained, format_table([report])
    assert report.as_expected, format_table([report])
    assert os.getpid() > 0 and canaries.proc.poll() is None  # the trainer (this process) and the canary live


def test_the_invariant_checks_can_fail(sandbox1, canaries):
    """A tripwire that never fires proves nothing: a fake 'attack' the checks must flag."""
    bad = Attack("X1", "prints the expected output and the secret", "print(@CANARY_FILE@)", ("ok",))
    verifier = CodeVerifier(sandbox1, limits=SUITE_LIMITS)
    report = run_attack(bad, sandbox1, verifier, canaries)
    assert report.contained  # the path is public; the nonce and secret are not in the output
    leaky = Attack("X2", "leaks", "import sys; print(sys.stdin.read())", ("ok",), stdin=canaries.secret)
    report = run_attack(leaky, sandbox1, verifier, canaries)
    assert not report.contained and any("secret" in v for v in report.violations)
    # a connection the listener really receives is flagged
    import socket

    socket.create_connection(("127.0.0.1", canaries.port)).close()
    assert any("tcp listener" in v for v in canaries.violations())
    assert not canaries.violations()  # drained


def test_suite_table(sandbox1):
    reports = run_suite(sandbox1, tuple(a for a in ATTACKS if a.id in ("R11", "E3", "I1")))
    table = format_table(reports)
    assert "R11" in table and "contained" in table
    assert all(r.passed for r in reports), table
