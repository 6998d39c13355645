"""The rollout engine ``rollout.engine`` names, for the training loop: a registry of builders.

``make_engine`` builds the training loop's engine; ``engine_on_module`` builds the engine of a rollout
worker (or an evaluation) around a module it already holds (hf or lean; vLLM loads its own).
"""

from __future__ import annotations

import warnings
from typing import Callable


def _hf(config, model, tokenizer, model_path=None):
    from rlvr.rollout.hf import HFRolloutEngine

    return HFRolloutEngine(model, tokenizer, batch_size=config.rollout.batch_size)


def _lean(config, model, tokenizer, model_path=None, dtype: str | None = None):
    from rlvr.rollout.lean import LeanRolloutEngine, LeanUnsupported

    try:
        return LeanRolloutEngine(model, tokenizer, batch_size=config.rollout.batch_size, dtype=dtype)
    except LeanUnsupported as err:
        from rlvr.config import ConfigWarning

        warnings.warn(f"rollout.engine = 'lean' cannot drive this model ({err}); using the hf engine",
                      ConfigWarning, stacklevel=2)
        return _hf(config, model, tokenizer)


def _vllm(config, model, tokenizer, model_path):
    from rlvr.rollout.vllm import make_vllm_engine

    return make_vllm_engine(config, model, tokenizer, model_path)


#: ``rollout.engine`` -> builder(config, model, tokenizer, model_path) of the training loop's engine.
ENGINES: dict[str, Callable] = {"hf": _hf, "lean": _lean, "vllm": _vllm}


def _lean_may_use_hf(model) -> bool:
    from rlvr.rollout.lean import lean_drives

    return not lean_drives(model)


#: ``rollout.engine`` -> whether, for this model, it samples (or may fall back to) HF ``generate``, which
#: applies the model's generation config (the old-log-prob reuse rule checks that config then).
SAMPLES_WITH_HF_GENERATE: dict[str, Callable] = {"hf": lambda model: True, "lean": _lean_may_use_hf,
                                                  "vllm": lambda model: False}


def make_engine(config, model, tokenizer, model_path: str):
    """``hf``: Hugging Face ``generate`` on the learner's own module (weights shared, nothing to sync);
    ``lean``: the lean sampler (:mod:`rlvr.rollout.lean`) on the learner's module, sampling from a
    ``rollout.dtype`` copy when that differs from ``model.dtype``;
    ``vllm``: a colocated vLLM engine loaded from ``model_path`` that pulls the learner's weights (LoRA
    merged) on every ``update_weights`` (:mod:`rlvr.rollout.vllm`)."""
    name = config.rollout.engine
    if name == "lean":
        return _lean(config, model, tokenizer, model_path, dtype=config.rollout_dtype())
    return ENGINES[name](config, model, tokenizer, model_path)


def engine_on_module(config, model, tokenizer):
    """A rollout worker's engine on its own copy of the weights (already in ``rollout.dtype``)."""
    return _lean(config, model, tokenizer) if config.rollout.engine == "lean" else _hf(config, model, tokenizer)
