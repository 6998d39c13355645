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

from rlvr.models.forward import accepts, plain_outputs, sequence_inputs, underlying_model


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


def _new_cache(model):
    try:
        from transformers import DynamicCache
    except ImportError:  # pragma: no cover - very old transformers
        return None
    try:
        return DynamicCache(config=underlying_model(model).config)
    except TypeError:  # transformers without the config argument
        return DynamicCache()


def _fsdp_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


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


#: ``trainer.pack_tokens`` default: the longest packed sequence (its attention mask is dense, ``L x L``).
PACK_TOKENS = 512


def _boolean_mask(sees: torch.Tensor, model) -> torch.Tensor:
    return sees  # True where a key is seen (any query dtype, autocast included)


def _additive_mask(sees: torch.Tensor, model) -> torch.Tensor:
    dtype = next(underlying_model(model).parameters()).dtype  # added to the scores: 0 or the dtype's min
    return torch.zeros(sees.shape, dtype=dtype, device=sees.device).masked_fill_(~sees, torch.finfo(dtype).min)


#: Hugging Face attention implementations that take a custom 4D mask -> how the packed mask is given.
PACKED_MASKS = {"sdpa": _boolean_mask, "eager": _additive_mask}


def _attn_implementation(model) -> str | None:
    return getattr(getattr(underlying_model(model), "config", None), "_attn_implementation", None)


def packing_support(model) -> str | None:
    """None when the model takes a custom 4D attention mask (its attention implementation is in
    :data:`PACKED_MASKS`), which :func:`packed_prefix_outputs` needs; otherwise the reason."""
    impl = _attn_implementation(model)
    if impl not in PACKED_MASKS:
        return f"attention implementation {impl!r} (a packed forward needs sdpa or eager: a custom 4D mask)"
    return None


def packed_length(prompt_ids, prompt_mask, completion_mask) -> int:
    """Tokens of the packed sequence: the real prefix tokens of each distinct prompt, once, plus
    every row's completion positions (``completion_mask.sum()``), no padding."""
    P = prompt_ids.shape[1]
    if P < 2:
        return int(completion_mask.sum())
    first, _ = prefix_groups(prompt_ids[:, :P - 1], prompt_mask[:, :P - 1])
    return int(prompt_mask[first, :P - 1].sum()) + int(completion_mask.sum())


def packed_prefix_outputs(model, prompt_ids, prompt_mask, completion_ids, completion_mask) -> torch.Tensor:
    """:func:`shared_prefix_outputs` as one forward of one packed sequence (sequence packing without
    padding, as verl's ``use_remove_padding``, with the Prefix Grouper's shared prompts).

    The sequence holds the real prefix tokens of every distinct prompt once, then, for every row, its
    ``len`` positions ``[last prompt token, completion[:len - 1]]`` (``len`` = the row's completion
    tokens; padding never runs). Position ids are each token's own (as in the plain forward), and a
    4D mask lets a position see exactly what it sees in the plain forward: the earlier real tokens of
    its prompt and the earlier positions of its own row. The output head runs only at the row
    positions (``logits_to_keep``), which are scattered back to ``[B, T, D]`` (zeros at padding).
    Same outputs as the plain forward to float reassociation (``tests/models/test_prefix.py``).
    """
    B, P = prompt_ids.shape
    T = completion_ids.shape[1]
    dev = prompt_ids.device
    first, inverse = prefix_groups(prompt_ids[:, :P - 1], prompt_mask[:, :P - 1])
    _, _, position_ids = sequence_inputs(prompt_ids, prompt_mask, completion_ids, completion_mask)
    real = prompt_mask[first, :P - 1].bool()  # [U, P - 1]: the real prefix tokens of each distinct prompt
    prefix_prompt = torch.arange(first.shape[0], device=dev)[:, None].expand_as(real)[real]
    K = int(real.sum())
    valid = completion_mask.bool()
    row = torch.arange(B, device=dev)[:, None].expand(B, T)[valid]  # [N]: the row of each completion position
    col = torch.arange(T, device=dev)[None].expand(B, T)[valid]
    ids = torch.cat([prompt_ids[first, :P - 1][real],
                     torch.cat([prompt_ids[:, P - 1:], completion_ids[:, :T - 1]], dim=1)[valid]])
    pos = torch.cat([position_ids[first, :P - 1][real], position_ids[:, P - 1:P + T - 1][valid]])
    prompt_of = torch.cat([prefix_prompt, inverse[row]])  # [L]: the prompt each position belongs to
    row_of = torch.cat([torch.full((K,), -1, device=dev), row])  # -1: a prefix token
    i = torch.arange(K + row.shape[0], device=dev)
    sees = ((i[None] <= i[:, None]) & (prompt_of[:, None] == prompt_of[None])
            & ((row_of == -1)[None] | (row_of[:, None] == row_of[None])))
    mask = PACKED_MASKS[_attn_implementation(model)](sees, model)
    keep = torch.arange(K, K + row.shape[0], device=dev)
    extra = {"logits_to_keep": keep} if accepts(model, "logits_to_keep") else {}
    out = model(input_ids=ids[None], attention_mask=mask[None, None], position_ids=pos[None], use_cache=False,
                **extra).logits[0]
    if not extra:
        out = out[keep]
    return out.new_zeros(B, T, out.shape[-1]).index_put((row, col), out)


def shared_prefix_outputs(model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                          pack_tokens: int = 0) -> torch.Tensor:
    """The model's outputs (``.logits``: LM logits or value-head outputs) ``[B, T, D]`` at the
    positions that predict each completion token, as :func:`rlvr.models.logprobs.completion_outputs`
    takes them from a plain forward, with one forward of the shared prefix per distinct prompt.

    The shared prefix is the prompt up to its last column (``P - 1`` columns: left padding puts every
    prompt's last real token in column ``P - 1``); its keys/values are gathered to the rows, and one
    forward of ``[last prompt token, completion[:T-1]]`` per row gives all ``T`` outputs, so every
    output (and any dropout after it) is the row's own. A prompt width of 1 has nothing to share:
    the plain forward runs.

    ``pack_tokens > 0``: when the batch packs into at most that many tokens (:func:`packed_length`) and
    the model takes a 4D mask, the same outputs come from :func:`packed_prefix_outputs` (one forward, no
    padding, no cache); a longer batch keeps this path (the packed attention is dense, ``L x L``).
    """
    B, P = prompt_ids.shape
    T = completion_ids.shape[1]
    if P < 2:
        return plain_outputs(model, prompt_ids, prompt_mask, completion_ids, completion_mask)
    if pack_tokens > 0 and packed_length(prompt_ids, prompt_mask, completion_mask) <= pack_tokens:
        return packed_prefix_outputs(model, prompt_ids, prompt_mask, completion_ids, completion_mask)
    if torch.is_grad_enabled() and _fsdp_sharded(model):
        # FSDP2 frees a block's parameters after its forward and gathers them again from hooks on the block's
        # outputs; the KV cache's tensors leave the blocks another way, so a backward through them finds the
        # parameters freed. Every rank of a learner group takes this branch alike (the same batch shapes).
        return plain_outputs(model, prompt_ids, prompt_mask, completion_ids, completion_mask)
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

    def __init__(self, setting: str = "auto", min_savings: float = 0.25, check_tol: float = 1e-3, log=None,
                 pack_tokens: int = 0, agree=None):
        self.setting, self.min_savings, self.check_tol = str(setting).lower(), min_savings, check_tol
        self.log = log
        # a learner group: a check passes only where it passes on every rank (every rank must then run the same
        # forwards, whose collectives would otherwise not match); agree(ok) -> ok on all ranks
        self.agree = agree or (lambda ok: ok)
        self.pack_tokens = pack_tokens  # trainer.pack_tokens: batches up to this many tokens run packed
        self.state: dict[int, str | None] = {}  # id(model) -> None (ok) or the reason for the plain path
        self.packs: dict[int, bool] = {}  # id(model) -> whether its packed forward passed the check
        self.reasons: list[str] = []
        self.used = 0

    def pack_tokens_for(self, model) -> int:
        """``pack_tokens`` for a model whose packed forward passed its check (0: never packed)."""
        return self.pack_tokens if self.packs.get(id(model)) else 0

    def _refuse(self, model, reason: str) -> bool:
        self.state[id(model)] = reason
        line = f"shared-prefix forward off for {type(underlying_model(model)).__name__}: {reason}"
        self.reasons.append(line)
        if self.setting == "always":
            import warnings

            from rlvr.overrides import ConfigWarning

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
                err = f"the shared-prefix forward failed ({type(exc).__name__}: {exc})"
            if not self.agree(err is None):
                return self._refuse(model, err or "its check failed on another learner rank")
            self.state[key] = None
            if self.pack_tokens > 0:
                why = packing_support(model)
                if why is None:
                    try:
                        why = self._check(model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                                          packed_prefix_outputs)
                    except Exception as exc:  # noqa: BLE001 - the cache path still works
                        why = f"it failed ({type(exc).__name__}: {exc})"
                    if not self.agree(why is None):
                        why = why or "its check failed on another learner rank"
                self.packs[key] = why is None
                if why is not None and self.log is not None:
                    self.log(f"note: packed forward off for {type(underlying_model(model)).__name__}: {why}")
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
    def _check(self, model, prompt_ids, prompt_mask, completion_ids, completion_mask,
               layout=None) -> str | None:
        """None when ``layout`` (the cache-gather shared forward by default) gives the plain forward's
        outputs on the first 16 rows; otherwise the reason."""
        layout = layout or shared_prefix_outputs
        was_training = model.training
        model.eval()
        try:
            n = min(prompt_ids.shape[0], 16)
            args = (prompt_ids[:n], prompt_mask[:n], completion_ids[:n], completion_mask[:n])
            plain = plain_outputs(model, *args).float()
            shared = layout(model, *args).float()
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
