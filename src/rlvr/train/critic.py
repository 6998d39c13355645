"""Critics for PPO (one value model) and AsyPPO (an ensemble of mini-critics).

The math (GAE, value losses, AsyPPO's masks) lives in :mod:`rlvr.algorithms`; this module holds
the value models, their optimizers and the data split between them:

* :func:`shard_responses`: AsyPPO's split (arXiv 2510.01656, sec. 3; spec 4.3). For every
  prompt, its G responses are dealt into M disjoint shards; critic m trains only on shard m,
  so every critic sees every prompt but different responses.
* :class:`Critics`: M value models; :meth:`Critics.values` gives ``V_m(s_t)`` ``[M, B, T]``
  (no grad) and :meth:`Critics.update` fits each critic to the returns on its shard with the
  configured value loss (``mse`` with optional clipping, ``hl_gauss``, ``two_hot``), using the
  same minibatch / micro-batch normalisation as the actor.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import torch

from rlvr import algorithms as A
from rlvr.models.value import build_value_model, completion_values, load_value_model
from rlvr.optim import make_optimizer
from rlvr.train.batches import log_once, micro_batches, split_groups


def shard_responses(group: torch.Tensor, num_shards: int,
                    generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Row indices of M disjoint shards; each group's responses are dealt round-robin.

    With a ``generator`` the responses of each group are shuffled first. Shard sizes within a
    group differ by at most one; together the shards cover every row exactly once.
    """
    shards: list[list[torch.Tensor]] = [[] for _ in range(num_shards)]
    for g in torch.unique(group):
        rows = torch.nonzero(group == g).flatten()
        if generator is not None:
            rows = rows[torch.randperm(len(rows), generator=generator)]
        for m in range(num_shards):
            shards[m].append(rows[m::num_shards])
    return [torch.sort(torch.cat(s)).values if s else torch.empty(0, dtype=torch.long) for s in shards]


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """``1 - Var[G - V] / Var[G]`` over the valid tokens (1: perfect, 0: no better than a constant)."""
    m = mask.bool()
    g, v = returns[m].double(), values[m].double()
    if g.numel() < 2:
        return float("nan")
    var_g = g.var()
    return float(1 - (g - v).var() / var_g) if var_g > 0 else float("nan")


class Critics:
    """M value models with their own optimizers (M = 1: PPO's critic)."""

    def __init__(self, models: list[torch.nn.Module], config, dist=None):
        self.models = models
        self.config = config
        self.dist = dist  # a learner group (rlvr.parallel.DataParallel): each critic sharded like the policy
        c = config.critic
        for model in models if dist is not None else []:
            dist.shard(model)  # before the optimizer sees the parameters
        self.opt = [make_optimizer(m, c.lr, c.weight_decay, config.trainer.betas, c.lr_warmup_steps)
                    for m in models]
        from rlvr.models.prefix import PrefixSharing

        self.prefix = PrefixSharing(getattr(config.trainer, "shared_prefix", "never"), log=log_once,
                                    agree=dist.all_true if dist is not None else None)
        params = inspect.signature(A.VALUE_LOSSES[c.value_loss]).parameters
        self.support = {k: c.value_loss_params.get(k, params[k].default)
                        for k in ("v_min", "v_max") if k in params}

    @classmethod
    def build(cls, config, actor_path: str | Path, dist=None) -> "Critics":
        c = config.critic
        path = actor_path if c.model_path == "actor" else c.model_path
        models = [build_value_model(path, c.num_outputs(), c.num_layers, c.hidden_size,
                                    seed=config.run.seed * 101 + m, dtype=config.model.dtype).to(config.run.device)
                  for m in range(c.num_critics)]
        return cls(models, config, dist)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.models[0].parameters())

    # ------------------------------------------------------------------ forward
    def _outputs(self, model, exp, idx) -> torch.Tensor:
        r = exp.rollout
        args = (r.prompt_ids[idx], r.prompt_mask[idx], r.completion_ids[idx], r.completion_mask[idx])
        return completion_values(model, *args, shared_prefix=self.prefix.use(model, *args))

    def readout(self, out: torch.Tensor) -> torch.Tensor:
        """Scalar values from the head: the output itself, or the histogram's expectation."""
        if out.shape[-1] == 1 and not self.support:
            return out[..., 0]
        return A.hl_gauss_value(out, self.support["v_min"], self.support["v_max"])

    @torch.no_grad()
    def values(self, exp) -> torch.Tensor:
        """``V_m(s_t)`` for every critic: ``[M, B, T]`` (zero on padding)."""
        B = exp.rewards.shape[0]
        mb = self.config.trainer.micro_batch_size
        mask = exp.rollout.completion_mask.float()
        out = []
        for model in self.models:
            model.eval()
            v = torch.cat([self.readout(self._outputs(model, exp, torch.arange(s, min(B, s + mb))))
                           for s in range(0, B, mb)])
            out.append(v * mask)
        return torch.stack(out)

    # ------------------------------------------------------------------ training
    def update(self, exp, returns: torch.Tensor, old_values: torch.Tensor, mask: torch.Tensor,
               generator: torch.Generator) -> dict[str, float]:
        """Fit critic m to ``returns`` on shard m (``ppo_epochs`` x ``num_minibatches`` steps)."""

        cfg, c = self.config, self.config.critic
        shards = shard_responses(exp.group, len(self.models), generator)
        metrics: dict[str, float] = {}
        for m, (model, (optimizer, scheduler)) in enumerate(zip(self.models, self.opt)):
            model.train()
            rows = shards[m]
            losses, norms, clipfracs = [], [], []
            sub_group = exp.group[rows]
            for _ in range(cfg.trainer.ppo_epochs):
                for mb in split_groups(sub_group, cfg.trainer.num_minibatches, generator):
                    mb = [rows[i] for i in mb]
                    idx_all = torch.cat(mb)
                    mm_all = mask[idx_all]
                    counts = dict(batch_num_tokens=mm_all.sum(), batch_num_seqs=(mm_all.sum(-1) > 0).sum())
                    optimizer.zero_grad(set_to_none=True)
                    total, clipfrac = 0.0, 0.0
                    chunks = self._rank_chunks(exp, mb)  # one process: every micro-batch; a group: this rank's
                    for i, idx in enumerate(chunks):
                        if self.dist is not None:  # accumulate locally; reduce across ranks with the last one
                            self.dist.gradient_sync(model, i == len(chunks) - 1)
                            if idx is None:  # fewer micro-batches here: a zero-weight one keeps collectives in step
                                (self._outputs(model, exp, mb[0][:1]) * 0.0).sum().backward()
                                continue
                        out = self._outputs(model, exp, idx)
                        pred = out[..., 0] if out.shape[-1] == 1 else out  # scalar head or bin logits
                        loss, vm = A.value_loss(c.value_loss, values=pred, old_values=old_values[m][idx],
                                                returns=returns[idx], mask=mask[idx],
                                                agg=cfg.algorithm.loss_agg_mode, **counts,
                                                **cfg.algorithm.loss_agg_params, **c.value_loss_params)
                        loss.backward()
                        total += loss.item()
                        clipfrac += vm.get("vf_clipfrac", 0.0) * float(mask[idx].sum() /
                                                                       counts["batch_num_tokens"].clamp(min=1))
                    if self.dist is not None:  # each rank summed its own micro-batches' parts
                        total, clipfrac = map(sum, zip(*self.dist.gather_objects((total, clipfrac))))
                    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), c.max_grad_norm)
                    if hasattr(norm, "full_tensor"):  # a sharded model's norm is a DTensor (over every shard)
                        norm = norm.full_tensor()
                    optimizer.step()
                    scheduler.step()
                    losses.append(total)
                    clipfracs.append(clipfrac)
                    norms.append(float(norm) if math.isfinite(float(norm)) else float("nan"))
            metrics[f"critic{m}/vf_clipfrac"] = sum(clipfracs) / max(1, len(clipfracs))
            metrics[f"critic{m}/value_loss"] = sum(losses) / max(1, len(losses))
            metrics[f"critic{m}/grad_norm"] = sum(norms) / max(1, len(norms))
            metrics[f"critic{m}/shard_rows"] = float(len(rows))
        metrics["critic/value_loss"] = sum(metrics[f"critic{m}/value_loss"]
                                           for m in range(len(self.models))) / len(self.models)
        metrics["critic/lr"] = self.opt[0][1].get_last_lr()[0]
        return metrics

    def _rank_chunks(self, exp, mb: list[torch.Tensor]) -> list:
        """The micro-batches of the minibatch ``mb`` (a list of groups' rows) this process trains: all of them
        in one process; in a learner group, those of this rank's whole groups, padded with ``None`` (a
        zero-weight micro-batch) to the most any rank has."""
        def chunks(groups):
            return list(micro_batches(groups, self.config.trainer.micro_batch_size,
                                      self.config.trainer.max_tokens_per_microbatch,
                                      exp.rollout.prompt_mask.sum(-1), exp.rollout.completion_mask.sum(-1)))

        if self.dist is None:
            return chunks(mb)
        per_rank = [chunks(share) if share else [] for share in self.dist.shares(mb)]
        mine = per_rank[self.dist.rank]
        return mine + [None] * (max(len(c) for c in per_rank) - len(mine))

    # ------------------------------------------------------------------ checkpoints
    def sharded_parts(self) -> dict:
        """``{name: (model, optimizer)}``: what a learner group's checkpoint keeps in shards."""
        return {f"critic_{m}": (model, opt) for m, (model, (opt, _)) in enumerate(zip(self.models, self.opt))}

    def save_pretrained(self, folder: Path) -> None:
        """Each critic as a Hugging Face checkpoint ``folder/critic_m``; in a learner group every rank calls it
        (the shards are gathered) and rank 0 writes."""
        for m, model in enumerate(self.models):
            if self.dist is None:
                model.save_pretrained(Path(folder) / f"critic_{m}")
                continue
            state = self.dist.full_state_dict(model)
            if self.dist.driver:
                model.save_pretrained(Path(folder) / f"critic_{m}", state_dict=state)

    def load_pretrained(self, folder: Path) -> None:
        """The critics' weights from ``folder/critic_m``; in a learner group every rank calls it and rank 0's
        copy is sent into every rank's shards."""
        for m, model in enumerate(self.models):
            if self.dist is None:
                model.load_state_dict(load_value_model(Path(folder) / f"critic_{m}").state_dict())
            else:
                state = load_value_model(Path(folder) / f"critic_{m}").state_dict() if self.dist.driver else {}
                self.dist.load_full_state_dict(model, state)

    def state_dict(self) -> dict:
        """The schedulers' state and, in one process, the optimizers' (a group keeps those in its shards)."""
        state = {"schedulers": [s.state_dict() for _, s in self.opt]}
        if self.dist is None:
            state["optimizers"] = [o.state_dict() for o, _ in self.opt]
        return state

    def load_state_dict(self, state: dict) -> None:
        for i, (o, s) in enumerate(self.opt):
            s.load_state_dict(state["schedulers"][i])
            if "optimizers" not in state:  # a learner group's: the optimizers are in its shards
                continue
            if self.dist is None:
                o.load_state_dict(state["optimizers"][i])
            else:  # a single-process checkpoint resumed in a group: rank 0's state into every rank's shards
                self.dist.load_optimizer_state(self.models[i], o, state["optimizers"][i] if self.dist.driver else {})

