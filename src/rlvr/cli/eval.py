"""Command-line front ends of ``rlvr eval --k ...`` and ``rlvr tts ...`` (registered in :mod:`rlvr.cli`).

    rlvr eval --checkpoint WARM --checkpoint runs/grpo_arithmetic_tiny --label warm --label rl \\
              --config configs/grpo_arithmetic_tiny.yaml --k 1,2,4,8,16
    rlvr tts  --checkpoint runs/rsa_arithmetic_chain_tiny --strategy rsa,majority,best_of_n \\
              --N 8 --K 3 --T 0..4

Both write into an output folder (``--out``): ``eval.json``/``eval.md``/``pass_at_k.png`` and
``tts.json``/``tts.md``/``tts.png``. ``rlvr eval --k`` keeps every checkpoint's samples in
``<out>/<label>-<hash>/samples.jsonl`` and resumes from them when rerun. Status lines go to
stderr; stdout holds the report (with ``--json``, exactly one JSON document).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

__all__ = ["add_eval_k_arguments", "add_tts_parser", "checkpoint_config", "eval_engine", "eval_k", "parse_ints", "resolve_checkpoint", "status", "tts"]


def parse_ints(text: str, what: str) -> list[int]:
    """``"1,2,4"`` -> [1, 2, 4]; ``"0..4"`` -> [0, 1, 2, 3, 4]; mixtures like ``"0..2,4"`` too."""
    out: list[int] = []
    try:
        for part in str(text).split(","):
            lo, dots, hi = part.strip().partition("..")
            out += list(range(int(lo), int(hi) + 1)) if dots else [int(lo)]
    except ValueError:
        raise ValueError(f"{what} = {text!r}: expected integers like 1,2,4 or a range like 0..4") from None
    if not out:
        raise ValueError(f"{what} is empty")
    return sorted(set(out))


def resolve_checkpoint(target: str | Path, config_path: str | Path | None) -> tuple[Path, str | Path | None]:
    """(model folder, config path) for a run folder, a ``checkpoints/step_N`` folder or a model folder."""
    from rlvr.records.checkpoint import latest_checkpoint

    target = Path(target)
    model_path = target
    if (target / "config.yaml").exists():  # a run folder
        ckpt = latest_checkpoint(target)
        if ckpt is None:
            raise ValueError(f"--checkpoint {target}: the run has no checkpoint yet")
        model_path, config_path = ckpt, config_path or target / "config.yaml"
    elif (target.parent.parent / "config.yaml").exists():  # runs/x/checkpoints/step_N
        config_path = config_path or target.parent.parent / "config.yaml"
    return model_path, config_path


def _label(target: str, model_path: Path) -> str:
    p = Path(target)
    if model_path != p:  # a run folder: "<run>/<step>"
        return f"{p.name}/{model_path.name}"
    if p.parent.name == "checkpoints":
        return f"{p.parent.parent.name}/{p.name}"
    return p.name or str(p)


def _slug(label: str, model_path: Path) -> str:
    digest = hashlib.sha1(str(model_path.resolve()).encode()).hexdigest()[:8]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") + "-" + digest


#: Where to choose another folder when writing an eval/tts report fails.
_WHERE = "--out folder"


def status(message: str) -> None:
    """A status line: always on stderr, so that stdout holds only results (and with ``--json``
    exactly the JSON)."""
    print(message, file=sys.stderr, flush=True)


def _progress(config) -> bool:
    from rlvr.train.loop import progress_enabled

    return progress_enabled(config)


def checkpoint_config(config_path, overrides: list[str] | None, model_path: Path, own: bool = True):
    """The config an evaluation of ``model_path`` runs under: ``config_path`` with ``overrides``.

    The tokenizer and chat template belong to the model being evaluated: the ``dataset`` task's prompts
    are rendered with the checkpoint's tokenizer (its ``tokenizer`` option is the checkpoint folder
    unless an override names one). A config that is not the run's own (``own=False``: ``--config``)
    and names a model with another vocabulary gets ``model.path=<checkpoint>``, as ``rlvr train
    --config X model.path=<checkpoint>`` would, so budgets counted in the other model's tokens are
    derived again in the checkpoint's (:func:`rlvr.tasks.defaults.switch_task`); a run's own
    config.yaml, or a config of a model that tokenizes alike, keeps what it says."""
    from rlvr.config import load_config
    from rlvr.tasks.defaults import same_vocabulary

    overrides = list(overrides or [])
    named = {o.split("=", 1)[0].strip() for o in overrides}
    config = load_config(config_path, overrides)
    if not own and "model.path" not in named and not same_vocabulary(config.model.path, str(model_path)):
        overrides = [*overrides, f"model.path={json.dumps(str(model_path))}"]
        config = load_config(config_path, overrides)
    if "tokenizer" in config.task.options and "task.options.tokenizer" not in named:
        config = load_config(config_path, [*overrides, f"task.options.tokenizer={json.dumps(str(model_path))}"])
    return config


def eval_engine(model_path: Path, config, task=None, log=status):
    """The engine an evaluation samples with: ``rollout.engine``'s, as in training (one sampler decides
    a checkpoint's score), with the model's stop conditions; the token budget follows from the task in
    the checkpoint's tokenizer when the config does not set it (as in training)."""
    from rlvr.models.load import load_model_and_tokenizer
    from rlvr.rollout.factory import generation_config_note, make_engine
    from rlvr.tasks import defaults as task_defaults

    model, tokenizer = load_model_and_tokenizer(model_path, config.model.dtype, config.run.device)
    if task is not None:
        task_defaults.apply_token_budget(config, task, tokenizer, log=lambda msg: None)
    note = generation_config_note(config, model)
    if note:
        log(note)
    return make_engine(config, model, tokenizer, str(model_path))


# --------------------------------------------------------------------------------- rlvr eval --k

def add_eval_k_arguments(e: argparse.ArgumentParser) -> None:
    """The pass@k options of ``rlvr eval`` (``--checkpoint`` itself is defined in cli.py)."""
    e.add_argument("--k", help="pass@k mode: comma-separated k values, e.g. 1,2,4,8,16 "
                               "(reports pass@k, CoT-pass@k, maj@k, mean@k, length, diversity)")
    e.add_argument("--n", type=int, help="samples per problem in pass@k mode (default: the largest k)")
    e.add_argument("--label", action="append", help="a name per --checkpoint for tables and plots")
    e.add_argument("--out", help="output folder in pass@k mode (default: <run.output_dir>/eval_<task>); "
                                 "rerunning with the same folder resumes")


def eval_k(args) -> int:
    """``rlvr eval --k``: n samples per held-out problem for each checkpoint, then the report."""
    from rlvr.config import load_config
    from rlvr.eval.evaluate import sample_eval_rows
    from rlvr.rollout.episodes import Episodes
    from rlvr.eval.metrics import summarize_samples
    from rlvr.eval.report import eval_markdown, plot_pass_at_k
    from rlvr.tasks import make_task
    from rlvr.utils import atomic_write_text

    ks = parse_ints(args.k, "--k")
    n = args.n if args.n is not None else max(ks)
    if n < max(ks) or min(ks) < 1:
        raise ValueError(f"--n {n} must be >= the largest k ({max(ks)}) and every k >= 1")
    if args.label and len(args.label) != len(args.checkpoint):
        raise ValueError(f"give one --label per --checkpoint ({len(args.checkpoint)}), got {len(args.label)}")
    resolved = [resolve_checkpoint(c, args.config) for c in args.checkpoint]
    config = load_config(resolved[0][1], args.overrides)
    out = Path(args.out or Path(config.run.output_dir) / f"eval_{config.task.name.replace(':', '_')}")
    summaries, folders = {}, {}
    for i, (target, (model_path, _)) in enumerate(zip(args.checkpoint, resolved)):
        # each checkpoint renders the prompts with its own tokenizer and samples with rollout.engine
        config = checkpoint_config(resolved[0][1], args.overrides, model_path, own=args.config is None)
        task = make_task(config.task.name, **config.task.options)
        problems = task.problems("eval", config.eval.num_problems)
        engine = eval_engine(model_path, config, task)
        r = config.rollout
        label = args.label[i] if args.label else _label(target, model_path)
        if label in summaries:
            label = f"{label} ({i})"
        folder = out / _slug(label, model_path)
        meta = {"checkpoint": str(Path(model_path).resolve()), "task": config.task.name,
                "task_options": config.task.options, "engine": config.rollout.engine}
        status(f"[{label}] {model_path}: {len(problems)} problems x {n} samples -> {folder}")
        rows = sample_eval_rows(engine, task, problems, folder, n, r.temperature, r.top_p,
                                r.max_new_tokens, seed=config.run.seed + 1234,
                                batch_problems=max(1, r.batch_size // n), meta=meta, progress=_progress(config),
                                episodes=Episodes.from_config(config))  # multi-turn runs: pass@k over episodes
        summaries[label] = summarize_samples(rows, ks, seed=config.run.seed)
        folders[label] = str(folder)
    title = f"{config.task.name}: {len(problems)} held-out problems, n={n}, T={r.temperature:g}"
    table = eval_markdown(summaries, ks)
    report = {"task": config.task.name, "task_options": config.task.options, "ks": ks, "n": n,
              "temperature": r.temperature, "top_p": r.top_p, "max_new_tokens": r.max_new_tokens,
              "checkpoints": {lbl: {"path": str(m), "samples": folders[lbl], **summaries[lbl]}
                              for lbl, (_, (m, _)) in zip(summaries, zip(args.checkpoint, resolved))}}
    atomic_write_text(out / "eval.json", json.dumps(report, indent=1) + "\n", where=_WHERE)
    atomic_write_text(out / "eval.md", f"# {title}\n\n{table}\n", where=_WHERE)
    plot = plot_pass_at_k(summaries, ks, out / "pass_at_k.png", title)
    wrote = "wrote " + ", ".join(str(p) for p in (out / "eval.json", out / "eval.md", plot) if p is not None)
    if args.json:  # stdout is exactly the JSON (rlvr eval --json | jq ...)
        print(json.dumps(report))
        status(wrote)
    else:
        print(f"\n{title}\n\n{table}\n\n{wrote}")
    return 0


# --------------------------------------------------------------------------------- rlvr tts

def add_tts_parser(sub) -> None:
    t = sub.add_parser("tts", help="test-time scaling: RSA vs majority voting vs best-of-N at equal "
                                   "generated tokens")
    t.add_argument("--checkpoint", required=True,
                   help="a run folder (its latest checkpoint), a checkpoint folder, or a model path")
    t.add_argument("--config", help="config for task and sampling (default: the run's config.yaml)")
    t.add_argument("--strategy", default="rsa,majority,best_of_n",
                   help="comma-separated: rsa, majority, best_of_n (best_of_n uses the verifier: an "
                        "oracle upper bound)")
    t.add_argument("--N", type=int, default=8, help="RSA population size; majority/best-of-N use "
                                                    "N*(T+1) samples to match RSA's generated tokens")
    t.add_argument("--K", type=int, default=3, help="RSA candidates per aggregation prompt")
    t.add_argument("--T", default="0..4", help="RSA aggregation steps to report, e.g. 0..4 (0: initial "
                                               "population only)")
    t.add_argument("--num-problems", type=int, help="held-out problems (default: eval.num_problems)")
    t.add_argument("--out", help="output folder (default: <run.output_dir>/tts_<task>)")
    t.add_argument("--json", action="store_true", help="print JSON instead of a table")
    t.add_argument("overrides", nargs="*")


def tts(args) -> int:
    """``rlvr tts``: accuracy against generated tokens for the chosen strategies."""
    from rlvr.config import load_config
    from rlvr.eval.report import plot_tts, tts_markdown
    from rlvr.eval.tts import RSA, BestOfN, MajorityVote, run_strategies
    from rlvr.rollout.base import SamplingParams
    from rlvr.tasks import make_task
    from rlvr.utils import atomic_write_text

    names = [s.strip() for s in args.strategy.split(",") if s.strip()]
    unknown = sorted(set(names) - {"rsa", "majority", "best_of_n"})
    if unknown or not names:
        raise ValueError(f"--strategy {args.strategy!r}: unknown {unknown}; choose from rsa, majority, best_of_n")
    Ts = parse_ints(args.T, "--T")
    if min(Ts) < 0 or args.N < 1 or args.K < 1:
        raise ValueError("--T must be >= 0, --N and --K >= 1")
    model_path, config_path = resolve_checkpoint(args.checkpoint, args.config)
    config = checkpoint_config(config_path, args.overrides, model_path, own=args.config is None)
    task = make_task(config.task.name, **config.task.options)
    problems = task.problems("eval", args.num_problems or config.eval.num_problems)
    engine = eval_engine(model_path, config, task)
    r = config.rollout
    sampling = SamplingParams(temperature=r.temperature, top_p=r.top_p, max_new_tokens=r.max_new_tokens)
    ns = [args.N * (t + 1) for t in Ts]
    strategies = []
    for name in names:
        if name == "rsa":
            strategies.append(RSA(N=args.N, K=args.K, T=max(Ts), report=Ts, seed=config.run.seed))
        elif name == "majority":
            strategies.append(MajorityVote(ns))
        else:
            strategies.append(BestOfN(ns))
    status(f"{model_path}: {len(problems)} held-out problems of {config.task.name}; strategies {', '.join(names)}")
    points = [p.to_dict() for p in run_strategies(strategies, engine, task, problems,
                                                   sampling, seed=config.run.seed + 4321)]
    out = Path(args.out or Path(config.run.output_dir) / f"tts_{config.task.name.replace(':', '_')}")
    title = f"{config.task.name}: {len(problems)} problems, T={r.temperature:g}, N={args.N}, K={args.K}"
    table = tts_markdown(points)
    report = {"checkpoint": str(model_path), "task": config.task.name, "num_problems": len(problems),
              "N": args.N, "K": args.K, "T": Ts, "temperature": r.temperature, "points": points}
    atomic_write_text(out / "tts.json", json.dumps(report, indent=1) + "\n", where=_WHERE)
    atomic_write_text(out / "tts.md", f"# {title}\n\n{table}\n", where=_WHERE)
    plot = plot_tts(points, out / "tts.png", title)
    wrote = "wrote " + ", ".join(str(p) for p in (out / "tts.json", out / "tts.md", plot) if p is not None)
    if args.json:  # stdout is exactly the JSON
        print(json.dumps(report))
        status(wrote)
    else:
        print(f"\n{title}\n\n{table}\n\n{wrote}")
    return 0
