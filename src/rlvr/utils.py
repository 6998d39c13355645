"""Small shared helpers: atomic writes (and :class:`StorageError` when they fail), seeding, RNG state."""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch


class StorageError(ValueError):
    """A write to disk failed (disk full, read-only or unwritable folder, ...).

    A ``ValueError``, so the command line prints it as one line (``error: ...``) and exits 2. The
    message names the path, the cause and what to do; the original ``OSError`` (or the library
    error that wrapped it) is chained as ``__cause__``.
    """


#: errno -> (what it means, what to do about it).
_CAUSES = {
    errno.ENOSPC: ("no space left on device", "free some disk space"),
    getattr(errno, "EDQUOT", -1): ("disk quota exceeded", "free some space within your quota"),
    errno.EROFS: ("read-only file system", "write to a writable disk"),
    errno.EACCES: ("permission denied", "make the folder writable"),
    errno.EPERM: ("operation not permitted", "make the folder writable"),
    errno.EFBIG: ("file too large for this file system", "write to another disk"),
    errno.EIO: ("input/output error", "check the disk"),
}


def describe_os_error(err: BaseException | int) -> str:
    """``"no space left on device (ENOSPC)"`` for an ``OSError`` (or an errno)."""
    code = err if isinstance(err, int) else getattr(err, "errno", None)
    name = errno.errorcode.get(code, "") if isinstance(code, int) else ""
    custom = isinstance(err, OSError) and err.strerror and isinstance(code, int) and err.strerror != os.strerror(code)
    if code in _CAUSES and not custom:
        text = _CAUSES[code][0]
    elif isinstance(err, OSError) and err.strerror:
        text = err.strerror[0].lower() + err.strerror[1:]
    elif isinstance(code, int):
        text = os.strerror(code).lower()
    else:
        text = str(err) or type(err).__name__
    return f"{text} ({name})" if name else text


def storage_error(path, err: BaseException, action: str = "write", where: str = "run.output_dir",
                  note: str = "") -> StorageError:
    """The one-line :class:`StorageError` for a failed write of ``path`` (raise it ``from err``).

    ``where`` names the setting that chooses another folder (``run.output_dir``, ``--out``);
    ``note`` is appended (e.g. which checkpoint is still intact).
    """
    code = getattr(err, "errno", None)
    todo = _CAUSES.get(code, (None, "check that the folder is writable and has free space"))[1]
    msg = f"cannot {action} {path}: {describe_os_error(err)}; {todo} or choose another {where}"
    return StorageError(msg + (f". {note}" if note else ""))


_ERRNO_IN_MESSAGE = re.compile(r"os error (\d+)|\[Errno (\d+)\]")
#: How libraries that do not raise ``OSError`` report a failed write (torch.save's zip writer).
_SHORT_WRITE = ("unexpected pos", "file write failed", "no space left", "read-only file system",
                "permission denied", "disk quota")


def find_storage_error(exc: BaseException, probe_dir=None) -> OSError | None:
    """The ``OSError`` behind ``exc`` if it is a failed write, else None.

    Libraries wrap write failures in their own errors (safetensors: ``SafetensorError(... os
    error 28)``; ``torch.save``: ``RuntimeError: ... unexpected pos``). Looks at the exception
    chain, then at an errno in the message; then, with ``probe_dir``, tries a small write there
    (a full or read-only disk fails it with the real errno); last, a message that says a write
    was cut short.
    """
    seen, e = set(), exc
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    text = str(exc)
    m = _ERRNO_IN_MESSAGE.search(text)
    if m:
        code = int(m.group(1) or m.group(2))
        return OSError(code, os.strerror(code))
    if probe_dir is not None:
        probe = Path(probe_dir) / f".rlvr-probe-{os.getpid()}"
        try:
            with open(probe, "wb") as f:
                f.write(b"\0" * (1 << 16))
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:
            return err
        finally:
            _unlink_quietly(probe)
    if any(s in text.lower() for s in _SHORT_WRITE):
        return OSError(errno.EIO, f"a write was cut short ({text.strip()[:120]})")
    return None


@contextmanager
def storage_guard(path, action: str = "write", where: str = "run.output_dir", note: str = ""):
    """Turn an ``OSError`` raised inside the block into a :class:`StorageError` naming ``path``::

        with storage_guard(run_dir, "create the run folder"):
            run_dir.mkdir(parents=True)
    """
    try:
        yield
    except StorageError:
        raise
    except OSError as err:
        raise storage_error(path, err, action, where, note) from err


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once, at import (os.umask can only be read by setting it)


def atomic_write_text(path: Path, text: str, where: str = "run.output_dir") -> None:
    """Write ``text`` to ``path`` so that readers see either the old or the new file, never half.

    A failed write (disk full, read-only folder...) leaves the old file as it was, removes the
    temporary file and raises :class:`StorageError`.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:  # mkstemp makes the file 0600; keep the old file's mode, else what open() would give
            os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_UMASK)
        except OSError:
            pass
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            _unlink_quietly(tmp)
        if isinstance(err, OSError):
            raise storage_error(path, err, where=where) from err
        raise


@contextmanager
def atomic_dir(to: Path, replace: bool = False):
    """A temporary folder beside ``to`` to write into; renamed to ``to`` when the block ends without an error,
    removed when it raises, so ``to`` is never half-written. ``to`` must not exist or be an empty folder
    (``replace=True``: an existing folder is removed first)."""
    to = Path(to)
    to.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=to.parent, prefix=f".tmp-{to.name}-"))
    try:
        yield tmp
        if to.exists():
            shutil.rmtree(to) if replace else to.rmdir()
        os.replace(tmp, to)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _unlink_quietly(path) -> None:
    try:
        Path(path).unlink(missing_ok=True)
    except OSError:
        pass


def append_jsonl(path: Path, record: dict, where: str = "run.output_dir") -> None:
    """Append one JSON line and flush it to disk (a crash loses at most the line being written)."""
    append_jsonl_records(path, [record], where=where)


def append_jsonl_records(path: Path, records: list[dict], where: str = "run.output_dir") -> None:
    """Append whole JSON lines in one write and flush them to disk.

    A torn last line left by an earlier crash is repaired first (completed if it is a whole
    record that only lacks its newline, dropped otherwise), so appends never glue onto it. A
    failed write (disk full...) is rolled back to the previous end of the file, so the file never
    ends in a partial line, and raises :class:`StorageError`.
    """
    if not records:
        return
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    path = Path(path)
    try:  # unbuffered: no hidden buffer can flush a fragment after a failed write is rolled back
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as err:
        raise storage_error(path, err, "append to", where) from err
    try:
        try:
            end = _repair_torn_tail(fd)
        except OSError as err:
            raise storage_error(path, err, "append to", where) from err
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as err:
            try:  # roll back a partial line (truncating frees space, so this normally works)
                os.ftruncate(fd, end)
            except OSError:
                pass
            raise storage_error(path, err, "append to", where) from err
    finally:
        os.close(fd)


def _repair_torn_tail(fd: int) -> int:
    """Make the file end with a newline or be empty; returns its (new) size."""
    end = os.fstat(fd).st_size
    if end == 0 or os.pread(fd, 1, end - 1) == b"\n":
        return end
    pos, chunk = end, 1 << 16  # find the start of the torn line
    while pos > 0:
        start = max(0, pos - chunk)
        nl = os.pread(fd, pos - start, start).rfind(b"\n")
        if nl >= 0:
            pos = start + nl + 1
            break
        pos = start
    tail = os.pread(fd, end - pos, pos)
    try:
        whole = isinstance(json.loads(tail.decode()), dict)
    except (UnicodeDecodeError, json.JSONDecodeError):
        whole = False
    if whole:  # a complete record that only lacks its newline
        if os.write(fd, b"\n") != 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return end + 1
    os.ftruncate(fd, pos)
    return pos


def read_jsonl(path: Path) -> list[dict]:
    """Read a JSONL file of records, skipping a torn last line left by a crash (or any line that
    is not a JSON object)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def deterministic_algorithms(enabled: bool):
    """``run.deterministic``, for the body: torch's deterministic algorithms (an op without one raises),
    cuDNN's benchmark off, and the cuBLAS workspace setting CUDA's deterministic GEMMs need (a no-op on
    CPU). The previous settings are restored afterwards (tests run many configs in one process). Off:
    nothing is touched."""
    if not enabled:
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
              torch.backends.cudnn.deterministic)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[1], before[2]


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def run_metadata() -> dict:
    """What a run was made with: git commit and dirty flag of the rlvr checkout (None when rlvr
    is not installed from a git checkout), package versions, host and start time."""
    import datetime
    import platform
    import subprocess
    import sys

    import rlvr

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=Path(rlvr.__file__).resolve().parent, capture_output=True,
                                 text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    versions = {"python": platform.python_version(), "rlvr": rlvr.__version__, "torch": torch.__version__}
    for name in ("transformers", "numpy"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None,
            "versions": versions, "host": platform.node(), "argv": sys.argv,
            "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def write_run_meta(run_dir: Path, resumed: bool = False) -> None:
    """``meta.json`` in a run folder: :func:`run_metadata` at the start, plus one entry per resume."""
    path = Path(run_dir) / "meta.json"
    meta = run_metadata()
    if resumed and path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = None
        if isinstance(old, dict):
            old.setdefault("resumes", []).append(meta)
            meta = old
    atomic_write_text(path, json.dumps(meta, indent=2) + "\n")


def load_object(spec: str, what: str = "object", error: type[Exception] = ValueError):
    """The callable ``spec`` names: ``"package.module:name"`` or ``"path/to/file.py:name"`` (a user's reward
    function, environment class, tool).

    A spec whose module part ends in ``.py`` or holds a path separator is a file, loaded by path (relative paths
    from the working directory; loaded once); anything else is imported. Every failure raises ``error`` with a
    one-line message that starts with ``what`` and the spec: a malformed spec, a missing file or module, a module
    that fails to import (its error in one line), a missing or non-callable attribute.
    """
    import importlib

    form = "'package.module:name' or 'path/to/file.py:name'".replace("name", what.split()[-1])
    if not isinstance(spec, str) or ":" not in spec.strip(":"):
        raise error(f"{what} {spec!r}: expected {form}")
    module_part, _, attr = spec.rpartition(":")
    if not module_part or not attr.isidentifier():
        raise error(f"{what} {spec!r}: expected {form}")
    if module_part.endswith(".py") or "/" in module_part or "\\" in module_part:
        module = _load_file(spec, Path(module_part).expanduser(), what, error)
    else:
        try:
            module = importlib.import_module(module_part)
        except ModuleNotFoundError as err:
            raise error(f"{what} {spec!r}: no module {err.name!r} (give a file as "
                        f"'path/to/file.py:{what.split()[-1]}', or install the package)") from None
        except Exception as err:  # noqa: BLE001 - the user's module; report it in one line
            raise error(f"{what} {spec!r}: importing {module_part!r} failed: {type(err).__name__}: {err}") from None
    obj = getattr(module, attr, None)
    if obj is None:
        public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise error(f"{what} {spec!r}: {module_part!r} has no {attr!r}; its callables: {', '.join(public) or 'none'}")
    if not callable(obj):
        raise error(f"{what} {spec!r}: {attr!r} is not callable")
    return obj


def _load_file(spec: str, path: Path, what: str, error: type[Exception]):
    import importlib.util
    import sys

    if not path.is_file():
        raise error(f"{what} {spec!r}: no such file {str(path)!r}")
    resolved = path.resolve()
    name = f"rlvr_user_{abs(hash(str(resolved))):x}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, resolved)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001
        del sys.modules[name]
        raise error(f"{what} {spec!r}: loading {str(path)!r} failed: {type(err).__name__}: {err}") from None
    return module
