"""Task-aware defaults: what follows from the task, so a task nobody tuned for works from one override.

At config load (on the raw config dict, before validation):

* :func:`switch_task`: an override that sets ``task.name`` to another task than the config file's
  does not inherit the file's task-specific settings: its ``task.options`` (the old task's options,
  e.g. arithmetic's ``ops``) and ``rollout.max_new_tokens`` (sized for the old task's answers) are
  dropped, unless the overrides set them too; a ``warning:`` line says what was dropped. Likewise an
  override that sets ``model.path`` to another model than the file's drops the file's
  ``rollout.max_new_tokens``: it counts tokens of the file's model (``builtin:tiny``: characters), not
  of the new model's tokenizer, so it is derived again (:func:`apply_token_budget`); a model with the
  same tokenization model (a saved copy of the built-in one) keeps it.
* :func:`fill_task_defaults`: with ``model.path: builtin:tiny`` a reasoning-gym dataset that has a
  tiny preset gets ``preset: tiny`` (see :data:`rlvr.tasks.reasoning_gym.TINY_PRESETS`) unless the
  options name a preset; the ``dataset`` task gets ``tokenizer: <model.path>`` (its chat template).
  Both are written into the options, so ``config.yaml`` records what ran.

At train time (once the task and the tokenizer exist):

* :func:`apply_token_budget`: the longest reference completion of the task (its warm-start target,
  else its answer), in tokens plus EOS, is the least ``rollout.max_new_tokens`` under which every
  answer can be right. Unless the config sets ``rollout.max_new_tokens``, it is raised to that (never
  lowered); a budget the config does set that is too short gets a ``warning:`` line.
* :func:`start_report` (one line: the accuracy RL starts from) and :func:`zero_variance_warning`
  (a ``warning:`` line when (nearly) every group of the first batch has one reward for all its
  completions, so a group-relative estimator has nothing to learn from).
"""

from __future__ import annotations

import warnings
from typing import Any

__all__ = ["apply_token_budget", "fill_task_defaults", "start_report", "switch_task", "token_budget", "warn",
           "zero_variance_warning"]

#: rollout fields sized for a task's answers, dropped with the task on a task switch
TASK_TIED = (("rollout", "max_new_tokens"),)
#: rollout fields counted in the tokens of the file's model, dropped with the model on a model switch
MODEL_TIED = (("rollout", "max_new_tokens"),)
#: share of zero-variance groups from which :func:`zero_variance_warning` speaks up
ZERO_VARIANCE_SHARE = 0.9


def warn(message: str) -> None:
    """A one-line ``warning:`` (a :class:`rlvr.config.ConfigWarning`; the CLI prints it in one line)."""
    from rlvr.overrides import ConfigWarning

    warnings.warn(message, ConfigWarning, stacklevel=3)


def _override_task_name(overrides: list[str]) -> tuple[str | None, set[tuple[str, ...]]]:
    """The last task name the overrides set (``task.name=x`` or ``task={name: x}``), and every key path set."""
    from rlvr.overrides import parse_override

    name, paths = None, set()
    for item in overrides:
        try:
            keys, value = parse_override(item)
        except Exception:  # noqa: BLE001 - apply_overrides reports a bad override in its own words
            continue
        paths.add(tuple(keys))
        if keys == ["task", "name"] and isinstance(value, str):
            name = value
        elif keys == ["task"] and isinstance(value, dict):
            if isinstance(value.get("name"), str):
                name = value["name"]
            for k in value:
                paths.add(("task", str(k)))
    return name, paths


def _override_model_path(overrides: list[str]) -> str | None:
    """The last model path the overrides set (``model.path=x`` or ``model={path: x}``), else None."""
    from rlvr.overrides import parse_override

    path = None
    for item in overrides:
        try:
            keys, value = parse_override(item)
        except Exception:  # noqa: BLE001 - apply_overrides reports a bad override in its own words
            continue
        if keys == ["model", "path"] and isinstance(value, str):
            path = value
        elif keys == ["model"] and isinstance(value, dict) and isinstance(value.get("path"), str):
            path = value["path"]
    return path


def switch_task(data: dict, overrides: list[str] | None) -> dict:
    """``data`` (a config file's dict) without the old task's settings when ``overrides`` switch the task,
    and without the old model's token counts when they switch the model (see the module doc)."""
    overrides = list(overrides or [])
    data, task_message = _switch_task(data, overrides)
    data, model_message = _switch_model(data, overrides)
    for message in (task_message, model_message):
        if message:
            warn(message)
    return data


def _switch_model(data: dict, overrides: list[str]) -> tuple[dict, str | None]:
    new_path = _override_model_path(overrides)
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    old_path = model.get("path", "builtin:tiny")
    if new_path is None or new_path == old_path or same_vocabulary(old_path, new_path):
        return data, None
    _, paths = _override_task_name(overrides)
    out = dict(data)
    dropped = []
    for section, field in MODEL_TIED:
        sec = out.get(section)
        if isinstance(sec, dict) and field in sec and (section, field) not in paths:
            out[section] = {k: v for k, v in sec.items() if k != field}
            dropped.append(f"{section}.{field} ({sec[field]})")
    if not dropped:
        return out, None
    return out, (f"model.path={new_path} replaces the config's model '{old_path}', whose token counts are not "
                 f"carried over: {'; '.join(dropped)}; now derived from the task's answers in the new model's "
                 "tokens (set it on the command line to choose)")


def _vocabulary(path: str) -> Any:
    """The tokenization model (vocabulary, merges) of a model folder's ``tokenizer.json``, of the
    built-in character tokenizer for ``builtin:tiny``, or None when unknown."""
    import json
    from pathlib import Path

    if path == "builtin:tiny":
        from rlvr.models.tiny import build_char_tokenizer

        return json.loads(build_char_tokenizer().backend_tokenizer.to_str()).get("model")
    try:
        return json.loads((Path(path).expanduser() / "tokenizer.json").read_text()).get("model")
    except (OSError, ValueError, AttributeError):
        return None


def same_vocabulary(old_path: str, new_path: str) -> bool:
    """Whether both models count tokens alike (the same tokenization model), e.g. a saved copy of the
    built-in model: then the file's token counts still hold."""
    old = _vocabulary(old_path)
    return old is not None and old == _vocabulary(new_path)


def _switch_task(data: dict, overrides: list[str]) -> tuple[dict, str | None]:
    new_name, paths = _override_task_name(overrides)
    task = data.get("task") if isinstance(data.get("task"), dict) else {}
    old_name = task.get("name", "arithmetic")
    if new_name is None or new_name == old_name:
        return data, None
    out = dict(data)
    dropped = []
    if "options" in task:
        out["task"] = {k: v for k, v in task.items() if k != "options"}
        if ("task", "options") not in paths and task["options"]:
            keys = ", ".join(map(str, task["options"])) if isinstance(task["options"], dict) else "..."
            dropped.append(f"task.options ({keys})")
    for section, field in TASK_TIED:
        sec = out.get(section)
        if isinstance(sec, dict) and field in sec:
            out[section] = {k: v for k, v in sec.items() if k != field}
            if (section, field) not in paths:
                dropped.append(f"{section}.{field} ({sec[field]}; now derived from the new task's answers)")
    if not dropped:
        return out, None
    return out, (f"task.name={new_name} replaces the config's task '{old_name}', whose settings are not carried "
                 f"over: {'; '.join(dropped)}; set task.options.<name>=... for the new task's options")


def fill_task_defaults(data: dict) -> dict:
    """Options that follow from the task and the model (see the module doc), filled into ``data``."""
    task = data.get("task")
    if not isinstance(task, dict):
        return data
    name = task.get("name", "arithmetic")
    options = task.get("options")
    if options is not None and not isinstance(options, dict):
        return data  # validation reports it
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    model_path = model.get("path", "builtin:tiny")
    if not isinstance(name, str) or not isinstance(model_path, str):
        return data
    options = dict(options or {})
    family, _, dataset = name.partition(":")
    changed = False
    if family == "reasoning_gym" and model_path == "builtin:tiny" and "preset" not in options:
        options["preset"] = "tiny"  # prompts in proportion to the character model (rlvr.tasks.reasoning_gym)
        changed = True
    if family == "dataset" and "tokenizer" not in options:
        options["tokenizer"] = model_path
        changed = True
    if not changed:
        return data
    return {**data, "task": {**task, "options": options}}


# --------------------------------------------------------------------------- train time

def token_budget(task: Any, tokenizer: Any, limit: int = 2000) -> int:
    """Tokens (plus EOS) of the longest reference completion among the first ``limit`` problems of
    each split: its warm-start target when the task has one, else its answer. 0 without problems."""
    texts = []
    for split in ("train", "eval"):
        for p in task.problems(split, limit):
            target = None
            if hasattr(task, "format_sft_target"):
                try:
                    target = task.format_sft_target(p)
                except Exception:  # noqa: BLE001 - a task without reference completions
                    target = None
            texts.append(target if target is not None else p.answer)
    texts = [t for t in dict.fromkeys(texts) if t]
    if not texts:
        return 0
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return max(len(x) for x in ids) + 1


def apply_token_budget(config: Any, task: Any, tokenizer: Any, log=print) -> int:
    """Raise ``rollout.max_new_tokens`` to the task's :func:`token_budget` unless the config sets it
    (then warn when it is too short). Returns the budget in force."""
    need = token_budget(task, tokenizer)
    r = config.rollout
    current = r.max_new_tokens
    explicit = "max_new_tokens" in r.model_fields_set
    env = getattr(config, "env", None)
    if env is not None and env.name:  # multi-turn: max_new_tokens caps a turn; the episode's budget is the bound
        budget = env.token_budget(current)
        if need > budget:
            warn(f"env.max_total_tokens={budget} is shorter than the longest reference answer of task "
                 f"{config.task.name} ({need} tokens with EOS): such episodes can never be right; raise it")
        return current
    if need <= current:
        if not explicit and getattr(task, "uses_chat_template", False):
            warn(f"rollout.max_new_tokens is {current} (the default) for a chat model; completions are cut "
                  "there; set rollout.max_new_tokens for the length of answer you expect")
        return current
    if explicit:
        warn(f"rollout.max_new_tokens={current} is shorter than the longest reference answer of task "
              f"{config.task.name} ({need} tokens with EOS): such answers can never be right; raise it, or "
              "leave it unset to derive it from the task")
        return current
    r.max_new_tokens = need
    log(f"rollout.max_new_tokens: {need} (the longest reference answer of {config.task.name}, {need - 1} "
        f"tokens, plus EOS; the default was {current})")
    return need


def start_report(before: dict, num_problems: int, model_path: str) -> str:
    """One line: the held-out accuracy and sampled reward RL starts from."""
    acc, rew = before.get("greedy_accuracy"), before.get("sampled_reward")
    if acc is None:
        return ""
    return (f"RL starts from {model_path}: held-out greedy accuracy {100 * acc:.1f}%, sampled reward "
            f"{100 * (rew or 0):.1f}% ({num_problems} problems)")


def zero_variance_warning(rewards: Any, group: Any, share: float = ZERO_VARIANCE_SHARE,
                          builtin: bool = True) -> str | None:
    """A one-line warning when at least ``share`` of the groups have one reward for all their members.
    Its advice names the warm start (``sft.steps``) only for the built-in model (``builtin``), the one
    model rlvr warm-starts; a user's model gets the other remedies."""
    import torch

    groups = torch.unique(group)
    if len(groups) == 0:
        return None
    flat = right = wrong = 0
    for g in groups:
        vals = rewards[group == g]
        if len(vals) > 1 and bool(vals.max() == vals.min()):
            flat += 1
            right += int(vals[0] > 0)
            wrong += int(vals[0] <= 0)
    if flat < share * len(groups) or flat == 0:
        return None
    return (f"{flat} of {len(groups)} groups of the first RL batch have zero reward variance ({wrong} all at "
            f"reward <= 0, {right} all above): a group-relative estimator learns nothing from them; the task "
            "is too hard (or too easy) for the starting model: make it easier (task.options), "
            + ("warm-start longer (sft.steps), " if builtin else "check the prompt format (chat template, "
               "task.options.system_prompt/instruction), ")
            + "raise rollout.max_new_tokens or rollout.group_size")
