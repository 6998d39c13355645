"""Checkpoints: written atomically, found again on resume.

A checkpoint is a folder ``checkpoints/step_000042/`` holding the model and tokenizer as a
Hugging Face checkpoint (safetensors, loadable with ``from_pretrained``) and ``trainer_state.pt``
(optimizer, scheduler, RNG states, step, data position, policy version). It is written under a
temporary name and renamed in one step, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from rlvr.utils import rng_state, set_rng_state

STATE_FILE = "trainer_state.pt"


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, state: dict, keep: int = 2,
                    save_extra=None) -> Path:
    """Write ``checkpoints/step_<step>``; ``save_extra(folder)`` adds more (e.g. critics' folders)."""
    ckpt_root = run_dir / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step_{step:06d}"
    tmp = ckpt_root / f".tmp_step_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if save_extra is not None:
        save_extra(tmp)
    torch.save({**state, "step": step, "rng": rng_state()}, tmp / STATE_FILE)
    for f in tmp.rglob("*"):  # make the bytes durable before the rename publishes them
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
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
