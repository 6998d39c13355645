"""A rollout engine on vLLM (extra ``rlvr[vllm]``), colocated in the learner's process.

    engine = VLLMRolloutEngine(model_path, tokenizer, source_model=policy)   # rollout.engine=vllm
    rollout = engine.generate(prompts, SamplingParams(temperature=1.0, n=8, max_new_tokens=64, seed=s))
    engine.update_weights(None, version)     # pulls the policy's current weights into vLLM

The same :class:`~rlvr.rollout.base.RolloutEngine` contract as the HF engine:

* prompts are tokenized, and completions decoded, by *our* tokenizer (vLLM runs with
  ``skip_tokenizer_init``), so both engines see the same token ids (chat templates, BOS);
* ``rollout_logp`` is vLLM's log-prob of each sampled token under the *processed* distribution
  (``logprobs_mode="processed_logprobs"``: temperature and top-p applied), the distribution the
  token was drawn from, as the HF engine returns it;
* a completion ends at any stop token of :class:`~rlvr.rollout.stops.StopConditions` (vLLM's
  ``stop_token_ids``; the stop token is part of the completion, mask 1), at a stop string (applied to
  the returned ids by :meth:`~rlvr.rollout.stops.StopConditions.finalize`, as for every engine: vLLM
  runs without a tokenizer here) or at ``max_new_tokens`` (finish reason ``length``);
* ``SamplingParams.seed`` seeds each prompt's request with its own seed derived from it (one
  shared seed would give every prompt of a batch the same random stream);
* weights: the engine holds the learner's module (``source_model``); ``update_weights(None, v)``
  copies its current weights into vLLM's model in place (the worker's ``reload_weights``, reached
  through ``LLM.collective_rpc``; no copy through disk or another process:
  ``VLLM_ENABLE_V1_MULTIPROCESSING=0``); with LoRA the
  adapter is merged into the weights sent (:func:`rlvr.models.lora.merged_state_dict`), so vLLM
  samples from the adapted policy. ``update_weights(state_dict, v)`` loads the given tensors
  (Hugging Face names).
* ``sleep_mode``: vLLM's sleep/wake (level 1: weights offloaded, KV cache freed): asleep after every
  ``generate``, woken by the next ``update_weights`` or ``generate``, so the learner's update has
  the memory; where the platform has it (CUDA).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Sequence

import torch

from rlvr.rollout.base import IdsPrompts, Rollout, SamplingParams
from rlvr.rollout.stops import StopConditions

_SEED_MOD = 2 ** 63 - 1


def require_vllm():
    from rlvr.extras import VLLM_NOTE, require

    require("vllm", "vllm", "rollout.engine=vllm", VLLM_NOTE)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # its start-up log is long; set INFO to see it
    import vllm

    return vllm


def prompt_seed(seed: int, index: int) -> int:
    """The seed of prompt ``index``'s request in a call seeded with ``seed`` (a SplitMix64 step)."""
    z = (int(seed) * 0x9E3779B97F4A7C15 + (index + 1) * 0xBF58476D1CE4E5B9) & (2 ** 64 - 1)
    z = ((z ^ (z >> 30)) * 0x94D049BB133111EB) & (2 ** 64 - 1)
    return (z ^ (z >> 31)) % _SEED_MOD


class VLLMRolloutEngine(IdsPrompts):
    """Batched sampling with ``vllm.LLM.generate``; log-probs of the sampled tokens come with it."""

    def __init__(self, model_path: str, tokenizer, *, source_model=None, dtype: str = "float32",
                 seed: int = 0, max_model_len: int | None = None, gpu_memory_utilization: float = 0.3,
                 kv_cache_gb: float | None = None, enforce_eager: bool = True, sleep_mode: bool = False,
                 policy_version: int = 0, llm=None, stops: StopConditions | None = None):
        self.vllm = require_vllm()
        self.tokenizer = tokenizer
        if stops is None:
            from transformers import GenerationConfig

            try:
                gen = GenerationConfig.from_pretrained(str(model_path))
            except OSError:
                gen = None
            stops = StopConditions.resolve(tokenizer, gen) if source_model is None else \
                StopConditions.for_model(source_model, tokenizer)
        self.stops = stops
        self.source_model = source_model
        self.policy_version = policy_version
        self.sleep_mode = sleep_mode
        self._asleep = False
        self.weight_syncs = 0
        if llm is None:
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the model lives in this process
            kwargs = dict(model=str(model_path), skip_tokenizer_init=True, dtype=dtype, seed=seed,
                          enforce_eager=enforce_eager, logprobs_mode="processed_logprobs",
                          gpu_memory_utilization=gpu_memory_utilization, enable_prefix_caching=False)
            if max_model_len is not None:
                kwargs["max_model_len"] = max_model_len
            if kv_cache_gb is not None:
                kwargs["kv_cache_memory_bytes"] = int(kv_cache_gb * (1 << 30))
            if sleep_mode:
                kwargs["enable_sleep_mode"] = True
            with _kept_rng():  # in-process vLLM seeds the global RNGs; the run's streams stay as they were
                llm = self.vllm.LLM(**kwargs)
        self.llm = llm
        if source_model is not None:  # the learner's weights may differ from model_path (resume, LoRA)
            self.update_weights(None, policy_version)

    # ------------------------------------------------------------------ weights
    def update_weights(self, state_dict: dict[str, torch.Tensor] | None, policy_version: int) -> None:
        if state_dict is None and self.source_model is not None:
            from rlvr.models.lora import merged_state_dict

            state_dict = merged_state_dict(self.source_model)
        if state_dict is not None:
            self._wake()
            items = [(name, t.detach()) for name, t in state_dict.items()]
            # vLLM's in-place reload: checkpoint-format names and layouts, re-processed for the kernels
            # (a plain load_weights after start-up fails on backends that repack weights, e.g. CPU)
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": items,
                                                              "is_checkpoint_format": True})
            self.weight_syncs += 1
        self.policy_version = policy_version

    def sleep(self) -> None:
        """Free vLLM's memory while the learner trains (sleep mode only: after every ``generate``; the
        next ``update_weights`` or ``generate`` wakes it)."""
        if self.sleep_mode and not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = True

    def _wake(self) -> None:
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    # ------------------------------------------------------------------ sampling
    def sampling_params(self, params: SamplingParams, index: int):
        greedy = params.temperature <= 0
        if params.return_support and params.truncates:
            raise NotImplementedError("the vLLM engine does not return the sampler's kept-token sets "
                                      "(trainer.logprob_support=sampled); use rollout.engine=lean or hf")
        kwargs = dict(n=params.n, temperature=0.0 if greedy else params.temperature,
                      top_p=1.0 if greedy else params.top_p, top_k=0 if greedy else params.top_k,
                      max_tokens=params.max_new_tokens, logprobs=0, detokenize=False,
                      stop_token_ids=list(self.stops.token_ids))
        if params.seed is not None:
            kwargs["seed"] = prompt_seed(params.seed, index)
        try:
            return self.vllm.SamplingParams(**kwargs)
        except (TypeError, ValueError):  # an older vLLM: top_k=-1 means "off"
            kwargs["top_k"] = -1
            return self.vllm.SamplingParams(**kwargs)

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], params: SamplingParams) -> Rollout:
        tok = self.tokenizer
        self._wake()
        # prompts as text, or as token ids used as they are (generate_ids: a multi-turn episode's context)
        ids = tok(list(prompts))["input_ids"] if all(isinstance(p, str) for p in prompts) else [list(p) for p in prompts]
        requests = [{"prompt_token_ids": list(p)} for p in ids]
        outputs = self.llm.generate(requests, [self.sampling_params(params, i) for i in range(len(ids))],
                                    use_tqdm=False)
        self.sleep()  # sleep mode: the learner has the memory until the next weights or rollout
        rows, logps, finish, index = [], [], [], []
        for i, out in enumerate(outputs):
            completions = sorted(out.outputs, key=lambda c: c.index)
            if len(completions) != params.n:
                raise RuntimeError(f"vLLM returned {len(completions)} completions for prompt {i}, asked {params.n}")
            for c in completions:
                tokens = list(c.token_ids)
                rows.append(tokens)
                logps.append(_sampled_logprobs(c, tokens))
                index.append(i)
        B = len(rows)
        T = max([len(r) for r in rows] + [1])
        completion = torch.full((B, T), tok.pad_token_id, dtype=torch.long)
        rollout_logp = torch.zeros((B, T), dtype=torch.float32)
        for b, (r, lp) in enumerate(zip(rows, logps)):
            completion[b, :len(r)] = torch.tensor(r, dtype=torch.long)
            rollout_logp[b, :len(r)] = torch.tensor(lp, dtype=torch.float32)
        # the stop rule (rlvr.rollout.stops), as every engine applies it; a row shorter than T ended
        # at a stop token (kept), so the pad after it is never read
        completion, mask, rollout_logp, finish, texts = self.stops.finalize(completion, rollout_logp, tok)
        P = max(len(p) for p in ids)
        prompt_ids = torch.full((B, P), tok.pad_token_id, dtype=torch.long)
        prompt_mask = torch.zeros((B, P), dtype=torch.long)
        for b, i in enumerate(index):
            p = ids[i]
            prompt_ids[b, P - len(p):] = torch.tensor(p, dtype=torch.long)
            prompt_mask[b, P - len(p):] = 1
        return Rollout(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion,
                       completion_mask=mask, rollout_logp=rollout_logp, finish_reason=finish,
                       prompt_index=torch.tensor(index, dtype=torch.long), texts=texts,
                       policy_version=self.policy_version, num_generated_tokens=int(mask.sum()),
                       versions=torch.full((B,), self.policy_version, dtype=torch.long))


@contextmanager
def _kept_rng():
    import random

    import numpy as np

    state = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.random.set_rng_state(state[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _sampled_logprobs(completion, tokens: list[int]) -> list[float]:
    """The log-prob of each sampled token from vLLM's per-position ``{token_id: Logprob}`` dicts."""
    entries = completion.logprobs
    if entries is None or len(entries) != len(tokens):
        raise RuntimeError("vLLM returned no log-prob for some sampled tokens (logprobs=0 was asked)")
    out = []
    for t, entry in zip(tokens, entries):
        lp = entry.get(t) if hasattr(entry, "get") else None
        if lp is None:
            raise RuntimeError(f"vLLM's log-probs miss the sampled token {t}")
        out.append(float(getattr(lp, "logprob", lp)))
    return out


def make_vllm_engine(config, model, tokenizer, model_path: str) -> VLLMRolloutEngine:
    """The engine ``rollout.engine=vllm`` builds: vLLM loads ``model_path`` (the base checkpoint) and
    then takes the learner's weights (``model``: LoRA merged) before the first rollout."""
    v = config.rollout.vllm
    return VLLMRolloutEngine(model_path, tokenizer, source_model=model, dtype=config.model.dtype,
                             seed=config.run.seed, max_model_len=v.max_model_len,
                             gpu_memory_utilization=v.gpu_memory_utilization, kv_cache_gb=v.kv_cache_gb,
                             enforce_eager=v.enforce_eager, sleep_mode=v.sleep_mode,
                             stops=StopConditions.from_config(config, model, tokenizer))
