"""Study files: one base config, named arms of dotted overrides, seeds.

``load_study("studies/x.yaml")`` validates the file and resolves every arm x seed into a
:class:`~rlvr.config.Config` with the same machinery as ``rlvr train``, so an unknown field or a
bad value in any arm is reported (one line per problem, naming the arm) before anything runs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rlvr.config import Config, ConfigError, apply_overrides, config_from_dict, parse_override, read_yaml, read_yaml_mapping

#: Summary metrics a study can report, with whether higher is better (for the verdict).
SUMMARY_METRICS: dict[str, tuple[str, bool]] = {
    "greedy_accuracy": ("final held-out greedy accuracy", True),
    "sampled_reward": ("final held-out mean sampled reward", True),
    "reward_auc": ("area under the training reward curve / steps", True),
    "final_reward": ("training reward, mean of the last 10% of steps", True),
    "final_entropy": ("policy entropy, mean of the last 10% of steps", True),
    "response_length": ("mean response length over training (tokens)", False),
    "wall_time": ("wall-clock seconds of the run", False),
    "cpu_time": ("CPU seconds of the run (all its threads; robust to other jobs on the machine)", False),
    "tokens_per_second": ("generated tokens per second of generation time", True),
}
#: Prefixes of metrics read from any metrics.jsonl key: ``eval/<key>`` is the key's value at the final
#: held-out evaluation (e.g. ``eval/greedy_short``, a reward component of a multi-objective task);
#: ``final/<key>`` the mean of a training key over the last 10% of steps (e.g. ``final/reward/short``).
#: Higher is taken as better for their verdicts.
METRIC_PREFIXES = {"eval/": "at the final held-out evaluation", "final/": "training, mean of the last 10% of steps"}


def metric_info(name: str) -> tuple[str, bool]:
    """(description, higher is better) of a summary metric: a key of ``SUMMARY_METRICS`` or a prefixed
    metrics.jsonl key (``METRIC_PREFIXES``). Raises ``KeyError`` for anything else."""
    if name in SUMMARY_METRICS:
        return SUMMARY_METRICS[name]
    for prefix, what in METRIC_PREFIXES.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            key = name[len(prefix):] if prefix == "final/" else name
            return f"`{key}` {what}", True
    raise KeyError(name)


#: Keys a study sets itself on every run; an arm may not set them (it also sets logging.progress=false).
STUDY_SET = ("run.seed", "run.name", "run.output_dir")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")

Overrides = Union[list[str], dict[str, Any]]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BaseSpec(_Model):
    config: str = Field(description="config YAML, relative to the study file (or the current folder)")
    overrides: Overrides = Field(default_factory=list, description="dotted overrides shared by all arms")


class ArmSpec(_Model):
    overrides: Overrides = Field(default_factory=list)
    description: str = ""


class ParallelSpec(_Model):
    workers: int | Literal["auto"] = Field("auto", description="concurrent runs; auto: CPUs // threads_per_run")
    threads_per_run: int = Field(1, ge=1, description="torch threads in each run")
    backend: Literal["local", "ray"] = "local"

    @field_validator("workers")
    @classmethod
    def _positive(cls, v):
        if v != "auto" and v < 1:
            raise ValueError("must be >= 1 or 'auto'")
        return v


class StudySpec(_Model):
    name: str | None = Field(None, description="study folder name (default: the file's stem)")
    description: str = ""
    base: BaseSpec
    baseline: str = Field(description="the arm every other arm is compared with")
    arms: dict[str, Any] = Field(description="name -> overrides (mapping or key=value list), or "
                                 "{overrides, description}, or null for the base config itself")
    seeds: list[int] | int = Field(default_factory=lambda: [0, 1, 2],
                                   description="a list of seeds, or N for seeds 0..N-1")
    metrics: list[str] = Field(default_factory=lambda: list(SUMMARY_METRICS))
    verdict_on: list[str] = Field(default_factory=lambda: ["greedy_accuracy", "sampled_reward", "reward_auc"])
    curves: list[str] = Field(default_factory=lambda: ["reward_mean", "accuracy", "entropy", "response_length",
                                                       "eval/greedy_accuracy"])
    band: Literal["std", "minmax"] = "std"
    smooth: int = Field(1, ge=1, description="trailing moving-average window of each seed's curve, in points")
    level: float = Field(0.95, gt=0, lt=1, description="confidence level of the intervals")
    comparison: Literal["welch", "paired"] = Field("welch", description="interval of arm - baseline: Welch "
                                                   "(independent runs) or paired by seed")
    output_dir: str = Field("runs/studies", description="parent folder of the study folder")
    parallel: ParallelSpec = Field(default_factory=ParallelSpec)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v):
        seeds = list(range(v)) if isinstance(v, int) else v
        if not seeds:
            raise ValueError("needs at least one seed")
        if len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise ValueError(f"seeds must be distinct non-negative integers, got {seeds}")
        return seeds

    @field_validator("metrics", "verdict_on")
    @classmethod
    def _known_metrics(cls, v):
        for m in v:
            try:
                metric_info(m)
            except KeyError:
                raise ValueError(f"unknown metric '{m}'; known: {', '.join(SUMMARY_METRICS)}, or "
                                 "eval/<key> / final/<key> for any metrics.jsonl key") from None
        return v

    @model_validator(mode="after")
    def _arms(self) -> "StudySpec":
        if not self.arms:
            raise ValueError("arms: a study needs at least one arm")
        for name, value in list(self.arms.items()):
            if not _NAME.match(name):
                raise ValueError(f"arm name '{name}' must be a folder-safe word (letters, digits, _ . + -)")
            self.arms[name] = _arm(name, value)
        if self.baseline not in self.arms:
            raise ValueError(f"baseline '{self.baseline}' is not an arm; arms: {', '.join(self.arms)}")
        if self.name is not None and not _NAME.match(self.name):
            raise ValueError(f"name '{self.name}' must be a folder-safe word")
        return self


@dataclass
class RunSpec:
    """One arm x seed: its resolved config and its run folder."""

    arm: str
    seed: int
    config: Config
    run_dir: Path

    @property
    def label(self) -> str:
        return f"{self.arm}/seed{self.seed}"


@dataclass
class Study:
    spec: StudySpec
    path: Path
    name: str
    study_dir: Path
    arms: dict[str, list[str]]          # arm -> its overrides as "key=value" strings
    descriptions: dict[str, str]
    runs: list[RunSpec]

    @property
    def baseline(self) -> str:
        return self.spec.baseline

    @property
    def seeds(self) -> list[int]:
        return list(self.spec.seeds)

    def subset(self, arms: list[str] | None = None, seeds: list[int] | None = None) -> "Study":
        """The same study restricted to some arms and/or seeds (same run folders, so these runs
        count for the full study later)."""
        for a in arms or []:
            if a not in self.arms:
                raise ConfigError(f"study error: --arms: '{a}' is not an arm; arms: {', '.join(self.arms)}")
        for k in seeds or []:
            if k not in self.spec.seeds:
                raise ConfigError(f"study error: --seeds: {k} is not a seed of the study; seeds: {self.spec.seeds}")
        keep_a = [a for a in self.arms if arms is None or a in arms]
        keep_s = [k for k in self.spec.seeds if seeds is None or k in seeds]
        spec = self.spec.model_copy(update={"seeds": keep_s})
        return Study(spec, self.path, self.name, self.study_dir, {a: self.arms[a] for a in keep_a},
                     {a: self.descriptions[a] for a in keep_a},
                     [r for r in self.runs if r.arm in keep_a and r.seed in keep_s])


def as_override_list(overrides: Overrides | None, where: str) -> list[str]:
    """A list of ``key=value`` strings from either a list of such strings or a {key: value} mapping.

    Mapping values are passed as JSON (valid YAML), so they parse back to the same value."""
    if overrides is None:
        return []
    if isinstance(overrides, dict):
        return [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    out = []
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"study error: {where}: override {item!r} is not key.path=value")
        out.append(item)
    return out


def _arm(name: str, value) -> ArmSpec:
    """An arm in any of its forms: null, {dotted.key: value}, [key=value, ...], {overrides, description}."""
    if value is None:
        return ArmSpec()
    if isinstance(value, ArmSpec):
        return value
    if isinstance(value, dict) and value and set(value) <= {"overrides", "description"}:
        try:
            return ArmSpec.model_validate(value)
        except ValidationError as err:
            raise ValueError(f"arm '{name}': {err.errors()[0]['loc'][0]}: {err.errors()[0]['msg']}") from None
    if isinstance(value, dict) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        return ArmSpec(overrides=value)
    raise ValueError(f"arm '{name}' must be null, a mapping of dotted overrides, a list of 'key=value' strings "
                     f"or {{overrides: ..., description: ...}}; got {value!r}")


def _section_replaced(item: str) -> str | None:
    """The dotted key if this override would replace a whole config section by a mapping
    (``trainer: {lr: 1}`` drops every other trainer setting); else None."""
    from pydantic import BaseModel as _BM

    keys, value = parse_override(item)
    if not isinstance(value, dict):
        return None
    model = Config
    for k in keys:
        field = model.model_fields.get(k)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, _BM)):
            return None
        model = field.annotation
    return ".".join(keys)


def _format(err: ValidationError, path: Path) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith(("function-", "union[", "list[", "dict[")))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"study error: {path}: {loc + ': ' if loc else ''}{msg}")
    # unions report one error per alternative; keep each line once
    return "\n".join(dict.fromkeys(lines))


def _resolve_base(spec_path: Path, config: str) -> Path:
    for candidate in (spec_path.parent / config, Path(config)):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"study error: {spec_path}: base.config '{config}' not found (looked next to the "
                      "study file and in the current folder)")


def load_study(path: str | Path, out: str | Path | None = None) -> Study:
    """Read, validate and resolve a study file; raises ConfigError naming the arm and field.

    ``out`` replaces the study folder (default ``<output_dir>/<name>``)."""
    path = Path(path)
    raw = read_yaml_mapping(path, "study file", "studies/", "a mapping (base, baseline, arms, seeds, ...)")
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format(err, path)) from None

    name = spec.name or path.stem
    study_dir = Path(out) if out is not None else Path(spec.output_dir) / name
    base_data = read_yaml(_resolve_base(path, spec.base.config))
    base_overrides = as_override_list(spec.base.overrides, "base.overrides")
    arms = {a: as_override_list(v.overrides, f"arm '{a}'") for a, v in spec.arms.items()}
    descriptions = {a: v.description for a, v in spec.arms.items()}

    errors, runs = [], []
    for where, overrides in [("base.overrides", base_overrides)] + [(f"arm '{a}'", o) for a, o in arms.items()]:
        for item in overrides:
            key = item.split("=", 1)[0].strip()
            if key in STUDY_SET:
                errors.append(f"study error: {where}: '{key}' is set by the study per run; remove it")
            elif (section := _section_replaced(item)) is not None:
                errors.append(f"study error: {where}: '{section}' is given a mapping, which would replace the "
                              f"whole section; use dotted keys ({section}.<field>: value)")
    if errors:
        raise ConfigError("\n".join(errors))

    def resolve(arm: str, overrides: list[str], seed: int) -> Config:
        per_run = [f"run.seed={seed}", f"run.name=seed{seed}",
                   f"run.output_dir={json.dumps(str(study_dir / arm))}", "logging.progress=false"]
        data = apply_overrides(apply_overrides(base_data, base_overrides), overrides)
        return config_from_dict(apply_overrides(data, per_run))

    try:  # the shared part first, so its problems are not blamed on every arm
        resolve(spec.baseline, [], spec.seeds[0])
    except ConfigError as err:
        raise ConfigError("\n".join(f"study error: base ({spec.base.config}): "
                                    f"{line.removeprefix('config error: ')}" for line in str(err).splitlines())) from None
    for arm, overrides in arms.items():
        for seed in spec.seeds:
            try:
                config = resolve(arm, overrides, seed)
            except ConfigError as err:
                errors += [f"study error: arm '{arm}': {line.removeprefix('config error: ')}"
                           for line in str(err).splitlines()]
                break  # the same problem would repeat for every seed
            runs.append(RunSpec(arm, seed, config, study_dir / arm / f"seed{seed}"))
    if errors:
        raise ConfigError("\n".join(dict.fromkeys(errors)))
    return Study(spec, path, name, study_dir, arms, descriptions, runs)
