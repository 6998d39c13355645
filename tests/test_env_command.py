"""``rlvr env``: the bug-report block (versions, devices, threads, sandbox isolation, caches)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import transformers

from rlvr import envinfo
from rlvr.cli import main


def _env_json(capsys) -> dict:
    assert main(["env", "--json"]) == 0
    out = capsys.readouterr().out
    return json.loads(out)  # exactly one JSON document on stdout


def test_env_json_matches_the_running_packages(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("RLVR_CACHE", str(tmp_path / "rlvr"))
    (tmp_path / "rlvr" / "warmstart").mkdir(parents=True)
    (tmp_path / "rlvr" / "warmstart" / "w.bin").write_bytes(b"x" * 1000)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    info = _env_json(capsys)
    assert list(info) == list(envinfo.SECTIONS)
    assert info["packages"]["torch"] == torch.__version__
    assert info["packages"]["transformers"] == transformers.__version__
    assert info["threads"]["torch_threads"] == torch.get_num_threads()
    assert info["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert info["env"]["HF_HUB_OFFLINE"] == "1"
    assert info["devices"]["cuda_available"] == torch.cuda.is_available()
    assert set(info["sandbox"]) >= {"bwrap", "uid_drop", "seccomp", "cgroup", "rlimits"}
    assert all(info["sandbox"][m]["status"] in ("ok", "missing") for m in ("bwrap", "seccomp", "cgroup"))
    cache = info["caches"]["rlvr_warmstart"]
    assert cache["exists"] and cache["size_bytes"] == 1000 and cache["size_complete"]


def test_rlvr_cache_root_is_the_trainers(monkeypatch, tmp_path):
    from rlvr.warmstart.sft import cache_root

    assert envinfo._rlvr_cache_root() == cache_root()
    monkeypatch.setenv("RLVR_CACHE", str(tmp_path))
    assert envinfo._rlvr_cache_root() == cache_root() == tmp_path


def test_missing_package_reads_not_installed(capsys, monkeypatch):
    real = importlib.metadata.version

    def version(name):
        if name == "vllm":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    info = _env_json(capsys)
    assert info["packages"]["vllm"] == "not installed"
    assert info["packages"]["torch"] == torch.__version__


def test_text_form_and_a_failing_probe(capsys, monkeypatch):
    def broken():
        raise RuntimeError("probe exploded")

    monkeypatch.setitem(envinfo._COLLECTORS, "sandbox", broken)
    assert main(["env"]) == 0
    text = capsys.readouterr().out
    for section in envinfo.SECTIONS:
        assert f"[{section}]" in text
    assert "torch:" in text and torch.__version__ in text
    assert "RuntimeError: probe exploded" in text  # reported, not raised
    info = envinfo.collect()
    assert info["sandbox"] == {"error": "error: RuntimeError: probe exploded"}
    json.dumps(info)


def test_rlvr_env_console_script():
    exe = Path(sys.executable).parent / "rlvr"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(exe), "env"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "[packages]" in proc.stdout and "HF_HUB_OFFLINE:" in proc.stdout
