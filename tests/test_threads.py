"""rlvr.threads: OpenMP's wait policy on a busy machine, and run.threads."""

import os
import subprocess
import sys

import pytest

from rlvr.config import ConfigError, load_config

PROBE = ("import os, sys; import rlvr.threads as t; "
         "note = t.configure_openmp(busy=float(sys.argv[1])); "
         "print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'), bool(note))")


def _probe(busy: float, **env) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", PROBE, str(busy)], env={**clean, **env}, capture_output=True,
                         text=True, check=True).stdout.split()
    return out


def test_free_cores_keep_libgomp_default():
    assert _probe(0.1) == ["None", "None", "False"]


def test_busy_cores_shorten_the_spin():
    assert _probe(1.5) == ["1000", "None", "True"]


@pytest.mark.parametrize("var,value", [("OMP_WAIT_POLICY", "ACTIVE"), ("GOMP_SPINCOUNT", "5")])
def test_user_setting_is_never_overridden(var, value):
    out = _probe(2.0, **{var: value})
    assert out[2] == "False"
    assert out[0 if var == "GOMP_SPINCOUNT" else 1] == value


def test_too_late_once_torch_is_imported():
    import torch  # noqa: F401  (imported in this process: libgomp has read its environment)

    from rlvr.threads import configure_openmp

    env = {}
    assert configure_openmp(env, busy=2.0) is None and env == {}


def test_busy_cores_is_a_core_count():
    from rlvr.threads import busy_cores

    assert 0.0 <= busy_cores(0.05) <= (os.cpu_count() or 1) + 1e-6


def test_run_threads_sets_torch_threads():
    import torch

    from rlvr.threads import apply_threads

    before = torch.get_num_threads()
    try:
        assert apply_threads(1) == 1 == torch.get_num_threads()
        assert apply_threads(None) == 1  # None leaves torch as it is
    finally:
        torch.set_num_threads(before)


def test_run_threads_is_validated():
    assert load_config(None, ["run.threads=2"]).run.threads == 2
    with pytest.raises(ConfigError, match="run.threads"):
        load_config(None, ["run.threads=0"])


def test_thread_split_uses_run_threads():
    from rlvr.experience.workers import thread_split

    rt = load_config(None, ["runtime.mode=async", "runtime.num_rollout_workers=1"]).runtime
    assert thread_split(rt, 4) == (2, 2)
    assert thread_split(rt, 2) == (1, 1)
