"""The truncation warning and the generation-config note: pure functions, checked on hand-made inputs."""

from __future__ import annotations

from types import SimpleNamespace

from transformers import GenerationConfig

from rlvr.rollout.factory import generation_config_note
from rlvr.train.loop import TRUNCATION_MIN_STEPS, TRUNCATION_WINDOW, truncation_warning


def test_truncation_warning_speaks_when_most_recent_completions_hit_the_budget():
    assert truncation_warning([1.0], 6, 1) is None  # one step is not yet "recent steps"
    assert TRUNCATION_MIN_STEPS == 2 and TRUNCATION_WINDOW == 5
    message = truncation_warning([1.0, 1.0], 6, 2)
    assert message and "rollout.max_new_tokens=6" in message and "100%" in message
    assert truncation_warning([0.5, 0.5, 0.5], 6, 3) is None  # half is not most
    assert truncation_warning([0.0, 0.0, 0.0, 0.0, 0.0, 0.9, 0.9, 0.9], 6, 8) is not None  # last 5: 0.54
    assert truncation_warning([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0], 6, 8) is None  # it was, not now


def _model(**gen):
    return SimpleNamespace(generation_config=GenerationConfig(**gen), config=SimpleNamespace(model_type="opt"))


def _config(engine):
    return SimpleNamespace(rollout=SimpleNamespace(engine=engine))


def test_generation_config_note_names_what_the_engine_ignores():
    qwen = dict(temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05, do_sample=True)
    lean = generation_config_note(_config("vllm"), _model(**qwen))
    assert lean.startswith("note:") and all(k in lean for k in ("temperature=0.7", "top_k=20", "repetition_penalty=1.05"))
    hf = generation_config_note(_config("hf"), _model(**qwen))
    assert "temperature=0.7" in hf and "top_k=20" in hf and "repetition_penalty" not in hf  # hf applies it
    assert generation_config_note(_config("hf"), _model()) is None  # nothing set: nothing to say
    assert generation_config_note(_config("vllm"), _model(repetition_penalty=1.0)) is None  # neutral values
