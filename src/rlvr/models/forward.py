"""The plain forward every other forward is checked against: one batch of prompt + completion.

Prompts are left-padded to a common width ``P`` and completions right-padded to ``T`` (as
:mod:`rlvr.rollout` lays rows out). :func:`plain_outputs` is the reference the shared-prefix forward
(:mod:`rlvr.models.prefix`) must equal, and what :func:`rlvr.models.logprobs.completion_outputs` runs
when no prefix is shared.
"""

from __future__ import annotations

import inspect

import torch


def sequence_inputs(prompt_ids, prompt_mask, completion_ids, completion_mask):
    """Concatenate left-padded prompts and right-padded completions into one forward batch.

    Position ids count only real tokens (as ``generate`` does with left padding), so a forward
    pass sees exactly what the sampler saw.
    """
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return input_ids, attention_mask, position_ids


def underlying_model(model):
    """The transformers module under a PEFT wrapper (the model itself otherwise)."""
    seen = 0
    while hasattr(model, "get_base_model") and seen < 4:
        try:
            inner = model.get_base_model()
        except Exception:  # noqa: BLE001 - not a PEFT wrapper after all
            break
        if inner is model:
            break
        model, seen = inner, seen + 1
    return model


def accepts(model, name: str) -> bool:
    """True when the forward of ``model`` (under any PEFT wrapper) names the argument ``name``."""
    try:
        return name in inspect.signature(underlying_model(model).forward).parameters
    except (TypeError, ValueError):
        return False


def plain_outputs(model, prompt_ids, prompt_mask, completion_ids, completion_mask) -> torch.Tensor:
    """The model's outputs ``[B, T, D]`` at the positions that predict each completion token, from one
    forward of the whole batch. A causal LM that takes ``logits_to_keep`` applies its head only at
    those ``T`` positions instead of all ``P + T``."""
    input_ids, attention_mask, position_ids = sequence_inputs(prompt_ids, prompt_mask, completion_ids,
                                                              completion_mask)
    P, T = prompt_ids.shape[1], completion_ids.shape[1]
    if accepts(model, "logits_to_keep"):  # positions P-1 .. P+T-2: a contiguous [B, T, V], no slice backward
        keep = torch.arange(P - 1, P + T - 1, device=input_ids.device)
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                    use_cache=False, logits_to_keep=keep)
        return out.logits
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    return out.logits[:, P - 1:P + T - 1]
