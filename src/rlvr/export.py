"""``rlvr export RUN --to DIR``: a run's latest checkpoint as a plain Hugging Face folder.

    rlvr export runs/my_lora_run --to exported/        # merged: loads with from_pretrained, no peft
    rlvr export runs/my_lora_run --to adapter/ --adapter-only   # the LoRA adapter alone (peft format)

A LoRA checkpoint holds the adapter and names its base model (``base_model_name_or_path`` in
``adapter_config.json``, an absolute path when the base is a local folder); the merged export
loads that base, merges ``W + (alpha / r) B A`` into it (peft's ``merge_and_unload``) and saves
the result with the tokenizer. A checkpoint of a full fine-tune is re-saved as it is. The tokenizer
files are the checkpoint's (the user's, byte for byte), never re-serialised. The folder is
written under a temporary name and renamed when complete; an existing non-empty ``DIR`` is refused.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from rlvr.models.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, is_adapter_checkpoint


def resolve_source(source: str | Path) -> Path:
    """A run folder (its latest checkpoint) or a checkpoint folder."""
    from rlvr.records.checkpoint import latest_checkpoint

    path = Path(source).expanduser()
    if not path.is_dir():
        raise ValueError(f"rlvr export {source}: no such run or checkpoint folder")
    if (path / "checkpoints").is_dir() or (path / "config.yaml").is_file():
        ckpt = latest_checkpoint(path)
        if ckpt is None:
            raise ValueError(f"rlvr export {source}: the run has no complete checkpoint yet")
        return ckpt
    if is_adapter_checkpoint(path) or (path / "config.json").is_file():
        return path
    raise ValueError(f"rlvr export {source}: neither a run folder (config.yaml, checkpoints/) nor a "
                     "checkpoint folder (config.json or adapter_config.json)")


def adapter_base(ckpt: Path, base: str | Path | None = None) -> str:
    """The base model an adapter checkpoint belongs to (``base`` overrides the recorded one)."""
    if base is not None:
        return str(base)
    recorded = json.loads((ckpt / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not recorded:
        raise ValueError(f"{ckpt / ADAPTER_CONFIG} names no base model; give it with --base PATH")
    if recorded.startswith(("/", ".", "~")) and not Path(recorded).expanduser().is_dir():
        raise ValueError(f"the adapter's base model {recorded} is no longer there; give it with --base PATH")
    return recorded


def export(source: str | Path, to: str | Path, adapter_only: bool = False, base: str | Path | None = None,
           dtype: str | None = None, log=print) -> Path:
    """Write the export of ``source`` (run or checkpoint folder) to ``to``; returns ``to``.

    ``dtype``: of the weights written (None: the run's ``model.dtype``, else float32)."""
    from rlvr.models.load import read_tokenizer_files, save_tokenizer, write_tokenizer_files

    ckpt = resolve_source(source)
    dtype = dtype or _run_dtype(Path(source).expanduser())
    to = Path(to).expanduser()
    if to.exists() and (not to.is_dir() or any(to.iterdir())):
        raise ValueError(f"--to {to}: already exists and is not empty; choose a new folder")
    adapter = is_adapter_checkpoint(ckpt)
    if adapter_only and not adapter:
        raise ValueError(f"--adapter-only: {ckpt} holds full weights, not a LoRA adapter "
                         "(the run had model.lora.enabled=false); export it without --adapter-only")
    tmp = to.with_name(f".{to.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if adapter_only:
            for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, "README.md"):
                if (ckpt / name).is_file():
                    shutil.copy2(ckpt / name, tmp / name)
            write_tokenizer_files(read_tokenizer_files(ckpt), tmp)  # the checkpoint's copies, as they are
            what = f"the LoRA adapter of {ckpt} (base: {adapter_base(ckpt, base)})"
        else:
            model, tokenizer = _merged(ckpt, base, dtype) if adapter else _full(ckpt, dtype)
            model.save_pretrained(tmp)
            save_tokenizer(tokenizer, tmp)  # the user's tokenizer files, byte for byte
            what = (f"{ckpt} merged into its base {adapter_base(ckpt, base)}" if adapter else f"{ckpt}")
        if to.exists():
            to.rmdir()
        os.replace(tmp, to)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"exported {what} to {to}")
    return to


def _full(ckpt: Path, dtype: str):
    from rlvr.models.load import load_model_and_tokenizer

    return load_model_and_tokenizer(ckpt, dtype)


def _merged(ckpt: Path, base: str | Path | None, dtype: str):
    from rlvr.models.load import load_model_and_tokenizer, load_tokenizer
    from rlvr.models.lora import require_peft

    peft = require_peft()
    base_model, _ = load_model_and_tokenizer(adapter_base(ckpt, base), dtype)
    tokenizer = load_tokenizer(ckpt)  # the run's tokenizer, saved with every checkpoint
    from rlvr.models.lora import quiet_peft

    with quiet_peft():
        model = peft.PeftModel.from_pretrained(base_model, str(ckpt)).merge_and_unload()
    model.config._name_or_path = ""
    return model, tokenizer


def _run_dtype(source: Path) -> str:
    import yaml

    try:
        data = yaml.safe_load((source / "config.yaml").read_text()) or {}
        return str(data.get("model", {}).get("dtype") or "float32")
    except (OSError, yaml.YAMLError, AttributeError):
        return "float32"
