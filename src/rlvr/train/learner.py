"""The learner: recomputes log-probs, computes advantages and losses, steps the optimizer.

All the math comes from :mod:`rlvr.algorithms` through its registry entry points; this module
only moves tensors. One call of :meth:`Learner.update` consumes one :class:`Experience`:

1. ``old_logp`` (and ``ref_logp`` when a KL term is used) recomputed by the trainer, no grad;
2. KL in the reward (optional) and ``compute_advantages``;
3. ``ppo_epochs`` x ``num_minibatches`` optimizer steps; each minibatch is split into
   micro-batches whose losses are normalised by the *minibatch* token/sequence counts, so the
   accumulated gradient equals the full-minibatch gradient exactly.
"""

from __future__ import annotations

import copy
import math
import time

import torch

from rlvr import algorithms as A
from rlvr.config import Config
from rlvr.models.logprobs import completion_logits, token_logprobs
from rlvr.train.experience import Experience


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas, warmup_steps: int):
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    warm = max(1, warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warm))
    return optimizer, scheduler


class Learner:
    def __init__(self, model: torch.nn.Module, config: Config):
        self.model = model
        self.config = config
        t = config.trainer
        self.optimizer, self.scheduler = make_optimizer(model, t.lr, t.weight_decay, t.betas, t.warmup_steps)
        self.ref_model = None
        if config.kl.placement != "none":
            self.ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        self.policy_version = 0

    # ------------------------------------------------------------------ forward passes
    def _logits(self, model, exp: Experience, idx: torch.Tensor) -> torch.Tensor:
        r = exp.rollout
        return completion_logits(model, r.prompt_ids[idx], r.prompt_mask[idx], r.completion_ids[idx],
                                 r.completion_mask[idx], temperature=self.config.rollout.temperature)

    @torch.no_grad()
    def _logprobs(self, model, exp: Experience) -> torch.Tensor:
        B = exp.rewards.shape[0]
        mb = self.config.trainer.micro_batch_size
        out = []
        for start in range(0, B, mb):
            idx = torch.arange(start, min(B, start + mb))
            out.append(token_logprobs(self._logits(model, exp, idx), exp.rollout.completion_ids[idx]))
        return torch.cat(out)

    # ------------------------------------------------------------------ one RL step
    def update(self, exp: Experience, step: int) -> dict[str, float]:
        cfg, t0 = self.config, time.perf_counter()
        mask = exp.rollout.completion_mask.float()
        old_logp = self._logprobs(self.model, exp)
        ref_logp = self._logprobs(self.ref_model, exp) if self.ref_model is not None else None

        rewards, token_rewards = exp.rewards, _outcome_on_last_token(exp.rewards, mask)
        metrics: dict[str, float] = {}
        if cfg.kl.placement == "reward":
            kl_tok = A.kl_penalty(old_logp, ref_logp, cfg.kl.estimator) * mask
            token_rewards = token_rewards - cfg.kl.coef * kl_tok
            rewards = token_rewards.sum(-1)
            metrics["kl_in_reward"] = float(kl_tok.sum() / mask.sum().clamp(min=1))
        advantages, _returns = A.compute_advantages(
            cfg.algorithm.advantage_estimator, rewards=rewards, token_rewards=token_rewards,
            mask=mask, group=exp.group, **cfg.algorithm.advantage_params)

        sums: dict[str, float] = {}
        grad_norms = []
        B = mask.shape[0]
        gen = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + step)
        for _epoch in range(cfg.trainer.ppo_epochs):
            perm = torch.randperm(B, generator=gen)
            for mb_idx in torch.tensor_split(perm, cfg.trainer.num_minibatches):
                grad_norms.append(self._minibatch_step(exp, mb_idx, mask, old_logp, ref_logp, advantages, sums))
        self.policy_version += 1

        n_updates = cfg.trainer.ppo_epochs * cfg.trainer.num_minibatches
        metrics.update({k: v / n_updates for k, v in sums.items()})
        metrics.update({
            "grad_norm": sum(grad_norms) / len(grad_norms),
            "lr": self.scheduler.get_last_lr()[0],
            "advantage_abs_mean": float((advantages.abs() * mask).sum() / mask.sum().clamp(min=1)),
            "mismatch_k3": float((A.kl_penalty(exp.rollout.rollout_logp, old_logp, "k3") * mask).sum()
                                 / mask.sum().clamp(min=1)),
            "time_train": time.perf_counter() - t0,
        })
        return metrics

    def _minibatch_step(self, exp, mb_idx, mask, old_logp, ref_logp, advantages, sums) -> float:
        cfg = self.config
        alg = cfg.algorithm
        m = mask[mb_idx]
        counts = dict(batch_num_tokens=m.sum(), batch_num_seqs=(m.sum(-1) > 0).sum())
        agg = dict(mode=alg.loss_agg_mode, **counts, **alg.loss_agg_params)
        self.optimizer.zero_grad(set_to_none=True)
        for idx in torch.split(mb_idx, cfg.trainer.micro_batch_size):
            mm = mask[idx]
            logits = self._logits(self.model, exp, idx)
            logp = token_logprobs(logits, exp.rollout.completion_ids[idx])
            loss, pg_metrics = A.policy_loss(
                alg.policy_loss, logp=logp, old_logp=old_logp[idx], advantages=advantages[idx], mask=mm,
                agg=alg.loss_agg_mode, **counts, **alg.loss_agg_params, **alg.policy_loss_params)
            entropy = A.aggregate_loss(A.entropy_from_logits(logits.detach() if cfg.trainer.entropy_coef == 0
                                                             else logits), mm, **agg)
            if cfg.trainer.entropy_coef > 0:
                loss = loss - cfg.trainer.entropy_coef * entropy
            if cfg.kl.placement == "loss":
                kl = A.aggregate_loss(A.kl_penalty(logp, ref_logp[idx], cfg.kl.estimator), mm, **agg)
                loss = loss + cfg.kl.coef * kl
                _acc(sums, "kl_loss", float(kl))
            loss.backward()
            frac = float(mm.sum() / counts["batch_num_tokens"].clamp(min=1))
            _acc(sums, "loss", loss.item())
            _acc(sums, "entropy", float(entropy))
            for k, v in pg_metrics.items():
                _acc(sums, k, float(v) * frac)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.trainer.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        return float(grad_norm) if math.isfinite(float(grad_norm)) else float("nan")

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "policy_version": self.policy_version}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.policy_version = int(state["policy_version"])


def _acc(sums: dict, key: str, value: float) -> None:
    sums[key] = sums.get(key, 0.0) + value


def _outcome_on_last_token(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token-level rewards ``[B, T]``: the outcome reward on each row's last valid token."""
    T = mask.shape[1]
    positions = torch.arange(T).expand_as(mask)
    last = torch.where(mask > 0, positions, torch.full_like(positions, -1)).max(-1).values
    out = torch.zeros_like(mask)
    has = last >= 0
    out[has, last[has]] = rewards[has].to(out.dtype)
    return out
