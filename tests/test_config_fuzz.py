"""Config fuzzing: every field of every section gets wrong-type, non-finite, out-of-range and
malformed values as dotted overrides, and each one must be a one-line ConfigError naming the field.

The fields are walked from ``Config.model_fields`` recursively, so a field or section added later is
fuzzed without editing this file. A bad value that a field legitimately accepts (a free-form name,
a path, a hub id) must be listed in ``ACCEPTED`` with the reason; an entry that is no longer accepted
fails the test too, so the list stays true.

No training happens: ``load_config`` only validates, and the CLI sample runs ``rlvr train`` with
``rlvr.train.loop`` replaced by a module whose ``train`` fails the test if it is ever called.
"""

from __future__ import annotations

import math
import sys
import types
import typing
import warnings
from typing import Any, Literal

import annotated_types as at
import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from rlvr import algorithms as A
from rlvr.cli import main
from rlvr.config import Config, ConfigError, ConfigWarning, group_relative, load_config

CONFIG = "configs/grpo_arithmetic_tiny.yaml"

#: (dotted field, bad-value label) -> why accepting it at config load is right.
ACCEPTED: dict[tuple[str, str], str] = {
    ("run.name", "unknown"): "any plain folder name is a valid run name",
    ("run.output_dir", "unknown"): "any folder name is a valid output folder",
    ("run.output_dir", "path"): "output_dir is a path by design (run.name is the plain part)",
    ("run.device", "unknown"): "torch device types are open-ended (cuda, mps, xpu, npu, privateuse1 "
                               "backends...); a lowercase name is accepted and torch checks it when the "
                               "model is moved",
    ("model.path", "unknown"): "a hub id or a local folder; only loading the checkpoint can tell",
    ("model.path", "path"): "a local checkpoint folder is a path by design",
    ("critic.model_path", "unknown"): "'actor', a hub id or a local folder; checked when the critic loads",
    ("critic.model_path", "path"): "a local checkpoint folder is a path by design",
    ("distill.teacher", "empty"): "empty means no distillation (the default)",
    ("env.name", "empty"): "empty means single-turn, no environment (the default)",
    ("distill.teacher", "unknown"): "a hub id or a local folder; only loading the teacher can tell",
    ("distill.teacher", "path"): "a local checkpoint folder is a path by design",
    ("task.name", "unknown"): "tasks may be registered (register_task) after the config is loaded; "
                              "make_task names the known ones when the run starts",
    ("rollout.dynamic_sampling.metric", "unknown"): "reward components are the task's; the set is only "
                                                    "known once a task is built",
    ("rollout.pairing.metric", "unknown"): "reward components are the task's; the set is only known once a "
                                           "task is built",
    ("algorithm.imentor.score", "unknown"): "reward components are the task's; the set is only known once a "
                                            "task is built",
    ("reward.weights", "unknown"): "its keys are reward components of the task (or of user reward functions); "
                                   "an unknown one is a one-line error naming the components when the first "
                                   "batch is scored",
    ("runtime.ray_address", "unknown"): "a Ray address is free-form (host:port, 'auto', ray://...); "
                                        "ray.init checks it",
    ("runtime.ray_address", "path"): "a Ray address is free-form; ray.init checks it",
    ("runtime.ray_address", "empty"): "owned by the runtime section; an empty address is passed to ray.init as is",
    ("logging.project", "unknown"): "any plain name is a valid tracker project name",
    ("rollout.stop", "path"): "a stop string is any text ('../x' may end a completion)",
    ("rollout.stop", "unknown"): "a stop string is any text, not a name from a set",
    ("rollout.stop_token_ids", "type"): "a list of ids: '[5]' is a valid value (the tokenizer's vocabulary is only "
                                        "known when the model loads: StopConditions.resolve checks the range)",
    ("model.lora.target_modules", "unknown"): "module names are the model's; peft names the missing ones "
                                              "(with this model's linear layers) when the adapter is built",
}

_YAML_BAD = [("yaml", "@@x"), ("yaml", "[1,2"), ("yaml", "{a: ")]
_NONFINITE = [("nonfinite", v) for v in ("1e309", "-1e309", ".nan", ".inf", "-.inf", "nan", "inf")]


# ---------------------------------------------------------------------------------------------
# walking the schema


def _fields(model: type[BaseModel], prefix: str = ""):
    """(dotted name, annotation, FieldInfo) of every field, sections included, recursively."""
    for name, info in model.model_fields.items():
        dotted = prefix + name
        yield dotted, info.annotation, info
        if _section(info.annotation):
            yield from _fields(info.annotation, dotted + ".")


def _section(ann) -> bool:
    return isinstance(ann, type) and issubclass(ann, BaseModel)


def _strip_optional(ann) -> tuple[Any, bool]:
    args = typing.get_args(ann)
    if typing.get_origin(ann) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True
    return ann, False


def _unannotated(ann) -> tuple[Any, list]:
    """The bare type and the constraints (annotated_types objects) of an Annotated type."""
    metadata = []
    while typing.get_origin(ann) is typing.Annotated:
        ann, *extra = typing.get_args(ann)
        for m in extra:
            metadata += m.metadata if isinstance(m, FieldInfo) else [m]
    return ann, metadata


def _kind(ann) -> str:
    ann, _ = _unannotated(ann)
    if _section(ann):
        return "section"
    if typing.get_origin(ann) is Literal:
        return "literal"
    if typing.get_origin(ann) is tuple:
        return "tuple"
    if typing.get_origin(ann) is list:
        return "list"
    if typing.get_origin(ann) is dict or ann is dict:
        return "dict"
    if ann in (bool, int, float, str):
        return ann.__name__
    raise AssertionError(f"the fuzzer does not know the type {ann!r}; teach _bad_values about it")


def _num(x: float, integer: bool) -> str:
    return str(int(x)) if integer else repr(float(x))


def _out_of_range(constraints: list, integer: bool) -> list[tuple[str, str]]:
    out = []
    step = 1 if integer else 0.5
    for c in constraints:
        if isinstance(c, at.Ge):
            out.append(("range", _num(c.ge - step, integer)))
        elif isinstance(c, at.Gt):
            out.append(("range", _num(c.gt, integer)))
        elif isinstance(c, at.Le):
            out.append(("range", _num(c.le + step, integer)))
        elif isinstance(c, at.Lt):
            out.append(("range", _num(c.lt, integer)))
    return out


def _bad_values(ann, info: FieldInfo) -> list[tuple[str, str]]:
    """(label, raw override text) pairs that the field must reject (or list in ACCEPTED)."""
    ann, optional = _strip_optional(ann)
    ann_bare, metadata = _unannotated(ann)
    constraints = list(info.metadata) + metadata
    kind = _kind(ann)
    bad = list(_YAML_BAD) + ([] if optional or kind == "dict" else [("type", "null")])
    if kind == "section":
        return bad + [("type", v) for v in ("5", "fast", "[1, 2]", "true")]
    if kind == "bool":
        return bad + [("type", v) for v in ("{a: 1}", "[1, 2]", "maybe", "2", "1.5", "''")]
    if kind in ("int", "float"):
        integer = kind == "int"
        bad += [("type", v) for v in ("{a: 1}", "[1, 2]", "fast", "true", "''")]
        bad += [("type", "2.5")] if integer else []
        return bad + _NONFINITE + _out_of_range(constraints, integer)
    if kind in ("str", "literal"):
        bad += [("type", v) for v in ("{a: 1}", "[1, 2]", "5", "true", "1.5")]
        return bad + [("empty", "''"), ("path", "../x"), ("unknown", "no_such_name_xyz")]
    if kind == "tuple":
        items = [_unannotated(a) for a in typing.get_args(ann_bare)]
        default = list(info.default)
        bad += [("type", v) for v in ("{a: 1}", "fast", "5", "true")]
        bad += [("length", "[" + ", ".join(["0.5"] * n) + "]") for n in (1, len(items) + 1)]
        for i, (item, item_constraints) in enumerate(items):
            integer = item is int
            for label, raw in [("type", "fast"), ("type", "true"), ("type", "{a: 1}")] + _NONFINITE[2:] + \
                    _out_of_range(item_constraints, integer):
                value = [repr(x) for x in default]
                value[i] = raw
                bad.append((label, "[" + ", ".join(value) + "]"))
        return bad
    if kind == "list":  # of names or of literals; a bare name is read as a one-item list
        bad += [("type", v) for v in ("{a: 1}", "5", "true", "1.5", "[5]", "[true]", "[{a: 1}]", "[[x]]")]
        return bad + [("empty", "['']"), ("path", "[../x]"), ("unknown", "[no_such_name_xyz]"),
                      ("unknown", "no_such_name_xyz")]
    if kind == "dict":
        bad += [("type", v) for v in ("5", "fast", "[1, 2]", "true", "null")]
        return bad + [("unknown", "{no_such_key_xyz: 1}"), ("nonfinite", "{k: .nan}"),
                      ("nonfinite", "{k: {n: [1, .inf]}}")]
    raise AssertionError(kind)


def _cases() -> list[tuple[str, str, str]]:
    return [(dotted, label, raw) for dotted, ann, info in _fields(Config) for label, raw in _bad_values(ann, info)]


def _finite_everywhere(value) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite_everywhere(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_finite_everywhere(v) for v in value)
    return True


def _check_message(msg: str, dotted: str) -> str | None:
    """None if ``msg`` is one line per problem, each a 'config error:' naming ``dotted``; else why not."""
    lines = msg.splitlines()
    if not lines:
        return "empty message"
    if "Traceback" in msg:
        return "a traceback"
    if not all(line.startswith("config error: ") for line in lines):
        return "a line that is not 'config error: ...'"
    if len(lines) > 3:
        return f"{len(lines)} lines for one bad value"
    if dotted not in msg:
        return f"the message does not name {dotted}"
    return None


def _try(dotted: str, raw: str) -> tuple[str, str]:
    """('rejected' | 'accepted' | 'bad message' | 'crash', detail)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConfigWarning)
            config = load_config(CONFIG, [f"{dotted}={raw}"])
    except ConfigError as err:
        problem = _check_message(str(err), dotted)
        return ("bad message", f"{problem}: {err}") if problem else ("rejected", str(err))
    except Exception as err:  # noqa: BLE001 - a traceback for a user; report it
        return "crash", f"{type(err).__name__}: {err}"
    if not _finite_everywhere(config.to_dict()):
        return "crash", "a non-finite number was accepted"
    return "accepted", ""


# ---------------------------------------------------------------------------------------------
# the fuzz


def test_every_field_rejects_bad_values_in_one_line_naming_it():
    cases = _cases()
    fields = {d for d, _, _ in cases}
    results = {(d, label, raw): _try(d, raw) for d, label, raw in cases}
    crashes = [f"{d}={raw}: {detail}" for (d, _, raw), (r, detail) in results.items() if r in ("crash", "bad message")]
    accepted = {(d, label) for (d, label, _), (r, _) in results.items() if r == "accepted"}
    print(f"\nconfig fuzz: {len(fields)} fields x bad values = {len(cases)} cases; "
          f"{sum(r == 'rejected' for r, _ in results.values())} rejected in one line naming the field, "
          f"{len(accepted)} (field, kind) accepted by design, {len(crashes)} tracebacks or bad messages")
    assert not crashes, "\n".join(crashes[:40])
    assert not [a for a in accepted if a[1] in ("nonfinite", "yaml", "range", "length")], accepted
    unexpected = sorted(accepted - set(ACCEPTED))
    assert not unexpected, ("accepted at config load; constrain the field or list it in ACCEPTED with a "
                            f"reason: {unexpected}")
    stale = sorted(k for k in ACCEPTED if k[0] in fields and k not in accepted)
    assert not stale, f"ACCEPTED lists values that are now rejected; drop them: {stale}"
    assert len(fields) >= 80 and len(cases) >= 1000, (len(fields), len(cases))


def test_the_walk_reaches_nested_sections_tuples_optionals_and_new_fields():
    fields = {d: ann for d, ann, _ in _fields(Config)}
    for expected in ("rollout.dynamic_sampling.max_gen_batches", "algorithm.mismatch.lower", "trainer.betas",
                     "critic.num_layers", "task.options", "run.name", "eval.num_problems"):
        assert expected in fields
    assert all(section in {d.split(".")[0] for d in fields} for section in Config.model_fields)
    cases = {(d, raw) for d, _, raw in _cases()}
    assert ("trainer.betas", "[0.9, .nan]") in cases and ("trainer.betas", "[1.0, 0.999]") in cases
    assert ("rollout.top_p", "1.5") in cases and ("rollout.temperature", "0.0") in cases


@pytest.mark.parametrize("override,needle", [
    ("trainer.lr=@@x", "override 'trainer.lr=@@x': trainer.lr = '@@x' is not valid YAML"),
    ("trainer.lr=[1,2", "override 'trainer.lr=[1,2': trainer.lr = '[1,2' is not valid YAML"),
    ("run.device={a: }", "run.device = {'a': None}: Input should be a valid string"),
    ("trainer.lr=1e309", "trainer.lr = inf: must be a finite number"),
    ("trainer.lr=.nan", "trainer.lr = nan: must be a finite number"),
    ("trainer.betas=[0.9, .inf]", "trainer.betas[1] = inf: must be a finite number"),
    ("trainer.betas=[0.9, 1.5]", "trainer.betas[1] = 1.5: Input should be less than 1"),
    ("algorithm.mismatch.lower=-.inf", "algorithm.mismatch.lower = -inf: must be a finite number"),
    ("algorithm.advantage_params={eps: .nan}", "algorithm.advantage_params.eps = nan: numbers must be finite"),
    ("run.name=../../etc", "run.name = '../../etc': must be a plain name, not a path"),
    ("run.name=", "run.name = '': must not be empty"),
    ("run.name=..", "run.name = '..': must be a plain name"),
    ("run.name=a/b", "run.name = 'a/b': must be a plain name"),
    ("run.output_dir=", "run.output_dir = '': must not be empty"),
    ("trainer.lr=yes", "trainer.lr = True: expected a number, not a boolean"),
    ("run.name=5", "run.name = 5: Input should be a valid string; quote it to pass text"),
    ("trainer=5", "trainer = 5: 'trainer' is a section, not a value"),
    ("trainer.lr.x=1", "'trainer.lr' is a value, not a section"),
    ("task.options.max_digitz=3", "task.options.max_digitz is not an option of task 'arithmetic'"),
    ("task.options.max_digits=fast", "task.options.max_digits = 'fast': expected an integer"),
    ("algorithm.loss_agg_params={x: 1}", "algorithm.loss_agg_params.x is not a parameter of 'token-mean'"),
    ("algorithm.policy_loss_params.clip_ratio_low=fast", "algorithm.policy_loss_params.clip_ratio_low = 'fast': "
                                                          "expected a number"),
])
def test_reported_cases(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config(CONFIG, [override])
    assert needle in str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_yaml_readings_that_mean_text_or_numbers():
    c = load_config(CONFIG, ["run.name=2024-01-01", "run.output_dir=12:30", "trainer.lr=1e-4", "sft.lr=2E-3",
                             "task.options.num_train=1e4", "algorithm.policy_loss_params.clip_ratio_c=3"])
    assert c.run.name == "2024-01-01" and c.run.output_dir == "12:30"  # no YAML dates or base-60 ints
    assert c.trainer.lr == 1e-4 and c.sft.lr == 2e-3
    assert c.task.options["num_train"] == 10000 and isinstance(c.task.options["num_train"], int)
    assert load_config(CONFIG, ["run.name='123'"]).run.name == "123"  # quoted: text, not a number
    assert load_config(CONFIG, ["algorithm.policy_loss_params.clip_ratio_low=null"])  # None: "off"


# ---------------------------------------------------------------------------------------------
# the CLI path: exit 2, nothing on stdout, one line per problem on stderr, nothing trained


@pytest.fixture
def no_training(monkeypatch):
    fake = types.ModuleType("rlvr.train.loop")

    def train(*args, **kwargs):
        raise AssertionError("a bad config reached training")

    fake.train = train
    monkeypatch.setitem(sys.modules, "rlvr.train.loop", fake)


def test_cli_rejects_a_sample_of_the_fuzz_cases(no_training, capsys):
    rejected = [(d, raw) for d, label, raw in _cases() if (d, label) not in ACCEPTED]
    sample = rejected[::7] + [("trainer.lr", "@@x"), ("trainer.lr", "[1,2"), ("run.device", "{a: }"),
                              ("trainer.lr", "1e309"), ("run.name", "../../etc"), ("run.name", "")]
    for dotted, raw in sample:
        rc = main(["train", "--config", CONFIG, f"{dotted}={raw}"])
        out, err = capsys.readouterr()
        assert (rc, out) == (2, ""), (dotted, raw, rc, out, err)
        assert _check_message(err.strip(), dotted) is None, (dotted, raw, err)
    print(f"\nCLI sample: {len(sample)} of the fuzz cases through rlvr train, each exit 2 in one line")
    assert len(sample) >= 100


def _one_line_error(rc, out, err, needle):
    assert (rc, out) == (2, ""), (rc, out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert needle in err, err


def test_cli_user_errors_are_one_line_exit_2(no_training, capsys, tmp_path):
    cases = [
        (["train", "--config", "configs/nope.yaml"], "error: --config configs/nope.yaml: no such file"),
        (["train", "--resume", str(tmp_path / "nope")], "no such folder"),
        (["train", "--resume", str(tmp_path)], "no config.yaml there"),
        (["train", "--resume", str(tmp_path), "trainer.lr=1"], "no config.yaml there"),
        (["eval", "--checkpoint", str(tmp_path / "nope")], "--checkpoint"),
        (["eval", "--checkpoint", "runs/surely_no_such_run"], "no such run, checkpoint or model folder"),
        (["tts", "--checkpoint", "./nope"], "no such run, checkpoint or model folder"),
        (["train", "--bogus"], "error: rlvr: unrecognized arguments: --bogus"),
        (["nocommand"], "error: rlvr: argument command: invalid choice"),
        (["sft", "--config", CONFIG, "trainer.lr=@@x"], "config error: override 'trainer.lr=@@x'"),
    ]
    for argv, needle in cases:
        rc = main(argv)
        out, err = capsys.readouterr()
        _one_line_error(rc, out, err, needle)
    broken = tmp_path / "broken.yaml"
    broken.write_text("trainer: {lr: [1, 2\n")
    rc = main(["train", "--config", str(broken)])
    _one_line_error(rc, *capsys.readouterr(), "is not valid YAML")


def test_cli_squeezes_a_multi_line_value_error(monkeypatch, capsys):
    fake = types.ModuleType("rlvr.train.loop")

    def train(*args, **kwargs):
        raise ValueError("model.path = 'x': cannot load\nsecond line\n  third")

    fake.train = train
    monkeypatch.setitem(sys.modules, "rlvr.train.loop", fake)
    rc = main(["train", "--config", CONFIG])
    _one_line_error(rc, *capsys.readouterr(), "error: model.path = 'x': cannot load second line third")
    with pytest.raises(ValueError, match="second line"):
        main(["train", "--debug", "--config", CONFIG])


@pytest.mark.parametrize("argv", [["--debug", "train", "--config", CONFIG, "trainer.lr=1e309"],
                                  ["train", "--debug", "--config", CONFIG, "trainer.lr=1e309"],
                                  ["train", "--config", CONFIG, "trainer.lr=1e309", "--debug"]])
def test_debug_shows_the_traceback(no_training, argv):
    with pytest.raises(ConfigError, match="trainer.lr = inf"):
        main(argv)


def test_debug_defaults_off_with_and_without_the_subcommand_flag():
    from rlvr.cli import _parser

    assert _parser().parse_args(["train"]).debug is False
    assert _parser().parse_args(["--debug", "train"]).debug is True
    assert _parser().parse_args(["eval", "--checkpoint", "x", "--debug"]).debug is True


# ---------------------------------------------------------------------------------------------
# degenerate but valid settings: a ConfigWarning at load, a `warning:` line in the CLI


def _warnings(*overrides) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_config(CONFIG, list(overrides))
    return [str(w.message) for w in caught if issubclass(w.category, ConfigWarning)]


def test_ready_configs_load_without_warnings():
    import glob

    for path in sorted(glob.glob("configs/*.yaml")):
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConfigWarning)
            load_config(path)


def test_group_size_one_warns_for_every_group_relative_estimator():
    relative = {name for name in A.ADVANTAGE_ESTIMATORS if group_relative(name)}
    assert {"grpo", "dr_grpo", "rloo", "lite_ppo", "opo", "gpg", "reinforce_plus_plus_baseline", "rover"} <= relative
    assert not relative & {"gae", "asyppo", "reinforce_plus_plus", "remax"}
    for name in sorted(A.ADVANTAGE_ESTIMATORS):
        got = _warnings(f"algorithm.advantage_estimator={name}", "rollout.group_size=1")
        hits = [w for w in got if w.startswith("rollout.group_size=1")]
        assert len(hits) == (name in relative), (name, got)
        if hits:
            assert f"algorithm.advantage_estimator={name}" in hits[0] and "0 or the raw reward" in hits[0]
    assert _warnings() == []


@pytest.mark.parametrize("overrides,needle", [
    (["trainer.steps=0"], "trainer.steps=0: no RL step runs"),
    (["eval.num_problems=1000"], "eval.num_problems (1000) exceeds the task's eval split (num_eval = 500)"),
    (["task.options.num_eval=20", "eval.num_problems=50"], "evaluation uses at most 20 problems"),
    (["trainer.steps=1", "trainer.num_minibatches=1", "trainer.warmup_steps=5"],
     "trainer.warmup_steps (5) exceeds the run's optimizer steps (1 ="),
])
def test_degenerate_settings_warn(overrides, needle):
    got = _warnings(*overrides)
    assert len(got) == 1 and needle in got[0], got


def test_not_degenerate_no_warning():
    assert _warnings("task.options.num_eval=2000", "eval.num_problems=1000") == []
    assert _warnings("trainer.steps=5", "trainer.num_minibatches=1", "trainer.warmup_steps=5") == []


def test_dynamic_sampling_with_one_completion_per_group_is_an_error():
    with pytest.raises(ConfigError, match="rollout.dynamic_sampling.enabled with rollout.group_size=1"):
        load_config(CONFIG, ["rollout.dynamic_sampling.enabled=true", "rollout.group_size=1"])


def test_cli_prints_warnings_as_one_line_each_and_goes_on(monkeypatch, capsys):
    calls = []
    fake = types.ModuleType("rlvr.train.loop")
    fake.train = lambda config=None, **kw: calls.append(config)
    monkeypatch.setitem(sys.modules, "rlvr.train.loop", fake)
    rc = main(["train", "--config", CONFIG, "rollout.group_size=1", "trainer.steps=0"])
    out, err = capsys.readouterr()
    assert rc == 0 and len(calls) == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("warning: ") for line in lines), err
    assert "rollout.group_size=1" in lines[0] and "trainer.steps=0" in lines[1]
