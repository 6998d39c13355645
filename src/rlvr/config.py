"""Typed, validated configuration: YAML files plus dotted command-line overrides.

``load_config("configs/x.yaml", ["trainer.lr=1e-5"])`` returns a validated :class:`Config`.
Any wrong or unknown field raises :class:`ConfigError`, whose message is one line per problem,
naming the field and the allowed values or the fix.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A configuration problem a user can fix; the message names the field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunSection(_Section):
    name: str = "run"
    output_dir: str = "runs"
    seed: int = 0
    device: str = "cpu"
    backend: Literal["local"] = "local"


class ModelSection(_Section):
    path: str = Field("builtin:tiny", description="'builtin:tiny', a local HF checkpoint folder or a hub id")
    warm_start: bool = Field(True, description="supervised warm start on the task (builtin:tiny only), cached")
    dtype: Literal["float32", "bfloat16"] = "float32"


class TaskSection(_Section):
    name: str = "arithmetic"
    options: dict[str, Any] = Field(default_factory=dict)


class DynamicSamplingSection(_Section):
    """DAPO dynamic sampling (Yu et al. 2025, arXiv 2503.14476, sec. 3.2)."""

    enabled: bool = False
    metric: str = Field("correct", description="reward component whose all-equal groups are dropped")
    max_gen_batches: int = Field(10, description="generation rounds before giving up; <= 0: unlimited")


class RolloutSection(_Section):
    engine: Literal["hf"] = "hf"
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
    """Train-inference mismatch correction from rollout_logp vs the trainer's old_logp."""

    method: Literal["none", "tis", "mis", "hispo"] = "none"
    level: Literal["token", "sequence", "geometric"] = "token"
    upper: float = Field(2.0, gt=0)
    lower: float | None = None
    delta_seq: float | None = None
    delta_tok: float | None = None


class AlgorithmSection(_Section):
    advantage_estimator: str = "grpo"
    advantage_params: dict[str, Any] = Field(default_factory=dict)
    policy_loss: str = "vanilla"
    policy_loss_params: dict[str, Any] = Field(default_factory=dict)
    loss_agg_mode: str = "token-mean"
    loss_agg_params: dict[str, Any] = Field(default_factory=dict)
    mismatch: MismatchSection = Field(default_factory=MismatchSection)

    @model_validator(mode="after")
    def _known_params(self) -> "AlgorithmSection":
        from rlvr import algorithms as A

        _check_params("algorithm.advantage_params", self.advantage_params,
                      A.ADVANTAGE_ESTIMATORS.get(self.advantage_estimator), self.advantage_estimator)
        _check_params("algorithm.policy_loss_params", self.policy_loss_params,
                      A.POLICY_LOSSES.get(self.policy_loss), self.policy_loss)
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
    betas: tuple[float, float] = (0.9, 0.999)
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

    model_path: str = Field("actor", description="'actor' (the actor's starting checkpoint), a local HF "
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
    value_loss_params: dict[str, Any] = Field(default_factory=dict)
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
    steps: int = Field(500, ge=0)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(128, ge=1)
    warmup_steps: int = Field(30, ge=0)
    seed: int = 0
    aggregation_ratio: float = Field(0.0, ge=0, le=1, description="share of warm-start rows that are "
                                     "RSA aggregation examples over noisy candidates (0: none)")
    aggregation_k: int = Field(4, ge=1, description="aggregation examples show 1..aggregation_k candidates")


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

    @model_validator(mode="after")
    def _consistent(self) -> "Config":
        batch = self.rollout.prompts_per_step * self.rollout.group_size
        if self.trainer.num_minibatches > batch:
            raise ValueError(
                f"trainer.num_minibatches ({self.trainer.num_minibatches}) exceeds the rollout batch "
                f"({batch} = rollout.prompts_per_step x rollout.group_size); lower it")
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
        if self.critic.num_critics > 1 and self.algorithm.advantage_estimator != "asyppo":
            raise ValueError(f"critic.num_critics = {self.critic.num_critics} needs "
                             "algorithm.advantage_estimator=asyppo (gae uses one critic); set one of them")
        return self

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


def _check_params(field: str, params: dict, fn, name: str) -> None:
    if fn is None:
        return
    import inspect

    sig = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.values()):
        return
    allowed = [k for k in sig if k not in _SUPPLIED]
    for key in params:
        if key not in allowed:
            raise ValueError(f"{field}.{key} is not a parameter of '{name}'; "
                             f"its parameters: {', '.join(allowed) or 'none'}")


def _check_registry(name: str, registry: str) -> str:
    from rlvr import algorithms

    known = getattr(algorithms, registry)
    if name not in known:
        raise ValueError(f"unknown name '{name}'; known: {', '.join(sorted(known))}")
    return name


# ---------------------------------------------------------------------------------------------
# Loading


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"trainer.lr=1e-5"`` -> (["trainer", "lr"], 1e-05). Values are parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override '{item}': expected key.path=value, e.g. trainer.lr=1e-5")
    key, raw = item.split("=", 1)
    keys = key.strip().split(".")
    if not all(keys):
        raise ConfigError(f"override '{item}': empty key part in '{key}'")
    value = yaml.safe_load(raw) if raw.strip() else ""
    # YAML reads '1e-5' as a string (it wants '1.0e-5'); accept what a person types.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else value
        except ValueError:
            pass
    return keys, value


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
                raise ConfigError(f"override '{item}': '{k}' is a value, not a section")
            node = child
        node[keys[-1]] = value
    return data


def _deepcopy(d):
    return {k: _deepcopy(v) for k, v in d.items()} if isinstance(d, dict) else d


def config_from_dict(data: dict) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def read_yaml_mapping(path: Path, kind: str, folder: str, expected: str) -> dict:
    """A YAML file that must hold a mapping; one-line ConfigErrors for a missing file, bad YAML or
    another shape (``kind`` names the file in messages, ``folder`` where ready ones live)."""
    if not path.is_file():
        raise ConfigError(f"{kind} '{path}' not found; see {folder} for ready ones")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{kind} '{path}' is not valid YAML: {err}") from None
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
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            parent = _model_at(Config, e["loc"][:-1])
            allowed = ", ".join(parent.model_fields) if parent else "?"
            lines.append(f"config error: unknown field '{loc}'; allowed here: {allowed}")
        elif e["type"] == "literal_error":
            lines.append(f"config error: {loc} = {e['input']!r}: {e['msg'].lower()}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            where = f"{loc} = {e['input']!r}: " if loc and not isinstance(e["input"], dict) else ""
            lines.append(f"config error: {where}{msg}")
    return "\n".join(lines)


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
