"""A rollout engine on Hugging Face ``generate``."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from rlvr.rollout.base import IdsPrompts, Rollout, SamplingParams, encode_prompts, kept_ids, pad_support, prompt_seeds
from rlvr.rollout.stops import StopConditions


#: HF ``generate`` samples from torch's global RNG. A seeded call holds this lock while it forks
#: and seeds that RNG, so rollout threads and evaluation never draw from each other's stream.
GENERATION_LOCK = threading.RLock()


@contextmanager
def seeded_generation(seed: int | None):
    """Run the body with the global torch RNG seeded to ``seed`` and restored afterwards (no-op: None)."""
    if seed is None:
        yield
        return
    with GENERATION_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class HFRolloutEngine(IdsPrompts):
    """Batched sampling with ``model.generate``; returns per-token log-probs of the samples.

    The engine shares the policy's module in the single-process mode (``update_weights`` then only
    bumps the version); a separate engine (another process, a Ray actor) loads the state dict.
    The log-probs are ``log_softmax`` of the processed scores, i.e. of the distribution that was
    actually sampled from (logits / temperature, then top-p). A completion ends at any of ``stops``
    (default: the model's own, :meth:`StopConditions.for_model`; the rule: :mod:`rlvr.rollout.stops`).
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 batch_size: int = 512, policy_version: int = 0, stops: StopConditions | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.policy_version = policy_version
        self.stops = stops if stops is not None else StopConditions.for_model(model, tokenizer)
        #: called after every generated token (partial rollouts, as :attr:`LeanRolloutEngine.on_step`)
        self.on_step = None

    def update_weights(self, state_dict: dict[str, torch.Tensor] | None, policy_version: int) -> None:
        if state_dict is not None:
            self.model.load_state_dict(state_dict)
        self.policy_version = policy_version

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], params: SamplingParams) -> Rollout:
        expanded = [p for p in prompts for _ in range(params.n)]
        index = torch.arange(len(prompts)).repeat_interleave(params.n)
        start_version = self.policy_version  # rows carry their oldest token's version (partial rollouts)
        if params.batch_invariant:  # each prompt's group alone, from its own stream (SamplingParams.batch_invariant)
            chunks = []
            for p, seed in zip(prompts, prompt_seeds(0 if params.seed is None else params.seed, prompts)):
                with seeded_generation(seed):
                    chunks.append(self._generate([p] * params.n, params))
        else:
            with seeded_generation(params.seed):
                chunks = [self._generate(expanded[i:i + self.batch_size], params)
                          for i in range(0, len(expanded), self.batch_size)]
        rollout = _concat(chunks, self.tokenizer.pad_token_id)
        rollout.prompt_index = index
        rollout.policy_version = start_version
        rollout.versions = torch.full((len(expanded),), start_version, dtype=torch.long)
        return rollout

    def _generate(self, prompts: Sequence, params: SamplingParams) -> Rollout:
        tok = self.tokenizer
        ids, mask = encode_prompts(tok, prompts)
        enc = {"input_ids": ids.to(self.model.device), "attention_mask": mask.to(self.model.device)}
        greedy = params.temperature <= 0
        was_training = self.model.training
        self.model.eval()
        stops = self.stops
        extra = {"stop_strings": list(stops.strings), "tokenizer": tok} if stops.strings else {}
        step_versions: list[int] = []
        if self.on_step is not None:  # partial rollouts: called after every token, before the next forward
            extra["stopping_criteria"] = StoppingCriteriaList([_InFlight(self, step_versions)])
        out = self.model.generate(
            **enc, do_sample=not greedy, max_new_tokens=params.max_new_tokens,
            temperature=None if greedy else params.temperature,
            top_p=None if greedy else params.top_p, top_k=None if greedy or params.top_k <= 0 else params.top_k,
            eos_token_id=list(stops.token_ids), pad_token_id=tok.pad_token_id,
            return_dict_in_generate=True, output_scores=True, output_logits=greedy, **extra)
        self.model.train(was_training)
        P = enc["input_ids"].shape[1]
        completion = out.sequences[:, P:]
        scores = out.logits if greedy else out.scores
        logp = torch.stack([torch.log_softmax(s.float(), dim=-1) for s in scores], dim=1)
        sampled_logp = logp.gather(-1, completion.unsqueeze(-1)).squeeze(-1)
        # the stop rule (rlvr.rollout.stops): a stop token is the completion's last token, kept
        completion, mask, sampled_logp, finish, texts = stops.finalize(completion.cpu(), sampled_logp.cpu(), tok)
        support = None
        if params.return_support and params.truncates:  # the warped scores are -inf outside the kept set
            steps = [kept_ids(s.float()).cpu() for s in scores]
            k = max(x.shape[1] for x in steps)
            support = torch.stack([torch.nn.functional.pad(x, (0, k - x.shape[1]), value=-1) for x in steps], dim=1)
            support.masked_fill_(mask.unsqueeze(-1) == 0, -1)  # past a row's end: no token, no set
        return Rollout(
            prompt_ids=enc["input_ids"].cpu(), prompt_mask=enc["attention_mask"].cpu(),
            completion_ids=completion, completion_mask=mask, rollout_logp=sampled_logp, finish_reason=finish,
            prompt_index=torch.zeros(0, dtype=torch.long), texts=texts, policy_version=0,
            num_generated_tokens=int(mask.sum()), support_ids=support,
            token_versions=(_step_versions(step_versions, completion.shape) if self.on_step is not None else None))


def _step_versions(versions: list[int], shape) -> torch.Tensor:
    """``[B, T]`` from the version of each step (one call per generated token)."""
    v = torch.tensor(versions[: shape[1]], dtype=torch.long)
    return v.unsqueeze(0).expand(shape).clone()


class _InFlight(StoppingCriteria):
    """Never stops: records the version that drew each token, then lets the engine's ``on_step`` load new
    weights in place (HF's KV cache of earlier tokens is kept, as in the lean engine)."""

    def __init__(self, engine, versions: list[int]):
        self.engine, self.versions = engine, versions

    def __call__(self, input_ids, scores, **kwargs):
        self.versions.append(self.engine.policy_version)
        self.engine.on_step()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def _pad_cat(tensors: list[torch.Tensor], value, left: bool) -> torch.Tensor:
    width = max(t.shape[1] for t in tensors)
    padded = []
    for t in tensors:
        pad = (width - t.shape[1], 0) if left else (0, width - t.shape[1])
        padded.append(torch.nn.functional.pad(t, pad, value=value))
    return torch.cat(padded)


def _concat(chunks: list[Rollout], pad_id: int) -> Rollout:
    if len(chunks) == 1:
        return chunks[0]
    return Rollout(
        prompt_ids=_pad_cat([c.prompt_ids for c in chunks], pad_id, left=True),
        prompt_mask=_pad_cat([c.prompt_mask for c in chunks], 0, left=True),
        completion_ids=_pad_cat([c.completion_ids for c in chunks], pad_id, left=False),
        completion_mask=_pad_cat([c.completion_mask for c in chunks], 0, left=False),
        rollout_logp=_pad_cat([c.rollout_logp for c in chunks], 0.0, left=False),
        finish_reason=sum((c.finish_reason for c in chunks), []),
        prompt_index=torch.zeros(0, dtype=torch.long), texts=sum((c.texts for c in chunks), []),
        policy_version=0, num_generated_tokens=sum(c.num_generated_tokens for c in chunks),
        loss_mask=(None if all(c.loss_mask is c.completion_mask for c in chunks)
                   else _pad_cat([c.loss_mask for c in chunks], 0, left=False)),
        support_ids=pad_support([c.support_ids for c in chunks], [c.completion_ids.shape[1] for c in chunks]),
        token_versions=(None if all(c.token_versions is None for c in chunks)
                        else _pad_cat([c.versions_per_token() for c in chunks], -1, left=False)))
