"""Stateful reward/advantage controllers of the learner: Lagrange multipliers, dynamic reward weights,
the i-MENTOR exploration bonus, ARM / ProGRPO advantage re-weighting.

A controller is a small object the learner calls inside :meth:`rlvr.train.learner.Learner.update`, in
the stages it declares in ``stages`` (a subset of :data:`STAGES`, in the learner's order):

* ``"rewards"``: ``rewards(rewards, exp, learner) -> rewards`` -- before the advantage estimator;
* ``"advantages"``: ``advantages(advantages, exp, ctx) -> advantages`` -- after it; ``ctx.advantage_of(r)``
  gives the advantage the run's estimator assigns to any per-row reward ``r [B]``;
* ``metrics() -> dict[str, float]`` -- logged every step;
* ``state_dict()`` / ``load_state_dict()`` -- saved in every checkpoint (with the learner's state).

The math is in :mod:`rlvr.algorithms.rewards` / :mod:`rlvr.algorithms.exploration` (pure functions);
these classes only hold the state. :func:`build_controllers` reads the config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from rlvr import algorithms as A


#: The learner stages a controller may act in (rlvr.train.learner), in the order they run.
STAGES = ("rewards", "advantages")


class Controller:
    """What every controller is: the stages it acts in, and a default (identity) for each."""

    stages: tuple[str, ...] = ()

    def rewards(self, rewards, exp, learner):
        return rewards

    def advantages(self, advantages, exp, ctx: "AdvantageContext"):
        return advantages

    def metrics(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@dataclass
class AdvantageContext:
    mask: torch.Tensor
    advantage_of: Callable[[torch.Tensor], torch.Tensor]
    step: int


class LagrangeConstraints(Controller):
    """Constrained RLHF (Moskovitz et al., ICLR 2024, arXiv 2310.04373; spec 11.5): one multiplier per
    constrained component, squashed (sigmoid by default), mixing the advantages as
    :func:`rlvr.algorithms.lagrangian_mixed_advantage` and learned by SGD with momentum on
    :func:`rlvr.algorithms.multiplier_loss` (dual ascent) once per step, after the mixing, from the
    batch means of the components. ``A_obj`` is the run's advantage of the training reward; ``A_j``
    the same estimator applied to component j alone."""

    stages = ("advantages",)

    def __init__(self, specs: dict):
        self.names = list(specs)
        self.specs = specs
        self.lam = torch.tensor([float(s.init) for s in specs.values()], dtype=torch.float64)
        self.velocity = torch.zeros_like(self.lam)
        self.sign = torch.tensor([1.0 if s.direction == ">=" else -1.0 for s in specs.values()], dtype=torch.float64)
        self.thresholds = torch.tensor([float(s.threshold) for s in specs.values()], dtype=torch.float64)
        self._metrics: dict[str, float] = {}

    def s(self) -> torch.Tensor:
        return torch.stack([A.squash(self.lam[j:j + 1], self.specs[n].squash)[0] for j, n in enumerate(self.names)])

    def advantages(self, advantages, exp, ctx: AdvantageContext):
        missing = [n for n in self.names if n not in exp.reward_components]
        if missing:
            raise ValueError(f"reward.constraints name component(s) {', '.join(missing)} the verifier did not "
                             f"return; its components: {', '.join(sorted(exp.reward_components))}")
        comps = [exp.reward_components[n].to(torch.float64) for n in self.names]
        a_con = torch.stack([ctx.advantage_of(c) for c in comps]).to(advantages.dtype)
        s = self.s()
        mixed = A.lagrangian_mixed_advantage(advantages, a_con, s.to(advantages.dtype), self.sign.to(advantages.dtype))
        values = torch.stack([c.mean() for c in comps])
        self.update(values)
        self._metrics = {}
        for j, n in enumerate(self.names):
            self._metrics[f"constraint/{n}/lambda"] = float(self.lam[j])
            self._metrics[f"constraint/{n}/weight"] = float(s[j])
            self._metrics[f"constraint/{n}/value"] = float(values[j])
            self._metrics[f"constraint/{n}/violation"] = float(
                torch.clamp(self.sign[j] * (self.thresholds[j] - values[j]), min=0))
        return mixed

    def update(self, values: torch.Tensor) -> None:
        """One SGD-with-momentum step of each multiplier on ``L_lambda`` (PyTorch SGD convention:
        ``v <- mu v + g``, ``lambda <- lambda - lr v``); unsquashed multipliers are clamped >= 0."""
        grad = A.multiplier_loss_grad(self.lam, values, self.thresholds, self.sign, "sigmoid")
        for j, n in enumerate(self.names):
            spec = self.specs[n]
            if spec.squash != "sigmoid":
                grad[j] = A.multiplier_loss_grad(self.lam[j:j + 1], values[j:j + 1], self.thresholds[j:j + 1],
                                                 self.sign[j:j + 1], spec.squash)[0]
            self.velocity[j] = spec.momentum * self.velocity[j] + grad[j]
            self.lam[j] = self.lam[j] - spec.lr * self.velocity[j]
            if spec.squash == "none":
                self.lam[j] = torch.clamp(self.lam[j], min=0.0)

    def metrics(self):
        return dict(self._metrics)

    def state_dict(self):
        return {"lam": self.lam.clone(), "velocity": self.velocity.clone(), "names": list(self.names)}

    def load_state_dict(self, state):
        if list(state["names"]) != self.names:
            raise ValueError(f"checkpoint constraints {state['names']} differ from reward.constraints {self.names}")
        self.lam, self.velocity = state["lam"].clone(), state["velocity"].clone()


class HypervolumeWeighting(Controller):
    """Hypervolume-guided weight adaptation (arXiv 2509.11452, spec 11.4a): the batch means of the
    weighted components are this step's point in objective space (the authors evaluate on a
    validation set; rlvr uses the training batch, which costs nothing); ``dHV`` against the buffer
    of earlier Pareto points (the first point is the reference), clipped at 0; the buffer grows only
    when ``dHV > 0``; the NEXT step's training reward is multiplied by ``m = 0.5 + 1.5 tanh(dHV)``.
    (A scalar multiple of the reward cancels in std-normalised advantages such as GRPO's: pair it
    with dr_grpo / rloo-style estimators.)"""

    stages = ("rewards",)

    def __init__(self, names):
        self.names = list(names)
        self.buffer: list[list[float]] = []
        self.m = 1.0
        self._metrics: dict[str, float] = {}

    def rewards(self, rewards, exp, learner):
        out = rewards * self.m
        point = [float(exp.reward_components[n].float().mean()) for n in self.names]
        if not self.buffer:
            self.buffer.append(point)
            dhv = 0.0
        else:
            dhv = max(0.0, A.hypervolume_contribution(point, self.buffer))
            if dhv > 0:
                self.buffer.append(point)
        self._metrics = {"dynamic/meta_reward": self.m, "dynamic/dhv": dhv, "dynamic/buffer": len(self.buffer)}
        self.m = A.hv_meta_reward(dhv)
        return out

    def metrics(self):
        return dict(self._metrics)

    def state_dict(self):
        return {"buffer": [list(p) for p in self.buffer], "m": self.m}

    def load_state_dict(self, state):
        self.buffer, self.m = [list(p) for p in state["buffer"]], float(state["m"])


class GradientWeighting(Controller):
    """Gradient-based weight optimisation (arXiv 2509.11452, spec 11.4b): each step, the policy
    gradient of the run's loss on the advantage of each component alone (``g_k``, over all actor
    parameters, on the whole batch) gives ``I_k = sum_j <g_k, g_j>``; ``w <- softmax(log w + lr I /
    reg)`` with ``lr`` the actor's current learning rate; the training reward is ``sum_k w_k R_k``
    with the updated weights (needs ``reward.combine=sum_then_normalize``). K extra backward passes
    per step. The authors restrict ``g`` to a layer subset (e.g. 10-25 of 36); rlvr uses every
    parameter (the tiny model has 2 layers)."""

    stages = ("rewards",)

    def __init__(self, weights: dict, reg: float):
        self.names = list(weights)
        w = torch.tensor([float(weights[n]) for n in self.names], dtype=torch.float64)
        self.w = w / w.sum()
        self.reg = reg
        self._metrics: dict[str, float] = {}

    def rewards(self, rewards, exp, learner):
        mask = exp.rollout.loss_mask.float()  # the tokens the policy wrote (multi-turn: not the observations)
        grads = []
        for n in self.names:
            r = exp.reward_components[n].float()
            adv = learner.advantage_of(exp, r, mask)
            grads.append(learner.policy_gradient(exp, adv, mask))
        lr = learner.scheduler.get_last_lr()[0]
        self.w = A.gradient_weight_update(self.w, torch.stack(grads), lr, self.reg)
        comps = torch.stack([exp.reward_components[n].to(torch.float64) for n in self.names], -1)
        self._metrics = {f"dynamic/weight/{n}": float(self.w[i]) for i, n in enumerate(self.names)}
        return (comps * self.w).sum(-1).to(rewards.dtype)

    def metrics(self):
        return dict(self._metrics)

    def state_dict(self):
        return {"w": self.w.clone(), "names": list(self.names)}

    def load_state_dict(self, state):
        self.w = state["w"].clone()


class IMentor(Controller):
    """i-MENTOR (arXiv 2505.17621, spec 12.3; authors' ``main_iMENTOR.py`` / ``core_algos.py``): random
    network distillation over whole trajectories. Token ids of prompt+response (0 at padding, cut or
    padded to ``max_len``) -> a frozen random embedding (``embed_dim`` per token), flattened and
    batch-normalised -> target and predictor MLPs ``[16, 8] -> 1`` (LeakyReLU, final sigmoid; target
    frozen). ``e_i = (f_target - f_pred)^2``; the predictor takes one AdamW step (``lr``) on mean(e)
    per RL step; the bonus :func:`rlvr.algorithms.imentor_bonus` with scale ``s0 / s1`` (``s1 += s2``
    after every step) is added to the advantage of every valid token. Choice: the embedding is shared
    and frozen (the release gives each network its own)."""

    stages = ("advantages",)

    def __init__(self, cfg, vocab_size: int, seed: int = 0):
        self.cfg = cfg
        self.s1 = float(cfg.s1)
        d_in = cfg.max_len * cfg.embed_dim
        with torch.random.fork_rng():
            torch.manual_seed(seed + 4242)
            self.embed = torch.nn.Embedding(vocab_size, cfg.embed_dim).requires_grad_(False)
            self.norm = torch.nn.BatchNorm1d(d_in, affine=False)
            self.target = self._mlp(d_in).requires_grad_(False)
            self.predictor = self._mlp(d_in)
        self.optimizer = torch.optim.AdamW(self.predictor.parameters(), lr=cfg.lr)
        self._metrics: dict[str, float] = {}

    @staticmethod
    def _mlp(d_in: int) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(d_in, 16), torch.nn.LeakyReLU(), torch.nn.Linear(16, 8),
                                   torch.nn.LeakyReLU(), torch.nn.Linear(8, 1), torch.nn.Sigmoid())

    def features(self, exp) -> torch.Tensor:
        r = exp.rollout
        ids = torch.cat([r.prompt_ids * r.prompt_mask, r.completion_ids * r.completion_mask], dim=1)
        L = self.cfg.max_len
        ids = ids[:, -L:] if ids.shape[1] >= L else torch.nn.functional.pad(ids, (0, L - ids.shape[1]))
        x = self.embed(ids.long()).flatten(1)
        self.norm.train(x.shape[0] > 1)
        return self.norm(x)

    def advantages(self, advantages, exp, ctx: AdvantageContext):
        x = self.features(exp).detach()
        with torch.no_grad():
            err = (self.target(x) - self.predictor(x)).squeeze(-1) ** 2
        score = exp.reward_components[self.cfg.score]
        bonus = A.imentor_bonus(err, score, self.cfg.s0 / self.s1).to(advantages.dtype)
        loss = ((self.target(x) - self.predictor(x)) ** 2).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self._metrics = {"imentor/bonus_mean": float(bonus.mean()), "imentor/rnd_loss": float(loss.detach()),
                         "imentor/scale": self.cfg.s0 / self.s1}
        self.s1 += self.cfg.s2
        return advantages + bonus.unsqueeze(-1) * ctx.mask

    def metrics(self):
        return dict(self._metrics)

    def state_dict(self):
        return {"predictor": self.predictor.state_dict(), "target": self.target.state_dict(),
                "embed": self.embed.state_dict(), "norm": self.norm.state_dict(),
                "optimizer": self.optimizer.state_dict(), "s1": self.s1}

    def load_state_dict(self, state):
        self.predictor.load_state_dict(state["predictor"])
        self.target.load_state_dict(state["target"])
        self.embed.load_state_dict(state["embed"])
        self.norm.load_state_dict(state["norm"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.s1 = float(state["s1"])


class AdvantageReweighting(Controller):
    """ARM / ProGRPO (arXiv 2602.05281, spec 12.2): ``A + alpha (c(q) - c(o|q))`` in groups with a non-zero
    reward (:func:`rlvr.algorithms.arm_advantages`), the confidences from
    :func:`rlvr.algorithms.low_prob_confidence` over the least likely ``quantile`` of the tokens. One
    extra no-grad forward of prompt + completion under the current (pre-update) policy gives both:
    ``c(q)`` on the prompt tokens (its first token is not predicted), ``c(o|q)`` on the completion
    tokens, at temperature 1 (a property of the model, not of the sampler). Stateless."""

    stages = ("rewards", "advantages")

    def __init__(self, cfg):
        self.cfg = cfg
        self._conf = None
        self._metrics: dict[str, float] = {}

    @torch.no_grad()
    def rewards(self, rewards, exp, learner):  # records the confidences; the rewards pass unchanged
        from rlvr.models.logprobs import sequence_inputs, token_logprobs

        r = exp.rollout
        P = r.prompt_ids.shape[1]
        mb = learner.config.trainer.micro_batch_size
        cq, co = [], []
        for start in range(0, r.prompt_ids.shape[0], mb):
            sl = slice(start, start + mb)
            ids, att, pos = sequence_inputs(r.prompt_ids[sl], r.prompt_mask[sl], r.completion_ids[sl],
                                            r.completion_mask[sl])
            logits = learner.model(input_ids=ids, attention_mask=att, position_ids=pos, use_cache=False).logits.float()
            lp = token_logprobs(logits[:, :-1], ids[:, 1:])  # position j predicts token j + 1
            valid = att[:, 1:] * att[:, :-1]
            prompt_mask = valid.clone()
            prompt_mask[:, P - 1:] = 0
            answer_mask = att[:, 1:].clone()
            answer_mask[:, :P - 1] = 0
            cq.append(A.low_prob_confidence(lp, prompt_mask, self.cfg.quantile))
            co.append(A.low_prob_confidence(lp, answer_mask, self.cfg.quantile))
        self._conf = (torch.cat(cq), torch.cat(co))
        return rewards

    def advantages(self, advantages, exp, ctx: AdvantageContext):
        cq, co = self._conf
        out = A.arm_advantages(advantages, exp.rewards, exp.group, cq, co, self.cfg.alpha) * ctx.mask
        self._metrics = {"arm/prompt_conf": float(cq.mean()), "arm/answer_conf": float(co.mean()),
                         "arm/shift_abs_mean": float(((out - advantages).abs() * ctx.mask).sum()
                                                     / ctx.mask.sum().clamp(min=1))}
        self._conf = None
        return out

    def metrics(self):
        return dict(self._metrics)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def build_controllers(config, vocab_size: int) -> dict:
    """The controllers a config asks for, by name (the order they run in within a stage)."""
    rw = config.reward
    out = {}
    if rw.dynamic_weights == "hypervolume":
        out["hypervolume"] = HypervolumeWeighting(rw.weights)
    elif rw.dynamic_weights == "gradient":
        out["gradient_weights"] = GradientWeighting(rw.weights, rw.dynamic_reg)
    if rw.constraints:
        out["constraints"] = LagrangeConstraints(dict(rw.constraints))
    if config.algorithm.imentor.enabled:
        out["imentor"] = IMentor(config.algorithm.imentor, vocab_size, config.run.seed)
    if config.algorithm.arm.enabled:
        out["arm"] = AdvantageReweighting(config.algorithm.arm)
    for name, ctl in out.items():
        unknown = set(ctl.stages) - set(STAGES)
        if unknown:
            raise ValueError(f"controller {name!r} declares unknown stage(s) {sorted(unknown)}; stages: {STAGES}")
    return out
