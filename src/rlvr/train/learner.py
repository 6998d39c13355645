"""The learner: one RL step on one batch, as named stages called in order by :meth:`Learner.update`.

All the math comes from :mod:`rlvr.algorithms` through its registry entry points; this module
only moves tensors. One call of :meth:`Learner.update` consumes one :class:`Experience`, filling a
:class:`~rlvr.train.step.StepBatch` stage by stage:

1. :meth:`~Learner.logprobs_stage`: ``old_logp`` recomputed by the trainer, no grad, unless the engine's
   ``rollout_logp`` provably is the same number (:mod:`rlvr.train.old_logp`; metric ``old_logp_reused``),
   and ``ref_logp`` when a KL term or the loss needs the reference;
2. :meth:`~Learner.advantages_stage`: the controllers of the ``rewards`` stage, the KL in the reward
   (optional), ``compute_advantages`` (with the critics' values), AsyPPO's masks, the controllers of the
   ``advantages`` stage (:mod:`rlvr.control.controllers`: each declares its stages);
3. :meth:`~Learner.weights_stage`: per-token weights known before the update (mismatch correction,
   stale rows); the token-weight registry joins them per micro-batch (:meth:`~Learner.token_weights`);
4. :meth:`~Learner.optimize_stage`: ``ppo_epochs`` x ``num_minibatches`` optimizer steps; each minibatch
   is split into micro-batches whose loss is the sum of the registered loss terms
   (:mod:`rlvr.train.loss_terms`: the policy loss, the entropy bonus, the KL loss), normalised by the
   *minibatch* token/sequence/prompt counts, so the accumulated gradient equals the full-minibatch
   gradient exactly. Minibatches and micro-batches hold whole groups, so group-wise losses (REAL,
   trajectory balance) see every response of a prompt together. With ``trainer.sort_by_length`` the
   groups are ordered by length before they are cut into micro-batches, and every forward trims the
   padding its rows share;
5. :meth:`~Learner.optimizer_step`: clip, then step, or skip a step whose loss or gradient norm is not
   finite.

Two masks: the forward passes attend to the completion mask; everything that counts tokens (losses,
aggregation denominators, entropy, KL, mismatch weights, advantages, metrics) reads the *loss mask*
(:func:`loss_mask`), the tokens the policy wrote. For a single-turn completion they are equal.

Every forward (:meth:`Learner._forward_stats`) computes the head only at the completion positions,
shares each prompt's prefix across its group when ``trainer.shared_prefix`` says so
(:mod:`rlvr.models.prefix`), and takes log-probs, entropy and mean log-prob from the logits in chunks
(:func:`rlvr.models.logprobs.logprob_stats`); all equal the plain computation to float reassociation.

Losses and estimators that need more than the standard inputs declare them as keyword
parameters (``rewards``, ``group``, ``ref_logp``, ``rollout_logp``, ``mean_logp``,
``old_mean_logp``, ``num_prompts``, ``baseline_rewards``, ``correct``); the learner passes each
one the function's signature asks for, so a user-registered loss gets them too.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import time
from functools import lru_cache

import torch

from rlvr import algorithms as A
from rlvr.config import Config
from rlvr.control.controllers import AdvantageContext, build_controllers
from rlvr.experience.batch import Experience
from rlvr.models.lm_head import ChunkedHead, head_bypassed, head_logprob_stats
from rlvr.models.logprobs import completion_logits, completion_outputs, logprob_stats, trim_padding
from rlvr.models.lora import is_peft_model, reference_weights
from rlvr.models.prefix import PrefixSharing, has_active_dropout
from rlvr.optim import make_optimizer
from rlvr.parallel import DataParallel
from rlvr.rollout.factory import SAMPLES_WITH_HF_GENERATE
from rlvr.train.batches import log_once, micro_batches, padded_tokens, sort_groups_by_length, split_groups
from rlvr.train.critic import explained_variance
from rlvr.train.loss_terms import LOSS_TERMS, active_terms
from rlvr.train.old_logp import generation_truncation, reuse_rollout_logp
from rlvr.train.schedule import scheduled_loss_params
from rlvr.train.step import MicroBatch, StepBatch
from rlvr.train.zero_advantage import rows_with_advantage, skip_zero_advantage

#: Step metrics averaged over every minibatch: a minibatch whose rows all had zero advantage adds
#: exactly 0 to these; the other loss metrics average over the minibatches that trained rows.
OVER_ALL_MINIBATCHES = frozenset({"loss"})


class NonFiniteStepsError(ValueError):
    """``trainer.max_consecutive_skipped`` optimizer steps in a row had a non-finite loss or gradient
    norm. A ``ValueError``: the command line prints it as one line and exits 2."""


class Learner:
    """Runs the updates. An optimizer step whose loss or gradient norm is NaN/inf is skipped:
    parameters, AdamW moments and step count, and the learning-rate schedule (which counts applied
    updates, as DeepSpeed's loss scaler does) stay as they were; ``skipped_steps`` counts them,
    ``consecutive_skipped`` the current streak (the training loop stops the run at
    ``trainer.max_consecutive_skipped``). Both are checkpointed, so a resumed run counts on."""

    def __init__(self, model: torch.nn.Module, config: Config, critics=None, teacher: torch.nn.Module | None = None,
                 dist: DataParallel | None = None):
        self.model = model
        self.critics = critics  # rlvr.train.critic.Critics when the estimator needs values (PPO, AsyPPO)
        if config.uses_critic() and critics is None:
            raise ValueError(f"advantage estimator '{config.algorithm.advantage_estimator}' needs a critic")
        self.config = config
        self.dist = dist  # trainer.dist: this rank's place in a data-parallel / FSDP2 learner group, or None
        t = config.trainer
        self.ref_model = None
        needs_ref = "ref_logp" in wanted_inputs(A.POLICY_LOSSES[config.algorithm.policy_loss])
        if config.kl.placement != "none" or needs_ref:
            # LoRA: the reference is the policy's own base (adapter disabled), no second copy
            self.ref_model = model if is_peft_model(model) else copy.deepcopy(model).eval().requires_grad_(False)
        if dist is not None:  # shard (or replicate) in place before the optimizer sees the parameters
            dist.shard(model)  # rank 0's weights into every rank's shards (the others may have built on meta)
            if self.ref_model is not None and self.ref_model is not model:  # the frozen reference, sharded alike
                dist.shard(self.ref_model)
            if teacher is not None:  # a distillation teacher too (every rank runs its forward on every row)
                dist.shard(teacher)
        self.optimizer, self.scheduler = make_optimizer(
            model, t.lr, t.weight_decay, t.betas, t.warmup_steps, schedule=t.lr_schedule,
            total_steps=t.steps * t.ppo_epochs * t.num_minibatches, min_lr_ratio=t.min_lr_ratio,
            impl=t.adamw_impl)
        agree = dist.all_true if dist is not None else None  # a group decides each forward path together
        self.prefix = PrefixSharing(t.shared_prefix, log=log_once,  # trainer.shared_prefix (rlvr.models.prefix)
                                    pack_tokens=t.pack_tokens, agree=agree)
        self.chunked_head = ChunkedHead(t.chunked_head, log=log_once,  # trainer.chunked_head (rlvr.models.lm_head)
                                        agree=agree)
        self.old_logp_reason = ""  # why the latest update reused or recomputed old_logp
        self.teacher = teacher  # on-policy distillation (distill.teacher), frozen
        self.policy_version = 0
        # second wave: coefficients that controllers move (rlvr.control.callbacks), clamps, controllers
        self.kl_coef = config.kl.coef
        self.entropy_coef = config.trainer.entropy_coef  # the coefficient applied this step
        self.kl_hp = A.kl_params(config.kl.estimator, {"log_ratio_clamp": config.kl.log_ratio_clamp,
                                                       "value_clamp": config.kl.value_clamp})
        self.ref_reset_step = None  # the step of the last reference reset (ProRL), if any
        self.controllers = build_controllers(config, model.get_input_embeddings().num_embeddings)
        self.loss_inputs = wanted_inputs(A.POLICY_LOSSES[config.algorithm.policy_loss])  # what the loss reads
        self.loss_params = dict(config.algorithm.policy_loss_params)  # this step's (scheduled) loss parameters
        self.loss_terms = [LOSS_TERMS[name] for name in active_terms(config)]  # rlvr.train.loss_terms
        self.kl_reads_old_logp = "old_logp" in inspect.signature(A.KL_ESTIMATORS[config.kl.estimator]).parameters
        self.skipped_steps = 0  # optimizer steps skipped for a non-finite loss or gradient norm, in all
        self.consecutive_skipped = 0  # ... in a row, up to the latest optimizer step
        self.step_skipped = 0  # ... in the latest update

    # ------------------------------------------------------------------ forward passes
    def autocast(self):
        """``trainer.autocast=bf16``: the context every forward pass of the learner runs in (bf16 matmuls,
        fp32 master weights; logits come back in fp32); otherwise a no-op."""
        if self.config.trainer.autocast != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(next(self.model.parameters()).device.type, dtype=torch.bfloat16)

    def _logits(self, model, exp: Experience, idx: torch.Tensor) -> torch.Tensor:
        r = exp.rollout
        with self.autocast():
            return completion_logits(model, r.prompt_ids[idx], r.prompt_mask[idx], r.completion_ids[idx],
                                     r.completion_mask[idx], temperature=self.config.rollout.temperature)

    def _forward_stats(self, model, exp: Experience, idx: torch.Tensor, policy: bool = True):
        """``(logp, entropy, mean_logp)``, each ``[len(idx), T]``, of the rows ``idx`` from one forward:
        padding columns shared by all rows trimmed (:func:`trim_padding`; zeros there), the prompt
        prefix shared when ``trainer.shared_prefix`` says so, and log-probs and entropy from the
        logits in chunks (:func:`rlvr.models.logprobs.logprob_stats`), all exact to float
        reassociation against :meth:`_logits` + :func:`token_logprobs` + ``entropy_from_logits``.
        ``policy``: the log-probs are the policy's (renormalised over the sampler's kept sets with
        ``trainer.logprob_support=sampled``); False for the reference model (always the full vocabulary)."""
        r = exp.rollout
        T = r.completion_ids.shape[1]
        p_ids, p_mask, c_ids, c_mask = trim_padding(r.prompt_ids[idx], r.prompt_mask[idx], r.completion_ids[idx],
                                                    r.completion_mask[idx])
        shared = self.prefix.use(model, p_ids, p_mask, c_ids, c_mask)
        support = None  # the policy's log-probs over the sampler's kept sets (trainer.logprob_support=sampled)
        if policy and self.config.trainer.logprob_support == "sampled" and r.support_ids is not None:
            support = r.support_ids[idx][:, : c_ids.shape[1]]
        temperature = self.config.rollout.temperature

        def forward(chunked: bool):
            """The stats through the model's head (full logits), or its hidden states and the chunked head."""
            with self.autocast():
                if not chunked:
                    outputs = completion_outputs(model, p_ids, p_mask, c_ids, c_mask, shared_prefix=shared,
                                                 pack_tokens=self.prefix.pack_tokens_for(model))
                    return logprob_stats(outputs, c_ids, temperature=temperature, support=support)
                with head_bypassed(model) as head:  # rlvr.models.lm_head: no [B, T, V] logits
                    hidden = completion_outputs(model, p_ids, p_mask, c_ids, c_mask, shared_prefix=shared,
                                                pack_tokens=self.prefix.pack_tokens_for(model))
                return head_logprob_stats(hidden, head.weight, c_ids, head.bias, temperature, support=support)

        def check() -> float:  # once per model: chunked against plain on this batch, without grad
            with torch.no_grad():
                return float((forward(True)[0] - forward(False)[0]).abs().max())

        stats = forward(self.chunked_head.use(model, check, positions=c_ids.numel()))
        if c_ids.shape[1] < T:
            stats = tuple(torch.nn.functional.pad(s, (0, T - c_ids.shape[1])) for s in stats)
        return stats

    def _row_chunks(self, exp: Experience, groups: list[torch.Tensor] | None = None):
        """Row-index micro-batches of whole groups, at most ``trainer.micro_batch_size`` rows and
        ``trainer.max_tokens_per_microbatch`` padded positions (when set) each;
        with ``trainer.sort_by_length`` the groups are ordered by length first, so each micro-batch
        holds rows of similar length (less padding)."""
        if groups is None:
            groups = [torch.nonzero(exp.group == g).flatten() for g in torch.unique(exp.group)]
        t = self.config.trainer
        r = exp.rollout
        p_len, c_len = r.prompt_mask.sum(-1), r.completion_mask.sum(-1)
        cut = sum(len(g) for g in groups) > t.micro_batch_size or (
            t.max_tokens_per_microbatch > 0 and padded_tokens(torch.cat(groups) if groups else torch.zeros(0),
                                                              p_len, c_len) > t.max_tokens_per_microbatch)
        if t.sort_by_length and cut:
            groups = sort_groups_by_length(groups, r.prompt_mask, r.completion_mask)
        return micro_batches(groups, t.micro_batch_size, t.max_tokens_per_microbatch, p_len, c_len)

    @torch.no_grad()
    def _logprobs(self, model, exp: Experience, with_mean: bool = False, policy: bool = True):
        """Sampled-token log-probs ``[B, T]`` (and, if asked, the vocabulary-mean log-prob); ``policy`` as
        :meth:`_forward_stats`."""
        B, T = exp.rollout.completion_ids.shape
        dev = exp.rollout.completion_ids.device
        out = torch.zeros(B, T, device=dev)
        means = torch.zeros(B, T, device=dev) if with_mean else None
        for idx in self._row_chunks(exp):
            logp, _, mean = self._forward_stats(model, exp, idx, policy=policy)
            out[idx] = logp
            if with_mean:
                means[idx] = mean
        return (out, means) if with_mean else out

    @torch.no_grad()
    def _sum_pi_squared(self, exp: Experience) -> torch.Tensor:
        """``sum_v pi(v | s_t)^2`` ``[B, T]`` under the current policy at the sampling temperature, from the
        logits in chunks of positions (:func:`rlvr.algorithms.sum_pi_squared_from_logits`)."""
        B, T = exp.rollout.completion_ids.shape
        out = torch.zeros(B, T)
        for idx in self._row_chunks(exp):
            out[idx] = A.sum_pi_squared_from_logits(self._logits(self.model, exp, idx)).float()
        return out * exp.rollout.completion_mask

    def reuse_rollout_logp(self, exp: Experience, needs_old_mean: bool = False) -> tuple[bool, str]:
        """Whether this batch's ``old_logp`` may be the engine's ``rollout_logp`` (the rule and its
        tolerance: :mod:`rlvr.train.old_logp`), with the reason."""
        cfg = self.config
        versions = exp.rollout.versions
        alg = cfg.algorithm
        reads = "rollout_logp" in wanted_inputs(A.POLICY_LOSSES[alg.policy_loss]) or any(
            "rollout_logp" in inspect.signature(A.TOKEN_WEIGHTS[name]).parameters for name in alg.token_weights)
        return reuse_rollout_logp(
            reads_rollout_logp=reads,
            setting=cfg.trainer.old_logp, engine=cfg.rollout.engine, decoupled=cfg.runtime.decoupled(),
            staleness=cfg.runtime.staleness(),
            mismatch_method=cfg.algorithm.mismatch.method, top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k,
            logprob_support=cfg.trainer.logprob_support,
            engine_truncation=(generation_truncation(getattr(self.model, "generation_config", None))
                               if self._samples_with_hf_generate() else None),
            model_dtype=cfg.model.dtype, rollout_dtype=cfg.rollout_dtype(), autocast=cfg.trainer.autocast,
            dropout_active=has_active_dropout(self.model),
            row_versions=sorted(set(versions.tolist())) if versions is not None else [exp.policy_version],
            learner_version=self.policy_version, needs_old_mean_logp=needs_old_mean,
            sample_temperature=cfg.rollout.temperature, train_temperature=cfg.rollout.temperature)

    def skip_zero_advantage(self) -> tuple[bool, str]:
        """Whether rows with all-zero advantages may skip the training forward/backward (the rule and
        its proof: :mod:`rlvr.train.zero_advantage`), with the reason."""
        cfg = self.config
        alg = cfg.algorithm
        return skip_zero_advantage(
            setting=cfg.trainer.skip_zero_advantage, policy_loss=alg.policy_loss,
            zero_at_zero_advantage=alg.policy_loss in A.ZERO_AT_ZERO_ADVANTAGE_LOSSES,
            entropy_coef=self.entropy_coef, entropy_target=cfg.trainer.entropy_target,
            kl_placement=cfg.kl.placement, token_weights=list(alg.token_weights), loss_agg_mode=alg.loss_agg_mode)

    def _samples_with_hf_generate(self) -> bool:
        """Whether the sampler is (or may fall back to) HF ``generate`` for this model
        (:data:`rlvr.rollout.factory.SAMPLES_WITH_HF_GENERATE`)."""
        return SAMPLES_WITH_HF_GENERATE[self.config.rollout.engine](self.model)

    # ------------------------------------------------------------------ one RL step
    def update(self, exp: Experience, step: int) -> dict[str, float]:
        """One RL step on one batch: the stages below, in order, then the step's metrics."""
        t0, shared_before = time.perf_counter(), self.prefix.used
        b = StepBatch(exp=exp, mask=loss_mask(exp))
        self.loss_params, b.metrics = scheduled_loss_params(self.config.algorithm, step)  # e.g. TBA's beta
        self.logprobs_stage(b)  # 1. old (behaviour) and reference log-probs
        self.advantages_stage(b, step)  # 2. rewards -> advantages
        self.weights_stage(b)  # 3. per-token weights known before the update
        self.optimize_stage(b, step)  # 4-5. loss terms per micro-batch, optimizer steps with the non-finite guard
        if self.dist is not None:  # each rank summed its own micro-batches' metrics: the minibatch's are the sum
            ranks = self.dist.gather_objects((b.sums, self.dist.peak_memory_mb()))
            b.sums = merge_sums([sums for sums, _ in ranks])
            b.metrics.update({f"dist/peak_memory_mb/rank{r}": mb for r, (_, mb) in enumerate(ranks)})
        return self.step_metrics(b, t0, shared_before)

    # 1 ----------------------------------------------------------------------------------------------
    def logprobs_stage(self, b: StepBatch) -> None:
        """``old_logp``: the engine's ``rollout_logp`` when it provably is this model's (:mod:`rlvr.train.old_logp`),
        else recomputed without grad (with the vocabulary-mean log-prob when the loss reads it);
        ``ref_logp`` under the reference model when one is kept (a KL term, or a loss that reads it)."""
        cfg, exp, mask = self.config, b.exp, b.mask
        reuse, self.old_logp_reason = self.reuse_rollout_logp(exp, needs_old_mean="old_mean_logp" in self.loss_inputs)
        if reuse:  # the engine's log-probs are this model's own (rlvr.train.old_logp): no recompute
            b.old_logp = exp.rollout.rollout_logp.to(torch.float32) * mask
        elif "old_mean_logp" in self.loss_inputs:
            b.old_logp, b.old_mean_logp = self._logprobs(self.model, exp, with_mean=True)
        else:
            b.old_logp = self._logprobs(self.model, exp)
        with reference_weights(self.ref_model):
            b.ref_logp = self._logprobs(self.ref_model, exp, policy=False) if self.ref_model is not None else None
        if self.teacher is not None:  # on-policy distillation: the teacher scores the student's own tokens
            b.teacher_logp = self._logprobs(self.teacher, exp, policy=False).to(b.old_logp.device) * mask
            rkl = (b.old_logp - b.teacher_logp) * mask
            b.metrics["distill/reverse_kl"] = float(rkl.sum() / mask.sum().clamp(min=1))  # per token, k1
            b.metrics["distill/teacher_logp"] = float(b.teacher_logp.sum() / mask.sum().clamp(min=1))
        b.metrics["old_logp_reused"] = float(reuse)  # 1: old_logp = the engine's rollout_logp; 0: recomputed
        if b.ref_logp is not None and cfg.kl.placement != "none":  # verl's current_kl (adaptive controller)
            kl_seq = (A.kl_penalty(b.old_logp, b.ref_logp, cfg.kl.estimator, **self.kl_hp) * mask).sum(-1)
            b.metrics["kl_seq_mean"] = float((kl_seq / mask.sum(-1).clamp(min=1)).mean())
        b.metrics["kl_coef"] = self.kl_coef
        if "sum_pi_squared" in wanted_inputs(A.ADVANTAGE_ESTIMATORS[cfg.algorithm.advantage_estimator]):
            b.sum_pi_squared = self._sum_pi_squared(exp)  # the optimal token baseline's sum_v pi_v^2

    # 2 ----------------------------------------------------------------------------------------------
    def advantages_stage(self, b: StepBatch, step: int) -> None:
        """Rewards to advantages: the controllers of the reward stage, the outcome on each row's last loss
        token, the KL in the reward (``kl.placement=reward``), the estimator (with the critics' values),
        AsyPPO's disagreement masks, then the controllers of the advantage stage."""
        cfg, exp, mask = self.config, b.exp, b.mask
        rewards = exp.rewards
        for ctl in self.controllers_in("rewards"):  # dynamic reward weights (rlvr.control.controllers)
            rewards = ctl.rewards(rewards, exp, self)
        token_rewards = rewards_on_tokens(rewards, mask, exp.rollout.extras)  # multi-turn: each turn's on its end
        distill = cfg.distill
        if b.teacher_logp is not None and distill.placement == "reward":  # the teacher's term in the reward
            token_rewards = distill.task_weight * token_rewards + A.distillation_advantage(
                b.old_logp, b.teacher_logp, mask, distill.coef)
            rewards = token_rewards.sum(-1)
        if cfg.kl.placement == "reward":
            kl_tok = A.kl_penalty(b.old_logp, b.ref_logp, cfg.kl.estimator, **self.kl_hp) * mask
            token_rewards = token_rewards - self.kl_coef * kl_tok
            rewards = token_rewards.sum(-1)
            b.metrics["kl_in_reward"] = float(kl_tok.sum() / mask.sum().clamp(min=1))
        b.rewards, b.token_rewards = rewards, token_rewards
        available = {"baseline_rewards": exp.extras.get("baseline_rewards"),
                     "correct": exp.reward_components.get("correct"), "old_log_probs": b.old_logp,
                     "sum_pi_squared": b.sum_pi_squared, "reward_components": exp.reward_components}
        est = A.ADVANTAGE_ESTIMATORS[cfg.algorithm.advantage_estimator]
        extra = {k: v for k, v in available.items() if k in wanted_inputs(est)}
        _require(extra, wanted_inputs(est, required_only=True), cfg.algorithm.advantage_estimator)
        b.values = self.critics.values(exp) if self.critics is not None else None  # [M, B, T]
        if b.values is not None:
            extra["values"] = b.values[0] if b.values.shape[0] == 1 else b.values
        b.advantages, b.returns = A.compute_advantages(
            cfg.algorithm.advantage_estimator, rewards=rewards, token_rewards=token_rewards,
            mask=mask, group=exp.group, **extra, **cfg.algorithm.advantage_params)
        if b.teacher_logp is not None and distill.placement == "advantage":  # Lu et al. 2025: A_t += -beta rkl_t
            b.advantages = distill.task_weight * b.advantages + A.distillation_advantage(
                b.old_logp, b.teacher_logp, mask, distill.coef)
        if b.values is not None:
            b.metrics.update(critic_metrics(b.values, b.returns, mask))
            if b.values.shape[0] > 1:  # a critic ensemble (AsyPPO): disagreement masks, spec 4.3
                adv_mask, b.entropy_mask = A.asyppo_masks(b.values, mask, adv_mask_frac=cfg.critic.adv_mask_frac,
                                                          ent_mask_frac=cfg.critic.ent_mask_frac)
                b.advantages = b.advantages * adv_mask
                n = mask.sum().clamp(min=1)
                b.metrics["asyppo/adv_masked_frac"] = float(((1 - adv_mask) * mask).sum() / n)
                b.metrics["asyppo/entropy_masked_frac"] = float(((1 - b.entropy_mask) * mask).sum() / n)
        if self.controllers:  # Lagrange multipliers, exploration bonuses (rlvr.control.controllers)
            ctx = AdvantageContext(mask, lambda r: self.advantage_of(exp, r, mask), step)
            for ctl in self.controllers_in("advantages"):
                b.advantages = ctl.advantages(b.advantages, exp, ctx)
            for ctl in self.controllers.values():
                b.metrics.update(ctl.metrics())

    # 3 ----------------------------------------------------------------------------------------------
    def weights_stage(self, b: StepBatch) -> None:
        """Per-token weights known before the update: the train-inference mismatch correction
        (``algorithm.mismatch``) times the weight of stale rows (``runtime.stale_policy=mask``). The
        token-weight registry (``algorithm.token_weights``) reads the current log-probs, so it joins them in
        each micro-batch (:meth:`token_weights`)."""
        mask = b.mask
        weights = mismatch_weights(self.config.algorithm.mismatch, b.old_logp, b.exp.rollout.rollout_logp, mask)
        sample_weight = b.exp.extras.get("sample_weight")  # stale rows masked by runtime.stale_policy=mask
        if sample_weight is not None:
            sample_weight = sample_weight[:, None].to(mask.dtype) * mask
            weights = sample_weight if weights is None else weights * sample_weight
        b.weights = weights

    def token_weights(self, b: StepBatch, idx, mask, logp, entropy, weights, counts):
        """The registry's token weights (OPSM, top-entropy, STEER; any loss) on the rows ``idx``, multiplied
        into ``weights``; returns ``(weights, bonus_mask)``: a weight registered with ``entropy_bonus=True``
        also selects the tokens of the entropy bonus (TRL: the bonus acts on the same tokens)."""
        bonus_mask = mask
        for name, params in self.config.algorithm.token_weights.items():
            w = A.token_weights(name, advantages=b.advantages[idx], logp=logp, old_logp=b.old_logp[idx], mask=mask,
                                entropy=entropy.detach(), rollout_logp=b.exp.rollout.rollout_logp[idx], **params)
            weights = w if weights is None else weights * w
            if name in A.ENTROPY_BONUS_TOKEN_WEIGHTS:
                bonus_mask = mask * w
            _acc(b.sums, f"token_weight/{name}", float((w * mask).sum() / counts["batch_num_tokens"].clamp(min=1)))
        return weights, bonus_mask

    # 4-5 --------------------------------------------------------------------------------------------
    def optimize_stage(self, b: StepBatch, step: int) -> None:
        """The critics' update first (on the pre-update values, verl's order), then ``ppo_epochs`` x
        ``num_minibatches`` optimizer steps of the policy on shuffled minibatches of whole groups (none
        while the critic warms up). Rows whose advantages are all zero skip the forward/backward when
        that provably changes nothing (:mod:`rlvr.train.zero_advantage`)."""
        cfg, exp, mask = self.config, b.exp, b.mask
        skip, self.skip_zero_advantage_reason = self.skip_zero_advantage()
        b.trained = rows_with_advantage(b.advantages, mask) if skip else None  # rlvr.train.zero_advantage
        b.metrics["trained_rows_frac"] = float(b.trained.float().mean()) if b.trained is not None else 1.0
        self.step_skipped = 0
        gen = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + step)
        if self.critics is not None:  # critic first, on the pre-update values (verl order)
            b.metrics.update(self.critics.update(exp, b.returns, b.values, mask, gen))
        actor_frozen = self.critics is not None and step < cfg.critic.warmup_steps
        for _epoch in range(0 if actor_frozen else cfg.trainer.ppo_epochs):
            for mb_groups in split_groups(exp.group, cfg.trainer.num_minibatches, gen):
                b.grad_norms.append(self._minibatch_step(b, mb_groups))
        if not actor_frozen:
            self.policy_version += 1

    def _minibatch_step(self, b: StepBatch, mb_groups: list[torch.Tensor]) -> float:
        """One optimizer step on the rows ``mb_groups``: the loss terms of each micro-batch, normalised by
        the whole minibatch's counts so the accumulated gradient is the minibatch's; with ``b.trained``
        only those rows run forward/backward (the normalisers still count the whole minibatch, so the
        gradient is the same)."""
        alg = self.config.algorithm
        mask = b.mask
        m = mask[torch.cat(mb_groups)]
        counts = dict(batch_num_tokens=m.sum(), batch_num_seqs=(m.sum(-1) > 0).sum())
        agg = dict(mode=alg.loss_agg_mode, **counts, **alg.loss_agg_params)
        agg_metric, metric_tokens = agg, counts["batch_num_tokens"]  # metrics: means over the trained rows
        if b.trained is not None:
            mb_groups = [g[b.trained[g]] for g in mb_groups]
            mb_groups = [g for g in mb_groups if len(g)]
            tm = mask[torch.cat(mb_groups)] if mb_groups else m[:0]
            metric_tokens = tm.sum()
            agg_metric = dict(agg, batch_num_tokens=metric_tokens, batch_num_seqs=(tm.sum(-1) > 0).sum())
        self.optimizer.zero_grad(set_to_none=True)
        chunks = self._rank_chunks(b.exp, mb_groups)  # one process: every micro-batch; a group: this rank's
        if not chunks:  # every row skipped: step on zero gradients, as the full computation would
            for p in self.model.parameters():
                if p.requires_grad:
                    p.grad = torch.zeros_like(p)
        finite = True
        for i, idx in enumerate(chunks):
            if self.dist is not None:  # accumulate locally; reduce across ranks with the last micro-batch
                self.dist.gradient_sync(self.model, i == len(chunks) - 1)
                if idx is None:  # this rank has fewer micro-batches: a zero-weight one keeps collectives in step
                    self._idle_micro_batch(b.exp, torch.cat(mb_groups)[:1])
                    continue
            mm = mask[idx]
            logp, entropy_tok, mean_lp = self._forward_stats(self.model, b.exp, idx)
            inputs = self.loss_inputs_of(b, idx, mean_lp, len(mb_groups))
            weights = b.weights[idx] if b.weights is not None else None
            if self.entropy_coef == 0:
                entropy_tok = entropy_tok.detach()
            weights, bonus_mask = self.token_weights(b, idx, mm, logp, entropy_tok, weights, counts)
            mb = MicroBatch(learner=self, step=b, idx=idx, mask=mm, logp=logp, entropy=entropy_tok, weights=weights,
                            bonus_mask=bonus_mask, inputs=inputs, counts=counts, agg=agg, agg_metric=agg_metric,
                            frac=float(mm.sum() / metric_tokens.clamp(min=1)))
            loss = None
            for term in self.loss_terms:  # the policy loss, the entropy bonus, the KL loss (rlvr.train.loss_terms)
                part = term(mb)
                if part is not None:
                    loss = part if loss is None else loss + part
            loss.backward()
            value = loss.item()
            finite = finite and math.isfinite(value)
            _acc(b.sums, "loss", value)
        # metrics other than the loss average over the minibatches that trained rows (counted once in a group)
        if chunks and (self.dist is None or self.dist.driver):
            _acc(b.sums, "trained_minibatches", 1.0)
        if self.dist is not None:  # a NaN on one rank makes every rank skip
            finite = self.dist.all_true(finite)
        return self.optimizer_step(finite)

    def _rank_chunks(self, exp: Experience, mb_groups: list[torch.Tensor]) -> list:
        """The micro-batches this process trains: all of them in one process; in a learner group, those of
        this rank's share of the groups (:meth:`rlvr.parallel.DataParallel.share`), padded with ``None`` (a
        zero-weight micro-batch) to the most any rank has, so every rank makes the same collective calls."""
        if self.dist is None:
            return list(self._row_chunks(exp, mb_groups)) if mb_groups else []
        per_rank = [list(self._row_chunks(exp, share)) if share else [] for share in self.dist.shares(mb_groups)]
        mine = per_rank[self.dist.rank]
        return mine + [None] * (max(len(c) for c in per_rank) - len(mine))

    def _idle_micro_batch(self, exp: Experience, idx: torch.Tensor) -> None:
        """A forward/backward of one row whose loss is multiplied by 0: it adds exactly zero to the gradient,
        and makes the same all-gathers and reductions as the other ranks' micro-batches."""
        logp = self._forward_stats(self.model, exp, idx)[0]
        (logp * 0.0).sum().backward()

    def loss_inputs_of(self, b: StepBatch, idx: torch.Tensor, mean_logp: torch.Tensor, num_prompts: int) -> dict:
        """The batch inputs the policy loss names in its signature (:data:`BATCH_INPUTS`), for the rows ``idx``."""
        exp = b.exp
        available = {"rewards": exp.rewards, "group": exp.group, "ref_logp": b.ref_logp,
                     "rollout_logp": exp.rollout.rollout_logp, "old_mean_logp": b.old_mean_logp,
                     "correct": exp.reward_components.get("correct")}
        inputs = {k: (v[idx] if isinstance(v, torch.Tensor) else v) for k, v in available.items()
                  if k in self.loss_inputs}
        if "mean_logp" in self.loss_inputs:
            inputs["mean_logp"] = mean_logp
        if "num_prompts" in self.loss_inputs:
            inputs["num_prompts"] = num_prompts
        alg = self.config.algorithm
        _require(inputs, wanted_inputs(A.POLICY_LOSSES[alg.policy_loss], required_only=True), alg.policy_loss)
        return inputs

    def optimizer_step(self, finite: bool) -> float:
        """Clip the gradient norm and step, or, when the loss or the norm is NaN/inf, skip: parameters,
        AdamW state and the learning-rate schedule stay as they were (counted in ``skipped_steps``)."""
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.trainer.max_grad_norm)
        if hasattr(grad_norm, "full_tensor"):  # a sharded model's norm is a DTensor (over every shard)
            grad_norm = grad_norm.full_tensor()
        if finite and math.isfinite(float(grad_norm)):
            self.optimizer.step()
            self.scheduler.step()
            self.consecutive_skipped = 0
        else:  # NaN/inf: no update; parameters, AdamW state and the LR schedule stay as they were
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            self.consecutive_skipped += 1
            self.step_skipped += 1
        return float(grad_norm) if math.isfinite(float(grad_norm)) else float("nan")

    def step_metrics(self, b: StepBatch, t0: float, shared_before: int) -> dict[str, float]:
        """The step's metrics: the stages' own, the loss terms' sums averaged over minibatches, and totals."""
        metrics, sums, grad_norms, mask, exp = b.metrics, b.sums, b.grad_norms, b.mask, b.exp
        n_steps = max(1, len(grad_norms))
        ent_sum, ent_cnt = sums.pop("entropy_token_sum", 0.0), sums.pop("entropy_token_count", 0.0)
        metrics["entropy_token_mean"] = ent_sum / ent_cnt if ent_cnt > 0 else 0.0
        metrics["entropy_coef"] = self.entropy_coef
        n_trained = sums.pop("trained_minibatches", 0.0)  # < n_steps only when zero-advantage rows were skipped
        metrics.update({k: v / (n_steps if k in OVER_ALL_MINIBATCHES else max(n_trained, 1.0)) for k, v in sums.items()})
        if n_trained == 0 and grad_norms:  # no row trained: the loss is exactly 0 and nothing was clipped
            metrics.update({"loss": 0.0, "clip_frac": 0.0, "entropy": float("nan")})
        metrics.update({
            "grad_norm": sum(grad_norms) / n_steps if grad_norms else 0.0,
            "skipped_steps": self.skipped_steps,
            "lr": self.scheduler.get_last_lr()[0],
            "advantage_abs_mean": float((b.advantages.abs() * mask).sum() / mask.sum().clamp(min=1)),
            "mismatch_k3": float((A.kl_penalty(exp.rollout.rollout_logp, b.old_logp, "k3") * mask).sum()
                                 / mask.sum().clamp(min=1)),
            "time_train": time.perf_counter() - t0,
            "shared_prefix_forwards": float(self.prefix.used - shared_before),  # forwards that shared prompts
        })
        return metrics

    def controllers_in(self, stage: str) -> list:
        """The controllers that declare ``stage`` (:data:`rlvr.control.controllers.STAGES`), in config order."""
        return [ctl for ctl in self.controllers.values() if stage in ctl.stages]

    # ------------------------------------------------------------------ helpers for controllers
    def advantage_of(self, exp: Experience, rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The advantage the run's (critic-free) estimator gives to the per-row reward ``rewards``."""
        cfg = self.config
        est = A.ADVANTAGE_ESTIMATORS[cfg.algorithm.advantage_estimator]
        available = {"baseline_rewards": exp.extras.get("baseline_rewards"),
                     "correct": exp.reward_components.get("correct")}
        extra = {k: v for k, v in available.items() if k in wanted_inputs(est)}
        adv, _ = A.compute_advantages(cfg.algorithm.advantage_estimator, rewards=rewards,
                                      token_rewards=_outcome_on_last_token(rewards, mask), mask=mask,
                                      group=exp.group, **extra, **cfg.algorithm.advantage_params)
        return adv

    def policy_gradient(self, exp: Experience, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Flattened gradient of the run's policy loss (at ``old_logp = logp``, no KL/entropy terms)
        on the whole batch with these advantages; the model's gradients are left cleared."""
        alg = self.config.algorithm
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.model.zero_grad(set_to_none=True)
        counts = dict(batch_num_tokens=mask.sum(), batch_num_seqs=(mask.sum(-1) > 0).sum())
        groups = [torch.nonzero(exp.group == g).flatten() for g in torch.unique(exp.group)]
        for idx in self._row_chunks(exp, groups):
            logp = self._forward_stats(self.model, exp, idx)[0]
            loss, _ = A.policy_loss("vanilla" if alg.policy_loss not in ("vanilla", "ppo", "cispo", "sapo", "gpg")
                                    else alg.policy_loss, logp=logp, old_logp=logp.detach(),
                                    advantages=advantages[idx], mask=mask[idx], agg=alg.loss_agg_mode, **counts,
                                    **alg.loss_agg_params)
            loss.backward()
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
        self.model.zero_grad(set_to_none=True)
        return flat.detach().clone()

    def reset_reference(self, step: int, reset_optimizer: bool = True) -> None:
        """ProRL (arXiv 2505.24864, spec 15): the reference becomes a copy of the current policy; with
        ``reset_optimizer`` the optimizer's moments are re-initialised (the schedule goes on)."""
        if self.ref_model is None:
            raise ValueError("a reference reset needs a reference model (kl.placement != none)")
        if self.ref_model is self.model:
            raise ValueError("a reference reset with model.lora.enabled is not supported: the reference is "
                             "the frozen base; set kl.reset_every=0 and kl.reset_max_kl=null")
        self.ref_model.load_state_dict(self.model.state_dict())
        if reset_optimizer:
            self.optimizer.state.clear()
        self.ref_reset_step = step

    # ------------------------------------------------------------------ checkpoint state
    def sharded_parts(self) -> dict:
        """``{name: (model, optimizer)}``: the policy and the critics, what a learner group's checkpoint keeps
        in shards (:func:`rlvr.parallel.data_parallel.save_sharded`)."""
        parts = {"policy": (self.model, self.optimizer)}
        if self.critics is not None:
            parts.update(self.critics.sharded_parts())
        return parts

    def state_dict(self) -> dict:
        """Everything a resumed run needs besides the weights. In a learner group the optimizer's state is not
        here: every rank saves its shards of it with the model's (:func:`rlvr.parallel.data_parallel.
        save_sharded`)."""
        state = {"optimizer": self.optimizer.state_dict()} if self.dist is None else {}
        state.update({"scheduler": self.scheduler.state_dict(),
                      "policy_version": self.policy_version, "skipped_steps": self.skipped_steps,
                      "consecutive_skipped": self.consecutive_skipped})
        state.update({"kl_coef": self.kl_coef, "entropy_coef": self.entropy_coef,
                      "ref_reset_step": self.ref_reset_step,
                      "controllers": {k: c.state_dict() for k, c in self.controllers.items()}})
        if self.ref_reset_step is not None:  # the reference is no longer the starting model
            state["ref_model"] = {k: v.detach().clone() for k, v in self.ref_model.state_dict().items()}
        if self.critics is not None:
            state["critics"] = self.critics.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """The inverse of :meth:`state_dict`; in a learner group every rank calls it with the same ``state``.
        A state without the optimizer's (a learner group's: it is in the checkpoint's shards) leaves it to
        :func:`rlvr.parallel.data_parallel.load_sharded`; a single-process state's optimizer is sent from
        rank 0 into every rank's shards."""
        if "optimizer" in state and self.dist is None:
            self.optimizer.load_state_dict(state["optimizer"])
        elif "optimizer" in state:
            self.dist.load_optimizer_state(self.model, self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.policy_version = int(state["policy_version"])
        self.kl_coef = float(state.get("kl_coef", self.kl_coef))
        self.entropy_coef = float(state.get("entropy_coef", self.entropy_coef))
        self.ref_reset_step = state.get("ref_reset_step")
        if "ref_model" in state and self.ref_model is not None:
            self.ref_model.load_state_dict(state["ref_model"])
        for k, c in self.controllers.items():
            if k in state.get("controllers", {}):
                c.load_state_dict(state["controllers"][k])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.consecutive_skipped = int(state.get("consecutive_skipped", 0))
        if self.critics is not None:
            self.critics.load_state_dict(state["critics"])


#: Inputs the learner can supply to a loss or estimator that names them in its signature.
BATCH_INPUTS = ("rewards", "group", "ref_logp", "rollout_logp", "mean_logp", "old_mean_logp",
                "num_prompts", "baseline_rewards", "correct", "old_log_probs", "sum_pi_squared", "reward_components")


@lru_cache(maxsize=None)
def wanted_inputs(fn, required_only: bool = False) -> frozenset[str]:
    """The batch inputs (of :data:`BATCH_INPUTS`) that ``fn`` accepts (or requires)."""
    params = inspect.signature(fn).parameters
    return frozenset(k for k in BATCH_INPUTS if k in params and
                     (not required_only or params[k].default is inspect.Parameter.empty))


def _require(given: dict, required: frozenset, name: str) -> None:
    missing = sorted(k for k in required if given.get(k) is None)
    if missing:
        hint = {"ref_logp": "set kl.placement and kl.coef so a reference model is kept",
                "baseline_rewards": "set rollout.greedy_baseline=true"}
        raise ValueError(f"'{name}' needs {', '.join(missing)}; "
                         + "; ".join(hint.get(k, f"{k} is not available") for k in missing))


def critic_metrics(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Explained variance of the ensemble mean and of each critic, and critic disagreement."""
    out = {"critic/explained_variance": explained_variance(values.mean(0), returns, mask),
           "critic/value_mean": float((values.mean(0) * mask).sum() / mask.sum().clamp(min=1))}
    if values.shape[0] > 1:
        for m in range(values.shape[0]):
            out[f"critic{m}/explained_variance"] = explained_variance(values[m], returns, mask)
        out["critic/disagreement"] = float((values.std(0) * mask).sum() / mask.sum().clamp(min=1))
    return out


def mean_logprob(logits: torch.Tensor) -> torch.Tensor:
    """``(1/|V|) sum_a log pi(a | s_t)`` per position: ROVER's uniform-policy value input."""
    return logits.mean(-1) - torch.logsumexp(logits, dim=-1)


def mismatch_weights(cfg, old_logp, rollout_logp, mask):
    """Per-token mismatch / off-policy weights of the ``cfg.method`` entry of
    ``MISMATCH_CORRECTIONS`` (given the fields of ``cfg`` its signature names), or None."""
    params = A.mismatch_params(cfg.method, cfg.model_dump(exclude={"method"}))
    return A.mismatch_weights(cfg.method, old_logp, rollout_logp, mask, **params)


def loss_mask(exp: Experience) -> torch.Tensor:
    """``[B, T]`` float: the tokens the loss trains on (:attr:`rlvr.rollout.base.Rollout.loss_mask`; for a
    single-turn completion, every completion token). The forward passes attend to the completion mask."""
    return exp.rollout.loss_mask.float()


def merge_sums(per_rank: list[dict]) -> dict:
    """The metric sums of a learner group's ranks, added key by key (each rank summed its own micro-batches,
    every one normalised by the whole minibatch's counts)."""
    out: dict = {}
    for sums in per_rank:
        for key, value in sums.items():
            _acc(out, key, value)
    return out


def _acc(sums: dict, key: str, value: float) -> None:
    sums[key] = sums.get(key, 0.0) + value


def rewards_on_tokens(rewards: torch.Tensor, mask: torch.Tensor, extras: dict) -> torch.Tensor:
    """Token-level rewards ``[B, T]`` that sum to each row's reward: the outcome on the row's last loss token; for
    a multi-turn episode (``turn_rewards`` and ``turn_spans`` in the rollout's extras) each turn's reward on that
    turn's last sampled token and the rest of the row's reward (e.g. the verifier's) on its last loss token, so a
    return-based estimator (GAE) credits a turn with what came after it (SkyRL's placement). Group-relative
    estimators read only the row sums, which do not change."""
    out = _outcome_on_last_token(rewards, mask)
    turns, spans = extras.get("turn_rewards"), extras.get("turn_spans")
    if turns is None or spans is None:
        return out
    for b in range(out.shape[0]):
        placed = [(end - 1, r) for (start, end), r in zip(spans[b], turns[b]) if end > start and mask[b, end - 1] > 0]
        if not placed:  # (no loss token left, e.g. a group dropped by reward.on_failure)
            continue
        row_last = int(torch.nonzero(mask[b] > 0).max())
        out[b, row_last] -= sum(r for _, r in placed)  # the outcome there was the whole reward: keep the rest
        for t, r in placed:
            out[b, t] += r
    return out


def _outcome_on_last_token(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token-level rewards ``[B, T]``: the outcome reward on each row's last valid token."""
    T = mask.shape[1]
    positions = torch.arange(T).expand_as(mask)
    last = torch.where(mask > 0, positions, torch.full_like(positions, -1)).max(-1).values
    out = torch.zeros_like(mask)
    has = last >= 0
    out[has, last[has]] = rewards[has].to(out.dtype)
    return out
