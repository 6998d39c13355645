"""Shared-prefix forward (Prefix Grouper, Liu et al. 2025, arXiv 2506.05433).

The G completions of a prompt share one prompt: instead of running the prompt G times, run it once
per *distinct* prompt with a KV cache, expand the cached keys/values (which carry the gradient) to
the G rows, and run only the completions against them. The result is the plain forward's, up to
float reassociation: every completion position sees the same keys/values, positions and padding
mask; the gradient of the expanded cache is summed back into the shared prompt forward by autograd
(the backward of the row gather), which is exactly the sum over the G copies of the plain path.

Layout (as :mod:`rlvr.rollout` lays rows out): prompts left-padded to a common width ``P``,
completions right-padded to ``T``. Two rows share a prefix when their padded prompt ids and masks
are equal; with left padding to one width that is the same as equal real tokens.

Works for any Hugging Face model whose forward takes a ``Cache`` (``cache=``, or the older
``past_key_values=``) and fills it with ``use_cache=True``: causal LMs and the token-classification
critics of :mod:`rlvr.models.value` alike. :func:`shared_prefix_support` names the reason when a
model cannot (the caller then runs the plain forward and logs the reason).
"""

from __future__ import annotations

import inspect

import torch

from rlvr.models.logprobs import sequence_inputs


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


def cache_argument(model) -> str | None:
    """The name under which ``model.forward`` takes a KV cache (``cache`` in transformers 5,
    ``past_key_values`` before), or None."""
    try:
        params = inspect.signature(underlying_model(model).forward).parameters
    except (TypeError, ValueError):
        return None
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    return None


def accepts(model, name: str) -> bool:
    """True when the forward of ``model`` (under any PEFT wrapper) names the argument ``name``."""
    try:
        return name in inspect.signature(underlying_model(model).forward).parameters
    except (TypeError, ValueError):
        return False


def _new_cache(model):
    try:
        from transformers import DynamicCache
    except ImportError:  # pragma: no cover - very old transformers
        return None
    try:
        return DynamicCache(config=underlying_model(model).config)
    except TypeError:  # transformers without the config argument
        return DynamicCache()


def shared_prefix_support(model) -> str | None:
    """None when :func:`shared_prefix_outputs` can run ``model``; otherwise the reason it cannot."""
    base = underlying_model(model)
    config = getattr(base, "config", None)
    if config is None:
        return f"{type(base).__name__} has no Hugging Face config"
    if getattr(config, "is_encoder_decoder", False):
        return f"{type(base).__name__} is an encoder-decoder model"
    if cache_argument(model) is None:
        return f"{type(base).__name__}.forward takes no KV cache (no `cache` / `past_key_values` argument)"
    name = "is_activation_checkpointing" if hasattr(type(base), "is_activation_checkpointing") else "is_gradient_checkpointing"
    if getattr(base, name, False):
        return "gradient checkpointing is on (transformers then turns the KV cache off)"
    cache = _new_cache(model)
    if cache is None or not hasattr(cache, "batch_select_indices"):
        return "this transformers version's DynamicCache cannot select rows (batch_select_indices)"
    return None


def prefix_groups(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(first, inverse)``: the first row of every distinct prompt ``[U]`` and, per row, the index of
    its distinct prompt ``[B]`` (so ``prompt_ids[first][inverse] == prompt_ids``)."""
    key = torch.cat([prompt_ids, prompt_mask.to(prompt_ids.dtype)], dim=1)
    _, inverse = torch.unique(key, dim=0, return_inverse=True)
    U, B = int(inverse.max()) + 1 if inverse.numel() else 0, inverse.shape[0]
    first = torch.full((U,), B, dtype=torch.long).scatter_reduce(
        0, inverse, torch.arange(B), reduce="amin", include_self=True)
    return first, inverse


def shared_prefix_outputs(model, prompt_ids, prompt_mask, completion_ids, completion_mask) -> torch.Tensor:
    """The model's outputs (``.logits``: LM logits or value-head outputs) ``[B, T, D]`` at the
    positions that predict each completion token, as :func:`rlvr.models.logprobs.completion_outputs`
    takes them from a plain forward, with one forward of the shared prefix per distinct prompt.

    The shared prefix is the prompt up to its last column (``P - 1`` columns: left padding puts every
    prompt's last real token in column ``P - 1``); its keys/values are gathered to the rows, and one
    forward of ``[last prompt token, completion[:T-1]]`` per row gives all ``T`` outputs, so every
    output (and any dropout after it) is the row's own. A prompt width of 1 has nothing to share:
    the plain forward runs.
    """
    from rlvr.models.logprobs import completion_outputs

    B, P = prompt_ids.shape
    T = completion_ids.shape[1]
    if P < 2:
        return completion_outputs(model, prompt_ids, prompt_mask, completion_ids, completion_mask)
    first, inverse = prefix_groups(prompt_ids[:, :P - 1], prompt_mask[:, :P - 1])
    _, attention_mask, position_ids = sequence_inputs(prompt_ids, prompt_mask, completion_ids, completion_mask)
    name = cache_argument(model)
    cache = _new_cache(model)
    extra = {"logits_to_keep": 1} if accepts(model, "logits_to_keep") else {}  # the prefix's head is unused
    model(input_ids=prompt_ids[first, :P - 1], attention_mask=prompt_mask[first, :P - 1],
          position_ids=position_ids[first, :P - 1], use_cache=True, **{name: cache}, **extra)
    if cache.get_seq_length() != P - 1:
        raise RuntimeError(f"the model did not fill the KV cache ({cache.get_seq_length()} of {P - 1} positions)")
    if first.shape[0] != B or not torch.equal(inverse, torch.arange(B)):
        cache.batch_select_indices(inverse)  # a row gather: differentiable, gradients sum over the G copies
    input_ids = torch.cat([prompt_ids[:, P - 1:], completion_ids[:, :T - 1]], dim=1)
    out = model(input_ids=input_ids, attention_mask=attention_mask[:, :P + T - 1],
                position_ids=position_ids[:, P - 1:P + T - 1], use_cache=True, **{name: cache})
    return out.logits


class PrefixSharing:
    """Whether a forward shares prompt prefixes (``trainer.shared_prefix``), decided once per model.

    ``never``: never. ``always``: whenever the model supports it (else the plain path, with a warning
    naming the reason). ``auto``: when supported, no dropout is active (shared keys/values would share
    the prompt's dropout noise across a group) and the batch repeats prompts enough to pay:
    :func:`prefix_savings` at least ``min_savings``. The first shared forward of each model is
    checked once against the plain forward (no grad, eval mode); a disagreement beyond
    ``check_tol`` (relative to the outputs' scale) turns sharing off for that model, with the reason.
    ``reasons`` holds one line per model that runs the plain path; ``used`` counts shared forwards.
    """

    def __init__(self, setting: str = "auto", min_savings: float = 0.25, check_tol: float = 1e-3, log=None):
        self.setting, self.min_savings, self.check_tol = str(setting).lower(), min_savings, check_tol
        self.log = log
        self.state: dict[int, str | None] = {}  # id(model) -> None (ok) or the reason for the plain path
        self.reasons: list[str] = []
        self.used = 0

    def _refuse(self, model, reason: str) -> bool:
        self.state[id(model)] = reason
        line = f"shared-prefix forward off for {type(underlying_model(model)).__name__}: {reason}"
        self.reasons.append(line)
        if self.setting == "always":
            import warnings

            from rlvr.config import ConfigWarning

            warnings.warn(f"trainer.shared_prefix = always, but {line}; running the plain forward",
                          ConfigWarning, stacklevel=3)
        elif self.log is not None:
            self.log(f"note: {line}")
        return False

    def use(self, model, prompt_ids, prompt_mask, completion_ids, completion_mask) -> bool:
        if self.setting == "never":
            return False
        if self.setting not in ("auto", "always"):
            raise ValueError(f"trainer.shared_prefix = {self.setting!r}: use auto, always or never")
        key = id(model)
        if key not in self.state:
            reason = shared_prefix_support(model)
            if reason is None and self.setting == "auto" and has_active_dropout(model, backbone_only=True):
                reason = "dropout is active (trainer.shared_prefix=always shares anyway)"
            if reason is not None:
                return self._refuse(model, reason)
            try:
                err = self._check(model, prompt_ids, prompt_mask, completion_ids, completion_mask)
            except Exception as exc:  # noqa: BLE001 - any failure means: not for this model
                return self._refuse(model, f"the shared-prefix forward failed ({type(exc).__name__}: {exc})")
            if err is not None:
                return self._refuse(model, err)
            self.state[key] = None
        if self.state[key] is not None:
            return False
        if self.setting == "auto":
            B, P = prompt_ids.shape
            U = int(prefix_groups(prompt_ids[:, :P - 1], prompt_mask[:, :P - 1])[0].shape[0]) if P > 1 else B
            if prefix_savings(B, U, P, completion_ids.shape[1]) < self.min_savings:
                return False
        self.used += 1
        return True

    @torch.no_grad()
    def _check(self, model, prompt_ids, prompt_mask, completion_ids, completion_mask) -> str | None:
        from rlvr.models.logprobs import completion_outputs

        was_training = model.training
        model.eval()
        try:
            n = min(prompt_ids.shape[0], 16)
            args = (prompt_ids[:n], prompt_mask[:n], completion_ids[:n], completion_mask[:n])
            plain = completion_outputs(model, *args).float()
            shared = shared_prefix_outputs(model, *args).float()
        finally:
            model.train(was_training)
        m = completion_mask[:n].bool()
        if shared.shape != plain.shape:
            return f"outputs of shape {tuple(shared.shape)} instead of {tuple(plain.shape)}"
        diff = float((shared - plain)[m].abs().max()) if bool(m.any()) else 0.0
        scale = max(1.0, float(plain[m].abs().max())) if bool(m.any()) else 1.0
        if not diff <= self.check_tol * scale:
            return f"its outputs differ from the plain forward's by {diff:.3g} (scale {scale:.3g})"
        return None


def has_active_dropout(model, backbone_only: bool = False) -> bool:
    """True when a forward of ``model`` in its current mode draws dropout noise: a training-mode
    ``Dropout`` module with ``p > 0`` (LoRA's dropout included), or a Hugging Face config with a
    nonzero attention/hidden dropout while training. ``backbone_only``: only the transformer body
    counts (a head's dropout, as in token-classification critics, acts on each row's own outputs)."""
    if not model.training:
        return False
    base = underlying_model(model)
    scope = getattr(base, "base_model", base) if backbone_only else model
    for m in scope.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 and m.training:
            return True
    config = getattr(underlying_model(model), "config", None)
    for name in ("attention_dropout", "attn_pdrop", "hidden_dropout", "resid_pdrop", "dropout"):
        v = getattr(config, name, None)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
            return True
    return False


def prefix_savings(num_rows: int, num_prompts: int, prompt_width: int, completion_width: int) -> float:
    """Share of the plain forward's token positions that the shared-prefix forward does not run:
    ``1 - (U * (P - 1) + B * T) / (B * (P + T))`` at padded widths (B rows, U distinct prefixes)."""
    B, U, P, T = num_rows, num_prompts, prompt_width, completion_width
    plain = B * (P + T)
    return 1.0 - (U * (P - 1) + B * T) / plain if plain else 0.0
