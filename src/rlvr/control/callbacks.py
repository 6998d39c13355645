"""Training callbacks: periodic work that hooks into the loop without an ``if`` per feature.

The protocol is small::

    class Callback:
        name: str
        def on_train_begin(self, learner) -> None                      # after a resume too
        def on_step_end(self, step, learner, experience, metrics) -> dict[str, float]   # logged
        def state_dict(self) -> dict                                   # saved in every checkpoint
        def load_state_dict(self, state) -> None

``step`` is the 0-based step just trained (``step + 1`` steps are done). :func:`build_callbacks`
reads the config; the loop calls :class:`Callbacks` once per step. Built-ins:

* :class:`AdaptiveKLControl` -- verl's ``AdaptiveKLController`` (Ziegler et al. 2019) on ``kl.coef``;
* :class:`AdaptiveEntropyControl` -- Skywork-OR1's adaptive entropy coefficient, as TRL has it;
* :class:`ReferenceReset` -- ProRL's periodic / KL-triggered reference-policy reset (spec 15);
* :class:`PlasticityDiagnostics` -- GraMa and the tau-dormant ratio per layer, ReGraMa resets (spec 19).
"""

from __future__ import annotations

import math

import torch

from rlvr import algorithms as A


class Callback:
    name = "callback"

    def on_train_begin(self, learner) -> None:
        pass

    def on_step_end(self, step: int, learner, experience, metrics: dict) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Callbacks:
    """A list of callbacks, called in order; their states keyed by name."""

    def __init__(self, callbacks=()):
        self.callbacks = list(callbacks)

    def on_train_begin(self, learner) -> None:
        for cb in self.callbacks:
            cb.on_train_begin(learner)

    def on_step_end(self, step, learner, experience, metrics) -> dict:
        out = {}
        for cb in self.callbacks:
            out.update(cb.on_step_end(step, learner, experience, {**metrics, **out}) or {})
        return out

    def state_dict(self) -> dict:
        return {cb.name: cb.state_dict() for cb in self.callbacks}

    def load_state_dict(self, state: dict) -> None:
        for cb in self.callbacks:
            if cb.name in state:
                cb.load_state_dict(state[cb.name])


class AdaptiveKLControl(Callback):
    """``kl.controller=adaptive``: after each step ``learner.kl_coef <- adaptive_kl_update(coef, KL,
    target, horizon, n_steps=B)`` with KL the step's ``kl_seq_mean`` (verl's ``current_kl``: per
    sequence token-mean KL of the behaviour policy to the reference, averaged over the batch). verl
    uses it for the in-reward KL; rlvr applies the same rule to either placement. The coefficient is
    checkpointed with the learner."""

    name = "adaptive_kl"

    def __init__(self, target: float, horizon: int):
        self.target, self.horizon = target, horizon

    def on_step_end(self, step, learner, experience, metrics):
        kl = metrics.get("kl_seq_mean")
        if kl is None:
            return {}
        learner.kl_coef = A.adaptive_kl_update(learner.kl_coef, kl, self.target, self.horizon,
                                               int(experience.rewards.shape[0]))
        return {"kl_coef_next": learner.kl_coef}


class AdaptiveEntropyControl(Callback):
    """``trainer.entropy_target`` set: the controller's coefficient moves by ``entropy_coef_delta``
    toward keeping the mean token entropy (``entropy_token_mean``, over the same tokens as the
    policy loss) above the target; the learner applies it only while the last entropy is at or
    below the target (TRL ``use_adaptive_entropy``; Skywork-OR1). TRL updates once per optimizer
    step; rlvr once per RL step (the same when ``ppo_epochs = num_minibatches = 1``)."""

    name = "adaptive_entropy"

    def __init__(self, coef: float, target: float, delta: float, coef_min: float, coef_max: float):
        self.coef, self.target, self.delta = coef, target, delta
        self.coef_min, self.coef_max = coef_min, coef_max
        self.last_entropy = math.inf

    def on_train_begin(self, learner):
        learner.entropy_coef = A.adaptive_entropy_applied(self.coef, self.last_entropy, self.target)

    def on_step_end(self, step, learner, experience, metrics):
        ent = metrics.get("entropy_token_mean")
        if ent is None:
            return {}
        self.coef = A.adaptive_entropy_update(self.coef, ent, self.target, self.delta, self.coef_min, self.coef_max)
        self.last_entropy = ent
        learner.entropy_coef = A.adaptive_entropy_applied(self.coef, self.last_entropy, self.target)
        return {"entropy_coef_controller": self.coef, "entropy_coef_next": learner.entropy_coef}

    def state_dict(self):
        return {"coef": self.coef, "last_entropy": self.last_entropy}

    def load_state_dict(self, state):
        self.coef, self.last_entropy = float(state["coef"]), float(state["last_entropy"])


class ReferenceReset(Callback):
    """ProRL (NVIDIA, arXiv 2505.24864, spec 15): the reference policy becomes a copy of the current
    policy every ``every`` steps (0: never) and/or when the step's ``kl_seq_mean`` exceeds ``max_kl``;
    with ``reset_optimizer`` the optimizer's moments are re-initialised. (The paper resets by hand
    when validation stalls; a fixed cadence and a KL bound are the automatic triggers offered.) The
    reference weights are checkpointed with the learner once a reset has happened."""

    name = "reference_reset"

    def __init__(self, every: int, max_kl: float | None, reset_optimizer: bool):
        self.every, self.max_kl, self.reset_optimizer = every, max_kl, reset_optimizer
        self.resets = 0

    def on_step_end(self, step, learner, experience, metrics):
        done = step + 1
        due = bool(self.every) and done % self.every == 0
        over = self.max_kl is not None and metrics.get("kl_seq_mean", 0.0) > self.max_kl
        if due or over:
            learner.reset_reference(done, self.reset_optimizer)
            self.resets += 1
        return {"ref_reset": float(due or over), "ref_resets": float(self.resets)}

    def state_dict(self):
        return {"resets": self.resets}

    def load_state_dict(self, state):
        self.resets = int(state["resets"])


def _linear_layers(model) -> dict[str, torch.nn.Linear]:
    """The model's linear layers except the output head (never reset, spec 19.2)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head}


class PlasticityDiagnostics(Callback):
    """Spec 19 (arXiv 2505.24061; ReDo, arXiv 2302.12902): every ``every`` steps, for each linear layer
    (neurons = its output units; the output head excluded):

    * tau-dormant ratio from ``E|h_i|`` of the layer's outputs on the step's batch (a no-grad
      forward with hooks; :func:`rlvr.algorithms.dormant_scores`);
    * GraMa ratio from ``mean_j |dL/dW_ij|`` of the last optimizer step's gradients (the optax
      variant of spec 19.2; :func:`rlvr.algorithms.grama_scores`).

    Logged as ``plasticity/dormant_ratio``, ``plasticity/grama_ratio`` (all neurons) and
    ``plasticity/<layer>/dormant|grama`` per layer. With ``regrama``, every ``regrama_every`` steps the
    GraMa-inactive neurons get fresh incoming weights (``nn.Linear``'s Kaiming-uniform init), bias 0,
    and their AdamW moments zeroed; outgoing weights are left as they are (the paper's choice was
    not verified; zeroing them would keep the neuron's gradient at 0 and re-flag it at once)."""

    name = "plasticity"

    def __init__(self, every: int, tau: float, regrama: bool, regrama_every: int, micro_batch: int = 64):
        self.every, self.tau, self.regrama, self.regrama_every = every, tau, regrama, regrama_every
        self.micro_batch = micro_batch
        self.total_resets = 0

    def activations(self, learner, experience) -> dict[str, torch.Tensor]:
        layers = _linear_layers(learner.model)
        sums = {n: None for n in layers}
        count = {"n": 0}

        def hook(name):
            def fn(module, inp, out):
                a = out.detach().abs().reshape(-1, out.shape[-1]).sum(0)
                sums[name] = a if sums[name] is None else sums[name] + a
            return fn

        handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
        try:
            with torch.no_grad():
                idx = torch.arange(min(self.micro_batch, experience.rewards.shape[0]))
                logits = learner._logits(learner.model, experience, idx)
                count["n"] = logits.shape[0] * logits.shape[1]
        finally:
            for h in handles:
                h.remove()
        return {n: s for n, s in sums.items() if s is not None}

    def on_step_end(self, step, learner, experience, metrics):
        done = step + 1
        out = {}
        if self.every and done % self.every == 0:
            acts = self.activations(learner, experience)
            dormant_n = grama_n = total = 0
            for name, layer in _linear_layers(learner.model).items():
                if name in acts:
                    _, ratio = A.dormant_scores(acts[name], self.tau)
                    out[f"plasticity/{name}/dormant"] = ratio
                    dormant_n += ratio * layer.out_features
                if layer.weight.grad is not None:
                    _, gratio = A.grama_scores(layer.weight.grad.detach().abs().mean(1), self.tau)
                    out[f"plasticity/{name}/grama"] = gratio
                    grama_n += gratio * layer.out_features
                total += layer.out_features
            out["plasticity/dormant_ratio"] = dormant_n / max(total, 1)
            out["plasticity/grama_ratio"] = grama_n / max(total, 1)
        if self.regrama and done % self.regrama_every == 0:
            out["plasticity/regrama_reset"] = float(self.reset(learner))
        return out

    def reset(self, learner) -> int:
        """ReGraMa: re-initialise the GraMa-inactive neurons of every linear layer; returns how many."""
        n = 0
        opt_state = learner.optimizer.state
        for layer in _linear_layers(learner.model).values():
            if layer.weight.grad is None:
                continue
            scores, _ = A.grama_scores(layer.weight.grad.detach().abs().mean(1), self.tau)
            rows = torch.nonzero(scores <= self.tau).flatten()
            if rows.numel() == 0:
                continue
            fresh = torch.empty_like(layer.weight)
            torch.nn.init.kaiming_uniform_(fresh, a=math.sqrt(5))
            with torch.no_grad():
                layer.weight[rows] = fresh[rows]
                if layer.bias is not None:
                    layer.bias[rows] = 0.0
            for p in (layer.weight, layer.bias):
                st = opt_state.get(p) if p is not None else None
                if st:
                    for key in ("exp_avg", "exp_avg_sq"):
                        if key in st:
                            st[key][rows] = 0.0
            n += rows.numel()
        self.total_resets += n
        return n

    def state_dict(self):
        return {"total_resets": self.total_resets}

    def load_state_dict(self, state):
        self.total_resets = int(state["total_resets"])


def build_callbacks(config) -> Callbacks:
    """The callbacks a config asks for."""
    cbs = []
    k, t, p = config.kl, config.trainer, config.plasticity
    if k.controller == "adaptive":
        cbs.append(AdaptiveKLControl(k.target, k.horizon))
    if k.reset_every or k.reset_max_kl is not None:
        cbs.append(ReferenceReset(k.reset_every, k.reset_max_kl, k.reset_optimizer))
    if t.entropy_target is not None:
        cbs.append(AdaptiveEntropyControl(t.entropy_coef, t.entropy_target, t.entropy_coef_delta,
                                          t.entropy_coef_min, t.entropy_coef_max))
    if p.every or p.regrama:
        cbs.append(PlasticityDiagnostics(p.every, p.tau, p.regrama, p.regrama_every,
                                         micro_batch=config.trainer.micro_batch_size))
    return Callbacks(cbs)
