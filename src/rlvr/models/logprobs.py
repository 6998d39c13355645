"""Log-probabilities of completion tokens under a causal LM (the learner's forward pass)."""

from __future__ import annotations

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


def completion_logits(model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                      temperature: float = 1.0) -> torch.Tensor:
    """Logits ``[B, T, V]`` (divided by the sampling temperature) that predict each completion token."""
    input_ids, attention_mask, position_ids = sequence_inputs(
        prompt_ids, prompt_mask, completion_ids, completion_mask)
    P, T = prompt_ids.shape[1], completion_ids.shape[1]
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                use_cache=False)
    logits = out.logits[:, P - 1:P + T - 1].float()
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    return logits


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits) gathered at ``tokens``: ``[B, T]``."""
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
