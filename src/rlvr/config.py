"""Typed, validated configuration: YAML files plus dotted command-line overrides.

``load_config("configs/x.yaml", ["trainer.lr=1e-5"])`` returns a validated :class:`Config`.
Any wrong or unknown field raises :class:`ConfigError`, whose message is one line per problem,
naming the field and the allowed values or the fix.
"""

from __future__ import annotations

import inspect
import math
import re
import types
import typing
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rlvr.overrides import ConfigError, ConfigWarning, _yaml_problem, parse_override  # noqa: F401 (re-exported)


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
    threads: int | None = Field(None, ge=1, le=4096, description="torch CPU threads (None: torch's default, "
                                "all cores or OMP_NUM_THREADS; async mode divides them: rlvr.threads)")
    deterministic: bool = Field(False, description="reproducible runs: torch deterministic algorithms "
                                "(CUBLAS_WORKSPACE_CONFIG set on CUDA) and batch-invariant sampling (each prompt's "
                                "group sampled on its own from a seed of its own, so a row never depends on the "
                                "other prompts of its batch; slower generation). Needs runtime.max_staleness=0 in "
                                "async mode and the lean or hf engine. CPU runs with the same config are already "
                                "bit-identical without it (tests/train/test_determinism.py)")


def _as_list(v: Any) -> Any:
    """A list field also takes one bare name: ``logging.report_to=tensorboard``."""
    return [v] if isinstance(v, str) else v


class LoraSection(_Section):
    """LoRA through peft (``rlvr[lora]``): only the adapter is trained; see :mod:`rlvr.models.lora`."""

    enabled: bool = False
    r: int = Field(8, ge=1, description="adapter rank")
    alpha: float = Field(16.0, gt=0, description="lora_alpha: the update is scaled by alpha / r")
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: Annotated[list[Identifier], Field(min_length=1)] = Field(
        default_factory=lambda: ["all-linear"], description="names of the linear layers that get an "
        "adapter (e.g. [q_proj, v_proj]), or [all-linear]: every linear layer but the output head")

    @field_validator("target_modules", mode="before")
    @classmethod
    def _one_name(cls, v: Any) -> Any:
        return _as_list(v)


class ModelSection(_Section):
    path: NonEmptyStr = Field("builtin:tiny", description="'builtin:tiny', a local HF checkpoint folder or a hub id")
    warm_start: bool = Field(True, description="supervised warm start on the task (builtin:tiny only), cached")
    dtype: Literal["float32", "bfloat16"] = "float32"
    lora: LoraSection = Field(default_factory=LoraSection)


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


class IMentorSection(_Section):
    """i-MENTOR exploration bonus (arXiv 2505.17621, spec 12.3): an RND novelty bonus for responses that
    are not fully correct, decaying as s0 / (s1 + s2 * step), added to the advantage."""

    enabled: bool = False
    s0: float = Field(40.0, gt=0)
    s1: float = Field(40.0, gt=0)
    s2: float = Field(1.0, ge=0)
    lr: float = Field(1e-3, gt=0, description="the RND predictor's AdamW learning rate")
    embed_dim: int = Field(16, ge=1)
    max_len: int = Field(64, ge=1, description="prompt+response tokens fed to the RND nets (padded/cut)")
    score: Identifier = Field("correct", description="the reward component that must be < 1 for a bonus")


class ArmSection(_Section):
    """ARM / ProGRPO advantage re-weighting (arXiv 2602.05281, spec 12.2; inferred where the paper was not
    found): A + alpha (c(q) - c(o|q)), confidences over the least likely ``quantile`` of the tokens."""

    enabled: bool = False
    alpha: float = Field(0.1, ge=0, description="shift scale (not from the paper)")
    quantile: float = Field(0.2, gt=0, le=1, description="share of least likely tokens in c(q), c(o|q)")


class PairingSection(_Section):
    """Positive-negative prompt pairing ("Beyond Variance", arXiv 2602.03452, spec 13): each step's
    groups come in pairs of a hard-but-solvable prompt (success rate in (0, hard_max]) and an
    easy-but-brittle one (in [easy_min, 1))."""

    enabled: bool = False
    metric: Identifier = Field("correct", description="0/1 reward component whose group mean is the success rate")
    hard_max: float = Field(0.5, gt=0, lt=1)
    easy_min: float = Field(0.5, gt=0, lt=1)
    max_rounds: int = Field(10, description="generation rounds before giving up; <= 0: unlimited")


class DynamicSamplingSection(_Section):
    """DAPO dynamic sampling (Yu et al. 2025, arXiv 2503.14476, sec. 3.2)."""

    enabled: bool = False
    metric: Identifier = Field("correct", description="reward component whose all-equal groups are dropped")
    max_gen_batches: int = Field(10, description="generation rounds before giving up; <= 0: unlimited")


class VLLMSection(_Section):
    """The vLLM engine (``rollout.engine=vllm``, extra ``rlvr[vllm]``), colocated in the learner's process."""

    gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description="share of the GPU memory vLLM "
                                          "may take (weights + KV cache); the learner needs the rest")
    enforce_eager: bool = Field(True, description="no CUDA graphs: faster start, weights reload in place")
    sleep_mode: bool = Field(False, description="free vLLM's memory while the learner trains (sleep/wake "
                             "between rollouts; CUDA only)")
    max_model_len: int | None = Field(None, ge=1, description="longest prompt + completion (None: the "
                                      "model's max_position_embeddings)")
    kv_cache_gb: float | None = Field(None, gt=0, description="KV cache size in GiB (None: vLLM sizes it "
                                      "from gpu_memory_utilization; set it on CPU, e.g. 0.25)")


class RolloutSection(_Section):
    engine: Literal["hf", "lean", "vllm"] = Field("lean", description="lean: rlvr's lean sampler for "
                                                  "Llama-family models (prefill once per prompt, static KV "
                                                  "cache; rlvr.rollout.lean; any other model falls back to "
                                                  "hf with a warning), sharing the learner's weights; hf: "
                                                  "transformers generate, sharing the weights; vllm: a "
                                                  "colocated vLLM engine (rlvr[vllm]) that receives the "
                                                  "weights after every step")
    vllm: VLLMSection = Field(default_factory=VLLMSection)
    dtype: Literal["float32", "bfloat16"] | None = Field(
        None, description="dtype of the rollout engine's copy of the weights (None: model.dtype); a "
        "bfloat16 copy of an fp32 learner changes in few elements per step, so sparse weight sync pays; "
        "in sync mode only rollout.engine=lean has a copy (refreshed every rollout)")
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="sample from the k most likely tokens (0: off); before top_p. "
                       "The trainer's log-probs are over the full vocabulary unless "
                       "trainer.logprob_support=sampled")
    max_new_tokens: int = Field(8, ge=1)
    stop: list[str] = Field(default_factory=list, description="strings that end a completion (the token "
                            "completing one is kept; the text is cut where it starts), besides the model's "
                            "own stop tokens (rlvr.rollout.stops)")
    stop_token_ids: list[Annotated[int, Field(strict=True, ge=0)]] = Field(
        default_factory=list, description="token ids that end a completion (kept as its last token), besides "
        "the tokenizer's EOS, the generation config's eos_token_id and the chat template's end of turn")

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, v: list) -> list:
        if any(s == "" for s in v):
            raise ValueError("holds an empty string, which would end every completion at once; remove it")
        return v
    group_size: int = Field(8, ge=1, description="G: completions per prompt")
    prompts_per_step: int = Field(32, ge=1)
    batch_size: int = Field(512, ge=1, description="sequences per generate call")
    greedy_baseline: bool = Field(False, description="also decode one greedy completion per prompt "
                                  "(ReMax's baseline reward)")
    dynamic_sampling: DynamicSamplingSection = Field(default_factory=DynamicSamplingSection)
    pairing: PairingSection = Field(default_factory=PairingSection)
    aggregation_ratio: float = Field(0.0, ge=0, lt=1, description="aggregation-aware RL (RSA, arXiv "
                                     "2509.26626): share of each step's groups whose prompt is an "
                                     "aggregation prompt over the policy's own candidates (0: off)")
    aggregation_k: int = Field(3, ge=1, description="candidates per aggregation prompt (K); must be "
                               "<= rollout.group_size")


class ConstraintSpec(_Section):
    """One constraint of constrained RLHF (Moskovitz et al. 2024, spec 11.5): the batch mean of a reward
    component must stay ``>=`` (or ``<=``) ``threshold``; one Lagrange multiplier learned by dual ascent."""

    threshold: float
    direction: Literal[">=", "<="] = ">="
    lr: float = Field(0.1, gt=0, description="the multiplier's SGD learning rate (authors: 0.1)")
    momentum: float = Field(0.1, ge=0, lt=1, description="the multiplier's SGD momentum (authors: 0.1)")
    init: float = Field(0.0, description="initial multiplier lambda (before squashing)")
    squash: Literal["sigmoid", "tanh", "none"] = Field("sigmoid", description="sigmoid (inequality), tanh "
                                                        "(equality) or none (lambda clamped >= 0)")


class RewardSection(_Section):
    """Reward shaping applied after the verifier."""

    overlong_buffer_len: int = Field(0, ge=0, description="DAPO soft overlong punishment: L_cache "
                                     "(0 disables); L_max is rollout.max_new_tokens")
    overlong_penalty_factor: float = Field(1.0, ge=0)
    weights: dict[str, float] = Field(default_factory=dict, description="multi-objective: a weight per "
                                      "reward component of the verifier (empty: the verifier's 'reward')")
    combine: str = Field("sum_then_normalize", description="how weighted components become the training "
                         "signal: a key of rlvr.algorithms.REWARD_COMBINERS (sum_then_normalize, "
                         "normalize_then_sum/gdpo, dvao, tmn, pow3r, trust_grpo)")
    combine_params: dict[str, FreeValue] = Field(default_factory=dict)
    constraints: dict[str, ConstraintSpec] = Field(default_factory=dict, description="component -> "
                                                   "{threshold, direction, lr, ...}: Lagrangian constraints")
    dynamic_weights: Literal["none", "hypervolume", "gradient"] = Field(
        "none", description="dynamic reward weighting (arXiv 2509.11452): hypervolume-guided meta-reward "
        "or gradient-based weight optimisation of reward.weights")
    dynamic_reg: float = Field(1e-5, gt=0, description="gradient method: the regularisation lambda")
    components: list[dict[str, FreeValue]] = Field(default_factory=list, description="reward components beside "
        "the verifier (rlvr.rewards.components): {type: reward_model|judge|remote|functions, name: ..., ...}; "
        "their scores join the verifier's (reward/<name>) for reward.weights and reward.constraints")
    on_failure: str = Field(
        "zero", description="a key of rlvr.rewards.components.FAILURE_POLICIES, for a sample a component could not "
        "score (timeout, server down, unparsable verdict): zero (score 0, counted), drop_group (also no loss on its "
        "group) or stop (after reward.max_failures)")
    max_failures: int = Field(0, ge=0, description="on_failure=stop: failed samples tolerated before stopping")

    @field_validator("combine")
    @classmethod
    def _known_combiner(cls, v: str) -> str:
        return _check_registry(v, "REWARD_COMBINERS")

    @field_validator("on_failure")
    @classmethod
    def _known_failure_policy(cls, v: str) -> str:
        from rlvr.rewards.components import FAILURE_POLICIES

        if v not in FAILURE_POLICIES:
            raise ValueError(f"unknown failure policy {v!r}; known: {', '.join(FAILURE_POLICIES)}")
        return v

    @model_validator(mode="after")
    def _known_params(self) -> "RewardSection":
        from rlvr import algorithms as A

        _check_params("reward.combine_params", self.combine_params, A.REWARD_COMBINERS.get(self.combine),
                      self.combine, positional=3)
        if self.combine != "sum_then_normalize" and not self.weights:
            raise ValueError(f"reward.combine = {self.combine!r} needs reward.weights (a weight per reward "
                             "component, e.g. {correct: 1.0, format: 0.5})")
        if self.dynamic_weights != "none" and not self.weights:
            raise ValueError(f"reward.dynamic_weights = {self.dynamic_weights!r} needs reward.weights")
        from rlvr.rewards.components import check_component_spec

        names = []
        for i, spec in enumerate(self.components):
            check_component_spec(spec, where=f"reward.components[{i}]")
            names.append(spec.get("name"))
        dup = sorted({n for n in names if n is not None and names.count(n) > 1})
        if dup:
            raise ValueError(f"reward.components: the name {dup[0]!r} is used twice; give each its own name")
        return self


class MismatchSection(_Section):
    """Train-inference mismatch / off-policy correction from rollout_logp vs the trainer's old_logp.

    ``method`` is a key of ``rlvr.algorithms.MISMATCH_CORRECTIONS``; it receives the fields below
    that its signature names (tis: level, upper, batch_normalize; mis: level, upper, lower, batch_normalize;
    hispo: delta_seq, delta_tok; decoupled: cap; verl's rejection options token_k2 ... seq_max_k3:
    rollout_rs_threshold).
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
    batch_normalize: bool = Field(False, description="tis/mis: divide the weights by their batch mean "
                                  "(verl rollout_is_batch_normalize)")
    rollout_rs_threshold: float | None = Field(None, gt=0, description="verl's rejection options (token_k2 ... "
                                               "seq_max_k3): keep a token/sequence while its divergence is at "
                                               "most this")

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        return v if v == "auto" else _check_registry(v, "MISMATCH_CORRECTIONS")

    @model_validator(mode="after")
    def _threshold_given(self) -> "MismatchSection":
        from rlvr import algorithms as A

        fn = A.MISMATCH_CORRECTIONS.get(self.method)
        if fn is not None and self.rollout_rs_threshold is None:
            p = inspect.signature(fn).parameters.get("rollout_rs_threshold")
            if p is not None and p.default in (None, inspect.Parameter.empty):
                raise ValueError(f"algorithm.mismatch.method={self.method} needs algorithm.mismatch.rollout_rs_threshold "
                                 "(a positive number)")
        return self


class LinearSchedule(_Section):
    """A loss parameter annealed linearly over learner steps (TBA's KL-coefficient annealing)."""

    start: float = Field(description="value at learner step 0")
    end: float = Field(description="value from step `steps` on")
    steps: int = Field(ge=1, description="learner steps over which the value moves from start to end")


def _check_schedule(alg) -> None:
    """Every key of ``algorithm.policy_loss_schedule`` is a numeric hyper-parameter of the loss."""
    import inspect

    from rlvr import algorithms as A

    fn = A.POLICY_LOSSES.get(alg.policy_loss)
    if fn is None:
        return
    numeric = {k for k, p in inspect.signature(fn).parameters.items() if k not in _SUPPLIED
               and isinstance(p.default, (int, float)) and not isinstance(p.default, bool)}
    for key in alg.policy_loss_schedule:
        if key not in numeric:
            raise ValueError(f"algorithm.policy_loss_schedule.{key} is not a numeric parameter of "
                             f"'{alg.policy_loss}'; its numeric parameters: {', '.join(sorted(numeric)) or 'none'}")
        if key in alg.policy_loss_params:
            raise ValueError(f"algorithm.policy_loss_schedule.{key} and algorithm.policy_loss_params.{key} "
                             "are both set; the schedule gives the value at every step: set only one")


class AlgorithmSection(_Section):
    advantage_estimator: str = "grpo"
    advantage_params: dict[str, FreeValue] = Field(default_factory=dict)
    policy_loss: str = "vanilla"
    policy_loss_params: dict[str, FreeValue] = Field(default_factory=dict)
    policy_loss_schedule: dict[str, LinearSchedule] = Field(
        default_factory=dict, description="loss parameters annealed linearly over learner steps, e.g. "
        "{beta: {start: 0.012, end: 0.004, steps: 500}} (TBA); logged as schedule/<name>")
    loss_agg_mode: str = "token-mean"
    loss_agg_params: dict[str, FreeValue] = Field(default_factory=dict)
    mismatch: MismatchSection = Field(default_factory=MismatchSection)
    token_weights: dict[str, dict[str, FreeValue]] = Field(
        default_factory=dict, description="per-token loss weights/masks for any loss, name -> params: "
        "opsm {threshold} (TRL off_policy_mask_threshold), top_entropy {quantile} (TRL "
        "top_entropy_quantile), steer {w_min, w_max, mapping}")
    imentor: "IMentorSection" = Field(default_factory=lambda: IMentorSection())
    arm: "ArmSection" = Field(default_factory=lambda: ArmSection())

    @model_validator(mode="after")
    def _known_token_weights(self) -> "AlgorithmSection":
        from rlvr import algorithms as A

        for name, params in self.token_weights.items():
            if name not in A.TOKEN_WEIGHTS:
                raise ValueError(f"algorithm.token_weights.{name} is not a token weight; known: "
                                 f"{', '.join(sorted(A.TOKEN_WEIGHTS))}")
            _check_params(f"algorithm.token_weights.{name}", params, A.TOKEN_WEIGHTS[name], name,
                          skip=("advantages", "logp", "old_logp", "mask", "entropy", "rollout_logp"))
        return self

    @model_validator(mode="after")
    def _known_params(self) -> "AlgorithmSection":
        from rlvr import algorithms as A

        _check_params("algorithm.advantage_params", self.advantage_params,
                      A.ADVANTAGE_ESTIMATORS.get(self.advantage_estimator), self.advantage_estimator)
        _check_params("algorithm.policy_loss_params", self.policy_loss_params,
                      A.POLICY_LOSSES.get(self.policy_loss), self.policy_loss)
        _check_schedule(self)
        _check_params("algorithm.loss_agg_params", self.loss_agg_params,  # (values, mask, *, counts, norm_constant)
                      A.LOSS_AGGREGATIONS.get(self.loss_agg_mode), self.loss_agg_mode, positional=2,
                      skip=("batch_num_tokens", "batch_num_seqs"))
        return self

    @field_validator("policy_loss_schedule", mode="before")
    @classmethod
    def _schedule_shape(cls, v: Any) -> Any:
        """Each entry is exactly {start, end, steps} (one line for any other shape)."""
        if isinstance(v, dict):
            for key, sched in v.items():
                if not isinstance(sched, dict) or set(sched) != {"start", "end", "steps"}:
                    raise ValueError(f"entry {key!r} must be a mapping {{start: <number>, end: <number>, "
                                     f"steps: <learner steps>}}, got {_short(sched)}")
        return v

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
    coef: float = Field(0.0, ge=0, description="beta (the initial one with controller=adaptive)")
    log_ratio_clamp: float | None = Field(20.0, gt=0, description="k3: clamp of log(pi_ref/pi) before exp "
                                          "(verl 20; null: none, as TRL)")
    value_clamp: float | None = Field(10.0, gt=0, description="k3: clamp of the per-token value (verl 10; "
                                      "null: none, as TRL)")
    controller: Literal["fixed", "adaptive"] = Field("fixed", description="adaptive: verl's "
                                                     "AdaptiveKLController (Ziegler et al. 2019) toward kl.target")
    target: float = Field(0.1, gt=0, description="adaptive controller: target KL (verl target_kl 0.1)")
    horizon: int = Field(10000, ge=1, description="adaptive controller: horizon (verl 10000)")
    reset_every: int = Field(0, ge=0, description="ProRL: reset the reference to the current policy every N "
                             "steps (0: never)")
    reset_max_kl: float | None = Field(None, gt=0, description="ProRL: also reset when the step's KL "
                                       "exceeds this (null: no bound)")
    reset_optimizer: bool = Field(True, description="ProRL: re-initialise the optimizer state at a reset")

    @field_validator("estimator")
    @classmethod
    def _known_kl(cls, v: str) -> str:
        return _check_registry(v, "KL_ESTIMATORS")


class DistSection(_Section):
    """A learner that spans processes (``rlvr.parallel``): launch with ``torchrun --nproc_per_node N -m rlvr train``
    (or ``rlvr train --nproc N``); the world size comes from the launcher."""

    # the keys of rlvr.parallel.MESHES and none; not imported from there: config must not import torch (OpenMP's
    # wait policy is set before torch loads, rlvr.threads)
    engine: Literal["none", "ddp", "fsdp2"] = Field(
        "none", description="none: one learner process; ddp: every rank holds the whole model, gradients summed "
        "across ranks; fsdp2: parameters, gradients and optimizer state sharded across ranks (torch FSDP2). "
        "Every rank trains whole groups of each minibatch; N ranks compute the single-process update")
    launcher: Literal["torchrun", "ray"] = Field(
        "torchrun", description="what rlvr train --nproc N starts: torchrun (N processes on this machine), or ray "
        "(N Ray actors in one placement group, one CPU or GPU each, on this machine or runtime.ray_address)")
    mixed_precision: Literal["auto", "none", "bf16"] = Field(
        "auto", description="bf16: the sharded models compute in bf16 (parameters gathered in bf16, gradients "
        "reduced in fp32, fp32 master weights and optimizer state; FSDP2's MixedPrecisionPolicy); none: fp32; "
        "auto: bf16 on cuda, none on cpu")
    meta_init: bool = Field(True, description="ranks 1..N-1 build the model on the meta device (no memory, no "
                            "weights read) and receive rank 0's weights into their shards; false: every rank loads "
                            "model.path")
    bucket_mb: float = Field(256.0, gt=0, description="after each update the shards are gathered into rank 0's "
                             "copy of the model (which the rollout engine, weight sync and checkpoints read) in "
                             "buckets of this many MiB: no rank holds more than one bucket beyond its shards")
    timeout_s: float = Field(600.0, gt=0, description="seconds a rank waits for the others at a collective "
                             "before the run stops with an error naming the rank that did not arrive")


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
    max_tokens_per_microbatch: int = Field(
        0, ge=0, description="also cut micro-batches (of whole groups, length-sorted with sort_by_length) so "
        "each forward runs at most this many positions: rows x (longest prompt + longest completion) after "
        "padding is trimmed (verl's ppo_max_token_len_per_gpu). It bounds the activations and [rows, T, V] "
        "logits whatever the completion lengths; a micro-batch within trainer.pack_tokens runs as one packed "
        "sequence (no padding, per-row positions and a block mask). 0: rows only (micro_batch_size)")
    max_grad_norm: float = Field(1.0, gt=0)
    max_consecutive_skipped: int = Field(5, ge=1, description="stop the run after this many optimizer steps in "
                                         "a row skipped for a NaN/inf loss or gradient norm (a skipped step "
                                         "leaves weights, AdamW state and the LR schedule untouched)")
    entropy_coef: float = Field(0.0, ge=0, description="entropy bonus (the initial one with entropy_target set)")
    entropy_target: float | None = Field(None, gt=0, description="adaptive entropy control (Skywork-OR1, "
                                         "as TRL): move entropy_coef toward keeping the mean token "
                                         "entropy above this (null: a fixed entropy_coef)")
    entropy_coef_delta: float = Field(0.005, gt=0, description="adaptive entropy: step of the coefficient")
    entropy_coef_min: float = Field(0.0, ge=0)
    entropy_coef_max: float = Field(1.0, ge=0)
    shared_prefix: Literal["auto", "always", "never"] = Field(
        "auto", description="shared-prefix forward (Prefix Grouper): one prompt forward per distinct prompt, "
        "its keys/values gathered to the group's completions (exact to float reassociation). auto: when "
        "the model supports it, no dropout is active and it saves >= 25% of the positions; always: "
        "whenever supported; never: the plain forward (rlvr.models.prefix)")
    pack_tokens: int = Field(512, ge=0, description="run the shared-prefix forward as one packed sequence "
                             "(each distinct prompt once, then every completion, no padding; a 4D mask) when "
                             "it has at most this many tokens (its attention is dense); 0: never "
                             "(rlvr.models.prefix.packed_prefix_outputs)")
    old_logp: Literal["auto", "recompute", "rollout"] = Field(
        "auto", description="auto: use the engine's rollout_logp as old_logp when they are provably the "
        "training model's own (sync, same weights version, dtype and temperature, no truncation, no "
        "dropout; rlvr.train.old_logp), else recompute; recompute: always a forward pass; rollout: always "
        "the engine's rollout_logp, whatever the engine (verl's bypass mode: the ratio is against the "
        "behaviour policy; policy_loss=bypass_mode selects it)")
    chunked_head: Literal["auto", "always", "never"] = Field(
        "auto", description="compute log-probs and entropy from the last hidden states through the LM head a "
        "chunk of positions at a time, forward and backward, so the [B, T, V] logits never exist "
        "(rlvr.models.lm_head). auto: for a plain-Linear head, on micro-batches whose fp32 logits would take "
        ">= 1 GiB (it saves 3-10x of the head's memory but is 1.3-1.6x slower on CPU); always: whenever the "
        "head allows it; never: the model's own head. Checked once per model against the plain path")
    logprob_support: Literal["full", "sampled"] = Field(
        "full", description="the tokens the learner's old and new log-probs are normalised over when "
        "rollout.top_p / top_k truncate sampling: full: the whole vocabulary (the importance ratio against the "
        "sampler's log-probs is then biased below 1); sampled: the sampler's kept set at each position, "
        "returned by the engine (lean, hf), so the on-policy ratio is exactly 1. Reference log-probs and the "
        "entropy stay over the full vocabulary (docs/algorithms.md, 'Sampling support')")
    skip_zero_advantage: Literal["auto", "never"] = Field(
        "auto", description="auto: leave rows whose advantages are all zero out of the training "
        "forward/backward when the loss provably gives them zero gradient (no entropy bonus, KL loss or "
        "token weights; rlvr.train.zero_advantage): the same update, loss-metrics over the trained rows; "
        "never: train every row")
    sort_by_length: bool = Field(True, description="order groups by length before cutting micro-batches "
                                 "(less padding when micro_batch_size < rows; changes only float summation order)")
    adamw_impl: Literal["auto", "fused", "foreach", "for-loop"] = Field(
        "auto", description="AdamW kernel: auto = fused where torch has it for the parameters (CPU, CUDA), "
        "else foreach; for-loop = torch's reference loop (same update to float reassociation)")
    dist: DistSection = Field(default_factory=DistSection)
    autocast: Literal["none", "bf16"] = Field("none", description="bf16: the learner's forward passes "
                                              "(old/ref log-probs, training forward; backward follows) run "
                                              "under torch.autocast(bfloat16) with fp32 master weights, "
                                              "gradients and optimizer state (CPUs with AVX512-BF16 or AMX, GPUs)")


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
    target_metric: Literal["greedy_accuracy", "reference_probability"] = Field(
        "greedy_accuracy", description="what target_accuracy is compared with on the validation split: greedy "
        "exact-match accuracy, or the mean probability of sampling exactly the reference answer (T=1)")
    eval_every: int = Field(25, ge=1, description="steps between validation checks (with target_accuracy)")
    val_problems: int = Field(500, ge=1, description="distinct prompts in the warm start's validation set, "
                              "carved from the train split and left out of SFT (with target_accuracy)")
    max_minutes: float | None = Field(20.0, gt=0, description="time bound of the warm start, checked against an "
                                      "estimate from its first steps; over it: over_budget (null: no bound)")
    over_budget: Literal["warn", "stop"] = Field("warn", description="an estimate over max_minutes: a warning "
                                                 "naming what makes it cheaper, then go on (warn), or a clear stop "
                                                 "before the time is spent (stop)")


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
    report_to: list[Literal["tensorboard", "wandb", "mlflow", "trackio"]] = Field(
        default_factory=list, description="experiment trackers that get every metrics.jsonl record and the "
        "sample tables (each an extra: pip install 'rlvr[tensorboard]'); see rlvr.records.trackers")
    project: PlainName = Field("rlvr", description="project (W&B, trackio) or experiment (MLflow) name "
                               "the run is filed under; the tracker's run name is run.name")

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_tracker(cls, v: Any) -> Any:
        return _as_list(v)

    @field_validator("report_to")
    @classmethod
    def _no_repeats(cls, v: list) -> list:
        if len(set(v)) != len(v):
            raise ValueError("names a tracker twice")
        return v


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
    partial_rollouts: bool = Field(False, description="a weight update reaches a rollout worker between "
                                   "decode steps: its unfinished completions go on with the new weights (KV "
                                   "cache of earlier tokens kept) instead of waiting for the batch to end; each "
                                   "token records the version that drew it (Rollout.token_versions) and its "
                                   "behaviour log-prob, which the off-policy correction uses. Async mode, "
                                   "lean or hf engine")
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


class PlasticitySection(_Section):
    """Plasticity diagnostics (spec 19): tau-dormant ratio and GraMa per linear layer every N steps, and
    ReGraMa resets of GraMa-inactive neurons."""

    every: int = Field(0, ge=0, description="compute the diagnostics every N steps (0: never)")
    tau: float = Field(0.01, ge=0, description="threshold of the normalised score (third-party default 0.01)")
    regrama: bool = Field(False, description="re-initialise GraMa-inactive neurons (ReGraMa)")
    regrama_every: int = Field(1000, ge=1, description="steps between ReGraMa resets")


class ReplaySection(_Section):
    """A replay buffer between the rollout workers and the learner (docs/replay.md).

    ``tba``: TBA (Bartoldson et al. 2025, arXiv 2503.18929, spec 9.2): one buffer per prompt; each
    batch takes, per prompt, with probability ``on_policy_prob`` a prompt refreshed at the last weight
    sync and its newest responses, else a random seen prompt and K responses drawn by
    softmax(inv_temp * priority). ``variance``: TRL's GRPO-with-replay: groups with reward variance
    are kept, and the zero-variance groups of each fresh batch are replaced by kept ones.
    """

    enabled: bool = False
    policy: Literal["tba", "variance"] = Field("tba", description="tba: per-prompt buffers (TBA); variance: "
                                               "keep high-variance groups, replace zero-variance ones (TRL)")
    capacity: int = Field(100, ge=1, description="tba: responses kept per prompt (TBA: 100); variance: groups kept")
    on_policy_prob: float = Field(0.95, ge=0, le=1, description="m: share of a batch's prompts taken from those "
                                  "refreshed at the last weight sync, with their newest responses (TBA: 0.95)")
    priority: Literal["reward", "recency"] = Field(
        "reward", description="what the off-policy draw of K responses weighs: softmax(inv_temp * reward) or "
        "softmax(inv_temp * policy version)")
    inv_temp: float = Field(0.0, ge=0, description="inverse temperature of the off-policy draw (0: uniform, TBA's "
                            "GSM8K setting)")
    initial_buffer_samples: int = Field(0, ge=0, description="responses in the buffer before the first "
                                        "learner step (TBA: 500); the learner waits for them")


def _check_replay(config) -> None:
    from rlvr import algorithms as A

    rp, alg, r = config.replay, config.algorithm, config.rollout
    if alg.policy_loss == "tb" and r.group_size == 1:
        raise ValueError("algorithm.policy_loss = 'tb' with rollout.group_size = 1: the VarGrad log Z is estimated "
                         "from the K responses of a prompt, so with K = 1 the loss is identically 0; use "
                         "rollout.group_size >= 2")
    if not rp.enabled:
        return
    mm = alg.mismatch
    if not A.off_policy_safe(alg.policy_loss, mm.method, cap=mm.cap):
        raise ValueError(f"replay.enabled trains on off-policy samples, but algorithm.policy_loss = "
                         f"'{alg.policy_loss}' has no trust region and algorithm.mismatch.method = '{mm.method}' "
                         "does not bound the importance weights; use tb, a clipped loss (vanilla, "
                         "decoupled_ppo, ...) or algorithm.mismatch.method=tis")
    if r.aggregation_ratio > 0 or r.greedy_baseline:
        raise ValueError("replay.enabled keeps prompts of the task's training problems with their rewards only: "
                         "rollout.aggregation_ratio and rollout.greedy_baseline cannot be replayed; turn them off")
    if rp.policy == "tba" and rp.priority == "recency" and rp.inv_temp == 0:
        raise ValueError("replay.priority = 'recency' with replay.inv_temp = 0 draws uniformly (the same as "
                         "'reward'); set replay.inv_temp > 0")


class DistillSection(_Section):
    """On-policy distillation (GKD, Agarwal et al. 2024, arXiv 2306.13649; Lu et al. 2025, "On-Policy
    Distillation"): a frozen teacher scores the student's own samples, and the sampled-token reverse KL
    ``log pi_theta(y_t) - log pi_T(y_t)`` becomes a per-token negative advantage or reward
    (:func:`rlvr.algorithms.distillation_advantage`). The teacher must share the student's tokenizer."""

    teacher: str = Field("", description="the teacher checkpoint (an HF folder or hub id; empty: no distillation)")
    coef: float = Field(1.0, gt=0, description="beta: the weight of the reverse-KL term")
    placement: Literal["advantage", "reward"] = Field(
        "advantage", description="advantage: A_t += -beta (log pi - log pi_T) after the estimator (Lu et al. "
        "2025); reward: the same per-token term in token_rewards before the estimator (like kl.placement=reward "
        "with the teacher as the reference)")
    task_weight: float = Field(1.0, ge=0, description="weight of the task's advantage beside the teacher's "
                               "(0: distillation alone)")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="the teacher's dtype (it "
                                                              "runs on run.device, beside the learner)")


class EnvSection(_Section):
    """Multi-turn episodes (``rlvr.envs``, ``rlvr.rollout.episodes``): each row of a batch is an episode in which
    the policy and an environment take turns; the policy is trained on its own tokens only."""

    name: str = Field("", description="a registered environment (e.g. chain_oracle), or a class of your own as "
                      "'package.module:Class' or 'path/to/file.py:Class'; empty: single-turn")
    options: dict[str, FreeValue] = Field(default_factory=dict, description="the environment's options")
    max_turns: int = Field(4, ge=1, description="policy turns per episode at most")
    max_total_tokens: int | None = Field(None, ge=1, description="an episode's completion (the policy's tokens "
                                         "and the observations') at most; null: max_turns x "
                                         "rollout.max_new_tokens (which caps each turn)")
    verifier: bool = Field(False, description="add the task's verifier reward on the whole transcript to the "
                           "sum of the turn rewards (otherwise the verifier's components are only logged)")
    workers: int = Field(8, ge=0, description="threads stepping the environments of a batch (0: inline)")
    step_timeout_s: float = Field(60.0, gt=0, description="an environment step that takes longer ends its "
                                  "episode (finish reason timeout, counted in env/timeouts)")
    interleave: bool = Field(False, description="environment-level asynchrony (ROLL Flash): the policy's next "
                             "turn is sampled for whichever episodes' steps have finished, not in lockstep turns "
                             "(then a batch is not reproducible bit for bit when step times vary)")

    @model_validator(mode="after")
    def _known_env(self) -> "EnvSection":
        if not self.name:
            if self.options:
                raise ValueError("env.options given without env.name; name the environment or drop the options")
            return self
        from rlvr.envs import env_class

        try:
            cls = env_class(self.name)
        except ValueError as err:
            raise ValueError(f"env.name: {err}") from None
        _check_params("env.options", self.options, cls, self.name, skip=("task", "tokenizer"),
                      what="an option of environment")
        return self

    def token_budget(self, max_new_tokens: int) -> int:
        return self.max_total_tokens if self.max_total_tokens is not None else self.max_turns * max_new_tokens


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
    replay: ReplaySection = Field(default_factory=ReplaySection)
    plasticity: "PlasticitySection" = Field(default_factory=lambda: PlasticitySection())
    distill: DistillSection = Field(default_factory=DistillSection)
    env: EnvSection = Field(default_factory=EnvSection)

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
        if self.model.lora.enabled and (self.kl.reset_every or self.kl.reset_max_kl is not None):
            raise ValueError("kl.reset_every / kl.reset_max_kl with model.lora.enabled: with LoRA the KL "
                             "reference is the frozen base model, which a reset cannot replace; turn one off")
        self._check_runtime()  # resolves mismatch.method=auto
        self._check_bypass_mode()
        self._check_deterministic()
        self._check_logprob_support()
        self._check_partial_rollouts()
        _check_replay(self)
        self._check_second_wave()
        self._check_dist()
        self._check_env()
        if self.critic.num_critics > 1 and self.algorithm.advantage_estimator != "asyppo":
            raise ValueError(f"critic.num_critics = {self.critic.num_critics} needs "
                             "algorithm.advantage_estimator=asyppo (gae uses one critic); set one of them")
        return self

    def _check_env(self) -> None:
        """What multi-turn episodes (env.name) do not run with yet."""
        if not self.env.name:
            return
        blocked = {"rollout.aggregation_ratio > 0 (aggregation prompts are single-turn)": self.rollout.aggregation_ratio > 0,
                   "rollout.greedy_baseline (ReMax's baseline is a single-turn completion)": self.rollout.greedy_baseline,
                   "runtime.partial_rollouts (weights change between turns)": self.runtime.partial_rollouts}
        for what, on in blocked.items():
            if on:
                raise ValueError(f"env.name={self.env.name}: {what} is not supported with environments yet")

    def _check_dist(self) -> None:
        """What a learner group (trainer.dist) does not run yet: each of these changes the learner on rank 0 only."""
        if self.trainer.dist.engine == "none":
            return
        blocked = {"kl.reset_every / kl.reset_max_kl (reference resets)": self.kl.reset_every
                   or self.kl.reset_max_kl is not None,
                   "plasticity.every / plasticity.regrama (diagnostics on the weights)": self.plasticity.every
                   or self.plasticity.regrama,
                   "reward.dynamic_weights=gradient (per-component gradients read from the local shards)":
                   self.reward.dynamic_weights == "gradient"}
        for what, on in blocked.items():
            if on:
                raise ValueError(f"trainer.dist.engine={self.trainer.dist.engine}: {what} is not supported with a "
                                 "learner group yet; turn it off or set trainer.dist.engine=none")

    def _check_partial_rollouts(self) -> None:
        if not self.runtime.partial_rollouts:
            return
        if not self.runtime.decoupled():
            raise ValueError("runtime.partial_rollouts needs rollout workers (runtime.mode=async): in sync mode "
                             "no weight update happens during generation")
        if self.rollout.engine not in ("lean", "hf"):
            raise ValueError(f"runtime.partial_rollouts with rollout.engine={self.rollout.engine}: only the lean "
                             "and hf engines take weight updates between decode steps")
        if self.run.deterministic:
            raise ValueError("runtime.partial_rollouts with run.deterministic: when an update lands in a "
                             "generation depends on timing; turn one off")

    def _check_logprob_support(self) -> None:
        if self.trainer.logprob_support != "sampled":
            return
        if self.rollout.engine == "vllm":
            raise ValueError("trainer.logprob_support=sampled needs the sampler's kept-token sets, which the vLLM "
                             "engine does not return here; use rollout.engine=lean or hf (or "
                             "trainer.logprob_support=full)")
        if self.replay.enabled:
            raise ValueError("trainer.logprob_support=sampled with replay.enabled: the replay buffer does not keep "
                             "the kept-token sets; set trainer.logprob_support=full or replay.enabled=false")

    def _check_deterministic(self) -> None:
        if not self.run.deterministic:
            return
        if self.runtime.staleness() > 0:
            raise ValueError(f"run.deterministic with runtime.max_staleness = {self.runtime.staleness()}: which "
                             "weights generate a batch then depends on timing (the newest a worker finds when it "
                             "starts); set runtime.max_staleness=0 (or run.deterministic=false)")
        if self.rollout.engine == "vllm":
            raise ValueError("run.deterministic with rollout.engine=vllm: vLLM's batching is not batch-invariant "
                             "here; use rollout.engine=lean or hf (or run.deterministic=false)")

    def _check_bypass_mode(self) -> None:
        """verl's bypass mode IS ``old_logp = rollout_logp``: ``policy_loss=bypass_mode`` selects
        ``trainer.old_logp=rollout`` and refuses ``recompute``; a mismatch correction would compare the
        rollout log-probs with themselves (weights 1), so it is refused too (use the loss's own
        ``rollout_is`` / ``rollout_rs``)."""
        if self.algorithm.policy_loss != "bypass_mode":
            return
        if self.trainer.old_logp == "recompute":
            raise ValueError("algorithm.policy_loss=bypass_mode takes old_logp from the rollout engine (verl's "
                             "bypass mode); trainer.old_logp=recompute contradicts it: set trainer.old_logp=auto "
                             "(or rollout)")
        if self.algorithm.mismatch.method != "none":
            raise ValueError(f"algorithm.policy_loss=bypass_mode with algorithm.mismatch.method="
                             f"{self.algorithm.mismatch.method}: in bypass mode old_logp is the rollout "
                             "log-probs, so the correction would compare them with themselves; set "
                             "algorithm.mismatch.method=none and use policy_loss_params.rollout_is / rollout_rs")
        self.trainer.old_logp = "rollout"

    def _check_second_wave(self) -> None:
        from rlvr import algorithms as A

        rw, alg = self.reward, self.algorithm
        if rw.weights and rw.combine in A.ADVANTAGE_LEVEL_COMBINERS and alg.advantage_estimator != "identity":
            if "advantage_estimator" in alg.model_fields_set:
                raise ValueError(f"reward.combine = {rw.combine!r} already normalises the reward components into an "
                                 f"advantage, but algorithm.advantage_estimator = {alg.advantage_estimator!r} would "
                                 "normalise it again; set algorithm.advantage_estimator=identity")
            alg.advantage_estimator = "identity"  # resolved here, so config.yaml records what ran
        if (rw.constraints or rw.dynamic_weights == "gradient") and self.uses_critic():
            raise ValueError("reward.constraints / reward.dynamic_weights=gradient need a critic-free advantage "
                             f"estimator (per-component advantages), not {alg.advantage_estimator!r}")
        if self.kl.placement == "none" and (self.kl.controller != "fixed" or self.kl.reset_every
                                            or self.kl.reset_max_kl is not None):
            raise ValueError("kl.controller / kl.reset_every / kl.reset_max_kl act on the KL term, but "
                             "kl.placement is 'none'; set kl.placement and kl.coef")
        if self.rollout.pairing.enabled and self.rollout.dynamic_sampling.enabled:
            raise ValueError("rollout.pairing.enabled and rollout.dynamic_sampling.enabled are two prompt-selection "
                             "policies; enable one")
        if self.rollout.pairing.enabled and (self.rollout.prompts_per_step % 2 or self.rollout.group_size < 2):
            raise ValueError("rollout.pairing.enabled needs an even rollout.prompts_per_step (pairs of prompts) "
                             "and rollout.group_size >= 2")
        pr, G = self.rollout.pairing, self.rollout.group_size
        rates = [k / G for k in range(1, G)]
        if pr.enabled and not (any(r <= pr.hard_max for r in rates)
                               and any(r >= pr.easy_min and r > pr.hard_max for r in rates)):
            raise ValueError(f"rollout.pairing: with rollout.group_size = {G} no success rate k/{G} is hard "
                             f"(<= hard_max = {pr.hard_max}) or none is easy (>= easy_min = {pr.easy_min} and above "
                             "hard_max); adjust rollout.pairing.hard_max / easy_min or the group size")
        t = self.trainer
        if t.entropy_coef_min > t.entropy_coef_max:
            raise ValueError(f"trainer.entropy_coef_min ({t.entropy_coef_min}) exceeds trainer.entropy_coef_max "
                             f"({t.entropy_coef_max})")

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
        if self.rollout.engine == "vllm" and rt.decoupled():
            raise ValueError("rollout.engine = 'vllm' runs colocated in the learner's process: set "
                             "runtime.mode=sync and runtime.backend=local (or rollout.engine=hf)")
        if (not rt.decoupled() and self.rollout.engine != "lean"
                and self.rollout.dtype not in (None, self.model.dtype)):
            raise ValueError(f"rollout.dtype = {self.rollout.dtype!r} needs a separate engine copy of the "
                             "weights: set runtime.mode=async (or runtime.backend=ray) or rollout.engine=lean, "
                             "or leave rollout.dtype unset")
        mm = self.algorithm.mismatch
        if mm.method == "auto":  # resolved here, so config.yaml records what ran
            off_policy = S > 0 or self.replay.enabled  # stale or replayed samples
            mm.method = "decoupled" if off_policy and self.algorithm.policy_loss in AUTO_DECOUPLED_LOSSES else "none"
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
             "mean_logp", "old_mean_logp", "num_prompts", "baseline_rewards", "correct", "old_log_probs",
             "sum_pi_squared", "reward_components", "rollout_is_weights"}


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


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    from rlvr.tasks.defaults import switch_task  # a task switch drops the old task's options

    data = switch_task(_deepcopy(data), overrides)
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
    from rlvr.tasks.defaults import fill_task_defaults  # options that follow from task + model

    try:
        config = Config.model_validate(fill_task_defaults(data))
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
