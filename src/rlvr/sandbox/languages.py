"""Languages as data: a file name, an optional compile step, a run command and per-language limits.

Following Agnostics (Boruch-Gruszecki et al. 2025, arXiv 2508.04865, ``pl-configs/*.yaml``), a
language is a few lines of YAML, not code: the built-in ones are in ``languages.yaml`` beside this
module (Python, bash, C via gcc, JavaScript via node), and :func:`load_languages` reads more from a
user's file. A language whose ``requires`` executables are missing on the host is still listed but
:func:`Language.available` says why it cannot run.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from rlvr.sandbox.core import ALLOWED_ENV, Limits

__all__ = ["LANGUAGES", "Language", "get_language", "load_languages", "register_language"]


@dataclass(frozen=True)
class Language:
    """How to build and run one program.

    Attributes:
        name: registry name (``python``, ``bash``, ``c``, ``javascript``, ...).
        filename: the program's file name inside the sandbox's tmpfs.
        run: argv of one test run (stdin = the test's input).
        compile: a shell command that builds ``artifact`` from ``filename``; ``None``: interpreted.
        artifact: the compiled file carried (as bytes) into every test run.
        requires: host executables the language needs (checked by :meth:`available`).
        limits: overrides of :class:`~rlvr.sandbox.Limits` for test runs.
        compile_limits: overrides for the compile run.
        prompt_hint: a phrase naming the dialect, for prompts.
    """

    name: str
    filename: str
    run: tuple[str, ...]
    compile: str | None = None
    artifact: str | None = None
    requires: tuple[str, ...] = ()
    limits: Mapping[str, Any] = field(default_factory=dict)
    compile_limits: Mapping[str, Any] = field(default_factory=dict)
    prompt_hint: str = ""

    def __post_init__(self) -> None:
        if not self.filename or "/" in self.filename:
            raise ValueError(f"language {self.name!r}: filename must be a plain name, got {self.filename!r}")
        if not self.run:
            raise ValueError(f"language {self.name!r}: run must be a non-empty argv")
        if self.compile and (not self.artifact or "/" in self.artifact):
            raise ValueError(f"language {self.name!r}: a compiled language needs a plain artifact name")
        for key in (*self.limits, *self.compile_limits):
            if key not in Limits.__dataclass_fields__:
                raise ValueError(f"language {self.name!r}: unknown limit {key!r}; "
                                 f"allowed: {', '.join(Limits.__dataclass_fields__)}")

    def available(self) -> tuple[bool, str]:
        """``(True, "")`` when every required executable is on the sandbox's PATH and resolves inside
        what the sandbox sees (/usr, /etc/alternatives), else ``(False, why)``."""
        missing, outside = [], []
        for name in self.requires:
            path = shutil.which(name, path=ALLOWED_ENV["PATH"])  # the sandbox's PATH, not the trainer's
            if path is None:
                missing.append(name)
            elif not os.path.realpath(path).startswith(("/usr/", "/etc/alternatives/")):
                outside.append(f"{name} ({os.path.realpath(path)})")
        if missing:
            return False, f"{self.name}: {', '.join(missing)} not installed"
        if outside:  # the sandbox sees /usr only: bind the runtime's folder with Sandbox(binds=...)
            return False, f"{self.name}: {', '.join(outside)} lies outside /usr, which the sandbox cannot see"
        return True, ""

    def run_limits(self, base: Limits) -> Limits:
        return base.replace(**dict(self.limits)) if self.limits else base

    def build_limits(self, base: Limits) -> Limits:
        merged = {**dict(self.limits), **dict(self.compile_limits)}
        return base.replace(**merged) if merged else base


#: Languages by name (the built-ins are loaded on import).
LANGUAGES: dict[str, Language] = {}


def register_language(lang: Language) -> Language:
    LANGUAGES[lang.name] = lang
    return lang


def _from_mapping(name: str, spec: Mapping[str, Any]) -> Language:
    allowed = set(Language.__dataclass_fields__) - {"name"}
    unknown = set(spec) - allowed
    if unknown:
        raise ValueError(f"language {name!r}: unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    run = spec.get("run")
    if isinstance(run, str):
        run = run.split()
    return Language(name=name, filename=str(spec.get("filename", "")), run=tuple(map(str, run or ())),
                    compile=spec.get("compile"), artifact=spec.get("artifact"),
                    requires=tuple(spec.get("requires", ()) or ()), limits=dict(spec.get("limits") or {}),
                    compile_limits=dict(spec.get("compile_limits") or {}),
                    prompt_hint=str(spec.get("prompt_hint", "")))


def load_languages(path: str | Path) -> list[Language]:
    """Register every language in a YAML file (``name: {filename, run, compile, ...}``)."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of language names to specs")
    return [register_language(_from_mapping(str(k), v or {})) for k, v in data.items()]


def get_language(name: str) -> Language:
    try:
        return LANGUAGES[name]
    except KeyError:
        raise ValueError(f"unknown language {name!r}; known: {', '.join(sorted(LANGUAGES))}") from None


load_languages(Path(__file__).with_name("languages.yaml"))
