"""Every shell command in README.md's and the documentation's code blocks is run (with small step counts),
so neither the front page nor docs/ can rot.

The commands are read from the fenced ``bash``/``sh``/``shell``/``console`` blocks of README.md and of
every page under ``docs/`` (:data:`DOC_FILES`; comments stripped, ``\\`` continuations joined) and run
in that order, README first, each command once (a command that several pages show is run where it
first appears), in one scratch folder that links the repository's ``configs/``, ``studies/``,
``examples/`` ... so relative paths mean what they mean from a clone. How each kind is run:

* ``rlvr train`` / ``sft`` / ``eval`` / ``tts``: in-process through ``rlvr.cli.main`` with the
  command's own arguments, plus overrides that make it small (:data:`SMALL`: 2 RL steps, a 10-step
  warm start, 4 held-out problems); those replace any step counts the command sets and keep every
  other setting it names. Exit status 0 is required.
* ``rlvr compare STUDY``: ``--dry-run`` is run as it is (it validates every arm x seed). A real
  study is run on a copy of the study file with the small overrides added to its base; only the
  arms and seeds the command selects (the full study, 13 arms x 3 seeds, is only validated with
  ``--dry-run``: it takes an hour; commands that would run a whole study differ only in how, so
  they are validated once per study and backend).
* ``rlvr sandbox bench``: run with at most :data:`BENCH_PROGRAMS` programs.
* ``rlvr sandbox check``: run with ``--only`` :data:`CHECK_ATTACKS` (the command, its table and its exit status);
  tests/sandbox/test_hostile.py runs every attack of the suite, one test each.
* other ``rlvr`` subcommands (``kl-table``, ``export``, ...): run as they are.
* ``make run`` / ``make test``: parsed, not run: ``make run`` is turned into the ``rlvr train``
  command of the Makefile's ``run:`` recipe (its CONFIG and the command's ARGS) and run small;
  ``make test`` must run pytest on ``tests/`` (running it from inside the test suite would recurse;
  CI runs it). The install step of both (pip) is what ``make test`` itself exercises.
* ``pip install ...``: the extras it names must exist in pyproject.toml (not installed).
* A block right after a line ``<!-- not run: REASON -->`` is not run (e.g. it needs the network);
  the reason must be given.

Placeholders: ``/path/to/...`` is a saved copy of the built-in model; a user's own file that the
pages name (:data:`STAND_INS`: ``problems.jsonl``, ``prog.py``, ``in.txt``) is a small stand-in
written into the scratch folder; ``~/.cache/rlvr`` is the test's private cache and ``<key>`` the
warm start that ``rlvr sft`` built; a ``runs/<name>`` (given to ``--checkpoint``, ``--resume`` or
``rlvr export``) that no earlier command made is first trained from ``configs/<name>.yaml``
(small), and a ``runs/<name>/checkpoints/step_N`` that the small run did not reach is its latest
checkpoint. A command of any other kind fails this test: add a rule here when a page gains one.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: The pages whose shell blocks are run: README first, then the documentation.
DOC_FILES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
LINKED = ("configs", "studies", "examples", "docs", "benchmarks", "Makefile", "pyproject.toml", "src", "tests")

#: What makes a command small. Step counts always win over the command's; the rest only fill in.
FORCED = ["trainer.steps=2", "sft.steps=10"]
SMALL = ["sft.batch_size=16", "sft.warmup_steps=2", "trainer.warmup_steps=0", "rollout.prompts_per_step=4", "rollout.group_size=4",
         "trainer.num_minibatches=1", "eval.num_problems=4", "eval.samples_per_problem=2",
         "logging.progress=false", "logging.plots=false", "logging.checkpoint_every=1"]
#: ``rlvr sandbox check`` runs these attacks (one of each family: resources, escapes, information);
#: tests/sandbox/test_hostile.py runs all of them
CHECK_ATTACKS = "R1,E1,I1"
#: ``rlvr sandbox bench`` judges at most this many programs per slot count.
BENCH_PROGRAMS = 10


#: Files README's examples treat as the user's own, written as small stand-ins in the scratch folder.
STAND_INS = {
    "problems.jsonl": "".join(
        '{"prompt": "Read an integer and print it plus %d (example %d).", "tests": [{"input": "%d\\n", "output": "%d\\n"}], '
        '"solution": "print(int(input())+%d)"}\n' % (c, x, x, x + c, c) for c in range(2, 6) for x in range(5)),
    "prog.py": "print(input()[::-1])\n",
    "in.txt": "hello\n",
}


NOT_RUN = re.compile(r"^<!--\s*not run:(?P<why>[^>]*)-->[ \t]*\n")
BLOCK = re.compile(r"(?P<mark>^<!--\s*not run:[^>]*-->[ \t]*\n)?^```(?:bash|sh|shell|console)[ \t]*\n(?P<body>.*?)^```",
                   flags=re.M | re.S)


def readme_commands(text: str) -> list[str]:
    """Shell commands of a page's shell code blocks, one string each (continuations joined).

    Blocks marked ``<!-- not run: ... -->`` are left out."""
    commands = []
    for m in BLOCK.finditer(text):
        if m.group("mark"):
            continue
        joined = re.sub(r"\\\n\s*", " ", m.group("body"))
        for line in joined.splitlines():
            line = line.strip().removeprefix("$ ").strip()
            if not line or line.startswith("#"):
                continue
            tokens = shlex.split(line, comments=True)
            if tokens:
                commands.append(shlex.join(tokens))
    return commands


def _dedup_key(command: str) -> str:
    """Commands with one key are checked once: identical ones, and whole-study ``rlvr compare`` runs
    (only validated, per study and backend)."""
    tokens = shlex.split(command)
    if tokens[:2] == ["rlvr", "compare"] and len(tokens) > 2 and "--arms" not in tokens and "--seeds" not in tokens:
        backend = tokens[tokens.index("--backend") + 1] if "--backend" in tokens[:-1] else "local"
        return f"rlvr compare {tokens[2]} --dry-run --backend {backend}"
    return command


def _collect() -> list[tuple[str, str]]:
    """(page, command) for every command of :data:`DOC_FILES`, each key once, in order."""
    seen, out = set(), []
    for path in DOC_FILES:
        for command in readme_commands(path.read_text()):
            key = _dedup_key(command)
            if key not in seen:
                seen.add(key)
                out.append((str(path.relative_to(ROOT)), command))
    return out


PAGE_COMMANDS = _collect()
COMMANDS = [c for _, c in PAGE_COMMANDS]
README_COMMANDS = readme_commands(README.read_text())


def test_readme_has_commands():
    assert any(c.startswith("rlvr train") for c in README_COMMANDS) and any(c.startswith("make run") for c in README_COMMANDS)


def test_blocks_not_run_say_why():
    for path in DOC_FILES:
        for m in NOT_RUN.finditer(path.read_text()):
            assert m.group("why").strip(), f"{path.relative_to(ROOT)}: a '<!-- not run: -->' mark without a reason"


# --------------------------------------------------------------------------- the workspace


class Workspace:
    def __init__(self, path: Path):
        self.path = path
        self.warm_start: str | None = None
        self.checkpoint: str | None = None

    def run_cli(self, argv: list[str]) -> str:
        from rlvr.cli import main

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(argv)
        text = out.getvalue() + err.getvalue()
        assert rc == 0, f"rlvr {shlex.join(argv)} exited with {rc}:\n{text[-3000:]}"
        return out.getvalue()

    def placeholders(self, tokens: list[str]) -> list[str]:
        out = []
        for t in tokens:
            if "/path/to/" in t:
                t = re.sub(r"/path/to/[^\s=]+", lambda _: self.saved_model(), t)
            t = t.replace("~/.cache/rlvr", os.environ["RLVR_CACHE"])
            if "<key>" in t:
                t = self.warm_start_path()
            out.append(t)
        for i, t in enumerate(out):  # a run folder that no earlier command made: train it first
            run_arg = i and (out[i - 1] in ("--checkpoint", "--resume") or (out[i - 1] == "export" and i == 1))
            if run_arg and t.startswith("runs/") and not Path(t).exists():
                run = Path(*Path(t).parts[:2])
                if not run.exists():
                    name = run.name
                    assert (Path("configs") / f"{name}.yaml").exists(), f"a page uses {t}, but nothing makes it"
                    self.run_cli(["train", "--config", f"configs/{name}.yaml", f"run.name={name}", *SMALL, *FORCED])
                if re.fullmatch(r"runs/[^/]+/checkpoints/step_\d+", t) and not Path(t).exists():
                    out[i] = str(max((run / "checkpoints").glob("step_*")))  # the small run stopped earlier
        return out

    def saved_model(self) -> str:
        if self.checkpoint is None:
            from rlvr.models.tiny import save_tiny

            self.checkpoint = str(save_tiny(self.path / "saved_model"))
        return self.checkpoint

    def warm_start_path(self) -> str:
        if self.warm_start is None:
            self.warm_start = self.run_cli(["sft", "--config", "configs/grpo_arithmetic_tiny.yaml", *SMALL,
                                            *FORCED]).strip().splitlines()[-1]
        return self.warm_start


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    path = tmp_path_factory.mktemp("readme")
    for name in LINKED:
        if (ROOT / name).exists():
            (path / name).symlink_to(ROOT / name)
    for name, text in STAND_INS.items():
        (path / name).write_text(text)
    old = Path.cwd()
    os.chdir(path)
    try:
        yield Workspace(path)
    finally:
        os.chdir(old)


def _small(tokens: list[str], sub: str) -> list[str]:
    """``tokens`` (after ``rlvr``) with the small-run overrides of its subcommand."""
    if sub == "train" and "--resume" in tokens:
        return tokens
    given = {t.split("=", 1)[0] for t in tokens if "=" in t and not t.startswith("-")}
    fill = [o for o in SMALL if o.split("=", 1)[0] not in given]
    if sub == "eval" or sub == "tts":
        fill = [o for o in fill if o.startswith(("eval.", "logging.progress"))]
        return tokens + fill
    if sub == "sft":
        return tokens + [o for o in fill if o.startswith(("sft.", "logging.progress"))] + ["sft.steps=10"]
    return tokens + fill + FORCED


def _makefile_var(text: str, name: str) -> str:
    m = re.search(rf"^{name}\s*\?=\s*(.+)$", text, flags=re.M)
    assert m, f"Makefile has no {name} ?= default"
    return m.group(1).strip()


def _recipe(text: str, target: str) -> list[str]:
    m = re.search(rf"^{target}:[^\n]*\n((?:\t[^\n]*\n?)+)", text, flags=re.M)
    assert m, f"Makefile has no '{target}' target"
    return [line.strip() for line in m.group(1).splitlines()]


def run_make(ws: Workspace, tokens: list[str]) -> None:
    makefile = (ROOT / "Makefile").read_text()
    target = tokens[1] if len(tokens) > 1 else ""
    variables = dict(t.split("=", 1) for t in tokens[2:] if "=" in t)
    recipe = _recipe(makefile, target)
    if target == "test":
        assert any(re.fullmatch(r"\$\(PY\) -m pytest( -q)? tests", line) for line in recipe), recipe
        assert Path("tests").is_dir()
        return
    assert target == "run", f"no rule for 'make {target}' in tests/test_readme.py"
    line = next(r for r in recipe if "rlvr train" in r)
    config = variables.get("CONFIG", _makefile_var(makefile, "CONFIG"))
    args = shlex.split(variables.get("ARGS", ""))
    assert line.endswith("rlvr train --config $(CONFIG) $(ARGS)"), line
    assert Path(config).is_file()
    ws.run_cli(_small(["train", "--config", config, *args], "train"))


def run_compare(ws: Workspace, argv: list[str]) -> None:
    """``argv``: ``["compare", STUDY, ...]``."""
    if "--dry-run" in argv:
        ws.run_cli(argv)
        return
    study_path = Path(argv[1])
    if "--arms" not in argv and "--seeds" not in argv:  # the whole study: validated only
        ws.run_cli([*argv, "--dry-run"])
        return
    study = yaml.safe_load(study_path.read_text())
    base = study.setdefault("base", {})
    base["config"] = str((study_path.parent / base["config"]).resolve())
    overrides = base.setdefault("overrides", {})
    for item in SMALL + FORCED + ["logging.progress=false"]:
        key, value = item.split("=", 1)
        overrides[key] = yaml.safe_load(value)
    copy = ws.path / f"small_{study_path.name}"
    copy.write_text(yaml.safe_dump(study))
    ws.run_cli(["compare", str(copy), *argv[2:], "--workers", "1", "--threads", "1", "--out", str(ws.path / "study")])


def run_pip(tokens: list[str]) -> None:
    tomllib = pytest.importorskip("tomllib")

    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("optional-dependencies", {}))
    for t in tokens[2:]:
        m = re.fullmatch(r"(?:rlvr|\.)\[([\w,\- ]+)\]", t)
        if m:
            for extra in m.group(1).split(","):
                assert extra.strip() in extras, f"README installs the extra {extra.strip()!r}, which pyproject lacks"


def _bench_small(argv: list[str]) -> list[str]:
    argv = list(argv)
    if "--programs" in argv[:-1]:
        i = argv.index("--programs") + 1
        argv[i] = str(min(int(argv[i]), BENCH_PROGRAMS))
    else:
        argv += ["--programs", str(BENCH_PROGRAMS)]
    return argv


@pytest.mark.slow
@pytest.mark.parametrize("page,command", PAGE_COMMANDS, ids=[f"{p}: {c[:70]}" for p, c in PAGE_COMMANDS])
def test_readme_command(workspace, page, command):
    tokens = shlex.split(command)
    if tokens[0] == "make":
        run_make(workspace, tokens)
    elif tokens[:2] == ["pip", "install"] or tokens[:4] == ["python", "-m", "pip", "install"]:
        run_pip(tokens if tokens[0] == "pip" else tokens[2:])
    elif tokens[0] == "rlvr":
        argv = workspace.placeholders(tokens[1:])
        sub = next((a for a in argv if not a.startswith("-")), "")
        if sub == "compare":
            run_compare(workspace, argv[argv.index(sub):])
        elif sub in ("train", "sft", "eval", "tts"):
            workspace.run_cli(_small(argv, sub))
        elif argv[:2] == ["sandbox", "bench"]:
            workspace.run_cli(_bench_small(argv))
        elif argv[:2] == ["sandbox", "check"] and "--only" not in argv:
            workspace.run_cli([*argv, "--only", CHECK_ATTACKS])
        else:
            workspace.run_cli(argv)
    else:
        pytest.fail(f"{page}: command not covered by tests/test_readme.py (add a rule): {command}")


def test_every_command_kind_has_a_rule():
    """Cheap and never skipped: every command of README and docs/ is one this file knows how to check."""
    for page, command in PAGE_COMMANDS:
        tokens = shlex.split(command)
        assert tokens[0] in ("rlvr", "make", "pip", "python"), f"{page}: no rule for command: {command}"
        if tokens[0] == "make":
            assert tokens[1] in ("run", "test"), f"{page}: no rule for command: {command}"
