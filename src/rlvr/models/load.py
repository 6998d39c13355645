"""Loading policies and tokenizers: everything goes through ``from_pretrained``."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

BUILTIN_TINY = "builtin:tiny"


def quiet_transformers() -> None:
    """No hub traffic from tests and no per-load progress bars in our own output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def load_model_and_tokenizer(path: str | Path, dtype: str = "float32", device: str = "cpu"):
    """A causal LM and its tokenizer from a local checkpoint folder or a hub id."""
    quiet_transformers()
    path = str(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    except OSError as err:
        hint = "" if os.path.isdir(path) else " (not a local folder; hub ids need network access)"
        raise ValueError(f"model.path = '{path}': cannot load a checkpoint{hint}: {err}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model.to(device), tokenizer


def warm_start_record(model_path: str | Path) -> dict | None:
    """What the cached warm start at ``model_path`` reached (rule, steps taken, validation accuracy),
    or None for any other checkpoint: :func:`rlvr.train.sft.warm_start_record`, for run metadata."""
    from rlvr.train.sft import warm_start_record as read

    return read(model_path)


def resolve_model_path(config, task, progress: bool = True, log=print) -> str:
    """The checkpoint a run starts from: the cached warm start for ``builtin:tiny``, else ``model.path``."""
    if config.model.path != BUILTIN_TINY:
        return config.model.path
    from rlvr.train.sft import cache_root, warm_start

    if config.model.warm_start:
        return str(warm_start(task, config.task.name, config.task.options, config.sft, progress, log))
    from rlvr.models.tiny import save_tiny

    path = cache_root() / "tiny-untrained"
    if not (path / "config.json").exists():
        save_tiny(path, seed=config.sft.seed)
    return str(path)
