"""The ``rlvr`` command line: ``train``, ``sft``, ``eval``.

    rlvr train --config configs/grpo_arithmetic_tiny.yaml trainer.lr=1e-5 run.seed=1
    rlvr train --resume runs/grpo_arithmetic_tiny
    rlvr sft   --config configs/grpo_arithmetic_tiny.yaml
    rlvr eval  --checkpoint runs/grpo_arithmetic_tiny
    rlvr kl-table
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rlvr.config import ConfigError, load_config

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlvr", description="RL post-training with verifiable rewards.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="RL training (GRPO by default) on a task")
    t.add_argument("--config", help="YAML config (see configs/)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.lr=1e-5")

    s = sub.add_parser("sft", help="supervised warm start of the built-in tiny model (cached)")
    s.add_argument("--config", help="YAML config whose task and sft sections are used")
    s.add_argument("overrides", nargs="*")

    e = sub.add_parser("eval", help="held-out greedy accuracy and mean sampled reward of a checkpoint")
    e.add_argument("--checkpoint", required=True,
                   help="a run folder (its latest checkpoint), a checkpoint folder, or a model path")
    e.add_argument("--config", help="config for task and sampling (default: the run's config.yaml)")
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")
    e.add_argument("overrides", nargs="*")

    sub.add_parser("kl-table", help="which KL estimator x placement gives the true reverse-KL gradient "
                                    "(exact enumeration on a tiny tabular policy)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from rlvr.models.load import quiet_transformers

    quiet_transformers()
    try:
        return {"train": _train, "sft": _sft, "eval": _eval, "kl-table": _kl_table}[args.command](args)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    except ValueError as err:  # user-facing errors from tasks, models and the registries
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume with: rlvr train --resume <run folder>", file=sys.stderr)
        return 130


def _train(args) -> int:
    from rlvr.train.loop import train

    if args.resume:
        if args.overrides or args.config:
            raise ConfigError("--resume takes the run's own config.yaml; drop --config and overrides")
        train(resume=args.resume)
    else:
        train(load_config(args.config, args.overrides))
    return 0


def _sft(args) -> int:
    from rlvr.tasks import make_task
    from rlvr.train.loop import progress_enabled
    from rlvr.train.sft import warm_start

    config = load_config(args.config, args.overrides)
    task = make_task(config.task.name, **config.task.options)
    path = warm_start(task, config.task.name, config.task.options, config.sft, progress_enabled(config))
    print(path)
    return 0


def _kl_table(args) -> int:
    from rlvr.algorithms.kl_table import main as kl_main

    kl_main()
    return 0


def _eval(args) -> int:
    from rlvr.eval.evaluate import evaluate
    from rlvr.models.load import load_model_and_tokenizer
    from rlvr.rollout.hf import HFRolloutEngine
    from rlvr.tasks import make_task
    from rlvr.train.checkpoint import latest_checkpoint

    target = Path(args.checkpoint)
    model_path, config_path = target, args.config
    if (target / "config.yaml").exists():  # a run folder
        ckpt = latest_checkpoint(target)
        if ckpt is None:
            raise ValueError(f"--checkpoint {target}: the run has no checkpoint yet")
        model_path, config_path = ckpt, config_path or target / "config.yaml"
    elif (target.parent.parent / "config.yaml").exists():  # runs/x/checkpoints/step_N
        config_path = config_path or target.parent.parent / "config.yaml"
    config = load_config(config_path, args.overrides)
    task = make_task(config.task.name, **config.task.options)
    model, tokenizer = load_model_and_tokenizer(model_path, config.model.dtype, config.run.device)
    r = config.rollout
    problems = task.problems("eval", config.eval.num_problems)
    result = evaluate(HFRolloutEngine(model, tokenizer, r.batch_size), task, problems, r.temperature,
                      r.top_p, r.max_new_tokens, config.eval.samples_per_problem, seed=config.run.seed + 1234)
    if args.json:
        print(json.dumps({"checkpoint": str(model_path), "num_problems": len(problems), **result}))
    else:
        print(f"checkpoint: {model_path}  ({len(problems)} held-out problems of {config.task.name})")
        print(f"greedy accuracy:      {100 * result['greedy_accuracy']:.1f}%")
        print(f"mean sampled reward:  {100 * result['sampled_reward']:.1f}%  "
              f"(T={r.temperature:g}, {config.eval.samples_per_problem} samples/problem)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
