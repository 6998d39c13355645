"""The rollout engine ``rollout.engine`` names, for the training loop."""

from __future__ import annotations


def make_engine(config, model, tokenizer, model_path: str):
    """``hf``: Hugging Face ``generate`` on the learner's own module (weights shared, nothing to sync);
    ``vllm``: a colocated vLLM engine loaded from ``model_path`` that pulls the learner's weights (LoRA
    merged) on every ``update_weights`` (:mod:`rlvr.rollout.vllm`)."""
    if config.rollout.engine == "vllm":
        from rlvr.rollout.vllm import make_vllm_engine

        return make_vllm_engine(config, model, tokenizer, model_path)
    from rlvr.rollout.hf import HFRolloutEngine

    return HFRolloutEngine(model, tokenizer, batch_size=config.rollout.batch_size)
