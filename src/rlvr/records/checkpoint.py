"""Checkpoints: written atomically, found again on resume.

A checkpoint is a folder ``checkpoints/step_000042/`` holding the model and tokenizer as a
Hugging Face checkpoint (safetensors, loadable with ``from_pretrained``; the tokenizer files are the
user's, byte for byte: :func:`rlvr.models.load.save_tokenizer`) and ``trainer_state.pt``
(optimizer, scheduler, RNG states, step, data position, policy version). It is written under a
temporary name and renamed in one step, so a crash never leaves a half-written checkpoint; old
ones are renamed before they are deleted, so a kill mid-delete leaves no half ``step_*`` either.
What a kill leaves (``.tmp_step_*``, ``.del_step_*``) is never read, and :func:`remove_leftovers`
clears it before a resume picks its checkpoint.

A write that fails (disk full, read-only or unwritable folder) raises
:class:`~rlvr.utils.StorageError` naming the folder, the cause and what to do; the temporary
folder is removed and the earlier checkpoints are kept, so ``--resume`` continues from the last
one that was written completely.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from rlvr.utils import find_storage_error, rng_state, set_rng_state, storage_error

STATE_FILE = "trainer_state.pt"
_TMP_PREFIX = ".tmp_step_"
_OLD_PREFIX = ".old_step_"
_DEL_PREFIX = ".del_step_"


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, state: dict, keep: int = 2,
                    save_extra=None) -> Path:
    """Write ``checkpoints/step_<step>``; ``save_extra(folder)`` adds more (e.g. critics' folders).

    Older checkpoints beyond the newest ``keep`` are deleted only after the new one is in place.
    """
    from rlvr.models.load import save_tokenizer

    run_dir = Path(run_dir)
    ckpt_root = run_dir / "checkpoints"
    final = ckpt_root / f"step_{step:06d}"
    tmp = ckpt_root / f"{_TMP_PREFIX}{step:06d}"
    try:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(ckpt_root)  # temporary folders of an earlier crash
        model.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)  # the user's tokenizer files, byte for byte (rlvr.models.load)
        if save_extra is not None:
            save_extra(tmp)
        with open(tmp / STATE_FILE, "wb") as f:  # a file object: write errors surface as OSError
            torch.save({**state, "step": step, "rng": rng_state()}, f)
            f.flush()
            os.fsync(f.fileno())
        for file in tmp.rglob("*"):  # make the bytes durable before the rename publishes them
            if file.is_file():
                with open(file, "rb") as fh:
                    os.fsync(fh.fileno())
        _publish(tmp, final)
    except Exception as exc:
        cause = find_storage_error(exc, probe_dir=ckpt_root if ckpt_root.is_dir() else None)
        shutil.rmtree(tmp, ignore_errors=True)
        if cause is None:
            raise
        prev = latest_checkpoint(run_dir)
        note = (f"The previous checkpoint {prev.name} is intact; after fixing this, continue with: "
                f"rlvr train --resume {run_dir}" if prev is not None
                else "No earlier checkpoint of this run exists")
        raise storage_error(final, cause, "write checkpoint", note=note) from exc
    except BaseException:  # KeyboardInterrupt mid-write: no half-written folder stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep]:  # renamed first: a kill mid-delete leaves no half step_*
        doomed = old.with_name(_DEL_PREFIX + old.name.removeprefix("step_"))
        try:
            os.replace(old, doomed)
        except OSError:
            doomed = old
        shutil.rmtree(doomed, ignore_errors=True)
    return final


def _publish(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an existing ``final`` is replaced only once ``tmp`` is in place."""
    old = final.with_name(_OLD_PREFIX + final.name.removeprefix("step_"))
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        try:
            os.replace(tmp, final)
        except BaseException:
            os.replace(old, final)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not sync directories; the rename itself is atomic
    finally:
        os.close(fd)


def remove_leftovers(run_dir: Path) -> None:
    """Before a resume: remove what a killed write or delete left (never read as a checkpoint) and
    put back a checkpoint caught between the two renames of a replacement. Best effort."""
    root = Path(run_dir) / "checkpoints"
    try:
        if root.is_dir():
            _remove_leftovers(root)
    except OSError:
        pass


def _remove_leftovers(ckpt_root: Path) -> None:
    for p in ckpt_root.iterdir():
        if p.name.startswith((_TMP_PREFIX, _DEL_PREFIX)) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.startswith(_OLD_PREFIX) and p.is_dir():
            # a crash between the two renames of _publish: put the old checkpoint back if needed
            final = p.with_name("step_" + p.name.removeprefix(_OLD_PREFIX))
            if not (final / STATE_FILE).exists() and (p / STATE_FILE).exists():
                shutil.rmtree(final, ignore_errors=True)
                os.replace(p, final)
            else:
                shutil.rmtree(p, ignore_errors=True)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints (``step_*`` folders with their state file), oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith("step_") and (p / STATE_FILE).exists())


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_trainer_state(ckpt: Path, restore_rng: bool = True) -> dict:
    state = torch.load(Path(ckpt) / STATE_FILE, weights_only=False)
    if restore_rng:
        set_rng_state(state["rng"])
    return state
