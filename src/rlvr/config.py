"""Typed, validated configuration: YAML files plus dotted command-line overrides.

``load_config("configs/x.yaml", ["trainer.lr=1e-5"])`` returns a validated :class:`Config`.
Any wrong or unknown field raises :class:`ConfigError`, whose message is one line per problem,
naming the field and the allowed values or the fix.
"""

from __future__ import annotations

import math
import re
import types
import typing
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A configuration problem a user can fix; the message names the field."""


class ConfigWarning(UserWarning):
    """A valid but degenerate setting (e.g. ``rollout.group_size=1`` with GRPO); issued at config load."""


class _Section(BaseModel):
    # allow_inf_nan=False: every float field of every section (tuples and optionals too) is finite
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, v: Any, info):
        """``trainer.lr=yes`` is a YAML boolean; pydantic would read it as 1.0."""
        field = cls.model_fields.get(info.field_name)
        if field is not None and _has_bool(v) and _numeric(field.annotation):
            raise ValueError("expected a number, not a boolean")
        return v


def _numeric(ann: Any) -> bool:
    """Whether a field's annotation is a number (int/float, optional, or a tuple of numbers)."""
    if ann in (int, float):
        return True
    args = [a for a in typing.get_args(ann) if a is not type(None) and a is not Ellipsis]
    origin = typing.get_origin(ann)
    if origin is typing.Annotated:
        return _numeric(args[0])
    if origin in (typing.Union, types.UnionType, tuple):
        return bool(args) and all(_numeric(a) for a in args)
    return False


def _has_bool(v: Any) -> bool:
    return isinstance(v, bool) or (isinstance(v, (list, tuple)) and any(isinstance(x, bool) for x in v))


def _finite_tree(v: Any, where: str = "") -> Any:
    """Free-form values (task options, estimator parameters): every number in them must be finite."""
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"numbers must be finite, found {v}" + (f" at {where}" if where else ""))
    if isinstance(v, dict):
        for k, x in v.items():
            _finite_tree(x, f"{where}.{k}" if where else str(k))
    elif isinstance(v, (list, tuple)):
        for i, x in enumerate(v):
            _finite_tree(x, f"{where}[{i}]")
    return v


def _plain_name(v: str) -> str:
    """A folder name inside its parent: not empty, not '.'/'..', no path separator or control character."""
    if not v.strip():
        raise ValueError("must not be empty")
    if v != v.strip():
        raise ValueError("has leading or trailing spaces")
    if "/" in v or "\\" in v or v in (".", ".."):
        raise ValueError("must be a plain name, not a path (no '/', '\\', '.' or '..'); "
                         "choose the parent folder with run.output_dir")
    if any(ord(c) < 32 for c in v):
        raise ValueError("holds a control character")
    return v


def _non_empty(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be empty")
    if any(ord(c) < 32 for c in v):
        raise ValueError("holds a control character")
    return v


def _identifier(v: str) -> str:
    """A registry-style name (a task name, a reward component): no spaces, no path."""
    _non_empty(v)
    if any(c.isspace() for c in v) or "/" in v.split(":", 1)[0] or "\\" in v:
        raise ValueError("must be a name without spaces or path separators")
    return v


def _device(v: str) -> str:
    if not re.fullmatch(r"[a-z][a-z0-9_]*(:[0-9]+)?", v):
        raise ValueError("expected a torch device such as cpu, cuda, cuda:1 or mps")
    return v


PlainName = Annotated[str, AfterValidator(_plain_name)]
NonEmptyStr = Annotated[str, AfterValidator(_non_empty)]
Identifier = Annotated[str, AfterValidator(_identifier)]
DeviceName = Annotated[str, AfterValidator(_device)]
#: a value of a free-form mapping (task.options, algorithm.*_params): any YAML value with finite numbers
FreeValue = Annotated[Any, AfterValidator(_finite_tree)]
_Beta = Annotated[float, Field(ge=0, lt=1)]


class RunSection(_Section):
    name: PlainName = Field("run", description="the run folder's name inside output_dir (no path)")
    output_dir: NonEmptyStr = "runs"
    seed: int = Field(0, ge=0, lt=2**63)
    device: DeviceName = "cpu"


class ModelSection(_Section):
    path: NonEmptyStr = Field("builtin:tiny", description="'builtin:tiny', a local HF checkpoint folder or a hub id")
    warm_start: bool = Field(True, description="supervised warm start on the task (builtin:tiny only), cached")
    dtype: Literal["float32", "bfloat16"] = "float32"


class TaskSection(_Section):
    name: Identifier = "arithmetic"
    options: dict[str, FreeValue] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_options(self) -> "TaskSection":
        """Options of a registered task are checked against its factory's signature (a task registered
        later, e.g. by a user script, is checked when it is built)."""
        from rlvr.tasks import base

        base._load_builtins()
        family, colon, arg = self.name.partition(":")
        factory = base.TASKS.get(family)
        if factory is not None and not (colon and not arg):
            _check_params("task.options", self.options, factory, self.name, skip=(),
                          positional=1 if arg else 0, what="an option of task")
        return self


class DynamicSamplingSection(_Section):
    """DAPO dynamic sampling (Yu et al. 2025, arXiv 2503.14476, sec. 3.2)."""

    enabled: bool = False
    metric: Identifier = Field("correct", description="reward component whose all-equal groups are dropped")
    max_gen_batches: int = Field(10, description="generation rounds before giving up; <= 0: unlimited")


class RolloutSection(_Section):
    engine: Literal["hf"] = "hf"
    dtype: Literal["float32", "bfloat16"] | None = Field(
        None, description="dtype of the rollout engine's copy of the weights (None: model.dtype); a "
        "bfloat16 copy of an fp32 learner changes in few elements per step, so sparse weight sync pays")
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(8, ge=1)
    group_size: int = Field(8, ge=1, description="G: completions per prompt")
    prompts_per_step: int = Field(32, ge=1)
    batch_size: int = Field(512, ge=1, description="sequences per generate call")
    greedy_baseline: bool = Field(False, description="also decode one greedy completion per prompt "
                                  "(ReMax's baseline reward)")
    dynamic_sampling: DynamicSamplingSection = Field(default_factory=DynamicSamplingSection)
    aggregation_ratio: float = Field(0.0, ge=0, lt=1, description="aggregation-aware RL (RSA, arXiv "
                                     "2509.26626): share of each step's groups whose prompt is an "
                                     "aggregation prompt over the policy's own candidates (0: off)")
    aggregation_k: int = Field(3, ge=1, description="candidates per aggregation prompt (K); must be "
                               "<= rollout.group_size")


class RewardSection(_Section):
    """Reward shaping applied after the verifier."""

    overlong_buffer_len: int = Field(0, ge=0, description="DAPO soft overlong punishment: L_cache "
                                     "(0 disables); L_max is rollout.max_new_tokens")
    overlong_penalty_factor: float = Field(1.0, ge=0)


class MismatchSection(_Section):
    """Train-inference mismatch / off-policy correction from rollout_logp vs the trainer's old_logp.

    ``method`` is a key of ``rlvr.algorithms.MISMATCH_CORRECTIONS``; it receives the fields below
    that its signature names (tis: level, upper; mis: level, upper, lower; hispo: delta_seq,
    delta_tok; decoupled: cap).
    """

    method: str = Field("auto", description="auto | none | tis | mis | hispo | decoupled (or a registered "
                        "one); auto: decoupled PPO weights for a PPO-clip loss trained on stale samples "
                        "(runtime.max_staleness > 0), else none")
    level: Literal["token", "sequence", "geometric"] = "token"
    upper: float = Field(2.0, gt=0)
    lower: float | None = None
    delta_seq: float | None = None
    delta_tok: float | None = None
    cap: float | None = Field(None, gt=1, description="decoupled: tokens whose pi_prox/pi_behav exceeds "
                              "this get weight 0 (AReaL behav_imp_weight_cap); null: no cap")

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        return v if v == "auto" else _check_registry(v, "MISMATCH_CORRECTIONS")


class AlgorithmSection(_Section):
    advantage_estimator: str = "grpo"
    advantage_params: dict[str, FreeValue] = Field(default_factory=dict)
    policy_loss: str = "vanilla"
    policy_loss_params: dict[str, FreeValue] = Field(default_factory=dict)
    loss_agg_mode: str = "token-mean"
    loss_agg_params: dict[str, FreeValue] = Field(default_factory=dict)
    mismatch: MismatchSection = Field(default_factory=MismatchSection)

    @model_validator(mode="after")
    def _known_params(self) -> "AlgorithmSection":
        from rlvr import algorithms as A

        _check_params("algorithm.advantage_params", self.advantage_params,
                      A.ADVANTAGE_ESTIMATORS.get(self.advantage_estimator), self.advantage_estimator)
        _check_params("algorithm.policy_loss_params", self.policy_loss_params,
                      A.POLICY_LOSSES.get(self.policy_loss), self.policy_loss)
        _check_params("algorithm.loss_agg_params", self.loss_agg_params,  # (values, mask, *, counts, norm_constant)
                      A.LOSS_AGGREGATIONS.get(self.loss_agg_mode), self.loss_agg_mode, positional=2,
                      skip=("batch_num_tokens", "batch_num_seqs"))
        return self

    @field_validator("advantage_estimator")
    @classmethod
    def _known_estimator(cls, v: str) -> str:
        return _check_registry(v, "ADVANTAGE_ESTIMATORS")

    @field_validator("policy_loss")
    @classmethod
    def _known_loss(cls, v: str) -> str:
        return _check_registry(v, "POLICY_LOSSES")

    @field_validator("loss_agg_mode")
    @classmethod
    def _known_agg(cls, v: str) -> str:
        return _check_registry(v, "LOSS_AGGREGATIONS")


class KLSection(_Section):
    placement: Literal["none", "reward", "loss"] = "none"
    estimator: str = "k3"
    coef: float = Field(0.0, ge=0)

    @field_validator("estimator")
    @classmethod
    def _known_kl(cls, v: str) -> str:
        return _check_registry(v, "KL_ESTIMATORS")


class TrainerSection(_Section):
    steps: int = Field(100, ge=0, description="RL steps (one rollout batch each)")
    lr: float = Field(5e-5, gt=0)
    warmup_steps: int = Field(0, ge=0, description="linear warm-up, in optimizer steps")
    lr_schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="after warm-up: constant, or decay to min_lr_ratio x lr at the last step")
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[_Beta, _Beta] = Field((0.9, 0.999), description="Adam's (beta1, beta2), each in [0, 1)")
    ppo_epochs: int = Field(1, ge=1)
    num_minibatches: int = Field(1, ge=1, description="optimizer steps per epoch")
    micro_batch_size: int = Field(256, ge=1, description="sequences per forward/backward")
    max_grad_norm: float = Field(1.0, gt=0)
    entropy_coef: float = Field(0.0, ge=0)


class CriticSection(_Section):
    """Learned value model(s) for critic-based estimators (``gae``: PPO; ``asyppo``: AsyPPO).

    Used only when the advantage estimator needs ``values``. Each critic is a Hugging Face
    token-classification model (a transformer with a value head on every position) built from
    ``model_path``; ``num_layers`` / ``hidden_size`` make it a smaller member of the family.
    """

    model_path: NonEmptyStr = Field("actor", description="'actor' (the actor's starting checkpoint), a local HF "
                            "checkpoint folder or a hub id")
    num_layers: int | None = Field(None, ge=1, description="keep only the first N transformer layers "
                                   "(a 'mini-critic' that still starts from pretrained weights)")
    hidden_size: int | None = Field(None, ge=8, description="a freshly initialised critic of this width "
                                    "(intermediate = 2x, heads = 4); None keeps the checkpoint's width")
    num_critics: int = Field(1, ge=1, description="M: the ensemble size (AsyPPO); critic m trains on shard m "
                             "of every group's responses")
    lr: float = Field(1e-4, gt=0)
    warmup_steps: int = Field(0, ge=0, description="RL steps at the start in which only the critic is "
                              "trained and the actor is frozen (verl trainer.critic_warmup)")
    lr_warmup_steps: int = Field(0, ge=0, description="linear learning-rate warm-up of the critic's "
                                 "optimizer, in optimizer steps")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    value_loss: str = Field("mse", description="mse | hl_gauss | two_hot (or a registered value loss)")
    value_loss_params: dict[str, FreeValue] = Field(default_factory=dict)
    adv_mask_frac: float = Field(0.2, ge=0, lt=1, description="AsyPPO: lowest-disagreement fraction of "
                                 "tokens whose advantage is masked")
    ent_mask_frac: float = Field(0.2, ge=0, lt=1, description="AsyPPO: highest-disagreement fraction of "
                                 "tokens excluded from the entropy bonus")

    @field_validator("value_loss")
    @classmethod
    def _known_value_loss(cls, v: str) -> str:
        return _check_registry(v, "VALUE_LOSSES")

    @model_validator(mode="after")
    def _known_params(self) -> "CriticSection":
        from rlvr import algorithms as A

        _check_params("critic.value_loss_params", self.value_loss_params,
                      A.VALUE_LOSSES.get(self.value_loss), self.value_loss)
        return self

    def num_outputs(self) -> int:
        """Value-head width: ``num_bins`` for a loss over bins (one with a ``num_bins`` parameter:
        ``hl_gauss``, ``two_hot``, or a registered one), else 1 (a scalar value, e.g. ``mse``)."""
        import inspect

        from rlvr import algorithms as A

        bins = inspect.signature(A.VALUE_LOSSES[self.value_loss]).parameters.get("num_bins")
        return 1 if bins is None else int(self.value_loss_params.get("num_bins", bins.default))


class SFTSection(_Section):
    steps: int = Field(500, ge=0, description="warm-start optimizer steps; with target_accuracy "
                       "set, the most steps (a cap)")
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(128, ge=1)
    warmup_steps: int = Field(30, ge=0)
    seed: int = 0
    aggregation_ratio: float = Field(0.0, ge=0, le=1, description="share of warm-start rows that are "
                                     "RSA aggregation examples over noisy candidates (0: none)")
    aggregation_k: int = Field(4, ge=1, description="aggregation examples show 1..aggregation_k candidates")
    target_accuracy: float | None = Field(None, gt=0, le=1, description="stop at the first validation "
                                          "check whose greedy accuracy reaches this (null: exactly `steps` steps)")
    eval_every: int = Field(25, ge=1, description="steps between validation checks (with target_accuracy)")
    val_problems: int = Field(500, ge=1, description="distinct train prompts held out of the warm start "
                              "as its validation set (with target_accuracy; at most a fifth of them)")


class EvalSection(_Section):
    num_problems: int = Field(200, ge=1)
    samples_per_problem: int = Field(4, ge=1, description="sampled completions per problem for the mean reward")
    every: int = Field(0, ge=0, description="evaluate every N steps (0: only before and after)")


class LoggingSection(_Section):
    samples_every: int = Field(10, ge=1)
    num_samples: int = Field(4, ge=0)
    checkpoint_every: int = Field(25, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    progress: bool = True
    plots: bool = True


#: PPO-clip losses that ``algorithm.mismatch.method=auto`` turns into decoupled PPO (AReaL) when
#: samples may be stale: their ``old_logp`` is the proximal policy, and the behaviour weight
#: pi_prox / pi_behav corrects for the engine's older weights. Other losses keep ``none``.
AUTO_DECOUPLED_LOSSES = ("vanilla", "ppo", "clip_cov")


class RuntimeSection(_Section):
    """How generation and training are wired: in turn (sync) or overlapping (async), in one process
    (local: rollout threads) or on Ray (one actor per rollout worker). Sync is async with S = 0."""

    mode: Literal["sync", "async"] = "sync"
    backend: Literal["local", "ray"] = "local"
    num_rollout_workers: int = Field(1, ge=1, description="rollout workers, each with its own engine "
                                     "and copy of the weights")
    max_staleness: int | None = Field(None, ge=0, description="S: a batch is at most S policy versions "
                                      "behind the learner when trained (None: 0 in sync mode, 1 in async)")
    stale_policy: Literal["accept", "mask", "drop"] = Field(
        "accept", description="a batch that still exceeds S when consumed: train it (counted), train "
        "it with zero policy-gradient weight (masked, its group still gives the baseline), or drop "
        "its groups whole")
    sync_every: int = Field(1, ge=1, description="learner steps between weight publications")
    weight_sync: Literal["full", "sparse"] = Field(
        "full", description="full state dict, or only the elements whose bits changed (SparseRL-Sync)")
    sync_bucket_mb: float = Field(64.0, gt=0, description="weight payload bucket size")
    debug_checksums: bool = Field(False, description="check a checksum of the workers' weights after "
                                  "every sync")
    learner_threads: int | None = Field(None, ge=1, description="torch threads of the learner (None: "
                                        "all cores in sync mode, the cores left by the workers in async)")
    worker_threads: int | None = Field(None, ge=1, description="torch threads per rollout worker (None: "
                                       "cores // (workers + 1), at least 1)")
    ray_address: str | None = Field(None, description="join this Ray cluster (None: a local Ray "
                                    "started with the cores of this machine)")
    timeout_s: float = Field(600.0, gt=0, description="longest wait for a batch, an admission or a "
                             "weight sync before a named error stops the run")

    def staleness(self) -> int:
        """S, the staleness bound in policy versions (sync mode is exactly S = 0)."""
        if self.max_staleness is not None:
            return self.max_staleness
        return 1 if self.mode == "async" else 0

    def decoupled(self) -> bool:
        """True when rollouts come from rollout workers (threads or Ray actors), not in place."""
        return self.mode == "async" or self.backend == "ray"


class Config(_Section):
    run: RunSection = Field(default_factory=RunSection)
    model: ModelSection = Field(default_factory=ModelSection)
    task: TaskSection = Field(default_factory=TaskSection)
    rollout: RolloutSection = Field(default_factory=RolloutSection)
    reward: RewardSection = Field(default_factory=RewardSection)
    algorithm: AlgorithmSection = Field(default_factory=AlgorithmSection)
    kl: KLSection = Field(default_factory=KLSection)
    trainer: TrainerSection = Field(default_factory=TrainerSection)
    critic: CriticSection = Field(default_factory=CriticSection)
    sft: SFTSection = Field(default_factory=SFTSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)
    runtime: RuntimeSection = Field(default_factory=RuntimeSection)

    @model_validator(mode="before")
    @classmethod
    def _run_backend_moved(cls, data):
        """``run.backend`` (first wave) is ``runtime.backend`` now; old configs keep working."""
        if not (isinstance(data, dict) and isinstance(data.get("run"), dict) and "backend" in data["run"]):
            return data
        run = dict(data["run"])
        backend = run.pop("backend")
        runtime = data.get("runtime")
        runtime = dict(runtime) if isinstance(runtime, dict) else {}
        if runtime.get("backend", backend) != backend:
            raise ValueError(f"run.backend = {backend!r} disagrees with runtime.backend = "
                             f"{runtime['backend']!r}; run.backend moved to runtime.backend: set only that")
        runtime["backend"] = backend
        return {**data, "run": run, "runtime": runtime}

    @model_validator(mode="after")
    def _consistent(self) -> "Config":
        batch = self.rollout.prompts_per_step * self.rollout.group_size
        if self.trainer.num_minibatches > batch:
            raise ValueError(
                f"trainer.num_minibatches ({self.trainer.num_minibatches}) exceeds the rollout batch "
                f"({batch} = rollout.prompts_per_step x rollout.group_size); lower it")
        if self.rollout.dynamic_sampling.enabled and self.rollout.group_size == 1:
            raise ValueError("rollout.dynamic_sampling.enabled with rollout.group_size=1: a one-completion "
                             "group is always constant, so every group would be dropped; use "
                             "rollout.group_size >= 2 or rollout.dynamic_sampling.enabled=false")
        if self.reward.overlong_buffer_len >= self.rollout.max_new_tokens:
            raise ValueError(f"reward.overlong_buffer_len ({self.reward.overlong_buffer_len}) must be "
                             f"smaller than rollout.max_new_tokens ({self.rollout.max_new_tokens})")
        if self.rollout.aggregation_ratio > 0 and self.rollout.aggregation_k > self.rollout.group_size:
            raise ValueError(f"rollout.aggregation_k ({self.rollout.aggregation_k}) exceeds rollout.group_size "
                             f"({self.rollout.group_size}): candidates are drawn without replacement from "
                             "one group; lower rollout.aggregation_k")
        if self.rollout.aggregation_ratio > 0 and round(
                self.rollout.aggregation_ratio * self.rollout.prompts_per_step) >= self.rollout.prompts_per_step:
            raise ValueError(f"rollout.aggregation_ratio ({self.rollout.aggregation_ratio}) leaves no plain "
                             f"prompt out of rollout.prompts_per_step ({self.rollout.prompts_per_step}); "
                             "lower it")
        if self.kl.placement != "none" and self.kl.coef == 0:
            raise ValueError("kl.coef is 0 while kl.placement is "
                             f"'{self.kl.placement}'; set kl.coef > 0 or kl.placement=none")
        self._check_runtime()
        if self.critic.num_critics > 1 and self.algorithm.advantage_estimator != "asyppo":
            raise ValueError(f"critic.num_critics = {self.critic.num_critics} needs "
                             "algorithm.advantage_estimator=asyppo (gae uses one critic); set one of them")
        return self

    def _check_runtime(self) -> None:
        rt = self.runtime
        S = rt.staleness()
        if rt.mode == "sync" and S > 0:
            raise ValueError(f"runtime.max_staleness = {S} in sync mode, which is exactly S = 0; set "
                             "runtime.mode=async for S > 0")
        if rt.sync_every > S + 1:
            raise ValueError(f"runtime.sync_every ({rt.sync_every}) exceeds runtime.max_staleness + 1 "
                             f"({S + 1}): a worker could never admit a batch within the staleness bound; "
                             "lower runtime.sync_every or raise runtime.max_staleness")
        if not rt.decoupled() and self.rollout.dtype not in (None, self.model.dtype):
            raise ValueError(f"rollout.dtype = {self.rollout.dtype!r} needs a separate engine copy of the "
                             "weights: set runtime.mode=async (or runtime.backend=ray), or leave rollout.dtype unset")
        mm = self.algorithm.mismatch
        if mm.method == "auto":  # resolved here, so config.yaml records what ran
            mm.method = "decoupled" if S > 0 and self.algorithm.policy_loss in AUTO_DECOUPLED_LOSSES else "none"
        if S > 0:
            from rlvr import algorithms as A

            if not A.off_policy_safe(self.algorithm.policy_loss, mm.method, cap=mm.cap):
                raise ValueError(
                    f"runtime.max_staleness = {S} trains on stale samples, but algorithm.policy_loss = "
                    f"'{self.algorithm.policy_loss}' has no trust region and algorithm.mismatch.method = "
                    f"'{self.algorithm.mismatch.method}' does not bound the importance weights (an unclipped "
                    "IS loss diverges off-policy); use a clipped loss (vanilla, decoupled_ppo, ...) or "
                    "algorithm.mismatch.method=tis")

    def rollout_dtype(self) -> str:
        return self.rollout.dtype or self.model.dtype

    def uses_critic(self) -> bool:
        """True when the advantage estimator needs learned values (``gae``, ``asyppo``, ...)."""
        import inspect

        from rlvr import algorithms as A

        p = inspect.signature(A.ADVANTAGE_ESTIMATORS[self.algorithm.advantage_estimator]).parameters.get("values")
        return p is not None and p.default is inspect.Parameter.empty

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


#: Inputs the trainer supplies itself; they are not hyper-parameters a config may set.
_SUPPLIED = {"logp", "old_logp", "old_values", "returns", "advantages", "mask", "agg", "weights", "batch_num_tokens", "batch_num_seqs",
             "norm_constant", "rewards", "token_rewards", "values", "group", "ref_logp", "rollout_logp",
             "mean_logp", "old_mean_logp", "num_prompts", "baseline_rewards", "correct"}


def _check_params(field: str, params: dict, fn, name: str, skip=_SUPPLIED, positional: int = 0,
                  what: str = "a parameter of") -> None:
    """Every key of ``params`` is a keyword of ``fn`` (not one the trainer supplies) and its value has
    the type of that keyword's default (bool, int, float or str; an integral float counts as an int)."""
    if fn is None:
        return
    import inspect

    sig = list(inspect.signature(fn).parameters.values())[positional:]
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig)  # checks its extra keys itself
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    allowed = {p.name: p.default for p in sig if p.name not in skip and p.kind in kinds}
    for key, value in params.items():
        if key not in allowed and open_ended:
            continue
        if key not in allowed:
            raise ValueError(f"{field}.{key} is not {what} '{name}'; "
                             f"its {'options' if 'option' in what else 'parameters'}: {', '.join(allowed) or 'none'}")
        default = allowed[key]
        want = next((t for t in (bool, int, float, str) if isinstance(default, t)), None)
        if want is None or value is None:  # None: "off" for several parameters
            continue
        if want is int and isinstance(value, float) and value.is_integer():
            params[key] = value = int(value)
        ok = (isinstance(value, bool) if want is bool else isinstance(value, str) if want is str
              else isinstance(value, (int, float) if want is float else int) and not isinstance(value, bool))
        if not ok:
            kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}[want]
            raise ValueError(f"{field}.{key} = {value!r}: expected {kind} (its default is {default!r})")


def _check_registry(name: str, registry: str) -> str:
    from rlvr import algorithms

    known = getattr(algorithms, registry)
    if name not in known:
        raise ValueError(f"unknown name '{name}'; known: {', '.join(sorted(known))}")
    return name


# ---------------------------------------------------------------------------------------------
# Loading


class _OverrideLoader(yaml.SafeLoader):
    """YAML for one override value, without YAML 1.1 dates (``run.name=2024-01-01`` stays text)."""


_OverrideLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}

_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"trainer.lr=1e-5"`` -> (["trainer", "lr"], 1e-05). Values are parsed as YAML (so
    ``{a: 1}``, ``[1, 2]``, ``null``, ``true`` work); a value that is not valid YAML (``@x``, ``[1,2``)
    is a one-line ConfigError naming the override, never taken as text: quote text (``key="'@x'"``)."""
    if "=" not in item:
        raise ConfigError(f"config error: override '{item}': expected key.path=value, e.g. trainer.lr=1e-5")
    key, raw = item.split("=", 1)
    keys = [k.strip() for k in key.strip().split(".")]
    if not all(keys):
        raise ConfigError(f"config error: override '{item}': empty key part in '{key}'")
    try:
        value = yaml.load(raw, Loader=_OverrideLoader) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"config error: override '{item}': {'.'.join(keys)} = {raw!r} is not valid YAML "
                          f"({_yaml_problem(err)}); quote it to pass text, e.g. {'.'.join(keys)}=\"'...'\"") from None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and ":" in raw:
        value = raw.strip()  # YAML 1.1 reads 1:30 as sexagesimal 90; a person means the text
    # YAML reads '1e-5' as a string (it wants '1.0e-5'); accept what a person types.
    if isinstance(value, str) and _NUMBER.fullmatch(value) and raw.strip()[:1] not in ("'", '"'):
        value = float(value)
    return keys, value


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where."""
    problem = getattr(err, "problem", None) or str(err).strip().splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return " ".join(f"{problem}{where}".split())


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = _deepcopy(data)
    for item in overrides:
        keys, value = parse_override(item)
        node = data
        for k in keys[:-1]:
            child = node.get(k)
            if child is None:
                child = node[k] = {}
            elif not isinstance(child, dict):
                where = ".".join(keys[:keys.index(k) + 1])
                raise ConfigError(f"config error: override '{item}': '{where}' is a value, not a section")
            node = child
        node[keys[-1]] = value
    return data


def _deepcopy(d):
    return {k: _deepcopy(v) for k, v in d.items()} if isinstance(d, dict) else d


def config_from_dict(data: dict) -> Config:
    """A validated Config; a ConfigWarning for each degenerate-but-valid setting (:func:`degenerate_settings`)."""
    try:
        config = Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None
    for message in degenerate_settings(config):
        warnings.warn(message, ConfigWarning, stacklevel=2)
    return config


def degenerate_settings(config: Config) -> list[str]:
    """Valid settings that make a run (partly) pointless, one line each naming the fields."""
    out = []
    r, t, a = config.rollout, config.trainer, config.algorithm
    if r.group_size == 1 and group_relative(a.advantage_estimator):
        out.append(f"rollout.group_size=1 with algorithm.advantage_estimator={a.advantage_estimator} (a "
                   "group-relative estimator): every group is one completion, so there is no group "
                   "baseline and every advantage is 0 or the raw reward; use rollout.group_size >= 2")
    optimizer_steps = t.steps * t.ppo_epochs * t.num_minibatches
    if t.steps == 0:
        out.append("trainer.steps=0: no RL step runs; the run only evaluates its starting model")
    elif t.warmup_steps > optimizer_steps:
        out.append(f"trainer.warmup_steps ({t.warmup_steps}) exceeds the run's optimizer steps ({optimizer_steps} = "
                   "trainer.steps x ppo_epochs x num_minibatches): the learning rate never reaches trainer.lr")
    num_eval = _task_num_eval(config.task)
    if num_eval is not None and config.eval.num_problems > num_eval:
        out.append(f"eval.num_problems ({config.eval.num_problems}) exceeds the task's eval split (num_eval = "
                   f"{num_eval}): evaluation uses at most {num_eval} problems")
    return out


def group_relative(estimator: str) -> bool:
    """Whether an advantage estimator reads ``group`` (a group baseline: grpo, rloo, dr_grpo, ...)."""
    import dis

    from rlvr import algorithms as A

    fn = A.ADVANTAGE_ESTIMATORS.get(estimator)
    return fn is not None and any(i.opname.startswith("LOAD_") and i.argval == "group"
                                  for i in dis.get_instructions(fn))


def _task_num_eval(task: TaskSection) -> int | None:
    """``num_eval`` of the task (its option or the factory's default), if the task has one."""
    import inspect

    from rlvr.tasks import base

    factory = base.TASKS.get(task.name.partition(":")[0])
    if "num_eval" in task.options:
        value = task.options["num_eval"]
    elif factory is not None and "num_eval" in inspect.signature(factory).parameters:
        value = inspect.signature(factory).parameters["num_eval"].default
    else:
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def read_yaml_mapping(path: Path, kind: str, folder: str, expected: str) -> dict:
    """A YAML file that must hold a mapping; one-line ConfigErrors for a missing file, bad YAML or
    another shape (``kind`` names the file in messages, ``folder`` where ready ones live)."""
    if not path.is_file():
        raise ConfigError(f"{kind} '{path}' not found; see {folder} for ready ones")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{kind} '{path}' is not valid YAML: {_yaml_problem(err)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{kind} '{path}' must hold {expected}")
    return data


def read_yaml(path: str | Path, _seen: tuple = ()) -> dict:
    """A config file as a dict. ``base: other.yaml`` (relative to the file) is read first and the
    file's own sections are merged over it, key by key."""
    path = Path(path)
    if path.resolve() in _seen:
        raise ConfigError(f"config file '{path}': 'base' chain loops back on itself")
    data = read_yaml_mapping(path, "config file", "configs/", "a mapping of sections")
    base = data.pop("base", None)
    if base is not None:
        data = deep_merge(read_yaml(path.parent / base, _seen + (path.resolve(),)), data)
    return data


def deep_merge(base: dict, top: dict) -> dict:
    out = _deepcopy(base)
    for k, v in top.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else _deepcopy(v)
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    data = read_yaml(path) if path is not None else {}
    return config_from_dict(apply_overrides(data, overrides or []))


def format_validation_error(err: ValidationError) -> str:
    """One line per problem: the dotted field, what is wrong, and what is allowed."""
    lines = []
    for e in err.errors():
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"]).lstrip(".")
        value = _short(e.get("input"))
        msg = e["msg"].removeprefix("Value error, ")
        section = _model_at(Config, e["loc"]) if e["loc"] else Config
        if e["type"] == "extra_forbidden":
            parent = _model_at(Config, e["loc"][:-1])
            allowed = ", ".join(parent.model_fields) if parent else "?"
            line = f"unknown field '{loc}'; allowed here: {allowed}"
        elif e["type"] == "literal_error":
            line = f"{loc} = {value}: {msg.lower()}"
        elif e["type"] in ("model_type", "model_attributes_type") and section is not None:
            line = (f"{loc} = {value}: '{loc}' is a section, not a value; set its fields, e.g. "
                    f"{loc}.<field>=...; its fields: {', '.join(section.model_fields)}")
        elif e["type"] == "value_error" and section is not None:
            line = msg  # a section's own check: the message names its fields
        else:
            if e["type"] == "finite_number":
                msg = "must be a finite number (nan and inf are not allowed)"
            elif e["type"] == "string_type" and isinstance(e.get("input"), (int, float)):
                msg += f"; quote it to pass text: {loc}=\"'{e['input']}'\""
            line = f"{loc} = {value}: {msg}"
        lines.append("config error: " + " ".join(line.split()))
    return "\n".join(lines)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def dump_config(config: Config, path: str | Path) -> None:
    from rlvr.utils import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(config.to_dict(), sort_keys=False))
