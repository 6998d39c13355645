"""The rollout engine ``rollout.engine`` names, for the training loop: a registry of builders.

``make_engine`` builds the training loop's engine; ``engine_on_module`` builds the engine of a rollout
worker (or an evaluation) around a module it already holds (hf or lean; vLLM loads its own).
"""

from __future__ import annotations

import warnings
from typing import Callable


def stops_for(config, model, tokenizer):
    """The model's stop conditions with the config's ``rollout.stop`` / ``rollout.stop_token_ids``."""
    from rlvr.rollout.stops import StopConditions

    return StopConditions.from_config(config, model, tokenizer)


def _hf(config, model, tokenizer, model_path=None):
    from rlvr.rollout.hf import HFRolloutEngine

    return HFRolloutEngine(model, tokenizer, batch_size=config.rollout.batch_size,
                           stops=stops_for(config, model, tokenizer))


def _lean(config, model, tokenizer, model_path=None, dtype: str | None = None):
    from rlvr.rollout.lean import LeanRolloutEngine, LeanUnsupported

    try:
        return LeanRolloutEngine(model, tokenizer, batch_size=config.rollout.batch_size, dtype=dtype,
                                 stops=stops_for(config, model, tokenizer))
    except LeanUnsupported as err:
        from rlvr.overrides import ConfigWarning

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


#: Generation-config fields that change the sampled distribution, with their neutral values (HF
#: ``generate`` applies them from the model's ``generation_config``; the lean and vLLM engines do not).
DISTRIBUTION_KNOBS = {
    "top_k": (None, 0), "min_p": (None, 0, 0.0), "typical_p": (None, 1, 1.0), "epsilon_cutoff": (None, 0, 0.0),
    "eta_cutoff": (None, 0, 0.0), "repetition_penalty": (None, 1, 1.0), "encoder_repetition_penalty": (None, 1, 1.0),
    "no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,), "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,), "sequence_bias": (None,), "min_new_tokens": (None, 0),
    "min_length": (None, 0), "forced_bos_token_id": (None,), "forced_eos_token_id": (None,),
    "top_h": (None,), "renormalize_logits": (None, False)}
#: ... and the ones every engine takes from ``rollout.*`` instead (HF ``generate`` too: they are passed)
SAMPLING_KNOBS = {"temperature": (None, 1, 1.0), "top_p": (None, 1, 1.0), "top_k": (None, 0)}


def generation_config_note(config, model) -> str | None:
    """A ``note:`` line naming the model's ``generation_config`` fields that ``rollout.engine`` ignores
    for this model (None when it ignores nothing that is set): the lean and vLLM engines sample
    ``softmax(logits / rollout.temperature)`` with ``rollout.top_p`` and nothing else; HF ``generate``
    takes temperature, top-p and top-k from ``rollout`` and applies the rest (repetition penalty, ...)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    gen = getattr(base, "generation_config", None)
    if gen is None:
        return None
    name = config.rollout.engine
    hf = SAMPLES_WITH_HF_GENERATE[name](model)
    knobs = SAMPLING_KNOBS if hf else {**SAMPLING_KNOBS, **DISTRIBUTION_KNOBS}
    ignored = [f"{k}={getattr(gen, k)!r}" for k, neutral in knobs.items() if getattr(gen, k, None) not in neutral]
    if not ignored:
        return None
    how = ("takes temperature, top_p and top_k from rollout.* and applies the rest" if hf else
           "samples softmax(logits / rollout.temperature) with rollout.top_p and nothing else")
    return (f"note: the model's generation_config sets {', '.join(ignored)}; rollout.engine={name} ignores "
            f"{'them' if len(ignored) > 1 else 'it'} ({how}), in training and in rlvr eval alike")


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
