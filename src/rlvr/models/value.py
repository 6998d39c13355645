"""Value models (critics): a transformer with a value head on every position.

A critic is a Hugging Face ``AutoModelForTokenClassification`` (for Llama:
``LlamaForTokenClassification``, a linear ``score`` head over the last hidden states), so it is
saved and loaded with ``save_pretrained`` / ``from_pretrained`` like any checkpoint. It is built
from a causal-LM checkpoint (the backbone weights are reused, the head is new) and can be a
smaller member of the same family:

* ``num_layers=k`` keeps the first ``k`` transformer layers of the checkpoint (a pretrained
  "mini-critic", AsyPPO arXiv 2510.01656 sec. 3);
* ``hidden_size=d`` builds a freshly initialised model of that width with the checkpoint's
  vocabulary and depth (or ``num_layers``).

The head has one output for a scalar value loss (``mse``) and ``num_bins`` outputs for the
classification losses (``hl_gauss``, ``two_hot``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForTokenClassification

from rlvr.models.load import quiet_transformers
from rlvr.models.forward import sequence_inputs


def build_value_model(path: str | Path, num_outputs: int = 1, num_layers: int | None = None,
                      hidden_size: int | None = None, seed: int = 0, dtype: str = "float32"):
    """A value model from the checkpoint ``path`` (see the module docstring)."""
    quiet_transformers()
    path = str(path)
    overrides = {"num_labels": num_outputs}
    if num_layers is not None:
        overrides["num_hidden_layers"] = num_layers
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the new head (and a resized model) is initialised reproducibly
        try:
            if hidden_size is None:
                model = AutoModelForTokenClassification.from_pretrained(path, dtype=getattr(torch, dtype),
                                                                        **overrides)
            else:
                config = AutoConfig.from_pretrained(path, **overrides)
                heads = 4
                config.hidden_size, config.intermediate_size = hidden_size, 2 * hidden_size
                config.num_attention_heads = config.num_key_value_heads = heads
                config.head_dim = hidden_size // heads
                model = AutoModelForTokenClassification.from_config(config, dtype=getattr(torch, dtype))
        except OSError as err:
            raise ValueError(f"critic.model_path = '{path}': cannot load a checkpoint: {err}") from None
    _zero_head(model)
    # no dropout before the value head: Hugging Face's token classifiers default to 0.1, which makes every value
    # estimate noisy and a run depend on each process's random stream (verl's critic sets it to 0 as well);
    # kept in the config, so a saved critic loads the same
    model.config.classifier_dropout = 0.0
    if isinstance(getattr(model, "dropout", None), torch.nn.Dropout):
        model.dropout.p = 0.0
    return model


def _zero_head(model) -> None:
    """Start the value head at zero output (V = 0, or a uniform histogram), a common critic init."""
    head = getattr(model, "score", None) or getattr(model, "classifier", None)
    if isinstance(head, torch.nn.Linear):
        torch.nn.init.zeros_(head.weight)
        if head.bias is not None:
            torch.nn.init.zeros_(head.bias)


def load_value_model(path: str | Path, dtype: str = "float32"):
    """A critic saved with ``save_pretrained`` (e.g. ``checkpoints/step_000100/critic_0``)."""
    quiet_transformers()
    return AutoModelForTokenClassification.from_pretrained(str(path), dtype=getattr(torch, dtype))


def completion_values(model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                      shared_prefix: bool = False) -> torch.Tensor:
    """Value-head outputs ``[B, T, num_outputs]`` for the states before each completion token.

    Position ``t`` reads the hidden state that predicts completion token ``t`` (the same
    alignment as :func:`rlvr.models.logprobs.completion_logits`), i.e. ``V(s_t)``. With
    ``shared_prefix`` each distinct prompt runs once (:mod:`rlvr.models.prefix`; same values to
    float reassociation).
    """
    if shared_prefix:
        from rlvr.models.prefix import shared_prefix_outputs

        return shared_prefix_outputs(model, prompt_ids, prompt_mask, completion_ids, completion_mask).float()
    input_ids, attention_mask, position_ids = sequence_inputs(prompt_ids, prompt_mask, completion_ids,
                                                              completion_mask)
    P, T = prompt_ids.shape[1], completion_ids.shape[1]
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    return out.logits[:, P - 1:P + T - 1].float()
