"""``rlvr env``: what a bug report needs, collected in about a second and never raising.

:func:`collect` returns one JSON-serialisable dict with the sections ``rlvr``, ``python``,
``packages``, ``platform``, ``threads``, ``devices``, ``sandbox``, ``caches`` and ``env``;
:func:`format_text` turns it into an aligned ``name: value`` block to paste into an issue.

Package versions come from ``importlib.metadata`` (nothing heavy such as vllm or ray is imported just
to read its version); torch is imported for its thread count and devices. The sandbox section is the
cheap mechanism probe of ``rlvr sandbox check`` (:func:`rlvr.sandbox.core.probe`: one sandboxed
``echo``), not the hostile-program suite. Every probe that fails reports its error text instead.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

__all__ = ["PACKAGES", "SECTIONS", "collect", "format_text"]

#: The distributions whose versions are reported ("not installed" when missing).
PACKAGES = ("torch", "transformers", "tokenizers", "peft", "ray", "vllm", "trl", "datasets", "reasoning_gym",
            "math_verify", "huggingface_hub", "numpy", "pyseccomp")
SECTIONS = ("rlvr", "python", "packages", "platform", "threads", "devices", "sandbox", "caches", "env")
NOT_INSTALLED = "not installed"
#: CPU ISA flags (``/proc/cpuinfo``) that decide which fast kernels torch can use.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_bf16", "amx_int8")
#: Environment variables reported in the ``env`` section (None when unset).
ENV_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "HF_HUB_CACHE",
            "TORCH_HOME", "RLVR_CACHE", "CUDA_VISIBLE_DEVICES", "RLVR_SANDBOX_UID_BASE")
#: Thread-related environment variables reported (only when set) in the ``threads`` section.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY")
#: A cache folder's size is summed for at most this long (then reported as a lower bound).
SIZE_BUDGET_S = 0.3


def _error(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"error: {type(err).__name__}" + (f": {text[:300]}" if text else "")


def _safe(fn: Callable[[], Any]) -> Any:
    """``fn()``, or its error as ``{"error": ...}`` (so one failing probe never hides the others)."""
    try:
        return fn()
    except BaseException as err:  # noqa: BLE001 - a bug report must come out whatever breaks
        if isinstance(err, KeyboardInterrupt):
            raise
        return {"error": _error(err)}


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return NOT_INSTALLED
    except Exception as err:  # noqa: BLE001 - a broken install's metadata
        return _error(err)


# --------------------------------------------------------------------------- sections


def _rlvr() -> dict:
    import rlvr

    root = Path(rlvr.__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=2)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"version": rlvr.__version__, "location": str(root), "git_commit": commit,
            "git_dirty": bool(status) if status is not None else None}


def _python() -> dict:
    return {"version": platform.python_version(), "implementation": platform.python_implementation(),
            "executable": sys.executable, "virtualenv": sys.prefix != sys.base_prefix}


def _packages() -> dict:
    return {name: _version(name) for name in PACKAGES}


def _cpuinfo() -> tuple[str | None, set[str]]:
    """(CPU model name, ISA flags) from /proc/cpuinfo (None, empty off Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None, set()
    model, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:  # x86 / arm
            flags = set(value.split())
        if model is not None and flags:
            break
    return model, flags


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / (1 << 20), 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _platform() -> dict:
    model, flags = _cpuinfo()
    out: dict[str, Any] = {"platform": platform.platform(), "machine": platform.machine(),
                           "cpu_model": model or platform.processor() or None,
                           "cpu_count": os.cpu_count()}
    if hasattr(os, "sched_getaffinity"):
        out["cpu_affinity"] = len(os.sched_getaffinity(0))
    out["memory_gib"] = _memory_gib()
    if flags:
        out["isa_flags"] = [f for f in ISA_FLAGS if f in flags]
        out["avx512"] = "avx512f" in flags
        out["avx512_bf16"] = "avx512_bf16" in flags
        out["amx"] = "amx_tile" in flags
    else:
        out["isa_flags"] = None
    out["torch_cpu_capability"] = _safe(_torch_cpu_capability)
    return out


def _torch_cpu_capability() -> str:
    import torch

    return torch.backends.cpu.get_cpu_capability()


def _threads() -> dict:
    import torch

    out: dict[str, Any] = {"torch_threads": torch.get_num_threads(),
                           "torch_interop_threads": torch.get_num_interop_threads()}
    for name in THREAD_VARS:
        if name in os.environ:
            out[name] = os.environ[name]
    return out


def _devices() -> dict:
    import torch

    out: dict[str, Any] = {"torch_cuda": torch.version.cuda}
    cuda = torch.cuda.is_available()
    out["cuda_available"] = cuda
    out["cuda_device_count"] = torch.cuda.device_count() if cuda else 0
    devices = []
    for i in range(out["cuda_device_count"]):
        try:
            p = torch.cuda.get_device_properties(i)
            devices.append({"name": p.name, "memory_gib": round(p.total_memory / (1 << 30), 1),
                            "capability": f"{p.major}.{p.minor}"})
        except Exception as err:  # noqa: BLE001
            devices.append({"error": _error(err)})
    out["cuda_devices"] = devices
    mps = getattr(torch.backends, "mps", None)
    out["mps_available"] = bool(mps is not None and mps.is_available())
    return out


def _sandbox() -> dict:
    from rlvr.sandbox.core import probe

    caps = probe()
    out: dict[str, Any] = {}
    for mech in ("bwrap", "uid_drop", "seccomp", "cgroup", "rlimits"):
        if caps.present.get(mech):
            out[mech] = {"status": "ok", "detail": caps.describe.get(mech, "")}
        else:
            out[mech] = {"status": "missing", "detail": caps.why.get(mech, "") or "not detected"}
    out["usable"] = bool(caps.present.get("bwrap"))
    return out


def _dir_size(path: Path, deadline: float) -> tuple[int, bool]:
    """(bytes of the files under ``path``, complete?) - stops at ``deadline`` with a lower bound."""
    total, stack = 0, [str(path)]
    while stack:
        if time.monotonic() > deadline:
            return total, False
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError:
            continue
    return total, True


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _cache(path: Path | str) -> dict:
    path = Path(path).expanduser()
    out: dict[str, Any] = {"path": str(path), "exists": path.is_dir()}
    if out["exists"]:
        size, complete = _dir_size(path, time.monotonic() + SIZE_BUDGET_S)
        out["size_bytes"], out["size_complete"] = size, complete
    return out


def _rlvr_cache_root() -> Path:
    # the same rule as rlvr.warmstart.sft.cache_root (which imports the trainer: too slow just for a path)
    return Path(os.environ.get("RLVR_CACHE", Path.home() / ".cache" / "rlvr"))


def _torch_home() -> Path:
    try:
        import torch.hub

        return Path(torch.hub._get_torch_home())
    except Exception:  # noqa: BLE001 - the documented rule
        xdg = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
        return Path(os.environ.get("TORCH_HOME", os.path.join(xdg, "torch")))


def _caches() -> dict:
    out: dict[str, Any] = {}
    root = _rlvr_cache_root()
    out["rlvr"] = _safe(lambda: _cache(root))
    out["rlvr_warmstart"] = _safe(lambda: _cache(root / "warmstart"))

    def hf() -> tuple[str, str]:
        from huggingface_hub import constants

        return constants.HF_HOME, constants.HF_HUB_CACHE

    paths = _safe(hf)
    if isinstance(paths, dict):  # huggingface_hub missing or broken
        out["hf_home"] = out["hf_hub_cache"] = paths
    else:
        out["hf_home"] = _safe(lambda: _cache(paths[0]))
        out["hf_hub_cache"] = _safe(lambda: _cache(paths[1]))
    out["torch_home"] = _safe(lambda: _cache(_torch_home()))
    return out


def _env() -> dict:
    return {name: os.environ.get(name) for name in ENV_VARS}


_COLLECTORS: dict[str, Callable[[], Any]] = {
    "rlvr": _rlvr, "python": _python, "packages": _packages, "platform": _platform, "threads": _threads,
    "devices": _devices, "sandbox": _sandbox, "caches": _caches, "env": _env,
}


def collect() -> dict:
    """Every section (a failing one holds ``{"error": ...}``); JSON-serialisable."""
    return {name: _safe(_COLLECTORS[name]) for name in SECTIONS}


# --------------------------------------------------------------------------- text


def _render(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(_render(v) for v in value) if value else "none"
    if isinstance(value, dict):
        if set(value) == {"error"}:
            return str(value["error"])
        if "status" in value:
            return f"{value['status']:7}  {value.get('detail', '')}".rstrip()
        if "path" in value:
            if not value.get("exists"):
                return f"{value['path']}  (does not exist)"
            size = value.get("size_bytes")
            if size is None:
                return value["path"]
            return f"{value['path']}  ({'' if value.get('size_complete', True) else '>= '}{_human(size)})"
        return ", ".join(f"{k}={_render(v)}" for k, v in value.items())
    return str(value)


def _rows(section: Any) -> list[tuple[str, str]]:
    if not isinstance(section, dict):
        return [("value", _render(section))]
    if set(section) == {"error"}:
        return [("error", str(section["error"]).removeprefix("error: "))]
    rows = []
    for key, value in section.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            rows += [(f"{key}[{i}]", _render(v)) for i, v in enumerate(value)]
        else:
            rows.append((key, _render(value)))
    return rows


def format_text(info: dict) -> str:
    """One ``[section]`` heading per section, then aligned ``name: value`` lines."""
    blocks = []
    for name, section in info.items():
        rows = _rows(section)
        width = max((len(k) for k, _ in rows), default=0) + 1
        lines = [f"[{name}]"] + [f"  {(k + ':').ljust(width)}  {v}" for k, v in rows]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
