"""The ``rlvr`` command line: ``train``, ``sft``, ``eval``.

    rlvr train --config configs/grpo_arithmetic_tiny.yaml trainer.lr=1e-5 run.seed=1
    rlvr train --resume runs/grpo_arithmetic_tiny
    rlvr sft   --config configs/grpo_arithmetic_tiny.yaml [--to my_model/]     (a plain HF folder too)
    rlvr eval  --checkpoint runs/grpo_arithmetic_tiny
    rlvr eval  --checkpoint A --checkpoint B --k 1,2,4,8,16     (pass@k, maj@k, diversity; resumable)
    rlvr tts   --checkpoint runs/x --strategy rsa,majority,best_of_n --N 8 --K 3 --T 0..4
    rlvr export runs/x --to exported/ [--adapter-only]      (LoRA merged into a plain HF folder)
    rlvr kl-table
    rlvr env [--json]      (versions, devices, threads, sandbox isolation, caches: for a bug report)
    rlvr sandbox check | run FILE [--language L] [--stdin FILE] | bench     (code sandbox)
    rlvr compare studies/tricks_or_traps.yaml --workers 2

A user error (a missing file, a bad path or override, a ConfigError or ValueError) prints one line
per problem to stderr and exits with status 2; ``rlvr --debug ...`` (or ``--debug`` after the
command) shows the traceback instead. Degenerate settings print a ``warning:`` line and go on.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from rlvr.config import ConfigError, load_config

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class _UsageError(Exception):
    """A command-line syntax error (argparse's), reported in one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise _UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _parser() -> argparse.ArgumentParser:
    from rlvr.cli.eval import add_eval_k_arguments, add_tts_parser

    p = _Parser(prog="rlvr", description="RL post-training with verifiable rewards.")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="RL training (GRPO by default) on a task")
    t.add_argument("--config", help="YAML config (see configs/)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    t.add_argument("--nproc", type=int, metavar="N", help="a learner of N processes (with trainer.dist.engine ddp "
                   "or fsdp2): torchrun --standalone --nproc_per_node N -m rlvr train on this machine, or N Ray "
                   "actors with trainer.dist.launcher=ray")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.lr=1e-5")

    s = sub.add_parser("sft", help="supervised warm start on the task's reference answers: the built-in tiny "
                                   "model (cached), or model.path (your model; needs --to)")
    s.add_argument("--config", help="YAML config whose model, task and sft sections are used")
    s.add_argument("--to", metavar="DIR", help="save the trained model as a plain Hugging Face folder (must not "
                                               "exist or be empty); required when model.path is your own model")
    s.add_argument("overrides", nargs="*")

    e = sub.add_parser("eval", help="held-out greedy accuracy and mean sampled reward of a checkpoint")
    e.add_argument("--checkpoint", required=True, action="append",
                   help="a run folder (its latest checkpoint), a checkpoint folder, or a model path; "
                        "repeat it with --k to compare checkpoints")
    e.add_argument("--config", help="config for task and sampling (default: the run's config.yaml)")
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")
    e.add_argument("overrides", nargs="*")
    add_eval_k_arguments(e)
    add_tts_parser(sub)

    c = sub.add_parser("compare", help="run a study: arms of overrides x seeds, then results.md with "
                                       "intervals, verdicts against a baseline arm and plots")
    c.add_argument("study", help="study YAML (see studies/ and docs/compare.md)")
    c.add_argument("--workers", type=int, help="concurrent runs (default: the study's parallel.workers; "
                                               "auto = CPUs // threads per run)")
    c.add_argument("--threads", type=int, help="torch threads per run (default: parallel.threads_per_run)")
    c.add_argument("--backend", choices=["local", "ray"], help="process pool (default) or Ray tasks")
    c.add_argument("--out", metavar="DIR", help="study folder (default: <output_dir>/<study name>)")
    c.add_argument("--arms", help="only these arms, comma-separated (e.g. a quick check)")
    c.add_argument("--seeds", help="only these seeds, comma-separated")
    c.add_argument("--dry-run", action="store_true", help="validate every arm x seed and list the runs")
    c.add_argument("--report-only", action="store_true", help="only rebuild results from finished runs")

    from rlvr.sandbox.cli import add_sandbox_parser

    add_sandbox_parser(sub)
    from rlvr.cli.serve_reward import add_parser as add_serve_reward_parser

    add_serve_reward_parser(sub)
    from rlvr.cli.rm import add_parser as add_rm_parser

    add_rm_parser(sub)
    x = sub.add_parser("export", help="a run's latest checkpoint as a Hugging Face folder (LoRA merged)")
    x.add_argument("run", help="a run folder (its latest checkpoint) or a checkpoint folder")
    x.add_argument("--to", required=True, metavar="DIR", help="the new folder (must not exist or be empty)")
    x.add_argument("--adapter-only", action="store_true", help="write the LoRA adapter alone (peft format)")
    x.add_argument("--base", metavar="PATH", help="the adapter's base model, if it moved since training")
    x.add_argument("--dtype", choices=["float32", "bfloat16"], help="of the weights written (default: the run's)")

    sub.add_parser("kl-table", help="which KL estimator x placement gives the true reverse-KL gradient "
                                    "(exact enumeration on a tiny tabular policy)")
    v = sub.add_parser("env", help="what a bug report needs: versions, devices, threads, sandbox isolation, caches")
    v.add_argument("--json", action="store_true", help="print one JSON document instead of the text block")
    for command in sub.choices.values():  # `rlvr train --debug ...` too; SUPPRESS keeps `rlvr --debug train`
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the traceback of an error instead of one line")
    return p


#: Exceptions that are a user's to fix (a file or path, a config value, a task option, ...).
_USER_ERRORS = (ConfigError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = _parser().parse_args(argv)
    except _UsageError as err:
        if "--debug" in argv:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    import warnings

    if args.command in ("train", "sft", "eval", "tts", "compare"):
        from rlvr.threads import configure_openmp

        configure_openmp()  # before torch is imported (libgomp reads its environment once); noted at start
    if args.command != "env":  # env stays fast: transformers is not imported just to be quieted
        from rlvr.models.load import quiet_transformers

        quiet_transformers()
    command = {"train": _train, "sft": _sft, "eval": _eval, "tts": _tts, "kl-table": _kl_table,
               "compare": _compare, "sandbox": _sandbox, "serve-reward": _serve_reward, "rm": _rm,
               "export": _export, "env": _env}[args.command]
    with warnings.catch_warnings():
        warnings.showwarning = _warning_printer(warnings.showwarning)
        try:
            _check_paths(args)
            return command(args)
        except _USER_ERRORS as err:
            if args.debug:
                raise
            print(_one_line(err), file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            if args.debug:
                raise
            print("interrupted; resume with: rlvr train --resume <run folder>", file=sys.stderr)
            return 130


def _one_line(err: BaseException) -> str:
    """A ConfigError keeps its one line per problem; anything else is squeezed into one line."""
    if isinstance(err, ConfigError):
        lines = [" ".join(line.split()) for line in str(err).splitlines() if line.strip()]
        return "\n".join(line if line.split(":", 1)[0].endswith("error") else f"error: {line}" for line in lines)
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, OSError) and err.filename is not None and str(err.filename) not in text:
        text += f": {err.filename}"
    return f"error: {text}"


def _warning_printer(fallback):
    """A ConfigWarning (a degenerate setting) as one ``warning: ...`` line; other warnings as usual."""
    from rlvr.config import ConfigWarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, ConfigWarning):
            print(f"warning: {' '.join(str(message).split())}", file=sys.stderr)
        else:
            fallback(message, category, filename, lineno, file, line)

    return show


def _check_paths(args) -> None:
    """Paths given on the command line exist, before anything is imported or built."""
    if getattr(args, "config", None) and not Path(args.config).is_file():
        raise ConfigError(f"--config {args.config}: no such file; see configs/ for ready ones")
    if getattr(args, "resume", None):
        run_dir = Path(args.resume)
        if not run_dir.is_dir():
            raise ConfigError(f"--resume {run_dir}: no such folder; give a run folder under runs/")
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"--resume {run_dir}: no config.yaml there, so not a run folder; give one under runs/")
    checkpoints = getattr(args, "checkpoint", None)
    for target in [checkpoints] if isinstance(checkpoints, str) else checkpoints or []:
        if not Path(target).expanduser().exists() and _local_path(target):
            raise ConfigError(f"--checkpoint {target}: no such run, checkpoint or model folder")


def _local_path(target: str) -> bool:
    """Whether a missing --checkpoint is meant as a local path rather than a hub id ('org/name')."""
    p = Path(target)
    offline = any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return (offline or target.startswith((".", "/", "~")) or "\\" in target or len(p.parts) > 2
            or (len(p.parts) == 2 and (p.parts[0] == "runs" or Path(p.parts[0]).is_dir())))


def _train(args) -> int:
    if args.nproc is not None:
        return _launch(args)
    if args.resume:
        if args.overrides or args.config:
            raise ConfigError("--resume takes the run's own config.yaml; drop --config and overrides")
        _check_launch(load_config(Path(args.resume) / "config.yaml"))  # a broken run config fails here, in one line
        from rlvr.train.loop import train

        train(resume=args.resume)
    else:
        config = load_config(args.config, args.overrides)  # a bad override fails here, before any model is built
        _check_launch(config)
        from rlvr.train.loop import train

        train(config)
    return 0


def _check_launch(config) -> None:
    """A launcher's N processes without trainer.dist would be N separate runs writing one run folder."""
    from rlvr.parallel import launched_world_size

    world = launched_world_size()
    if world > 1 and config.trainer.dist.engine == "none":
        raise ConfigError(f"launched as {world} processes (WORLD_SIZE={world}) but trainer.dist.engine=none: each "
                          "would train alone; set trainer.dist.engine=ddp or fsdp2")


def _launch(args) -> int:
    """``rlvr train --nproc N ...``: the same command as N ranks, started by ``trainer.dist.launcher``."""
    if args.nproc < 1:
        raise ConfigError(f"--nproc {args.nproc}: give at least 1 process")
    config = (load_config(Path(args.resume) / "config.yaml") if args.resume
              else load_config(args.config, args.overrides))
    if config.trainer.dist.engine == "none":
        raise ConfigError(f"--nproc {args.nproc} needs a learner group: add trainer.dist.engine=ddp (every rank "
                          "holds the model) or trainer.dist.engine=fsdp2 (the model sharded across ranks)")
    return LAUNCHERS[config.trainer.dist.launcher](config, args)


def _launch_torchrun(config, args) -> int:
    """N processes on this machine: ``torchrun --standalone --nproc_per_node N -m rlvr train ...``."""
    rest = (["--resume", args.resume] if args.resume else ["--config", args.config] if args.config else [])
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc),
               "-m", "rlvr", "train", *rest, *args.overrides]
    return subprocess.call(command)


def _launch_ray(config, args) -> int:
    """N Ray actors, one per rank, in a placement group (:mod:`rlvr.train.ray_group`)."""
    from rlvr.train.ray_group import launch_ray_group

    launch_ray_group(config, args.nproc, resume=args.resume)
    return 0


#: ``trainer.dist.launcher`` -> what starts the ranks of ``rlvr train --nproc N``
LAUNCHERS = {"torchrun": _launch_torchrun, "ray": _launch_ray}


def _sft(args) -> int:
    config = load_config(args.config, args.overrides)

    from rlvr.models.load import BUILTIN_TINY
    from rlvr.tasks import make_task
    from rlvr.threads import apply_threads
    from rlvr.warmstart.sft import sft_model, warm_start

    apply_threads(config.run.threads)
    task = make_task(config.task.name, **config.task.options)
    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731 - status lines on stderr, the path on stdout
    if config.model.path != BUILTIN_TINY:  # a user's model: trained from model.path, written to --to
        if not args.to:
            raise ValueError(f"rlvr sft with model.path={config.model.path} needs --to DIR (the folder for the "
                             "trained model); only the built-in model's warm starts are cached")
        print(sft_model(config.model.path, task, config.sft, args.to, config.model.dtype,
                        config.logging.progress, log))
        return 0
    path = warm_start(task, config.task.name, config.task.options, config.sft, config.logging.progress, log)
    if args.to:  # a plain HF folder (written under a temporary name, renamed when complete)
        from rlvr.export import export

        path = export(path, args.to, log=log)
    print(path)
    return 0


def _compare(args) -> int:
    from rlvr.compare.report import write_report
    from rlvr.compare.runner import plan, run_study
    from rlvr.compare.study import load_study

    study = load_study(args.study, out=args.out)  # every arm x seed validated before anything runs
    if args.arms or args.seeds:
        try:
            seeds = [int(k) for k in args.seeds.split(",")] if args.seeds else None
        except ValueError:
            raise ConfigError(f"--seeds {args.seeds}: expected comma-separated integers, e.g. 0,1") from None
        study = study.subset(args.arms.split(",") if args.arms else None, seeds)
    for flag, value in (("--workers", args.workers), ("--threads", args.threads)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be >= 1")
    if args.dry_run:
        for p in plan(study):
            print(f"{p.status:8}  {p.run.label:32}  {p.run.run_dir}")
        print(f"{len(study.runs)} runs ({len(study.arms)} arms x {len(study.seeds)} seeds); nothing was run")
        return 0
    failed = {}
    if args.report_only:
        plan(study)  # refuses run folders made with another config than the study file's
    else:
        try:
            outcome = run_study(study, workers=args.workers, backend=args.backend, threads_per_run=args.threads)
        except KeyboardInterrupt:
            print(f"interrupted; run the same command again to resume: rlvr compare {args.study}"
                  + (f" --out {args.out}" if args.out else ""), file=sys.stderr)
            return 130
        failed = outcome.failed
        if outcome.trained:
            print(f"trained {len(outcome.trained)} runs in {outcome.wall_s / 60:.1f} min")
    path = write_report(study)
    print(f"results: {path}")
    if failed:
        print(f"{len(failed)} runs failed (see error.txt in their folders): {', '.join(failed)}; "
              f"rerun the same command to retry them", file=sys.stderr)
        return 1
    return 0


def _sandbox(args) -> int:
    from rlvr.sandbox.cli import main as sandbox_main

    return sandbox_main(args)


def _serve_reward(args) -> int:
    from rlvr.cli.serve_reward import run

    return run(args)


def _rm(args) -> int:
    from rlvr.cli.rm import run

    return run(args)


def _export(args) -> int:
    from rlvr.export import export

    export(args.run, args.to, adapter_only=args.adapter_only, base=args.base, dtype=args.dtype)
    return 0


def _env(args) -> int:
    from rlvr.envinfo import collect, format_text

    info = collect()
    print(json.dumps(info, indent=1, default=str) if args.json else format_text(info))
    return 0


def _kl_table(args) -> int:
    from rlvr.algorithms.kl_table import main as kl_main

    kl_main()
    return 0


def _tts(args) -> int:
    from rlvr.cli.eval import tts

    return tts(args)


def _eval(args) -> int:
    from rlvr.cli.eval import checkpoint_config, eval_engine, eval_k, resolve_checkpoint
    from rlvr.eval.evaluate import evaluate
    from rlvr.tasks import make_task
    from rlvr.threads import apply_threads

    if args.k:
        return eval_k(args)
    if len(args.checkpoint) > 1:
        raise ValueError("several --checkpoint need pass@k mode (--k 1,2,4,...)")
    model_path, config_path = resolve_checkpoint(args.checkpoint[0], args.config)
    # prompts in the checkpoint's template; a --config is read as if model.path were the checkpoint
    config = checkpoint_config(config_path, args.overrides, model_path, own=args.config is None)
    apply_threads(config.run.threads)
    task = make_task(config.task.name, **config.task.options)
    engine = eval_engine(model_path, config, task, log=lambda msg: print(msg, file=sys.stderr))
    r = config.rollout
    problems = task.problems("eval", config.eval.num_problems)
    from rlvr.rollout.episodes import Episodes

    result = evaluate(engine, task, problems, r.temperature, r.top_p, r.max_new_tokens,
                      config.eval.samples_per_problem, seed=config.run.seed + 1234,
                      episodes=Episodes.from_config(config))  # a multi-turn run's checkpoint: episodes
    if args.json:
        print(json.dumps({"checkpoint": str(model_path), "num_problems": len(problems),
                          "engine": config.rollout.engine, **result}))
    else:
        print(f"checkpoint: {model_path}  ({len(problems)} held-out problems of {config.task.name}, "
              f"rollout.engine={config.rollout.engine})")
        print(f"greedy accuracy:      {100 * result['greedy_accuracy']:.1f}%")
        print(f"mean sampled reward:  {100 * result['sampled_reward']:.1f}%  "
              f"(T={r.temperature:g}, {config.eval.samples_per_problem} samples/problem)")
        print(f"truncated:            {100 * result['truncated_frac']:.1f}% of sampled completions hit "
              f"rollout.max_new_tokens={r.max_new_tokens}")
    return 0

