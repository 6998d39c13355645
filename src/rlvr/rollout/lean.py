"""A lean sampler for small decoder-only models (``rollout.engine=lean``).

    engine = LeanRolloutEngine(model, tokenizer)                     # shares the learner's module
    rollout = engine.generate(prompts, SamplingParams(temperature=1.0, n=8, max_new_tokens=6, seed=s))

The same :class:`~rlvr.rollout.base.RolloutEngine` contract as :class:`~rlvr.rollout.hf.HFRolloutEngine`
(tokens, ``rollout_logp``, finish reasons, versions), with less work per rollout:

* **prefill once per prompt**: the prompt batch (``B0`` rows, left-padded) goes through the model once
  and its keys/values are copied to the ``G = n`` rows of its group (HF ``generate`` prefills every
  one of the ``B0 x G`` rows);
* **a preallocated static KV cache** (one ``[B, kv_heads, P + max_new_tokens, head_dim]`` tensor
  per layer, written in place: no concatenation per step);
* **a decode loop without logits-processor machinery**: temperature and top-p are applied inline
  exactly as transformers' ``TemperatureLogitsWarper`` then ``TopPLogitsWarper`` do (top-k is off, as
  in the HF engine), then ``log_softmax`` and a draw by the inverse CDF (:func:`sample_categorical`: the
  distribution ``torch.multinomial`` draws from, with one random number per row instead of one per token);
* **finished rows leave the batch**: once half the rows in the batch have finished (any stop token of
  :class:`~rlvr.rollout.stops.StopConditions`, which is part of the completion, or a stop string), they are dropped from the batch and the cache
  (``compact_at``), and decoding stops when every row has finished.

Log-probs: ``log_softmax`` of the processed scores (logits / temperature, then top-p), i.e. of the
distribution each token was drawn from; greedy (``temperature=0``) returns ``log_softmax(logits)``,
as the HF engine does. Seeds: ``SamplingParams.seed`` seeds a private ``torch.Generator`` for the call
(same seed, same samples; the global RNG is neither read nor advanced, so no lock is needed); without
a seed the global RNG is used, as HF ``generate`` does.

The model's own submodules run every layer (norms, projections incl. LoRA adapters, MLP, rotary
embedding, output head, forward hooks); only the attention over the cache is ours (plain matmuls
and a softmax, in fp32 whatever the weights' dtype). Supported: the Llama family (``llama``,
``qwen2``, ``qwen3``, ``mistral``; the built-in tiny model is ``llama``) without a sliding window
shorter than prompt + completion; anything else raises :class:`LeanUnsupported` (the factory then falls back to the HF
engine and says why), and a call whose length exceeds a model's sliding window goes to HF ``generate``.

``dtype`` (``rollout.dtype``): sample from a copy of the weights in that dtype (e.g. ``bfloat16`` on a
CPU with AVX512-BF16 or AMX, or a GPU; activations then are bf16 too) while the learner keeps its fp32 weights; the copy is refreshed
from the learner's module at every ``generate`` (one cast-copy of the weights per rollout), so it
can never be stale. Buffers (the rotary frequencies) stay in their dtype.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import torch

from rlvr.rollout.base import IdsPrompts, Rollout, SamplingParams, encode_prompts, kept_ids, prompt_seeds
from rlvr.rollout.hf import _concat
from rlvr.rollout.stops import StopConditions

#: ``config.model_type`` values whose decoder layers the lean engine drives.
SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")


class LeanUnsupported(ValueError):
    """The model is not one the lean engine can drive (the message says why)."""


@dataclass
class _Parts:
    embed: torch.nn.Module
    layers: list
    norm: torch.nn.Module
    rotary: torch.nn.Module
    lm_head: torch.nn.Module
    window: int | None  # the shortest sliding window of any layer (None: full attention everywhere)


def decoder_parts(model) -> _Parts:
    """The submodules of a Llama-family causal LM (a peft model is unwrapped), or :class:`LeanUnsupported`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = getattr(base, "config", None)
    model_type = getattr(cfg, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise LeanUnsupported(f"model type {model_type!r} (the lean engine drives {', '.join(SUPPORTED_MODEL_TYPES)})")
    inner = getattr(base, getattr(base, "base_model_prefix", "model"), None)
    lm_head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    need = {"embed_tokens": None, "layers": None, "norm": None, "rotary_emb": None}
    for name in need:
        need[name] = getattr(inner, name, None)
        if need[name] is None:
            raise LeanUnsupported(f"{type(base).__name__} has no {name} where a {model_type} model has one")
    if lm_head is None:
        raise LeanUnsupported(f"{type(base).__name__} has no output head")
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logits_scaling", None):
        raise LeanUnsupported("logit soft-capping / scaling is not implemented in the lean engine")
    layers = list(need["layers"])[: cfg.num_hidden_layers]
    windows = []
    for layer in layers:
        attn = layer.self_attn
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            if not hasattr(attn, name):
                raise LeanUnsupported(f"attention module {type(attn).__name__} has no {name}")
        w = getattr(attn, "sliding_window", None)
        if model_type == "mistral":
            w = getattr(cfg, "sliding_window", None)
        if w is not None:
            windows.append(int(w))
    return _Parts(need["embed_tokens"], layers, need["norm"], need["rotary_emb"], lm_head,
                  min(windows) if windows else None)


def lean_drives(model) -> bool:
    """True when the lean engine samples ``model`` itself on every call (a supported model without a
    sliding window); otherwise some or all calls go to HF ``generate`` (and its generation config)."""
    try:
        return decoder_parts(model).window is None
    except LeanUnsupported:
        return False


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def _qkv(attn, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Queries, keys, values ``[B, heads, S, head_dim]`` with rotary embeddings (as the HF layer)."""
    B, S, _ = h.shape
    d = attn.head_dim
    q = attn.q_proj(h).view(B, S, -1, d)
    k = attn.k_proj(h).view(B, S, -1, d)
    v = attn.v_proj(h).view(B, S, -1, d).transpose(1, 2)
    if hasattr(attn, "q_norm"):  # qwen3: RMSNorm over the head dimension
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    return q, k, v


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v with grouped-query heads, ``[B, heads, S_q, head_dim]``.

    ``bias`` is 0 where a key may be seen and -inf elsewhere (``[B, 1, S_q or 1, S_k]``). The query
    heads of one key/value head are stacked along the query axis, so no key/value is repeated. Plain
    matmuls: for one query token they are several times faster than CPU ``scaled_dot_product_attention``.
    """
    B, H, Sq, d = q.shape
    Hkv = k.shape[1]
    if Hkv != H:
        q = q.reshape(B, Hkv, (H // Hkv) * Sq, d)
        if bias.shape[2] != 1:
            bias = bias.repeat(1, 1, H // Hkv, 1)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale + bias
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)
    return torch.matmul(probs, v).reshape(B, H, Sq, d)


def top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """transformers' ``TopPLogitsWarper`` (min_tokens_to_keep=1, filter value -inf)."""
    sorted_scores, order = torch.sort(scores, descending=False)
    cum = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cum <= (1 - top_p)
    drop_sorted[..., -1:] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))


def top_k_filter(scores: torch.Tensor, top_k: int) -> torch.Tensor:
    """transformers' ``TopKLogitsWarper`` (filter value -inf): keep the scores >= the k-th largest."""
    k = min(int(top_k), scores.shape[-1])
    kth = torch.topk(scores, k, dim=-1).values[..., -1:]
    return scores.masked_fill(scores < kth, float("-inf"))


#: a decode step with at most this many rows runs a plain CPU head as ``W @ h^T`` (:func:`decode_head`)
HEAD_TRANSPOSE_ROWS = 64


def decode_head(head: torch.nn.Module, h: torch.Tensor) -> torch.Tensor:
    """The output head on one position's hidden states ``[B, D]``: logits ``[B, V]``.

    A plain ``nn.Linear`` head on the CPU, without hooks, with at most :data:`HEAD_TRANSPOSE_ROWS` rows and a
    vocabulary at least 8x its width, runs as ``(W @ h^T)^T``: the same dot products (float reassociation
    apart) in the GEMM layout CPU BLAS runs 1.4-1.7x faster for a few rows against a wide vocabulary (16-32
    rows x 384 against 32k-152k tokens: 11.4 against 6.5 ms at 32k, docs/speed.md); at 128 rows it is no
    faster. Anything else (LoRA on the head, hooks, a GPU) goes through the module."""
    w = getattr(head, "weight", None)
    if (type(head) is torch.nn.Linear and h.device.type == "cpu" and h.dim() == 2
            and h.shape[0] <= HEAD_TRANSPOSE_ROWS and w.shape[0] >= 8 * w.shape[1] and h.dtype == w.dtype
            and not (head._forward_hooks or head._forward_pre_hooks or torch.nn.modules.module._global_forward_hooks
                     or torch.nn.modules.module._global_forward_pre_hooks)):
        out = torch.mm(w, h.t()).t().contiguous()
        return out + head.bias if head.bias is not None else out
    return head(h)


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw per row ``[B]`` from the categorical distributions ``probs`` ``[B, V]`` (non-negative, rows
    need not sum to 1), by the inverse of the cumulative distribution: one uniform ``u`` per row, the token
    ``i`` with ``F(i - 1) <= u F(V) < F(i)``, ``F`` the running sum in float64.

    The same distribution as ``torch.multinomial(probs, 1)`` (a different stream of random numbers): a
    token of probability 0 spans an empty interval and is never drawn (``u F(V)`` is kept below ``F(V)``),
    and float64 sums keep every interval to within ~1e-16 of its probability. It needs ``B`` random
    numbers a step where ``torch.multinomial`` draws ``B x V`` exponentials: at a 32k vocabulary that was
    half of the sampler's time on a CPU (benchmarks/vs_trl.py W3, docs/speed.md). Inverse transform
    sampling: Devroye, "Non-Uniform Random Variate Generation" (1986), chapter II.2 (the inversion method).

    Raises ValueError on a row with a NaN or infinite entry or no positive mass (where ``torch.multinomial``
    raises too): a search over such sums would return some token silently."""
    cdf = probs.to(torch.float64).cumsum(-1)
    total = cdf[:, -1:]
    if not bool((torch.isfinite(total) & (total > 0)).all()) or bool((probs < 0).any()):
        raise ValueError("sampling probabilities hold NaN, inf, a negative entry or a row with no mass "
                         "(non-finite logits: check the model's weights and the sampling temperature)")
    u = torch.rand(probs.shape[0], 1, generator=generator, dtype=torch.float64, device=probs.device)
    x = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, x, right=True).squeeze(1)


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None):
    """The next token of every row, its log-prob under the distribution it was drawn from, and (when
    ``params.return_support`` and the distribution is truncated) the kept ids ``[B, K]`` (else None)."""
    if params.temperature <= 0:
        token = logits.argmax(-1)
        logp = torch.log_softmax(logits, dim=-1)
        support = None
    else:
        scores = logits / params.temperature if params.temperature != 1.0 else logits
        if params.top_k > 0:
            scores = top_k_filter(scores, params.top_k)
        if params.top_p < 1.0:
            scores = top_p_filter(scores, params.top_p)
        logp = torch.log_softmax(scores, dim=-1)
        token = sample_categorical(logp.exp(), generator)
        support = kept_ids(scores) if params.return_support and params.truncates else None
    return token, logp.gather(-1, token.unsqueeze(-1)).squeeze(-1), support


class LeanRolloutEngine(IdsPrompts):
    """Prefill once per prompt, a static KV cache, an inline sampling loop (see the module docstring)."""

    def __init__(self, model, tokenizer, batch_size: int = 512, policy_version: int = 0,
                 dtype: torch.dtype | str | None = None, compact_at: float = 2.0,
                 stops: StopConditions | None = None):
        self.model = model
        #: what ends a completion (default: the model's own; the rule: :mod:`rlvr.rollout.stops`)
        self.stops = stops if stops is not None else StopConditions.for_model(model, tokenizer)
        #: drop finished rows from the batch once at least 1/compact_at of them have finished (0: never)
        self.compact_at = compact_at
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.policy_version = policy_version
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        decoder_parts(model)  # fail now (LeanUnsupported) rather than at the first rollout
        self._shadow = None  # the rollout.dtype copy of the weights, when it differs from the model's
        #: called after every decode step (partial rollouts, ``runtime.partial_rollouts``): it may load new
        #: weights into the model in place and call :meth:`update_weights`; later tokens then use them (the KV
        #: cache of earlier tokens is kept), and ``Rollout.token_versions`` records each token's version
        self.on_step = None

    def update_weights(self, state_dict: dict[str, torch.Tensor] | None, policy_version: int) -> None:
        if state_dict is not None:
            self.model.load_state_dict(state_dict)
        self.policy_version = policy_version

    # ------------------------------------------------------------------ weights in the sampling dtype
    def _sampling_module(self):
        model = self.model
        dtype = self.dtype
        param = next(model.parameters())
        if dtype is None or dtype == param.dtype:
            return model
        with torch.no_grad():
            if self._shadow is None:
                shadow = copy.deepcopy(model)
                for p in shadow.parameters():
                    p.grad = None
                    p.requires_grad_(False)
                    if p.is_floating_point():
                        p.data = p.data.to(dtype)
                self._shadow = shadow.eval()
            else:  # refreshed every call: the learner's module may have been updated in place
                for dst, src in zip(self._shadow.parameters(), model.parameters()):
                    dst.copy_(src)
        return self._shadow

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(self, prompts: Sequence[str], params: SamplingParams) -> Rollout:
        module = self._sampling_module()
        parts = decoder_parts(module)
        n = params.n
        start_version = self.policy_version  # rows carry their oldest token's version (partial rollouts)
        per_chunk = max(1, self.batch_size // n)
        was_training = module.training
        module.eval()
        try:
            device = parts.embed.weight.device
            if params.batch_invariant:  # each prompt alone, from its own stream (SamplingParams.batch_invariant)
                seeds = prompt_seeds(0 if params.seed is None else params.seed, prompts)
                chunks = [self._generate(parts, [p], params, torch.Generator(device=device).manual_seed(s), module)
                          for p, s in zip(prompts, seeds)]
            else:
                generator = None
                if params.seed is not None:
                    generator = torch.Generator(device=device).manual_seed(int(params.seed))
                chunks = [self._generate(parts, prompts[i:i + per_chunk], params, generator, module)
                          for i in range(0, len(prompts), per_chunk)]
        finally:
            module.train(was_training)
        rollout = _concat(chunks, self.tokenizer.pad_token_id)
        rollout.prompt_index = torch.arange(len(prompts)).repeat_interleave(n)
        rollout.policy_version = start_version
        rollout.versions = torch.full((len(prompts) * n,), start_version, dtype=torch.long)
        return rollout

    def _hf_fallback(self, module, prompts, params, generator) -> Rollout:
        from rlvr.rollout.hf import HFRolloutEngine, seeded_generation

        engine = HFRolloutEngine(module, self.tokenizer, batch_size=len(prompts) * params.n, stops=self.stops)
        seed = None if generator is None else int(torch.randint(0, 2 ** 62, (1,), generator=generator))
        expanded = [p for p in prompts for _ in range(params.n)]
        with seeded_generation(seed):
            return engine._generate(expanded, params)

    def _generate(self, parts: _Parts, prompts: Sequence[str], params: SamplingParams,
                  generator: torch.Generator | None, module) -> Rollout:
        tok = self.tokenizer
        device = parts.embed.weight.device
        ids, pmask = (t.to(device) for t in encode_prompts(tok, prompts))
        G, N = params.n, params.max_new_tokens
        B0, P = ids.shape
        B, L = B0 * G, P + N
        if parts.window is not None and L > parts.window:
            return self._hf_fallback(module, prompts, params, generator)
        pad = tok.pad_token_id
        stop_ids = self.stops.id_tensor(device)
        strings = bool(self.stops.strings)
        layers = parts.layers

        # --- prefill: one row per prompt; keys/values copied to the G rows of its group
        valid = pmask.bool()
        positions = (pmask.cumsum(-1) - 1).clamp(min=0)
        x = parts.embed(ids)
        cos, sin = parts.rotary(x, positions)
        causal = torch.ones(P, P, dtype=torch.bool, device=device).tril()
        allowed = (causal[None] & valid[:, None, :]) | torch.eye(P, dtype=torch.bool, device=device)[None]
        adt = torch.float32  # attention and the cache in fp32 (a bf16 model's matmuls stay bf16)
        neg = torch.finfo(adt).min
        bias = torch.zeros(allowed.shape, dtype=adt, device=device).masked_fill_(~allowed, neg)
        bias = bias[:, None]  # [B0, 1, P, P]; a pad query sees itself only (finite, never read)
        keys, values = [], []
        for layer in layers:
            attn = layer.self_attn
            q, k, v = _qkv(attn, layer.input_layernorm(x), cos, sin)
            kc = torch.empty((B, k.shape[1], L, k.shape[3]), dtype=adt, device=device)
            vc = torch.empty((B, v.shape[1], L, v.shape[3]), dtype=adt, device=device)
            kc[:, :, :P] = k.repeat_interleave(G, dim=0)
            vc[:, :, :P] = v.repeat_interleave(G, dim=0)
            keys.append(kc)
            values.append(vc)
            o = _attend(q.to(adt), k.to(adt), v.to(adt), bias, attn.scaling).to(x.dtype)
            x = x + attn.o_proj(o.transpose(1, 2).reshape(B0, P, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        logits = decode_head(parts.lm_head, parts.norm(x[:, -1:])[:, -1]).float().repeat_interleave(G, dim=0)

        # --- decode: one token per active row per step, written into the static cache in place
        plen = pmask.sum(-1).repeat_interleave(G)
        key_bias = torch.zeros((B, 1, 1, L), dtype=adt, device=device)  # 0: a key to attend to
        key_bias[:, 0, 0, :P].masked_fill_(~valid.repeat_interleave(G, dim=0), neg)
        completion = torch.full((B, N), pad, dtype=torch.long, device=device)
        sampled_logp = torch.zeros((B, N), dtype=torch.float32, device=device)
        rows = torch.arange(B, device=device)  # the rows still in the batch (finished ones are dropped)
        finished = torch.zeros(B, dtype=torch.bool, device=device)  # ... of those, finished but not dropped
        width = 0
        supports: list[tuple[torch.Tensor, int, torch.Tensor]] = []  # (rows, t, kept ids) per step, if recorded
        in_flight = self.on_step is not None  # partial rollouts: record the weights behind each token
        token_versions = torch.full((B, N), self.policy_version, dtype=torch.long) if in_flight else None
        for t in range(N):
            token, lp, kept = sample_next(logits, params, generator)
            token = token.masked_fill(finished, pad)
            completion[rows, t] = token
            sampled_logp[rows, t] = lp.masked_fill(finished, 0.0)
            if kept is not None:
                supports.append((rows, t, kept))
            if in_flight:  # the version whose logits drew token t; then new weights, in place, before the next
                token_versions[rows.cpu(), t] = self.policy_version
                before = self.policy_version
                self.on_step()
                if self.policy_version != before and self._shadow is not None:
                    self._sampling_module()  # the rollout.dtype copy follows, in place (parts point into it)
            width = t + 1
            finished = finished | torch.isin(token, stop_ids)
            if strings and not bool(finished.all()):  # a stop string ends a row at the token completing it
                hit = self.stops.string_hit(tok, completion[rows, : t + 1].tolist())
                finished = finished | torch.tensor(hit, dtype=torch.bool, device=device)
            n_done = int(finished.sum())
            if t == N - 1 or n_done == len(rows):
                break
            if n_done * self.compact_at >= len(rows):  # drop finished rows from the batch (and cache)
                keep = (~finished).nonzero().squeeze(1)
                rows, token, plen, key_bias = rows[keep], token[keep], plen[keep], key_bias[keep]
                keys = [k.index_select(0, keep) for k in keys]
                values = [v.index_select(0, keep) for v in values]
                finished = finished[keep]
            Bt, S = len(rows), P + t + 1
            x = parts.embed(token[:, None])
            cos, sin = parts.rotary(x, (plen + t)[:, None])
            step_bias = key_bias[..., :S]
            for layer, kc, vc in zip(layers, keys, values):
                attn = layer.self_attn
                q, k, v = _qkv(attn, layer.input_layernorm(x), cos, sin)
                kc[:, :, P + t] = k[:, :, 0]
                vc[:, :, P + t] = v[:, :, 0]
                o = _attend(q.to(adt), kc[:, :, :S], vc[:, :, :S], step_bias, attn.scaling).to(x.dtype)
                x = x + attn.o_proj(o.transpose(1, 2).reshape(Bt, 1, -1))
                x = x + layer.mlp(layer.post_attention_layernorm(x))
            logits = decode_head(parts.lm_head, parts.norm(x)[:, -1]).float()

        completion, sampled_logp = completion[:, :width].cpu(), sampled_logp[:, :width].cpu()
        # the stop rule (rlvr.rollout.stops): a stop token is the completion's last token, kept
        completion, mask, sampled_logp, finish, texts = self.stops.finalize(completion, sampled_logp, tok, pad)
        support = None
        if supports:
            support = torch.full((B, width, max(k.shape[1] for _, _, k in supports)), -1, dtype=torch.int32)
            for r, t, k in supports:
                support[r.cpu(), t, : k.shape[1]] = k.cpu()
            support.masked_fill_(mask.unsqueeze(-1) == 0, -1)  # past a row's end: no token, no set
        return Rollout(
            prompt_ids=ids.repeat_interleave(G, dim=0).cpu(), prompt_mask=pmask.repeat_interleave(G, dim=0).cpu(),
            completion_ids=completion, completion_mask=mask, rollout_logp=sampled_logp, finish_reason=finish,
            prompt_index=torch.zeros(0, dtype=torch.long), texts=texts, policy_version=0,
            num_generated_tokens=int(mask.sum()), support_ids=support,
            token_versions=token_versions[:, :width] if in_flight else None)
