"""Fixtures for the sandbox tests.

They run the real sandbox (bubblewrap, uid drop, seccomp, cgroups), which ``make install`` brings in.
Where bubblewrap cannot run, the sandbox tests are *skipped* with the reason printed, except under
``RLVR_REQUIRE_SANDBOX=1`` (set by ``.ci/run``), where that is a failure: CI must judge code for real.
"""

from __future__ import annotations

import os

import pytest

from rlvr.sandbox import Sandbox, SandboxUnavailableError, probe


def _unavailable() -> str | None:
    caps = probe()
    if not caps.present.get("bwrap"):
        return f"bubblewrap unusable here: {caps.why.get('bwrap')}"
    return None


def need_sandbox() -> None:
    why = _unavailable()
    if why is None:
        return
    if os.environ.get("RLVR_REQUIRE_SANDBOX") == "1":
        pytest.fail(f"RLVR_REQUIRE_SANDBOX=1 but {why}")
    pytest.skip(f"SKIPPED, NOT PASSED: {why} (install bubblewrap; CI sets RLVR_REQUIRE_SANDBOX=1)")


@pytest.fixture(scope="session")
def sandbox() -> Sandbox:
    """The machine's sandbox with whatever mechanisms it has (missing ones warn), 2 slots."""
    need_sandbox()
    try:
        return Sandbox(require_isolation=False, slots=2, quiet=True)
    except SandboxUnavailableError as err:  # root without setpriv, ...
        pytest.fail(str(err))


@pytest.fixture(scope="session")
def sandbox1() -> Sandbox:
    need_sandbox()
    return Sandbox(require_isolation=False, slots=1, quiet=True)
