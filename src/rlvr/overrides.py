"""What a user writes, below every room: a dotted override's syntax and the errors a config raises.

:class:`ConfigError` and :class:`ConfigWarning` live here (and are re-exported by :mod:`rlvr.config`) so
that the rooms under the config (tasks, models, rollout) can raise them without importing it.
"""

from __future__ import annotations

import re
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration problem a user can fix; the message names the field."""


class ConfigWarning(UserWarning):
    """A valid but degenerate setting (e.g. ``rollout.group_size=1`` with GRPO); issued at config load."""


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
