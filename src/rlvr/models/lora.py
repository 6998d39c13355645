"""LoRA through ``peft``: wrap the policy, find the adapter's tensors, restore and merge them.

With ``model.lora.enabled`` the policy is a :class:`peft.PeftModel` whose base weights are frozen:

* the learner's optimizer holds only the adapter (``requires_grad`` parameters);
* the reference model for KL is the same module with the adapter switched off
  (:func:`reference_weights`: ``PeftModel.disable_adapter()``), so no second copy of the weights;
* the HF rollout engine shares the module, so it samples with the adapter applied; rollout workers
  (threads, Ray actors) hold their own PeftModel copy and receive only the adapter's tensors
  (:func:`sync_tensors`) — the base weights never change, so they are never sent;
* checkpoints hold the adapter (``adapter_model.safetensors`` + ``adapter_config.json``, written by
  ``PeftModel.save_pretrained``) and the tokenizer; :func:`load_adapter_checkpoint` restores it on
  resume; ``rlvr export`` (:mod:`rlvr.export`) merges it into a plain Hugging Face folder.

``peft`` is the ``rlvr[lora]`` extra; without it, :func:`require_peft` raises a one-line error
with the pip command.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: Substring of every tensor name peft gives adapter weights (lora_A, lora_B, lora_embedding_A, ...).
ADAPTER_MARK = "lora_"


def require_peft():
    from rlvr.extras import require

    require("peft", "lora", "model.lora.enabled")
    import peft

    return peft


@contextmanager
def quiet_peft():
    """peft asks transformers a deprecated question about gradient checkpointing when it wraps a model."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def is_adapter_checkpoint(folder: str | Path) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def apply_lora(model, lora, base_path: str | Path | None = None):
    """``model`` wrapped in a LoRA :class:`peft.PeftModel` as ``lora`` (a ``LoraSection``) says.

    The adapter starts as a no-op (B = 0), so the wrapped model computes exactly what ``model`` did.
    ``base_path`` is recorded (absolute) in the adapter config, so an adapter checkpoint names the
    base it belongs to.
    """
    peft = require_peft()
    targets = list(lora.target_modules)
    target = targets[0] if targets == ["all-linear"] else targets
    config = peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=target, bias="none", task_type="CAUSAL_LM")
    if base_path is not None and Path(base_path).exists():
        model.config._name_or_path = str(Path(base_path).resolve())
        model.name_or_path = model.config._name_or_path
    try:
        with quiet_peft():
            wrapped = peft.get_peft_model(model, config)
    except ValueError as err:  # peft: "Target modules {...} not found in the base model"
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ValueError(f"model.lora.target_modules = {targets}: {' '.join(str(err).split())}; "
                         f"this model's linear layers: {', '.join(names)} (or 'all-linear')") from None
    return wrapped


def adapter_parameters(model) -> list[tuple[str, torch.nn.Parameter]]:
    """The trainable parameters of ``model`` (for a PeftModel: the adapter's)."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def sync_tensors(model) -> dict[str, torch.Tensor]:
    """The tensors a rollout worker's copy needs from the learner, sharing storage with ``model``:
    the adapter's for a PeftModel (the frozen base is the same on both sides), else the whole state dict."""
    sd = model.state_dict()
    if is_peft_model(model):
        return {k: v for k, v in sd.items() if ADAPTER_MARK in k}
    return sd


def reference_weights(model):
    """A context in which ``model`` computes the KL reference policy: the base without the adapter
    for a PeftModel (``disable_adapter``); a no-op for any other module (a separate frozen copy)."""
    return model.disable_adapter() if is_peft_model(model) else nullcontext()


def load_adapter_checkpoint(model, folder: str | Path) -> None:
    """Restore the adapter weights saved in ``folder`` into the PeftModel ``model`` (exactly)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(folder) / ADAPTER_WEIGHTS
    if not path.is_file():
        raise ValueError(f"{folder}: no {ADAPTER_WEIGHTS} there; the run was trained with "
                         "model.lora.enabled=true, so its checkpoints hold an adapter")
    state = load_file(str(path), device=str(next(model.parameters()).device))
    result = set_peft_model_state_dict(model, state)
    missing = [k for k in getattr(result, "missing_keys", []) if ADAPTER_MARK in k]
    if missing or getattr(result, "unexpected_keys", []):
        raise ValueError(f"{path}: the adapter does not fit this model (missing {missing[:3]}, "
                         f"unexpected {list(result.unexpected_keys)[:3]}); was model.lora changed?")


def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """The plain (base-model) state dict with the adapter merged in, ``W + scale * B @ A``, without
    changing ``model``. Names are the base model's (``model.layers.0.self_attn.q_proj.weight``), as a
    Hugging Face checkpoint or an inference engine (vLLM ``load_weights``) expects them."""
    if not is_peft_model(model):
        return model.state_dict()
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    deltas = {}
    with torch.no_grad():
        for name, module in base.named_modules():
            if isinstance(module, LoraLayer):
                weight = module.get_base_layer().weight
                delta = sum((module.get_delta_weight(a) for a in module.active_adapters
                             if a in module.lora_A), torch.zeros_like(weight))
                deltas[f"{name}.weight"] = (weight + delta.to(weight.dtype)).detach()
        out = {}
        for key, value in base.state_dict().items():
            if ADAPTER_MARK in key:
                continue
            plain = key.replace(".base_layer.", ".")
            out[plain] = deltas.get(plain, value)
    return out
