"""Loading policies and tokenizers: everything goes through ``from_pretrained``.

The user's tokenizer is kept as the user gave it:

* :func:`load_tokenizer` loads a saved fast tokenizer (``tokenizer.json`` with a generic
  ``tokenizer_class`` or none) as ``PreTrainedTokenizerFast``, whatever the model's ``model_type``
  (AutoTokenizer in transformers 5 replaces it with ``Qwen2Tokenizer`` for a ``qwen2`` config,
  whose pre-tokenizer splits "123" into three tokens), and remembers the bytes of the tokenizer
  files it was loaded from;
* :func:`save_tokenizer` (checkpoints, exports) writes those bytes back unchanged; only a tokenizer
  with no source folder is written with ``save_pretrained``, and then with the user's values of
  what rlvr changes at run time (``padding_side="left"``, ``pad_token = eos_token``).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

BUILTIN_TINY = "builtin:tiny"

#: Files a Hugging Face tokenizer is saved as (never ``generation_config.json``: it belongs to the model).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "chat_template.jinja", "chat_template.json", "tokenizer.model", "vocab.json", "merges.txt",
                   "vocab.txt")
#: Folders of tokenizer files (named chat templates, ``additional_chat_templates/<name>.jinja``).
TOKENIZER_DIRS = ("additional_chat_templates",)
#: ``tokenizer_class`` values that mean "the pipeline in tokenizer.json, nothing model-specific".
GENERIC_TOKENIZER_CLASSES = (None, "PreTrainedTokenizerFast", "TokenizersBackend")
#: A folder holds a tokenizer if it has one of these.
_TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")
_SOURCE_ATTR = "_rlvr_tokenizer_files"  # (len(tokenizer) at load, {relative path: bytes}) of the source folder
_USER_VALUES_ATTR = "_rlvr_user_values"  # {attribute: the user's value} for what rlvr set at run time


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
        tokenizer = load_tokenizer(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    except OSError as err:
        hint = "" if os.path.isdir(path) else " (not a local folder; hub ids need network access)"
        raise ValueError(f"model.path = '{path}': cannot load a checkpoint{hint}: {err}") from None
    if tokenizer.pad_token_id is None:
        set_runtime(tokenizer, pad_token=tokenizer.eos_token)
    set_runtime(tokenizer, padding_side="left")  # the engines pad prompts on the left; never saved
    return model.to(device), tokenizer


def build_on_meta(path: str | Path, dtype: str = "float32"):
    """The causal LM of the checkpoint at ``path`` built on the ``meta`` device: its structure and config, no
    memory and no weights read. A learner group's ranks 1..N-1 build it so (``trainer.dist.meta_init``) and
    receive rank 0's weights into their shards (:meth:`rlvr.parallel.DataParallel.shard`)."""
    quiet_transformers()
    try:
        config = AutoConfig.from_pretrained(str(path))
    except OSError as err:
        raise ValueError(f"model.path = '{path}': cannot read its config: {err}") from None
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))


def load_tokenizer(path: str | Path):
    """The tokenizer saved at ``path`` (a local folder or a hub id), loaded as it was saved.

    A local folder with ``tokenizer.json`` whose ``tokenizer_config.json`` names a generic fast
    class (``PreTrainedTokenizerFast``, ``TokenizersBackend``) or no class loads with
    ``PreTrainedTokenizerFast.from_pretrained``: the pipeline in tokenizer.json, exactly. Anything
    else (a model-specific class, remote code, a hub id) goes through ``AutoTokenizer``. The bytes
    of the folder's tokenizer files are kept on the object for :func:`save_tokenizer`.
    """
    path = str(path)
    folder = Path(path) if path and os.path.isdir(path) else None
    generic = folder is not None and (folder / "tokenizer.json").is_file() \
        and _saved_class(folder) in GENERIC_TOKENIZER_CLASSES
    if generic:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    else:
        tokenizer = AutoTokenizer.from_pretrained(path)
    files = read_tokenizer_files(folder) if folder is not None else {}
    if files:
        setattr(tokenizer, _SOURCE_ATTR, (len(tokenizer), files))
    return tokenizer


def _saved_class(folder: Path):
    """``tokenizer_class`` of ``folder/tokenizer_config.json`` (None: no file or no class); a
    config with remote code (``auto_map``) or one that cannot be read is left to AutoTokenizer."""
    config_file = folder / "tokenizer_config.json"
    if not config_file.is_file():
        return None
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "unreadable"
    if not isinstance(config, dict) or "auto_map" in config:
        return "custom"
    return config.get("tokenizer_class")


def set_runtime(tokenizer, **values) -> None:
    """Set attributes rlvr needs at run time (``padding_side``, ``pad_token``), remembering the
    user's values so that :func:`save_tokenizer` never writes rlvr's."""
    user = getattr(tokenizer, _USER_VALUES_ATTR, None)
    if user is None:
        user = {}
        setattr(tokenizer, _USER_VALUES_ATTR, user)
    for name, value in values.items():
        user.setdefault(name, getattr(tokenizer, name))
        setattr(tokenizer, name, value)


def read_tokenizer_files(folder: str | Path) -> dict[str, bytes]:
    """``{relative path: bytes}`` of the tokenizer files in ``folder`` ({} if it holds no tokenizer)."""
    folder = Path(folder)
    if not any((folder / name).is_file() for name in _TOKENIZER_MARKERS):
        return {}
    files = {name: (folder / name).read_bytes() for name in TOKENIZER_FILES if (folder / name).is_file()}
    for sub in TOKENIZER_DIRS:
        if (folder / sub).is_dir():
            for file in sorted((folder / sub).rglob("*")):
                if file.is_file():
                    files[file.relative_to(folder).as_posix()] = file.read_bytes()
    return files


def write_tokenizer_files(files: dict[str, bytes], folder: str | Path) -> None:
    folder = Path(folder)
    for name, data in files.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as f:
            f.write(data)


def tokenizer_source_files(tokenizer) -> dict[str, bytes]:
    """The user's tokenizer files behind ``tokenizer``: the bytes :func:`load_tokenizer` read, else
    those in ``tokenizer.name_or_path`` when it is a local folder; {} when there are none, or when
    the tokenizer gained tokens since it was loaded (the files would no longer describe it)."""
    kept = getattr(tokenizer, _SOURCE_ATTR, None)
    if kept is not None:
        size, files = kept
        return files if size == len(tokenizer) else {}
    name = str(getattr(tokenizer, "name_or_path", "") or "")
    return read_tokenizer_files(name) if name and os.path.isdir(name) else {}


def save_tokenizer(tokenizer, folder: str | Path) -> None:
    """Write ``tokenizer`` into ``folder`` as the user gave it.

    The user's tokenizer files are written back byte for byte (:func:`tokenizer_source_files`).
    Without a source folder (a tokenizer built in memory, a hub id) it is ``save_pretrained``, of
    a copy that has the user's values of the attributes rlvr set at run time (:func:`set_runtime`).
    """
    folder = Path(folder)
    files = tokenizer_source_files(tokenizer)
    if files:
        folder.mkdir(parents=True, exist_ok=True)
        write_tokenizer_files(files, folder)
        return
    user = getattr(tokenizer, _USER_VALUES_ATTR, None)
    if user:
        tokenizer = copy.deepcopy(tokenizer)
        for name, value in user.items():
            setattr(tokenizer, name, value)
    tokenizer.save_pretrained(folder)


def check_same_tokenizer(student, teacher, where: str = "distill.teacher") -> None:
    """Raise ValueError (one line) unless ``teacher`` maps every token string to the same id as ``student``
    and has the same special tokens: a teacher that scores the student's token ids must read them as the
    student wrote them. (Cross-tokenizer distillation, e.g. ULD or GOLD, aligns texts instead; not here.)"""
    sv, tv = student.get_vocab(), teacher.get_vocab()
    diff = sorted(t for t in set(sv) | set(tv) if sv.get(t) != tv.get(t))
    specials = [k for k in ("eos_token_id", "bos_token_id", "pad_token_id")
                if getattr(student, k, None) != getattr(teacher, k, None) and k != "pad_token_id"]
    if diff or specials:
        what = (f"{len(diff)} token(s) differ, e.g. {diff[0]!r}: student id {sv.get(diff[0])}, teacher id "
                f"{tv.get(diff[0])}" if diff else f"special token ids differ ({', '.join(specials)})")
        raise ValueError(f"{where}: the teacher's tokenizer is not the student's ({what}); on-policy distillation "
                         "scores the student's token ids under the teacher, so both need one tokenizer (use a "
                         "teacher from the same model family, or distil its text with rlvr sft instead)")


def load_teacher(path: str | Path, student_tokenizer, dtype: str = "float32", device: str = "cpu"):
    """A frozen teacher for on-policy distillation, after :func:`check_same_tokenizer`."""
    model, tokenizer = load_model_and_tokenizer(path, dtype, device)
    check_same_tokenizer(student_tokenizer, tokenizer)
    return model.eval().requires_grad_(False)
